"""Partial EMA for solo-learn's methods: mixins over its classes, built without importing solo-learn.

Every class here is combined with a solo-learn method class by :func:`build_ema_classes`, which takes
the solo classes as arguments (so this module, and the registration logic, can be exercised with
stand-in classes where solo-learn is not installed).

What the mixin changes in a solo-learn momentum method, and nothing else:

* ``__init__``: after solo-learn has built the method, its own momentum modules
  (``momentum_backbone`` and ``momentum_projector`` / ``momentum_head``) are deleted, and one
  :class:`solo_ema.ema.PartialEMA` (``self.ema``) keeps deep copies of the EMA parts named by
  ``momentum.parts``. Its copies take over the role of solo-learn's momentum modules.
* ``momentum_pairs``: the (online, momentum) pairs of the EMA parts only, so solo-learn's own
  ``MomentumUpdater`` (in its ``on_train_batch_end``) averages exactly those parts, with its tau schedule
  (the core's ``num_updates`` / ``last_tau`` count along, for this project's analysis callbacks).
* ``base_training_step`` / ``base_validation_step``: after solo-learn's online pass of a large crop,
  keep what PartialEMA's hooks captured for that crop (keyed by the crop tensor object).
* ``momentum_forward``: the target pass of that crop starts from the captured online activation
  before the first EMA part (no second pass of the shared backbone); without a cache entry it runs
  from the images, touching no online BatchNorm statistics.

solo-learn's losses, optimisers, schedulers, logging and the rest of the training loop run unchanged;
SimCLR and SimSiam (no momentum in solo-learn) additionally get ``BaseMomentumMethod`` in their bases
and a ``training_step`` with the EMA target (this project's losses, ``solo_ema.methods``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.utils.weight_norm import WeightNorm

from ..ema import PartialEMA, config_parts, parse_ema_spec, resnet_stages, spec_paths
from ..engine.distributed import gather
from ..methods.simclr import nt_xent
from ..methods.simsiam import simsiam_loss

#: solo-learn method name -> name of the method's head module (the part that 'projector' means)
HEADS: dict[str, str] = {
    "byol": "projector",
    "dino": "head",
    "mocov2plus": "projector",
    "ressl": "projector",
    "simclr": "projector",
    "simsiam": "projector",
}
#: methods whose target projection is L2-normalised (as in solo-learn's momentum_forward)
NORMALIZED_TARGETS = frozenset({"mocov2plus", "ressl"})
#: methods that have no momentum in solo-learn: BaseMomentumMethod joins their bases
ADDS_MOMENTUM = frozenset({"simclr", "simsiam"})
#: solo-learn's momentum modules that PartialEMA's copies replace (deleted after construction)
SOLO_MOMENTUM_MODULES = ("momentum_backbone", "momentum_projector", "momentum_head")
#: the default of ``momentum.parts``: the whole encoder, i.e. solo-learn's own behaviour
DEFAULT_PARTS = "all"


def ema_name(method: str) -> str:
    """The registry name of a method's partial-EMA variant: '<method>_ema'."""
    return f"{method}_ema"


def _ensure_node(cfg: DictConfig, key: str) -> None:
    """Create an empty config node at `key` when it is absent (solo-learn's yamls for SimCLR/SimSiam have none)."""
    if OmegaConf.select(cfg, key) is None:
        OmegaConf.update(cfg, key, {}, force_add=True)


def _detach_weight_norm_caches(module: nn.Module) -> None:
    """Make the weights cached by ``nn.utils.weight_norm`` graph leaves so the module can be deep-copied.

    The old-style weight_norm (solo-learn's DINO head) stores ``weight = g * v / ||v||`` as a plain
    attribute with a grad_fn, which ``copy.deepcopy`` refuses; it is recomputed before every forward.
    """
    for m in module.modules():
        for hook in m._forward_pre_hooks.values():
            if isinstance(hook, WeightNorm) and isinstance(getattr(m, hook.name, None), torch.Tensor):
                setattr(m, hook.name, getattr(m, hook.name).detach())


class PartialEMAMixin:
    """Partial EMA (``momentum.parts``) for a solo-learn momentum method; combine as ``(Mixin, SoloMethod)``."""

    #: set by build_ema_classes: the solo-learn method class and solo-learn's BaseMomentumMethod
    _solo_base: type = object
    _momentum_base: type = object
    _method: str = ""
    _head: str = "projector"
    _normalize_target: bool = False
    _adds_momentum: bool = False

    # configuration -----------------------------------------------------------------------------
    @classmethod
    def add_and_assert_specific_cfg(cls, cfg: DictConfig) -> DictConfig:
        """solo-learn's defaults and checks, plus ``momentum.parts`` (default 'all': solo-learn's behaviour).

        ``momentum.parts`` takes a spec string ('projector', 'block4+projector', 'all', 'none', ...) or a
        list of part names; it is stored back as the canonical string, the one key this project's engine and
        analysis tools read too (``solo_ema.ema.config_parts``: a config that already holds it is read, not
        resolved again). ``base_tau = final_tau = 0`` means the target shares every part (spec 'none').
        """
        _ensure_node(cfg, "momentum")
        cfg = cls._solo_base.add_and_assert_specific_cfg(cfg)
        if cls._adds_momentum:
            cfg = cls._momentum_base.add_and_assert_specific_cfg(cfg)
        spec = config_parts(
            OmegaConf.select(cfg, "momentum.parts", default=None),
            OmegaConf.select(cfg, "momentum.base_tau"),
            OmegaConf.select(cfg, "momentum.final_tau"),
            default=DEFAULT_PARTS,
        )
        OmegaConf.update(cfg, "momentum.parts", str(spec), force_add=True)
        return cfg

    # construction ------------------------------------------------------------------------------
    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        # PartialEMA's copies replace solo-learn's momentum modules: drop those before the model
        # ever reaches a device (a shared-backbone spec then keeps no second backbone at all)
        for name in SOLO_MOMENTUM_MODULES:
            if name in self._modules:
                delattr(self, name)
        backbone = self.backbone
        if not all(hasattr(backbone, n) for n in ("conv1", "bn1", "layer1", "layer4", "avgpool", "fc")):
            raise ValueError(
                f"{type(self).__name__}: partial EMA (momentum.parts) needs a ResNet backbone, "
                f"got backbone.name={self.cfg.backbone.name}"
            )
        head = getattr(self, self._head)
        _detach_weight_norm_caches(head)
        self.ema_spec = parse_ema_spec(self.cfg.momentum.parts)
        self.ema = PartialEMA(
            self,
            resnet_stages("backbone", self._head),
            spec_paths(self.ema_spec, "backbone", self._head),
            self.cfg.momentum.base_tau,
            self.cfg.momentum.final_tau,
        )
        self._target_cache: dict[int, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}

    @property
    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, momentum copy) pairs of the EMA parts only; solo-learn's MomentumUpdater averages them."""
        return self.ema.pairs()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """solo-learn's EMA update (its MomentumUpdater over momentum_pairs), counted on the core's counters."""
        tau, stepped = self.momentum_updater.cur_tau, self.trainer.global_step > self.last_step
        super().on_train_batch_end(outputs, batch, batch_idx)
        if stepped:
            self.ema.num_updates += 1
            self.ema.last_tau = tau

    # the online pass keeps what the target pass of the same crop reuses --------------------------
    def _keep_for_target(self, X: torch.Tensor) -> None:
        self._target_cache[id(X)] = (X, self.ema.pop_captured())

    def base_training_step(self, X: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        """solo-learn's online step of a large crop, then keep the captured activations for its target pass."""
        out = super().base_training_step(X, targets)
        self._keep_for_target(X)
        return out

    def base_validation_step(self, X: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        """solo-learn's online validation step, then keep the captured activations for its target pass."""
        out = super().base_validation_step(X, targets)
        self._keep_for_target(X)
        return out

    def multicrop_forward(self, X: torch.Tensor) -> dict[str, Any]:
        """Small crops have no target pass: drop what the hooks captured."""
        out = super().multicrop_forward(X)
        self.ema.pop_captured()
        return out

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> Any:
        """Start each batch with an empty target cache."""
        self._target_cache.clear()
        return super().on_train_batch_start(batch, batch_idx)

    @torch.no_grad()
    def momentum_forward(self, X: torch.Tensor) -> dict[str, Any]:
        """Target pass of a crop: {'feats', 'z'} from the EMA parts, starting at the cached online activation."""
        entry = self._target_cache.pop(id(X), None)
        captured = entry[1] if entry is not None and entry[0] is X else None
        complete = captured and ("input" in captured or not self.ema.shares_input)
        if complete and self.ema.first != 0:
            out = self.ema.target_forward(None, captured)
        else:
            if not self.no_channel_last:
                X = X.to(memory_format=torch.channels_last)
            out = self.ema.target_forward(X, None)
        z = F.normalize(out["z"], dim=-1) if self._normalize_target else out["z"]
        return {"feats": out["feats"], "z": z}


class SimCLREMAMixin(PartialEMAMixin):
    """SimCLR + EMA: the online projections of all crops against the momentum projections of the large crops.

    The loss is this project's :func:`solo_ema.methods.simclr.nt_xent` with the momentum side under
    stop-gradient (as in ``solo_ema.methods.SimCLR`` with EMA parts). With ``momentum.parts: none``
    it is solo-learn's SimCLR unchanged.
    """

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> torch.Tensor:
        """NT-Xent of the online z of every crop against the gathered momentum z of the large crops."""
        if self.ema_spec.is_none:
            return super().training_step(batch, batch_idx)
        outs = self._momentum_base.training_step(self, batch, batch_idx)
        indexes = batch[0]
        Z = outs["z"]
        views = [torch.full_like(indexes, v) for v in range(len(Z))]
        anchor_index, anchor_view = torch.cat([indexes] * len(Z)), torch.cat(views)
        n = self.num_large_crops * len(indexes)  # the large crops come first
        candidates = gather(self, torch.cat(outs["momentum_z"]).detach())
        nce_loss = nt_xent(
            torch.cat(Z),
            anchor_index,
            anchor_view,
            candidates,
            gather(self, anchor_index[:n]),
            gather(self, anchor_view[:n]),
            self.temperature,
        )
        self.log("train_nce_loss", nce_loss, on_epoch=True, sync_dist=True)
        return nce_loss + outs["loss"]


class SimSiamEMAMixin(PartialEMAMixin):
    """SimSiam + EMA: each prediction regresses the momentum projection of the other view.

    The loss is this project's :func:`solo_ema.methods.simsiam.simsiam_loss` with ``momentum_z`` as the
    target; with ``momentum.parts: none`` that target is the online projection detached, i.e. exactly
    solo-learn's SimSiam.
    """

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> torch.Tensor:
        """simsiam(p1, momentum_z2) / 2 + simsiam(p2, momentum_z1) / 2 plus the classifier loss."""
        outs = self._momentum_base.training_step(self, batch, batch_idx)
        p1, p2 = outs["p"]
        t1, t2 = outs["momentum_z"]
        neg_cos_sim = simsiam_loss(p1, t2) / 2 + simsiam_loss(p2, t1) / 2
        with torch.no_grad():
            z_std = torch.stack([F.normalize(z, dim=-1).std(dim=0).mean() for z in outs["z"]]).mean()
        self.log_dict({"train_neg_cos_sim": neg_cos_sim, "train_z_std": z_std}, on_epoch=True, sync_dist=True)
        return neg_cos_sim + outs["loss"]


_MIXINS: dict[str, type[PartialEMAMixin]] = {"simclr": SimCLREMAMixin, "simsiam": SimSiamEMAMixin}
_CLASS_NAMES = {
    "byol": "BYOLEMA",
    "dino": "DINOEMA",
    "mocov2plus": "MoCoV2PlusEMA",
    "ressl": "ReSSLEMA",
    "simclr": "SimCLREMA",
    "simsiam": "SimSiamEMA",
}


def build_ema_class(method: str, solo_class: type, momentum_base: type) -> type:
    """The partial-EMA subclass of one solo-learn method class.

    Momentum methods become ``class XEMA(PartialEMAMixin, X)``; SimCLR and SimSiam become
    ``class XEMA(XEMAMixin, X, BaseMomentumMethod)`` (solo-learn's BaseMomentumMethod then supplies
    the momentum classifier, the MomentumUpdater and its hooks).
    """
    if method not in HEADS:
        raise KeyError(f"no partial-EMA variant for '{method}'; known: {', '.join(HEADS)}")
    mixin = _MIXINS.get(method, PartialEMAMixin)
    adds = method in ADDS_MOMENTUM
    if not adds and not issubclass(solo_class, momentum_base):
        raise TypeError(f"{solo_class.__name__} is expected to derive from {momentum_base.__name__}")
    bases = (mixin, solo_class, momentum_base) if adds else (mixin, solo_class)
    attrs = {
        "__module__": __name__,
        "__doc__": f"solo-learn's {solo_class.__name__} with partial EMA (momentum.parts); registered as "
        f"'{ema_name(method)}'.",
        "_solo_base": solo_class,
        "_momentum_base": momentum_base,
        "_method": method,
        "_head": HEADS[method],
        "_normalize_target": method in NORMALIZED_TARGETS,
        "_adds_momentum": adds,
    }
    return type(_CLASS_NAMES[method], bases, attrs)


def build_ema_classes(base_classes: Mapping[str, type], momentum_base: type) -> dict[str, type]:
    """``{'<method>_ema': class}`` for every method of HEADS found in `base_classes` (name -> solo class)."""
    return {
        ema_name(method): build_ema_class(method, base_classes[method], momentum_base)
        for method in HEADS
        if method in base_classes
    }
