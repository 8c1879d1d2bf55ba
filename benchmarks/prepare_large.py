"""Time `python -m lmexp.prepare` on a corpus of WikiText-103's size, and loading it back.

    python benchmarks/prepare_large.py [--shared ../shared/data] [--folder DIR] [--keep] [--only word,hit,bpe]
                                        [--train-mb 540]  (less: a quick check, not the benchmark)

WikiText-103 (539 MB of train text, 103M words) cannot be had here, so this builds a stand-in
in its layout (wiki.{train,valid,test}.tokens) by repeating the real corpora in --shared
(Penn Treebank, WikiText-2 valid/test, Tiny Shakespeare) until train holds 540 MB; valid and
test are WikiText-2's (1.1 and 1.3 MB, like WikiText-103's). Then, each in a fresh process
with an empty cache:

  word  tokenizer=word prepared from nothing          target < 300 s on 2 cores
  hit   the same entry loaded again: tokenize_corpus   target < 2 s, memory near the ids' size
        in a bare process, and `python -m lmexp.prepare`
  bpe   tokenizer=bpe (default vocab_size) prepared,   target < 300 s, training included
        the BPE trained on train first

Each preparation's memory is its own: it runs in a fresh interpreter that reports, when it is
done, its own peak RSS (``peak_rss_mb``) and the largest peak of the tokenizing workers it
forked (``worker_peak_rss_mb``; forked, they share pages with it, so the two do not add up, and
the sum over workers running at once is not measured).

The stand-in has far fewer distinct words than WikiText-103 (about 43k word types against
267,735), because it repeats a few small corpora. BPE training time grows with the number of
distinct words (the trainer counts each word type and merges pairs over that table), so the BPE
figure here, ``fit_s`` above all, understates what WikiText-103 itself would take; encoding
grows mostly with the number of tokens (more distinct words only miss the tokenizer's word
cache more often). The output carries both type counts.

Prints a table and the results as a JSON line (also written to --out, or to the kept work folder).
The machine's load average is recorded before and after: another busy process skews timings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAIN_BYTES = 540_000_000  # WikiText-103's wiki.train.tokens is 539 MB
WT103_TYPES = 267_735  # WikiText-103's vocabulary: every word type of its train split, <unk> included
SOURCES = ["ptb/ptb.train.txt", "wikitext-2/valid.txt", "wikitext-2/test.txt", "tinyshakespeare/input.txt"]


def build(shared: Path, folder: Path, train_bytes: int = TRAIN_BYTES) -> dict:
    """The stand-in corpus; reused when a previous run left it complete in ``folder``."""
    files = {s: folder / f"wiki.{s}.tokens" for s in ("train", "valid", "test")}
    if not (files["train"].is_file() and files["train"].stat().st_size >= train_bytes):
        text = b"".join(p.read_bytes() if p.read_bytes().endswith(b"\n") else p.read_bytes() + b"\n"
                        for p in (shared / s for s in SOURCES))
        folder.mkdir(parents=True, exist_ok=True)
        tmp = files["train"].with_suffix(".part")
        with open(tmp, "wb") as f:
            written = 0
            while written < train_bytes:
                f.write(text)
                written += len(text)
        os.replace(tmp, files["train"])
        for split, source in (("valid", "wikitext-2/valid.txt"), ("test", "wikitext-2/test.txt")):
            files[split].write_bytes((shared / source).read_bytes())
    return {s: p.stat().st_size for s, p in files.items()}


# Run in a fresh interpreter: loads the cached entry as a training run would, and reports
# the time and what loading added to the process's peak memory.
HIT = """
import json, resource, sys, time
from pathlib import Path
import numpy as np
from lmexp.data.cache import tokenize_corpus
from lmexp.data.corpora import WikiTextConfig, CORPORA
from lmexp.data.tokenizers import WordTokenizer, WordTokenizerConfig
root, cache = sys.argv[1], Path(sys.argv[2])
start = time.perf_counter()
tokenizer = WordTokenizer(WordTokenizerConfig(), pretokenized=True)  # imports NLTK
made = time.perf_counter() - start
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
corpus = CORPORA.option("wikitext-103").make(WikiTextConfig(root=root), cache)
data = tokenize_corpus(corpus, tokenizer, cache)
seconds = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "tokenizer_s": made, "from_cache": data.from_cache,
                  "rss_before_mb": before / 1024, "rss_after_mb": after / 1024,
                  "ids_mb": sum(a.nbytes for a in data.ids.values()) / 2**20}))
"""


# `python -m lmexp.prepare` in a fresh interpreter that then reports its own peaks: this
# process's RUSAGE_CHILDREN would be the largest of every child so far, not this preparation's.
PREPARE = """
import json, resource, sys
from lmexp.prepare import main
try:
    main(sys.argv[1:])
finally:
    peak = lambda who: resource.getrusage(who).ru_maxrss / 1024
    print(json.dumps({"main_mb": peak(resource.RUSAGE_SELF), "workers_mb": peak(resource.RUSAGE_CHILDREN)}),
          file=sys.stderr)
"""


def prepare(args: list[str], cache: Path) -> tuple[dict, float, dict]:
    """(prepare's JSON, wall seconds, its peak RSS in MB: main, workers) of one `python -m lmexp.prepare`."""
    env = {**os.environ, "LMEXP_CACHE": str(cache)}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", PREPARE, *args], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"prepare {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    peaks = json.loads(result.stderr.strip().splitlines()[-1])
    return json.loads(result.stdout), wall, {k: round(v) for k, v in peaks.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"), help="the real corpora")
    parser.add_argument("--folder", default=None, help="where the stand-in corpus goes (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the corpus and the caches")
    parser.add_argument("--only", default="word,hit,bpe")
    parser.add_argument("--train-mb", type=float, default=TRAIN_BYTES / 1e6, help="the stand-in's train split")
    parser.add_argument("--out", default=None, help="the JSON results (default: prepare_large.json in the work folder)")
    args = parser.parse_args()
    shared = Path(args.shared)
    missing = [s for s in SOURCES if not (shared / s).is_file()]
    if missing:
        sys.exit(f"prepare_large: {', '.join(str(shared / m) for m in missing)} not found; "
                 f"set --shared to the folder holding ptb/, wikitext-2/ and tinyshakespeare/")
    work = Path(args.folder) if args.folder else Path(tempfile.mkdtemp(prefix="lmexp-wt103-"))
    import torch

    import lmexp.data.cache as cache_module

    results = {"cpu_count": os.cpu_count(), "workers": cache_module.workers(), "torch": torch.__version__,
               "torch_threads": torch.get_num_threads(), "load_before": os.getloadavg()}
    start = time.perf_counter()
    results["bytes"] = build(shared, work / "wikitext-103", int(args.train_mb * 1e6))
    results["build_s"] = round(time.perf_counter() - start, 1)
    data = ["data=wikitext", "data.name=wikitext-103", f"data.root={work / 'wikitext-103'}"]
    steps = args.only.split(",")
    if "word" in steps or "hit" in steps:
        cache = work / "cache-word"
        if "word" in steps:
            report, wall, rss = prepare([*data, "tokenizer=word"], cache)
            train = report["splits"]["train"]
            results["word"] = {"wall_s": round(wall, 1), "prepare_s": report["seconds"], "peak_rss_mb": rss["main_mb"],
                               "worker_peak_rss_mb": rss["workers_mb"],
                               "from_cache": report["from_cache"], "vocab": report["vocab_size"],
                               "train_tokens": train["tokens"], "train_words": train["words"]}
        if "hit" in steps:
            out = subprocess.run([sys.executable, "-c", HIT, str(work / "wikitext-103"), str(cache)], cwd=ROOT,
                                 capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"cache hit failed:\n{out.stderr[-3000:]}")
            hit = json.loads(out.stdout)
            report, wall, rss = prepare([*data, "tokenizer=word"], cache)
            results["hit"] = {"tokenize_corpus_s": round(hit["seconds"], 3), "from_cache": hit["from_cache"],
                              "make_tokenizer_s": round(hit["tokenizer_s"], 3),
                              "ids_mb": round(hit["ids_mb"]), "rss_before_mb": round(hit["rss_before_mb"]),
                              "rss_after_mb": round(hit["rss_after_mb"]), "prepare_s": report["seconds"],
                              "prepare_wall_s": round(wall, 1), "prepare_from_cache": report["from_cache"],
                              "prepare_peak_rss_mb": rss["main_mb"]}
    if "bpe" in steps:
        report, wall, rss = prepare([*data, "tokenizer=bpe"], work / "cache-bpe")
        results["bpe"] = {"wall_s": round(wall, 1), "prepare_s": report["seconds"], "vocab": report["vocab_size"],
                          "peak_rss_mb": rss["main_mb"], "worker_peak_rss_mb": rss["workers_mb"],
                          "train_tokens": report["splits"]["train"]["tokens"], "from_cache": report["from_cache"]}
        seconds = json.loads((Path(report["cache"]) / "meta.json").read_text())["seconds"]  # the cache's own timing
        results["bpe"].update(fit_s=seconds["fit"], encode_s=round(seconds["total"] - seconds["fit"], 2))
    results["load_after"] = os.getloadavg()
    # BPE training time follows the number of distinct words, which the stand-in has too few of.
    results["word_types"] = {"stand_in": results.get("word", {}).get("vocab"), "wikitext_103": WT103_TYPES}
    got = lambda step, key: results.get(step, {}).get(key, 0)  # noqa: E731 - a step left out passes
    results["ok"] = (got("word", "prepare_s") < 300 and got("bpe", "prepare_s") < 300
                     and got("hit", "tokenize_corpus_s") < 2 and got("hit", "prepare_s") < 2)
    if not args.keep and not args.folder:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out) if args.out else (work / "prepare_large.json" if args.keep or args.folder else None)
    if out:
        out.write_text(json.dumps(results, indent=1) + "\n")
    rows = [("corpus build", results["build_s"], "")]
    for name, key, target in (("word prepare", "word", 300), ("bpe prepare", "bpe", 300)):
        if key in results:
            rows.append((name, results[key]["prepare_s"], f"< {target} s"))
    if "hit" in results:
        rows += [("hit: tokenize_corpus", results["hit"]["tokenize_corpus_s"], "< 2 s"),
                 ("hit: lmexp.prepare", results["hit"]["prepare_s"], "< 2 s")]
    print(f"cpu_count {results['cpu_count']}, workers {results['workers']}, torch {results['torch']} "
          f"({results['torch_threads']} threads), load {results['load_before']} -> {results['load_after']}")
    for name, seconds, target in rows:
        print(f"{name:<24}{seconds:>10.2f} s  {target}")
    if "bpe" in results:
        types = results["word_types"]["stand_in"]
        print(f"note: the stand-in has {f'{types:,}' if types else 'far fewer'} word types, WikiText-103 "
              f"{WT103_TYPES:,}; BPE training time grows with them, so bpe fit_s here understates WikiText-103's")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
