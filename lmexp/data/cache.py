"""Tokenize a corpus once and keep the ids on disk.

The entry's key is a hash of the split files' bytes and the tokenizer's settings: a change
to either makes a new entry, and nothing else does. Ids are stored as ``.npy`` in the
smallest unsigned type that holds the vocabulary and opened memory-mapped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from lmexp.data.corpora import SPLITS, Corpus
from lmexp.data.tokenizers import Vocab
from lmexp.errors import UserError

log = logging.getLogger(__name__)
FORMAT_VERSION = 1  # bump when what is stored, or how it is computed, changes


@dataclass
class TokenizedCorpus:
    path: Path
    vocab: Vocab
    ids: dict[str, np.ndarray]  # split -> 1-D ids, one <eos> after every line
    stats: dict[str, dict]  # split -> lines, tokens, bytes, words
    from_cache: bool


def _read_lines(path: Path) -> list[str]:
    if not path.exists():
        raise UserError(f"split file {path} does not exist; check data.root or re-create the corpus")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(f"{path}: line {line} is not valid UTF-8 (byte {e.start}); convert the file to UTF-8") from None
    # "\n" only: str.splitlines() would also break at form feeds and Unicode separators,
    # changing the line (and so <eos>) counts that published figures are based on.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not any(line.strip() for line in lines):
        raise UserError(f"{path} is empty; every split needs text")
    return lines


def cache_key(corpus: Corpus, tokenizer_settings: dict) -> str:
    h = hashlib.sha256(json.dumps({"format": FORMAT_VERSION, "tokenizer": tokenizer_settings}, sort_keys=True).encode())
    for split in present(corpus):
        h.update(split.encode())
        with open(corpus.files[split], "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def present(corpus: Corpus) -> list[str]:
    """The corpus's splits in train, valid, test order; a split with no fraction is absent."""
    return [s for s in SPLITS if s in corpus.files]


def _id_dtype(vocab_size: int) -> type:
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


def load(path: Path, tokenizer, from_cache: bool = True) -> TokenizedCorpus:
    meta = json.loads((path / "meta.json").read_text())
    vocab = Vocab(json.loads((path / "vocab.json").read_text()), tokenizer.unk_token, tokenizer.eos_token)
    ids = {s: np.load(path / f"{s}.npy", mmap_mode="r") for s in SPLITS if (path / f"{s}.npy").exists()}
    return TokenizedCorpus(path, vocab, ids, meta["stats"], from_cache)


def tokenize_corpus(corpus: Corpus, tokenizer, cache_dir: Path, vocab: Optional[Vocab] = None) -> TokenizedCorpus:
    """Return the corpus as ids, tokenizing only when no cache entry has this key.

    The vocabulary is built from the train split, unless ``vocab`` is given: a trained
    model's own, to evaluate it on another corpus.
    """
    settings = tokenizer.settings()
    if vocab is not None:
        settings["vocab"] = hashlib.sha256("\n".join(vocab.itos).encode()).hexdigest()[:16]
    path = cache_dir / "tokens" / f"{corpus.name}-{settings['name']}-{cache_key(corpus, settings)}"
    if (path / "meta.json").exists():
        log.info("tokens: cached in %s", path)
        if hasattr(tokenizer, "restore") and (path / "tokenizer.json").exists():
            tokenizer.restore(path)  # a tokenizer trained on this corpus (bpe), not trained again
        return load(path, tokenizer)

    start = time.perf_counter()
    lines = {s: _read_lines(corpus.files[s]) for s in present(corpus)}
    if hasattr(tokenizer, "fit") and vocab is None:
        tokenizer.fit(lines["train"])  # tokenizers trained on the corpus (bpe): on train only
    units = {s: [tokenizer.split(line) for line in lines[s]] for s in lines}
    vocab = vocab or tokenizer.build_vocab(units["train"])  # never from valid or test
    dtype = _id_dtype(len(vocab))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".tmp-"))
    stats = {}
    for split in lines:
        ids = [i for line_units in units[split] for i in (*vocab.ids(line_units), vocab.eos)]
        np.save(tmp / f"{split}.npy", np.asarray(ids, dtype=dtype))
        stats[split] = {
            "lines": len(lines[split]),
            "tokens": len(ids),
            "unk": sum(1 for i in ids if i == vocab.unk) if vocab.unk is not None else 0,
            "bytes": sum(len(line.encode("utf-8")) + 1 for line in lines[split]),
            "words": sum(len(line.split()) + 1 for line in lines[split]),  # +1: end of line, as published counts do
        }
    if hasattr(tokenizer, "save"):
        tokenizer.save(tmp)  # tokenizer.json, restored when this entry is reused
    (tmp / "vocab.json").write_text(json.dumps(vocab.itos, ensure_ascii=False))
    (tmp / "meta.json").write_text(json.dumps({"tokenizer": settings, "stats": stats,
                                               "files": {s: str(p) for s, p in corpus.files.items()}}, indent=1))
    try:
        os.replace(tmp, path)  # atomic: readers see a whole entry or none
    except OSError:  # another process (a DDP rank) finished the same entry first
        shutil.rmtree(tmp, ignore_errors=True)
        if hasattr(tokenizer, "restore") and (path / "tokenizer.json").exists():
            tokenizer.restore(path)  # that process's tokenizer, which made the stored ids
    log.info("tokens: %s tokenized in %.1f s (vocabulary %d) -> %s",
             corpus.name, time.perf_counter() - start, len(vocab), path)
    return load(path, tokenizer, from_cache=False)
