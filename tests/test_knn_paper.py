"""The paper-era kNN (solo-learn 1.0.x's KNN-1): against float64 brute force, solo-learn's formula, and the engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from solo_ema.engine.knn import knn_accuracy, weighted_knn_predict

pytestmark = pytest.mark.usefixtures("single_thread")


def features(seed: int, n_train: int = 300, n_test: int = 60, dim: int = 24, classes: int = 10):
    """Fresh raw features of large, uneven norm (as pooled ReLU features are), labels and test labels."""
    gen = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(classes, dim, generator=gen, dtype=torch.float64)
    y_train = torch.randint(0, classes, (n_train,), generator=gen)
    y_test = torch.randint(0, classes, (n_test,), generator=gen)
    scale = 1.0 + 9.0 * torch.rand(n_train, 1, generator=gen, dtype=torch.float64)
    train = (centres[y_train] + 2.0 * torch.randn(n_train, dim, generator=gen, dtype=torch.float64)).relu() * scale
    test = (centres[y_test] + 2.0 * torch.randn(n_test, dim, generator=gen, dtype=torch.float64)).relu() * 5.0
    return train, y_train, test, y_test


def brute_force_scores(train: np.ndarray, labels: np.ndarray, test: np.ndarray, classes: int, k: int) -> np.ndarray:
    """Independent float64 computation: every distance as sqrt(sum (a - b)^2), a full sort, 1 / (d + 1e-5) votes."""
    out = np.zeros((len(test), classes))
    for i, q in enumerate(test):
        d = np.sqrt(((train - q) ** 2).sum(axis=1))
        for j in np.argsort(d, kind="stable")[:k]:
            out[i, labels[j]] += 1.0 / (d[j] + 1e-5)
    return out


def solo_learn_1_0_reference(train: torch.Tensor, train_y: torch.Tensor, test: torch.Tensor, test_y: torch.Tensor,
                             classes: int, k: int = 20) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """solo-learn 1.0.x's weighted kNN written from its facts: cdist on raw features, the k smallest, weights
    1/(d + 1e-5), one-hot votes summed, classes sorted by score; top-1 and top-min(5, k) hits."""
    dist = torch.cdist(test.double(), train.double(), compute_mode="donot_use_mm_for_euclid_dist")
    d, idx = dist.topk(k, dim=1, largest=False)
    one_hot = torch.zeros(test.shape[0] * k, classes, dtype=torch.float64)
    one_hot.scatter_(1, train_y[idx].view(-1, 1), 1.0)
    probs = (one_hot.view(test.shape[0], k, classes) * (1.0 / (d + 1e-5)).view(test.shape[0], k, 1)).sum(1)
    predictions = probs.sort(1, descending=True).indices
    correct = predictions.eq(test_y.view(-1, 1))
    top1 = correct[:, :1].sum().item() * 100.0 / len(test_y)
    top5 = correct[:, : min(5, k, classes)].sum().item() * 100.0 / len(test_y)
    return probs, correct, top1, top5


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_paper_knn_matches_float64_brute_force(dtype: torch.dtype) -> None:
    train, y, test, _ = features(seed=int(torch.randint(0, 10_000, ())))
    got = weighted_knn_predict(train.to(dtype), y, test.to(dtype), 10, k=20, distance="paper", chunk_size=17)
    ref = brute_force_scores(train.to(dtype).double().numpy(), y.numpy(), test.to(dtype).double().numpy(), 10, 20)
    np.testing.assert_allclose(got.double().numpy(), ref, rtol=1e-6, atol=0)
    # the paper's metric is not solo-ema's cosine or normalised-euclidean one on the same features
    for other in ("cosine", "euclidean"):
        assert not np.allclose(weighted_knn_predict(train, y, test, 10, k=20, distance=other).numpy(), ref, rtol=1e-3)


def test_paper_knn_matches_solo_learn_formula() -> None:
    train, y, test, y_test = features(seed=int(torch.randint(0, 10_000, ())))
    probs, correct, top1_ref, top5_ref = solo_learn_1_0_reference(train, y, test, y_test, 10)
    got = weighted_knn_predict(train, y, test, 10, k=20, distance="paper")
    np.testing.assert_allclose(got.numpy(), probs.numpy(), rtol=1e-6, atol=0)
    top1, top5 = knn_accuracy(train, y, test, y_test, 10, k=20, distance="paper")
    assert top1 == pytest.approx(top1_ref, abs=1e-9)
    # top-5: equal except where the 5th and 6th scores tie (classes without votes), which either order may pick
    ranked = probs.sort(1, descending=True).values
    ties = int((ranked[:, 4] == ranked[:, 5]).sum())
    assert abs(top5 - top5_ref) <= ties * 100.0 / len(y_test) + 1e-9


def test_paper_knn_large_norm_float32_cancellation() -> None:
    """Two clusters ~1e3 apart whose members lie ~1e-1 from each other: neither the matmul form in float32 nor
    centring on the mean recovers the distances; the result must still equal the float64 brute force."""
    gen = torch.Generator().manual_seed(int(torch.randint(0, 10_000, ())))
    base = 1000.0 * torch.rand(1, 32, generator=gen, dtype=torch.float64)
    train = torch.cat([base, -base]).repeat(200, 1) + 0.1 * torch.randn(400, 32, generator=gen, dtype=torch.float64)
    test = base + 0.1 * torch.randn(7, 32, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (400,), generator=gen)
    train32, test32 = train.float(), test.float()
    got = weighted_knn_predict(train32, y, test32, 4, k=20, distance="paper")
    ref = brute_force_scores(train32.double().numpy(), y.numpy(), test32.double().numpy(), 4, 20)
    np.testing.assert_allclose(got.double().numpy(), ref, rtol=1e-6, atol=0)


def test_engine_banks_both_large_crops_and_logs_the_paper_metric(make_model, make_batch) -> None:
    """--knn_metric paper: the epoch's bank holds the features of both large crops (labels repeated), no cap,
    and val_knn_acc1/5 are the paper metric on that bank; the default keeps the first crop (capped at 50k)."""
    model = make_model("projector", "--knn_metric", "paper")
    assert model.cfg.knn_eval.enabled and model.cfg.knn_eval.distance_func == "paper"
    assert model.cfg.knn_eval.max_train is None
    captured: dict[str, list] = {"feats": []}
    forward = model.forward

    def keep(X):
        out = forward(X)
        captured["feats"].append(out["feats"].detach())
        return out

    model.forward = keep
    model.on_train_epoch_start()
    batch = make_batch(3)
    with torch.no_grad():
        model.training_step(batch, 0)
    feats = model.knn_bank.features()
    assert feats.shape[0] == 2 * batch[2].shape[0]
    torch.testing.assert_close(feats, torch.cat(captured["feats"][:2]))
    assert model.knn_bank.labels().tolist() == batch[2].repeat(2).tolist()

    model.eval()
    gen = torch.Generator().manual_seed(4)
    X, t = torch.randn(6, 3, 16, 16, generator=gen), torch.randint(0, 10, (6,), generator=gen)
    with torch.no_grad():
        model.validation_step([X, t], 0)
    logged: dict[str, float] = {}
    model.log_dict = lambda d, **kw: logged.update({k: float(v) for k, v in d.items()})
    val = captured["feats"][-1]
    top1, top5 = knn_accuracy(feats, batch[2].repeat(2), val, t, 10, k=20, distance="paper")
    model.on_validation_epoch_end()
    assert logged["val_knn_acc1"] == pytest.approx(top1) and logged["val_knn_acc5"] == pytest.approx(top5)

    default = make_model("projector", "--knn_eval")
    assert default.cfg.knn_eval.distance_func == "cosine" and default.cfg.knn_eval.max_train == 50000
    default.on_train_epoch_start()
    with torch.no_grad():
        default.training_step(batch, 0)
    assert len(default.knn_bank) == batch[2].shape[0]
