"""Momentum copies of the EMA parts of an encoder, their update, and the target forward over them."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call

from .schedule import check_taus, cosine_tau
from .stages import Stage, covers, get_module, split_stages


def _merge_paths(root: nn.Module, paths: Sequence[str]) -> list[str]:
    """Replace EMA paths by their parent module wherever they cover all of its parameters."""
    merged = list(dict.fromkeys(paths))
    while True:
        parents = {p.rsplit(".", 1)[0] for p in merged if "." in p}
        grown = False
        for parent in sorted(parents, key=len, reverse=True):
            names = [f"{parent}.{n}" for n, _ in get_module(root, parent).named_parameters()]
            if names and all(any(covers(p, n) for p in merged) for n in names):
                merged = [p for p in merged if not covers(parent, p)] + [parent]
                grown = True
                break
        if not grown:
            return merged


class PartialEMA(nn.Module):
    """Keeps momentum copies of some parts of an online encoder and runs the target pass through them.

    The online encoder (``root``) is described by ordered ``stages``. The target pass starts from the
    online activation at the input of the first EMA stage (captured by a hook during the online pass),
    runs EMA stages with the momentum copies and later shared stages with the online weights, under
    no_grad, on copies of the online BatchNorm buffers so online running statistics never change.
    Only parameters are averaged; the copies' BatchNorm buffers follow their own forward passes.
    """

    def __init__(
        self,
        root: nn.Module,
        stages: Sequence[Stage],
        ema_paths: Sequence[str],
        base_tau: float = 0.99,
        final_tau: float = 1.0,
    ) -> None:
        super().__init__()
        check_taus(base_tau, final_tau)
        self._root = [root]  # a list keeps the online model out of this module's children
        self.base_tau, self.final_tau = float(base_tau), float(final_tau)
        for path in ema_paths:
            get_module(root, path)
        self.paths = _merge_paths(root, ema_paths)
        self.stages = split_stages(root, stages, self.paths)
        order = [s.path for s in self.stages if s.is_module]
        self.paths.sort(key=lambda p: min(i for i, s in enumerate(order) if covers(p, s) or covers(s, p)))
        ema_stage = [i for i, s in enumerate(self.stages) if s.is_module and self._covered(s.path)]
        self.first = ema_stage[0] if ema_stage else None
        self.copies = nn.Module()
        for path in self.paths:
            self._store_copy(path, copy.deepcopy(get_module(root, path)))
        for p in self.copies.parameters():
            p.requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self.last_tau = self.base_tau
        self._captured: dict[str, torch.Tensor] = {}
        self._hooks = self._attach_capture_hooks()

    # structure ---------------------------------------------------------------------------------
    @property
    def root(self) -> nn.Module:
        """The online model."""
        return self._root[0]

    def _covered(self, path: str) -> bool:
        return any(covers(p, path) for p in self.paths)

    def _store_copy(self, path: str, module: nn.Module) -> None:
        parent = self.copies
        *heads, last = path.split(".")
        for name in heads:
            if not hasattr(parent, name):
                parent.add_module(name, nn.Module())
            parent = getattr(parent, name)
        parent.add_module(last, module)

    def copy_of(self, path: str) -> nn.Module | None:
        """The momentum copy of the online module at `path`, or None when that module is shared."""
        if not self._covered(path):
            return None
        return get_module(self.copies, path)

    def pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, momentum) module pairs, one per EMA path, as solo-learn's momentum_pairs."""
        return [(get_module(self.root, p), get_module(self.copies, p)) for p in self.paths]

    def _param_lists(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        online, momentum = [], []
        for o_mod, m_mod in self.pairs():
            for (o_name, o), (m_name, m) in zip(o_mod.named_parameters(), m_mod.named_parameters(), strict=True):
                assert o_name == m_name, (o_name, m_name)
                online.append(o.detach())
                momentum.append(m)
        return online, momentum

    def num_momentum_params(self) -> int:
        """Number of scalars kept in momentum copies."""
        return sum(p.numel() for p in self.copies.parameters())

    @property
    def shares_input(self) -> bool:
        """True when the target pass starts from an online activation (no second pass of the first stages)."""
        return self.first is not None and self.first > 0

    # update ------------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, tau: float) -> None:
        """xi <- tau * xi + (1 - tau) * theta for every momentum parameter, in one foreach call."""
        if tau >= 1.0 or not self.paths:
            return
        online, momentum = self._param_lists()
        if tau <= 0.0:
            torch._foreach_copy_(momentum, online)
        else:
            torch._foreach_lerp_(momentum, online, 1.0 - tau)

    def current_tau(self, max_steps: int) -> float:
        """Tau for the next update under the cosine schedule."""
        return cosine_tau(int(self.num_updates), max_steps, self.base_tau, self.final_tau)

    @torch.no_grad()
    def step(self, max_steps: int) -> float:
        """Apply one EMA update with the scheduled tau (call after each optimizer step); returns tau."""
        tau = self.current_tau(max_steps)
        self.update(tau)
        self.num_updates += 1
        self.last_tau = tau
        return tau

    # target forward ----------------------------------------------------------------------------
    def _attach_capture_hooks(self) -> list:
        hooks = []
        if self.shares_input:
            first = get_module(self.root, self.stages[self.first].path)

            def keep_input(_module: nn.Module, args: tuple) -> None:
                self._captured["input"] = args[0].detach()

            hooks.append(first.register_forward_pre_hook(keep_input))
        stop = len(self.stages) if self.first is None else self.first
        for stage in self.stages[:stop]:
            if stage.output is None:
                continue

            def keep_output(_module: nn.Module, _args: tuple, out: torch.Tensor, name: str = stage.output) -> None:
                self._captured[name] = out.detach()

            hooks.append(get_module(self.root, stage.path).register_forward_hook(keep_output))
        return hooks

    def pop_captured(self) -> dict[str, torch.Tensor]:
        """Take what the last online pass left for the target pass (call right after it)."""
        captured, self._captured = self._captured, {}
        return captured

    def _run_stage(self, stage: Stage, h: torch.Tensor) -> torch.Tensor:
        if not stage.is_module:
            return stage.fn(h)
        momentum = self.copy_of(stage.path)
        if momentum is not None:
            return momentum(h)
        online = get_module(self.root, stage.path)
        buffers = {name: b.clone() for name, b in online.named_buffers()}
        if not buffers:
            return online(h)
        return functional_call(online, buffers, (h,))

    @torch.no_grad()
    def target_forward(self, images: torch.Tensor | None, captured: dict[str, torch.Tensor] | None = None):
        """Target outputs (e.g. {'feats', 'z'}) from the captured online activations, or from images."""
        if captured:
            out = {k: v for k, v in captured.items() if k != "input"}
            if self.first is None:
                return out
            start = self.first
            h = captured["input"] if self.shares_input else images
        else:
            if images is None:
                raise ValueError("target_forward needs images when nothing was captured")
            out, start, h = {}, 0, images
        for stage in self.stages[start:]:
            h = self._run_stage(stage, h)
            if stage.output is not None:
                out[stage.output] = h
        return out

