"""solo-ema-pretrain: self-supervised pretraining with any EMA placement, from solo-learn-style flags.

Flags become a config in two parts. ``_flags_config`` parses, checks and assembles, one step per function,
reading only the standard-library tables (datasets, views, EMA parts, defaults, methods): --help and a bad flag
value load neither torch nor Lightning. ``_method_config`` lets the method complete and check its part; it loads
the method classes. A new flag: its line in ``build_parser``, its check in ``_check_values`` (when it has a
range), its config key in ``_config``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .data.catalog import DALI_DATASETS, DATASET_NAMES, DATASETS, DEVICE_DATASETS, FOLDER_DATASETS, IMAGENET_DATASETS
from .data.views import AUG_FLAGS, recipes_from_flags
from .ema.parts import EMASpecError, resolve_parts, valid_names
from .engine.defaults import BACKBONE_NAMES, BN1_POSITIONS, DEFAULTS, DISTANCES, OPTIMIZERS
from .errors import UsageError, UsageParser
from .methods.catalog import METHOD_INFO, METHOD_NAMES

if TYPE_CHECKING:
    from omegaconf import DictConfig

PROG = "solo-ema-pretrain"


def __getattr__(name: str) -> Any:
    """METHODS and build_model (solo_ema.methods), re-exported for callers of solo_ema.pretrain, loaded on use."""
    if name in ("METHODS", "build_model"):
        from . import methods

        return getattr(methods, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    a("--method", required=True, help=f"self-supervised method, one of {', '.join(METHOD_NAMES)}")
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
    a("--backbone", default=DEFAULTS["backbone.name"], help=f"one of {', '.join(BACKBONE_NAMES)}")
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


def build_cfg(argv: Sequence[str]) -> DictConfig:
    """Parse command-line flags into the resolved config (solo-learn's key layout plus momentum.parts).

    Validated by one build on the meta device (sub-module parts such as projector.fc2, --track_weights).
    """
    args, cfg = _flags_config(argv)
    return _method_config(args, cfg, validate=True)[0]


# ----------------------------------------------------------------------------------------------------------
# From flags to a config: no method loaded, so every usage error below comes without torch or Lightning.


def _flags_config(argv: Sequence[str]) -> tuple[argparse.Namespace, DictConfig]:
    """The parsed flags and the config they give, every flag checked, before the method completes it.

    ``--ema_parts`` is resolved here, once (``solo_ema.ema.resolve_parts``); the method's
    ``add_and_assert_specific_cfg`` then reads the canonical ``momentum.parts`` back.
    """
    args = build_parser().parse_args(list(argv))
    _check_names(args)
    final_tau = _final_tau(args)
    _check_values(args)
    parts = _ema_parts(args, final_tau)
    augmentations = _augmentations(args)
    data = _data(args, augmentations)
    _check_crops(args, data)
    from omegaconf import OmegaConf

    return args, OmegaConf.create(_config(args, final_tau, parts, augmentations, data))


def _check(cond: bool, flag: str, message: str) -> None:
    if not cond:
        raise UsageError(f"{flag}: {message}")


def _check_names(args: argparse.Namespace) -> None:
    """--method, --dataset and --backbone name rows of their tables."""
    _check(args.method in METHOD_INFO, "--method", f"unknown method '{args.method}'; valid: {', '.join(METHOD_NAMES)}")
    _check(args.dataset in DATASET_NAMES, "--dataset", f"unknown dataset '{args.dataset}'; valid: "
           f"{', '.join(DATASET_NAMES)}")
    _check(args.backbone in BACKBONE_NAMES, "--backbone", f"unknown backbone '{args.backbone}'; valid: "
           f"{', '.join(BACKBONE_NAMES)}")


def _final_tau(args: argparse.Namespace) -> float:
    """beta at the end (--final_tau_momentum, default 0 when the base is 0, else 1), both betas checked."""
    _check(0.0 <= args.base_tau_momentum <= 1.0, "--base_tau_momentum",
           f"must be in [0, 1], got {args.base_tau_momentum}")
    final = args.final_tau_momentum
    if final is None:
        final = 0.0 if args.base_tau_momentum == 0.0 else 1.0
    _check(0.0 <= final <= 1.0, "--final_tau_momentum", f"must be in [0, 1], got {final}")
    _check(args.base_tau_momentum <= final, "--base_tau_momentum",
           f"base tau {args.base_tau_momentum} must not exceed --final_tau_momentum {final}")
    return final


def _check_values(args: argparse.Namespace) -> None:
    """Ranges of single flags, flags that need another, files that must exist."""
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


def _ema_parts(args: argparse.Namespace, final_tau: float) -> str:
    """The canonical momentum.parts of --ema_parts (the method's default when not given)."""
    try:
        return str(resolve_parts(args.ema_parts or None, args.base_tau_momentum, final_tau,
                                 default=METHOD_INFO[args.method].default_ema_parts))
    except EMASpecError as exc:
        raise UsageError(f"--ema_parts: {exc}") from None


def _augmentations(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One augmentation node per pipeline (--num_crops_per_aug and the per-pipeline flags)."""
    flags = {k: getattr(args, k) for k in AUG_FLAGS}
    if args.crop_size is None:
        flags["crop_size"] = [DATASETS[args.dataset].image_size]
    try:
        recipes = recipes_from_flags(args.num_crops_per_aug, **flags)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return [r.to_dict() for r in recipes]


def _data(args: argparse.Namespace, augmentations: list[dict[str, Any]]) -> dict[str, Any]:
    """The data section: folders (the dataset's defaults), classes, crops, how the data is read."""
    _check(not args.dali or args.dataset in DALI_DATASETS, "--dali",
           f"DALI reads image folders ({', '.join(DALI_DATASETS)}), not {args.dataset}")
    _check(not args.device_data or args.dataset in DEVICE_DATASETS, "--device_data",
           f"supports {', '.join(DEVICE_DATASETS)}, not {args.dataset}")
    _check(not (args.device_data and args.dali), "--device_data", "give either --device_data or --dali, not both")
    info = DATASETS[args.dataset]
    train_dir, val_dir = args.train_dir, args.val_dir
    if info.split_dirs is not None:
        train_dir = info.split_dirs[0] if train_dir is None else train_dir
        val_dir = info.split_dirs[1] if val_dir is None else val_dir
    data_dir = args.data_dir or info.default_dir
    num_classes = args.num_classes or info.num_classes or None
    if args.dataset == "custom" and num_classes is None and not args.dry_run:
        from .data import num_classes_of

        try:
            num_classes = num_classes_of("custom", _split_path(data_dir, train_dir))
        except (OSError, ValueError) as exc:
            raise UsageError(f"--data_dir: {exc}") from None
    crops = [aug["num_crops"] for aug in augmentations]
    sizes = [aug["crop_size"] for aug in augmentations]
    large = sum(c for c, s in zip(crops, sizes) if s == max(sizes))
    return {
        "dataset": args.dataset,
        "data_dir": data_dir,
        "train_path": _split_path(data_dir, train_dir),
        "val_path": _split_path(data_dir, val_dir),
        "num_classes": num_classes or 0,
        "num_large_crops": large,
        "num_small_crops": sum(crops) - large,
        "num_workers": args.num_workers,
        "format": _data_format(args),
        "dali_device": args.dali_device,
        "download": args.download,
        "train_subset": args.train_subset,
        "val_subset": args.val_subset,
    }


def _data_format(args: argparse.Namespace) -> str:
    """How the training data is read: device (--device_data), dali, image_folder or torchvision."""
    if args.device_data:
        return "device"
    if args.dali:
        return "dali"
    return "image_folder" if args.dataset in FOLDER_DATASETS else "torchvision"


def _split_path(data_dir: str | None, split_dir: str | None) -> str | None:
    """The folder of a split: data_dir/split_dir, or data_dir itself when no split folder is given."""
    if data_dir is None:
        return None
    return os.path.join(data_dir, split_dir) if split_dir else data_dir


def _check_crops(args: argparse.Namespace, data: dict[str, Any]) -> None:
    """The method's loss takes this many large crops, and small crops only where it accepts them."""
    low, high = METHOD_INFO[args.method].large_crops
    large, small = data["num_large_crops"], data["num_small_crops"]
    _check(low <= large and (high is None or large <= high), "--num_crops_per_aug",
           f"{args.method} needs {low if high == low else f'at least {low}'} large crops, got {large}")
    _check(METHOD_INFO[args.method].small_crops or small == 0, "--num_crops_per_aug",
           f"{args.method} takes no small crops, got {small}")


def _num_devices(devices: str) -> int:
    """The number of devices --devices names: a count, or a comma list of ids as in solo-learn."""
    try:
        ids = [int(d) for d in str(devices).split(",") if d.strip()]
    except ValueError:
        ids = []
    _check(bool(ids), "--devices", f"expected a number of devices or a comma list of device ids, got '{devices}'")
    return len(ids) if len(ids) > 1 else max(ids[0], 1)


def _optimizer(args: argparse.Namespace) -> dict[str, Any]:
    """The optimizer section: --optimizer (or --lars), learning rates scaled by the global batch / 256."""
    name = args.optimizer or ("lars" if args.lars else DEFAULTS["optimizer.name"])
    scale = 1.0 if args.no_lr_scaling else args.batch_size * _num_devices(args.devices) * args.num_nodes / 256
    kwargs: dict[str, Any] = {"momentum": 0.9}
    if name == "lars":
        kwargs.update(eta=args.eta_lars, clip_lr=args.grad_clip_lars, exclude_bias_n_norm=args.exclude_bias_n_norm)
    return {
        "name": name,
        "batch_size": args.batch_size,
        "lr": args.lr * scale,
        "classifier_lr": args.classifier_lr * scale,
        "weight_decay": args.weight_decay,
        "kwargs": kwargs,
    }


def _config(args: argparse.Namespace, final_tau: float, parts: str, augmentations: list[dict[str, Any]],
            data: dict[str, Any]) -> dict[str, Any]:
    """The config in solo-learn's key layout, from the checked flags and the steps' results."""
    name = args.name or f"{args.method}-{args.dataset}-{parts.replace('+', '_')}"  # canonical: head = projector
    return {
        "name": name,
        "method": args.method,
        "seed": args.seed,
        "backbone": {"name": args.backbone, "kwargs": {"zero_init_residual": args.zero_init_residual}},
        "data": data,
        "augmentations": augmentations,
        "optimizer": _optimizer(args),
        "scheduler": {
            "name": args.scheduler,
            "warmup_epochs": args.warmup_epochs,
            "warmup_steps": args.warmup_steps,
            "warmup_start_lr": args.warmup_start_lr,
            "min_lr": args.min_lr,
        },
        "momentum": {"base_tau": args.base_tau_momentum, "final_tau": final_tau,
                     "classifier": args.momentum_classifier, "parts": parts},
        # given method flags only: the method fills the rest with its defaults
        "method_kwargs": {k: getattr(args, k) for k in METHOD_FLAGS if getattr(args, k) is not None},
        "knn_eval": {"enabled": args.knn_eval or args.knn_metric is not None, "k": args.knn_k,
                     "distance_func": args.knn_metric or DEFAULTS["knn_eval.distance_func"]},
        "performance": {"disable_channel_last": args.no_channel_last, "prefetch": not args.no_prefetch,
                        "compile": args.compile, "compile_backend": args.compile_backend},
        "max_epochs": args.max_epochs,
        "max_steps": args.max_steps,
        "devices": _num_devices(args.devices),
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


# ----------------------------------------------------------------------------------------------------------
# The method's part: it loads the method classes (torch, Lightning).


def _method_config(args: argparse.Namespace, cfg: DictConfig, validate: bool) -> tuple[DictConfig, Any]:
    """The config completed by the method (its defaults, its own checks), and its model built once on the meta
    device when `validate` or --dry_run (else None: a real run builds only its real model, in
    ``train.run_pretrain``, whose EMASpecError ``main`` reports as an ``--ema_parts`` usage error)."""
    from .methods import METHODS

    try:
        cfg = METHODS[args.method].add_and_assert_specific_cfg(cfg)
    except (ValueError, KeyError) as exc:
        raise UsageError(f"--method {args.method}: {exc}") from None
    if not (validate or args.dry_run):
        return cfg, None
    return cfg, _meta_model(cfg, args.track_weights)


def _meta_model(cfg: DictConfig, track_weights: str | None) -> Any:
    """The model on the meta device: sub-module parts such as projector.fc2 and --track_weights checked on it."""
    from .methods import build_model

    try:
        model = build_model(cfg, device="meta")
    except EMASpecError as exc:
        raise UsageError(f"--ema_parts: {exc}") from None
    if track_weights:
        from .analysis.weights import check_part

        try:
            check_part(model, track_weights)
        except ValueError as exc:
            raise UsageError(f"--track_weights: {exc}") from None
    return model


def check_data(cfg: DictConfig) -> None:
    """Fail early, with the path, when the training data cannot be read."""
    dataset, path = cfg.data.dataset, cfg.data.train_path
    if dataset == "custom":
        from .data.datasets import UnreadableImageError, check_image_folder, verify_image_headers

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
    cfg = None
    try:
        args, cfg = _flags_config(argv)
        if not args.dry_run:
            check_data(cfg)  # before the method is loaded: a missing folder is reported without Lightning
        cfg, model = _method_config(args, cfg, validate=False)
        if args.dry_run:
            print(_dry_run_json(cfg, model))
            return 0
        from .train import run_pretrain

        run_pretrain(cfg)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        failure = None if "--debug" in argv else _failure(exc, cfg)
        if failure is None:
            raise
        message, code = failure
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return code
    return 0


def _dry_run_json(cfg: DictConfig, model: Any) -> str:
    """The resolved config and the cost accounting of its (meta-device) model, as one JSON line."""
    from omegaconf import OmegaConf

    from .analysis.cost import cost_of_model

    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["cost"] = cost_of_model(model)
    return json.dumps(resolved, sort_keys=True)


def _failure(exc: Exception, cfg: DictConfig | None) -> tuple[str, int] | None:
    """The one-line message and exit code of a failure reported without a traceback; None for any other error.

    A new kind of reported failure is one more ``isinstance`` case here. The classes of a run's failures are
    imported here, not at the top: a run has loaded their modules before it raises one, and --help stays light.
    """
    if isinstance(exc, UsageError):
        return str(exc), 2
    if isinstance(exc, EMASpecError):  # a sub-part the real model lacks (a dry run reports it in _meta_model)
        return f"--ema_parts: {exc}", 2
    from .data.datasets import UnreadableImageError
    from .engine.reliability import NonFiniteLossError

    if isinstance(exc, UnreadableImageError):
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]  # a worker's error carries its traceback
        return (lines[-1].split("UnreadableImageError: ", 1)[-1] if lines else str(exc)), 2
    if isinstance(exc, NonFiniteLossError) and cfg is not None:
        ckpt = Path(cfg.checkpoint.dir) / "last.ckpt"
        kept = f"; last good checkpoint: {ckpt}" if cfg.checkpoint.enabled and ckpt.exists() else ""
        return f"{exc}{kept}", 1
    return None


if __name__ == "__main__":
    sys.exit(main())
