"""Fetch a release's files into the cache when they are nowhere on this machine.

Each file is downloaded to a temporary name with a progress bar, checked against its known
hash, and only then renamed into place, so an interrupted or corrupted download never looks like
a corpus; a release packed as a zip is unpacked the same way, file by file. Offline, the first
connection fails at once and the message says where to put the files by hand; a server that
stops sending, or sends too slowly to ever finish, is given up on.

Jobs that start together and need the same release download it once: a release is fetched
under its folder's lock (lmexp/locks.py), and a job that waited finds it in place. Under the
lock, the temporaries of a process killed mid-download are removed.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Optional

from lmexp.atomic import as_made
from lmexp.errors import UserError
from lmexp.locks import one_at_a_time

TIMEOUT_S = 20  # per connection attempt and per read: a dead network fails fast
# Fewer bytes than this in any minute: the server is alive but will never finish (curl's
# --speed-limit and --speed-time); a read that waits TIMEOUT_S for a byte cannot see that.
LOW_SPEED = (60 << 10, 60.0)  # (bytes, seconds): 1 KiB/s over a minute
PART = "part-"  # in every temporary's name, so that a killed download's can be found and removed
ALGORITHMS = {32: "md5", 40: "sha1", 64: "sha256"}  # a hex digest's length names its algorithm


def hasher(checksum: Optional[str]):
    return hashlib.new(ALGORITHMS[len(checksum)] if checksum else "md5")


class TooSlow(Exception):
    def __init__(self, got: int, seconds: float):
        super().__init__(f"{got:,} bytes in {seconds:.0f} s")


def _copy(source, out, digest, bar=None, watch: bool = False) -> None:
    """``watch``: raise TooSlow when fewer than LOW_SPEED's bytes arrive in its seconds."""
    # read1: what has arrived, at once; read(n) waits for all n bytes, however slowly they come.
    read = getattr(source, "read1", source.read)
    least, window = LOW_SPEED
    since, got = time.monotonic(), 0
    for block in iter(lambda: read(1 << 16), b""):
        out.write(block)
        digest.update(block)
        if bar is not None:
            bar.update(len(block))
        got += len(block)
        if watch and time.monotonic() - since >= window:
            if got < least:
                raise TooSlow(got, time.monotonic() - since)
            since, got = time.monotonic(), 0


def _check(digest, checksum: Optional[str], what: str, by_hand: str) -> None:
    if checksum is not None and digest.hexdigest() != checksum:
        raise UserError(f"{what} is corrupt ({digest.name} {digest.hexdigest()}, expected {checksum}); "
                        f"try again, or {by_hand}")


def _length(response) -> Optional[int]:
    """The size the server announced, for the progress bar: None if it announced none, or garbage."""
    value = response.headers.get("Content-Length") or ""
    return int(value) if value.isdigit() and int(value) else None


def not_a_url(url: str, reason: object, by_hand: str) -> UserError:
    # Every URL downloaded here is a file's name under data.url.
    return UserError(f"could not download {url}: not a URL ({reason}); set data.url to an http:// or https:// "
                     f"address, or {by_hand}")


def download(url: str, dest: Path, checksum: Optional[str] = None, by_hand: Optional[str] = None) -> Path:
    """``by_hand``: what the user can do instead, for the messages (default: put the file at dest)."""
    from tqdm import tqdm

    by_hand = by_hand or f"put the file at {dest} by hand, or set data.root to a folder that has it"
    try:
        request = urllib.request.Request(url)
    except ValueError as e:  # no scheme, or a broken one: notaurl, http://[::1/x
        raise not_a_url(url, e, by_hand) from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.{PART}")
    digest = hasher(checksum)
    try:
        # The file object first: it closes the descriptor however urlopen fails.
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            announced = _length(response)
            with tqdm(total=announced, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
                _copy(response, out, digest, bar, watch=True)
            # http.client ends a read at a hang-up as at the end: a file without a checksum would be kept short.
            if announced is not None and out.tell() != announced:
                raise UserError(f"could not download {url}: the server sent {out.tell():,} of the {announced:,} "
                                f"bytes it announced; try again, or {by_hand}")
        _check(digest, checksum, f"download of {url}", by_hand)
        as_made(tmp)
        os.replace(tmp, dest)
    except TooSlow as e:
        raise UserError(f"could not download {url}: the server sent {e} (less than {LOW_SPEED[0]:,} bytes in "
                        f"{LOW_SPEED[1]:.0f} s); try again later, or {by_hand}") from None
    except http.client.InvalidURL as e:  # found only as the request is sent: a space, a port that is no number
        raise not_a_url(url, e, by_hand) from None
    except http.client.HTTPException as e:  # a reply that is not HTTP, or one that broke off
        raise UserError(f"could not download {url} (a broken reply: {e!r}); try again, or {by_hand}") from None
    except urllib.error.HTTPError as e:  # the server is there: a wrong data.url, not a network down
        raise UserError(f"could not download {url}: the server answered {e.code} {e.reason}; check data.url, "
                        f"or {by_hand}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise UserError(f"could not download {url} ({reason}); offline? {by_hand}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


def clear_parts(folder: Path, name: str) -> None:
    """Remove the temporaries of ``name`` that a killed download or unpacking left in ``folder``;
    called only under ``name``'s lock, when no other process can be writing one."""
    for part in folder.glob(f".{name}.{PART}*"):
        shutil.rmtree(part, ignore_errors=True) if part.is_dir() else part.unlink(missing_ok=True)


def fetch_release(files: dict[str, tuple[str, Optional[str]]], base_url: str, folder: Path) -> dict[str, Path]:
    """Download each split's (file name, checksum) from ``base_url`` into ``folder``; files
    already there are kept."""
    out = {split: folder / name for split, (name, _) in files.items()}
    if all(p.is_file() for p in out.values()):
        return out
    folder.mkdir(parents=True, exist_ok=True)
    with one_at_a_time(folder, f"data: waiting for another process downloading into {folder}") as held:
        for split, (name, checksum) in files.items():
            if held:
                clear_parts(folder, name)
            if not out[split].is_file():  # else there before, or downloaded by a process this one waited for
                download(f"{base_url.rstrip('/')}/{name}", out[split], checksum)
    return out


def extract(archive: Path, members: dict[str, tuple[str, Optional[str]]], folder: Path,
            by_hand: str) -> dict[str, Path]:
    """Unpack each split's (member, checksum) of a zip into ``folder`` under the member's base
    name: all into a temporary folder beside it first, checked, then renamed into place, so a
    bad archive leaves nothing behind."""
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.{PART}"))
    try:
        with zipfile.ZipFile(archive) as zf:
            for member, checksum in members.values():
                digest = hasher(checksum)
                with zf.open(member) as source, open(tmp / Path(member).name, "wb") as out:
                    _copy(source, out, digest)
                _check(digest, checksum, f"{archive.name}: {member}", by_hand)
        folder.mkdir(exist_ok=True)
        files = {split: folder / Path(member).name for split, (member, _) in members.items()}
        for dest in files.values():
            os.replace(tmp / dest.name, dest)
        return files
    except (zipfile.BadZipFile, KeyError) as e:  # KeyError: no such member
        raise UserError(f"{archive.name} is not the release expected ({e}); try again, or {by_hand}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch_archive(url: str, members: dict[str, tuple[str, Optional[str]]], folder: Path) -> dict[str, Path]:
    """Download a zip beside ``folder``, unpack the split files into it, and remove the zip."""
    name = url.rstrip("/").rsplit("/", 1)[-1]
    files = ", ".join(Path(member).name for member, _ in members.values())
    by_hand = f"put {files} (from {name}) in {folder}, or set data.root to a folder that has them"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with one_at_a_time(folder, f"data: waiting for another process downloading {name} for {folder}") as held:
        if held:
            clear_parts(folder.parent, name)
            clear_parts(folder.parent, folder.name)
        unpacked = {split: folder / Path(member).name for split, (member, _) in members.items()}
        if all(p.is_file() for p in unpacked.values()):  # another process fetched it while this one waited
            return unpacked
        # A folder of this process's own: without a lock, two runs fetching at once never share
        # (or delete) one zip.
        own = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{name}.{PART}"))
        try:
            return extract(download(url, own / name, by_hand=by_hand), members, folder, by_hand)
        finally:
            shutil.rmtree(own, ignore_errors=True)
