"""The EMA update inside a real Lightning fit, checked step by step against the update formula in float64."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from solo_ema.losses import byol_loss

pytestmark = pytest.mark.usefixtures("single_thread")

BASE_TAU, FINAL_TAU = 0.9, 1.0


def expected_tau(k: int, total: int) -> float:
    """Cosine schedule of solo-learn: tau_k = final - (final - base) * (cos(pi k / K) + 1) / 2."""
    return FINAL_TAU - (FINAL_TAU - BASE_TAU) * (math.cos(math.pi * k / total) + 1) / 2


class _Views(torch.utils.data.Dataset):
    """Seeded random samples in the engine's training format (index, [view1, view2], target), 16x16."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int):
        gen = torch.Generator().manual_seed(1000 + i)
        return i, [torch.randn(3, 16, 16, generator=gen), torch.randn(3, 16, 16, generator=gen)], i % 10


class _Recorder(pl.Callback):
    """After every training batch: global step, online and momentum parameters of the watched modules (float64)."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        self.rows: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def _flat(self, modules: list[torch.nn.Module]) -> torch.Tensor:
        return torch.cat([p.detach().double().flatten().clone() for m in modules for p in m.parameters()])

    def _take(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        online = [pl_module.get_submodule(p) for p in self.paths]
        target = [pl_module.ema.copy_of(p) for p in self.paths]
        assert all(t is not None for t in target), "the watched modules must be EMA parts"
        self.rows.append((trainer.global_step, self._flat(online), self._flat(target)))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._take(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._take(trainer, pl_module)


CASES = {
    # spec, watched modules, accumulate_grad_batches, batches per epoch, epochs
    "projector-acc1": ("projector", ["projector"], 1, 2, 2),
    "projector-acc2": ("projector", ["projector"], 2, 4, 2),
    "block4+projector-acc2": (
        "block4+projector", ["backbone.layer4.0.downsample", "backbone.layer4.1.bn2", "projector.fc2"], 2, 4, 1,
    ),
    # an epoch of 7 micro-batches: 3 + 3 + 1 (the last optimizer step is short), one EMA update per step
    "projector-acc3-short-last": ("projector", ["projector"], 3, 7, 1),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_ema_update_in_trainer_follows_formula(make_model, case: str) -> None:
    """target_k = tau_{k-1} target_{k-1} + (1 - tau_{k-1}) online_k after optimizer step k, nothing in between.

    online_k are the online weights after optimizer step k; tau is the cosine schedule over K = all optimizer
    steps of the fit, starting at base_tau for the first update (solo-learn: update, then tau for the next one).
    """
    spec, paths, accumulate, batches, epochs = CASES[case]
    model = make_model(spec, "--base_tau_momentum", str(BASE_TAU), "--final_tau_momentum", str(FINAL_TAU),
                       "--max_steps", "-1", "--max_epochs", str(epochs), "--accumulate_grad_batches", str(accumulate),
                       "--optimizer", "sgd", "--lr", "2.0", "--warmup_epochs", "0", "--scheduler", "none")
    batch_size = 4
    loader = torch.utils.data.DataLoader(_Views(batches * batch_size), batch_size=batch_size, shuffle=False)
    recorder = _Recorder(paths)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         accumulate_grad_batches=accumulate, callbacks=[recorder])
    trainer.fit(model, loader)

    total = epochs * math.ceil(batches / accumulate)  # K: optimizer steps of the whole fit
    assert trainer.global_step == total and int(model.ema.num_updates) == total
    assert len(recorder.rows) == 1 + epochs * batches
    step0, online, target = recorder.rows[0]
    assert step0 == 0 and torch.equal(online, target), "the copies start equal to the online parts"
    updates = 0
    for step, online_now, target_now in recorder.rows[1:]:
        if step == updates:  # a micro-batch without optimizer step: the target must not move
            assert torch.equal(target_now, target), f"target moved without an optimizer step (step {step})"
            continue
        assert step == updates + 1
        tau = expected_tau(updates, total)  # update number k = updates + 1 uses tau_{k-1}
        expected = tau * target + (1 - tau) * online_now
        moved = (online_now - target).abs().max()
        assert moved > 1e-3, "the online part must move away from the target for the check to mean something"
        err = (target_now - expected).abs().max()
        assert err <= 1e-6 * (1 + expected.abs().max()), f"step {step}: |target - formula| = {err:.3g}"
        updates, online, target = step, online_now, target_now
    assert updates == total
    assert model.ema.last_tau == pytest.approx(expected_tau(total - 1, total), abs=1e-12)


def _bn_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items()
            if k.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")}


def test_momentum_batchnorm_buffers_in_trainer_equal_a_hand_driven_loop(make_model) -> None:
    """After 3 optimizer steps of a Lightning fit, the whole model (online and momentum parameters, the momentum
    copies' BatchNorm running_mean / running_var / num_batches_tracked, the online BatchNorm buffers) equals the
    same model driven by hand for 3 steps: online pass of each crop under capture, target pass, BYOL loss plus the
    classifier's, backward, SGD step, ema.step.

    block3+projector: layer3 and the projector are EMA parts with their own BatchNorm buffers; layer4 is shared,
    so the target pass runs it with the online weights on copies of its buffers: the online BatchNorm buffers
    count the online passes only (2 crops x 3 steps), the copies' count the target passes (2 x 3).
    """
    flags = ("--base_tau_momentum", "0.9", "--max_steps", "-1", "--max_epochs", "1", "--optimizer", "sgd",
             "--lr", "0.5", "--warmup_epochs", "0", "--scheduler", "none")
    steps, batch_size = 3, 4
    data = _Views(steps * batch_size)
    lightning = make_model("block3+projector", *flags)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(lightning, torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False))
    assert trainer.global_step == steps

    hand = make_model("block3+projector", *flags)
    cfg = hand.cfg.optimizer
    optimizer = torch.optim.SGD([{**g, "params": list(g["params"])} for g in hand.learnable_params], lr=cfg.lr,
                                weight_decay=cfg.weight_decay, momentum=0.9)
    for _, views, targets in torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False):
        optimizer.zero_grad()
        online = []
        for x in views:
            with hand.ema.capture(x):
                online.append(hand(x))
        teacher = [hand.ema.target(x) for x in views]
        hand.ema.clear()
        loss = 0.0
        for i, t in enumerate(teacher):
            for j, o in enumerate(online):
                if i != j:
                    loss = loss + byol_loss(o["p"], t["z"])
        loss = loss + sum(F.cross_entropy(o["logits"], targets, ignore_index=-1) for o in online) / len(views)
        loss.backward()
        optimizer.step()
        hand.ema.step(steps)

    got, expected = lightning.state_dict(), hand.state_dict()
    assert got.keys() == expected.keys()
    different = [k for k in expected if not torch.equal(got[k], expected[k])]
    assert not different, f"{len(different)} entries differ from the hand-driven loop, e.g. {different[:5]}"
    buffers = _bn_buffers(lightning)
    copies = {k: v for k, v in buffers.items() if k.startswith("ema.copies.")}
    assert any(".layer3." in k for k in copies) and any(".projector." in k for k in copies)
    for key, value in buffers.items():
        if key.endswith("num_batches_tracked"):
            assert int(value) == 2 * steps, key
    for key in copies:
        if key.endswith("running_mean"):
            online = buffers[key.removeprefix("ema.copies.")]
            assert not torch.equal(buffers[key], online), f"{key}: the target pass must keep its own statistics"
