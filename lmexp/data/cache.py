"""Tokenize a corpus once and keep the ids on disk.

The entry's key is a hash of the split files' content and the tokenizer's settings: a change
to either makes a new entry, and nothing else does. Ids are stored as ``.npy`` in the
smallest unsigned type that holds the vocabulary and opened memory-mapped. A file's digest
is remembered in ``tokens/digests.json`` with its size and mtime, so that finding an entry
does not read the corpus again; a new size or mtime means hashing the file again, so
touching a file keeps its entry and editing it makes a new one.

Each split is read in chunks of whole lines (``CHUNK_BYTES``). A corpus of more than one
chunk is tokenized by a pool of ``workers()`` processes; neither the chunk size nor the
number of workers changes the ids, so neither is part of the key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import signal
import tempfile
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from tqdm import tqdm

from lmexp.atomic import as_made
from lmexp.data.corpora import BOM, CORPORA, SPLITS, Corpus, DataConfig
from lmexp.data.digests import Digests, index_path
from lmexp.data.tokenizers import Tokenizer, Vocab
from lmexp.errors import UserError
from lmexp.locks import one_at_a_time

log = logging.getLogger(__name__)
# Bump when what is stored, or how it is computed, changes. 2 and 3 (2026-12-01): CRLF line ends
# and a UTF-8 byte-order mark are no characters of the text, nor bytes of it.
FORMAT_VERSION = 3
CHUNK_BYTES = 8 << 20  # a task per chunk: large enough that a task's overhead is nothing, small enough to bound memory


COUNT_BLOCK = 1 << 20  # ids counted at a time (8 MiB as int64)


def id_counts(ids: np.ndarray, size: int) -> np.ndarray:
    """How often each id below ``size`` occurs in ``ids`` (a memory-mapped split), a block at a
    time: np.bincount of the whole array would first copy it as int64, four times the size of
    a uint16 file (825 MB for WikiText-103's train split)."""
    counts = np.zeros(size, dtype=np.int64)
    for start in range(0, len(ids), COUNT_BLOCK):
        counts += np.bincount(ids[start:start + COUNT_BLOCK], minlength=size)[:size]
    return counts


@dataclass
class TokenizedCorpus:
    path: Path
    vocab: Vocab
    ids: dict[str, np.ndarray]  # split -> 1-D ids, one <eos> after every line
    stats: dict[str, dict]  # split -> lines, tokens, bytes, words
    from_cache: bool


def workers() -> int:
    """Processes that tokenize: ``LMEXP_WORKERS``, else every CPU this process may run on.

    An environment variable, not a tokenizer setting: it changes the speed, never the ids,
    so it has no place in the settings that make the cache key."""
    value = os.environ.get("LMEXP_WORKERS", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise UserError(f"LMEXP_WORKERS={value}: must be a positive integer (processes that tokenize), or unset")
        return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# --- the key: content digests, remembered while a file's size and mtime stay the same (digests.py)


def cache_key(corpus: Corpus, tokenizer_settings: dict, cache_dir: Optional[Path] = None) -> str:
    """Tokenizer settings and split contents; with ``cache_dir``, the digests of unchanged
    files come from its index instead of reading the files again."""
    h = hashlib.sha256(json.dumps({"format": FORMAT_VERSION, "tokenizer": tokenizer_settings}, sort_keys=True).encode())
    with Digests(index_path(cache_dir) if cache_dir is not None else None) as digests:
        for split in present(corpus):
            path = Path(corpus.files[split])
            try:
                digest = digests.of(path)
            except OSError:
                raise UserError(f"split file {path} does not exist; check data.root or re-create the corpus") from None
            h.update(f"{split} {digest}\n".encode())
    return h.hexdigest()[:16]


def present(corpus: Corpus) -> list[str]:
    """The corpus's splits in train, valid, test order; a split with no fraction is absent."""
    return [s for s in SPLITS if s in corpus.files]


def _id_dtype(vocab_size: int) -> type:
    for dtype in (np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return dtype
    raise UserError(f"a vocabulary of {vocab_size} units does not fit 32-bit ids; lower tokenizer.max_size")


def _check_fits(table: np.ndarray, dtype: type, vocab_size: int) -> None:
    """Every id the units map to is stored as ``dtype``, which ``vocab_size`` chose."""
    if len(table) and int(table.max()) > np.iinfo(dtype).max:
        raise UserError(f"token id {int(table.max())} does not fit {np.dtype(dtype).name}, chosen for a vocabulary "
                        f"of {vocab_size}; the tokenizer's ids must run from 0 to its size (check tokenizer.path, "
                        f"or lower tokenizer.max_size)")


def load(path: Path, tokenizer, from_cache: bool = True) -> TokenizedCorpus:
    """The entry at ``path``, whole: every split its record counts, with that many ids. A file
    gone, cut short or overwritten raises (ValueError, OSError: json's and numpy's own)."""
    meta = json.loads((path / "meta.json").read_text())
    vocab = Vocab(json.loads((path / "vocab.json").read_text()), tokenizer.unk_token, tokenizer.eos_token)
    ids = {s: np.load(path / f"{s}.npy", mmap_mode="r") for s in SPLITS if (path / f"{s}.npy").exists()}
    for split, stats in meta["stats"].items():
        if split not in ids or len(ids[split]) != stats["tokens"]:
            raise ValueError(f"{split}.npy is missing or does not hold the split's {stats['tokens']} ids")
    return TokenizedCorpus(path, vocab, ids, meta["stats"], from_cache)


# --- reading: chunks of whole lines -----------------------------------------------------------


def _chunks(path: Path, size: int) -> list[tuple[int, int]]:
    """Byte ranges of about ``size`` bytes covering the file, each ending after a line break
    (the last one may not)."""
    total, ranges, start = path.stat().st_size, [], 0
    with open(path, "rb") as f:
        while start < total:
            end = min(start + size, total)
            f.seek(end - 1)
            while end < total:  # on to the end of the line
                block = f.read(1 << 16)
                cut = block.find(b"\n")
                if cut >= 0:
                    end = f.tell() - len(block) + cut + 1
                    break
                end = f.tell() if block else total
            ranges.append((start, end))
            start = end
    return ranges


def _read(path: Path, start: int, end: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(end - start)


def _decode(raw: bytes, path: Path, start: int, errors: str = "strict") -> str:
    """A chunk's text; the file's first chunk without the byte-order mark that some editors write."""
    try:
        text = raw.decode("utf-8", errors=errors)
        return text[1:] if start == 0 and text.startswith(BOM.decode()) else text
    except UnicodeDecodeError as e:  # a chunk starts at a line start, so the line is counted from the file's start
        offset = start + e.start
        with open(path, "rb") as f:
            line = f.read(offset).count(b"\n") + 1
        raise UserError(f"{path}: line {line} is not valid UTF-8 (byte {offset}); convert the file to UTF-8, "
                        f"or set data.errors=replace") from None


def _lines(text: str) -> list[str]:
    # "\n" only: str.splitlines() would also break at form feeds and Unicode separators,
    # changing the line (and so <eos>) counts that published figures are based on.
    lines = text.split("\n")
    if lines[-1] == "":  # the chunk ends with a line break, not with another line
        lines.pop()
    # A Windows line end (CRLF) is a line end: its "\r" is no character of the line (data=hf drops it
    # too); kept, it was a unit of every line for the character and BPE tokenizers.
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _text_bytes(raw: bytes, start: int) -> int:
    """The bytes of a chunk's text as its lines are read: one line break after every line (also
    a last one the file does not end with), a CRLF one byte, no byte-order mark."""
    bom = len(BOM) if start == 0 and raw.startswith(BOM) else 0
    last = raw.endswith(b"\r") and not raw.endswith(b"\r\n")  # a last line's \r with no \n after it
    return len(raw) - raw.count(b"\r\n") - last - bom + (not raw.endswith(b"\n"))


_ASCII_SPACE = np.zeros(256, dtype=bool)
_ASCII_SPACE[list(b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f")] = True
_OTHER_SPACE = re.compile("[\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")  # the rest of str.isspace()


def _words(raw: bytes, text: str) -> int:
    """``len(text.split())`` without making the words: the runs of non-space bytes, when
    every space is ASCII (the bytes of other characters are all >= 0x80)."""
    if not raw or _OTHER_SPACE.search(text):
        return len(text.split())
    space = _ASCII_SPACE[np.frombuffer(raw, dtype=np.uint8)]
    return int(np.count_nonzero(space[:-1] & ~space[1:])) + int(not space[0])


@dataclass
class _Chunk:
    ids: np.ndarray  # uint32, an <eos> after every line: indices into ``units``, or the tokenizer's own ids
    units: Optional[list[str]]  # the chunk's units by id; None when the ids are the tokenizer's
    lines: int
    bytes: int
    words: int
    text: bool  # whether any line holds more than white space


def _tokenize(tokenizer, path: Path, start: int, end: int, errors: str = "strict") -> _Chunk:
    raw = _read(path, start, end)
    text = _decode(raw, path, start, errors)
    lines = _lines(text)
    stats = dict(lines=len(lines), bytes=_text_bytes(raw, start),
                 words=_words(raw, text) + len(lines), text=not text.isspace())  # +1 a line, as published counts do
    if tokenizer.own_ids:  # bpe, gpt2: many lines at once, in Rust
        return _Chunk(tokenizer.encode_lines(lines), None, **stats)
    units, eos = [], tokenizer.eos_token
    for line in lines:
        units += tokenizer.split(line)
        units.append(eos)  # the vocabulary maps the <eos> unit to the id that ends a line
    numbering = {u: i for i, u in enumerate(dict.fromkeys(units))}
    ids = np.fromiter(map(numbering.__getitem__, units), dtype=np.uint32, count=len(units))
    return _Chunk(ids, list(numbering), **stats)


_worker: dict = {}  # in a worker process: the tokenizer, handed over once when the pool starts


STOPS = {signal.SIGINT, signal.SIGTERM}


def _start_worker(tokenizer) -> None:
    _worker["tokenizer"] = tokenizer
    # A stop is the parent's to handle: it ends the workers (_results). A worker that took Ctrl+C
    # itself could die holding the result queue's lock, and the pool's shutdown then wait for ever
    # on the worker blocked behind it. SIGTERM, the parent's terminate(), ends a worker at once:
    # the parent's own handler, forked with it, must not run here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)  # blocked by the parent while it forked this one


def _work(task: tuple[str, Path, int, int, str]) -> _Chunk:
    return _tokenize(_worker["tokenizer"], *task[1:])


def _results(tokenizer, tasks: list, total: int) -> Iterator[_Chunk]:
    """The tasks' chunks, in order: tokenized here for a corpus of one chunk (starting
    processes would cost more), else by a pool of processes."""
    n = min(workers(), len(tasks))
    if n < 2 or total <= CHUNK_BYTES:
        yield from (_tokenize(tokenizer, *task[1:]) for task in tasks)
        return
    # Forked workers inherit the tokenizer (a trained BPE included) and the imported modules.
    # Hugging Face tokenizers would warn in each one that it was forked after using its
    # thread pool, and then not use it; one process per CPU is the intent, so say so first.
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    pool = ProcessPoolExecutor(n, mp_context=context, initializer=_start_worker, initargs=(tokenizer,))
    unset = "TOKENIZERS_PARALLELISM" not in os.environ
    started: list = []  # the workers, as forked: the pool's own list may be emptied by its manager thread
    try:
        if unset:
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
        # A few chunks ahead of the one awaited, not all: finished chunks wait in memory.
        todo = iter(tasks)
        # The stop signals wait while the workers are forked (a stop then is the parent's): a worker
        # forked with the parent's handler, which took Ctrl+C before its initializer set it aside,
        # could die holding a queue's lock, as in _start_worker's hang.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
        try:
            pending = deque(pool.submit(_work, task) for task in islice(todo, 2 * n))  # starts the workers
            started = list((getattr(pool, "_processes", None) or {}).values())
        finally:
            if unset:
                del os.environ["TOKENIZERS_PARALLELISM"]
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # a stop that waited is raised here
        while pending:
            chunk = pending.popleft().result()
            pending.extend(pool.submit(_work, task) for task in islice(todo, 1))
            yield chunk
    except BaseException:
        # An error or a stop: the chunks in hand are dropped, not tokenized for nothing. The pool
        # has no public way to stop a running task (3.14's terminate_workers()), and waiting for
        # the chunks already queued took 35 s after a Ctrl+C here: the workers are ended instead.
        # Each worker as forked too: the pool's own list, which its manager thread may have emptied,
        # alone could miss one (a worker left running after a stop was seen under load; README).
        for process in {*started, *(getattr(pool, "_processes", None) or {}).values()}:
            process.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _train_lines(path: Path, bar, errors: str) -> Iterator[list[str]]:
    """The train split a chunk of lines at a time, for a tokenizer that is trained on it."""
    for start, end in _chunks(path, CHUNK_BYTES):
        yield _lines(_decode(_read(path, start, end), path, start, errors))
        bar.update(end - start)


# --- tokenizing ------------------------------------------------------------------------------


@dataclass
class _Tokenized:
    """What the tokenize pass leaves: per split a file of uint32 ids in ``tmp`` and its stats, and
    for a counted vocabulary every unit met (numbered in order) with its count in train."""

    stats: dict[str, dict]
    numbering: dict[str, int]
    train_counts: np.ndarray
    fit_seconds: Optional[float]  # None when the tokenizer was not fitted


def _tokenize_pass(corpus: Corpus, tokenizer, files: dict[str, Path], fit: bool, tmp: Path) -> _Tokenized:
    """Fit the tokenizer on train when asked, then tokenize every split chunk by chunk into
    ``tmp/<split>.ids``: the tokenizer's own ids, or the corpus's numbering of the units met."""
    sizes = {s: p.stat().st_size for s, p in files.items()}
    total = sum(sizes.values())
    # The small splits first, so that a bad one is reported before the long train split is read.
    tasks = [(s, files[s], a, b, corpus.errors) for s in sorted(files, key=lambda s: s == "train")
             for a, b in _chunks(files[s], CHUNK_BYTES)]
    numbering: dict[str, int] = {}
    train_counts = np.zeros(0, dtype=np.int64)
    stats = {s: dict(lines=0, tokens=0, unk=0, bytes=0, words=0) for s in files}
    has_text = {s: False for s in files}
    # Bytes read (train twice for a tokenizer trained on it), on stderr; disable=None: no bar
    # when stderr is not a terminal (logs, CI, captured output).
    with tqdm(total=total + (sizes["train"] if fit else 0), unit="B", unit_scale=True,
              unit_divisor=1024, desc=f"tokens: {corpus.name}", disable=None, leave=False) as bar:
        fit_seconds, start = None, time.perf_counter()
        if fit:
            tokenizer.fit(_train_lines(files["train"], bar, corpus.errors))
            fit_seconds = round(time.perf_counter() - start, 2)
        chunks = _results(tokenizer, tasks, total)
        outs = {s: open(tmp / f"{s}.ids", "wb") for s in files}  # uint32 ids before the vocabulary is known
        try:
            with closing(chunks):  # an error here stops the workers too
                for (split, path, start, end, _), chunk in zip(tasks, chunks):
                    ids = chunk.ids
                    if chunk.units is not None:  # the chunk's numbering -> the corpus's
                        table = np.fromiter((numbering.setdefault(u, len(numbering)) for u in chunk.units),
                                            dtype=np.int64, count=len(chunk.units))
                        ids = table.astype(np.uint32)[ids]
                        if split == "train":
                            train_counts = np.pad(train_counts, (0, len(numbering) - len(train_counts)))
                            train_counts[table] += np.bincount(chunk.ids, minlength=len(table))
                    ids.astype(np.uint32, copy=False).tofile(outs[split])
                    for key in ("lines", "bytes", "words"):
                        stats[split][key] += getattr(chunk, key)
                    stats[split]["tokens"] += len(ids)
                    has_text[split] |= chunk.text
                    if end == sizes[split] and not has_text[split]:  # the split's last chunk
                        raise UserError(f"{path} is empty; every split needs text")
                    bar.update(end - start)
        finally:
            for f in outs.values():
                f.close()
    for split, path in files.items():
        if not has_text[split]:  # an empty file has no chunk at all
            raise UserError(f"{path} is empty; every split needs text")
    return _Tokenized(stats, numbering, train_counts, fit_seconds)


def _count_pass(tokenizer, tokenized: _Tokenized) -> Vocab:
    """The vocabulary: the tokenizer's own, or ranked from the train split's counts (never valid or test)."""
    if tokenizer.own_ids:
        return tokenizer.vocab({})
    counts = dict(zip(tokenized.numbering, tokenized.train_counts.tolist()))
    eos = tokenizer.eos_token
    counts[eos] = counts.get(eos, 0) - tokenized.stats["train"]["lines"]  # the line ends the cache added
    return tokenizer.vocab({u: c for u, c in counts.items() if c > 0})


def _remap_pass(tokenizer, tokenized: _Tokenized, vocab: Vocab, files: dict[str, Path], tmp: Path) -> None:
    """Rewrite each split's uint32 ids as vocabulary ids in the smallest type that holds them
    (``tmp/<split>.npy``), counting the ``<unk>`` of each split."""
    units = tokenizer.units_by_id() if tokenizer.own_ids else list(tokenized.numbering)  # by stored id
    table = np.fromiter((vocab.stoi.get(u, -1 if vocab.unk is None else vocab.unk) for u in units),
                        dtype=np.int64, count=len(units))
    missing = table < 0  # units a vocabulary without <unk> lacks (one given, or an unused id): an error if met
    table[missing] = 0
    dtype = _id_dtype(len(vocab))
    _check_fits(table, dtype, len(vocab))
    table = table.astype(dtype)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False}
    for split in files:
        stats = tokenized.stats[split]
        # Plain reads and writes, a block at a time, not memory maps: pages of a mapped file
        # count in the process's resident memory as they are touched.
        n, block = stats["tokens"], 1 << 24
        with open(tmp / f"{split}.ids", "rb") as source, open(tmp / f"{split}.npy", "wb") as out:
            np.lib.format.write_array_header_1_0(out, {**header, "shape": (n,)})
            for _ in range(0, n, block):
                read = np.fromfile(source, dtype=np.uint32, count=block)
                if missing.any() and missing[read].any():
                    unit = units[read[missing[read]][0]]
                    raise UserError(f"{files[split]}: unit {unit!r} is not in the vocabulary given, which has no "
                                    f"<unk>; use the tokenizer that made that vocabulary")
                ids = table[read]
                ids.tofile(out)
                if vocab.unk is not None:
                    stats["unk"] += int(np.count_nonzero(ids == vocab.unk))
        (tmp / f"{split}.ids").unlink()


def _write(corpus: Corpus, tokenizer, vocab: Optional[Vocab], tmp: Path) -> tuple[Vocab, dict, dict]:
    """Tokenize every split into ``tmp`` in three passes (tokenize, count, remap); return the
    vocabulary, the stats and the passes' seconds. A given ``vocab`` (a trained model's) is
    used as it is, and a tokenizer restored with it is not fitted again."""
    files = {s: Path(corpus.files[s]) for s in present(corpus)}
    seconds, start = {}, time.perf_counter()
    tokenized = _tokenize_pass(corpus, tokenizer, files, fit=tokenizer.learns and vocab is None, tmp=tmp)
    seconds["tokenize"] = round(time.perf_counter() - start, 2)
    if tokenized.fit_seconds is not None:
        seconds["fit"] = tokenized.fit_seconds  # part of tokenize
    vocab = vocab or _count_pass(tokenizer, tokenized)
    start = time.perf_counter()
    _remap_pass(tokenizer, tokenized, vocab, files, tmp)
    seconds["remap"] = round(time.perf_counter() - start, 2)
    return vocab, tokenized.stats, seconds


def _restore(tokenizer, path: Path) -> None:
    if (path / "tokenizer.json").exists():
        tokenizer.restore((path / "tokenizer.json").read_text(encoding="utf-8"))


def _vocabulary_of(path: Path) -> Optional[list[str]]:
    try:
        return json.loads((path / "vocab.json").read_text(encoding="utf-8")) if (path / "meta.json").exists() else None
    except (OSError, ValueError):
        return None


def _cached(path: Path, tokenizer) -> Optional[TokenizedCorpus]:
    """The entry at ``path``, whole; None where there is none, or a damaged one (a file gone,
    cut short or overwritten), which the caller makes again."""
    if not (path / "meta.json").exists():
        return None
    try:
        _restore(tokenizer, path)  # a tokenizer trained on this corpus (bpe) is not trained again
        found = load(path, tokenizer)
    except Exception as e:  # json's, numpy's, the tokenizer library's own errors: the entry is not whole
        log.warning("tokens: the cache entry %s is damaged (%s); it is made again", path, " ".join(str(e).split()))
        return None
    log.info("tokens: cached in %s", path)
    return found


def tokenize_corpus(corpus: Corpus, tokenizer, cache_dir: Path, vocab: Optional[Vocab] = None) -> TokenizedCorpus:
    """Return the corpus as ids, tokenizing only when no cache entry has this key.

    The vocabulary is built from the train split, unless ``vocab`` is given: a trained
    model's own, to evaluate it on another corpus.
    """
    settings = tokenizer.settings()
    if corpus.errors != "strict":  # replaced bytes change the ids; strict is every existing entry's key
        settings["errors"] = corpus.errors
    if vocab is not None:
        # A model scored on the corpus it was trained on: its vocabulary is the one built from
        # this train split, and the entry its training made holds these very ids already
        # (re-tokenizing the default corpus took 13 s of an evaluation's 27).
        own = cache_dir / "tokens" / f"{corpus.name}-{settings['name']}-{cache_key(corpus, settings, cache_dir)}"
        found = _cached(own, tokenizer) if _vocabulary_of(own) == vocab.itos else None
        if found is not None:
            return found
        settings["vocab"] = hashlib.sha256("\n".join(vocab.itos).encode()).hexdigest()[:16]
    path = cache_dir / "tokens" / f"{corpus.name}-{settings['name']}-{cache_key(corpus, settings, cache_dir)}"
    found = _cached(path, tokenizer)  # no lock to find a finished entry: a read-only cache is read as ever
    if found is not None:
        return found
    path.parent.mkdir(parents=True, exist_ok=True)
    # A second job asking for the same entry waits for the first, then finds it made (lmexp/locks.py).
    with one_at_a_time(path, f"tokens: waiting for another process preparing {path}"):
        found = _cached(path, tokenizer)  # made while this process waited for the lock
        if found is not None:
            return found
        if path.exists():  # a damaged entry: moved aside whole, so that the new one can take its place
            try:
                aside = Path(tempfile.mkdtemp(dir=path.parent, prefix=".damaged-"))
                os.replace(path, aside / path.name)
            except OSError as e:
                raise UserError(f"the cache entry {path} is damaged and cannot be replaced ({e.strerror}); "
                                f"delete it, or set paths.cache_dir to a cache of your own") from None
            shutil.rmtree(aside, ignore_errors=True)
        return _make(corpus, tokenizer, vocab, settings, path)


def _make(corpus: Corpus, tokenizer, vocab: Optional[Vocab], settings: dict, path: Path) -> TokenizedCorpus:
    """Tokenize into a temporary folder beside ``path`` and move it there whole: a process
    killed on the way leaves no half entry."""
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".tmp-"))
    try:
        vocab, stats, seconds = _write(corpus, tokenizer, vocab, tmp)
        state = tokenizer.save()
        if state is not None:
            (tmp / "tokenizer.json").write_text(state, encoding="utf-8")  # restored when this entry is reused
        (tmp / "vocab.json").write_text(json.dumps(vocab.itos, ensure_ascii=False))
        seconds["total"] = round(time.perf_counter() - start, 2)
        (tmp / "meta.json").write_text(json.dumps({"tokenizer": settings, "stats": stats, "seconds": seconds,
                                                   "files": {s: str(p) for s, p in corpus.files.items()}}, indent=1))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        as_made(tmp, folder=True)
        os.replace(tmp, path)  # atomic: readers see a whole entry or none
    except OSError:  # another process finished the same entry first (one that took no lock)
        shutil.rmtree(tmp, ignore_errors=True)
        _restore(tokenizer, path)  # that process's tokenizer, which made the stored ids
    log.info("tokens: %s tokenized in %.1f s (vocabulary %d) -> %s",
             corpus.name, time.perf_counter() - start, len(vocab), path)
    return load(path, tokenizer, from_cache=False)


def prepare_corpus(data: DataConfig, tokenizer: Tokenizer, cache_dir: Path,
                   vocab: Optional[list[str]] = None) -> TokenizedCorpus:
    """The ``data=`` option's text, tokenized (or found in the cache). ``vocab``: a trained
    model's own id -> unit list, to score another corpus as that model reads it."""
    text = CORPORA.option(data.name).make(data, Path(cache_dir))
    text.errors = data.errors
    fixed = Vocab(vocab, tokenizer.unk_token, tokenizer.eos_token) if vocab else None
    return tokenize_corpus(text, tokenizer, Path(cache_dir), fixed)
