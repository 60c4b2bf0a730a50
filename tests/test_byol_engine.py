"""BYOL on the Lightning engine with partial EMA: target equivalence, work saved, BatchNorm, gradients, loss, beta."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from solo_ema.losses import byol_loss

pytestmark = pytest.mark.usefixtures("single_thread")

BN_SPECS = ["all", "backbone", "projector", "block4+projector", "none", "conv1", "block2"]


def record_momentum_outputs(model: nn.Module) -> list[dict[str, torch.Tensor]]:
    """Wrap model.momentum_forward so that training_step's target outputs are kept, crop by crop."""
    seen: list[dict[str, torch.Tensor]] = []
    original = model.momentum_forward

    def wrapper(X: torch.Tensor) -> dict[str, torch.Tensor]:
        out = original(X)
        seen.append(out)
        return out

    model.momentum_forward = wrapper
    return seen


def count_calls(modules: dict[str, nn.Module]) -> tuple[Counter, list]:
    """Register forward hooks counting how often each named module runs; returns (counter, handles)."""
    counts: Counter = Counter()
    handles = []
    for name, module in modules.items():

        def hook(_m, _args, _out, name: str = name) -> None:
            counts[name] += 1

        handles.append(module.register_forward_hook(hook))
    return counts, handles


def online_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Named parameters of the online backbone, projector and predictor."""
    return [
        (f"{prefix}.{n}", p)
        for prefix in ("backbone", "projector", "predictor")
        for n, p in getattr(model, prefix).named_parameters()
    ]


def sgd_step(model: nn.Module, lr: float = 0.5) -> None:
    """One plain SGD step over the trainable parameters, then zero the gradients."""
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.sub_(lr * p.grad)
                p.grad = None


# ----------------------------------------------------------------------------------------------------------
# Target equivalence and work saved


def test_projector_only_target_equals_full_ema_when_backbones_agree(make_model, make_batch, perturb) -> None:
    """Same weights, momentum backbone = online backbone: projector-only momentum_z = full-EMA momentum_z."""
    partial = make_model("projector", seed=3)
    full = make_model("all", seed=3)
    for (name, a), (_, b) in zip(partial.named_parameters(), full.named_parameters()):
        if not name.startswith("ema."):
            assert torch.equal(a, b), name
    # the momentum projectors differ from the online one, identically in both models
    perturb(partial.momentum_projector, seed=4, scale=0.1)
    perturb(full.momentum_projector, seed=4, scale=0.1)
    assert torch.equal(full.momentum_backbone.layer1[0].conv1.weight, full.backbone.layer1[0].conv1.weight)

    batch = make_batch(5)
    seen_partial, seen_full = record_momentum_outputs(partial), record_momentum_outputs(full)
    loss_partial = partial.training_step(batch, 0)
    loss_full = full.training_step(batch, 0)
    assert len(seen_partial) == len(seen_full) == 2
    for a, b in zip(seen_partial, seen_full):
        assert (a["z"] - b["z"]).abs().max().item() <= 1e-5
        assert (a["feats"] - b["feats"]).abs().max().item() <= 1e-5
        assert not torch.allclose(a["z"], partial.projector(a["feats"]), atol=1e-3)  # targets are not online z
    assert abs(loss_partial.item() - loss_full.item()) <= 1e-5


@pytest.mark.parametrize("spec", ["projector", "none"])
def test_shared_backbone_runs_once_per_crop(make_model, make_batch, spec: str) -> None:
    """With 'projector' or 'none' the online backbone (and each of its stages) runs exactly 2 times for 2 crops."""
    model = make_model(spec)
    modules = {"backbone": model.backbone, "projector": model.projector}
    modules.update({f"backbone.{n}": m for n, m in model.backbone.named_children()})
    if spec == "projector":
        modules["momentum.projector"] = model.momentum_projector
    counts, handles = count_calls(modules)
    model.training_step(make_batch(6), 0)
    for h in handles:
        h.remove()
    assert all(counts[name] == 2 for name in modules), counts


def test_full_ema_runs_online_and_momentum_backbone_once_per_crop(make_model, make_batch) -> None:
    """With 'all' the online backbone runs 2 times and each stage of the momentum backbone copy 2 times."""
    model = make_model("all")
    modules = {"backbone": model.backbone}
    modules.update({f"backbone.{n}": m for n, m in model.backbone.named_children()})
    modules.update({f"momentum.{n}": m for n, m in model.momentum_backbone.named_children()})
    modules["momentum.projector"] = model.momentum_projector
    modules["projector"] = model.projector
    counts, handles = count_calls(modules)
    model.training_step(make_batch(7), 0)
    for h in handles:
        h.remove()
    assert all(counts[name] == 2 for name in modules), counts


def test_block4_projector_target_runs_only_momentum_layer4_and_projector(make_model, make_batch) -> None:
    """'block4+projector': online conv1..layer4 run 2 times; on the target side only momentum layer4 and projector."""
    model = make_model("block4+projector")
    online = {f"backbone.{n}": getattr(model.backbone, n) for n in ("conv1", "bn1", "layer1", "layer2", "layer3",
                                                                    "layer4")}
    online["projector"] = model.projector
    momentum = {f"momentum.{n}": m for n, m in model.ema.copies.named_modules() if n}
    counts, handles = count_calls({**online, **momentum})
    model.training_step(make_batch(8), 0)
    for h in handles:
        h.remove()
    assert all(counts[name] == 2 for name in online), counts
    assert counts["momentum.backbone.layer4"] == 2
    assert counts["momentum.projector"] == 2
    ran = {name for name in momentum if counts[name]}
    assert ran and all(n.startswith(("momentum.backbone.layer4", "momentum.projector")) for n in ran), ran


# ----------------------------------------------------------------------------------------------------------
# BatchNorm


@pytest.mark.parametrize("spec", BN_SPECS)
def test_online_batchnorm_counts_only_online_crops(make_model, make_batch, spec: str) -> None:
    """Every online BN's num_batches_tracked grows by exactly 2 (the online crops) per training_step."""
    model = make_model(spec)
    bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and not n.startswith("ema.")}
    assert any(n.startswith("backbone.") for n in bns)
    before = {n: int(m.num_batches_tracked) for n, m in bns.items()}
    for step in range(2):
        model.training_step(make_batch(9 + step), 0)
        for n, m in bns.items():
            assert int(m.num_batches_tracked) == before[n] + 2 * (step + 1), (n, step)


def test_momentum_projector_batchnorm_follows_its_own_forward(make_model, make_batch) -> None:
    """The momentum projector's BN keeps its own running statistics, updated by its own target passes (2 per step)."""
    model = make_model("projector")
    bn = model.momentum_projector.bn1
    before_mean = bn.running_mean.clone()
    model.training_step(make_batch(11), 0)
    assert int(bn.num_batches_tracked) == 2
    assert not torch.equal(bn.running_mean, before_mean)


# ----------------------------------------------------------------------------------------------------------
# Gradients


@pytest.mark.parametrize("spec", ["projector", "all", "block4+projector", "none"])
def test_gradients_reach_online_parts_only(make_model, make_batch, spec: str) -> None:
    """After backward no momentum parameter has a .grad and every online backbone/projector/predictor one has."""
    model = make_model(spec)
    loss = model.training_step(make_batch(12), 0)
    loss.backward()
    for name, p in model.ema.copies.named_parameters():
        assert p.grad is None, name
    for name, p in online_params(model):
        assert p.grad is not None, name
    assert all(p.grad is not None for p in model.classifier.parameters())
    assert any(p.grad.abs().sum() > 0 for _, p in online_params(model))


def test_shared_backbone_gets_exactly_the_online_gradient(make_model, make_batch, perturb) -> None:
    """Projector-only: backbone gradients equal those of the hand-written loss with momentum-projector targets."""
    model = make_model("projector")
    perturb(model.momentum_projector, seed=13, scale=0.1)
    batch = make_batch(14)
    _, crops, targets = batch
    params = [p for _, p in online_params(model)] + list(model.classifier.parameters())

    loss = model.training_step(batch, 0)
    engine_grads = torch.autograd.grad(loss, params)

    momentum_projector = copy.deepcopy(model.momentum_projector)
    feats = [model.backbone(x) for x in crops]
    p = [model.predictor(model.projector(f)) for f in feats]
    with torch.no_grad():
        z_m = [momentum_projector(f.detach()) for f in feats]
    ref = sum(
        (2 - 2 * F.cosine_similarity(p[v2], z_m[v1], dim=-1)).mean()
        for v1 in range(2)
        for v2 in range(2)
        if v1 != v2
    )
    ref = ref + sum(F.cross_entropy(model.classifier(f.detach()), targets) for f in feats) / 2
    assert abs(loss.item() - ref.item()) <= 1e-5
    ref_grads = torch.autograd.grad(ref, params)
    names = [n for n, _ in online_params(model)] + ["classifier.weight", "classifier.bias"]
    for name, got, want in zip(names, engine_grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=name)


# ----------------------------------------------------------------------------------------------------------
# The BYOL loss


def test_byol_loss_is_two_minus_two_cosine_in_float64() -> None:
    """byol_loss(p, z) = mean(2 - 2 p.z / (|p| |z|)), against a float64 reference, with no gradient into z."""
    gen = torch.Generator().manual_seed(15)
    p = torch.randn(16, 32, generator=gen, requires_grad=True)
    z = torch.randn(16, 32, generator=gen, requires_grad=True)
    p64, z64 = p.detach().double(), z.detach().double()
    expected = (2 - 2 * (p64 * z64).sum(1) / (p64.norm(dim=1) * z64.norm(dim=1))).mean()
    loss = byol_loss(p, z)
    assert abs(loss.item() - expected.item()) <= 1e-6
    loss.backward()
    assert p.grad is not None and z.grad is None


def test_symmetric_byol_loss_is_affine_in_paper_eq5() -> None:
    """byol_loss(p1, z2m) + byol_loss(p2, z1m) = 4 + 4 * L, L = -1/2 (mean p1.z2m + mean p2.z1m) on unit vectors."""
    gen = torch.Generator().manual_seed(16)
    p1, p2, z1m, z2m = (torch.randn(12, 24, generator=gen) * 3 for _ in range(4))

    def unit(v: torch.Tensor) -> torch.Tensor:
        v = v.double()
        return v / v.norm(dim=1, keepdim=True)

    eq5 = -0.5 * ((unit(p1) * unit(z2m)).sum(1).mean() + (unit(p2) * unit(z1m)).sum(1).mean())
    symmetric = byol_loss(p1, z2m) + byol_loss(p2, z1m)
    assert abs(symmetric.item() - (4 + 4 * eq5.item())) <= 1e-5


# ----------------------------------------------------------------------------------------------------------
# beta = 0 and beta = 1 (paper Table 7)


@pytest.mark.parametrize("spec", [None, "all", "projector"])
def test_beta_zero_shares_every_part(make_cfg, make_model, make_batch, spec) -> None:
    """--base_tau_momentum 0 resolves momentum.parts to 'none' (no copies) and the target z is the online z exactly."""
    cfg = make_cfg(spec, "--base_tau_momentum", "0")
    assert cfg.momentum.parts == "none"
    assert cfg.momentum.final_tau == 0.0
    model = make_model(spec, "--base_tau_momentum", "0")
    assert model.ema.paths == [] and model.ema.num_momentum_params() == 0
    seen = record_momentum_outputs(model)
    z_online = []
    handle = model.projector.register_forward_hook(lambda _m, _a, out: z_online.append(out.detach()))
    model.training_step(make_batch(17), 0)
    handle.remove()
    assert len(seen) == 2 and len(z_online) == 2
    for out, z in zip(seen, z_online):
        assert torch.equal(out["z"], z)


def test_beta_one_freezes_momentum_projector(make_model, make_batch) -> None:
    """--ema_parts projector --base_tau_momentum 1: after 3 SGD steps + ema.step the copy is bitwise unchanged."""
    model = make_model("projector", "--base_tau_momentum", "1")
    assert model.cfg.momentum.final_tau == 1.0
    initial = {n: p.clone() for n, p in model.momentum_projector.named_parameters()}
    online_initial = {n: p.detach().clone() for n, p in model.projector.named_parameters()}
    max_steps = int(model.cfg.max_steps)
    for step in range(3):
        model.training_step(make_batch(18 + step), 0).backward()
        sgd_step(model)
        assert model.ema.step(max_steps) == 1.0
    assert int(model.ema.num_updates) == 3
    for name, p in model.momentum_projector.named_parameters():
        assert torch.equal(p, initial[name]), name
    assert any(not torch.equal(p, online_initial[n]) for n, p in model.projector.named_parameters())


def test_ema_step_after_training_moves_copy_toward_online(make_model, make_batch) -> None:
    """One SGD step + ema.step with beta = 0.9 gives xi = 0.9 xi0 + 0.1 theta1 for the momentum projector."""
    model = make_model("projector", "--base_tau_momentum", "0.9")
    xi0 = {n: p.double().clone() for n, p in model.momentum_projector.named_parameters()}
    model.training_step(make_batch(21), 0).backward()
    sgd_step(model)
    theta1 = {n: p.detach().double().clone() for n, p in model.projector.named_parameters()}
    assert model.ema.step(int(model.cfg.max_steps)) == pytest.approx(0.9)
    for n, p in model.momentum_projector.named_parameters():
        torch.testing.assert_close(p.double(), 0.9 * xi0[n] + 0.1 * theta1[n], rtol=0, atol=2e-6)


def test_momentum_parts_key_of_a_yaml_config_is_honoured() -> None:
    """A solo-learn-style config naming `momentum.parts` (spec string or list) builds exactly those copies."""
    from omegaconf import OmegaConf

    from solo_ema.methods import BYOL

    base = {
        "method": "byol", "data": {"dataset": "cifar10", "num_classes": 10},
        "optimizer": {"batch_size": 8, "lr": 0.1},
        "method_kwargs": {"proj_hidden_dim": 32, "pred_hidden_dim": 32, "proj_output_dim": 16},
    }
    for parts, expected, canonical in (("block4+projector", ["backbone.layer4", "projector"], "block4+projector"),
                                       (["projector"], ["projector"], "projector"), ([], [], "none")):
        cfg = OmegaConf.create({**base, "momentum": {"parts": parts}})
        model = BYOL(cfg)
        assert model.ema.paths == expected
        assert model.cfg.momentum.parts == canonical
