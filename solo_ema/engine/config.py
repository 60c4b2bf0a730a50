"""Small helpers for omegaconf configs in solo-learn's key layout."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

_MISSING = object()


def cfg_get(cfg: DictConfig, key: str, default: Any = None) -> Any:
    """Value at a dotted key, or default when absent (the string 'None' reads as None)."""
    value = OmegaConf.select(cfg, key, default=_MISSING)
    if value is _MISSING:
        return default
    return None if value == "None" else value


def cfg_default(cfg: DictConfig, key: str, default: Any) -> Any:
    """Set a dotted key to default when it is absent; return the value now stored."""
    value = OmegaConf.select(cfg, key, default=_MISSING)
    if value is _MISSING or value is None:
        OmegaConf.update(cfg, key, default, force_add=True)
        return default
    return value


def cfg_require(cfg: DictConfig, key: str) -> Any:
    """Value at a dotted key; KeyError naming the key when absent."""
    value = OmegaConf.select(cfg, key, default=_MISSING)
    if value is _MISSING or value is None:
        raise KeyError(f"config key '{key}' is required")
    return value
