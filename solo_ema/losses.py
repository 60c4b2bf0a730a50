"""The pure loss functions of the six methods (torch only): the engine's methods and the solo-learn plug-in use them."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(p, sg(z)), averaged over the batch."""
    return 2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1).mean()


def dino_loss(
    student: Sequence[torch.Tensor],
    teacher: Sequence[torch.Tensor],
    center: torch.Tensor,
    student_temperature: float,
    teacher_temperature: float,
) -> torch.Tensor:
    """Mean over pairs (teacher crop t, student crop s != t) of CE(softmax((t - c)/T_t), log_softmax(s/T_s)).

    ``teacher`` holds the outputs of the large crops (crop i of the teacher is crop i of the student),
    ``student`` those of every crop; each cross-entropy is averaged over the batch.
    """
    total, pairs = 0.0, 0
    for it, t in enumerate(teacher):
        q = F.softmax((t.detach() - center) / teacher_temperature, dim=-1)
        for iv, s in enumerate(student):
            if iv == it:
                continue
            total = total + torch.sum(-q * F.log_softmax(s / student_temperature, dim=-1), dim=-1).mean()
            pairs += 1
    if pairs == 0:
        raise ValueError("the DINO loss needs at least two crops")
    return total / pairs


def moco_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE: cross-entropy of logits [q.k, q.queue] / T with target 0 (q, k: B x D normalised; queue: D x Q)."""
    pos = torch.einsum("nc,nc->n", q, k.detach()).unsqueeze(-1)
    neg = torch.einsum("nc,ck->nk", q, queue.detach())
    logits = torch.cat([pos, neg], dim=1) / temperature
    targets = torch.zeros(q.size(0), dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, targets)


def ressl_loss(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature_q: float, temperature_k: float
) -> torch.Tensor:
    """CE(softmax(k . queue^T / T_k), log_softmax(q . queue^T / T_q)), averaged over the batch (queue: Q x D)."""
    logits_q = q @ queue.detach().T / temperature_q
    logits_k = k.detach() @ queue.detach().T / temperature_k
    return torch.sum(-F.softmax(logits_k, dim=-1) * F.log_softmax(logits_q, dim=-1), dim=-1).mean()


def nt_xent(
    anchors: torch.Tensor,
    anchor_index: torch.Tensor,
    anchor_view: torch.Tensor,
    candidates: torch.Tensor,
    candidate_index: torch.Tensor,
    candidate_view: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """NT-Xent: mean over anchors a of -log(sum_pos exp(a.c/T) / sum_{pos+neg} exp(a.c/T)) on normalised vectors.

    Positives of an anchor: candidates with its sample index from another view; negatives: candidates of
    other samples (any view); the anchor's own (sample, view) pair is neither.
    """
    a = F.normalize(anchors, dim=-1)
    c = F.normalize(candidates, dim=-1)
    logits = a @ c.T / temperature
    same_sample = anchor_index[:, None] == candidate_index[None, :]
    same_view = anchor_view[:, None] == candidate_view[None, :]
    pos = same_sample & ~same_view
    valid = ~(same_sample & same_view)
    every_anchor = pos.any(dim=1).all()
    message = "every anchor needs a positive: a candidate of the same sample from another view"
    if every_anchor.is_cuda:
        torch._assert_async(every_anchor, message)  # checked on the device: no host synchronisation per step
    elif not bool(every_anchor):
        raise ValueError(message)
    log_pos = torch.logsumexp(logits.masked_fill(~pos, float("-inf")), dim=1)
    log_all = torch.logsumexp(logits.masked_fill(~valid, float("-inf")), dim=1)
    return (log_all - log_pos).mean()


def simsiam_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """-cos(p, sg(z)), averaged over the batch."""
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()
