"""solo_configs/paper_tables.csv, the map of the paper's table rows onto shipped YAMLs and overrides, as data."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
TABLE_MAP = ROOT / "solo_configs" / "paper_tables.csv"


class Row(NamedTuple):
    """One row of a paper table: its YAML (under solo_configs/pretrain/) and its ``++key=value`` overrides."""

    table: str
    row: str
    config: str
    overrides: tuple[str, ...]

    @property
    def run_name(self) -> str:
        """The run's name, as the engine's table scripts name it (tableN-row, tableC8-row, figN-row)."""
        return f"fig{self.table[1:]}-{self.row}" if self.table.startswith("F") else f"table{self.table}-{self.row}"

    def argv(self) -> list[str]:
        """solo-ema-solo-pretrain's arguments for this row (its name first among the overrides)."""
        folder, name = self.config.split("/")
        return ["--config-path", f"solo_configs/pretrain/{folder}", "--config-name", name,
                f"++name={self.run_name}", *self.overrides]


def read_map() -> list[Row]:
    """The rows of solo_configs/paper_tables.csv."""
    with TABLE_MAP.open(newline="") as f:
        return [Row(r["table"], r["row"], r["config"], tuple(r["overrides"].split())) for r in csv.DictReader(f)]
