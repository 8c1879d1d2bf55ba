"""One process at a time: an exclusive ``flock`` on a lock file beside what is being made.

Two jobs of a sweep that start together and need the same corpus (a download, a token cache
entry) should not both make it: the second waits for the first, then finds it made. Without
a lock (no fcntl, a cache this process cannot write, a file system without flock) both make
it, as before there was a lock, and the atomic renames keep one whole copy. The kernel
releases the lock of a process that dies, so a killed maker blocks no one.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

try:
    import fcntl
except ImportError:  # Windows: no flock, so no lock
    fcntl = None

log = logging.getLogger(__name__)


def lock_file(path: Path) -> Path:
    return path.parent / f".{path.name}.lock"


def _open(path: Path) -> Optional[int]:
    """An open descriptor of the lock file, or None where there is none to be had."""
    if fcntl is None:
        return None
    try:
        # Read-only is enough to flock, and lets a lock file made by another user be shared.
        return os.open(lock_file(path), os.O_RDONLY | os.O_CREAT, 0o666)
    except OSError as e:
        log.debug("no lock for %s (%s)", path, e)
        return None


@contextmanager
def one_at_a_time(path: Path, waiting: str) -> Iterator[bool]:
    """Hold ``path``'s lock for the block, logging ``waiting`` if another process holds it first.
    Yields whether the lock is held, so that a caller may clear what a killed holder left behind
    only when no other process can be making it. The lock file is left in place: removing it
    while another process waits on it would let a third lock a new file at once."""
    fd = _open(path)
    if fd is None:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info(waiting)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:  # a file system without flock: as without a lock file
            log.debug("no lock for %s (%s)", path, e)
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock
