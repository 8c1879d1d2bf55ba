"""Time embedding=word2vec on about 2M tokens: Penn Treebank's train split twice over.

    python benchmarks/word2vec.py [--ptb ../shared/data/ptb] [--workers 1] [--threads 2]

Trains gensim Word2Vec with the run's defaults (conf/embedding/word2vec.yaml) into an empty
cache, then initialises again from the cache. Target: under 60 s the first time on 2 cores,
near zero the second. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ptb", default=str(ROOT.parent / "shared" / "data" / "ptb"))
    parser.add_argument("--workers", type=int, default=None, help="default: the YAML's")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--width", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from lmexp.cli import compose
    from lmexp.config import load_settings
    from lmexp.data.cache import prepare_corpus
    from lmexp.embeddings import EmbeddingContext, init_word2vec
    from lmexp.data.tokenizers import tokenizer_for

    workers = [] if args.workers is None else [f"embedding.workers={args.workers}"]
    settings = load_settings(compose(["embedding=word2vec", "data=ptb", f"data.root={args.ptb}", *workers]))
    config = settings.embedding
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        data = prepare_corpus(settings.data, tokenizer_for(settings), cache)
        ids = np.concatenate([data.ids["train"], data.ids["train"]])
        context = EmbeddingContext(data.vocab, ids, cache, "ptb-train-twice")
        times = []
        for _ in range(2):
            embedding = torch.nn.Embedding(len(data.vocab), args.width)
            start = time.perf_counter()
            stats = init_word2vec(embedding, config, context)
            times.append(time.perf_counter() - start)
    print(json.dumps({"tokens": int(len(ids)), "vocab": len(data.vocab), "width": args.width,
                      "workers": config.workers, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                      "first_s": round(times[0], 2), "cached_s": round(times[1], 3),
                      "vocab_coverage": round(stats["vocab_coverage"], 4), "ok": times[0] < 60 and times[1] < 2}))


if __name__ == "__main__":
    main()
