"""Schemas of the config groups, checked before anything runs.

Each group's YAML maps one-to-one onto a dataclass: an unknown key, a value of the
wrong type or out of range is a ConfigError naming the setting, e.g.
``regularization.dropout=1.5: must be in [0, 1)``.
"""

from __future__ import annotations

import difflib
import inspect
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from lmexp.errors import ConfigError


CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def check(ok: bool, setting: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{setting}={_show(value)}: must be {expected}")


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()  # as YAML and the command line write it
    return "''" if value == "" else str(value)


def _unknown_key(group: str, key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {group}.{close[0]}? " if close else ""
    return ConfigError(f"{group}.{key} is not a setting of this {group} option; {hint}valid: {', '.join(known)}")


def _type_ok(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin in (list, tuple):
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return isinstance(value, (list, tuple)) and all(_type_ok(v, item) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def to_dict(node: Any) -> dict:
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    return dict(node)


def parse(cls: type, node: Any, group: str, ignore: tuple[str, ...] = ("name",)):
    """Build dataclass ``cls`` from a config node, naming ``group.key`` in every error."""
    assert is_dataclass(cls)
    values = {k: v for k, v in to_dict(node).items() if k not in ignore}
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls) if f.init]
    for key, value in values.items():
        if key not in known:
            raise _unknown_key(group, key, known)
        if isinstance(value, float) and hints[key] is int and value.is_integer():
            values[key] = value = int(value)
        if not _type_ok(value, hints[key]):
            raise ConfigError(f"{group}.{key}={_show(value)}: must be of type {_type_name(hints[key])}")
    for f in fields(cls):
        if f.init and f.name not in values and f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"{group}.{f.name} is required: set {group}.{f.name}=...")
    obj = cls(**values)
    if hasattr(obj, "validate"):
        obj.validate(group)
    return obj


# --- groups whose options share one schema -------------------------------------------------


@dataclass
class RegularizationConfig:
    # Dropout: `dropout` is the rate of every site left null below; each model has the sites its
    # architecture has (README: "Regularization").
    dropout: float = 0.0
    embed_dropout: float = 0.0  # whole words: every use of a dropped word in the batch is zero
    input_dropout: Optional[float] = None  # the embedded input
    hidden_dropout: Optional[float] = None  # between recurrent layers
    output_dropout: Optional[float] = None  # the last layer's output, before the softmax
    attention_dropout: Optional[float] = None  # attention weights
    residual_dropout: Optional[float] = None  # residual branches and the feed-forward's hidden layer
    locked_dropout: bool = False  # recurrent: one mask per sequence for input/hidden/output (variational)
    weight_drop: float = 0.0  # recurrent: DropConnect on the hidden-to-hidden matrices
    ar: float = 0.0  # recurrent: activation regularization, ar * mean(dropped last-layer output ** 2)
    tar: float = 0.0  # recurrent: temporal AR, tar * mean((h_t - h_{t-1}) ** 2) of the raw output
    l1: float = 0.0  # coupled: l1 * sum(|p|) added to the training loss
    l2: float = 0.0  # coupled: l2 * sum(p ** 2) added to the loss; not the optimizer's (decoupled) weight_decay
    exclude: list[str] = field(default_factory=lambda: ["bias", "norm"])  # kinds l1/l2 skip; or embedding

    RATES = ("dropout", "embed_dropout", "input_dropout", "hidden_dropout", "output_dropout", "attention_dropout",
             "residual_dropout", "weight_drop")
    RECURRENT_ONLY = ("locked_dropout", "weight_drop", "ar", "tar")

    def validate(self, group: str) -> None:
        from lmexp.optim import check_exclude  # lmexp.optim imports this module

        for key in self.RATES:
            value = getattr(self, key)
            check(value is None or 0.0 <= value < 1.0, f"{group}.{key}", value,
                  "in [0, 1)" if key in ("dropout", "embed_dropout", "weight_drop") else f"in [0, 1), or null for {group}.dropout's")
        for key in ("ar", "tar", "l1", "l2"):
            check(getattr(self, key) >= 0, f"{group}.{key}", getattr(self, key), ">= 0")
        check_exclude(self.exclude, f"{group}.exclude")

    def check_model(self, model: str, recurrent: bool, group: str = "regularization") -> None:
        """The recurrent-only techniques named with a model that has no recurrence are a mistake, not a no-op."""
        for key in self.RECURRENT_ONLY if not recurrent else ():
            value = getattr(self, key)
            check(not value, f"{group}.{key}", value,
                  f"{'false' if isinstance(value, bool) else 0} for model={model}: it applies to recurrent "
                  f"models (rnn, gru, lstm)")


@dataclass
class EvalConfig:
    stride: Optional[int] = None  # attention models: sliding-window evaluation; null = block_size

    def validate(self, group: str) -> None:
        if self.stride is not None:
            check(self.stride >= 1, f"{group}.stride", self.stride, "a positive integer, or null")


@dataclass
class TrainerConfig:
    """Lightning Trainer arguments; any other Trainer argument may be added to the YAML."""

    max_epochs: Optional[int] = None
    max_steps: int = -1
    gradient_clip_val: Optional[float] = None
    accumulate_grad_batches: int = 1
    val_check_interval: Optional[float] = None
    extra: dict = field(default_factory=dict)

    def validate(self, group: str) -> None:
        if self.max_epochs is not None:
            check(self.max_epochs >= 1 or self.max_epochs == -1, f"{group}.max_epochs", self.max_epochs,
                  "a positive integer, or -1 for no limit")
        check(self.max_steps >= 1 or self.max_steps == -1, f"{group}.max_steps", self.max_steps,
              "a positive integer, or -1 for no limit")
        if self.gradient_clip_val is not None:
            check(self.gradient_clip_val >= 0, f"{group}.gradient_clip_val", self.gradient_clip_val,
                  ">= 0, or null for no clipping")
        check(self.accumulate_grad_batches >= 1, f"{group}.accumulate_grad_batches",
              self.accumulate_grad_batches, "a positive integer")
        if self.val_check_interval is not None:
            check(self.val_check_interval > 0, f"{group}.val_check_interval", self.val_check_interval,
                  "> 0 (a fraction of an epoch, or a number of steps)")

    def kwargs(self) -> dict:
        named = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**named, **self.extra}


def parse_trainer(node: Any, group: str = "trainer") -> TrainerConfig:
    """Trainer settings are Lightning's own arguments, so check names against its signature."""
    import pytorch_lightning as pl

    values = to_dict(node)
    allowed = [p for p in inspect.signature(pl.Trainer.__init__).parameters if p != "self"]
    reserved = {"logger", "callbacks", "default_root_dir", "use_distributed_sampler", "plugins"}
    for key in values:
        if key not in allowed or key in reserved:
            raise _unknown_key(group, key, sorted(set(allowed) - reserved))
    schema = [f.name for f in fields(TrainerConfig) if f.name != "extra"]
    typed = parse(TrainerConfig, {k: v for k, v in values.items() if k in schema}, group)
    typed.extra = {k: v for k, v in values.items() if k not in schema}
    return typed


# --- the whole config ------------------------------------------------------------------------

GROUPS = ("data", "tokenizer", "embedding", "model", "optimizer", "scheduler", "regularization", "trainer",
          "logger")


@dataclass
class Settings:
    """Every group parsed and checked; ``names`` holds each group's chosen option."""

    names: dict[str, str]
    data: Any
    tokenizer: Any
    embedding: Any
    model: Any
    optimizer: Any
    scheduler: Any
    regularization: RegularizationConfig
    trainer: TrainerConfig
    logger: Any
    eval: EvalConfig
    seed: int


def load_settings(cfg: DictConfig) -> Settings:
    # Imported here: the registries import this module for `parse` and `check`.
    from lmexp.data.corpora import corpus_spec
    from lmexp.data.tokenizers import tokenizer_spec
    from lmexp.embeddings import embedding_spec
    from lmexp.loggers import logger_spec
    from lmexp.models import model_spec, parse_model_config
    from lmexp.optim import optimizer_spec
    from lmexp.schedulers import scheduler_spec

    names = {}
    for group in GROUPS:
        node = cfg.get(group)
        if not isinstance(node, DictConfig):
            raise ConfigError(f"the {group} group is missing; pick an option, e.g. {group}=<name>")
        if group not in ("regularization", "trainer"):
            if not isinstance(node.get("name"), str):
                raise ConfigError(f"{group}.name is required: the option's registered name")
            names[group] = node.name
    seed = cfg.get("seed")
    check(isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0, "seed", seed, "a non-negative integer")
    regularization = parse(RegularizationConfig, cfg.regularization, "regularization")
    regularization.check_model(names["model"], model_spec(names["model"]).cls.stateful)
    return Settings(
        names=names,
        data=parse(corpus_spec(names["data"]).config_cls, cfg.data, "data"),
        tokenizer=parse(tokenizer_spec(names["tokenizer"])[1], cfg.tokenizer, "tokenizer"),
        embedding=parse(embedding_spec(names["embedding"])[1], cfg.embedding, "embedding"),
        model=parse_model_config(cfg.model),
        optimizer=parse(optimizer_spec(names["optimizer"])[1], cfg.optimizer, "optimizer"),
        scheduler=parse(scheduler_spec(names["scheduler"])[1], cfg.scheduler, "scheduler"),
        regularization=regularization,
        trainer=parse_trainer(cfg.trainer),
        logger=parse(logger_spec(names["logger"])[1], cfg.logger, "logger"),
        eval=parse(EvalConfig, cfg.get("eval") or {}, "eval"),
        seed=seed,
    )
