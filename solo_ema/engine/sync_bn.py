"""Synchronised BatchNorm for CPU processes (gloo): torch's SyncBatchNorm runs only on accelerators."""

from __future__ import annotations

import torch
import torch.distributed as dist
from lightning.pytorch.plugins import LayerSync
from torch import nn


class _SumOverProcesses(torch.autograd.Function):
    """All-reduce sum whose gradient is the all-reduce sum of the processes' gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def _synchronised() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _SyncOnCPU:
    """BatchNorm whose training pass on several processes normalises with the statistics of all their batches.

    The mean and (biased) variance are those of the union of every process's batch, from two all-reduces (the
    gradient flows through them, as with torch's SyncBatchNorm); the running statistics take the union's
    unbiased variance. In evaluation, or on one process, it is the plain BatchNorm.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Batch-normalise `input` with the statistics of all processes' batches when training (see the class)."""
        if not (self.training and _synchronised()):
            return super().forward(input)
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        dims = [0, *range(2, input.dim())]
        shape = (1, -1) + (1,) * (input.dim() - 2)
        count = torch.tensor([input.numel() // input.size(1)], dtype=torch.float64)
        dist.all_reduce(count)
        n = float(count)
        mean = _SumOverProcesses.apply(input.sum(dims)) / n
        centred = input - mean.view(shape)
        var = _SumOverProcesses.apply((centred * centred).sum(dims)) / n
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(var.detach() * (n / max(n - 1.0, 1.0)), factor)
        return out


class CPUSyncBatchNorm1d(_SyncOnCPU, nn.BatchNorm1d):
    """BatchNorm1d synchronised over processes (see _SyncOnCPU)."""


class CPUSyncBatchNorm2d(_SyncOnCPU, nn.BatchNorm2d):
    """BatchNorm2d synchronised over processes (see _SyncOnCPU)."""


class CPUSyncBatchNorm3d(_SyncOnCPU, nn.BatchNorm3d):
    """BatchNorm3d synchronised over processes (see _SyncOnCPU)."""


SYNCED = {nn.BatchNorm1d: CPUSyncBatchNorm1d, nn.BatchNorm2d: CPUSyncBatchNorm2d, nn.BatchNorm3d: CPUSyncBatchNorm3d}


class CPUSyncBatchNorm(LayerSync):
    """``--sync_batchnorm`` on CPU: every BatchNorm of the model (momentum copies included) synchronised.

    torch's SyncBatchNorm has no CPU kernels and DDP refuses it on CPU modules, so the BatchNorm modules keep
    their identity (parameters, buffers, hooks) and only change class, to their ``CPUSyncBatchNorm*d``.
    """

    def apply(self, model: nn.Module) -> nn.Module:
        """Make every BatchNorm1d/2d/3d of the model synchronised, in place."""
        for module in model.modules():
            if type(module) in SYNCED:
                module.__class__ = SYNCED[type(module)]
        return model

    def revert(self, model: nn.Module) -> nn.Module:
        """Make them plain BatchNorm again, in place."""
        plain = {v: k for k, v in SYNCED.items()}
        for module in model.modules():
            if type(module) in plain:
                module.__class__ = plain[type(module)]
        return model

