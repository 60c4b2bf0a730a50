"""Usage errors shown to users as one line, and the argument parser of every entry point that raises them."""

from __future__ import annotations

import argparse
import sys


class UsageError(Exception):
    """A bad flag or input file: reported as one line naming it, exit code 2."""


class UsageParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise UsageError instead of printing the usage text and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Raise the parser's message as a UsageError."""
        raise UsageError(message)


def usage_exit(prog: str, exc: UsageError) -> int:
    """Print a usage error as the one line ``<prog>: error: <message>`` on stderr; return exit code 2."""
    print(f"{prog}: error: {exc}", file=sys.stderr)
    return 2
