"""The LightningModule: next-token maximum likelihood, exact perplexity, carried state."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict
from typing import Any, Callable, Optional

import pytorch_lightning as pl
import torch

from lmexp import fused_loss, random_state
from lmexp.config import parse_group
from lmexp.data.datamodule import IGNORE
from lmexp.errors import ConfigError, UserError, reached_by_every_process
from lmexp.metrics import SplitNLL, split_metrics
from lmexp.models import block_size, build_model
from lmexp.optim import clippable
from lmexp.options.optimizer import OPTIMIZERS
from lmexp.options.scheduler import SCHEDULERS
from lmexp.options.trainer import SKIP_IN_ONE_PROCESS
from lmexp.regularization import activation_penalties, dropout_rates, penalties

log = logging.getLogger("lmexp")


class TrainingDiverged(UserError):
    pass


def in_micro_batches_of(checkpoint: dict, before: int, now: int) -> None:
    """The checkpoint's counts of training batches, from which Lightning's loop resumes (where
    the epoch is, when to step, when to validate), converted from micro-batches of ``before``
    rows to micro-batches of ``now``: the same windows done. Written at a step's end, the
    current epoch's count is a whole number of new micro-batches. Lightning tells where in a
    batch the checkpoint was written by how many fewer batches were completed than processed:
    that difference stays."""
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    for counts in (progress["total"], progress["current"]):
        unfinished = counts["processed"] - counts["completed"]
        for key in ("ready", "started", "processed"):
            counts[key] = counts[key] * before // now
        counts["completed"] = counts["processed"] - unfinished


def map_state(state: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``fn`` applied to each tensor of a recurrent state: None, a tensor, or a tuple of them (an LSTM's (h, c))."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return fn(state)
    return type(state)(map_state(s, fn) for s in state)


def detach(state: Any) -> Any:
    """Cut the graph at the window boundary (truncated backpropagation through time)."""
    return map_state(state, torch.Tensor.detach)


class LanguageModelModule(pl.LightningModule):
    """Trains a model by next-token cross-entropy and scores splits with exact perplexity.

    ``config`` is the whole resolved run config as a plain dict: a checkpoint keeps it (loadable
    with ``weights_only``) so that ``evaluate`` knows the data and tokenizer, but the module is
    built from its model, optimizer, scheduler and regularization settings only. ``vocab`` is
    the id -> unit list the model's rows refer to, and ``tokenizer_state`` what the tokenizer
    saved (a BPE's or GPT-2's tokenizer.json), so that a checkpoint alone encodes prompts and
    other corpora.
    """

    def __init__(self, config: dict, vocab: list[str], tokenizer_state: Optional[str] = None):
        super().__init__()
        self.regularization = parse_group("regularization", config["regularization"])
        self.optimizer_config = parse_group("optimizer", config["optimizer"])
        self.scheduler_config = parse_group("scheduler", config["scheduler"])
        self.trainer_config = parse_group("trainer", config.get("trainer", {}))
        model_config = parse_group("model", config["model"])
        # The embedding= group initialises the input table in the run builder, once, before
        # training: loading a checkpoint must not retrain word vectors it is about to overwrite.
        self.model = build_model(model_config, vocab_size=len(vocab), dropout=dropout_rates(self.regularization))
        # The checkpoint keeps the model's resolved shape (a pretrained GPT-2's, read from its
        # folder), so that loading it needs neither the folder nor the size table.
        shape = getattr(getattr(self.model, "config", None), "shape", None)
        config = {**config, "model": asdict(shape()) if shape else config["model"]}
        self.save_hyperparameters({"config": config, "vocab": vocab, "tokenizer_state": tokenizer_state},
                                  logger=False)
        self.metrics = torch.nn.ModuleDict({"val": SplitNLL(), "test": SplitNLL()})
        self._state: dict[str, Any] = {}  # stage -> recurrent state carried between windows
        self.best_val: dict[str, float] = {}  # the best validation's metrics
        # Each stage's last metrics, in float64: what Lightning returns are its logged copies, in
        # float32 (a token count past 2**24 rounded, a perplexity to 7 digits).
        self.scored: dict[str, dict[str, float]] = {}
        self.nonfinite_skipped = 0  # batches skipped for a NaN or infinite loss (trainer.skip_nonfinite)
        self.embedding_stats: dict = {}  # what the embedding= option reported (coverage, cache), for results.json
        self.compiled = False  # trainer.compile done: a second nn.Module.compile would compile again
        self._generators_restored = False  # a DDP process's own random stream, from a checkpoint
        self.evaluating = False  # inside a validation loop: an out-of-memory error there names the evaluation batch

    @property
    def block_size(self) -> Optional[int]:
        """The window an attention model reads; None for a recurrent model, which reads streams."""
        return block_size(self.model)

    def forward(self, idx: torch.Tensor, state: Any = None):
        return self.model(idx, state)

    # --- training -----------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        # Lightning keeps the mode it is handed, and a checkpoint loads for evaluation (eval mode):
        # fitting one, e.g. to resume it, would otherwise train without dropout or AR/TAR.
        self.train()

    def on_train_start(self) -> None:
        if self.trainer_config.skip_nonfinite and self.trainer.world_size > 1:  # devices=auto found several
            with reached_by_every_process(self.trainer.global_rank):
                raise ConfigError(SKIP_IN_ONE_PROCESS)
        # A resumed state was loaded before the model reached its device.
        self._state["train"] = map_state(self._state.get("train"), lambda t: t.to(self.device))
        if self.trainer.world_size > 1 and not self._generators_restored:
            # Every process starts from the run's seed (seed_everything), so row i of each process's
            # share would get the same dropout mask, as no single process of the whole batch draws
            # them: each process draws from a stream of its own.
            seed = self.hparams["config"].get("seed") or 0
            torch.manual_seed(random_state.process_seed(seed, self.trainer.global_rank, self.global_step))

    # What Lightning's checkpoint leaves out and a resumed run needs to continue exactly as the
    # run left alone: the random states, the state carried into the next window, the best validation.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["lmexp"] = {"random_states": random_state.capture(), "carried_state": self._all_rows(),
                               "process_generators": self._each_process(random_state.generator_states()),
                               "carried_processes": self.trainer.world_size, "best_val": self.best_val,
                               "nonfinite_skipped": self.nonfinite_skipped, "embedding_stats": self.embedding_stats}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("lmexp")
        if saved is None or self._trainer is None or self.trainer.state.fn != "fit":
            return
        before = checkpoint["hyper_parameters"]["config"]["data"]["batch_size"]
        if before != self.hparams["config"]["data"]["batch_size"]:  # lmexp.resume.other_batches
            in_micro_batches_of(checkpoint, before, self.hparams["config"]["data"]["batch_size"])
        random_state.restore(saved["random_states"])
        generators = saved.get("process_generators")  # a DDP run's: each process's own stream
        if generators is not None and len(generators) == self.trainer.world_size:
            random_state.restore_generators(generators[self.trainer.global_rank])
            self._generators_restored = True
        # Kept: a resumed epoch starts with no on_train_epoch_start.
        self._state["train"] = self._own_rows(saved["carried_state"], saved.get("carried_processes"))
        self.best_val = saved["best_val"]
        self.nonfinite_skipped = saved.get("nonfinite_skipped", 0)
        self.embedding_stats = saved.get("embedding_stats", {})  # a resumed run does not make the table again

    # Under DDP each process carries the state of its own block of the training stream's rows
    # (StreamWindows), and Lightning writes the first process's checkpoint: the state saved is
    # every process's, its rows (dimension 1 of each tensor: (layers, rows, hidden)) in rank order.
    def _all_rows(self) -> Any:
        state, world = self._state.get("train"), self.trainer.world_size
        if state is None or world == 1:
            return state
        # A collective call, safe here: every process makes the checkpoint (Lightning calls this
        # hook on each, at the same step), and all carry a state then or none do (an epoch's start).
        return map_state(state, lambda t: torch.cat(tuple(self.trainer.strategy.all_gather(t)), dim=1))

    def _each_process(self, t: torch.Tensor) -> Optional[torch.Tensor]:
        """``t`` of every process, (processes, *t.shape) in rank order; None in a run of one
        process. Collective, as _all_rows."""
        if self.trainer.world_size == 1:
            return None
        return self.trainer.strategy.all_gather(t.to(self.device)).cpu()

    def _own_rows(self, state: Any, processes: Optional[int]) -> Any:
        """This process's rows of a saved carried state; None (what an epoch's first window starts
        from) where the checkpoint's rows are not this run's. ``processes``: how many processes'
        rows the state holds; None in checkpoints written before 2026-11-30 (carried_processes),
        which hold the first process's rows alone."""
        world, rank = self.trainer.world_size, self.trainer.global_rank
        if state is None or (world == 1 and processes in (None, 1)):
            return state
        if processes == world:
            return map_state(state, lambda t: t.chunk(world, dim=1)[rank].contiguous())
        if self.trainer.is_global_zero:
            why = ("the checkpoint, written before 2026-11-30, holds one process's rows alone" if processes is None else
                   f"the checkpoint holds the rows of {processes} processes, and a run of {world} lays the training "
                   f"stream out in other rows")
            log.warning("resuming with the recurrent state reset, as at an epoch's start: %s; the run goes on, "
                        "but not exactly as it would have without the stop", why)
        return None

    def on_train_epoch_start(self) -> None:
        self._state["train"] = None

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss, state = fused_loss.training_loss(self.model, x, y, self._state.get("train"), self._fused_loss(x))
        # Truncated backpropagation through time: the next window starts from values, not from
        # this window's graph (kept detached, the module also stays copyable, e.g. by SWA).
        self._state["train"] = detach(state)
        if self.trainer_config.skip_nonfinite and not torch.isfinite(loss):
            return self._skip(loss)
        written = self._metrics_written()
        if written:
            # the cross-entropy alone, comparable across penalties; under DDP the mean over the processes
            # (each scores as many tokens), as one process of the whole batch logs it
            self.log("train/loss", loss, prog_bar=True, sync_dist=True)
        reg = self.regularization
        terms = {}
        if reg.ar or reg.tar:
            terms.update(activation_penalties(self.model, reg))
        if reg.l1 or reg.l2:  # skipped entirely when off: it walks every parameter
            terms.update(penalties(self.model, reg))
        for name, term in terms.items():
            if written:
                self.log(f"train/{name}", term, sync_dist=True)
            loss = loss + term
        return loss

    def _fused_loss(self, x: torch.Tensor) -> bool:
        config = self.trainer_config
        return fused_loss.applies(self.model, config.fused_loss, config.compile, torch.is_autocast_enabled(x.device.type))

    def _skip(self, loss: torch.Tensor) -> None:
        """trainer.skip_nonfinite: no backward pass and no optimizer step for this batch (what
        Lightning does when the training step returns None); the next window starts afresh."""
        self.nonfinite_skipped += 1
        self._state["train"] = None  # a NaN carried on would make every later window NaN too
        limit = self.trainer_config.max_nonfinite
        if self.nonfinite_skipped > limit:
            raise TrainingDiverged(f"{self.nonfinite_skipped} batches had a NaN or infinite loss, more than "
                                   f"trainer.max_nonfinite={limit} (the last at step {self.global_step}); check the "
                                   f"data, lower optimizer.lr, or raise trainer.max_nonfinite")
        log.warning("step %d: loss %s; batch skipped (%d of at most %d)", self.global_step, loss.item(),
                    self.nonfinite_skipped, limit)
        return None

    def _metrics_written(self) -> bool:
        """Whether Lightning writes this training step's metrics out: every
        ``trainer.log_every_n_steps``-th step. ``self.log`` costs about a millisecond a call
        (Lightning's bookkeeping, behind ``torch.compiler.disable``), so the other steps skip it;
        what reaches the loggers is the same."""
        trainer = self._trainer
        return trainer is None or (self.global_step + 1) % trainer.log_every_n_steps == 0

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        loop = self.trainer.fit_loop.epoch_loop
        if loop._batches_that_stepped == self.global_step - 1:
            # The loggers' step, one behind the optimizer's only in a run resumed from the
            # checkpoint of a stop's validation (trainer.max_steps, max_tokens, inside an epoch
            # validated at trainer.val_check_interval): Lightning counts the step after that
            # validation, and resumed it did not, so every later row went one step early.
            loop._batches_that_stepped = self.global_step

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if getattr(self.model, "activations", None) is not None:
            self.model.activations = None  # AR/TAR's, used by this step: not kept with their graph
        if outputs and (self.global_step % self.trainer.log_every_n_steps) == 0:  # a skipped batch has none
            # Checked here, not every step: .item() would stall a GPU's queue each step.
            loss = outputs["loss"].detach()
            if self.trainer.world_size > 1:  # a collective: every process checks on the same steps
                # Every process decides alike: a NaN in one process's share alone would stop that
                # process and leave the others failing in their next collective, with a traceback.
                loss = self.trainer.strategy.reduce(loss.clone(), reduce_op="mean")
            with reached_by_every_process(self.trainer.global_rank):
                self._check_finite("training", loss.item())

    def _check_finite(self, what: str, loss: float) -> None:
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"{what} diverged: loss={loss} at step {self.global_step}; lower optimizer.lr or set "
                f"trainer.gradient_clip_val (checkpoints saved so far are kept)")

    def configure_model(self) -> None:
        # Lightning calls this before each fit, validate and test; nn.Module.compile is in place,
        # so the parameters' names (and a checkpoint's keys) stay those of the eager model.
        if self.trainer_config.compile and not self.compiled:
            self.model.compile()
            self.compiled = True

    def configure_optimizers(self):
        config = self.optimizer_config
        if self._trainer is not None:
            config = clippable(config, self.trainer.precision, self.trainer.gradient_clip_val)
        optimizer = OPTIMIZERS.option(config.name).make(self.model, config)
        # The run's optimizer steps (max_steps, or max_epochs' worth of batches over accumulation,
        # or trainer.max_tokens' worth if fewer); None without a trainer, which only the schedules
        # that decay to an end need.
        total_steps = self.trainer.estimated_stepping_batches if self._trainer is not None else None
        if total_steps is not None and self.trainer_config.max_tokens:
            total_steps = min(total_steps, math.ceil(self.trainer_config.max_tokens / self._tokens_per_step()))
        scheduler = SCHEDULERS.option(self.scheduler_config.name).make(optimizer, self.scheduler_config, total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {**scheduler, "name": "train/lr"}}

    def _tokens_per_step(self) -> int:
        """Target tokens in one optimizer step over every process (the budget's unit; a window's
        padding, at a split's end only, aside)."""
        data = self.hparams.config["data"]
        window = self.block_size or data["bptt"]
        return data["batch_size"] * window * self.trainer.accumulate_grad_batches * self.trainer.world_size

    # --- validation and test: sums over the whole split --------------------------------------

    def _evaluate(self, batch, stage: str) -> None:
        x, y = batch
        nll, self._state[stage] = fused_loss.evaluation_nll(self.model, x, y, self._state.get(stage),
                                                            self._fused_loss(x), IGNORE)
        self.metrics[stage].update(nll, int((y != IGNORE).sum()))

    def _split_stats(self, stage: str) -> Optional[dict]:
        datamodule = getattr(self.trainer, "datamodule", None)
        return datamodule.split_stats(stage) if hasattr(datamodule, "split_stats") else None

    def _log_split(self, stage: str) -> dict:
        nll, tokens = self.metrics[stage].compute()  # summed over processes
        self.metrics[stage].reset()
        metrics = split_metrics(nll.item(), int(tokens.item()), self._split_stats(stage))
        if stage == "val" and self.trainer.state.fn == "fit":
            # Weights that went NaN between two training checks: stop here, before the checkpoint
            # callback (which runs after this hook) replaces last.ckpt with them.
            with reached_by_every_process(self.trainer.global_rank):  # the loss is summed over processes
                self._check_finite("validation", metrics["loss"])
        # Every process holds the same reduced value, so sync_dist's mean changes nothing;
        # it only tells Lightning that the value is already global.
        self.log_dict({f"{stage}/{k}": v for k, v in metrics.items()}, sync_dist=True, prog_bar=stage == "val")
        if self.trainer.sanity_checking:
            return metrics
        self.scored[stage] = metrics
        if stage == "val" and metrics["ppl"] < self.best_val.get("ppl", math.inf):
            self.best_val = metrics  # the epoch the checkpoint callback keeps as best
        if self.trainer.is_global_zero:
            extra = f", word ppl {metrics['word_ppl']:.2f}, {metrics['bpb']:.4f} bits/byte" if "bpb" in metrics else ""
            # A test scores the best checkpoint, not the trainer's last epoch and step, which are
            # all the module would have to name here: the test's line names neither.
            at = "" if stage == "test" else f"epoch {self.current_epoch}, step {self.global_step}: "
            log.info("%s%s ppl %.2f over %d tokens%s", at, stage, metrics["ppl"], metrics["tokens"], extra)
        return metrics

    def on_validation_start(self) -> None:
        self.evaluating = True

    def on_validation_end(self) -> None:
        self.evaluating = False

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
