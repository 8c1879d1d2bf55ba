"""Errors a user can fix: reported as one line, never as a traceback."""

from __future__ import annotations

import sys
from contextlib import contextmanager


class UserError(Exception):
    """Bad input (a setting, a file, a corrupt checkpoint) that the user can fix.

    The message names the setting or file and the fix, on one line.
    """


class ConfigError(UserError):
    """A setting that fails validation; raised before anything runs."""


class NotWritten(UserError):
    """A file that could not be written: a full disk, a quota, a read-only or closed folder."""


def fail(message: str, code: int = 2) -> None:
    print(f"lmexp: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


@contextmanager
def reported_as_one_line():
    """Turn a UserError into one line on stderr and exit status 2."""
    try:
        yield
    except UserError as e:
        fail(str(e))
