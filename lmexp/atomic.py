"""Files written whole or not at all: a kill at any moment leaves the previous version in place."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from lmexp.errors import NotWritten, disk_error


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
        refused = disk_error(e)
        if refused:
            raise NotWritten(path, refused.strerror, whole=True) from None
        raise


def as_made(path: str | Path, folder: bool = False) -> None:
    """The mode a plain ``open`` or ``mkdir`` would have given ``path`` (this process's umask
    applied): ``tempfile``'s are private (0600, 0700), which a cache shared by several users
    cannot read once the temporary is renamed into place."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if folder else 0o666) & ~umask)


def write_text(path: str | Path, text: str) -> None:
    with replaced(path, "w", encoding="utf-8") as f:
        f.write(text)
