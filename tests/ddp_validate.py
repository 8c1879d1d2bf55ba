"""Validate the models of test_ddp.py with N processes and write their metrics.

Run by test_ddp.py as `python ddp_validate.py N OUT_DIR CORPUS_DIR CACHE_DIR`; Lightning's DDP
launcher starts the other processes by running this same command again. Each model of MODELS
is built from its overrides and given the weights that the test saved in OUT_DIR/<name>.pt, so
1 and N processes score one and the same model. Rank 0 writes OUT_DIR/metrics-N.json (the
logged metrics, reduced over the processes); every rank writes OUT_DIR/share-N-<rank>.json
(what its own loader held: the rows or windows, batches and target tokens it scored).

test_ddp.py imports this file for ``build`` and ``validate`` and runs the one-process case in
its own process.
"""

import json
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir

from lmexp.data.datamodule import IGNORE
from lmexp.run import Run

ROOT = Path(__file__).resolve().parent.parent

# An LSTM reading 8 rows (4 a process) and a GPT-2 reading windows of 25 tokens, 3 a batch, whose
# windows the test checks do not divide evenly between 2 processes.
MODELS = {
    "lstm": ["model=lstm", "model.embedding_size=32", "model.hidden_size=32", "data.eval_batch_size=8",
             "data.bptt=50"],
    "gpt2": ["model=gpt2", "model.size=tiny", "model.n_layer=2", "model.n_head=2", "model.n_embd=32",
             "model.block_size=25", "data.eval_batch_size=3"],
}


def config(name: str, corpus: Path, cache_dir: Path):
    data = [f"data.{split}={corpus / f'{split}.txt'}" for split in ("train", "valid", "test")]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[*MODELS[name], "data=text", *data, "logger=none",
                                            f"paths.cache_dir={cache_dir}"])


def build(name: str, corpus: Path, cache_dir: Path, seed: int = 0, std: float = 0.0) -> Run:
    """The run of model ``name``; with ``std`` > 0, every parameter redrawn from N(0, std²) with
    ``seed``: logits far from uniform, so that which tokens are scored changes the perplexity."""
    run = Run.from_config(config(name, corpus, cache_dir))
    if std > 0:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in run.module.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * std)
    return run


def checksum(module: torch.nn.Module) -> float:
    return sum(float(p.double().abs().sum()) for p in module.state_dict().values())


def validate(run: Run, devices: int) -> tuple[dict, dict, int, int]:
    """(metrics, this process's share of validation, rank, world size) of ``trainer.validate`` and ``.test``."""
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                         logger=False, enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False)
    (metrics,) = trainer.validate(run.module, datamodule=run.datamodule, verbose=False)
    (tested,) = trainer.test(run.module, datamodule=run.datamodule, verbose=False)  # the same sums, another split
    metrics = {**metrics, **tested}
    loader = run.datamodule.val_dataloader()  # this process's rows or windows, now that it has a rank
    targets = [y[y != IGNORE] for _, y in loader]
    indices = getattr(loader.dataset, "indices", None)  # the windows of an attention model
    share = {"batches": len(loader), "targets": torch.cat([t.flatten() for t in targets]).tolist(),
             "windows": None if indices is None else list(indices)}
    return {**metrics, "checksum": checksum(run.module)}, share, trainer.global_rank, trainer.world_size


if __name__ == "__main__":
    devices, out, corpus, cache_dir = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
    metrics, shares, rank = {}, {}, 0
    for name in MODELS:
        run = build(name, corpus, cache_dir)
        run.module.load_state_dict(torch.load(out / f"{name}.pt", weights_only=True))
        metrics[name], shares[name], rank, world = validate(run, devices)
        metrics[name]["world_size"] = world
    (out / f"share-{devices}-{rank}.json").write_text(json.dumps(shares))
    if rank == 0:
        (out / f"metrics-{devices}.json").write_text(json.dumps(metrics))
    if torch.distributed.is_initialized():
        # Exiting with the gloo group alive lets its threads race the interpreter's teardown
        # ("terminate called without an active exception", seen once under load).
        torch.distributed.destroy_process_group()
