"""Measured results: collecting run folders into the results file, and solo-ema-report --measured with its ratios."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from solo_ema.analysis.evidence import collect, epoch_curves
from solo_ema.analysis.evidence import main as evidence_main
from solo_ema.analysis.plots import load_run
from solo_ema.ema import parse_ema_spec
from solo_ema.report import main as report_main

HEADER = ["epoch", "step", "train_byol_loss_step", "val_acc1", "val_knn_acc1", "epoch_time"]


def _fake_run(root: Path, name: str, parts: str, tau: float, top1: list[float], knn: list[float],
              seconds: list[float], old_form: bool = False) -> Path:
    """A run folder as solo-ema-pretrain leaves it: Lightning-style metrics.csv rows and config.json (old_form:
    as runs saved before momentum.parts became the canonical string: parts_spec plus a list of part names)."""
    run = root / name
    run.mkdir(parents=True)
    with (run / "metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for epoch, (t, k, s) in enumerate(zip(top1, knn, seconds)):
            w.writerow([epoch, 10 * epoch + 9, 1.5, "", "", ""])  # a training step row
            w.writerow([epoch, 10 * epoch + 9, "", t, k, ""])  # validation at the end of the epoch
            w.writerow([epoch, 10 * epoch + 9, "", "", "", s])  # the epoch time
    config = {"method": "byol", "seed": 5, "data": {"dataset": "fashion_mnist", "format": "device"},
              "optimizer": {"batch_size": 256}, "cost": {"momentum_params": 1000 if parts != "none" else 0},
              "momentum": {"parts": parts, "base_tau": tau, "final_tau": 1.0 if tau else 0.0}}
    if old_form:
        config["momentum"]["parts"] = list(parse_ema_spec(parts).parts)
        config["momentum"]["parts_spec"] = parts
    (run / "config.json").write_text(json.dumps(config))
    return run


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    """Three BYOL runs: all (10 s/epoch after a slow first epoch), projector (7 s), none (6.9 s; saved in the old
    form: momentum.parts_spec and a list momentum.parts)."""
    return [
        _fake_run(tmp_path, "byol-all", "all", 0.99, [50.0, 70.0, 80.0], [55.0, 72.0, 81.5], [30.0, 10.0, 10.0]),
        _fake_run(tmp_path, "byol-projector", "projector", 0.99, [49.0, 69.0, 79.25], [54.0, 70.0, 80.0],
                  [20.0, 7.0, 7.0]),
        _fake_run(tmp_path, "byol-none", "none", 0.0, [40.0, 60.0, 75.0], [45.0, 66.0, 74.0], [20.0, 6.9, 6.9],
                  old_form=True),
    ]


def test_collect_writes_summary_curves_and_png(runs, tmp_path):
    """Last-epoch top-1/kNN, best values, mean epoch time without the first epoch, curves per epoch, a PNG."""
    out = tmp_path / "zoo" / "fm.csv"
    written = collect(runs, out, command="EPOCHS=3 bash x.sh")
    assert [p.name for p in written] == ["fm.csv", "fm_curves.csv", "fm.png"]
    rows = {r["run"]: r for r in csv.DictReader(out.open())}
    assert float(rows["byol-all"]["top1"]) == 80.0 and float(rows["byol-all"]["knn1"]) == 81.5
    assert float(rows["byol-projector"]["seconds_per_epoch"]) == pytest.approx(7.0)
    assert rows["byol-none"]["ema_parts"] == "none" and rows["byol-none"]["epochs"] == "3"
    assert (rows["byol-all"]["ema_parts"], rows["byol-projector"]["ema_parts"]) == ("all", "projector")
    assert rows["byol-all"]["command"] == "EPOCHS=3 bash x.sh" and rows["byol-all"]["commit"]
    curves = list(csv.DictReader((tmp_path / "zoo" / "fm_curves.csv").open()))
    assert len(curves) == 9 and [float(c["top1"]) for c in curves[:3]] == [50.0, 70.0, 80.0]
    assert epoch_curves(runs[0] / "metrics.csv")[0]["epoch_seconds"] == 30.0
    assert (tmp_path / "zoo" / "fm.png").stat().st_size > 1000


def test_commit_flag_names_the_code_of_a_source_export(runs, tmp_path):
    """--commit is stored in every row (a source export has no git to ask); without it the checkout's is."""
    out = tmp_path / "fm.csv"
    assert evidence_main([*map(str, runs), "--out", str(out), "--no_png", "--commit", "0123abcd4567"]) == 0
    assert [r["commit"] for r in csv.DictReader(out.open())] == ["0123abcd4567"] * 3
    collect(runs[:1], out, png=False)
    assert next(csv.DictReader(out.open()))["commit"] not in ("", "0123abcd4567")


def test_report_measured_shows_ratios_against_all(runs, tmp_path, capsys):
    """--measured: time / all and the top-1 and kNN deltas against the all run, per method."""
    out = tmp_path / "fm.csv"
    collect(runs, out, png=False)
    assert report_main(["--measured", str(out)]) == 0
    lines = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]]
             for ln in capsys.readouterr().out.splitlines() if ln.startswith("| byol-")}
    assert lines["byol-all"][5:] == ["10.0", "1.000", "+0.00", "+0.00"]
    assert lines["byol-projector"][5:] == ["7.0", "0.700", "-0.75", "-1.50"]
    assert lines["byol-none"][5:] == ["6.9", "0.690", "-5.00", "-7.50"]
    assert lines["byol-none"][1] == "0.0"  # beta 0 from start to end


def test_report_measured_bad_file_is_one_line_exit_2(tmp_path, capsys):
    """A missing file or one without the needed columns: exit 2, one line naming --measured."""
    bad = tmp_path / "bad.csv"
    bad.write_text("run,top1\nx,1\n")
    for path in (tmp_path / "missing.csv", bad):
        assert report_main(["--measured", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("solo-ema-report: error: --measured"), err


def test_plot_labels_read_the_parts_of_new_and_old_runs(tmp_path):
    """A run's plot label names its EMA parts from momentum.parts, or from an older run's parts_spec."""
    new = _fake_run(tmp_path, "new", "block4+projector", 0.99, [1.0], [1.0], [1.0])
    old = _fake_run(tmp_path, "old", "block4+projector", 0.99, [1.0], [1.0], [1.0], old_form=True)
    assert load_run(new).label == "new (EMA block4+projector, tau 0.99)"
    assert load_run(old).label == "old (EMA block4+projector, tau 0.99)"
