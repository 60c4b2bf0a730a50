"""SimCLR (NT-Xent with in-batch negatives), plain or with an EMA target ("+EMA" of the paper's Table 1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from omegaconf import DictConfig

from ..engine import BaseMomentumMethod
from ..engine.config import cfg_default
from ..engine.distributed import gather
from ..losses import nt_xent
from .heads import mlp


class SimCLR(BaseMomentumMethod):
    """SimCLR on every crop, with an optional momentum target.

    With ``--ema_parts none`` (the default) it is exactly SimCLR (solo-learn's ``simclr_loss_func``):
    the online projections ``z`` of all crops (large and small) are both anchors and candidates,
    positives are found by equal sample ``indexes`` (the batch's first element) across crops, and the
    gradient flows through both sides of every pair.

    With EMA parts ("+EMA", Table 1 uses beta 0.9 and ``--ema_parts all``), the target side of every
    pair comes from the momentum encoder under stop-gradient: the anchors are the online ``z`` of all
    crops, the candidates the momentum ``z`` of all large crops,

        L = mean_{v, i} -log( sum_{u != v} exp(<q_v,i, k_u,i>/T) / sum_{(u, j) != (v, i)} exp(<q_v,i, k_u,j>/T) )

    with q the normalised online projections and k the normalised momentum projections (gathered over
    processes): the positives of anchor (crop v, sample i) are the momentum projections of sample i in
    the other large crops, the negatives those of every other sample in every large crop (its own crop
    included), and only its own-view pair (v, i) is excluded. Every crop is an anchor, so the loss is
    symmetric over the crops.
    """

    @staticmethod
    def add_and_assert_specific_cfg(cfg: DictConfig) -> DictConfig:
        """Defaults: projector 2048 / 128 (solo-learn 1.0.5), temperature 0.2 (the bash files' value)."""
        cfg = BaseMomentumMethod.add_and_assert_specific_cfg(cfg)
        cfg_default(cfg, "method_kwargs.proj_hidden_dim", 2048)
        cfg_default(cfg, "method_kwargs.proj_output_dim", 128)
        cfg_default(cfg, "method_kwargs.temperature", 0.2)
        if not cfg.method_kwargs.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {cfg.method_kwargs.temperature}")
        if cfg.data.num_large_crops < 2:
            raise ValueError("SimCLR needs at least 2 large crops")
        return cfg

    def build_heads(self) -> None:
        """Projector Lin-ReLU-Lin."""
        k = self.cfg.method_kwargs
        self.projector = self.with_projector_bn(
            mlp([self.features_dim, k.proj_hidden_dim, k.proj_output_dim], batch_norm=False), k.proj_output_dim
        )

    @property
    def learnable_params(self) -> list[dict[str, Any]]:
        """Base groups plus the projector."""
        return super().learnable_params + [{"name": "projector", "params": self.projector.parameters()}]

    def head_forward(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        """Projection z (small crops are anchors)."""
        return {"z": self.project(feats)}

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> torch.Tensor:
        """NT-Xent over all crops: plain with ``none``, against the momentum projections otherwise."""
        outs = super().training_step(batch, batch_idx)
        indexes = batch[0]
        T = self.cfg.method_kwargs.temperature
        Z = outs["z"]
        views = [torch.full_like(indexes, v) for v in range(len(Z))]
        anchor_index, anchor_view = torch.cat([indexes] * len(Z)), torch.cat(views)
        if self.ema_spec.is_none:
            cands = gather(self, torch.cat(Z), sync_grads=True)
            cand_index, cand_view = gather(self, anchor_index), gather(self, anchor_view)
        else:
            n = self.num_large_crops * len(indexes)  # the large crops come first
            cands = gather(self, torch.cat(outs["momentum_z"]).detach())
            cand_index, cand_view = gather(self, anchor_index[:n]), gather(self, anchor_view[:n])
        loss = nt_xent(torch.cat(Z), anchor_index, anchor_view, cands, cand_index, cand_view, T)
        self.log("train_nce_loss", loss, on_epoch=True, sync_dist=True)
        return loss + outs["loss"]
