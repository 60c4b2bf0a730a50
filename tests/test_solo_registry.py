"""The solo-learn plug-in's registration, config handling, import error and CLI plumbing, without solo-learn.

Stand-in ``solo``, ``solo.methods`` (a METHODS registry) and ``solo.methods.base`` modules take the
place of solo-learn in ``sys.modules``, so these tests run where solo-learn is not installed (CI) and
do not touch a real installation where it is.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from solo_ema.ema import EMASpecError

ROOT = Path(__file__).resolve().parents[1]
METHOD_NAMES = ("byol", "dino", "mocov2plus", "ressl", "simclr", "simsiam")
MOMENTUM_METHODS = ("byol", "dino", "mocov2plus", "ressl")
EMA_NAMES = [f"{m}_ema" for m in METHOD_NAMES]
HINT = "git clone https://github.com/vturrisi/solo-learn && pip install -e solo-learn"


def _select(cfg, key, default):
    value = OmegaConf.select(cfg, key, default=default)
    return default if value is None else value


def make_standins() -> dict[str, types.ModuleType]:
    """Stand-in solo-learn modules: base classes with solo-learn's static cfg chain, and a METHODS dict."""

    class BaseMethod:
        @staticmethod
        def add_and_assert_specific_cfg(cfg):
            cfg.method_kwargs = _select(cfg, "method_kwargs", {})
            return cfg

    class BaseMomentumMethod(BaseMethod):
        @staticmethod
        def add_and_assert_specific_cfg(cfg):
            cfg = super(BaseMomentumMethod, BaseMomentumMethod).add_and_assert_specific_cfg(cfg)
            cfg.momentum.base_tau = _select(cfg, "momentum.base_tau", 0.99)
            cfg.momentum.final_tau = _select(cfg, "momentum.final_tau", 1.0)
            cfg.momentum.classifier = _select(cfg, "momentum.classifier", False)
            return cfg

    classes = {
        "byol": type("BYOL", (BaseMomentumMethod,), {}),
        "dino": type("DINO", (BaseMomentumMethod,), {}),
        "mocov2plus": type("MoCoV2Plus", (BaseMomentumMethod,), {}),
        "ressl": type("ReSSL", (BaseMomentumMethod,), {}),
        "simclr": type("SimCLR", (BaseMethod,), {}),
        "simsiam": type("SimSiam", (BaseMethod,), {}),
    }
    solo = types.ModuleType("solo")
    methods = types.ModuleType("solo.methods")
    base = types.ModuleType("solo.methods.base")
    base.BaseMethod, base.BaseMomentumMethod = BaseMethod, BaseMomentumMethod
    methods.METHODS = {"base": BaseMethod, "swav": type("SwAV", (BaseMethod,), {}), **classes}
    methods.base = base
    solo.methods = methods
    return {"solo": solo, "solo.methods": methods, "solo.methods.base": base}


def _ours(name: str) -> bool:
    return name in ("solo", "solo_ema.solo") or name.startswith(("solo.", "solo_ema.solo."))


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch):
    """Take solo-learn and the plug-in out of sys.modules for one test, and put the originals back after it."""
    for name in [n for n in sys.modules if _ours(n)]:
        monkeypatch.delitem(sys.modules, name)
    yield monkeypatch
    for name in [n for n in sys.modules if _ours(n)]:
        del sys.modules[name]  # imported during the test; monkeypatch then restores the originals


@pytest.fixture
def standin(isolated: pytest.MonkeyPatch):
    """A fresh ``import solo_ema.solo`` against stand-in solo-learn modules; yields (plugin, stand-in modules)."""
    modules = make_standins()
    for name, module in modules.items():
        sys.modules[name] = module
    import solo_ema.solo as plugin

    yield plugin, modules


def test_import_registers_the_six_variants(standin):
    plugin, modules = standin
    registry = modules["solo.methods"].METHODS
    assert [n for n in registry if n.endswith("_ema")] == EMA_NAMES
    assert set(plugin.CLASSES) == set(EMA_NAMES)
    base = modules["solo.methods.base"].BaseMomentumMethod
    # BN1's features sit between the solo-learn method class and its BaseMomentumMethod (solo-learn's own head
    # code runs on them); SimCLR and SimSiam gain BaseMomentumMethod through them
    features = plugin.features_base(base)
    below = (features, plugin.BN1FeaturesMixin, base, modules["solo.methods.base"].BaseMethod)
    for method in MOMENTUM_METHODS:
        cls = registry[f"{method}_ema"]
        assert cls.__mro__[1:] == (plugin.PartialEMAMixin, registry[method], *below, object)
    assert plugin.SimCLREMA.__mro__[1:] == (plugin.SimCLREMAMixin, plugin.PartialEMAMixin, registry["simclr"], *below,
                                            object)
    assert plugin.SimSiamEMA.__mro__[1:] == (plugin.SimSiamEMAMixin, plugin.PartialEMAMixin, registry["simsiam"],
                                             *below, object)
    assert plugin.DINOEMA._head == "head" and plugin.BYOLEMA._head == "projector"
    assert plugin.MoCoV2PlusEMA._normalize_target and plugin.ReSSLEMA._normalize_target
    assert not plugin.BYOLEMA._normalize_target and not plugin.SimCLREMA._normalize_target


def test_register_is_idempotent_and_guards_names(standin):
    plugin, modules = standin
    registry = modules["solo.methods"].METHODS
    first = dict(plugin.CLASSES)
    assert plugin.register() == first  # same class objects, nothing rebuilt
    assert all(registry[name] is cls for name, cls in first.items())
    other = {"byol_ema": object}
    with pytest.raises(ValueError, match="byol_ema"):
        plugin.register(other, base_classes=registry, momentum_base=modules["solo.methods.base"].BaseMomentumMethod)
    replaced = plugin.register(
        other, base_classes=registry, momentum_base=modules["solo.methods.base"].BaseMomentumMethod, overwrite=True
    )
    assert other["byol_ema"] is first["byol_ema"] and replaced == first


def test_register_into_a_standin_registry(standin):
    plugin, modules = standin
    base = modules["solo.methods.base"].BaseMomentumMethod
    byol = modules["solo.methods"].METHODS["byol"]
    registry: dict[str, type] = {}
    added = plugin.register(registry, base_classes={"byol": byol}, momentum_base=base)
    assert list(added) == ["byol_ema"] and registry == added
    assert issubclass(registry["byol_ema"], byol)


def test_build_ema_class_checks_its_bases(standin):
    plugin, modules = standin
    base_mod = modules["solo.methods.base"]
    with pytest.raises(TypeError, match="BaseMomentumMethod"):
        plugin.build_ema_class("byol", base_mod.BaseMethod, base_mod.BaseMomentumMethod)
    with pytest.raises(KeyError, match="swav"):
        plugin.build_ema_class("swav", base_mod.BaseMethod, base_mod.BaseMomentumMethod)
    built = plugin.build_ema_classes({"simclr": modules["solo.methods"].METHODS["simclr"]}, base_mod.BaseMomentumMethod)
    assert list(built) == ["simclr_ema"]


PARTS_CASES = [
    (None, (0.99, 1.0), "all"),
    ("projector", (0.99, 1.0), "projector"),
    ("layer4+head", (0.99, 1.0), "block4+projector"),
    (["block4", "projector"], (0.99, 1.0), "block4+projector"),
    ([], (0.99, 1.0), "none"),
    ("projector", (0.0, 0.0), "none"),
    ("projector.0", (0.9, 0.9), "projector.0"),
]


@pytest.mark.parametrize(("parts", "taus", "expected"), PARTS_CASES)
def test_momentum_parts_in_the_config(standin, parts, taus, expected):
    plugin, _ = standin
    cfg = OmegaConf.create({"method": "byol_ema", "momentum": {"base_tau": taus[0], "final_tau": taus[1]}})
    if parts is not None:
        cfg.momentum.parts = parts
    cfg = plugin.BYOLEMA.add_and_assert_specific_cfg(cfg)
    assert cfg.momentum.parts == expected and "parts_spec" not in cfg.momentum


@pytest.mark.parametrize(("parts", "taus", "expected"), PARTS_CASES)
def test_engine_and_plugin_hold_one_canonical_parts_string(standin, monkeypatch, parts, taus, expected):
    """The engine's and the plug-in's add_and_assert_specific_cfg store the same canonical momentum.parts (beta 0:
    'none'); run again on their own output, as a model's __init__ does, they read it back without resolving."""
    import solo_ema.ema.parts as ema_parts
    from solo_ema.methods import BYOL

    plugin, _ = standin
    engine = OmegaConf.create({"method": "byol", "data": {"dataset": "cifar10", "num_classes": 10},
                               "optimizer": {"batch_size": 8, "lr": 0.1}})
    solo = OmegaConf.create({"method": "byol_ema"})
    for cfg in (engine, solo):
        OmegaConf.update(cfg, "momentum", {"base_tau": taus[0], "final_tau": taus[1]}, force_add=True)
        if parts is not None:
            cfg.momentum.parts = parts
    engine = BYOL.add_and_assert_specific_cfg(engine)
    solo = plugin.BYOLEMA.add_and_assert_specific_cfg(solo)
    assert engine.momentum.parts == solo.momentum.parts == expected
    assert "parts_spec" not in engine.momentum and "parts_spec" not in solo.momentum

    def resolved_again(*args, **kwargs):
        raise AssertionError("a resolved config was resolved again")

    monkeypatch.setattr(ema_parts, "resolve_parts", resolved_again)
    assert BYOL.add_and_assert_specific_cfg(engine).momentum.parts == expected
    assert plugin.BYOLEMA.add_and_assert_specific_cfg(solo).momentum.parts == expected


def test_simclr_and_simsiam_get_a_momentum_node(standin):
    plugin, _ = standin
    for cls in (plugin.SimCLREMA, plugin.SimSiamEMA):
        cfg = OmegaConf.create({"method": "simclr_ema", "method_kwargs": {"temperature": 0.2}})
        cfg = cls.add_and_assert_specific_cfg(cfg)
        assert (cfg.momentum.base_tau, cfg.momentum.final_tau, cfg.momentum.classifier) == (0.99, 1.0, False)
        assert cfg.momentum.parts == "all"


def test_bad_parts_name_the_valid_ones(standin):
    plugin, _ = standin
    cfg = OmegaConf.create({"momentum": {"parts": "block5"}})
    with pytest.raises(EMASpecError, match="block5.*valid"):
        plugin.BYOLEMA.add_and_assert_specific_cfg(cfg)


def test_import_without_solo_learn_is_one_line(isolated: pytest.MonkeyPatch):
    sys.modules["solo"] = None  # what an import of a package that is not installed meets
    isolated.setattr(sys, "argv", ["pytest"])
    with pytest.raises(ImportError) as info:
        import solo_ema.solo  # noqa: F401
    message = str(info.value)
    assert "\n" not in message and "not installed" in message and HINT in message
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_missing_dependency_of_solo_learn_is_named(standin):
    from solo_ema.solo.check import missing_message

    message = missing_message(ModuleNotFoundError("No module named 'timm'", name="timm"))
    assert "'timm'" in message and HINT in message and "\n" not in message
    assert "not installed" in missing_message(ModuleNotFoundError("No module named 'solo'", name="solo"))


def _fake_missing_solo(tmp_path: Path) -> dict[str, str]:
    """Environment whose PYTHONPATH shadows any installed solo-learn with a package that fails to import."""
    fake = tmp_path / "shadow" / "solo"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'solo'\", name='solo')\n")
    env = {k: v for k, v in os.environ.items() if k != "SOLO_LEARN_ROOT"}
    env["PYTHONPATH"] = os.pathsep.join([str(fake.parent), str(ROOT), env.get("PYTHONPATH", "")])
    return env


def test_cli_without_solo_learn_prints_one_line_and_exits_2(tmp_path: Path):
    env = _fake_missing_solo(tmp_path)
    cmd = [sys.executable, "-m", "solo_ema.solo_pretrain", "--config-path", "x", "--config-name", "y.yaml"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and HINT in lines[0], proc.stderr


def test_console_script_without_solo_learn(tmp_path: Path):
    script = Path(sys.executable).with_name("solo-ema-solo-pretrain")
    if not script.exists():
        pytest.skip("console script solo-ema-solo-pretrain not installed (pip install -e .)")
    proc = subprocess.run(
        [str(script), "--config-name", "y.yaml"],
        env=_fake_missing_solo(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and HINT in lines[0], proc.stderr


def test_cli_argument_plumbing(standin, tmp_path: Path):
    from solo_ema.solo.pretrain import absolute_config_paths
    from solo_ema.solo_pretrain import split_solo_root

    root, rest = split_solo_root(["--solo_root", "/src/solo-learn", "--config-name", "a.yaml", "++max_steps=2"])
    assert root == "/src/solo-learn" and rest == ["--config-name", "a.yaml", "++max_steps=2"]
    assert split_solo_root(["--solo_root=/x", "-cn", "a"]) == ("/x", ["-cn", "a"])
    with pytest.raises(ValueError):
        split_solo_root(["--solo_root"])
    args = ["--config-path", "solo_configs/pretrain/cifar", "-cp=rel", "--config-dir", "/abs", "--config-name", "a"]
    assert absolute_config_paths(args, tmp_path) == [
        "--config-path",
        str(tmp_path / "solo_configs/pretrain/cifar"),
        f"-cp={tmp_path / 'rel'}",
        "--config-dir",
        "/abs",
        "--config-name",
        "a",
    ]


def test_cli_finds_a_checkout(standin, tmp_path: Path):
    from solo_ema.solo.pretrain import find_solo_root

    checkout = tmp_path / "solo-learn"
    checkout.mkdir()
    with pytest.raises(FileNotFoundError, match="main_pretrain.py"):
        find_solo_root(str(checkout))
    (checkout / "main_pretrain.py").write_text("")
    assert find_solo_root(str(checkout)) == checkout.resolve()
    assert find_solo_root(None, str(checkout)) == checkout.resolve()


def test_entry_and_plugin_name_one_checkout_variable(standin):
    from solo_ema import solo_pretrain
    from solo_ema.solo import check

    assert solo_pretrain.ROOT_ENV == check.ROOT_ENV == "SOLO_LEARN_ROOT"


def test_cli_help_needs_no_solo_learn(isolated: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    sys.modules["solo"] = None
    from solo_ema.solo_pretrain import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: solo-ema-solo-pretrain [--solo_root PATH]") and "$SOLO_LEARN_ROOT" in out
    assert "solo_ema.solo" not in sys.modules  # help was printed without loading the plug-in

