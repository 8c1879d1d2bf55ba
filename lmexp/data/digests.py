"""Content digests of files, remembered while a file's size and mtime stay the same.

A corpus that is found in a cache should not be read again just to learn that it is the one
cached: ``Digests`` keeps each file's sha256 in an index (a JSON file beside the caches) with
its size and mtime, and hashes a file again only when either changed. Touching a file costs one
more hash; editing it gives a new digest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Optional

from lmexp.atomic import as_made

log = logging.getLogger(__name__)
RACY_NS = 3 * 10**9  # a file written this close to being hashed could change again within its mtime's granularity


def index_path(cache_dir: Path) -> Path:
    """The one index every cache of ``paths.cache_dir`` shares."""
    return Path(cache_dir) / "tokens" / "digests.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Digests:
    """``with Digests(index_path(cache_dir)) as digests: digests.of(path)``; the index is written
    back when the block ends, if it changed. ``None``: no index, every file is hashed."""

    def __init__(self, path: Optional[Path]):
        self.path = path
        self.index = self._load() if path is not None else {}
        self.before = json.dumps(self.index, sort_keys=True)

    def __enter__(self) -> "Digests":
        return self

    def __exit__(self, *exc) -> None:
        if self.path is not None and json.dumps(self.index, sort_keys=True) != self.before:
            self._save()

    def of(self, path: Path) -> str:
        """The sha256 of the file's bytes; OSError if it cannot be read."""
        st = path.stat()
        name = str(path.resolve())
        entry = self.index.get(name)
        if isinstance(entry, dict) and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
            return entry["sha256"]
        digest = sha256(path)
        # A file rewritten within its mtime's granularity of being stat-ed (same size, same
        # mtime) would go unnoticed: remember only files that had been still for a while.
        if time.time_ns() - st.st_mtime_ns > RACY_NS:
            self.index[name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        else:
            self.index.pop(name, None)
        return digest

    def _load(self) -> dict:
        try:
            index = json.loads(self.path.read_text())
        except (OSError, ValueError):  # none yet, or corrupt: every digest is computed again
            return {}
        return index if isinstance(index, dict) else {}

    def _save(self) -> None:
        index = {k: v for k, v in self.index.items() if os.path.exists(k)}  # forget files that are gone
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
            with os.fdopen(fd, "w") as f:
                json.dump(index, f, indent=0)
            as_made(tmp)
            # Atomic: a concurrent reader sees the old index or the new one. Two processes that both
            # read, then both write, lose one's new digests: harmless, they are only computed again.
            os.replace(tmp, self.path)
        except OSError as e:  # a read-only cache: digests are only computed again next time
            log.debug("digests: index not saved (%s)", e)
