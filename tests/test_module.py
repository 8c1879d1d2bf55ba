"""The LightningModule under a real Trainer: state carried in evaluation, exact sums."""

import math

import pytorch_lightning as pl
import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import CONF_DIR
from lmexp.run import Run


def setup_run(cache_dir, *overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["model.embedding_size=32", "model.hidden_size=32", "logger=none",
                                           f"paths.cache_dir={cache_dir}", *overrides])
    run = Run.from_config(cfg)
    return run.module, run.datamodule


def validate(module, dm):
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, use_distributed_sampler=False)
    (metrics,) = trainer.validate(module, datamodule=dm, verbose=False)
    return metrics


def test_validation_carries_state_across_windows(cache_dir):
    """With the state carried, cutting the same rows into windows of 7 or of 200 tokens
    scores the same tokens in the same context, so the perplexity is the same."""
    # A large input scale makes the state matter even in an untrained model.
    module, dm = setup_run(cache_dir, "data.bptt=200", "embedding.init_std=1.0")
    long_windows = validate(module, dm)
    dm.config.bptt = 7
    short_windows = validate(module, dm)
    assert short_windows["val/tokens"] == long_windows["val/tokens"]
    assert short_windows["val/ppl"] == pytest.approx(long_windows["val/ppl"], rel=1e-5)
    # Resetting the state at each window (what a module that forgot to carry it would do)
    # gives another number, so the equality above is not an accident.
    module.on_validation_batch_start = lambda *a: module._state.__setitem__("val", None)
    reset = validate(module, dm)["val/ppl"]
    assert abs(reset / long_windows["val/ppl"] - 1) > 1e-3


def test_validation_scores_every_token_once(cache_dir):
    module, dm = setup_run(cache_dir, "data.eval_batch_size=4")
    metrics = validate(module, dm)
    n = len(dm.corpus.ids["valid"])
    assert metrics["val/tokens"] == 4 * (n // 4 - 1)
    # An untrained model is near uniform: perplexity close to the vocabulary size.
    assert 0.5 * dm.vocab_size < metrics["val/ppl"] < 2 * dm.vocab_size
    assert metrics["val/ppl"] == pytest.approx(math.exp(metrics["val/loss"]), rel=1e-6)


def test_learned_embedding_init_std(cache_dir):
    module, _ = setup_run(cache_dir, "embedding.init_std=0.5")
    assert module.model.embedding.weight.std().item() == pytest.approx(0.5, rel=0.02)
    default, _ = setup_run(cache_dir)  # the LSTM's own uniform(-0.1, 0.1)
    assert default.model.embedding.weight.abs().max().item() <= torch.tensor(0.1).item()  # 0.1 in float32
