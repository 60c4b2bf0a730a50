"""The shared part of the queue methods (MoCo v2+, ReSSL): a normalised projection and a buffer of past keys."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..engine import BaseMomentumMethod
from .heads import mlp


class QueueMethod(BaseMomentumMethod):
    """z = normalize(projector(f)) with a Lin-ReLU-Lin projector, and a ``queue`` buffer of past keys.

    Subclasses give the queue's shape (features on dim 1) and their own enqueue and loss.
    """

    def queue_shape(self) -> tuple[int, ...]:
        """Shape of the queue buffer; dim 1 holds the features."""
        raise NotImplementedError

    def build_heads(self) -> None:
        """Projector Lin-ReLU-Lin and the key queue (normalised random vectors) with its pointer."""
        k = self.cfg.method_kwargs
        self.projector = self.with_projector_bn(
            mlp([self.features_dim, k.proj_hidden_dim, k.proj_output_dim], batch_norm=False), k.proj_output_dim
        )
        self.register_buffer("queue", F.normalize(torch.randn(self.queue_shape()), dim=1))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @property
    def learnable_params(self) -> list[dict[str, Any]]:
        """Base groups plus the projector."""
        return super().learnable_params + [{"name": "projector", "params": self.projector.parameters()}]

    def head_forward(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised projection z."""
        return {"z": F.normalize(self.project(feats), dim=-1)}
