"""Once per run: --ema_parts is resolved once, the model is built once (a dry run included), one run name."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import solo_ema.ema.parts
from solo_ema.methods import BYOL
from solo_ema.pretrain import main

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = ["--proj_hidden_dim", "32", "--pred_hidden_dim", "32", "--proj_output_dim", "16"]


def tiny_argv(data: Path, log_dir: Path, *extra: str) -> list[str]:
    """A 1-step BYOL run on a folder of 8 random 16x16 images, batch 4, no validation."""
    return ["--method", "byol", "--dataset", "custom", "--data_dir", str(data), "--crop_size", "16",
            "--batch_size", "4", "--max_steps", "1", "--max_epochs", "1", "--num_workers", "0",
            "--limit_val_batches", "0", "--log_dir", str(log_dir), *TINY, *extra]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """root/<class>/*.png: 2 classes of 4 random-noise images."""
    rng = np.random.default_rng(0)
    for c in range(2):
        (tmp_path / "data" / f"c{c}").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "data" / f"c{c}/{i}.png")
    return tmp_path / "data"


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts calls of the resolver (wherever the package bound it) and constructions of BYOL."""
    seen = {"resolve": 0, "build": 0}
    resolve, init = solo_ema.ema.parts.resolve_parts, BYOL.__init__

    def counted_resolve(*args, **kwargs):
        seen["resolve"] += 1
        return resolve(*args, **kwargs)

    def counted_init(self, *args, **kwargs):
        seen["build"] += 1
        init(self, *args, **kwargs)

    for name, module in list(sys.modules.items()):
        if name.startswith("solo_ema") and getattr(module, "resolve_parts", None) is resolve:
            monkeypatch.setattr(module, "resolve_parts", counted_resolve)
    monkeypatch.setattr(BYOL, "__init__", counted_init)
    return seen


@pytest.mark.parametrize("extra", [[], ["--track_weights", "projector.fc2"]], ids=["plain", "track_weights"])
def test_dry_run_resolves_once_and_builds_once(counts, capsys, data, tmp_path, extra) -> None:
    """--dry_run: one resolution of --ema_parts and one (meta) build, --track_weights included."""
    assert main(tiny_argv(data, tmp_path / "runs", "--ema_parts", "layer4+head", "--dry_run", *extra)) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["momentum"]["parts"] == "block4+projector" and out["cost"]["backbone_forwards_per_view"] == 2
    assert counts == {"resolve": 1, "build": 1}


def test_real_run_resolves_once_and_builds_once(counts, data, tmp_path) -> None:
    """A 1-step real run: one resolution of --ema_parts and one build (the real model), none on the meta device."""
    assert main(tiny_argv(data, tmp_path / "runs", "--ema_parts", "head", "--name", "r")) == 0
    config = json.loads((tmp_path / "runs" / "r" / "config.json").read_text())
    assert config["momentum"]["parts"] == "projector" and config["cost"]["momentum_params"] > 0
    assert counts == {"resolve": 1, "build": 1}


def test_head_and_projector_give_one_run_name_and_one_dry_run(capsys, data, tmp_path) -> None:
    """'head' is the projector: the same run name (from the canonical spec) and the same dry-run JSON."""
    outs = []
    for flag in ("head", "projector"):
        assert main(tiny_argv(data, tmp_path / "runs", "--ema_parts", flag, "--dry_run")) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]
    assert json.loads(outs[0])["name"] == "byol-custom-projector"
    assert main(tiny_argv(data, tmp_path / "runs", "--ema_parts", "layer4+head", "--dry_run")) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "byol-custom-block4_projector"


def test_bad_sub_part_in_a_real_run_is_one_line_and_leaves_nothing(capsys, data, tmp_path) -> None:
    """A sub-part the model lacks, met by the real run's only build: exit 2, one '--ema_parts' line, no run folder."""
    log_dir = tmp_path / "runs"
    assert main(tiny_argv(data, log_dir, "--ema_parts", "projector.fc9")) == 2
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("solo-ema-pretrain: error: --ema_parts: "), out.err
    assert "fc9" in lines[0] and "Traceback" not in out.err and out.out == ""
    assert not log_dir.exists() or not any(log_dir.iterdir()), "a failed run leaves no files"
