"""The paper's tables inside solo-learn: solo_configs/paper_tables.csv maps every row of every table script
(bash_files/tables/*.sh: Tables 1-7, C.8, D.9, Figs. 4 and 6) to a shipped YAML and its command-line overrides, and
docs/solo_learn.md shows that map.

Promised: the map has exactly the table scripts' rows; each row's YAML exists and composes with hydra (the
solo-learn configs' own loader), its overrides parse with hydra's override grammar and name keys the YAML has (or
that solo-learn / the plug-in fill with defaults), and the composed solo-learn config is the engine's config of the
same row (``solo_ema.pretrain.build_cfg`` of the table script's command line) hyper-parameter by hyper-parameter
(recipe_compare.assert_same_recipe), but for the documented differences below; the map in docs/solo_learn.md is
the CSV's rendering. Fitting the YAMLs (and a few rows with overrides) is tests/test_solo_plugin.py's part.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf
from recipe_compare import assert_same_recipe
from table_map import Row, read_map

from solo_ema.pretrain import build_cfg

hydra = pytest.importorskip("hydra", reason="hydra-core comes with solo-learn: `make solo-learn`")
from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: E402
from hydra.core.override_parser.types import OverrideType  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "solo_configs" / "pretrain"
DOC = ROOT / "docs" / "solo_learn.md"
BEGIN, END = "<!-- paper-tables: begin -->", "<!-- paper-tables: end -->"
#: keys a row may add to a YAML that lacks them: solo-learn's kNN switch, the plug-in's BatchNorm switches
DEFAULTED_KEYS = {"knn_eval.enabled", "method_kwargs.bn_backbone_out", "method_kwargs.bn_projector_out"}
#: documented differences (docs/solo_learn.md): row -> {key: the plug-in's value}, where the faces cannot agree.
#: Table 2's random encoder trains with lr 0; solo-learn warms every parameter group up from one warmup_start_lr,
#: which must be 0 too (the engine warms each group from 3e-5 towards its own lr and keeps a zero lr at zero).
DIFFERENCES = {("2", "random-encoder"): {"scheduler.warmup_start_lr": 0.0}}
TITLES = {"C8": "C.8", "D9": "D.9", "F4": "Fig. 4", "F6": "Fig. 6"}


ROWS = read_map()


@functools.cache
def engine_rows() -> dict[tuple[str, str], list[str]]:
    """(table, row) -> the engine's command line of that row, from every table script run with PYTHON=echo."""
    rows = {}
    for script in sorted((ROOT / "bash_files" / "tables").glob("[tf]*.sh")):
        out = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHON": "echo"}, cwd=ROOT).stdout
        for line in out.splitlines():
            argv = line.split()
            assert argv[:2] == ["-m", "solo_ema.pretrain"], line
            name = argv[argv.index("--name") + 1]
            kind, table, row = re.fullmatch(r"(table|fig)([0-9A-Z]+)-(.+)", name).groups()
            rows[(f"F{table}" if kind == "fig" else table, row)] = argv[2:]
    return rows


@functools.cache
def composed(config: str) -> DictConfig:
    """A YAML of solo_configs/pretrain composed by hydra (its defaults, the configs it extends, applied)."""
    path = CONFIGS / config
    with hydra.initialize_config_dir(config_dir=str(path.parent), version_base="1.2"):
        return hydra.compose(config_name=path.name)


def with_overrides(row: Row) -> DictConfig:
    """The row's config: its composed YAML with its ``++key=value`` overrides (and its name) applied as hydra does."""
    cfg = OmegaConf.create(OmegaConf.to_container(composed(row.config)))
    for override in OverridesParser.create().parse_overrides([f"++name={row.run_name}", *row.overrides]):
        assert override.type == OverrideType.FORCE_ADD, override.input_line  # '++': set, or add when absent
        OmegaConf.update(cfg, override.key_or_group, override.value(), merge=True, force_add=True)
    return cfg


def render(rows: list[Row]) -> str:
    """The map as docs/solo_learn.md shows it (a markdown table, one line per row)."""
    lines = ["| table | row | `--config-name` (under `solo_configs/pretrain/`) | overrides |", "|---|---|---|---|"]
    for r in rows:
        overrides = " ".join(f"`{o}`" for o in r.overrides) or "-"
        lines.append(f"| {TITLES.get(r.table, r.table)} | `{r.row}` | `{r.config}` | {overrides} |")
    return "\n".join(lines)


def test_the_map_has_every_row_of_every_table_script() -> None:
    """Tables 1-7, C.8, D.9 and Figs. 4 and 6, row for row as the engine's table scripts run them, once each."""
    keys = [(r.table, r.row) for r in ROWS]
    assert len(keys) == len(set(keys))
    assert set(keys) == set(engine_rows())
    assert {t for t, _ in keys} == {"1", "2", "3", "4", "5", "6", "7", "C8", "D9", "F4", "F6"}


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.run_name)
def test_each_row_composes_to_the_engines_config_of_that_row(row: Row) -> None:
    """The row's YAML exists and composes, its overrides set existing keys (or defaulted ones), and the result is the
    engine's config of the row, but for the documented differences."""
    assert (CONFIGS / row.config).is_file(), row.config
    base = composed(row.config)
    for override in row.overrides:
        key = override.removeprefix("++").split("=", 1)[0]
        assert OmegaConf.select(base, key) is not None or key in DEFAULTED_KEYS, f"{row.run_name}: {key}"
    cfg = with_overrides(row)
    assert cfg.name == row.run_name
    differ = DIFFERENCES.get((row.table, row.row), {})
    for key, value in differ.items():
        assert OmegaConf.select(cfg, key) == value, key
    engine = build_cfg(engine_rows()[(row.table, row.row)])
    assert_same_recipe(cfg, engine, differ)


@pytest.mark.parametrize("table", sorted({r.table for r in ROWS}))
def test_overrides_applied_here_are_hydras(table: str) -> None:
    """For the row of each table with the most overrides, hydra's own compose gives the config built above."""
    row = max((r for r in ROWS if r.table == table), key=lambda r: len(r.overrides))
    path = CONFIGS / row.config
    with hydra.initialize_config_dir(config_dir=str(path.parent), version_base="1.2"):
        real = hydra.compose(config_name=path.name, overrides=row.argv()[4:])
    assert OmegaConf.to_container(real) == OmegaConf.to_container(with_overrides(row))


def test_docs_show_the_map() -> None:
    """docs/solo_learn.md holds the CSV's rendering between its markers (regenerate it from render() on a change)."""
    text = DOC.read_text(encoding="utf-8")
    assert BEGIN in text and END in text
    shown = text[text.index(BEGIN) + len(BEGIN): text.index(END)].strip()
    expected = render(ROWS)
    assert shown == expected, f"docs/solo_learn.md's map differs from solo_configs/paper_tables.csv:\n{expected}"
