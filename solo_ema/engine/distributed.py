"""Process-group helpers (no-ops on one process): world size, gathers, all-reduce, the queue-size check."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def world_size() -> int:
    """Number of processes in the default group (1 without torch.distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather(module: nn.Module, x: torch.Tensor, sync_grads: bool = False) -> torch.Tensor:
    """Concatenate x (batch first) over processes with the LightningModule's all_gather; x itself on one process."""
    if world_size() == 1:
        return x
    return module.all_gather(x, sync_grads=sync_grads).flatten(0, 1)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of x over processes, in place (x unchanged on one process)."""
    if world_size() > 1:
        dist.all_reduce(x)
    return x


def check_queue_size(queue_size: int, cfg_batch: int, devices: int, num_nodes: int) -> None:
    """Raise ValueError unless the queue holds a whole number of global batches."""
    global_batch = int(cfg_batch) * max(int(devices), 1) * max(int(num_nodes), 1)
    if queue_size <= 0 or queue_size % global_batch:
        raise ValueError(
            f"queue_size ({queue_size}) must be a positive multiple of the global batch size "
            f"({global_batch} = batch_size {cfg_batch} x devices {devices} x num_nodes {num_nodes})"
        )


def gather_uneven(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Concatenate x (batch first) over processes when the batch sizes may differ (e.g. kNN banks)."""
    if world_size() == 1:
        return x
    size = torch.tensor([x.size(0)], device=x.device)
    sizes = module.all_gather(size).flatten().tolist()
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.size(0)] = x
    gathered = module.all_gather(padded)
    return torch.cat([gathered[i, :n] for i, n in enumerate(sizes)])
