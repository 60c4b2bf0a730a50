"""solo-ema-plot: PNG plots of one or more run folders (gradient norms, weight trajectories, accuracy curves).

Writes, each only when its data exists (paths printed, one a line):
  <out>/grad_linf_<run>.png      Fig. 5 style: grad_linf/<part> against step, one line per part (--grad_monitor runs)
  <out>/weights_<part>.png       Fig. 2 style: (step, w1, w2) of --filters, online and target lines of every run
                                 that recorded <part> (--track_weights runs)
  <out>/accuracy.png             Fig. 3 style: val_acc1 (solid) and val_knn_acc1 (dashed) of all runs, one axis
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import UsageError, UsageParser, usage_exit

PROG = "solo-ema-plot"



def build_parser() -> argparse.ArgumentParser:
    """The flag parser."""
    p = UsageParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders (each with a metrics.csv: <log_dir>/<name>)")
    p.add_argument("--out", default=None, help="output folder (default: the first run folder)")
    p.add_argument("--filters", type=int, nargs="+", default=[0, 1, 2], help="filters (output rows) to draw")
    p.add_argument("--log_y", action="store_true", help="log scale for the gradient norms")
    p.add_argument("--x", choices=("epoch", "step"), default="epoch", help="x axis of the accuracy plot")
    return p


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of solo-ema-plot; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        for run in args.runs:
            path = Path(run)
            if not path.is_dir():
                raise UsageError(f"no run folder '{run}'")
            if not (path / "metrics.csv").is_file():
                raise UsageError(f"no metrics.csv in '{run}' (give a folder <log_dir>/<name> of a run)")
        if any(f < 0 for f in args.filters):
            raise UsageError(f"--filters: indexes must be >= 0, got {args.filters}")
        from .analysis import plots

        runs = [plots.load_run(r) for r in args.runs]
        out = Path(args.out) if args.out else Path(args.runs[0])
        written = []
        names: set[str] = set()
        for run in runs:
            name = _safe(run.name)
            while name in names:
                name += "_"
            names.add(name)
            written.append(plots.plot_grad_norms(run, out / f"grad_linf_{name}.png", log_y=args.log_y))
        parts = list(dict.fromkeys(p for run in runs for p in run.weights))
        for part in parts:
            entries = [(run.label, run.weights[part]) for run in runs if part in run.weights]
            widths = [plots.weight_filters(state) for _, state in entries]
            if not any(widths):
                print(f"{PROG}: skipped weights of '{part}': a filter has fewer than two weights", file=sys.stderr)
                continue
            bad = [f for f in args.filters if f >= min(w for w in widths if w)]
            if bad:
                raise UsageError(f"--filters: {bad} out of range for '{part}' ({min(w for w in widths if w)} filters)")
            written.append(plots.plot_weight_trajectories(entries, args.filters, out / f"weights_{_safe(part)}.png"))
        written.append(plots.plot_accuracy(runs, out / "accuracy.png", x=args.x))
    except UsageError as exc:
        return usage_exit(PROG, exc)
    written = [w for w in written if w is not None]
    for path in written:
        print(path)
    if not written:
        print(f"{PROG}: nothing to plot (no grad_linf/* metrics, weights_*.pt files or validation accuracy)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
