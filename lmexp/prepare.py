"""``python -m lmexp.prepare [data=...] [tokenizer=...] [key=value ...]``

Tokenize and cache a corpus without training, and print what it holds as JSON: per split the
lines, tokens, UTF-8 bytes, whitespace words (plus one per line) and out-of-vocabulary share;
the vocabulary size; the cache path. Training runs with the same settings use this cache.
"""

from __future__ import annotations

import json
import sys
import time

from lmexp.config import CONF_DIR, load_settings
from lmexp.errors import reported_as_one_line


def prepare(overrides: list[str]) -> dict:
    from hydra import compose, initialize_config_dir

    from lmexp.data.datamodule import LMDataModule
    from lmexp.overrides import check_command_line
    from lmexp.train import cache_dir

    check_command_line(overrides, CONF_DIR)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    settings = load_settings(cfg)
    start = time.perf_counter()
    data = LMDataModule(settings.names["data"], settings.data, settings.names["tokenizer"], settings.tokenizer,
                        cache_dir(cfg))
    data.setup()
    corpus = data.corpus
    splits = {}
    for split, stats in corpus.stats.items():
        splits[split] = {**stats, "oov_rate": stats["unk"] / stats["tokens"] if stats["tokens"] else 0.0}
    return {"data": settings.names["data"], "tokenizer": settings.names["tokenizer"], "vocab_size": len(corpus.vocab),
            "splits": splits, "cache": str(corpus.path), "from_cache": corpus.from_cache,
            "seconds": round(time.perf_counter() - start, 3)}


def main(argv: list[str]) -> None:
    with reported_as_one_line():
        result = prepare(argv)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
