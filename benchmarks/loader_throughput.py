"""Images per second of the torchvision and the DALI pretraining loaders on the same folder, side by side.

Both loaders get the same folder, method recipe (from `solo_ema.data.imagenet_recipes`), batch size and
number of workers (DataLoader worker processes for torchvision, pipeline threads for DALI). Each loader
first runs `--warmup` batches (worker start, first decode), then `--batches` timed batches; with
`--rounds` > 1 the loaders take turns, so a change of machine load hits both. An image is one source
image with all of its crops; epochs are chained when a run needs more batches than one epoch holds.

    python benchmarks/loader_throughput.py /data/imagenet/train --recipe byol --batch_size 32 \\
        --batches 20 --workers 2
    python benchmarks/loader_throughput.py /tmp/fake --generate 500 --recipe dino   # synthetic JPEGs

Needs the `dali` extra for the DALI row (without it only torchvision is measured).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from solo_ema.data import IMAGENET_METHODS, build_pretrain_loader, imagenet_recipes
from solo_ema.data.catalog import DALI_DATASETS
from solo_ema.data.dali import build_dali_pretrain_loader, dali_available, resolve_dali_device


def generate_folder(root: Path, count: int, classes: int = 10, min_side: int = 300, max_side: int = 500,
                    seed: int = 0) -> None:
    """Write `count` JPEGs of ImageNet-like sizes (smooth colour fields plus noise) into `classes` folders."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = root / f"class_{i % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        width, height = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
        coarse = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).resize(
            (width, height), Image.BICUBIC
        )
        pixels = np.asarray(coarse, dtype=np.int16) + rng.normal(0, 12, (height, width, 3)).astype(np.int16)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"img_{i:05d}.jpg", quality=90)


def _forever(loader: Iterable) -> Iterator:
    """Batches of `loader`, epoch after epoch."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise RuntimeError("the loader yields no batch")


def measure(stream: Iterator, batches: int) -> float:
    """Seconds taken to pull `batches` batches (touching every crop, as a training step would)."""
    start = time.perf_counter()
    for _ in range(batches):
        _, crops, targets = next(stream)
        for c in crops:
            if c.dtype != torch.float32:
                raise RuntimeError(f"unexpected crop dtype {c.dtype}")
        targets.sum().item()
    return time.perf_counter() - start


def _dali_version() -> str:
    """The installed DALI version."""
    import nvidia.dali

    return nvidia.dali.__version__


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one row per loader."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder", help="image folder with one sub-folder per class (an ImageNet train/ works)")
    p.add_argument("--dataset", default="custom", choices=DALI_DATASETS)
    p.add_argument("--recipe", default="byol", choices=IMAGENET_METHODS, help="method augmentation recipe")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--batches", type=int, default=20, help="timed batches per loader and round")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches before timing")
    p.add_argument("--rounds", type=int, default=1, help="alternate the loaders this many times")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers / DALI threads")
    p.add_argument("--crop_size", type=int, default=224)
    p.add_argument("--small_crop_size", type=int, default=96, help="DINO local crops")
    p.add_argument("--dali_device", default="auto", choices=("auto", "gpu", "cpu"))
    p.add_argument("--loaders", default="torchvision,dali", help="comma list of torchvision, dali")
    p.add_argument("--generate", type=int, default=0, metavar="N",
                   help="first write N synthetic JPEGs (300-500 px) into the folder if it holds none")
    args = p.parse_args(argv)

    folder = Path(args.folder)
    if args.generate and not any(folder.glob("*/*.jpg")):
        print(f"writing {args.generate} JPEGs into {folder} ...", flush=True)
        generate_folder(folder, args.generate)
    recipes = imagenet_recipes(args.recipe, crop_size=args.crop_size, small_crop_size=args.small_crop_size)
    crops = sum(r.num_crops for r in recipes)
    names = [n.strip() for n in args.loaders.split(",") if n.strip()]
    if "dali" in names and not dali_available():
        print("NVIDIA DALI is not installed (pip install -e '.[dali]'): measuring torchvision only", file=sys.stderr)
        names = [n for n in names if n != "dali"]

    def make(name: str) -> Iterable:
        if name == "torchvision":
            return build_pretrain_loader(args.dataset, folder, recipes, args.batch_size, args.workers)
        if name == "dali":
            return build_dali_pretrain_loader(
                args.dataset, folder, recipes, args.batch_size, args.workers, device=dali_device
            )
        p.error(f"unknown loader '{name}' (torchvision, dali)")

    dali_device = resolve_dali_device(args.dali_device) if "dali" in names else "-"
    devices = {"torchvision": f"cpu x{args.workers} proc", "dali": f"{dali_device} x{args.workers} thr"}
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for name in names:  # one loader at a time: no prefetching worker competes with the timed one
            stream = _forever(make(name))
            measure(stream, args.warmup)
            times[name].append(measure(stream, args.batches))
            stream.close()
            del stream
            gc.collect()

    print(f"# {platform.node()} | {os.cpu_count()} CPUs | torch threads {torch.get_num_threads()} | "
          f"torch {torch.__version__} | cuda {torch.cuda.is_available()}"
          + (f" | DALI {_dali_version()}" if "dali" in names else ""))
    print(f"# folder {folder} | recipe {args.recipe}: {crops} crops "
          f"({', '.join(f'{r.num_crops}x{r.crop_size}px' for r in recipes)}) | batch {args.batch_size} | "
          f"{args.batches} batches x {args.rounds} round(s) after {args.warmup} warm-up")
    print(f"{'loader':<12} {'device':<16} {'images/s':>9} {'crops/s':>9} {'ms/batch':>9}")
    for name in names:
        per_round = [args.batches * args.batch_size / t for t in times[name]]
        ips = statistics.median(per_round)
        ms = 1000 * statistics.median(times[name]) / args.batches
        print(f"{name:<12} {devices[name]:<16} {ips:>9.1f} {ips * crops:>9.1f} {ms:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
