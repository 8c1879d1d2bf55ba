"""How a model's input embedding is initialised (the ``embedding=`` group).

``learned``: random rows. ``word2vec``: vectors trained with gensim on the run's own training
split (cached). ``pretrained``: vectors read from a word2vec / GloVe file. The last two share
``freeze``, ``unknown`` (rows without a vector) and ``project`` (vector size != embedding width).
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
import torch
import torch.nn as nn

from lmexp.atomic import as_made
from lmexp.data.cache import id_counts
from lmexp.data.tokenizers import Vocab
from lmexp.errors import ConfigError, UserError
from lmexp.options.embedding import (LearnedEmbeddingConfig, PretrainedEmbeddingConfig, VectorOptions,
                                    Word2VecEmbeddingConfig)

log = logging.getLogger(__name__)
LOW_COVERAGE = 0.5  # of the training tokens: below it, the vectors are said to seed little of the model


@dataclass
class EmbeddingContext:
    """What an initialiser may read: the model's vocabulary, the training split's ids (to train
    vectors on, or to measure coverage), and the cache folder (to keep trained vectors)."""

    vocab: Vocab
    train_ids: np.ndarray
    cache_dir: Path
    corpus_key: str  # names the tokenized corpus: part of any cache key built on it
    tied: bool = False  # the output layer shares embedding.weight (then freeze would freeze it too)
    can_untie: bool = True  # the model has model.tie_weights (GPT-2 always ties)
    sized_by: Optional[str] = None  # the model.target_params* setting that chose the width, if one did


def init_learned(embedding: nn.Embedding, config: LearnedEmbeddingConfig, context: EmbeddingContext) -> dict:
    """Random rows: the model's own scheme, or N(0, init_std). Returns statistics to report."""
    if config.init_std is not None:
        nn.init.normal_(embedding.weight, mean=0.0, std=config.init_std)
    return {}


# --- vectors: word2vec (trained here) and pretrained (read from a file) -----------------------

W2V_CACHE_VERSION = 1  # bump when what is stored, or how it is computed, changes


def _rows(words: list[str], key_to_index: dict, lowercase: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """For each vocabulary word: whether it has a vector, and the vector's index (-1 if none)."""
    index = np.full(len(words), -1, dtype=np.int64)
    for i, w in enumerate(words):
        j = key_to_index.get(w)
        if j is None and lowercase:
            j = key_to_index.get(w.lower())
        if j is not None:
            index[i] = j
    return index >= 0, index


def _fill(embedding: nn.Embedding, config: VectorOptions, context: EmbeddingContext, vectors: np.ndarray,
          key_to_index: dict, source: str, lowercase: bool = False, scarce: str = "") -> dict:
    """Copy the vectors of the vocabulary's words into the embedding; returns coverage statistics.
    ``scarce``: what to check when the vectors cover less than LOW_COVERAGE of the training tokens.

    With ``project=true`` and a vector size D other than the embedding width W, each vector is
    multiplied by a fixed Gaussian matrix (D x W, entries N(0, 1) / sqrt(D), drawn from torch's
    global generator, so the run's seed fixes it): a Johnson-Lindenstrauss style random map that
    keeps inner products up to the factor W / D. Nothing in the model is replaced or learned.
    """
    num_rows, width = embedding.weight.shape
    if num_rows != len(context.vocab):
        raise UserError(f"the embedding has {num_rows} rows but the vocabulary {len(context.vocab)} words")
    size = vectors.shape[1]
    stats: dict = {"vector_size": int(size)}
    if size != width:
        if not config.project:
            fix = (f"{context.sized_by} chose the width: set embedding.project=true, or drop {context.sized_by} "
                   f"and set model.embedding_size={size}") if context.sized_by else \
                f"set model.embedding_size={size} or embedding.project=true"
            raise ConfigError(f"the vectors from {source} have size {size} but the embedding has width {width}; "
                              f"{fix}")
        projection = torch.randn(size, width, dtype=torch.float64) / np.sqrt(size)
        vectors = (torch.from_numpy(np.asarray(vectors, dtype=np.float64)) @ projection).numpy()
        stats["projected_to"] = int(width)
    found, index = _rows(context.vocab.itos, key_to_index, lowercase)
    if not found.any():
        raise UserError(f"no word of the vocabulary has a vector in {source}; check the file and the tokenizer "
                        "(embedding.lowercase_lookup=true helps when the vectors are lowercased)")
    counts = id_counts(context.train_ids, num_rows)
    tokens = int(counts.sum())
    with torch.no_grad():
        weight = embedding.weight
        rows = torch.as_tensor(np.asarray(vectors[index[found]]), dtype=weight.dtype, device=weight.device)
        found_t = torch.as_tensor(found, device=weight.device)
        weight[found_t] = rows
        missing = ~found_t
        if config.unknown == "zero":
            weight[missing] = 0.0
        elif config.unknown == "mean":
            weight[missing] = rows.mean(dim=0)
    keep_frozen(embedding, config)
    stats.update(vocab_coverage=float(found.mean()),
                 token_coverage=float(counts[found].sum() / tokens) if tokens else 0.0)
    log.info("embedding: %d of %d vocabulary rows (%.1f%% of training tokens) from %s%s", int(found.sum()),
             num_rows, 100 * stats["token_coverage"], source, ", frozen" if config.freeze else "")
    if stats["token_coverage"] < LOW_COVERAGE:
        # Not refused: a few units may be all a user wants to seed. But characters or BPE pieces
        # against word vectors match only where a unit happens to be a whole word; word2vec's
        # coverage is what its min_count leaves.
        log.warning("embedding: only %.1f%% of training tokens have a vector in %s, the rest start as "
                    "embedding.unknown=%s; %s", 100 * stats["token_coverage"], source, config.unknown, scarce)
    return stats


def keep_frozen(embedding: nn.Embedding, config: object) -> None:
    """``freeze=true``: the whole table stays as it starts, rows without a vector included (at their
    random start, as in Kim (2014)'s CNN-static), so nothing trains them; a resumed run freezes it again."""
    if getattr(config, "freeze", False):
        embedding.weight.requires_grad_(False)


# --- word2vec ---------------------------------------------------------------------------------


class _Sentences:
    """The training split as gensim reads it: lists of unit strings, one per line (cut at <eos>,
    which is not itself a word), re-iterable for gensim's several passes."""

    MAX_LEN = 10_000  # gensim silently truncates longer sentences: cut them instead

    def __init__(self, ids: np.ndarray, vocab: Vocab):
        self.ids = np.asarray(ids)
        self.itos = vocab.itos
        self.ends = np.flatnonzero(self.ids == vocab.eos)

    def __iter__(self):
        start = 0
        for end in [*self.ends.tolist(), len(self.ids)]:
            for lo in range(start, end, self.MAX_LEN):
                chunk = self.ids[lo:min(end, lo + self.MAX_LEN)]
                yield [self.itos[i] for i in chunk.tolist()]
            start = end + 1


def word2vec_cache_path(config: Word2VecEmbeddingConfig, context: EmbeddingContext, vector_size: int) -> Path:
    settings = {**config.training_settings(), "vector_size": vector_size}
    text = json.dumps({"version": W2V_CACHE_VERSION, "corpus": context.corpus_key, "settings": settings}, sort_keys=True)
    return Path(context.cache_dir) / "embeddings" / f"word2vec-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _train_word2vec(config: Word2VecEmbeddingConfig, context: EmbeddingContext, vector_size: int):
    from gensim.models import Word2Vec

    sentences = _Sentences(context.train_ids, context.vocab)
    model = Word2Vec(sentences=sentences, vector_size=vector_size, sg=config.sg, window=config.window,
                     epochs=config.epochs, min_count=config.min_count, negative=config.negative,
                     workers=config.workers, seed=config.seed)
    if len(model.wv) == 0:
        raise UserError(f"word2vec found no word with at least embedding.min_count={config.min_count} occurrences "
                        "in the training split; lower embedding.min_count")
    return list(model.wv.index_to_key), np.asarray(model.wv.vectors, dtype=np.float32)


def init_word2vec(embedding: nn.Embedding, config: Word2VecEmbeddingConfig, context: EmbeddingContext) -> dict:
    """Vectors trained by gensim's Word2Vec on the training split, as this run's tokenizer split it.

    Kept under ``cache_dir/embeddings/word2vec-<key>`` (vectors.npy, words.json, meta.json); the
    key hashes the tokenized corpus and the training settings, so a second run with the same
    ones loads the vectors instead of training them.
    """
    config.refuse_frozen_tie(context.tied, context.can_untie)
    vector_size = config.vector_size or embedding.weight.shape[1]
    path = word2vec_cache_path(config, context, vector_size)
    start = time.perf_counter()
    if (path / "meta.json").exists():
        words = json.loads((path / "words.json").read_text())
        vectors = np.load(path / "vectors.npy")
        from_cache = True
        log.info("embedding: word2vec vectors loaded from cache %s", path)
    else:
        words, vectors = _train_word2vec(config, context, vector_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".tmp-"))
        np.save(tmp / "vectors.npy", vectors)
        (tmp / "words.json").write_text(json.dumps(words, ensure_ascii=False))
        (tmp / "meta.json").write_text(json.dumps({"corpus": context.corpus_key, "vector_size": vector_size,
                                                   "settings": config.training_settings()}, indent=1))
        try:
            as_made(tmp, folder=True)
            os.replace(tmp, path)  # atomic: readers see a whole entry or none
        except OSError:  # another process (a DDP rank) finished the same entry first
            shutil.rmtree(tmp, ignore_errors=True)
        from_cache = False
        log.info("embedding: word2vec trained on %d tokens in %.1f s -> %s", len(context.train_ids),
                 time.perf_counter() - start, path)
    # Trained on the run's own units: what it leaves out, it leaves out for being rare.
    scarce = f"lower embedding.min_count={config.min_count}: word2vec leaves out units seen fewer times"
    stats = _fill(embedding, config, context, vectors, {w: i for i, w in enumerate(words)}, f"word2vec ({path.name})",
                  scarce=scarce)
    return {**stats, "from_cache": from_cache, "seconds": round(time.perf_counter() - start, 3)}


# --- pretrained ---------------------------------------------------------------------------------


def _open_bytes(path: Path):
    from gensim import utils

    return utils.open(str(path), "rb")  # reads .gz / .bz2 too


def _diagnose_text(path: Path, fmt: str) -> Optional[str]:
    """Why a text vectors file failed to load: the first line that breaks the format, or None
    (a binary file's bytes have no lines to name)."""
    if fmt == "word2vec_binary":
        return None
    header, expected = fmt == "word2vec", None
    with _open_bytes(path) as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                return f"line {number} is not UTF-8 text"
            if header and number == 1:
                continue
            if not line.strip():
                return f"line {number} is empty; remove the empty lines"
            if "\t" in line:
                return f"line {number} separates its values with tabs, where word2vec and GloVe text use spaces"
            parts = line.rstrip("\n\r").split(" ")
            parts = [p for p in parts[1:] if p != ""]
            if not parts:
                continue
            try:
                [float(p) for p in parts]
            except ValueError:
                return f"line {number} has a value that is not a number"
            if expected is None:
                expected = len(parts)
            elif len(parts) != expected:
                return f"vectors of mixed lengths: line {number} has {len(parts)} values, earlier lines {expected}"
    return None


def _check_vectors_file(path: Path, fmt: str) -> None:
    """Cheap checks before gensim reads the file: it exists, is not empty, and its first line
    fits the declared format."""
    if not path.is_file():
        raise UserError(f"vectors file {path} does not exist; check embedding.path")
    with _open_bytes(path) as f:
        first = f.readline()
    if not first.strip():
        raise UserError(f"vectors file {path} is empty (or starts with an empty line)")
    try:
        first_text = first.decode("utf-8").split()
    except UnicodeDecodeError:
        raise UserError(f"vectors file {path}: the first line is not UTF-8 text, so this is not format={fmt} "
                        "(embedding.format: word2vec, word2vec_binary or glove)") from None
    has_header = len(first_text) == 2 and all(t.isdigit() for t in first_text)
    if fmt == "glove" and has_header:
        raise UserError(f"vectors file {path} starts with a word2vec header line ('{' '.join(first_text)}'), "
                        "so it is not GloVe text; set embedding.format=word2vec")
    if fmt in ("word2vec", "word2vec_binary") and not has_header:
        hint = "embedding.format=glove" if len(first_text) > 2 else "embedding.format"
        raise UserError(f"vectors file {path} has no word2vec header line ('<count> <size>'), "
                        f"so it is not format={fmt}; check {hint}")
    if fmt == "word2vec_binary":
        # A text file read as binary would "load" garbage: refuse a file whose body is text.
        with _open_bytes(path) as f:
            f.readline()
            body = f.read(1 << 16)
        try:
            body.decode("utf-8")
            looks_text = True
        except UnicodeDecodeError as e:
            looks_text = e.start >= len(body) - 4  # only a character cut off at the end
        if looks_text and body and all(len(line.split()) == int(first_text[1]) + 1
                                       for line in body.decode("utf-8", "ignore").splitlines()[:5] if line.strip()):
            raise UserError(f"vectors file {path} is text, not format=word2vec_binary; set embedding.format=word2vec")


def load_vectors(path: Path, fmt: str):
    """The file's vectors as gensim KeyedVectors; bad input is one-line UserError."""
    from gensim.models import KeyedVectors

    path = Path(os.path.expanduser(str(path)))
    _check_vectors_file(path, fmt)
    try:
        kv = KeyedVectors.load_word2vec_format(str(path), binary=fmt == "word2vec_binary", no_header=fmt == "glove")
    except (ValueError, EOFError, UnicodeDecodeError, IndexError) as e:
        why = _diagnose_text(path, fmt)
        if why is None:
            why = " ".join(str(e).split()) or type(e).__name__
        raise UserError(f"vectors file {path} cannot be read as format={fmt}: {why}") from None
    if len(kv) == 0 or kv.vector_size == 0:
        why = _diagnose_text(path, fmt)
        raise UserError(f"vectors file {path} holds no vectors" + (f": {why}" if why else ""))
    if fmt == "word2vec":  # gensim reads as many lines as the header says, and drops any after them
        with _open_bytes(path) as f:
            said = int(f.readline().split()[0])
            lines = sum(1 for line in f if line.strip())
        if lines != said:
            raise UserError(f"vectors file {path}: its header line says {said} vectors but {lines} lines follow; "
                            f"correct the header's count")
    if not np.isfinite(kv.vectors).all():
        raise UserError(f"vectors file {path} holds values that are not finite numbers; is format={fmt} right?")
    return kv


def init_pretrained(embedding: nn.Embedding, config: PretrainedEmbeddingConfig, context: EmbeddingContext) -> dict:
    """Rows from a vectors file read by gensim's KeyedVectors (word2vec text or binary, GloVe
    text); a vocabulary word missing from the file tries its lowercased form with
    ``lowercase_lookup=true``, and otherwise gets what ``unknown`` says."""
    path = config.vectors_file()
    config.refuse_frozen_tie(context.tied, context.can_untie)
    start = time.perf_counter()
    kv = load_vectors(path, config.format)
    log.info("embedding: %d vectors of size %d read from %s in %.1f s", len(kv), kv.vector_size, path,
             time.perf_counter() - start)
    scarce = "word vectors fit tokenizer=word's units" + (
        "" if config.lowercase_lookup else " (embedding.lowercase_lookup=true helps when the vectors are lowercased)")
    stats = _fill(embedding, config, context, kv.vectors, kv.key_to_index, str(path), config.lowercase_lookup,
                  scarce=scarce)
    return {**stats, "file_vectors": len(kv)}

