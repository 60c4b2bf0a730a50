"""Registration of the partial-EMA classes in solo-learn's method registry (``solo.methods.METHODS``)."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

from .check import solo_import_error
from .plugin import HEADS, PartialEMAMixin, build_ema_class, ema_name

#: the methods that get a '<method>_ema' variant
EMA_METHODS: tuple[str, ...] = tuple(HEADS)

_BUILT: dict[tuple[str, type, type], type] = {}


def _solo_defaults() -> tuple[MutableMapping[str, type], type]:
    error = solo_import_error()
    if error is not None:
        raise error
    import solo.methods
    import solo.methods.base

    return solo.methods.METHODS, solo.methods.base.BaseMomentumMethod


def _is_ours(cls: object, solo_class: type, momentum_base: type) -> bool:
    return (
        isinstance(cls, type)
        and issubclass(cls, PartialEMAMixin)
        and cls._solo_base is solo_class
        and cls._momentum_base is momentum_base
    )


def register(
    registry: MutableMapping[str, type] | None = None,
    base_classes: Mapping[str, type] | None = None,
    momentum_base: type | None = None,
    *,
    overwrite: bool = False,
) -> dict[str, type]:
    """Add ``<method>_ema`` classes to a method registry; returns them by name.

    Defaults: ``registry`` is solo-learn's ``solo.methods.METHODS``, ``base_classes`` the method classes
    found in ``registry`` under 'byol', 'dino', 'mocov2plus', 'ressl', 'simclr' and 'simsiam', and
    ``momentum_base`` solo-learn's ``BaseMomentumMethod``; stand-ins for all three make it testable
    without solo-learn. Idempotent: each solo class gets one subclass, registered again as it is.
    A name already bound to anything else raises ValueError unless ``overwrite``.
    """
    if registry is None or momentum_base is None:
        solo_registry, solo_momentum_base = _solo_defaults()
        registry = solo_registry if registry is None else registry
        momentum_base = solo_momentum_base if momentum_base is None else momentum_base
    if base_classes is None:
        base_classes = registry
    added: dict[str, type] = {}
    for method in EMA_METHODS:
        if method not in base_classes:
            continue
        solo_class = base_classes[method]
        name = ema_name(method)
        existing = registry.get(name)
        if existing is not None and _is_ours(existing, solo_class, momentum_base):
            added[name] = existing
            continue
        if existing is not None and not overwrite:
            raise ValueError(f"'{name}' is already registered as {existing!r}; pass overwrite=True to replace it")
        key = (method, solo_class, momentum_base)
        if key not in _BUILT:
            _BUILT[key] = build_ema_class(method, solo_class, momentum_base)
        registry[name] = added[name] = _BUILT[key]
    return added
