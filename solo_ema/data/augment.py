"""Augmentation: the torchvision transforms built from view recipes (`solo_ema.data.views`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torchvision import transforms as T

from .views import AUG_FLAGS, FLAG_NAMES, ViewRecipe, recipes_from_flags  # the recipes' owner; re-exported here

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
