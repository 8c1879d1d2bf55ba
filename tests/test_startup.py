"""Start-up: a config mistake, --help and --cfg job import neither torch nor Lightning, which
take seconds; every option's code is still found when a run needs it."""

import inspect
import os
import signal
import subprocess
import sys

import pytest

from conftest import ROOT, clean_env
from lmexp.config import REGISTRIES
from lmexp.options.trainer import lightning_arguments

HEAVY = ("torch", "pytorch_lightning", "lightning_fabric", "torchmetrics", "transformers")


def imported(args: list[str], tmp_path) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``python <args>`` and return it with the top-level packages it imported."""
    done = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=tmp_path,
                          env=clean_env(tmp_path / "cache", tmp_path), capture_output=True, text=True, timeout=300)
    modules = {line.rsplit("|", 1)[-1].strip().split(".")[0]
               for line in done.stderr.splitlines() if line.startswith("import time:")}
    return done, modules


@pytest.mark.parametrize("module, args, code, says", [
    ("lmexp", ["regularization.dropout=1.5"], 2, "regularization.dropout=1.5: must be in [0, 1)"),
    ("lmexp", ["data=text"], 2, "data.path=null: must be"),
    ("lmexp", ["model.hiden_size=3"], 2, "did you mean model.hidden_size?"),
    ("lmexp", ["+trainer.max_epoch=3"], 2, "trainer.max_epoch is not a setting"),
    ("lmexp", ["model=gpt2", "model.n_embd=100", "model.n_head=3"], 2, "model.n_embd=100: must be divisible"),
    ("lmexp", ["--help"], 0, "model: gpt2, gru, lstm, rnn, transformer"),
    ("lmexp", ["--cfg", "job"], 0, "hidden_size: 256"),
    # --cfg job printed it, and the run refused it (until 2026-12-02, a review)
    ("lmexp", ["data.eval_batch_size=auto", "--cfg", "job"], 2, "eval_batch_size=auto: must be a number for model=lstm"),
    ("lmexp.prepare", ["data=tiny"], 0, '"vocab_size"'),  # tokenizing is NumPy's work
    ("lmexp.evaluate", [], 2, "name one model: ckpt=PATH"),
    ("lmexp.evaluate", ["--help"], 0, "  ckpt=null  (default)"),  # was 'argument '--help' is not key=value'
    ("lmexp.generate", ["-h"], 0, "  max_new_tokens=50  (default)"),
    ("lmexp.evaluate", ["ckpt=x.ckpt", "split=dev"], 2, "split=dev is not a split"),
    ("lmexp.evaluate", ["ckpt=missing.ckpt"], 2, "checkpoint missing.ckpt does not exist"),
    ("lmexp.sweeps", ["--help"], 0, "usage: python -m lmexp.sweeps [FILE ...]"),  # was: --help: cannot be read
    ("lmexp.summary", ["-h"], 0, "usage: python -m lmexp.summary SWEEP_DIR"),  # was: exit status 2
])
def test_checks_before_the_work_import_no_torch(module, args, code, says, tmp_path):
    done, modules = imported(["-m", module, *args], tmp_path)
    output = done.stdout + "\n".join(l for l in done.stderr.splitlines() if not l.startswith("import time:"))
    assert done.returncode == code, output[-2000:]
    assert says in output
    if code:  # a config error is one line on stderr, never a traceback ending in the message
        told = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
        assert len(told) == 1 and says in told[0], told
    assert not modules & set(HEAVY), f"imported {sorted(modules & set(HEAVY))}"


def test_the_import_check_sees_torch(tmp_path):
    """The control: the same check on code that does import torch finds it."""
    done, modules = imported(["-c", "import lmexp.models"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {"torch", "lmexp"} <= modules


def test_help_lists_options_not_schemas_and_composes_overrides(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lmexp", "model=gpt2", "optimizer.lr=0.002", "--help"], cwd=tmp_path,
                          env=clean_env(tmp_path / "cache", tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    groups = dict(line.strip().split(": ", 1) for line in done.stdout.split("Config groups")[1].split("\n\n")[0]
                  .splitlines()[1:])
    assert groups["model"] == "gpt2, gru, lstm, rnn, transformer"  # no base_gpt2: a schema, not an option
    # conf/hydra/ holds options of Hydra's own groups (hydra/sweeper=optuna), under --hydra-help
    assert set(groups) == {p.name for p in (ROOT / "conf").iterdir() if p.is_dir()} - {"hydra"}
    assert "  size: small\n" in done.stdout and "  lr: 0.002\n" in done.stdout
    assert "hidden_size" not in done.stdout  # the lstm default is replaced
    bad = subprocess.run([sys.executable, "-m", "lmexp", "model=gpx", "--help"], cwd=tmp_path,
                         env=clean_env(tmp_path / "cache", tmp_path), capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "lmexp: error: model=gpx is not an option; choose one of: gpt2, gru, lstm, rnn, transformer"]


def test_lightning_arguments_read_from_source_match_the_signature():
    import pytorch_lightning as pl

    assert lightning_arguments() == [p for p in inspect.signature(pl.Trainer.__init__).parameters if p != "self"]


@pytest.mark.parametrize("group", sorted(REGISTRIES))
def test_every_option_finds_its_code(group):
    for name, entry in REGISTRIES[group].items():
        assert callable(entry.make), f"{group}={name}: {entry.target!r}"


def test_cfg_prints_settings_without_claiming_or_checking_a_run_folder():
    """--cfg job only prints: check_before_hydra gives no composed run (so run() makes no
    outputs/<date>-... folder for it) and does not refuse a run folder it will never make."""
    from lmexp.__main__ import check_before_hydra

    argv = ["--cfg", "job", "model=gru", "hydra.run.dir=/proc/lmexp-run"]
    assert check_before_hydra(argv, argv) is None


@pytest.mark.parametrize("module", ["lmexp", "lmexp.evaluate", "lmexp.generate", "lmexp.prepare", "lmexp.sweeps"])
def test_help_read_by_a_reader_that_left_ends_quietly(module, tmp_path):
    """``--help | head -1``: the reader may close the pipe before the help is written. The command
    ends as other tools do, with no word and 128 + SIGPIPE; it gave BrokenPipeError's traceback
    (and status 1) until 2026-12-02. Here the reader has left before the command starts."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=tmp_path, stdout=write_end,
                              stderr=subprocess.PIPE, env=clean_env(tmp_path / "cache", tmp_path), text=True,
                              timeout=300)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (128 + signal.SIGPIPE, "")
