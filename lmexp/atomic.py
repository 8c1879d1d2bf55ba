"""Files written whole or not at all: a kill at any moment leaves the previous version in place."""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from lmexp.errors import NotWritten


@contextmanager
def replaced(path: str | Path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; when the block ends, flush it to disk and
    rename it over ``path`` (a rename within one folder is atomic). If the block fails, ``path``
    is untouched and the temporary file removed."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException as e:
        temporary.unlink(missing_ok=True)
        reason = disk_error(e)
        if reason:
            raise NotWritten(f"cannot write {path}: {reason}; the previous {path.name}, if any, is whole") from None
        raise


# Where the disk, not the program, is at fault.
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def disk_error(error: BaseException) -> str | None:
    """The reason a write failed, if the disk refused it: torch.save reports a full disk as a
    RuntimeError raised while handling the OSError, so the chain is searched."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_ERRORS:
            return error.strerror
        error = error.__cause__ or error.__context__
    return None


def write_text(path: str | Path, text: str) -> None:
    with replaced(path, "w", encoding="utf-8") as f:
        f.write(text)
