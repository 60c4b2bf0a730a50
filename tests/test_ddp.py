"""Two-process DDP on CPU: momentum state stays identical on both processes; the queue holds both ranks' keys."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from test_reliability import image_folder

SCRIPT = Path(__file__).parent / "scripts" / "ddp_run.py"


def test_two_process_ddp_keeps_momentum_identical_and_gathers_queue_keys(tmp_path: Path) -> None:
    """After each step both ranks hold the same momentum and queue; a queue slot holds rank 0 then rank 1 keys."""
    data = image_folder(tmp_path / "data", classes=2, per_class=16)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(data), str(tmp_path)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    batch, world = 4, 2
    for step in (1, 2, 3):
        r0 = torch.load(tmp_path / f"rank0_step{step}.pt", weights_only=True)
        r1 = torch.load(tmp_path / f"rank1_step{step}.pt", weights_only=True)
        assert r0["momentum"].keys() == r1["momentum"].keys() and r0["momentum"]
        for key in r0["momentum"]:
            assert torch.equal(r0["momentum"][key], r1["momentum"][key]), (step, key)
        assert torch.equal(r0["queue"], r1["queue"])
        assert r0["queue_ptr"] == (step * batch * world) % 32
        start = (step - 1) * batch * world
        slot = r0["queue"][:, :, start : start + batch * world]  # (2 views, D, world * batch)
        expected = torch.cat([r0["keys"], r1["keys"]], dim=1).permute(0, 2, 1)  # rank 0's keys, then rank 1's
        assert not torch.equal(r0["keys"], r1["keys"]), "each rank sees its own batch"
        torch.testing.assert_close(slot, expected, rtol=0, atol=1e-6)
