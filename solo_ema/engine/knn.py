"""Weighted k-nearest-neighbour evaluation of frozen features."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .defaults import DISTANCES

__all__ = ["DISTANCES", "PAPER_EPS", "KNNBank", "knn_accuracy", "weighted_knn_predict"]

PAPER_EPS = 1e-5  # solo-learn 1.0.x: each neighbour votes with 1 / (d + 1e-5)
_REFINE_ELEMENTS = 1 << 25  # float64 elements of one block of the "paper" distance (256 MiB)


def weighted_knn_predict(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    distance: str = "cosine",
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Return weighted kNN class scores of shape ``(N_test, num_classes)``.

    ``"cosine"`` and ``"euclidean"`` L2-normalise the features. With ``"cosine"`` the ``k`` most
    similar training samples vote with weight ``exp(s / temperature)`` (``s`` the cosine similarity);
    with ``"euclidean"`` the ``k`` nearest ones vote with weight ``exp(-d / temperature)`` (``d`` the
    euclidean distance between the normalised features). ``"paper"`` is the metric of solo-learn
    1.0.x that the paper reports as KNN-1: euclidean distance ``d`` between the *raw* features, the
    ``k`` nearest vote with weight ``1 / (d + 1e-5)`` (``temperature`` unused). ``k`` is clamped to
    the number of training samples; test features are processed ``chunk_size`` rows at a time.
    """
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; valid: {', '.join(DISTANCES)}")
    if train_feats.shape[0] == 0:
        raise ValueError("the kNN training bank is empty")
    if train_feats.shape[0] != train_labels.shape[0]:
        raise ValueError("train_feats and train_labels differ in length")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    dtype = torch.promote_types(train_feats.dtype, torch.float32)
    device = train_feats.device
    train = train_feats.to(dtype)
    if distance != "paper":
        train = F.normalize(train, dim=1)
    labels = train_labels.to(device=device, dtype=torch.long)
    k = max(1, min(int(k), train.shape[0]))

    out = []
    for start in range(0, test_feats.shape[0], chunk_size):
        test = test_feats[start : start + chunk_size].to(device=device, dtype=dtype)
        if distance == "paper":
            top_dist, idx = _nearest_raw(test, train, k)
            scores = torch.zeros(test.shape[0], num_classes, dtype=dtype, device=device)
            scores.scatter_add_(1, labels[idx], (1.0 / (top_dist + PAPER_EPS)).to(dtype))
            out.append(scores)
            continue
        test = F.normalize(test, dim=1)
        sim = test @ train.T
        if distance == "cosine":
            top_sim, idx = sim.topk(k, dim=1)
            weights = (top_sim / temperature).exp()
        else:
            # For unit vectors ||a - b||^2 = 2 - 2 a.b; the clamp guards rounding below zero.
            dist = (2.0 - 2.0 * sim).clamp_min(0.0).sqrt()
            top_dist, idx = dist.topk(k, dim=1, largest=False)
            weights = (-top_dist / temperature).exp()
        scores = torch.zeros(test.shape[0], num_classes, dtype=dtype, device=device)
        scores.scatter_add_(1, labels[idx], weights)
        out.append(scores)
    if not out:
        return torch.zeros(0, num_classes, dtype=dtype, device=device)
    return torch.cat(out)


def _nearest_raw(test: torch.Tensor, train: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances, indices) of the ``k`` nearest training rows of each test row, by raw euclidean distance.

    Candidates (2k per row) come from ``|a|^2 + |b|^2 - 2 a.b`` in float64 on features centred on the
    training mean (distances do not change; the cancellation of the matmul form on a large common offset
    does); their distances are then recomputed as ``|a - b|`` in float64.
    """
    mean = train.double().mean(0)
    train64 = train.double() - mean
    train_sq = (train64 * train64).sum(1)
    m = min(2 * k, train.shape[0])
    rows = max(1, _REFINE_ELEMENTS // max(1, train.shape[0], m * train.shape[1]))
    dists, idxs = [], []
    for s in range(0, test.shape[0], rows):
        q = test[s : s + rows].double() - mean
        sq = (q * q).sum(1, keepdim=True) + train_sq - 2.0 * (q @ train64.T)
        cand = sq.topk(m, dim=1, largest=False).indices
        d, pos = (q[:, None, :] - train64[cand]).norm(dim=2).topk(k, dim=1, largest=False)
        dists.append(d)
        idxs.append(cand.gather(1, pos))
    return torch.cat(dists), torch.cat(idxs)


def knn_accuracy(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    distance: str = "cosine",
) -> tuple[float, float]:
    """Return weighted-kNN top-1 and top-5 accuracy in percent (top-5 uses ``min(5, num_classes)``)."""
    n = test_labels.shape[0]
    if n == 0:
        return 0.0, 0.0
    scores = weighted_knn_predict(
        train_feats, train_labels, test_feats, num_classes, k=k, temperature=temperature, distance=distance
    )
    top = scores.topk(min(5, num_classes), dim=1).indices
    hits = top == test_labels.to(device=top.device, dtype=torch.long).view(-1, 1)
    top1 = hits[:, 0].sum().item() * 100.0 / n
    top5 = hits.any(dim=1).sum().item() * 100.0 / n
    return top1, top5


class KNNBank:
    """Accumulates detached CPU (features, labels) batches for kNN evaluation.

    With ``max_size`` only the most recent ``max_size`` samples are kept.
    """

    def __init__(self, max_size: int | None = None) -> None:
        if max_size is not None and max_size <= 0:
            raise ValueError(f"max_size must be positive, got {max_size}")
        self.max_size = max_size
        self._feats: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._count = 0

    def add(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """Append a batch of features (N x D) and labels (N)."""
        if feats.shape[0] != labels.shape[0]:
            raise ValueError("feats and labels differ in length")
        self._feats.append(feats.detach().to("cpu"))
        self._labels.append(labels.detach().to("cpu"))
        self._count += feats.shape[0]
        if self.max_size is not None and self._count > self.max_size:
            self._feats = [torch.cat(self._feats)[-self.max_size :]]
            self._labels = [torch.cat(self._labels)[-self.max_size :]]
            self._count = self.max_size

    def features(self) -> torch.Tensor:
        """Return all stored features concatenated (an empty tensor if none)."""
        return torch.cat(self._feats) if self._feats else torch.empty(0, 0)

    def labels(self) -> torch.Tensor:
        """Return all stored labels concatenated (an empty long tensor if none)."""
        return torch.cat(self._labels) if self._labels else torch.empty(0, dtype=torch.long)

    def reset(self) -> None:
        """Drop everything stored."""
        self._feats.clear()
        self._labels.clear()
        self._count = 0

    def __len__(self) -> int:
        """Return the number of stored samples."""
        return self._count
