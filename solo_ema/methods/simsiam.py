"""SimSiam, plain (stop-gradient target) or with an EMA target ("+EMA" of the paper's Table 1)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from ..engine import BaseMomentumMethod
from ..engine.config import cfg_default
from ..losses import simsiam_loss
from .heads import mlp


class SimSiam(BaseMomentumMethod):
    """SimSiam: each view's prediction regresses the other view's projection under stop-gradient.

    The target is always ``outs['momentum_z']``: with ``--ema_parts none`` (the default) that is the
    online projection detached (exactly SimSiam); with EMA parts (Table 1: beta 0.99, ``--ema_parts all``)
    the momentum encoder's projection, which makes it BYOL-like with SimSiam's heads.
    """

    @staticmethod
    def add_and_assert_specific_cfg(cfg: DictConfig) -> DictConfig:
        """Defaults: projector 2048 / 2048, predictor hidden 512 (the solo-learn bash values)."""
        cfg = BaseMomentumMethod.add_and_assert_specific_cfg(cfg)
        cfg_default(cfg, "method_kwargs.proj_hidden_dim", 2048)
        cfg_default(cfg, "method_kwargs.proj_output_dim", 2048)
        cfg_default(cfg, "method_kwargs.pred_hidden_dim", 512)
        if cfg.data.num_large_crops != 2 or cfg.data.num_small_crops != 0:
            raise ValueError("SimSiam needs exactly 2 large crops and no small crops")
        return cfg

    def build_heads(self) -> None:
        """Projector Lin-BN-ReLU-Lin-BN-ReLU-Lin-BN(affine=False) (no biases) and predictor Lin-BN-ReLU-Lin.

        The projector's last Linear has no bias: the affine-free BatchNorm after it removes any bias
        exactly (solo-learn keeps one but freezes it).
        """
        k = self.cfg.method_kwargs
        dims = [self.features_dim, k.proj_hidden_dim, k.proj_hidden_dim, k.proj_output_dim]
        self.projector = self.with_projector_bn(mlp(dims, bias=False, last_bn=True), k.proj_output_dim)
        self.predictor = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(k.proj_output_dim, k.pred_hidden_dim, bias=False),
                bn1=nn.BatchNorm1d(k.pred_hidden_dim),
                act1=nn.ReLU(inplace=True),
                fc2=nn.Linear(k.pred_hidden_dim, k.proj_output_dim),
            )
        )

    @property
    def learnable_params(self) -> list[dict[str, Any]]:
        """Base groups plus the projector and the predictor (static lr, as in SimSiam)."""
        return super().learnable_params + [
            {"name": "projector", "params": self.projector.parameters()},
            {"name": "predictor", "params": self.predictor.parameters(), "static_lr": True},
        ]

    def head_forward(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        """Projection z and prediction p."""
        z = self.project(feats)
        return {"z": z, "p": self.predictor(z)}

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> torch.Tensor:
        """simsiam(p1, z2_target) / 2 + simsiam(p2, z1_target) / 2, target = momentum_z."""
        outs = super().training_step(batch, batch_idx)
        p1, p2 = outs["p"]
        t1, t2 = outs["momentum_z"]
        loss = simsiam_loss(p1, t2) / 2 + simsiam_loss(p2, t1) / 2
        z_std = F.normalize(torch.stack(outs["z"]), dim=-1).std(dim=1).mean()
        self.log_dict({"train_neg_cos_sim": loss, "train_z_std": z_std}, on_epoch=True, sync_dist=True)
        return loss + outs["loss"]
