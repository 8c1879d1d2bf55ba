"""Equal budgets: ``trainer.max_tokens`` stops a run at the optimizer step whose tokens reach the
budget, whatever the batch shape or layout; ``results.json`` records the tokens trained on and
the estimated training FLOPs. Real runs (conftest.train_here)."""

import csv
import math

import pytest
import torch

from conftest import SMALL, train_here
from lmexp.cli import compose
from lmexp.config import load_settings
from lmexp.errors import ConfigError

BUDGET = 5000
QUICK = ["trainer.max_epochs=-1", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "logger=none",
         "trainer.enable_progress_bar=false"]
RECURRENT = [a for a in SMALL if a.startswith("model.")]
ATTENTION = ["model=transformer", "model.d_model=32", "model.n_layer=1", "model.n_head=2", "model.d_ff=64"]


@pytest.mark.parametrize("name, args, tokens_per_step, budget", [
    ("recurrent", [*RECURRENT, "data.batch_size=16", "data.bptt=20"], 16 * 20, BUDGET),
    # 4,700 tokens are reached in the 15th micro-batch, the first of the 8th step: the run
    # finishes that step (5,120 tokens), not stopping between its micro-batches (4,800).
    ("recurrent, two micro-batches a step", [*RECURRENT, "data.batch_size=16", "data.bptt=20",
                                            "trainer.accumulate_grad_batches=2"], 2 * 16 * 20, 4700),
    ("attention", [*ATTENTION, "model.block_size=32", "data.batch_size=8"], 8 * 32, BUDGET),
    # Filled exactly by 8 steps: the run stops at the 8th, not the 9th (mutation round 7).
    ("recurrent, a budget the steps fill exactly", [*RECURRENT, "data.batch_size=16", "data.bptt=20"], 16 * 20,
     8 * 16 * 20),
])
def test_max_tokens_stops_at_the_step_that_reaches_the_budget(name, args, tokens_per_step, budget, tmp_path,
                                                              cache_dir):
    results = train_here([*args, *QUICK, f"trainer.max_tokens={budget}"], tmp_path / "run", cache_dir)
    steps = math.ceil(budget / tokens_per_step)  # the first step whose tokens reach the budget: 16, 8 and 20
    assert results["steps"] == steps  # inside the first epoch (hundreds of steps on the default corpus)
    assert results["train_tokens"] == steps * tokens_per_step >= budget > (steps - 1) * tokens_per_step
    assert results["best_val_ppl"] is not None  # validated once stopped, as after any early stop
    # 6 FLOPs per parameter without embeddings per token, and attention's 6 x layers x context x width
    attention = 6 * 1 * 32 * 32 if name == "attention" else 0
    assert results["train_flops"] == (6 * results["params_without_embeddings"] + attention) * results["train_tokens"]


def test_the_tokens_trained_are_the_runs_even_when_its_best_checkpoint_is_an_earlier_one(tmp_path, cache_dir):
    """Testing loads the best checkpoint, callbacks' state included. With the best the first of two
    validations (the weights zeroed at the second epoch's start), results.json still counts
    both epochs' tokens: it once counted the tokens at that checkpoint (the scaling study's LSTM
    at 1M parameters reported 1.58M of its 2.3M)."""
    args = [*RECURRENT, "data.batch_size=16", "data.bptt=20", "trainer.max_epochs=2", "trainer.limit_train_batches=5",
            "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "logger=csv",
            "trainer.enable_progress_bar=false", "+callbacks.worse._target_=faults.ScaleWeightsAt",
            "+callbacks.worse.epoch=1", "+callbacks.worse.factor=0.0"]
    results = train_here(args, tmp_path / "run", cache_dir)
    assert "epoch=0" in results["best_checkpoint"]
    assert results["train_tokens"] == 2 * 5 * 16 * 20 and results["steps"] == 10
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        seen = [float(r["trainer/tokens"]) for r in csv.DictReader(f) if r.get("trainer/tokens")]
    assert seen[-1] == results["train_tokens"]


def test_max_steps_inside_an_epoch_validates_the_last_step(tmp_path, cache_dir):
    """Epochs of 5 steps, max_steps=7: validated after step 5 and, once stopped, after step 7, so
    that the last two steps count in the best validation and the test."""
    args = [*RECURRENT, "data.batch_size=16", "data.bptt=20", "trainer.max_epochs=3", "trainer.max_steps=7",
            "trainer.limit_train_batches=5", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
            "logger=csv", "trainer.enable_progress_bar=false"]
    results = train_here(args, tmp_path / "run", cache_dir)
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        validated = [float(r["trainer/tokens"]) for r in csv.DictReader(f) if r.get("val/ppl")]
    assert results["steps"] == 7 and validated == [5 * 16 * 20, 7 * 16 * 20]


def test_max_tokens_must_be_positive():
    with pytest.raises(ConfigError, match=r"^trainer.max_tokens=0: must be a positive integer, or null"):
        load_settings(compose(["trainer.max_tokens=0"]))


def test_a_decaying_schedule_ends_where_the_token_budget_ends_the_run(tmp_path, cache_dir):
    """scheduler=cosine decays over the run's steps: with trainer.max_tokens, those the budget
    allows (16 here), not the epoch's hundreds, so the rate reaches its floor as the run stops."""
    from lmexp.schedulers import cosine_factor

    args = [*RECURRENT, "data.batch_size=16", "data.bptt=20", *QUICK, f"trainer.max_tokens={BUDGET}",
            "scheduler=cosine", "scheduler.warmup_steps=2",
            "scheduler.min_lr_ratio=0.1", "optimizer.lr=0.01", "trainer.log_every_n_steps=1", "logger=csv"]
    results = train_here(args, tmp_path / "run", cache_dir)
    assert results["steps"] == 16
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        used = {int(row["step"]): float(row["train/lr"]) for row in csv.DictReader(f) if row.get("train/lr")}
    assert used[15] == pytest.approx(0.01 * cosine_factor(15, 2, 16, 0.1))  # the last step's rate
    assert used[15] < 0.01 * 0.12


@pytest.mark.parametrize("model, window", [([], 35), (["model=transformer", "model.d_model=32", "model.n_head=2",
                                                        "model.d_ff=64", "model.block_size=16"], 16)])
def test_a_token_budget_decays_the_schedule_over_the_steps_it_allows(model, window):
    """configure_optimizers: trainer.max_tokens / (batch x window x accumulation x processes) steps,
    the window being the model's block for attention models and data.bptt for recurrent ones."""
    import math
    from types import SimpleNamespace

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from conftest import CONF_DIR
    from lmexp.module import LanguageModelModule

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*model, "scheduler=cosine", "scheduler.warmup_steps=0",
                                           "scheduler.min_lr_ratio=0.0", "optimizer=sgd", "optimizer.lr=1.0",
                                           "data.batch_size=4", "data.bptt=35", "trainer.max_tokens=12800"])
    module = LanguageModelModule(OmegaConf.to_container(cfg, resolve=True), [f"w{i}" for i in range(11)])
    module._trainer = SimpleNamespace(estimated_stepping_batches=10_000, accumulate_grad_batches=2, world_size=1,
                                      precision="32-true", gradient_clip_val=None)
    out = module.configure_optimizers()
    steps = math.ceil(12800 / (4 * window * 2))
    factor = out["lr_scheduler"]["scheduler"].lr_lambdas[0]
    assert factor(steps) == pytest.approx(0.0, abs=1e-12) and factor(steps - 1) > 0


def test_the_token_budget_counts_targets_not_padding():
    """trainer.max_tokens counts target tokens, padding (IGNORE) not: a batch of 8 positions of
    which 3 are padding trains on 5."""
    from types import SimpleNamespace

    from lmexp.callbacks import TokenBudget
    from lmexp.data.datamodule import IGNORE

    trainer = SimpleNamespace(world_size=1, should_stop=False,
                              fit_loop=SimpleNamespace(_should_accumulate=lambda: False))
    budget = TokenBudget(max_tokens=6)
    targets = torch.tensor([[1, 2, 3, 4, 5, IGNORE, IGNORE, IGNORE]])
    budget.on_train_batch_end(trainer, None, None, (targets, targets), 0)
    assert (budget.tokens, trainer.should_stop) == (5, False)  # 5 < 6: trains on
    budget.on_train_batch_end(trainer, None, None, (targets, targets), 1)
    assert (budget.tokens, trainer.should_stop) == (10, True)
    assert budget.state_dict() == {"mine": 10, "bound": 16, "tokens": 10}
    exact = TokenBudget(max_tokens=5)  # reached exactly: stops at that step, not the next
    trainer.should_stop = False
    exact.on_train_batch_end(trainer, None, None, (targets, targets), 0)
    assert trainer.should_stop


def test_val_check_interval_counts_optimizer_steps_with_accumulation_too(tmp_path, cache_dir):
    """trainer.val_check_interval=3 with two micro-batches a step validates after steps 3 and 6,
    as max_steps and log_every_n_steps count steps: Lightning counts micro-batches, so until
    2026-12-01 it validated every 1.5 steps (and data.batch_size=auto, which chooses the
    accumulation from the machine, made the cadence depend on the machine)."""
    run_dir = tmp_path / "run"
    train_here([*RECURRENT, "data.batch_size=8", "data.bptt=16", "trainer.accumulate_grad_batches=2",
                "trainer.val_check_interval=3", "trainer.max_steps=6", "trainer.limit_val_batches=1",
                "trainer.limit_test_batches=1", "logger=csv", "trainer.enable_progress_bar=false"], run_dir, cache_dir)
    with open(run_dir / "metrics.csv") as f:
        validated = [int(row["step"]) for row in csv.DictReader(f) if row.get("val/ppl")]
    assert validated == [2, 5]  # Lightning logs a validation with the last step done: steps 3 and 6


def test_a_run_with_validation_turned_off_finishes_without_validating(tmp_path, cache_dir):
    """trainer.limit_val_batches=0: no validation in fit, and none forced after it: the run is tested and
    finishes, best_val_ppl null."""
    from conftest import SMALL, train_here

    results = train_here([*SMALL, "trainer.max_steps=4", "trainer.limit_val_batches=0", "trainer.limit_test_batches=2",
                          "trainer.num_sanity_val_steps=0", "logger=none"], tmp_path / "run", cache_dir)
    assert results["status"] == "finished" and results["best_val_ppl"] is None and results["test_ppl"] > 1


def test_a_run_with_testing_turned_off_finishes_untested(tmp_path, cache_dir):
    """trainer.limit_test_batches=0: the run was tested anyway, Lightning scored no batch, and
    reading the test's score failed at the end of the run (KeyError: 'test')."""
    from conftest import SMALL, train_here

    results = train_here([*SMALL, "trainer.max_steps=4", "trainer.limit_val_batches=2", "trainer.limit_test_batches=0",
                          "trainer.num_sanity_val_steps=0", "logger=none"], tmp_path / "run", cache_dir)
    assert results["status"] == "finished" and results["best_val_ppl"] > 1
    assert results["test_ppl"] is None and results["test_tokens"] is None and results["test_unigram_ppl"] is None
