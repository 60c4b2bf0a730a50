"""Shared fixtures: tiny BYOL configs and models, seeded multi-crop batches, a toy encoder for pure-torch EMA.

Also the suite's policy on optional dependencies (solo-learn, DALI, Fashion-MNIST): where one is missing a
test may skip, but under ``CI=true`` every skip, a whole module's included, is reported as a failure.
"""

from __future__ import annotations

import importlib.util
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

REPO = Path(__file__).resolve().parents[1]
#: CI runs everything: there a skip (a missing solo-learn, a DALI that fails to import, ...) is a failure
IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}
#: the solo-learn snapshot kept beside the project's root on developer machines and in CI
SHARED_SOLO_LEARN = REPO.parent / "shared" / "solo-learn"
#: the variable naming a user's solo-learn checkout (solo_ema.solo.check.ROOT_ENV)
SOLO_ROOT_ENV = "SOLO_LEARN_ROOT"

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
    """The solo-learn checkout the plug-in tests use, or None and why there is none (imports no solo-learn).

    ``$SOLO_LEARN_ROOT`` (a user's checkout) first, then the folder above an importable ``solo``
    package, then ``../shared/solo-learn`` beside the project's root; a checkout holds main_pretrain.py.
    """
    env = os.environ.get(SOLO_ROOT_ENV)
    if env:
        root = Path(env).expanduser().resolve()
        if (root / "main_pretrain.py").is_file():
            return root, ""
        return None, f"${SOLO_ROOT_ENV}={env}: no main_pretrain.py there (it must be a solo-learn checkout)"
    try:
        spec = importlib.util.find_spec("solo")
    except (ImportError, ValueError):
        spec = None
    installed = Path(spec.origin).resolve().parents[1] if spec is not None and spec.origin else None
    for root in (installed, SHARED_SOLO_LEARN):
        if root is not None and (root / "main_pretrain.py").is_file():
            return root, ""
    return None, f"solo-learn not found: `make solo-learn` ({SOLO_ROOT_ENV}=PATH of a checkout); see docs/solo_learn.md"


def use_solo_learn() -> Path:
    """Put solo-learn's checkout on sys.path and import the plug-in over it; skip the calling module otherwise."""
    root, reason = solo_learn_root()
    if root is None:
        pytest.skip(reason, allow_module_level=True)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        import solo_ema.solo  # noqa: F401
    except ImportError as err:
        pytest.skip(f"{root}: {err}", allow_module_level=True)
    return root


#: a stand-in solo-learn checkout: solo.methods (BYOL only) and a main_pretrain.py that prints what it sees
#: (its arguments, the methods registered, where solo came from, $SOLO_LEARN_ROOT, the solo_ema modules loaded)
STANDIN_CHECKOUT = {
    "solo/__init__.py": "",
    "solo/methods/base.py": "class BaseMethod:\n    pass\n\n\nclass BaseMomentumMethod(BaseMethod):\n    pass\n",
    "solo/methods/__init__.py": (
        "from solo.methods.base import BaseMomentumMethod\n\n"
        "METHODS = {'byol': type('BYOL', (BaseMomentumMethod,), {})}\n"
    ),
    "main_pretrain.py": (
        "import json, os, sys\n"
        "import solo\n"
        "from solo.methods import METHODS\n\n\n"
        "def main():\n"
        "    print(json.dumps({'argv': sys.argv, 'methods': sorted(METHODS), 'solo': solo.__file__,\n"
        "                      'env': os.environ.get('SOLO_LEARN_ROOT'),\n"
        "                      'modules': sorted(m for m in sys.modules if m.split('.')[0] == 'solo_ema')}))\n"
    ),
}


def write_standin_checkout(root: Path) -> Path:
    """Write STANDIN_CHECKOUT under `root` (a folder on no path, as a clone that is not pip-installed); returns it."""
    for name, text in STANDIN_CHECKOUT.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
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
