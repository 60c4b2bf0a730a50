"""A plug-in run stopped and resumed through solo-learn's own auto_resume continues the EMA as if never stopped.

Two epochs of ``byol_ema`` (solo_configs' paper-era CIFAR YAML, shrunk to a CPU run, through
solo-ema-solo-pretrain, i.e. hydra and solo-learn's main_pretrain), three times: straight through; then stopped
after the first epoch, whose end solo-learn's Checkpointer saves; then the same command again, which solo-learn's
AutoResumer resumes from that checkpoint. Promised, for projector-only and whole-encoder EMA:

* the state the resumed run starts from (online weights, EMA copies, ``ema.num_updates``, BN statistics) is the
  straight run's after its first epoch, bitwise;
* the EMA updates of the resumed run continue the schedule: the k-th update of the resumed part uses the tau the
  straight run used at the same optimiser step (solo-learn keeps the next tau outside the checkpoint; the plug-in
  puts its schedule back at the run's global step);
* the end state (weights, copies, counters, BN statistics, the optimiser's momentum buffers) equals the straight
  run's, bitwise.

What is pinned to make the last point comparable: solo-learn's train loader shuffles (``shuffle=True``) and its
augmentations draw from the process's global random-number generators, which no checkpoint holds (Lightning's
does not), and Lightning creates the loader's iterator at different moments in an uninterrupted and in a resumed
run; so after a resume the batches and augmentation draws differ from an uninterrupted run's (solo-learn's and
Lightning's limitation, not the plug-in's). The test gives solo-learn's train loader (``prepare_dataloader``, as
main_pretrain builds it) a sampler that orders each epoch by the epoch number and reseeds torch, numpy and Python
from it when the epoch's iteration starts, so each epoch's data is a function of the epoch alone, stopped or not.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from conftest import use_solo_learn

use_solo_learn()

from lightning.pytorch import Callback  # noqa: E402
from solo.data import pretrain_dataloader  # noqa: E402
from solo_runs import ROOT, FitRecorder, image_folder, run, small_argv  # noqa: E402
from torch.utils.data import DataLoader, Sampler  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

CONFIG = ROOT / "solo_configs" / "pretrain" / "cifar" / "byol_ema_projector_paper.yaml"
EPOCHS = 2


class EpochSampler(Sampler[int]):
    """A shuffle that depends on the epoch alone (Lightning calls ``set_epoch``); reseeds the global generators
    (the augmentations') when an epoch's iteration starts."""

    def __init__(self, size: int) -> None:
        self.size, self.epoch = size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        seed = 1000 + self.epoch
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        yield from torch.randperm(self.size, generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.fixture
def epoch_seeded_loader(monkeypatch):
    """solo-learn's train loader (main_pretrain imports prepare_dataloader when each run loads it) with EpochSampler."""
    original = pretrain_dataloader.prepare_dataloader

    def prepare(dataset, *args, **kwargs) -> DataLoader:
        loader = original(dataset, *args, **kwargs)
        return DataLoader(dataset, batch_size=loader.batch_size, sampler=EpochSampler(len(dataset)),
                          num_workers=loader.num_workers, drop_last=loader.drop_last)

    monkeypatch.setattr(pretrain_dataloader, "prepare_dataloader", prepare)


class StopAfterFirstEpoch(Callback):
    """Stops the run at the end of epoch 0, after solo-learn's Checkpointer (an earlier callback) saved it."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 0:
            trainer.should_stop = True


class Journal(Callback):
    """The state at the start of the fit and after the first epoch, and (update count, tau) of every EMA update."""

    def __init__(self) -> None:
        self.start: dict[str, torch.Tensor] = {}
        self.after_first_epoch: dict[str, torch.Tensor] = {}
        self.updates: list[tuple[int, float]] = []

    def _note(self, pl_module) -> None:
        n = int(pl_module.ema.num_updates)
        if not self.updates or self.updates[-1][0] != n:
            self.updates.append((n, pl_module.ema.last_tau))

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # the first time: where the run starts (after the model's own on_train_start); then the update of the
        # previous batch, if it had one
        self._note(pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._note(pl_module)
        if trainer.current_epoch == 0:
            self.after_first_epoch = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def fit(argv: list[str], monkeypatch, cwd, *callbacks: Callback):
    """One solo-ema-solo-pretrain run with these callbacks added; returns (trainer, model, journal)."""
    journal = Journal()
    recorder = FitRecorder(monkeypatch, [journal, *callbacks])
    run(argv, monkeypatch, cwd)
    (trainer, model, _), = recorder.runs
    return trainer, model, journal


def _momentum_buffers(trainer) -> list[torch.Tensor]:
    optimizer = trainer.optimizers[0]
    return [optimizer.state[p]["momentum_buffer"] for group in optimizer.param_groups for p in group["params"]
            if "momentum_buffer" in optimizer.state[p]]


def _assert_equal_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different


@pytest.mark.usefixtures("epoch_seeded_loader")
@pytest.mark.parametrize("parts", ["projector", "all"])
def test_resume_through_solo_learns_auto_resume_continues_the_ema(parts: str, tmp_path, monkeypatch) -> None:
    # 10 images of 5 classes (solo-learn's momentum classifier measures top-5): 2 steps of 4 per epoch (drop_last)
    train = image_folder(tmp_path / "train", classes=5, per_class=2)

    def argv(checkpoints: str) -> list[str]:
        return small_argv(CONFIG, train, [f"++momentum.parts={parts}"], f"++max_epochs={EPOCHS}",
                          "++checkpoint.enabled=True", f"++checkpoint.dir={tmp_path / checkpoints}",
                          "++auto_resume.enabled=True")

    straight_trainer, straight, full = fit(argv("straight"), monkeypatch, tmp_path)
    steps = straight_trainer.global_step
    assert steps == 2 * EPOCHS and int(straight.ema.num_updates) == steps
    assert [n for n, _ in full.updates] == list(range(steps + 1))

    _, stopped, first = fit(argv("split"), monkeypatch, tmp_path, StopAfterFirstEpoch())
    assert int(stopped.ema.num_updates) == steps // 2
    (checkpoint,) = (tmp_path / "split").rglob("*.ckpt")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert int(saved["ema.num_updates"]) == steps // 2  # the EMA's update count is in solo-learn's checkpoint
    if parts == "all":
        assert "ema.copies.backbone.layer4.0.conv1.weight" in saved

    resumed_trainer, resumed, second = fit(argv("split"), monkeypatch, tmp_path)
    assert second.start["ema.num_updates"] == steps // 2  # auto_resume found the checkpoint: no fresh start
    _assert_equal_states(second.start, full.after_first_epoch)
    # the resumed part's updates continue the straight run's: same counts, same taus (the last one before the stop
    # first, as the core's last_tau), exactly
    assert first.updates + second.updates[1:] == full.updates
    assert second.updates[0] == full.updates[steps // 2]
    _assert_equal_states(resumed.state_dict(), straight.state_dict())
    buffers = _momentum_buffers(resumed_trainer)
    assert buffers and all(torch.equal(a, b) for a, b in zip(buffers, _momentum_buffers(straight_trainer), strict=True))
    assert resumed_trainer.global_step == steps
    assert resumed.momentum_updater.cur_tau == straight.momentum_updater.cur_tau
