"""The LightningModule: next-token maximum likelihood, exact perplexity, carried state."""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Optional

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from lmexp.config import load_settings
from lmexp.data.datamodule import IGNORE
from lmexp.errors import UserError
from lmexp.metrics import SplitNLL, split_metrics
from lmexp.models import build_model
from lmexp.optim import NTASGD, averaged_parameters, optimizer_spec, swap_in_averages
from lmexp.regularization import activation_penalties, dropout_rates, penalties
from lmexp.schedulers import scheduler_spec

log = logging.getLogger("lmexp")


class TrainingDiverged(UserError):
    pass


def detach(state: Any) -> Any:
    """Cut the graph at the window boundary (truncated backpropagation through time)."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    return type(state)(detach(s) for s in state)


class LanguageModelModule(pl.LightningModule):
    """Trains ``config.model`` by next-token cross-entropy.

    ``config`` is the whole resolved run config as a plain dict (checkpoints stay loadable
    with ``weights_only``), ``vocab`` the id -> unit list the model's rows refer to, and
    ``tokenizer_state`` a trained tokenizer's own file (BPE's tokenizer.json), so that a
    checkpoint alone can encode prompts and other corpora.
    """

    def __init__(self, config: dict, vocab: list[str], tokenizer_state: Optional[str] = None):
        super().__init__()
        self.save_hyperparameters(logger=False)
        settings = load_settings(OmegaConf.create(config))
        self.settings = settings
        # The embedding= group initialises the input table in train(), once, before training:
        # loading a checkpoint must not retrain word vectors it is about to overwrite.
        self.model = build_model(config["model"], vocab_size=len(vocab), dropout=dropout_rates(settings.regularization))
        self.metrics = torch.nn.ModuleDict({"val": SplitNLL(), "test": SplitNLL()})
        self._state: dict[str, Any] = {}  # stage -> recurrent state carried between windows
        # stage -> the split's tokens, words and bytes (set by whoever picks the data), for the
        # word-level perplexity and bits per byte; and the best validation's metrics.
        self.split_stats: dict[str, dict] = {}
        self.best_val: dict[str, float] = {}
        self.train_tokens, self.train_seconds = 0, 0.0
        self._tokens_since_log, self._seconds_since_log = 0, 0.0
        self._batch_start: Optional[float] = None
        self._lr: Optional[float] = None
        self._swapped: dict = {}  # parameter -> its average, while validation runs on the averages

    def forward(self, idx: torch.Tensor, state: Any = None):
        return self.model(idx, state)

    # --- training -----------------------------------------------------------------------------

    def on_train_epoch_start(self) -> None:
        self._state["train"] = None

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._batch_start = time.perf_counter()
        # Read before the step: by on_train_batch_end Lightning has already stepped the schedule.
        self._lr = self.optimizers().param_groups[0]["lr"]

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits, state = self.model(x, detach(self._state.get("train")))
        self._state["train"] = state
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        self.log("train/loss", loss, prog_bar=True)  # the cross-entropy alone, comparable across penalties
        reg = self.settings.regularization
        terms = {}
        if reg.ar or reg.tar:
            terms.update(activation_penalties(self.model, reg))
        if reg.l1 or reg.l2:  # skipped entirely when off: it walks every parameter
            terms.update(penalties(self.model, reg))
        for name, term in terms.items():
            self.log(f"train/{name}", term)
            loss = loss + term
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        seconds = time.perf_counter() - self._batch_start
        tokens = batch[1].numel() * self.trainer.world_size
        self.train_tokens += tokens
        self.train_seconds += seconds
        self._tokens_since_log += tokens
        self._seconds_since_log += seconds
        if (self.global_step % self.trainer.log_every_n_steps) == 0:
            # Checked here, not every step: .item() would stall a GPU's queue each step.
            loss = outputs["loss"].item()
            if not torch.isfinite(torch.tensor(loss)):
                raise TrainingDiverged(
                    f"training diverged: loss={loss} at step {self.global_step}; lower optimizer.lr or set "
                    f"trainer.gradient_clip_val (checkpoints saved so far are kept)")
            self.log("train/tokens_per_sec", self._tokens_since_log / self._seconds_since_log)
            self.log("train/lr", self._lr)  # the rate this step used
            self._tokens_since_log, self._seconds_since_log = 0, 0.0

    def configure_optimizers(self):
        build, _ = optimizer_spec(self.settings.names["optimizer"])
        optimizer = build(self.model, self.settings.optimizer)
        build_scheduler, _ = scheduler_spec(self.settings.names["scheduler"])
        # The run's optimizer steps (max_steps, or max_epochs' worth of batches over accumulation);
        # None without a trainer, which only the schedules that decay to an end need.
        total_steps = self.trainer.estimated_stepping_batches if self._trainer is not None else None
        return {"optimizer": optimizer,
                "lr_scheduler": build_scheduler(optimizer, self.settings.scheduler, total_steps)}

    # --- validation and test: sums over the whole split --------------------------------------

    def _evaluate(self, batch, stage: str) -> None:
        x, y = batch
        logits, self._state[stage] = self.model(x, self._state.get(stage))
        nll = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE, reduction="sum")
        self.metrics[stage].update(nll, int((y != IGNORE).sum()))

    def _log_split(self, stage: str) -> dict:
        nll, tokens = self.metrics[stage].compute()  # summed over processes
        self.metrics[stage].reset()
        metrics = split_metrics(nll.item(), int(tokens.item()), self.split_stats.get(stage))
        # Every process holds the same reduced value, so sync_dist's mean changes nothing;
        # it only tells Lightning that the value is already global.
        self.log_dict({f"{stage}/{k}": v for k, v in metrics.items()}, sync_dist=True, prog_bar=stage == "val")
        if self.trainer.sanity_checking:
            return metrics
        if stage == "val" and metrics["ppl"] < self.best_val.get("ppl", math.inf):
            self.best_val = metrics  # the epoch the checkpoint callback keeps as best
        if self.trainer.is_global_zero:
            extra = f", word ppl {metrics['word_ppl']:.2f}, {metrics['bpb']:.4f} bits/byte" if "bpb" in metrics else ""
            log.info("epoch %d, step %d: %s ppl %.2f over %d tokens%s", self.current_epoch, self.global_step,
                     stage, metrics["ppl"], metrics["tokens"], extra)
        return metrics

    def on_validation_epoch_start(self) -> None:
        self._state["val"] = None
        self._swapped = self._averages()
        swap_in_averages(self._swapped)  # an averaging optimizer's model is its average (Polyak; AWD-LSTM)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        metrics = self._log_split("val")
        swap_in_averages(self._swapped)  # back to the weights training continues from
        self._swapped = {}
        optimizer = self._optimizer()
        if isinstance(optimizer, NTASGD) and self.trainer.state.fn == "fit" and not self.trainer.sanity_checking \
                and optimizer.observe(metrics["loss"]):
            log.info("step %d: validation loss %.4f is worse than the best before the last %d validations; "
                     "NT-ASGD now averages the weights", self.global_step, metrics["loss"], optimizer.nonmono)

    # --- averaged weights (optimizer=asgd, ntasgd) ---------------------------------------------

    def _optimizer(self) -> Optional[torch.optim.Optimizer]:
        optimizers = self.trainer.optimizers if self._trainer is not None else []
        return optimizers[0] if optimizers else None

    def _averages(self) -> dict:
        optimizer = self._optimizer()
        return averaged_parameters(optimizer) if optimizer is not None else {}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Checkpoints hold the averaged weights, the ones validation scored, so that testing the
        best checkpoint, evaluate and generate all use them; the raw weights go beside them for
        resuming training."""
        averages = self._averages()
        if not averages:
            return
        state, raw = checkpoint["state_dict"], {}
        for name, p in self.named_parameters(remove_duplicate=False):  # a tied matrix under each name
            if p in averages:
                raw[name], state[name] = state[name], averages[p].detach().clone()
        checkpoint["raw_state_dict"] = raw

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        raw = checkpoint.pop("raw_state_dict", None)
        if raw and self._trainer is not None and self.trainer.state.fn == "fit":  # resuming: continue from raw
            checkpoint["state_dict"].update(raw)

    def on_test_epoch_start(self) -> None:
        self._state["test"] = None

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_split("test")
