"""Faults injected into real runs through the callbacks group (``+callbacks.X._target_=faults.Y``).

Test runs put this folder on PYTHONPATH (``run_lmexp(..., faults=True)``).
"""

import pytorch_lightning as pl
import torch


class PoisonWeights(pl.Callback):
    """After optimizer step ``at_step``, every weight becomes NaN: the loss of every later step is NaN."""

    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at_step:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.fill_(float("nan"))
