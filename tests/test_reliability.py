"""Reliability: atomic checkpoints, the data order of a resume, non-finite losses, one-line errors for bad input.

The bitwise resume of every method and loader is tests/test_resume.py's.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from solo_ema.data.datasets import IndexedDataset
from solo_ema.data.loaders import EpochSampler
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


class _Noise(torch.utils.data.Dataset):
    """Item i is (noise drawn from torch's global generator, i): a stand-in for a random augmentation."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int):
        return torch.rand(3), i


def test_epoch_sampler_and_seeded_items_depend_only_on_seed_epoch_and_position() -> None:
    """Order and per-image seeds follow (seed, epoch); shards are disjoint and cover the epoch; a skip applies
    once; an item's randomness follows its key, leaves the global generator alone, and is the same in a worker."""
    data = IndexedDataset(_Noise())
    a, b = EpochSampler(data, batch_size=2, seed=5), EpochSampler(data, batch_size=2, seed=5)
    torch.manual_seed(0)
    assert a.keys(1) == b.keys(1) and a.keys(0) != a.keys(1)
    assert a.keys(1) != EpochSampler(data, batch_size=2, seed=6).keys(1)
    assert sorted(i for i, _ in a.keys(3)) == list(range(10))
    assert len({s for _, s in a.keys(3)}) == 10, "one seed per image"
    a.set_epoch(1)
    a.skip_batches = 2
    assert list(a) == a.keys(1)[4:] and list(a) == a.keys(1)  # the skip applies to one epoch only
    shards = []
    for rank in (0, 1, 2):
        s = EpochSampler(data, batch_size=2, seed=5)
        s.shard(rank, 3)
        shards.append(s.keys(0))
    assert [len(k) for k in shards] == [4, 4, 4]  # 10 padded to 12, as DistributedSampler does
    every = [key for shard in shards for key in shard]
    assert {i for i, _ in every} == set(range(10)) and len(set(every)) == 10  # two keys repeated as padding

    key = a.keys(0)[0]
    torch.manual_seed(1)
    before = torch.get_rng_state()
    first = data[key]
    assert torch.equal(torch.get_rng_state(), before), "the global generator is left as it was"
    torch.manual_seed(2)
    assert torch.equal(data[key][1], first[1]) and data[key][0] == key[0]
    assert not torch.equal(data[(key[0], key[1] + 1)][1], first[1])

    def batches(workers: int) -> list[torch.Tensor]:
        loader = torch.utils.data.DataLoader(data, batch_size=2, sampler=EpochSampler(data, 2, seed=5),
                                             num_workers=workers)
        return [noise for _, noise, _ in loader]

    torch.manual_seed(3)
    main = batches(0)
    torch.manual_seed(4)
    assert all(torch.equal(x, y) for x, y in zip(main, batches(2), strict=True)), "workers draw the same crops"


def test_resume_with_another_planned_length_warns() -> None:
    """A checkpoint of a run planned for 3 optimizer steps, resumed as a 6-step run: a warning names both counts
    (the lr and tau schedules depend on the planned length); the same length resumes silently."""
    from types import SimpleNamespace

    from solo_ema.engine.reliability import TrainingPosition

    data = IndexedDataset(_Noise())
    saved = TrainingPosition(EpochSampler(data, batch_size=2, seed=5))
    saved.planned_steps, saved.batches_done = 3, 5
    state = saved.state_dict()
    trainer = SimpleNamespace(estimated_stepping_batches=6, global_step=3)
    resumed = TrainingPosition(EpochSampler(data, batch_size=2, seed=9))
    resumed.load_state_dict(state)
    assert resumed.position.seed == 5 and resumed.position.epoch == 1 and resumed.position.skip_batches == 0
    with pytest.warns(UserWarning, match="planned for 3 optimizer steps as one of 6"):
        resumed.on_train_start(trainer, None)
    same = TrainingPosition(EpochSampler(data, batch_size=2, seed=9))
    same.load_state_dict({**state, "batches_done": 2})
    assert same.position.epoch == 0 and same.position.skip_batches == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same.on_train_start(SimpleNamespace(estimated_stepping_batches=3, global_step=2), None)
