"""BYOL with any EMA placement (paper Eq. 5: symmetric negative cosine between predictions and targets)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from ..engine import BaseMomentumMethod
from ..engine.config import cfg_default
from ..losses import byol_loss
from .heads import mlp


class BYOL(BaseMomentumMethod):
    """BYOL: online projector + predictor regress the target projection of the other views."""

    @staticmethod
    def add_and_assert_specific_cfg(cfg: DictConfig) -> DictConfig:
        """Defaults of the BYOL heads (solo-learn's CIFAR recipe: 4096 / 256, predictor 4096)."""
        cfg = BaseMomentumMethod.add_and_assert_specific_cfg(cfg)
        cfg_default(cfg, "method_kwargs.proj_hidden_dim", 4096)
        cfg_default(cfg, "method_kwargs.proj_output_dim", 256)
        cfg_default(cfg, "method_kwargs.pred_hidden_dim", 4096)
        return cfg

    def build_heads(self) -> None:
        """Projector Lin-BN-ReLU-Lin and predictor of the same shape."""
        k = self.cfg.method_kwargs
        self.projector = self.with_projector_bn(
            mlp([self.features_dim, k.proj_hidden_dim, k.proj_output_dim]), k.proj_output_dim
        )
        self.predictor = mlp([k.proj_output_dim, k.pred_hidden_dim, k.proj_output_dim])

    @property
    def learnable_params(self) -> list[dict[str, Any]]:
        """Base groups plus projector and predictor."""
        return super().learnable_params + [
            {"name": "projector", "params": self.projector.parameters()},
            {"name": "predictor", "params": self.predictor.parameters()},
        ]

    def head_forward(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        """Projection z and prediction p (small crops too: they are students only)."""
        z = self.project(feats)
        return {"z": z, "p": self.predictor(z)}

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> torch.Tensor:
        """Each large crop's target against the predictions of every other crop, plus the classifier loss."""
        outs = super().training_step(batch, batch_idx)
        P, Z = outs["p"], outs["momentum_z"]
        loss = 0.0
        for v1, z in enumerate(Z):
            for v2, p in enumerate(P):
                if v1 != v2:
                    loss = loss + byol_loss(p, z)
        z_std = F.normalize(torch.stack(outs["z"][: self.num_large_crops]), dim=-1).std(dim=1).mean()
        self.log_dict({"train_byol_loss": loss, "train_z_std": z_std}, on_epoch=True, sync_dist=True)
        return loss + outs["loss"]
