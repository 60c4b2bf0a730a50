"""MoCo v2+ with any EMA placement: symmetric InfoNCE against the other view's key and a queue of past keys."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from ..engine import BaseMomentumMethod
from ..engine.config import cfg_default, cfg_get
from ..engine.distributed import check_queue_size, gather
from ..losses import moco_loss
from .queue import QueueMethod


class MoCoV2Plus(QueueMethod):
    """MoCo v2+: z = normalize(projector(f)); each view's query against the other view's key and its queue.

    ``queue`` is a buffer (2, proj_output_dim, queue_size): ``queue[i]`` holds past keys of crop i.
    The loss of a step uses the queue as it was before the step; the (gathered) keys are enqueued after it.
    """


    @staticmethod
    def add_and_assert_specific_cfg(cfg: DictConfig) -> DictConfig:
        """Defaults: projector 2048 / 256 (solo-learn 1.0.5's flag default was 128), T 0.2, queue 65536."""
        cfg = BaseMomentumMethod.add_and_assert_specific_cfg(cfg)
        cfg_default(cfg, "method_kwargs.proj_hidden_dim", 2048)
        cfg_default(cfg, "method_kwargs.proj_output_dim", 256)
        cfg_default(cfg, "method_kwargs.temperature", 0.2)
        cfg_default(cfg, "method_kwargs.queue_size", 65536)
        k = cfg.method_kwargs
        if not k.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {k.temperature}")
        if cfg.data.num_large_crops != 2 or cfg.data.num_small_crops != 0:
            raise ValueError("MoCo v2+ needs exactly 2 large crops and no small crops")
        check_queue_size(
            k.queue_size, cfg.optimizer.batch_size, cfg_get(cfg, "devices", 1) or 1, cfg_get(cfg, "num_nodes", 1) or 1
        )
        return cfg

    def queue_shape(self) -> tuple[int, ...]:
        """Queue buffer shape (features on dim 1)."""
        k = self.cfg.method_kwargs
        return (2, k.proj_output_dim, k.queue_size)

    @torch.no_grad()
    def dequeue_and_enqueue(self, keys: torch.Tensor) -> None:
        """Write keys (2 x B x D, gathered over processes) into the queue at the pointer; advance it."""
        keys = gather(self, keys.transpose(0, 1)).transpose(0, 1)
        batch, size = keys.size(1), self.queue.size(-1)
        assert size % batch == 0, f"queue_size ({size}) must be a multiple of the global batch size ({batch})"
        ptr = int(self.queue_ptr)
        self.queue[:, :, ptr : ptr + batch] = keys.permute(0, 2, 1)
        self.queue_ptr[0] = (ptr + batch) % size

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> torch.Tensor:
        """(moco(q1, k2, queue[1]) + moco(q2, k1, queue[0])) / 2, then enqueue (k1, k2)."""
        outs = super().training_step(batch, batch_idx)
        T = self.cfg.method_kwargs.temperature
        q1, q2 = outs["z"]
        k1, k2 = (F.normalize(z, dim=-1) for z in outs["momentum_z"])
        queue = self.queue.clone().detach()
        loss = (moco_loss(q1, k2, queue[1], T) + moco_loss(q2, k1, queue[0], T)) / 2
        self.dequeue_and_enqueue(torch.stack((k1, k2)))
        self.log("train_nce_loss", loss, on_epoch=True, sync_dist=True)
        return loss + outs["loss"]
