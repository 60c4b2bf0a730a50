"""Online and target weights of one small layer over training (paper Sec. 3.2, Fig. 2 and Appendix E).

The recorder keeps, every `interval` optimizer steps (after the optimizer step and the EMA update), a CPU copy
of one parameter of the online model and of its momentum copy. Where the part is not under an EMA path, the
target *is* the online parameter (shared): the online values are stored again and ``shared`` is True.

The file ``<run_dir>/weights_<part>.pt`` (``torch.load``) holds a dict::

    part       the name given (e.g. "projector.fc2")
    path       the module path resolved in the model (e.g. "projector.fc2")
    param      the parameter's name in that module ("weight" unless the part names a parameter)
    steps      LongTensor [T]: optimizer steps taken when the row was recorded (0 = initial weights)
    online     Tensor [T, *shape]
    target     Tensor [T, *shape] (equal to online when shared)
    tau        Tensor [T]: the tau of the last EMA update before each row (nan before the first update)
    shared     bool: the part has no momentum copy
    ema_parts  list of the run's EMA paths
    base_tau, final_tau
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from ..ema.parts import ALIASES, BACKBONE_PARTS
from ..ema.stages import get_module

MAX_ELEMENTS = 1_000_000


class TrackWeightsError(ValueError):
    """The part to track does not exist or is too large."""


def file_name(part: str) -> str:
    """The recorder's file name for a part: weights_<part>.pt."""
    return f"weights_{part.replace('/', '_')}.pt"


def _candidate_paths(part: str) -> list[str]:
    """Module paths a part name may mean: as given, then with an EMA part name (block4 -> backbone.layer4)."""
    top, _, rest = part.partition(".")
    top = ALIASES.get(top, top)
    out = [part]
    if top == "conv1":
        out.append("backbone.conv1" + (f".{rest}" if rest else ""))
    elif top in BACKBONE_PARTS:
        out.append(f"backbone.layer{top[-1]}" + (f".{rest}" if rest else ""))
    return out


def resolve_param(model: nn.Module, part: str) -> tuple[str, str, nn.Parameter]:
    """(module path, parameter name, parameter) for a part: a module (its ``weight``) or a parameter path."""
    errors = []
    for path in _candidate_paths(part):
        try:
            module = get_module(model, path)
            if isinstance(getattr(module, "weight", None), torch.Tensor):
                return path, "weight", module.weight
            errors.append(f"'{path}' has no 'weight'")
        except ValueError as exc:
            errors.append(str(exc))
        mod_path, _, name = path.rpartition(".")
        if mod_path:
            try:
                module = get_module(model, mod_path)
            except ValueError:
                continue
            param = module._parameters.get(name)
            if param is not None:
                return mod_path, name, param
    raise TrackWeightsError(f"cannot track '{part}': {errors[-1]}")


def check_part(model: nn.Module, part: str, max_elements: int = MAX_ELEMENTS) -> tuple[str, str, tuple[int, ...]]:
    """Resolve a part to track on a built model (the meta device will do): (path, param, shape).

    Raises TrackWeightsError (one line) when the part is missing or has more than `max_elements` elements.
    """
    rec = WeightRecorder(model, part, max_elements)
    return rec.path, rec.param_name, tuple(rec.online.shape)


class WeightRecorder:
    """Records one online parameter and its momentum copy (or itself, when shared) at chosen steps (pure torch)."""

    def __init__(self, model: nn.Module, part: str, max_elements: int = MAX_ELEMENTS) -> None:
        self.part = part
        self.path, self.param_name, self.online = resolve_param(model, part)
        numel = self.online.numel()
        if numel > max_elements:
            raise TrackWeightsError(
                f"'{part}' ({self.path}.{self.param_name}, shape {tuple(self.online.shape)}) has {numel:,} elements, "
                f"more than {max_elements:,}; track a smaller layer"
            )
        ema = getattr(model, "ema", None)
        copy = ema.copy_of(self.path) if ema is not None else None
        self.shared = copy is None
        self.target = self.online if copy is None else getattr(copy, self.param_name)
        self.ema = ema
        self.steps: list[int] = []
        self.online_rows: list[torch.Tensor] = []
        self.target_rows: list[torch.Tensor] = []
        self.taus: list[float] = []

    def record(self, step: int) -> None:
        """Append a CPU copy of the online and target values at this step (once per step)."""
        if self.steps and self.steps[-1] == step:
            return
        with torch.no_grad():
            online = self.online.detach().to("cpu", copy=True)
            target = online if self.shared else self.target.detach().to("cpu", copy=True)
        self.steps.append(int(step))
        self.online_rows.append(online)
        self.target_rows.append(target)
        updated = self.ema is not None and int(self.ema.num_updates) > 0
        self.taus.append(float(self.ema.last_tau) if updated else float("nan"))

    def truncate(self, step: int) -> None:
        """Drop the rows recorded at or after `step` (for a resumed run)."""
        keep = sum(s < step for s in self.steps)
        del self.steps[keep:], self.online_rows[keep:], self.target_rows[keep:], self.taus[keep:]

    def state(self) -> dict[str, Any]:
        """The dict written to the file."""
        shape = tuple(self.online.shape)
        empty = torch.empty((0, *shape))
        ema = self.ema
        return {
            "part": self.part,
            "path": self.path,
            "param": self.param_name,
            "steps": torch.tensor(self.steps, dtype=torch.long),
            "online": torch.stack(self.online_rows) if self.online_rows else empty,
            "target": torch.stack(self.target_rows) if self.target_rows else empty,
            "tau": torch.tensor(self.taus, dtype=torch.float64),
            "shared": self.shared,
            "ema_parts": list(ema.paths) if ema is not None else [],
            "base_tau": ema.base_tau if ema is not None else None,
            "final_tau": ema.final_tau if ema is not None else None,
        }

    def load(self, state: dict[str, Any]) -> None:
        """Continue from a saved state (same part and shape)."""
        if state.get("path") != self.path or tuple(state["online"].shape[1:]) != tuple(self.online.shape):
            return
        self.steps = [int(s) for s in state["steps"]]
        self.online_rows = list(state["online"].unbind(0))
        self.target_rows = list(state["target"].unbind(0))
        self.taus = [float(t) for t in state["tau"]]

    def save(self, path: str | Path) -> Path:
        """Write the state with torch.save (via a temporary file, so a crash never leaves half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.state(), tmp)
        tmp.replace(path)
        return path


class WeightTracker(pl.Callback):
    """Records a WeightRecorder every `interval` optimizer steps; writes <run_dir>/weights_<part>.pt.

    The file is written at the end of training and at every checkpoint save. A resumed run continues the
    existing file (rows from the resumed step on are replaced).
    """

    def __init__(self, part: str, run_dir: str | Path, interval: int = 1, max_elements: int = MAX_ELEMENTS) -> None:
        if interval < 1:
            raise ValueError(f"track_weights interval must be >= 1, got {interval}")
        self.part = part
        self.interval = int(interval)
        self.max_elements = max_elements
        self.path = Path(run_dir) / file_name(part)
        self.recorder: WeightRecorder | None = None

    def check(self, model: nn.Module) -> WeightRecorder:
        """Resolve the part in the model (raises TrackWeightsError, one line, when it is missing or too large)."""
        self.recorder = WeightRecorder(model, self.part, self.max_elements)
        return self.recorder

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Resolve the part on the model being trained."""
        self.check(pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record the starting weights (or continue the file of a resumed run)."""
        rec = self.recorder
        step = trainer.global_step
        if step > 0 and self.path.exists():
            rec.load(torch.load(self.path, map_location="cpu", weights_only=False))
            rec.truncate(step)
        if step % self.interval == 0:
            rec.record(step)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        """Record after an optimizer step (and its EMA update) whose count is a multiple of the interval."""
        step = trainer.global_step
        if step > 0 and step % self.interval == 0:
            self.recorder.record(step)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        """Write the file with what was recorded so far."""
        self._write(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write the file."""
        self._write(trainer)

    def _write(self, trainer: pl.Trainer) -> None:
        if self.recorder is not None and trainer.is_global_zero:
            self.recorder.save(self.path)
