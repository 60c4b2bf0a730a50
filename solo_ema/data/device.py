"""Device-resident data for small datasets: the split as one uint8 tensor, batched augmentation on its device.

The torchvision path augments one PIL image at a time in worker processes; on a fast GPU a ResNet-18 step
at 32x32 outruns the CPUs. Here the whole split (CIFAR-10/100, Fashion-MNIST, a small custom folder whose
images share one size) sits on the training device as uint8, each epoch is a permutation of it (split into
disjoint per-rank shards by `DistributedSampler`'s rule, padding included), and every crop of a batch is
augmented at once with the *same* view recipes (`ViewRecipe`) and per-sample parameters drawn from the
same distributions as torchvision's ops:

- random resized crop: torchvision's sampler (10 tries of scale and log-ratio, then the central fallback),
  bicubic resize with PIL's kernel (a = -0.5, support widened when shrinking: antialiased), as separable
  per-sample weight matrices, columns first and clipped as PIL does; the horizontal flip is folded into the
  column weights (every later op is flip-equivariant);
- colour jitter with its probability, the four adjustments in a per-sample random order;
- grayscale, Gaussian blur (sigma in [0.1, 2], kernel `blur_kernel_size(crop)`, reflect padding),
  solarization (pixels >= 128/255 inverted), normalisation with the dataset's mean and std.

Pixels stay float32 in [0, 1] between ops (the PIL path rounds to uint8 after each op: differences of at
most about one grey level). It runs on CPU as well (tests, CI).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from solo_ema.data.augment import blur_kernel_size, eval_transform
from solo_ema.data.catalog import DATASETS, DEVICE_DATASETS
from solo_ema.data.datasets import build_dataset
from solo_ema.data.loaders import random_subset
from solo_ema.data.prefetch import prefetched
from solo_ema.data.views import ViewRecipe

__all__ = [
    "DEVICE_DATASETS",
    "DeviceEvalLoader",
    "DevicePretrainLoader",
    "ShardSampler",
    "ViewParams",
    "adjust_hue",
    "augment_views",
    "build_device_loaders",
    "color_jitter",
    "gaussian_blur",
    "load_split",
    "resize_weights",
    "resized_crop",
    "sample_crop_boxes",
    "sample_view_params",
    "seed_for",
]

RATIO = (3.0 / 4.0, 4.0 / 3.0)  # torchvision's RandomResizedCrop default, as the torchvision path uses
SIGMA = (0.1, 2.0)  # the torchvision path's GaussianBlur sigma range
SOLARIZE_THRESHOLD = 128 / 255
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


# splits -------------------------------------------------------------------------------------------------
def load_split(
    dataset: str,
    path: str | os.PathLike | None,
    train: bool,
    download: bool = False,
    subset: int | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 N x C x H x W, labels int64 N) of a split, the same images and subset as the torchvision path.

    Training images are kept as stored (Fashion-MNIST zero-padded to 32x32, one channel); validation
    images go through the deterministic evaluation resize of the torchvision path first.
    """
    if dataset not in DEVICE_DATASETS:
        raise ValueError(f"device-resident data supports {', '.join(DEVICE_DATASETS)}, not '{dataset}'")
    info = DATASETS[dataset]
    base = build_dataset(dataset, path, train, None, download=download)
    picked = random_subset(base, subset, seed)
    keep = list(picked.indices) if isinstance(picked, Subset) else None
    if info.layout == "torchvision":
        images = torch.from_numpy(np.ascontiguousarray(base.data)).permute(0, 3, 1, 2)
        labels = torch.as_tensor(base.targets, dtype=torch.long)
    elif info.layout == "idx":
        images = torch.from_numpy(np.pad(base.images, ((0, 0), (2, 2), (2, 2))))[:, None]
        labels = torch.as_tensor(base.targets, dtype=torch.long)
    else:
        images, labels = _read_folder(base, keep, None if train else info)
        keep = None
    if keep is not None:
        images, labels = images[keep], labels[keep]
    if not train and images.shape[-1] != info.image_size:
        raise ValueError(f"{dataset}: validation images of size {tuple(images.shape[-2:])}, expected {info.image_size}")
    return images.contiguous(), labels


def _read_folder(base, keep: list[int] | None, eval_info) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode an ImageFolder (optionally a subset) into one uint8 tensor; training images must share one size."""
    order = keep if keep is not None else range(len(base.samples))
    to_uint8 = None
    if eval_info is not None:  # the torchvision path's eval transform, without normalisation
        to_uint8 = eval_transform(eval_info.image_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    arrays, labels, sizes = [], [], set()
    for i in order:
        file, label = base.samples[i]
        img = base.loader(file)
        if to_uint8 is not None:
            arrays.append(to_uint8(img).mul(255).round().to(torch.uint8))
        else:
            arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
            sizes.add(tuple(arr.shape[1:]))
            if len(sizes) > 1:
                raise ValueError(
                    f"custom images must share one size for device-resident data; found {sorted(sizes)} "
                    f"(e.g. {file})"
                )
            arrays.append(arr)
        labels.append(label)
    return torch.stack(arrays), torch.as_tensor(labels, dtype=torch.long)


# sharding -----------------------------------------------------------------------------------------------
class ShardSampler:
    """Per-epoch indices of one rank, by `DistributedSampler`'s rule (seed + epoch, padding by repetition)."""

    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0) -> None:
        """Index `size` items for rank `rank` of `num_replicas`."""
        if size < 1:
            raise ValueError(f"nothing to sample: size {size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        self.size, self.num_replicas, self.rank = size, num_replicas, rank
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of `epoch` (Lightning calls this before each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Indices per rank: ceil(size / num_replicas)."""
        return math.ceil(self.size / self.num_replicas)

    def indices(self) -> torch.Tensor:
        """This rank's indices of the current epoch (a CPU int64 tensor)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g)
        else:
            order = torch.arange(self.size)
        total = len(self) * self.num_replicas
        if total > self.size:
            order = order.repeat(math.ceil(total / self.size))[:total]
        return order[self.rank : total : self.num_replicas]


def seed_for(seed: int, rank: int, epoch: int) -> int:
    """The augmentation seed of one rank and epoch (independent streams from one run seed)."""
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1, np.uint64)[0] >> 1)


# parameter samplers -------------------------------------------------------------------------------------
def _uniform(n: int, low: float, high: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g, device=device, dtype=torch.float64)


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(n, 4) int64 boxes (top, left, h, w) by RandomResizedCrop's rule: 10 tries, then the central fallback."""
    device = torch.device(device)
    tries = 10
    area = height * width
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(
        n, tries, generator=generator, device=device, dtype=torch.float64))
    aspect = torch.exp(lo + (hi - lo) * torch.rand(n, tries, generator=generator, device=device, dtype=torch.float64))
    w = torch.round(torch.sqrt(target * aspect))  # round half to even, as Python's round
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first successful try
    found = ok.any(dim=1)
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    h = torch.where(found, h.gather(1, first).squeeze(1), float(fh)).long()
    w = torch.where(found, w.gather(1, first).squeeze(1), float(fw)).long()
    u = torch.rand(n, 2, generator=generator, device=device, dtype=torch.float64)
    top = torch.where(found, (u[:, 0] * (height - h + 1)).floor().long(), (height - fh) // 2)
    left = torch.where(found, (u[:, 1] * (width - w + 1)).floor().long(), (width - fw) // 2)
    top = torch.minimum(top, height - h)  # guards u * (k + 1) rounding up to k + 1
    left = torch.minimum(left, width - w)
    return torch.stack([top, left, h, w], dim=1)


def _jitter_ranges(recipe: ViewRecipe) -> list[tuple[float, float]]:
    """ColorJitter's factor ranges: brightness, contrast, saturation around 1 (clipped at 0), hue around 0."""
    return [
        (max(0.0, 1.0 - recipe.brightness), 1.0 + recipe.brightness),
        (max(0.0, 1.0 - recipe.contrast), 1.0 + recipe.contrast),
        (max(0.0, 1.0 - recipe.saturation), 1.0 + recipe.saturation),
        (-recipe.hue, recipe.hue),
    ]


@dataclass
class ViewParams:
    """Per-sample augmentation parameters of n crops (all tensors have n rows)."""

    boxes: torch.Tensor  # (n, 4) int64: top, left, height, width
    flip: torch.Tensor  # (n,) bool
    jitter: torch.Tensor  # (n,) bool: colour jitter applied
    factors: torch.Tensor  # (n, 4): brightness, contrast, saturation, hue
    order: torch.Tensor  # (n, 4) int64: a permutation of 0..3 (the order of the four adjustments)
    gray: torch.Tensor  # (n,) bool
    blur: torch.Tensor  # (n,) bool
    sigma: torch.Tensor  # (n,)
    solarize: torch.Tensor  # (n,) bool

    @staticmethod
    def cat(parts: Sequence[ViewParams]) -> ViewParams:
        """Concatenate the rows of several parameter sets."""
        return ViewParams(**{k: torch.cat([getattr(p, k) for p in parts]) for k in ViewParams.__dataclass_fields__})


def sample_view_params(
    recipe: ViewRecipe, n: int, height: int, width: int, generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> ViewParams:
    """Draw the parameters of n crops of one pipeline, from the distributions torchvision's ops draw from."""
    device = torch.device(device)

    def coin(p: float) -> torch.Tensor:
        return torch.rand(n, generator=generator, device=device) < p

    boxes = sample_crop_boxes(n, height, width, (recipe.min_scale, recipe.max_scale), RATIO, generator, device)
    factors = torch.stack([_uniform(n, lo, hi, generator, device) for lo, hi in _jitter_ranges(recipe)], dim=1)
    order = torch.rand(n, 4, generator=generator, device=device).argsort(dim=1)
    return ViewParams(
        boxes=boxes,
        flip=coin(recipe.horizontal_flip_prob),
        jitter=coin(recipe.color_jitter_prob),
        factors=factors.float(),
        order=order,
        gray=coin(recipe.gray_scale_prob),
        blur=coin(recipe.gaussian_prob),
        sigma=_uniform(n, SIGMA[0], SIGMA[1], generator, device).float(),
        solarize=coin(recipe.solarization_prob),
    )


# batched ops --------------------------------------------------------------------------------------------
def _cubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic convolution kernel with PIL's a = -0.5."""
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = a * (((x - 5) * x + 8) * x - 4)
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resize_weights(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int) -> torch.Tensor:
    """(n, out_size, in_size) float32 weights resizing input[start:start+length] to out_size, per sample.

    Antialiased bicubic as PIL and torch's ``interpolate(..., antialias=True)`` compute it: output pixel i
    centred at scale * (i + 0.5) in the crop, support 2 * max(scale, 1), taps at pixel centres, rows
    normalised to sum 1.
    """
    start = start.to(torch.float64)[:, None, None]
    length = length.to(torch.float64)
    scale = (length / out_size)[:, None, None]
    stretch = scale.clamp(min=1.0)
    centre = scale * (torch.arange(out_size, device=start.device, dtype=torch.float64)[None, :, None] + 0.5)
    lo = torch.trunc(centre - 2 * stretch + 0.5).clamp(min=0)
    hi = torch.minimum(torch.trunc(centre + 2 * stretch + 0.5), length[:, None, None])
    j = torch.arange(in_size, device=start.device, dtype=torch.float64)[None, None, :] - start
    w = _cubic((j - centre + 0.5) / stretch) * ((j >= lo) & (j < hi))
    return (w / w.sum(dim=-1, keepdim=True)).float()


def resized_crop(
    images: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor | None = None
) -> torch.Tensor:
    """Crop each float image (n, C, H, W) to its box and resize it to size x size (bicubic, antialiased, clamped).

    As PIL (the torchvision path): the horizontal pass first, clipped to [0, 1], then the vertical pass.
    With `flip`, the selected outputs are mirrored left-right.
    """
    _, _, height, width = images.shape
    rows = resize_weights(boxes[:, 0], boxes[:, 2], height, size)
    cols = resize_weights(boxes[:, 1], boxes[:, 3], width, size)
    if flip is not None:
        cols = torch.where(flip[:, None, None], cols.flip(1), cols)
    wide = torch.matmul(images, cols.transpose(1, 2)[:, None]).clamp_(0.0, 1.0)  # PIL: columns first, clipped
    return torch.matmul(rows[:, None], wide).clamp_(0.0, 1.0)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luma (n, 1, H, W) of RGB images with torchvision's weights."""
    r, g, b = x.unbind(dim=1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def adjust_hue(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of RGB images (n, 3, H, W) in [0, 1] by delta (n,) turns, through HSV."""
    r, g, b = x.unbind(dim=1)
    v = x.amax(dim=1)
    spread = v - x.amin(dim=1)
    flat = spread == 0
    s = spread / torch.where(flat, torch.ones_like(v), v)
    d = torch.where(flat, torch.ones_like(spread), spread)
    rc, gc, bc = (v - r) / d, (v - g) / d, (v - b) / d
    h = torch.where(v == r, bc - gc, torch.where(v == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(flat, torch.zeros_like(h), h)
    h = torch.remainder(h / 6.0 + delta[:, None, None], 1.0)
    h6 = h * 6.0
    sector = torch.floor(h6)
    f = h6 - sector
    sector = torch.remainder(sector, 6.0)
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    # sector k of the colour circle: (r, g, b) = (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q)
    table = {0: (v, t, p), 1: (q, v, p), 2: (p, v, t), 3: (p, q, v), 4: (t, p, v), 5: (v, p, q)}
    out = []
    for c in range(3):
        chan = table[5][c]
        for k in range(4, -1, -1):
            chan = torch.where(sector == k, table[k][c], chan)
        out.append(chan)
    return torch.stack(out, dim=1)


def color_jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor, apply: torch.Tensor,
                 hue: bool = True, masked: bool = False) -> torch.Tensor:
    """ColorJitter of the `apply`-selected images: the four adjustments in each image's own order.

    Brightness, contrast and saturation are blends `f * x + (1 - f) * ref` (ref: black, the mean luma,
    the luma image) clamped to [0, 1]; an image whose step is another adjustment blends with f = 1.
    ``hue=False`` skips the hue step (all hue factors are 0). The hue step runs on the selected images only,
    except on CUDA (or with ``masked``), where it runs on all and keeps the selected ones: the same values,
    without reading the number of selected images back to the host.
    """
    for step in range(4):
        op = order[:, step]
        f = factors.gather(1, op[:, None]).squeeze(1)
        blend = apply & (op < 3)
        fb = torch.where(blend, f, torch.ones_like(f))[:, None, None, None]
        gray = _gray(x)
        ref = torch.where(
            (op == 1)[:, None, None, None], gray.mean(dim=(1, 2, 3), keepdim=True),
            torch.where((op == 2)[:, None, None, None], gray, torch.zeros_like(gray)),
        )
        x = (fb * x + (1.0 - fb) * ref).clamp_(0.0, 1.0)
        if hue:
            turn = apply & (op == 3)
            if x.is_cuda or masked:  # every image through HSV and back, then selected: no wait for the count
                x = torch.where(turn[:, None, None, None], adjust_hue(x, torch.where(turn, f, 0.0)), x)
            else:  # HSV round trips are costly on a CPU: only the images whose step this is (each image has one)
                idx = turn.nonzero().squeeze(1)
                if idx.numel():
                    x = x.index_put((idx,), adjust_hue(x[idx], f[idx]))
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Blur each image (n, C, H, W) with its own sigma: separable Gaussian of `kernel_size` taps, reflect padding."""
    n, c, height, width = x.shape
    half = (kernel_size - 1) / 2
    taps = torch.linspace(-half, half, kernel_size, device=x.device, dtype=torch.float64)
    w = torch.exp(-0.5 * (taps[None, :] / sigma.to(torch.float64)[:, None]) ** 2)
    w = (w / w.sum(dim=1, keepdim=True)).to(x.dtype).repeat_interleave(c, dim=0)
    pad = kernel_size // 2
    y = F.pad(x, (pad, pad, pad, pad), mode="reflect").reshape(1, n * c, height + 2 * pad, width + 2 * pad)
    y = F.conv2d(y, w.view(n * c, 1, 1, kernel_size), groups=n * c)
    y = F.conv2d(y, w.view(n * c, 1, kernel_size, 1), groups=n * c)
    return y.reshape(n, c, height, width)


_CONSTANTS: dict[tuple, torch.Tensor] = {}


def _constant(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """values as a (1, C, 1, 1) tensor on like's device, made once per device (a copy from the host waits)."""
    key = (tuple(values), like.device, like.dtype)
    if key not in _CONSTANTS:
        _CONSTANTS[key] = torch.tensor(values, device=like.device, dtype=like.dtype)[None, :, None, None]
    return _CONSTANTS[key]


def _normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    return (x - _constant(mean, x)) / _constant(std, x)


def augment_views(
    images: torch.Tensor, params: ViewParams, size: int, mean: Sequence[float], std: Sequence[float],
    recipes: Sequence[ViewRecipe] = (),
) -> torch.Tensor:
    """Augment uint8 images (n, 1 or 3, H, W) with their parameters into normalised float crops (n, 3, size, size).

    The op order is the torchvision path's: resized crop (and flip), colour jitter, grayscale, blur,
    solarization, normalisation. `recipes` (the pipelines the rows come from) lets ops that no pipeline
    uses be skipped; empty means run every op.
    """
    on = {
        "jitter": not recipes or any(r.color_jitter_prob > 0 for r in recipes),
        "hue": not recipes or any(r.color_jitter_prob > 0 and r.hue > 0 for r in recipes),
        "gray": not recipes or any(r.gray_scale_prob > 0 for r in recipes),
        "blur": not recipes or any(r.gaussian_prob > 0 for r in recipes),
        "solarize": not recipes or any(r.solarization_prob > 0 for r in recipes),
    }
    x = resized_crop(images.float().div_(255.0), params.boxes, size, params.flip)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if on["jitter"]:
        x = color_jitter(x, params.factors, params.order, params.jitter, hue=on["hue"])
    if on["gray"]:
        x = torch.where(params.gray[:, None, None, None], _gray(x).expand(-1, 3, -1, -1), x)
    if on["blur"]:
        x = torch.where(params.blur[:, None, None, None], gaussian_blur(x, params.sigma, blur_kernel_size(size)), x)
    if on["solarize"]:
        x = torch.where(params.solarize[:, None, None, None] & (x >= SOLARIZE_THRESHOLD), 1.0 - x, x)
    return _normalize(x, mean, std)


# loaders ------------------------------------------------------------------------------------------------

class DevicePretrainLoader:
    """Multi-crop pretraining batches [indexes, [crops, pipeline 0 first], targets] from a device-held split.

    Batches of `batch_size` (the last partial batch dropped, as the torchvision loader does) come from this
    rank's shard of the epoch's permutation; `place` moves the split to the training device and sets the
    rank and world size. The crops of one epoch depend only on (seed, rank, epoch): one generator per epoch
    draws every batch's parameters in turn, and the number of draws of a batch depends on its size alone, so
    `skip_batches` (a resumed epoch) fast-forwards the generator past the skipped batches' draws and the
    remaining batches are exactly those of an uninterrupted epoch.
    """

    batch_sampler = None  # Lightning reads sampler / batch_sampler as a DataLoader's (set_epoch, shuffle check)

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, recipes: Sequence[ViewRecipe],
                 mean: Sequence[float], std: Sequence[float], batch_size: int, seed: int = 0,
                 prefetch: bool = True) -> None:
        """Keep the uint8 split and the recipes; the split stays where it is until `place`.

        With `prefetch` each batch is made one ahead (on CUDA on a side stream, beside the training step):
        the same batches in the same order (`solo_ema.data.prefetch.prefetched`).
        """
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 N x C x H x W images, got {images.dtype} {tuple(images.shape)}")
        if not recipes:
            raise ValueError("pretraining needs at least one ViewRecipe")
        if len(images) < batch_size:
            raise ValueError(f"{len(images)} training images is fewer than batch_size={batch_size}; "
                             "with drop_last there would be no batch")
        self.images, self.labels = images, labels
        self.recipes = list(recipes)
        self.size_groups: dict[int, list[int]] = {}  # pipeline indexes by crop size: augmented together
        for i, r in enumerate(self.recipes):
            self.size_groups.setdefault(r.crop_size, []).append(i)
        self.mean, self.std = tuple(mean), tuple(std)
        self.batch_size = batch_size
        self.device = images.device
        self.sampler = ShardSampler(len(images), seed=seed)
        self.prefetch = prefetch
        self.skip_batches = 0

    @property
    def seed(self) -> int:
        """The run's seed: it orders every epoch and seeds its augmentations."""
        return self.sampler.seed

    @seed.setter
    def seed(self, value: int) -> None:
        self.sampler.seed = int(value)

    @property
    def epoch(self) -> int:
        """The epoch the next iteration reads."""
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next iteration reads."""
        self.sampler.set_epoch(epoch)

    @property
    def num_crops(self) -> int:
        """Crops per image over all pipelines."""
        return sum(r.num_crops for r in self.recipes)

    def place(self, device: torch.device | str, rank: int = 0, world_size: int = 1) -> DevicePretrainLoader:
        """Move the split to `device` and shard it for `rank` of `world_size` processes."""
        self.device = torch.device(device)
        self.images, self.labels = self.images.to(self.device), self.labels.to(self.device)
        epoch, seed = self.sampler.epoch, self.sampler.seed
        self.sampler = ShardSampler(len(self.images), world_size, rank, shuffle=True, seed=seed)
        self.sampler.set_epoch(epoch)
        return self

    def __len__(self) -> int:
        """Batches per epoch on this rank (a resumed epoch yields fewer)."""
        return len(self.sampler) // self.batch_size

    def batches_per_epoch(self) -> int:
        """Batches of a whole epoch on this rank."""
        return len(self)

    def draw_params(self, n: int, height: int, width: int, generator: torch.Generator) -> dict[int, ViewParams]:
        """The augmentation parameters of a batch of n images, per crop size (the generator's draws of one batch)."""
        return {
            size: ViewParams.cat([
                sample_view_params(self.recipes[i], n * self.recipes[i].num_crops, height, width, generator,
                                   self.device)
                for i in members
            ])
            for size, members in self.size_groups.items()
        }

    def views(self, images: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        """All crops of a uint8 batch, pipeline by pipeline; pipelines of one crop size are augmented together."""
        n, _, height, width = images.shape
        params = self.draw_params(n, height, width, generator)
        crops: dict[int, list[torch.Tensor]] = {}
        for size, members in self.size_groups.items():
            reps = torch.cat([images.repeat(self.recipes[i].num_crops, 1, 1, 1) for i in members])
            out = augment_views(reps, params[size], size, self.mean, self.std, [self.recipes[i] for i in members])
            chunks = iter(out.split(n))
            for i in members:
                crops[i] = [next(chunks) for _ in range(self.recipes[i].num_crops)]
        return [c for i in range(len(self.recipes)) for c in crops[i]]

    def batch(self, idx: torch.Tensor, generator: torch.Generator) -> list:
        """The training batch of the images `idx` (on the loader's device), its crops drawn from `generator`."""
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            crops = self.views(self.images[idx], generator)
        return [idx, crops, self.labels[idx]]

    def __iter__(self) -> Iterator[list]:
        """Batches of the current epoch past `skip_batches` (epoch and skip are read when the first batch is drawn;
        the skip applies once), made one ahead with `prefetch`."""
        batches = self.batches()
        return prefetched(batches, self.device) if self.prefetch else batches

    def batches(self) -> Iterator[list]:
        """The batches of the current epoch past `skip_batches`, each made (`batch`) when it is asked for."""
        start, self.skip_batches = self.skip_batches, 0
        indices = self.sampler.indices().to(self.device)
        generator = torch.Generator(device=self.device).manual_seed(
            seed_for(self.seed, self.sampler.rank, self.sampler.epoch))
        _, _, height, width = self.images.shape
        for _ in range(start):  # the skipped batches' draws: the generator continues where the epoch was
            self.draw_params(self.batch_size, height, width, generator)
        for b in range(start, len(self)):
            yield self.batch(indices[b * self.batch_size : (b + 1) * self.batch_size], generator)


class DeviceEvalLoader:
    """Unshuffled (x, y) batches of a device-held validation split, normalised; sharded per rank."""

    batch_sampler = None

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                 batch_size: int) -> None:
        """Keep the uint8 split (already at the evaluation size)."""
        self.images, self.labels = images, labels
        self.mean, self.std, self.batch_size = tuple(mean), tuple(std), batch_size
        self.device = images.device
        self.sampler = ShardSampler(len(images), shuffle=False)

    def place(self, device: torch.device | str, rank: int = 0, world_size: int = 1) -> DeviceEvalLoader:
        """Move the split to `device` and shard it for `rank` of `world_size` processes."""
        self.device = torch.device(device)
        self.images, self.labels = self.images.to(self.device), self.labels.to(self.device)
        self.sampler = ShardSampler(len(self.images), world_size, rank, shuffle=False)
        return self

    def __len__(self) -> int:
        """Batches on this rank (the last one may be partial)."""
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised float images and labels, batch by batch."""
        indices = self.sampler.indices().to(self.device)
        for start in range(0, len(indices), self.batch_size):
            idx = indices[start : start + self.batch_size]
            x = self.images[idx].float().div_(255.0)
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            yield _normalize(x, self.mean, self.std), self.labels[idx]


def build_device_loaders(
    dataset: str, train_path: str | os.PathLike | None, val_path: str | os.PathLike | None,
    recipes: Sequence[ViewRecipe], batch_size: int, seed: int = 0, download: bool = False,
    train_subset: int | None = None, val_subset: int | None = None, with_val: bool = True, prefetch: bool = True,
) -> tuple[DevicePretrainLoader, DeviceEvalLoader | None]:
    """The device-resident training loader (and validation loader), on CPU until `place` is called."""
    info = DATASETS[dataset]
    images, labels = load_split(dataset, train_path, True, download, train_subset, seed)
    train = DevicePretrainLoader(images, labels, recipes, info.mean, info.std, batch_size, seed, prefetch=prefetch)
    val = None
    if with_val:
        images, labels = load_split(dataset, val_path, False, download, val_subset, seed)
        val = DeviceEvalLoader(images, labels, info.mean, info.std, batch_size)
    return train, val
