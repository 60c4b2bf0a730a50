"""What a pre-emptible run needs: atomic checkpoints, RNG state and data position in checkpoints, the epoch
means of an epoch resumed mid-way, a reader of a checkpoint's seed that refuses a damaged file, a CSV log that
survives a resume, and a guard that stops at the first non-finite loss."""

from __future__ import annotations

import csv
import os
import random
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, Protocol

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", suffix: str = "") -> Iterator[IO]:
    """A file open on a temporary ``.tmp-*`` file beside `path`, flushed, synced and renamed over `path` when the
    block ends. On an error the temporary file is removed and `path` is left as it was; a killed process leaves
    `path` as it was and a stray temporary file."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file beside the target, then renames it over the target.

    A crash mid-write leaves the previous checkpoint at the target path intact.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Save through a temporary file and an atomic os.replace."""
        with atomic_write(path, "wb", suffix=".ckpt") as f:
            torch.save(checkpoint, f)


class RNGState(pl.Callback):
    """Stores the Python, NumPy, torch (and CUDA) random states in checkpoints and restores them on resume."""

    def state_dict(self) -> dict[str, Any]:
        """The current random states."""
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)  # loads weights_only
        state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the random states saved with the checkpoint."""
        random.setstate(state_dict["python"])
        kind, keys, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


class DataPosition(Protocol):
    """An epoch-seeded training order that can start an epoch past some batches (``EpochSampler`` of the
    torchvision loaders, ``DevicePretrainLoader`` of --device_data)."""

    seed: int
    epoch: int
    skip_batches: int

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next iteration reads."""

    def batches_per_epoch(self) -> int:
        """Batches of a whole epoch on this process."""


class TrainingPosition(pl.Callback):
    """Stores where the run is in its data (seed, epoch, batches done) and its planned optimizer steps.

    On resume the order takes the checkpoint's seed (whatever --seed now says) and epoch, and skips the
    batches of that epoch already trained on, so the resumed run reads exactly the images and augmentations the
    uninterrupted run would have. A resume planned for a different number of optimizer steps (another
    --max_epochs or --max_steps) is allowed but warned about: the lr and tau schedules depend on that number.
    """

    def __init__(self, position: DataPosition) -> None:
        self.position = position
        self.batches_done = 0
        self.planned_steps: int | None = None
        self._loaded_plan: int | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Shard an EpochSampler over the processes of the run (device data is sharded by its ``place``)."""
        shard = getattr(self.position, "shard", None)
        if shard is not None:
            shard(trainer.global_rank, trainer.world_size)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Note the planned optimizer steps; warn when a resumed run planned another number."""
        planned = trainer.estimated_stepping_batches
        self.planned_steps = int(planned) if planned != float("inf") else None
        if self._loaded_plan is not None and self.planned_steps is not None and self._loaded_plan != self.planned_steps:
            rank_zero_warn(
                f"resuming a run planned for {self._loaded_plan} optimizer steps as one of {self.planned_steps} "
                "(--max_epochs or --max_steps changed): the lr and tau schedules follow the new length from "
                f"step {trainer.global_step} on, so the result differs from an uninterrupted run of either length"
            )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A new epoch: no batch done yet."""
        self.batches_done = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Count the batches of this epoch trained on."""
        self.batches_done = batch_idx + 1

    def state_dict(self) -> dict[str, Any]:
        """Seed and epoch of the order, batches done in that epoch, planned optimizer steps."""
        return {"seed": int(self.position.seed), "epoch": int(self.position.epoch), "batches_done": self.batches_done,
                "planned_steps": self.planned_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the checkpoint's order: same seed, its epoch past the batches done, or the next epoch."""
        self.position.seed = state_dict["seed"]
        done = state_dict["batches_done"]
        if done >= self.position.batches_per_epoch():
            self.position.set_epoch(state_dict["epoch"] + 1)
            self.position.skip_batches = 0
        else:
            self.position.set_epoch(state_dict["epoch"])
            self.position.skip_batches = done
        self.batches_done = done
        self._loaded_plan = state_dict.get("planned_steps")


class EpochMeans(pl.Callback):
    """Carries the running sums of the metrics logged with ``on_epoch=True`` across a checkpoint inside an epoch.

    Lightning accumulates them in its training loop and does not checkpoint them, so the epoch means of an
    epoch resumed mid-way would average only the batches after the resume. This stores each metric's sum
    (and batch count, or running max / min) with the checkpoint and adds it back once the resumed epoch has
    logged the metric again; a resume into a later epoch drops it. Addition in the other order is exact, so
    the resumed epoch's means equal the uninterrupted run's. With several processes nothing is stored (each
    process holds only its own sums): the epoch means of an epoch resumed mid-way then cover the batches
    after the resume.
    """

    _ADD, _BEST = ("mean", "sum"), {"max": torch.maximum, "min": torch.minimum}

    def __init__(self) -> None:
        self._trainer: pl.Trainer | None = None
        self._pending: dict[str, Any] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Keep the trainer: the sums live in its training loop."""
        self._trainer = trainer

    def _metrics(self) -> dict[str, Any]:
        """The training loop's accumulating metrics, by key (empty where Lightning keeps them elsewhere)."""
        results = getattr(getattr(self._trainer.fit_loop, "epoch_loop", None), "_results", None)
        out = {}
        for key, metric in (results or {}).items():
            meta = getattr(metric, "meta", None)
            if getattr(metric, "is_tensor", False) and meta is not None and meta.on_epoch:
                kinds = [k for k in ("mean", "sum", "max", "min") if getattr(meta, f"is_{k}_reduction", False)]
                kind = kinds[0] if kinds else None
                if kind is not None:
                    out[key] = (metric, kind)
        return out

    def state_dict(self) -> dict[str, Any]:
        """This epoch's sums so far (nothing with several processes)."""
        trainer = self._trainer
        if trainer is None or trainer.world_size > 1:
            return {}
        sums = {}
        for key, (metric, kind) in self._metrics().items():
            count = metric.cumulated_batch_size.detach().clone() if kind == "mean" else None
            sums[key] = {"kind": kind, "value": metric.value.detach().clone(), "count": count}
        return {"epoch": int(trainer.current_epoch), "sums": sums}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Hold the checkpoint's sums until the resumed epoch logs its metrics."""
        self._pending = dict(state_dict) if state_dict.get("sums") else None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Add the held sums to the metrics of the resumed epoch (dropped if the resume went to a later epoch)."""
        if self._pending is None:
            return
        if trainer.current_epoch != self._pending["epoch"]:
            self._pending = None
            return
        sums = self._pending["sums"]
        for key, (metric, kind) in self._metrics().items():
            saved = sums.pop(key, None)
            if saved is None or saved["kind"] != kind:
                continue
            value = saved["value"].to(metric.value.device, metric.value.dtype)
            if kind in self._ADD:
                metric.value = metric.value + value
            else:
                metric.value = self._BEST[kind](metric.value, value)
            if kind == "mean":
                metric.cumulated_batch_size = metric.cumulated_batch_size + saved["count"].to(
                    metric.cumulated_batch_size.device)
            metric._computed = None
        if not sums:
            self._pending = None


class UnreadableCheckpointError(ValueError):
    """A checkpoint to resume from that cannot be read: truncated, corrupt, or not a training checkpoint."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What a run must know of its checkpoint before it builds anything: the run's seed and the optimizer step."""

    seed: int
    global_step: int


def read_checkpoint_info(path: str | os.PathLike) -> CheckpointInfo:
    """The seed of the run a training checkpoint continues (its data position's, else its config's) and its step.

    The file is memory-mapped (tensors are not read). Raises UnreadableCheckpointError, with the reason in one
    line, for a file torch cannot load or one without a training state.
    """
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; its index is at the end of the file
        raise UnreadableCheckpointError(f"'{path}' is not a readable checkpoint (truncated or corrupt: not a complete "
                                        "torch.save archive)")
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ... on damaged files
        reason = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise UnreadableCheckpointError(f"'{path}' is not a readable checkpoint (truncated or corrupt?): "
                                        f"{reason}") from None
    if not isinstance(ckpt, dict) or not {"state_dict", "loops", "global_step"} <= ckpt.keys():
        raise UnreadableCheckpointError(f"'{path}' is not a training checkpoint (no training state in it)")
    position = (ckpt.get("callbacks") or {}).get(TrainingPosition.__qualname__) or {}
    seed = position.get("seed", ((ckpt.get("hyper_parameters") or {}).get("cfg") or {}).get("seed"))
    if seed is None:
        raise UnreadableCheckpointError(f"'{path}' holds no run seed (not a solo-ema pretraining checkpoint)")
    return CheckpointInfo(seed=int(seed), global_step=int(ckpt["global_step"]))


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class NonFiniteLossGuard(pl.Callback):
    """Stops the run at the first non-finite loss, before it reaches a checkpoint.

    With ``check_every=1`` (CPU runs) the loss is read at every step and the run stops before that step's
    update. With ``check_every=N`` (GPU runs) reading it would stop the GPU's queue every step, so the first
    non-finite loss (its step and value) is recorded on the device and read every N optimizer steps, at the
    end of each epoch and before any checkpoint is written: the run stops at most N - 1 steps after it and
    the last checkpoint on disk is one written before it.
    """

    def __init__(self, check_every: int = 1) -> None:
        if check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {check_every}")
        self.check_every = int(check_every)
        self._first: torch.Tensor | None = None  # (step, loss) of the first non-finite loss; step -1: none yet
        self._checked_at = -1

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        """Check the loss now (check_every=1) or record it on the device for the next check."""
        loss = loss.detach().float().sum()  # a sum of values is non-finite when one of them is
        if self.check_every == 1:
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"loss is {loss.item()} at step {trainer.global_step} "
                    f"(epoch {trainer.current_epoch}); the run stopped before the update"
                )
            return
        if self._first is None:
            self._first = torch.full((2,), -1.0, device=loss.device)  # made on the device: no copy from host
        bad = ~torch.isfinite(loss) & (self._first[0] < 0)
        now = torch.stack([torch.full_like(loss, float(trainer.global_step)), loss])
        self._first = torch.where(bad, now, self._first)

    def check(self, trainer: pl.Trainer) -> None:
        """Raise NonFiniteLossError if a non-finite loss was recorded (reads the device once)."""
        if self._first is None:
            return
        step, value = self._first.tolist()
        if step >= 0:
            raise NonFiniteLossError(
                f"loss is {value} at step {int(step)}; the run stopped at step {trainer.global_step} "
                f"(epoch {trainer.current_epoch}), before writing a checkpoint"
            )

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, idx) -> None:
        """Every check_every optimizer steps: check."""
        step = trainer.global_step
        if self.check_every > 1 and step % self.check_every == 0 and step != self._checked_at:
            self._checked_at = step  # once per optimizer step, not once per accumulated micro-batch
            self.check(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """At the end of an epoch: check."""
        self.check(trainer)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        """Before a checkpoint is written: check (a raise here leaves the file on disk as it was)."""
        self.check(trainer)


def _write_rows_atomically(path: str, fieldnames: list[str], rows: list[dict[str, Any]]) -> None:
    """Rewrite a CSV file atomically (a kill leaves the old or the new file)."""
    with atomic_write(path, "w", suffix=".csv") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)


class _ResumableWriter(ExperimentWriter):
    """Lightning's CSV writer, resumable: it rewrites the file (a new column) atomically and, resuming, keeps the
    existing metrics.csv up to the resumed checkpoint's step."""

    def __init__(self, log_dir: str, append: bool = False, resume_step: int | None = None) -> None:
        self._append, self._resume_step = append, resume_step
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        if not self._append:
            super()._check_log_dir_exists()
            return
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            fieldnames = list(reader.fieldnames or [])
        self.metrics_keys = sorted(fieldnames)
        # rows logged after the checkpoint by the interrupted process: the resume logs them again
        keep = [r for r in rows if self._resume_step is None or not r.get("step")
                or int(float(r["step"])) < self._resume_step]
        if len(keep) < len(rows):
            _write_rows_atomically(self.metrics_file_path, fieldnames, keep)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            rows = list(csv.DictReader(f))
        _write_rows_atomically(self.metrics_file_path, fieldnames, rows)


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSV logger (Lightning writes the file at every logging step), resumable.

    With ``append`` (a resumed run) it appends to metrics.csv instead of deleting it, after dropping the rows of
    steps from ``resume_step`` on (the checkpoint's optimizer step: rows the interrupted process logged after
    its checkpoint, which the resumed run logs again).
    """

    def __init__(self, *args: Any, append: bool = False, resume_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.append, self.resume_step = append, resume_step

    @property
    def experiment(self) -> ExperimentWriter:
        """The writer (created on first use)."""
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumableWriter(log_dir=self.log_dir, append=self.append,
                                                resume_step=self.resume_step)
        return self._experiment
