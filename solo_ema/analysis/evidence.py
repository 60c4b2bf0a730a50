"""Collect finished runs into a measured results file: one summary row per run, the per-epoch curves, a PNG.

    python -m solo_ema.analysis.evidence runs/evidence/byol-fmnist-all runs/evidence/byol-fmnist-projector \\
        --out zoo/evidence/fashion_mnist_byol.csv --command "bash bash_files/evidence/fashion_mnist_byol.sh"

Writes ``<out>`` (summary), ``<out stem>_curves.csv`` (run, epoch, top1, knn1, epoch seconds) and
``<out stem>.png`` (accuracy curves of solo_ema.analysis.plots). Summary columns: see SUMMARY_COLUMNS.
top1 / knn1 are the last epoch's online linear and kNN top-1 (best_* the best epoch's); seconds_per_epoch
is the mean epoch time without the first epoch (start-up, kernel selection) when there are several.
`solo-ema-report --measured <out>` prints the table with the ratios against the `all` run of each method.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .keys import saved_parts

PROG = "python -m solo_ema.analysis.evidence"
SUMMARY_COLUMNS = (
    "run", "method", "dataset", "ema_parts", "base_tau", "final_tau", "epochs", "top1", "knn1", "best_top1",
    "best_knn1", "seconds_per_epoch", "momentum_params", "seed", "batch_size", "data_format", "commit", "hardware",
    "command",
)
CURVE_COLUMNS = ("run", "epoch", "top1", "knn1", "epoch_seconds")


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def epoch_curves(metrics_csv: str | Path) -> list[dict[str, Any]]:
    """Per epoch (in order): the last val_acc1, val_knn_acc1 and epoch_time logged in that epoch."""
    by_epoch: dict[int, dict[str, Any]] = {}
    with open(metrics_csv, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            epoch = _float(row.get("epoch"))
            if epoch is None:
                continue
            entry = by_epoch.setdefault(int(epoch), {"epoch": int(epoch), "top1": None, "knn1": None,
                                                      "epoch_seconds": None})
            for key, column in (("top1", "val_acc1"), ("knn1", "val_knn_acc1"), ("epoch_seconds", "epoch_time")):
                value = _float(row.get(column))
                if value is not None:
                    entry[key] = value
    return [by_epoch[e] for e in sorted(by_epoch)]


def git_commit(root: str | Path) -> str:
    """The checkout's short commit, with '-dirty' when tracked files differ; 'unknown' outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def hardware() -> str:
    """The accelerator (CUDA device name and count) or the CPU model, and the CPU count."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu} x{os.cpu_count()}"
    try:
        import torch

        if torch.cuda.is_available():
            text = f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}; {text}"
    except ImportError:
        pass
    return text


def summarize(run_dir: str | Path, commit: str, hw: str, command: str) -> tuple[dict[str, Any], list[dict]]:
    """The summary row and the curve rows of one run folder (metrics.csv and config.json)."""
    run_dir = Path(run_dir)
    metrics, config = run_dir / "metrics.csv", run_dir / "config.json"
    if not metrics.is_file() or not config.is_file():
        raise FileNotFoundError(f"{run_dir}: needs metrics.csv and config.json (a finished solo-ema-pretrain run)")
    cfg = json.loads(config.read_text(encoding="utf-8"))
    curves = epoch_curves(metrics)
    top = [c["top1"] for c in curves if c["top1"] is not None]
    knn = [c["knn1"] for c in curves if c["knn1"] is not None]
    times = [c["epoch_seconds"] for c in curves if c["epoch_seconds"] is not None]
    steady = times[1:] if len(times) > 1 else times
    m = cfg.get("momentum", {})
    row = {
        "run": run_dir.name,
        "method": cfg.get("method"),
        "dataset": cfg.get("data", {}).get("dataset"),
        "ema_parts": saved_parts(m),
        "base_tau": m.get("base_tau"),
        "final_tau": m.get("final_tau"),
        "epochs": len(times),
        "top1": top[-1] if top else "",
        "knn1": knn[-1] if knn else "",
        "best_top1": max(top) if top else "",
        "best_knn1": max(knn) if knn else "",
        "seconds_per_epoch": statistics.fmean(steady) if steady else "",
        "momentum_params": cfg.get("cost", {}).get("momentum_params", ""),
        "seed": cfg.get("seed"),
        "batch_size": cfg.get("optimizer", {}).get("batch_size"),
        "data_format": cfg.get("data", {}).get("format"),
        "commit": commit,
        "hardware": hw,
        "command": command,
    }
    return row, [{"run": run_dir.name, **c} for c in curves]


def collect(runs: Sequence[str | Path], out: str | Path, command: str = "", png: bool = True,
            commit: str | None = None) -> list[Path]:
    """Write the summary CSV, the curves CSV and (with `png`) the accuracy PNG of `runs`; return their paths.

    `commit` names the code that ran; default: the checkout's (`git_commit`), e.g. given for a source export.
    """
    out = Path(out)
    commit, hw = commit or git_commit(Path(__file__).resolve().parents[2]), hardware()
    rows, curves = [], []
    for run in runs:
        row, curve = summarize(run, commit, hw, command)
        rows.append(row)
        curves += curve
    out.parent.mkdir(parents=True, exist_ok=True)
    written = [out, out.with_name(out.stem + "_curves.csv")]
    for path, columns, data in ((written[0], SUMMARY_COLUMNS, rows), (written[1], CURVE_COLUMNS, curves)):
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            w.writerows({k: ("" if r.get(k) is None else r.get(k)) for k in columns} for r in data)
    if png:
        from . import plots

        picture = plots.plot_accuracy([plots.load_run(r) for r in runs], out.with_suffix(".png"))
        if picture is not None:
            written.append(picture)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: collect run folders into a results file."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run folders (<log_dir>/<name>)")
    p.add_argument("--out", required=True, help="summary CSV path (the curves CSV and PNG go beside it)")
    p.add_argument("--command", default="", help="the command that produced the runs (stored in every row)")
    p.add_argument("--no_png", action="store_true", help="skip the accuracy plot")
    p.add_argument("--commit", default=None,
                   help="the commit of the code that ran (default: this checkout's; 'unknown' outside git)")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        written = collect(args.runs, args.out, args.command, png=not args.no_png, commit=args.commit)
    except (FileNotFoundError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
