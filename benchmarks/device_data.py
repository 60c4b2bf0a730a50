"""Device-resident data vs the torchvision worker path: images/s of each loader alone, and the BYOL step with each.

Both loaders serve the same split (Fashion-MNIST by default, or CIFAR-10/100 with --dataset and --data_dir)
with solo-learn's CIFAR BYOL recipe (two 32x32 crops, solarization 0 / 0.2). Part 1 pulls batches from
each loader alone; part 2 runs the BYOL ResNet-18 (CIFAR stem) training step of `step_cost.py`'s
`Runner` on batches from each loader and splits each step into the wait for the batch and the step itself.
In both parts the loaders take turns round by round, so a change of machine load hits both. Ratios are the result;
on GPU the clocks are read after a device synchronisation, and an epoch's time is estimated from the
median step.

    python benchmarks/device_data.py                              # CPU here, GPU when there is one
    python benchmarks/device_data.py --device cuda --batch_size 256 --workers 8 --steps 30 --rounds 3
    python benchmarks/device_data.py --tiny                       # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch  # noqa: E402

from solo_ema.data import ViewRecipe, build_pretrain_loader  # noqa: E402
from solo_ema.data.catalog import DATASETS, DEVICE_DATASETS  # noqa: E402
from solo_ema.data.device import build_device_loaders  # noqa: E402

# solo-learn's CIFAR BYOL recipe (bash_files/pretrain/cifar/byol.sh)
RECIPES = [ViewRecipe(crop_size=32), ViewRecipe(crop_size=32, solarization_prob=0.2)]
LOADERS = ("workers", "device")
TINY = {"batch_size": 4, "subset": 64, "batches": 2, "steps": 1, "warmup": 1, "rounds": 1, "workers": 0,
        "proj_hidden_dim": 64, "pred_hidden_dim": 64}


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's flags."""
    p = argparse.ArgumentParser(prog="device_data.py", description=__doc__.split("\n")[0])
    a = p.add_argument
    a("--dataset", default="fashion_mnist", choices=[n for n in DEVICE_DATASETS if DATASETS[n].default_dir])
    a("--data_dir", default=None, help="default: the dataset's folder (" + ", ".join(
        f"{n} {d.default_dir}" for n, d in DATASETS.items() if d.default_dir) + ")")
    a("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    a("--batch_size", type=int, default=None, help="default 64 on CPU, 256 on GPU")
    a("--workers", type=int, default=None, help="DataLoader workers of the torchvision path (default 2; 8 on GPU)")
    a("--subset", type=int, default=None, help="images of the split to use (default: 4096 on CPU, all on GPU)")
    a("--batches", type=int, default=None, help="batches timed per loader in part 1 (default 20)")
    a("--steps", type=int, default=None, help="timed steps per loader and round in part 2 (default 3; 30 on GPU)")
    a("--warmup", type=int, default=None, help="untimed steps per loader before part 2 (default 1; 5 on GPU)")
    a("--rounds", type=int, default=None, help="rounds of part 2, the loaders alternating (default 2)")
    a("--threads", type=int, default=None, help="torch.set_num_threads of this process")
    a("--proj_hidden_dim", type=int, default=None, help="BYOL head size (default: the recipe's 4096)")
    a("--pred_hidden_dim", type=int, default=None)
    a("--no_step", action="store_true", help="only part 1 (loaders alone)")
    a("--seed", type=int, default=5)
    a("--json", default=None, metavar="PATH", help="also write the figures as JSON")
    a("--tiny", action="store_true", help="smoke mode: batch 4, 64 images, 1 step, no worker processes")
    return p


def resolve(argv: list[str] | None) -> argparse.Namespace:
    """Flags with the device-dependent defaults filled in."""
    args = build_parser().parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = args.device == "cuda"
    defaults: dict[str, Any] = {"batch_size": 256 if gpu else 64, "workers": 8 if gpu else 2,
                                "subset": None if gpu else 4096, "batches": 20, "steps": 30 if gpu else 3,
                                "warmup": 5 if gpu else 1, "rounds": 2}
    if args.tiny:
        defaults.update(TINY)
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.data_dir is None:
        args.data_dir = DATASETS[args.dataset].default_dir
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def sync(device: torch.device) -> None:
    """Wait for the device's queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forever(loader: Iterable) -> Iterator:
    """Batches of `loader`, epoch after epoch (the device loader moving to the next epoch's permutation)."""
    epoch = 0
    while True:
        if hasattr(loader, "place"):
            loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def to_device(batch: list, device: torch.device) -> list:
    """A [indexes, crops, targets] batch on `device` (no copy when it is there already)."""
    idx, crops, y = batch
    nb = device.type == "cuda"
    return [idx.to(device, non_blocking=nb), [c.to(device, non_blocking=nb) for c in crops],
            y.to(device, non_blocking=nb)]


def make_loaders(args: argparse.Namespace, device: torch.device) -> dict[str, Iterable]:
    """The torchvision worker loader and the device loader over the same images."""
    workers = build_pretrain_loader(args.dataset, args.data_dir, RECIPES, args.batch_size, args.workers,
                                    subset=args.subset, seed=args.seed)
    dev, _ = build_device_loaders(args.dataset, args.data_dir, None, RECIPES, args.batch_size, seed=args.seed,
                                  train_subset=args.subset, with_val=False)
    return {"workers": workers, "device": dev.place(device)}


def loader_alone(stream: Iterator, batches: int, device: torch.device) -> float:
    """Seconds to pull `batches` batches onto the device."""
    sync(device)
    start = time.perf_counter()
    for _ in range(batches):
        to_device(next(stream), device)
    sync(device)
    return time.perf_counter() - start


def step_times(runner: Any, stream: Iterator, steps: int, device: torch.device) -> list[tuple[float, float]]:
    """(wait for the batch, training step) seconds of each of `steps` steps."""
    out = []
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        batch = to_device(next(stream), device)
        sync(device)
        t1 = time.perf_counter()
        runner.step(batch)
        sync(device)
        out.append((t1 - t0, time.perf_counter() - t1))
    return out


def make_runner(args: argparse.Namespace) -> Any:
    """The BYOL ResNet-18 (CIFAR stem) full training step of step_cost.py (placement `all`)."""
    import step_cost

    argv = ["--method", "byol", "--backbone", "resnet18", "--dataset", args.dataset, "--image_size", "32",
            "--batch_size", str(args.batch_size), "--device", args.device, "--seed", str(args.seed),
            "--placements", "all"]
    for name in ("proj_hidden_dim", "pred_hidden_dim"):
        if getattr(args, name):
            argv += [f"--{name}", str(getattr(args, name))]
    step_cost.quiet_lightning()
    return step_cost.Runner(step_cost.resolve_args(argv), "all")


def main(argv: list[str] | None = None) -> int:
    """Run both parts and print the figures side by side."""
    args = resolve(argv)
    device = torch.device(args.device)
    loaders = make_loaders(args, device)
    streams = {name: forever(loader) for name, loader in loaders.items()}
    n_images = len(loaders["device"].images)
    print(f"# {platform.node()} | {os.cpu_count()} CPUs | torch threads {torch.get_num_threads()} | "
          f"torch {torch.__version__} | device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"# {args.dataset}: {n_images} images | CIFAR BYOL recipe, 2 crops of 32x32 | batch {args.batch_size} | "
          f"torchvision path: {args.workers} worker processes")
    result: dict[str, Any] = {"args": vars(args), "loader_alone": {}, "step": {}}

    for name in LOADERS:  # part 1: each loader alone, after one warm-up batch, the loaders taking turns
        loader_alone(streams[name], 1, device)
    alone: dict[str, list[float]] = {name: [] for name in LOADERS}
    for r in range(args.rounds):
        for name in LOADERS if r % 2 == 0 else LOADERS[::-1]:
            alone[name].append(args.batches * args.batch_size / loader_alone(streams[name], args.batches, device))
    for name in LOADERS:
        result["loader_alone"][name] = statistics.median(alone[name])
    print(f"\n{'loader alone':<14} {'images/s':>10}   ({args.rounds} x {args.batches} batches each, median)")
    for name in LOADERS:
        print(f"{name:<14} {result['loader_alone'][name]:>10.1f}")
    ratio = result["loader_alone"]["device"] / result["loader_alone"]["workers"]
    print(f"{'device/workers':<14} {ratio:>10.2f}x")
    result["loader_alone"]["ratio_device_over_workers"] = ratio

    if not args.no_step:  # part 2: the BYOL step on batches of each loader, interleaved
        runner = make_runner(args)
        for name in LOADERS:
            step_times(runner, streams[name], args.warmup, device)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in LOADERS}
        for r in range(args.rounds):
            order = LOADERS if r % 2 == 0 else LOADERS[::-1]
            for name in order:
                times[name] += step_times(runner, streams[name], args.steps, device)
        steps_per_epoch = n_images // args.batch_size
        print(f"\n{'BYOL step with':<14} {'wait ms':>9} {'step ms':>9} {'total ms':>9} {'loader %':>9} "
              f"{'epoch s':>9}   (ResNet-18 CIFAR stem, {args.rounds} x {args.steps} steps each, medians)")
        for name in LOADERS:
            wait = statistics.median(w for w, _ in times[name])
            step = statistics.median(s for _, s in times[name])
            total = statistics.median(w + s for w, s in times[name])
            result["step"][name] = {"wait_s": wait, "step_s": step, "total_s": total, "loader_share": wait / total,
                                    "epoch_s_estimate": total * steps_per_epoch}
            print(f"{name:<14} {1000 * wait:>9.1f} {1000 * step:>9.1f} {1000 * total:>9.1f} "
                  f"{100 * wait / total:>8.1f}% {total * steps_per_epoch:>9.1f}")
        ratio = result["step"]["device"]["total_s"] / result["step"]["workers"]["total_s"]
        result["step"]["ratio_total_device_over_workers"] = ratio
        print(f"step time device/workers: {ratio:.3f} (epoch of {steps_per_epoch} steps)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
