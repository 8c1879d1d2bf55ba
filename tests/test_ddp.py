"""Perplexity is exact under DDP: 1 and 2 processes (CPU, gloo backend) score every predicted
token of the split once, with the same model, and report the same number.

The models' weights are drawn from N(0, std²), far from an untrained model's near-uniform
logits, so that the perplexity depends on which tokens are scored: each test computes, from the
same model in this process, the perplexity a wrong share-out between the processes would give
(the second process scoring the first one's rows or windows) and checks that it differs from
the right one by far more than the tolerance of the 1 vs 2 comparison.

One subprocess validates both models with 2 processes; the 1-process validation runs here.
"""

import csv
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import write_zipf_corpus
from oracles import stream_nll, window_nll

HERE = Path(__file__).resolve().parent
STD = {"lstm": 1.0, "gpt2": 0.5}  # spread of the weights
TOLERANCE = 1e-6  # relative, 1 vs 2 processes


class Validated(SimpleNamespace):
    """The runs (weights included), the metrics of 1 and 2 processes, and what each of the 2 scored."""

    def __repr__(self) -> str:  # not the thousands of target ids, in a failure's report
        return f"Validated({', '.join(self.runs)})"


@pytest.fixture(scope="module")
def validated(tmp_path_factory, cache_dir):
    import ddp_validate

    out = tmp_path_factory.mktemp("ddp")
    corpus = out / "corpus"
    write_zipf_corpus(corpus, words=300, lines={"train": 800, "valid": 400, "test": 100}, longest=17, seed=0)
    runs, one = {}, {}
    for name in ddp_validate.MODELS:
        runs[name] = ddp_validate.build(name, corpus, cache_dir, seed=1, std=STD[name])
        torch.save(runs[name].module.state_dict(), out / f"{name}.pt")
        one[name], _, _, _ = ddp_validate.validate(runs[name], devices=1)
    env = {**os.environ, "LMEXP_CACHE": str(cache_dir)}
    result = subprocess.run([sys.executable, str(HERE / "ddp_validate.py"), "2", str(out), str(corpus),
                             str(cache_dir)], cwd=out, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    two = json.loads((out / "metrics-2.json").read_text())
    shares = [json.loads((out / f"share-2-{rank}.json").read_text()) for rank in (0, 1)]
    return Validated(runs=runs, one=one, two=two, shares=shares)


def ppl(nll: float, tokens: int) -> float:
    return math.exp(nll / tokens)


def assert_same_for_one_and_two_processes(validated, name: str) -> None:
    one, two = validated.one[name], validated.two[name]
    assert two["world_size"] == 2
    assert two["checksum"] == one["checksum"]  # the same weights
    assert two["val/tokens"] == one["val/tokens"]
    assert two["val/ppl"] == pytest.approx(one["val/ppl"], rel=TOLERANCE)
    assert two["test/tokens"] == one["test/tokens"]
    assert two["test/ppl"] == pytest.approx(one["test/ppl"], rel=TOLERANCE)


def assert_spread(nll: torch.Tensor, value: float, vocab_size: int) -> None:
    """Not an untrained model's near-uniform prediction: per-token losses vary by nats, and the
    perplexity is far from the vocabulary size."""
    assert nll.std() > 1.0
    assert abs(math.log(value / vocab_size)) > 1.0


def test_lstm_rows_are_shared_out_exactly(validated):
    run, one = validated.runs["lstm"], validated.one["lstm"]
    assert_same_for_one_and_two_processes(validated, "lstm")
    ids = np.asarray(run.corpus.ids["valid"])
    nll = stream_nll(run.module.model.eval(), ids, rows=8, bptt=50)  # data.eval_batch_size=8, data.bptt=50
    assert one["val/tokens"] == nll.numel() == 8 * (len(ids) // 8 - 1)
    right = ppl(nll.sum().item(), nll.numel())
    assert one["val/ppl"] == pytest.approx(right, rel=1e-5)  # this process's computation is the same
    assert_spread(nll, right, len(run.corpus.vocab))
    # Each process scored 4 of the 8 rows, and together all of them.
    targets = torch.from_numpy(ids[: 8 * (len(ids) // 8)].astype(np.int64)).view(8, -1)[:, 1:]
    assert [len(s["lstm"]["targets"]) for s in validated.shares] == [targets[:4].numel(), targets[4:].numel()]
    assert Counter(validated.shares[0]["lstm"]["targets"] + validated.shares[1]["lstm"]["targets"]) == \
        Counter(targets.flatten().tolist())
    # Negative control: had the second process scored the first one's rows 0-3 again, the token
    # count would be the same and only the perplexity would tell.
    wrong = ppl(2 * nll[:4].sum().item(), 2 * nll[:4].numel())
    assert 2 * nll[:4].numel() == one["val/tokens"]
    assert abs(wrong / right - 1) > 1000 * TOLERANCE


def test_attention_windows_that_do_not_divide_evenly_are_shared_out_exactly(validated):
    run, one = validated.runs["gpt2"], validated.one["gpt2"]
    assert_same_for_one_and_two_processes(validated, "gpt2")
    ids, block = np.asarray(run.corpus.ids["valid"]), run.module.block_size
    nll = window_nll(run.module.model.eval(), ids, block)
    windows = len(nll)
    # The windows do not divide evenly: one process scored a window, and a batch, more.
    assert windows % 2 == 1
    ranks = validated.shares
    shared = [ranks[0]["gpt2"]["windows"], ranks[1]["gpt2"]["windows"]]
    assert sorted(shared[0] + shared[1]) == list(range(windows))
    assert abs(len(shared[0]) - len(shared[1])) == 1
    assert abs(ranks[0]["gpt2"]["batches"] - ranks[1]["gpt2"]["batches"]) == 1
    assert one["val/tokens"] == sum(len(w) for w in nll) == len(ids) - 1  # every token but the first
    assert Counter(ranks[0]["gpt2"]["targets"] + ranks[1]["gpt2"]["targets"]) == Counter(ids[1:].tolist())
    everything = torch.cat(nll)
    right = ppl(everything.sum().item(), everything.numel())
    assert one["val/ppl"] == pytest.approx(right, rel=1e-5)  # this process's computation is the same
    assert_spread(everything, right, len(run.corpus.vocab))
    # Negative control: the second process scoring the first one's windows (the data module
    # deals them out in turn: the even ones) instead of its own odd ones, as many as it has.
    # All of those are full windows, so the token count is the same and only the perplexity tells.
    wrong = torch.cat(nll[0::2] + nll[0 : windows - 1 : 2])
    assert wrong.numel() == one["val/tokens"]
    assert abs(ppl(wrong.sum().item(), wrong.numel()) / right - 1) > 1000 * TOLERANCE


def test_two_process_training_from_the_command_line(tmp_path, cache_dir, capsys):
    """trainer=ddp_cpu: one folder, one results.json, one W&B run, reported once."""
    from conftest import SMALL, run_lmexp

    # An epoch of 10 steps: it ends with a (short) validation, so with a best checkpoint to
    # evaluate; the test reads the whole split, as lmexp.evaluate does.
    result = run_lmexp([*SMALL, "trainer=ddp_cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=10",
                        "trainer.limit_val_batches=4", "logger=[wandb,csv]", "trainer.log_every_n_steps=1",
                        "+callbacks.first._target_=faults.FirstStep", f"+callbacks.first.folder={tmp_path / 'first'}"],
                       cwd=tmp_path, cache_dir=cache_dir, faults=True)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = list((tmp_path / "outputs").glob("*/*"))
    # Each process draws its own dropout masks (seeded alike, row i of each once got the same one),
    # and the logged training loss is the processes' mean, as one process of the whole batch logs it
    # (it was the first process's share alone).
    first = [json.loads((tmp_path / "first" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert first[0]["mask"] != first[1]["mask"]
    with open(run_dir / "metrics.csv", newline="") as f:
        logged = next(float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss"))
    assert first[0]["loss"] != pytest.approx(first[1]["loss"], rel=1e-4)
    assert logged == pytest.approx((first[0]["loss"] + first[1]["loss"]) / 2, rel=1e-6)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == 10 and results["best_val_ppl"] > 1 and results["test_ppl"] > 1
    assert results["train_tokens"] == 2 * 10 * 16 * 32  # each process's 10 batches of 16 rows of 32 tokens (SMALL)
    assert result.stdout.count("lmexp: lstm on tiny") == 1  # reported once, by rank 0
    assert (run_dir / "train_ddp_process_1.log").exists()  # the second process ran in the same folder
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1

    # The test split is exact across process counts too: the run's two-process test, lmexp.evaluate
    # in one process (here: the command line's own path is test_evaluate's) and lmexp.evaluate
    # trainer=ddp_cpu give the same number.
    from conftest import entry_here, entry_point

    best = results["best_checkpoint"]
    scored = {1: json.loads(entry_here("lmexp.evaluate", [f"ckpt={best}"], cache_dir, capsys))}
    done = entry_point("lmexp.evaluate", [f"ckpt={best}", "trainer=ddp_cpu"], cwd=tmp_path, cache_dir=cache_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("{")]  # printed once, by rank 0
    scored[2] = json.loads(line)
    assert (scored[1]["processes"], scored[2]["processes"]) == (1, 2)
    assert scored[1]["tokens"] == scored[2]["tokens"] == results["test_tokens"]
    for processes in (1, 2):
        assert scored[processes]["ppl"] == pytest.approx(results["test_ppl"], rel=TOLERANCE)


def test_a_nan_in_one_process_alone_stops_both_in_one_line(tmp_path, cache_dir):
    """The divergence check is decided on the processes' mean loss: decided by each process on its
    own share, the process that saw the NaN stopped and the other failed in its next collective
    with gloo's traceback (and the first one's clean-up removed the run's files from under it)."""
    from conftest import SMALL, run_lmexp

    result = run_lmexp([*SMALL, "trainer=ddp_cpu", "model.tie_weights=false", "regularization=none",
                        "trainer.max_steps=4", "trainer.log_every_n_steps=1", "+callbacks.fault._target_=faults.PoisonTokenOf",
                        "+callbacks.fault.rank=1"], cwd=tmp_path, cache_dir=cache_dir, faults=True)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
    assert result.returncode == 2, result.stderr[-3000:]
    told = [line for line in result.stderr.splitlines() if line.startswith("lmexp: error:")]
    assert len(told) == 1 and "training diverged: loss=nan at step 1" in told[0]  # by process 0 alone


def test_a_two_process_run_refused_once_it_started_leaves_no_folder(tmp_path, cache_dir):
    """A corpus too short for the batches, under two processes: found by the first before it
    starts the second (LMDataModule.check_batches makes every loader before fit), told once, and
    no folder left. (Found inside fit, as it was until 2026-12-01, each process cleaned up, the
    second one's log included: tests/test_bad_inputs.py's discard_unstarted tests keep that.)"""
    from conftest import run_lmexp
    from lmexp.data.corpora import SPLITS

    (tmp_path / "short.txt").write_text("the cat sat on a mat and then ran off .\n" * 30)  # 360 tokens
    result = run_lmexp(["trainer=ddp_cpu", "model=gpt2", "model.size=tiny", "model.block_size=64", "data.batch_size=32",
                        "data.effective_batch_size=null", "logger=none", "data=text",
                        *(f"data.{s}={tmp_path / 'short.txt'}" for s in SPLITS)], cwd=tmp_path, cache_dir=cache_dir)
    assert result.returncode == 2, result.stderr[-3000:]
    told = [line for line in result.stderr.splitlines() if line.startswith("lmexp: error:")]
    assert len(told) == 1 and "make 5 window(s) of model.block_size=64 tokens" in told[0]  # by process 0 alone
    assert not (tmp_path / "outputs").exists()


def test_a_sweep_of_two_process_runs_runs_each_job_once_in_its_own_folder(tmp_path, cache_dir):
    """Lightning starts a run's second process with the first one's command line: in a sweep,
    without lmexp's care (__main__.launched_as_this_job), that was the whole sweep again."""
    from conftest import SMALL, run_lmexp

    sweep = tmp_path / "sweep"
    result = run_lmexp(["-m", "trainer=ddp_cpu", "model=rnn,lstm", *SMALL, "trainer.max_steps=4",
                        "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "logger=csv",
                        f"hydra.sweep.dir={sweep}"], cwd=tmp_path, cache_dir=cache_dir, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0-rnn-tiny", "1-lstm-tiny"]
    assert not (tmp_path / "outputs").exists()  # no process ran a job of its own elsewhere
    for job, model in (("0-rnn-tiny", "rnn"), ("1-lstm-tiny", "lstm")):
        assert json.loads((sweep / job / "results.json").read_text())["steps"] == 4
        assert (sweep / job / "train_ddp_process_1.log").exists()  # its second process, in its folder
        assert result.stdout.count(f"lmexp: {model} on tiny") == 1  # each job once
    assert len((sweep / "summary.csv").read_text().splitlines()) == 1 + 2


def test_a_two_process_run_resumed_in_two_processes_ends_as_the_run_left_alone(tmp_path, cache_dir):
    """trainer=ddp_cpu: one epoch, then resume= with a second epoch of budget, in two processes
    again; it ends where the two-epoch run left alone does (each process's data share, random
    states and the optimizer continue)."""
    from conftest import SMALL, run_lmexp

    args = [*SMALL, "trainer=ddp_cpu", "trainer.limit_train_batches=6", "trainer.limit_val_batches=4",
            "trainer.limit_test_batches=4", "regularization.dropout=0.2"]
    alone = run_lmexp([*args, "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'alone'}"], cwd=tmp_path,
                      cache_dir=cache_dir)
    assert alone.returncode == 0, alone.stderr[-3000:]
    first = run_lmexp([*args, "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'resumed'}"], cwd=tmp_path,
                      cache_dir=cache_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_lmexp([f"resume={tmp_path / 'resumed'}", "trainer.max_epochs=2"], cwd=tmp_path, cache_dir=cache_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("lmexp: lstm on tiny") == 1  # reported once, by rank 0
    got, expected = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("resumed", "alone"))
    assert (got["steps"], got["epochs"]) == (expected["steps"], expected["epochs"]) == (12, 2)
    for key in ("best_val_ppl", "test_ppl"):
        assert got[key] == pytest.approx(expected[key], rel=1e-6), key


def test_a_signal_to_one_process_stops_both_at_the_next_logging_step(tmp_path, cache_dir):
    """SIGTERM reaches the second process alone, at step 3: the processes ask each other on logging
    steps (every 5 here; a GPU's answer makes the step wait), so both stop after step 5, with
    one checkpoint of that step and the run's results saying so."""
    from conftest import SMALL, run_lmexp

    args = [*SMALL, "trainer=ddp_cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=10",
            "trainer.limit_val_batches=2", "trainer.log_every_n_steps=5", "+callbacks.fault._target_=faults.SignalAt",
            "+callbacks.fault.signal=SIGTERM", "+callbacks.fault.step=3", "+callbacks.fault.rank=1",
            f"+callbacks.fault.marker={tmp_path / 'sent'}"]
    result = run_lmexp(args, cwd=tmp_path, cache_dir=cache_dir, faults=True)
    assert result.returncode == 143, result.stderr[-3000:]
    (run_dir,) = list((tmp_path / "outputs").glob("*/*"))
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "interrupted" and results["signal"] == "SIGTERM" and results["steps"] == 5
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5
    assert "lmexp: SIGTERM at step 5: stopped; continue with" in result.stdout


def test_a_split_of_fewer_windows_than_processes_scores_the_same_in_two(tmp_path, cache_dir, capsys):
    """One window of text and two processes: the second has none of its own and scores a window
    that counts no token (Lightning refuses a process without a batch), so the sums, and the
    perplexity, are the one process's."""
    from conftest import entry_here, entry_point, train_here
    from lmexp.data.corpora import SPLITS

    gpt = ["model=gpt2", "model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
           "data.batch_size=4", "data.effective_batch_size=null", "trainer.max_steps=2", "trainer.max_epochs=1",
           "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "trainer.num_sanity_val_steps=0",
           "trainer.enable_progress_bar=false", "logger=none"]
    best = train_here(gpt, tmp_path / "run", cache_dir)["best_checkpoint"]
    (tmp_path / "short.txt").write_text("the cat sat on the mat .\n")  # 7 words and an end of line: one window
    args = [f"ckpt={best}", "split=test", "data=text", *(f"data.{s}={tmp_path / 'short.txt'}" for s in SPLITS)]
    one = json.loads(entry_here("lmexp.evaluate", args, cache_dir, capsys).strip().splitlines()[-1])
    done = entry_point("lmexp.evaluate", [*args, "trainer=ddp_cpu"], cwd=tmp_path, cache_dir=cache_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("{")]
    two = json.loads(line)
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["tokens"] == two["tokens"] == 7 and two["ppl"] == pytest.approx(one["ppl"], rel=TOLERANCE)
