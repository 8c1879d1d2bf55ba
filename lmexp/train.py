"""One run: build data, model, trainer and loggers; fit; test the best checkpoint; report."""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from lmexp.config import load_settings
from lmexp.data.datamodule import LMDataModule
from lmexp.embeddings import EmbeddingContext, embedding_spec
from lmexp.loggers import close as close_loggers
from lmexp.loggers import logger_spec
from lmexp.models import block_size, parameter_counts
from lmexp.module import LanguageModelModule

log = logging.getLogger("lmexp")

# Lightning's advice to add DataLoader workers does not apply: batches are slices of an
# array already in memory, and workers would only add process start-up and copies.
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
# The CSV file goes into the run folder, which already holds Hydra's files: nothing is lost.
warnings.filterwarnings("ignore", message=r".*Experiment logs directory .* exists and is not empty.*")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")


class _NoAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_NoAdverts())


def is_tied(model) -> bool:
    """Whether another layer (the output layer) shares the input embedding's matrix."""
    weight = model.embedding.weight
    return any(p is weight for name, p in model.named_parameters(remove_duplicate=False)
               if not name.startswith("embedding."))


def cache_dir(cfg: DictConfig) -> Path:
    return Path(os.path.expanduser(str(cfg.paths.cache_dir)))


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Train, validate and test one configuration; return (and write) results.json's dict."""
    started = time.perf_counter()
    settings = load_settings(cfg)  # every setting checked before any work
    names = settings.names
    pl.seed_everything(settings.seed, workers=True, verbose=False)

    datamodule = LMDataModule(names["data"], settings.data, names["tokenizer"], settings.tokenizer, cache_dir(cfg),
                              eval_stride=settings.eval.stride, seed=settings.seed)
    datamodule.setup()  # the model's size depends on the vocabulary
    config = OmegaConf.to_container(cfg, resolve=True)
    trained_tokenizer = datamodule.corpus.path / "tokenizer.json"  # BPE keeps what it learned there
    module = LanguageModelModule(config, datamodule.corpus.vocab.itos,
                                 trained_tokenizer.read_text() if trained_tokenizer.exists() else None)
    datamodule.block_size = block_size(module.model)  # the batch layout depends on the model
    module.split_stats = {stage: datamodule.corpus.stats[split] for stage, split in (("val", "valid"), ("test", "test"))
                          if datamodule.has(split)}
    init_embedding, _ = embedding_spec(names["embedding"])
    embedding_stats = init_embedding(module.model.embedding, settings.embedding, EmbeddingContext(
        datamodule.corpus.vocab, datamodule.corpus.ids["train"], cache_dir(cfg), datamodule.corpus.path.name,
        tied=is_tied(module.model)))
    if embedding_stats:
        log.info("embedding: %s", embedding_stats)
    params, params_no_embedding = parameter_counts(module.model)
    log.info("model: %s, %s parameters (%s without embeddings), vocabulary %d", names["model"], f"{params:,}",
             f"{params_no_embedding:,}", datamodule.vocab_size)

    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    build_loggers, _ = logger_spec(names["logger"])
    loggers = build_loggers(settings.logger, run_dir, name=f"{names['model']}-{names['data']}",
                            group=names["data"], run_config=config)
    checkpoints = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best-{epoch}-{step}",
                                  monitor="val/ppl", mode="min", save_last=True, auto_insert_metric_name=True)
    trainer = pl.Trainer(
        **settings.trainer.kwargs(),
        logger=loggers or False,
        callbacks=[checkpoints],
        default_root_dir=str(run_dir),
        use_distributed_sampler=False,  # the datamodule gives each process its own rows
    )
    trainer.fit(module, datamodule=datamodule)
    best = checkpoints.best_model_path or None
    best_val = float(checkpoints.best_model_score) if checkpoints.best_model_score is not None else None
    if best_val is None and trainer.limit_val_batches != 0 and datamodule.has("valid"):
        (val,) = trainer.validate(module, datamodule=datamodule, verbose=False)  # max_steps came first
        best_val = val["val/ppl"]
    # A corpus without a test split (data.split=[0.9, 0.1, 0]) is not tested.
    (test,) = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False) \
        if datamodule.has("test") else ({},)

    results = {
        "model": names["model"],
        "data": names["data"],
        "tokenizer": names["tokenizer"],
        "params": params,
        "params_without_embeddings": params_no_embedding,
        **{f"embedding_{k}": v for k, v in embedding_stats.items()},
        "vocab_size": datamodule.vocab_size,
        "best_val_ppl": module.best_val.get("ppl", best_val),  # float64; the logged copy is float32
        "test_ppl": test.get("test/ppl"),
        "test_loss": test.get("test/loss"),
        "test_tokens": int(test["test/tokens"]) if test else None,
        "test_word_ppl": test.get("test/word_ppl"),
        "test_bpb": test.get("test/bpb"),
        "val_word_ppl": module.best_val.get("word_ppl"),
        "val_bpb": module.best_val.get("bpb"),
        "test_unigram_ppl": datamodule.unigram_perplexity("test") if test else None,
        "train_tokens_per_sec": module.train_tokens / module.train_seconds if module.train_seconds else None,
        "wall_time_s": time.perf_counter() - started,
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "best_checkpoint": best,
        "seed": settings.seed,
    }
    if trainer.is_global_zero:
        (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        for logger in loggers if test else []:
            logger.log_metrics({"test/unigram_ppl": results["test_unigram_ppl"]}, step=trainer.global_step)
        close_loggers(loggers)
        print(summary(results, run_dir), flush=True)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # A DDP run's process group, closed before exit: alive, its threads can race the
        # interpreter's teardown and abort a finished run. The next run of a sweep makes its own.
        torch.distributed.destroy_process_group()
    return results


def summary(r: dict, run_dir: Path) -> str:
    val = f"{r['best_val_ppl']:.2f}" if r["best_val_ppl"] is not None else "n/a"
    speed = f"{r['train_tokens_per_sec']:,.0f} tok/s" if r["train_tokens_per_sec"] else "n/a"
    test = (f"test ppl {r['test_ppl']:.2f} (unigram {r['test_unigram_ppl']:.2f})" if r["test_ppl"] is not None
            else "no test split")
    return (f"lmexp: {r['model']} on {r['data']}: {test}, best val ppl {val}, {r['epochs']} epochs, "
            f"{r['steps']} steps, {speed}, {r['wall_time_s']:.0f} s -> {run_dir}")
