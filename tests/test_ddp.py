"""Two-process DDP on CPU (one launch, four methods): momentum state stays identical on both processes; the
queues hold both ranks' keys in rank order; DINO's centre is the mean over both ranks' teacher outputs; SimCLR's
gathered loss is the single-process loss of the concatenated batch."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_reliability import image_folder

SCRIPT = Path(__file__).parent / "scripts" / "ddp_run.py"
BATCH, WORLD = 4, 2


@pytest.fixture(scope="module")
def ddp_out(tmp_path_factory) -> Path:
    """The dumps of one two-process run of MoCo v2+, DINO, SimCLR and ReSSL (see scripts/ddp_run.py)."""
    tmp = tmp_path_factory.mktemp("ddp")
    data = image_folder(tmp / "data", classes=2, per_class=16)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(data), str(tmp)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp


def _load(out: Path, method: str, step: int) -> tuple[dict, dict]:
    return tuple(torch.load(out / method / f"rank{r}_step{step}.pt", weights_only=True) for r in range(WORLD))


def _same_momentum(r0: dict, r1: dict, step: int) -> None:
    assert r0["momentum"].keys() == r1["momentum"].keys() and r0["momentum"]
    for key in r0["momentum"]:
        assert torch.equal(r0["momentum"][key], r1["momentum"][key]), (step, key)


def test_two_process_ddp_keeps_momentum_identical_and_gathers_queue_keys(ddp_out: Path) -> None:
    """After each step both ranks hold the same momentum and queue; a queue slot holds rank 0 then rank 1 keys."""
    batch, world = BATCH, WORLD
    for step in (1, 2, 3):
        r0, r1 = _load(ddp_out, "mocov2plus", step)
        _same_momentum(r0, r1, step)
        assert torch.equal(r0["queue"], r1["queue"])
        assert r0["queue_ptr"] == (step * batch * world) % 32
        start = (step - 1) * batch * world
        slot = r0["queue"][:, :, start : start + batch * world]  # (2 views, D, world * batch)
        expected = torch.cat([r0["keys"], r1["keys"]], dim=1).permute(0, 2, 1)  # rank 0's keys, then rank 1's
        assert not torch.equal(r0["keys"], r1["keys"]), "each rank sees its own batch"
        torch.testing.assert_close(slot, expected, rtol=0, atol=1e-6)


def test_ressl_queue_slots_hold_both_ranks_weak_keys_in_rank_order(ddp_out: Path) -> None:
    """ReSSL (queue: Q x D): after step s, rows [(s-1) 8, s 8) are rank 0's 4 keys then rank 1's 4, on both ranks."""
    for step in (1, 2):
        r0, r1 = _load(ddp_out, "ressl", step)
        _same_momentum(r0, r1, step)
        assert torch.equal(r0["queue"], r1["queue"]) and r0["queue_ptr"] == r1["queue_ptr"] == step * 8
        assert r0["keys"].shape == (BATCH, 16) and not torch.equal(r0["keys"], r1["keys"])
        start = (step - 1) * BATCH * WORLD
        torch.testing.assert_close(r0["queue"][start : start + 8], torch.cat([r0["keys"], r1["keys"]]), rtol=0,
                                   atol=1e-6)
        # the keys are the normalised momentum z of crop 1 (the weak view)
        torch.testing.assert_close(r0["keys"], torch.nn.functional.normalize(r0["teacher"][1], dim=-1))


def test_dino_center_is_the_mean_over_both_ranks_teacher_outputs(ddp_out: Path) -> None:
    """c_s = 0.9 c_{s-1} + 0.1 mean(teacher outputs of both large crops on both ranks), identical on both ranks."""
    previous = None
    for step in (1, 2):
        r0, r1 = _load(ddp_out, "dino", step)
        _same_momentum(r0, r1, step)
        assert torch.equal(r0["center"], r1["center"])
        assert torch.equal(r0["center_before"], r1["center_before"])
        before = r0["center_before"].double()
        if previous is None:
            assert not before.any()
        else:
            assert torch.equal(r0["center_before"], previous)
        teachers = [torch.cat(r["teacher"]).double() for r in (r0, r1)]  # (2 crops x 4, prototypes) per rank
        assert len(r0["teacher"]) == 2 and teachers[0].shape == (2 * BATCH, 64)
        expected = 0.9 * before + 0.1 * torch.cat(teachers).mean(dim=0, keepdim=True)
        torch.testing.assert_close(r0["center"].double(), expected, rtol=0, atol=1e-6)
        local = 0.9 * before + 0.1 * teachers[0].mean(dim=0, keepdim=True)
        assert not torch.allclose(r0["center"].double(), local, rtol=0, atol=1e-6), "not this rank's mean alone"
        previous = r0["center"]


def _nt_xent_reference(z: torch.Tensor, index: torch.Tensor, view: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-anchor SimCLR loss in float64: -log(exp(s_pos / T) / sum over every other row exp(s / T))."""
    z = z.double() / z.double().norm(dim=1, keepdim=True)
    losses = []
    for a in range(len(z)):
        others = [c for c in range(len(z)) if c != a]
        (pos,) = [c for c in others if index[c] == index[a] and view[c] != view[a]]
        denominator = sum(math.exp(float(z[a] @ z[c]) / temperature) for c in others)
        losses.append(-math.log(math.exp(float(z[a] @ z[pos]) / temperature) / denominator))
    return torch.tensor(losses, dtype=torch.float64)


def test_simclr_gathered_loss_is_the_single_process_loss_of_the_concatenated_batch(ddp_out: Path) -> None:
    """Each rank's anchors meet both ranks' projections (rank order); the rank losses are the per-anchor
    losses of the concatenated 8-image batch, and their mean (the logged loss) is its single-process loss."""
    with open(ddp_out / "runs" / "ddp-simclr" / "metrics.csv", newline="") as f:
        logged = [float(r["train_nce_loss_step"]) for r in csv.DictReader(f) if r.get("train_nce_loss_step")]
    assert len(logged) == 2
    for step in (1, 2):
        r0, r1 = _load(ddp_out, "simclr", step)
        assert set(r0["indexes"].tolist()).isdisjoint(r1["indexes"].tolist())
        z = torch.cat([r0["anchors"], r1["anchors"]])  # each: crop 0 then crop 1 of this rank's 4 images
        index = torch.cat([r0["anchor_index"], r1["anchor_index"]])
        view = torch.cat([r0["anchor_view"], r1["anchor_view"]])
        for r in (r0, r1):
            torch.testing.assert_close(r["candidates"], z, rtol=0, atol=0)
            assert torch.equal(r["candidate_index"], index) and torch.equal(r["candidate_view"], view)
        per_anchor = _nt_xent_reference(z, index, view, 0.2)
        n = 2 * BATCH
        for rank, r in enumerate((r0, r1)):
            assert float(r["nce_loss"]) == pytest.approx(float(per_anchor[rank * n : (rank + 1) * n].mean()), rel=1e-5)
        assert logged[step - 1] == pytest.approx(float(per_anchor.mean()), rel=1e-5)
        assert float(r0["nce_loss"]) != pytest.approx(float(r1["nce_loss"]), rel=1e-5)
