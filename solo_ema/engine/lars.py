"""LARS: layer-wise adaptive rate scaling on top of SGD with momentum."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

__all__ = ["LARS"]


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose per-parameter step is scaled by a trust ratio.

    For a parameter ``p`` with gradient ``g`` in a group with learning rate ``lr``:

    * if ``exclude_bias_n_norm`` and ``p.ndim <= 1``: ``d = g`` (no weight decay, no adaptation);
    * else ``d = g + weight_decay * p`` and, when ``||p|| > 0`` and ``||g|| > 0``,
      ``trust = eta * ||p|| / (||g|| + weight_decay * ||p|| + eps)``, replaced by
      ``min(trust / lr, 1)`` when ``clip_lr``; then ``d = trust * d``;
    * ``buf = momentum * buf + d`` (``buf = d`` at the first step) and ``p -= lr * buf``.

    Every constructor option may be overridden per parameter group.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 1e-3,
        clip_lr: bool = False,
        exclude_bias_n_norm: bool = False,
        eps: float = 1e-8,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"invalid momentum: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"invalid weight_decay: {weight_decay}")
        if eta < 0.0:
            raise ValueError(f"invalid eta: {eta}")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "eta": eta,
            "clip_lr": clip_lr,
            "exclude_bias_n_norm": exclude_bias_n_norm,
            "eps": eps,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimisation step; ``closure`` re-evaluates the loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _step_group(self, group: dict[str, Any]) -> None:
        lr = float(group["lr"])
        wd = float(group["weight_decay"])
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        if any(p.grad.is_sparse for p in params):
            raise RuntimeError("LARS does not support sparse gradients")

        if group["exclude_bias_n_norm"]:
            plain = [p for p in params if p.ndim <= 1]
            adapted = [p for p in params if p.ndim > 1]
        else:
            plain, adapted = [], params

        updates: dict[int, torch.Tensor] = {}
        for p in plain:
            updates[id(p)] = p.grad
        if adapted:
            grads = [p.grad for p in adapted]
            if wd != 0.0:
                directions = torch._foreach_add(grads, adapted, alpha=wd)
            else:
                directions = [g.clone() for g in grads]
            trusts = self._trust_ratios(
                adapted, grads, lr, wd, float(group["eta"]), bool(group["clip_lr"]), float(group["eps"])
            )
            torch._foreach_mul_(directions, trusts)
            for p, d in zip(adapted, directions):
                updates[id(p)] = d

        momentum = float(group["momentum"])
        old_bufs, old_dirs = [], []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = updates[id(p)].clone()
            else:
                old_bufs.append(state["momentum_buffer"])
                old_dirs.append(updates[id(p)])
        if old_bufs:
            torch._foreach_mul_(old_bufs, momentum)
            torch._foreach_add_(old_bufs, old_dirs)
        torch._foreach_add_(params, [self.state[p]["momentum_buffer"] for p in params], alpha=-lr)

    @staticmethod
    def _trust_ratios(
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        lr: float,
        wd: float,
        eta: float,
        clip_lr: bool,
        eps: float,
    ) -> list[torch.Tensor]:
        """Return one 0-d trust ratio per parameter (1 where either norm is zero)."""
        # Norms are stacked per (device, dtype) so that the ratio arithmetic runs once per bucket.
        buckets: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, p in enumerate(params):
            buckets.setdefault((p.device, p.dtype), []).append(i)
        ratios: list[torch.Tensor] = [torch.empty(0)] * len(params)
        for idx in buckets.values():
            p_norm = torch.stack(torch._foreach_norm([params[i] for i in idx]))
            g_norm = torch.stack(torch._foreach_norm([grads[i] for i in idx]))
            trust = eta * p_norm / (g_norm + wd * p_norm + eps)
            if clip_lr:
                trust = torch.clamp(trust / lr, max=1.0) if lr > 0 else torch.ones_like(trust)
            trust = torch.where((p_norm > 0) & (g_norm > 0), trust, torch.ones_like(trust))
            for i, t in zip(idx, trust.unbind(0)):
                ratios[i] = t
        return ratios
