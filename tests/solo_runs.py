"""Running a shipped solo_configs/ YAML through solo-ema-solo-pretrain (hydra and solo-learn's own main_pretrain),
shrunk to a CPU run of a few steps: the argument list, a generated image folder, and a recorder of the fits.

Only sizes change (crops, batch, heads, queue), the data (a generated image folder as solo-learn's 'custom'
dataset) and the machine (CPU, 32-bit, no DDP); the method, momentum.parts, taus, optimiser and augmentations
are the YAML's (and its overrides'). Used by the plug-in's tests; imports solo-learn's hydra, not solo-learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import hydra
import lightning.pytorch as pl
import pytest
import torch
from omegaconf import DictConfig
from PIL import Image

from solo_ema import solo_pretrain

ROOT = Path(__file__).resolve().parents[1]
BATCH = 4
#: the heads (and queues) of every method, shrunk; a key is set only where the YAML's method_kwargs has it
SMALL_METHOD_KWARGS = {
    "proj_hidden_dim": 32,
    "proj_output_dim": 16,
    "pred_hidden_dim": 32,
    "num_prototypes": 32,
    "queue_size": 4 * BATCH,
}


def compose(path: Path, overrides: Sequence[str] = ()) -> DictConfig:
    """The config hydra composes from a YAML of solo_configs/ (its defaults and overrides applied)."""
    with hydra.initialize_config_dir(config_dir=str(path.parent), version_base="1.2"):
        return hydra.compose(config_name=path.name, overrides=list(overrides))


def image_folder(root: Path, classes: int = 2, per_class: int = BATCH, size: int = 36) -> Path:
    """A tiny folder of random RGB PNGs, one sub-folder per class (solo-learn's 'custom' dataset)."""
    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


def small_argv(path: Path, train: Path, overrides: Sequence[str] = (), *extra: str) -> list[str]:
    """solo-ema-solo-pretrain's arguments for a YAML (and row overrides) on `train`, shrunk to a CPU run.

    `extra` come last (e.g. ``++max_steps=2``, the checkpoint settings). Large crops become 32 px and small
    ones 16 px; the heads and queues shrink to SMALL_METHOD_KWARGS where they are larger.
    """
    composed = compose(path, overrides)
    large = composed.augmentations[0].crop_size  # solo-learn: crops of the first pipeline's size are the large ones
    shrink = [
        f"++augmentations.{i}.crop_size={32 if aug.crop_size == large else 16}"
        for i, aug in enumerate(composed.augmentations)
    ] + [f"++method_kwargs.{k}={min(v, composed.method_kwargs[k])}" for k, v in SMALL_METHOD_KWARGS.items()
         if k in composed.method_kwargs]  # a YAML's smaller head (Table 2's 2-unit projector) stays as it is
    return [
        "--config-path",
        str(path.parent),
        "--config-name",
        path.name,
        "hydra/job_logging=none",
        "hydra/hydra_logging=none",
        *overrides,
        "++data.dataset=custom",
        f"++data.train_path={train}",
        "++data.val_path=null",
        "++data.format=image_folder",
        "++data.num_workers=0",
        f"++optimizer.batch_size={BATCH}",
        "++accelerator=cpu",
        '++devices="1"',
        "++strategy=auto",
        "++precision=32",
        "++sync_batchnorm=False",
        "++wandb.enabled=False",
        "++enable_progress_bar=False",
        *shrink,
        *extra,
    ]


class FitRecorder:
    """Wraps ``Trainer.fit`` for a test: adds callbacks to each fit and records (trainer, model, start parameters)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, callbacks: Sequence[pl.Callback] = ()) -> None:
        self.runs: list[tuple[pl.Trainer, pl.LightningModule, dict[str, torch.Tensor]]] = []
        self.callbacks = list(callbacks)
        fit = getattr(pl.Trainer.fit, "unrecorded", pl.Trainer.fit)  # a later recorder replaces an earlier one

        def recording_fit(trainer, model, *args, **kwargs):
            start = {n: p.detach().clone() for n, p in model.named_parameters()}
            self.runs.append((trainer, model, start))
            trainer.callbacks.extend(self.callbacks)
            return fit(trainer, model, *args, **kwargs)

        recording_fit.unrecorded = fit
        monkeypatch.setattr(pl.Trainer, "fit", recording_fit)


def run(argv: Sequence[str], monkeypatch: pytest.MonkeyPatch, cwd: Path) -> None:
    """solo-ema-solo-pretrain on `argv` from the folder `cwd` (hydra and sys.argv restored afterwards)."""
    monkeypatch.setattr("sys.argv", ["solo-ema-solo-pretrain"])
    monkeypatch.chdir(cwd)
    assert solo_pretrain.main(list(argv)) == 0
