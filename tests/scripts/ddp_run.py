"""Two-process CPU (gloo) DDP run of MoCo v2+ that dumps, per rank and step, the momentum parameters,
the queue and this rank's keys; Lightning re-runs this script for rank 1."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch

from solo_ema.pretrain import build_cfg
from solo_ema.train import run_pretrain


class Dump(pl.Callback):
    """After each optimizer step: save the momentum copies, the queue and the keys this rank enqueued."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.keys: list[torch.Tensor] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        enqueue = pl_module.dequeue_and_enqueue

        def recording(keys: torch.Tensor) -> None:
            self.keys.append(keys.detach().clone())
            enqueue(keys)

        pl_module.dequeue_and_enqueue = recording

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        state = {
            "momentum": {k: v.detach().clone() for k, v in pl_module.ema.copies.state_dict().items()},
            "queue": pl_module.queue.detach().clone(),
            "queue_ptr": int(pl_module.queue_ptr),
            "keys": self.keys[-1],
        }
        torch.save(state, self.out / f"rank{trainer.global_rank}_step{trainer.global_step}.pt")


def main() -> None:
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(1)
    cfg = build_cfg([
        "--method", "mocov2plus", "--dataset", "custom", "--data_dir", str(data), "--crop_size", "16",
        "--batch_size", "4", "--max_steps", "3", "--max_epochs", "1", "--num_workers", "0",
        "--limit_val_batches", "0", "--devices", "2", "--accelerator", "cpu", "--strategy", "ddp",
        "--ema_parts", "projector", "--proj_hidden_dim", "32", "--proj_output_dim", "16", "--queue_size", "32",
        "--log_dir", str(out / "runs"), "--name", "ddp", "--optimizer", "sgd", "--lr", "0.1",
    ])
    run_pretrain(cfg, extra_callbacks=[Dump(out)])


if __name__ == "__main__":
    main()
