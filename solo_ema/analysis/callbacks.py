"""The analysis callbacks of a run, built from its config: gradient monitor, weight tracker, cost logger."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from omegaconf import DictConfig
from torch import nn

from ..engine.config import cfg_get
from .cost import numeric
from .grad_monitor import GradNormMonitor
from .weights import WeightTracker


class CostLogger(pl.Callback):
    """Logs the cost accounting into the run's loggers at the start; adds measured times at the end.

    ``step_times`` and ``epoch_times`` come from the run's StepTimer (any object with lists ``times`` and
    ``epoch_times``). Seconds per epoch: the mean over complete epochs (validation included, as StepTimer
    measures it); when no epoch completed (a run stopped by max_steps), the median step time times the
    number of batches per epoch, marked ``seconds_per_epoch_source: extrapolated``.
    """

    def __init__(self, cost: dict[str, Any], timer: Any) -> None:
        self.cost = dict(cost)
        self.timer = timer
        self._batches = 0
        self._epoch_batches: list[int] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the static numbers once, at the current step (0 for a fresh run)."""
        self._log(trainer, numeric(self.cost))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Count the batches of this epoch."""
        self._batches = 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        """Count a batch."""
        self._batches += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Remember how many batches the epoch ran."""
        self._epoch_batches.append(self._batches)

    def measured(self, batches_per_epoch: float | None) -> dict[str, Any]:
        """Median step time and seconds per epoch from the timer."""
        times = list(getattr(self.timer, "times", []))
        epochs = list(getattr(self.timer, "epoch_times", []))
        out: dict[str, Any] = {"steps": len(times), "median_step_time": statistics.median(times) if times else None}
        full = [t for t, n in zip(epochs, self._epoch_batches) if batches_per_epoch and n >= batches_per_epoch]
        if full:
            out["seconds_per_epoch"] = sum(full) / len(full)
            out["seconds_per_epoch_source"] = "measured"
        elif times and batches_per_epoch and batches_per_epoch != float("inf"):
            out["seconds_per_epoch"] = out["median_step_time"] * batches_per_epoch
            out["seconds_per_epoch_source"] = "extrapolated"
        else:
            out["seconds_per_epoch"] = None
        return out

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Add the measured times to the cost and log them."""
        self.cost.update(self.measured(trainer.num_training_batches))
        keys = ("median_step_time", "seconds_per_epoch")
        self._log(trainer, numeric({k: self.cost[k] for k in keys if self.cost.get(k) is not None}))

    @staticmethod
    def _log(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
        if not metrics:
            return
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)


def analysis_callbacks(cfg: DictConfig, model: nn.Module, run_dir: str | Path) -> list[pl.Callback]:
    """GradNormMonitor when ``analysis.grad_monitor``, WeightTracker when ``analysis.track_weights`` (none otherwise).

    The tracked part is resolved on `model` here, so a missing or too large layer fails before training
    (TrackWeightsError, a ValueError with a one-line message).
    """
    callbacks: list[pl.Callback] = []
    if cfg_get(cfg, "analysis.grad_monitor", False):
        callbacks.append(GradNormMonitor(interval=int(cfg_get(cfg, "analysis.grad_monitor_interval", 1))))
    part = cfg_get(cfg, "analysis.track_weights", None)
    if part:
        tracker = WeightTracker(part, run_dir, interval=int(cfg_get(cfg, "analysis.track_weights_interval", 1)))
        tracker.check(model)
        callbacks.append(tracker)
    return callbacks
