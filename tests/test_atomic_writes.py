"""A process killed in the middle of writing a checkpoint leaves the previous checkpoint whole,
and one killed while it writes a token-cache entry leaves no entry behind.
Runs save through lmexp.checkpoint.AtomicCheckpointIO, which is ``torch.save`` into
lmexp.atomic.replaced (results.json is written through it too); the writer below saves through
it. The control: the same kill during a plain ``torch.save`` leaves a broken file, which shows
that the test does hit the middle of a write."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, clean_env, entry_point

# Writes a checkpoint of 64 MiB whole (printing 1), then starts the next one and stalls halfway
# through it (printing "stalled"): the moment to kill it, hit every time rather than raced for.
# From then on a file may grow to 32 MiB only (RLIMIT_FSIZE): the write past that fails with a
# SIGXFSZ, whose handler (Python ignores the signal unless told) holds the process before the
# failed save can clean up after itself.
WRITER = """
import resource, signal, sys, time, torch
from lmexp.checkpoint import AtomicCheckpointIO
path, atomic = sys.argv[1], sys.argv[2] == "atomic"
weights = torch.arange(16 * 2**20, dtype=torch.float32)

def stall(*_):
    print("stalled", flush=True)
    time.sleep(600)

signal.signal(signal.SIGXFSZ, stall)
for version in (1, 2):
    checkpoint = {"version": version, "weights": weights}
    if atomic:
        AtomicCheckpointIO().save_checkpoint(checkpoint, path)
    else:
        torch.save(checkpoint, path)
    print(version, flush=True)
    resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 2**20, resource.RLIM_INFINITY))
"""


def kill_mid_write(path: Path, atomic: bool) -> None:
    """Start the writer, let it finish one checkpoint, then SIGKILL it halfway through the next."""
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "atomic" if atomic else "plain"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "1"  # one whole checkpoint on disk
        assert writer.stdout.readline().strip() == "stalled"  # half of the next one written
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        written = path.with_name(f".{path.name}.{writer.pid}.tmp") if atomic else path
        assert written.stat().st_size == 32 * 2**20  # the kill landed mid-write
    finally:
        writer.kill()
        writer.wait()


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one_whole(tmp_path):
    path = tmp_path / "last.ckpt"
    kill_mid_write(path, atomic=True)
    checkpoint = torch.load(path, weights_only=True)  # whole: it loads, and its tensor is intact
    assert checkpoint["version"] >= 1
    assert torch.equal(checkpoint["weights"], torch.arange(16 * 2**20, dtype=torch.float32))


def test_control_the_same_kill_during_a_plain_save_breaks_the_file(tmp_path):
    path = tmp_path / "last.ckpt"
    kill_mid_write(path, atomic=False)
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)


def test_runs_save_their_checkpoints_atomically(tmp_path, cache_dir):
    from hydra import compose, initialize_config_dir

    from conftest import CONF_DIR
    from lmexp.checkpoint import AtomicCheckpointIO
    from lmexp.run import Run

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["logger=none", f"paths.cache_dir={cache_dir}"])
    trainer = Run.from_config(cfg).trainer(tmp_path, callbacks=[], loggers=[])
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    trainer.strategy.checkpoint_io.save_checkpoint({"step": 3}, tmp_path / "checkpoints" / "last.ckpt")
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True) == {"step": 3}
    assert os.listdir(tmp_path / "checkpoints") == ["last.ckpt"]  # no temporary file left behind


def test_a_kill_while_tokenizing_leaves_no_cache_entry_a_later_run_would_trust(tmp_path):
    """The token cache writes an entry in a temporary folder beside it and renames it whole: a
    prepare killed while it writes leaves nothing under the entry's name, and the next one
    tokenizes again and reports what a never-killed one does."""
    words = [f"w{i}" for i in range(5000)]
    generator = torch.Generator().manual_seed(0)
    picks = torch.randint(0, len(words), (600_000,), generator=generator).tolist()
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(" ".join(words[i] for i in picks[j:j + 12]) for j in range(0, len(picks), 12)) + "\n")
    args = ["data=text", f"data.path={text}", "tokenizer=char"]
    cache = tmp_path / "cache"
    prepare = subprocess.Popen([sys.executable, "-m", "lmexp.prepare", *args], cwd=tmp_path,
                               env=clean_env(cache, tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    entries = cache / "tokens"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (entries.is_dir() and any(entries.glob(".tmp-*"))):
        time.sleep(0.005)
    os.kill(prepare.pid, signal.SIGKILL)
    assert prepare.wait() == -signal.SIGKILL, "prepare finished before the kill"
    assert any(entries.glob(".tmp-*"))  # the kill landed while the entry was being written
    # Nothing but the temporary folder and the entry's lock file (both named with a dot, never read as entries).
    assert [p.name for p in entries.iterdir() if not p.name.startswith(".")] == []
    again = entry_point("lmexp.prepare", args, tmp_path, cache)
    assert again.returncode == 0, again.stderr[-2000:]
    never_killed = entry_point("lmexp.prepare", args, tmp_path, tmp_path / "another cache")
    again, never_killed = json.loads(again.stdout), json.loads(never_killed.stdout)
    assert not again["from_cache"] and again["splits"] == never_killed["splits"]
    assert again["vocab_size"] == never_killed["vocab_size"]
