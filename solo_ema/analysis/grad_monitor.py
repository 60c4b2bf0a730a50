"""l-infinity norm of the gradient of the loss w.r.t. the output of each encoder part (paper Sec. 4, Fig. 5).

For every monitored training step, and for each part (``conv1`` = end of the stem, ``block1``..``block4``,
``projector``), the monitor records ``max |dL/dh|`` where ``h`` is the part's online output. The gradient
w.r.t. each large crop's output is a separate tensor; the value reported is the **maximum over the large
crops** (the l-infinity norm of the gradient w.r.t. all large-crop outputs taken together).

How: a forward hook on each part's module registers a tensor hook on the module's output. The forward hook
acts only while a monitored step is armed, only on outputs that require grad (the target pass runs under
no_grad and validation under no_grad / inference mode, so neither is recorded), and only for the first
``num_large_crops`` grad-requiring calls of the step (``training_step`` runs the large crops before the small
ones). On other steps the forward hooks return after one attribute check. With the monitor off no hook is
installed at all (the callback is simply not created).

Under mixed precision the gradients seen by the tensor hooks are multiplied by the GradScaler's scale, and
under gradient accumulation Lightning divides the loss by ``accumulate_grad_batches``; both factors are
undone, so the value is the gradient of the batch's ``training_step`` loss. With accumulation the logged value
belongs to the last micro-batch of the optimizer step. Under DDP each rank sees its own batch; rank 0's
value is logged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from ..ema.stages import get_module
from .keys import GRAD_PREFIX, MONITORED_PARTS

METRIC_PREFIX = GRAD_PREFIX


class GradNormHooks:
    """Forward hooks that record max |dL/d output| of some modules of a model (pure torch, no Lightning).

    Use: ``attach(model)``; per monitored step ``arm()``, forward, backward, then ``values()``; ``detach()``.
    """

    def __init__(self, parts: dict[str, str] | None = None, num_large_crops: int = 2) -> None:
        self.parts = dict(MONITORED_PARTS if parts is None else parts)
        self.num_large_crops = int(num_large_crops)
        self.armed = False
        self._handles: list[Any] = []
        self._calls: dict[str, int] = {}
        self._norms: list[tuple[str, torch.Tensor]] = []

    def attach(self, model: nn.Module) -> list[str]:
        """Install one forward hook per part found in `model`; returns the part names hooked."""
        self.detach()
        hooked = []
        for part, path in self.parts.items():
            try:
                module = get_module(model, path)
            except ValueError:
                continue  # e.g. a method without a projector
            self._handles.append(module.register_forward_hook(partial(self._on_forward, part)))
            hooked.append(part)
        return hooked

    def detach(self) -> None:
        """Remove every hook this object installed."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.armed = False

    def arm(self) -> None:
        """Record the next forward/backward (one training step); clears the previous values."""
        self._calls = dict.fromkeys(self.parts, 0)
        self._norms = []
        self.armed = True

    def disarm(self) -> None:
        """Stop recording; the forward hooks go back to a single attribute check."""
        self.armed = False

    def values(self) -> dict[str, torch.Tensor]:
        """Per part, the max over large crops of max |dL/d output| (0-dim float32 tensors on the model's device)."""
        per_part: dict[str, list[torch.Tensor]] = {}
        for part, norm in self._norms:
            per_part.setdefault(part, []).append(norm.float())
        return {part: torch.stack(norms).amax() for part, norms in per_part.items()}

    def read(self, factor: float = 1.0) -> dict[str, float]:
        """values() times `factor`, as Python floats, with a single device-to-host copy."""
        if not self._norms:
            return {}
        flat = (torch.stack([norm.float() for _, norm in self._norms]) * factor).tolist()
        out: dict[str, float] = {}
        for (part, _), value in zip(self._norms, flat):
            out[part] = max(out.get(part, value), value)
        return out

    def _on_forward(self, part: str, _module: nn.Module, _args: tuple, out: Any) -> None:
        if not self.armed:
            return
        if not isinstance(out, torch.Tensor) or not out.requires_grad:
            return  # target pass (no_grad), validation, or a frozen part
        n = self._calls[part]
        self._calls[part] = n + 1
        if n >= self.num_large_crops:
            return  # a small crop
        out.register_hook(partial(self._on_grad, part))

    def _on_grad(self, part: str, grad: torch.Tensor) -> None:
        # one reduction kernel per gradient; the max over crops and parts is taken when read
        self._norms.append((part, torch.linalg.vector_norm(grad.detach(), ord=math.inf)))


class GradNormMonitor(pl.Callback):
    """Logs ``grad_linf/<part>`` every `interval` optimizer steps (see the module docstring for the definition).

    ``last`` holds the latest values and ``history`` every (step, values) pair, as floats.
    """

    def __init__(self, interval: int = 1, parts: Iterable[str] | None = None) -> None:
        if interval < 1:
            raise ValueError(f"grad monitor interval must be >= 1, got {interval}")
        self.interval = int(interval)
        names = list(MONITORED_PARTS) if parts is None else list(parts)
        unknown = [p for p in names if p not in MONITORED_PARTS]
        if unknown:
            raise ValueError(f"unknown monitored part(s) {unknown}; valid: {', '.join(MONITORED_PARTS)}")
        self.hooks = GradNormHooks({p: MONITORED_PARTS[p] for p in names})
        self._factor = 1.0
        self._step = 0
        self.last: dict[str, float] = {}
        self.history: list[tuple[int, dict[str, float]]] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Install the forward hooks on the online modules (fit only)."""
        if stage == "fit":
            self.hooks.num_large_crops = int(getattr(pl_module, "num_large_crops", 1))
            self.hooks.attach(pl_module)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Remove the hooks."""
        self.hooks.detach()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        """Arm the hooks on monitored steps."""
        if trainer.global_step % self.interval == 0:
            self.hooks.arm()
            self._factor = 1.0
            self._step = trainer.global_step

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Remember the factors (loss scale, accumulation) to undo in the recorded gradients."""
        if not self.hooks.armed:
            return
        scaler = getattr(trainer, "scaler", None)
        scale = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0
        self._factor = trainer.accumulate_grad_batches / scale

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        """Write the recorded norms to the run's loggers (at the step the batch started) and disarm.

        The loggers are called directly: a value given to ``self.log`` only on some steps would be repeated
        by Lightning on the steps in between.
        """
        if not self.hooks.armed:
            return
        self.hooks.disarm()
        self.last = self.hooks.read(self._factor)  # one device sync
        if not self.last:
            return
        self.history.append((self._step, self.last))
        metrics = {f"{METRIC_PREFIX}/{p}": v for p, v in self.last.items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=self._step)
