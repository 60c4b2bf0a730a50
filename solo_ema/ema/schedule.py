"""The momentum (tau) schedule."""

from __future__ import annotations

import math


def cosine_tau(step: int, max_steps: int, base_tau: float, final_tau: float) -> float:
    """Cosine increase of tau from base_tau (step 0) to final_tau (step max_steps)."""
    if max_steps <= 0:
        return base_tau
    step = min(max(step, 0), max_steps)
    return final_tau - (final_tau - base_tau) * (math.cos(math.pi * step / max_steps) + 1) / 2


def check_taus(base_tau: float, final_tau: float) -> None:
    """Raise ValueError unless 0 <= base_tau <= final_tau <= 1."""
    if not 0.0 <= base_tau <= 1.0:
        raise ValueError(f"base_tau must be in [0, 1], got {base_tau}")
    if not 0.0 <= final_tau <= 1.0:
        raise ValueError(f"final_tau must be in [0, 1], got {final_tau}")
    if base_tau > final_tau:
        raise ValueError(f"base_tau ({base_tau}) must not exceed final_tau ({final_tau})")
