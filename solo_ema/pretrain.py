"""solo-ema-pretrain: self-supervised pretraining with any EMA placement, from solo-learn-style flags."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .analysis.cost import cost_of_model
from .analysis.weights import check_part
from .data.augment import AUG_FLAGS
from .data.catalog import DALI_DATASETS, DATASET_NAMES, DATASETS, DEVICE_DATASETS, FOLDER_DATASETS, IMAGENET_DATASETS
from .data.datasets import UnreadableImageError
from .ema import EMASpecError, resolve_parts, valid_names
from .engine.backbones import BACKBONES
from .engine.defaults import BN1_POSITIONS, DEFAULTS, DISTANCES, OPTIMIZERS
from .engine.reliability import NonFiniteLossError
from .errors import UsageError, UsageParser
from .methods import METHODS, build_model  # the method factory; re-exported here for callers of solo_ema.pretrain

PROG = "solo-ema-pretrain"


def bn1_position(value: str) -> str:
    """One of BN1_POSITIONS, for --bn1_position."""
    if value not in BN1_POSITIONS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(BN1_POSITIONS)}, got '{value}'")
    return value


def str2bool(value: str) -> bool:
    """'true/false', 'yes/no', '1/0' (any case) as a bool, for the boolean method flags."""
    text = str(value).strip().lower()
    if text in ("true", "t", "yes", "y", "1"):
        return True
    if text in ("false", "f", "no", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{value}'")


# method flags: given ones go to cfg.method_kwargs, the method fills the rest with its defaults.
# str2bool flags work as switches (`--flag` is true) and take an optional value (`--flag false`).
METHOD_FLAGS: dict[str, Callable[[str], Any]] = {
    "proj_output_dim": int,
    "proj_hidden_dim": int,
    "pred_hidden_dim": int,
    "bn_backbone_out": str2bool,  # BN1 of Table C.8: BatchNorm on the backbone output, before the projector
    "bn_projector_out": str2bool,  # BN2 of Table C.8: BatchNorm as the projector's last layer
    "bn1_position": bn1_position,  # BN1 in the projector path only (default) or on the backbone output
    "temperature": float,  # MoCo v2+, SimCLR
    "queue_size": int,  # MoCo v2+, ReSSL
    "temperature_q": float,  # ReSSL
    "temperature_k": float,  # ReSSL
    "num_prototypes": int,  # DINO
    "student_temperature": float,  # DINO
    "teacher_temperature": float,  # DINO
    "warmup_teacher_temperature": float,  # DINO
    "warmup_teacher_temperature_epochs": int,  # DINO
    "center_momentum": float,  # DINO
    "norm_last_layer": str2bool,  # DINO
    "use_bn_in_head": str2bool,  # DINO
    "freeze_last_layer": int,  # DINO: epochs
    "clip_grad": float,  # DINO: per-parameter backbone gradient clipping, 0 = off
}


def build_parser() -> argparse.ArgumentParser:
    """The flag parser (paper-era solo-learn bash-file flags plus --ema_parts and --dry_run)."""
    p = UsageParser(prog=PROG, description=__doc__, allow_abbrev=False)
    a = p.add_argument
    a("--method", required=True, help="self-supervised method (see --help for the list)")
    a("--ema_parts", default=None, help=f"EMA placement; {valid_names()}")
    a("--dataset", required=True, help=f"one of {', '.join(DATASET_NAMES)}")
    a("--data_dir", default=None, help="dataset root (default: " + ", ".join(
        f"{n} {d.default_dir}" for n, d in DATASETS.items() if d.default_dir) + ")")
    splits = {n: d.split_dirs for n, d in DATASETS.items() if d.split_dirs}
    a("--train_dir", default=None, help="training folder, relative to --data_dir (" + ", ".join(
        f"{n}: {s[0]}" for n, s in splits.items()) + ")")
    a("--val_dir", default=None, help="validation folder, relative to --data_dir (" + ", ".join(
        f"{n}: {s[1]}" for n, s in splits.items()) + ")")
    a("--num_classes", type=int, default=None, help="custom: number of classes (read from the folder otherwise)")
    a("--download", action="store_true", help="download CIFAR where the network allows")
    a("--train_subset", type=int, default=None, help="train on a fixed random subset of this many images")
    a("--val_subset", type=int, default=None, help="validate on a fixed random subset of this many images")
    a("--backbone", default=DEFAULTS["backbone.name"])
    a("--zero_init_residual", action="store_true")
    a("--max_epochs", type=int, default=DEFAULTS["max_epochs"])
    a("--max_steps", type=int, default=-1)
    a("--devices", default="1", help="number of devices, or a comma list of ids as in solo-learn")
    a("--num_nodes", type=int, default=1)
    a("--accelerator", default="auto")
    a("--strategy", default="auto")
    a("--precision", default=None, help="default: 16-mixed on GPU, 32-true on CPU")
    a("--accumulate_grad_batches", type=int, default=DEFAULTS["accumulate_grad_batches"])
    a("--sync_batchnorm", action="store_true")
    a("--optimizer", default=None, choices=OPTIMIZERS, help=f"default: {DEFAULTS['optimizer.name']} (lars with --lars)")
    a("--lars", action="store_true", help="same as --optimizer lars (old solo-learn flag)")
    a("--eta_lars", type=float, default=1e-3)
    a("--grad_clip_lars", action="store_true")
    a("--exclude_bias_n_norm", action="store_true")
    a("--scheduler", default=DEFAULTS["scheduler.name"])
    a("--warmup_epochs", type=float, default=DEFAULTS["scheduler.warmup_epochs"])
    a("--warmup_steps", type=int, default=None, help="overrides --warmup_epochs")
    a("--warmup_start_lr", type=float, default=DEFAULTS["scheduler.warmup_start_lr"])
    a("--min_lr", type=float, default=DEFAULTS["scheduler.min_lr"])
    a("--lr", type=float, default=DEFAULTS["optimizer.lr"])
    a("--classifier_lr", type=float, default=DEFAULTS["optimizer.classifier_lr"])
    a("--weight_decay", type=float, default=DEFAULTS["optimizer.weight_decay"])
    a("--batch_size", type=int, default=DEFAULTS["optimizer.batch_size"], help="per device")
    a("--num_workers", type=int, default=4)
    a("--dali", action="store_true", help="load image folders with NVIDIA DALI (pip install -e '.[dali]')")
    a("--dali_device", default="auto", choices=("auto", "gpu", "cpu"),
      help="DALI decoding and augmentation device (auto: gpu when CUDA is available)")
    a("--device_data", action="store_true",
      help="hold the split on the training device as uint8 and augment whole batches there "
      f"({', '.join(DEVICE_DATASETS)}; custom: folders of one image size)")
    a("--no_lr_scaling", action="store_true", help="do not scale lr by batch_size * devices / 256")
    a("--num_crops_per_aug", type=int, nargs="+", default=[2])
    for name, (typ, default) in AUG_FLAGS.items():
        shown = "the dataset's image size" if name == "crop_size" else default
        a(f"--{name}", type=typ, nargs="+", default=None, help=f"one value or one per pipeline (default {shown})")
    for name, typ in METHOD_FLAGS.items():
        if typ is str2bool:
            a(f"--{name}", type=str2bool, nargs="?", const=True, default=None)
        else:
            a(f"--{name}", type=typ, default=None)
    a("--base_tau_momentum", type=float, default=DEFAULTS["momentum.base_tau"],
      help="beta at step 0 (0 = shared, 1 = frozen)")
    a("--final_tau_momentum", type=float, default=None,
      help=f"beta at the end (default {DEFAULTS['momentum.final_tau']}; 0 when base is 0)")
    a("--momentum_classifier", action="store_true")
    a("--knn_eval", action="store_true")
    a("--knn_k", type=int, default=DEFAULTS["knn_eval.k"])
    a("--knn_metric", default=None, choices=DISTANCES,
      help=f"kNN metric (implies --knn_eval), one of {', '.join(DISTANCES)}: cosine (default; first large crop, "
           "last 50k samples), euclidean "
           "(normalised features), paper (solo-learn 1.0.x, the paper's KNN-1: raw features, weights "
           "1/(d+1e-5), both large crops of the epoch)")
    a("--no_channel_last", action="store_true")
    a("--no_prefetch", action="store_true",
      help="--device_data: make each batch when it is asked for (default: one ahead, on a side stream on GPU)")
    a("--compile", action="store_true",
      help="torch.compile the ResNet layers and heads (and their momentum copies); the first steps compile")
    a("--compile_backend", default=DEFAULTS["performance.compile_backend"], help="torch.compile backend")
    a("--log_every_n_steps", type=int, default=None, metavar="N",
      help="write step metrics every N steps (default: 1 on CPU; 50 on GPU, where each write waits for the GPU)")
    a("--name", default=None, help="run name (folder under --log_dir)")
    a("--project", default="solo-ema")
    a("--log_dir", default="runs")
    a("--wandb", action="store_true", help="also log to W&B (WANDB_MODE=offline works)")
    a("--save_checkpoint", action="store_true")
    a("--checkpoint_dir", default=None, help="default: <log_dir>/<name>/checkpoints")
    a("--checkpoint_frequency", type=int, default=1, metavar="N", help="save a checkpoint every N epochs")
    a("--checkpoint_every_n_steps", type=int, default=None, metavar="N",
      help="also save every N optimizer steps (last.ckpt is replaced atomically)")
    a("--auto_resume", action="store_true", help="resume from <checkpoint_dir>/last.ckpt of this run name if it exists")
    a("--resume_from_checkpoint", default=None, metavar="PATH", help="resume from this checkpoint")
    a("--seed", type=int, default=5)
    a("--limit_val_batches", type=float, default=1.0)
    a("--check_val_every_n_epoch", type=int, default=1)
    a("--grad_monitor", action="store_true",
      help="log grad_linf/<part>: max |dLoss/d output| of conv1, block1..4 and projector (large crops)")
    a("--grad_monitor_interval", type=int, default=1, metavar="N", help="monitor every N optimizer steps")
    a("--track_weights", default=None, metavar="PART",
      help="record online and target weights of one small layer (e.g. projector.fc2) to <run>/weights_PART.pt")
    a("--track_weights_interval", type=int, default=1, metavar="N", help="record every N optimizer steps")
    a("--dry_run", action="store_true", help="print the resolved config as JSON and exit")
    a("--debug", action="store_true", help="show tracebacks")
    return p


def _augmentations(args: argparse.Namespace) -> list[dict[str, Any]]:
    from .data.augment import recipes_from_flags

    flags = {k: getattr(args, k) for k in AUG_FLAGS}
    if args.crop_size is None:
        flags["crop_size"] = [DATASETS[args.dataset].image_size]
    try:
        recipes = recipes_from_flags(args.num_crops_per_aug, **flags)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return [r.to_dict() for r in recipes]


def _num_devices(devices: str) -> int:
    items = [d for d in str(devices).split(",") if d.strip()]
    if len(items) > 1:
        return len(items)
    value = int(items[0])
    return max(value, 1)


def _check(cond: bool, flag: str, message: str) -> None:
    if not cond:
        raise UsageError(f"{flag}: {message}")


def build_cfg(argv: Sequence[str]) -> DictConfig:
    """Parse command-line flags into the resolved config (solo-learn's key layout plus momentum.parts).

    Validated by one build on the meta device (sub-module parts such as projector.fc2, --track_weights).
    """
    return _resolve(argv, validate=True)[0]


def _resolve(argv: Sequence[str], validate: bool) -> tuple[DictConfig, Any]:
    """The resolved config, and the model built once on the meta device when `validate` or --dry_run (else None).

    ``--ema_parts`` is resolved here, once (``solo_ema.ema.resolve_parts``); the model's own
    ``add_and_assert_specific_cfg`` then reads the canonical ``momentum.parts`` back. A real run builds only its
    real model (``train.run_pretrain``), whose EMASpecError ``main`` reports as an ``--ema_parts`` usage error.
    """
    args = build_parser().parse_args(list(argv))
    _check(args.method in METHODS, "--method", f"unknown method '{args.method}'; valid: {', '.join(METHODS)}")
    _check(args.dataset in DATASET_NAMES, "--dataset", f"unknown dataset '{args.dataset}'; valid: "
           f"{', '.join(DATASET_NAMES)}")
    _check(args.backbone in BACKBONES, "--backbone", f"unknown backbone '{args.backbone}'; valid: "
           f"{', '.join(BACKBONES)}")
    _check(0.0 <= args.base_tau_momentum <= 1.0, "--base_tau_momentum",
           f"must be in [0, 1], got {args.base_tau_momentum}")
    final = args.final_tau_momentum
    if final is None:
        final = 0.0 if args.base_tau_momentum == 0.0 else 1.0
    _check(0.0 <= final <= 1.0, "--final_tau_momentum", f"must be in [0, 1], got {final}")
    _check(args.base_tau_momentum <= final, "--base_tau_momentum",
           f"base tau {args.base_tau_momentum} must not exceed --final_tau_momentum {final}")
    for flag in ("lr", "classifier_lr", "weight_decay", "min_lr", "warmup_start_lr", "eta_lars"):
        _check(getattr(args, flag) >= 0, f"--{flag}", f"must be >= 0, got {getattr(args, flag)}")
    _check(args.batch_size > 0, "--batch_size", f"must be > 0, got {args.batch_size}")
    _check(args.knn_k > 0, "--knn_k", f"must be > 0, got {args.knn_k}")
    _check(args.bn1_position is None or bool(args.bn_backbone_out), "--bn1_position",
           "places BN1, so it needs --bn_backbone_out")
    _check(args.checkpoint_frequency > 0, "--checkpoint_frequency", f"must be > 0, got {args.checkpoint_frequency}")
    _check(args.checkpoint_every_n_steps is None or args.checkpoint_every_n_steps > 0, "--checkpoint_every_n_steps",
           f"must be > 0, got {args.checkpoint_every_n_steps}")
    _check(args.resume_from_checkpoint is None or Path(args.resume_from_checkpoint).is_file(),
           "--resume_from_checkpoint", f"no checkpoint file at '{args.resume_from_checkpoint}'")
    _check(args.max_epochs > 0 or args.max_steps > 0, "--max_epochs", "give --max_epochs > 0 or --max_steps > 0")
    _check(args.log_every_n_steps is None or args.log_every_n_steps > 0, "--log_every_n_steps",
           f"must be > 0, got {args.log_every_n_steps}")
    _check(args.grad_monitor_interval > 0, "--grad_monitor_interval", f"must be > 0, got {args.grad_monitor_interval}")
    _check(args.track_weights_interval > 0, "--track_weights_interval",
           f"must be > 0, got {args.track_weights_interval}")
    _check(all(n > 0 for n in args.num_crops_per_aug), "--num_crops_per_aug", "every count must be > 0")
    method_cls = METHODS[args.method]
    try:
        spec = str(resolve_parts(args.ema_parts or None, args.base_tau_momentum, final,
                                 default=getattr(method_cls, "default_ema_parts", "none")))
    except EMASpecError as exc:
        raise UsageError(f"--ema_parts: {exc}") from None
    optimizer = args.optimizer or ("lars" if args.lars else DEFAULTS["optimizer.name"])
    num_devices = _num_devices(args.devices)
    scale = 1.0 if args.no_lr_scaling else args.batch_size * num_devices * args.num_nodes / 256
    augmentations = _augmentations(args)
    crops = [aug["num_crops"] for aug in augmentations]
    sizes = [aug["crop_size"] for aug in augmentations]
    large = sum(c for c, s in zip(crops, sizes) if s == max(sizes))
    _check(not args.dali or args.dataset in DALI_DATASETS, "--dali",
           f"DALI reads image folders ({', '.join(DALI_DATASETS)}), not {args.dataset}")
    _check(not args.device_data or args.dataset in DEVICE_DATASETS, "--device_data",
           f"supports {', '.join(DEVICE_DATASETS)}, not {args.dataset}")
    _check(not (args.device_data and args.dali), "--device_data", "give either --device_data or --dali, not both")
    split_dirs = DATASETS[args.dataset].split_dirs
    if split_dirs is not None:
        args.train_dir = split_dirs[0] if args.train_dir is None else args.train_dir
        args.val_dir = split_dirs[1] if args.val_dir is None else args.val_dir
    data_dir = args.data_dir or DATASETS[args.dataset].default_dir
    num_classes = args.num_classes or DATASETS[args.dataset].num_classes or None
    if args.dataset == "custom" and num_classes is None and not args.dry_run:
        from .data import num_classes_of

        try:
            num_classes = num_classes_of("custom", _train_path(data_dir, args.train_dir))
        except (OSError, ValueError) as exc:
            raise UsageError(f"--data_dir: {exc}") from None
    method_kwargs = {k: getattr(args, k) for k in METHOD_FLAGS if getattr(args, k) is not None}
    name = args.name or f"{args.method}-{args.dataset}-{spec.replace('+', '_')}"  # canonical: head = projector
    cfg = {
        "name": name,
        "method": args.method,
        "seed": args.seed,
        "backbone": {"name": args.backbone, "kwargs": {"zero_init_residual": args.zero_init_residual}},
        "data": {
            "dataset": args.dataset,
            "data_dir": data_dir,
            "train_path": _train_path(data_dir, args.train_dir),
            "val_path": _val_path(data_dir, args.val_dir),
            "num_classes": num_classes or 0,
            "num_large_crops": large,
            "num_small_crops": sum(crops) - large,
            "num_workers": args.num_workers,
            "format": _data_format(args),
            "dali_device": args.dali_device,
            "download": args.download,
            "train_subset": args.train_subset,
            "val_subset": args.val_subset,
        },
        "augmentations": augmentations,
        "optimizer": {
            "name": optimizer,
            "batch_size": args.batch_size,
            "lr": args.lr * scale,
            "classifier_lr": args.classifier_lr * scale,
            "weight_decay": args.weight_decay,
            "kwargs": (
                {"momentum": 0.9, "eta": args.eta_lars, "clip_lr": args.grad_clip_lars,
                 "exclude_bias_n_norm": args.exclude_bias_n_norm}
                if optimizer == "lars" else {"momentum": 0.9}
            ),
        },
        "scheduler": {
            "name": args.scheduler,
            "warmup_epochs": args.warmup_epochs,
            "warmup_steps": args.warmup_steps,
            "warmup_start_lr": args.warmup_start_lr,
            "min_lr": args.min_lr,
        },
        "momentum": {
            "base_tau": args.base_tau_momentum,
            "final_tau": final,
            "classifier": args.momentum_classifier,
            "parts": spec,
        },
        "method_kwargs": method_kwargs,
        "knn_eval": {"enabled": args.knn_eval or args.knn_metric is not None, "k": args.knn_k,
                     "distance_func": args.knn_metric or DEFAULTS["knn_eval.distance_func"]},
        "performance": {"disable_channel_last": args.no_channel_last, "prefetch": not args.no_prefetch,
                        "compile": args.compile, "compile_backend": args.compile_backend},
        "max_epochs": args.max_epochs,
        "max_steps": args.max_steps,
        "devices": num_devices,
        "num_nodes": args.num_nodes,
        "accelerator": args.accelerator,
        "strategy": args.strategy,
        "precision": args.precision,
        "accumulate_grad_batches": args.accumulate_grad_batches,
        "sync_batchnorm": args.sync_batchnorm,
        "limit_val_batches": args.limit_val_batches,
        "check_val_every_n_epoch": args.check_val_every_n_epoch,
        "analysis": {
            "grad_monitor": args.grad_monitor,
            "grad_monitor_interval": args.grad_monitor_interval,
            "track_weights": args.track_weights,
            "track_weights_interval": args.track_weights_interval,
        },
        "logging": {"log_dir": args.log_dir, "project": args.project, "wandb": args.wandb,
                    "every_n_steps": args.log_every_n_steps},
        "checkpoint": {
            "enabled": args.save_checkpoint,
            "dir": args.checkpoint_dir or os.path.join(args.log_dir, name, "checkpoints"),
            "auto_resume": args.auto_resume,
            "frequency": args.checkpoint_frequency,
            "every_n_steps": args.checkpoint_every_n_steps,
            "resume_from": args.resume_from_checkpoint,
        },
        "debug": args.debug,
        "dry_run": args.dry_run,
    }
    low, high = method_cls.large_crops
    _check(low <= large and (high is None or large <= high), "--num_crops_per_aug",
           f"{args.method} needs {low if high == low else f'at least {low}'} large crops, got {large}")
    _check(method_cls.small_crops or sum(crops) == large, "--num_crops_per_aug",
           f"{args.method} takes no small crops, got {sum(crops) - large}")
    cfg = OmegaConf.create(cfg)
    try:
        cfg = method_cls.add_and_assert_specific_cfg(cfg)
    except (ValueError, KeyError) as exc:
        raise UsageError(f"--method {args.method}: {exc}") from None
    if not (validate or args.dry_run):
        return cfg, None
    try:
        model = build_model(cfg, device="meta")  # resolves sub-module parts such as projector.fc2 against the model
    except EMASpecError as exc:
        raise UsageError(f"--ema_parts: {exc}") from None
    if args.track_weights:
        try:
            check_part(model, args.track_weights)
        except ValueError as exc:
            raise UsageError(f"--track_weights: {exc}") from None
    return cfg, model


def _data_format(args: argparse.Namespace) -> str:
    """How the training data is read: device (--device_data), dali, image_folder or torchvision."""
    if args.device_data:
        return "device"
    if args.dali:
        return "dali"
    return "image_folder" if args.dataset in FOLDER_DATASETS else "torchvision"


def _train_path(data_dir: str | None, train_dir: str | None) -> str | None:
    if data_dir is None:
        return None
    return os.path.join(data_dir, train_dir) if train_dir else data_dir


def _val_path(data_dir: str | None, val_dir: str | None) -> str | None:
    if data_dir is None:
        return None
    return os.path.join(data_dir, val_dir) if val_dir else data_dir


def check_data(cfg: DictConfig) -> None:
    """Fail early, with the path, when the training data cannot be read."""
    from .data import check_image_folder
    from .data.datasets import verify_image_headers

    dataset, path = cfg.data.dataset, cfg.data.train_path
    if dataset == "custom":
        if path is None:
            raise UsageError("--data_dir: the custom dataset needs a folder of class sub-folders")
        try:
            check_image_folder(path)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--data_dir: {exc}") from None
        try:
            verify_image_headers(path)
        except UnreadableImageError as exc:
            raise UsageError(str(exc)) from None
    elif dataset in IMAGENET_DATASETS:
        _check_imagenet(cfg)
    elif dataset == "fashion_mnist":
        if path is None or not Path(path).is_dir():
            raise UsageError(f"--data_dir: no Fashion-MNIST folder at '{path}' "
                             "(apt-get install -y dataset-fashion-mnist, or give the folder of the idx .gz files)")
    elif not cfg.data.download and (path is None or not Path(path).is_dir()):
        raise UsageError(f"--data_dir: no {dataset} folder at '{path}' (give the folder, or --download)")
    if cfg.data.get("format") == "dali":
        from .data.dali import DaliUnavailableError, require_dali, resolve_dali_device

        try:
            require_dali()
        except DaliUnavailableError as exc:
            raise UsageError(f"--dali: {exc}") from None
        try:
            resolve_dali_device(cfg.data.dali_device)
        except ValueError as exc:
            raise UsageError(f"--dali_device: {exc}") from None


def _check_imagenet(cfg: DictConfig) -> None:
    """ImageNet-1K: class folders (at most 1000); ImageNet-100: all 100 listed wnid folders (others ignored)."""
    from .data import check_image_folder, check_imagenet100_folder

    dataset = cfg.data.dataset
    if cfg.data.data_dir is None:
        raise UsageError(f"--data_dir: {dataset} needs the ImageNet folder (train/ and val/, one folder per class)")
    folders = [("--train_dir", cfg.data.train_path)]
    if cfg.limit_val_batches:
        folders.append(("--val_dir", cfg.data.val_path))
    for flag, folder in folders:
        try:
            if dataset == "imagenet100":
                check_imagenet100_folder(folder)
            else:
                classes = check_image_folder(folder)
                if len(classes) > DATASETS[dataset].num_classes:
                    raise ValueError(f"{folder} has {len(classes)} class folders, ImageNet-1K has "
                                     f"{DATASETS[dataset].num_classes} (use --dataset custom for other folders)")
        except (OSError, ValueError) as exc:
            raise UsageError(f"--data_dir/{flag}: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of solo-ema-pretrain."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        cfg, model = _resolve(argv, validate=False)
        if cfg.dry_run:
            resolved = OmegaConf.to_container(cfg, resolve=True)
            resolved["cost"] = cost_of_model(model)
            print(json.dumps(resolved, sort_keys=True))
            return 0
        check_data(cfg)
        from .train import run_pretrain

        run_pretrain(cfg)
    except UsageError as exc:
        if debug:
            raise
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except EMASpecError as exc:  # a sub-part the real model does not have (a dry run reports it in _resolve)
        if debug:
            raise
        print(f"{PROG}: error: --ema_parts: {exc}", file=sys.stderr)
        return 2
    except UnreadableImageError as exc:
        if debug:
            raise
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]  # a worker's error carries its traceback
        message = lines[-1].split("UnreadableImageError: ", 1)[-1] if lines else str(exc)
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    except NonFiniteLossError as exc:
        if debug:
            raise
        ckpt = Path(cfg.checkpoint.dir) / "last.ckpt"
        kept = f"; last good checkpoint: {ckpt}" if cfg.checkpoint.enabled and ckpt.exists() else ""
        print(f"{PROG}: error: {exc}{kept}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
