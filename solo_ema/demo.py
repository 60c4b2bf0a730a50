"""The main job: BYOL on Fashion-MNIST with the classic teacher (`all`) and with projector-only EMA.

Both runs start from the same seed (same initial weights, same batches) and train for the same number
of steps; the table at the end puts their cost and quality side by side, next to an untrained encoder.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from .data.catalog import DATASETS
from .errors import UsageError, UsageParser, usage_exit
from .pretrain import build_cfg, check_data

if TYPE_CHECKING:
    import torch

PROG = "solo-ema-demo"
DATASET = "fashion_mnist"
PLACEMENTS = ("all", "projector")


def demo_argv(placement: str, args: argparse.Namespace) -> list[str]:
    """solo-ema-pretrain flags of one demo run: solo-learn's CIFAR BYOL recipe, shortened."""
    return [
        "--method", "byol", "--dataset", DATASET, "--data_dir", args.data_dir,
        "--ema_parts", placement, "--name", f"byol-{placement}", "--log_dir", args.log_dir,
        "--max_steps", str(args.steps), "--max_epochs", "1000", "--batch_size", str(args.batch_size),
        "--num_workers", str(args.num_workers), "--seed", str(args.seed),
        "--optimizer", "lars", "--eta_lars", "0.02", "--grad_clip_lars", "--exclude_bias_n_norm",
        "--lr", "1.0", "--classifier_lr", "0.1", "--weight_decay", "1e-5", "--no_lr_scaling",
        "--warmup_steps", str(max(1, args.steps // 10)),
        "--num_crops_per_aug", "1", "1", "--brightness", "0.4", "--contrast", "0.4", "--saturation", "0.2",
        "--hue", "0.1", "--gaussian_prob", "0.0", "0.0", "--solarization_prob", "0.0", "0.2",
        "--proj_hidden_dim", "4096", "--proj_output_dim", "256", "--pred_hidden_dim", "4096",
        "--base_tau_momentum", "0.99", "--final_tau_momentum", "1.0", "--limit_val_batches", "0",
    ]


def extract(model: torch.nn.Module, loader: torch.utils.data.DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone features (eval mode) and labels of every image of a loader."""
    import torch

    model.eval()
    feats, labels = [], []
    with torch.no_grad():
        for x, y in loader:
            feats.append(model.backbone(x))
            labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def final_loss(run_dir: Path, last: int = 5) -> float:
    """Mean BYOL loss of the last steps, read back from the run's metrics.csv."""
    with open(run_dir / "metrics.csv") as f:
        values = [float(r["train_byol_loss_step"]) for r in csv.DictReader(f) if r.get("train_byol_loss_step")]
    return statistics.fmean(values[-last:])


def build_parser() -> argparse.ArgumentParser:
    """Demo flags: steps, batch and the evaluation subsets (defaults sized for 2 slow CPU cores)."""
    p = UsageParser(prog=PROG, description=__doc__)
    p.add_argument("--steps", type=int, default=24, help="training steps per run (raise it to run longer)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--knn_train", type=int, default=1000, help="train images in the kNN bank")
    p.add_argument("--test_images", type=int, default=500, help="test images evaluated")
    p.add_argument("--data_dir", default=DATASETS[DATASET].default_dir)
    p.add_argument("--log_dir", default="demo_runs")
    p.add_argument("--num_workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=5)
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The parsed demo flags."""
    return build_parser().parse_args(argv)


def format_table(rows: dict[str, dict], untrained_knn: float) -> str:
    """The side-by-side markdown table of the two runs."""
    a, p = rows["all"], rows["projector"]
    return "\n".join([
        "| | EMA all (classic teacher) | EMA projector only | projector / all |",
        "|---|---|---|---|",
        f"| median step time (s) | {a['step']:.3f} | {p['step']:.3f} | {p['step'] / a['step']:.3f} |",
        f"| params in momentum copies | {a['params']:,} | {p['params']:,} | {p['params'] / a['params']:.3f} |",
        f"| final BYOL loss (mean of last 5 steps) | {a['loss']:.4f} | {p['loss']:.4f} | |",
        f"| online linear top-1 on test (%) | {a['linear']:.2f} | {p['linear']:.2f} | |",
        f"| kNN top-1 on test (%) | {a['knn']:.2f} | {p['knn']:.2f} | |",
        f"| kNN top-1 of the untrained encoder (%) | {untrained_knn:.2f} | {untrained_knn:.2f} | |",
    ])


def main(argv: list[str] | None = None) -> int:
    """Run both pretrainings and print the side-by-side table."""
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        cfgs = {p: build_cfg(demo_argv(p, args)) for p in PLACEMENTS}
        check_data(cfgs["all"])
    except UsageError as exc:
        return usage_exit(PROG, exc)
    import lightning.pytorch as pl
    import torch

    from .data import build_eval_loader
    from .engine.base import accuracy_at_k
    from .engine.knn import knn_accuracy
    from .methods import build_model
    from .train import run_pretrain

    warnings.filterwarnings("ignore")
    torch.set_float32_matmul_precision("high")

    started = time.perf_counter()
    print(
        f"solo-ema demo: BYOL, ResNet-18 (CIFAR stem), Fashion-MNIST 32x32, batch {args.batch_size} x 2 views, "
        f"{args.steps} steps per run, kNN bank {args.knn_train} train images, {args.test_images} test images, "
        f"torch threads {torch.get_num_threads()}",
        flush=True,
    )
    bank_loader = build_eval_loader(DATASET, args.data_dir, train=True, batch_size=256, num_workers=0,
                                    subset=args.knn_train, seed=args.seed)
    test_loader = build_eval_loader(DATASET, args.data_dir, train=False, batch_size=256, num_workers=0,
                                    subset=args.test_images, seed=args.seed)

    def knn_top1(model: torch.nn.Module) -> tuple[float, torch.Tensor, torch.Tensor]:
        bank, bank_y = extract(model, bank_loader)
        test, test_y = extract(model, test_loader)
        return knn_accuracy(bank, bank_y, test, test_y, num_classes=DATASETS[DATASET].num_classes)[0], test, test_y

    pl.seed_everything(args.seed, verbose=False)
    untrained_knn, _, _ = knn_top1(build_model(cfgs["all"]))
    rows = {}
    for placement in PLACEMENTS:
        print(f"\n== pretraining BYOL with EMA parts: {placement} ==", flush=True)
        result = run_pretrain(cfgs[placement])
        times = result.timer.times[2:] or result.timer.times
        knn, test_feats, test_y = knn_top1(result.model)
        linear = float(accuracy_at_k(result.model.classifier(test_feats), test_y, ks=(1,))[0])
        rows[placement] = {
            "step": statistics.median(times),
            "params": result.cost["momentum_params"],
            "loss": final_loss(result.run_dir),
            "linear": linear,
            "knn": knn,
            "dir": result.run_dir,
        }
    a, p = rows["all"], rows["projector"]
    print("\n" + format_table(rows, untrained_knn))
    print(f"\nmetrics: {a['dir']}/metrics.csv, {p['dir']}/metrics.csv; "
          f"wall time {time.perf_counter() - started:.0f} s")
    print("A few steps cannot beat a random encoder's kNN on this data; the point is equal quality at lower cost.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
