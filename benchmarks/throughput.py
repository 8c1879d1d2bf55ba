"""Training tokens per second: lmexp's Lightning loop against a plain PyTorch loop.

Both train the same model (built by lmexp's registry from the composed config) on the same
batches of the embedded corpus with the same optimizer and gradient clipping; the framework
must cost no more than a few percent.

    python benchmarks/throughput.py [--steps 60] [--threads 2] [override ...]

Prints a JSON line with both rates, the thread count and the overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def plain_loop(run, steps: int, warmup: int) -> float:
    import torch.nn.functional as F

    from lmexp.models import build_model
    from lmexp.module import detach
    from lmexp.optim import OPTIMIZERS
    from lmexp.regularization import dropout_rates

    s, dm = run.settings, run.datamodule
    torch.manual_seed(s.seed)
    model = build_model(s.model, dm.vocab_size, dropout_rates(s.regularization)).train()
    optimizer = OPTIMIZERS.option(s.optimizer.name).make(model, s.optimizer)
    clip = s.trainer.gradient_clip_val
    state, tokens, start = None, 0, 0.0
    for i, (x, y) in enumerate(dm.train_dataloader()):
        if i == warmup:
            start, tokens = time.perf_counter(), 0
        if i == warmup + steps:
            break
        logits, state = model(x, detach(state))
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        tokens += y.numel()
    return tokens / (time.perf_counter() - start)


def lightning_loop(run, steps: int, warmup: int) -> float:
    import tempfile

    import pytorch_lightning as pl

    from lmexp.callbacks import LearningRate, TokenThroughput
    from lmexp.module import LanguageModelModule

    torch.manual_seed(run.settings.seed)
    module = LanguageModelModule(run.module.hparams.config, run.corpus.vocab.itos)
    throughput = TokenThroughput()

    class Timer(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == warmup:
                self.start = time.perf_counter()
                self.tokens_before = throughput.tokens

    timer = Timer()
    with tempfile.TemporaryDirectory() as scratch:
        trainer = run.trainer(Path(scratch), callbacks=[LearningRate(), throughput, timer], loggers=[],
                              max_steps=warmup + steps, max_epochs=-1, limit_val_batches=0, num_sanity_val_steps=0,
                              enable_progress_bar=True, enable_checkpointing=False, enable_model_summary=False)
        trainer.fit(module, datamodule=run.datamodule)
    return (throughput.tokens - timer.tokens_before) / (time.perf_counter() - timer.start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="alternate the two loops this many times each")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from lmexp.cli import compose
    from lmexp.run import Run

    run = Run.from_config(compose(["logger=none", *args.overrides]))
    s = run.settings
    plain, framework = [], []
    for _ in range(args.rounds):  # alternate, so a slow spell of the machine hits both
        plain.append(plain_loop(run, args.steps, args.warmup))
        framework.append(lightning_loop(run, args.steps, args.warmup))
    best_plain, best_framework = max(plain), max(framework)
    print(json.dumps({
        "model": s.names["model"], "overrides": args.overrides, "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "steps": args.steps, "batch_tokens": s.data.batch_size * s.data.bptt,
        "plain_tokens_per_sec": round(best_plain), "lmexp_tokens_per_sec": round(best_framework),
        "overhead_percent": round(100 * (best_plain / best_framework - 1), 2),
        "all_plain": [round(p) for p in plain], "all_lmexp": [round(f) for f in framework],
    }))


if __name__ == "__main__":
    sys.exit(main())
