"""Make the next batch while the training step runs on the current one."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from typing import TypeVar

import torch

__all__ = ["prefetched"]

T = TypeVar("T")
_END = object()


def _tensors(item: object) -> Iterator[torch.Tensor]:
    """Every tensor inside nested lists, tuples and dicts."""
    if isinstance(item, torch.Tensor):
        yield item
    elif isinstance(item, (list, tuple)):
        for x in item:
            yield from _tensors(x)
    elif isinstance(item, dict):
        for x in item.values():
            yield from _tensors(x)


def prefetched(batches: Iterator[T], device: torch.device | str) -> Iterator[T]:
    """Yield the items of `batches`, each made one item ahead: item i + 1 is queued before item i is handed out.

    On CUDA the items are made on a side stream, so the kernels that make item i + 1 run beside the training
    step of item i instead of between steps; taking an item makes the current stream wait for the side
    stream's work up to that item (and records the item's tensors on the current stream, so their memory is
    not reused while the step reads them). Elsewhere the items are made one ahead on the calling thread. The
    items and their order are those of `batches`.
    """
    device = torch.device(device)
    side = torch.cuda.Stream(device) if device.type == "cuda" else None

    def make() -> object:
        with torch.cuda.stream(side) if side is not None else nullcontext():
            return next(batches, _END)

    upcoming = make()
    while upcoming is not _END:
        item = upcoming
        if side is not None:
            current = torch.cuda.current_stream(device)
            current.wait_stream(side)
            for t in _tensors(item):
                if t.is_cuda:
                    t.record_stream(current)
        upcoming = make()
        yield item  # type: ignore[misc]
