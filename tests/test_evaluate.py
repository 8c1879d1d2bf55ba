"""`lmexp.evaluate` on averaged weights, on another corpus, on the train split; resuming from
the raw weights an averaging optimizer stores beside the averages; AR/TAR in a real run's log."""

import csv
import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from pytorch_lightning import Callback

from conftest import SMALL, clean_env, entry_here, entry_point, handles_sigterm, train_here
from lmexp.callbacks import WeightAveraging
from lmexp.cli import compose
from lmexp.config import load_settings
from lmexp.data.corpora import CORPORA, DataConfig
from lmexp.prepare import prepare
from lmexp.run import Run


@pytest.fixture(scope="module")
def asgd_run(tmp_path_factory, cache_dir):
    """Averaged SGD from step 5, one validation of the whole valid split at step 20, AR and TAR on."""
    run_dir = tmp_path_factory.mktemp("asgd") / "run"
    train_here([*SMALL, "optimizer=asgd", "optimizer.lr=20", "optimizer.t0=5", "trainer.max_steps=20",
                "trainer.val_check_interval=20", "trainer.limit_test_batches=4", "trainer.log_every_n_steps=5",
                "regularization.ar=2", "regularization.tar=1", "logger=csv"], run_dir, cache_dir)
    return run_dir


def evaluate(args: list[str], cwd, cache_dir) -> dict:
    result = entry_point("lmexp.evaluate", args, cwd, cache_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def evaluate_here(args: list[str], cache_dir, capsys) -> dict:
    """The same command line in this process (the one above goes through a fresh interpreter)."""
    return json.loads(entry_here("lmexp.evaluate", args, cache_dir, capsys).strip().splitlines()[-1])


def logged(run_dir, key: str) -> list[float]:
    with (run_dir / "metrics.csv").open() as f:
        return [float(row[key]) for row in csv.DictReader(f) if row.get(key)]


def validate(run: Run, tmp_path) -> float:
    trainer = run.trainer(tmp_path, callbacks=[], loggers=[], enable_progress_bar=False, enable_model_summary=False)
    (metrics,) = trainer.validate(run.module, datamodule=run.datamodule, verbose=False)
    return metrics["val/ppl"]


def test_evaluate_scores_the_averaged_weights_the_run_validated(asgd_run, cache_dir, tmp_path):
    ckpt = asgd_run / "checkpoints" / "last.ckpt"
    got = evaluate([f"ckpt={ckpt}", "split=valid"], tmp_path, cache_dir)  # as a user runs it
    (run_val,) = logged(asgd_run, "val/ppl")
    assert got["ppl"] == pytest.approx(run_val, rel=1e-6)
    # The control: the raw weights stored beside the averages score another number.
    run = Run.from_checkpoint(ckpt, [f"paths.cache_dir={cache_dir}"], split="valid")
    raw = torch.load(ckpt, weights_only=True)["raw_state_dict"]
    run.module.load_state_dict(raw, strict=False)
    assert validate(run, tmp_path) != pytest.approx(got["ppl"], rel=1e-3)


def test_evaluate_on_another_corpus_and_on_the_train_split(asgd_run, cache_dir, tmp_path, monkeypatch, capsys):
    """The same text read through data=text scores what the embedded corpus's valid split does,
    whether it is named as the valid or as the train split; an override reaches the scoring."""
    ckpt = asgd_run / "checkpoints" / "last.ckpt"
    tiny = CORPORA.option("tiny").make(DataConfig(), cache_dir).files
    for split in ("valid", "test"):  # the valid text stands in for train too: tokenized, never scored
        shutil.copy(tiny[split], tmp_path / f"{split}.txt")
    shutil.copy(tiny["valid"], tmp_path / "same-as-valid.txt")
    text = ["data=text", f"data.valid={tmp_path / 'valid.txt'}", f"data.test={tmp_path / 'test.txt'}"]
    # The reference: the run's own validation of the embedded corpus's valid split, which
    # test_evaluate_scores_the_averaged_weights_the_run_validated holds lmexp.evaluate to.
    (reference,) = logged(asgd_run, "val/ppl")
    as_train = evaluate_here([f"ckpt={ckpt}", "split=train", *text, f"data.train={tmp_path / 'same-as-valid.txt'}"],
                             cache_dir, capsys)
    assert as_train["data"] == "text" and as_train["split"] == "train"
    assert as_train["ppl"] == pytest.approx(reference, rel=1e-6)  # float32, as logged
    # Four rows instead of the run's data.eval_batch_size: the streams are cut elsewhere.
    narrower = evaluate_here([f"ckpt={ckpt}", "split=valid", *text, f"data.train={tmp_path / 'same-as-valid.txt'}",
                              "data.eval_batch_size=4"], cache_dir, capsys)
    monkeypatch.setenv("LMEXP_CACHE", str(cache_dir))
    valid = prepare([])["splits"]["valid"]
    tokens = valid["tokens"]
    # The share of the text outside the checkpoint's vocabulary, as lmexp.prepare counts it for the
    # embedded corpus (whose vocabulary the checkpoint's is); more for text the run never saw.
    assert as_train["oov_rate"] == valid["oov_rate"] > 0
    (tmp_path / "foreign.txt").write_text("zyxw vutsr qpon mlkj\n" * 50 + (tmp_path / "valid.txt").read_text())
    foreign = evaluate_here([f"ckpt={ckpt}", "split=valid", *text[:1], f"data.valid={tmp_path / 'foreign.txt'}",
                             text[2], f"data.train={tmp_path / 'same-as-valid.txt'}"], cache_dir, capsys)
    assert foreign["oov_rate"] > as_train["oov_rate"]
    for rows, got in ((16, as_train), (4, narrower)):  # each row: its first token and a short tail unscored
        assert got["tokens"] == rows * (tokens // rows - 1)
    assert narrower["ppl"] != pytest.approx(reference, rel=1e-6)


class FirstWeights(Callback):
    def on_train_start(self, trainer, pl_module):
        self.weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def test_a_resumed_run_continues_from_the_raw_weights_not_the_averages(asgd_run, cache_dir, tmp_path):
    ckpt = asgd_run / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    run = Run.from_checkpoint(ckpt, [f"paths.cache_dir={cache_dir}"], split="valid")
    first = FirstWeights()
    trainer = run.trainer(tmp_path, callbacks=[WeightAveraging(), first], loggers=[], max_steps=21,
                          limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=str(ckpt))
    assert saved["raw_state_dict"]
    for name, raw in saved["raw_state_dict"].items():
        assert torch.equal(first.weights[name], raw), name
        assert not torch.equal(raw, saved["state_dict"][name]), name  # the averages are elsewhere


def test_ar_and_tar_are_logged_by_a_real_run(asgd_run):
    ar, tar, loss = logged(asgd_run, "train/ar"), logged(asgd_run, "train/tar"), logged(asgd_run, "train/loss")
    assert len(ar) == len(tar) == len(loss) == 4  # every log_every_n_steps=5 of 20 steps
    assert all(a > 0 for a in ar) and all(t > 0 for t in tar) and len(set(ar)) == 4


# --- mutation round 7 (2026-12-01): what the tests of evaluate, generate and load_module missed ----


def test_evaluate_reports_the_unigram_perplexity_of_the_split_it_scored(asgd_run, cache_dir, capsys):
    ckpt = asgd_run / "checkpoints" / "last.ckpt"
    scored = {s: evaluate_here([f"ckpt={ckpt}", f"split={s}"], cache_dir, capsys) for s in ("valid", "test")}
    assert scored["valid"]["unigram_ppl"] != scored["test"]["unigram_ppl"]


def test_generate_with_seed_zero_is_reproducible(asgd_run, cache_dir, capsys):
    """seed=0 is a seed, not "none given" (which draws a fresh one each time)."""
    args = [f"ckpt={asgd_run / 'checkpoints' / 'last.ckpt'}", "prompt=the", "max_new_tokens=20", "seed=0"]
    assert entry_here("lmexp.generate", args, cache_dir, capsys) == entry_here("lmexp.generate", args, cache_dir, capsys)


def test_load_module_returns_the_model_in_eval_mode(asgd_run):
    """For the public API's users: dropout off, as the command lines have it."""
    from lmexp.checkpoint import load_module

    assert load_module(asgd_run / "checkpoints" / "last.ckpt").training is False


def test_a_checkpoint_is_scored_with_this_machines_cache_not_the_training_machines(asgd_run, cache_dir, tmp_path,
                                                                                    monkeypatch):
    """The config a checkpoint stores holds the cache folder resolved where it was trained; evaluate and
    generate tokenize into the cache this machine uses (LMEXP_CACHE), not that folder."""
    checkpoint = torch.load(asgd_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    trained_with = tmp_path / "training machine" / "cache"
    checkpoint["hyper_parameters"]["config"]["paths"]["cache_dir"] = str(trained_with)
    torch.save(checkpoint, tmp_path / "moved.ckpt")
    monkeypatch.setenv("LMEXP_CACHE", str(cache_dir))
    run = Run.from_checkpoint(tmp_path / "moved.ckpt", split="valid")
    assert run.settings.paths.cache() == cache_dir and not trained_with.exists()


def test_scoring_a_split_the_corpus_does_not_have_is_one_line(tmp_path):
    """data.split=[0.9, 0.1, 0] cuts no test split: split=test is refused naming it, before any data
    module is built for a split that is not there (a traceback)."""
    from types import SimpleNamespace

    from lmexp.data.tokenizers import tokenizer_for
    from lmexp.errors import ConfigError
    from lmexp.run import Run

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"line {i} of the corpus\n" for i in range(40)))
    settings = load_settings(compose(["data=text", f"data.path={corpus}", "data.split=[0.9,0.1,0]",
                                      f"paths.cache_dir={tmp_path / 'cache'}"]))
    module = SimpleNamespace(hparams=SimpleNamespace(vocab=None))
    with pytest.raises(ConfigError, match=r"^split=test: data=text has no test split"):
        Run.scoring(settings, tokenizer_for(settings), module, "test")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("command, args", [("lmexp.evaluate", ["split=valid"]),
                                           ("lmexp.generate", ["max_new_tokens=1000000", "seed=0"])])
def test_a_stop_in_evaluate_or_generate_is_one_line(command, args, sig, asgd_run, tmp_path, cache_dir):
    """Ctrl+C or SIGTERM once the command has started, while it imports torch (seconds): one line
    and 128 + the signal. Before 2026-12-02 Ctrl+C gave KeyboardInterrupt's traceback from the
    import it fell in, and SIGTERM ended the command without a word. A fresh interpreter: a process
    forked from this one has imported torch already."""
    ckpt = asgd_run / "checkpoints" / "last.ckpt"
    process = subprocess.Popen([sys.executable, "-m", command, f"ckpt={ckpt}", *args], cwd=tmp_path,
                               env=clean_env(cache_dir, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 120
    while not handles_sigterm(process.pid):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.005)
    process.send_signal(sig)
    out, err = process.communicate(timeout=120)
    assert (process.returncode, out, err.splitlines()) == \
        (128 + sig, "", [f"lmexp: {signal.Signals(sig).name}: {command} stopped; nothing was written"]), out + err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_while_evaluate_scores_is_one_line(sig, asgd_run, tmp_path, cache_dir):
    """Ctrl+C or SIGTERM inside Lightning's validation loop (600,000 tokens to score): lmexp's line
    and 128 + the signal. Until 2026-12-02 (a review) the trainer took the stop for its own
    KeyboardInterrupt and ended the process with status 1 and "Detected KeyboardInterrupt,
    attempting graceful shutdown", without lmexp's line."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    words = [f"w{i}" for i in range(500)]
    (corpus / "valid.txt").write_text("".join(" ".join(words[(i + j * 7) % 500] for j in range(30)) + "\n"
                                              for i in range(20000)))
    for split in ("train", "test"):
        (corpus / f"{split}.txt").write_text("w1 w2 w3\n" * 100)
    files = [f"data.{split}={corpus / split}.txt" for split in ("train", "valid", "test")]
    process = subprocess.Popen([sys.executable, "-m", "lmexp.evaluate", f"ckpt={asgd_run / 'checkpoints' / 'last.ckpt'}",
                                "split=valid", "data=text", *files], cwd=tmp_path, env=clean_env(cache_dir, tmp_path),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    before = []
    while not any(line.startswith("GPU available") for line in before):  # Lightning's, as the trainer is made
        line = process.stderr.readline()
        assert line, (before, process.communicate())
        before.append(line)
    time.sleep(1)
    process.send_signal(sig)
    out, err = process.communicate(timeout=120)
    told = [line for line in err.splitlines() if line.startswith("lmexp:") or "Traceback" in line]
    assert (process.returncode, out, told) == \
        (128 + sig, "", [f"lmexp: {signal.Signals(sig).name}: lmexp.evaluate stopped; nothing was written"]), err
