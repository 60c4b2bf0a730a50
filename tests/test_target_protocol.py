"""The target protocol of the core: PartialEMA.capture / target / clear / remove_hooks.

The online pass of a crop is recorded only inside ``ema.capture(X)``; ``ema.target(X)`` resumes from that
capture or runs from the images, and both faces (the Lightning engine and the solo-learn plug-in) reach the
target through that one method. Tiny BYOL on 16x16 images (ResNet-18, CIFAR stem).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from conftest import random_batch
from torch import nn

from solo_ema.ema import PartialEMA, parse_ema_spec, spec_paths
from solo_ema.engine.base import BaseMomentumMethod

pytestmark = pytest.mark.usefixtures("single_thread")

PROTOCOL_SPECS = ["projector", "block4+projector", "all", "none"]


def online_hooks(model: nn.Module) -> int:
    """Forward and forward-pre hooks on the online modules (the momentum copies under ema.* left out)."""
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks)
        for name, m in model.named_modules()
        if not name.startswith("ema.")
    )


def online_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Clones of the online BatchNorm buffers."""
    return {k: v.clone() for k, v in model.named_buffers() if not k.startswith("ema.")}


@contextmanager
def stem_runs(model: nn.Module) -> Iterator[list[int]]:
    """Count the forwards of the online stem (backbone.conv1) inside the block."""
    runs: list[int] = []
    handle = model.backbone.conv1.register_forward_hook(lambda *_: runs.append(1))
    try:
        yield runs
    finally:
        handle.remove()


@contextmanager
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Count the calls of PartialEMA.capture and PartialEMA.target made inside the block."""
    calls = {"capture": 0, "target": 0}
    capture, target = PartialEMA.capture, PartialEMA.target

    def counting_capture(self, X):
        calls["capture"] += 1
        return capture(self, X)

    def counting_target(self, X, prepare=None):
        calls["target"] += 1
        return target(self, X, prepare)

    with monkeypatch.context() as patch:
        patch.setattr(PartialEMA, "capture", counting_capture)
        patch.setattr(PartialEMA, "target", counting_target)
        yield calls


def test_forwards_outside_capture_leave_nothing_behind(make_model) -> None:
    """Other online forwards (another batch, a feature extraction) neither replace X's capture nor add one."""
    model = make_model("block4+projector")
    gen = torch.Generator().manual_seed(1)
    x, other = torch.randn(6, 3, 16, 16, generator=gen), torch.randn(6, 3, 16, 16, generator=gen)
    model(other)
    assert model.ema.pending == 0
    with model.ema.capture(x):
        model(x)
    with torch.no_grad():
        model(other)
        model.backbone(other)  # e.g. the features of a kNN or a linear probe
    assert model.ema.pending == 1
    with stem_runs(model) as runs:
        resumed = model.ema.target(x)
    assert not runs and model.ema.pending == 0  # from x's capture, now forgotten
    with stem_runs(model) as runs:
        from_images = model.ema.target(x)
    assert len(runs) == 1 and model.ema.pending == 0
    for key in ("feats", "z"):
        torch.testing.assert_close(resumed[key], from_images[key], rtol=1e-5, atol=1e-5)


def test_clear_forgets_every_capture_and_nested_captures_fail(make_model) -> None:
    """clear() drops what is held (the next target of X runs from images); a capture inside a capture is an error."""
    model = make_model("projector")
    x, y = random_batch(2)[1]
    for crop in (x, y):
        with model.ema.capture(crop):
            model(crop)
    assert model.ema.pending == 2
    model.ema.clear()
    assert model.ema.pending == 0
    with stem_runs(model) as runs:
        model.ema.target(x)
    assert len(runs) == 1
    with pytest.raises(RuntimeError, match="already capturing"), model.ema.capture(x), model.ema.capture(y):
        pass
    with model.ema.capture(x):
        model(x)  # the failed nesting left no capture open
    assert model.ema.pending == 1


@pytest.mark.parametrize("spec", PROTOCOL_SPECS)
def test_target_from_capture_equals_target_from_images_in_float64(make_model, perturb, spec: str) -> None:
    """In float64 the resumed target equals the target from the images; neither moves the online BN statistics."""
    model = make_model(spec).double()
    perturb(model.ema.copies, seed=3, scale=0.05)
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with model.ema.capture(x):
        model(x)
    before = online_buffers(model)
    assert any(k.endswith("num_batches_tracked") for k in before)
    with stem_runs(model) as runs:
        resumed = model.ema.target(x)
        from_images = model.ema.target(x)  # nothing held for x any more
    # the resumed pass runs no online stem; from the images it does, unless the stem is a momentum copy ('all')
    assert len(runs) == (0 if spec == "all" else 1)
    assert set(resumed) == set(from_images) == {"feats", "z"}
    for key in ("feats", "z"):
        assert resumed[key].dtype == torch.float64 and not resumed[key].requires_grad
        torch.testing.assert_close(resumed[key], from_images[key], rtol=1e-10, atol=1e-10)
    after = online_buffers(model)
    for name, buf in before.items():
        assert torch.equal(after[name], buf), name


@pytest.mark.parametrize(("spec", "hooks"), [("projector", 2), ("block4+projector", 1), ("all", 0), ("none", 2)])
def test_remove_hooks_leaves_no_hook_on_the_online_modules(make_model, spec: str, hooks: int) -> None:
    """PartialEMA adds its capture hooks (input of the first EMA part, outputs before it); remove_hooks takes all."""
    model = make_model(spec)
    with_hooks = online_hooks(model)
    model.ema.remove_hooks()
    bare = online_hooks(model)
    assert with_hooks - bare == hooks
    second = PartialEMA(model, model.encoder_stages(), spec_paths(parse_ema_spec(spec)))
    assert online_hooks(model) == bare + hooks
    second.remove_hooks()
    assert online_hooks(model) == bare
    x = random_batch(5)[1][0]
    with model.ema.capture(x):
        model(x)  # without hooks nothing is recorded: the target runs from the images
    with stem_runs(model) as runs:
        model.ema.target(x)
    assert len(runs) == (0 if spec == "all" else 1)  # 'all' keeps a momentum stem


def test_engine_step_goes_through_the_core_once_per_large_crop(make_model, monkeypatch) -> None:
    """Engine: one capture and one target per large crop, none for small crops; validation targets from images."""
    model = make_model("block4+projector", "--num_crops_per_aug", "2", "2", "--crop_size", "16", "8",
                       "--momentum_classifier")
    _, large, targets = random_batch(6)
    small = [torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    with counted(monkeypatch) as calls:
        outs = BaseMomentumMethod.training_step(model, [torch.arange(8), large + small, targets], 0)
    assert calls == {"capture": 2, "target": 2} and model.ema.pending == 0
    assert len(outs["momentum_z"]) == 2 and len(outs["z"]) == 4
    with counted(monkeypatch) as calls, stem_runs(model) as runs:
        metrics = model.validation_step([large[0], targets], 0)
    assert calls == {"capture": 0, "target": 1} and len(runs) == 2  # online pass + target pass from images
    assert torch.isfinite(torch.as_tensor(metrics["momentum_val_loss"]))
    assert model.ema.pending == 0


def test_plugin_step_goes_through_the_core_once_per_large_crop(monkeypatch) -> None:
    """solo-learn plug-in: the same core calls as the engine; its validation step resumes from the capture."""
    from test_solo_plugin import BATCH, METHODS, make_cfg  # puts solo-learn on sys.path (skips without it)

    cfg = make_cfg("byol_ema", "block4+projector", dataset="cifar10")
    cfg.data.num_small_crops = 2
    torch.manual_seed(0)
    model = METHODS["byol_ema"](cfg)
    gen = torch.Generator().manual_seed(8)
    large = [torch.randn(BATCH, 3, 16, 16, generator=gen) for _ in range(2)]
    small = [torch.randn(BATCH, 3, 8, 8, generator=gen) for _ in range(2)]
    targets = torch.randint(0, 10, (BATCH,), generator=gen)
    with counted(monkeypatch) as calls:
        loss = model.training_step([torch.arange(BATCH), large + small, targets], 0)
    assert calls == {"capture": 2, "target": 2} and model.ema.pending == 0
    assert torch.isfinite(loss)
    with counted(monkeypatch) as calls, stem_runs(model) as runs:
        model.validation_step([large[0], targets], 0)
    assert calls == {"capture": 1, "target": 1} and len(runs) == 1  # the target resumed from the capture
    assert model.ema.pending == 0
