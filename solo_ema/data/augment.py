"""Augmentation recipes: one `ViewRecipe` per pipeline, torchvision transforms built from them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torchvision import transforms as T

__all__ = [
    "AUG_FLAGS",
    "FLAG_NAMES",
    "MultiViewTransform",
    "ViewRecipe",
    "blur_kernel_size",
    "build_view_transform",
    "eval_transform",
    "recipes_from_flags",
    "resolved_view_params",
    "torchvision_view_params",
]

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
    if isinstance(d, DictConfig):
        return OmegaConf.to_container(d, resolve=True)  # type: ignore[return-value]
    if not isinstance(d, Mapping):
        raise TypeError(f"expected a mapping, got {type(d).__name__}")
    return dict(d)


def blur_kernel_size(crop_size: int) -> int:
    """Return the odd Gaussian-blur kernel size, about 10% of the crop side (3 for 32 px, 23 for 224 px)."""
    return max(3, int(0.1 * crop_size) // 2 * 2 + 1)


def build_view_transform(recipe: ViewRecipe, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """Build the PIL image -> normalised float tensor (C x H x W) transform of one pipeline."""
    ops: list[Callable] = [
        T.RandomResizedCrop(
            recipe.crop_size,
            scale=(recipe.min_scale, recipe.max_scale),
            interpolation=T.InterpolationMode.BICUBIC,
        )
    ]
    if recipe.color_jitter_prob > 0:
        jitter = T.ColorJitter(recipe.brightness, recipe.contrast, recipe.saturation, recipe.hue)
        ops.append(T.RandomApply([jitter], p=recipe.color_jitter_prob))
    if recipe.gray_scale_prob > 0:
        ops.append(T.RandomGrayscale(p=recipe.gray_scale_prob))
    if recipe.gaussian_prob > 0:
        blur = T.GaussianBlur(blur_kernel_size(recipe.crop_size), sigma=(0.1, 2.0))
        ops.append(T.RandomApply([blur], p=recipe.gaussian_prob))
    if recipe.solarization_prob > 0:
        ops.append(T.RandomSolarize(128, p=recipe.solarization_prob))
    if recipe.horizontal_flip_prob > 0:
        ops.append(T.RandomHorizontalFlip(p=recipe.horizontal_flip_prob))
    ops += [T.ToTensor(), T.Normalize(tuple(mean), tuple(std))]
    return T.Compose(ops)


def _pair(value: Any) -> tuple[float, float]:
    """A (low, high) pair of floats."""
    low, high = value
    return (float(low), float(high))


def resolved_view_params(
    crop_size: int,
    num_crops: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    interpolation: str,
    mean: Sequence[float],
    std: Sequence[float],
    color_jitter: tuple[float, Any, Any, Any, Any] | None = None,
    grayscale_prob: float = 0.0,
    blur: tuple[float, int, Any] | None = None,
    solarization: tuple[float, float] | None = None,
    flip_prob: float = 0.0,
) -> dict[str, Any]:
    """The augmentation parameters of one pipeline in one layout, whichever library applies them.

    Units are torchvision's: jitter factors as (low, high) ranges, hue as a fraction of the colour circle,
    pixel values in [0, 255] for the solarization threshold, mean and std of [0, 1] images. An op that is
    not applied (probability 0) is None. `color_jitter` is (prob, brightness, contrast, saturation, hue) ranges,
    a range of None meaning "no change"; `blur` is (prob, kernel size, sigma range); `solarization` is
    (prob, threshold).
    """
    jitter = None
    if color_jitter is not None and color_jitter[0] > 0:
        prob, b, c, s, h = color_jitter
        jitter = {
            "prob": float(prob),
            "brightness": _pair(b) if b is not None else (1.0, 1.0),
            "contrast": _pair(c) if c is not None else (1.0, 1.0),
            "saturation": _pair(s) if s is not None else (1.0, 1.0),
            "hue": _pair(h) if h is not None else (0.0, 0.0),
        }
    return {
        "crop_size": int(crop_size),
        "num_crops": int(num_crops),
        "random_resized_crop": {"scale": _pair(scale), "ratio": _pair(ratio), "interpolation": interpolation},
        "color_jitter": jitter,
        "grayscale": {"prob": float(grayscale_prob)} if grayscale_prob > 0 else None,
        "gaussian_blur": (
            {"prob": float(blur[0]), "kernel_size": int(blur[1]), "sigma": _pair(blur[2])}
            if blur is not None and blur[0] > 0 else None
        ),
        "solarization": (
            {"prob": float(solarization[0]), "threshold": float(solarization[1])}
            if solarization is not None and solarization[0] > 0 else None
        ),
        "horizontal_flip": {"prob": float(flip_prob)} if flip_prob > 0 else None,
        "normalize": {"mean": tuple(float(m) for m in mean), "std": tuple(float(v) for v in std)},
    }


def torchvision_view_params(transform: Callable, num_crops: int = 1) -> dict[str, Any]:
    """Read the resolved parameters back from a transform built by `build_view_transform`.

    The values come from the torchvision op objects themselves (not from the recipe), so comparing them
    with `solo_ema.data.dali.dali_view_params` checks that both loaders apply the same numbers.
    """
    if not isinstance(transform, T.Compose):
        raise TypeError(f"expected the T.Compose of build_view_transform, got {type(transform).__name__}")
    found: dict[str, Any] = {}
    for op in transform.transforms:
        inner, prob = op, 1.0
        if isinstance(op, T.RandomApply):
            if len(op.transforms) != 1:
                raise ValueError(f"RandomApply of {len(op.transforms)} ops is not a build_view_transform op")
            inner, prob = op.transforms[0], float(op.p)
        if isinstance(inner, T.RandomResizedCrop):
            found["crop"] = inner
        elif isinstance(inner, T.ColorJitter):
            found["color_jitter"] = (prob, inner.brightness, inner.contrast, inner.saturation, inner.hue)
        elif isinstance(inner, T.RandomGrayscale):
            found["grayscale_prob"] = float(inner.p)
        elif isinstance(inner, T.GaussianBlur):
            size = inner.kernel_size
            if size[0] != size[1]:
                raise ValueError(f"non-square blur kernel {size}")
            found["blur"] = (prob, size[0], inner.sigma)
        elif isinstance(inner, T.RandomSolarize):
            found["solarization"] = (float(inner.p), float(inner.threshold))
        elif isinstance(inner, T.RandomHorizontalFlip):
            found["flip_prob"] = float(inner.p)
        elif isinstance(inner, T.Normalize):
            found["mean"], found["std"] = inner.mean, inner.std
        elif not isinstance(inner, T.ToTensor):
            raise ValueError(f"unexpected op {inner!r} in a view transform")
    crop = found.pop("crop", None)
    if crop is None or "mean" not in found:
        raise ValueError("a view transform needs RandomResizedCrop and Normalize")
    height, width = crop.size
    if height != width:
        raise ValueError(f"non-square crop {crop.size}")
    return resolved_view_params(
        height, num_crops, crop.scale, crop.ratio, crop.interpolation.value, **found
    )


class MultiViewTransform:
    """Apply several pipelines to one image, each `num_crops` times, and return all crops in order."""

    def __init__(self, pipelines: Sequence[tuple[Callable, int]]) -> None:
        """Keep the (transform, num_crops) pairs; pipeline 0's crops come first in the output."""
        if not pipelines:
            raise ValueError("MultiViewTransform needs at least one (transform, num_crops) pipeline")
        for _, n in pipelines:
            if int(n) != n or n < 1:
                raise ValueError(f"num_crops must be a positive integer, got {n}")
        self.pipelines = [(t, int(n)) for t, n in pipelines]
        self.num_crops = sum(n for _, n in self.pipelines)

    def __call__(self, img: Image.Image) -> list[torch.Tensor]:
        """Return the list of all crops of `img`, pipeline by pipeline."""
        return [t(img) for t, n in self.pipelines for _ in range(n)]

    def __repr__(self) -> str:
        """Show the pipelines and their crop counts."""
        inner = ",\n".join(f"  {n} x {t}" for t, n in self.pipelines)
        return f"{type(self).__name__}(num_crops={self.num_crops},\n{inner}\n)"


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


class _SmallImageEval:
    """Small-image eval transform: resize + center crop only when the image is not yet the right size."""

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        """Prepare the resize branch and the tensor/normalise tail."""
        self.image_size = image_size
        self.resize = T.Compose(
            [T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(image_size)]
        )
        self.tail = T.Compose([T.ToTensor(), T.Normalize(tuple(mean), tuple(std))])

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """Return the normalised tensor of `img` at image_size x image_size."""
        if img.size != (self.image_size, self.image_size):
            img = self.resize(img)
        return self.tail(img)

    def __repr__(self) -> str:
        """Describe the transform."""
        return f"{type(self).__name__}(image_size={self.image_size}, tail={self.tail})"


def eval_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float], resize: int | None = None
) -> Callable:
    """Build the deterministic validation transform (PIL image -> normalised float tensor)."""
    if resize is None and image_size <= 64:
        return _SmallImageEval(image_size, mean, std)
    if resize is None:
        resize = round(image_size * 256 / 224)
    return T.Compose(
        [
            T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(tuple(mean), tuple(std)),
        ]
    )
