"""Lightning's console output without its advertisements.

Lightning 2.6 logs a tip suggesting ``pip install litlogger`` whenever a Trainer has no LitLogger (and one
suggesting litmodels when a model registry is set), through its rank-zero logger, with no switch to turn it off.
``drop_lightning_tips`` filters exactly those records; every other message of that logger, and every warning,
still shows.
"""

from __future__ import annotations

import logging

__all__ = ["ADVERTISED", "RANK_ZERO_LOGGERS", "LightningTipFilter", "drop_lightning_tips"]

# the loggers Lightning's rank_zero_info writes to (lightning.pytorch's, or lightning.fabric's alone)
RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
ADVERTISED = ("litlogger", "litmodels")  # packages the tips advertise, named by their PyPI address


class LightningTipFilter(logging.Filter):
    """Drops a record that is a Lightning tip advertising one of ADVERTISED; passes every other record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for an advertising tip, True otherwise."""
        message = record.getMessage()
        return not ("Tip:" in message.split("\n", 1)[0]
                    and any(f"pypi.org/project/{name}" in message for name in ADVERTISED))


_FILTER = LightningTipFilter()


def drop_lightning_tips() -> None:
    """Filter Lightning's advertising tips out of its rank-zero loggers (once; call before building a Trainer)."""
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
