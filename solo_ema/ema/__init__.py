"""Partial EMA: the parts of an encoder, EMA specs, momentum copies and the target forward (pure torch).

Names are loaded from their module on first use, so ``solo_ema.ema.parts`` (part names, the ``momentum.parts``
resolver) is read without loading torch: the command lines check ``--ema_parts`` before they load a model.
"""

from __future__ import annotations

from typing import Any

_EXPORTS: dict[str, tuple[str, ...]] = {
    "momentum": ("PartialEMA",),
    "parts": ("BACKBONE_PARTS", "DEFAULT_PARTS", "PARTS", "EMASpec", "EMASpecError", "config_parts",
              "parse_ema_spec", "resolve_parts", "shares_every_part", "valid_names"),
    "schedule": ("check_taus", "cosine_tau"),
    "stages": ("Stage", "get_module", "part_paths", "resnet_stages", "spec_paths"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    """Load an exported name from its module on first access."""
    module = _MODULE_OF.get(name)
    if module is None:  # also what `from . import <submodule>` below asks first
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import momentum, parts, schedule, stages

    modules = {"momentum": momentum, "parts": parts, "schedule": schedule, "stages": stages}
    value = getattr(modules[module], name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The exported names and the loaded globals."""
    return sorted(set(globals()) | set(__all__))
