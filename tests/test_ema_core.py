"""The partial-EMA core: EMA specs, the Eq. 6 update, the tau schedule, momentum copies and the target forward."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from solo_ema.ema import (
    BACKBONE_PARTS,
    PARTS,
    EMASpecError,
    PartialEMA,
    Stage,
    cosine_tau,
    parse_ema_spec,
    spec_paths,
)
from solo_ema.pretrain import UsageError

pytestmark = pytest.mark.usefixtures("single_thread")

BN_SPECS = ["all", "backbone", "projector", "block4+projector", "block2", "conv1", "none", "projector.fc2"]


def toy_stages() -> list[Stage]:
    """The ToyEncoder as two stages: backbone -> feats, projector -> z."""
    return [Stage("backbone", output="feats"), Stage("projector", output="z")]


def online_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Clones of every online parameter and buffer (the momentum copies under ema.* excluded)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("ema.")}


def online_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Clones of every online buffer (BatchNorm running_mean, running_var, num_batches_tracked)."""
    return {k: v.clone() for k, v in model.named_buffers() if not k.startswith("ema.")}


def run_with_buffer_copies(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run an online module on copies of its buffers (the reference for a shared stage of the target pass)."""
    buffers = {k: b.clone() for k, b in module.named_buffers()}
    return functional_call(module, buffers, (x,))


def target_and_stem_runs(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], int]:
    """model.ema.target(x) and how many times it ran the online stem (0: it resumed from x's capture)."""
    runs = []
    handle = model.backbone.conv1.register_forward_hook(lambda *_: runs.append(1))
    try:
        return model.ema.target(x), len(runs)
    finally:
        handle.remove()


# ----------------------------------------------------------------------------------------------------------
# parse_ema_spec


@pytest.mark.parametrize(
    ("spec", "parts"),
    [
        ("all", PARTS),
        ("encoder", PARTS),
        ("backbone", BACKBONE_PARTS),
        ("projector", ("projector",)),
        ("none", ()),
        ("conv1", ("conv1",)),
        ("block1", ("block1",)),
        ("block3", ("block3",)),
        ("block4+projector", ("block4", "projector")),
        ("projector+block4", ("block4", "projector")),
        ("projector+block1+conv1", ("conv1", "block1", "projector")),
        ("layer4+projector", ("block4", "projector")),
        ("layer2", ("block2",)),
        ("stem", ("conv1",)),
        ("stem+head", ("conv1", "projector")),
        (" block4 + projector ", ("block4", "projector")),
        ("backbone+projector", PARTS),
        ("all+projector", PARTS),
        ("block4+block4", ("block4",)),
        ("projector.fc2", ("projector.fc2",)),
        ("projector.fc2+block2", ("block2", "projector.fc2")),
        ("projector.fc2+projector", ("projector",)),
        ("layer3.1", ("block3.1",)),
    ],
)
def test_parse_ema_spec_expands_to_ordered_parts(spec: str, parts: tuple[str, ...]) -> None:
    """Groups, single parts, '+' combinations, aliases and dotted sub-parts expand to the parts in encoder order."""
    assert parse_ema_spec(spec).parts == tuple(parts)


@pytest.mark.parametrize("spec", ["block7", "projecter", "backbone+blk4", "conv1.weight", "", "projector+", "fc"])
def test_parse_ema_spec_unknown_part_is_one_line_listing_valid_names(spec: str) -> None:
    """An unknown or empty part raises EMASpecError with a one-line message that lists every valid name."""
    with pytest.raises(EMASpecError) as info:
        parse_ema_spec(spec)
    message = str(info.value)
    assert "\n" not in message
    for name in ("all", "backbone", "none", "projector", *BACKBONE_PARTS):
        assert name in message, (name, message)


@pytest.mark.parametrize("spec", ["none+projector", "projector+none", "none+none"])
def test_parse_ema_spec_none_cannot_be_combined(spec: str) -> None:
    """'none' combined with any other name (even itself) is an EMASpecError that names 'none'."""
    with pytest.raises(EMASpecError, match="none"):
        parse_ema_spec(spec)


def test_ema_spec_error_is_a_value_error() -> None:
    """EMASpecError is a ValueError, so generic config validation catches it."""
    assert issubclass(EMASpecError, ValueError)


@pytest.mark.parametrize(
    ("spec", "paths"),
    [
        ("all", ["backbone.conv1", "backbone.bn1", *[f"backbone.layer{i}" for i in range(1, 5)], "projector"]),
        ("block4+projector", ["backbone.layer4", "projector"]),
        ("stem", ["backbone.conv1", "backbone.bn1"]),
        ("projector.fc2", ["projector.fc2"]),
        ("none", []),
    ],
)
def test_spec_paths_name_the_modules_of_each_part(spec: str, paths: list[str]) -> None:
    """spec_paths maps parts to module paths of the method (conv1 = conv1 + bn1, blockK = layerK)."""
    assert spec_paths(parse_ema_spec(spec), "backbone", "projector") == paths


# ----------------------------------------------------------------------------------------------------------
# The EMA update (paper Eq. 6) and the tau schedule


def test_ema_update_equals_eq6_in_float64(toy, perturb) -> None:
    """update(beta) sets xi <- beta*xi + (1-beta)*theta for every momentum parameter (Eq. 6, float64 reference)."""
    ema = PartialEMA(toy, toy_stages(), ["projector"])
    momentum = ema.copy_of("projector")
    perturb(momentum, seed=1, scale=0.5)  # xi != theta from the start
    gen = torch.Generator().manual_seed(2)
    for step in range(4):
        perturb(toy.projector, seed=10 + step, scale=0.3)  # the online weights move between updates
        beta = float(torch.rand((), generator=gen))
        xi = [p.detach().double().clone() for p in momentum.parameters()]
        theta = [p.detach().double().clone() for p in toy.projector.parameters()]
        ema.update(beta)
        for got, x, t in zip(momentum.parameters(), xi, theta, strict=True):
            expected = beta * x + (1.0 - beta) * t
            assert got.dtype == torch.float32
            torch.testing.assert_close(got.double(), expected, rtol=0, atol=2e-6)


def test_ema_update_with_beta_zero_copies_online_exactly(toy, perturb) -> None:
    """beta = 0 makes every momentum parameter exactly (bitwise) the online one."""
    ema = PartialEMA(toy, toy_stages(), ["backbone", "projector"], base_tau=0.0, final_tau=0.0)
    perturb(ema.copies, seed=3, scale=1.0)
    perturb(toy, seed=4, scale=1.0)
    ema.step(max_steps=5)
    for (name, online), (_, momentum) in zip(toy.named_parameters(), ema.copies.named_parameters(), strict=True):
        assert torch.equal(momentum, online), name


def test_ema_update_with_beta_one_freezes_copies(toy, perturb) -> None:
    """beta = 1 leaves the momentum parameters bitwise at their initial values over several steps."""
    ema = PartialEMA(toy, toy_stages(), ["projector"], base_tau=1.0, final_tau=1.0)
    initial = [p.clone() for p in ema.copies.parameters()]
    online_before = [p.detach().clone() for p in toy.projector.parameters()]
    for step in range(5):
        perturb(toy.projector, seed=20 + step, scale=0.5)
        assert ema.step(max_steps=5) == 1.0
    assert all(not torch.equal(a, b) for a, b in zip(online_before, toy.projector.parameters()))
    for got, want in zip(ema.copies.parameters(), initial, strict=True):
        assert torch.equal(got, want)


def test_ema_update_leaves_batchnorm_buffers_of_copies_alone(toy, perturb) -> None:
    """Only parameters are averaged: the copies' BN running statistics are not pulled toward the online ones."""
    ema = PartialEMA(toy, toy_stages(), ["projector"], base_tau=0.5, final_tau=0.5)
    with torch.no_grad():
        toy.projector.bn1.running_mean.add_(3.0)
        toy.projector.bn1.running_var.mul_(2.0)
    before = {k: b.clone() for k, b in ema.copies.named_buffers()}
    ema.step(max_steps=10)
    for name, buf in ema.copies.named_buffers():
        assert torch.equal(buf, before[name]), name


@pytest.mark.parametrize(("base", "final", "total"), [(0.99, 1.0, 10), (0.9, 0.999, 7), (0.0, 0.5, 3), (0.3, 0.3, 4)])
def test_cosine_tau_matches_formula(base: float, final: float, total: int) -> None:
    """tau(k) = final - (final - base) * (cos(pi*k/K) + 1) / 2 for k = 0..K, and stays at final after K."""
    for k in range(total + 1):
        expected = final - (final - base) * (math.cos(math.pi * k / total) + 1) / 2
        assert cosine_tau(k, total, base, final) == pytest.approx(expected, abs=1e-12)
    assert cosine_tau(0, total, base, final) == pytest.approx(base, abs=1e-12)
    assert cosine_tau(total, total, base, final) == pytest.approx(final, abs=1e-12)
    assert cosine_tau(total + 5, total, base, final) == pytest.approx(final, abs=1e-12)


def test_partial_ema_step_follows_schedule_from_base(toy, perturb) -> None:
    """step() uses tau(0) = base for the first update, then tau(1), tau(2), ..., and counts num_updates."""
    base, final, total = 0.6, 0.9, 4
    ema = PartialEMA(toy, toy_stages(), ["projector"], base_tau=base, final_tau=final)
    momentum = ema.copy_of("projector")
    perturb(momentum, seed=5, scale=0.5)
    assert int(ema.num_updates) == 0
    for k in range(total + 2):
        xi = [p.double().clone() for p in momentum.parameters()]
        theta = [p.detach().double().clone() for p in toy.projector.parameters()]
        expected_tau = final - (final - base) * (math.cos(math.pi * min(k, total) / total) + 1) / 2
        tau = ema.step(total)
        assert tau == pytest.approx(expected_tau, abs=1e-12)
        assert ema.last_tau == tau
        assert int(ema.num_updates) == k + 1
        for got, x, t in zip(momentum.parameters(), xi, theta, strict=True):
            torch.testing.assert_close(got.double(), expected_tau * x + (1 - expected_tau) * t, rtol=0, atol=2e-6)
        perturb(toy.projector, seed=30 + k, scale=0.2)


def test_partial_ema_schedule_position_is_checkpointed(toy) -> None:
    """num_updates is a buffer in the state dict, so a resumed run continues the tau schedule."""
    ema = PartialEMA(toy, toy_stages(), ["projector"], base_tau=0.5, final_tau=1.0)
    for _ in range(3):
        ema.step(10)
    state = ema.state_dict()
    assert int(state["num_updates"]) == 3
    fresh = PartialEMA(toy, toy_stages(), ["projector"], base_tau=0.5, final_tau=1.0)
    fresh.load_state_dict(state)
    assert fresh.current_tau(10) == pytest.approx(cosine_tau(3, 10, 0.5, 1.0))


@pytest.mark.parametrize(("base", "final"), [(-0.1, 1.0), (1.5, 1.0), (0.9, 0.5), (0.5, 1.2)])
def test_partial_ema_rejects_bad_taus(toy, base: float, final: float) -> None:
    """PartialEMA requires 0 <= base_tau <= final_tau <= 1."""
    with pytest.raises(ValueError):
        PartialEMA(toy, toy_stages(), ["projector"], base_tau=base, final_tau=final)


# ----------------------------------------------------------------------------------------------------------
# Momentum copies of a BYOL model


def _count(modules: list[nn.Module]) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


@pytest.mark.parametrize(
    ("spec", "online_modules"),
    [
        ("projector", lambda m: [m.projector]),
        ("all", lambda m: [m.backbone, m.projector]),
        ("backbone", lambda m: [m.backbone]),
        ("block4+projector", lambda m: [m.backbone.layer4, m.projector]),
        ("conv1", lambda m: [m.backbone.conv1, m.backbone.bn1]),
        ("projector.fc2", lambda m: [m.projector.fc2]),
        ("none", lambda m: []),
    ],
)
def test_momentum_copies_hold_only_ema_parts(make_model, spec: str, online_modules) -> None:
    """The momentum parameter count equals the parameter count of the EMA parts' online modules, nothing more."""
    model = make_model(spec)
    expected = _count(online_modules(model))
    assert model.ema.num_momentum_params() == expected
    assert sum(p.numel() for n, p in model.named_parameters() if n.startswith("ema.")) == expected


def test_projector_only_keeps_no_backbone_copy(make_model) -> None:
    """With spec 'projector' there is no momentum backbone: only a projector copy, same size as the online one."""
    model = make_model("projector")
    assert model.momentum_backbone is None
    assert model.momentum_projector is not None
    assert model.ema.copy_of("backbone") is None
    assert model.ema.copy_of("backbone.layer4") is None
    assert not any(n.startswith("ema.copies.backbone") for n, _ in model.named_parameters())
    assert model.ema.num_momentum_params() == _count([model.projector])
    assert [type(o) for o, _ in model.momentum_pairs] == [type(model.projector)]


def test_all_keeps_backbone_and_projector_copies(make_model) -> None:
    """With spec 'all' the momentum backbone and projector are copies of the whole online backbone and projector."""
    model = make_model("all")
    assert model.momentum_backbone is not None and model.momentum_backbone is not model.backbone
    assert model.momentum_projector is not None and model.momentum_projector is not model.projector
    assert model.ema.num_momentum_params() == _count([model.backbone, model.projector])


def test_block4_projector_keeps_exactly_layer4_and_projector(make_model) -> None:
    """'block4+projector' pairs exactly (backbone.layer4, projector) and keeps no other backbone copy."""
    model = make_model("block4+projector")
    assert [o for o, _ in model.momentum_pairs] == [model.backbone.layer4, model.projector]
    assert model.momentum_backbone is None
    names = [n for n, _ in model.ema.copies.named_parameters()]
    assert all(n.startswith(("backbone.layer4.", "projector.")) for n in names), names
    assert any(n.startswith("backbone.layer4.") for n in names) and any(n.startswith("projector.") for n in names)
    assert model.ema.num_momentum_params() == _count([model.backbone.layer4, model.projector])


@pytest.mark.parametrize("spec", ["all", "block4+projector", "projector", "conv1", "projector.fc2"])
def test_momentum_copies_start_as_exact_frozen_copies(make_model, spec: str) -> None:
    """Copies equal their online modules (parameters and BN buffers), own their storage and do not require grad."""
    model = make_model(spec)
    keys = []
    for online, momentum in model.momentum_pairs:
        o_state, m_state = online.state_dict(), momentum.state_dict()
        assert list(o_state) == list(m_state)
        keys += list(o_state)
        for key in o_state:
            assert torch.equal(o_state[key], m_state[key]), key
            assert o_state[key].data_ptr() != m_state[key].data_ptr(), key
        assert all(not p.requires_grad for p in momentum.parameters())
        assert all(p.requires_grad for p in online.parameters())
    assert any(k.endswith("running_mean") for k in keys) or spec == "projector.fc2"  # BN buffers were compared


# ----------------------------------------------------------------------------------------------------------
# The target forward


def test_target_forward_block3_projector_matches_explicit_stages(make_model, perturb) -> None:
    """block3+projector target = online conv1..layer2, momentum layer3, online layer4 (BN copies), momentum head."""
    model = make_model("block3+projector")
    perturb(model.ema.copies, seed=7, scale=0.05)
    assert not torch.equal(model.ema.copy_of("projector").fc1.weight, model.projector.fc1.weight)
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    with model.ema.capture(x):
        model(x)  # the online pass the target reuses
    assert model.ema.pending == 1

    b = copy.deepcopy(model.backbone)  # reference copies: running them must not touch the real modules
    m_layer3 = copy.deepcopy(model.ema.copy_of("backbone.layer3"))
    m_proj = copy.deepcopy(model.ema.copy_of("projector"))
    with torch.no_grad():
        h = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        h = b.layer2(b.layer1(h))
        h = m_layer3(h)
        h = run_with_buffer_copies(model.backbone.layer4, h)
        feats = torch.flatten(b.avgpool(h), 1)
        z = m_proj(feats)

    cached, stem_runs = target_and_stem_runs(model, x)
    assert stem_runs == 0 and model.ema.pending == 0  # resumed from the capture, which is now forgotten
    assert set(cached) == {"feats", "z"}
    torch.testing.assert_close(cached["feats"], feats, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cached["z"], z, rtol=1e-5, atol=1e-5)
    from_images, stem_runs = target_and_stem_runs(model, x)
    assert stem_runs == 1
    torch.testing.assert_close(from_images["feats"], feats, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(from_images["z"], z, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(z, model.projector(feats), atol=1e-4)  # the momentum projector really was used


def test_target_forward_projector_fc2_matches_explicit_stages(make_model, perturb) -> None:
    """projector.fc2 target = online backbone and projector fc1/bn1/act1, then the momentum fc2."""
    model = make_model("projector.fc2")
    perturb(model.ema.copies, seed=9, scale=0.05)
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        feats = model.backbone(x)
        p = model.projector
        h = p.act1(run_with_buffer_copies(p.bn1, p.fc1(feats)))
        z = model.ema.copy_of("projector.fc2")(h)
    assert model.ema.pending == 0  # forwards outside capture() leave nothing behind
    with model.ema.capture(x):
        model(x)
    cached, stem_runs = target_and_stem_runs(model, x)
    assert stem_runs == 0
    torch.testing.assert_close(cached["z"], z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cached["feats"], feats, rtol=1e-5, atol=1e-5)
    from_images, stem_runs = target_and_stem_runs(model, x)
    assert stem_runs == 1
    torch.testing.assert_close(from_images["z"], z, rtol=1e-5, atol=1e-5)


def test_target_forward_projector_only_is_momentum_projector_of_online_feats(make_model, perturb) -> None:
    """projector-only target = (online feats, momentum projector(online feats)), from the cache and from images."""
    model = make_model("projector")
    perturb(model.ema.copies, seed=11)
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(12))
    with model.ema.capture(x):
        feats = model(x)["feats"].detach()
    cached, stem_runs = target_and_stem_runs(model, x)
    assert stem_runs == 0
    with torch.no_grad():
        z = copy.deepcopy(model.ema.copy_of("projector"))(feats)
    assert torch.equal(cached["feats"], feats)
    torch.testing.assert_close(cached["z"], z, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(model.ema.target(x)["z"], z, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", BN_SPECS)
def test_target_forward_leaves_online_batchnorm_buffers_unchanged(make_model, spec: str) -> None:
    """Neither target pass (cached or from images) changes any online running_mean/var or num_batches_tracked."""
    model = make_model(spec)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(13))
    with model.ema.capture(x):
        model(x)
    before = online_buffers(model)
    assert any(k.endswith("num_batches_tracked") for k in before)
    model.ema.target(x)  # from the capture (from the images when the EMA starts at the stem)
    model.ema.target(x)  # from the images
    model.momentum_forward(x)
    after = online_buffers(model)
    for name, buf in before.items():
        assert torch.equal(after[name], buf), name


@pytest.mark.parametrize("spec", BN_SPECS)
def test_target_forward_never_changes_online_weights_or_needs_grad(make_model, spec: str) -> None:
    """The target outputs carry no autograd graph and the online state dict is untouched by a target pass."""
    model = make_model(spec)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(14))
    before = online_state(model)
    out = model.momentum_forward(x)
    assert set(out) >= {"feats", "z"}
    assert all(not v.requires_grad for v in out.values())
    after = online_state(model)
    for name, value in before.items():
        assert torch.equal(after[name], value), name


def test_unknown_dotted_submodule_lists_children(make_model, toy) -> None:
    """'projector.fc9' parses, but resolving it against the model fails with the projector's children named."""
    assert parse_ema_spec("projector.fc9").parts == ("projector.fc9",)
    with pytest.raises(UsageError) as info:
        make_model("projector.fc9")
    message = str(info.value)
    assert "fc9" in message
    for child in ("fc1", "bn1", "act1", "fc2"):
        assert child in message
    with pytest.raises(EMASpecError, match="fc1"):
        PartialEMA(toy, toy_stages(), ["projector.fc9"])


def test_resnet_stages_take_the_features_where_feats_at_says() -> None:
    """feats is the backbone output by default; with feats_at it is that module's output instead (BN1 on the
    backbone output), exactly one stage carries it, and a feats_at outside `between` is refused."""
    from solo_ema.ema import resnet_stages

    plain = resnet_stages("backbone", "projector", between=["feats_bn"])
    moved = resnet_stages("backbone", "projector", between=["feats_bn"], feats_at="feats_bn")
    assert [s.path for s in plain if s.output == "feats"] == ["backbone.fc"]
    assert [s.path for s in moved if s.output == "feats"] == ["feats_bn"]
    assert [(s.path, s.fn is None) for s in plain] == [(s.path, s.fn is None) for s in moved]
    with pytest.raises(ValueError, match="feats_at='bn9'"):
        resnet_stages("backbone", "projector", between=["feats_bn"], feats_at="bn9")
