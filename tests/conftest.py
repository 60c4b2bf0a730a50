"""Shared fixtures: tiny BYOL configs and models, seeded multi-crop batches, a toy encoder for pure-torch EMA."""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence

import pytest
import torch
from torch import nn

from solo_ema.pretrain import build_cfg, build_model

# Tiny tensors gain nothing from several threads and lose a lot on a loaded machine; subprocesses inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

# The small heads keep a BYOL step on 16x16 images well under a second on two CPU cores.
SMALL_HEADS = ["--proj_hidden_dim", "64", "--pred_hidden_dim", "64", "--proj_output_dim", "32"]


def small_argv(spec: str | None = "projector", *extra: str) -> list[str]:
    """Flags of a tiny BYOL run on the CIFAR-10 config (CIFAR stem, 10 classes), batch 8, 10 steps."""
    argv = ["--method", "byol", "--dataset", "cifar10", "--batch_size", "8", "--max_steps", "10", *SMALL_HEADS]
    if spec is not None:
        argv += ["--ema_parts", spec]
    return argv + list(extra)


def logged_taus(total: int, base: float = 0.99, final: float = 1.0) -> list[float]:
    """The tau of each of `total` EMA updates, from the paper's cosine schedule written out:
    tau_k = final - (final - base) * (cos(pi k / total) + 1) / 2, k = 0 .. total - 1."""
    return [final - (final - base) * (math.cos(math.pi * k / total) + 1) / 2 for k in range(total)]


@pytest.fixture(scope="module")
def single_thread():
    """Run torch on one thread for the module: tiny tensors gain nothing from two, and lose a lot under load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def small_args() -> Callable[..., list[str]]:
    """Factory: the command-line flags of a tiny BYOL run (small_argv)."""
    return small_argv


@pytest.fixture
def make_cfg() -> Callable[..., object]:
    """Factory: resolved config of a tiny BYOL for an EMA spec, plus extra flags."""

    def factory(spec: str | None = "projector", *extra: str):
        return build_cfg(small_argv(spec, *extra))

    return factory


@pytest.fixture
def make_model(make_cfg) -> Callable[..., nn.Module]:
    """Factory: a tiny BYOL model for an EMA spec, its weights drawn from a fixed seed (same seed, same weights)."""

    def factory(spec: str | None = "projector", *extra: str, seed: int = 0) -> nn.Module:
        cfg = make_cfg(spec, *extra)
        torch.manual_seed(seed)
        model = build_model(cfg)
        model.train()
        return model

    return factory


def random_batch(seed: int, batch: int = 8, size: int = 16, crops: int = 2, classes: int = 10) -> list:
    """A training batch [indexes, [crop_0, crop_1, ...], targets] of seeded random images."""
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(batch, 3, size, size, generator=gen) for _ in range(crops)]
    targets = torch.randint(0, classes, (batch,), generator=gen)
    return [torch.arange(batch), xs, targets]


@pytest.fixture
def make_batch() -> Callable[..., list]:
    """Factory: seeded random training batch [indexes, [x1, x2], targets] of 16x16 images."""
    return random_batch


def perturb_(params: Sequence[torch.Tensor] | nn.Module, seed: int, scale: float = 0.05) -> None:
    """Add seeded Gaussian noise to parameters (in place, without autograd)."""
    if isinstance(params, nn.Module):
        params = list(params.parameters())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


@pytest.fixture
def perturb() -> Callable[..., None]:
    """The in-place seeded parameter perturbation helper."""
    return perturb_


class ToyEncoder(nn.Module):
    """A small encoder (backbone MLP + projector MLP with BatchNorm) for pure-torch PartialEMA tests."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            OrderedDict(fc1=nn.Linear(6, 8), bn1=nn.BatchNorm1d(8), act1=nn.ReLU())
        )
        self.projector = nn.Sequential(
            OrderedDict(fc1=nn.Linear(8, 8), bn1=nn.BatchNorm1d(8), act1=nn.ReLU(), fc2=nn.Linear(8, 4))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))


@pytest.fixture
def toy() -> ToyEncoder:
    """A seeded ToyEncoder in train mode."""
    torch.manual_seed(0)
    return ToyEncoder().train()
