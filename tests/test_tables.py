"""Each fact once: the command lines read the dataset table, the augmentation flags, the kNN metrics, the method
table and the defaults from their owners, and the engine fills a solo-learn-style config with the same defaults."""

from __future__ import annotations

import argparse

import pytest
from omegaconf import OmegaConf

from solo_ema import demo, linear, plot, pretrain, report
from solo_ema.data import catalog
from solo_ema.data.views import AUG_FLAGS, ViewRecipe
from solo_ema.engine import defaults, knn
from solo_ema.engine.backbones import BACKBONES
from solo_ema.errors import UsageError, UsageParser
from solo_ema.methods import METHODS
from solo_ema.methods.catalog import METHOD_INFO, METHOD_NAMES


def _action(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return next(a for a in parser._actions if flag in a.option_strings)


def test_cli_and_engine_defaults_are_the_one_table() -> None:
    """Every key of the defaults table: the CLI's resolved value and the engine's filled value equal the table's."""
    cli = pretrain.build_cfg(["--method", "byol", "--dataset", "cifar10", "--no_lr_scaling"])
    given = {"method": "byol", "data": {"dataset": "cifar10"},
             "optimizer": {k.split(".")[1]: defaults.DEFAULTS[k] for k in defaults.REQUIRED}}
    filled = METHODS["byol"].add_and_assert_specific_cfg(OmegaConf.create(given))
    for key, value in defaults.DEFAULTS.items():
        assert OmegaConf.select(cli, key) == value, f"CLI default of {key}"
        assert OmegaConf.select(filled, key) == value, f"engine default of {key}"
    for key in defaults.REQUIRED:  # the engine fills no required key: a config must give it
        top, sub = key.split(".")
        missing = {**given, top: {k: v for k, v in given[top].items() if k != sub}}
        with pytest.raises(KeyError, match=key):
            METHODS["byol"].add_and_assert_specific_cfg(OmegaConf.create(missing))


def test_cli_augmentation_flags_are_the_recipe_fields() -> None:
    """Every augmentation flag is a ViewRecipe field, parsed with the field's type, defaulting to the field's value."""
    parser = pretrain.build_parser()
    recipe = ViewRecipe()
    for name, (typ, default) in AUG_FLAGS.items():
        assert _action(parser, f"--{name}").type is typ
        assert getattr(recipe, name) == default


@pytest.mark.parametrize("module", [pretrain, linear])
def test_help_lists_the_dataset_and_knn_choices_of_their_owners(module) -> None:
    """--help names every dataset of the table and every kNN metric of the engine; the choices are the owners'."""
    parser = module.build_parser()
    text = " ".join(parser.format_help().split())
    dataset, metric = _action(parser, "--dataset"), _action(parser, "--knn_metric")
    assert metric.choices is knn.DISTANCES is defaults.DISTANCES
    assert f"{{{','.join(knn.DISTANCES)}}}" in text
    if module is linear:
        assert dataset.choices is catalog.DATASET_NAMES
        assert f"{{{','.join(catalog.DATASET_NAMES)}}}" in text
    else:  # checked in build_cfg, so that an unknown name gets the one-line error naming the flag
        assert ", ".join(catalog.DATASET_NAMES) in dataset.help
        assert ", ".join(catalog.DATASET_NAMES) in text


@pytest.mark.parametrize("module", [pretrain, linear, plot, report, demo])
def test_every_entry_point_parses_with_the_one_usage_parser(module, capsys) -> None:
    """Every entry point's parser is the UsageParser: a bad flag is one line on stderr and exit code 2."""
    assert isinstance(module.build_parser(), UsageParser)
    with pytest.raises(UsageError):
        module.build_parser().parse_args(["--no_such_flag"])
    assert module.main(["--no_such_flag"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{module.build_parser().prog}: error: ")
    assert pretrain.UsageError is UsageError


def test_the_method_table_names_the_method_classes_and_the_help_lists_them() -> None:
    """The method and backbone names the command line checks (standard-library tables) are those of the classes."""
    assert tuple(METHODS) == METHOD_NAMES and tuple(BACKBONES) == defaults.BACKBONE_NAMES
    parser = pretrain.build_parser()
    assert ", ".join(METHOD_NAMES) in _action(parser, "--method").help
    assert ", ".join(defaults.BACKBONE_NAMES) in _action(parser, "--backbone").help


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_crops_the_method_table_accepts_the_method_accepts(name: str) -> None:
    """The command line checks crop counts against the method table before it loads a method: every count the
    table accepts passes the method's own config check (MoCo v2+, ReSSL, SimSiam: exactly 2 large, no small)."""
    info = METHOD_INFO[name]
    low, high = info.large_crops
    for large, small in [(1, 0), (2, 0), (3, 0), (2, 2)]:
        in_table = low <= large and (high is None or large <= high) and (info.small_crops or small == 0)
        given = {"method": name, "data": {"dataset": "cifar10", "num_large_crops": large, "num_small_crops": small},
                 "optimizer": {"batch_size": 128, "lr": 0.1}}
        try:
            METHODS[name].add_and_assert_specific_cfg(OmegaConf.create(given))
        except ValueError:
            assert not in_table, f"{name}: the table accepts {large} large + {small} small crops, the method not"


def test_dataset_table_rows_drive_the_cli() -> None:
    """Default folder, classes and crop size come from the dataset's row; --device_data and --dali follow it."""
    for name, info in catalog.DATASETS.items():
        argv = ["--method", "byol", "--dataset", name, "--dry_run"]
        cfg = pretrain.build_cfg(argv)
        assert cfg.data.data_dir == info.default_dir
        assert cfg.data.num_classes == info.num_classes
        expected = ViewRecipe(crop_size=info.image_size, num_crops=2).to_dict()
        assert OmegaConf.to_container(cfg.augmentations) == [expected]
        for flag, supported in (("--device_data", info.device_data), ("--dali", info.dali)):
            if not supported:  # the supported cases run in test_device_data.py and test_imagenet_dali.py
                with pytest.raises(UsageError, match=f"^{flag}: "):
                    pretrain.build_cfg([*argv, flag])
