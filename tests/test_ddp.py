"""Two-process DDP on CPU (gloo), every case in one launch of scripts/ddp_run.py: momentum state stays identical
on both processes; the queues hold both ranks' keys in rank order; DINO's centre is the mean over both ranks'
teacher outputs; SimCLR's gathered loss is the single-process loss of the concatenated batch; with
--sync_batchnorm (solo-ema's CPU synchronisation) SimCLR's and MoCo v2+'s gradients and every BatchNorm buffer are
those of one process on the concatenated batch; the logged kNN accuracy is that of both ranks' banks; a resumed
two-process run ends bitwise equal to the uninterrupted one."""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_reliability import image_folder

SCRIPT = Path(__file__).parent / "scripts" / "ddp_run.py"
BATCH, WORLD = 4, 2


def _write_idx(path: Path, array: np.ndarray) -> None:
    """A gzip idx file of unsigned bytes (magic 0 0 8 ndim, big-endian uint32 dims, data)."""
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def identity_idx(root: Path) -> Path:
    """Fashion-MNIST-format files whose training and test splits are the same 16 blocky random 28x28 images, with
    random labels (8 of class 0, 8 of class 1): a validation image's label is known only from its own copy."""
    rng = np.random.default_rng(0)
    images = np.kron(rng.uniform(0, 255, (16, 7, 7)), np.ones((4, 4)))
    labels = rng.permutation(np.repeat([0, 1], 8))
    root.mkdir(parents=True)
    for split in ("train", "t10k"):
        _write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        _write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture(scope="module")
def ddp_out(tmp_path_factory) -> Path:
    """The dumps of one two-process launch running every case of scripts/ddp_run.py."""
    tmp = tmp_path_factory.mktemp("ddp")
    data = image_folder(tmp / "data", classes=2, per_class=16)
    idx = identity_idx(tmp / "idx")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(data), str(idx), str(tmp)], env=env, capture_output=True, text=True,
        timeout=600,
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


# --- every gather on two processes, sync-BN, a DDP resume ------------------------------------------------------

def _logged(out: Path, run: str, key: str) -> list[float]:
    with open(out / "runs" / f"ddp-{run}" / "metrics.csv", newline="") as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


def _reference_model(out: Path, run: str):
    """The run's model built in this (single) process from its config.json, with the state DDP started from."""
    from omegaconf import OmegaConf

    from solo_ema.methods import build_model

    config = json.loads((out / "runs" / f"ddp-{run}" / "config.json").read_text())
    config.pop("cost")
    model = build_model(OmegaConf.create(config))
    model.load_state_dict(torch.load(out / run / "initial_state.pt", weights_only=True))
    for module in model.modules():  # as in the run (scripts/ddp_run.py KNNFeatures): cumulative running statistics
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None
    return model.train()


def _concatenated_batch(r0: dict, r1: dict) -> list:
    """Both ranks' first batches as one batch of 2 x 4 images: rank 0's, then rank 1's, in every crop."""
    (i0, x0, y0), (i1, x1, y1) = r0["batch"], r1["batch"]
    return [torch.cat([i0, i1]), [torch.cat([a, b]) for a, b in zip(x0, x1, strict=True)], torch.cat([y0, y1])]


def _one_process_step(out: Path, run: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """One training step of the single-process model on both ranks' concatenated first batch: the model after
    backward (BN buffers updated, gradients set) and its SSL loss (SimCLR's NT-Xent, MoCo's mean InfoNCE)."""
    import solo_ema.methods.mocov2plus as mocov2plus
    import solo_ema.methods.simclr as simclr

    model = _reference_model(out, run)
    losses = []
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        for module, name in ((simclr, "nt_xent"), (mocov2plus, "moco_loss")):
            real = getattr(module, name)
            patch.setattr(module, name, lambda *a, real=real: losses.append(real(*a)) or losses[-1])
        warnings.simplefilter("ignore")  # self.log without a trainer
        model.training_step(_concatenated_batch(*_load(out, run, 1)), 0).backward()
    return model, sum(losses) / len(losses)


@pytest.fixture(scope="module")
def one_process(ddp_out: Path):
    """``one_process(run)``: the single-process reference step of a sync-BN run (computed once per run)."""
    done: dict[str, tuple[torch.nn.Module, torch.Tensor]] = {}
    return lambda run: done[run] if run in done else done.setdefault(run, _one_process_step(ddp_out, run))


@pytest.mark.parametrize("run", ["simclr-syncbn", "mocov2plus-syncbn"])
def test_sync_bn_gradients_averaged_by_ddp_equal_one_process_on_the_concatenated_batch(
    ddp_out: Path, one_process, run: str
) -> None:
    """SimCLR ``--ema_parts projector`` and MoCo v2+ ``all``, both with ``--sync_batchnorm``: step 1 on two
    processes (4 images each) equals one process on the concatenated 8-image batch.

    "Equal" means, to float32 tolerance (summation order differs): with sync-BN every training-mode BatchNorm
    normalises with the statistics of both ranks' batch, which are those of the concatenated batch; each rank's
    loss is the mean over its own anchors, their mean (the logged loss) is the single-process loss, and the
    gradients each rank holds after backward (averaged over ranks by DDP, bitwise the same on both) are the
    single-process gradients of every online parameter. For SimCLR this holds only because the momentum
    projections are gathered: each rank's anchors meet both ranks' targets (rank 0's, then rank 1's).
    """
    r0, r1 = _load(ddp_out, run, 1)
    assert set(r0["indexes"].tolist()).isdisjoint(r1["indexes"].tolist())
    assert r0["grads"].keys() == r1["grads"].keys() and len(r0["grads"]) > 60
    for name, grad in r0["grads"].items():
        assert torch.equal(grad, r1["grads"][name]), name
    model, loss = one_process(run)
    params = dict(model.named_parameters())
    assert {n for n, p in params.items() if p.grad is not None} == r0["grads"].keys()
    for name, grad in r0["grads"].items():
        expected = params[name].grad
        assert float((grad - expected).norm()) <= 1e-4 * float(expected.norm()), name  # float32 noise: ~1e-5
    if run == "simclr-syncbn":
        assert float(r0["nce_loss"]) != pytest.approx(float(r1["nce_loss"]), rel=1e-5)
        teachers = [torch.cat(r["teacher"]) for r in (r0, r1)]  # this rank's momentum z of crop 0 then crop 1
        for r in (r0, r1):
            torch.testing.assert_close(r["candidates"], torch.cat(teachers), rtol=0, atol=0)
        assert float(r0["nce_loss"] + r1["nce_loss"]) / 2 == pytest.approx(float(loss), rel=1e-5)
    assert _logged(ddp_out, run, "train_nce_loss_step")[0] == pytest.approx(float(loss), rel=1e-5)


def test_sync_bn_keeps_every_bn_buffer_identical_on_both_ranks_and_equal_to_one_process(
    ddp_out: Path, one_process
) -> None:
    """MoCo v2+ ``--ema_parts all --sync_batchnorm``: after each of the 2 steps, every BatchNorm buffer -- the
    momentum backbone's running_mean / running_var / num_batches_tracked and the online ones -- is bitwise the
    same on both ranks; after step 1 it equals (float tolerance; counts exactly) the single-process step on the
    concatenated batch, where each momentum BN saw crop 0 then crop 1 of all 8 images. (This run keeps running
    statistics as a cumulative mean, BatchNorm's momentum None, for its kNN; the reference does the same.)

    Without sync-BN each rank's running statistics follow its own 4 images (see the next test).
    """
    run = "mocov2plus-syncbn"
    for step in (1, 2):
        r0, r1 = _load(ddp_out, run, step)
        momentum = [k for k in r0["bn_buffers"] if k.startswith("ema.copies.backbone.")]
        assert len(momentum) == 60 and len(r0["bn_buffers"]) == 120
        for key, value in r0["bn_buffers"].items():
            assert torch.equal(value, r1["bn_buffers"][key]), (step, key)
    r0, _ = _load(ddp_out, run, 1)
    reference = one_process(run)[0].state_dict()
    for key, value in r0["bn_buffers"].items():
        expected = reference[key]
        if key.endswith("num_batches_tracked"):
            assert int(value) == int(expected) == 2, key  # crop 0 and crop 1
        else:
            torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6, msg=key)
    assert not torch.allclose(r0["bn_buffers"]["ema.copies.backbone.bn1.running_var"], torch.ones(64))


def _resume_dumps(out: Path, run: str) -> list[dict]:
    return [torch.load(out / run / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_without_sync_bn_parameters_agree_across_ranks_but_bn_statistics_are_each_ranks_own(ddp_out: Path) -> None:
    """MoCo v2+ ``all`` without --sync_batchnorm, after 5 steps: every parameter (online and momentum), the queue
    and the optimizer state agree bitwise across ranks; the BN running statistics (online and momentum) do not.

    This is expected, as in solo-learn: training-mode BN normalises with each rank's own batch, so each rank's
    running statistics follow its own images. DDP copies rank 0's buffers to the others at each forward, so
    they differ by the last step's update only; a checkpoint holds rank 0's. --sync_batchnorm shares them.
    """
    s0, s1 = (d["state"] for d in _resume_dumps(ddp_out, "resume-straight"))
    assert s0.keys() == s1.keys()
    differ = {k for k in s0 if s0[k] != s1[k]}
    stats = {k for k in s0 if k.endswith(("running_mean", "running_var"))}
    assert len(stats) == 2 * 2 * 20 and differ == stats  # mean and var of ResNet-18's 20 BNs, online and momentum
    assert any(k.startswith("model.ema.copies.") for k in differ) and "model.queue" in s0


def test_two_process_resume_under_another_seed_ends_bitwise_equal_on_both_ranks(ddp_out: Path) -> None:
    """MoCo v2+ ``all`` on 2 processes, 5 steps over 2 epochs (4 + 1): killed as step 4 starts, after the
    checkpoint of step 3, then resumed with --seed 6 --auto_resume. Each rank trains on exactly the rest of its
    own shard (the first part's seed, the epoch's remaining batch, then epoch 1) and ends with every tensor --
    online and momentum weights, BN buffers, queue, EMA step, optimizer state, lr -- bitwise equal to that rank's
    uninterrupted run (CPU, deterministic). Rank 1 resumes from rank 0's checkpoint, BN statistics included, and
    still ends equal: DDP gives every rank rank 0's buffers at the next forward, as in the uninterrupted run."""
    straight = _resume_dumps(ddp_out, "resume-straight")
    split = _resume_dumps(ddp_out, "resume-split")
    resumed = _resume_dumps(ddp_out, "resume-resumed")
    epoch0 = [i for d in straight for batch in d["batches"][:4] for i in batch]
    assert sorted(epoch0) == list(range(32)), "the ranks share epoch 0's images"
    for rank in range(WORLD):
        seen = straight[rank]["batches"]
        assert len(seen) == 5 and split[rank]["state"] is None
        assert split[rank]["batches"] == seen[:3] and resumed[rank]["batches"] == seen[3:]
        got, expected = resumed[rank]["state"], straight[rank]["state"]
        assert got["global_step"] == 5 and len(expected) > 300 and got.keys() == expected.keys()
        different = [k for k in expected if got[k] != expected[k]]
        assert not different, f"rank {rank}: {len(different)} of {len(expected)} entries differ: {different[:4]}"


def _knn_top1(bank: torch.Tensor, bank_y: torch.Tensor, val: torch.Tensor, val_y: torch.Tensor, metric: str,
              k: int = 1, temperature: float = 0.07) -> float:
    """Weighted kNN top-1 in percent, float64: cosine (normalised, weights exp(s / T)) or paper (raw euclidean
    distance d, weights 1 / (d + 1e-5)); the k nearest vote, the top class wins."""
    bank, val = bank.double(), val.double()
    if metric == "cosine":
        sim = torch.nn.functional.normalize(val, dim=1) @ torch.nn.functional.normalize(bank, dim=1).T
        near, idx = sim.topk(k, dim=1)
        weights = (near / temperature).exp()
    else:
        dist, idx = torch.cdist(val, bank).topk(k, dim=1, largest=False)
        weights = 1.0 / (dist + 1e-5)
    votes = torch.zeros(len(val), 10, dtype=torch.float64).scatter_add_(1, bank_y[idx], weights)
    return float((votes.argmax(dim=1) == val_y).double().mean() * 100)


@pytest.mark.parametrize(("run", "metric"), [("simclr-syncbn", "paper"), ("mocov2plus-syncbn", "cosine")])
def test_knn_accuracy_logged_on_two_processes_is_that_of_both_ranks_banks_and_validation_images(
    ddp_out: Path, run: str, metric: str
) -> None:
    """The kNN top-1 (k = 1) logged after the 2-process epoch is the single-process figure over the union of
    both ranks' training bank and validation features: ``paper`` banks both large crops of every step, ``cosine``
    the first. The features are the online ones each rank computed (recorded at the model's ``features``).

    The 16 images are validated on themselves, unaugmented, with random labels (``identity_idx``): each finds
    its own crop among both ranks' features (100%), while a rank's own bank holds only half of them."""
    dumps = [torch.load(ddp_out / run / f"rank{r}_knn.pt", weights_only=True) for r in range(WORLD)]
    crops = slice(None) if metric == "paper" else slice(0, None, 2)
    banks, vals = [], []
    for d in dumps:
        assert len(d["train"]) == 4 and len(d["val"]) == 2  # 2 steps x 2 crops; 8 of the 16 images, batch 4
        banks.append([torch.cat(t) for t in zip(*d["train"][crops], strict=True)])
        vals.append([torch.cat(t) for t in zip(*d["val"], strict=True)])
    union = [torch.cat(parts) for parts in zip(*banks, strict=True)], [torch.cat(p) for p in zip(*vals, strict=True)]
    assert len(union[0][0]) == (32 if metric == "paper" else 16) and len(union[1][0]) == 16
    expected = _knn_top1(*union[0], *union[1], metric)
    (logged,) = _logged(ddp_out, run, "val_knn_acc1")
    assert logged == pytest.approx(expected, abs=1e-6) and expected == 100.0
    own_bank = sum(_knn_top1(*banks[r], *union[1], metric) for r in range(WORLD)) / WORLD
    own_all = sum(_knn_top1(*banks[r], *vals[r], metric) for r in range(WORLD)) / WORLD
    assert max(own_bank, own_all) <= 90.0, "a rank's own bank alone would give another figure"


def test_cpu_sync_batchnorm_normalises_each_rank_with_the_statistics_of_both_ranks_batches(ddp_out: Path) -> None:
    """CPUSyncBatchNorm2d (momentum 0.3) on 2 processes with uneven batches (3 and 5 images), loss
    sum_r <probe_r, y_r>: outputs, input gradients and running statistics are those of one BatchNorm over the
    8 concatenated images (float64 reference); each rank's weight/bias gradient is its own images' share (DDP
    then averages them), so their sum is the reference's."""
    d0, d1 = (torch.load(ddp_out / "syncbn-unit" / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    assert torch.equal(d0["weight"], d1["weight"]) and d0["x"].shape[0] == 3 and d1["x"].shape[0] == 5
    x = torch.cat([d0["x"], d1["x"]]).double().requires_grad_(True)
    weight = d0["weight"].double().requires_grad_(True)
    bias = d0["bias"].double().requires_grad_(True)
    mean = x.mean(dim=(0, 2, 3))
    var = ((x - mean[None, :, None, None]) ** 2).mean(dim=(0, 2, 3))
    y = (x - mean[None, :, None, None]) / (var[None, :, None, None] + 1e-5).sqrt()
    y = y * weight[None, :, None, None] + bias[None, :, None, None]
    (y * torch.cat([d0["probe"], d1["probe"]]).double()).sum().backward()
    tol = {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(torch.cat([d0["y"], d1["y"]]).double(), y.detach(), **tol)
    torch.testing.assert_close(torch.cat([d0["x_grad"], d1["x_grad"]]).double(), x.grad, **tol)
    torch.testing.assert_close((d0["weight_grad"] + d1["weight_grad"]).double(), weight.grad, **tol)
    torch.testing.assert_close((d0["bias_grad"] + d1["bias_grad"]).double(), bias.grad, **tol)
    n = x[:, 0].numel()
    for d in (d0, d1):
        torch.testing.assert_close(d["running_mean"].double(), 0.3 * mean.detach(), **tol)
        torch.testing.assert_close(d["running_var"].double(), 0.7 + 0.3 * var.detach() * n / (n - 1), **tol)
        assert int(d["num_batches_tracked"]) == 1


def test_capture_survives_a_sync_bn_conversion_that_replaces_a_hooked_batchnorm() -> None:
    """With BN1 on the backbone output (``--bn_backbone_out --bn1_position backbone``) the capture hook sits on
    that BatchNorm; torch's sync-BN conversion (Lightning's ``sync_batchnorm`` on GPUs) replaces the module.
    The target pass still resumes from the online features: one backbone pass per crop, not two."""
    from conftest import small_argv

    from solo_ema.methods import build_model
    from solo_ema.pretrain import build_cfg

    model = build_model(build_cfg(small_argv("projector", "--bn_backbone_out", "--bn1_position", "backbone")))
    torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert isinstance(model.feats_bn, torch.nn.SyncBatchNorm)
    passes = []
    model.backbone.conv1.register_forward_hook(lambda *_: passes.append(1))
    crops = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a trainer
        model.train().training_step([torch.arange(4), crops, torch.zeros(4, dtype=torch.long)], 0)
    assert len(passes) == 2
    model.ema.remove_hooks()
