"""What the benchmarks that start `python -m lmexp` need to pin and to read back from the run.

``pinned_env(threads)`` is the environment for the child: every thread and process pool it
may use is held to ``threads``. ``RunProbe`` goes into the child's callbacks with

    PYTHONPATH=benchmarks  +callbacks.probe._target_=run_probe.RunProbe

and writes ``probe.json`` into the run folder: the thread count the run's own process had
(what was set, not what was asked for) and how long training took, apart from the tokenizing,
validation and testing that the run's wall time also covers.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

HERE = Path(__file__).resolve().parent
CALLBACK = "+callbacks.probe._target_=run_probe.RunProbe"


def pinned_env(threads: int, **extra: str) -> dict:
    # torch reads OMP_NUM_THREADS (MKL its own) when it starts; lmexp's tokenizing pool is
    # LMEXP_WORKERS processes, and Hugging Face tokenizers has a Rust pool of RAYON_NUM_THREADS.
    n = str(threads)
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "LMEXP_WORKERS": n,
            "RAYON_NUM_THREADS": n, "PYTHONPATH": path, **extra}


def read_probe(run_dir: Path) -> dict:
    return json.loads((run_dir / "probe.json").read_text())


class RunProbe(pl.Callback):
    """probe.json: ``threads`` (torch's intra-op threads in the run), ``train_s`` (the training
    batches alone: forward, backward, optimizer step, their hooks), ``fit_s`` (trainer.fit:
    training and the validation between epochs)."""

    def on_fit_start(self, trainer, pl_module):
        self.fit_start, self.train_s = time.perf_counter(), 0.0
        self.threads, self.interop_threads = torch.get_num_threads(), torch.get_num_interop_threads()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batch_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train_s += time.perf_counter() - self.batch_start

    def on_fit_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            Path(trainer.default_root_dir, "probe.json").write_text(json.dumps({
                "threads": self.threads, "interop_threads": self.interop_threads, "train_s": round(self.train_s, 2),
                "fit_s": round(time.perf_counter() - self.fit_start, 2), "devices": trainer.num_devices,
                "accelerator": type(trainer.accelerator).__name__}) + "\n")
