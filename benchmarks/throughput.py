"""Training tokens per second: lmexp's Lightning loop against a plain PyTorch loop.

Both train the same model (built by lmexp's registry from the composed config) on the same
batches of the embedded corpus with the same loss, optimizer and gradient clipping, on the same
device; the framework must cost no more than a few percent.

    python benchmarks/throughput.py [--steps 60] [--warmup 5] [--rounds 3] [--threads 2]
                                    [--device cuda|cpu] [override ...]

Each loop's clock runs over the same span: the ``steps`` steps after ``warmup`` untimed ones,
from the start of the first (its batch already on the device) to the end of the last
(optimizer step done, the GPU synchronised), so Lightning's start-up and teardown are outside
it as the plain loop's are. The two loops take turns, the order flipped every round, and the
overhead is computed from the median rates.
Prints a JSON line with the rates, the thread count torch actually had and the overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

ROOT = Path(__file__).resolve().parent.parent


def synchronizer(device: torch.device):
    # A GPU runs behind Python: without this the clock stops at the last launch, not the last step.
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def plain_loop(run, steps: int, warmup: int, device: torch.device) -> float:
    from lmexp.fused_loss import applies, training_loss
    from lmexp.models import build_model
    from lmexp.module import detach
    from lmexp.options.optimizer import OPTIMIZERS
    from lmexp.regularization import dropout_rates

    s, dm = run.settings, run.datamodule
    torch.manual_seed(s.seed)
    model = build_model(s.model, dm.vocab_size, dropout_rates(s.regularization)).to(device).train()
    optimizer = OPTIMIZERS.option(s.optimizer.name).make(model, s.optimizer)
    clip, sync = s.trainer.gradient_clip_val, synchronizer(device)
    fused = applies(model, s.trainer.fused_loss, s.trainer.compile, autocast=False)
    state, tokens, start = None, 0, 0.0
    for i, (x, y) in enumerate(dm.train_dataloader()):
        x, y = x.to(device), y.to(device)
        if i == warmup:  # Lightning too has moved the batch before its on_train_batch_start
            sync()
            start, tokens = time.perf_counter(), 0
        loss, state = training_loss(model, x, y, detach(state), fused)  # the loss lmexp's training step takes
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        tokens += y.numel()
        if i == warmup + steps - 1:
            sync()
            return tokens / (time.perf_counter() - start)
    raise SystemExit(f"the train split has fewer than warmup + steps = {warmup + steps} batches")


def lightning_loop(run, steps: int, warmup: int, device: torch.device, progress_bar: bool = True,
                   callbacks: Sequence = ()) -> float:
    import tempfile

    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ProgressBar

    from lmexp.callbacks import LearningRate, TokenThroughput
    from lmexp.module import LanguageModelModule
    from lmexp.run import build_callbacks

    torch.manual_seed(run.settings.seed)
    module = LanguageModelModule(run.module.hparams.config, run.corpus.vocab.itos)
    throughput, sync = TokenThroughput(), synchronizer(device)

    class Timer(pl.Callback):  # last in the list: the other callbacks' hooks fall inside the span
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == warmup:
                sync()
                self.start, self.tokens_before = time.perf_counter(), throughput.tokens

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == warmup + steps - 1:
                sync()
                self.seconds = time.perf_counter() - self.start
                self.tokens = throughput.tokens - self.tokens_before

    timer = Timer()
    # One device, named: accelerator=auto with devices=auto could pick a GPU, or all of them.
    devices = [device.index or 0] if device.type == "cuda" else 1
    with tempfile.TemporaryDirectory() as scratch:
        # The progress bar a run shows (callbacks.progress_bar), not Lightning's default one.
        bars = [c for c in build_callbacks(run.settings, Path(scratch)) if isinstance(c, ProgressBar)] \
            if progress_bar else []
        trainer = run.trainer(Path(scratch), callbacks=[LearningRate(), throughput, *bars, *callbacks, timer], loggers=[],
                              accelerator=device.type, devices=devices, strategy="auto",
                              max_steps=warmup + steps, max_epochs=-1, limit_val_batches=0, num_sanity_val_steps=0,
                              enable_progress_bar=progress_bar, enable_checkpointing=False, enable_model_summary=False)
        trainer.fit(module, datamodule=run.datamodule)
    return timer.tokens / timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="times each loop runs, taking turns")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from lmexp.cli import compose
    from lmexp.run import Run

    run = Run.from_config(compose(["logger=none", *args.overrides]))
    s = run.settings
    if s.trainer.keep_freed_memory:  # process-wide: the plain loop too, from the first round (lmexp's sets it anyway)
        from lmexp.allocator import keep_freed_memory

        keep_freed_memory()
    rates = {"plain": [], "lmexp": []}
    loops = {"plain": plain_loop, "lmexp": lightning_loop}
    for r in range(args.rounds):
        # Taking turns spreads a slow spell of the shared machine over both; flipping the order
        # keeps either loop from always running second (warm caches, or a tired CPU).
        for name in (("plain", "lmexp") if r % 2 == 0 else ("lmexp", "plain")):
            rates[name].append(loops[name](run, args.steps, args.warmup, device))
    plain, framework = statistics.median(rates["plain"]), statistics.median(rates["lmexp"])
    print(json.dumps({
        "model": s.names["model"], "overrides": args.overrides, "device": str(device),
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "steps": args.steps,
        "warmup": args.warmup, "rounds": args.rounds, "batch_tokens": s.data.batch_size * s.data.bptt,
        "plain_tokens_per_sec": round(plain), "lmexp_tokens_per_sec": round(framework),
        "overhead_percent": round(100 * (plain / framework - 1), 2),
        "best_overhead_percent": round(100 * (max(rates["plain"]) / max(rates["lmexp"]) - 1), 2),
        "all_plain": [round(p) for p in rates["plain"]], "all_lmexp": [round(f) for f in rates["lmexp"]],
    }))


if __name__ == "__main__":
    sys.exit(main())
