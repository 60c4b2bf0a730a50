"""Two-process CPU (gloo) DDP runs of MoCo v2+, DINO, SimCLR and ReSSL, one after the other in the same two
processes; after each optimizer step every rank dumps what the tests compare (momentum copies, queue and the
keys it enqueued, DINO's centre and teacher outputs, SimCLR's NT-Xent inputs and loss) to OUT/<method>/.
Lightning re-runs this script for rank 1.

    python ddp_run.py DATA OUT [METHOD ...]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

import solo_ema.methods.simclr as simclr
from solo_ema.pretrain import build_cfg
from solo_ema.train import run_pretrain

METHODS = {
    "mocov2plus": ["--ema_parts", "projector", "--proj_hidden_dim", "32", "--proj_output_dim", "16",
                   "--queue_size", "32", "--max_steps", "3"],
    "dino": ["--ema_parts", "projector", "--proj_hidden_dim", "32", "--proj_output_dim", "16",
             "--num_prototypes", "64", "--max_steps", "2"],
    "simclr": ["--ema_parts", "none", "--proj_hidden_dim", "32", "--proj_output_dim", "16", "--max_steps", "2"],
    "ressl": ["--ema_parts", "projector", "--proj_hidden_dim", "32", "--proj_output_dim", "16",
              "--queue_size", "32", "--max_steps", "2"],
}


def _clone(x: Any) -> Any:
    return x.detach().clone() if isinstance(x, torch.Tensor) else x


class Dump(pl.Callback):
    """Records, per optimizer step, what the method did with this rank's batch, and saves it with its state."""

    def __init__(self, out: Path) -> None:
        self.out = out
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

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        simclr.nt_xent = self._nt_xent

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.step = {"indexes": batch[0].clone()}
        if hasattr(pl_module, "center"):
            self.step["center_before"] = pl_module.center.detach().clone()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        state = {**self.step, "momentum": {k: v.detach().clone() for k, v in pl_module.ema.copies.state_dict().items()}}
        for name in ("queue", "center"):
            if hasattr(pl_module, name):
                state[name] = getattr(pl_module, name).detach().clone()
        if hasattr(pl_module, "queue_ptr"):
            state["queue_ptr"] = int(pl_module.queue_ptr)
        torch.save(state, self.out / f"rank{trainer.global_rank}_step{trainer.global_step}.pt")


def main() -> None:
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(1)
    for method in sys.argv[3:] or list(METHODS):
        cfg = build_cfg([
            "--method", method, "--dataset", "custom", "--data_dir", str(data), "--crop_size", "16",
            "--batch_size", "4", "--max_epochs", "1", "--num_workers", "0", "--limit_val_batches", "0",
            "--devices", "2", "--accelerator", "cpu", "--strategy", "ddp", "--log_dir", str(out / "runs"),
            "--name", f"ddp-{method}", "--optimizer", "sgd", "--lr", "0.1", *METHODS[method],
        ])
        run_pretrain(cfg, extra_callbacks=[Dump(out / method)])


if __name__ == "__main__":
    main()
