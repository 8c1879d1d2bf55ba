"""lmexp's own Lightning callbacks (the ``callbacks=`` group builds these beside Lightning's).

Behaviour that only some runs need lives here rather than in the LightningModule's hooks,
which every run executes: the averaged weights of ``optimizer=asgd``/``ntasgd``, and the
bookkeeping for throughput and the learning rate.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from typing import Any, Iterator, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint, RichProgressBar

from lmexp import slurm
from lmexp.data.datamodule import IGNORE
from lmexp.optim import NTASGD, averaged_parameters, swap_in_averages

log = logging.getLogger("lmexp")


class TokenThroughput(Callback):
    """Training tokens per second, over every process: ``train/tokens_per_sec`` at each logging
    step (since the last one), and the run's total for ``results.json``. Beside it, and beside
    each validation's metrics, ``trainer/tokens`` (training tokens seen so far) and
    ``trainer/wall_time_s`` (seconds since the run began, a resumed run's earlier time included):
    the x-axes on which runs of different batch shapes, or different speeds, line up.

    Lightning's ``ThroughputMonitor`` would synchronise a GPU after every batch to time it and
    logs samples, batches and FLOPs under its own names; this times the same span (the hooks
    around a batch) and waits for a GPU on logging steps only, so that the spans hold the work
    the GPU was still doing (the steps between only queue it), once per logging interval.
    """

    def __init__(self) -> None:
        self.tokens, self.seconds = 0, 0.0
        self._tokens_since_log, self._seconds_since_log = 0, 0.0
        self._start: Optional[float] = None
        # earlier_wall_time_s: the seconds of the segments before a resume (their checkpoint's)
        self.earlier_wall_time_s, self._began = 0.0, time.perf_counter()

    @property
    def wall_time_s(self) -> float:
        return self.earlier_wall_time_s + time.perf_counter() - self._began

    @property
    def tokens_per_sec(self) -> Optional[float]:
        return self.tokens / self.seconds if self.seconds else None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        logging_step = trainer.global_step % trainer.log_every_n_steps == 0
        if logging_step and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        seconds = time.perf_counter() - self._start
        tokens = batch[1].numel() * trainer.world_size
        self.tokens += tokens
        self.seconds += seconds
        self._tokens_since_log += tokens
        self._seconds_since_log += seconds
        if logging_step:
            pl_module.log("train/tokens_per_sec", self._tokens_since_log / self._seconds_since_log)
            self._log_progress(pl_module)
            self._tokens_since_log, self._seconds_since_log = 0, 0.0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._began = time.perf_counter()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._log_progress(pl_module)

    def _log_progress(self, pl_module: pl.LightningModule) -> None:
        # float: Lightning logs tensors of the default dtype, and an int64 count would be cast anyway
        pl_module.log("trainer/tokens", float(self.tokens))
        pl_module.log("trainer/wall_time_s", self.wall_time_s)

    def state_dict(self) -> dict:  # a resumed run's totals include the steps before its checkpoint
        return {"tokens": self.tokens, "seconds": self.seconds, "wall_time_s": self.wall_time_s}

    def load_state_dict(self, state: dict) -> None:
        self.tokens, self.seconds = state["tokens"], state["seconds"]
        self.earlier_wall_time_s = state.get("wall_time_s", 0.0)  # checkpoints written before it was kept


class TokenBudget(Callback):
    """``trainer.max_tokens``: training stops after the optimizer step at which the run has
    trained on ``max_tokens`` target tokens (every process's, padding not counted), so runs of
    different batch sizes, window lengths or layouts stop at equal data. Lightning then validates,
    as after any early stop.

    Each process keeps its exact count on its device; it is read (a wait on a GPU, and a sum over
    the processes) only once the batches' sizes, an upper bound known without the device, could
    have reached the budget.
    """

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.tokens = 0  # every process's, as last read
        self.bound = 0  # the batches' sizes over every process: no less than the tokens in them
        self._mine: Any = 0  # this process's exact count, a tensor on its device

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        targets = batch[1]
        self._mine = self._mine + (targets != IGNORE).sum()
        self.bound += targets.numel() * trainer.world_size
        if self.bound < self.max_tokens or trainer.fit_loop._should_accumulate():
            return
        counted = self._mine
        if trainer.world_size > 1:
            counted = trainer.strategy.reduce(counted.clone(), reduce_op="sum")
        self.tokens = int(counted)
        if self.tokens >= self.max_tokens:
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"mine": int(self._mine), "bound": self.bound, "tokens": self.tokens}

    def load_state_dict(self, state: dict) -> None:
        self._mine, self.bound, self.tokens = state["mine"], state["bound"], state["tokens"]


class StepBudget(Callback):
    """``trainer.max_steps`` reached inside an epoch: Lightning would end the run without a last
    validation, so the steps after the latest one would count in no validation, no best
    checkpoint and no test (nanoGPT's 2,000-step recipe, 1.5 epochs, was scored at step 1,323).
    Stopping through ``should_stop`` at that step makes Lightning validate first, as it does
    after ``max_tokens`` or an early stop."""

    def __init__(self, max_steps: int) -> None:
        self.max_steps = max_steps

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step >= self.max_steps and not trainer.fit_loop._should_accumulate():
            trainer.should_stop = True


class Checkpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint (the best checkpoints by validation, and ``last.ckpt``), with
    ``last.ckpt`` also written every ``every_n_steps`` optimizer steps and/or every
    ``every_n_minutes``: the latest state, from which ``resume=`` continues a run that was killed
    between two validations. Lightning's own ``every_n_train_steps`` would instead update the
    best checkpoints on that schedule, from a validation score that may be hours old.
    """

    def __init__(self, every_n_steps: Optional[int] = None, every_n_minutes: Optional[float] = None,
                 **kwargs: Any):
        super().__init__(**kwargs)  # the arguments checked with the config: lmexp/options/callbacks.py
        self.every_n_steps, self.every_n_minutes = every_n_steps, every_n_minutes
        self._latest_at = (0, time.monotonic())  # (step, time) of the last latest-state save

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        step, saved_at = trainer.global_step, self._latest_at
        if step == saved_at[0] or trainer.fit_loop._should_accumulate() or _last_batch(trainer):
            return
        due = bool(self.every_n_steps and step % self.every_n_steps == 0)
        if self.every_n_minutes and not due and step % trainer.log_every_n_steps == 0:
            # Each process has its own clock: the first process decides for all. Asked on logging
            # steps only: under DDP each question is a message between the processes.
            due = trainer.strategy.broadcast(time.monotonic() - saved_at[1] >= 60 * self.every_n_minutes)
        if due:
            self.save_latest(trainer)

    # Lightning (2.6) writes last.ckpt at a validation only when it wrote a best checkpoint there:
    # after a validation that did not improve, last.ckpt stayed at an earlier step, and a run
    # resumed from it trained the steps since again. It is written after every validation here,
    # at the moment Lightning would have written it.
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._latest_after_validation(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._latest_after_validation(trainer)

    def _latest_after_validation(self, trainer: pl.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):  # skipped: saved at this step
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        # A run that stops inside an epoch (max_steps, max_tokens, an early stop at a validation
        # mid-epoch) ends that epoch first, so Lightning counts it processed, and its checkpoint
        # would resume at the next epoch, skipping the rest of this one. Resumed with a larger
        # budget, the run must go on inside the epoch, as from a checkpoint saved mid-epoch.
        loop = trainer.fit_loop
        if loop.epoch_loop.batch_progress.is_last_batch or not _epoch_processed(loop):
            return
        progress = checkpoint["loops"]["fit_loop"]["epoch_progress"]
        for counts in (progress["total"], progress["current"]):
            counts["processed"] -= 1

    def load_state_dict(self, state: dict) -> None:
        # The state holds absolute paths: the checkpoints folder of the run that wrote it. A run
        # folder moved or copied elsewhere and resumed there has the same files under its own
        # checkpoints/: its paths are read there. Lightning, seeing another folder, would keep
        # the old best_model_path (tested from the old folder, a traceback once it is gone) and
        # drop the rest (the best score, the best files to replace).
        old = state.get("dirpath")
        if old and self.dirpath and old != self.dirpath:
            def moved(path: Any) -> Any:
                inside = isinstance(path, str) and os.path.dirname(path) == old
                return os.path.join(self.dirpath, os.path.basename(path)) if inside else path
            state = {**state, "dirpath": self.dirpath,
                     **{key: moved(state.get(key)) for key in ("best_model_path", "kth_best_model_path",
                                                               "last_model_path") if key in state},
                     "best_k_models": {moved(path): score for path, score in state.get("best_k_models", {}).items()}}
        super().load_state_dict(state)

    def save_latest(self, trainer: pl.Trainer) -> str:
        """Write ``last.ckpt`` now (every process must call this); return its path."""
        # Lightning skips any save at a step it already saved at: the validation that may end
        # this step must still be able to update the best checkpoint.
        saved_step = self._last_global_step_saved
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._last_global_step_saved = saved_step
        self._latest_at = (trainer.global_step, time.monotonic())
        return self.last_model_path


def _epoch_processed(loop: Any) -> bool:
    """Whether the fit loop has counted the present epoch processed (its train-epoch-end hooks
    run) and not yet completed."""
    counts = loop.epoch_progress.total
    return counts.processed == counts.started and counts.completed == counts.processed - 1


def _last_batch(trainer: pl.Trainer) -> bool:
    """Whether this is the epoch's last batch. A checkpoint saved there, before the epoch's validation
    and its end, does not resume exactly (Lightning skips both on resuming it), so the saves that
    fall there wait for the epoch's end."""
    return trainer.fit_loop.epoch_loop.batch_progress.is_last_batch


class Interrupted(Exception):
    """A run stopped by SIGINT or SIGTERM, after the step it was in (and its checkpoint, if any)."""

    def __init__(self, signum: int, step: int, checkpoint: Optional[str]):
        super().__init__(f"{signal.Signals(signum).name} at step {step}")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


def stop_signals() -> tuple:
    """SIGINT and SIGTERM; in a SLURM batch job, SIGUSR1 (SLURM's warning) too."""
    return (signal.SIGINT, signal.SIGTERM) + ((slurm.WARNING,) if slurm.in_batch_job() else ())


@contextlib.contextmanager
def stopping_on_signals(trainer: pl.Trainer, resumed: Optional[tuple[str, int]] = None) -> Iterator[None]:
    """The stop signals outside the training steps, where StopOnSignal does not listen (setting
    up, the sanity check, the test): the run stops at once, with :class:`Interrupted` and the
    latest checkpoint, as at a step. Lightning's own handling there ended the process with exit
    status 0 (SIGTERM) or 1 (SIGINT), no results.json, and a sweep's remaining jobs never run;
    its SLURM handler (SIGUSR1) wrote a checkpoint of its own and requeued a job that went on
    (it installs none where a handler is in place). ``resumed``: the checkpoint a resumed run
    continues from, and its step, where it stops before that state is restored."""
    def stop(signum: int, frame: Any) -> None:
        latest = getattr(trainer.checkpoint_callback, "last_model_path", "")
        if latest and os.path.isfile(latest):
            raise Interrupted(signum, trainer.global_step, latest)
        if resumed is not None:  # nothing written yet: the checkpoint it started from still holds
            raise Interrupted(signum, max(trainer.global_step, resumed[1]), resumed[0])
        raise Interrupted(signum, trainer.global_step, None)

    previous = _take_signals(stop_signals(), stop)
    try:
        yield
    finally:
        _give_back_signals(previous)


def ending_on_signals() -> None:
    """Once the run has stopped and is writing what it leaves: a further signal ends the process at
    once (as StopOnSignal's second does), not with a traceback from wherever it lands."""
    _take_signals(stop_signals(), signal.SIG_DFL)


def _take_signals(signals: tuple, handler: Any) -> dict:
    """``handler`` for each of ``signals``; what each had before. None taken in a thread other than
    the main one (a notebook's worker), which cannot take signals at all."""
    try:
        return {s: signal.signal(s, handler) for s in signals}
    except ValueError:
        return {}


def _give_back_signals(previous: dict, only_from: Any = None) -> None:
    """``only_from``: give a signal back only while that handler is still its own (Lightning's
    teardown may have put back the one before it already)."""
    for signum, handler in previous.items():
        if only_from is None or signal.getsignal(signum) == only_from:
            signal.signal(signum, handler)


class StopOnSignal(Callback):
    """SIGINT (Ctrl+C) and SIGTERM (``kill``, a scheduler's stop): the step in progress finishes,
    ``last.ckpt`` is written, and the run ends with :class:`Interrupted`, which the run turns into
    ``results.json`` with ``"status": "interrupted"`` and exit status 130 or 143. A second
    signal ends the process at once. In a SLURM batch job, SIGUSR1 (SLURM's warning) as well:
    the run then requeues the job (lmexp/slurm.py).

    Replaces Lightning's SIGTERM handling, which stops only at the end of an epoch and writes no
    checkpoint. A validation in progress is finished first: it is what the checkpoint records.
    """

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self._previous: dict[int, Any] = {}
        self._stopping: Optional[tuple[int, int, Optional[str]]] = None  # (signal, step, checkpoint) to stop with

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:  # the second one: no more waiting
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.received = signum
        then = " and requeue the job" if signum == slurm.WARNING else ""
        log.warning("%s: stopping after this step%s (a second signal stops at once)", signal.Signals(signum).name, then)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Here, after Lightning has set its own handlers for the run (its SLURM one included).
        self._previous = _take_signals(stop_signals(), self._handle)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Lightning's own teardown, before this one, put back what it found: giving back what this
        # took (Lightning's handlers) would leave them in charge of the test.
        _give_back_signals(self._previous, only_from=self._handle)
        self._previous = {}

    def _signalled(self, trainer: pl.Trainer, every_step: bool = True) -> int:
        """The signal received, by any process. A signal may reach one process only: all stop
        together, so under DDP the processes ask each other, on logging steps only (the answer
        waits for the GPU: no step should), and on the device NCCL reduces on."""
        received = self.received or 0
        if trainer.world_size > 1:
            if not every_step and trainer.global_step % trainer.log_every_n_steps:
                return 0
            mine = torch.tensor(received, device=trainer.strategy.root_device)
            received = int(trainer.strategy.reduce(mine, reduce_op="max"))
        return received

    def _save(self, trainer: pl.Trainer) -> Optional[str]:
        checkpoint = trainer.checkpoint_callback
        return checkpoint.save_latest(trainer) if isinstance(checkpoint, Checkpoint) else None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.fit_loop._should_accumulate() or _last_batch(trainer) or self._stopping:
            return
        signum = self._signalled(trainer, every_step=False)
        if signum:
            # Saved now, raised before the next step: in between, Lightning writes this step's metrics.
            self._stopping = (signum, trainer.global_step, self._save(trainer))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._stopping:
            raise Interrupted(*self._stopping)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        signum = self._stopping[0] if self._stopping else self._signalled(trainer)
        if signum:  # after the epoch's validation, if it has one
            raise Interrupted(signum, trainer.global_step, self._save(trainer))


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


class ProgressBar(RichProgressBar):
    """Lightning's Rich bar, without its "Epoch 3/-2" when ``max_epochs=-1`` (a token budget's runs,
    where no epoch count is set): Lightning's own fix (its pull request 21924) is in no release up
    to 2.6.6. It shows "Epoch 3", as that fix does."""

    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs is not None and self.trainer.max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        return f"{f'Epoch {current_epoch}':{len(self.validation_description)}}"  # padded as Lightning pads


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

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A test of the weights training ended with (no checkpoint was written, callbacks.checkpoint=null)
        # scores their averages too; a test from a checkpoint loaded them already.
        if trainer.ckpt_path is None:
            self.on_validation_epoch_start(trainer, pl_module)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.on_validation_epoch_end(trainer, pl_module)

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
