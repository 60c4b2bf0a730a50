"""Lightning bases with solo-learn's contract: BaseMethod and BaseMomentumMethod."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..data.catalog import SMALL_IMAGE_DATASETS
from ..ema import EMASpec, PartialEMA, Stage, check_taus, config_parts, resnet_stages, spec_paths
from .backbones import BACKBONES, build_backbone
from .callbacks import logs_this_step
from .config import cfg_default, cfg_get, cfg_require
from .defaults import DEFAULTS, fill_defaults
from .distributed import gather_uneven
from .knn import KNNBank, bank_capacity, bank_row_bytes, free_memory, gather_bank, knn_accuracy
from .lars import LARS
from .schedule import SCHEDULERS, build_scheduler

# the top-level config keys whose defaults BaseMethod fills from the table (momentum.*: BaseMomentumMethod)
BASE_CONFIG_KEYS = ("backbone", "max_epochs", "accumulate_grad_batches", "optimizer", "scheduler", "knn_eval",
                    "performance", "method_kwargs")


def accuracy_at_k(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> list[torch.Tensor]:
    """Top-k accuracies in percent, ignoring targets < 0 (0 when none is left).

    No boolean-mask indexing: the count of kept targets stays on the device, so this never waits for it.
    """
    kept = (targets >= 0).sum().clamp(min=1).float()
    top = logits.topk(min(max(ks), logits.size(1)), dim=1).indices
    hit = top.eq(targets[:, None])  # a target < 0 matches no class
    return [hit[:, : min(k, top.size(1))].any(dim=1).float().sum() / kept * 100 for k in ks]


def classifier_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """A classifier's cross-entropy (targets of -1 ignored) and its top-1/top-5 accuracy in percent."""
    acc1, acc5 = accuracy_at_k(logits.detach(), targets)
    return {"loss": F.cross_entropy(logits, targets, ignore_index=-1), "acc1": acc1, "acc5": acc5}


class BaseMethod(pl.LightningModule):
    """Backbone + online linear classifier on detached features; subclasses add heads and an SSL loss."""

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__()
        cfg = self.add_and_assert_specific_cfg(cfg)
        self.cfg = cfg
        self.save_hyperparameters({"cfg": OmegaConf.to_container(cfg, resolve=True)})
        small = cfg.data.dataset in SMALL_IMAGE_DATASETS
        self.backbone, self.features_dim = build_backbone(
            cfg.backbone.name, small_stem=small, **OmegaConf.to_container(cfg.backbone.kwargs)
        )
        self.num_classes = int(cfg.data.num_classes)
        self.classifier = nn.Linear(self.features_dim, self.num_classes)
        self.num_large_crops = int(cfg.data.num_large_crops)
        self.num_small_crops = int(cfg.data.num_small_crops)
        self.num_crops = self.num_large_crops + self.num_small_crops
        self.channels_last = not cfg.performance.disable_channel_last
        self.knn_bank = KNNBank(max_size=cfg.knn_eval.max_train) if cfg.knn_eval.enabled else None
        # solo-learn 1.0.x (the paper's KNN-1) banked the features of every large crop; solo-ema's own kNN the first
        self.knn_bank_crops = self.num_large_crops if cfg.knn_eval.distance_func == "paper" else 1
        self.knn_val = KNNBank() if cfg.knn_eval.enabled else None
        self.validation_step_outputs: list[dict[str, Any]] = []
        # BN1 of the paper's Table C.8, on the pooled backbone output (where: method_kwargs.bn1_position)
        self.feats_bn = nn.BatchNorm1d(self.features_dim) if cfg.method_kwargs.bn_backbone_out else None
        self.bn1_on_backbone = self.feats_bn is not None and cfg.method_kwargs.bn1_position == "backbone"
        self.build_heads()

    # configuration -----------------------------------------------------------------------------
    @staticmethod
    def add_and_assert_specific_cfg(cfg: DictConfig) -> DictConfig:
        """Fill the defaults of the base keys and check the required ones."""
        OmegaConf.set_struct(cfg, False)
        cfg_require(cfg, "method")
        cfg_require(cfg, "data.dataset")
        for key, value in (("backbone.kwargs", {}), ("data.num_classes", 10), ("data.num_large_crops", 2),
                           ("data.num_small_crops", 0), ("optimizer.kwargs", {}), ("method_kwargs", {})):
            cfg_default(cfg, key, value)
        fill_defaults(cfg, BASE_CONFIG_KEYS)
        if cfg.backbone.name not in BACKBONES:
            raise ValueError(f"backbone.name must be one of {', '.join(BACKBONES)}")
        if cfg.scheduler.name not in SCHEDULERS:
            raise ValueError(f"scheduler.name must be one of {', '.join(SCHEDULERS)}")
        # solo-learn 1.0.x kept the whole epoch's bank; solo-ema's own kNN keeps the last 50k samples
        if cfg_get(cfg, "knn_eval.max_train") is None:
            cfg.knn_eval.max_train = None if cfg.knn_eval.distance_func == "paper" else 50000
        return cfg

    def build_heads(self) -> None:
        """Create the method's heads (projector, predictor, ...); the base method has none."""

    def feature_stages(self) -> list[str]:
        """Module paths run on the backbone output before the projector (e.g. a BatchNorm)."""
        return ["feats_bn"] if self.feats_bn is not None else []

    def features(self, X: torch.Tensor) -> torch.Tensor:
        """The features the classifier, the kNN and the heads see: the backbone output (BN1 on it when
        ``bn1_position`` is ``backbone``)."""
        feats = self.backbone(self.to_input(X))
        return self.feats_bn(feats) if self.bn1_on_backbone else feats

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        """The projector on the features (through BN1 first when it sits in the projector path)."""
        if self.feats_bn is not None and not self.bn1_on_backbone:
            feats = self.feats_bn(feats)
        return self.projector(feats)

    def head_forward(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        """The method's heads on the backbone features of a crop (e.g. {'z', 'p'}); none in the base method."""
        return {}

    def with_projector_bn(self, projector: nn.Sequential, dim: int) -> nn.Sequential:
        """Append BN2 (``bn_out``, a BatchNorm1d(dim)) to a projector when ``bn_projector_out`` is set.

        BN2 of the paper's Table C.8 is the last layer of the projector, so it is part of the
        projector's momentum copy.
        """
        if self.cfg.method_kwargs.bn_projector_out:
            projector.add_module("bn_out", nn.BatchNorm1d(dim))
        return projector

    def encoder_stages(self) -> list[Stage]:
        """The encoder (backbone, then projector) as ordered stages for partial EMA.

        With BN1 on the backbone output, the target's ``feats`` are taken after BN1, as the online ones.
        """
        return resnet_stages("backbone", "projector", between=self.feature_stages(),
                             feats_at="feats_bn" if self.bn1_on_backbone else None)

    @property
    def learnable_params(self) -> list[dict[str, Any]]:
        """Parameter groups: backbone and classifier (and BN1); subclasses append their heads."""
        params = [
            {"name": "backbone", "params": self.backbone.parameters()},
            {
                "name": "classifier",
                "params": self.classifier.parameters(),
                "lr": self.cfg.optimizer.classifier_lr,
                "weight_decay": 0.0,
            },
        ]
        if self.feats_bn is not None:
            params.append({"name": "feats_bn", "params": self.feats_bn.parameters()})
        return params

    def configure_optimizers(self):
        """LARS or SGD over learnable_params, with a per-step warmup-cosine schedule."""
        opt_cfg = self.cfg.optimizer
        groups = [{**g, "params": list(g["params"])} for g in self.learnable_params]
        kwargs = OmegaConf.to_container(opt_cfg.kwargs)
        if opt_cfg.name == "lars":
            optimizer = LARS(groups, lr=opt_cfg.lr, weight_decay=opt_cfg.weight_decay, **kwargs)
        else:
            kwargs.setdefault("momentum", 0.9)
            optimizer = torch.optim.SGD(groups, lr=opt_cfg.lr, weight_decay=opt_cfg.weight_decay, **kwargs)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = cfg_get(self.cfg, "scheduler.warmup_steps")
        if warmup is None:
            per_epoch = max(1, math.ceil(total / max(1, self.trainer.max_epochs or 1)))
            if self.trainer.max_epochs in (None, -1):
                per_epoch = total
            warmup = int(self.cfg.scheduler.warmup_epochs * per_epoch)
        scheduler = build_scheduler(
            optimizer,
            self.cfg.scheduler.name,
            warmup_steps=min(int(warmup), total),
            total_steps=total,
            warmup_start_lr=self.cfg.scheduler.warmup_start_lr,
            min_lr=self.cfg.scheduler.min_lr,
        )
        if scheduler is None:
            return optimizer
        return [optimizer], [{"scheduler": scheduler, "interval": "step", "frequency": 1}]

    # forward -----------------------------------------------------------------------------------
    def to_input(self, X: torch.Tensor) -> torch.Tensor:
        """The tensor the backbone sees: channels_last on GPU unless disabled (it is slower on CPU)."""
        return X.to(memory_format=torch.channels_last) if self.channels_last and X.is_cuda else X

    def forward(self, X: torch.Tensor) -> dict[str, torch.Tensor]:
        """Online backbone features, classifier logits (on detached features) and the heads' outputs."""
        feats = self.features(X)
        return {"feats": feats, "logits": self.classifier(feats.detach()), **self.head_forward(feats)}

    def multicrop_forward(self, X: torch.Tensor) -> dict[str, torch.Tensor]:
        """Forward of a small crop: backbone features and the heads' outputs (no classifier)."""
        feats = self.features(X)
        return {"feats": feats, **self.head_forward(feats)}

    def base_training_step(self, X: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        """Online forward of one large crop plus the online classifier's loss and accuracy."""
        out = self(X)
        return {**out, **classifier_metrics(out["logits"], targets)}

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> dict[str, Any]:
        """Run every crop online; returns per-crop lists and the classifier loss (subclasses add theirs)."""
        _, X, targets = batch
        X = [X] if isinstance(X, torch.Tensor) else list(X)
        if len(X) != self.num_crops:
            raise ValueError(f"batch has {len(X)} crops, the config says {self.num_crops}")
        per_crop = [self.base_training_step(x, targets) for x in X[: self.num_large_crops]]
        outs: dict[str, Any] = {k: [o[k] for o in per_crop] for k in per_crop[0]}
        for x in X[self.num_large_crops :]:
            for k, v in self.multicrop_forward(x).items():
                outs.setdefault(k, []).append(v)
        for key in ("loss", "acc1", "acc5"):
            outs[key] = sum(outs[key]) / self.num_large_crops
        self.log_dict(
            {"train_class_loss": outs["loss"], "train_acc1": outs["acc1"], "train_acc5": outs["acc5"]},
            on_epoch=True,
            sync_dist=True,
        )
        if self.knn_bank is not None:
            feats = torch.cat(outs["feats"][: self.knn_bank_crops])
            # unlabelled samples (-1) stay in the bank, never neighbours: dropping them here would wait on the device
            self.knn_bank.add(feats, targets.repeat(self.knn_bank_crops))
        return outs

    def validation_step(self, batch: Sequence[Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Online classifier loss/accuracy on a validation batch (and features for the kNN)."""
        X, targets = batch
        out = self(X)
        out.update(classifier_metrics(out["logits"], targets))
        if self.knn_val is not None:
            self.knn_val.add(out["feats"], targets)
        metrics = {"batch_size": X.size(0), "val_loss": out["loss"], "val_acc1": out["acc1"], "val_acc5": out["acc5"]}
        metrics.update(self.momentum_validation_metrics(X, targets))
        self.validation_step_outputs.append(metrics)
        return metrics

    def momentum_validation_metrics(self, X: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        """Extra validation metrics of the momentum branch (none in the base method)."""
        return {}

    def on_validation_epoch_end(self) -> None:
        """Log batch-size weighted means of the validation metrics and the kNN accuracy."""
        outputs, self.validation_step_outputs = self.validation_step_outputs, []
        if outputs:
            total = sum(o["batch_size"] for o in outputs)
            keys = [k for k in outputs[0] if k != "batch_size"]
            means = {k: sum(float(o[k]) * o["batch_size"] for o in outputs) / total for k in keys}
            self.log_dict(means, sync_dist=True)
        if self.knn_bank is not None and self.knn_val is not None and len(self.knn_val) and len(self.knn_bank):
            # every process's bank, streamed in chunks by the kNN on the validation features' device
            bank, bank_y = gather_bank(self, self.knn_bank, self.device)
            val = gather_uneven(self, self.knn_val.features().to(self.device))
            val_y = gather_uneven(self, self.knn_val.labels().to(self.device))
            if sum(int((y >= 0).sum()) for y in bank_y):
                acc1, acc5 = knn_accuracy(
                    bank,
                    bank_y,
                    val,
                    val_y,
                    self.num_classes,
                    k=self.cfg.knn_eval.k,
                    temperature=self.cfg.knn_eval.temperature,
                    distance=self.cfg.knn_eval.distance_func,
                )
                self.log_dict({"val_knn_acc1": acc1, "val_knn_acc5": acc5}, sync_dist=True)
        if self.knn_val is not None:
            self.knn_val.reset()

    def on_fit_start(self) -> None:
        """Size the epoch's kNN bank before the first step: a UsageError if it cannot fit, else its device share."""
        if self.knn_bank is not None:
            self.knn_bank.capacity_bytes = self.knn_bank_capacity()

    def knn_bank_capacity(self) -> int | None:
        """The bytes of its kNN bank this process keeps on its device (``knn.bank_capacity``); None: no limit.

        The bank of an epoch: batches per epoch x batch size x banked crops (at most ``knn_eval.max_train`` plus
        a batch) samples of ``features_dim`` features, 4 bytes each (8 at 64-bit precision, 2 at 16-bit true
        precision). Every process compares it with the least free memory of all processes, so all agree.
        """
        trainer = self.trainer
        if trainer.train_dataloader is None:  # configure_optimizers has usually loaded it already
            _ = trainer.estimated_stepping_batches  # loads the training loader
        batches = trainer.num_training_batches
        if not math.isfinite(batches):
            return None
        batch_rows = int(self.cfg.optimizer.batch_size) * self.knn_bank_crops
        rows = int(batches) * batch_rows
        if self.cfg.knn_eval.max_train is not None:
            rows = min(rows, int(self.cfg.knn_eval.max_train) + batch_rows)
        precision = str(trainer.precision)
        feat_bytes = 8 if precision.startswith("64") else 2 if precision in ("16-true", "bf16-true") else 4
        device_free, host_free = free_memory(self.device)
        free = torch.tensor([-1 if device_free is None else device_free, host_free], device=self.device)
        free = self.all_gather(free).view(-1, 2).min(0).values.tolist()
        metric = self.cfg.knn_eval.distance_func
        return bank_capacity(rows, bank_row_bytes(self.features_dim, feat_bytes), trainer.world_size,
                             None if free[0] < 0 else free[0], free[1] // max(1, trainer.num_devices),
                             f"--knn_eval/--knn_metric {metric}")

    def on_train_epoch_start(self) -> None:
        """Start a fresh kNN training bank each epoch."""
        if self.knn_bank is not None:
            self.knn_bank.reset()


class BaseMomentumMethod(BaseMethod):
    """BaseMethod plus a target branch whose EMA parts (``momentum.parts``) are momentum copies.

    Shared parts are not recomputed: the target pass starts from the online activation before the
    first EMA part, captured during the online pass of the same crop (``PartialEMA.capture`` /
    ``PartialEMA.target``). Validation runs the target pass from the images.
    """

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        m = self.cfg.momentum
        self.ema_spec = EMASpec.from_canonical(m.parts)  # resolved by add_and_assert_specific_cfg
        paths = spec_paths(self.ema_spec, "backbone", "projector")
        self.ema = PartialEMA(self, self.encoder_stages(), paths, m.base_tau, m.final_tau)
        self.momentum_classifier = nn.Linear(self.features_dim, self.num_classes) if m.classifier else None

    @staticmethod
    def add_and_assert_specific_cfg(cfg: DictConfig) -> DictConfig:
        """Add the momentum keys: base_tau, final_tau, classifier and this project's parts.

        ``momentum.parts`` (a spec string or a list of part names; default 'all') becomes its canonical string
        (``solo_ema.ema.config_parts``): a config that already holds it, such as the CLI's, is read, not resolved
        again. Older configs' ``momentum.parts_spec`` is dropped (``momentum.parts`` holds the same parts).
        """
        cfg = BaseMethod.add_and_assert_specific_cfg(cfg)
        base = cfg_default(cfg, "momentum.base_tau", DEFAULTS["momentum.base_tau"])
        final = cfg_default(cfg, "momentum.final_tau", DEFAULTS["momentum.final_tau"])
        check_taus(base, final)
        cfg_default(cfg, "momentum.classifier", DEFAULTS["momentum.classifier"])
        spec = config_parts(cfg_get(cfg, "momentum.parts"), base, final)
        cfg.momentum.parts = str(spec)
        if "parts_spec" in cfg.momentum:
            del cfg.momentum["parts_spec"]
        return cfg

    @property
    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, momentum) pairs of the EMA parts only."""
        return self.ema.pairs()

    @property
    def momentum_backbone(self) -> nn.Module | None:
        """The momentum copy of the whole backbone, when the spec keeps one."""
        return self.ema.copy_of("backbone") if "backbone" in self.ema.paths else None

    @property
    def momentum_projector(self) -> nn.Module | None:
        """The momentum copy of the projector, when the spec keeps one."""
        return self.ema.copy_of("projector") if "projector" in self.ema.paths else None

    @property
    def learnable_params(self) -> list[dict[str, Any]]:
        """Base groups plus the momentum classifier (trained on detached target features)."""
        params = super().learnable_params
        if self.momentum_classifier is not None:
            params.append(
                {
                    "name": "momentum_classifier",
                    "params": self.momentum_classifier.parameters(),
                    "lr": self.cfg.optimizer.classifier_lr,
                    "weight_decay": 0.0,
                }
            )
        return params

    def base_training_step(self, X: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        """Online step of one large crop, captured for the target pass of the same crop."""
        with self.ema.capture(X):
            return super().base_training_step(X, targets)

    @torch.no_grad()
    def momentum_forward(self, X: torch.Tensor) -> dict[str, torch.Tensor]:
        """Target features and projections of a crop: {'feats', 'z'}; subclasses post-process z."""
        return self.ema.target(X, self.to_input)

    def _shared_step_momentum(self, X: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        out = self.momentum_forward(X)
        if self.momentum_classifier is not None:
            logits = self.momentum_classifier(out["feats"].detach())
            out.update(logits=logits, **classifier_metrics(logits, targets))
        return out

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> dict[str, Any]:
        """Online pass of every crop, then the target pass of the large crops (``momentum_*`` keys)."""
        outs = super().training_step(batch, batch_idx)
        _, X, targets = batch
        X = [X] if isinstance(X, torch.Tensor) else list(X)
        per_crop = [self._shared_step_momentum(x, targets) for x in X[: self.num_large_crops]]
        self.ema.clear()
        momentum = {f"momentum_{k}": [o[k] for o in per_crop] for k in per_crop[0]}
        if self.momentum_classifier is not None:
            for key in ("loss", "acc1", "acc5"):
                momentum[f"momentum_{key}"] = sum(momentum[f"momentum_{key}"]) / self.num_large_crops
            self.log_dict(
                {
                    "train_momentum_class_loss": momentum["momentum_loss"],
                    "train_momentum_acc1": momentum["momentum_acc1"],
                    "train_momentum_acc5": momentum["momentum_acc5"],
                },
                on_epoch=True,
                sync_dist=True,
            )
            outs["loss"] = outs["loss"] + momentum["momentum_loss"]
        outs.update(momentum)
        return outs

    def momentum_validation_metrics(self, X: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        """Momentum classifier metrics (the online pass was not captured: the target pass runs from images)."""
        if self.momentum_classifier is None:
            return {}
        out = self._shared_step_momentum(X, targets)
        return {f"momentum_val_{k}": out[k] for k in ("loss", "acc1", "acc5")}

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Optimizer step, then one EMA update of the momentum parts with the scheduled tau."""
        super().optimizer_step(*args, **kwargs)
        self.ema.step(int(self.trainer.estimated_stepping_batches))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Log the tau of the last EMA update (on the steps whose metrics are written)."""
        if logs_this_step(self.trainer):
            self.log("tau", self.ema.last_tau, on_step=True, on_epoch=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the tau of the last EMA update (num_updates, the schedule position, is a buffer)."""
        checkpoint["ema_last_tau"] = float(self.ema.last_tau)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the tau of the last EMA update, so a resumed run logs what the uninterrupted one would."""
        self.ema.last_tau = float(checkpoint.get("ema_last_tau", self.ema.last_tau))
