"""Callbacks of the engine: step timing, a progress bar that counts the steps a run will really take,
placing device-resident data."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import TQDMProgressBar


def logs_this_step(trainer: pl.Trainer | None) -> bool:
    """True when the loggers will receive the metrics of the current training step.

    Logging a Python number makes Lightning copy it to the device, which waits for the device's queue: metrics
    computed on the host (a time, the tau) are logged only on the steps whose metrics are written
    (``--log_every_n_steps``); on the other steps Lightning would drop them anyway. False without a trainer.
    """
    return trainer is not None and bool(trainer._logger_connector.should_update_logs)


class StepTimer(pl.Callback):
    """Wall time of each training step (forward, backward, optimizer step, EMA update), logged as step_time.

    On a GPU nothing waits for the device between steps, so a step's time is the host's time to queue it;
    over many steps (and at every step whose metrics are read) that is the device's pace. Epoch times wait
    for the device to finish.
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0
        self._epoch_start = 0.0
        self.epoch_times: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        """Start the clock."""
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        """Stop the clock; log the step time on the steps whose metrics are written."""
        self.times.append(time.perf_counter() - self._start)
        if logs_this_step(trainer):
            pl_module.log("step_time", self.times[-1], on_step=True, on_epoch=False)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start the epoch clock (Lightning skips on_train_epoch_start for the epoch a resumed run continues)."""
        self._epoch_start = time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start the epoch clock."""
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log seconds per epoch (on a GPU once its queue has run: the epoch's work is done)."""
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self.epoch_times.append(time.perf_counter() - self._epoch_start)
        pl_module.log("epoch_time", self.epoch_times[-1], on_step=False, on_epoch=True)


class StepProgressBar(TQDMProgressBar):
    """TQDM bar whose epoch total stops at --max_steps when the run ends before the epoch does."""

    @property
    def total_train_batches(self) -> int | float:
        """Batches this epoch will run: the epoch's length, or fewer when max_steps ends the run inside it."""
        total = self.trainer.num_training_batches
        max_steps = self.trainer.max_steps
        if max_steps is None or max_steps < 0:
            return total
        epoch_loop = self.trainer.fit_loop.epoch_loop
        # At an epoch's start the counter still holds the last epoch, except in a run resumed inside an epoch.
        done_in_epoch = epoch_loop.batch_progress.current.ready if epoch_loop.restarting else 0
        left = (max_steps - self.trainer.global_step) * self.trainer.accumulate_grad_batches
        return min(total, done_in_epoch + left)


class DevicePlacement(pl.Callback):
    """Move device-resident loaders (objects with ``place(device, rank, world_size)``) to the training device."""

    def __init__(self, *loaders: Any) -> None:
        self.loaders = [loader for loader in loaders if loader is not None]

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Before any batch is drawn: the root device, global rank and world size of this process."""
        for loader in self.loaders:
            loader.place(trainer.strategy.root_device, trainer.global_rank, trainer.world_size)
