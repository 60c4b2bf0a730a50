"""Two-process CPU (gloo) DDP runs, one after the other in the same two processes, each dumping what
tests/test_ddp.py compares to OUT/<run>/:

- mocov2plus, dino, simclr, ressl: after each optimizer step the momentum copies, the queue and the keys it
  enqueued, DINO's centre and teacher outputs, SimCLR's NT-Xent inputs and loss;
- simclr-syncbn (``--ema_parts projector --sync_batchnorm --knn_metric paper``) and mocov2plus-syncbn
  (``--ema_parts all --sync_batchnorm --knn_metric cosine``): also the model's state before the first step, that
  step's batch and its gradients after backward (as DDP averaged them), every BatchNorm buffer after each step,
  and the features and labels behind the kNN figure (training features of each step, validation features);
- resume-straight, resume-split (killed as step 4 starts, after the checkpoint of step 3), resume-resumed (``--seed 6
  --auto_resume``): MoCo v2+ ``all`` in deterministic mode, a digest of every tensor each rank ends with
  (model, optimizer, schedule) and the image indexes each rank trained on;
- syncbn-unit (after a run: it uses the runs' process group): CPUSyncBatchNorm2d on each rank's own random batch,
  its inputs, outputs, gradients and running statistics.

Lightning re-runs this script for rank 1. FOLDER is a custom image folder (16-pixel crops), IDX a folder of
Fashion-MNIST-format idx files (32x32 images, validated at that size) for the runs with the kNN on.

    python ddp_run.py FOLDER IDX OUT [RUN ...]
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist

import solo_ema.methods.simclr as simclr
from solo_ema.engine.sync_bn import CPUSyncBatchNorm2d
from solo_ema.pretrain import build_cfg
from solo_ema.train import run_pretrain

TINY = ["--proj_hidden_dim", "32", "--proj_output_dim", "16"]
# One whole epoch (16 images, 2 x 4 a step: 2 steps), then the kNN (k = 1) on the same 16 images: 32x32, the crops
# unaugmented, so a validation image's nearest training feature is its own crop's when both ranks' banks are searched.
KNN = ["--dataset", "fashion_mnist", "--crop_size", "32", "--min_scale", "1.0", "--color_jitter_prob", "0",
       "--gray_scale_prob", "0", "--horizontal_flip_prob", "0", "--knn_k", "1", "--limit_val_batches", "1.0"]
RESUME = ["--ema_parts", "all", *TINY, "--queue_size", "32", "--max_epochs", "2", "--max_steps", "5"]
RUNS: dict[str, tuple[str, list[str]]] = {
    "mocov2plus": ("mocov2plus", ["--ema_parts", "projector", *TINY, "--queue_size", "32", "--max_steps", "3"]),
    "dino": ("dino", ["--ema_parts", "projector", *TINY, "--num_prototypes", "64", "--max_steps", "2"]),
    "simclr": ("simclr", ["--ema_parts", "none", *TINY, "--max_steps", "2"]),
    "ressl": ("ressl", ["--ema_parts", "projector", *TINY, "--queue_size", "32", "--max_steps", "2"]),
    "simclr-syncbn": ("simclr", ["--ema_parts", "projector", *TINY, "--sync_batchnorm", "--knn_metric", "paper",
                                 *KNN]),
    "mocov2plus-syncbn": ("mocov2plus", ["--ema_parts", "all", *TINY, "--queue_size", "32", "--sync_batchnorm",
                                         "--knn_metric", "cosine", *KNN]),
    "resume-straight": ("mocov2plus", RESUME),
    "resume-split": ("mocov2plus", [*RESUME, "--save_checkpoint", "--checkpoint_every_n_steps", "3"]),
    "resume-resumed": ("mocov2plus", [*RESUME, "--seed", "6", "--auto_resume"]),  # from resume-split's last.ckpt
}
PREEMPT_AT = 3  # resume-split stops as optimizer step 4 starts, after the checkpoint of step 3


def _clone(x: Any) -> Any:
    return x.detach().clone() if isinstance(x, torch.Tensor) else x


def _bn_buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every BatchNorm buffer (running mean / var, batches tracked) of the module, by state-dict name."""
    names = ("running_mean", "running_var", "num_batches_tracked")
    return {k: v.detach().clone() for k, v in module.state_dict().items() if k.rsplit(".", 1)[-1] in names}


class Dump(pl.Callback):
    """Records, per optimizer step, what the method did with this rank's batch, and saves it with its state.

    ``full``: also the state before the first step, the first batch and its gradients, and the BN buffers.
    """

    def __init__(self, out: Path, full: bool = False) -> None:
        self.out = out
        self.full = full
        self.step: dict[str, Any] = {}
        self._nt_xent = simclr.nt_xent

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        target = pl_module.momentum_forward

        def recording_target(x: torch.Tensor) -> dict[str, torch.Tensor]:
            out = target(x)
            self.step.setdefault("teacher", []).append(out["z"].detach().clone())
            return out

        pl_module.momentum_forward = recording_target
        if hasattr(pl_module, "dequeue_and_enqueue"):
            enqueue = pl_module.dequeue_and_enqueue

            def recording_enqueue(keys: torch.Tensor) -> None:
                self.step["keys"] = keys.detach().clone()
                enqueue(keys)

            pl_module.dequeue_and_enqueue = recording_enqueue

        def recording_nt_xent(*args: Any) -> torch.Tensor:
            loss = self._nt_xent(*args)
            names = ("anchors", "anchor_index", "anchor_view", "candidates", "candidate_index", "candidate_view")
            self.step.update({n: _clone(a) for n, a in zip(names, args, strict=False)})
            self.step["nce_loss"] = loss.detach().clone()
            return loss

        simclr.nt_xent = recording_nt_xent

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.full and trainer.global_rank == 0:  # DDP started both ranks from rank 0's weights
            state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
            torch.save(state, self.out / "initial_state.pt")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        simclr.nt_xent = self._nt_xent

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.step = {"indexes": batch[0].clone()}
        if self.full and trainer.global_step == 0:
            self.step["batch"] = [batch[0].clone(), [x.clone() for x in batch[1]], batch[2].clone()]
        if hasattr(pl_module, "center"):
            self.step["center_before"] = pl_module.center.detach().clone()

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.full and trainer.global_step == 0:
            self.step["grads"] = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters()
                                  if p.grad is not None}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        state = dict(self.step)
        if self.full:
            state["bn_buffers"] = _bn_buffers(pl_module)
        else:
            state["momentum"] = {k: v.detach().clone() for k, v in pl_module.ema.copies.state_dict().items()}
        for name in ("queue", "center"):
            if hasattr(pl_module, name):
                state[name] = getattr(pl_module, name).detach().clone()
        if hasattr(pl_module, "queue_ptr"):
            state["queue_ptr"] = int(pl_module.queue_ptr)
        torch.save(state, self.out / f"rank{trainer.global_rank}_step{trainer.global_step}.pt")


class KNNFeatures(pl.Callback):
    """The online features behind the kNN figure: every training forward of the epoch and every validation one.

    It also makes every BatchNorm keep its running statistics as the mean over all batches (momentum None): after
    2 steps the evaluation-mode validation features are then close to the training-mode ones (with momentum 0.1
    they still lean on the initial 0 / 1), so an image's nearest training feature is its own crop's.
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        self.labels: torch.Tensor | None = None
        self.train: list[tuple[torch.Tensor, torch.Tensor]] = []  # (features, labels), crop 0, crop 1, per step
        self.val: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for module in pl_module.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.momentum = None
        features = pl_module.features

        def recording_features(X: torch.Tensor) -> torch.Tensor:
            feats = features(X)
            (self.train if trainer.training else self.val).append((feats.detach().clone(), self.labels.clone()))
            return feats

        pl_module.features = recording_features

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.train = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.labels = batch[2]

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.labels = batch[1]

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch.save({"train": self.train, "val": self.val}, self.out / f"rank{trainer.global_rank}_knn.pt")
        self.val = []


class Preempted(Exception):
    """The job was killed."""


class PreemptAt(pl.Callback):
    """Kills the run on every rank as optimizer step `step` + 1 starts, after the checkpoint of step `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            raise Preempted(f"killed at step {self.step}")


class Batches(pl.Callback):
    """The image indexes of every batch this rank trained on."""

    def __init__(self) -> None:
        self.indexes: list[list[int]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.indexes.append(batch[0].tolist())


def _digest(t: torch.Tensor) -> str:
    t = t.detach().contiguous()
    return f"{t.dtype}{tuple(t.shape)}:" + hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def final_state(result) -> dict[str, str | float | int]:
    """A digest of every tensor (and each number) training carries on: model, optimizer, schedule."""
    state: dict[str, str | float | int] = {f"model.{k}": _digest(v) for k, v in result.model.state_dict().items()}
    opt = result.trainer.optimizers[0].state_dict()
    for pid, slots in opt["state"].items():
        state.update({f"opt.{pid}.{k}": _digest(v) if torch.is_tensor(v) else v for k, v in slots.items()})
    for i, group in enumerate(opt["param_groups"]):
        state[f"opt.group{i}.lr"] = group["lr"]
    for i, config in enumerate(result.trainer.lr_scheduler_configs):
        state[f"sched{i}.last_epoch"] = config.scheduler.last_epoch
    state["global_step"] = result.trainer.global_step
    return state


def syncbn_unit(out: Path) -> None:
    """CPUSyncBatchNorm on each rank's own batch (3 then 5 images, 4 channels, 3x2): what the test recomputes."""
    rank = dist.get_rank()
    torch.manual_seed(0)
    bn = CPUSyncBatchNorm2d(4, momentum=0.3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    weight, bias = bn.weight.detach().clone(), bn.bias.detach().clone()
    gen = torch.Generator().manual_seed(10 + rank)
    x = (torch.randn(3 + 2 * rank, 4, 3, 2, generator=gen) * 2 + 1).requires_grad_(True)
    probe = torch.randn(x.shape, generator=gen)
    y = bn(x)
    (y * probe).sum().backward()
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"x": x.detach(), "probe": probe, "y": y.detach(), "x_grad": x.grad, "weight": weight, "bias": bias,
                "weight_grad": bn.weight.grad, "bias_grad": bn.bias.grad, "running_mean": bn.running_mean,
                "running_var": bn.running_var, "num_batches_tracked": bn.num_batches_tracked},
               out / f"rank{rank}.pt")


def main() -> None:
    folder, idx, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    torch.set_num_threads(1)
    for run in sys.argv[4:] or [*RUNS, "syncbn-unit"]:
        if run == "syncbn-unit":
            syncbn_unit(out / run)
            continue
        method, flags = RUNS[run]
        name = "ddp-resume" if run.startswith("resume-") and run != "resume-straight" else f"ddp-{run}"
        cfg = build_cfg([
            "--method", method, "--dataset", "custom", "--crop_size", "16",
            "--data_dir", str(idx if "fashion_mnist" in flags else folder),
            "--batch_size", "4", "--max_epochs", "1", "--num_workers", "0", "--limit_val_batches", "0",
            "--devices", "2", "--accelerator", "cpu", "--strategy", "ddp", "--log_dir", str(out / "runs"),
            "--name", name, "--optimizer", "sgd", "--lr", "0.1", *flags,
        ])
        if not run.startswith("resume-"):
            full = run.endswith("-syncbn")
            callbacks = [Dump(out / run, full=full), *([KNNFeatures(out / run)] if full else [])]
            run_pretrain(cfg, extra_callbacks=callbacks)
            continue
        batches = Batches()
        callbacks = [batches, *([PreemptAt(PREEMPT_AT)] if run == "resume-split" else [])]
        torch.use_deterministic_algorithms(True)
        try:
            state = final_state(run_pretrain(cfg, extra_callbacks=callbacks))
        except Preempted:
            state = None
        finally:
            torch.use_deterministic_algorithms(False)
        (out / run).mkdir(parents=True, exist_ok=True)
        torch.save({"state": state, "batches": batches.indexes}, out / run / f"rank{dist.get_rank()}.pt")


if __name__ == "__main__":
    main()
