"""The GPU fast path computes the same training as the eager path.

What runs here, on the CPU: batches made one ahead (the same batches, in the same order), the hue step without
reading a count back (the same pixels), accuracies without boolean-mask indexing (the same numbers), the loss
check read every N steps (the same stop, named at the right step, before any checkpoint), Python numbers logged
only on the steps whose metrics are written (the same values there), and torch.compile of the stages (the same
losses, gradients and EMA copies; the ``aot_eager`` backend traces and partitions the graphs as on a GPU, the
GPU's inductor code generation is left to benchmarks/epoch_time.py).
"""

from __future__ import annotations

import csv
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import random_batch, small_argv
from test_device_data import HALF, MEAN, STD
from test_reliability import image_folder, run_argv

from solo_ema.data.device import DevicePretrainLoader, color_jitter, sample_view_params
from solo_ema.data.prefetch import prefetched
from solo_ema.engine.base import accuracy_at_k
from solo_ema.engine.compile import compile_stages
from solo_ema.engine.reliability import NonFiniteLossError, NonFiniteLossGuard
from solo_ema.pretrain import build_cfg, build_model
from solo_ema.train import run_pretrain

pytestmark = pytest.mark.usefixtures("single_thread")


# batches made one ahead ------------------------------------------------------------------------------------------
def test_prefetched_makes_each_item_one_ahead_and_keeps_items_and_order() -> None:
    """Item i + 1 is made before item i is handed out (never two ahead), and the items are the source's."""
    made: list[int] = []

    def source():
        for i in range(5):
            made.append(i)
            yield {"x": torch.full((2,), float(i)), "i": i}

    seen = []
    for item in prefetched(source(), "cpu"):
        seen.append(item["i"])
        assert made == list(range(min(item["i"] + 2, 5))), "exactly one item ahead"
    assert seen == list(range(5))
    assert list(prefetched(iter([]), "cpu")) == []


def test_prefetching_device_loader_yields_exactly_the_plain_loaders_batches() -> None:
    """Two epochs of a device-held split with every augmentation on: the prefetching loader's batches equal the
    plain loader's bitwise (indexes, every crop, labels), also when an epoch is left after two batches."""
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (40, 3, 20, 20), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (40,), generator=g)
    recipes = [HALF, HALF]

    def epochs(prefetch: bool, stop_after: int | None = None) -> list:
        loader = DevicePretrainLoader(images, labels, recipes, MEAN, STD, batch_size=8, seed=7, prefetch=prefetch)
        out = []
        for epoch in range(2):
            loader.sampler.set_epoch(epoch)
            for b, batch in enumerate(loader):
                out.append(batch)
                if stop_after is not None and b + 1 == stop_after:
                    break
        return out

    for stop in (None, 2):
        plain, ahead = epochs(False, stop), epochs(True, stop)
        assert len(plain) == len(ahead) == (10 if stop is None else 4)
        for (i1, c1, y1), (i2, c2, y2) in zip(plain, ahead, strict=True):
            assert torch.equal(i1, i2) and torch.equal(y1, y2)
            assert len(c1) == len(c2) == 2 and all(torch.equal(a, b) for a, b in zip(c1, c2, strict=True))


def test_hue_step_on_all_images_then_selected_equals_the_selected_images_only() -> None:
    """The hue step's sync-free form (every image through HSV, the selected ones kept) gives the same pixels,
    bitwise, as running it on the selected images only."""
    g = torch.Generator().manual_seed(11)
    x = torch.rand(64, 3, 12, 12, generator=g)
    params = sample_view_params(HALF, 64, 12, 12, g)
    assert (params.jitter & (params.order == 3).any(dim=1)).any()
    indexed = color_jitter(x.clone(), params.factors, params.order, params.jitter)
    masked = color_jitter(x.clone(), params.factors, params.order, params.jitter, masked=True)
    assert torch.equal(indexed, masked)


def test_accuracy_at_k_ignores_negative_targets_as_a_plain_count() -> None:
    """Top-1 / top-5 in percent over the targets >= 0, against a loop over the rows; 0 when none is left."""
    g = torch.Generator().manual_seed(5)
    for trial in range(5):
        logits = torch.randn(33, 12, generator=g)
        targets = torch.randint(-1, 12, (33,), generator=g)
        kept = [(row, int(t)) for row, t in zip(logits, targets, strict=True) if t >= 0]
        for k, got in zip((1, 5), accuracy_at_k(logits, targets), strict=True):
            hits = sum(t in row.topk(k).indices.tolist() for row, t in kept)
            assert float(got) == pytest.approx(100.0 * hits / len(kept), abs=1e-4), (trial, k)
    none = accuracy_at_k(torch.randn(4, 3, generator=g), torch.full((4,), -1))
    assert [float(a) for a in none] == [0.0, 0.0]


# the loss check read every N steps -------------------------------------------------------------------------------
class _Trainer:
    """The two attributes the guard reads."""

    def __init__(self) -> None:
        self.global_step, self.current_epoch = 0, 0


def test_deferred_loss_check_names_the_first_bad_step_at_the_next_check_or_checkpoint() -> None:
    """check_every=4: a NaN at step 5 and an inf at step 6 are not read at once; the check at step 8 raises naming
    step 5 and its value; a checkpoint (or epoch end) before step 8 raises too. check_every=1 raises at once."""
    trainer = _Trainer()
    guard = NonFiniteLossGuard(check_every=4)
    losses = {5: float("nan"), 6: float("inf")}
    for step in range(8):
        trainer.global_step = step
        guard.on_before_backward(trainer, None, torch.tensor(losses.get(step, 1.0), requires_grad=True))
        trainer.global_step = step + 1
        if step + 1 < 8:
            guard.on_train_batch_end(trainer, None, None, None, step)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 5; the run stopped at step 8"):
        guard.on_train_batch_end(trainer, None, None, None, 7)
    with pytest.raises(NonFiniteLossError, match="at step 5"):
        guard.on_save_checkpoint(trainer, None, {})
    with pytest.raises(NonFiniteLossError, match="at step 5"):
        guard.on_train_epoch_end(trainer, None)
    clean = NonFiniteLossGuard(check_every=4)
    clean.on_before_backward(trainer, None, torch.tensor(2.0))
    clean.on_save_checkpoint(trainer, None, {})  # nothing recorded: no raise
    with pytest.raises(NonFiniteLossError, match="at step 8 .*before the update"):
        NonFiniteLossGuard(check_every=1).on_before_backward(trainer, None, torch.tensor(float("nan")))


def test_deferred_loss_check_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real run checking every 4 steps, checkpointing every 2: a NaN loss from step 5 on stops the run at the
    checkpoint of step 6, which is not written; last.ckpt stays the one of step 4 and holds finite weights."""
    import solo_ema.methods.byol as byol
    import solo_ema.train as train

    data = image_folder(tmp_path / "data", per_class=32)  # 8 steps of 8 images
    calls = {"n": 0}
    real = byol.byol_loss

    def poisoned(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return real(p, z) * float("nan") if calls["n"] > 10 else real(p, z)  # 2 terms per step: steps 0-4 fine

    monkeypatch.setattr(byol, "byol_loss", poisoned)
    real_guard = train.NonFiniteLossGuard
    monkeypatch.setattr(train, "NonFiniteLossGuard", lambda check_every: real_guard(check_every=4))
    argv = run_argv(data, tmp_path / "runs", "nan", "--checkpoint_every_n_steps", "2", "--max_epochs", "1")
    with pytest.raises(NonFiniteLossError, match="at step 5; the run stopped at step 6"):
        run_pretrain(build_cfg(argv))
    last = torch.load(tmp_path / "runs" / "nan" / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


# Python numbers logged only where metrics are written ------------------------------------------------------------
def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_host_numbers_are_logged_on_written_steps_with_the_same_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """log_every_n_steps 3 against 1 on the same run: tau, step_time and the DINO temperature (Python numbers,
    which Lightning copies to the device when logged) are handed to self.log on the written steps only (2, 5, 8 of
    9), the CSV has them there, and tau there equals the every-step run's tau."""
    host_numbers = ("tau", "step_time", "teacher_temperature")
    calls: list[tuple[str, int]] = []
    real_log = pl.LightningModule.log

    def recording_log(module, name, value, *args, **kwargs):
        if name in host_numbers:
            calls.append((name, module.trainer.global_step))
        return real_log(module, name, value, *args, **kwargs)

    monkeypatch.setattr(pl.LightningModule, "log", recording_log)
    data = image_folder(tmp_path / "data", per_class=40)  # 10 steps of 8 images
    taus = {}
    for every in (1, 3):
        calls.clear()
        argv = run_argv(data, tmp_path / "runs", f"every{every}", "--method", "dino", "--max_epochs", "1",
                        "--max_steps", "9", "--proj_output_dim", "16", "--num_prototypes", "32")
        cfg = build_cfg([a for a in argv if a != "--save_checkpoint"])
        cfg.logging.every_n_steps = every
        run_pretrain(cfg)
        written = set(range(9)) if every == 1 else {2, 5, 8}
        for key in host_numbers:  # tau and step_time are logged after the step's update, the temperature before it
            steps = {s - (key != "teacher_temperature") for k, s in calls if k == key}
            assert steps == written, (key, sorted(steps))
        rows = _rows(tmp_path / "runs" / f"every{every}")
        taus[every] = {int(r["step"]): float(r["tau"]) for r in rows if r.get("tau")}
        for key in ("step_time", "teacher_temperature"):
            assert {int(r["step"]) for r in rows if r.get(key)} == set(taus[every]), key
    assert sorted(taus[1]) == list(range(9)) and sorted(taus[3]) == [2, 5, 8]
    assert all(taus[3][s] == taus[1][s] for s in taus[3])


# torch.compile of the stages -------------------------------------------------------------------------------------
def _step(model: pl.LightningModule, batch: list, lr: float = 0.1) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One manual training step: loss, backward, SGD update of the online parameters, EMA update."""
    loss = model.training_step(batch, 0)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.add_(p.grad, alpha=-lr)
                p.grad = None
    model.ema.step(10)
    return loss.detach(), grads


@pytest.mark.parametrize(("method", "spec"), [("byol", "all"), ("byol", "projector"), ("byol", "block4+projector"),
                                              ("byol", "block2"), ("mocov2plus", "projector")])
def test_compiled_stages_compute_the_eager_step(method: str, spec: str) -> None:
    """The same model with its layers and heads compiled (and their momentum copies): over three steps the same
    losses, gradients, online weights, EMA copies and BatchNorm buffers as the eager model; hooks still feed the
    target pass (block2: shared stages after an EMA stage run on copies of their buffers)."""
    extra = ["--queue_size", "16"] if method == "mocov2plus" else []
    cfg = build_cfg(small_argv(spec, "--method", method, *extra))

    def make() -> pl.LightningModule:
        torch.manual_seed(0)
        return build_model(cfg).train()

    eager, fast = make(), make()
    names = compile_stages(fast, backend="aot_eager")
    assert {"backbone.layer1", "backbone.layer4", "projector"} <= set(names)
    assert ("ema.copies.projector" in names) == (spec in ("all", "projector", "block4+projector"))
    assert fast.state_dict().keys() == eager.state_dict().keys()
    for step in range(3):
        batch = random_batch(40 + step)
        (l1, g1), (l2, g2) = _step(eager, batch), _step(fast, batch)
        torch.testing.assert_close(l2, l1, rtol=1e-5, atol=1e-6)
        assert g1.keys() == g2.keys()
        for name in g1:
            torch.testing.assert_close(g2[name], g1[name], rtol=1e-4, atol=1e-5, msg=f"step {step}: {name}")
    s1, s2 = eager.state_dict(), fast.state_dict()
    for key in s1:
        torch.testing.assert_close(s2[key], s1[key], rtol=1e-4, atol=1e-5, msg=key)
    assert int(fast.ema.num_updates) == 3


def test_compiled_run_through_the_command_line_ends_where_the_eager_run_ends(tmp_path: Path) -> None:
    """--compile (aot_eager) against the same run without it, 3 steps of a real run with LARS and validation:
    every tensor of the final model (online, EMA copies, BN buffers) agrees to float tolerance, and the
    compiled run's config records the flags."""
    data = image_folder(tmp_path / "data", per_class=12)
    states = {}
    for name, extra in (("eager", []), ("compiled", ["--compile", "--compile_backend", "aot_eager"])):
        argv = run_argv(data, tmp_path / "runs", name, "--ema_parts", "block4+projector", "--max_steps", "3",
                        "--limit_val_batches", "1.0", "--val_subset", "4", *extra)
        cfg = build_cfg([a for a in argv if a != "--save_checkpoint"])
        assert cfg.performance.compile == (name == "compiled")
        torch.use_deterministic_algorithms(True)
        try:
            states[name] = run_pretrain(cfg).model.state_dict()
        finally:
            torch.use_deterministic_algorithms(False)
    assert states["eager"].keys() == states["compiled"].keys()
    for key, value in states["eager"].items():
        torch.testing.assert_close(states["compiled"][key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_fast_path_flags_resolve_and_bad_values_are_one_line(capsys: pytest.CaptureFixture) -> None:
    """--compile, --compile_backend, --no_prefetch and --log_every_n_steps land in the config (defaults: no
    compile, inductor, prefetch, the device's interval); --log_every_n_steps 0 is a usage error."""
    from solo_ema.pretrain import main

    default = build_cfg(small_argv())
    assert (default.performance.compile, default.performance.compile_backend, default.performance.prefetch,
            default.logging.every_n_steps) == (False, "inductor", True, None)
    cfg = build_cfg(small_argv("projector", "--compile", "--compile_backend", "aot_eager", "--no_prefetch",
                               "--log_every_n_steps", "7"))
    assert (cfg.performance.compile, cfg.performance.compile_backend, cfg.performance.prefetch,
            cfg.logging.every_n_steps) == (True, "aot_eager", False, 7)
    assert main(small_argv("projector", "--log_every_n_steps", "0")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--log_every_n_steps" in err[0]
