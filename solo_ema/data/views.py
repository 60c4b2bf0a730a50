"""View recipes: one `ViewRecipe` per augmentation pipeline, and the augmentation flags of the command line.

Only the standard library is imported here (omegaconf when a recipe is read from a config), so a command line
can list and check its augmentation flags without loading torch; `solo_ema.data.augment` builds the
torchvision transforms from these recipes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["AUG_FLAGS", "FLAG_NAMES", "ViewRecipe", "recipes_from_flags"]

_PROB_FIELDS = (
    "color_jitter_prob",
    "gray_scale_prob",
    "gaussian_prob",
    "solarization_prob",
    "horizontal_flip_prob",
)

_DICT_KEYS = {
    "rrc": {"enabled", "crop_min_scale", "crop_max_scale"},
    "color_jitter": {"prob", "brightness", "contrast", "saturation", "hue"},
    "grayscale": {"prob"},
    "gaussian_blur": {"prob"},
    "solarization": {"prob"},
    "equalization": {"prob"},
    "horizontal_flip": {"prob"},
    "crop_size": None,
    "num_crops": None,
}


@dataclass(frozen=True)
class ViewRecipe:
    """Augmentation parameters of one pipeline (a group of `num_crops` identically augmented crops)."""

    crop_size: int = 32
    min_scale: float = 0.08
    max_scale: float = 1.0
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    color_jitter_prob: float = 0.8
    gray_scale_prob: float = 0.2
    gaussian_prob: float = 0.0
    solarization_prob: float = 0.0
    horizontal_flip_prob: float = 0.5
    num_crops: int = 1

    def __post_init__(self) -> None:
        """Reject values torchvision would reject later, or silently misuse."""
        for name in _PROB_FIELDS:
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"ViewRecipe.{name} must be in [0, 1], got {p}")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"ViewRecipe.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"ViewRecipe.hue must be in [0, 0.5], got {self.hue}")
        if not 0.0 < self.min_scale <= self.max_scale:
            raise ValueError(
                f"ViewRecipe needs 0 < min_scale <= max_scale, got min_scale={self.min_scale}, "
                f"max_scale={self.max_scale}"
            )
        if int(self.crop_size) != self.crop_size or self.crop_size < 1:
            raise ValueError(f"ViewRecipe.crop_size must be a positive integer, got {self.crop_size}")
        if int(self.num_crops) != self.num_crops or self.num_crops < 1:
            raise ValueError(f"ViewRecipe.num_crops must be a positive integer, got {self.num_crops}")

    def to_dict(self) -> dict[str, Any]:
        """Return the recipe in the layout of solo-learn HEAD's augmentation yaml files."""
        return {
            "rrc": {"enabled": True, "crop_min_scale": self.min_scale, "crop_max_scale": self.max_scale},
            "color_jitter": {
                "prob": self.color_jitter_prob,
                "brightness": self.brightness,
                "contrast": self.contrast,
                "saturation": self.saturation,
                "hue": self.hue,
            },
            "grayscale": {"prob": self.gray_scale_prob},
            "gaussian_blur": {"prob": self.gaussian_prob},
            "solarization": {"prob": self.solarization_prob},
            "equalization": {"prob": 0.0},
            "horizontal_flip": {"prob": self.horizontal_flip_prob},
            "crop_size": self.crop_size,
            "num_crops": self.num_crops,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ViewRecipe:
        """Build a recipe from a solo-learn HEAD augmentation node (dict or omegaconf DictConfig)."""
        d = _to_plain_dict(d)
        unknown = sorted(set(d) - set(_DICT_KEYS))
        if unknown:
            raise ValueError(f"unknown augmentation keys {unknown}; known: {sorted(_DICT_KEYS)}")
        for key, sub_keys in _DICT_KEYS.items():
            if sub_keys is None or key not in d:
                continue
            if not isinstance(d[key], Mapping):
                raise TypeError(f"augmentation key '{key}' must be a mapping, got {d[key]!r}")
            bad = sorted(set(d[key]) - sub_keys)
            if bad:
                raise ValueError(f"unknown keys {bad} under '{key}'; known: {sorted(sub_keys)}")

        rrc = d.get("rrc", {})
        if not rrc.get("enabled", True):
            raise ValueError("rrc.enabled=False is not supported: every view uses RandomResizedCrop")
        if float(d.get("equalization", {}).get("prob", 0.0)) != 0.0:
            raise ValueError("equalization is not supported (its probability must be 0)")

        defaults = cls()
        cj = d.get("color_jitter", {})
        return cls(
            crop_size=int(d.get("crop_size", defaults.crop_size)),
            min_scale=float(rrc.get("crop_min_scale", defaults.min_scale)),
            max_scale=float(rrc.get("crop_max_scale", defaults.max_scale)),
            brightness=float(cj.get("brightness", defaults.brightness)),
            contrast=float(cj.get("contrast", defaults.contrast)),
            saturation=float(cj.get("saturation", defaults.saturation)),
            hue=float(cj.get("hue", defaults.hue)),
            color_jitter_prob=float(cj.get("prob", defaults.color_jitter_prob)),
            gray_scale_prob=float(d.get("grayscale", {}).get("prob", defaults.gray_scale_prob)),
            gaussian_prob=float(d.get("gaussian_blur", {}).get("prob", defaults.gaussian_prob)),
            solarization_prob=float(d.get("solarization", {}).get("prob", defaults.solarization_prob)),
            horizontal_flip_prob=float(
                d.get("horizontal_flip", {}).get("prob", defaults.horizontal_flip_prob)
            ),
            num_crops=int(d.get("num_crops", defaults.num_crops)),
        )


# The per-pipeline flags of solo-learn 1.0.5's bash files: every ViewRecipe field but num_crops, as
# flag -> (type, default). Each flag takes one value or one per pipeline (--num_crops_per_aug).
AUG_FLAGS: dict[str, tuple[type, Any]] = {
    f.name: (type(f.default), f.default) for f in fields(ViewRecipe) if f.name != "num_crops"
}
FLAG_NAMES: tuple[str, ...] = tuple(AUG_FLAGS)


def _to_plain_dict(d: Any) -> dict[str, Any]:
    """Turn an omegaconf DictConfig (or any mapping) into a plain dict."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(d, DictConfig):
        return OmegaConf.to_container(d, resolve=True)  # type: ignore[return-value]
    if not isinstance(d, Mapping):
        raise TypeError(f"expected a mapping, got {type(d).__name__}")
    return dict(d)


def recipes_from_flags(num_crops_per_aug: Sequence[int], **flags: Any) -> list[ViewRecipe]:
    """Build one recipe per pipeline from solo-learn 1.0.5 style flags (each 1 value or one per pipeline)."""
    counts = list(num_crops_per_aug)
    if not counts:
        raise ValueError("--num_crops_per_aug: give at least one pipeline")
    for c in counts:
        if int(c) != c or c < 1:
            raise ValueError(f"--num_crops_per_aug: crop counts must be positive integers, got {counts}")
    n = len(counts)

    eq = flags.pop("equalization_prob", None)
    if eq is not None and any(float(v) != 0.0 for v in _as_list(eq)):
        raise ValueError("--equalization_prob: equalization is not supported (give 0)")
    unknown = sorted(set(flags) - set(FLAG_NAMES))
    if unknown:
        raise ValueError(
            f"unknown augmentation flags {['--' + u for u in unknown]}; known: {list(FLAG_NAMES)}"
        )

    per_pipeline: list[dict[str, Any]] = [{"num_crops": int(c)} for c in counts]
    for name, value in flags.items():
        if value is None:
            continue
        values = _as_list(value)
        if len(values) == 1:
            values = values * n
        elif len(values) != n:
            give = "1" if n == 1 else f"1 or {n}"
            raise ValueError(f"--{name}: got {len(values)} values for {n} pipelines (give {give})")
        for kwargs, v in zip(per_pipeline, values):
            kwargs[name] = AUG_FLAGS[name][0](v)
    return [ViewRecipe(**kwargs) for kwargs in per_pipeline]


def _as_list(value: Any) -> list[Any]:
    """Wrap a scalar into a list; turn any other sequence into a list."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return [value]
    return list(value)
