"""Perplexity agrees between 1 and 2 processes (DDP on CPU, gloo backend)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def validate_with(devices: int, tmp_path: Path, cache_dir: Path) -> dict:
    out = tmp_path / f"metrics-{devices}.json"
    env = {**os.environ, "LMEXP_CACHE": str(cache_dir)}
    result = subprocess.run([sys.executable, str(HERE / "ddp_validate.py"), str(devices), str(out), str(cache_dir)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


def test_one_and_two_processes_report_the_same_perplexity(tmp_path, cache_dir):
    one = validate_with(1, tmp_path, cache_dir)
    two = validate_with(2, tmp_path, cache_dir)
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert two["val/tokens"] == one["val/tokens"]
    assert two["val/ppl"] == pytest.approx(one["val/ppl"], rel=1e-6)


def test_two_process_training_from_the_command_line(tmp_path, cache_dir):
    from conftest import SMALL, run_lmexp

    result = run_lmexp([*SMALL, "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
                        "trainer.max_steps=10", "logger=csv"], cwd=tmp_path, cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = list((tmp_path / "outputs").glob("*/*"))
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == 10 and results["best_val_ppl"] > 1 and results["test_ppl"] > 1
    assert result.stdout.count("lmexp: lstm on tiny") == 1  # reported once, by rank 0
    assert (run_dir / "train_ddp_process_1.log").exists()  # the second process ran in the same folder
