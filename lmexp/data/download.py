"""Fetch a release's files into the cache when they are nowhere on this machine.

Each file is downloaded to a temporary name with a progress bar, checked against its known
MD5, and only then renamed into place, so an interrupted or corrupted download never looks like
a corpus. Offline, the first connection fails at once and the message says where to put the
files by hand.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from lmexp.errors import UserError

TIMEOUT_S = 20  # per connection attempt and per read: a dead network fails fast


def download(url: str, dest: Path, md5: Optional[str] = None) -> Path:
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, os.fdopen(fd, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
                for block in iter(lambda: response.read(1 << 16), b""):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
        if md5 is not None and digest.hexdigest() != md5:
            raise UserError(f"download of {url} is corrupt (md5 {digest.hexdigest()}, expected {md5}); try again, "
                            f"or put the file at {dest} by hand")
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise UserError(f"could not download {url} ({reason}); offline? put the file at {dest} by hand, "
                        f"or set data.root to a folder that has it") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


def fetch_release(files: dict[str, tuple[str, Optional[str]]], base_url: str, folder: Path) -> dict[str, Path]:
    """Download each split's (file name, md5) from ``base_url`` into ``folder``; files already
    there are kept."""
    out = {}
    for split, (name, md5) in files.items():
        dest = folder / name
        out[split] = dest if dest.is_file() else download(f"{base_url.rstrip('/')}/{name}", dest, md5)
    return out
