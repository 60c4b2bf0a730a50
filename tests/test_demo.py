"""The main job, reduced: `solo-ema-demo` trains both placements on Fashion-MNIST and prints a consistent table."""

from __future__ import annotations

import csv
import os
import statistics
from pathlib import Path

import pytest

from solo_ema.demo import main

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def conv(cin: int, cout: int, k: int) -> int:
    """Parameters of a bias-free k x k convolution."""
    return cin * cout * k * k


def resnet18_cifar_params() -> int:
    """ResNet-18 with the CIFAR stem (3x3 conv1, no max-pool), without fc, counted from its architecture."""
    total = conv(3, 64, 3) + 2 * 64
    cin = 64
    for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            total += conv(cin, width, 3) + 2 * width + conv(width, width, 3) + 2 * width
            if block == 0 and (stride != 1 or cin != width):
                total += conv(cin, width, 1) + 2 * width
            cin = width
    return total


def byol_projector_params(feat: int = 512, hidden: int = 4096, out: int = 256) -> int:
    """Linear(feat, hidden) + BatchNorm1d(hidden) + Linear(hidden, out), biases included."""
    return feat * hidden + hidden + 2 * hidden + hidden * out + out


def table_rows(text: str) -> dict[str, list[str]]:
    """The demo's markdown table as {row label: [cells...]}."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| |"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.skipif(not FMNIST.exists() and os.environ.get("CI") != "true", reason="Fashion-MNIST not installed")
def test_reduced_demo_prints_a_consistent_table(tmp_path, capsys):
    argv = ["--steps", "2", "--batch_size", "8", "--knn_train", "60", "--test_images", "30",
            "--num_workers", "0", "--log_dir", str(tmp_path)]
    assert main(argv) == 0
    rows = table_rows(capsys.readouterr().out)

    backbone, projector = resnet18_cifar_params(), byol_projector_params()
    assert backbone == 11_168_832
    params = [int(v.replace(",", "")) for v in rows["params in momentum copies"][:2]]
    assert params == [backbone + projector, projector]
    assert float(rows["params in momentum copies"][2]) == pytest.approx(projector / (backbone + projector), abs=1e-3)

    step_all, step_proj, ratio = (float(v) for v in rows["median step time (s)"])
    assert step_all > 0 and step_proj > 0
    assert ratio == pytest.approx(step_proj / step_all, abs=2e-3)

    for i, placement in enumerate(("all", "projector")):
        with open(tmp_path / f"byol-{placement}" / "metrics.csv") as f:
            losses = [float(r["train_byol_loss_step"]) for r in csv.DictReader(f) if r.get("train_byol_loss_step")]
        assert len(losses) == 2  # one logged loss per step of the run, no more
        shown = float(rows["final BYOL loss (mean of last 5 steps)"][i])
        assert shown == pytest.approx(statistics.fmean(losses), abs=1e-4)
        assert 0.0 < shown < 8.0  # 2 - 2cos per view pair, summed over 2 pairs
    # 30 test images: every accuracy is a multiple of 1/30
    for label in ("online linear top-1 on test (%)", "kNN top-1 on test (%)", "kNN top-1 of the untrained encoder (%)"):
        for v in rows[label][:2]:
            correct = float(v) * 30 / 100
            assert 0 <= correct <= 30 and abs(correct - round(correct)) < 0.01


@pytest.mark.parametrize(
    "epoch_len, max_steps, global_step, accumulate, done, restarting, expected",
    [
        (937, 40, 0, 1, 0, False, 40),  # the demo: the run ends after 40 of the epoch's 937 batches
        (937, 40, 10, 2, 0, False, 60),  # 30 optimizer steps left, 2 batches each
        (10, 25, 20, 1, 10, False, 5),  # third epoch: the counter still holds the last epoch's 10 batches
        (937, 40, 30, 1, 5, True, 15),  # resumed inside the epoch: 5 batches done, 10 to go
        (937, 5000, 0, 1, 0, False, 937),  # the epoch ends first
        (937, -1, 0, 1, 0, False, 937),  # no step limit
    ],
)
def test_progress_bar_counts_the_batches_the_run_will_take(epoch_len, max_steps, global_step, accumulate, done,
                                                           restarting, expected):
    from types import SimpleNamespace

    from solo_ema.engine.callbacks import StepProgressBar

    progress = SimpleNamespace(current=SimpleNamespace(ready=done))
    bar = StepProgressBar()
    bar._trainer = SimpleNamespace(
        num_training_batches=epoch_len, max_steps=max_steps, global_step=global_step,
        accumulate_grad_batches=accumulate,
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress, restarting=restarting)),
    )
    assert bar.total_train_batches == expected
