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
* ``base_training_step`` / ``base_validation_step``: solo-learn's online pass of a large crop runs inside
  ``self.ema.capture(X)``, which keeps what the target pass of that crop reuses.
* ``momentum_forward``: ``self.ema.target(X)``, which starts from the captured online activation before
  the first EMA part (no second pass of the shared backbone), or from the images when the crop was not
  captured, touching no online BatchNorm statistics.
* ``on_train_start``: solo-learn's, then its tau schedule put at the run's global step, so that a resumed run
  (solo-learn's ``auto_resume`` / ``resume_from_checkpoint``) continues the schedule instead of restarting it at
  ``base_tau`` (the EMA copies and ``ema.num_updates`` are in the checkpoint's state dict).

Table C.8's BatchNorms, as in this project's engine (``method_kwargs``): ``bn_projector_out`` (BN2) appends a
``BatchNorm1d`` named ``bn_out`` to the projector (DINO: to its head's MLP, on the bottleneck output), so it is
part of the projector's momentum copy; ``bn_backbone_out`` (BN1) adds ``feats_bn``, a shared ``BatchNorm1d`` on
the pooled backbone features, in the projector path only (``bn1_position: projector``) or on the backbone
output that the classifier, the kNN and the projector all see (``bn1_position: backbone``). BN1 reaches
solo-learn's own head code through :class:`BN1FeaturesMixin`, which sits between the solo-learn method class
and ``BaseMomentumMethod`` in the MRO.

solo-learn's losses, optimisers, schedulers, logging and the rest of the training loop run unchanged;
SimCLR and SimSiam (no momentum in solo-learn) additionally get ``BaseMomentumMethod`` in their bases
and a ``training_step`` with the EMA target (this project's losses, ``solo_ema.losses``).

solo-learn's online kNN (``knn_eval``) is its own ``WeightedKNNClassifier``; where the installed torchmetrics (1.x)
rejects the ``compute_on_step`` argument that solo-learn passes it, :func:`solo_knn` builds it without that
argument (its ``update`` and ``compute`` unchanged).

Only the core (``solo_ema.ema``) and ``solo_ema.losses`` of this project are imported here, never its
Lightning engine or methods; solo-learn's ``gather`` and ``WeightedKNNClassifier`` are imported inside the
functions that use them, so the classes can be built over stand-ins where solo-learn is absent.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.utils.weight_norm import WeightNorm

from ..ema import EMASpec, PartialEMA, config_parts, resnet_stages, spec_paths
from ..losses import nt_xent, simsiam_loss

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
#: where BN1 sits (``method_kwargs.bn1_position``): the choices of the engine's defaults table
BN1_POSITIONS = ("projector", "backbone")
#: Table C.8's switches in ``method_kwargs`` and their defaults (BN1, BN2 off)
BN_DEFAULTS: dict[str, Any] = {"bn_backbone_out": False, "bn_projector_out": False, "bn1_position": "projector"}
#: the key under which BN1FeaturesMixin hands the features before BN1 to PartialEMAMixin's forward
_FEATS_BEFORE_BN1 = "_feats_before_bn1"


def _feats_before_bn1(out: dict[str, Any]) -> dict[str, Any]:
    """A forward's outputs with ``feats`` put back to the features before BN1 where the head code saw BN1's."""
    before = out.pop(_FEATS_BEFORE_BN1, None)
    if before is not None:
        out["feats"] = before
    return out


def ema_name(method: str) -> str:
    """The registry name of a method's partial-EMA variant: '<method>_ema'."""
    return f"{method}_ema"


def _ensure_node(cfg: DictConfig, key: str) -> None:
    """Create an empty config node at `key` when it is absent (solo-learn's yamls for SimCLR/SimSiam have none)."""
    if OmegaConf.select(cfg, key) is None:
        OmegaConf.update(cfg, key, {}, force_add=True)


def check_bn_cfg(cfg: DictConfig) -> DictConfig:
    """Fill Table C.8's switches in ``method_kwargs`` (BN1, BN2 off) and check ``bn1_position``."""
    for key, default in BN_DEFAULTS.items():
        if OmegaConf.select(cfg, f"method_kwargs.{key}") is None:
            OmegaConf.update(cfg, f"method_kwargs.{key}", default, force_add=True)
    k = cfg.method_kwargs
    if k.bn1_position not in BN1_POSITIONS:
        choices = ", ".join(BN1_POSITIONS)
        raise ValueError(f"method_kwargs.bn1_position must be one of {choices}, got {k.bn1_position!r}")
    if k.bn1_position != BN_DEFAULTS["bn1_position"] and not k.bn_backbone_out:
        raise ValueError(
            f"method_kwargs.bn1_position={k.bn1_position} places BN1, so it needs method_kwargs.bn_backbone_out=True"
        )
    return cfg


def append_bn2(head: nn.Module, method: str, dim: int) -> None:
    """BN2 of Table C.8: a BatchNorm1d(dim) named ``bn_out`` as the last layer of the projector.

    DINO's head gets it at the end of its MLP (on the bottleneck output, before the L2 normalisation and the
    prototypes), as the engine's DINO head does.
    """
    target = getattr(head, "mlp", None) if method == "dino" else head
    if not isinstance(target, nn.Sequential):
        raise ValueError(f"method_kwargs.bn_projector_out: the {method} head has no sequential projector to extend")
    target.add_module("bn_out", nn.BatchNorm1d(dim))


@functools.cache
def _knn_without_compute_on_step(knn_class: type) -> type:
    """solo-learn's kNN class with a constructor that does not hand ``compute_on_step`` to torchmetrics' Metric.

    It sets what solo-learn's ``__init__`` sets, with solo-learn's own defaults (read from its signature), and
    keeps its ``update`` and ``compute``.
    """
    defaults = {n: p.default for n, p in inspect.signature(knn_class.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}

    def __init__(self, k: int = defaults["k"], distance_fx: str = defaults["distance_fx"]) -> None:
        super(knn_class, self).__init__(dist_sync_on_step=defaults["dist_sync_on_step"])  # torchmetrics' Metric
        self.k, self.T, self.distance_fx = k, defaults["T"], distance_fx
        self.max_distance_matrix_size, self.epsilon = defaults["max_distance_matrix_size"], defaults["epsilon"]
        for state in ("train_features", "train_targets", "test_features", "test_targets"):
            self.add_state(state, default=[], persistent=False)

    return type(knn_class.__name__, (knn_class,), {"__init__": __init__, "__module__": __name__,
                                                   "__doc__": knn_class.__doc__})


def solo_knn(k: int, distance: str) -> nn.Module:
    """solo-learn's online kNN, ``WeightedKNNClassifier(k=k, distance_fx=distance)``.

    solo-learn passes torchmetrics' Metric ``compute_on_step=False``, which torchmetrics 1.x no longer accepts;
    there it is built without it (:func:`_knn_without_compute_on_step`): the same class's update and compute.
    """
    from solo.utils.knn import WeightedKNNClassifier  # solo-learn's own; this module is built without solo-learn

    try:
        return WeightedKNNClassifier(k=k, distance_fx=distance)
    except ValueError as err:
        if "compute_on_step" not in str(err):
            raise
    return _knn_without_compute_on_step(WeightedKNNClassifier)(k=k, distance_fx=distance)


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
        Table C.8's ``method_kwargs.bn_backbone_out`` / ``bn_projector_out`` / ``bn1_position`` get their defaults
        (off, off, 'projector') and are checked (:func:`check_bn_cfg`).
        """
        _ensure_node(cfg, "momentum")
        cfg = cls._solo_base.add_and_assert_specific_cfg(cfg)
        if cls._adds_momentum:
            cfg = cls._momentum_base.add_and_assert_specific_cfg(cfg)
        cfg = check_bn_cfg(cfg)
        spec = config_parts(
            OmegaConf.select(cfg, "momentum.parts", default=None),
            OmegaConf.select(cfg, "momentum.base_tau"),
            OmegaConf.select(cfg, "momentum.final_tau"),
        )
        OmegaConf.update(cfg, "momentum.parts", str(spec), force_add=True)
        return cfg

    # construction ------------------------------------------------------------------------------
    def __init__(self, cfg: DictConfig) -> None:
        # solo-learn builds its kNN in its __init__ when knn_eval.enabled; it is built here instead (solo_knn), so
        # that it also builds where torchmetrics rejects an argument solo-learn passes it
        knn = bool(OmegaConf.select(cfg, "knn_eval.enabled", default=False))
        if knn:
            cfg.knn_eval.enabled = False
        try:
            super().__init__(cfg)
        finally:
            if knn:
                cfg.knn_eval.enabled = True
        if knn:
            self.knn_eval = True
            self.knn = solo_knn(self.cfg.knn_eval.k, self.cfg.knn_eval.distance_func)
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
        k = self.cfg.method_kwargs
        # BN1 (shared: never a momentum part) and BN2 (the projector's last layer, so in its copy), as the engine
        self.feats_bn = nn.BatchNorm1d(self.features_dim) if k.bn_backbone_out else None
        self.bn1_on_backbone = self.feats_bn is not None and k.bn1_position == "backbone"
        head = getattr(self, self._head)
        if k.bn_projector_out:
            append_bn2(head, self._method, k.proj_output_dim)
        _detach_weight_norm_caches(head)
        self.ema_spec = EMASpec.from_canonical(self.cfg.momentum.parts)  # resolved by add_and_assert_specific_cfg
        self.ema = PartialEMA(
            self,
            resnet_stages("backbone", self._head, between=["feats_bn"] if self.feats_bn is not None else [],
                          feats_at="feats_bn" if self.bn1_on_backbone else None),
            spec_paths(self.ema_spec, "backbone", self._head),
            self.cfg.momentum.base_tau,
            self.cfg.momentum.final_tau,
        )

    @property
    def learnable_params(self) -> list[dict[str, Any]]:
        """solo-learn's parameter groups, plus BN1's when it is on."""
        params = super().learnable_params
        if self.feats_bn is not None:
            params.append({"name": "feats_bn", "params": self.feats_bn.parameters()})
        return params

    # BN1: BN1FeaturesMixin (below solo-learn's method class) hands BN1's output to solo-learn's head code; for the
    # projector reading, the features the classifier and the kNN see are put back to those before BN1 here
    def forward(self, X: torch.Tensor) -> dict[str, Any]:
        """solo-learn's forward of the method; ``feats`` are the features before BN1 unless it sits on the backbone."""
        return _feats_before_bn1(super().forward(X))

    def multicrop_forward(self, X: torch.Tensor) -> dict[str, Any]:
        """solo-learn's forward of a small crop, with ``feats`` as in :meth:`forward`."""
        return _feats_before_bn1(super().multicrop_forward(X))

    @property
    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, momentum copy) pairs of the EMA parts only; solo-learn's MomentumUpdater averages them."""
        return self.ema.pairs()

    def on_train_start(self) -> None:
        """solo-learn's, then its tau schedule put at the run's global step (past 0 after a resume).

        solo-learn keeps the tau of the next update on its ``MomentumUpdater`` only, not in the checkpoint, so a
        resumed run would take its first update with ``base_tau``; here the schedule resumes where it stood:
        the next update at global step k uses solo-learn's ``update_tau(k)``, and ``ema.last_tau`` is
        ``update_tau(k - 1)``, the tau of the last update before the stop.
        """
        super().on_train_start()
        step, steps = self.trainer.global_step, self.trainer.estimated_stepping_batches
        if step > 0:
            updater = self.momentum_updater
            updater.update_tau(cur_step=step - 1, max_steps=steps)
            self.ema.last_tau = updater.cur_tau
            updater.update_tau(cur_step=step, max_steps=steps)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """solo-learn's EMA update (its MomentumUpdater over momentum_pairs), counted on the core's counters."""
        tau, stepped = self.momentum_updater.cur_tau, self.trainer.global_step > self.last_step
        super().on_train_batch_end(outputs, batch, batch_idx)
        if stepped:
            self.ema.num_updates += 1
            self.ema.last_tau = tau

    # the target protocol of the core: capture the online pass of a large crop, then its target pass --
    def base_training_step(self, X: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        """solo-learn's online step of a large crop, captured for the target pass of the same crop."""
        with self.ema.capture(X):
            return super().base_training_step(X, targets)

    def base_validation_step(self, X: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        """solo-learn's online validation step, captured for the target pass of the same crop."""
        with self.ema.capture(X):
            return super().base_validation_step(X, targets)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> Any:
        """Start each batch with no capture held."""
        self.ema.clear()
        return super().on_train_batch_start(batch, batch_idx)

    def _to_input(self, X: torch.Tensor) -> torch.Tensor:
        """The images as solo-learn's backbone sees them (channels_last unless disabled)."""
        return X if self.no_channel_last else X.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def momentum_forward(self, X: torch.Tensor) -> dict[str, Any]:
        """Target pass of a crop: {'feats', 'z'} from the EMA parts (z normalised where solo-learn does)."""
        out = self.ema.target(X, self._to_input)
        z = F.normalize(out["z"], dim=-1) if self._normalize_target else out["z"]
        return {"feats": out["feats"], "z": z}


class BN1FeaturesMixin:
    """BN1 between solo-learn's backbone and its head code: ``forward`` / ``multicrop_forward`` of BaseMethod.

    Built over solo-learn's BaseMomentumMethod and placed after the solo-learn method class in the MRO, so the
    method's own ``forward`` (its projector, predictor or DINO head on ``out["feats"]``) runs unchanged on BN1's
    output. With ``bn1_position: projector`` the features before BN1 travel under a private key, and
    :class:`PartialEMAMixin` puts them back as ``feats`` (what the classifier, the kNN and the losses' logging
    see); the classifier is trained on them here. Without BN1 both are solo-learn's.
    """

    def _features(self, X: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(self._to_input(X))
        normed = self.feats_bn(feats)
        if self.bn1_on_backbone:
            return {"feats": normed}
        return {"feats": normed, _FEATS_BEFORE_BN1: feats}

    def forward(self, X: torch.Tensor) -> dict[str, Any]:
        """Backbone, BN1 and the online classifier on the features it reads (detached)."""
        if self.feats_bn is None:
            return super().forward(X)
        out = self._features(X)
        out["logits"] = self.classifier(out.get(_FEATS_BEFORE_BN1, out["feats"]).detach())
        return out

    def multicrop_forward(self, X: torch.Tensor) -> dict[str, Any]:
        """Backbone and BN1 of a small crop."""
        if self.feats_bn is None:
            return super().multicrop_forward(X)
        return self._features(X)


class SimCLREMAMixin(PartialEMAMixin):
    """SimCLR + EMA: the online projections of all crops against the momentum projections of the large crops.

    The loss is this project's :func:`solo_ema.losses.nt_xent` with the momentum side under
    stop-gradient (as in ``solo_ema.methods.SimCLR`` with EMA parts), the candidates gathered over
    processes with solo-learn's own ``solo.utils.misc.gather``. With ``momentum.parts: none`` it is
    solo-learn's SimCLR unchanged.
    """

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> torch.Tensor:
        """NT-Xent of the online z of every crop against the gathered momentum z of the large crops."""
        if self.ema_spec.is_none:
            return super().training_step(batch, batch_idx)
        from solo.utils.misc import gather  # solo-learn's own; this module is built without solo-learn

        outs = self._momentum_base.training_step(self, batch, batch_idx)
        indexes = batch[0]
        Z = outs["z"]
        views = [torch.full_like(indexes, v) for v in range(len(Z))]
        anchor_index, anchor_view = torch.cat([indexes] * len(Z)), torch.cat(views)
        n = self.num_large_crops * len(indexes)  # the large crops come first
        candidates = gather(torch.cat(outs["momentum_z"]).detach())
        nce_loss = nt_xent(
            torch.cat(Z),
            anchor_index,
            anchor_view,
            candidates,
            gather(anchor_index[:n]),
            gather(anchor_view[:n]),
            self.temperature,
        )
        self.log("train_nce_loss", nce_loss, on_epoch=True, sync_dist=True)
        return nce_loss + outs["loss"]


class SimSiamEMAMixin(PartialEMAMixin):
    """SimSiam + EMA: each prediction regresses the momentum projection of the other view.

    The loss is this project's :func:`solo_ema.losses.simsiam_loss` with ``momentum_z`` as the
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


_FEATURE_BASES: dict[type, type] = {}


def features_base(momentum_base: type) -> type:
    """:class:`BN1FeaturesMixin` over solo-learn's BaseMomentumMethod (one class per momentum base)."""
    if momentum_base not in _FEATURE_BASES:
        attrs = {"__module__": __name__, "__doc__": BN1FeaturesMixin.__doc__}
        _FEATURE_BASES[momentum_base] = type("BN1Features", (BN1FeaturesMixin, momentum_base), attrs)
    return _FEATURE_BASES[momentum_base]


def build_ema_class(method: str, solo_class: type, momentum_base: type) -> type:
    """The partial-EMA subclass of one solo-learn method class.

    Momentum methods become ``class XEMA(PartialEMAMixin, X, BN1Features)``; SimCLR and SimSiam become
    ``class XEMA(XEMAMixin, X, BN1Features)``. ``BN1Features`` (:func:`features_base`) derives from solo-learn's
    BaseMomentumMethod, so the MRO is ``XEMA, mixins, X, BN1Features, BN1FeaturesMixin, BaseMomentumMethod,
    BaseMethod``: solo-learn's BaseMomentumMethod supplies SimCLR's and SimSiam's momentum classifier,
    MomentumUpdater and hooks.
    """
    if method not in HEADS:
        raise KeyError(f"no partial-EMA variant for '{method}'; known: {', '.join(HEADS)}")
    mixin = _MIXINS.get(method, PartialEMAMixin)
    adds = method in ADDS_MOMENTUM
    if not adds and not issubclass(solo_class, momentum_base):
        raise TypeError(f"{solo_class.__name__} is expected to derive from {momentum_base.__name__}")
    bases = (mixin, solo_class, features_base(momentum_base))
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
