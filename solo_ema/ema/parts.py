"""The ordered parts of an encoder and the EMA spec that names some of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

BACKBONE_PARTS: tuple[str, ...] = ("conv1", "block1", "block2", "block3", "block4")
HEAD_PARTS: tuple[str, ...] = ("projector",)
PARTS: tuple[str, ...] = BACKBONE_PARTS + HEAD_PARTS

ALIASES: dict[str, str] = {
    "stem": "conv1",
    "layer1": "block1",
    "layer2": "block2",
    "layer3": "block3",
    "layer4": "block4",
    "head": "projector",
}
GROUPS: dict[str, tuple[str, ...]] = {
    "all": PARTS,
    "encoder": PARTS,
    "backbone": BACKBONE_PARTS,
    "none": (),
}


#: ``momentum.parts`` when a config names none: the whole encoder, the classic teacher (solo-learn's behaviour)
DEFAULT_PARTS = "all"


class EMASpecError(ValueError):
    """An EMA spec names a part that does not exist."""


def valid_names() -> str:
    """The names an EMA spec may use, as one human-readable string."""
    return ", ".join([*GROUPS, *PARTS]) + " (or PART.child for a sub-module, joined with '+')"


def _canonical(token: str) -> str:
    top, dot, rest = token.partition(".")
    top = ALIASES.get(top, top)
    if dot and not rest:
        raise EMASpecError(f"'{token}': empty sub-part name; valid: {valid_names()}")
    if top not in PARTS:
        raise EMASpecError(f"unknown EMA part '{token}'; valid: {valid_names()}")
    if rest and top == "conv1":
        raise EMASpecError(f"'{token}': conv1 has no sub-parts; valid: {valid_names()}")
    return f"{top}.{rest}" if rest else top


def covers(outer: str, inner: str) -> bool:
    """True when the dotted name `inner` (a part or a module path) is `outer` or lies inside it."""
    return inner == outer or inner.startswith(outer + ".")


@dataclass(frozen=True)
class EMASpec:
    """Which parts of the encoder the target keeps as momentum copies, in encoder order."""

    parts: tuple[str, ...]

    @property
    def is_none(self) -> bool:
        """True when the target shares every part with the online encoder."""
        return not self.parts

    @property
    def shares_backbone(self) -> bool:
        """True when no backbone part is a momentum copy (one backbone forward per view)."""
        return all(p.split(".")[0] not in BACKBONE_PARTS for p in self.parts)

    def __str__(self) -> str:
        if not self.parts:
            return "none"
        for name, group in GROUPS.items():
            if group and self.parts == group:
                return name
        return "+".join(self.parts)

    @classmethod
    def from_canonical(cls, text: str) -> EMASpec:
        """Read back ``str(spec)`` (what a resolved config holds); anything else raises EMASpecError.

        The inverse of ``__str__``, not a resolution: no aliases, lists, defaults or taus are accepted, so a
        value that needs any of those goes through :func:`resolve_parts` instead.
        """
        spec = parse_ema_spec(text) if isinstance(text, str) and text else None
        if spec is None or str(spec) != text:
            raise EMASpecError(f"'{text}' is not a canonical EMA spec (one of {valid_names()}, in encoder order)")
        return spec


def parse_ema_spec(spec: str) -> EMASpec:
    """Parse 'all', 'backbone', 'projector', 'none', parts and '+' combinations into an EMASpec."""
    tokens = [t.strip() for t in str(spec).split("+")]
    if not spec or any(not t for t in tokens):
        raise EMASpecError(f"empty EMA part in '{spec}'; valid: {valid_names()}")
    parts: list[str] = []
    for token in tokens:
        if token in GROUPS:
            parts.extend(GROUPS[token])
        else:
            parts.append(_canonical(token))
    if "none" in tokens and len(tokens) > 1:
        raise EMASpecError(f"'none' cannot be combined with other parts in '{spec}'")
    kept = [p for p in dict.fromkeys(parts) if not any(q != p and covers(q, p) for q in parts)]
    kept.sort(key=lambda p: PARTS.index(p.split(".")[0]))
    return EMASpec(tuple(kept))


def shares_every_part(base_tau: float | None, final_tau: float | None) -> bool:
    """True when beta is 0 for the whole run: the target shares every part (the paper's "no momentum")."""
    return base_tau == final_tau == 0


def resolve_parts(value: Any, base_tau: float | None, final_tau: float | None, default: str = DEFAULT_PARTS) -> EMASpec:
    """The one resolver of ``momentum.parts``: a user's value and the taus -> the canonical EMASpec.

    ``value`` is a flag or YAML string ('head', 'block4+projector', ...), a list/tuple of part names (empty:
    'none'), or None (then ``default``). ``base_tau == final_tau == 0`` resolves to 'none' (the value is still
    checked). Raises EMASpecError (one line) for an unknown part or a value of another type.
    """
    if value is None:
        value = default
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = "+".join(str(v) for v in value) if len(value) else "none"
    if not isinstance(value, str):
        raise EMASpecError(f"EMA parts must be a string or a list of part names, got {value!r}; valid: {valid_names()}")
    spec = parse_ema_spec(value)
    return EMASpec(()) if shares_every_part(base_tau, final_tau) else spec


def config_parts(value: Any, base_tau: float | None, final_tau: float | None, default: str = DEFAULT_PARTS) -> EMASpec:
    """``momentum.parts`` of a config as an EMASpec: read back when it already holds the resolver's output.

    solo-learn's contract re-runs ``add_and_assert_specific_cfg`` in a model's ``__init__`` on a config that the
    CLI (or an earlier call) has resolved. A value that is already the canonical string for these taus is a fixed
    point of :func:`resolve_parts`, so it is only read back (:meth:`EMASpec.from_canonical`); any other value
    (a raw flag, an alias, a list, None, a non-'none' spec with beta 0) is resolved, once.
    """
    if isinstance(value, str):
        try:
            spec = EMASpec.from_canonical(value)
        except EMASpecError:
            spec = None
        if spec is not None and (spec.is_none or not shares_every_part(base_tau, final_tau)):
            return spec
    return resolve_parts(value, base_tau, final_tau, default)
