"""`python -m lmexp` in a subprocess, as a user runs it: real Trainer, real W&B offline run."""

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, SMALL, run_lmexp, train_here
from lmexp.cli import compose
from lmexp.prepare import prepare
from lmexp.run import short_count
from wandb_records import config_and_history, run_record, summary


def only_run_dir(cwd: Path) -> Path:
    (run_dir,) = [p for p in (cwd / "outputs").glob("*/*") if p.is_dir()]
    return run_dir


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, cache_dir):
    cwd = tmp_path_factory.mktemp("run")
    args = [*SMALL, "logger=[wandb,tensorboard]", "trainer.max_epochs=2", "trainer.limit_train_batches=40",
            "trainer.log_every_n_steps=10"]
    result = run_lmexp(args, cwd=cwd, cache_dir=cache_dir, connections=cwd / "connections.txt")
    assert result.returncode == 0, result.stderr[-3000:]
    return result, only_run_dir(cwd)


def test_results_json_has_the_run(small_run):
    result, run_dir = small_run
    results = json.loads((run_dir / "results.json").read_text())
    for key in ("model", "data", "params", "best_val_ppl", "test_ppl", "train_tokens_per_sec", "wall_time_s",
                "epochs", "steps", "test_unigram_ppl"):
        assert key in results
    assert results["model"] == "lstm" and results["data"] == "tiny"
    assert results["epochs"] == 2 and results["steps"] == 80
    assert results["train_tokens_per_sec"] > 0 and results["params"] > 0
    # The test split's tokens over the test's own wall time: above zero, below the whole run's rate.
    assert results["test_tokens"] / results["wall_time_s"] < results["test_tokens_per_sec"]
    # Trained, it beats guessing uniformly over the vocabulary (which scores exactly vocab_size).
    assert 1 < results["test_ppl"] < results["vocab_size"] and 1 < results["best_val_ppl"] < results["vocab_size"]
    # In float64, as the split's sums give them: Lightning's logged copies are float32, whose
    # perplexity is not exp of their loss to the last digit.
    assert results["test_ppl"] == math.exp(results["test_loss"])
    # The one-line summary prints both perplexities.
    summary = [line for line in result.stdout.splitlines() if line.startswith("lmexp: lstm on tiny")]
    assert len(summary) == 1 and f"test ppl {results['test_ppl']:.2f}" in summary[0]
    assert f"unigram {results['test_unigram_ppl']:.2f}" in summary[0]
    # NLTK splits punctuation off words, so there are more tokens than words: word ppl is higher.
    assert results["test_word_ppl"] > results["test_ppl"] and results["val_word_ppl"] > results["best_val_ppl"]
    # The log: each validation at its epoch and step; the test, of the best checkpoint, at neither
    # (it said "epoch 2, step 80", the trainer's state after fit, until 2026-12-02).
    log = (run_dir / "lmexp.log").read_text()
    assert re.findall(r"epoch (\d+), step (\d+): val ppl", log) == [("0", "40"), ("1", "80")]
    assert re.findall(r"\] - (.*)test ppl ([\d.]+) over", log) == [("", f"{results['test_ppl']:.2f}")]
    assert {int(n) for n in re.findall(r"val ppl [\d.]+ over (\d+) tokens", log)} == {results["val_tokens"]}


def test_the_summary_line_says_one_epoch_in_the_singular(tmp_path):
    from lmexp.train import summary

    results = {"model": "lstm", "data": "tiny", "best_val_ppl": 150.0, "test_ppl": 140.0, "test_unigram_ppl": 400.0,
               "train_tokens_per_sec": 1000.0, "steps": 10, "wall_time_s": 9.0}
    assert ", 1 epoch, 10 steps," in summary({**results, "epochs": 1}, tmp_path)  # "1 epochs" until 2026-12-01
    assert ", 2 epochs, 10 steps," in summary({**results, "epochs": 2}, tmp_path)


def assert_word_ppl_and_bpb_from_the_splits_counts(results: dict, overrides: list[str]) -> None:
    """Recomputed by hand from the split's words and bytes (lmexp.prepare counts them): the
    mean NLL per token, scaled to the whole split, over its words or its bytes. Valid and test
    have other ratios of words to tokens, so statistics wired to the wrong split fail this."""
    splits = prepare(overrides)["splits"]  # the run's corpus and tokenizer, found in its cache
    test, valid = splits["test"], splits["valid"]
    assert test["words"] / test["tokens"] != pytest.approx(valid["words"] / valid["tokens"], rel=1e-3)
    for loss, split, word_ppl, bpb in ((results["test_loss"], test, "test_word_ppl", "test_bpb"),
                                       (math.log(results["best_val_ppl"]), valid, "val_word_ppl", "val_bpb")):
        nll = loss * split["tokens"]
        assert results[word_ppl] == pytest.approx(math.exp(nll / split["words"]), rel=1e-5)
        assert results[bpb] == pytest.approx(nll / math.log(2) / split["bytes"], rel=1e-5)


def test_word_perplexity_and_bits_per_byte_come_from_each_splits_own_counts(small_run, cache_dir, monkeypatch):
    _, run_dir = small_run
    monkeypatch.setenv("LMEXP_CACHE", str(cache_dir))
    assert_word_ppl_and_bpb_from_the_splits_counts(json.loads((run_dir / "results.json").read_text()), [])


@pytest.mark.parametrize("tokenizer", [["tokenizer=char"], ["tokenizer=bpe", "tokenizer.vocab_size=400"]])
def test_word_perplexity_and_bits_per_byte_of_character_and_bpe_runs(tmp_path, cache_dir, monkeypatch, tokenizer):
    """Many tokens per word here, unlike a word run: per-token and per-word numbers are far apart."""
    results = train_here([*SMALL, *tokenizer, "trainer.max_steps=20", "trainer.limit_val_batches=10",
                          "trainer.limit_test_batches=10", "logger=none"], tmp_path / "run", cache_dir)
    assert results["test_word_ppl"] > 2 * results["test_ppl"]
    monkeypatch.setenv("LMEXP_CACHE", str(cache_dir))
    assert_word_ppl_and_bpb_from_the_splits_counts(results, tokenizer)


def test_checkpoints_best_and_last(small_run):
    _, run_dir = small_run
    names = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in names and any(n.startswith("best-") for n in names)
    results = json.loads((run_dir / "results.json").read_text())
    assert Path(results["best_checkpoint"]).exists()


def test_metrics_csv_has_validation_perplexity_each_epoch(small_run):
    _, run_dir = small_run
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    val = [float(r["val/ppl"]) for r in rows if r.get("val/ppl")]
    assert len(val) == 2  # one per epoch
    assert any(r.get("train/loss") for r in rows) and any(r.get("train/tokens_per_sec") for r in rows)
    assert any(r.get("test/ppl") for r in rows)
    results = json.loads((run_dir / "results.json").read_text())
    assert min(val) == pytest.approx(results["best_val_ppl"], rel=1e-5)
    # Beside each validation: the training tokens seen and the time so far, the x-axes on which
    # runs of different batch shapes and speeds line up (lmexp.report plots them).
    seen = [(float(r["trainer/tokens"]), float(r["trainer/wall_time_s"])) for r in rows if r.get("val/ppl")]
    assert seen[-1][0] == results["train_tokens"] and seen[0][0] == results["train_tokens"] / 2  # two equal epochs
    assert 0 < seen[0][1] < seen[1][1] < results["wall_time_s"]


def test_tensorboard_has_the_metrics_and_the_settings_beside_the_results(small_run):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import plugin_data_pb2

    _, run_dir = small_run
    events = EventMultiplexer().AddRunsFromDirectory(str(run_dir / "tensorboard"))
    events.Reload()
    (run,) = events.Runs()
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    val = [float(r["val/ppl"]) for r in rows if r.get("val/ppl")]
    assert [e.value for e in events.Scalars(run, "val/ppl")] == pytest.approx(val)  # the same names as the CSV
    results = json.loads((run_dir / "results.json").read_text())
    assert events.Scalars(run, "hparams/test_ppl")[-1].value == pytest.approx(results["test_ppl"], rel=1e-6)
    written = [plugin_data_pb2.HParamsPluginData.FromString(content)
               for content in events.PluginRunToTagToContent("hparams")[run].values()]
    hparams = {data.WhichOneof("data"): data for data in written}
    assert hparams["session_start_info"].session_start_info.hparams["model/hidden_size"].number_value == 32
    shown = [m.name.tag for m in hparams["experiment"].experiment.metric_infos]
    assert {"hparams/best_val_ppl", "hparams/params", "hparams/train_flops"} <= set(shown)


def test_wandb_offline_run_with_resolved_config_and_metrics(small_run):
    result, run_dir = small_run
    (offline,) = list((run_dir / "wandb").glob("offline-run-*"))
    (run_file,) = list(offline.glob("run-*.wandb"))
    config, history = config_and_history(run_file)
    assert config["model"]["hidden_size"] == 32 and config["model"]["name"] == "lstm"
    results = json.loads((run_dir / "results.json").read_text())
    run = run_record(run_file)  # named for what it is, grouped by its data, tagged for filtering
    assert run.display_name == f"lstm-tiny-p{short_count(results['params'])}-s1234" and run.run_group == "tiny"
    assert list(run.tags) == ["lstm", "tiny", "word"]
    assert config["trainer"]["max_epochs"] == 2 and "${" not in json.dumps(config)  # resolved
    val = [h["val/ppl"] for h in history if "val/ppl" in h]
    results = json.loads((run_dir / "results.json").read_text())
    assert len(val) == 2 and min(val) == pytest.approx(results["best_val_ppl"], rel=1e-5)
    assert any(h.get("test/ppl") == pytest.approx(results["test_ppl"]) for h in history)
    # The run's summary: results.json's numbers, what W&B's run table and report panels show.
    last = summary(run_file)
    assert {k: last[k] for k in ("best_val_ppl", "params", "train_tokens", "train_flops", "test_ppl")} == \
        {k: pytest.approx(results[k]) for k in ("best_val_ppl", "params", "train_tokens", "train_flops", "test_ppl")}
    assert last["status"] == "finished"
    assert "offline" in result.stdout + result.stderr
    # Every connection beyond this machine was refused and listed (tests/no_network): there was none.
    attempts = run_dir.parent.parent.parent / "connections.txt"
    assert not attempts.exists(), attempts.read_text()


def test_resolved_config_and_hydra_files_are_saved(small_run):
    _, run_dir = small_run
    saved = (run_dir / "config.yaml").read_text()
    assert "hidden_size: 32" in saved and "${" not in saved
    assert (run_dir / ".hydra" / "overrides.yaml").exists()


def test_a_second_run_reuses_the_token_cache_and_logger_none_still_writes_results(small_run, tmp_path, cache_dir):
    result = run_lmexp([*SMALL, "trainer.max_steps=2", "trainer.limit_val_batches=2", "logger=none"],
                       cwd=tmp_path, cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout + result.stderr
    assert "tokens: cached in" in out and "tokenized in" not in out
    run_dir = only_run_dir(tmp_path)
    assert (run_dir / "results.json").exists() and not (run_dir / "wandb").exists()
    assert not (run_dir / "metrics.csv").exists()


def test_a_run_takes_a_folder_of_its_own_beside_one_of_the_same_name(tmp_path, cache_dir):
    """Runs started in the same second (a shell loop of &) once shared the folder their name gave,
    the last one's results.json and checkpoints over the others'. Here every folder the run could
    be named, for the next minute, is there already with another run's results in it."""
    from datetime import datetime, timedelta

    now, taken = datetime.now(), []
    for s in range(60):
        at = now + timedelta(seconds=s)
        taken.append(tmp_path / "outputs" / f"{at:%Y-%m-%d}" / f"{at:%H-%M-%S}-lstm-tiny")
        taken[-1].mkdir(parents=True)
        (taken[-1] / "results.json").write_text('{"status": "another run"}')
    result = run_lmexp([*SMALL, "trainer.max_steps=2", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
                        "logger=none"], cwd=tmp_path, cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    (own,) = [p for p in (tmp_path / "outputs").glob("*/*") if p not in taken]
    assert own.name.endswith("-lstm-tiny-2") and own.with_name(own.name[:-2]) in taken
    assert json.loads((own / "results.json").read_text())["status"] == "finished"
    assert all((folder / "results.json").read_text() == '{"status": "another run"}' for folder in taken)


def test_processes_claiming_one_name_at_once_get_a_folder_each(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from omegaconf import OmegaConf

    from lmexp.__main__ import claim_folder

    cfg = OmegaConf.create({"model": {"name": "lstm"}})
    with ThreadPoolExecutor(8) as pool:
        claimed = list(pool.map(lambda _: claim_folder(str(tmp_path / "x-${model.name}"), cfg), range(8)))
    assert sorted(p.name for p in claimed) == ["x-lstm", *(f"x-lstm-{n}" for n in range(2, 9))]


def test_same_seed_same_perplexities(tmp_path, cache_dir):
    args = [*SMALL, "trainer.max_steps=8", "trainer.limit_val_batches=4", "trainer.limit_test_batches=4",
            "logger=csv", "seed=7"]
    result = run_lmexp(args, cwd=tmp_path, cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    fresh = json.loads((only_run_dir(tmp_path) / "results.json").read_text())["test_ppl"]
    # Again in this process, after whatever ran in it before: the seed alone decides the numbers.
    again = train_here(args, tmp_path / "again", cache_dir)["test_ppl"]
    other = train_here([*args[:-1], "seed=8"], tmp_path / "other", cache_dir)  # the control: another seed
    assert again == fresh
    assert other["test_ppl"] != fresh


def the_error_line(result) -> str:
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("lmexp: error:")]
    return line


def test_diverging_loss_stops_with_one_line_at_the_default_interval(tmp_path, cache_dir):
    result = run_lmexp([*SMALL, "optimizer.lr=1e4", "trainer.gradient_clip_val=null", "trainer.max_steps=100",
                        "logger=csv"], cwd=tmp_path, cache_dir=cache_dir)
    line = the_error_line(result)
    assert "training diverged: loss=" in line and "lower optimizer.lr" in line
    step = int(re.search(r"at step (\d+)", line).group(1))
    assert step % 20 == 0  # found on the logging interval (trainer.log_every_n_steps: 20), never per step


def weights_of(ckpt: Path) -> tuple[int, bool]:
    checkpoint = torch.load(ckpt, weights_only=True)
    finite = all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values() if t.is_floating_point())
    return checkpoint["global_step"], finite


@pytest.mark.parametrize("val_every,stage,stopped_at", [
    (20, "training", 40),  # the NaN at step 26 is found by the training check at step 40
    (10, "validation", 30),  # ... or by the validation at step 30, before it writes a checkpoint
])
def test_a_nan_stops_the_run_and_keeps_the_checkpoints_written_so_far(tmp_path, cache_dir, val_every, stage,
                                                                       stopped_at):
    """Trained in the worker: the one line a divergence gives is the previous test's subject."""
    from lmexp.errors import UserError

    with pytest.raises(UserError) as stopped:
        train_here([*SMALL, f"trainer.val_check_interval={val_every}", "trainer.limit_val_batches=4",
                    "trainer.max_steps=100", "logger=csv", "+callbacks.poison._target_=faults.PoisonWeights",
                    "+callbacks.poison.at_step=25"], tmp_path / "run", cache_dir)
    assert str(stopped.value).startswith(f"{stage} diverged: loss=nan at step {stopped_at};")
    checkpoints = tmp_path / "run" / "checkpoints"
    (best,) = checkpoints.glob("best-*.ckpt")
    assert weights_of(checkpoints / "last.ckpt") == (20, True)  # the last one before the NaN, whole
    assert weights_of(best)[1]


def test_word2vec_embedding_end_to_end_and_cached(tmp_path, cache_dir):
    args = [*SMALL, "embedding=word2vec", "embedding.epochs=1", "trainer.max_steps=3", "trainer.limit_val_batches=2",
            "trainer.limit_test_batches=2", "logger=none"]
    result = run_lmexp(args, cwd=tmp_path, cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "word2vec trained on" in result.stdout + result.stderr
    first = json.loads((only_run_dir(tmp_path) / "results.json").read_text())
    second = train_here(args, tmp_path / "second", cache_dir)  # in the worker: the vectors come from the cache
    assert first["embedding_from_cache"] is False and second["embedding_from_cache"] is True
    assert first["embedding_vocab_coverage"] > 0.99 and 0.9 < first["embedding_token_coverage"] <= 1.0
    assert first["test_ppl"] == second["test_ppl"]  # the same vectors, the same seed


def test_freezing_a_tied_embedding_is_refused_in_one_line(tmp_path, cache_dir):
    result = run_lmexp([*SMALL, "embedding=word2vec", "embedding.freeze=true", "trainer.max_steps=1"], cwd=tmp_path,
                       cache_dir=cache_dir)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "lmexp: error: embedding.freeze=true would also freeze the tied output layer; set model.tie_weights=false"]


def test_a_sweep_gives_each_job_its_folder_and_wandb_run_and_ends_with_a_summary(tmp_path, cache_dir):
    """A 4-job grid in which two jobs run out of memory at step 2, after their W&B runs started:
    the sweep goes on, every job that finished has its own W&B run (a failed job's run was closed,
    not inherited by the next job), and summary.csv holds each job's own numbers."""
    sweep = tmp_path / "sweep"
    result = run_lmexp(["-m", "model=rnn,gru", "+callbacks.oom.step=2,1000", *SMALL, "logger=wandb",
                        "trainer.max_steps=3", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
                        "+callbacks.oom._target_=faults.AllocateAt", f"+callbacks.oom.bytes={2**60}",
                        f"hydra.sweep.dir={sweep}"], cwd=tmp_path, cache_dir=cache_dir, faults=True)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    failures = [line for line in result.stderr.splitlines() if line.startswith("lmexp: error:")]
    assert len(failures) == 2 and all("out of memory at step 2" in line for line in failures)
    jobs = {j.name: j for j in sweep.glob("*-tiny")}
    assert sorted(jobs) == ["0-rnn-tiny", "1-rnn-tiny", "2-gru-tiny", "3-gru-tiny"]
    results = {name: json.loads((job / "results.json").read_text()) for name, job in jobs.items()}
    assert [results[n]["status"] for n in sorted(jobs)] == ["failed", "finished", "failed", "finished"]
    # A failed job names what a finished one does, which the scaling report keys a study's runs by.
    assert {(results[n]["model"], results[n]["data"], results[n]["tokenizer"]) for n in ("0-rnn-tiny", "2-gru-tiny")} \
        == {("rnn", "tiny", "word"), ("gru", "tiny", "word")}
    for name in ("1-rnn-tiny", "3-gru-tiny"):
        (offline,) = (jobs[name] / "wandb").glob("offline-run-*")
        run = run_record(next(offline.glob("run-*.wandb")))  # every job in the sweep's group
        assert run.run_group == str(sweep) and list(run.tags) == [results[name]["model"], "tiny", "word"]

    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    finished = sorted(("1-rnn-tiny", "3-gru-tiny"), key=lambda n: results[n]["best_val_ppl"])
    assert [r["job"] for r in rows] == [*finished, "0-rnn-tiny", "2-gru-tiny"]  # best first, failed last
    for row in rows:
        record = results[row["job"]]
        assert row["overrides"].startswith(f"model={record['model']} +callbacks.oom.step=")
        if record["status"] == "finished":
            assert row["status"] == "done" and row["error"] == ""
            assert float(row["best_val_ppl"]) == record["best_val_ppl"] and float(row["test_ppl"]) == record["test_ppl"]
            assert int(row["params"]) == record["params"] and float(row["wall_time_s"]) == record["wall_time_s"]
        else:
            assert row["status"] == "failed" and row["best_val_ppl"] == "" and row["error"] in failures[0] + failures[1]
    table = (sweep / "summary.md").read_text()
    assert "4 jobs: 2 done, 2 failed." in table and "Every job: `" in table
    assert (f"lmexp: sweep of 4 jobs, 2 failed (each one's error is in summary.md); best val ppl "
            f"{results[finished[0]]['best_val_ppl']:.2f} ({finished[0]})") in result.stdout

    # python -m lmexp.summary makes the same files again, and tells a job killed before its end
    # (no results.json) from one that failed.
    from lmexp.summary import main as summarize

    written = (sweep / "summary.csv").read_text()
    summarize([str(sweep)])
    assert (sweep / "summary.csv").read_text() == written
    (jobs[finished[1]] / "results.json").unlink()
    summarize([str(sweep)])
    assert "4 jobs: 1 done, 2 failed, 1 unfinished." in (sweep / "summary.md").read_text()
    with pytest.raises(SystemExit) as refused:
        summarize([str(tmp_path)])
    assert refused.value.code == 2


def test_the_network_guard_refuses_and_lists_what_a_process_tries(tmp_path):
    """The negative control of the W&B test's 'no connection': the guard does see attempts."""
    attempts = tmp_path / "connections.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests" / "no_network"), "LMEXP_TEST_CONNECTIONS": str(attempts)}
    code = "import socket\ntry:\n    socket.create_connection(('api.wandb.ai', 443), timeout=1)\nexcept OSError:\n    pass"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    assert attempts.read_text() == "getaddrinfo api.wandb.ai\n"


@pytest.mark.parametrize("max_nonfinite", [None, "below"])
def test_skip_nonfinite_skips_exactly_the_batches_with_a_nan_loss(tmp_path, cache_dir, max_nonfinite):
    """A token whose input embedding is NaN (tests/faults.py's PoisonRow) makes the loss NaN in
    exactly the training windows that read it: those are skipped and counted, the rest train."""
    from lmexp.cli import compose
    from lmexp.config import load_settings
    from lmexp.data.cache import prepare_corpus
    from lmexp.data.datamodule import StreamWindows
    from lmexp.data.tokenizers import tokenizer_for

    overrides = [*SMALL, "model.tie_weights=false", "trainer.max_epochs=1", "trainer.limit_train_batches=40",
                 "logger=csv", f"paths.cache_dir={cache_dir}"]
    settings = load_settings(compose(overrides))
    ids = prepare_corpus(settings.data, tokenizer_for(settings), settings.paths.cache()).ids
    windows = StreamWindows(ids["train"], settings.data.batch_size, settings.data.bptt)
    read = [set(np.unique(windows[k][0].numpy())) for k in range(40)]
    elsewhere = set(np.unique(ids["valid"])) | set(np.unique(ids["test"]))  # a NaN there would stop validation
    token, skipped = next((t, n) for t in range(int(ids["train"].max()) + 1) if t not in elsewhere
                          for n in [sum(t in r for r in read)] if 2 <= n <= 4)
    limit = skipped - 1 if max_nonfinite == "below" else 10
    poisoned = [*overrides[:-1], "trainer.skip_nonfinite=true", f"trainer.max_nonfinite={limit}",
                "trainer.limit_val_batches=4", "trainer.limit_test_batches=4",
                "+callbacks.poison._target_=faults.PoisonRow", f"+callbacks.poison.row={token}"]
    if max_nonfinite == "below":  # the command line's one line
        result = run_lmexp(poisoned, cwd=tmp_path, cache_dir=cache_dir, faults=True)
        assert the_error_line(result).startswith(f"lmexp: error: {skipped} batches had a NaN or infinite loss, more "
                                                 f"than trainer.max_nonfinite={limit}")
        return
    results = train_here(poisoned, tmp_path / "run", cache_dir)
    # Lightning still counts a skipped batch's step; with no gradients its optimizer step changes nothing.
    assert results["nonfinite_skipped"] == skipped and results["steps"] == 40
    assert math.isfinite(results["test_ppl"]) and results["test_ppl"] < results["vocab_size"]


def test_a_wandb_agents_run_over_a_config_group_keeps_the_groups_settings(tmp_path, cache_dir):
    """W&B's agent hands a run its parameters in a file (WANDB_SWEEP_PARAM_PATH) whose keys
    replace the run's config keys and stay locked. For sweeps/architectures_grid.yaml's
    ``model: gru``, lmexp's ``model`` mapping (name, sizes) would be lost: it is kept beside it,
    flat, and the sweep's own values stay as the agent gave them (its grid finds points by them)."""
    params = tmp_path / "params.yaml"
    params.write_text("model:\n  value: gru\nseed:\n  value: 1235\noptimizer.lr:\n  value: 0.5\n")
    result = run_lmexp(["model=gru", "seed=1235", "optimizer.lr=0.5", *SMALL, "logger=wandb", "trainer.max_steps=2",
                        "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "hydra.run.dir=run"],
                       cwd=tmp_path, cache_dir=cache_dir, environ={"WANDB_SWEEP_PARAM_PATH": str(params)})
    assert result.returncode == 0, result.stderr[-3000:]
    (run_file,) = (tmp_path / "run").glob("wandb/offline-run-*/run-*.wandb")
    config, _ = config_and_history(run_file)
    assert config["model"] == "gru" and config["seed"] == 1235 and config["optimizer.lr"] == 0.5
    assert config["model.name"] == "gru" and config["model.hidden_size"] == 32 and config["model.num_layers"] == 1
    assert config["optimizer"]["lr"] == 0.5 and config["data"]["batch_size"] == 16  # not swept: nested as always


def test_a_wandb_runs_summary_holds_its_best_validation_for_a_sweep_to_rank(tmp_path, monkeypatch):
    """A W&B sweep (sweeps/*.yaml) ranks runs by their summary's val/ppl, which W&B keeps as the
    last value logged; the run's tested checkpoint is its best validation's, which lmexp puts there."""
    from lmexp.loggers import WandbRunLogger
    from wandb_records import summary

    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbRunLogger(project="lmexp-test", save_dir=str(tmp_path), mode="offline", config={})
    for step, ppl in enumerate((5.0, 3.0, 4.0)):
        logger.log_metrics({"val/ppl": ppl}, step=step)
    logger.log_results({"status": "finished", "best_val_ppl": 3.0})
    logger.experiment.finish()
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    assert summary(run_file)["val/ppl"] == 3.0


def test_a_run_folder_named_with_hydras_own_interpolation_is_not_refused(tmp_path):
    """hydra.run.dir=.../${hydra:job.name} resolves only in Hydra's own run: the check before Hydra
    leaves it be rather than refusing it as 'cannot be resolved'."""
    from lmexp.__main__ import check_run_folder

    check_run_folder([f"hydra.run.dir={tmp_path}/${{hydra:job.name}}"], compose([]))
    check_run_folder([f"hydra.sweep.dir={tmp_path}/${{hydra:job.name}}"], compose([]), "hydra.sweep.dir",
                     "outputs/multirun")


def test_the_summary_line_tells_the_training_speed(tmp_path):
    from lmexp.train import summary

    results = {"model": "lstm", "data": "tiny", "best_val_ppl": 150.0, "test_ppl": 140.0, "test_unigram_ppl": 400.0,
               "train_tokens_per_sec": 12345.6, "steps": 10, "wall_time_s": 9.0, "epochs": 1}
    assert ", 10 steps, 12,346 tok/s, 9 s -> " in summary(results, tmp_path)
    assert ", 10 steps, n/a, 9 s -> " in summary({**results, "train_tokens_per_sec": None}, tmp_path)
