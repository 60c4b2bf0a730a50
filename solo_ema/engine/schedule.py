"""Learning-rate and momentum (tau) schedules, measured in optimizer steps."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["SCHEDULERS", "build_scheduler", "warmup_cosine"]

SCHEDULERS = ("warmup_cosine", "cosine", "none")


def warmup_cosine(
    step: int,
    warmup_steps: int,
    total_steps: int,
    base_lr: float,
    warmup_start_lr: float = 3e-5,
    min_lr: float = 0.0,
) -> float:
    """Linear warm-up from ``warmup_start_lr`` to ``base_lr``, then cosine decay to ``min_lr``.

    The value is ``warmup_start_lr`` at step 0, ``base_lr`` at ``warmup_steps`` and ``min_lr`` from
    ``total_steps`` on. ``warmup_steps <= 0`` disables the warm-up (the cosine starts at step 0).
    """
    step = max(int(step), 0)
    warmup_steps = max(int(warmup_steps), 0)
    if step < warmup_steps:
        return warmup_start_lr + (base_lr - warmup_start_lr) * step / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _group_factor(
    base_lr: float, warmup_steps: int, total_steps: int, warmup_start_lr: float, min_lr: float
) -> Callable[[int], float]:
    """Return the LambdaLR multiplier that makes a group with ``base_lr`` follow ``warmup_cosine``."""

    def factor(step: int) -> float:
        if base_lr == 0.0:
            return 1.0
        lr = warmup_cosine(step, warmup_steps, total_steps, base_lr, warmup_start_lr, min_lr)
        return lr / base_lr

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    warmup_steps: int,
    total_steps: int,
    warmup_start_lr: float,
    min_lr: float,
) -> torch.optim.lr_scheduler.LambdaLR | None:
    """Build a per-optimizer-step scheduler: ``warmup_cosine``, ``cosine`` (no warm-up) or ``none``.

    Each param group follows ``warmup_cosine`` with its own initial lr as ``base_lr``; groups with
    ``"static_lr": True`` keep their lr.
    """
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; valid names: {', '.join(SCHEDULERS)}")
    if name == "none":
        return None
    if name == "cosine":
        warmup_steps = 0
    lambdas: list[Callable[[int], float]] = []
    for group in optimizer.param_groups:
        if group.get("static_lr", False):
            lambdas.append(lambda _step: 1.0)
        else:
            base_lr = float(group.get("initial_lr", group["lr"]))
            lambdas.append(_group_factor(base_lr, warmup_steps, total_steps, warmup_start_lr, min_lr))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
