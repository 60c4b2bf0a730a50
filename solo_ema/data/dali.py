"""NVIDIA DALI pretraining loader: the ViewRecipe augmentations as DALI pipelines, on GPU or CPU.

One source of truth: a pipeline is built from the same `ViewRecipe` list as the torchvision transform,
through `dali_view_params`, whose dict has the layout of `augment.torchvision_view_params`; the
pipeline reads its numbers only from that dict (`dali_op_args` turns it into DALI's units: hue in
degrees, mean and std of 0-255 pixels).

Per crop, in the order of `build_view_transform`:
random resized crop (cubic) -> colour twist (prob) -> grayscale (prob) -> Gaussian blur (prob)
-> solarization (prob) -> crop_mirror_normalize (NCHW float, mirror by coin flip).
A random choice is a coin flip and an arithmetic blend ``aug * c + x * (1 - c)`` on uint8 images.
Known differences from torchvision: DALI's colour twist applies brightness, contrast, saturation and hue
as one colour transform in a fixed order (torchvision: one by one, in a random order), and its resampling
and colour conversions round differently; the parameter ranges are identical.

Data: the file list and labels come from the same dataset object as the torchvision path
(`build_dataset`, so custom folders, ImageNet and the ImageNet-100 subset of an ImageNet folder read the
same files with the same labels). The reader is given the sample *index* as its label, so batches carry
the real dataset indexes (the position in that file list, as `IndexedDataset` gives), and the targets
are looked up from the index (solo-learn 1.0.5 returned dummy indexes unless
``--encode_indexes_into_labels``; here the indexes are always real, so that flag is not needed). The
reader shuffles the whole list every epoch (same seed on every rank) and reads the shard of the global
rank; the last incomplete batch is dropped, so every rank has the same number of batches.
Validation has no DALI pipeline: it uses the torchvision loader (resize 256, centre crop 224).

Decoding: ``device="mixed"`` (nvJPEG) with a GPU, ``"cpu"`` without one (the pipeline then runs with
``device_id=None``). A file DALI cannot decode stops training with `UnreadableImageError` naming it
(nothing is skipped: a DALI pipeline cannot continue after a decoding error). The file is taken from
DALI's message when it names one (a JPEG truncated in its scan data), otherwise found by checking the
image headers of the file list with PIL (garbage files, JPEGs cut in their header); this pass runs only
after a failure.

Batches are ``[indexes (int64), [crops (float32, N x 3 x H x W), pipeline 0 first], targets (int64)]``,
on the pipeline's device.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from solo_ema.data.augment import blur_kernel_size, resolved_view_params
from solo_ema.data.catalog import DALI_DATASETS, DATASETS
from solo_ema.data.datasets import UnreadableImageError, build_dataset
from solo_ema.data.loaders import random_subset
from solo_ema.data.views import ViewRecipe

__all__ = [
    "DALI_DEVICES",
    "DALI_INSTALL_HINT",
    "DaliPretrainLoader",
    "DaliUnavailableError",
    "build_dali_pretrain_loader",
    "dali_available",
    "dali_op_args",
    "dali_view_params",
    "require_dali",
    "resolve_dali_device",
]

DALI_DEVICES = ("auto", "gpu", "cpu")
DALI_INSTALL_HINT = (
    "install it with pip install -e '.[dali]' or pip install nvidia-dali-cuda130 "
    "(nvidia-dali-cuda120 on CUDA 12 systems)"
)
READER_NAME = "Reader"
# Host/device buffer paddings of the nvJPEG decoder from NVIDIA's ImageNet examples: fewer reallocations.
_DEVICE_MEMORY_PADDING = 211025920
_HOST_MEMORY_PADDING = 140544512
# torchvision's RandomResizedCrop default aspect-ratio range, used by both paths.
_RATIO = (3.0 / 4.0, 4.0 / 3.0)


class DaliUnavailableError(ImportError):
    """NVIDIA DALI is not installed (or cannot be imported)."""


def dali_available() -> bool:
    """True when nvidia.dali and its PyTorch plug-in can be imported."""
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except Exception:
        return False
    return True


def require_dali() -> None:
    """Raise DaliUnavailableError (one line, with the install command) when DALI cannot be imported."""
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except Exception as exc:
        raise DaliUnavailableError(f"NVIDIA DALI is not available ({exc}); {DALI_INSTALL_HINT}") from exc


def resolve_dali_device(device: str) -> str:
    """'gpu' or 'cpu' for a --dali_device value ('auto': gpu when CUDA is available)."""
    if device not in DALI_DEVICES:
        raise ValueError(f"unknown DALI device '{device}'; valid: {', '.join(DALI_DEVICES)}")
    if device == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if device == "gpu" and not torch.cuda.is_available():
        raise ValueError("DALI device 'gpu' needs CUDA, and no CUDA device is available (use cpu or auto)")
    return device


# ------------------------------------------------------------------------------------------ parameters


def dali_view_params(recipe: ViewRecipe, mean: Sequence[float], std: Sequence[float]) -> dict[str, Any]:
    """The parameters the DALI pipeline applies for one recipe, in `torchvision_view_params`'s layout."""
    jitter = None
    if recipe.color_jitter_prob > 0:
        def factor(v: float) -> tuple[float, float]:
            return (max(1.0 - float(v), 0.0), 1.0 + float(v))

        jitter = (
            recipe.color_jitter_prob,
            factor(recipe.brightness),
            factor(recipe.contrast),
            factor(recipe.saturation),
            (-float(recipe.hue), float(recipe.hue)),
        )
    return resolved_view_params(
        crop_size=recipe.crop_size,
        num_crops=recipe.num_crops,
        scale=(recipe.min_scale, recipe.max_scale),
        ratio=_RATIO,
        interpolation="bicubic",
        mean=mean,
        std=std,
        color_jitter=jitter,
        grayscale_prob=recipe.gray_scale_prob,
        blur=(recipe.gaussian_prob, blur_kernel_size(recipe.crop_size), (0.1, 2.0)),
        solarization=(recipe.solarization_prob, 128.0),
        flip_prob=recipe.horizontal_flip_prob,
    )


def dali_op_args(params: dict[str, Any]) -> dict[str, Any]:
    """The DALI operator arguments of one resolved view (hue in degrees, mean/std of 0-255 pixels)."""
    rrc = params["random_resized_crop"]
    if rrc["interpolation"] != "bicubic":
        raise ValueError(f"the DALI pipeline resizes with cubic interpolation, got {rrc['interpolation']}")
    jitter = params["color_jitter"]
    norm = params["normalize"]
    return {
        "crop": {
            "size": (params["crop_size"],) * 2, "random_area": rrc["scale"], "random_aspect_ratio": rrc["ratio"],
        },
        "color_twist": None if jitter is None else {
            "prob": jitter["prob"],
            "brightness": jitter["brightness"],
            "contrast": jitter["contrast"],
            "saturation": jitter["saturation"],
            "hue": (jitter["hue"][0] * 360.0, jitter["hue"][1] * 360.0),
        },
        "grayscale": params["grayscale"],
        "gaussian_blur": None if params["gaussian_blur"] is None else {
            "prob": params["gaussian_blur"]["prob"],
            "window_size": params["gaussian_blur"]["kernel_size"],
            "sigma": params["gaussian_blur"]["sigma"],
        },
        "solarization": params["solarization"],
        "mirror_prob": 0.0 if params["horizontal_flip"] is None else params["horizontal_flip"]["prob"],
        "mean": [m * 255.0 for m in norm["mean"]],
        "std": [s * 255.0 for s in norm["std"]],
    }


# ------------------------------------------------------------------------------------------ pipeline


def _augment_one_crop(images: Any, args: dict[str, Any], device: str) -> Any:
    """The DALI graph of one crop of `images` (uint8 HWC) -> normalised float CHW."""
    from nvidia.dali import fn, types

    def coin(p: float) -> Any:
        c = fn.random.coin_flip(probability=p, dtype=types.BOOL)
        return c.gpu() if device == "gpu" else c

    def choose(p: float, augmented: Any, original: Any) -> Any:
        if p >= 1.0:
            return augmented
        c = coin(p)
        return c * augmented + (c ^ True) * original  # bool x uint8 stays uint8

    def uniform(low: float, high: float) -> Any:
        return float(low) if low == high else fn.random.uniform(range=(float(low), float(high)))

    crop = args["crop"]
    x = fn.random_resized_crop(
        images, size=list(crop["size"]), random_area=list(crop["random_area"]),
        random_aspect_ratio=list(crop["random_aspect_ratio"]), interp_type=types.INTERP_CUBIC,
    )
    twist = args["color_twist"]
    if twist is not None:
        twisted = fn.color_twist(
            x, brightness=uniform(*twist["brightness"]), contrast=uniform(*twist["contrast"]),
            saturation=uniform(*twist["saturation"]), hue=uniform(*twist["hue"]),
        )
        x = choose(twist["prob"], twisted, x)
    if args["grayscale"] is not None:
        gray = fn.color_space_conversion(x, image_type=types.RGB, output_type=types.GRAY)
        x = choose(args["grayscale"]["prob"], fn.cat(gray, gray, gray, axis=2), x)
    blur = args["gaussian_blur"]
    if blur is not None:
        blurred = fn.gaussian_blur(x, window_size=blur["window_size"], sigma=uniform(*blur["sigma"]))
        x = choose(blur["prob"], blurred, x)
    sol = args["solarization"]
    if sol is not None:
        above = x >= sol["threshold"]
        inverted = types.Constant(255, dtype=types.UINT8) - x
        x = choose(sol["prob"], above * inverted + (above ^ True) * x, x)
    p = args["mirror_prob"]
    mirror = fn.random.coin_flip(probability=p) if p > 0 else 0
    return fn.crop_mirror_normalize(
        x, dtype=types.FLOAT, output_layout="CHW", mean=args["mean"], std=args["std"], mirror=mirror,
    )


def build_dali_pretrain_pipeline(
    root: str | os.PathLike,
    files: Sequence[str],
    view_params: Sequence[dict[str, Any]],
    batch_size: int,
    num_threads: int,
    device: str,
    device_id: int | None = None,
    shard_id: int = 0,
    num_shards: int = 1,
    seed: int = 0,
    shuffle_seed: int = 0,
) -> Any:
    """A DALI Pipeline: read `files` (relative to `root`), decode, all crops of `view_params`, sample indexes."""
    from nvidia.dali import fn, types
    from nvidia.dali.pipeline import Pipeline

    if device not in ("gpu", "cpu"):
        raise ValueError(f"device must be 'gpu' or 'cpu', got {device!r}")
    pipe = Pipeline(
        batch_size=batch_size, num_threads=max(1, int(num_threads)),
        device_id=device_id if device == "gpu" else None, seed=seed,
    )
    with pipe:
        encoded, indexes = fn.readers.file(
            name=READER_NAME, file_root=str(root), files=list(files), labels=list(range(len(files))),
            shard_id=shard_id, num_shards=num_shards, shuffle_after_epoch=True,
            shuffle_after_epoch_seed=shuffle_seed,
        )
        if device == "gpu":
            images = fn.decoders.image(
                encoded, device="mixed", output_type=types.RGB,
                device_memory_padding=_DEVICE_MEMORY_PADDING, host_memory_padding=_HOST_MEMORY_PADDING,
            )
        else:
            images = fn.decoders.image(encoded, device="cpu", output_type=types.RGB)
        crops = []
        for params in view_params:
            args = dali_op_args(params)
            crops += [_augment_one_crop(images, args, device) for _ in range(params["num_crops"])]
        pipe.set_outputs(*crops, indexes)
    return pipe


def _dist_info() -> tuple[int, int, int]:
    """(global rank, world size, local rank), from torch.distributed when it runs, else the environment."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return rank, world, int(os.environ.get("LOCAL_RANK", 0))


class DaliPretrainLoader:
    """Iterable of pretraining batches ``[indexes, [crops...], targets]`` from a DALI pipeline.

    The pipeline is built on first use (``len`` or ``iter``), so that under DDP it reads the shard of
    the rank that uses it. One pass of ``iter`` is one epoch (the last incomplete batch is dropped).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        files: Sequence[str],
        targets: Sequence[int],
        view_params: Sequence[dict[str, Any]],
        batch_size: int,
        num_threads: int = 2,
        device: str = "auto",
        seed: int = 0,
    ) -> None:
        """Keep the file list (relative to `root`), the target of each file and the resolved views."""
        if len(files) != len(targets):
            raise ValueError(f"{len(files)} files but {len(targets)} targets")
        if not view_params:
            raise ValueError("pretraining needs at least one view")
        self.root = str(root)
        self.files = list(files)
        self.targets = torch.as_tensor(list(targets), dtype=torch.int64)
        self.view_params = [dict(p) for p in view_params]
        self.batch_size = int(batch_size)
        self.num_threads = max(1, int(num_threads))
        self.device = resolve_dali_device(device)
        self.seed = int(seed)
        self.num_crops = sum(p["num_crops"] for p in self.view_params)
        self._iterator: Any = None
        self._pipeline: Any = None

    def _build(self) -> Any:
        """Build the pipeline and its DALIGenericIterator for this process's rank (once)."""
        if self._iterator is not None:
            return self._iterator
        require_dali()
        from nvidia.dali.plugin.base_iterator import LastBatchPolicy
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        rank, world, local_rank = _dist_info()
        if len(self.files) // world < self.batch_size:
            raise ValueError(
                f"{len(self.files)} training images over {world} shard(s) is fewer than batch_size="
                f"{self.batch_size} per shard; with the last batch dropped there would be no batch"
            )
        self._pipeline = build_dali_pretrain_pipeline(
            self.root, self.files, self.view_params, self.batch_size, self.num_threads, self.device,
            device_id=local_rank if self.device == "gpu" else None, shard_id=rank, num_shards=world,
            seed=self.seed + rank, shuffle_seed=self.seed,
        )
        names = [f"crop{i}" for i in range(self.num_crops)]
        try:
            self._iterator = DALIGenericIterator(
                [self._pipeline], output_map=[*names, "index"], reader_name=READER_NAME,
                last_batch_policy=LastBatchPolicy.DROP, auto_reset=True,
            )
        except RuntimeError as exc:  # the first batch is prepared here
            raise self._decode_error(exc) from exc
        return self._iterator

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return len(self._build())

    def __iter__(self) -> Iterator[list[Any]]:
        """Yield the batches of one epoch."""
        iterator = self._build()
        names = [f"crop{i}" for i in range(self.num_crops)]
        while True:
            try:
                out = next(iterator)
            except StopIteration:
                return
            except RuntimeError as exc:
                raise self._decode_error(exc) from exc
            data = out[0]
            # DALI 2.4's CPU iterator hands out fresh tensors; on GPU keep solo-learn's copy out of
            # DALI's buffers, so no batch aliases a later one.
            crops = [data[n] if data[n].device.type == "cpu" else data[n].clone() for n in names]
            indexes = data["index"].reshape(-1).to(device="cpu", dtype=torch.int64)
            targets = self.targets[indexes]
            device = crops[0].device
            yield [indexes.to(device), crops, targets.to(device)]

    def _decode_error(self, exc: RuntimeError) -> Exception:
        """Turn a DALI pipeline error into UnreadableImageError naming the file, when a file is to blame."""
        message = str(exc)
        if "decod" not in message.lower() and "nvImageCodec" not in message:
            return exc
        known = set(self.files)
        named = [tok for tok in re.findall(r"[^\s'\"]+", message) if tok in known]
        if not named:
            print(f"DALI failed to decode an image; checking the headers of {len(self.files)} files to find it",
                  file=sys.stderr, flush=True)
            named = _unreadable_headers(self.root, self.files, limit=5)
        if not named:
            return exc
        cause = message.split("encountered:", 1)[-1].strip().splitlines()
        first_line = cause[0].strip() if cause else ""
        paths = [str(Path(self.root) / n) for n in named]
        more = f" (and {', '.join(paths[1:])})" if len(paths) > 1 else ""
        return UnreadableImageError(
            f"DALI cannot decode image {paths[0]}{more}: corrupt, truncated or not an image"
            + (f" [{first_line}]" if first_line else ""),
            paths[0],
        )


def _unreadable_headers(root: str, files: Sequence[str], limit: int) -> list[str]:
    """Files (of `files`, relative to `root`) whose image header PIL cannot parse; at most `limit`."""
    from PIL import Image

    bad = []
    for name in files:
        try:
            with Image.open(os.path.join(root, name)) as img:
                img.verify()
        except Exception:
            bad.append(name)
            if len(bad) >= limit:
                break
    return bad


def build_dali_pretrain_loader(
    dataset: str,
    train_path: str | os.PathLike | None,
    recipes: Sequence[ViewRecipe],
    batch_size: int,
    num_workers: int,
    device: str = "auto",
    subset: int | None = None,
    seed: int = 0,
) -> DaliPretrainLoader:
    """The DALI counterpart of `build_pretrain_loader` for image-folder datasets (same files, labels, recipes)."""
    if dataset not in DALI_DATASETS:
        raise ValueError(
            f"DALI reads image folders ({', '.join(sorted(DALI_DATASETS))}); dataset '{dataset}' is not one"
        )
    if not recipes:
        raise ValueError("pretraining needs at least one ViewRecipe")
    require_dali()
    info = DATASETS[dataset]
    data = random_subset(build_dataset(dataset, train_path, True, transform=None), subset, seed)
    if isinstance(data, Subset):
        samples = [data.dataset.samples[i] for i in data.indices]  # type: ignore[attr-defined]
        root = data.dataset.root  # type: ignore[attr-defined]
    else:
        samples, root = data.samples, data.root  # type: ignore[attr-defined]
    files = [os.path.relpath(path, root) for path, _ in samples]
    view_params = [dali_view_params(r, info.mean, info.std) for r in recipes]
    if len(files) < batch_size:
        raise ValueError(
            f"{dataset}: {len(files)} training images is fewer than batch_size={batch_size}; "
            "with the last batch dropped there would be no batch"
        )
    return DaliPretrainLoader(
        root, files, [t for _, t in samples], view_params, batch_size, num_threads=max(1, num_workers),
        device=device, seed=seed,
    )

