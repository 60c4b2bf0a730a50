"""The ImageNet augmentation recipes per method, as ViewRecipe lists (one source for torchvision and DALI).

The numbers are those of solo-learn's paper-era ImageNet-100 bash files (224 px crops, random resized crop
scale 0.08-1, flip 0.5, grayscale 0.2, colour jitter with probability 0.8):

| method      | pipelines (crops)  | b / c / s / h        | blur        | solarization |
|-------------|--------------------|----------------------|-------------|--------------|
| byol        | 2 (1 + 1)          | .4/.4/.2/.1          | 1.0 / 0.1   | 0 / 0.2      |
| dino        | 2 large + 1 small  | .4/.4/.2/.1          | 1.0 / 0.1 / .5 | 0 / .2 / 0 |
| mocov2plus  | 1 (2 crops)        | .4/.4/.4/.1          | 0.5         | 0            |
| ressl       | 2 (1 + 1)          | .4/.4/.4/.1 and 0s   | 0.5 / 0     | 0 / 0        |
| simclr      | 1 (2 crops)        | .8/.8/.8/.2          | 0.5         | 0            |
| simsiam     | 1 (2 crops)        | .4/.4/.4/.1          | 0.5         | 0            |

DINO here is the multi-crop recipe of the DINO paper's ResNet-50 runs (two global crops at 224 px with
scale 0.14-1, `num_small_crops` local crops, 6 by default, at 96 px with scale 0.05-0.14 and blur 0.5);
solo-learn's paper-era ImageNet-100 DINO run used the two BYOL-like crops only (``multicrop=False``).
"""

from __future__ import annotations

from dataclasses import replace

from solo_ema.data.views import ViewRecipe

__all__ = ["IMAGENET_METHODS", "imagenet_recipes"]

IMAGENET_METHODS = ("byol", "dino", "mocov2plus", "ressl", "simclr", "simsiam")


def imagenet_recipes(
    method: str,
    crop_size: int = 224,
    small_crop_size: int = 96,
    num_small_crops: int = 6,
    multicrop: bool = True,
) -> list[ViewRecipe]:
    """The ImageNet(-100) ViewRecipe list of a method; pipeline 0's crops come first, small crops last."""
    base = ViewRecipe(crop_size=crop_size, min_scale=0.08, max_scale=1.0)
    strong = replace(base, saturation=0.4, gaussian_prob=0.5)  # the MoCo v2 / SimSiam recipe
    asym = [replace(base, gaussian_prob=1.0), replace(base, gaussian_prob=0.1, solarization_prob=0.2)]
    if method == "byol":
        return asym
    if method == "dino":
        if not multicrop:
            return asym
        large = [replace(r, min_scale=0.14) for r in asym]
        small = replace(
            base, crop_size=small_crop_size, min_scale=0.05, max_scale=0.14, gaussian_prob=0.5,
            num_crops=num_small_crops,
        )
        return [*large, small]
    if method in ("mocov2plus", "simsiam"):
        return [replace(strong, num_crops=2)]
    if method == "ressl":
        weak = replace(base, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
        return [strong, weak]
    if method == "simclr":
        return [replace(strong, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, num_crops=2)]
    raise ValueError(f"no ImageNet recipe for method '{method}'; known: {', '.join(IMAGENET_METHODS)}")
