"""``python -m lmexp.prepare [data=...] [tokenizer=...] [key=value ...]``

Tokenize and cache a corpus without training, and print what it holds as JSON: per split the
lines, tokens, UTF-8 bytes, whitespace words (plus one per line) and out-of-vocabulary share;
the vocabulary size; the cache path. Training runs with the same settings use this cache.
"""

from __future__ import annotations

import json
import sys
import time

from lmexp.cli import compose, parse_command_line
from lmexp.config import load_settings
from lmexp.data.cache import prepare_corpus
from lmexp.data.tokenizers import tokenizer_for
from lmexp.errors import reported_as_one_line
from lmexp.stops import stopped_as_one_line


# What tokenizing reads; a setting of another group would change nothing here.
GROUPS = ("data", "tokenizer", "paths")


def prepare(overrides: list[str]) -> dict:
    settings = load_settings(compose(overrides))
    start = time.perf_counter()
    corpus = prepare_corpus(settings.data, tokenizer_for(settings), settings.paths.cache())
    splits = {}
    for split, stats in corpus.stats.items():
        splits[split] = {**stats, "oov_rate": stats["unk"] / stats["tokens"] if stats["tokens"] else 0.0}
    return {"data": settings.names["data"], "tokenizer": settings.names["tokenizer"], "vocab_size": len(corpus.vocab),
            "splits": splits, "cache": str(corpus.path), "from_cache": corpus.from_cache,
            "seconds": round(time.perf_counter() - start, 3)}


def main(argv: list[str]) -> None:
    # A cache entry is tokenized into a temporary folder and renamed into place whole (lmexp.data.cache).
    with stopped_as_one_line("lmexp.prepare", "no half-made cache entry was kept; run it again"), \
            reported_as_one_line():
        _, overrides = parse_command_line(argv, {}, GROUPS)
        result = prepare(overrides)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
