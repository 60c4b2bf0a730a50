"""Weighted k-nearest-neighbour evaluation of frozen features."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["DISTANCES", "KNNBank", "knn_accuracy", "weighted_knn_predict"]

DISTANCES = ("cosine", "euclidean")


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

    Features are L2-normalised. With ``"cosine"`` the ``k`` most similar training samples vote
    with weight ``exp(s / temperature)`` (``s`` the cosine similarity); with ``"euclidean"`` the
    ``k`` nearest ones vote with weight ``exp(-d / temperature)`` (``d`` the euclidean distance
    between the normalised features). ``k`` is clamped to the number of training samples; test
    features are processed ``chunk_size`` rows at a time.
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
    train = F.normalize(train_feats.to(dtype), dim=1)
    labels = train_labels.to(device=device, dtype=torch.long)
    k = max(1, min(int(k), train.shape[0]))

    out = []
    for start in range(0, test_feats.shape[0], chunk_size):
        test = F.normalize(test_feats[start : start + chunk_size].to(device=device, dtype=dtype), dim=1)
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
