"""DINO with any EMA placement: self-distillation between a centred, sharpened teacher and the student."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from ..engine import BaseMomentumMethod
from ..engine.callbacks import logs_this_step
from ..engine.config import cfg_default
from ..engine.distributed import all_reduce_sum, world_size
from ..losses import dino_loss


class L2Norm(nn.Module):
    """L2-normalisation of the last dimension (parameter-free)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x / ||x||_2 along the last dimension."""
        return F.normalize(x, dim=-1)


class DINOHead(nn.Sequential):
    """mlp (in -> hidden -> hidden -> bottleneck, GELU) -> L2-normalise -> weight-normalised Linear to prototypes.

    A Sequential with children ``mlp``, ``l2norm`` and ``last_layer``, so the EMA spec ``projector``
    covers the whole head and ``projector.mlp`` / ``projector.last_layer`` (or ``projector.mlp.fc2``)
    can be named on their own. ``last_layer`` has no bias; its weight is ``g * v / ||v||`` per output
    row (torch's weight_norm parametrisation), with ``g`` filled with 1 and frozen when
    ``norm_last_layer``.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        bottleneck_dim: int,
        num_prototypes: int,
        use_bn: bool = False,
        norm_last_layer: bool = True,
        num_layers: int = 3,
    ) -> None:
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i in range(num_layers):
            layers[f"fc{i + 1}"] = nn.Linear(dims[i], dims[i + 1])
            if i < num_layers - 1:
                if use_bn:
                    layers[f"bn{i + 1}"] = nn.BatchNorm1d(dims[i + 1])
                layers[f"act{i + 1}"] = nn.GELU()
        mlp = nn.Sequential(layers)
        for m in mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        last_layer = weight_norm(nn.Linear(bottleneck_dim, num_prototypes, bias=False))
        g = last_layer.parametrizations.weight.original0
        with torch.no_grad():
            g.fill_(1.0)
        if norm_last_layer:
            g.requires_grad_(False)
        super().__init__(OrderedDict(mlp=mlp, l2norm=L2Norm(), last_layer=last_layer))


def teacher_temperature(epoch: int, warmup_temperature: float, temperature: float, warmup_epochs: int) -> float:
    """DINO's per-epoch teacher temperature: linspace(warmup, final, warmup_epochs)[epoch], then final.

    With ``warmup_epochs = W > 0`` epoch e < W gets ``warmup + (final - warmup) * e / (W - 1)`` (epoch 0 the
    warm-up value, epoch W - 1 the final one); with W = 0 every epoch gets the final value.
    """
    if warmup_epochs <= 0 or epoch >= warmup_epochs:
        return float(temperature)
    if warmup_epochs == 1:
        return float(warmup_temperature)
    return float(warmup_temperature + (temperature - warmup_temperature) * epoch / (warmup_epochs - 1))


@torch.no_grad()
def updated_center(center: torch.Tensor, teacher: torch.Tensor, momentum: float) -> torch.Tensor:
    """m * c + (1 - m) * mean of the teacher outputs (rows summed and counted over all processes)."""
    batch_sum = all_reduce_sum(teacher.detach().sum(dim=0, keepdim=True).to(center.dtype))
    batch_center = batch_sum / (teacher.size(0) * world_size())
    return center * momentum + batch_center * (1 - momentum)


class DINO(BaseMomentumMethod):
    """DINO: the student matches the centred, sharpened teacher distribution of every other crop.

    The projector attribute is the whole DINO head (``DINOHead``), so its momentum copy is the
    teacher head. The teacher runs on the large crops only; small crops are students only.
    ``freeze_last_layer`` drops the last layer's gradients for that many epochs and ``clip_grad``
    (> 0) clips each backbone parameter's gradient norm; both act after AMP unscaling, just before
    the optimizer step.
    """

    @staticmethod
    def add_and_assert_specific_cfg(cfg: DictConfig) -> DictConfig:
        """Defaults of the DINO head, temperatures, centre and last-layer options (solo-learn 1.0.5 / CIFAR)."""
        cfg = BaseMomentumMethod.add_and_assert_specific_cfg(cfg)
        cfg_default(cfg, "method_kwargs.proj_hidden_dim", 2048)
        cfg_default(cfg, "method_kwargs.proj_output_dim", 256)
        cfg_default(cfg, "method_kwargs.num_prototypes", 4096)
        cfg_default(cfg, "method_kwargs.use_bn_in_head", False)
        cfg_default(cfg, "method_kwargs.norm_last_layer", True)
        cfg_default(cfg, "method_kwargs.student_temperature", 0.1)
        cfg_default(cfg, "method_kwargs.teacher_temperature", 0.07)
        cfg_default(cfg, "method_kwargs.warmup_teacher_temperature", 0.04)
        cfg_default(cfg, "method_kwargs.warmup_teacher_temperature_epochs", 0)
        cfg_default(cfg, "method_kwargs.center_momentum", 0.9)
        cfg_default(cfg, "method_kwargs.freeze_last_layer", 1)
        cfg_default(cfg, "method_kwargs.clip_grad", 0.0)
        k = cfg.method_kwargs
        for key in ("student_temperature", "teacher_temperature", "warmup_teacher_temperature"):
            if not k[key] > 0:
                raise ValueError(f"{key} must be > 0, got {k[key]}")
        if not 0.0 <= k.center_momentum <= 1.0:
            raise ValueError(f"center_momentum must be in [0, 1], got {k.center_momentum}")
        return cfg

    def build_heads(self) -> None:
        """The DINO head as the projector, plus the centre buffer (1 x num_prototypes)."""
        k = self.cfg.method_kwargs
        self.projector = DINOHead(
            self.features_dim,
            k.proj_hidden_dim,
            k.proj_output_dim,
            k.num_prototypes,
            use_bn=k.use_bn_in_head,
            norm_last_layer=k.norm_last_layer,
        )
        self.with_projector_bn(self.projector.mlp, k.proj_output_dim)  # BN2 on the bottleneck output
        self.register_buffer("center", torch.zeros(1, k.num_prototypes))

    @property
    def learnable_params(self) -> list[dict[str, Any]]:
        """Base groups plus the DINO head."""
        return super().learnable_params + [{"name": "projector", "params": self.projector.parameters()}]

    @property
    def teacher_temperature(self) -> float:
        """The teacher temperature of the current epoch."""
        k = self.cfg.method_kwargs
        return teacher_temperature(
            self.current_epoch, k.warmup_teacher_temperature, k.teacher_temperature, k.warmup_teacher_temperature_epochs
        )

    def head_forward(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        """Prototype scores z (small crops too: they are students only)."""
        return {"z": self.project(feats)}

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> torch.Tensor:
        """DINO loss of every (teacher large crop, other student crop) pair, then the centre update."""
        outs = super().training_step(batch, batch_idx)
        k = self.cfg.method_kwargs
        teacher = outs["momentum_z"]
        loss = dino_loss(outs["z"], teacher, self.center, k.student_temperature, self.teacher_temperature)
        self.center.copy_(updated_center(self.center, torch.cat(teacher), k.center_momentum))
        self.log("train_dino_loss", loss, on_epoch=True, sync_dist=True)
        if logs_this_step(self._trainer):  # a Python number: logged only where Lightning writes it
            self.log("teacher_temperature", self.teacher_temperature, on_step=True, on_epoch=False)
        return loss + outs["loss"]

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip backbone gradients per parameter (clip_grad > 0); drop last-layer grads while frozen."""
        k = self.cfg.method_kwargs
        if k.clip_grad > 0:
            clip_gradients(self.backbone.parameters(), k.clip_grad)
        if self.current_epoch < k.freeze_last_layer:
            for p in self.projector.last_layer.parameters():
                p.grad = None


@torch.no_grad()
def clip_gradients(params: Any, clip: float) -> None:
    """DINO's per-parameter clipping: g <- g * clip / (||g|| + 1e-6) wherever that factor is below 1."""
    for p in params:
        if p.grad is None:
            continue
        coef = clip / (p.grad.norm(2) + 1e-6)
        p.grad.mul_(coef.clamp(max=1.0))
