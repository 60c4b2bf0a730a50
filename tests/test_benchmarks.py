"""Smoke test of the step-cost benchmark: it runs, and its numbers have the shape the performance claims need."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "step_cost.py"


def _basic_layer_params(inplanes: int, planes: int, downsample: bool) -> int:
    """Two basic blocks (3x3 convs without bias, affine BN); the first one may have a 1x1 projection shortcut."""
    first = inplanes * planes * 9 + planes * planes * 9 + 4 * planes
    shortcut = inplanes * planes + 2 * planes if downsample else 0
    return first + shortcut + 2 * planes * planes * 9 + 4 * planes


def test_step_cost_tiny_reports_every_placement(tmp_path: Path) -> None:
    """--tiny: one row per placement; projector keeps fewer momentum params and FLOPs than all, none keeps 0."""
    out = tmp_path / "cost.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--no_memory", "--device", "cpu",
         "--placements", "all,block4+projector,projector,none", "--json", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = {r["placement"]: r for r in result["rows"]}
    assert set(rows) == {"all", "block4+projector", "projector", "none"}
    assert rows["none"]["momentum_params"] == 0
    # exact counts: BYOL projector 512-64(BN)-256 and a ResNet-18 (CIFAR stem, no fc), from the architecture
    projector = 512 * 64 + 64 + 2 * 64 + 64 * 256 + 256
    layers = [_basic_layer_params(i, o, first) for i, o, first in ((64, 64, False), (64, 128, True),
                                                                   (128, 256, True), (256, 512, True))]
    resnet18 = 3 * 64 * 9 + 2 * 64 + sum(layers)
    assert resnet18 == 11_168_832
    assert rows["projector"]["momentum_params"] == projector
    assert rows["block4+projector"]["momentum_params"] == layers[3] + projector
    assert rows["all"]["momentum_params"] == resnet18 + projector
    assert 0 < rows["projector"]["momentum_params"] < rows["block4+projector"]["momentum_params"]
    assert rows["block4+projector"]["momentum_params"] < rows["all"]["momentum_params"]
    flops = {name: r["gflops"] / rows["all"]["gflops"] for name, r in rows.items()}
    assert flops["none"] <= flops["projector"] < flops["block4+projector"] < 1.0
    assert flops["projector"] < 0.8, "projector-only skips the second backbone forward"
    assert all(r["median_s"] > 0 for r in rows.values())
    assert "| projector |" in proc.stdout


def test_epoch_time_tiny_writes_one_row_per_loop_with_the_columns(tmp_path: Path) -> None:
    """benchmarks/epoch_time.py --tiny: the fast and eager engine loops and solo-learn's own BYOL each train two
    epochs in their own process; the CSV has the documented columns, one row per loop, positive times, FLOPs
    and memory, the step split adds up to no more than the step, and the table prints the ratios."""
    out = tmp_path / "epoch_time.csv"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT.parent / "epoch_time.py"), "--tiny", "--placements", "all", "--out", str(out),
         "--work_dir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import csv

    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    required = ["loop", "method", "ema_parts", "batch_size", "images_per_epoch", "epoch_seconds", "step_ms", "tflops",
                "peak_mem_gib", "hardware", "commit", "command"]
    assert list(rows[0])[: len(required)] == required
    assert [(r["loop"], r["method"], r["ema_parts"]) for r in rows] == [
        ("fast", "byol", "all"), ("eager", "byol", "all"), ("solo-learn", "byol", "all")]
    for r in rows:
        assert not r["error"], r["error"]
        assert int(r["batch_size"]) == 8 and int(r["images_per_epoch"]) == 16
        assert float(r["epoch_seconds"]) > 0 and float(r["tflops"]) > 0 and float(r["peak_mem_gib"]) > 0
        split = sum(float(r[f"{k}_ms"]) for k in ("forward", "backward", "optimizer", "ema", "other"))
        assert 0 < split <= float(r["step_ms"]) * 1.001
    assert rows[0]["compile"] == "True" and rows[1]["compile"] == "False"
    assert "--compile" in rows[0]["command"] and "--no_prefetch" in rows[1]["command"]
    assert "byol.yaml" in rows[2]["command"]
    assert "| fast | byol | all |" in proc.stdout and "| solo-learn | byol | all |" in proc.stdout
