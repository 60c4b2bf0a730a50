"""Plots of run folders (matplotlib, Agg): gradient norms (Fig. 5), weight trajectories (Fig. 2), accuracy (Fig. 3).

Every function takes data already read from run folders and writes one PNG of a fixed pixel size
(``figsize * dpi``; no tight bounding box, so sizes are predictable).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator, ScalarFormatter  # noqa: E402

from .keys import GRAD_PREFIX, MONITORED_PARTS, WEIGHTS_GLOB, saved_parts  # noqa: E402

DPI = 100
GRAD_SIZE = (6.4, 4.0)  # inches: 640 x 400 px at 100 dpi
ACC_SIZE = (6.4, 4.0)
WEIGHT_PANEL = (3.8, 3.8)  # one 3-D panel per filter
ACC_KEYS = (("val_acc1", "top-1 (linear)", "-"), ("val_knn_acc1", "kNN top-1", "--"))
# colours as in the paper's Fig. 2: no momentum (shared) green; (online, target) blue/red, then black/orange
PAIR_COLORS = [("tab:blue", "tab:red"), ("black", "tab:orange"), ("tab:purple", "tab:pink"),
               ("tab:brown", "tab:gray"), ("tab:cyan", "gold")]
SHARED_COLORS = ["tab:green", "tab:olive", "lime"]


@dataclass
class Run:
    """What the plots need from one run folder."""

    path: Path
    name: str
    label: str
    rows: list[dict[str, float]]
    weights: dict[str, dict[str, Any]] = field(default_factory=dict)


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Rows of a Lightning metrics.csv as dicts of floats (empty cells left out)."""
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row = {}
            for key, value in raw.items():
                if key is None or value in (None, ""):
                    continue
                try:
                    row[key] = float(value)
                except ValueError:
                    continue
            rows.append(row)
    return rows


def _label(path: Path) -> str:
    config = path / "config.json"
    if not config.exists():
        return path.name
    try:
        cfg = json.loads(config.read_text())
        m = cfg.get("momentum", {})
        parts = saved_parts(m) or "none"
        tau = m.get("base_tau")
        return f"{path.name} (EMA {parts}" + (f", tau {tau:g})" if tau is not None and parts != "none" else ")")
    except (ValueError, TypeError, AttributeError):
        return path.name


def load_run(path: str | Path) -> Run:
    """Read metrics.csv, the label (from config.json) and any weights_*.pt of a run folder."""
    import torch

    path = Path(path)
    run = Run(path=path, name=path.resolve().name, label=_label(path), rows=read_metrics(path / "metrics.csv"))
    for file in sorted(path.glob(WEIGHTS_GLOB)):
        state = torch.load(file, map_location="cpu", weights_only=False)
        run.weights[str(state.get("part", file.stem[len("weights_"):]))] = state
    return run


def series(rows: Sequence[dict[str, float]], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    """(x, y) of the rows that hold `key` (and `x`), in file order."""
    pts = [(r[x], r[key]) for r in rows if key in r and x in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def grad_parts(run: Run) -> list[str]:
    """The monitored parts that have gradient norms in the run, in encoder order."""
    keys = {k for r in run.rows for k in r if k.startswith(GRAD_PREFIX + "/")}
    ordered = [p for p in MONITORED_PARTS if f"{GRAD_PREFIX}/{p}" in keys]
    return ordered + sorted(k.split("/", 1)[1] for k in keys if k.split("/", 1)[1] not in ordered)


def plot_grad_norms(run: Run, out: str | Path, log_y: bool = False) -> Path | None:
    """Fig. 5 style: max |dL/d output| of each part against step, one line per part."""
    parts = grad_parts(run)
    if not parts:
        return None
    fig, ax = plt.subplots(figsize=GRAD_SIZE, dpi=DPI)
    cmap = plt.get_cmap("viridis")
    for i, part in enumerate(parts):
        xs, ys = series(run.rows, f"{GRAD_PREFIX}/{part}")
        color = "tab:red" if part == "projector" else cmap(i / max(1, len(parts) - 1) * 0.9)
        ax.plot(xs, ys, label=part, color=color, lw=1.2)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(r"$\|\partial L / \partial h\|_\infty$")
    ax.set_title(f"Gradient magnitude per part: {run.label}", fontsize=9)
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    fig.subplots_adjust(left=0.12, right=0.97, top=0.9, bottom=0.12)
    return _save(fig, out)


def filter_coords(tensor: Any, index: int) -> Any:
    """[T, 2]: the first two weights of filter `index` (row `index` of a [T, out, ...] tensor) over time."""
    rows = tensor[:, index].reshape(tensor.shape[0], -1)
    return rows[:, :2]


def weight_filters(state: dict[str, Any]) -> int:
    """Number of filters (output rows) in a recorded layer, or 0 when a filter has fewer than two weights."""
    shape = tuple(state["online"].shape[1:])
    if len(shape) < 2 or math.prod(shape[1:]) < 2:
        return 0
    return shape[0]


def plot_weight_trajectories(
    entries: Sequence[tuple[str, dict[str, Any]]], filters: Sequence[int], out: str | Path
) -> Path | None:
    """Fig. 2 style: (step, w1, w2) of a few filters, online (solid) and target (dashed) lines per run.

    `entries` are (label, state of a weights file) pairs for the same part. A shared target (the part has
    no momentum copy) is drawn as the online line only, labelled 'shared'.
    """
    entries = [(label, s) for label, s in entries if weight_filters(s) and len(s["steps"])]
    if not entries or not filters:
        return None
    n = len(filters)
    fig = plt.figure(figsize=(WEIGHT_PANEL[0] * n, WEIGHT_PANEL[1]), dpi=DPI)
    part = entries[0][1].get("part", "")
    for j, f in enumerate(filters):
        ax = fig.add_subplot(1, n, j + 1, projection="3d")
        ax.set_box_aspect(None, zoom=0.88)  # room for the z label inside the panel
        n_shared = n_ema = 0
        for label, state in entries:
            steps = state["steps"].double().numpy()
            if state.get("shared"):
                c_on = c_tg = SHARED_COLORS[n_shared % len(SHARED_COLORS)]
                n_shared += 1
            else:
                c_on, c_tg = PAIR_COLORS[n_ema % len(PAIR_COLORS)]
                n_ema += 1
            on = filter_coords(state["online"], f).double().numpy()
            role = "shared" if state.get("shared") else "online"
            ax.plot(steps, on[:, 0], on[:, 1], color=c_on, lw=1.2, label=f"{label} {role}")
            ax.scatter([steps[0]], [on[0, 0]], [on[0, 1]], color=c_on, s=10, marker="o")
            if not state.get("shared"):
                tg = filter_coords(state["target"], f).double().numpy()
                ax.plot(steps, tg[:, 0], tg[:, 1], color=c_tg, lw=1.2, ls="--", label=f"{label} target")
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("w1", fontsize=8)
        ax.set_zlabel("w2", fontsize=8)
        ax.tick_params(labelsize=6)
        for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
            axis.set_major_locator(MaxNLocator(4, integer=axis is ax.xaxis))
            formatter = ScalarFormatter(useOffset=False)
            formatter.set_powerlimits((-3, 4))
            axis.set_major_formatter(formatter)
        ax.set_title(f"{part} filter {f:03d}", fontsize=9)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=7, frameon=False)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.92, bottom=0.14, wspace=0.15)
    return _save(fig, out)


def plot_accuracy(runs: Sequence[Run], out: str | Path, x: str = "epoch") -> Path | None:
    """Fig. 3 style: val_acc1 (solid) and val_knn_acc1 (dashed) of several runs against epoch or step."""
    curves = []
    for i, run in enumerate(runs):
        for key, name, ls in ACC_KEYS:
            xs, ys = series(run.rows, key, x)
            if xs:
                curves.append((i, run.label, key, name, ls, xs, ys))
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=ACC_SIZE, dpi=DPI)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, label, _key, name, ls, xs, ys in curves:
        marker = "o" if len(xs) < 30 else None
        ax.plot(xs, ys, ls=ls, marker=marker, ms=3, color=colors[i % len(colors)], label=f"{label}: {name}")
    ax.set_xlabel(x)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Validation accuracy", fontsize=9)
    ax.legend(fontsize=6.5, framealpha=0.7)
    ax.grid(alpha=0.3)
    fig.subplots_adjust(left=0.12, right=0.97, top=0.9, bottom=0.12)
    return _save(fig, out)


def _save(fig: Any, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, pil_kwargs={"optimize": True})
    plt.close(fig)
    return out
