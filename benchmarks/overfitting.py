"""The overfitting study: one LSTM on Penn Treebank under each regularization preset.

    python benchmarks/overfitting.py [--ptb ../shared/data/ptb] [--epochs 4] [--width 128] [--threads 2] [--out DIR]

Runs the presets as one Hydra sweep (``python -m lmexp -m regularization=none,dropout,l2,l1,awd``),
the same model, data and optimizer for each (AdamW with its decoupled weight decay off, so that
the regularization group alone differs), then scores each run's best checkpoint (by validation)
and its last one on the train and validation splits with dropout off, and prints a Markdown
table: train and validation perplexity and their gap. Writes the rows to <out>/study.json.

The sweep's process is pinned to --threads (see run_probe.py), and each run reports the thread
count its own process had. Three clocks, because the sweep's wall time is mostly not training:
``train_s`` sums each run's training batches (forward, backward, step); ``fit_s`` adds the
validation between epochs; ``sweep_wall_s`` is the whole command: process start, tokenizing,
fitting, testing. Scoring the checkpoints afterwards is ``score_s``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from run_probe import CALLBACK, pinned_env, read_probe

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ["none", "dropout", "l2", "l1", "awd"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ptb", default=str(ROOT.parent / "shared" / "data" / "ptb"))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--width", type=int, default=128, help="embedding and hidden size (tied, no projection)")
    parser.add_argument("--out", default=str(ROOT / "outputs" / "overfitting"))
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # the scoring below runs in this process
    if not Path(args.ptb, "ptb.train.txt").is_file():
        sys.exit(f"no Penn Treebank at {args.ptb}; pass --ptb <folder with ptb.train.txt>")
    out = Path(args.out).resolve()

    sweep = [sys.executable, "-m", "lmexp", "-m", f"regularization={args.presets}", "data=ptb",
             f"data.root={args.ptb}", "model=lstm", "model.num_layers=2", f"model.embedding_size={args.width}",
             f"model.hidden_size={args.width}", "optimizer.weight_decay=0", f"trainer.max_epochs={args.epochs}",
             "logger=csv", f"hydra.sweep.dir={out}", CALLBACK, *args.extra]
    started = time.perf_counter()
    subprocess.run(sweep, check=True, cwd=ROOT, env=pinned_env(args.threads))
    sweep_wall_s = time.perf_counter() - started

    from lmexp.evaluate import evaluate

    started, rows = time.perf_counter(), []
    for run in sorted((p for p in out.iterdir() if (p / "results.json").exists()), key=lambda p: int(p.name.split("-")[0])):
        overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
        preset = next(o.split("=", 1)[1] for o in overrides if o.startswith("regularization="))
        results = json.loads((run / "results.json").read_text())
        probe = read_probe(run)
        row = {"preset": preset, "epochs": results["epochs"], "test_ppl": results["test_ppl"], "run": str(run),
               "threads": probe["threads"], "train_s": probe["train_s"], "fit_s": probe["fit_s"],
               "run_wall_s": round(results["wall_time_s"], 1)}
        for which, ckpt in (("best", results["best_checkpoint"]), ("last", str(run / "checkpoints" / "last.ckpt"))):
            for split in ("train", "valid"):
                row[f"{which}_{split}_ppl"] = evaluate(ckpt, split)["ppl"]
        rows.append(row)
    clocks = {"train_s": round(sum(r["train_s"] for r in rows)), "fit_s": round(sum(r["fit_s"] for r in rows)),
              "sweep_wall_s": round(sweep_wall_s), "score_s": round(time.perf_counter() - started)}
    threads = sorted({r["threads"] for r in rows})
    (out / "study.json").write_text(json.dumps({"rows": rows, **clocks, "threads": threads,
                                                "threads_asked": args.threads, "cpu_count": os.cpu_count(),
                                                "command": sweep[2:]}, indent=1))
    print(f"\n{len(rows)} runs of {args.epochs} epochs, torch threads {threads} on {os.cpu_count()} cores: "
          f"{clocks['train_s'] / 60:.1f} min in training batches, {clocks['fit_s'] / 60:.1f} min with validation, "
          f"{clocks['sweep_wall_s'] / 60:.1f} min for the whole sweep (tokenizing, testing, process starts); "
          f"scoring {clocks['score_s'] / 60:.1f} min\n")
    print("| preset | train ppl | valid ppl | gap | last epoch: train | valid | gap | test ppl (best) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['best_train_ppl']:.1f} | {r['best_valid_ppl']:.1f} | "
              f"{r['best_valid_ppl'] - r['best_train_ppl']:.1f} | {r['last_train_ppl']:.1f} | "
              f"{r['last_valid_ppl']:.1f} | {r['last_valid_ppl'] - r['last_train_ppl']:.1f} | {r['test_ppl']:.1f} |")


if __name__ == "__main__":
    main()
