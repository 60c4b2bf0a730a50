"""The kNN on banks of any size: exact neighbours from a chunked float32 pass, bounded memory, a bank that stays on
its device (or spills to host memory past a capacity), and a bank that cannot fit refused at start-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from solo_ema.engine import knn
from solo_ema.engine.knn import (
    KNNBank,
    bank_capacity,
    bank_row_bytes,
    gather_bank,
    knn_accuracy,
    plan_chunks,
    weighted_knn_predict,
)
from solo_ema.errors import UsageError

pytestmark = pytest.mark.usefixtures("single_thread")


def reference_scores(train: torch.Tensor, labels: torch.Tensor, test: torch.Tensor, classes: int, k: int,
                     distance: str, temperature: float = 0.07) -> torch.Tensor:
    """float64 brute force: torch.cdist without the matmul form, topk, then the metric's votes."""
    train, test = train.double(), test.double()
    if distance != "paper":
        train, test = F.normalize(train, dim=1), F.normalize(test, dim=1)
    d = torch.cdist(test, train, compute_mode="donot_use_mm_for_euclid_dist")
    top, idx = d.topk(k, dim=1, largest=False)
    if distance == "paper":
        votes = 1.0 / (top + 1e-5)
    elif distance == "euclidean":
        votes = (-top / temperature).exp()
    else:
        votes = ((test.unsqueeze(1) * train[idx]).sum(2) / temperature).exp()
    return torch.zeros(len(test), classes, dtype=torch.float64).scatter_add_(1, labels[idx], votes)


def clustered(gen: torch.Generator, n: int, dim: int, classes: int):
    """ReLU features around class centres."""
    centres = 3.0 * torch.randn(classes, dim, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    return (centres[y] + 2.0 * torch.randn(n, dim, generator=gen)).relu(), y


def two_far_clusters(gen: torch.Generator, n: int, dim: int, classes: int):
    """Rows 0.1 apart in two clusters up to 2e3 per coordinate apart: their mean is far from every row, so
    centring leaves float32 |a|^2 + |b|^2 - 2 a.b an error (~1) larger than the distances inside a cluster."""
    base = 1e3 * torch.rand(1, dim, generator=gen)
    side = torch.randint(0, 2, (n, 1), generator=gen) * 2 - 1
    return side * base + 0.1 * torch.randn(n, dim, generator=gen), torch.randint(0, classes, (n,), generator=gen)


@pytest.mark.parametrize("distance", ["paper", "cosine", "euclidean"])
def test_chunked_float32_knn_equals_float64_brute_force(distance: str) -> None:
    """float32 features, bank chunks of 7 rows (k = 12 is larger than a chunk), query blocks of 5, a list of
    uneven pieces as the bank: the scores equal the float64 reference, on clustered features and on two far
    clusters where the float32 pass cannot rank the rows inside a cluster (the stages after it must)."""
    gen = torch.Generator().manual_seed(int(torch.randint(0, 10_000, ())))
    for make in (clustered, two_far_clusters):
        x, y = make(gen, 260, 16, 6)
        train, test, y_train = x[:200], x[200:], y[:200]
        ref = reference_scores(train, y_train, test, 6, 12, distance)
        pieces = [train[:3], train[3:50], train[50:51], train[51:]]
        label_pieces = [y_train[:3], y_train[3:50], y_train[50:51], y_train[51:]]
        got = weighted_knn_predict(pieces, label_pieces, test, 6, k=12, distance=distance, chunk_size=5,
                                   bank_chunk_size=7)
        assert got.dtype == torch.float32
        np.testing.assert_allclose(got.double().numpy(), ref.numpy(), rtol=2e-6, atol=0)
    # under autocast (as in a mixed-precision run) the bound still holds: the kNN turns autocast off (and forces
    # full-precision float32 matmuls, which matters on GPUs with TF32 only)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = weighted_knn_predict(train, y_train, test, 6, k=12, distance=distance, bank_chunk_size=7)
    finally:
        torch.set_float32_matmul_precision(before)
    np.testing.assert_allclose(got.double().numpy(), ref.numpy(), rtol=2e-6, atol=0)


def test_ties_beyond_the_candidates_and_unlabelled_rows() -> None:
    """Each training row repeated 60 times (more equal distances than the max(2k, k + 16) = 40 candidates, so
    no candidate set can settle a query and the exhaustive stage answers) and rows labelled -1 that lie nearest
    of all: the unlabelled rows never vote, and the votes equal the reference's on the labelled rows (ties may
    pick either copy; copies carry the same label and distance)."""
    gen = torch.Generator().manual_seed(int(torch.randint(0, 10_000, ())))
    base, y = clustered(gen, 20, 8, 4)
    train, labels = base.repeat(60, 1), y.repeat(60)
    test = base[:6] + 0.05 * torch.randn(6, 8, generator=gen)
    near = torch.cat([test, train])
    near_y = torch.cat([torch.full((6,), -1), labels])
    ref = reference_scores(train, labels, test, 4, 20, "paper")
    got = weighted_knn_predict(near, near_y, test, 4, k=20, distance="paper", bank_chunk_size=64)
    np.testing.assert_allclose(got.double().numpy(), ref.numpy(), rtol=1e-6, atol=0)


PEAK_SCRIPT = r"""
import json, sys, torch
from solo_ema.engine.knn import plan_chunks, weighted_knn_predict
torch.set_num_threads(1)
n, dim, cap = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
gen = torch.Generator().manual_seed(0)
bank = torch.rand(n, dim, generator=gen).add_(10.0)
labels = torch.randint(0, 10, (n,), generator=gen)
test = bank[:32] + 0.01

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

def growth(step):
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM, the peak resident size, to the current one
        f.write("5")
    before = status("VmRSS")
    result = step()
    return status("VmHWM") - before, result

weighted_knn_predict(bank[:300], labels[:300], test, 10, k=20, distance="paper")  # pages in the code it runs
knn, scores = growth(lambda: weighted_knn_predict(bank, labels, test, 10, k=20, distance="paper",
                                                  budget_bytes=cap // 4))
copy, _ = growth(lambda: bank.double())
plan = plan_chunks(dim, 4, 40, cap // 4)
print(json.dumps({"knn": knn, "copy": copy, "bound": plan.peak_bytes(dim, 4, 32, 40, 10),
                  "argmax": scores.argmax(1).tolist()}))
"""


def test_big_bank_stays_under_a_memory_cap_that_float64_would_exceed(tmp_path: Path) -> None:
    """A 250,000 x 64 float32 bank (64 MB; 128 MB as the float64 copy the kNN used to make) under a 32 MB cap.

    Arithmetic: the chunk plan for a quarter of the cap bounds the kNN's extra bytes below the cap, and the cap
    is below the float64 copy. Measurement (torch's allocations are invisible to tracemalloc): in a separate
    process whose glibc serves every allocation over 128 kB from its own mapping and unmaps it when freed
    (MALLOC_MMAP_THRESHOLD_), so that the resident size follows the live allocations, the peak resident size
    (VmHWM, reset through /proc/self/clear_refs) grows by no more than that bound during the kNN, and by at
    least the float64 copy's size while that copy is made, so the measure does see an allocation of that size.
    The kNN's answer is checked against the float64 reference on the same bank.
    """
    n, dim, cap = 250_000, 64, 32 << 20
    assert n * dim * 8 > 3 * cap
    plan = plan_chunks(dim, 4, 40, cap // 4)
    assert plan.bank_rows < n and plan.peak_bytes(dim, 4, 32, 40, 10) < cap
    script = tmp_path / "peak.py"
    script.write_text(PEAK_SCRIPT)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 << 10)}
    run = subprocess.run([sys.executable, str(script), str(n), str(dim), str(cap)], capture_output=True, text=True,
                         check=True, timeout=120, env=env)
    out = json.loads(run.stdout)
    assert out["bound"] < cap
    assert 0 < out["knn"] <= out["bound"], out
    assert out["copy"] >= n * dim * 8 * 0.95, out
    gen = torch.Generator().manual_seed(0)
    bank = torch.rand(n, dim, generator=gen).add_(10.0)
    labels = torch.randint(0, 10, (n,), generator=gen)
    ref = reference_scores(bank, labels, bank[:32] + 0.01, 10, 20, "paper")
    assert out["argmax"] == ref.argmax(1).tolist()


def test_bank_keeps_the_input_device_and_spills_past_its_capacity() -> None:
    """add() keeps each batch where it was computed (on the meta device, where any copy to the host, .item() or
    other synchronisation would raise), counts its bytes, and past `capacity_bytes` sends later batches to host
    memory; the kNN over a spilled bank equals the one over the whole tensor."""
    meta = KNNBank()
    meta.add(torch.empty(6, 4, device="meta"), torch.empty(6, dtype=torch.long, device="meta"))
    assert all(p.device.type == "meta" for p in meta.feature_pieces() + meta.label_pieces())
    assert len(meta) == 6 and meta.device_bytes == 6 * bank_row_bytes(4, 4)

    gen = torch.Generator().manual_seed(int(torch.randint(0, 10_000, ())))
    x, y = clustered(gen, 90, 8, 5)
    train, y_train, test, y_test = x[:72], y[:72], x[72:], y[72:]
    row = bank_row_bytes(8, 4)
    bank = KNNBank(capacity_bytes=20 * row)
    for s in range(0, 72, 8):
        bank.add(train[s : s + 8], y_train[s : s + 8])
    assert bank.device_bytes == 16 * row and bank.host_rows == 56 and len(bank) == 72
    torch.testing.assert_close(bank.features(), train)
    whole = knn_accuracy(train, y_train, test, y_test, 5, k=10, distance="paper")
    assert knn_accuracy(bank.feature_pieces(), bank.label_pieces(), test, y_test, 5, k=10, distance="paper") == whole

    capped = KNNBank(max_size=20, capacity_bytes=12 * row)
    for s in range(0, 72, 8):
        capped.add(train[s : s + 8], y_train[s : s + 8])
    torch.testing.assert_close(capped.features(), train[-20:])
    assert capped.labels().tolist() == y_train[-20:].tolist() and capped.device_bytes == 0 and capped.host_rows == 20


@pytest.mark.parametrize("rows", [3, None])
def test_gather_bank_in_chunks_keeps_process_order(monkeypatch, rows: int | None) -> None:
    """Two processes, played by two threads whose all_gather meets at a barrier: banks of 11 and 4 rows, banked
    5 rows at a time and sent 3 rows per step (rank 1 runs out first and sends empty steps) or in the default
    steps, come back on both ranks as rank 0's rows then rank 1's, through gather_uneven."""
    from solo_ema.engine import distributed

    for module in (knn, distributed):
        monkeypatch.setattr(module, "world_size", lambda: 2)
    barrier, slots = threading.Barrier(2, timeout=20), [None, None]

    class Rank:
        def __init__(self, rank: int) -> None:
            self.rank = rank

        def all_gather(self, x: torch.Tensor) -> torch.Tensor:
            slots[self.rank] = x
            barrier.wait()
            out = torch.stack(slots)
            barrier.wait()
            return out

    gen = torch.Generator().manual_seed(int(torch.randint(0, 10_000, ())))
    feats = [torch.randn(11, 3, generator=gen), torch.randn(4, 3, generator=gen)]
    labels = [torch.arange(11), torch.arange(100, 104)]
    results: list = [None, None]

    def run(rank: int) -> None:
        bank = KNNBank(capacity_bytes=10 ** 6)
        for s in range(0, len(feats[rank]), 5):
            bank.add(feats[rank][s : s + 5], labels[rank][s : s + 5])
        results[rank] = gather_bank(Rank(rank), bank, torch.device("cpu"), rows=rows)

    threads = [threading.Thread(target=run, args=(r,), daemon=True) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for got_f, got_y in results:
        torch.testing.assert_close(torch.cat(got_f), torch.cat(feats))
        assert torch.cat(got_y).tolist() == torch.cat(labels).tolist()


def test_bank_capacity_arithmetic() -> None:
    """Half the free device memory for the banks, host memory for the rest; more processes hold the gathered
    bank too (1 + world copies); what fits nowhere is a UsageError naming the flag and both sizes."""
    gb = 10 ** 9
    assert bank_row_bytes(2048, 4) == 8200
    assert bank_capacity(1000, 100, 1, None, 10 ** 6, "--knn_eval") is None
    assert bank_capacity(1000, 100, 1, 4 * gb, 0, "--knn_eval") == 2 * gb
    assert bank_capacity(1000, 100, 4, 10 * gb, 0, "--knn_eval") == gb
    # ImageNet-1K, paper metric: 2 crops x 1,281,167 images x 8,200 bytes = 21.0 GB on one process
    rows = 2 * 1_281_167
    assert bank_capacity(rows, 8200, 1, 48 * gb, 0, "--knn_metric paper") == 24 * gb
    with pytest.raises(UsageError, match=r"^--knn_metric paper: the kNN bank needs 21 GB .* than the 20 GB of dev"):
        bank_capacity(rows, 8200, 1, 30 * gb, 5 * gb, "--knn_metric paper")
    with pytest.raises(UsageError, match="needs 10 GB"):
        bank_capacity(1000, 10 ** 7, 1, None, 9 * gb, "--knn_eval")
    bank_capacity(1000, 10 ** 7, 1, None, 10 * gb, "--knn_eval")


def _image_folder(root: Path, per_class: int = 8, size: int = 20) -> Path:
    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"class{c}/{i}.png")
    return root


def test_pretrain_refuses_a_bank_that_cannot_fit_before_any_step(tmp_path, monkeypatch, capsys) -> None:
    """solo-ema-pretrain --knn_metric paper with the memory it sees forced to 50 kB (``free_memory`` patched in the
    engine): exit code 2, one stderr line naming the flag and the bytes, no step taken and no run folder left."""
    from solo_ema.engine import base
    from solo_ema.pretrain import main

    monkeypatch.setattr(base, "free_memory", lambda device: (None, 50_000))
    steps: list[int] = []
    monkeypatch.setattr(base.BaseMethod, "on_train_epoch_start", lambda self: steps.append(1))
    data = _image_folder(tmp_path / "data")
    argv = ["--method", "byol", "--dataset", "custom", "--data_dir", str(data), "--crop_size", "16",
            "--batch_size", "8", "--max_epochs", "1", "--num_workers", "0", "--limit_val_batches", "0",
            "--log_dir", str(tmp_path / "logs"), "--name", "big", "--proj_hidden_dim", "32",
            "--pred_hidden_dim", "32", "--proj_output_dim", "16", "--accelerator", "cpu", "--knn_metric", "paper"]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    # 16 images, 2 steps of 8, both large crops: 32 samples of 512 float32 features and a label
    assert err == ["solo-ema-pretrain: error: --knn_eval/--knn_metric paper: the kNN bank needs 65.8 kB per "
                   "process (32 samples x 2,056 bytes), more than the 50 kB of host memory available; train on "
                   "fewer images (--train_subset) or pick a metric that keeps the last 50,000 samples "
                   "(--knn_metric cosine)"], err
    assert not steps and not (tmp_path / "logs" / "big").exists()
