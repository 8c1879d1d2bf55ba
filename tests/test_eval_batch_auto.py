"""data.eval_batch_size=auto: an attention model's evaluation batch, the most windows that fit in
memory (at most a process's share of the longest evaluation split), chosen once and kept in the
run's config; the perplexity is the same as with any other batch."""

import json
import logging

import pytest
import torch
import yaml

from conftest import entry_here, train_here
from lmexp.cli import compose
from lmexp.data.datamodule import BlockWindows
from lmexp.errors import ConfigError
from lmexp.config import load_settings
from lmexp.memory import Estimate, largest_eval_batch, plan_batch
from lmexp.models.gpt2 import GPT2
from lmexp.run import Run

GPT = ["model=gpt2", "model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
       "data.batch_size=8", "data.effective_batch_size=null", "trainer.max_steps=3", "trainer.max_epochs=1",
       "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false", "logger=none"]


def test_auto_scores_each_split_in_one_batch_where_memory_allows_and_the_same_perplexity(tmp_path, cache_dir, capsys,
                                                                                        caplog):
    auto = train_here([*GPT, "data.eval_batch_size=auto"], tmp_path / "auto", cache_dir)
    fixed = train_here([*GPT, "data.eval_batch_size=4"], tmp_path / "fixed", cache_dir)
    assert auto["test_ppl"] == pytest.approx(fixed["test_ppl"], rel=1e-5)
    assert auto["best_val_ppl"] == pytest.approx(fixed["best_val_ppl"], rel=1e-5)
    # The choice is a number in the run's config (a resumed run and its checkpoints keep it):
    # on this machine's memory, every window of the longest evaluation split in one batch.
    chosen = yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())["data"]["eval_batch_size"]
    corpus = Run.from_config(compose([*GPT, f"paths.cache_dir={cache_dir}"])).corpus
    assert chosen == max(len(BlockWindows(corpus.ids[s], 32, None, evaluation=True)) for s in ("valid", "test"))
    # lmexp.evaluate chooses again for the split it scores, and scores the same.
    scored = json.loads(entry_here("lmexp.evaluate", [f"ckpt={auto['best_checkpoint']}", "data.eval_batch_size=auto"],
                                   cache_dir, capsys).strip().splitlines()[-1])
    assert scored["ppl"] == pytest.approx(auto["test_ppl"], rel=1e-5)
    # A checkpoint trained by two processes is still scored by one, which takes the whole split.
    checkpoint = torch.load(auto["best_checkpoint"], weights_only=False)
    checkpoint["hyper_parameters"]["config"]["trainer"].update(devices=2, strategy="ddp")
    torch.save(checkpoint, tmp_path / "two.ckpt")
    with caplog.at_level(logging.INFO, logger="lmexp"):
        scored = json.loads(entry_here("lmexp.evaluate", [f"ckpt={tmp_path / 'two.ckpt'}", "data.eval_batch_size=auto"],
                                       cache_dir, capsys).strip().splitlines()[-1])
    windows = len(BlockWindows(corpus.ids["test"], 32, None, evaluation=True))
    assert f"evaluation batch: {windows} windows on each process" in caplog.text
    assert scored["processes"] == 1 and scored["ppl"] == pytest.approx(auto["test_ppl"], rel=1e-5)


def test_auto_is_refused_for_a_recurrent_model(cache_dir):
    with pytest.raises(ConfigError, match="recurrent model's evaluation batch is its number of streams"):
        Run.from_config(compose(["model=lstm", "data.eval_batch_size=auto", "logger=none",
                                 f"paths.cache_dir={cache_dir}"]))


def test_auto_takes_what_fits_beside_the_weights_and_no_more_than_a_process_has():
    est = Estimate(weights=100, gradients=100, optimizer=200, per_row=10, eval_per_row=50, batch=1, eval_batch=1,
                   tokens=8, eval_fixed=30)
    assert largest_eval_batch(est, None, 1, 37) == 37  # no budget known: the whole split
    assert largest_eval_batch(est, 400 + 30 + 5 * 50 + 49, 1, 37) == 5  # the loss's chunks counted once
    assert largest_eval_batch(est, 400 + 30 + 5 * 50, 2, 7) == 4  # two processes: four windows each at most
    assert largest_eval_batch(est, 400, 1, 37) == 1  # nothing fits: one, which the plan then refuses


def test_auto_with_no_evaluation_split_takes_one_window():
    settings = load_settings(compose([*GPT, "data.eval_batch_size=auto"]))
    plan = plan_batch(GPT2(settings.model, 100), settings, 100, 32, key="no-split", eval_windows=None)
    assert plan.eval_batch == 1


def test_auto_evaluation_batch_keeps_a_fifth_of_the_memory_spare(monkeypatch):
    """data.eval_batch_size=auto fills four fifths of the budget, as data.batch_size=auto does."""
    import lmexp.memory

    settings = load_settings(compose(["model=gpt2", "model.n_layer=1", "model.n_head=2", "model.n_embd=32",
                                      "model.block_size=32", "data.batch_size=1", "data.effective_batch_size=null",
                                      "data.eval_batch_size=auto", "trainer.fused_loss=false",
                                      "trainer.accelerator=cpu", "logger=none"]))
    model = GPT2(settings.model, 100)
    est = plan_batch(model, settings, 100, 32, key="eval-share-a", eval_windows=10 ** 6).estimate
    fixed = est.weights + est.gradients + est.optimizer + est.eval_fixed
    budget = fixed + 50 * est.eval_per_row  # 40 rows fit in four fifths of it
    monkeypatch.setattr(lmexp.memory, "host_available", lambda: budget - est.weights)
    plan = plan_batch(model, settings, 100, 32, key="eval-share-b", eval_windows=10 ** 6)
    assert fixed + plan.eval_batch * est.eval_per_row <= 0.8 * budget < fixed + (plan.eval_batch + 1) * est.eval_per_row


def test_a_scored_models_evaluation_batch_counts_no_gradients(monkeypatch):
    """A model scored, not trained, holds its weights beside the evaluation: no gradients, no optimizer state."""
    import lmexp.memory
    from lmexp.memory import estimate, scoring_eval_batch

    settings = load_settings(compose(["model=gpt2", "model.n_layer=1", "model.n_head=2", "model.n_embd=64",
                                      "model.block_size=32", "data.eval_batch_size=auto", "trainer.fused_loss=false",
                                      "trainer.accelerator=cpu", "logger=none"]))
    model = GPT2(settings.model, 100)
    est = estimate(model, 0, 32, 100, 1, 1)
    assert est.weights > est.eval_per_row  # so that counting gradients would change the batch
    budget = int((est.weights + est.eval_fixed + 20.5 * est.eval_per_row) / 0.8)
    monkeypatch.setattr(lmexp.memory, "host_available", lambda: budget - est.weights)
    assert scoring_eval_batch(model, settings, 100, 32, 10 ** 6) == 20
