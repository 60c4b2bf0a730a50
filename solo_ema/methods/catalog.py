"""The method table: what the command line knows of each method before loading it.

Only the standard library is imported here, so ``--method``, ``--ema_parts`` and ``--num_crops_per_aug`` are
checked without loading torch or Lightning; the classes themselves are ``solo_ema.methods.METHODS`` (same names,
same order).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ema.parts import DEFAULT_PARTS

__all__ = ["METHOD_INFO", "METHOD_NAMES", "MethodInfo"]


@dataclass(frozen=True)
class MethodInfo:
    """A method's default EMA placement and the crops its loss accepts."""

    default_ema_parts: str = DEFAULT_PARTS  # momentum.parts when --ema_parts is not given
    large_crops: tuple[int, int | None] = (2, None)  # (min, max) number of large crops; None: no maximum
    small_crops: bool = True  # whether the loss accepts small (multi-crop) views


METHOD_INFO: dict[str, MethodInfo] = {
    "byol": MethodInfo(),
    "dino": MethodInfo(),
    "mocov2plus": MethodInfo(large_crops=(2, 2), small_crops=False),
    "ressl": MethodInfo(large_crops=(2, 2), small_crops=False),
    "simclr": MethodInfo(default_ema_parts="none"),  # plain SimCLR unless EMA parts are given ("+EMA")
    "simsiam": MethodInfo(default_ema_parts="none", large_crops=(2, 2), small_crops=False),
}
METHOD_NAMES: tuple[str, ...] = tuple(METHOD_INFO)
