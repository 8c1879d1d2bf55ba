"""Time `python -m lmexp` with no arguments from a cold cache, as a new user runs it.

    python benchmarks/default_run.py [--threads 2]

Checks the two promises of the default run: it finishes in under 3 minutes on a 2-core CPU,
and its test perplexity is far below the unigram perplexity of the same test tokens.
The child is pinned to --threads (torch's threads, the tokenizing processes and the Rust
tokenizers' pool; see run_probe.py), and ``threads`` in the output is what the run's own
process had, read back from it. A probe callback is the one argument added (it records the
thread count and the training time and costs nothing measurable). ``wall_s`` is the whole
command, imports and tokenizing included; ``train_s`` the training batches alone.
Prints a JSON line; exits 1 if a promise is broken.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run_probe import CALLBACK, pinned_env, read_probe


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=180.0)
    parser.add_argument("overrides", nargs="*", help="for a quick check only, e.g. trainer.max_steps=5")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = pinned_env(args.threads, LMEXP_CACHE=str(Path(tmp) / "cache"), WANDB_MODE="offline")
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "lmexp", "trainer.enable_progress_bar=false", CALLBACK,
                                 *args.overrides], cwd=tmp, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if result.returncode != 0:
            print(result.stderr[-3000:], file=sys.stderr)
            return 1
        (results_file,) = Path(tmp, "outputs").glob("*/*/results.json")
        results = json.loads(results_file.read_text())
        probe = read_probe(results_file.parent)
    report = {"threads": probe["threads"], "threads_asked": args.threads, "tokenize_workers": args.threads,
              "cpu_count": os.cpu_count(), "overrides": args.overrides, "wall_s": round(wall, 1),
              "run_wall_s": round(results["wall_time_s"], 1), "train_s": probe["train_s"], "fit_s": probe["fit_s"],
              "test_ppl": round(results["test_ppl"], 2), "test_unigram_ppl": round(results["test_unigram_ppl"], 2),
              "best_val_ppl": round(results["best_val_ppl"], 2), "epochs": results["epochs"],
              "steps": results["steps"], "train_tokens_per_sec": round(results["train_tokens_per_sec"])}
    report["ok"] = (probe["threads"] == args.threads and wall < args.budget_s
                    and results["test_ppl"] < 0.5 * results["test_unigram_ppl"])
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
