"""One training step and one validation batch of each of several runs, with the memory they took.

Run by test_memory.py as ``python memory_peak.py OUT CACHE_DIR OVERRIDES [-- OVERRIDES ...]``: one
interpreter for all the runs (each one more would spend seconds importing torch), each measured
from a clean start: the previous run's objects collected and the allocator's free memory handed
back to the kernel (``malloc_trim``), so that a run cannot reuse memory its predecessor left
resident. Writes OUT (JSON), for each run, its estimate and the peak resident memory of the step
and the validation batch above what the process held once the run was built (its weights
already built; the kernel's peak reset just before).
"""

import ctypes
import gc
import json
import sys
import tempfile
from pathlib import Path

from lmexp.cli import compose
from lmexp.memory import peak_resident, reset_peak_resident, resident
from lmexp.run import Run


def measure(cache_dir: str, overrides: list[str]) -> dict:
    run = Run.from_config(compose([*overrides, "logger=none", f"paths.cache_dir={cache_dir}"]))
    estimate = run.plan.estimate
    with tempfile.TemporaryDirectory() as folder:
        trainer = run.trainer(Path(folder), callbacks=[], loggers=[], max_steps=1, limit_val_batches=1,
                              num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False,
                              enable_checkpointing=False)
        run.datamodule.setup("fit")
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        before = resident()
        reset_peak_resident()  # the peak from here on
        trainer.fit(run.module, datamodule=run.datamodule)
        # max_steps=1 ends the fit before any validation: one batch of it here, whose evaluation
        # estimate was otherwise never held against a real peak
        trainer.validate(run.module, datamodule=run.datamodule, verbose=False)
        peak = peak_resident()
    return {"overrides": overrides, "estimate": estimate.__dict__, "total": estimate.total, "measured": peak - before}


def main(out: str, cache_dir: str, *args: str) -> None:
    runs, current = [], []
    for arg in [*args, "--"]:
        if arg == "--":
            runs.append(current)
            current = []
        else:
            current.append(arg)
    results = []
    for overrides in runs:
        results.append(measure(cache_dir, overrides))
        gc.collect()
    Path(out).write_text(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:])
