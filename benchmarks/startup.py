"""How long `python -m lmexp` takes to answer when it will not train: a config mistake, --help, --cfg job.

    python benchmarks/startup.py [--rounds 5] [--source DIR] [--threads 2]

Each command runs once per round, the commands taking turns (the order flipped every round),
each in a fresh interpreter from an empty folder, as a user types it; the table gives the
median and the range of the rounds.
Two references run in the same rounds: the imports of torch and of Lightning alone, which any
check made after them pays first. ``--source``: the lmexp source tree to time (default: this
checkout), e.g. a worktree of an older commit, to compare like with like on the same day.
Prints one JSON line per command; exits 1 if a command's exit status is not the expected one,
a config error is not one line on stderr holding the expected text, or a config check's median
is 2 s or more.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run_probe import pinned_env

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 2.0

# name -> (arguments of python, expected exit status, text the output must contain)
COMMANDS = {
    "bad value": (["-m", "lmexp", "regularization.dropout=1.5"], 2, "regularization.dropout=1.5: must be in [0, 1)"),
    "missing file": (["-m", "lmexp", "data=text"], 2, "data.path=null"),
    "mistyped key": (["-m", "lmexp", "model.hiden_size=3"], 2, "model.hidden_size"),
    "--help": (["-m", "lmexp", "--help"], 0, "model"),
    "--cfg job": (["-m", "lmexp", "--cfg", "job"], 0, "hidden_size: 256"),
}
REFERENCES = {
    "import torch": (["-c", "import torch"], 0, ""),
    "import pytorch_lightning": (["-c", "import pytorch_lightning"], 0, ""),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--source", type=Path, default=ROOT)
    args = parser.parse_args()
    everything = {**COMMANDS, **REFERENCES}
    times: dict[str, list[float]] = {name: [] for name in everything}
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        env = pinned_env(args.threads, LMEXP_CACHE=str(Path(tmp) / "cache"), WANDB_MODE="offline")
        env["PYTHONPATH"] = os.pathsep.join([str(args.source.resolve()), env["PYTHONPATH"]])
        for r in range(args.rounds):
            for name in list(everything)[:: 1 if r % 2 == 0 else -1]:  # the order flipped every round
                argv, code, says = everything[name]
                start = time.perf_counter()
                done = subprocess.run([sys.executable, *argv], cwd=tmp, env=env, capture_output=True, text=True)
                times[name].append(time.perf_counter() - start)
                # a config error is one line on stderr; what is printed otherwise need only hold the text
                told = done.stderr.splitlines() if code else [done.stdout + done.stderr]
                if done.returncode != code or len(told) != 1 or says not in told[0]:
                    failures.append(f"{name}: exit {done.returncode}, {(done.stderr or done.stdout)[-300:]!r}")
    for name, values in times.items():
        median = statistics.median(values)
        print(json.dumps({"command": name, "median_s": round(median, 2), "min_s": round(min(values), 2),
                          "max_s": round(max(values), 2), "rounds": len(values), "threads": args.threads,
                          "reference": name in REFERENCES,
                          "ok": name in REFERENCES or median < BUDGET_S}))
        if name in COMMANDS and median >= BUDGET_S:
            failures.append(f"{name}: median {median:.2f} s >= {BUDGET_S} s")
    for failure in sorted(set(failures)):
        print(f"startup: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
