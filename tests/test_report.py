"""solo-ema-report: paper numbers side by side with fabricated run logs, the CSV copy, names and the --tag filter."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from solo_ema.report import DEFAULT_PAPER_CSV, canonical_table, main, run_name, tag

PAPER = """table,row,metric,value,method,ema_parts,beta
3,byol-all,top1,62.01,byol,all,0.99
3,byol-projector,top1,59.61,byol,projector,0.99
3,dino-projector,top1,58.14,dino,projector,0.99
4,dino-all,top1,67.9,dino,all,0.99
4,dino-all,top5,88.3,dino,all,0.99
4,dino-all,minutes_per_epoch,56.5,dino,all,0.99
4,dino-all,params_m,47.0,dino,all,0.99
F4,block1,top1,,byol,block1,0.99
C8,byol,knn1,54.84,byol,all,0.99
"""

EXPECTED = """## Table 3

bash bash_files/tables/table3.sh: 2 of 3 rows have a run

| row | metric | paper | this run | diff |
|---|---|---:|---:|---:|
| byol-all | top1 | 62.01 | 61.50 | -0.51 |
| byol-projector | top1 | 59.61 | no run |  |
| dino-projector | top1 | 58.14 | no value |  |

## Table 4

bash bash_files/tables/table4.sh: 1 of 1 rows have a run

| row | metric | paper | this run | diff |
|---|---|---:|---:|---:|
| dino-all | top1 | 67.9 | 68.25 | +0.35 |
| dino-all | top5 | 88.3 | 88.30 | +0.00 |
| dino-all | minutes_per_epoch | 56.5 | 56.50 | +0.00 |
| dino-all | params_m | 47.0 | n/a |  |

## Fig. 4

bash bash_files/tables/fig4.sh: 1 of 1 rows have a run

| row | metric | paper | this run | diff |
|---|---|---:|---:|---:|
| block1 | top1 | - | 40.00 |  |

## Table C.8

bash bash_files/tables/tableC8.sh: 1 of 1 rows have a run

| row | metric | paper | this run | diff |
|---|---|---:|---:|---:|
| byol | knn1 | 54.84 | 55.00 | +0.16 |
"""


def write_metrics(run_dir: Path, rows: list[dict[str, object]]) -> None:
    """A Lightning-CSVLogger-like metrics.csv: the union of the keys as columns, empty cells elsewhere."""
    run_dir.mkdir(parents=True)
    columns = sorted({k for r in rows for k in r})
    with (run_dir / "metrics.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow(r)


@pytest.fixture
def fabricated(tmp_path) -> tuple[Path, Path]:
    """(paper csv, log_dir) with runs for some rows: values, empty cells, a run without the metric, no run."""
    paper = tmp_path / "paper.csv"
    paper.write_text(PAPER)
    logs = tmp_path / "runs"
    write_metrics(logs / "table3-byol-all", [
        {"epoch": 0, "step": 10, "train_acc1_step": 5.0},
        {"epoch": 0, "step": 10, "val_acc1": 10.0, "val_acc5": 30.0},
        {"epoch": 1, "step": 20, "train_acc1_step": 7.0},
        {"epoch": 1, "step": 20, "val_acc1": 61.5, "val_acc5": 80.0},
        {"epoch": 1, "step": 20, "epoch_time": 12.0},
    ])
    write_metrics(logs / "table3-dino-projector", [{"epoch": 0, "step": 1, "train_acc1_step": 3.0}])
    write_metrics(logs / "table4-dino-all", [
        {"epoch": 0, "step": 5, "epoch_time": 3300.0},
        {"epoch": 0, "step": 5, "val_acc1": 60.0, "val_acc5": 80.0},
        {"epoch": 1, "step": 10, "epoch_time": 3480.0},
        {"epoch": 1, "step": 10, "val_acc1": 68.25, "val_acc5": 88.3},
        {"epoch": 1, "step": 10, "cost/ema_layers": 57.0},
    ])
    write_metrics(logs / "fig4-block1", [{"epoch": 0, "step": 1, "val_acc1": 40.0}])
    write_metrics(logs / "tableC8-byol", [{"epoch": 0, "step": 1, "val_acc1": 50.0, "val_knn_acc1": 55.0}])
    return paper, logs


def test_report_prints_the_side_by_side_tables(capsys, fabricated) -> None:
    """Exact markdown: last non-empty values, mean epoch minutes, differences, 'no run', 'no value', n/a, '-'."""
    paper, logs = fabricated
    assert main(["--paper", str(paper), "--log_dir", str(logs)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out == EXPECTED


def test_report_table_filter_and_csv(capsys, fabricated, tmp_path) -> None:
    """--table picks tables (any spelling, repeatable) and --csv writes the same lines as CSV."""
    paper, logs = fabricated
    out_csv = tmp_path / "out" / "report.csv"
    argv = ["--paper", str(paper), "--log_dir", str(logs), "--table", "fig4", "--table", "3", "--csv", str(out_csv)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("## Fig. 4\n") and "## Table 3\n" in out and "Table 4" not in out
    with out_csv.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [
        ["table", "row", "run", "metric", "paper", "this_run", "diff"],
        ["F4", "block1", "fig4-block1", "top1", "-", "40.00", ""],
        ["3", "byol-all", "table3-byol-all", "top1", "62.01", "61.50", "-0.51"],
        ["3", "byol-projector", "table3-byol-projector", "top1", "59.61", "no run", ""],
        ["3", "dino-projector", "table3-dino-projector", "top1", "58.14", "no value", ""],
    ]


@pytest.mark.parametrize("argv", [["--table", "9"], ["--table", "C9"], ["--paper", "/nonexistent.csv"], ["--nope"]])
def test_report_bad_input_is_one_line_exit_2(capsys, fabricated, argv) -> None:
    """A bad table name, a missing paper csv or an unknown flag: exit 2 and one error line, nothing on stdout."""
    paper, logs = fabricated
    assert main(["--paper", str(paper), "--log_dir", str(logs), *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("solo-ema-report: error:"), err
    if argv[0] == "--table":
        assert f"unknown table '{argv[1]}'" in lines[0] and "valid: 3, 4, F4, C8" in lines[0]


def test_table_names_and_run_names() -> None:
    """User spellings map to the csv's table ids; run names follow the table scripts (tableC8-..., fig4-...)."""
    known = ["1", "3", "C8", "D9", "F4", "F6"]
    for name, table in [("3", "3"), ("table3", "3"), ("Table 3", "3"), ("C8", "C8"), ("c.8", "C8"),
                        ("tableC8", "C8"), ("Table C.8", "C8"), ("F4", "F4"), ("fig4", "F4"), ("Fig. 6", "F6"),
                        ("figure6", "F6"), ("d9", "D9")]:
        assert canonical_table(name, known) == table, name
    assert run_name("3", "byol-all") == "table3-byol-all"
    assert run_name("C8", "no-ema") == "tableC8-no-ema"
    assert run_name("F4", "conv1") == "fig4-conv1"
    assert run_name("F6", "dino-all") == "fig6-dino-all"


def test_tag_adds_table_and_row_to_json_lines() -> None:
    """--tag: JSON object lines get "table" and "row"; other lines pass unchanged; blank lines are dropped."""
    src = io.StringIO('{"name": "table3-x", "momentum": {"parts": []}}\nnot json\n\n[1, 2]\n')
    dst = io.StringIO()
    assert tag("3", "x", src, dst) == 1
    lines = dst.getvalue().splitlines()
    assert json.loads(lines[0]) == {"name": "table3-x", "momentum": {"parts": []}, "table": "3", "row": "x"}
    assert lines[1:] == ["not json", "[1, 2]"]


def test_report_on_the_shipped_paper_csv_without_runs(capsys, tmp_path) -> None:
    """On zoo/paper_results.csv with no runs, every paper line is reported as 'no run' under its table's title."""
    with DEFAULT_PAPER_CSV.open(newline="") as f:
        paper = list(csv.DictReader(f))
    assert main(["--log_dir", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    body = [ln for ln in out.splitlines() if ln.startswith("| ") and not ln.startswith("| row ")]
    assert len(body) == len(paper)
    assert all(" | no run |" in ln for ln in body)
    for title in ("## Table 1", "## Table 2", "## Table 7", "## Table C.8", "## Table D.9", "## Fig. 4", "## Fig. 6"):
        assert title in out


PAPER_T4 = """table,row,metric,value,method,ema_parts,beta
4,dino-all,ema_layers,53,dino,all,0.99
4,dino-all,params_m,47.0,dino,all,0.99
4,dino-all,backbone_forwards,2,dino,all,0.99
4,dino-all,top1,67.9,dino,all,0.99
4,dino-projector,ema_layers,3,dino,projector,0.99
4,dino-projector,params_m,23.5,dino,projector,0.99
4,dino-projector,wall_minutes,1100.5,dino,projector,0.99
"""


def test_report_fills_table4_counts_from_dry_runs_and_run_logs(capsys, tmp_path, monkeypatch) -> None:
    """--dry_runs (a file or '-') fills the paper-unit counts, printed with the paper's decimals; a run's
    metrics.csv gives them from cost/*_paper, and wall_minutes is the sum of its epoch times."""
    paper = tmp_path / "paper.csv"
    paper.write_text(PAPER_T4)
    dry = tmp_path / "dry.jsonl"
    dry.write_text("not json\n" + json.dumps({"table": "4", "row": "dino-all", "cost": {
        "ema_layers": 57, "ema_layers_paper": 53, "params_m_paper": 47.0161, "backbone_forwards_per_view": 2,
        "ema_parts": "all"}}) + "\n")
    write_metrics(tmp_path / "runs" / "table4-dino-projector", [
        {"epoch": 0, "step": 0, "cost/ema_layers_paper": 3.0, "cost/params_m_paper": 23.508},
        {"epoch": 0, "step": 5, "epoch_time": 33000.0},
        {"epoch": 1, "step": 10, "epoch_time": 33060.0},
    ])
    argv = ["--paper", str(paper), "--log_dir", str(tmp_path / "runs"), "--table", "4"]
    assert main([*argv, "--dry_runs", str(dry)]) == 0
    out = capsys.readouterr().out
    assert out == """## Table 4

bash bash_files/tables/table4.sh: 1 of 2 rows have a run, 1 a dry run only

| row | metric | paper | this run | diff |
|---|---|---:|---:|---:|
| dino-all | ema_layers | 53 | 53 | +0 |
| dino-all | params_m | 47.0 | 47.0 | +0.0 |
| dino-all | backbone_forwards | 2 | 2 | +0 |
| dino-all | top1 | 67.9 | dry run |  |
| dino-projector | ema_layers | 3 | 3 | +0 |
| dino-projector | params_m | 23.5 | 23.5 | +0.0 |
| dino-projector | wall_minutes | 1100.5 | 1101.00 | +0.50 |
"""
    monkeypatch.setattr("sys.stdin", io.StringIO(dry.read_text()))
    assert main([*argv, "--dry_runs", "-"]) == 0
    assert capsys.readouterr().out == out
    assert main([*argv, "--dry_runs", str(tmp_path / "missing.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"solo-ema-report: error: --dry_runs: no such file '{tmp_path}/missing.jsonl'"]
