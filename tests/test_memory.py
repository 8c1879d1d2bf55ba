"""The memory estimate against measured peaks, data.batch_size=auto, and GPT-2's recipe."""

import copy
import json
import re
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import ROOT, clean_env, run_lmexp
from lmexp.cli import compose
from lmexp.config import load_settings
from lmexp.errors import ConfigError
from lmexp.memory import (PLAN_VARIABLE, Device, Estimate, _LiveBytes, estimate, evaluation_bytes, largest_batch,
                          out_of_memory, plan_batch, saved_bytes)
from lmexp.models.gpt2 import GPT2
from lmexp.models.rnn import RecurrentLM
from lmexp.models.transformer import TransformerLM
from lmexp.options.model import GPT2Config, RNNConfig, TransformerConfig

GiB = 2**30

# Three GPT-2 sizes whose step is dominated by different things (the output layer of a large
# vocabulary, attention over longer windows, the weights and AdamW's moments), and an LSTM.
# The checkpointed row's peak varies from run to run on one machine: 578 to 841 MiB in 19 runs
# (0.97 to 1.42 of its estimate), in the suite and alone, with glibc's allocator as it comes or
# with trainer.keep_freed_memory, with one malloc arena or many. The cause is not found.
HIGHEST = {"gpt2-12x384-checkpointed": 1.5}
SIZES = {
    # 8 evaluation rows: chosen when an evaluation row was counted at twice its logits, which at 16
    # read high (0.71 measured to estimated); evaluation rows are measured now.
    "gpt2-tiny": ["model=gpt2", "model.size=tiny", "data.batch_size=32", "data.eval_batch_size=8"],
    "gpt2-mini": ["model=gpt2", "model.size=mini", "data.batch_size=8"],
    "gpt2-6x384": ["model=gpt2", "model.size=tiny", "model.n_layer=6", "model.n_head=6", "model.n_embd=384",
                   "model.block_size=256", "data.batch_size=4"],
    # 128 rows: with the fused loss 64 rows took 99 MiB, under the 100 MiB the check asks for.
    "lstm": ["model=lstm", "data.batch_size=128", "data.bptt=64"],
    # Deep enough that recomputing one block in backward is a small part of the step.
    "gpt2-12x384-checkpointed": ["model=gpt2", "model.size=tiny", "model.n_layer=12", "model.n_head=6",
                                 "model.n_embd=384", "model.block_size=256", "data.batch_size=8",
                                 "tokenizer=char", "model.gradient_checkpointing=true"],
    # A step of one row and evaluation batches of 128: the evaluation's estimate decides (it read
    # half the real peak until 2026-12-01: cross-entropy's log-probabilities, made and held inside
    # one operation, were not counted).
    "gpt2-tiny-evaluation": ["model=gpt2", "model.size=tiny", "data.batch_size=1", "data.effective_batch_size=null",
                             "data.eval_batch_size=128", "trainer.fused_loss=false"],
}


def test_the_estimate_is_within_30_percent_of_the_measured_peak(tmp_path, cache_dir):
    """One real training step and validation batch of each size, in a process of their own: the
    peak resident memory above what the built run held (its weights) against the estimate less
    the weights."""
    out = tmp_path / "peak.json"
    runs = [arg for overrides in SIZES.values() for arg in (*overrides, "--")][:-1]
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "memory_peak.py"), str(out), str(cache_dir), *runs],
                          cwd=tmp_path, env=clean_env(cache_dir, tmp_path), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for name, result in zip(SIZES, json.loads(out.read_text())):
        expected = result["total"] - result["estimate"]["weights"]
        assert result["measured"] > 100 * 2**20, name  # large enough that the process's own noise is small beside it
        assert 0.7 <= result["measured"] / expected <= HIGHEST.get(name, 1.3), (name, result)


@pytest.mark.parametrize("model", [
    GPT2(GPT2Config(n_layer=2, n_head=2, n_embd=64, block_size=64), 500, dropout=0.1),
    RecurrentLM(RNNConfig(name="lstm", embedding_size=64, hidden_size=128, num_layers=2), 500, dropout=0.1),
    RecurrentLM(RNNConfig(name="gru", embedding_size=64, hidden_size=128, num_layers=2), 500, dropout=0.1),
    TransformerLM(TransformerConfig(d_model=64, n_head=2, n_layer=2, d_ff=128, block_size=64), 500, dropout=0.1),
], ids=["gpt2", "lstm", "gru", "transformer"])
@pytest.mark.parametrize("fused", [False, True], ids=["ordinary-loss", "fused-loss"])
def test_one_row_times_the_batch_never_undercounts(model, fused):
    """The estimate measures one row and multiplies it by the micro-batch. Eight rows save at
    most eight times one row (one row is counted a little high: an LSTM's buffers of fixed size,
    and copies that a one-row batch makes where larger ones do not), and not much less; the
    counting pass leaves the model as it was: its mode, and no tensor of the pass's graph on it (a
    recurrent model keeps its last activations for AR/TAR; Lightning's SWA deep-copies the model
    and cannot copy such a tensor)."""
    model.eval()
    one, eight = saved_bytes(model, 1, 64, 500, fused=fused), saved_bytes(model, 8, 64, 500, fused=fused)
    # Up to 8% high for GPT-2 with the fused loss, whose logits no longer dilute the rest.
    assert 1.0 <= one / (eight / 8) <= 1.1
    assert not model.training and all(not m.training for m in model.modules())
    assert getattr(model, "activations", None) is None
    copy.deepcopy(model)


def test_auto_takes_the_largest_micro_batch_that_fits_and_divides_the_step():
    est = Estimate(weights=GiB, gradients=GiB, optimizer=2 * GiB, per_row=GiB, eval_per_row=GiB // 8, batch=1,
                   eval_batch=16, tokens=1024)
    assert largest_batch(est, int(9.5 * GiB), 32) == 4  # 5 fit, but 32 rows are 8 micro-batches of 4
    assert largest_batch(est, 100 * GiB, 32) == 32  # never more than a step's rows
    assert largest_batch(est, int(4.5 * GiB), 32) is None  # not one row


def test_gpt2_recipe_fills_its_step_with_the_largest_micro_batch_that_fits():
    """GPT-2 small on this machine: 32 rows of 1024 tokens a step do not fit at once, so auto
    accumulates; the micro-batch it takes fits within its share of memory and the next
    divisor of 32 would not."""
    settings = load_settings(compose(["model=gpt2", "logger=none"]))
    model = GPT2(settings.model, 10_000, dropout=0.2)
    plan = plan_batch(model, settings, 10_000, 1024, key="recipe-test")
    assert plan.batch * plan.accumulate == 32
    budget = plan.device.budget(plan.estimate)
    assert plan.estimate.total <= 0.8 * budget
    larger = [b for b in (2, 4, 8, 16, 32) if b > plan.batch]
    if larger:
        assert plan.estimate.with_batch(larger[0]).total > 0.8 * budget


def test_a_ddp_process_takes_the_first_processes_plan(monkeypatch):
    """The other processes of a DDP run build the run again while the first one holds memory:
    they must take its micro-batch, not measure again and pick another."""
    settings = load_settings(compose(["model=gpt2", "model.size=tiny", "logger=none", "data.batch_size=auto",
                                      "data.effective_batch_size=8", "trainer.devices=2", "trainer.strategy=ddp"]))
    model = GPT2(settings.model, 100)
    monkeypatch.setenv(PLAN_VARIABLE, "run-a:2:2:16")
    monkeypatch.setenv("LOCAL_RANK", "1")
    inherited = plan_batch(model, settings, 100, 128, key="run-a")
    assert (inherited.batch, inherited.accumulate, inherited.eval_batch) == (2, 2, 16)
    other = plan_batch(model, settings, 100, 128, key="run-b")  # another run's plan is not taken
    assert (other.batch, other.accumulate) == (4, 1)


def test_the_recipe_and_what_replaces_it():
    """model=gpt2 brings GPT-2's optimizer, schedule, clipping and batch; the command line's
    choices replace each, and other models keep the plain defaults."""
    cfg = compose(["model=gpt2"])
    assert (cfg.optimizer.name, cfg.optimizer.lr, list(cfg.optimizer.betas), cfg.optimizer.weight_decay) == \
        ("adamw_gpt2", 6e-4, [0.9, 0.95], 0.1)
    assert (cfg.scheduler.name, cfg.trainer.gradient_clip_val) == ("cosine", 1.0)
    assert (cfg.data.batch_size, cfg.data.effective_batch_size) == ("auto", 32)
    mine = compose(["model=gpt2", "optimizer=sgd", "scheduler=constant", "data.batch_size=4",
                    "trainer.gradient_clip_val=0.3"])
    assert (mine.optimizer.name, mine.scheduler.name, mine.data.batch_size, mine.trainer.gradient_clip_val) == \
        ("sgd", "constant", 4, 0.3)
    lstm = compose(["model=lstm"])
    assert (lstm.optimizer.lr, lstm.scheduler.name, lstm.data.batch_size, lstm.data.effective_batch_size) == \
        (6e-3, "constant", 32, None)


def test_a_run_keeps_the_batch_it_chose(tmp_path, cache_dir):
    """The stored config holds the micro-batch and accumulation the run used, not "auto", so a
    resumed run (or evaluate) does not choose again with whatever memory is free then; the log
    says what was chosen."""
    result = run_lmexp(["model=gpt2", "model.size=tiny", "model.n_layer=1", "model.n_embd=32", "model.n_head=2",
                        "data.batch_size=2", "data.effective_batch_size=8", "trainer.max_steps=2",
                        "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "logger=csv",
                        "hydra.run.dir=run"], cwd=tmp_path, cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    stored = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (stored["data"]["batch_size"], stored["trainer"]["accumulate_grad_batches"]) == (2, 4)
    log = (tmp_path / "run" / "lmexp.log").read_text()
    assert "batch: 8 rows per step on each process: micro-batches of 2, 4 accumulated" in log
    assert "memory: about" in log


def test_running_out_of_memory_mid_run_is_one_line_and_keeps_the_checkpoints(tmp_path, cache_dir):
    """The allocator refusing memory at step 4 (tests/faults.py): one line naming the step, the
    micro-batch and a smaller one for the same rows per step; the checkpoint written at step 2
    stays and loads."""
    result = run_lmexp(["model.embedding_size=16", "model.hidden_size=16", "data.batch_size=8", "data.bptt=16",
                        "trainer.max_steps=10", "callbacks.checkpoint.every_n_steps=2", "logger=csv",
                        "hydra.run.dir=run", "+callbacks.oom._target_=faults.AllocateAt", "+callbacks.oom.step=4",
                        f"+callbacks.oom.bytes={2**60}"], cwd=tmp_path, cache_dir=cache_dir, faults=True)
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("lmexp: error:")]
    assert line.startswith("lmexp: error: out of memory at step 4 with data.batch_size=8 (micro-batches of 8 rows "
                           "of 16 tokens, estimated at ")
    assert "start again with data.batch_size=4 trainer.accumulate_grad_batches=2 (the same 8 rows per step)" in line
    assert f"kept in {tmp_path / 'run' / 'checkpoints'}" in line and "last.ckpt" in line
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] in (2, 4)  # written at step 2, or at 4 just before the allocation


def test_a_windowed_model_out_of_memory_goes_on_from_its_checkpoint_as_the_line_says(tmp_path, cache_dir):
    """A model that reads windows is told to resume in smaller micro-batches (lmexp.resume.other_batches);
    the command the line gives is run as it is, on a "device" where 4 rows fit, and finishes the
    run's 10 steps (the resumed run keeps the fault, as it keeps every setting)."""
    window = ["model=transformer", "model.d_model=16", "model.n_layer=1", "model.n_head=2", "model.d_ff=32",
              "model.block_size=16", "data.batch_size=8", "trainer.max_steps=10", "trainer.limit_val_batches=2",
              "trainer.limit_test_batches=2", "callbacks.checkpoint.every_n_steps=2", "logger=csv"]
    result = run_lmexp([*window, "hydra.run.dir=run", "+callbacks.oom._target_=faults.AllocateAt",
                        "+callbacks.oom.step=4", f"+callbacks.oom.bytes={2**60}", "+callbacks.oom.rows_fit=4"],
                       cwd=tmp_path, cache_dir=cache_dir, faults=True)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("lmexp: error:")]
    advice = re.search(r"go on from the last checkpoint with python -m lmexp (.*) \(the same 8 rows per step\)", line)
    assert advice.group(1) == f"resume={tmp_path / 'run'} data.batch_size=4 trainer.accumulate_grad_batches=2", line
    again = run_lmexp(advice.group(1).split(" "), cwd=tmp_path, cache_dir=cache_dir, faults=True)
    assert again.returncode == 0, again.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (results["status"], results["steps"], results["batch_size"]) == ("finished", 10, 4)


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_running_out_of_memory_evaluating_names_the_evaluation_batch(stage, tmp_path, cache_dir):
    """In a validation, the advice was a smaller training micro-batch, which does not help; in the
    test, a traceback (the test's out-of-memory error was not caught)."""
    result = run_lmexp(["model.embedding_size=16", "model.hidden_size=16", "data.batch_size=8", "data.bptt=16",
                        "data.eval_batch_size=16", "trainer.max_steps=6", "trainer.limit_val_batches=2",
                        "trainer.val_check_interval=2", "logger=none", "hydra.run.dir=run",
                        "+callbacks.oom._target_=faults.AllocateEvaluating", f"+callbacks.oom.stage={stage}",
                        "+callbacks.oom.step=4", f"+callbacks.oom.bytes={2**60}"],
                       cwd=tmp_path, cache_dir=cache_dir, faults=True)
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("lmexp: error:")]
    step = 4 if stage == "validate" else 6
    assert line.startswith(f"lmexp: error: out of memory evaluating after step {step} with data.eval_batch_size=16; "
                           f"start again with data.eval_batch_size=8; the checkpoints written so far are kept in ")


def test_float64_weights_are_planned_at_their_size_and_with_the_loss_they_train_with():
    """Lightning's 64-true converts the model when training starts, after the plan: the plan counts
    the weights, optimizer state and activations at float64's size, and the ordinary loss that a
    float64 output layer takes, not the fused loss that the float32 model it measures would."""
    def planned(*overrides):
        settings = load_settings(compose(["model=gpt2", "model.size=tiny", "data.batch_size=4", *overrides]))
        return plan_batch(GPT2(settings.model, 500), settings, 500, 128, key="precision").estimate

    wide, ordinary = planned("trainer.precision=64-true"), planned("trainer.fused_loss=false")
    assert (wide.weights, wide.optimizer, wide.per_row) == (2 * ordinary.weights, 2 * ordinary.optimizer,
                                                            2 * ordinary.per_row)
    assert planned().per_row < ordinary.per_row  # float32 takes the fused loss, which keeps no logits


@pytest.mark.parametrize("fused", [False, True], ids=["ordinary-loss", "fused-loss"])
def test_an_evaluation_row_is_measured_and_holds_one_blocks_intermediates_not_every_blocks(fused):
    """Evaluation frees each block's intermediates as it goes: a row holds about one block's at any
    depth (GPT-2 once kept every block's keys and values, views of its whole query-key-value
    product, to the end of the pass: 18.4 MiB a row at 12 blocks against 11.6 at 6 of the same
    width). Eight rows hold at most eight times one; the fused loss's chunks are counted once."""
    def model(layers):
        return GPT2(GPT2Config(n_layer=layers, n_head=4, n_embd=128, block_size=128), 2000, dropout=0.0)

    (shallow, chunks), (deep, _) = (evaluation_bytes(model(n), 128, 2000, None, fused) for n in (2, 8))
    assert shallow <= deep <= 1.1 * shallow
    assert chunks == (2 * max(32 << 20, 128 * 2000 * 4) if fused else 0)
    counter, ids, two = _LiveBytes(), torch.randint(0, 2000, (8, 128)), model(2).eval()
    with torch.inference_mode(), counter:
        two.features(ids) if fused else two(ids)
    assert counter.peak <= 8 * shallow


def test_an_evaluation_row_of_the_transformer_is_measured_op_by_op():
    """nn.TransformerEncoderLayer's inference fast path is one operation, whose intermediates the
    counter cannot see (a measured batch of 128 windows took twice its estimate): the measuring
    pass turns the fast path off, and gives the setting back."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(str(func))
            return func(*args, **(kwargs or {}))

    model = TransformerLM(TransformerConfig(d_model=32, n_head=4, n_layer=2, d_ff=64, block_size=128), 500, dropout=0.1)
    with Ops() as ops:
        evaluation_bytes(model, 128, 500, None, True)
    assert not any("_transformer_encoder_layer_fwd" in name for name in ops.names), sorted(ops.names)
    assert any("addmm" in name or "linear" in name or "mm" in name for name in ops.names)  # the layers' own ops
    assert torch.backends.mha.get_fastpath_enabled()


def test_a_refusal_dominated_by_the_evaluation_batch_suggests_one_that_fits(monkeypatch, tmp_path, cache_dir):
    """600 MiB free, and 512 evaluation windows of GPT-2 tiny the larger part: the refusal names an
    evaluation batch that fits (it named none, and suggested data.batch_size=auto, which was
    refused again), and a run with that batch is planned."""
    import re

    import lmexp.memory
    from lmexp.errors import UserError
    from lmexp.run import Run

    monkeypatch.setattr(lmexp.memory, "host_available", lambda: 600 * 2**20)
    args = ["model=gpt2", "model.size=tiny", "data.batch_size=4", "data.effective_batch_size=null", "logger=none",
            f"paths.cache_dir={cache_dir}"]
    with pytest.raises(UserError) as refused:
        Run.from_config(compose([*args, "data.eval_batch_size=512"]))
    told = str(refused.value)
    assert "evaluation batch of 512 rows" in told and "data.batch_size=auto" not in told
    suggested = int(re.search(r"data\.eval_batch_size=(\d+)", told)[1])
    assert 1 <= suggested < 512
    assert Run.from_config(compose([*args, f"data.eval_batch_size={suggested}"])).plan.eval_batch == suggested


def test_a_micro_batch_that_needs_exactly_the_budget_fits():
    """largest_batch: a micro-batch whose estimate equals the budget fits (<=, not <)."""
    est = Estimate(weights=GiB, gradients=GiB, optimizer=2 * GiB, per_row=GiB, eval_per_row=GiB // 8, batch=1,
                   eval_batch=4, tokens=1024)
    assert largest_batch(est, est.with_batch(4).total, 32) == 4
    assert largest_batch(est, est.with_batch(1).total, 32) == 1


def test_auto_plans_within_four_fifths_of_the_memory(monkeypatch):
    """data.batch_size=auto keeps a fifth of the budget spare: with memory where all 32 rows of a
    step would fit in 85% of it, but not in 80%, auto accumulates."""
    import lmexp.memory

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


def test_a_run_that_needs_exactly_the_memory_there_is_is_planned_not_refused(monkeypatch):
    """plan_batch refuses an estimate above the budget; one equal to it fits."""
    import lmexp.memory

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


def test_running_out_of_memory_evaluating_one_window_a_batch_suggests_a_shorter_window(tmp_path):

    settings = load_settings(compose(["data.eval_batch_size=1"]))
    told = str(out_of_memory(None, settings, 3, tmp_path, evaluating=True))
    assert told == ("out of memory evaluating after step 3 with data.eval_batch_size=1; start again with a smaller "
                    "model.block_size or data.bptt; no checkpoint had been written yet")


def test_a_refusal_suggests_the_shortest_window_that_fits(monkeypatch):
    """16 tokens do not fit, 8 do: the refusal names model.block_size=8 (the last it tries), and,
    with one process, says nothing of processes."""
    import lmexp.memory

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


def test_ddp_counts_a_second_copy_of_the_gradients():
    """DDP keeps the gradients again in its communication buckets: two processes, twice the bytes."""
    settings = load_settings(compose(["model=gpt2", "model.n_layer=1", "model.n_head=2", "model.n_embd=32",
                                      "model.block_size=16", "logger=none"]))
    model = GPT2(settings.model, 100)
    one, two = (estimate(model, 2, 16, 100, 1, 1, processes=p) for p in (1, 2))
    assert (one.gradients, two.gradients) == (one.weights, 2 * one.weights)
    assert two.total - one.total == one.weights


def test_processes_on_one_machine_share_its_memory():
    """The budget is each process's share; on the host, with the weights this process has built."""
    est = Estimate(weights=100, gradients=100, optimizer=200, per_row=10, eval_per_row=10, batch=1, eval_batch=1,
                   tokens=8)
    assert Device("this machine", 1000, 2, host=True).budget(est) == 550
    assert Device("GPU 0", 1000, 1, host=False).budget(est) == 1000


@pytest.mark.parametrize("rank, inherits", [("3", True), ("0", False)])
def test_every_process_but_the_first_takes_the_first_ones_plan(rank, inherits, monkeypatch):

    settings = load_settings(compose(["model=gpt2", "model.size=tiny", "logger=none", "data.batch_size=auto",
                                      "data.effective_batch_size=16", "trainer.devices=4", "trainer.strategy=ddp"]))
    monkeypatch.setenv(PLAN_VARIABLE, "run-a:2:2:16")
    monkeypatch.setenv("LOCAL_RANK", rank)
    plan = plan_batch(GPT2(settings.model, 100), settings, 100, 128, key="run-a")
    assert ((plan.batch, plan.accumulate, plan.eval_batch) == (2, 2, 16)) == inherits


def test_without_an_effective_batch_the_plan_keeps_the_accumulation_given():

    settings = load_settings(compose(["model=gpt2", "model.n_layer=1", "model.n_head=2", "model.n_embd=32",
                                      "model.block_size=32", "data.batch_size=4", "data.effective_batch_size=null",
                                      "trainer.accumulate_grad_batches=3", "trainer.accelerator=cpu", "logger=none"]))
    plan = plan_batch(GPT2(settings.model, 100), settings, 100, 32, key="accumulate")
    assert (plan.batch, plan.accumulate) == (4, 3)
