"""Table C.8's BatchNorms on the two faces: the engine's model and the plug-in's, built from one config and given
the same weights, compute the same thing.

BN2 (``method_kwargs.bn_projector_out``: a BatchNorm1d as the projector's last layer, inside its momentum copy) and
BN1 (``bn_backbone_out``: a shared BatchNorm1d on the pooled backbone features) in both readings of
``bn1_position`` (``projector``: the projector path only; ``backbone``: what the classifier, the kNN and the
projector all see), for BYOL (with a predictor), MoCo v2+ and DINO (without), with projector-only and whole-encoder
EMA. The config is the engine's (``solo_ema.pretrain.build_cfg`` of a command line); the plug-in's model is
solo-learn's class (``<method>_ema``) built from the same config with only ``method`` renamed. The engine's state
dict is copied into the plug-in's by name (the heads' layers are named ``fc1``, ``bn1``, ... in the engine and
``0``, ``1``, ... in solo-learn: within a head they are matched in order, with equal shapes); the load is strict.

Then, on one batch: the online outputs (``feats``, ``logits``, ``z``, ``p``, the classifier loss), the target
pass (``feats``, ``z``), every buffer afterwards (BatchNorm statistics: the target pass leaves the online ones
alone on both faces), the momentum pairs (the same online and momentum modules, in the same order; BN1 in none,
BN2 in the projector's) and one EMA update (the engine's ``PartialEMA.step`` against solo-learn's
``MomentumUpdater`` over the plug-in's pairs, both against ``tau * copy + (1 - tau) * online`` in float64).
"""

from __future__ import annotations

import gc

import pytest
import torch
from conftest import use_solo_learn

use_solo_learn()

from omegaconf import OmegaConf  # noqa: E402
from solo.methods import METHODS  # noqa: E402

from solo_ema.pretrain import build_cfg, build_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

BATCH = 8
#: the plug-in's name of the part the engine calls ``projector`` (solo-learn's DINO head is ``head``)
HEADS = {"byol": "projector", "mocov2plus": "projector", "dino": "head"}
#: state-dict roots that the two faces name differently (engine -> plug-in)
ROOT_ALIASES = {"dino": {"center": "dino_loss_func"}}
#: old-style weight_norm (solo-learn's DINO head) against the parametrisation (the engine's): g, then v
LEAF_ALIASES = {"original0": "weight_g", "original1": "weight_v"}
METHOD_FLAGS = {
    "byol": ["--pred_hidden_dim", "32"],
    "mocov2plus": ["--queue_size", "16", "--temperature", "0.2"],
    "dino": ["--num_prototypes", "32"],
}
SWITCHES = {
    "bn2": ["--bn_projector_out"],
    "bn1-projector": ["--bn_backbone_out"],
    "bn1-backbone": ["--bn_backbone_out", "--bn1_position", "backbone"],
    "bn1-projector+bn2": ["--bn_backbone_out", "--bn_projector_out"],
    "bn1-backbone+bn2": ["--bn_backbone_out", "--bn1_position", "backbone", "--bn_projector_out"],
}


def engine_argv(method: str, parts: str, switches: list[str]) -> list[str]:
    """A tiny run of `method` on CIFAR-10 (CIFAR stem on both faces), with the momentum classifier."""
    return ["--method", method, "--dataset", "cifar10", "--batch_size", str(BATCH), "--max_steps", "10",
            "--proj_hidden_dim", "32", "--proj_output_dim", "16", "--ema_parts", parts, "--momentum_classifier",
            "--no_channel_last", *METHOD_FLAGS[method], *switches]


def _root(key: str) -> str:
    """The module a state-dict key belongs to: its first name, or ``ema.copies.<part>`` for a momentum copy."""
    parts = key.split(".")
    return ".".join(parts[:3] if key.startswith("ema.copies.") else parts[:1])


def map_state(engine_state: dict, plugin_state: dict, method: str) -> dict:
    """The engine's state dict under the plug-in's names: same names where the faces agree, heads matched in order."""
    head, aliases = HEADS[method], ROOT_ALIASES.get(method, {})

    def plugin_root(root: str) -> str:
        *prefix, last = root.split(".")
        return ".".join([*prefix, head if last == "projector" else aliases.get(last, last)])

    groups: dict[str, list[str]] = {}
    for key in plugin_state:
        groups.setdefault(_root(key), []).append(key)
    engine_groups: dict[str, list[str]] = {}
    for key in engine_state:
        engine_groups.setdefault(plugin_root(_root(key)), []).append(key)
    assert engine_groups.keys() == groups.keys(), sorted(set(engine_groups) ^ set(groups))
    mapped = {}
    for root, keys in groups.items():
        theirs = engine_groups[root]
        assert len(keys) == len(theirs), (root, keys, theirs)
        for ours, key in zip(keys, theirs):
            leaf = key.rsplit(".", 1)[-1]
            assert ours.rsplit(".", 1)[-1] == LEAF_ALIASES.get(leaf, leaf), (ours, key)
            assert plugin_state[ours].shape == engine_state[key].shape, (ours, key)
            mapped[ours] = engine_state[key]
    return mapped


def module_names(model: torch.nn.Module, method: str) -> dict[int, str]:
    """id(module) -> its name, the plug-in's head named as the engine's (``projector``)."""
    head = HEADS[method]
    names = {}
    for name, module in model.named_modules():
        parts = ["projector" if p == head else p for p in name.split(".")]
        names[id(module)] = ".".join(parts)
    return names


def pair_names(model: torch.nn.Module, method: str) -> list[tuple[str, str]]:
    names = module_names(model, method)
    return [(names[id(o)], names[id(m)]) for o, m in model.momentum_pairs]


@pytest.fixture(autouse=True)
def _free_models():
    """Collect each test's models (reference cycles through their hooks) at once: memory stays flat."""
    yield
    gc.collect()


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(BATCH, 3, 16, 16, generator=g), torch.randint(0, 10, (BATCH,), generator=g)


def two_faces(method: str, parts: str, switch: str):
    """The engine's model and the plug-in's, from one config, with the engine's weights copied into the plug-in's."""
    cfg = build_cfg(engine_argv(method, parts, SWITCHES[switch]))
    torch.manual_seed(0)
    engine = build_model(cfg).train()
    plugin_cfg = OmegaConf.create(OmegaConf.to_container(cfg))
    OmegaConf.set_struct(plugin_cfg, False)
    plugin_cfg.method = f"{method}_ema"
    torch.manual_seed(1)
    plugin = METHODS[f"{method}_ema"](plugin_cfg).train()
    plugin.load_state_dict(map_state(engine.state_dict(), plugin.state_dict(), method), strict=True)
    return engine, plugin


#: every switch and BN1 reading for BYOL, both readings with BN2 for MoCo v2+ and DINO; each method with both
#: placements (the projector-only target resumes from the online features, the whole-encoder one from the images)
CASES = [
    ("byol", "bn2", "projector"),
    ("byol", "bn1-projector", "projector"),
    ("byol", "bn1-backbone", "all"),
    ("byol", "bn1-projector+bn2", "all"),
    ("byol", "bn1-backbone+bn2", "projector"),
    ("mocov2plus", "bn1-projector+bn2", "projector"),
    ("mocov2plus", "bn1-backbone+bn2", "all"),
    ("dino", "bn1-projector+bn2", "all"),
    ("dino", "bn1-backbone+bn2", "projector"),
]


@pytest.mark.parametrize(("method", "switch", "parts"), CASES)
def test_engine_and_plugin_compute_the_same(method: str, switch: str, parts: str, batch) -> None:
    """Same config, same weights: the same online outputs, targets, BN statistics, momentum pairs and EMA update."""
    engine, plugin = two_faces(method, parts, switch)
    k = plugin.cfg.method_kwargs
    assert plugin.cfg.momentum.parts == engine.cfg.momentum.parts == parts
    assert (k.bn_backbone_out, k.bn_projector_out, k.bn1_position) == (
        engine.cfg.method_kwargs.bn_backbone_out, engine.cfg.method_kwargs.bn_projector_out,
        engine.cfg.method_kwargs.bn1_position)
    assert (plugin.feats_bn is not None) == ("bn1" in switch)
    assert plugin.bn1_on_backbone == engine.bn1_on_backbone == ("bn1-backbone" in switch)

    # the same momentum pairs, in the same order: BN1 shared (in no pair), BN2 inside the projector's copy
    pairs = pair_names(plugin, method)
    assert pairs == pair_names(engine, method)
    assert [o for o, _ in pairs] == (["projector"] if parts == "projector" else ["backbone", "projector"])
    copy = plugin.ema.copy_of(HEADS[method])
    assert any(n.endswith("bn_out") for n, _ in copy.named_modules()) == ("bn2" in switch)
    assert not any("feats_bn" in m for pair in pairs for m in pair)

    X, y = batch
    outs = [model.base_training_step(X, y) for model in (engine, plugin)]
    targets = [model.momentum_forward(X) for model in (engine, plugin)]
    keys = ("feats", "logits", "z", "loss") + (("p",) if method == "byol" else ())
    for key in keys:
        torch.testing.assert_close(outs[1][key], outs[0][key], msg=key)
    z_engine = targets[0]["z"]
    if method == "mocov2plus":  # the engine normalises the keys in its loss, solo-learn in momentum_forward
        z_engine = torch.nn.functional.normalize(z_engine, dim=-1)
    torch.testing.assert_close(targets[1]["feats"], targets[0]["feats"])
    torch.testing.assert_close(targets[1]["z"], z_engine)
    # every buffer afterwards (BN running statistics of online parts, copies and BN1; the counters) agrees
    state = map_state(engine.state_dict(), plugin.state_dict(), method)
    for key, value in plugin.state_dict().items():
        torch.testing.assert_close(value, state[key], msg=key)
    if plugin.feats_bn is not None:
        with torch.no_grad():
            before = plugin.backbone(X)  # train mode: BN1 normalises with this batch's statistics
            expected = plugin.feats_bn(before) if plugin.bn1_on_backbone else before
        torch.testing.assert_close(outs[1]["feats"], expected)  # the classifier and the kNN read these
        torch.testing.assert_close(outs[1]["logits"], plugin.classifier(expected))

    # one EMA update, after an "optimizer step" that moves every online parameter the same way on both faces
    plugin.load_state_dict(map_state(engine.state_dict(), plugin.state_dict(), method), strict=True)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in engine.named_parameters():
            if not name.startswith("ema."):
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    plugin.load_state_dict(map_state(engine.state_dict(), plugin.state_dict(), method), strict=True)
    tau = plugin.cfg.momentum.base_tau
    expected = [
        [tau * m.detach().double() + (1 - tau) * o.detach().double() for o, m in zip(on.parameters(), mo.parameters())]
        for on, mo in plugin.momentum_pairs
    ]
    engine.ema.step(10)
    for online, momentum in plugin.momentum_pairs:  # what solo-learn's on_train_batch_end does after a step
        plugin.momentum_updater.update(online, momentum)
    assert engine.ema.last_tau == tau
    for (_, e_copy), (_, p_copy), reference in zip(engine.momentum_pairs, plugin.momentum_pairs, expected):
        for pe, pp, ref in zip(e_copy.parameters(), p_copy.parameters(), reference, strict=True):
            torch.testing.assert_close(pp.double(), ref)
            torch.testing.assert_close(pe.double(), ref)
    for model in (engine, plugin):
        model.ema.remove_hooks()


@pytest.mark.parametrize(
    ("method_kwargs", "message"),
    [({"bn_backbone_out": True, "bn1_position": "block4"}, "bn1_position must be one of projector, backbone"),
     ({"bn1_position": "backbone"}, "needs method_kwargs.bn_backbone_out=True")],
)
def test_bn1_position_is_checked(method_kwargs: dict, message: str) -> None:
    """An unknown BN1 position, or one without BN1: a ValueError naming the key (as the engine's command line)."""
    cfg = build_cfg(engine_argv("byol", "projector", []))
    plugin_cfg = OmegaConf.create(OmegaConf.to_container(cfg))
    plugin_cfg.method = "byol_ema"
    plugin_cfg.method_kwargs.update(method_kwargs)
    with pytest.raises(ValueError, match=message):
        METHODS["byol_ema"].add_and_assert_specific_cfg(plugin_cfg)


def test_plugin_switches_are_the_engine_table() -> None:
    """The plug-in's BN1 positions and BatchNorm defaults are the engine's defaults table (its one owner)."""
    from solo_ema.engine.defaults import BN1_POSITIONS, DEFAULTS
    from solo_ema.solo import plugin

    assert plugin.BN1_POSITIONS == BN1_POSITIONS
    assert plugin.BN_DEFAULTS == {k: DEFAULTS[f"method_kwargs.{k}"] for k in plugin.BN_DEFAULTS}


@pytest.mark.parametrize("method", ["simclr", "simsiam", "ressl"])
def test_bn1_and_bn2_in_the_other_methods(method: str, batch) -> None:
    """SimCLR, SimSiam and ReSSL with BN1 on the backbone output and BN2: one training step reaches both (BN2 inside
    the projector's copy), and the classifier reads BN1's output."""
    flags = {"simclr": ["--temperature", "0.2"], "simsiam": ["--pred_hidden_dim", "8"], "ressl": ["--queue_size", "16"]}
    argv = ["--method", method, "--dataset", "cifar10", "--batch_size", str(BATCH), "--max_steps", "10",
            "--proj_hidden_dim", "32", "--proj_output_dim", "16", "--ema_parts", "projector", "--no_channel_last",
            *flags[method], *SWITCHES["bn1-backbone+bn2"]]
    cfg = OmegaConf.create(OmegaConf.to_container(build_cfg(argv)))
    cfg.method = f"{method}_ema"
    model = METHODS[f"{method}_ema"](cfg).train()
    assert any(g["name"] == "feats_bn" for g in model.learnable_params)
    assert isinstance(model.ema.copy_of("projector").bn_out, torch.nn.BatchNorm1d)
    X, y = batch
    g = torch.Generator().manual_seed(4)
    loss = model.training_step([torch.arange(BATCH), [X, torch.randn(X.shape, generator=g)], y], 0)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.feats_bn.weight.grad is not None and model.projector.bn_out.weight.grad is not None
    with torch.no_grad():
        out = model(X)
        torch.testing.assert_close(out["logits"], model.classifier(model.feats_bn(model.backbone(X))))
    model.ema.remove_hooks()
