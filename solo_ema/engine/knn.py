"""Weighted k-nearest-neighbour evaluation of frozen features, exact and streamed in chunks.

The neighbours are exact: the k nearest training rows of each query are those a float64 brute force finds
(``|a - b|`` on every pair), except where distances tie within float64 rounding. The search runs in three
stages, each only for the queries the one before could not settle:

1. a candidate pass in float32 (float64 for float64 features): the features are centred on the bank's mean
   (distances do not change; the cancellation of ``|a|^2 + |b|^2 - 2 a.b`` on a large common offset does),
   and every distance gets a rigorous lower bound (the matmul form minus its worst-case rounding error,
   ``4 (D + 16) u (|a| + |b|)^2``). The ``m = max(2k, k + 16)`` rows of smallest bound are the candidates; their
   distances are recomputed as ``|a - b|`` in float64. A query is settled when the largest kept bound is at
   least its exact k-th distance: no other row can then be nearer;
2. the same in float64 for the queries left (a bound 2^29 times tighter);
3. exact float64 distances to every row for whatever is left (equal distances beyond the ``m`` candidates).

Memory. The bank (a tensor or a list of tensors, anywhere: device or host memory) is never copied whole and
never converted whole: it is streamed to the queries' device in chunks whose rows the budget sets
(``budget_bytes``, 256 MiB by default; ``plan_chunks``), and the kNN's extra memory is at most about two
budgets plus, per query, about ``8 D + 128 m`` bytes (its prepared features, its candidates; the bound is
``ChunkPlan.peak_bytes``). Training rows labelled ``< 0`` (unlabelled) are never neighbours.

The bank of the engine (``KNNBank``) keeps each training step's features on the device they were computed
on: ``add`` appends the batch (no copy to the host, no host synchronisation) until a stated capacity in bytes
would be exceeded; later batches go to host memory (pinned on CUDA, copied with ``non_blocking``). A banked
feature costs ``D x dtype size + 8`` bytes (features, int64 label; ``bank_row_bytes``): ResNet-50 features
(D = 2048) in float32 take 8,200 bytes, so the paper-era bank of ImageNet-1K (both large crops of 1.28M
images) takes 21 GB. ``bank_capacity`` decides the capacity at the start of training and refuses, with a
``UsageError``, a bank that fits neither there nor in host memory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..errors import UsageError
from .defaults import DISTANCES
from .distributed import gather_uneven, world_size

__all__ = [
    "DISTANCES", "KNN_BUDGET_BYTES", "PAPER_EPS", "ChunkPlan", "KNNBank", "bank_capacity", "bank_row_bytes",
    "free_memory", "gather_bank", "host_available_bytes", "knn_accuracy", "plan_chunks", "weighted_knn_predict",
]

PAPER_EPS = 1e-5  # solo-learn 1.0.x: each neighbour votes with 1 / (d + 1e-5)
KNN_BUDGET_BYTES = 256 << 20  # the bytes one chunk's temporaries may take
LABEL_BYTES = 8  # int64
DEVICE_SHARE = 0.5  # the part of the free device memory (at the start of training) the banks may take
Pieces = torch.Tensor | Sequence[torch.Tensor]


# ----------------------------------------------------------------------------------------------------------
# chunk plan


@dataclass(frozen=True)
class ChunkPlan:
    """Rows per chunk of the streamed kNN: bank rows per chunk, queries per distance block, refined pairs."""

    bank_rows: int
    query_rows: int
    pair_rows: int

    def peak_bytes(self, dim: int, feat_bytes: int, queries: int, m: int, num_classes: int) -> int:
        """Upper bound of the extra bytes the kNN allocates (its inputs not counted).

        One bank chunk (moved and joined in the features' dtype, a float64 copy, the prepared points in the
        compute dtype of at most 8 bytes) lives beside one block of one stage: queries being prepared, bounds
        with their top-m merge, refined pairs (query and bank rows in the features' dtype and in float64) or
        exhaustive distances. Per query: its prepared features, its candidates and its votes.
        """
        chunk = self.bank_rows * (dim + 2) * (2 * feat_bytes + 16)
        block = self.query_rows * (self.bank_rows * 8 + 6 * m * 16 + dim * 16)
        pairs = self.pair_rows * dim * (2 * feat_bytes + 16)
        per_query = queries * ((dim + 1) * 8 + m * 128 + num_classes * 8 + 64)
        return chunk + max(block, pairs) + per_query


def plan_chunks(dim: int, feat_bytes: int, m: int, budget_bytes: int = KNN_BUDGET_BYTES,
                query_rows: int | None = None, bank_rows: int | None = None) -> ChunkPlan:
    """Chunk sizes whose temporaries each take at most ``budget_bytes`` (at least one row each)."""
    if budget_bytes <= 0:
        raise ValueError(f"budget_bytes must be positive, got {budget_bytes}")
    rows = bank_rows or max(1, budget_bytes // ((dim + 2) * (2 * feat_bytes + 16)))
    queries = query_rows or max(1, budget_bytes // (rows * 8 + 6 * m * 16 + dim * 16))
    pairs = max(1, budget_bytes // (dim * (2 * feat_bytes + 16)))
    return ChunkPlan(bank_rows=rows, query_rows=queries, pair_rows=pairs)


# ----------------------------------------------------------------------------------------------------------
# the bank as a stream of chunks


class _Stream:
    """A bank given as pieces (tensors on any device), read in chunks of ``rows`` rows on ``device``."""

    def __init__(self, feats: Pieces, labels: Pieces, rows: int, device: torch.device) -> None:
        self.feats = [feats] if isinstance(feats, torch.Tensor) else list(feats)
        self.labels = [labels] if isinstance(labels, torch.Tensor) else list(labels)
        if [len(f) for f in self.feats] != [len(y) for y in self.labels]:
            raise ValueError("train_feats and train_labels differ in length")
        self.feats = [f for f in self.feats if len(f)]
        self.labels = [y for y in self.labels if len(y)]
        self.rows, self.device = rows, device
        self.size = sum(len(f) for f in self.feats)
        self.dim = self.feats[0].shape[1] if self.feats else 0

    def chunks(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(offset, features, labels) of consecutive chunks, moved to the device (pinned pieces without waiting)."""
        buf_f: list[torch.Tensor] = []
        buf_y: list[torch.Tensor] = []
        offset = filled = 0
        for f, y in zip(self.feats, self.labels):
            start = 0
            while start < len(f):
                take = min(self.rows - filled, len(f) - start)
                buf_f.append(f[start : start + take].to(self.device, non_blocking=True))
                buf_y.append(y[start : start + take].to(self.device, non_blocking=True))
                filled, start = filled + take, start + take
                if filled == self.rows:
                    yield offset, _join(buf_f), _join(buf_y)
                    offset, filled, buf_f, buf_y = offset + filled, 0, [], []
        if filled:
            yield offset, _join(buf_f), _join(buf_y)


def _join(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _unit_rows(x: torch.Tensor, normalise: bool) -> torch.Tensor:
    """A float64 copy of the rows, L2-normalised in place for the cosine and euclidean metrics."""
    x64 = x.to(torch.float64, copy=True)
    if normalise:  # as F.normalize: x / max(|x|, 1e-12)
        x64.div_(torch.linalg.vector_norm(x64, dim=1, keepdim=True).clamp_min_(1e-12))
    return x64


@contextmanager
def _exact_float32(device: torch.device) -> Iterator[None]:
    """float32 matmuls in full precision (no TF32 / bf16, no autocast): the error bound assumes it."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.autocast(device.type, enabled=False):
            yield
    finally:
        torch.set_float32_matmul_precision(before)


# ----------------------------------------------------------------------------------------------------------
# exact nearest neighbours


def _prepare(x: torch.Tensor, centre: torch.Tensor, normalise: bool, dtype: torch.dtype,
             valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Points for the bound pass: ``[x - centre, sqrt(c) r]`` in ``dtype`` and ``(1 - c) r^2`` (r = |x - centre|).

    Then ``a_q + a_b - 2 P_q . P_b = |q - b|^2 - c (r_q + r_b)^2``, evaluated by one matmul; ``c`` covers the
    rounding of that matmul (any summation order), of the norms and of the float64 -> ``dtype`` cast.
    """
    x64 = _unit_rows(x, normalise).sub_(centre)
    r2 = torch.linalg.vector_norm(x64, dim=1).square_()
    c = 4.0 * (x.shape[1] + 16) * torch.finfo(dtype).eps / 2
    points = torch.empty(x.shape[0], x.shape[1] + 1, dtype=dtype, device=x.device)
    points[:, :-1] = x64
    points[:, -1] = (c * r2).sqrt_()
    offset = r2.mul_(1.0 - c).to(dtype)
    if valid is not None:
        offset.masked_fill_(~valid, math.inf)
    return points, offset


def _candidates(stream: _Stream, queries: torch.Tensor, centre: torch.Tensor, normalise: bool, m: int,
                dtype: torch.dtype, plan: ChunkPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query, the m rows of smallest lower bound on the distance (indices) and the largest kept bound."""
    n = queries.shape[0]
    q_points = torch.empty(n, queries.shape[1] + 1, dtype=dtype, device=queries.device)
    q_offset = torch.empty(n, dtype=dtype, device=queries.device)
    for s in range(0, n, plan.query_rows):
        q_points[s : s + plan.query_rows], q_offset[s : s + plan.query_rows] = _prepare(
            queries[s : s + plan.query_rows], centre, normalise, dtype)
    best = torch.full((n, m), math.inf, dtype=dtype, device=queries.device)
    idx = torch.full((n, m), -1, dtype=torch.long, device=queries.device)
    for offset, feats, labels in stream.chunks():
        b_points, b_offset = _prepare(feats, centre, normalise, dtype, valid=labels >= 0)
        for s in range(0, n, plan.query_rows):
            e = min(n, s + plan.query_rows)
            bound = torch.addmm(b_offset.unsqueeze(0), q_points[s:e], b_points.T, alpha=-2.0)
            bound += q_offset[s:e].unsqueeze(1)
            top, where = bound.topk(min(m, bound.shape[1]), dim=1, largest=False)
            merged, pick = torch.cat([best[s:e], top], dim=1).topk(m, dim=1, largest=False)
            idx[s:e] = torch.cat([idx[s:e], where + offset], dim=1).gather(1, pick)
            best[s:e] = merged
    return idx, best[:, -1]


def _refine(stream: _Stream, queries: torch.Tensor, cand: torch.Tensor, normalise: bool,
            plan: ChunkPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared float64 distances ``|q - b|^2`` of every (query, candidate) pair and the candidates' labels."""
    exact = torch.full(cand.shape, math.inf, dtype=torch.float64, device=queries.device)
    labels = torch.full(cand.shape, -1, dtype=torch.long, device=queries.device)
    q64 = _unit_rows(queries, normalise)
    for offset, feats, chunk_labels in stream.chunks():
        qi, slot = ((cand >= offset) & (cand < offset + feats.shape[0])).nonzero(as_tuple=True)
        if qi.numel() == 0:
            continue
        b64 = _unit_rows(feats, normalise)
        for s in range(0, qi.numel(), plan.pair_rows):
            q, k = qi[s : s + plan.pair_rows], slot[s : s + plan.pair_rows]
            rows = cand[q, k] - offset
            exact[q, k] = torch.linalg.vector_norm(q64[q].sub_(b64[rows]), dim=1).square_()
            labels[q, k] = chunk_labels[rows]
    exact.masked_fill_(labels < 0, math.inf)
    return exact, labels


def _exhaustive(stream: _Stream, queries: torch.Tensor, k: int, normalise: bool,
                plan: ChunkPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest by float64 ``|q - b|`` to every row (for queries with more than m near-equal distances)."""
    n = queries.shape[0]
    best = torch.full((n, k), math.inf, dtype=torch.float64, device=queries.device)
    best_y = torch.full((n, k), -1, dtype=torch.long, device=queries.device)
    rows = max(1, plan.query_rows // 4)  # distances, merged distances, merged labels: under one distance block
    for _, feats, labels in stream.chunks():
        bank = _unit_rows(feats, normalise)
        for s in range(0, n, rows):
            q = _unit_rows(queries[s : s + rows], normalise)
            d2 = torch.cdist(q, bank, compute_mode="donot_use_mm_for_euclid_dist").square_()
            d2.masked_fill_((labels < 0).unsqueeze(0), math.inf)
            merged, pick = torch.cat([best[s : s + rows], d2], dim=1).topk(k, dim=1, largest=False)
            ys = torch.cat([best_y[s : s + rows], labels.unsqueeze(0).expand(d2.shape[0], -1)], dim=1)
            best[s : s + rows], best_y[s : s + rows] = merged, ys.gather(1, pick)
    return best, best_y


def _nearest(stream: _Stream, queries: torch.Tensor, k: int, normalise: bool, valid: int, plan: ChunkPlan,
             m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared float64 distances (ascending) and labels of the exact k nearest labelled rows of every query."""
    total = torch.zeros(stream.dim, dtype=torch.float64, device=queries.device)
    for _, feats, labels in stream.chunks():
        total += _unit_rows(feats[labels >= 0], normalise).sum(0)
    centre = total / valid
    n = queries.shape[0]
    dist = torch.empty(n, k, dtype=torch.float64, device=queries.device)
    lab = torch.empty(n, k, dtype=torch.long, device=queries.device)
    todo = torch.arange(n, device=queries.device)
    first = torch.promote_types(queries.dtype, torch.float32)
    for dtype in dict.fromkeys((first, torch.float64)):
        if todo.numel() == 0:
            break
        q = queries if todo.numel() == n else queries[todo]
        cand, last_bound = _candidates(stream, q, centre, normalise, m, dtype, plan)
        exact, cand_y = _refine(stream, q, cand, normalise, plan)
        d2, pos = exact.topk(k, dim=1, largest=False)
        settled = last_bound.to(torch.float64) >= d2[:, -1] if m < valid else torch.ones_like(todo, dtype=torch.bool)
        dist[todo[settled]], lab[todo[settled]] = d2[settled], cand_y.gather(1, pos)[settled]
        todo = todo[~settled]
    if todo.numel():
        dist[todo], lab[todo] = _exhaustive(stream, queries[todo], k, normalise, plan)
    return dist, lab


def weighted_knn_predict(
    train_feats: Pieces,
    train_labels: Pieces,
    test_feats: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    distance: str = "cosine",
    chunk_size: int | None = None,
    bank_chunk_size: int | None = None,
    budget_bytes: int = KNN_BUDGET_BYTES,
) -> torch.Tensor:
    """Return weighted kNN class scores of shape ``(N_test, num_classes)``, computed on the test features' device.

    ``"cosine"`` and ``"euclidean"`` L2-normalise the features. With ``"cosine"`` the ``k`` most
    similar training samples vote with weight ``exp(s / temperature)`` (``s`` the cosine similarity);
    with ``"euclidean"`` the ``k`` nearest ones vote with weight ``exp(-d / temperature)`` (``d`` the
    euclidean distance between the normalised features). ``"paper"`` is the metric of solo-learn
    1.0.x that the paper reports as KNN-1: euclidean distance ``d`` between the *raw* features, the
    ``k`` nearest vote with weight ``1 / (d + 1e-5)`` (``temperature`` unused). The training bank is a
    tensor or a list of tensors (any devices); rows labelled ``< 0`` are skipped, and ``k`` is clamped to the
    number of labelled rows. ``chunk_size`` (queries per distance block) and ``bank_chunk_size`` (bank rows
    per chunk) override the sizes ``plan_chunks`` derives from ``budget_bytes``.
    """
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; valid: {', '.join(DISTANCES)}")
    for name, size in (("chunk_size", chunk_size), ("bank_chunk_size", bank_chunk_size)):
        if size is not None and size <= 0:
            raise ValueError(f"{name} must be positive, got {size}")
    device = test_feats.device
    probe = _Stream(train_feats, train_labels, 1, device)
    if probe.size == 0:
        raise ValueError("the kNN training bank is empty")
    valid = int(sum(int((y >= 0).sum()) for y in probe.labels))
    if valid == 0:
        raise ValueError("the kNN training bank has no labelled sample")
    out_dtype = torch.promote_types(torch.promote_types(probe.feats[0].dtype, test_feats.dtype), torch.float32)
    k = max(1, min(int(k), valid))
    m = min(valid, max(2 * k, k + 16))
    plan = plan_chunks(probe.dim, probe.feats[0].element_size(), m, budget_bytes, chunk_size, bank_chunk_size)
    stream = _Stream(probe.feats, probe.labels, plan.bank_rows, device)
    scores = torch.zeros(test_feats.shape[0], num_classes, dtype=torch.float64, device=device)
    if test_feats.shape[0]:
        with _exact_float32(device):
            d2, labels = _nearest(stream, test_feats, k, distance != "paper", valid, plan, m)
        if distance == "paper":
            weights = 1.0 / (d2.sqrt() + PAPER_EPS)
        elif distance == "euclidean":
            weights = (-d2.sqrt() / temperature).exp()
        else:  # cosine: for unit vectors a.b = 1 - |a - b|^2 / 2
            weights = ((1.0 - d2 / 2.0) / temperature).exp()
        scores.scatter_add_(1, labels, weights)
    return scores.to(out_dtype)


def knn_accuracy(
    train_feats: Pieces,
    train_labels: Pieces,
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


# ----------------------------------------------------------------------------------------------------------
# the engine's bank


class KNNBank:
    """Accumulates detached (features, labels) batches for kNN evaluation, on the device they come from.

    With ``max_size`` only the most recent ``max_size`` samples are kept. With ``capacity_bytes`` a batch that
    would take the device-resident part past that many bytes goes to host memory instead (pinned on CUDA,
    copied without waiting), and so do all later ones until ``reset``.
    """

    def __init__(self, max_size: int | None = None, capacity_bytes: int | None = None) -> None:
        if max_size is not None and max_size <= 0:
            raise ValueError(f"max_size must be positive, got {max_size}")
        self.max_size = max_size
        self.capacity_bytes = capacity_bytes
        self._feats: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._on_host: list[bool] = []
        self._count = 0
        self._device_bytes = 0
        self._host_rows = 0
        self._spilled = False
        self._pending: set[torch.device] = set()

    def add(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """Append a batch of features (N x D) and labels (N), without waiting on the device."""
        if feats.shape[0] != labels.shape[0]:
            raise ValueError("feats and labels differ in length")
        feats, labels = feats.detach(), labels.detach()
        size = _nbytes(feats) + _nbytes(labels)
        if self.capacity_bytes is not None and self._device_bytes + size > self.capacity_bytes:
            self._spilled = True
        if self._spilled:
            if feats.is_cuda:
                self._pending.add(feats.device)
            feats, labels = _to_host(feats), _to_host(labels)
            self._host_rows += feats.shape[0]
        else:
            self._device_bytes += size
        self._feats.append(feats)
        self._labels.append(labels)
        self._on_host.append(self._spilled)
        self._count += feats.shape[0]
        if self.max_size is not None:
            self._trim(self.max_size)

    def _trim(self, keep: int) -> None:
        while self._count - self._feats[0].shape[0] >= keep:
            self._count -= self._feats[0].shape[0]
            self._forget(self._feats.pop(0), self._labels.pop(0), self._on_host.pop(0))
        extra = self._count - keep
        if extra > 0:  # a view: the rows it drops are freed with the rest of the batch
            self._forget(self._feats[0][:extra], self._labels[0][:extra], self._on_host[0])
            self._feats[0], self._labels[0] = self._feats[0][extra:], self._labels[0][extra:]
            self._count = keep

    def _forget(self, feats: torch.Tensor, labels: torch.Tensor, on_host: bool) -> None:
        if on_host:
            self._host_rows -= feats.shape[0]
        else:
            self._device_bytes -= _nbytes(feats) + _nbytes(labels)

    def _synchronize(self) -> None:
        """Wait for the copies to pinned host memory before the host reads them."""
        for device in self._pending:
            torch.cuda.current_stream(device).synchronize()
        self._pending.clear()

    def feature_pieces(self) -> list[torch.Tensor]:
        """The stored feature batches, in order (no copy)."""
        self._synchronize()
        return list(self._feats)

    def label_pieces(self) -> list[torch.Tensor]:
        """The stored label batches, in order (no copy)."""
        self._synchronize()
        return list(self._labels)

    def features(self) -> torch.Tensor:
        """Return all stored features concatenated on one device (an empty tensor if none)."""
        pieces = self.feature_pieces()
        return torch.cat([p.to(pieces[0].device) for p in pieces]) if pieces else torch.empty(0, 0)

    def labels(self) -> torch.Tensor:
        """Return all stored labels concatenated on one device (an empty long tensor if none)."""
        pieces = self.label_pieces()
        return torch.cat([p.to(pieces[0].device) for p in pieces]) if pieces else torch.empty(0, dtype=torch.long)

    @property
    def device_bytes(self) -> int:
        """Bytes of the stored batches that stay where they were computed."""
        return self._device_bytes

    @property
    def host_rows(self) -> int:
        """Rows moved to host memory because the capacity was reached."""
        return self._host_rows

    def reset(self) -> None:
        """Drop everything stored."""
        self._feats.clear()
        self._labels.clear()
        self._on_host.clear()
        self._count = self._device_bytes = self._host_rows = 0
        self._spilled = False
        self._pending.clear()

    def __len__(self) -> int:
        """Return the number of stored samples."""
        return self._count


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _to_host(t: torch.Tensor) -> torch.Tensor:
    """A host copy of t, pinned and not waited for when t is on CUDA."""
    if t.device.type == "cpu":
        return t
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=t.is_cuda)
    return host.copy_(t, non_blocking=t.is_cuda)


def gather_bank(module: torch.nn.Module, bank: KNNBank, device: torch.device,
                rows: int | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every process's bank (features, labels pieces in process order), gathered with ``gather_uneven``.

    On one process: the bank's own pieces. Otherwise the bank goes ``rows`` rows at a time through the device
    (by default as many as keep one step's gathered copies within ``KNN_BUDGET_BYTES``; a host-resident part
    does not have to fit there at once); a gathered piece stays on the device while the gathered total there is
    within ``world x capacity_bytes``, else goes to host memory.
    """
    feats, labels = bank.feature_pieces(), bank.label_pieces()
    world = world_size()
    if world == 1:
        return feats, labels
    dim, dtype = feats[0].shape[1], feats[0].dtype
    rows = rows or max(1, KNN_BUDGET_BYTES // (2 * world * bank_row_bytes(dim, feats[0].element_size())))
    sizes = gather_uneven(module, torch.tensor([len(bank)], device=device)).tolist()
    steps = math.ceil(max(sizes) / rows)
    local = _Stream(feats, labels, rows, device).chunks()
    limit = None if bank.capacity_bytes is None else bank.capacity_bytes * world
    on_device = 0
    out: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(world)]
    for step in range(steps):
        _, f, y = next(local, (0, torch.empty(0, dim, dtype=dtype, device=device),
                               torch.empty(0, dtype=torch.long, device=device)))
        counts = [min(rows, max(0, n - step * rows)) for n in sizes]
        for rank, (gf, gy) in enumerate(zip(gather_uneven(module, f).split(counts),
                                            gather_uneven(module, y).split(counts))):
            if limit is not None and on_device + _nbytes(gf) + _nbytes(gy) > limit:
                gf, gy = gf.cpu(), gy.cpu()
            elif gf.device.type != "cpu":
                on_device += _nbytes(gf) + _nbytes(gy)
            out[rank].append((gf, gy))
    pieces = [p for per_rank in out for p in per_rank if len(p[0])]
    return [f for f, _ in pieces], [y for _, y in pieces]


# ----------------------------------------------------------------------------------------------------------
# memory check at the start of training


def bank_row_bytes(dim: int, feat_bytes: int) -> int:
    """Bytes one banked sample takes: its features and its int64 label."""
    return dim * feat_bytes + LABEL_BYTES


def host_available_bytes() -> int:
    """Host memory available to new allocations (MemAvailable of /proc/meminfo, else free pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def free_memory(device: torch.device) -> tuple[int | None, int]:
    """(free bytes of the CUDA device, None elsewhere; host bytes available to new allocations)."""
    device_free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    return device_free, host_available_bytes()


def bank_capacity(rows: int, row_bytes: int, world: int, device_free: int | None, host_free: int,
                  flag: str) -> int | None:
    """The bytes of its bank one process keeps on its device; a UsageError naming ``flag`` if it fits nowhere.

    ``rows`` are the samples one process banks in an epoch; on more than one process each also holds the
    gathered bank of all ``world`` processes at the kNN, ``1 + world`` times its own. The device (``device_free``
    free bytes, ``None`` for a CPU run) may take ``DEVICE_SHARE`` of its free memory, host memory
    (``host_free``, this process's share) the rest. Returns ``None`` (no capacity) on a CPU run.
    """
    copies = 1 if world <= 1 else 1 + world
    need = rows * row_bytes * copies
    device_share = 0 if device_free is None else int(device_free * DEVICE_SHARE)
    if need > device_share + host_free:
        where = f"the {_size(host_free)} of host memory" if device_free is None else (
            f"the {_size(device_share + host_free)} of device ({DEVICE_SHARE:.0%} of {_size(device_free)} free) and "
            f"host ({_size(host_free)}) memory")
        times = f" x {copies} copies" if copies > 1 else ""
        raise UsageError(
            f"{flag}: the kNN bank needs {_size(need)} per process ({rows:,} samples x {row_bytes:,} bytes{times}), "
            f"more than {where} available; train on fewer images (--train_subset) or pick a metric that keeps the "
            f"last 50,000 samples (--knn_metric cosine)")
    return None if device_free is None else device_share // copies


def _size(n: int) -> str:
    """Bytes in decimal units, three significant digits (21.0 GB, 65.8 kB)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"
