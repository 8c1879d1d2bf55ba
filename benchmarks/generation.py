"""Generation speed with and without GPT-2's key/value cache.

    python benchmarks/generation.py [--size mini] [--tokens 64 128 255] [--rounds 5] [--threads 2]

With the cache each new token costs one step over one position; without it the whole prefix is
read again for every token, so the time grows with the square of the length. Random weights
(speed does not depend on them) and greedy decoding. Both paths are warmed up first, then run
in turn --rounds times per length (the order flipped every round); the speedup is the ratio of
the median times. Prints one JSON line per length.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="mini")
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--tokens", type=int, nargs="+", default=[64, 128, 255])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from lmexp.sampling import sample
    from lmexp.models import build_model

    torch.manual_seed(0)
    model = build_model({"name": "gpt2", "size": args.size}, vocab_size=args.vocab, dropout=0.0).eval()
    prompt = [1]
    # The first calls pay for allocations and kernel selection; neither path should carry them.
    for use_cache in (True, False):
        sample(model, prompt, min(args.tokens), temperature=0, use_cache=use_cache)
    for n in args.tokens:
        seconds, outputs = {True: [], False: []}, {True: set(), False: set()}
        for r in range(args.rounds):
            # Taking turns spreads a slow spell of the shared machine over both paths.
            for use_cache in ((True, False) if r % 2 == 0 else (False, True)):
                start = time.perf_counter()
                tokens = sample(model, prompt, n, temperature=0, use_cache=use_cache)
                seconds[use_cache].append(time.perf_counter() - start)
                outputs[use_cache].add(tuple(tokens))
        cached_s, recompute_s = statistics.median(seconds[True]), statistics.median(seconds[False])
        print(json.dumps({"size": args.size, "vocab": args.vocab, "threads": torch.get_num_threads(),
                          "new_tokens": n, "rounds": args.rounds, "cached_s": round(cached_s, 3),
                          "recompute_s": round(recompute_s, 3), "speedup": round(recompute_s / cached_s, 2),
                          "all_cached_s": [round(t, 3) for t in seconds[True]],
                          "all_recompute_s": [round(t, 3) for t in seconds[False]],
                          "same_tokens": len(outputs[True] | outputs[False]) == 1}))


if __name__ == "__main__":
    main()
