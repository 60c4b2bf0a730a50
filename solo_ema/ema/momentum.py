"""Momentum copies of the EMA parts of an encoder, their update, and the target forward over them."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call

from .parts import covers
from .schedule import check_taus, cosine_tau
from .stages import Stage, get_module, split_stages


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

    The online encoder (``root``) is described by ordered ``stages``. The target pass of a crop starts from
    the online activation at the input of the first EMA stage (captured by a hook during the online pass of
    that crop inside ``capture``; see ``target``),
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
        self._recording: dict[str, torch.Tensor] | None = None  # the capture in progress
        self._held: dict[int, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}  # id(X) -> (X, capture)
        # what a target pass needs from a capture to resume from it
        self._needs = frozenset(
            ({"input"} if self.shares_input else set())
            | {s.output for s in self.stages[: self._stop] if s.output is not None}
        )
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

    # target protocol -------------------------------------------------------------------------
    # The one place that decides what the target pass of a crop starts from. Per crop X:
    #   with ema.capture(X): out = online_forward(X)   # the hooks record only inside this block
    #   target = ema.target(X, prepare)                # from X's capture when complete, else from images
    # and ema.clear() at the end of a batch. Forwards outside capture() leave nothing behind.
    def _attach_capture_hooks(self) -> list:
        hooks = []
        self._hooked: list[tuple[str, nn.Module]] = []  # (path, module) of every hooked online module
        if self.shares_input:
            first = get_module(self.root, self.stages[self.first].path)

            def keep_input(_module: nn.Module, args: tuple) -> None:
                if self._recording is not None:
                    self._recording["input"] = args[0].detach()

            hooks.append(first.register_forward_pre_hook(keep_input))
            self._hooked.append((self.stages[self.first].path, first))
        for stage in self.stages[: self._stop]:
            if stage.output is None:
                continue

            def keep_output(_module: nn.Module, _args: tuple, out: torch.Tensor, name: str = stage.output) -> None:
                if self._recording is not None:
                    self._recording[name] = out.detach()

            module = get_module(self.root, stage.path)
            hooks.append(module.register_forward_hook(keep_output))
            self._hooked.append((stage.path, module))
        return hooks

    def _refresh_hooks(self) -> None:
        """Hook the online modules again when one at a hooked path was replaced (e.g. sync-BN conversion)."""
        if self._hooks and any(get_module(self.root, path) is not module for path, module in self._hooked):
            for hook in self._hooks:
                hook.remove()
            self._hooks = self._attach_capture_hooks()

    @property
    def _stop(self) -> int:
        """Index of the first stage the target pass runs itself when it resumes from a capture."""
        return len(self.stages) if self.first is None else self.first

    @contextmanager
    def capture(self, X: torch.Tensor) -> Iterator[None]:
        """Record, for the target pass of crop X, what the online pass of X inside this block computes.

        An online module replaced at a hooked path since the last capture (as a sync-BN conversion replaces
        every BatchNorm) is hooked again first.
        """
        if self._recording is not None:
            raise RuntimeError("PartialEMA.capture: already capturing another crop")
        self._refresh_hooks()
        self._recording = {}
        try:
            yield
            self._held[id(X)] = (X, self._recording)  # holding X keeps its id unique while the entry lives
        finally:
            self._recording = None

    @torch.no_grad()
    def target(
        self, X: torch.Tensor, prepare: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Target outputs of crop X (e.g. {'feats', 'z'}), forgetting X's capture.

        The pass resumes from the activations captured during X's online pass when they hold everything
        it needs (the input of the first EMA stage and every output before it); otherwise it runs from
        the images, ``prepare(X)`` (e.g. a memory-format change) when given.
        """
        entry = self._held.pop(id(X), None)
        captured = entry[1] if entry is not None else {}
        if self.first != 0 and self._needs <= captured.keys():
            return self._forward(None, captured)
        return self._forward(prepare(X) if prepare is not None else X, None)

    @property
    def pending(self) -> int:
        """Number of captured crops whose target pass has not run yet."""
        return len(self._held)

    def clear(self) -> None:
        """Forget every capture not yet used by a target pass (call at the end or start of a batch)."""
        self._held.clear()

    def remove_hooks(self) -> None:
        """Remove the capture hooks from the online modules.

        The hooks hold this object, so it lives as long as the online model does (``__del__`` never runs):
        call this before deleting or replacing the PartialEMA of a model that stays in use, e.g. when a
        second PartialEMA is built over the same model, or at the end of a test. Afterwards capture()
        records nothing and every target pass runs from the images.
        """
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

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

    def _forward(self, images: torch.Tensor | None, captured: dict[str, torch.Tensor] | None) -> dict:
        """The target pass from the captured activations (complete, see target()) or else from images."""
        if captured is not None:
            out = {k: v for k, v in captured.items() if k != "input"}
            if self.first is None:
                return out
            start, h = self.first, captured["input"]
        else:
            out, start, h = {}, 0, images
        for stage in self.stages[start:]:
            h = self._run_stage(stage, h)
            if stage.output is not None:
                out[stage.output] = h
        return out
