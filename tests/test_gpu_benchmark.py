"""benchmarks/gpu.py at its tiny size on the CPU (as it runs where no GPU is lent): every row
trains, the GPT rows' MFU is a fraction of the measured peak, and the results get their table."""

import datetime
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT


@pytest.mark.slow
def test_the_gpu_benchmark_runs_tiny_on_the_cpu(tmp_path):
    results = tmp_path / "RESULTS.md"  # not the committed benchmarks/RESULTS.md
    env = {**os.environ, "OMP_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": "", "LMEXP_CACHE": str(tmp_path / "cache")}
    # About 40 s alone on 2 cores (imports, a compilation, three short runs); the limit allows a busy machine.
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--tiny", "--results", str(results)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    *rows, summary = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]

    assert [r["row"] for r in rows] == ["gpt2-tiny", "gpt2-tiny", "lstm-2x64"]
    assert [r["compile"] for r in rows[:2]] == [False, True]
    assert rows[0]["graphs_compiled"] == 0 < rows[1]["graphs_compiled"]  # the setting compiled, not a label
    assert all(r["device"] == "cpu" and r["tokens_per_sec"] > 0 and r["peak_memory_mb"] > 0 for r in rows)
    assert all(r["vocab"] == 1000 for r in rows)  # the synthetic corpus gives the vocabulary asked for
    for gpt in rows[:2]:
        # The peak is the best rate of a 1024^3 float32 product, the same precision; a tiny
        # model's products of 128-wide matrices run far below it, so the MFU is well inside (0, 1].
        assert math.isfinite(gpt["mfu"]) and 0 < gpt["mfu"] <= 1
        # size=tiny: 2 layers of width 128, window 128. 6 per parameter, the output layer (tied to the
        # embedding) included and the position table (a lookup) not, and attention's 6 x layers x window x width.
        assert gpt["flops_per_token"] == 6 * (gpt["params"] - 128 * 128) + 6 * 2 * 128 * 128
    # The LSTM's output layer is its own (zaremba's recipe, untied): its matrix counts, the input
    # embedding (a lookup, 1,000 x 64) and the output bias do not. Untied, it was once left out (4.2x too
    # few FLOPs for the 2 x 650 row).
    lstm = rows[2]
    assert lstm["flops_per_token"] == 6 * (lstm["params"] - 1000 * 64 - 1000)
    assert summary["tiny"] and summary["wall_s"] > 0 and summary["results"] == str(results)

    text = results.read_text()
    assert f", {datetime.date.today().isoformat()}" in text and f"torch {torch.__version__}" in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| row |") and len(table) == 1 + len(rows)
