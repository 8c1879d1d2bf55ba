"""Generation speed with and without GPT-2's key/value cache.

    python benchmarks/generation.py [--size mini] [--tokens 64 128 256] [--threads 2]

With the cache each new token costs one step over one position; without it the whole prefix is
read again for every token, so the time grows with the square of the length. Random weights
(speed does not depend on them) and greedy decoding; prints one JSON line per length.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="mini")
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--tokens", type=int, nargs="+", default=[64, 128, 255])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from lmexp.generate import sample
    from lmexp.models import build_model

    torch.manual_seed(0)
    model = build_model({"name": "gpt2", "size": args.size}, vocab_size=args.vocab, dropout=0.0).eval()
    prompt = [1]
    for n in args.tokens:
        runs = {}
        for use_cache in (True, False):
            start = time.perf_counter()
            tokens = sample(model, prompt, n, temperature=0, use_cache=use_cache)
            runs[use_cache] = (tokens, time.perf_counter() - start)
        (cached, cached_s), (recomputed, recompute_s) = runs[True], runs[False]
        print(json.dumps({"size": args.size, "vocab": args.vocab, "threads": torch.get_num_threads(),
                          "new_tokens": n, "cached_s": round(cached_s, 3), "recompute_s": round(recompute_s, 3),
                          "speedup": round(recompute_s / cached_s, 2), "same_tokens": cached == recomputed}))

if __name__ == "__main__":
    main()
