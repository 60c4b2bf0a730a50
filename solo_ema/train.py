"""Build data, model, loggers and trainer from a resolved config, and fit."""

from __future__ import annotations

import copy
import json
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from omegaconf import DictConfig, OmegaConf

from .analysis.callbacks import CostLogger, analysis_callbacks
from .analysis.cost import cost_of_model, format_cost
from .analysis.weights import TrackWeightsError
from .data import ViewRecipe, build_eval_loader, build_pretrain_loader
from .data.loaders import EpochSampler
from .engine.callbacks import DevicePlacement, StepProgressBar, StepTimer
from .engine.compile import compile_stages
from .engine.config import cfg_get
from .engine.console import drop_lightning_tips
from .engine.reliability import (
    AtomicCheckpointIO,
    DataPosition,
    EpochMeans,
    NonFiniteLossGuard,
    ResumableCSVLogger,
    RNGState,
    TrainingPosition,
    UnreadableCheckpointError,
    read_checkpoint_info,
)
from .engine.sync_bn import CPUSyncBatchNorm
from .errors import UsageError
from .methods import build_model

__all__ = ["RunResult", "build_loaders", "build_trainer", "format_cost", "resume_checkpoint", "resumed_config",
           "run_pretrain"]

#: the name of the periodic checkpoints (ModelCheckpoint's "{epoch}-{step}" filename)
STEP_CHECKPOINT = re.compile(r"epoch=(?P<epoch>\d+)-step=(?P<step>\d+)\.ckpt")


@dataclass
class RunResult:
    """What a finished run leaves behind."""

    model: pl.LightningModule
    trainer: pl.Trainer
    timer: StepTimer
    run_dir: Path
    cost: dict[str, Any]


def uses_gpu(cfg: DictConfig) -> bool:
    """True when the run will train on CUDA devices."""
    return cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto" and torch.cuda.is_available())


def resolve_precision(cfg: DictConfig) -> str:
    """16-mixed on GPU, 32-true on CPU, unless the config says otherwise."""
    if cfg.precision:
        return str(cfg.precision)
    return "16-mixed" if uses_gpu(cfg) else "32-true"


#: on a GPU, steps between metric writes (each write reads the device's values back: the queue drains)
GPU_LOG_EVERY_N_STEPS = 50


def log_every_n_steps(cfg: DictConfig) -> int:
    """Steps between metric writes: ``logging.every_n_steps``, else 1 on CPU and GPU_LOG_EVERY_N_STEPS on GPU."""
    every = cfg_get(cfg, "logging.every_n_steps")
    return int(every) if every else (GPU_LOG_EVERY_N_STEPS if uses_gpu(cfg) else 1)


def build_loaders(cfg: DictConfig) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader | None]:
    """Training loader ([indexes, crops, targets]) and validation loader ((x, y)) from the config."""
    d = cfg.data
    recipes = [ViewRecipe.from_dict(a) for a in cfg.augmentations]
    if d.get("format") == "device":  # the split on the training device; DevicePlacement moves it there
        from .data.device import build_device_loaders

        try:
            return build_device_loaders(
                d.dataset, d.train_path, d.val_path, recipes, batch_size=cfg.optimizer.batch_size, seed=cfg.seed,
                download=d.download, train_subset=d.train_subset, val_subset=d.val_subset,
                with_val=bool(cfg.limit_val_batches), prefetch=bool(cfg_get(cfg, "performance.prefetch", True)),
            )
        except ValueError as exc:
            raise UsageError(f"--device_data: {exc}") from None
    if d.get("format") == "dali":  # same recipes, files and labels; validation stays on torchvision
        from .data.dali import build_dali_pretrain_loader

        train = build_dali_pretrain_loader(
            d.dataset, d.train_path, recipes, batch_size=cfg.optimizer.batch_size, num_workers=d.num_workers,
            device=d.get("dali_device", "auto"), subset=d.train_subset, seed=cfg.seed,
        )
    else:
        train = build_pretrain_loader(
            d.dataset, d.train_path, recipes, batch_size=cfg.optimizer.batch_size, num_workers=d.num_workers,
            download=d.download, subset=d.train_subset, seed=cfg.seed,
        )
    val = None
    if cfg.limit_val_batches:
        val = build_eval_loader(
            d.dataset, d.val_path, train=False, batch_size=cfg.optimizer.batch_size, num_workers=d.num_workers,
            download=d.download, subset=d.val_subset, seed=cfg.seed,
        )
    return train, val


def resume_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint to resume from: --resume_from_checkpoint, else with --auto_resume the run's last.ckpt.

    Without a last.ckpt (a run killed between the two files of its first checkpoint), --auto_resume takes the
    newest ``epoch=E-step=S.ckpt`` beside it; temporary files of an interrupted write are never read.
    """
    if cfg.checkpoint.get("resume_from"):
        return str(cfg.checkpoint.resume_from)
    if not cfg.checkpoint.auto_resume:
        return None
    folder = Path(cfg.checkpoint.dir)
    last = folder / "last.ckpt"
    if last.exists():
        return str(last)
    saved = [(int(m["step"]), str(f)) for f in folder.glob("epoch=*-step=*.ckpt")
             if (m := STEP_CHECKPOINT.fullmatch(f.name))]
    return max(saved)[1] if saved else None


def resumed_config(cfg: DictConfig, ckpt: str) -> tuple[DictConfig, int]:
    """The config of a run resumed from `ckpt` (the checkpoint's seed in place of --seed) and the checkpoint's step.

    Subsets, order, augmentations and every other draw of the resumed run follow the run it continues. A file
    that cannot be read is a UsageError naming the flag and the file (nothing is written or removed).
    """
    flag = "--resume_from_checkpoint" if cfg.checkpoint.get("resume_from") else "--auto_resume"
    try:
        info = read_checkpoint_info(ckpt)
    except UnreadableCheckpointError as exc:
        raise UsageError(f"{flag}: {exc}; nothing was changed, give another checkpoint with "
                         "--resume_from_checkpoint") from None
    if info.seed != cfg.seed:
        rank_zero_warn(f"resuming {ckpt} under its seed {info.seed}; --seed {cfg.seed} applies to new runs only")
        cfg = copy.deepcopy(cfg)
        cfg.seed = info.seed
    return cfg, info.global_step


def data_position(cfg: DictConfig, train_loader: Any) -> DataPosition | None:
    """What TrainingPosition positions: a device-data loader itself, a torchvision loader's EpochSampler;
    None for DALI, whose reader keeps its own order."""
    if cfg.data.get("format") == "device":
        return train_loader
    sampler = getattr(train_loader, "sampler", None)
    return sampler if isinstance(sampler, EpochSampler) else None


def build_trainer(
    cfg: DictConfig, callbacks: list[pl.Callback], run_dir: Path, resume_step: int | None = None
) -> pl.Trainer:
    """A Lightning Trainer with a CSV logger in run_dir (and W&B when asked), atomic checkpoints, RNG state.

    `resume_step`: the optimizer step of the checkpoint a resumed run starts from (its metrics.csv is appended to).
    """
    loggers: list[Any] = [
        ResumableCSVLogger(save_dir=str(run_dir.parent), name=run_dir.name, version="",
                           append=resume_step is not None, resume_step=resume_step)
    ]
    if cfg.logging.wandb:
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(WandbLogger(name=cfg.name, project=cfg.logging.project, save_dir=str(run_dir)))
    gpu, log_every = uses_gpu(cfg), log_every_n_steps(cfg)
    # on a GPU nothing reads a device value back between metric writes: the loss check and the bar follow them
    callbacks = [*callbacks, RNGState(), EpochMeans(), NonFiniteLossGuard(check_every=log_every if gpu else 1),
                 StepProgressBar(refresh_rate=log_every if gpu else 1)]
    if cfg.checkpoint.enabled:
        every = cfg.checkpoint.get("every_n_steps")
        # save_top_k=1 without a monitor keeps the newest {epoch}-{step}.ckpt; Lightning writes last.ckpt only
        # beside such a save (with save_top_k=0 it would write it once, at the end of fit)
        callbacks.append(
            ModelCheckpoint(
                dirpath=cfg.checkpoint.dir, filename="{epoch}-{step}", save_last=True, save_top_k=1,
                every_n_epochs=None if every else cfg.checkpoint.get("frequency", 1), every_n_train_steps=every,
            )
        )
    drop_lightning_tips()  # Lightning's litlogger advertisement; its other messages and warnings stay
    # torch's SyncBatchNorm runs only on accelerators: on CPU solo-ema's LayerSync synchronises the BatchNorms
    cpu_sync = bool(cfg.sync_batchnorm) and not gpu
    return pl.Trainer(
        plugins=[AtomicCheckpointIO(), *([CPUSyncBatchNorm()] if cpu_sync else [])],
        max_epochs=cfg.max_epochs,
        max_steps=cfg.max_steps,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        accelerator=cfg.accelerator,
        strategy=cfg.strategy,
        precision=resolve_precision(cfg),
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        sync_batchnorm=bool(cfg.sync_batchnorm) and not cpu_sync,
        limit_val_batches=cfg.limit_val_batches,
        check_val_every_n_epoch=cfg.check_val_every_n_epoch,
        num_sanity_val_steps=0,
        logger=loggers,
        callbacks=callbacks,
        log_every_n_steps=log_every,
        benchmark=True if gpu else None,  # cudnn picks the fastest kernels for the run's fixed shapes
        enable_checkpointing=bool(cfg.checkpoint.enabled),
        enable_model_summary=False,
        default_root_dir=str(run_dir),
    )


def run_pretrain(cfg: DictConfig, extra_callbacks: list[pl.Callback] | None = None) -> RunResult:
    """Pretrain one method from a resolved config; metrics go to <log_dir>/<name>/metrics.csv.

    A resumed run (--auto_resume, --resume_from_checkpoint) runs under the checkpoint's seed.
    """
    ckpt, step = resume_checkpoint(cfg), None
    if ckpt is not None:
        cfg, step = resumed_config(cfg, ckpt)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    run_dir = Path(cfg.logging.log_dir) / cfg.name
    fresh = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _fit(cfg, run_dir, ckpt, step, extra_callbacks)
    except BaseException:
        if fresh and not (run_dir / "metrics.csv").exists():
            shutil.rmtree(run_dir, ignore_errors=True)  # a run that failed before its first step leaves nothing
        raise


def _fit(
    cfg: DictConfig, run_dir: Path, ckpt: str | None, step: int | None, extra_callbacks: list[pl.Callback] | None
) -> RunResult:
    train_loader, val_loader = build_loaders(cfg)
    model = build_model(cfg)  # the run's one build (an EMASpecError here is a bad --ema_parts sub-part)
    if not cfg.performance.disable_channel_last and uses_gpu(cfg):
        model = model.to(memory_format=torch.channels_last)
    if cfg_get(cfg, "performance.compile", False):
        compile_stages(model, backend=cfg_get(cfg, "performance.compile_backend", "inductor"))
    timer = StepTimer()
    try:
        analysis = analysis_callbacks(cfg, model, run_dir)
    except TrackWeightsError as exc:
        raise UsageError(f"--track_weights: {exc}") from None
    cost = cost_of_model(model)
    print(format_cost(cost), flush=True)
    cost_logger = CostLogger(cost, timer)
    placement = [DevicePlacement(train_loader, val_loader)] if cfg.data.get("format") == "device" else []
    position = data_position(cfg, train_loader)
    trainer = build_trainer(
        cfg, [*placement, timer, cost_logger, *([TrainingPosition(position)] if position else []), *analysis,
              *(extra_callbacks or [])], run_dir, resume_step=step,
    )
    resolved = OmegaConf.to_container(cfg, resolve=True)
    (run_dir / "config.json").write_text(json.dumps({**resolved, "cost": cost}, indent=2, sort_keys=True))
    with warnings.catch_warnings():
        if position is not None:  # TrainingPosition resumes the loader: Lightning's warning that it cannot is wrong
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
        trainer.fit(model, train_loader, val_loader, ckpt_path=ckpt)
    cost = {**cost_logger.cost, **cost_logger.measured(trainer.num_training_batches)}
    print(format_cost(cost), flush=True)
    (run_dir / "cost.json").write_text(json.dumps(cost, indent=2))
    return RunResult(model=model, trainer=trainer, timer=timer, run_dir=run_dir, cost=cost)
