"""Errors shown to users as one line."""


class UsageError(Exception):
    """A bad flag or input file: reported as one line naming it, exit code 2."""
