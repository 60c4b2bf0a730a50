"""What a pre-emptible run needs: atomic checkpoints, RNG state in checkpoints, a CSV log that survives a
resume, and a guard that stops at the first non-finite loss."""

from __future__ import annotations

import csv
import os
import random
import tempfile
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn

from ..data.loaders import EpochSampler


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file beside the target, then renames it over the target.

    A crash mid-write leaves the previous checkpoint at the target path intact.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Save through a temporary file and an atomic os.replace."""
        path = os.fspath(path)
        folder = os.path.dirname(path) or "."
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".ckpt", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise


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


class TrainingPosition(pl.Callback):
    """Stores where the run is in its data (sampler seed, epoch, batches done) and its planned optimizer steps.

    On resume the sampler takes the checkpoint's seed (whatever --seed now says) and epoch, and skips the
    batches of that epoch already trained on, so the resumed run reads exactly the images and augmentations the
    uninterrupted run would have. A resume planned for a different number of optimizer steps (another
    --max_epochs or --max_steps) is allowed but warned about: the lr and tau schedules depend on that number.
    """

    def __init__(self, sampler: EpochSampler) -> None:
        self.sampler = sampler
        self.batches_done = 0
        self.planned_steps: int | None = None
        self._loaded_plan: int | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Shard the sampler over the processes of the run."""
        self.sampler.shard(trainer.global_rank, trainer.world_size)

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
        """Sampler seed and epoch, batches done in that epoch, planned optimizer steps."""
        return {"seed": int(self.sampler.seed), "epoch": int(self.sampler.epoch), "batches_done": self.batches_done,
                "planned_steps": self.planned_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the checkpoint's order: same seed, its epoch past the batches done, or the next epoch."""
        per_epoch = len(self.sampler) // self.sampler.batch_size
        self.sampler.seed = state_dict["seed"]
        done = state_dict["batches_done"]
        if done >= per_epoch:
            self.sampler.set_epoch(state_dict["epoch"] + 1)
            self.sampler.skip_batches = 0
        else:
            self.sampler.set_epoch(state_dict["epoch"])
            self.sampler.skip_batches = done
        self.batches_done = done
        self._loaded_plan = state_dict.get("planned_steps")


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


class _AppendingWriter(ExperimentWriter):
    """CSV writer that keeps an existing metrics.csv (a resumed run appends to it)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSV logger; with ``append`` (a resumed run) it appends to metrics.csv instead of deleting it."""

    def __init__(self, *args: Any, append: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.append = append

    @property
    def experiment(self) -> ExperimentWriter:
        """The writer (created on first use)."""
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            writer = _AppendingWriter if self.append else ExperimentWriter
            self._experiment = writer(log_dir=self.log_dir)
        return self._experiment
