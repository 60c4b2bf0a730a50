"""Exact resume: every piece of training state survives a checkpoint.

A run stopped at an epoch boundary or inside an epoch and resumed under another --seed ends bitwise equal
(CPU, deterministic algorithms) to the uninterrupted run, for the six methods with their default EMA placement
and with the projector's, the momentum classifier, gradient accumulation, device-resident data and a
--max_steps that ends inside an epoch: model (online and momentum parts, BatchNorm buffers of both, queues,
DINO's centre, the tau position), optimizer, scheduler, global random states, the batches (images and crops)
trained on, and the metrics CSV after the resume point. Real faults (SIGKILL inside a step and inside a
checkpoint write) resume exactly; a damaged last.ckpt is refused in one line that names it.

One uninterrupted run and one checkpointing run per configuration, shared by its cases; runs are in-process,
except where a real kill needs a child process (tests/scripts/fault_run.py).
"""

from __future__ import annotations

import csv
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from test_reliability import image_folder
from torch.utils.data import Subset

from solo_ema.pretrain import build_cfg, main
from solo_ema.train import resume_checkpoint, run_pretrain

pytestmark = pytest.mark.usefixtures("single_thread")

FAULT_SCRIPT = Path(__file__).parent / "scripts" / "fault_run.py"
HEADS = ["--proj_hidden_dim", "32", "--pred_hidden_dim", "32", "--proj_output_dim", "16"]
CHECKPOINTS = ["--save_checkpoint", "--checkpoint_every_n_steps", "1"]
TIME_COLUMNS = {"step_time", "epoch_time"}
SEED, OTHER_SEED = "5", "6"  # the command line's default seed, and the seed every resume is started with


def argv_of(data: Path, log_dir: Path, name: str, *extra: str) -> list[str]:
    """A tiny run: a seeded subset of 16 of the folder's 24 images at 12x12, batch 8 (2 steps per epoch), 2 epochs."""
    return [
        "--method", "byol", "--dataset", "custom", "--data_dir", str(data), "--train_subset", "16",
        "--crop_size", "12", "--batch_size", "8", "--max_epochs", "2", "--num_workers", "0",
        "--limit_val_batches", "0", "--optimizer", "lars", "--warmup_steps", "1", "--seed", SEED,
        "--log_dir", str(log_dir), "--name", name, *HEADS, *extra,
    ]


@dataclass(frozen=True)
class Point:
    """Where a checkpointing run is cut: at the start of micro-batch `at` (counted over the run); the resume from
    the last.ckpt of that moment starts at micro-batch `start`."""

    at: int
    start: int
    label: str


@dataclass(frozen=True)
class Config:
    """Flags of one configuration and where its checkpointing run is cut.

    At `copy` the run's last.ckpt is copied aside (resumed with --resume_from_checkpoint into a new run); at
    `kill` the run is killed (resumed with --auto_resume in its own folder, appending to its metrics.csv).
    """

    flags: tuple[str, ...]
    copy: Point = Point(1, 1, "mid-epoch")
    kill: Point = Point(2, 2, "epoch-boundary")
    batch_size: int = 8
    checkpoints: tuple[str, ...] = tuple(CHECKPOINTS)


QUEUE = ("--queue_size", "32")
DINO = ("--method", "dino", "--num_prototypes", "64", "--warmup_teacher_temperature_epochs", "2")
CONFIGS = {
    "byol-all": Config(()),
    # validates every epoch on a seeded subset of 4 images (the validation rows are compared too); checkpoints
    # at epoch ends only, after validation: the kill after micro-batch 2 resumes epoch 0's and replays batch 2
    "byol-projector": Config(("--ema_parts", "projector", "--optimizer", "sgd", "--limit_val_batches", "1.0",
                              "--val_subset", "4"), copy=Point(2, 2, "epoch-boundary"),
                             kill=Point(3, 2, "killed-after-epoch-end-checkpoint"), checkpoints=("--save_checkpoint",)),
    # the teacher temperature warms up over the 2 epochs; the last layer is frozen in epoch 0
    "dino-all": Config(DINO),
    "dino-projector": Config((*DINO, "--ema_parts", "projector")),
    # loads in two worker processes
    "mocov2plus-all": Config(("--method", "mocov2plus", *QUEUE, "--optimizer", "sgd", "--num_workers", "2")),
    "mocov2plus-projector": Config(("--method", "mocov2plus", *QUEUE, "--ema_parts", "projector")),
    "ressl-all": Config(("--method", "ressl", *QUEUE)),
    "ressl-projector": Config(("--method", "ressl", *QUEUE, "--ema_parts", "projector")),
    "simclr-none": Config(("--method", "simclr")),
    "simclr-projector": Config(("--method", "simclr", "--ema_parts", "projector")),
    "simsiam-none": Config(("--method", "simsiam")),
    "simsiam-projector": Config(("--method", "simsiam", "--ema_parts", "projector")),
    "momentum-classifier": Config(("--ema_parts", "projector", "--momentum_classifier")),
    # batch 4: 4 micro-batches per epoch, 2 optimizer steps; killed after micro-batch 6, the first of step 4's
    # two: the last checkpoint is step 3's (Lightning saves after optimizer steps only), the resume replays 6
    "accumulate-2": Config(("--ema_parts", "projector", "--accumulate_grad_batches", "2"), batch_size=4,
                           copy=Point(4, 4, "epoch-boundary"), kill=Point(7, 6, "inside-an-accumulation")),
    "device-data": Config(("--device_data",)),
    # ends at step 3, inside epoch 1
    "max-steps": Config(("--max_steps", "3")),
}


class Killed(Exception):
    """The run was stopped here (in-process stand-in for a kill between two steps)."""


class Cut(pl.Callback):
    """Copies last.ckpt aside at the start of micro-batch `copy_at`; raises Killed at the start of `kill_at`."""

    def __init__(self, checkpoints: Path, copy_to: Path, copy_at: int, kill_at: int) -> None:
        self.checkpoints, self.copy_to, self.copy_at, self.kill_at = checkpoints, copy_to, copy_at, kill_at
        self.batches = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if self.batches == self.copy_at:
            shutil.copy(self.checkpoints / "last.ckpt", self.copy_to)
        if self.batches == self.kill_at:
            raise Killed(f"killed at micro-batch {self.kill_at}")
        self.batches += 1


class Batches(pl.Callback):
    """Every micro-batch trained on: its image indexes, a digest of its crops, and the EMA's tau position (updates
    done, tau of the last update) as the batch starts."""

    def __init__(self) -> None:
        self.seen: list[tuple[tuple[int, ...], str, int, float]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        indexes, crops, _ = batch
        digest = hashlib.sha1()
        for crop in crops:
            digest.update(crop.detach().cpu().contiguous().numpy().tobytes())
        ema = pl_module.ema
        self.seen.append((tuple(indexes.tolist()), digest.hexdigest(), int(ema.num_updates), float(ema.last_tau)))


def fit(argv: list[str], *callbacks: pl.Callback):
    """An in-process run with deterministic algorithms."""
    torch.use_deterministic_algorithms(True)
    try:
        return run_pretrain(build_cfg(argv), extra_callbacks=list(callbacks))
    finally:
        torch.use_deterministic_algorithms(False)


def _clone(value: Any) -> Any:
    return value.detach().clone() if torch.is_tensor(value) else value


def full_state(result) -> dict[str, Any]:
    """Every tensor and number training carries on.

    The model's state dict (online parts, momentum copies and the BatchNorm buffers of both, queues and their
    pointers, DINO's centre, the EMA's num_updates), the tau of the last EMA update, the optimizer's state and
    hyper-parameters, the schedulers' state, the global random states and the loop counters.
    """
    model, trainer = result.model, result.trainer
    state: dict[str, Any] = {f"model.{k}": _clone(v) for k, v in model.state_dict().items()}
    state["ema.last_tau"] = model.ema.last_tau
    for i, optimizer in enumerate(trainer.optimizers):
        opt = optimizer.state_dict()
        for pid, slots in opt["state"].items():
            state.update({f"opt{i}.{pid}.{k}": _clone(v) for k, v in slots.items()})
        for g, group in enumerate(opt["param_groups"]):
            state.update({f"opt{i}.group{g}.{k}": v for k, v in group.items() if k != "params"})
    for i, config in enumerate(trainer.lr_scheduler_configs):
        state.update({f"sched{i}.{k}": v for k, v in config.scheduler.state_dict().items() if k != "lr_lambdas"})
    state["rng.torch"] = torch.get_rng_state()
    state["rng.numpy"] = torch.from_numpy(np.random.get_state()[1].astype(np.int64))
    state["rng.python"] = random.getstate()
    state["global_step"], state["epoch"] = trainer.global_step, trainer.current_epoch
    return state


def differences(expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """Keys whose values are not bitwise equal (or missing on either side)."""
    keys = expected.keys() | got.keys()
    return sorted(k for k in keys if k not in expected or k not in got or not (
        torch.equal(got[k], expected[k]) if torch.is_tensor(expected[k]) else got[k] == expected[k]))


def column(run_dir: Path, name: str) -> list[float]:
    """The values of one column of a run's metrics.csv."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return [float(row[name]) for row in csv.DictReader(f) if row.get(name)]


def metric_rows(run_dir: Path) -> list[dict[str, str]]:
    """The rows of a run's metrics.csv without the time columns and the cost accounting rows."""
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = [{k: v for k, v in row.items() if v and k not in TIME_COLUMNS and not k.startswith("cost/")}
                for row in csv.DictReader(f)]
    return [row for row in rows if row.keys() - {"epoch", "step"}]


def training_subset(result) -> list[int] | None:
    """The indexes of the training images a torchvision-loader run drew with --train_subset (None: another loader)."""
    inner = getattr(getattr(result.trainer.train_dataloader, "dataset", None), "dataset", None)
    return list(inner.indices) if isinstance(inner, Subset) else None


def resume_point(ckpt: Path, batch_size: int) -> int:
    """The micro-batch (counted over the run) a resume from `ckpt` starts at, from its data position."""
    position = torch.load(ckpt, weights_only=True)["callbacks"]["TrainingPosition"]
    return position["epoch"] * (16 // batch_size) + position["batches_done"]


@dataclass
class Prepared:
    """One configuration's uninterrupted run, and its checkpointing run cut at copy_at / kill_at."""

    data: Path
    log_dir: Path
    flags: list[str]
    state: dict[str, Any]
    batches: list[tuple[tuple[int, ...], str, int, float]]
    subset: list[int] | None
    rows: list[dict[str, str]]
    copy: Path  # last.ckpt as it was at the start of micro-batch copy_at
    split: str  # the name of the checkpointing run (its folder holds last.ckpt of the kill)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 random 12x12 images in 3 classes."""
    return image_folder(tmp_path_factory.mktemp("resume-data"), classes=3, per_class=8, size=12)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, data: Path):
    """Factory: the Prepared runs of a configuration, made once per module."""
    root = tmp_path_factory.mktemp("resume")
    cache: dict[str, Prepared] = {}

    def get(name: str) -> Prepared:
        if name not in cache:
            config = CONFIGS[name]
            flags = [*config.flags, "--batch_size", str(config.batch_size)]
            seen = Batches()
            straight = fit(argv_of(data, root, f"{name}-straight", *flags), seen)
            copy = root / f"{name}-copy.ckpt"
            cut = Cut(root / f"{name}-split" / "checkpoints", copy, config.copy.at, config.kill.at)
            with pytest.raises(Killed):
                fit(argv_of(data, root, f"{name}-split", *flags, *config.checkpoints), cut)
            cache[name] = Prepared(data, root, flags, full_state(straight), seen.seen, training_subset(straight),
                                   metric_rows(straight.run_dir), copy, f"{name}-split")
        return cache[name]

    return get


CASES = [(name, point) for name in CONFIGS for point in ("copy", "kill")]


def _case_id(name: str, point: str) -> str:
    return f"{name}-{getattr(CONFIGS[name], point).label}"


@pytest.mark.parametrize(("name", "point"), CASES, ids=[_case_id(*c) for c in CASES])
def test_resume_under_another_seed_is_bitwise_the_uninterrupted_run(
    prepared, tmp_path: Path, name: str, point: str
) -> None:
    """Resumed with --seed 6 from a checkpoint of a --seed 5 run (copied aside: --resume_from_checkpoint into a
    new run; the killed run's own last.ckpt: --auto_resume), the run takes the checkpoint's seed and subset,
    trains exactly on the remaining micro-batches (same images, same crops, same tau position at each) and ends
    with every entry of full_state bitwise equal to the uninterrupted run's; its metrics rows after the resume
    point are the uninterrupted run's (time columns aside; the epoch times measure the resumed run), epoch means
    of an epoch resumed mid-way included. The killed run's metrics.csv, appended to, equals the uninterrupted one's
    (the rows it logged after its checkpoint are dropped and logged again).
    """
    run = prepared(name)
    config = CONFIGS[name]
    if point == "copy":
        ckpt, run_name = run.copy, "resumed"
        log_dir, extra = tmp_path, ["--resume_from_checkpoint", str(run.copy)]
    else:
        ckpt, run_name = run.log_dir / run.split / "checkpoints" / "last.ckpt", run.split
        log_dir, extra = run.log_dir, ["--auto_resume"]
    start = resume_point(ckpt, config.batch_size)
    assert start == getattr(config, point).start
    resumed_steps = run.state["global_step"] - torch.load(ckpt, weights_only=True)["global_step"]

    seen = Batches()
    # the resumed run writes no checkpoints of its own (the fault tests' resumes do)
    argv = argv_of(run.data, log_dir, run_name, *run.flags, *extra, "--seed", OTHER_SEED)
    began = time.monotonic()
    result = fit(argv, seen)
    elapsed = time.monotonic() - began
    assert result.model.cfg.seed == int(SEED), "the resumed run takes the checkpoint's seed"
    assert training_subset(result) == run.subset, "the resumed run drew another --train_subset"
    assert [s[:2] for s in seen.seen] == [s[:2] for s in run.batches[start:]], "other images or crops"
    assert seen.seen == run.batches[start:], "the EMA's tau position (updates, last tau) differs along the way"
    got = full_state(result)
    diff = differences(run.state, got)
    assert not diff, f"{len(diff)} of {len(run.state)} entries differ, e.g. {diff[:6]}"

    rows = metric_rows(result.run_dir)
    if point == "kill":
        assert rows == run.rows, "the killed run's metrics.csv, resumed, differs from the uninterrupted one's"
    else:
        steps = [row for row in rows if "tau" in row]
        assert len(steps) == resumed_steps and rows == run.rows[-len(rows):]
        assert all(0 <= t <= elapsed for t in column(result.run_dir, "epoch_time")), "epoch times of the resume"


FAULTS = "momentum-classifier"  # the configuration the real faults are injected into


def _start_fault(tmp_path: Path, mode: str, at: int, argv: list[str]) -> subprocess.Popen:
    """Start tests/scripts/fault_run.py; return once it waits at its fault, to be killed."""
    ready, log = tmp_path / "ready", open(tmp_path / "child.log", "wb")  # noqa: SIM115 (the child writes it)
    child = subprocess.Popen([sys.executable, str(FAULT_SCRIPT), str(ready), mode, str(at), *argv],
                             stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    while not ready.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            tail = (tmp_path / "child.log").read_text(errors="replace")[-3000:]
            pytest.fail(f"the child never reached its fault (exit {child.returncode}):\n{tail}")
        time.sleep(0.05)
    return child


def _sigkill(child: subprocess.Popen) -> None:
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=60) == -signal.SIGKILL


def _resumes_the_uninterrupted_run(run, argv: list[str]) -> None:
    """--auto_resume under another seed trains on the batches after step 1 and ends as the uninterrupted run:
    every tensor bitwise, metrics.csv row for row."""
    seen = Batches()
    result = fit([*argv, "--auto_resume", "--seed", OTHER_SEED], seen)
    assert seen.seen == run.batches[1:]
    diff = differences(run.state, full_state(result))
    assert not diff, f"{len(diff)} entries differ, e.g. {diff[:6]}"
    assert metric_rows(result.run_dir) == run.rows, "metrics.csv lost or repeated rows"


def test_sigkill_inside_a_step_resumes_bitwise(prepared, tmp_path: Path) -> None:
    """A child process killed (SIGKILL) inside its second optimizer step, after the optimizer's update and before
    the EMA update, leaves last.ckpt of step 1; --auto_resume under another seed trains from there and ends bitwise
    equal to the uninterrupted run, with its metrics.csv (every row on disk before the kill) equal too."""
    run = prepared(FAULTS)
    argv = argv_of(run.data, tmp_path, "killed", *run.flags, *CHECKPOINTS)
    _sigkill(_start_fault(tmp_path, "step", 1, argv))
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 1

    _resumes_the_uninterrupted_run(run, argv)


def test_sigkill_inside_a_checkpoint_write_keeps_the_previous_last_ckpt(prepared, tmp_path: Path) -> None:
    """A child killed while writing last.ckpt of step 2 (half of the file on disk) leaves last.ckpt of step 1
    intact and a stray temporary file; --auto_resume ignores the stray file, resumes last.ckpt of step 1 and
    ends bitwise equal to the uninterrupted run (metrics.csv too)."""
    run = prepared(FAULTS)
    argv = argv_of(run.data, tmp_path, "killed", *run.flags, *CHECKPOINTS)
    # each step writes its epoch=E-step=S.ckpt, then last.ckpt: the 4th write is last.ckpt of step 2
    _sigkill(_start_fault(tmp_path, "save", 4, argv))
    folder = tmp_path / "killed" / "checkpoints"
    stray = sorted(folder.glob(".tmp-*.ckpt"))
    assert len(stray) == 1 and 0 < stray[0].stat().st_size < (folder / "last.ckpt").stat().st_size
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 1
    assert resume_checkpoint(build_cfg([*argv, "--auto_resume"])) == str(folder / "last.ckpt")

    _resumes_the_uninterrupted_run(run, argv)
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 4


def _damage(kind: str, good: Path, target: Path) -> None:
    if kind == "truncated":
        target.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "garbage":
        target.write_bytes(os.urandom(4096))
    else:  # a torch file, but no training checkpoint
        torch.save({"weights": torch.zeros(3)}, target)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", ["truncated", "garbage", "not-a-checkpoint"])
def test_a_damaged_last_ckpt_is_refused_in_one_line_and_nothing_changes(
    prepared, tmp_path: Path, kind: str, capsys: pytest.CaptureFixture
) -> None:
    """--auto_resume over a truncated, garbage or foreign last.ckpt: exit code 2, one stderr line naming the flag
    and the file, no traceback, every file of the run (the checkpoint, metrics.csv) left as it was; the same file
    given to --resume_from_checkpoint is refused the same way."""
    run = prepared(FAULTS)
    folder = tmp_path / "runs" / "damaged"
    (folder / "checkpoints").mkdir(parents=True)
    last = folder / "checkpoints" / "last.ckpt"
    _damage(kind, run.copy, last)
    (folder / "metrics.csv").write_text("epoch,step,train_byol_loss_step\n0,0,4.0\n")
    before = _files(tmp_path)
    argv = argv_of(run.data, tmp_path / "runs", "damaged", *run.flags, *CHECKPOINTS)
    for flag, extra in (("--auto_resume", ["--auto_resume"]), ("--resume_from_checkpoint",
                                                                ["--resume_from_checkpoint", str(last)])):
        assert main([*argv, *extra]) == 2
        out = capsys.readouterr()
        lines = out.err.strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"solo-ema-pretrain: error: {flag}: '{last}'"), lines[0]
        assert "Traceback" not in out.err
        assert _files(tmp_path) == before, "a refused resume changed or wrote files"


def test_auto_resume_reads_last_ckpt_else_the_newest_step_checkpoint_never_a_temporary_file(
    data: Path, tmp_path: Path
) -> None:
    """--auto_resume: last.ckpt when there is one; else (a kill between the two files of the first checkpoint)
    the newest epoch=E-step=S.ckpt; a stray .tmp-*.ckpt of an interrupted write alone means a fresh start."""
    cfg = build_cfg(argv_of(data, tmp_path, "run", *CHECKPOINTS, "--auto_resume"))
    folder = Path(cfg.checkpoint.dir)
    folder.mkdir(parents=True)
    (folder / ".tmp-x1y2.ckpt").write_bytes(b"half a checkpoint")
    assert resume_checkpoint(cfg) is None
    for name in ("epoch=0-step=1.ckpt", "epoch=1-step=12.ckpt", "epoch=1-step=3.ckpt"):
        (folder / name).write_bytes(b"")
    assert resume_checkpoint(cfg) == str(folder / "epoch=1-step=12.ckpt")
    (folder / "last.ckpt").write_bytes(b"")
    assert resume_checkpoint(cfg) == str(folder / "last.ckpt")


def test_the_seed_decides_the_run_and_the_same_seed_repeats_it_bitwise(prepared, tmp_path: Path) -> None:
    """Two fresh runs with --seed 5 are bitwise the same run (subset, order, crops, every state entry); a fresh
    run with --seed 6 trains on another subset and other crops from other initial weights, so a resume that
    ignored the checkpoint's seed would be caught by the resume tests."""
    run = prepared("byol-projector")
    seen = Batches()
    again = fit(argv_of(run.data, tmp_path, "again", *run.flags), seen)
    assert seen.seen == run.batches
    diff = differences(run.state, full_state(again))
    assert not diff, f"the same seed gave another run: {diff[:6]}"

    seen = Batches()
    other = fit(argv_of(run.data, tmp_path, "other", *run.flags, "--seed", OTHER_SEED), seen)
    assert training_subset(other) != run.subset, "--train_subset ignores the seed"
    assert all(a[1] != b[1] for a, b in zip(run.batches, seen.seen, strict=True)), "crops ignore the seed"
    state = full_state(other)
    params = [k for k, v in run.state.items() if k.startswith("model.") and torch.is_tensor(v)
              and v.is_floating_point()]
    same = [k for k in params if torch.equal(state[k], run.state[k])]
    assert len(same) < len(params) // 10, f"{len(same)} of {len(params)} model tensors ignore the seed"
