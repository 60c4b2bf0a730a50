"""Reliability: exact resume, atomic checkpoints, non-finite losses, one-line errors for bad input."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image

from solo_ema.engine.reliability import AtomicCheckpointIO, NonFiniteLossError
from solo_ema.pretrain import build_cfg, main
from solo_ema.train import run_pretrain

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = ["--proj_hidden_dim", "32", "--pred_hidden_dim", "32", "--proj_output_dim", "16"]


def image_folder(root: Path, classes: int = 2, per_class: int = 8, size: int = 20) -> Path:
    """A folder of random PNG images, one sub-folder per class."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


def run_argv(data: Path, log_dir: Path, name: str, *extra: str) -> list[str]:
    """A tiny custom-folder run: 16 images, batch 8 (2 steps per epoch), 2 epochs, checkpoints on."""
    return [
        "--method", "byol", "--dataset", "custom", "--data_dir", str(data), "--crop_size", "16",
        "--batch_size", "8", "--max_epochs", "2", "--num_workers", "0", "--limit_val_batches", "0",
        "--log_dir", str(log_dir), "--name", name, "--save_checkpoint", "--optimizer", "lars",
        "--warmup_steps", "1", *TINY, *extra,
    ]


class StopAfterFirstEpoch(pl.Callback):
    """Ends fit after epoch 0, as a pre-empted job would (its checkpoint is written first)."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.should_stop = True


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


RESUME_CASES = {
    "byol-projector": ["--ema_parts", "projector"],
    "mocov2plus-all": ["--method", "mocov2plus", "--ema_parts", "all", "--queue_size", "32", "--optimizer", "sgd"],
}


@pytest.mark.parametrize("extra", list(RESUME_CASES.values()), ids=list(RESUME_CASES))
def test_resume_is_bitwise_exact(tmp_path: Path, extra: list[str]) -> None:
    """N steps straight equal N/2 steps, stop, resume, N/2 steps: online, momentum, queue, buffers bitwise."""
    data = image_folder(tmp_path / "data")
    torch.use_deterministic_algorithms(True)
    try:
        straight = run_pretrain(build_cfg(run_argv(data, tmp_path / "runs", "straight", *extra)))
        first = run_pretrain(
            build_cfg(run_argv(data, tmp_path / "runs", "split", *extra)), extra_callbacks=[StopAfterFirstEpoch()]
        )
        assert first.trainer.global_step == 2
        resumed = run_pretrain(build_cfg(run_argv(data, tmp_path / "runs", "split", "--auto_resume", *extra)))
    finally:
        torch.use_deterministic_algorithms(False)
    assert resumed.trainer.global_step == straight.trainer.global_step == 4
    a, b = _state(straight.model), _state(resumed.model)
    assert a.keys() == b.keys()
    assert int(b["ema.num_updates"]) == 4
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"differ after resume: {different[:5]}"
    if "queue" in a:
        assert int(b["queue_ptr"]) == 0 and not torch.equal(b["queue"], _state(first.model)["queue"])
    momentum = [k for k in a if k.startswith("ema.copies.")]
    assert momentum and all(torch.equal(a[k], b[k]) for k in momentum)
    metrics = (tmp_path / "runs" / "split" / "metrics.csv").read_text().splitlines()
    steps = {line.split(",")[0] for line in metrics[1:]}
    assert len(metrics) > 4 and steps, "the resumed run appends to the first part's metrics.csv"


def test_interrupted_checkpoint_write_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash in the middle of a checkpoint write leaves the previous checkpoint in place and loadable."""
    io = AtomicCheckpointIO()
    target = tmp_path / "ckpt" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.arange(4)}, target)

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial bytes of a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2, "w": torch.zeros(4)}, target)
    monkeypatch.undo()
    loaded = torch.load(target, weights_only=True)
    assert loaded["step"] == 1 and torch.equal(loaded["w"], torch.arange(4))
    assert os.listdir(target.parent) == ["last.ckpt"], "no temporary file is left behind"


def test_nan_loss_stops_at_that_step_and_keeps_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A loss forced to NaN at step 3 stops the run there with a one-line message; last.ckpt (step 3) loads."""
    import solo_ema.methods.byol as byol

    data = image_folder(tmp_path / "data")
    calls = {"n": 0}
    real_loss = byol.byol_loss

    def poisoned(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        loss = real_loss(p, z)
        return loss * float("nan") if calls["n"] > 6 else loss  # 2 loss terms per step: steps 0-2 are fine

    monkeypatch.setattr(byol, "byol_loss", poisoned)
    argv = run_argv(data, tmp_path / "runs", "nan", "--checkpoint_every_n_steps", "1")
    with pytest.raises(NonFiniteLossError, match="at step 3"):
        run_pretrain(build_cfg(argv))
    last = torch.load(tmp_path / "runs" / "nan" / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    calls["n"] = 0
    argv = run_argv(data, tmp_path / "runs", "nan2", "--checkpoint_every_n_steps", "1")
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "loss is nan at step 3" in err[0] and "last good checkpoint" in err[0]


def _dali_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    monkeypatch.setitem(sys.modules, "nvidia.dali.plugin.pytorch", None)


def _corrupt_folder(root: Path) -> Path:
    folder = image_folder(root)
    (folder / "class0" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    return folder


def _empty_class_folder(root: Path) -> Path:
    folder = image_folder(root)
    (folder / "class_empty").mkdir()
    return folder


BAD_INPUTS = {
    "unknown method": (["--method", "byoll"], None, "--method"),
    "unknown EMA part": (["--ema_parts", "blok4"], None, "--ema_parts"),
    "beta above 1": (["--base_tau_momentum", "1.5"], None, "--base_tau_momentum"),
    "beta below 0": (["--base_tau_momentum", "-0.1"], None, "--base_tau_momentum"),
    "base tau above final tau": (["--base_tau_momentum", "0.999", "--final_tau_momentum", "0.99"], None,
                                 "--base_tau_momentum"),
    "negative lr": (["--lr", "-1"], None, "--lr"),
    "missing data folder": (["--data_dir", "/nonexistent/solo-ema"], None, "--data_dir"),
    "empty class folder": ([], _empty_class_folder, "--data_dir"),
    "corrupt image": ([], _corrupt_folder, "0.png"),
    "unknown dataset": (["--dataset", "imagenet2"], None, "--dataset"),
    "dali without DALI": (["--dali"], "no-dali", "--dali"),
    "incompatible crops": (["--num_crops_per_aug", "1"], None, "--num_crops_per_aug"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_gives_one_line_and_writes_nothing(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Each bad input: exit code 2, one stderr line naming the flag or file, no traceback, nothing written."""
    extra, setup, needle = BAD_INPUTS[case]
    data = tmp_path / "data"
    if callable(setup):
        data = setup(data)
    else:
        image_folder(data)
        if setup == "no-dali":
            _dali_missing(monkeypatch)
    log_dir = tmp_path / "runs"
    argv = run_argv(data, log_dir, "bad") + ["--max_epochs", "1", *extra]
    assert main(argv) == 2
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("solo-ema-pretrain: error: ") and needle in lines[0]
    assert "Traceback" not in out.err and out.out == ""
    assert not log_dir.exists() or not any(log_dir.iterdir()), "a failed run leaves no files"
