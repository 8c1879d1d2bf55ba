"""benchmarks/memory.py at a small scale: a tiny GPT-2 on 1% and 50% of WikiText-103's size.

What the checks can see: the larger corpus's train ids are 100 MB on disk, against 225 MB of
model state and activations in lmexp's estimate, and a run's peak moves by 25 MB from one run
to the next, once by 76 MB (at 20% of the size, with 40 MB of ids, that once read as 2.03 MB per
MB of ids added, a copy's growth: hence 50%). So they test how the peak grows with the ids (0.19
MB per MB of ids added while training, here), not its level: any copy made from the mapped ids reads the mapping
whole, and with the copy beside it adds at least 2 MB per MB of ids. They also read how much of
the mapping is resident. They cannot see less than about 25 MB (a copy of part of the ids), nor
tell a run that holds nothing per token from one that holds a little. The absolute bound, with
its margin for what does not grow with the corpus, catches only a copy several times the ids'
size. Needs the real corpora in ../shared/data (or LMEXP_SHARED_DATA); about 80 s on 2 cores.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, THREADS

sys.path.insert(0, str(ROOT / "benchmarks"))
from memory import GROWTH_BAR  # noqa: E402  (benchmarks/memory.py)
from prepare_large import SOURCES  # noqa: E402  (the real corpora the stand-in repeats)

SHARED = Path(os.environ.get("LMEXP_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
# What a run holds beyond lmexp's estimate that does not grow with the corpus (modules imported
# after the baseline, Lightning, the allocator's slack, the estimate's own error): 59-131 MB here.
MARGIN_MB = 200

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    missing = [s for s in SOURCES if not (SHARED / s).is_file()]
    if missing:
        pytest.skip(f"{SHARED / missing[0]} is absent (set LMEXP_SHARED_DATA to a folder holding the real corpora)")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory.py"), "--scale", "0.01", "0.5",
                           "--model-size", "tiny", "--steps", "2", "--threads", str(THREADS), "--shared", str(SHARED),
                           "--work", str(tmp_path_factory.mktemp("memory"))],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_each_run_has_a_peak_and_the_ids_grow_with_the_corpus(report):
    small, large = report["runs"]
    for run in (small, large):
        assert 0 < run["baseline_mb"] < run["fit_peak_mb"] <= run["test_peak_mb"] <= run["peak_mb"], run
        assert run["steps"] == 2 and run["vocab"] < 50_257  # the word tokenizer's vocabulary, not GPT-2's
    assert small["scale"] < large["scale"]
    assert small["train_tokens"] < large["train_tokens"] and 5 * small["ids_mb"] < large["ids_mb"]


def test_training_leaves_the_ids_on_disk(report):
    large = report["runs"][-1]
    assert report["growth"]["fit_peak_mb"] < GROWTH_BAR, report
    assert large["ids_resident_fit_mb"] < 0.5 * large["ids_mb"], large  # 4 of 100 MB: the windows read
    assert large["fit_peak_mb"] - large["baseline_mb"] < large["ids_mb"] + large["estimate_mb"] + MARGIN_MB


def test_the_whole_run_does_not_copy_the_ids(report):
    # Before the unigram perplexity counted the ids a block at a time, np.bincount copied them
    # whole as int64: the whole run's peak rose 2.5 to 4.3 bytes per byte of ids, a copy of 1.5
    # to 3.3 beside the mapping it read whole. Now less than one (benchmarks/memory.py: COPY_BAR).
    assert report["ok"], report["growth"]
    assert 0.9 <= report["growth"]["peak_mb"] - report["growth"]["beside_mapping_mb"] <= 1.1  # the mapping, read whole
