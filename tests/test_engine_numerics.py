"""Numeric checks of LARS, the lr/tau schedules and weighted kNN against independent references."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch

from solo_ema.ema import cosine_tau
from solo_ema.engine.knn import KNNBank, knn_accuracy, weighted_knn_predict
from solo_ema.engine.lars import LARS
from solo_ema.engine.schedule import build_scheduler, warmup_cosine

# ----------------------------------------------------------------------------------------------------------
# LARS


def _lars_reference(
    params: list[list[float]],
    shapes_ndim: list[int],
    grads_per_step: list[list[list[float]]],
    lr: float,
    momentum: float,
    wd: float,
    eta: float,
    clip_lr: bool,
    exclude: bool,
    eps: float = 1e-8,
) -> list[list[float]]:
    """Pure-Python float64 LARS on flattened parameters."""
    params = [list(p) for p in params]
    bufs: list[list[float] | None] = [None] * len(params)
    for grads in grads_per_step:
        for i, (p, g) in enumerate(zip(params, grads)):
            if exclude and shapes_ndim[i] <= 1:
                d = list(g)
            else:
                d = [gj + wd * pj for gj, pj in zip(g, p)]
                p_norm = math.sqrt(sum(x * x for x in p))
                g_norm = math.sqrt(sum(x * x for x in g))
                if p_norm > 0 and g_norm > 0:
                    trust = eta * p_norm / (g_norm + wd * p_norm + eps)
                    if clip_lr:
                        trust = min(trust / lr, 1.0)
                    d = [trust * x for x in d]
            if bufs[i] is None:
                bufs[i] = list(d)
            else:
                bufs[i] = [momentum * b + x for b, x in zip(bufs[i], d)]
            params[i] = [pj - lr * bj for pj, bj in zip(p, bufs[i])]
    return params


def _random_problem(seed: int, steps: int) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(6, 5), (6,), (3, 2, 2), (4,)]
    params = [torch.randn(s, generator=gen) for s in shapes]
    # Gradient scales vary so that clip_lr both clips and does not clip.
    scales = [1.0, 0.01, 30.0, 0.5]
    grads = [[torch.randn(s, generator=gen) * sc for s, sc in zip(shapes, scales)] for _ in range(steps)]
    grads[1][3] = torch.zeros(shapes[3])  # a zero gradient: trust must fall back to 1
    return params, grads


@pytest.mark.parametrize("exclude", [False, True])
@pytest.mark.parametrize("clip_lr", [False, True])
@pytest.mark.parametrize("wd", [0.0, 1e-2])
def test_lars_matches_float64_reference(exclude: bool, clip_lr: bool, wd: float) -> None:
    steps, lr, momentum, eta = 4, 0.3, 0.9, 0.02
    init, grads = _random_problem(seed=0, steps=steps)
    params = [p.clone().requires_grad_(True) for p in init]
    opt = LARS(params, lr=lr, momentum=momentum, weight_decay=wd, eta=eta, clip_lr=clip_lr,
               exclude_bias_n_norm=exclude)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()

    expected = _lars_reference(
        [p.double().flatten().tolist() for p in init],
        [p.ndim for p in init],
        [[g.double().flatten().tolist() for g in sg] for sg in grads],
        lr, momentum, wd, eta, clip_lr, exclude,
    )
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach().flatten().double(), torch.tensor(e, dtype=torch.float64),
                                   atol=1e-6, rtol=1e-5)


def test_lars_param_group_overrides() -> None:
    init, grads = _random_problem(seed=1, steps=3)
    params = [p.clone().requires_grad_(True) for p in init]
    opt = LARS(
        [
            {"params": params[:2]},
            {"params": params[2:], "lr": 0.05, "weight_decay": 1e-3, "eta": 0.5, "clip_lr": True,
             "exclude_bias_n_norm": True},
        ],
        lr=0.2, momentum=0.8, weight_decay=0.0, eta=0.01,
    )
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
    flat = [[g.double().flatten().tolist() for g in sg] for sg in grads]
    exp_a = _lars_reference([p.double().flatten().tolist() for p in init[:2]], [p.ndim for p in init[:2]],
                            [sg[:2] for sg in flat], 0.2, 0.8, 0.0, 0.01, False, False)
    exp_b = _lars_reference([p.double().flatten().tolist() for p in init[2:]], [p.ndim for p in init[2:]],
                            [sg[2:] for sg in flat], 0.05, 0.8, 1e-3, 0.5, True, True)
    for p, e in zip(params, exp_a + exp_b):
        torch.testing.assert_close(p.detach().flatten().double(), torch.tensor(e, dtype=torch.float64),
                                   atol=1e-6, rtol=1e-5)


def test_lars_huge_eta_with_clip_is_sgd_momentum() -> None:
    init, grads = _random_problem(seed=2, steps=5)
    grads[1][3] = torch.randn(4)  # keep all gradients nonzero so the trust ratio is always clipped to 1
    lars_params = [p.clone().requires_grad_(True) for p in init]
    sgd_params = [p.clone().requires_grad_(True) for p in init]
    lars = LARS(lars_params, lr=0.1, momentum=0.9, weight_decay=1e-4, eta=1e9, clip_lr=True)
    sgd = torch.optim.SGD(sgd_params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    for step_grads in grads:
        for a, b, g in zip(lars_params, sgd_params, step_grads):
            a.grad = g.clone()
            b.grad = g.clone()
        lars.step()
        sgd.step()
    for a, b in zip(lars_params, sgd_params):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_lars_state_dict_round_trip() -> None:
    init, grads = _random_problem(seed=3, steps=6)
    params = [p.clone().requires_grad_(True) for p in init]
    opt = LARS(params, lr=0.2, momentum=0.9, weight_decay=1e-3, eta=0.02, clip_lr=True, exclude_bias_n_norm=True)
    for step_grads in grads[:3]:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    assert len(saved["state"]) == len(params)

    resumed_params = [p.detach().clone().requires_grad_(True) for p in params]
    resumed = LARS(resumed_params, lr=1.0)  # hyper-parameters come back from the state dict
    resumed.load_state_dict(saved)
    for step_grads in grads[3:]:
        for a, b, g in zip(params, resumed_params, step_grads):
            a.grad = g.clone()
            b.grad = g.clone()
        opt.step()
        resumed.step()
    for a, b in zip(params, resumed_params):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------------------
# schedules


def test_warmup_cosine_key_points_and_monotonicity() -> None:
    base, start, low, warm, total = 0.8, 1e-3, 1e-4, 10, 110
    assert warmup_cosine(0, warm, total, base, start, low) == pytest.approx(start)
    assert warmup_cosine(5, warm, total, base, start, low) == pytest.approx((start + base) / 2)
    assert warmup_cosine(warm, warm, total, base, start, low) == pytest.approx(base)
    assert warmup_cosine(60, warm, total, base, start, low) == pytest.approx((base + low) / 2)
    assert warmup_cosine(35, warm, total, base, start, low) == pytest.approx(
        low + (base - low) * (1 + math.cos(math.pi / 4)) / 2)
    assert warmup_cosine(total, warm, total, base, start, low) == pytest.approx(low)
    assert warmup_cosine(total + 50, warm, total, base, start, low) == pytest.approx(low)

    values = [warmup_cosine(s, warm, total, base, start, low) for s in range(total + 1)]
    assert all(b > a for a, b in itertools.pairwise(values[: warm + 1]))
    assert all(b < a for a, b in itertools.pairwise(values[warm:]))


def test_warmup_cosine_without_warmup() -> None:
    assert warmup_cosine(0, 0, 100, 0.5, 1e-3, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(50, 0, 100, 0.5, 1e-3, 0.0) == pytest.approx(0.25)
    assert warmup_cosine(100, 0, 100, 0.5, 1e-3, 0.0) == pytest.approx(0.0)


def test_cosine_tau() -> None:
    assert cosine_tau(0, 100, 0.99, 1.0) == pytest.approx(0.99)
    assert cosine_tau(100, 100, 0.99, 1.0) == pytest.approx(1.0)
    assert cosine_tau(50, 100, 0.99, 1.0) == pytest.approx(0.995)
    assert cosine_tau(250, 100, 0.99, 1.0) == pytest.approx(1.0)
    assert cosine_tau(-3, 100, 0.99, 1.0) == pytest.approx(0.99)
    assert cosine_tau(25, 100, 0.9, 1.0) == pytest.approx(1.0 - 0.1 * (math.cos(math.pi / 4) + 1) / 2)
    assert all(cosine_tau(s, 40, 0.996, 0.996) == pytest.approx(0.996) for s in range(41))
    assert cosine_tau(7, 0, 0.9, 1.0) == 0.9


@pytest.mark.parametrize("name", ["warmup_cosine", "cosine"])
def test_build_scheduler_drives_param_groups(name: str) -> None:
    warm, total, start, low = 4, 20, 1e-3, 1e-4
    groups = [
        {"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 0.5},
        {"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 0.05},
        {"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 0.1, "static_lr": True},
    ]
    opt = torch.optim.SGD(groups, lr=1.0, momentum=0.9)
    sched = build_scheduler(opt, name, warm, total, start, low)
    assert sched is not None
    eff_warm = warm if name == "warmup_cosine" else 0
    for step in range(total + 3):
        for group, base in zip(opt.param_groups[:2], (0.5, 0.05)):
            assert group["lr"] == pytest.approx(warmup_cosine(step, eff_warm, total, base, start, low))
        assert opt.param_groups[2]["lr"] == pytest.approx(0.1)
        opt.step()
        sched.step()


def test_build_scheduler_none_and_unknown() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    assert build_scheduler(opt, "none", 1, 10, 0.0, 0.0) is None
    with pytest.raises(ValueError, match="warmup_cosine"):
        build_scheduler(opt, "step", 1, 10, 0.0, 0.0)


# ----------------------------------------------------------------------------------------------------------
# kNN


def _knn_reference(train: torch.Tensor, labels: torch.Tensor, test: torch.Tensor, num_classes: int, k: int,
                   temperature: float, distance: str) -> torch.Tensor:
    """Brute-force double loop in float64."""
    def unit(v: list[float]) -> list[float]:
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    tr = [unit(row) for row in train.double().tolist()]
    te = [unit(row) for row in test.double().tolist()]
    lab = labels.tolist()
    out = torch.zeros(len(te), num_classes, dtype=torch.float64)
    for i, q in enumerate(te):
        cands = []
        for j, x in enumerate(tr):
            if distance == "cosine":
                s = sum(a * b for a, b in zip(q, x))
                cands.append((-s, math.exp(s / temperature), lab[j]))
            else:
                d = math.sqrt(sum((a - b) ** 2 for a, b in zip(q, x)))
                cands.append((d, math.exp(-d / temperature), lab[j]))
        cands.sort(key=lambda c: c[0])
        for _, w, c in cands[: min(k, len(tr))]:
            out[i, c] += w
    return out


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_knn_scores_match_brute_force(distance: str, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(4)
    train = torch.randn(40, 6, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 5, (40,), generator=gen)
    test = torch.randn(9, 6, generator=gen, dtype=torch.float64)
    got = weighted_knn_predict(train.to(dtype), labels, test.to(dtype), 5, k=7, temperature=0.1,
                               distance=distance)
    ref = _knn_reference(train, labels, test, 5, 7, 0.1, distance)
    assert got.shape == (9, 5)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(got.double(), ref, rtol=tol, atol=tol)


def test_knn_k_clamped_and_chunking() -> None:
    gen = torch.Generator().manual_seed(5)
    train = torch.randn(12, 4, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 3, (12,), generator=gen)
    test = torch.randn(23, 4, generator=gen, dtype=torch.float64)
    for distance in ("cosine", "euclidean"):
        whole = weighted_knn_predict(train, labels, test, 3, k=50, distance=distance, chunk_size=1024)
        torch.testing.assert_close(whole, _knn_reference(train, labels, test, 3, 50, 0.07, distance))
        # Chunks may change the matmul blocking, hence last-bit differences only.
        chunked = weighted_knn_predict(train, labels, test, 3, k=50, distance=distance, chunk_size=5)
        torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=0)
        small_k = weighted_knn_predict(train, labels, test, 3, k=4, distance=distance, chunk_size=1024)
        torch.testing.assert_close(
            weighted_knn_predict(train, labels, test, 3, k=4, distance=distance, chunk_size=7), small_k,
            rtol=1e-12, atol=0,
        )


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_knn_accuracy_separated_clusters(distance: str) -> None:
    gen = torch.Generator().manual_seed(6)
    num_classes, dim = 8, 16
    centres = torch.eye(num_classes, dim) * 10
    train_labels = torch.arange(num_classes).repeat(10)
    test_labels = torch.arange(num_classes).repeat(3)
    train = centres[train_labels] + 0.1 * torch.randn(len(train_labels), dim, generator=gen)
    test = centres[test_labels] + 0.1 * torch.randn(len(test_labels), dim, generator=gen)
    top1, top5 = knn_accuracy(train, train_labels, test, test_labels, num_classes, k=5, distance=distance)
    assert top1 == pytest.approx(100.0) and top5 == pytest.approx(100.0)

    # Relabel half of the test set to the next class: top-1 halves; with 3 classes top-"5" is top-3 = 100.
    wrong = test_labels.clone()
    wrong[::2] = (wrong[::2] + 1) % num_classes
    top1, _ = knn_accuracy(train, train_labels, test, wrong, num_classes, k=5, distance=distance)
    assert top1 == pytest.approx(50.0)
    keep = train_labels < 3
    keep_test = test_labels < 3
    top1, top5 = knn_accuracy(train[keep], train_labels[keep], test[keep_test],
                              (test_labels[keep_test] + 1) % 3, 3, k=5, distance=distance)
    assert top1 == pytest.approx(0.0) and top5 == pytest.approx(100.0)


def test_knn_bank() -> None:
    bank = KNNBank()
    assert len(bank) == 0 and bank.features().numel() == 0 and bank.labels().numel() == 0
    a = torch.randn(3, 4, requires_grad=True)
    b = torch.randn(2, 4, requires_grad=True)
    bank.add(a * 2, torch.tensor([0, 1, 2]))
    bank.add(b, torch.tensor([3, 4]))
    feats = bank.features()
    assert not feats.requires_grad and feats.device.type == "cpu"
    torch.testing.assert_close(feats, torch.cat([a * 2, b]).detach())
    assert bank.labels().tolist() == [0, 1, 2, 3, 4] and len(bank) == 5
    bank.reset()
    assert len(bank) == 0 and bank.features().numel() == 0

    capped = KNNBank(max_size=4)
    for i in range(3):
        capped.add(torch.full((2, 1), float(i)), torch.full((2,), i))
    assert len(capped) == 4
    assert capped.labels().tolist() == [1, 1, 2, 2]
    assert capped.features().flatten().tolist() == [1.0, 1.0, 2.0, 2.0]
