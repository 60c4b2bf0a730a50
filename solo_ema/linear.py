"""solo-ema-linear: offline linear evaluation of a pretrained backbone.

Loads a pretraining checkpoint (Lightning ``last.ckpt`` of ``solo-ema-pretrain --save_checkpoint``, or any
``{'state_dict': ..., 'hyper_parameters': {'cfg': ...}}``), rebuilds the backbone from the stored config
(the CIFAR stem for the 32-px datasets, as in pretraining), loads exactly its ``backbone.*`` weights and
freezes it in eval mode (BatchNorm uses the running statistics of pretraining). A linear layer on the
backbone features is trained with its own recipe: SGD (lr 0.1, momentum 0.9, weight decay 0), cosine decay
per step over ``--max_epochs`` (100), batch 512, random resized crop + horizontal flip on the training
split, the evaluation transform on the test split. ``--precompute_features`` trains on the fixed features
of the un-augmented training images instead (one backbone pass, then seconds per epoch: for CPUs).

The test features never change (frozen backbone, deterministic transform), so they are computed once and
the test split is evaluated after every epoch. Per epoch, ``<log_dir>/<name>/metrics.csv`` gets epoch, step,
lr, train_loss, train_acc1, val_loss, val_acc1, val_acc5 (the column names of the pretraining logs, so
``solo-ema-report`` can read either); the final top-1 / top-5 go to ``results.json`` and standard output.
One process, one device (no DDP).

``--knn_metric`` adds an offline kNN top-1 / top-5 (``knn_top1``, ``knn_top5`` in ``results.json``): the
frozen features of the un-augmented training images are the bank, those of the test images the queries.
``paper`` is the paper's KNN-1 (solo-learn 1.0.x: k = 20, euclidean on the raw features, weights
1/(d + 1e-5)); online, that library banked the two augmented large crops of each training image instead.
``--knn_only`` skips the linear layer.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .data.catalog import DATASET_NAMES, DATASETS, SMALL_IMAGE_DATASETS
from .engine.defaults import DEFAULTS, DISTANCES
from .errors import UsageError, UsageParser, usage_exit

PROG = "solo-ema-linear"
LOG_COLUMNS = ("epoch", "step", "lr", "train_loss", "train_acc1", "val_loss", "val_acc1", "val_acc5")



def build_parser() -> argparse.ArgumentParser:
    """The flags (solo-learn's main_linear names where they exist)."""
    p = UsageParser(prog=PROG, description=__doc__.split("\n\n")[0], allow_abbrev=False)
    a = p.add_argument
    a("--pretrained_feature_extractor", required=True, metavar="CKPT", help="pretraining checkpoint (last.ckpt)")
    a("--dataset", default=None, choices=DATASET_NAMES, help="default: the checkpoint's dataset")
    a("--data_dir", default=None, help="default: the checkpoint's data folders")
    a("--train_dir", default=None, help="training folder, relative to --data_dir")
    a("--val_dir", default=None, help="test folder, relative to --data_dir")
    a("--num_classes", type=int, default=None, help="default: the checkpoint's")
    a("--download", action="store_true", help="download CIFAR where the network allows")
    a("--train_subset", type=int, default=None, help="use a fixed random subset of this many training images")
    a("--val_subset", type=int, default=None, help="use a fixed random subset of this many test images")
    a("--crop_size", type=int, default=None, help="default: the pretraining crop size of the first pipeline")
    a("--min_scale", type=float, default=0.08, help="random resized crop: smallest area fraction")
    a("--max_epochs", type=int, default=100)
    a("--max_steps", type=int, default=-1, help="stop after this many optimizer steps (-1: no limit)")
    a("--batch_size", type=int, default=512)
    a("--lr", type=float, default=0.1)
    a("--momentum", type=float, default=0.9)
    a("--weight_decay", type=float, default=0.0)
    a("--num_workers", type=int, default=4)
    a("--precompute_features", action="store_true",
      help="train on fixed features of the un-augmented training images (fast; no augmentation)")
    a("--accelerator", default="auto", choices=("auto", "cpu", "gpu", "cuda"))
    a("--precision", default=None, choices=("32", "32-true", "16-mixed", "bf16-mixed"),
      help="backbone forward precision; default 16-mixed on GPU, 32 on CPU")
    a("--knn_metric", default=None, choices=DISTANCES,
      help="also report an offline kNN (paper: the paper's KNN-1, solo-learn 1.0.x's metric)")
    a("--knn_k", type=int, default=DEFAULTS["knn_eval.k"], help="neighbours of the kNN")
    a("--knn_only", action="store_true", help="only the kNN (needs --knn_metric); no linear layer")
    a("--seed", type=int, default=5)
    a("--name", default=None, help="run name (default: linear-<pretraining name>)")
    a("--log_dir", default="runs")
    return p


# ---------------------------------------------------------------------------------------------------------------
# checkpoint


def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pretraining config as a plain dict, model state_dict) of a checkpoint."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--pretrained_feature_extractor: no such file '{path}'")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file is a usage error
        raise UsageError(f"--pretrained_feature_extractor: cannot read '{path}': {exc}".splitlines()[0]) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UsageError(f"--pretrained_feature_extractor: '{path}' has no state_dict")
    cfg = (ckpt.get("hyper_parameters") or {}).get("cfg")
    if not isinstance(cfg, dict):
        raise UsageError(f"--pretrained_feature_extractor: '{path}' has no hyper_parameters['cfg']")
    return cfg, ckpt["state_dict"]


def backbone_state(state_dict: dict[str, Any]) -> dict[str, Any]:
    """The ``backbone.*`` entries of a model state_dict, prefix removed (momentum copies are not included)."""
    return {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}


def load_backbone(path: str | Path):
    """(frozen backbone in eval mode, features_dim, pretraining cfg dict) from a checkpoint."""
    from .engine.backbones import build_backbone

    cfg, state_dict = load_checkpoint(path)
    backbone_cfg = cfg.get("backbone") or {}
    name = backbone_cfg.get("name", DEFAULTS["backbone.name"])
    dataset = (cfg.get("data") or {}).get("dataset")
    try:
        backbone, features_dim = build_backbone(
            name, small_stem=dataset in SMALL_IMAGE_DATASETS, **(backbone_cfg.get("kwargs") or {})
        )
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--pretrained_feature_extractor: {exc}") from None
    weights = backbone_state(state_dict)
    if not weights:
        raise UsageError(f"--pretrained_feature_extractor: '{path}' has no backbone.* weights")
    try:
        backbone.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise UsageError(f"--pretrained_feature_extractor: backbone weights do not fit {name}: {first}") from None
    backbone.eval()
    backbone.requires_grad_(False)
    return backbone, features_dim, cfg


# ---------------------------------------------------------------------------------------------------------------
# data


def _join(root: str | None, sub: str | None) -> str | None:
    if root is None:
        return None
    return str(Path(root) / sub) if sub else root


def resolve_data(args: argparse.Namespace, cfg: dict[str, Any]) -> dict[str, Any]:
    """Dataset, train and test folders and crop size (the flags, else the checkpoint's), and the classes."""
    data = cfg.get("data") or {}
    dataset = args.dataset or data.get("dataset")
    if dataset not in DATASETS:
        raise UsageError(f"--dataset: unknown dataset '{dataset}'; valid: {', '.join(sorted(DATASETS))}")
    if args.data_dir is not None:
        train_path, val_path = _join(args.data_dir, args.train_dir), _join(args.data_dir, args.val_dir)
    else:
        train_path, val_path = data.get("train_path"), data.get("val_path")
    num_classes = args.num_classes or DATASETS[dataset].num_classes
    if not num_classes:  # custom: count the class folders of the training split
        from .data import num_classes_of

        try:
            num_classes = num_classes_of(dataset, train_path)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--data_dir: {exc}") from None
    crop = args.crop_size
    if crop is None:
        augs = cfg.get("augmentations") or []
        crop = int(augs[0]["crop_size"]) if augs else DATASETS[dataset].image_size
    return {"dataset": dataset, "train_path": train_path, "val_path": val_path, "num_classes": int(num_classes),
            "crop_size": int(crop)}


def train_transform(dataset: str, crop_size: int, min_scale: float = 0.08):
    """Random resized crop (bicubic) + horizontal flip, normalised with the dataset's statistics."""
    from torchvision import transforms as T

    info = DATASETS[dataset]
    return T.Compose([
        T.RandomResizedCrop(crop_size, scale=(min_scale, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(info.mean, info.std),
    ])


def test_transform(dataset: str, crop_size: int):
    """The evaluation transform of pretraining's validation (resize + centre crop where needed)."""
    from .data import eval_transform

    info = DATASETS[dataset]
    return eval_transform(crop_size, info.mean, info.std)


def make_dataset(data: dict[str, Any], train: bool, transform, download: bool, subset: int | None, seed: int):
    """The train or test split with a transform (a fixed random subset when asked)."""
    from .data import build_dataset, random_subset

    path = data["train_path"] if train else data["val_path"]
    try:
        ds = build_dataset(data["dataset"], path, train, transform, download=download)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--data_dir: {exc}") from None
    return random_subset(ds, subset, seed)


# ---------------------------------------------------------------------------------------------------------------
# training


def _device(accelerator: str):
    import torch

    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UsageError("--accelerator: no CUDA device")
        return torch.device("cuda")
    return torch.device("cpu")


def _autocast(device, precision: str | None):
    import contextlib

    import torch

    if precision is None:
        precision = "16-mixed" if device.type == "cuda" else "32"
    if precision in ("16-mixed", "bf16-mixed"):
        dtype = torch.float16 if precision == "16-mixed" and device.type == "cuda" else torch.bfloat16
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


def extract_features(backbone, loader, device, precision: str | None):
    """(features [N, D] float32 on CPU, labels [N]) of every batch of a loader, backbone frozen in eval mode."""
    import torch

    feats, labels = [], []
    backbone.eval()
    with torch.no_grad():
        for x, y in loader:
            with _autocast(device, precision):
                f = backbone(x.to(device, non_blocking=True))
            feats.append(f.float().cpu())
            labels.append(torch.as_tensor(y))
    return torch.cat(feats), torch.cat(labels)


def evaluate(classifier, feats, labels, device, batch_size: int = 4096) -> dict[str, float]:
    """Loss and top-1 / top-5 accuracy (percent) of the linear layer on fixed features."""
    import torch
    import torch.nn.functional as F

    from .engine.base import accuracy_at_k

    loss_sum, hit1, hit5, n = 0.0, 0.0, 0.0, 0
    with torch.no_grad():
        for i in range(0, len(labels), batch_size):
            f = feats[i : i + batch_size].to(device)
            y = labels[i : i + batch_size].to(device)
            logits = classifier(f)
            acc1, acc5 = accuracy_at_k(logits, y)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            hit1 += float(acc1) * len(y)
            hit5 += float(acc5) * len(y)
            n += len(y)
    if n == 0:
        raise UsageError("--val_dir: the test split is empty")
    return {"val_loss": loss_sum / n, "val_acc1": hit1 / n, "val_acc5": hit5 / n}


def run_linear(args: argparse.Namespace) -> dict[str, Any]:
    """Train the linear layer on the frozen backbone; return the final top-1 / top-5 and where the logs are."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from .engine.base import accuracy_at_k

    torch.manual_seed(args.seed)
    device = _device(args.accelerator)
    backbone, features_dim, cfg = load_backbone(args.pretrained_feature_extractor)
    backbone.to(device)
    data = resolve_data(args, cfg)
    name = args.name or f"linear-{cfg.get('name', 'run')}"
    run_dir = Path(args.log_dir) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    loader_kw = {"num_workers": args.num_workers, "persistent_workers": False, "pin_memory": device.type == "cuda"}

    test_set = make_dataset(data, False, test_transform(data["dataset"], data["crop_size"]), args.download,
                            args.val_subset, args.seed)
    test_feats, test_labels = extract_features(
        backbone, DataLoader(test_set, batch_size=args.batch_size, shuffle=False, **loader_kw), device, args.precision
    )
    knn: dict[str, float] = {}
    if args.precompute_features or args.knn_metric:
        plain = make_dataset(data, True, test_transform(data["dataset"], data["crop_size"]), args.download,
                             args.train_subset, args.seed)
        train_feats, train_labels = extract_features(
            backbone, DataLoader(plain, batch_size=args.batch_size, shuffle=False, **loader_kw), device,
            args.precision,
        )
    if args.knn_metric:
        from .engine.knn import knn_accuracy

        if len(train_labels) == 0 or len(test_labels) == 0:
            raise UsageError("--data_dir: the kNN needs training and test images")
        top1, top5 = knn_accuracy(train_feats.to(device), train_labels.to(device), test_feats.to(device),
                                  test_labels.to(device), data["num_classes"], k=args.knn_k, distance=args.knn_metric)
        knn = {"knn_top1": top1, "knn_top5": top5, "knn_metric": args.knn_metric, "knn_k": args.knn_k}
        print(f"kNN ({args.knn_metric}, k={args.knn_k}): top-1 {top1:.2f} | top-5 {top5:.2f}", flush=True)
        if args.knn_only:
            out = {**knn, "run_dir": str(run_dir), "checkpoint": str(args.pretrained_feature_extractor)}
            (run_dir / "results.json").write_text(json.dumps(out, indent=2))
            return out
    if args.precompute_features:
        train_loader = DataLoader(TensorDataset(train_feats, train_labels), batch_size=args.batch_size, shuffle=True)
    else:
        train_set = make_dataset(data, True, train_transform(data["dataset"], data["crop_size"], args.min_scale),
                                 args.download, args.train_subset, args.seed)
        train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, **loader_kw)
    if len(train_loader) == 0:
        raise UsageError("--train_dir: the training split is empty")

    classifier = nn.Linear(features_dim, data["num_classes"]).to(device)
    optimizer = torch.optim.SGD(classifier.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    total = args.max_epochs * len(train_loader)
    if args.max_steps > 0:
        total = min(total, args.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total) / max(total, 1)))
    )

    log_path = run_dir / "metrics.csv"
    (run_dir / "config.json").write_text(json.dumps(
        {"args": vars(args), "data": data, "pretrain_name": cfg.get("name"), "features_dim": features_dim},
        indent=2, sort_keys=True, default=str))
    with log_path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerow(LOG_COLUMNS)

    step, epoch, start = 0, 0, time.perf_counter()
    result: dict[str, float] = {}
    while epoch < args.max_epochs and step < total:
        classifier.train()
        loss_sum, hits, seen = 0.0, 0.0, 0
        lr = optimizer.param_groups[0]["lr"]
        for x, y in train_loader:
            x, y = x.to(device, non_blocking=True), torch.as_tensor(y).to(device)
            if not args.precompute_features:
                with torch.no_grad(), _autocast(device, args.precision):
                    x = backbone(x)
                x = x.float()
            logits = classifier(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            loss_sum += float(loss.detach()) * len(y)
            hits += float(accuracy_at_k(logits.detach(), y, ks=(1,))[0]) * len(y)
            seen += len(y)
            if step >= total:
                break
        classifier.eval()
        result = evaluate(classifier, test_feats, test_labels, device)
        row = {"epoch": epoch, "step": step, "lr": lr, "train_loss": loss_sum / max(seen, 1),
               "train_acc1": hits / max(seen, 1), **result}
        with log_path.open("a", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow([row[c] for c in LOG_COLUMNS])
        print(f"epoch {epoch}: train_loss {row['train_loss']:.4f} | top-1 {result['val_acc1']:.2f} | "
              f"top-5 {result['val_acc5']:.2f} | {time.perf_counter() - start:.0f} s", flush=True)
        epoch += 1
    out = {"top1": result["val_acc1"], "top5": result["val_acc5"], "val_loss": result["val_loss"], **knn,
           "epochs": epoch, "steps": step, "run_dir": str(run_dir),
           "checkpoint": str(args.pretrained_feature_extractor)}
    (run_dir / "results.json").write_text(json.dumps(out, indent=2))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of solo-ema-linear."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        for flag in ("max_epochs", "batch_size"):
            if getattr(args, flag) <= 0:
                raise UsageError(f"--{flag}: must be > 0, got {getattr(args, flag)}")
        if args.lr < 0 or args.weight_decay < 0:
            raise UsageError("--lr and --weight_decay must be >= 0")
        if args.knn_k <= 0:
            raise UsageError(f"--knn_k: must be > 0, got {args.knn_k}")
        if args.knn_only and not args.knn_metric:
            raise UsageError(f"--knn_only: needs --knn_metric ({', '.join(DISTANCES)})")
        out = run_linear(args)
    except UsageError as exc:
        return usage_exit(PROG, exc)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    if "top1" in out:
        print(f"top-1 {out['top1']:.2f} | top-5 {out['top5']:.2f} | {out['run_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
