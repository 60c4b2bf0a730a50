"""The ordered parts of an encoder and the EMA spec that names some of them."""

from __future__ import annotations

from dataclasses import dataclass

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
