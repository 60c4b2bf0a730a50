"""Partial EMA: the parts of an encoder, EMA specs, momentum copies and the target forward (pure torch)."""

from .momentum import PartialEMA
from .parts import (
    BACKBONE_PARTS,
    DEFAULT_PARTS,
    PARTS,
    EMASpec,
    EMASpecError,
    config_parts,
    parse_ema_spec,
    resolve_parts,
    shares_every_part,
    valid_names,
)
from .schedule import check_taus, cosine_tau
from .stages import Stage, get_module, part_paths, resnet_stages, spec_paths

__all__ = [
    "BACKBONE_PARTS",
    "DEFAULT_PARTS",
    "PARTS",
    "EMASpec",
    "EMASpecError",
    "PartialEMA",
    "Stage",
    "check_taus",
    "config_parts",
    "cosine_tau",
    "get_module",
    "parse_ema_spec",
    "part_paths",
    "resnet_stages",
    "resolve_parts",
    "shares_every_part",
    "spec_paths",
    "valid_names",
]
