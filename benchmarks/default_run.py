"""Time `python -m lmexp` with no arguments from a cold cache, as a new user runs it.

    python benchmarks/default_run.py [--threads 2]

Checks the two promises of the default run: it finishes in under 3 minutes on a 2-core CPU,
and its test perplexity is far below the unigram perplexity of the same test tokens.
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

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=180.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "LMEXP_CACHE": str(Path(tmp) / "cache"), "OMP_NUM_THREADS": str(args.threads),
               "WANDB_MODE": "offline"}
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "lmexp", "trainer.enable_progress_bar=false"],
                                cwd=tmp, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if result.returncode != 0:
            print(result.stderr[-3000:], file=sys.stderr)
            return 1
        (results_file,) = Path(tmp, "outputs").glob("*/*/results.json")
        results = json.loads(results_file.read_text())
    report = {"threads": args.threads, "cpu_count": os.cpu_count(), "wall_s": round(wall, 1),
              "test_ppl": round(results["test_ppl"], 2), "test_unigram_ppl": round(results["test_unigram_ppl"], 2),
              "best_val_ppl": round(results["best_val_ppl"], 2), "epochs": results["epochs"],
              "steps": results["steps"], "train_tokens_per_sec": round(results["train_tokens_per_sec"])}
    report["ok"] = wall < args.budget_s and results["test_ppl"] < 0.5 * results["test_unigram_ppl"]
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
