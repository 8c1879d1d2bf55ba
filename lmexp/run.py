"""One way to assemble a run: settings -> tokenized corpus -> module -> data module -> trainer.

``Run.from_config`` (training), ``Run.from_checkpoint`` (evaluate, generate) and
``prepare_corpus`` (prepare, in ``data/cache.py``: tokenizing needs no torch) are what every
entry point, benchmark and test builds from.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch
import torch.nn as nn
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import Callback, ModelCheckpoint, ProgressBar
from pytorch_lightning.plugins.environments import SLURMEnvironment
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from lmexp import allocator
from lmexp.callbacks import StepBudget, StopOnSignal, TokenBudget, WeightAveraging
from lmexp.cli import apply_overrides, compose
from lmexp.checkpoint import AtomicCheckpointIO, load_module
from lmexp.config import PathsConfig, Settings, load_settings, plain_config
from lmexp.data.cache import TokenizedCorpus, prepare_corpus
from lmexp.data.datamodule import BlockWindows, LMDataModule
from lmexp.data.tokenizers import Tokenizer, tokenizer_for
from lmexp.embeddings import EmbeddingContext, keep_frozen
from lmexp.errors import ConfigError, UserError
from lmexp.memory import (BatchPlan, check_model_fits, is_out_of_memory, model_too_large, plan_batch,
                          scoring_eval_batch)
from lmexp.models import parameter_counts
from lmexp.module import LanguageModelModule
from lmexp.options.embedding import EMBEDDINGS
from lmexp.options.logger import LOGGERS
from lmexp.options.model import TARGETS
from lmexp.sizing import fit_to_target

log = logging.getLogger("lmexp")
# The trainer settings Lightning itself checks as its Trainer is made.
CHECKED_BY_LIGHTNING = ("accelerator", "devices", "strategy", "precision", "num_nodes")


def is_tied(model: nn.Module) -> bool:
    """Whether another layer (the output layer) shares the input embedding's matrix."""
    weight = model.embedding.weight
    return any(p is weight for name, p in model.named_parameters(remove_duplicate=False)
               if not name.startswith("embedding."))


def short_count(n: int) -> str:
    """468519 -> '469K', 124439808 -> '124M': a parameter count in a run's name."""
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def build_callbacks(settings: Settings, run_dir: Path) -> list[Callback]:
    """The ``callbacks`` group's entries, each built from its ``_target_`` (an entry set to null,
    or a target that returns None, is off), plus what the optimizer needs. A ModelCheckpoint
    whose ``dirpath`` is null writes into ``<run folder>/checkpoints``."""
    callbacks = []
    for name, entry in settings.callbacks.items():
        if entry is None:
            continue
        if entry.get("dirpath", "") is None and _is_checkpoint(entry["_target_"]):
            entry = {**entry, "dirpath": str(run_dir / "checkpoints")}
        try:
            callback = instantiate(entry)
        except InstantiationException as e:
            if isinstance(e.__cause__, UserError) and str(e.__cause__).startswith(f"callbacks.{name}"):
                raise e.__cause__ from None  # it names the setting already
            reason = " ".join(str(e.__cause__ or e).split())
            raise ConfigError(f"callbacks.{name}: {reason}") from None
        if callback is not None:
            callbacks.append(callback)
    if getattr(settings.optimizer, "averages", False):
        callbacks.append(WeightAveraging())
    if settings.trainer.max_tokens:
        callbacks.append(TokenBudget(settings.trainer.max_tokens))
    if settings.trainer.max_steps > 0:
        callbacks.append(StepBudget(settings.trainer.max_steps))
    return callbacks


def _is_checkpoint(target: str) -> bool:
    try:
        return issubclass(get_class(target), ModelCheckpoint)
    except (ImportError, ValueError):  # not a class: instantiate reports it
        return False


def plan_batch_for(module: LanguageModelModule, settings: Settings, corpus: TokenizedCorpus) -> BatchPlan:
    """The micro-batch, accumulation and evaluation batch the run will use (``lmexp/memory.py``),
    written into the settings and into the config that the run folder and checkpoints keep, so
    that a resumed run or a DDP process uses the same ones whatever memory is free then."""
    config = module.hparams.config
    key = hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
    model = module.model
    with torch.random.fork_rng(devices=[]):  # the measuring pass must not move the run's random state
        windows = evaluation_windows(corpus, module.block_size, settings.eval.stride) \
            if settings.data.eval_batch_size == "auto" else None
        plan = plan_batch(model, settings, model.embedding.num_embeddings, module.block_size or settings.data.bptt, key,
                          windows)
    settings.data.batch_size = config["data"]["batch_size"] = plan.batch
    settings.data.eval_batch_size = config["data"]["eval_batch_size"] = plan.eval_batch
    settings.trainer.accumulate_grad_batches = config["trainer"]["accumulate_grad_batches"] = plan.accumulate
    return plan


def evaluation_windows(corpus: TokenizedCorpus, block_size: Optional[int], stride: Optional[int],
                       splits: tuple[str, ...] = ("valid", "test")) -> Optional[int]:
    """The windows of the longest of these splits as evaluation reads them, for a model that
    reads windows; None for one that reads streams, or if none of them is there."""
    splits = [corpus.ids[s] for s in splits if s in corpus.ids and len(corpus.ids[s]) >= 2]
    if block_size is None or not splits:
        return None
    return max(len(BlockWindows(ids, block_size, stride, evaluation=True)) for ids in splits)


@dataclass
class Run:
    """What a run is made of: its settings, tokenizer, tokenized corpus, module and data module."""

    settings: Settings
    tokenizer: Tokenizer
    corpus: Optional[TokenizedCorpus]
    module: LanguageModelModule
    datamodule: Optional[LMDataModule]
    plan: Optional[BatchPlan] = None  # a new run's micro-batch and memory estimate
    sizing: Optional[dict] = None  # the width that model.target_params* chose, and its counts

    @classmethod
    def from_config(cls, cfg: DictConfig | dict) -> "Run":
        """A new run: every setting checked, the corpus tokenized (or found in the cache), the model
        built for its vocabulary and its input embedding initialised by the ``embedding=`` option."""
        settings = load_settings(cfg)
        settings.trainer.check_machine(model=settings.model.name)  # before the corpus is tokenized
        pl.seed_everything(settings.seed, workers=True, verbose=False)
        config = plain_config(cfg)
        tokenizer = tokenizer_for(settings)
        corpus = prepare_corpus(settings.data, tokenizer, settings.paths.cache())
        settings.model, sizing = fit_to_target(settings.model, len(corpus.vocab.itos))
        if sizing:  # the stored config holds the fitted width, so a checkpoint rebuilds without fitting
            config["model"] = asdict(settings.model)
        check_model_fits(settings, len(corpus.vocab.itos))  # before it is built: built, it may fill the memory
        try:
            module = LanguageModelModule(config, corpus.vocab.itos, tokenizer.save())
        except (RuntimeError, MemoryError) as e:  # else torch's allocator traceback
            if not is_out_of_memory(e):
                raise
            raise model_too_large(e, settings.model.name) from None
        plan = plan_batch_for(module, settings, corpus)
        embedding = settings.embedding
        if settings.resume:  # the checkpoint holds the table the option made (and its statistics)
            keep_frozen(module.model.embedding, embedding)
        else:
            module.embedding_stats = EMBEDDINGS.option(embedding.name).make(
                module.model.embedding, embedding, EmbeddingContext(
                    corpus.vocab, corpus.ids["train"], settings.paths.cache(), corpus.path.name,
                    tied=is_tied(module.model), can_untie=hasattr(settings.model, "tie_weights"),
                    sized_by=next((f"model.{k}" for k in TARGETS if k in (sizing or {})), None)))
        datamodule = LMDataModule(corpus, settings.data, module.block_size, settings.eval.stride, settings.seed)
        return cls(settings, tokenizer, corpus, module, datamodule, plan, sizing)

    @classmethod
    def from_checkpoint(cls, ckpt: str | Path, overrides: list[str] = (), split: Optional[str] = None) -> "Run":
        """A trained model with the settings stored beside it (and ``overrides`` on top, e.g.
        another corpus). With ``split``, its corpus is tokenized with the model's own vocabulary
        and tokenizer, and the data module validates on that split."""
        module = load_module(ckpt)
        # Tokens are cached where this machine keeps them, not where the training machine did.
        stored = {**module.hparams.config, "paths": asdict(PathsConfig())}
        settings = load_settings(apply_overrides(stored, list(overrides)))
        trained_with = stored["tokenizer"]["name"]
        if settings.tokenizer.name != trained_with:  # the vocabulary is the checkpoint's: its units, its tokenizer's
            raise UserError(f"tokenizer={settings.tokenizer.name}: {ckpt} was trained with tokenizer={trained_with}, "
                            f"whose vocabulary it holds; leave the tokenizer unset (or set {trained_with}'s settings)")
        tokenizer = tokenizer_for(settings, module.hparams.get("tokenizer_state"))
        return cls.scoring(settings, tokenizer, module, split)

    @classmethod
    def from_pretrained(cls, folder: str | Path, overrides: list[str] = (), split: Optional[str] = None) -> "Run":
        """A local Hugging Face GPT-2 folder as it is, trained nowhere here: its weights, its own
        tokenizer and its vocabulary, with ``overrides`` for the data and evaluation settings."""
        cfg = compose(["model=gpt2", "tokenizer=gpt2", *overrides])
        # Set after composing, not as overrides: a folder's name may hold what the override grammar reads.
        cfg.model.pretrained = cfg.tokenizer.path = str(Path(folder).expanduser())
        settings = load_settings(cfg)
        tokenizer = tokenizer_for(settings)
        module = LanguageModelModule(plain_config(cfg), tokenizer.build_vocab([]).itos, tokenizer.save())
        return cls.scoring(settings, tokenizer, module.eval(), split)  # as load_module's: no dropout

    @classmethod
    def scoring(cls, settings: Settings, tokenizer: Tokenizer, module: LanguageModelModule,
                split: Optional[str]) -> "Run":
        """A model that is not trained here; with ``split``, its corpus tokenized with the model's
        own vocabulary and a data module that validates on that split."""
        corpus = datamodule = None
        if split is not None:
            corpus = prepare_corpus(settings.data, tokenizer, settings.paths.cache(), vocab=module.hparams.vocab)
            if split not in corpus.ids:
                raise ConfigError(f"split={split}: data={settings.names['data']} has no {split} split (its "
                                  f"fraction is 0)")
            if settings.data.eval_batch_size == "auto":
                windows = evaluation_windows(corpus, module.block_size, settings.eval.stride, (split,))
                with torch.random.fork_rng(devices=[]):  # as the training plan's: no random state moved
                    settings.data.eval_batch_size = scoring_eval_batch(module.model, settings,
                                                                       len(module.hparams.vocab), module.block_size,
                                                                       windows)
            datamodule = LMDataModule(corpus, settings.data, module.block_size, settings.eval.stride,
                                      settings.seed, stages={"val": split})
        return cls(settings, tokenizer, corpus, module, datamodule)

    @property
    def parameters(self) -> tuple[int, int]:
        """(total, without embeddings)."""
        return parameter_counts(self.module.model)

    def loggers(self, run_dir: Path, resumed_at: Optional[int] = None) -> list:
        """The chosen loggers, and metrics.csv with any of them: the local report reads it, with no
        account. ``resumed_at``: the step a resumed run continues from."""
        names, seed = self.settings.names, self.settings.seed
        name = f"{names['model']}-{names['data']}-p{short_count(self.parameters[0])}-s{seed}"
        chosen = dict(self.settings.logger)
        if chosen:
            chosen.setdefault("csv", LOGGERS.option("csv").config(name="csv"))
        tags = [names["model"], names["data"], names["tokenizer"]]
        return [LOGGERS.option(logger).make(config, run_dir, name=name, group=names["data"], tags=tags,
                                            run_config=self.module.hparams.config, resumed=resumed_at)
                for logger, config in chosen.items()]

    def trainer(self, run_dir: Path, callbacks: Optional[list[Callback]] = None, loggers: Any = None,
                **overrides: Any) -> pl.Trainer:
        """Lightning's Trainer with the ``trainer=`` settings (``overrides`` on top), the
        ``callbacks=`` group's callbacks and the ``logger=`` option's loggers."""
        kwargs = {**self.settings.trainer.kwargs(), **overrides}
        if self.settings.trainer.keep_freed_memory:
            allocator.keep_freed_memory()
        if self.settings.trainer.matmul_precision:
            torch.set_float32_matmul_precision(self.settings.trainer.matmul_precision)
        if callbacks is None:
            callbacks = build_callbacks(self.settings, run_dir)
            if "progress_bar" in self.settings.callbacks and self.settings.callbacks["progress_bar"] is None \
                    and not any(isinstance(c, ProgressBar) for c in callbacks):
                kwargs["enable_progress_bar"] = False  # off means no bar, not Lightning's own in its place
        if not kwargs.get("enable_progress_bar", True):  # Lightning refuses a bar it was told not to show
            callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
        # The signal's checkpoint is written in a step's batch-end hook: after every other
        # callback's (the token counts, the token budget), so that it holds this step's state.
        # Lightning keeps this order but for its checkpoint callbacks, which it moves last.
        callbacks = sorted(callbacks, key=lambda c: isinstance(c, StopOnSignal))
        # callbacks.checkpoint=null writes no checkpoint: Lightning would add its own ModelCheckpoint
        # (its last state, which the test would then load as if it were the best).
        kwargs.setdefault("enable_checkpointing", any(isinstance(c, ModelCheckpoint) for c in callbacks))
        loggers = self.loggers(run_dir) if loggers is None else loggers
        plugins = [AtomicCheckpointIO()]
        if SLURMEnvironment.detect():  # SLURM's warning is StopOnSignal's: Lightning's handler would requeue mid-step
            plugins.append(SLURMEnvironment(auto_requeue=False))
        try:
            return pl.Trainer(**kwargs, logger=loggers or False,
                              callbacks=callbacks, default_root_dir=str(run_dir), plugins=plugins,
                              use_distributed_sampler=False)  # the data module gives each process its own rows
        except (MisconfigurationException, ValueError, TypeError, ImportError) as e:
            # Lightning checks these here, in words that may name none of them ("Requirement
            # 'torch_xla>=1.13' not met" for accelerator=tpu): the settings go first.
            named = " ".join(f"trainer.{key}={kwargs[key]}" for key in CHECKED_BY_LIGHTNING if key in kwargs)
            raise ConfigError(f"{named}: Lightning refuses them: {' '.join(str(e).split())}") from None
