"""Faults injected into real runs through the callbacks group (``+callbacks.X._target_=faults.Y``),
and a recorder of what a run carries (``CarriedStateAt``).

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


class SignalDuring(pl.Callback):
    """Sends this process ``signal`` once, outside the training steps: in the sanity check's
    first batch (``stage="sanity"``), the test's (``stage="test"``), or as the trainer sets up
    (``stage="setup"``). ``marker`` as SignalAt's."""

    def __init__(self, signal: str, stage: str, marker: str):
        import signal as signals
        from pathlib import Path

        self.signum, self.stage, self.marker = getattr(signals, signal), stage, Path(marker)

    def _send(self) -> None:
        import os

        if not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), self.signum)

    def setup(self, trainer, pl_module, stage):
        if self.stage == "setup":
            self._send()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self.stage == "sanity" and trainer.sanity_checking:
            self._send()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self.stage == "test":
            self._send()


class SignalAt(pl.Callback):
    """Sends this process ``signal`` (a name: SIGKILL, SIGTERM, SIGINT) at the end of training step
    ``step``, or at validation batch ``val_batch`` of the first validation after that step. Once
    only: ``marker`` is created first, and a run that finds it (the resumed one) sends nothing.
    ``times``: how many times in a row (a user pressing Ctrl+C twice). ``rank``: under DDP, the
    one process that gets it (a signal sent to one process of several)."""

    def __init__(self, signal: str, step: int, marker: str, val_batch: int | None = None, times: int = 1,
                 rank: int | None = None):
        import signal as signals
        from pathlib import Path

        self.signum, self.step, self.val_batch, self.marker = getattr(signals, signal), step, val_batch, Path(marker)
        self.times, self.sent, self.rank = times, self.marker.exists(), rank

    def _send(self) -> None:
        import os

        self.sent = True
        self.marker.touch()
        for _ in range(self.times):
            os.kill(os.getpid(), self.signum)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (not self.sent and self.val_batch is None and trainer.global_step == self.step
                and self.rank in (None, trainer.global_rank)):
            self._send()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if (not self.sent and self.val_batch is not None and not trainer.sanity_checking
                and trainer.global_step >= self.step and batch_idx == self.val_batch):
            self._send()


class PoisonRow(pl.Callback):
    """Before training, the input embedding of token ``row`` becomes NaN: the loss of every batch
    that contains that token is NaN, as a corrupt record in the data would make it."""

    def __init__(self, row: int):
        self.row = row

    def on_train_start(self, trainer, pl_module):
        with torch.no_grad():
            pl_module.model.embedding.weight[self.row].fill_(float("nan"))


class AllocateAt(pl.Callback):
    """At the end of training step ``step``, asks the allocator for ``bytes`` bytes: more than any
    machine has, it fails as a micro-batch too large for the device does (the CPU allocator's
    RuntimeError; a GPU's torch.OutOfMemoryError is handled the same way). ``rows_fit``: a
    micro-batch of at most that many rows fits, as on a device with that much memory."""

    def __init__(self, step: int, bytes: int, rows_fit: int = 0):
        self.step, self.bytes, self.rows_fit = step, bytes, rows_fit

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and len(batch[0]) > self.rows_fit:
            torch.empty(self.bytes, dtype=torch.uint8)


class CarriedStateAt(pl.Callback):
    """Before training step ``step`` (``trainer.global_step`` optimizer steps done), each process
    saves the recurrent state it carries into that step's window to ``folder/rank<N>.pt``."""

    def __init__(self, step: int, folder: str):
        self.step, self.folder = step, folder

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            from pathlib import Path

            Path(self.folder).mkdir(parents=True, exist_ok=True)
            torch.save(pl_module._state["train"], Path(self.folder) / f"rank{trainer.global_rank}.pt")


class PoisonTokenOf(pl.Callback):
    """At the first training batch, the input embedding of a token that process ``rank``'s batch
    reads and no other process's does becomes NaN (in every process: one corrupt row of the
    model): that process's loss alone is NaN at the first step."""

    def __init__(self, rank: int):
        self.rank, self.done = rank, False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.done:
            return
        self.done = True
        every = trainer.strategy.all_gather(batch[0])  # (processes, rows, tokens)
        others = {t for r in range(len(every)) if r != self.rank for t in every[r].flatten().tolist()}
        token = min(set(every[self.rank].flatten().tolist()) - others)
        with torch.no_grad():
            pl_module.model.embedding.weight[token].fill_(float("nan"))


class FirstStep(pl.Callback):
    """Each process writes ``folder/rank<N>.json``: its first training step's loss (its own share
    of the batch) and a digest of the first dropout mask it drew (the zeros of the first dropout
    module's output)."""

    def __init__(self, folder: str):
        from pathlib import Path

        self.folder, self.mask = Path(folder), None

    def on_train_start(self, trainer, pl_module):
        from lmexp.regularization import Dropout

        module = next(m for m in pl_module.model.modules() if isinstance(m, (Dropout, torch.nn.Dropout)))

        def hook(module, args, out):
            if self.mask is None:
                import hashlib

                self.mask = hashlib.sha1((out == 0).numpy().tobytes()).hexdigest()

        self.handle = module.register_forward_hook(hook)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 0:
            import json

            self.handle.remove()
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / f"rank{trainer.global_rank}.json").write_text(
                json.dumps({"loss": outputs["loss"].item(), "mask": self.mask}))


class ScaleWeightsAt(pl.Callback):
    """At the start of epoch ``epoch``, every weight is multiplied by ``factor`` (0: a model that
    predicts the uniform distribution, far worse than a few steps of training): the validations
    after it score worse than the one before, so the best checkpoint is not the last."""

    def __init__(self, epoch: int, factor: float):
        self.epoch, self.factor = epoch, factor

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.mul_(self.factor)


class AllocateEvaluating(pl.Callback):
    """Asks the allocator for ``bytes`` bytes in a validation batch after ``step`` optimizer steps
    (``stage="validate"``) or in the test's first batch (``stage="test"``): an evaluation batch too
    large for the device."""

    def __init__(self, stage: str, bytes: int, step: int = 0):
        self.stage, self.bytes, self.step = stage, bytes, step

    def on_validation_batch_end(self, trainer, pl_module, *args, **kwargs):
        if self.stage == "validate" and trainer.global_step >= self.step and not trainer.sanity_checking:
            torch.empty(self.bytes, dtype=torch.uint8)

    def on_test_batch_end(self, trainer, pl_module, *args, **kwargs):
        if self.stage == "test":
            torch.empty(self.bytes, dtype=torch.uint8)
