"""solo-ema-pretrain: --dry_run JSON and cost accounting, one-line usage errors, and a real few-step run."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import logged_taus
from PIL import Image

from solo_ema.pretrain import build_cfg, build_model, main

pytestmark = pytest.mark.usefixtures("single_thread")

PROG = "solo-ema-pretrain"


def _params(modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def run_cli(args: list[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run `python -m solo_ema.pretrain ARGS` in a fresh interpreter (one torch thread: tiny tensors)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "solo_ema.pretrain", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ----------------------------------------------------------------------------------------------------------
# --dry_run


@pytest.mark.parametrize(
    ("spec", "parts", "modules", "forwards"),
    [
        ("all", "all", lambda m: [m.backbone, m.projector], 2),
        ("projector", "projector", lambda m: [m.projector], 1),
        ("block4+projector", "block4+projector", lambda m: [m.backbone.layer4, m.projector], 2),
        ("none", "none", lambda m: [], 1),
    ],
)
def test_dry_run_prints_one_json_with_parts_and_cost(
    capsys, tmp_path, small_args, spec, parts, modules, forwards
) -> None:
    """--dry_run prints one JSON line: momentum.parts and momentum_params counted from the model's own modules."""
    argv = small_args(spec, "--log_dir", str(tmp_path / "runs"), "--dry_run")
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    lines = out.strip().splitlines()
    assert len(lines) == 1
    resolved = json.loads(lines[0])
    assert resolved["momentum"]["parts"] == parts and "parts_spec" not in resolved["momentum"]
    model = build_model(build_cfg(argv))
    assert resolved["cost"]["momentum_params"] == _params(modules(model))
    assert resolved["cost"]["momentum_params"] == model.ema.num_momentum_params()
    assert resolved["cost"]["backbone_forwards_per_view"] == forwards
    assert not (tmp_path / "runs").exists()


def test_dry_run_as_a_subprocess_exits_zero(tmp_path, small_args) -> None:
    """`python -m solo_ema.pretrain --dry_run` exits 0 and its stdout is one JSON object."""
    proc = run_cli(small_args("block4+projector", "--log_dir", str(tmp_path / "runs"), "--dry_run"), tmp_path)
    assert proc.returncode == 0, proc.stderr
    resolved = json.loads(proc.stdout)
    assert resolved["momentum"]["parts"] == "block4+projector"
    assert resolved["cost"]["backbone_forwards_per_view"] == 2
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------------------------------------
# Bad inputs


BAD_INPUTS = {
    "unknown part": (["--ema_parts", "block7"], "--ema_parts"),
    "none combined": (["--ema_parts", "none+projector"], "--ema_parts"),
    "unknown sub-module": (["--ema_parts", "projector.fc9", "--dry_run"], "--ema_parts"),
    "sub-module of a non-sequential block": (["--ema_parts", "block4.0.conv1", "--dry_run"], "--ema_parts"),
    "beta above 1": (["--base_tau_momentum", "1.5"], "--base_tau_momentum"),
    "beta below 0": (["--base_tau_momentum", "-0.1"], "--base_tau_momentum"),
    "base above final": (["--base_tau_momentum", "0.999", "--final_tau_momentum", "0.99"], "--base_tau_momentum"),
    "unknown method": (["--method", "byolx"], "--method"),
    "missing data folder": (["--dataset", "custom", "--data_dir", "/nonexistent"], "--data_dir"),
    "unknown dataset": (["--dataset", "imagenet7"], "--dataset"),
    "negative lr": (["--lr", "-0.1"], "--lr"),
    "devices not a number": (["--devices", "two"], "--devices"),
    "devices list with a name": (["--devices", "0,gpu1"], "--devices"),
}


@pytest.mark.parametrize(("extra", "flag"), list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, small_args, extra, flag) -> None:
    """A bad flag value: exit 2, one stderr line 'solo-ema-pretrain: error: --FLAG ...', no stdout, no files."""
    argv = small_args(None, "--ema_parts", "projector", "--data_dir", str(tmp_path / "data"),
                      "--log_dir", str(tmp_path / "runs"))
    argv += extra  # later flags win in argparse
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{PROG}: error: {flag}"), lines[0]
    assert not (tmp_path / "runs").exists()


def test_bad_input_as_a_subprocess_has_no_traceback(tmp_path, small_args) -> None:
    """As a program, an unknown EMA part exits 2 with one stderr line and no traceback."""
    proc = run_cli(small_args("block7", "--log_dir", str(tmp_path / "runs")), tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{PROG}: error: --ema_parts"), proc.stderr
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------------------------------------
# A real run


def make_image_folder(root: Path, classes: int = 3, per_class: int = 8, size: int = 32, seed: int = 0) -> Path:
    """root/train/<class>/*.png of seeded random-noise RGB images."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / "train" / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root / "train"


@pytest.fixture(scope="module")
def few_step_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """A 3-step projector-only BYOL run on an image folder, as a program: its process and its run folder."""
    tmp_path = tmp_path_factory.mktemp("few_step")
    data = make_image_folder(tmp_path)
    args = [
        "--method", "byol", "--dataset", "custom", "--data_dir", str(data), "--crop_size", "16",
        "--batch_size", "8", "--max_steps", "3", "--max_epochs", "1", "--num_workers", "0",
        "--proj_hidden_dim", "64", "--pred_hidden_dim", "64", "--proj_output_dim", "32",
        "--ema_parts", "projector", "--log_dir", str(tmp_path / "runs"), "--name", "t",
    ]
    return run_cli(args, tmp_path), tmp_path / "runs" / "t"


def test_few_step_run_writes_finite_metrics_and_config(few_step_run) -> None:
    """A 3-step projector-only BYOL run on an image folder writes metrics.csv (finite BYOL loss) and config.json."""
    proc, run_dir = few_step_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["train_byol_loss_step"]) for r in rows if r.get("train_byol_loss_step")]
    assert len(losses) == 3
    assert all(math.isfinite(v) for v in losses)
    assert all(0.0 <= v <= 8.0 for v in losses)  # 2 - 2cos in [0, 4] for each of the 2 ordered crop pairs
    taus = [float(r["tau"]) for r in rows if r.get("tau")]
    assert taus == pytest.approx(logged_taus(3), abs=1e-7)  # one EMA update per step, on the cosine schedule
    config = json.loads((run_dir / "config.json").read_text())
    assert config["momentum"]["parts"] == "projector"
    assert config["data"]["num_classes"] == 3
    assert config["cost"]["backbone_forwards_per_view"] == 1


def test_a_run_prints_no_advertisement_and_keeps_lightnings_other_messages(few_step_run) -> None:
    """A run's output has no Lightning tip advertising litlogger or litmodels; Lightning's other messages of the
    same rank-zero logger ('GPU available: ...') still show."""
    proc, _ = few_step_run
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "litlogger" not in output and "litmodels" not in output and "Tip:" not in output
    assert "GPU available:" in proc.stderr


def test_the_tip_filter_drops_only_the_advertising_tips() -> None:
    """LightningTipFilter drops the two tips Lightning 2.6 logs and passes other records, a litlogger link included."""
    from solo_ema.engine.console import RANK_ZERO_LOGGERS, LightningTipFilter, drop_lightning_tips

    def record(message: str, level: int = logging.INFO) -> logging.LogRecord:
        return logging.LogRecord(RANK_ZERO_LOGGERS[0], level, __file__, 1, message, None, None)

    keep = LightningTipFilter().filter
    assert not keep(record("\N{ELECTRIC LIGHT BULB} Tip: For seamless cloud logging and experiment tracking, try "
                           "installing [litlogger](https://pypi.org/project/litlogger/) to enable LitLogger."))
    assert not keep(record("\N{ELECTRIC LIGHT BULB} Tip: For seamless cloud uploads and versioning, try installing "
                           "[litmodels](https://pypi.org/project/litmodels/) to enable LitModelCheckpoint."))
    assert keep(record("GPU available: False, used: False"))
    assert keep(record("The Neptune logger moved; see: https://github.com/lightning-ai/litlogger", logging.WARNING))
    drop_lightning_tips()
    drop_lightning_tips()  # once per logger, however often a Trainer is built
    for name in RANK_ZERO_LOGGERS:
        assert sum(isinstance(f, LightningTipFilter) for f in logging.getLogger(name).filters) == 1
