"""The errors a person can act on: one family, so the CLI reports them in one line instead of a traceback.

A ``TvpError``'s message is a single line that says what is wrong and what to
do about it ("no MLflow store at ...: run tvp demo first, or set
MLFLOW_TRACKING_URI"). Anything else that escapes a command is a bug and keeps
its traceback. This module imports nothing, so the CLI can catch the family
before (and without) importing torch, Ray or MLflow.
"""

from __future__ import annotations


class TvpError(Exception):
    """An error in what the user asked for, or in a service it needs; ``str(error)`` is one line for them.

    Subclasses keep the built-in base they had (``ValueError``, ``RuntimeError``) so callers
    that catch those still do.
    """

    exit_code: int = 2
    """The process's exit status when this error ends a ``tvp`` command."""
