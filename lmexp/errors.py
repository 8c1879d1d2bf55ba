"""Errors a user can fix: reported as one line, never as a traceback."""

from __future__ import annotations

import errno
import os
import sys
from contextlib import contextmanager
from typing import Iterator, Optional


class UserError(Exception):
    """Bad input (a setting, a file, a corrupt checkpoint) that the user can fix.

    The message names the setting or file and the fix, on one line.
    """

    # Set on a refusal that every process of a multi-process run reaches alike, in its processes
    # but the first: the user reads its line once, from process 0, not once per process.
    told_by_process_0 = False


class ConfigError(UserError):
    """A setting that fails validation; raised before anything runs."""


class NotWritten(UserError):
    """A file that could not be written: a full disk, a quota, a read-only or closed folder."""

    def __init__(self, path: object, reason: str, whole: bool = False, advice: str = "make room, then run again"):
        self.path, self.reason, self.whole, self.advice = path, reason, whole, advice
        kept = f"; the previous {os.path.basename(str(path))}, if any, is whole" if whole else ""
        super().__init__(f"cannot write {path}: {reason}{kept}; {advice}")

    def advising(self, advice: str) -> "NotWritten":
        return NotWritten(self.path, self.reason, self.whole, advice)

    def __reduce__(self):  # rebuilt from its parts when it crosses a process boundary
        return NotWritten, (self.path, self.reason, self.whole, self.advice)


class HelpRequested(Exception):
    """``--help`` on a command line: its text, printed to stdout with exit status 0."""


class OutOfMemory(UserError):
    """A run that ran out of memory after it started: the micro-batch was too large for the device."""


@contextmanager
def reached_by_every_process(rank: int) -> Iterator[None]:
    """A refusal raised inside, by process ``rank`` of a run whose processes all reach it alike (it
    rests on numbers reduced across them, or on the shape of the data and the run): told by
    process 0 alone, so the user reads its line once, not once per process."""
    try:
        yield
    except UserError as e:
        e.told_by_process_0 = rank > 0
        raise


def tell(message: str) -> None:
    """The one line a user sees for a mistake of theirs."""
    print(f"lmexp: error: {message}", file=sys.stderr, flush=True)


def fail(message: str, code: int = 2) -> None:
    tell(message)
    sys.exit(code)


# Where the disk, not the program, is at fault: a full disk or quota, a read-only file system, a
# file too large for it; and, for a file being written, a folder closed to this user.
FULL = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
DISK_ERRORS = FULL | {errno.EACCES, errno.EPERM}


def disk_error(error: BaseException, errnos: set = frozenset(DISK_ERRORS)) -> Optional[OSError]:
    """The OSError behind a failed write, if the disk refused it: torch.save reports a full disk
    as a RuntimeError raised while handling the OSError, so the chain is searched."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in errnos:
            return error
        error = error.__cause__ or error.__context__
    return None


def not_written(error: BaseException) -> Optional[NotWritten]:
    """A write the disk refused, wherever it happened (a cache, a log, a logger's files): one line
    naming the file, or None for any other error. Permissions are left out here: a file that
    could not be read raises them too, and its reader says so."""
    if isinstance(error, NotWritten):
        return error
    found = disk_error(error, FULL)
    if found is None:
        return None
    return NotWritten(found.filename or "a file", found.strerror)


@contextmanager
def reported_as_one_line():
    """Turn a UserError, or a write the disk refused, into one line on stderr and exit status 2."""
    try:
        yield
    except HelpRequested as e:
        print(e)
        sys.exit(0)
    except Exception as e:
        told = one_line(e)
        if told is None:
            raise
        if getattr(e, "told_by_process_0", False):
            sys.exit(2)
        fail(told)


def one_line(error: Exception) -> Optional[str]:
    """The line that tells a user what to fix, or None for an error that is not theirs (a bug)."""
    if isinstance(error, UserError):
        return str(error)
    written = not_written(error)
    return None if written is None else str(written)
