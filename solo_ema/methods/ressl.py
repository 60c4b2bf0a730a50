"""ReSSL with any EMA placement: the strong view's relation to a queue matches the weak view's, sharpened."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from ..engine import BaseMomentumMethod
from ..engine.config import cfg_default, cfg_get
from ..engine.distributed import check_queue_size, gather
from ..losses import ressl_loss
from .queue import QueueMethod


class ReSSL(QueueMethod):
    """ReSSL: q = online z of crop 0 (the strong view), k = momentum z of crop 1 (the weak view).

    The weak view is a data recipe (crop 1 without colour jitter, blur or solarization); the method only
    relies on that crop order. ``queue`` (queue_size x proj_output_dim) holds past keys; the loss of a
    step uses the queue before the step's (gathered) keys are enqueued.
    """


    @staticmethod
    def add_and_assert_specific_cfg(cfg: DictConfig) -> DictConfig:
        """Defaults: projector 4096 / 256, T_q 0.1, T_k 0.04, queue 65536."""
        cfg = BaseMomentumMethod.add_and_assert_specific_cfg(cfg)
        cfg_default(cfg, "method_kwargs.proj_hidden_dim", 4096)
        cfg_default(cfg, "method_kwargs.proj_output_dim", 256)
        cfg_default(cfg, "method_kwargs.temperature_q", 0.1)
        cfg_default(cfg, "method_kwargs.temperature_k", 0.04)
        cfg_default(cfg, "method_kwargs.queue_size", 65536)
        k = cfg.method_kwargs
        for key in ("temperature_q", "temperature_k"):
            if not k[key] > 0:
                raise ValueError(f"{key} must be > 0, got {k[key]}")
        if cfg.data.num_large_crops != 2 or cfg.data.num_small_crops != 0:
            raise ValueError("ReSSL needs exactly 2 large crops (crop 0 strong, crop 1 weak) and no small crops")
        check_queue_size(
            k.queue_size, cfg.optimizer.batch_size, cfg_get(cfg, "devices", 1) or 1, cfg_get(cfg, "num_nodes", 1) or 1
        )
        return cfg

    def queue_shape(self) -> tuple[int, ...]:
        """Queue buffer shape (features on dim 1)."""
        k = self.cfg.method_kwargs
        return (k.queue_size, k.proj_output_dim)

    @torch.no_grad()
    def dequeue_and_enqueue(self, keys: torch.Tensor) -> None:
        """Write keys (B x D, gathered over processes) into the queue at the pointer; advance it."""
        keys = gather(self, keys)
        batch, size = keys.size(0), self.queue.size(0)
        assert size % batch == 0, f"queue_size ({size}) must be a multiple of the global batch size ({batch})"
        ptr = int(self.queue_ptr)
        self.queue[ptr : ptr + batch] = keys
        self.queue_ptr[0] = (ptr + batch) % size

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> torch.Tensor:
        """ReSSL loss of (online z of crop 0, momentum z of crop 1) against the queue, then enqueue k."""
        outs = super().training_step(batch, batch_idx)
        kw = self.cfg.method_kwargs
        q = outs["z"][0]
        k = F.normalize(outs["momentum_z"][1], dim=-1)
        loss = ressl_loss(q, k, self.queue.clone().detach(), kw.temperature_q, kw.temperature_k)
        self.dequeue_and_enqueue(k)
        self.log("train_ressl_loss", loss, on_epoch=True, sync_dist=True)
        return loss + outs["loss"]
