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
from lmexp.optim import optimizer_spec
from lmexp.regularization import penalties
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
        self.model = build_model(config["model"], vocab_size=len(vocab), dropout=settings.regularization.dropout)
        self.metrics = torch.nn.ModuleDict({"val": SplitNLL(), "test": SplitNLL()})
        self._state: dict[str, Any] = {}  # stage -> recurrent state carried between windows
        # stage -> the split's tokens, words and bytes (set by whoever picks the data), for the
        # word-level perplexity and bits per byte; and the best validation's metrics.
        self.split_stats: dict[str, dict] = {}
        self.best_val: dict[str, float] = {}
        self.train_tokens, self.train_seconds = 0, 0.0
        self._tokens_since_log, self._seconds_since_log = 0, 0.0
        self._batch_start: Optional[float] = None

    def forward(self, idx: torch.Tensor, state: Any = None):
        return self.model(idx, state)

    # --- training -----------------------------------------------------------------------------

    def on_train_epoch_start(self) -> None:
        self._state["train"] = None

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._batch_start = time.perf_counter()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits, state = self.model(x, detach(self._state.get("train")))
        self._state["train"] = state
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        self.log("train/loss", loss, prog_bar=True)  # the cross-entropy alone, comparable across penalties
        reg = self.settings.regularization
        if reg.l1 or reg.l2:  # skipped entirely when off: it walks every parameter
            for name, term in penalties(self.model, reg).items():
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
            self.log("train/lr", self.optimizers().param_groups[0]["lr"])
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

    def _log_split(self, stage: str) -> None:
        nll, tokens = self.metrics[stage].compute()  # summed over processes
        self.metrics[stage].reset()
        metrics = split_metrics(nll.item(), int(tokens.item()), self.split_stats.get(stage))
        # Every process holds the same reduced value, so sync_dist's mean changes nothing;
        # it only tells Lightning that the value is already global.
        self.log_dict({f"{stage}/{k}": v for k, v in metrics.items()}, sync_dist=True, prog_bar=stage == "val")
        if self.trainer.sanity_checking:
            return
        if stage == "val" and metrics["ppl"] < self.best_val.get("ppl", math.inf):
            self.best_val = metrics  # the epoch the checkpoint callback keeps as best
        if self.trainer.is_global_zero:
            extra = f", word ppl {metrics['word_ppl']:.2f}, {metrics['bpb']:.4f} bits/byte" if "bpb" in metrics else ""
            log.info("epoch %d, step %d: %s ppl %.2f over %d tokens%s", self.current_epoch, self.global_step,
                     stage, metrics["ppl"], metrics["tokens"], extra)

    def on_validation_epoch_start(self) -> None:
        self._state["val"] = None

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_split("val")

    def on_test_epoch_start(self) -> None:
        self._state["test"] = None

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_split("test")
