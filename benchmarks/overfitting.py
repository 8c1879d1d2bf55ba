"""The overfitting study: one LSTM on Penn Treebank under each regularization preset.

    python benchmarks/overfitting.py [--ptb ../shared/data/ptb] [--epochs 4] [--width 128] [--out DIR]

Runs the presets as one Hydra sweep (``python -m lmexp -m regularization=none,dropout,l2,l1,awd``),
the same model, data and optimizer for each (AdamW with its decoupled weight decay off, so that
the regularization group alone differs), then scores each run's best checkpoint (by validation)
and its last one on the train and validation splits with dropout off, and prints a Markdown
table: train and validation perplexity and their gap. Writes the rows to <out>/study.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ["none", "dropout", "l2", "l1", "awd"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ptb", default=str(ROOT.parent / "shared" / "data" / "ptb"))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--width", type=int, default=128, help="embedding and hidden size (tied, no projection)")
    parser.add_argument("--out", default=str(ROOT / "outputs" / "overfitting"))
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every run")
    args = parser.parse_args()
    if not Path(args.ptb, "ptb.train.txt").is_file():
        sys.exit(f"no Penn Treebank at {args.ptb}; pass --ptb <folder with ptb.train.txt>")
    out = Path(args.out).resolve()

    sweep = [sys.executable, "-m", "lmexp", "-m", f"regularization={args.presets}", "data=ptb",
             f"data.root={args.ptb}", "model=lstm", "model.num_layers=2", f"model.embedding_size={args.width}",
             f"model.hidden_size={args.width}", "optimizer.weight_decay=0", f"trainer.max_epochs={args.epochs}",
             "logger=csv", f"hydra.sweep.dir={out}", *args.extra]
    started = time.perf_counter()
    subprocess.run(sweep, check=True, cwd=ROOT)
    train_s = time.perf_counter() - started

    from lmexp.evaluate import evaluate

    rows = []
    for run in sorted((p for p in out.iterdir() if (p / "results.json").exists()), key=lambda p: int(p.name.split("-")[0])):
        overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
        preset = next(o.split("=", 1)[1] for o in overrides if o.startswith("regularization="))
        results = json.loads((run / "results.json").read_text())
        row = {"preset": preset, "epochs": results["epochs"], "test_ppl": results["test_ppl"], "run": str(run)}
        for which, ckpt in (("best", results["best_checkpoint"]), ("last", str(run / "checkpoints" / "last.ckpt"))):
            for split in ("train", "valid"):
                row[f"{which}_{split}_ppl"] = evaluate(ckpt, split)["ppl"]
        rows.append(row)
    (out / "study.json").write_text(json.dumps({"rows": rows, "train_s": round(train_s), "threads": 2,
                                                "cpu_count": os.cpu_count(), "command": sweep[2:]}, indent=1))
    print(f"\n{args.epochs} epochs each, {train_s / 60:.0f} min of training on {os.cpu_count()} cores\n")
    print("| preset | train ppl | valid ppl | gap | last epoch: train | valid | gap | test ppl (best) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['best_train_ppl']:.1f} | {r['best_valid_ppl']:.1f} | "
              f"{r['best_valid_ppl'] - r['best_train_ppl']:.1f} | {r['last_train_ppl']:.1f} | "
              f"{r['last_valid_ppl']:.1f} | {r['last_valid_ppl'] - r['last_train_ppl']:.1f} | {r['test_ppl']:.1f} |")


if __name__ == "__main__":
    main()
