"""Validate one freshly initialised model with N processes and write the metrics (rank 0).

Run by test_ddp.py as `python ddp_validate.py N OUT.json CACHE_DIR`; Lightning's DDP launcher
starts the other processes by running this same command again.
"""

import json
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir

from lmexp.run import Run

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    devices, out, cache_dir = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["model.embedding_size=32", "model.hidden_size=32", "logger=none",
                                           "data.eval_batch_size=8", "data.bptt=50", f"paths.cache_dir={cache_dir}"])
    run = Run.from_config(cfg)
    module, dm = run.module, run.datamodule
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                         logger=False, enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False)
    (metrics,) = trainer.validate(module, datamodule=dm, verbose=False)
    if trainer.is_global_zero:
        out.write_text(json.dumps({**metrics, "world_size": trainer.world_size}))
    if torch.distributed.is_initialized():
        # Exiting with the gloo group alive lets its threads race the interpreter's teardown
        # ("terminate called without an active exception", seen once under load).
        torch.distributed.destroy_process_group()
