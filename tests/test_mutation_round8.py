"""Tests from mutation round 8 (2026-12-01): config, schema, memory planning and resume checks the suite could not see; each names the file it belongs with."""

import pytest

from lmexp.cli import compose
from lmexp.config import load_settings
from lmexp.errors import ConfigError

GiB = 2 ** 30


# --- belongs in tests/test_memory.py ---------------------------------------------------------
def test_a_micro_batch_that_needs_exactly_the_budget_fits():
    """largest_batch: a micro-batch whose estimate equals the budget fits (<=, not <)."""
    from lmexp.memory import Estimate, largest_batch

    est = Estimate(weights=GiB, gradients=GiB, optimizer=2 * GiB, per_row=GiB, eval_per_row=GiB // 8, batch=1,
                   eval_batch=4, tokens=1024)
    assert largest_batch(est, est.with_batch(4).total, 32) == 4
    assert largest_batch(est, est.with_batch(1).total, 32) == 1


# --- belongs in tests/test_memory.py ---------------------------------------------------------
def test_auto_plans_within_four_fifths_of_the_memory(monkeypatch):
    """data.batch_size=auto keeps a fifth of the budget spare: with memory where all 32 rows of a
    step would fit in 85% of it, but not in 80%, auto accumulates."""
    import lmexp.memory
    from lmexp.memory import plan_batch
    from lmexp.models.gpt2 import GPT2

    settings = load_settings(compose(["model=gpt2", "model.size=tiny", "model.n_layer=1", "model.n_embd=32",
                                      "model.n_head=2", "logger=none", "data.batch_size=auto",
                                      "data.effective_batch_size=32", "data.eval_batch_size=1",
                                      "trainer.fused_loss=false", "trainer.accelerator=cpu"]))
    model = GPT2(settings.model, 100)
    whole = plan_batch(model, settings, 100, 64, key="share-a").estimate  # this machine: 32 rows at once
    assert whole.batch == 32
    budget = int(whole.total / 0.85)
    monkeypatch.setattr(lmexp.memory, "host_available", lambda: budget - whole.weights)
    plan = plan_batch(model, settings, 100, 64, key="share-b")
    assert plan.batch < 32 and plan.batch * plan.accumulate == 32
    assert plan.estimate.total <= 0.8 * budget < plan.estimate.with_batch(plan.batch * 2).total


# --- belongs in tests/test_config.py ---------------------------------------------------------
def test_seed_zero_is_taken():
    """seed=0 is one of numpy's seeds (the check's own message: an integer from 0 to 4294967295)."""
    assert load_settings(compose(["seed=0"])).seed == 0
    with pytest.raises(ConfigError, match=r"^seed=-1: must be an integer from 0"):
        load_settings(compose(["seed=-1"]))


# --- belongs in tests/test_eval_batch_auto.py -------------------------------------------------
def test_auto_evaluation_batch_keeps_a_fifth_of_the_memory_spare(monkeypatch):
    """data.eval_batch_size=auto fills four fifths of the budget, as data.batch_size=auto does."""
    import lmexp.memory
    from lmexp.memory import plan_batch
    from lmexp.models.gpt2 import GPT2

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



# --- belongs in tests/test_memory.py ---------------------------------------------------------
def test_a_run_that_needs_exactly_the_memory_there_is_is_planned_not_refused(monkeypatch):
    """plan_batch refuses an estimate above the budget; one equal to it fits."""
    import lmexp.memory
    from lmexp.memory import plan_batch
    from lmexp.models.gpt2 import GPT2

    settings = load_settings(compose(["model=gpt2", "model.n_layer=1", "model.n_head=2", "model.n_embd=32",
                                      "model.block_size=32", "data.batch_size=2", "data.effective_batch_size=null",
                                      "data.eval_batch_size=2", "trainer.accelerator=cpu", "logger=none"]))
    model = GPT2(settings.model, 100)
    est = plan_batch(model, settings, 100, 32, key="exact-a").estimate
    monkeypatch.setattr(lmexp.memory, "host_available", lambda: est.total - est.weights)
    assert plan_batch(model, settings, 100, 32, key="exact-b").estimate.total == est.total
    monkeypatch.setattr(lmexp.memory, "host_available", lambda: est.total - est.weights - 1)
    with pytest.raises(ConfigError, match=r"^data\.batch_size=2: the run needs about"):
        plan_batch(model, settings, 100, 32, key="exact-c")


# --- belongs in tests/test_config.py (or test_bad_inputs.py) -------------------------------
def test_an_effective_batch_the_processes_cannot_share_is_refused():
    """Two processes cannot share 5 rows a step: refused, not 2 rows each (4 a step)."""
    with pytest.raises(ConfigError, match=r"^data\.effective_batch_size=5: must be a multiple of the number of "
                                          r"processes \(2\)$"):
        load_settings(compose(["trainer=ddp_cpu", "data.effective_batch_size=5", "data.batch_size=auto"]))


# --- belongs in tests/test_config.py ---------------------------------------------------------
def test_an_accumulation_that_agrees_with_the_effective_batch_is_taken():
    settings = load_settings(compose(["data.effective_batch_size=32", "data.batch_size=8",
                                      "trainer.accumulate_grad_batches=4"]))
    assert settings.trainer.accumulate_grad_batches == 4


# --- belongs in tests/test_config.py (or test_bad_inputs.py) -------------------------------
def test_auto_with_an_accumulation_of_its_own_is_refused():
    with pytest.raises(ConfigError, match=r"^trainer\.accumulate_grad_batches=3: data\.batch_size=auto sets it from "
                                          r"data\.effective_batch_size=32; leave it at 1$"):
        load_settings(compose(["data.effective_batch_size=32", "data.batch_size=auto",
                               "trainer.accumulate_grad_batches=3"]))


# --- belongs in tests/test_config.py ---------------------------------------------------------
def test_a_config_without_its_schemas_loads():
    """A stored config made a DictConfig again (no dataclass types: OmegaConf.create) loads."""
    from omegaconf import OmegaConf

    from lmexp.config import plain_config

    cfg = OmegaConf.create(plain_config(compose(["model=gpt2"])))
    assert load_settings(cfg).model.name == "gpt2"


# --- belongs in tests/test_config.py ---------------------------------------------------------
def test_plain_config_of_a_dict_leaves_out_hydras_node():
    from lmexp.config import plain_config

    assert plain_config({"seed": 1, "hydra": {"run": {"dir": "x"}}}) == {"seed": 1}


# --- belongs in tests/test_memory.py ---------------------------------------------------------
def test_running_out_of_memory_evaluating_one_window_a_batch_suggests_a_shorter_window(tmp_path):
    from lmexp.memory import out_of_memory

    settings = load_settings(compose(["data.eval_batch_size=1"]))
    told = str(out_of_memory(None, settings, 3, tmp_path, evaluating=True))
    assert told == ("out of memory evaluating after step 3 with data.eval_batch_size=1; start again with a smaller "
                    "model.block_size or data.bptt; no checkpoint had been written yet")


# --- belongs in tests/test_memory.py ---------------------------------------------------------
def test_a_refusal_suggests_the_shortest_window_that_fits(monkeypatch):
    """16 tokens do not fit, 8 do: the refusal names model.block_size=8 (the last it tries), and,
    with one process, says nothing of processes."""
    import re

    import lmexp.memory
    from lmexp.memory import estimate, plan_batch
    from lmexp.models.gpt2 import GPT2

    settings = load_settings(compose(["model=gpt2", "model.n_layer=1", "model.n_head=2", "model.n_embd=32",
                                      "model.block_size=16", "data.batch_size=64", "data.effective_batch_size=null",
                                      "data.eval_batch_size=1", "trainer.fused_loss=false",
                                      "trainer.accelerator=cpu", "logger=none"]))
    model = GPT2(settings.model, 100)
    at = {tokens: estimate(model, settings.optimizer.state_copies, tokens, 100, 64, 1) for tokens in (8, 16)}
    budget = (int(at[8].total / 0.8) + at[16].total) // 2  # 8 tokens fit with a fifth spare, 16 not at all
    assert at[8].total <= 0.8 * budget and at[16].total > budget
    monkeypatch.setattr(lmexp.memory, "host_available", lambda: budget - at[16].weights)
    with pytest.raises(ConfigError) as refused:
        plan_batch(model, settings, 100, 16, key="shortest")
    told = str(refused.value)
    assert "model.block_size=8" in told, told
    assert re.search(r"this machine has \d+\.\d\d GiB free; settings that fit", told), told


# --- belongs in tests/test_config.py (in process; or as rows of test_bad_inputs.py) ---------
@pytest.mark.parametrize("override, message", [
    ("data.batch_size=true", "data.batch_size=true: must be a positive integer, or auto"),
    ("callbacks.checkpoint.every_n_steps=true", "callbacks.checkpoint.every_n_steps=true: must be a positive integer"),
    ("+callbacks.foo._target_=''", "callbacks.foo._target_='': must be the class path of a Lightning callback"),
])
def test_a_boolean_or_empty_value_is_refused_as_written(override, message):
    """YAML's true is no number (Python counts it as 1), and is shown as it was written; an empty
    _target_ names no callback."""
    with pytest.raises(ConfigError) as refused:
        load_settings(compose([override]))
    assert str(refused.value).startswith(message), str(refused.value)


# --- belongs in tests/test_config.py (or as a row of test_bad_inputs.py) ------------------
def test_a_bad_item_of_a_list_names_the_items_type():
    with pytest.raises(ConfigError, match=r"^optimizer\.betas\[1\]=abc: must be of type float$"):
        load_settings(compose(["optimizer=adam", "optimizer.betas=[0.9,abc]"]))


# --- belongs in tests/test_memory.py ---------------------------------------------------------
def test_ddp_counts_a_second_copy_of_the_gradients():
    """DDP keeps the gradients again in its communication buckets: two processes, twice the bytes."""
    from lmexp.memory import estimate
    from lmexp.models.gpt2 import GPT2

    settings = load_settings(compose(["model=gpt2", "model.n_layer=1", "model.n_head=2", "model.n_embd=32",
                                      "model.block_size=16", "logger=none"]))
    model = GPT2(settings.model, 100)
    one, two = (estimate(model, 2, 16, 100, 1, 1, processes=p) for p in (1, 2))
    assert (one.gradients, two.gradients) == (one.weights, 2 * one.weights)
    assert two.total - one.total == one.weights


# --- belongs in tests/test_memory.py ---------------------------------------------------------
def test_processes_on_one_machine_share_its_memory():
    """The budget is each process's share; on the host, with the weights this process has built."""
    from lmexp.memory import Device, Estimate

    est = Estimate(weights=100, gradients=100, optimizer=200, per_row=10, eval_per_row=10, batch=1, eval_batch=1,
                   tokens=8)
    assert Device("this machine", 1000, 2, host=True).budget(est) == 550
    assert Device("GPU 0", 1000, 1, host=False).budget(est) == 1000


# --- resume: fast tests on a run folder as a stopped run leaves it (tests/test_resume_state.py) ---
WINDOWS = {"model": {"name": "transformer"}, "optimizer": {"lr": 0.03},
           "data": {"batch_size": 16, "eval_batch_size": 8, "effective_batch_size": None},
           "trainer": {"max_epochs": 2, "accumulate_grad_batches": 1, "limit_val_batches": 10,
                       "limit_test_batches": 1.0}}


def windows_run(run_dir, config=WINDOWS):
    from omegaconf import OmegaConf

    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(config))
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"\x80\x02pretend")  # a (legacy) pickle's first byte
    return run_dir


# belongs in tests/test_resume_state.py
def test_a_checkpoint_beside_the_config_resumes_the_run_in_its_own_folder(tmp_path):
    """resume=<run>/<file>.ckpt (a checkpoint not under checkpoints/): the run folder is the file's own."""
    from lmexp.resume import ResumePoint

    run_dir = windows_run(tmp_path / "run")
    (run_dir / "copy.ckpt").write_bytes(b"\x80\x02pretend")
    point = ResumePoint.find(str(run_dir / "copy.ckpt"))
    assert (point.run_dir, point.checkpoint) == (run_dir, run_dir / "copy.ckpt")


# belongs in tests/test_resume_state.py
def test_an_evaluation_batch_that_cannot_make_the_limits_windows_is_refused(tmp_path):
    """limit_val_batches=10 batches of 8 are 80 windows: batches of 3 cannot make them."""
    from lmexp.resume import ResumePoint

    run_dir = windows_run(tmp_path / "run")
    point = ResumePoint(run_dir, run_dir / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match=r"^data\.eval_batch_size=3: trainer\.limit_val_batches=10 counts evaluation "
                                          r"batches of 8 windows, which batches of 3 do not make; give a "
                                          r"data\.eval_batch_size that divides 80$"):
        point.config(["data.eval_batch_size=3"])
    config = point.config(["data.eval_batch_size=4"])
    assert (config.data.eval_batch_size, config.trainer.limit_val_batches, config.trainer.limit_test_batches) == \
        (4, 20, 1.0)


# belongs in tests/test_resume_state.py
def test_a_resumed_run_of_an_effective_batch_takes_the_accumulation_from_its_new_micro_batch(tmp_path):
    """data.effective_batch_size fixes the rows per step; the stored accumulation (the plan's, for
    the old micro-batch) is reset for the plan to derive again, unless it is given too."""
    from lmexp.resume import ResumePoint

    stored = {**WINDOWS, "data": {**WINDOWS["data"], "batch_size": 4, "effective_batch_size": 16},
              "trainer": {**WINDOWS["trainer"], "accumulate_grad_batches": 4}}
    run_dir = windows_run(tmp_path / "run", stored)
    point = ResumePoint(run_dir, run_dir / "checkpoints" / "last.ckpt")
    assert point.config(["data.batch_size=8"]).trainer.accumulate_grad_batches == 1
    given = point.config(["data.batch_size=8", "trainer.accumulate_grad_batches=2"])
    assert (given.data.batch_size, given.trainer.accumulate_grad_batches) == (8, 2)


# belongs in tests/test_resume_state.py (or a test of the command line)
def test_the_last_resume_on_a_command_line_is_the_one_taken():
    from lmexp.resume import resume_argument

    assert resume_argument(["resume=a", "model=gpt2", "resume=b"]) == "b"
    assert resume_argument(["resume=a", "resume=null"]) is None


# --- belongs in tests/test_memory.py (beside test_a_ddp_process_takes_the_first_processes_plan) ---
@pytest.mark.parametrize("rank, inherits", [("3", True), ("0", False)])
def test_every_process_but_the_first_takes_the_first_ones_plan(rank, inherits, monkeypatch):
    from lmexp.memory import PLAN_VARIABLE, plan_batch
    from lmexp.models.gpt2 import GPT2

    settings = load_settings(compose(["model=gpt2", "model.size=tiny", "logger=none", "data.batch_size=auto",
                                      "data.effective_batch_size=16", "trainer.devices=4", "trainer.strategy=ddp"]))
    monkeypatch.setenv(PLAN_VARIABLE, "run-a:2:2:16")
    monkeypatch.setenv("LOCAL_RANK", rank)
    plan = plan_batch(GPT2(settings.model, 100), settings, 100, 128, key="run-a")
    assert ((plan.batch, plan.accumulate, plan.eval_batch) == (2, 2, 16)) == inherits


# --- belongs in tests/test_eval_batch_auto.py (lmexp.evaluate's data.eval_batch_size=auto) ---
def test_a_scored_models_evaluation_batch_counts_no_gradients(monkeypatch):
    """A model scored, not trained, holds its weights beside the evaluation: no gradients, no optimizer state."""
    import lmexp.memory
    from lmexp.memory import estimate, scoring_eval_batch
    from lmexp.models.gpt2 import GPT2

    settings = load_settings(compose(["model=gpt2", "model.n_layer=1", "model.n_head=2", "model.n_embd=64",
                                      "model.block_size=32", "data.eval_batch_size=auto", "trainer.fused_loss=false",
                                      "trainer.accelerator=cpu", "logger=none"]))
    model = GPT2(settings.model, 100)
    est = estimate(model, 0, 32, 100, 1, 1)
    assert est.weights > est.eval_per_row  # so that counting gradients would change the batch
    budget = int((est.weights + est.eval_fixed + 20.5 * est.eval_per_row) / 0.8)
    monkeypatch.setattr(lmexp.memory, "host_available", lambda: budget - est.weights)
    assert scoring_eval_batch(model, settings, 100, 32, 10 ** 6) == 20


# --- belongs in tests/test_memory.py ---------------------------------------------------------
def test_without_an_effective_batch_the_plan_keeps_the_accumulation_given():
    from lmexp.memory import plan_batch
    from lmexp.models.gpt2 import GPT2

    settings = load_settings(compose(["model=gpt2", "model.n_layer=1", "model.n_head=2", "model.n_embd=32",
                                      "model.block_size=32", "data.batch_size=4", "data.effective_batch_size=null",
                                      "trainer.accumulate_grad_batches=3", "trainer.accelerator=cpu", "logger=none"]))
    plan = plan_batch(GPT2(settings.model, 100), settings, 100, 32, key="accumulate")
    assert (plan.batch, plan.accumulate) == (4, 3)


# belongs in tests/test_resume_state.py
def test_a_micro_batch_given_with_plus_plus_on_resume_is_checked_as_any_other(tmp_path):
    from lmexp.resume import ResumePoint

    run_dir = windows_run(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^\+\+data\.batch_size=8: a resumed run keeps its 16 rows per optimizer step"):
        ResumePoint(run_dir, run_dir / "checkpoints" / "last.ckpt").config(["++data.batch_size=8"])
