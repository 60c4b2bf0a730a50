"""The solo-learn plug-in: partial-EMA variants of solo-learn's BYOL, DINO, MoCo v2+, ReSSL, SimCLR and SimSiam.

Importing this package imports solo-learn and registers ``byol_ema``, ``dino_ema``, ``mocov2plus_ema``,
``ressl_ema``, ``simclr_ema`` and ``simsiam_ema`` in ``solo.methods.METHODS``, so solo-learn's own
``main_pretrain.py`` (or ``solo-ema-solo-pretrain``) can train them; the config key
``momentum.parts`` chooses the EMA parts. A checkout named by ``$SOLO_LEARN_ROOT`` is put on sys.path
first (it need not be pip-installed). Without solo-learn it raises a one-line ImportError that says
how to install it. See docs/solo_learn.md.

This package is the only part of solo_ema that imports solo-learn; of solo_ema it imports only the
core (``solo_ema.ema``) and ``solo_ema.losses``.
"""

from .check import INSTALL_HINT, add_root_to_path, solo_import_error

add_root_to_path()
_IMPORT_ERROR = solo_import_error()
if _IMPORT_ERROR is not None:
    raise _IMPORT_ERROR

from .plugin import (  # noqa: E402
    BN1FeaturesMixin,
    PartialEMAMixin,
    SimCLREMAMixin,
    SimSiamEMAMixin,
    build_ema_class,
    build_ema_classes,
    ema_name,
    features_base,
)
from .registry import EMA_METHODS, register  # noqa: E402

#: the registered classes by name ('byol_ema', ...)
CLASSES: dict[str, type] = register()
BYOLEMA = CLASSES.get("byol_ema")
DINOEMA = CLASSES.get("dino_ema")
MoCoV2PlusEMA = CLASSES.get("mocov2plus_ema")
ReSSLEMA = CLASSES.get("ressl_ema")
SimCLREMA = CLASSES.get("simclr_ema")
SimSiamEMA = CLASSES.get("simsiam_ema")

__all__ = [
    "BN1FeaturesMixin",
    "BYOLEMA",
    "CLASSES",
    "DINOEMA",
    "EMA_METHODS",
    "INSTALL_HINT",
    "MoCoV2PlusEMA",
    "PartialEMAMixin",
    "ReSSLEMA",
    "SimCLREMA",
    "SimCLREMAMixin",
    "SimSiamEMA",
    "SimSiamEMAMixin",
    "build_ema_class",
    "build_ema_classes",
    "ema_name",
    "features_base",
    "register",
]
