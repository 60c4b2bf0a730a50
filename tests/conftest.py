"""Shared fixtures: tiny BYOL configs and models, seeded multi-crop batches, a toy encoder for pure-torch EMA.

Also the suite's policy on optional dependencies (solo-learn, DALI, Fashion-MNIST): where one is missing a
test may skip, but under ``CI=true`` every skip, a whole module's included, is reported as a failure.
"""

from __future__ import annotations

import math
import os
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from torch import nn

from solo_ema.pretrain import build_cfg, build_model
from solo_ema.solo_learn_check import INSTALL_HINT, solo_import_error
from solo_ema.solo_pretrain import ROOT_ENV, find_solo_root

REPO = Path(__file__).resolve().parents[1]
#: CI runs everything: there a skip (a missing solo-learn, a DALI that fails to import, ...) is a failure
IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}
#: the solo-learn snapshot kept beside the project's root on developer machines and in CI
SHARED_SOLO_LEARN = REPO.parent / "shared" / "solo-learn"

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


# -- optional dependencies ------------------------------------------------------------------------------------------
def solo_learn_root() -> tuple[Path | None, str]:
    """The solo-learn checkout the plug-in tests use, or None and why there is none.

    ``$SOLO_LEARN_ROOT`` (a user's checkout) first, then the folder above an importable ``solo``
    package, then ``../shared/solo-learn`` beside the project's root.
    """
    try:
        return find_solo_root(None, os.environ.get(ROOT_ENV)), ""
    except FileNotFoundError as err:
        if os.environ.get(ROOT_ENV):
            return None, str(err)
    if (SHARED_SOLO_LEARN / "main_pretrain.py").is_file():
        return SHARED_SOLO_LEARN, ""
    return None, f"solo-learn not found: `make solo-learn` (SOLO_LEARN_ROOT=PATH of a checkout), or {INSTALL_HINT}"


def use_solo_learn() -> Path:
    """Put solo-learn's checkout on sys.path and check that it imports; skip the calling module otherwise."""
    root, reason = solo_learn_root()
    if root is None:
        pytest.skip(reason, allow_module_level=True)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    error = solo_import_error()
    if error is not None:
        pytest.skip(f"{root}: {error}", allow_module_level=True)
    return root


class SkippedUnderCI(pytest.Item):
    """Takes the place of a test module that skipped itself at import: under CI=true that is a failure."""

    def __init__(self, *, reason: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.reason = reason

    def runtest(self) -> None:
        """Fail with the module's skip reason."""
        pytest.fail(f"skipped under CI=true: {self.reason}", pytrace=False)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        """Where the failure points: the skipped module."""
        return self.path, None, f"{self.path.name} skipped"


def _skip_reason(longrepr: object) -> str:
    """The message of a skip report (pytest stores it as (file, line, 'Skipped: reason'))."""
    message = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return message.removeprefix("Skipped: ")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    """Under CI=true a module that skips itself at import becomes one failing item (the rest of the run goes on)."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and isinstance(collector, pytest.Module):
        item = SkippedUnderCI.from_parent(collector, name="module_skipped", reason=_skip_reason(report.longrepr))
        report.outcome, report.longrepr, report.result = "passed", None, [item]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Under CI=true a skipped test (skip, skipif, importorskip) is reported as failed, with its reason."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true: {_skip_reason(report.longrepr)}"
        report.when = "call"  # a skipif mark acts at set-up: report the test as failed, not as a set-up error
