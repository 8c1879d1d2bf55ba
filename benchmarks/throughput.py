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


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=["logger=none", *overrides])


def plain_loop(cfg, dm, steps: int, warmup: int) -> float:
    import torch.nn.functional as F

    from lmexp.config import load_settings
    from lmexp.models import build_model
    from lmexp.module import detach
    from lmexp.optim import optimizer_spec
    from lmexp.regularization import dropout_rates

    s = load_settings(cfg)
    torch.manual_seed(s.seed)
    model = build_model(cfg.model, dm.vocab_size, dropout_rates(s.regularization)).train()
    build_optimizer, _ = optimizer_spec(s.names["optimizer"])
    optimizer = build_optimizer(model, s.optimizer)
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


def lightning_loop(cfg, dm, steps: int, warmup: int) -> float:
    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    from lmexp.config import load_settings
    from lmexp.module import LanguageModelModule

    s = load_settings(cfg)
    torch.manual_seed(s.seed)
    module = LanguageModelModule(OmegaConf.to_container(cfg, resolve=True), dm.corpus.vocab.itos)
    kwargs = {**s.trainer.kwargs(), "max_steps": warmup + steps, "max_epochs": -1, "limit_val_batches": 0,
              "num_sanity_val_steps": 0, "enable_progress_bar": True}
    trainer = pl.Trainer(**kwargs, logger=False, enable_checkpointing=False, enable_model_summary=False,
                         use_distributed_sampler=False)

    class Timer(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == warmup:
                self.start = time.perf_counter()
                self.tokens_before = pl_module.train_tokens

    timer = Timer()
    trainer.callbacks.append(timer)
    trainer.fit(module, datamodule=dm)
    return (module.train_tokens - timer.tokens_before) / (time.perf_counter() - timer.start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="alternate the two loops this many times each")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from lmexp.config import load_settings
    from lmexp.data.datamodule import LMDataModule
    from lmexp.train import cache_dir

    cfg = compose(args.overrides)
    s = load_settings(cfg)
    dm = LMDataModule(s.names["data"], s.data, s.names["tokenizer"], s.tokenizer, cache_dir(cfg))
    dm.setup()
    plain, framework = [], []
    for _ in range(args.rounds):  # alternate, so a slow spell of the machine hits both
        plain.append(plain_loop(cfg, dm, args.steps, args.warmup))
        framework.append(lightning_loop(cfg, dm, args.steps, args.warmup))
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
