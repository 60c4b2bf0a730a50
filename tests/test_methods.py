"""The six methods (BYOL, DINO, MoCo v2+, ReSSL, SimCLR, SimSiam) on the partial-EMA engine: losses, state, CLI."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import logged_taus
from torch import nn

from solo_ema.engine import BaseMomentumMethod
from solo_ema.losses import dino_loss, moco_loss, nt_xent, ressl_loss, simsiam_loss
from solo_ema.methods import METHODS
from solo_ema.methods.dino import clip_gradients, teacher_temperature, updated_center
from solo_ema.pretrain import UsageError, build_cfg, build_model

METHOD_NAMES = ["byol", "dino", "mocov2plus", "ressl", "simclr", "simsiam"]
TINY_HEADS = [
    "--proj_hidden_dim", "64", "--proj_output_dim", "32", "--pred_hidden_dim", "64",
    "--num_prototypes", "64", "--queue_size", "32",
]
LOSS_COLUMN = {
    "byol": "train_byol_loss",
    "dino": "train_dino_loss",
    "mocov2plus": "train_nce_loss",
    "ressl": "train_ressl_loss",
    "simclr": "train_nce_loss",
    "simsiam": "train_neg_cos_sim",
}
# what each logged loss can take: BYOL 2 ordered pairs of 2 - 2cos; SimSiam -cos; the cross-entropies >= 0
LOSS_RANGE = {"byol": (0.0, 8.0), "simsiam": (-1.0, 1.0), "dino": (0.0, math.inf), "mocov2plus": (0.0, math.inf),
              "ressl": (0.0, math.inf), "simclr": (0.0, math.inf)}
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
B = 8  # batch size of the in-process tests


# ----------------------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run this module on one torch thread: on a loaded 2-core machine two threads made a forward ~50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make(method: str, spec: str | None = None, *extra: str, seed: int = 0) -> BaseMomentumMethod:
    """A tiny model (CIFAR-10 config, tiny heads, batch 8) of a method for an EMA spec, in train mode."""
    argv = ["--method", method, "--dataset", "cifar10", "--batch_size", str(B), "--max_steps", "10", *TINY_HEADS]
    if spec is not None:
        argv += ["--ema_parts", spec]
    cfg = build_cfg(argv + list(extra))
    torch.manual_seed(seed)
    return build_model(cfg).train()


def batch(seed: int = 0, large: int = 2, small: int = 0, size: int = 16, small_size: int = 8) -> list:
    """[indexes, [crops...], targets]: seeded random images, large crops first."""
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(B, 3, size, size, generator=gen) for _ in range(large)]
    xs += [torch.randn(B, 3, small_size, small_size, generator=gen) for _ in range(small)]
    return [torch.arange(B) + 100, xs, torch.randint(0, 10, (B,), generator=gen)]


class Spy:
    """Records what a training step produced: the engine's outs and every logged value."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, model: nn.Module) -> None:
        self.outs: dict = {}
        self.logged: dict = {}
        engine_step = BaseMomentumMethod.training_step

        def recording_step(module, *args, **kwargs):
            out = engine_step(module, *args, **kwargs)
            self.outs = out
            return out

        monkeypatch.setattr(BaseMomentumMethod, "training_step", recording_step)
        monkeypatch.setattr(model, "log", lambda name, value, **kw: self.logged.__setitem__(name, value))
        monkeypatch.setattr(model, "log_dict", lambda values, **kw: self.logged.update(values))


def d(x: torch.Tensor) -> torch.Tensor:
    """float64 copy (keeps the graph)."""
    return x.double()


def norm64(x: torch.Tensor) -> torch.Tensor:
    """Row-wise L2 normalisation in float64, written out."""
    x = d(x)
    return x / x.pow(2).sum(-1, keepdim=True).sqrt()


def ref_dino(student, teacher, center, ts: float, tt: float) -> torch.Tensor:
    """Reference DINO loss: explicit softmax / log-softmax, mean over (teacher i, student j != i) pairs."""
    total, pairs = 0.0, 0
    for i, t in enumerate(teacher):
        e = torch.exp((d(t) - d(center)) / tt)
        q = e / e.sum(1, keepdim=True)
        for j, s in enumerate(student):
            if i == j:
                continue
            s = d(s) / ts
            logp = s - torch.log(torch.exp(s).sum(1, keepdim=True))
            total = total + (-(q * logp).sum(1)).mean()
            pairs += 1
    return total / pairs


def ref_moco(q, k, queue, T: float) -> torch.Tensor:
    """Reference InfoNCE: -log(exp(q.k/T) / (exp(q.k/T) + sum_queue exp(q.n/T))), queue D x Q."""
    pos = (d(q) * d(k)).sum(1) / T
    neg = d(q) @ d(queue) / T
    return (-(pos - torch.log(torch.exp(pos) + torch.exp(neg).sum(1)))).mean()


def ref_ressl(q, k, queue, tq: float, tk: float) -> torch.Tensor:
    """Reference ReSSL: -sum softmax(k.queue/tk) * log softmax(q.queue/tq), queue Q x D."""
    ek = torch.exp(d(k) @ d(queue).T / tk)
    pk = ek / ek.sum(1, keepdim=True)
    lq = d(q) @ d(queue).T / tq
    logp = lq - torch.log(torch.exp(lq).sum(1, keepdim=True))
    return (-(pk * logp).sum(1)).mean()


def ref_ntxent_plain(z, indexes, T: float) -> torch.Tensor:
    """Reference SimCLR loss on one tensor of all crops: positives same index off the diagonal."""
    z = norm64(z)
    sim = torch.exp(z @ z.T / T)
    eye = torch.eye(z.size(0), dtype=torch.bool)
    pos = (indexes[:, None] == indexes[None, :]) & ~eye
    neg = indexes[:, None] != indexes[None, :]
    p, n = (sim * pos).sum(1), (sim * neg).sum(1)
    return -torch.log(p / (p + n)).mean()


def ref_ntxent_ema(online, momentum, T: float) -> torch.Tensor:
    """Reference SimCLR+EMA loss, loop by loop: anchors online (crop v, i); candidates momentum (u, j) != (v, i)."""
    total, count = 0.0, 0
    for v, zv in enumerate(online):
        for i in range(zv.size(0)):
            a = norm64(zv[i : i + 1])[0]
            num, den = 0.0, 0.0
            for u, ku in enumerate(momentum):
                for j in range(ku.size(0)):
                    if u == v and j == i:
                        continue
                    e = torch.exp(a @ norm64(ku[j : j + 1])[0] / T)
                    den = den + e
                    if j == i:
                        num = num + e
            total = total + -torch.log(num / den)
            count += 1
    return total / count


def grad_of(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Gradients of loss w.r.t. params, keeping the graph."""
    return list(torch.autograd.grad(loss, params, retain_graph=True))


# ----------------------------------------------------------------------------------------------------------
# registry and flags


def test_registry_has_six_momentum_methods() -> None:
    """METHODS holds the six methods, each a BaseMomentumMethod; SimCLR and SimSiam default to no EMA."""
    assert set(METHODS) == set(METHOD_NAMES)
    for cls in METHODS.values():
        assert issubclass(cls, BaseMomentumMethod)
    defaults = {name: build_cfg(["--method", name, "--dataset", "cifar10"]).momentum.parts for name in METHODS}
    assert defaults == {"byol": "all", "dino": "all", "mocov2plus": "all", "ressl": "all",
                        "simclr": "none", "simsiam": "none"}


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("dino", {"proj_hidden_dim": 2048, "proj_output_dim": 256, "num_prototypes": 4096,
                  "student_temperature": 0.1, "teacher_temperature": 0.07, "warmup_teacher_temperature": 0.04,
                  "warmup_teacher_temperature_epochs": 0, "center_momentum": 0.9, "norm_last_layer": True,
                  "use_bn_in_head": False, "freeze_last_layer": 1, "clip_grad": 0.0}),
        ("mocov2plus", {"proj_hidden_dim": 2048, "proj_output_dim": 256, "temperature": 0.2, "queue_size": 65536}),
        ("ressl", {"proj_hidden_dim": 4096, "proj_output_dim": 256, "temperature_q": 0.1, "temperature_k": 0.04,
                   "queue_size": 65536}),
        ("simclr", {"proj_hidden_dim": 2048, "proj_output_dim": 128, "temperature": 0.2}),
        ("simsiam", {"proj_hidden_dim": 2048, "proj_output_dim": 2048, "pred_hidden_dim": 512}),
    ],
)
def test_method_defaults(method: str, expected: dict) -> None:
    """Each method fills its documented defaults into method_kwargs, with BN1/BN2 off."""
    kwargs = build_cfg(["--method", method, "--dataset", "cifar10"]).method_kwargs
    assert {k: kwargs[k] for k in expected} == expected
    assert kwargs.bn_backbone_out is False and kwargs.bn_projector_out is False


def test_method_flags_reach_method_kwargs() -> None:
    """Typed method flags land in method_kwargs; boolean flags are switches that also take true/false."""
    cfg = build_cfg(["--method", "dino", "--dataset", "cifar10", "--norm_last_layer", "false", "--use_bn_in_head",
                     "--bn_backbone_out", "--bn_projector_out", "true", "--warmup_teacher_temperature_epochs", "50",
                     "--clip_grad", "3.0", "--center_momentum", "0.8", "--num_prototypes", "100"])
    k = cfg.method_kwargs
    assert (k.norm_last_layer, k.use_bn_in_head, k.bn_backbone_out, k.bn_projector_out) == (False, True, True, True)
    got = (k.warmup_teacher_temperature_epochs, k.clip_grad, k.center_momentum, k.num_prototypes)
    assert got == (50, 3.0, 0.8, 100)
    with pytest.raises(UsageError, match="expected true or false"):
        build_cfg(["--method", "dino", "--dataset", "cifar10", "--norm_last_layer", "maybe"])


@pytest.mark.parametrize("method", ["mocov2plus", "ressl"])
def test_queue_size_must_hold_whole_global_batches(method: str) -> None:
    """A queue that is not a multiple of batch_size x devices is refused with both numbers in the message."""
    with pytest.raises(UsageError, match=r"queue_size \(100\).*global batch size \(64"):
        build_cfg(["--method", method, "--dataset", "cifar10", "--batch_size", "32", "--devices", "2",
                   "--queue_size", "100"])


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_beta_zero_means_shared_parts(method: str) -> None:
    """--base_tau_momentum 0 resolves to the 'none' placement for every method."""
    cfg = build_cfg(["--method", method, "--dataset", "cifar10", "--ema_parts", "projector",
                     "--base_tau_momentum", "0"])
    assert cfg.momentum.parts == "none"


# ----------------------------------------------------------------------------------------------------------
# losses against float64 references


def test_dino_loss_matches_reference() -> None:
    """dino_loss = mean over (teacher large crop, other student crop) of CE(centred sharp teacher, student)."""
    gen = torch.Generator().manual_seed(1)
    student = [torch.randn(6, 10, generator=gen, dtype=torch.float64) for _ in range(4)]
    teacher = [torch.randn(6, 10, generator=gen, dtype=torch.float64) for _ in range(2)]
    center = torch.randn(1, 10, generator=gen, dtype=torch.float64)
    got = dino_loss(student, teacher, center, 0.1, 0.05)
    torch.testing.assert_close(got, ref_dino(student, teacher, center, 0.1, 0.05))


def test_dino_center_update_formula() -> None:
    """New centre = m * c + (1 - m) * mean of the teacher outputs."""
    gen = torch.Generator().manual_seed(2)
    center, teacher = torch.randn(1, 7, generator=gen), torch.randn(12, 7, generator=gen)
    expected = 0.9 * d(center) + 0.1 * d(teacher).mean(0, keepdim=True)
    torch.testing.assert_close(d(updated_center(center, teacher, 0.9)), expected)


@pytest.mark.parametrize(
    ("warmup_epochs", "expected"),
    [
        (5, [0.04, 0.0475, 0.055, 0.0625, 0.07, 0.07, 0.07]),
        (1, [0.04, 0.07, 0.07]),
        (0, [0.07, 0.07]),
    ],
)
def test_teacher_temperature_warmup(warmup_epochs: int, expected: list[float]) -> None:
    """Teacher temperature: linspace(0.04, 0.07, W)[epoch] during the W warm-up epochs, 0.07 after."""
    got = [teacher_temperature(e, 0.04, 0.07, warmup_epochs) for e in range(len(expected))]
    assert got == pytest.approx(expected)


def test_moco_loss_matches_reference() -> None:
    """moco_loss = InfoNCE with the positive key first and the queue as negatives."""
    gen = torch.Generator().manual_seed(3)
    q = F.normalize(torch.randn(6, 5, generator=gen, dtype=torch.float64), dim=1)
    k = F.normalize(torch.randn(6, 5, generator=gen, dtype=torch.float64), dim=1)
    queue = F.normalize(torch.randn(5, 16, generator=gen, dtype=torch.float64), dim=0)
    torch.testing.assert_close(moco_loss(q, k, queue, 0.2), ref_moco(q, k, queue, 0.2))


def test_ressl_loss_matches_reference() -> None:
    """ressl_loss = CE(softmax(k.queue/T_k), log_softmax(q.queue/T_q))."""
    gen = torch.Generator().manual_seed(4)
    q = F.normalize(torch.randn(6, 5, generator=gen, dtype=torch.float64), dim=1)
    k = F.normalize(torch.randn(6, 5, generator=gen, dtype=torch.float64), dim=1)
    queue = F.normalize(torch.randn(16, 5, generator=gen, dtype=torch.float64), dim=1)
    torch.testing.assert_close(ressl_loss(q, k, queue, 0.1, 0.04), ref_ressl(q, k, queue, 0.1, 0.04))


def test_nt_xent_matches_plain_and_ema_references() -> None:
    """nt_xent equals the plain SimCLR loss (self as candidates) and the loop-by-loop +EMA loss."""
    gen = torch.Generator().manual_seed(5)
    z = [torch.randn(6, 5, generator=gen, dtype=torch.float64) for _ in range(3)]
    k = [torch.randn(6, 5, generator=gen, dtype=torch.float64) for _ in range(2)]
    idx = torch.arange(6).repeat(3)
    view = torch.arange(3).repeat_interleave(6)
    zc = torch.cat(z)
    torch.testing.assert_close(nt_xent(zc, idx, view, zc, idx, view, 0.2), ref_ntxent_plain(zc, idx, 0.2))
    got = nt_xent(zc, idx, view, torch.cat(k), idx[:12], view[:12], 0.2)
    torch.testing.assert_close(got, ref_ntxent_ema(z, k, 0.2))


def test_simsiam_loss_is_negative_cosine_with_stop_gradient() -> None:
    """simsiam_loss = -mean cos(p, z) and sends no gradient to z."""
    gen = torch.Generator().manual_seed(6)
    p = torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    z = torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    loss = simsiam_loss(p, z)
    torch.testing.assert_close(loss, -(norm64(p) * norm64(z)).sum(1).mean())
    loss.backward()
    assert z.grad is None and p.grad is not None


# ----------------------------------------------------------------------------------------------------------
# one training step per method and placement


@pytest.mark.parametrize("spec", ["all", "projector", "block4+projector", "none"])
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_training_step_gradients_and_forward_counts(method: str, spec: str) -> None:
    """Finite loss; grads reach every online part and no momentum copy; each online module runs once per crop."""
    model = make(method, spec)
    counts: dict[str, int] = {}

    def counter(name: str):
        def hook(*_):
            counts[name] = counts.get(name, 0) + 1

        return hook

    modules = {"backbone": model.backbone, "conv1": model.backbone.conv1, "layer4": model.backbone.layer4,
               "projector": model.projector}
    for name, module in modules.items():
        module.register_forward_hook(counter(name))
    copy_l4, copy_proj = model.ema.copy_of("backbone.layer4"), model.ema.copy_of("projector")
    for name, module in (("copy_layer4", copy_l4), ("copy_projector", copy_proj)):
        if module is not None:
            module.register_forward_hook(counter(name))
    loss = model.training_step(batch(0), 0)
    assert loss.ndim == 0 and math.isfinite(float(loss))
    loss.backward()
    online = {"backbone": model.backbone, "projector": model.projector}
    if hasattr(model, "predictor"):
        online["predictor"] = model.predictor
    for part, module in online.items():
        params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        missing = [n for n, p in params if p.grad is None or not torch.isfinite(p.grad).all()]
        assert not missing, f"{part}: no finite grad for {missing}"
        assert sum(float(p.grad.abs().sum()) for _, p in params) > 0, part
    assert all(p.grad is None for p in model.ema.copies.parameters())
    assert all(not p.requires_grad for p in model.ema.copies.parameters())
    expected = {"backbone": 2, "conv1": 2, "layer4": 2, "projector": 2}
    if spec in ("all", "block4+projector"):
        expected["copy_layer4"] = 2
    if spec != "none":
        expected["copy_projector"] = 2
    assert counts == expected


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_placement_builds_and_starts_as_the_online_encoder(method: str) -> None:
    """backbone, single blocks, combinations and head sub-modules all build; at init the target z = online z."""
    sub = "projector.mlp.fc2" if method == "dino" else "projector.fc2"
    x = batch(12)[1][0]
    for spec in ("backbone", "conv1", "block2", "block3+projector", sub):
        model = make(method, spec, "--base_tau_momentum", "1")
        with torch.no_grad():
            online = model.project(model.backbone(x))
            target = model.momentum_forward(x)["z"]
        torch.testing.assert_close(target, online, rtol=1e-4, atol=1e-5, msg=f"{method} {spec}")


# ----------------------------------------------------------------------------------------------------------
# method-specific behaviour inside a step


def test_dino_step_uses_warmup_temperature_then_updates_center(monkeypatch: pytest.MonkeyPatch) -> None:
    """At epoch 0 of a warm-up the loss uses T_t = 0.04 and the centre before the step; then c <- m c + (1-m) mean."""
    model = make("dino", "projector", "--warmup_teacher_temperature_epochs", "3", "--center_momentum", "0.5")
    with torch.no_grad():  # a centre on the scale of the head's outputs, so that its value matters to the loss
        model.center.normal_(std=0.05, generator=torch.Generator().manual_seed(9))
    center_before = model.center.clone()
    spy = Spy(monkeypatch, model)
    model.training_step(batch(1), 0)
    outs = spy.outs
    assert model.teacher_temperature == pytest.approx(0.04)
    expected = ref_dino(outs["z"], outs["momentum_z"], center_before, 0.1, 0.04)
    torch.testing.assert_close(d(spy.logged["train_dino_loss"]), expected, rtol=1e-5, atol=1e-6)
    teacher = d(torch.cat(outs["momentum_z"]))
    torch.testing.assert_close(d(model.center), 0.5 * d(center_before) + 0.5 * teacher.mean(0, keepdim=True))


def test_dino_multicrop_pairs_every_teacher_with_every_other_crop(monkeypatch: pytest.MonkeyPatch) -> None:
    """With 2 large + 2 small crops: the teacher sees the large crops only; 2 x 4 - 2 pairs enter the loss."""
    model = make("dino", "projector", "--num_crops_per_aug", "2", "2", "--crop_size", "16", "8")
    spy = Spy(monkeypatch, model)
    model.training_step(batch(2, large=2, small=2), 0)
    outs = spy.outs
    assert len(outs["z"]) == 4 and len(outs["momentum_z"]) == 2
    expected = ref_dino(outs["z"], outs["momentum_z"], torch.zeros(1, 64), 0.1, 0.07)
    torch.testing.assert_close(d(spy.logged["train_dino_loss"]), expected, rtol=1e-5, atol=1e-6)


def test_dino_head_and_last_layer_options() -> None:
    """The head ends in a unit-g weight-normalised layer; freeze_last_layer drops its grads; clip_grad clips."""
    model = make("dino", "projector", "--clip_grad", "0.001")
    last = model.projector.last_layer
    g = last.parametrizations.weight.original0
    assert torch.equal(g, torch.ones_like(g)) and not g.requires_grad
    assert last.bias is None
    model.training_step(batch(3), 0).backward()
    before = {n: p.grad.clone() for n, p in model.backbone.named_parameters()}
    model.on_before_optimizer_step(None)
    assert all(p.grad is None for p in last.parameters())
    for n, p in model.backbone.named_parameters():
        assert float(p.grad.norm()) <= 0.001 * (1 + 1e-4), n
        torch.testing.assert_close(F.normalize(p.grad.flatten(), dim=0), F.normalize(before[n].flatten(), dim=0))
    kept = make("dino", "projector", "--freeze_last_layer", "0", "--norm_last_layer", "false")
    kept.training_step(batch(3), 0).backward()
    kept.on_before_optimizer_step(None)
    assert all(p.grad is not None for p in kept.projector.last_layer.parameters())


def test_clip_gradients_rescales_only_large_gradients() -> None:
    """Per-parameter clipping: a gradient above the threshold gets norm clip, a small one is untouched."""
    big, small = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(3))
    big.grad, small.grad = torch.tensor([3.0, 4.0, 0.0]), torch.tensor([0.3, 0.4, 0.0])
    clip_gradients([big, small], 1.0)
    torch.testing.assert_close(big.grad, torch.tensor([0.6, 0.8, 0.0]), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(small.grad, torch.tensor([0.3, 0.4, 0.0]))


def test_moco_loss_uses_queue_before_enqueue_then_stores_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """MoCo: loss = symmetric InfoNCE against the old queue; afterwards queue[i][:, :B] holds crop i's keys."""
    model = make("mocov2plus", "all", "--temperature", "0.2")
    queue_before = model.queue.clone()
    spy = Spy(monkeypatch, model)
    model.training_step(batch(4), 0)
    (q1, q2), (m1, m2) = spy.outs["z"], spy.outs["momentum_z"]
    k1, k2 = F.normalize(m1, dim=-1), F.normalize(m2, dim=-1)
    expected = (ref_moco(q1, k2, queue_before[1], 0.2) + ref_moco(q2, k1, queue_before[0], 0.2)) / 2
    torch.testing.assert_close(d(spy.logged["train_nce_loss"]), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.queue[0, :, :B], k1.T)
    torch.testing.assert_close(model.queue[1, :, :B], k2.T)
    assert torch.equal(model.queue[:, :, B:], queue_before[:, :, B:])
    assert int(model.queue_ptr) == B
    model.training_step(batch(5), 1)
    assert int(model.queue_ptr) == 2 * B
    torch.testing.assert_close(model.queue[0, :, :B], k1.T)


def test_ressl_loss_uses_queue_before_enqueue_then_stores_weak_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """ReSSL: q = online crop 0, k = momentum crop 1; loss against the old queue; then queue[:B] = k."""
    model = make("ressl", "all")
    queue_before = model.queue.clone()
    spy = Spy(monkeypatch, model)
    model.training_step(batch(6), 0)
    q = spy.outs["z"][0]
    k = F.normalize(spy.outs["momentum_z"][1], dim=-1)
    expected = ref_ressl(q, k, queue_before, 0.1, 0.04)
    torch.testing.assert_close(d(spy.logged["train_ressl_loss"]), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.queue[:B], k)
    assert torch.equal(model.queue[B:], queue_before[B:])
    assert int(model.queue_ptr) == B


def test_simclr_none_is_plain_ntxent_with_gradient_through_both_sides(monkeypatch: pytest.MonkeyPatch) -> None:
    """SimCLR with 'none': loss and projector gradient equal the plain NT-Xent on the online z of all crops."""
    model = make("simclr", "none", "--temperature", "0.2")
    spy = Spy(monkeypatch, model)
    loss = model.training_step(batch(7), 0)
    z = torch.cat(spy.outs["z"])
    idx = (torch.arange(B) + 100).repeat(2)
    ref = ref_ntxent_plain(z, idx, 0.2)
    torch.testing.assert_close(d(spy.logged["train_nce_loss"]), ref, rtol=1e-5, atol=1e-6)
    weight = model.projector.fc2.weight
    (got,), (want,) = grad_of(loss, [weight]), grad_of(ref, [weight])
    torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-7)
    view = torch.arange(2).repeat_interleave(B)
    (one_sided,) = grad_of(nt_xent(z, idx, view, z.detach(), idx, view, 0.2), [weight])
    assert not torch.allclose(got, one_sided, rtol=1e-3, atol=1e-7)  # a stop-gradient target would differ


def test_simclr_ema_targets_come_from_the_momentum_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """SimCLR + EMA: anchors = online z of all crops, candidates = momentum z of the large crops (stop-grad)."""
    model = make("simclr", "projector", "--temperature", "0.2")
    with torch.no_grad():
        for p in model.ema.copies.parameters():
            p.add_(0.1 * torch.randn_like(p))
    spy = Spy(monkeypatch, model)
    model.training_step(batch(8), 0)
    online, momentum = spy.outs["z"], spy.outs["momentum_z"]
    assert not torch.allclose(online[0], momentum[0])
    assert all(m.grad_fn is None for m in momentum)
    expected = ref_ntxent_ema(online, momentum, 0.2)
    torch.testing.assert_close(d(spy.logged["train_nce_loss"]), expected, rtol=1e-5, atol=1e-6)


def test_simsiam_none_target_is_exactly_detached_online_z(monkeypatch: pytest.MonkeyPatch) -> None:
    """SimSiam with 'none': the targets are z.detach(), the loss is -cos(p1, z2)/2 - cos(p2, z1)/2."""
    model = make("simsiam", "none")
    spy = Spy(monkeypatch, model)
    loss = model.training_step(batch(9), 0)
    (z1, z2), (t1, t2), (p1, p2) = spy.outs["z"], spy.outs["momentum_z"], spy.outs["p"]
    assert torch.equal(t1, z1.detach()) and torch.equal(t2, z2.detach())
    assert t1.grad_fn is None and t2.grad_fn is None
    ref = -((norm64(p1) * norm64(z2.detach())).sum(1).mean() + (norm64(p2) * norm64(z1.detach())).sum(1).mean()) / 2
    torch.testing.assert_close(d(spy.logged["train_neg_cos_sim"]), ref, rtol=1e-5, atol=1e-6)
    weight = model.projector.fc1.weight
    (got,), (want,) = grad_of(loss, [weight]), grad_of(ref, [weight])
    torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-7)


def test_simsiam_ema_target_is_the_momentum_projection(monkeypatch: pytest.MonkeyPatch) -> None:
    """SimSiam + EMA ('all'): the targets are the momentum encoder's projections, not the online ones."""
    model = make("simsiam", "all")
    with torch.no_grad():
        for p in model.ema.copies.parameters():
            p.add_(0.1 * torch.randn_like(p))
    spy = Spy(monkeypatch, model)
    model.training_step(batch(10), 0)
    (z1, _), (t1, t2), (p1, p2) = spy.outs["z"], spy.outs["momentum_z"], spy.outs["p"]
    assert not torch.allclose(t1, z1.detach())
    ref = -((norm64(p1) * norm64(t2)).sum(1).mean() + (norm64(p2) * norm64(t1)).sum(1).mean()) / 2
    torch.testing.assert_close(d(spy.logged["train_neg_cos_sim"]), ref, rtol=1e-5, atol=1e-6)


def test_simsiam_heads_and_static_lr_predictor() -> None:
    """SimSiam projector ends in an affine-free BN; the predictor is a static-lr parameter group."""
    model = make("simsiam", "none")
    last = list(model.projector.children())[-1]
    assert isinstance(last, nn.BatchNorm1d) and not last.affine and last.num_features == 32
    groups = {g["name"]: g for g in model.learnable_params}
    assert groups["predictor"].get("static_lr") is True
    assert not groups["projector"].get("static_lr", False)


# ----------------------------------------------------------------------------------------------------------
# BN1 / BN2 (paper Table C.8)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_bn1_bn2_sit_between_backbone_and_projector_and_end_the_projector(method: str) -> None:
    """BN1 normalises the projector input only (shared, trained); BN2 is the projector's last layer and EMA copy."""
    model = make(method, "projector", "--bn_backbone_out", "--bn_projector_out")
    assert isinstance(model.feats_bn, nn.BatchNorm1d) and model.feats_bn.num_features == model.features_dim
    assert [s.path for s in model.ema.stages if s.is_module][-2:] == ["feats_bn", "projector"]
    head = model.projector.mlp if method == "dino" else model.projector
    assert isinstance(head.bn_out, nn.BatchNorm1d) and head.bn_out.num_features == 32
    copy = model.ema.copy_of("projector")
    assert isinstance((copy.mlp if method == "dino" else copy).bn_out, nn.BatchNorm1d)
    x = batch(11)[1][0]
    out = model(x)
    feats = model.backbone(x)
    torch.testing.assert_close(out["logits"], model.classifier(feats))
    z = model.projector(model.feats_bn(feats))
    torch.testing.assert_close(out["z"], F.normalize(z, dim=-1) if method in ("mocov2plus", "ressl") else z)
    model.training_step(batch(11), 0).backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.feats_bn.parameters())
    assert any(g["name"] == "feats_bn" for g in model.learnable_params)


# ----------------------------------------------------------------------------------------------------------
# real runs through the CLI


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Fashion-MNIST is not installed at /usr/share/datasets/"
                    "fashion-mnist (apt-get install -y dataset-fashion-mnist)")
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_short_fashion_mnist_run_logs_finite_losses(method: str, tmp_path: Path) -> None:
    """Three steps of solo-ema-pretrain on 64 Fashion-MNIST images end with finite losses in metrics.csv."""
    argv = [sys.executable, "-m", "solo_ema.pretrain", "--method", method, "--dataset", "fashion_mnist",
            "--train_subset", "64", "--max_steps", "3", "--batch_size", "16", "--num_workers", "0",
            "--limit_val_batches", "0", "--log_dir", str(tmp_path), "--name", "run", "--crop_size", "16",
            "--ema_parts", "projector", *TINY_HEADS]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    column = f"{LOSS_COLUMN[method]}_step"
    values = [float(r[column]) for r in rows if r.get(column)]
    assert len(values) == 3, rows
    assert all(math.isfinite(v) for v in values)
    low, high = LOSS_RANGE[method]
    assert all(low <= v <= high for v in values), values
    taus = [float(r["tau"]) for r in rows if r.get("tau")]
    assert taus == pytest.approx(logged_taus(3), abs=1e-7)  # one EMA update per step, on the cosine schedule
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["momentum"]["parts"] == "projector" and config["cost"]["backbone_forwards_per_view"] == 1
