"""solo-ema-report: the paper's numbers (zoo/paper_results.csv) side by side with the runs of the table scripts.

Each row of a paper table is run by ``bash_files/tables/<table>.sh`` under the name ``table{T}-{row}``
(``fig4-{row}`` and ``fig6-{row}`` for the figures). The report reads ``<log_dir>/<name>/metrics.csv``
(Lightning's CSVLogger) of every row and prints, per table, a markdown table: row, metric, the paper's
value, this run's value and the difference (run - paper).

Metric mapping: top1 -> the last non-empty ``val_acc1`` (online linear classifier), top5 -> ``val_acc5``,
knn1 -> ``val_knn_acc1``, minutes_per_epoch -> mean ``epoch_time`` / 60; Table 4's counts in the paper's
units: ema_layers -> ``cost/ema_layers_paper``, params_m -> ``cost/params_m_paper``, backbone_forwards ->
``cost/backbone_forwards_per_view`` (n/a for logs written before these columns existed, printed with the
paper's decimals); wall_minutes (Appendix A) -> the sum of ``epoch_time`` / 60; any other metric -> n/a.

``--dry_runs PATH`` (``-``: standard input) reads the JSON lines that a table script prints under
``DRY_RUN=1`` and takes Table 4's counts from their ``cost`` object, so the cost columns fill without a run.

``--measured CSV`` prints a results file of ``python -m solo_ema.analysis.evidence`` (e.g. the evidence runs of
``bash_files/evidence/``) as a markdown table per method, with the ratios against the method's ``all`` run:
seconds per epoch / all's, and top-1 and kNN minus all's.

``--tag TABLE ROW`` is the filter the table scripts use under ``DRY_RUN=1``: every JSON object line of
standard input is printed back with ``"table"`` and ``"row"`` keys added.

Only the standard library (and `solo_ema.errors`, which needs nothing else) is imported here, so the filter
starts fast.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .errors import UsageError, UsageParser, usage_exit

PROG = "solo-ema-report"
DEFAULT_PAPER_CSV = Path(__file__).resolve().parent.parent / "zoo" / "paper_results.csv"

# paper metric -> (metrics.csv column, how to reduce the column's non-empty values)
METRICS: dict[str, tuple[str, str]] = {
    "top1": ("val_acc1", "last"),
    "top5": ("val_acc5", "last"),
    "knn1": ("val_knn_acc1", "last"),
    "minutes_per_epoch": ("epoch_time", "mean_minutes"),
    "ema_layers": ("cost/ema_layers_paper", "cost"),
    "params_m": ("cost/params_m_paper", "cost"),
    "backbone_forwards": ("cost/backbone_forwards_per_view", "cost"),
    "wall_minutes": ("epoch_time", "sum_minutes"),
}
NO_RUN = "no run"
NOT_AVAILABLE = "n/a"
NO_VALUE = "no value"
NO_PAPER_VALUE = "-"
DRY_RUN_ONLY = "dry run"
COLUMNS = ("row", "metric", "paper", "this run", "diff")
CSV_COLUMNS = ("table", "row", "run", "metric", "paper", "this_run", "diff")



@dataclass(frozen=True)
class Line:
    """One (table, row, metric) of the paper with this run's value, all as display strings."""

    table: str
    row: str
    run: str
    metric: str
    paper: str
    this_run: str
    diff: str
    has_run: bool = True  # False: no metrics.csv (the value is 'no run', or comes from a dry run)


def run_name(table: str, row: str) -> str:
    """The run name of a paper row: table3-byol-all, tableC8-no-ema; fig4-conv1 for the csv's F4."""
    if table.upper().startswith("F"):
        return f"fig{table[1:]}-{row}"
    return f"table{table}-{row}"


def table_title(table: str) -> str:
    """How the paper names a table: Table 3, Table C.8, Fig. 4."""
    m = re.fullmatch(r"([A-Za-z]?)(\d+)", table)
    if m is None:
        return f"Table {table}"
    letter, number = m.group(1).upper(), m.group(2)
    if letter == "F":
        return f"Fig. {number}"
    if letter:
        return f"Table {letter}.{number}"
    return f"Table {number}"


def script_name(table: str) -> str:
    """The table script of a csv table id: table3.sh, tableC8.sh, fig4.sh."""
    return run_name(table, "x")[:-2] + ".sh"


def canonical_table(name: str, known: Iterable[str]) -> str:
    """The csv's table id for a user's name ('3', 'table3', 'C8', 'C.8', 'tableC8', 'F4', 'fig4', 'Fig. 4')."""
    known = list(known)
    text = re.sub(r"[\s._-]", "", name).lower()
    text = re.sub(r"^(table|tab)", "", text)
    text = re.sub(r"^(figure|fig)", "f", text)
    for table in known:
        if table.lower() == text:
            return table
    raise UsageError(f"unknown table '{name}'; valid: {', '.join(known)}")


def read_rows(path: str | Path, flag: str, needs: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of a CSV file given with `flag`, which must exist, hold rows and have the columns `needs`."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{flag}: no such file '{path}'")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    missing = set(needs) - set(rows[0] if rows else {})
    if not rows or missing:
        raise UsageError(f"{flag}: '{path}' has no rows or lacks the columns {', '.join(sorted(missing))}")
    return rows


def load_paper(path: str | Path) -> list[dict[str, str]]:
    """The rows of zoo/paper_results.csv (one per table, row and metric), in file order."""
    return read_rows(path, "--paper", ("table", "row", "metric", "value"))


def read_metrics(run_dir: str | Path) -> list[dict[str, str]] | None:
    """The rows of <run_dir>/metrics.csv, or None when the run has none."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return None
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _floats(rows: Sequence[dict[str, str]], column: str) -> list[float]:
    out = []
    for r in rows:
        text = (r.get(column) or "").strip()
        if text:
            try:
                out.append(float(text))
            except ValueError:
                continue
    return out


def metric_value(rows: Sequence[dict[str, str]], metric: str) -> float | str:
    """This run's value of a paper metric (a float), or NOT_AVAILABLE / NO_VALUE."""
    if metric not in METRICS:
        return NOT_AVAILABLE
    column, how = METRICS[metric]
    values = _floats(rows, column)
    if not values:
        return NOT_AVAILABLE if how == "cost" else NO_VALUE
    if how in ("last", "cost"):
        return values[-1]
    if how == "sum_minutes":
        return sum(values) / 60.0
    return sum(values) / len(values) / 60.0


def read_dry_runs(src: TextIO) -> dict[tuple[str, str], list[dict[str, str]]]:
    """{(table, row): one metrics-like row of ``cost/<key>`` values} from tagged ``--dry_run`` JSON lines."""
    out: dict[tuple[str, str], list[dict[str, str]]] = {}
    for line in src:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "table" in obj and "row" in obj and isinstance(obj.get("cost"), dict):
            costs = {f"cost/{k}": str(v) for k, v in obj["cost"].items() if isinstance(v, int | float)}
            out[(str(obj["table"]), str(obj["row"]))] = [costs]
    return out


def _decimals(text: str) -> int:
    return len(text.split(".", 1)[1]) if "." in text else 0


def compare(paper: Sequence[dict[str, str]], log_dir: str | Path, tables: Sequence[str],
            dry_runs: dict[tuple[str, str], list[dict[str, str]]] | None = None) -> list[Line]:
    """One Line per paper (table, row, metric) of the given tables (in their order), with this run's value
    (Table 4's counts from ``dry_runs`` where given)."""
    lines = []
    cache: dict[str, list[dict[str, str]] | None] = {}
    dry_runs = dry_runs or {}
    for p in sorted((p for p in paper if p["table"] in tables), key=lambda p: tables.index(p["table"])):
        name = run_name(p["table"], p["row"])
        if name not in cache:
            cache[name] = read_metrics(Path(log_dir) / name)
        rows = cache[name]
        dry = dry_runs.get((p["table"], p["row"]))
        is_cost = METRICS.get(p["metric"], ("", ""))[1] == "cost"
        paper_text = p["value"].strip() or NO_PAPER_VALUE
        if dry is not None and is_cost:
            value: float | str = metric_value(dry, p["metric"])
        elif rows is None:
            value = DRY_RUN_ONLY if dry is not None else NO_RUN
        else:
            value = metric_value(rows, p["metric"])
        places = _decimals(paper_text) if is_cost and paper_text != NO_PAPER_VALUE else 2
        diff = ""
        if isinstance(value, float) and paper_text != NO_PAPER_VALUE:
            diff = f"{value - float(paper_text):+.{places}f}"
        this_run = f"{value:.{places}f}" if isinstance(value, float) else value
        lines.append(Line(p["table"], p["row"], name, p["metric"], paper_text, this_run, diff, rows is not None))
    return lines


def format_markdown(lines: Sequence[Line], tables: Sequence[str]) -> str:
    """Per table: a heading and a markdown table (row, metric, paper, this run, diff)."""
    blocks = []
    for table in tables:
        mine = [ln for ln in lines if ln.table == table]
        ran = len({ln.row for ln in mine if ln.has_run})
        dry = len({ln.row for ln in mine if not ln.has_run and ln.this_run != NO_RUN})
        rows = len({ln.row for ln in mine})
        out = [
            f"## {table_title(table)}",
            "",
            f"bash bash_files/tables/{script_name(table)}: {ran} of {rows} rows have a run"
            + (f", {dry} a dry run only" if dry else ""),
            "",
            "| " + " | ".join(COLUMNS) + " |",
            "|" + "|".join(["---"] * 2 + ["---:"] * 3) + "|",
        ]
        out += [f"| {ln.row} | {ln.metric} | {ln.paper} | {ln.this_run} | {ln.diff} |" for ln in mine]
        blocks.append("\n".join(out))
    return "\n\n".join(blocks) + "\n"


def write_csv(lines: Sequence[Line], path: str | Path) -> None:
    """The same comparison as CSV: table, row, run, metric, paper, this_run, diff."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for ln in lines:
            w.writerow([ln.table, ln.row, ln.run, ln.metric, ln.paper, ln.this_run, ln.diff])


def tag(table: str, row: str, src: TextIO, dst: TextIO) -> int:
    """Copy src to dst, adding "table" and "row" to every JSON object line; return the number tagged."""
    tagged = 0
    for line in src:
        text = line.strip()
        if not text:
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            obj["table"], obj["row"] = table, row
            dst.write(json.dumps(obj, sort_keys=True) + "\n")
            tagged += 1
        else:
            dst.write(line if line.endswith("\n") else line + "\n")
    dst.flush()
    return tagged


MEASURED_NEEDS = ("run", "method", "ema_parts", "epochs", "top1", "knn1", "seconds_per_epoch")
MEASURED_COLUMNS = ("run", "EMA", "tau", "epochs", "top-1", "kNN", "s/epoch", "time / all", "top-1 - all",
                    "kNN - all")


def load_measured(path: str | Path) -> list[dict[str, str]]:
    """The rows of a measured results file (one per run), checked for the columns the table needs."""
    return read_rows(path, "--measured", MEASURED_NEEDS)


def _num(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_measured(rows: Sequence[dict[str, str]]) -> str:
    """Per method: runs with top-1, kNN, s/epoch, and the ratio / deltas against the method's `all` run."""
    blocks = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        ref = next((r for r in mine if r["ema_parts"] == "all"), None)
        out = [f"## {method}", "", "| " + " | ".join(MEASURED_COLUMNS) + " |",
               "|" + "|".join(["---"] * 2 + ["---:"] * (len(MEASURED_COLUMNS) - 2)) + "|"]
        for r in mine:
            top, knn, sec = _num(r["top1"]), _num(r["knn1"]), _num(r["seconds_per_epoch"])
            ratio = d_top = d_knn = None
            if ref is not None:
                ref_sec, ref_top, ref_knn = _num(ref["seconds_per_epoch"]), _num(ref["top1"]), _num(ref["knn1"])
                ratio = sec / ref_sec if sec is not None and ref_sec else None
                d_top = top - ref_top if top is not None and ref_top is not None else None
                d_knn = knn - ref_knn if knn is not None and ref_knn is not None else None
            tau = r.get("base_tau", "")
            if r.get("final_tau") not in (None, "", tau):
                tau = f"{tau} -> {r['final_tau']}"
            out.append(f"| {r['run']} | {r['ema_parts']} | {tau or '-'} | {r['epochs']} | {_fmt(top, '.2f')} | "
                       f"{_fmt(knn, '.2f')} | {_fmt(sec, '.1f')} | {_fmt(ratio, '.3f')} | {_fmt(d_top, '+.2f')} | "
                       f"{_fmt(d_knn, '+.2f')} |")
        if ref is None:
            out += ["", f"(no `all` run of {method}: no ratios)"]
        blocks.append("\n".join(out))
    facts = []
    for key in ("commit", "hardware", "command"):
        values = list(dict.fromkeys(r.get(key, "") for r in rows if r.get(key)))
        if values:
            facts.append(f"{key}: " + "; ".join(values))
    return "\n\n".join(blocks) + ("\n\n" + "\n".join(facts) if facts else "") + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The report's flags."""
    p = UsageParser(prog=PROG, description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--log_dir", default="runs", help="folder of the runs (<log_dir>/<run name>/metrics.csv)")
    p.add_argument("--table", action="append", default=None, metavar="T",
                   help="a table to report (3, C8, F4, table3, fig4, ...; repeatable; default: all)")
    p.add_argument("--csv", default=None, metavar="PATH", help="also write the comparison as CSV")
    p.add_argument("--paper", default=str(DEFAULT_PAPER_CSV), metavar="PATH",
                   help="the paper's numbers (default: zoo/paper_results.csv of this checkout)")
    p.add_argument("--measured", default=None, metavar="CSV",
                   help="print a measured results file (python -m solo_ema.analysis.evidence) with its ratios")
    p.add_argument("--dry_runs", default=None, metavar="PATH",
                   help="JSON lines of a table script under DRY_RUN=1 ('-': stdin): Table 4's counts from their cost")
    p.add_argument("--tag", nargs=2, default=None, metavar=("TABLE", "ROW"),
                   help="filter: add table and row to the JSON lines on stdin (the table scripts' DRY_RUN)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of solo-ema-report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        if args.tag is not None:
            tag(args.tag[0], args.tag[1], sys.stdin, sys.stdout)
            return 0
        if args.measured is not None:
            sys.stdout.write(format_measured(load_measured(args.measured)))
            return 0
        paper = load_paper(args.paper)
        known = list(dict.fromkeys(p["table"] for p in paper))
        tables = known if not args.table else list(dict.fromkeys(canonical_table(t, known) for t in args.table))
        dry_runs = None
        if args.dry_runs == "-":
            dry_runs = read_dry_runs(sys.stdin)
        elif args.dry_runs is not None:
            if not Path(args.dry_runs).is_file():
                raise UsageError(f"--dry_runs: no such file '{args.dry_runs}'")
            with open(args.dry_runs, encoding="utf-8") as f:
                dry_runs = read_dry_runs(f)
        lines = compare(paper, args.log_dir, tables, dry_runs)
        sys.stdout.write(format_markdown(lines, tables))
        if args.csv:
            write_csv(lines, args.csv)
    except UsageError as exc:
        return usage_exit(PROG, exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
