"""lmexp's own Lightning callbacks (the ``callbacks=`` group builds these beside Lightning's).

Behaviour that only some runs need lives here rather than in the LightningModule's hooks,
which every run executes: the averaged weights of ``optimizer=asgd``/``ntasgd``, and the
bookkeeping for throughput and the learning rate.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, EarlyStopping, LearningRateMonitor

from lmexp.optim import NTASGD, averaged_parameters, swap_in_averages

log = logging.getLogger("lmexp")


class TokenThroughput(Callback):
    """Training tokens per second, over every process: ``train/tokens_per_sec`` at each logging
    step (since the last one), and the run's total for ``results.json``.

    Lightning's ``ThroughputMonitor`` would synchronise a GPU after every batch to time it and
    logs samples, batches and FLOPs under its own names; this times the same span (the hooks
    around a batch) without a synchronisation, as tokens.
    """

    def __init__(self) -> None:
        self.tokens, self.seconds = 0, 0.0
        self._tokens_since_log, self._seconds_since_log = 0, 0.0
        self._start: Optional[float] = None

    @property
    def tokens_per_sec(self) -> Optional[float]:
        return self.tokens / self.seconds if self.seconds else None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        seconds = time.perf_counter() - self._start
        tokens = batch[1].numel() * trainer.world_size
        self.tokens += tokens
        self.seconds += seconds
        self._tokens_since_log += tokens
        self._seconds_since_log += seconds
        if trainer.global_step % trainer.log_every_n_steps == 0:
            pl_module.log("train/tokens_per_sec", self._tokens_since_log / self._seconds_since_log)
            self._tokens_since_log, self._seconds_since_log = 0, 0.0


class LearningRate(LearningRateMonitor):
    """Lightning's monitor, logged as ``train/lr``: the rate each step used (it reads it before
    the step). Parameter groups that share one rate, as lmexp's decay and no-decay groups do,
    are one curve instead of one per group."""

    def __init__(self, logging_interval: Optional[str] = "step", log_momentum: bool = False) -> None:
        super().__init__(logging_interval=logging_interval, log_momentum=log_momentum)

    # With logger=none there is nowhere to log to (Lightning's monitor would refuse to start).
    def on_train_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_epoch_start(trainer, *args, **kwargs)

    def _extract_stats(self, trainer: pl.Trainer, interval: str) -> dict[str, float]:
        stats = super()._extract_stats(trainer, interval)
        rates = {k: v for k, v in stats.items() if k.startswith("lr-") or k.startswith("train/lr")}
        if rates and len(set(rates.values())) == 1:
            stats = {k: v for k, v in stats.items() if k not in rates}
            stats["train/lr"] = next(iter(rates.values()))
        return stats


def early_stopping(patience: Optional[int] = None, monitor: str = "val/ppl", mode: str = "min",
                   **kwargs: Any) -> Optional[EarlyStopping]:
    """Lightning's EarlyStopping once ``patience`` (validations without improvement) is set; off while it is null."""
    if patience is None:
        return None
    return EarlyStopping(monitor=monitor, mode=mode, patience=patience, **kwargs)


class WeightAveraging(Callback):
    """The averaged weights of ``optimizer=asgd`` and ``ntasgd`` (Polyak averaging; AWD-LSTM),
    in the shape of Lightning's StochasticWeightAveraging, which averages on its own schedule
    instead of the optimizer's.

    Validation scores the averages, the NT-ASGD switch watches validation, and checkpoints hold
    the averages (so the best checkpoint's test, ``evaluate`` and ``generate`` use them), with
    the raw weights beside them (``raw_state_dict``) from which a resumed run continues.
    """

    def __init__(self) -> None:
        self._swapped: dict = {}

    @staticmethod
    def _averages(trainer: pl.Trainer) -> dict:
        return averaged_parameters(trainer.optimizers[0]) if trainer.optimizers else {}

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swapped = self._averages(trainer)
        swap_in_averages(self._swapped)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        swap_in_averages(self._swapped)  # back to the weights training continues from
        self._swapped = {}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After the module logged this validation, before the checkpoint callback (always last) saves.
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        loss = trainer.callback_metrics.get("val/loss")
        if isinstance(optimizer, NTASGD) and trainer.state.fn == "fit" and not trainer.sanity_checking \
                and loss is not None and optimizer.observe(float(loss)):
            log.info("step %d: validation loss %.4f is worse than the best before the last %d validations; "
                     "NT-ASGD now averages the weights", trainer.global_step, float(loss), optimizer.nonmono)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        averages = self._averages(trainer)
        if not averages:
            return
        state, raw = checkpoint["state_dict"], {}
        for name, p in pl_module.named_parameters(remove_duplicate=False):  # a tied matrix under each name
            if p in averages:
                raw[name], state[name] = state[name], averages[p].detach().clone()
        checkpoint["raw_state_dict"] = raw

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        raw = checkpoint.get("raw_state_dict")
        if raw and trainer.state.fn == "fit":  # resuming: continue from the raw weights, not the averages
            with torch.no_grad():
                params = dict(pl_module.named_parameters(remove_duplicate=False))
                for name, value in raw.items():
                    params[name].copy_(value)
