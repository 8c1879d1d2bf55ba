"""The whole run's settings: every group's schema, registered with Hydra, and checked in one call.

Each option's dataclass (``RNNConfig`` in ``options/model.py``, ``AdamWConfig`` in
``options/optimizer.py``, ``PTBConfig`` beside its reader in ``data/corpora.py``, ...) is stored in
Hydra's ConfigStore as ``<group>/base_<name>``; the YAML option under ``conf/<group>/`` lists it
in its defaults and holds only what differs from it. So every default has one source, the
dataclass, and OmegaConf checks names and types while Hydra composes. :func:`load_settings`
then builds the dataclasses and checks ranges.

Nothing here imports torch or Lightning (``tests/test_startup.py`` holds it to that): a config
mistake is reported in well under two seconds, not after the seconds those imports take.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lmexp.data.corpora import CORPORA
from lmexp.data.tokenizers import TOKENIZERS
from lmexp.errors import ConfigError
from lmexp.options.callbacks import CHECKS as CALLBACK_CHECKS
from lmexp.options.embedding import EMBEDDINGS
from lmexp.options.logger import LOGGERS
from lmexp.options.model import MODELS
from lmexp.options.optimizer import OPTIMIZERS
from lmexp.options.regularization import RegularizationConfig
from lmexp.options.scheduler import SCHEDULERS
from lmexp.options.trainer import TrainerConfig, parse_trainer
from lmexp.registry import Registry
from lmexp.schema import check, parse

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

# The groups whose options are registered by name, each with its registry.
REGISTRIES: dict[str, Registry] = {"data": CORPORA, "tokenizer": TOKENIZERS, "embedding": EMBEDDINGS,
                                   "model": MODELS, "optimizer": OPTIMIZERS, "scheduler": SCHEDULERS,
                                   "logger": LOGGERS}
# Folders under conf/ whose options set several groups at once (``# @package _global_``, as in
# lightning-hydra-template): presets of settings, not a group of their own. conf/hydra/ holds
# options of Hydra's own groups (hydra/sweeper=optuna).
PRESETS = ("experiment", "hparams_search")
GROUPS = ("data", "tokenizer", "embedding", "model", "optimizer", "scheduler", "regularization", "trainer",
          "logger", "callbacks")
# The groups that may choose several options at once (logger=[wandb,tensorboard]); in any other,
# Hydra would merge the options listed and the last would win.
SEVERAL = ("logger",)


@dataclass
class EvalConfig:
    stride: Optional[int] = None  # attention models: sliding-window evaluation; null = block_size

    def validate(self, group: str) -> None:
        if self.stride is not None:
            check(self.stride >= 1, f"{group}.stride", self.stride, "a positive integer, or null")


@dataclass
class PathsConfig:
    cache_dir: str = "${oc.env:LMEXP_CACHE,'~/.cache/lmexp'}"  # tokenized corpora, prepared text, vectors

    def cache(self) -> Path:
        """The cache folder, checked: it is a folder, or one can be made where it would go. Only
        a folder yet to be made must be writable: a cache read-only to this user is read as ever."""
        folder = Path(os.path.expanduser(self.cache_dir))
        check_folder(folder, f"paths.cache_dir={self.cache_dir}",
                     "set paths.cache_dir (or LMEXP_CACHE, its default) to a folder", written=False)
        return folder


def check_folder(folder: Path, setting: str, fix: str, written: bool = True) -> None:
    """``folder`` is a folder, or one can be made where it would go: the nearest part of its path
    that exists is a folder this user may make folders in; with ``written`` (a run's folder, not
    a cache that may be read-only) the folder itself too, if it exists. ``fix``: the message's
    advice, "set KEY to a folder" ("... you may write in" follows where that is what failed)."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{setting}: {existing} is a file, not a folder; {fix}")
    if written or existing != folder:
        try:  # permissions alone do not tell (root may write anywhere, but not in /proc)
            os.rmdir(tempfile.mkdtemp(prefix=".lmexp-check-", dir=existing))
        except OSError as e:
            raise ConfigError(f"{setting}: no folder can be made in {existing} ({e.strerror}); {fix} you may "
                              f"write in") from None


@dataclass
class RunConfig:
    """The top level of ``conf/config.yaml``: the groups, and the settings that belong to no group."""

    seed: int = 1234
    resume: Optional[str] = None  # a stopped run's folder (or a checkpoint in it) to continue: lmexp/resume.py
    eval: EvalConfig = field(default_factory=EvalConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: Any = None
    tokenizer: Any = None
    embedding: Any = None
    model: Any = None
    optimizer: Any = None
    scheduler: Any = None
    regularization: Any = None
    trainer: Any = None
    logger: Any = None
    callbacks: Any = field(default_factory=dict)  # name -> {_target_: class or function, arguments...} or null

    def validate(self, group: str) -> None:
        check(0 <= self.seed < 2 ** 32, "seed", self.seed, "an integer from 0 to 4294967295 (numpy's seeds)")
        self.eval.validate("eval")  # parse() checks the top level only; eval is no group of its own


def store_schemas() -> None:
    """Register every option's dataclass with Hydra, so the YAML options can name them."""
    store = ConfigStore.instance()
    store.store(name="base_config", node=RunConfig)
    for group, registry in REGISTRIES.items():
        for name, entry in registry.items():
            store.store(group=group, name=f"base_{name}", node=entry.config(name=name))
    store.store(group="regularization", name="base_regularization", node=RegularizationConfig)
    store.store(group="trainer", name="base_trainer", node=TrainerConfig)


store_schemas()


def schema_of(group: str, name: Any = None) -> type:
    """The dataclass that types a group's settings ("" is the top level); for a registered
    group, that of the option ``name``."""
    fixed = {"": RunConfig, "trainer": TrainerConfig, "regularization": RegularizationConfig}
    if group in fixed:
        return fixed[group]
    if not isinstance(name, str):
        raise ConfigError(f"{group}.name is required: the option's registered name")
    return REGISTRIES[group].option(name).config


def parse_group(group: str, node: Any) -> Any:
    """One group's settings: the schema of the option that ``node.name`` names, checked."""
    if group == "trainer":
        return parse_trainer(node)
    name = node.get("name") if isinstance(node, (dict, DictConfig)) else None
    return parse(schema_of(group, name), node, group)


@dataclass
class Settings:
    """Every group parsed and checked."""

    data: Any
    tokenizer: Any
    embedding: Any
    model: Any
    optimizer: Any
    scheduler: Any
    regularization: RegularizationConfig
    trainer: TrainerConfig
    logger: dict[str, Any]  # each chosen logger's name -> its settings; empty with logger=none
    callbacks: dict[str, Optional[dict]]
    eval: EvalConfig
    paths: PathsConfig
    seed: int
    resume: Optional[str] = None  # the checkpoint a resumed run continues from

    def check_files(self) -> None:
        """Every file the run will read, before it starts (a checkpoint's settings skip this)."""
        for option in [*(getattr(self, group) for group in self.names), *self.logger.values()]:
            option.check_files()
        self.paths.cache()

    @property
    def names(self) -> dict[str, str]:
        """Each registered group's chosen option (the loggers, of which there may be several, aside)."""
        return {group: getattr(self, group).name for group in REGISTRIES if group != "logger"}


def plain_config(cfg: DictConfig | dict) -> dict:
    """A composed config as a run stores it (config.yaml, a checkpoint): resolved, without Hydra's
    own node (whose folders are checked, and their ``${...}`` resolved, as folders)."""
    if not isinstance(cfg, DictConfig):
        return {k: v for k, v in cfg.items() if k != "hydra"}
    try:
        return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    except OmegaConfBaseException as e:  # ${oc.env:UNSET}, ${model.nam}, a loop: OmegaConf's traceback
        key = e.full_key
        why = str(e).splitlines()[0].rstrip(".")
        raise ConfigError(f"{key}: cannot be resolved ({why}); give {key} a value, or an ${{...}} that resolves") from None


def flat(settings: dict, prefix: str = "") -> dict[str, Any]:
    """``{"optimizer": {"lr": 0.001}}`` -> ``{"optimizer.lr": 0.001}``: a setting as one override names it."""
    out = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _setting_names(schema: type) -> set[str]:
    return {f.name for f in fields(schema)}


def check_option_names(cfg: DictConfig) -> None:
    """``model=lstm model.name=gpt2``: a group's settings are composed from the option the command
    line chose (RNNConfig's, here), and ``name`` picks the code they are handed to. A name of
    another kind would hand GPT-2's code an LSTM's settings (or one corpus's download address to
    another corpus), and the check then named a setting nobody typed (``model.embedding_size is
    not a setting``). Only a composed config knows its schemas; a stored one is checked by them."""
    for group, registry in REGISTRIES.items():
        node = cfg.get(group)
        if group == "logger" or not isinstance(node, DictConfig):
            continue
        composed, name = OmegaConf.get_type(node), node.get("name")
        kinds = {entry.config for entry in registry.values()}
        # A name of one kind (lstm and gru, cosine and linear) takes the same settings: allowed.
        if isinstance(name, str) and name in registry and composed in kinds and \
                _setting_names(registry[name].config) != _setting_names(composed):
            options = [p.stem for p in sorted((CONF_DIR / group).glob("*.yaml"))
                       if f"base_{name}" in OmegaConf.load(p).get("defaults", [])]
            choose = f"{group}={options[0]}" if options else f"the {group}= option of {name}"
            raise ConfigError(f"{group}.name={name}: another kind of {group} than the {group}= option chosen, whose "
                              f"settings it does not take; choose {choose} rather than setting {group}.name")


def load_settings(cfg: DictConfig | dict) -> Settings:
    """Every setting of a composed config (or of a checkpoint's stored one), checked before any work."""
    values = plain_config(cfg)
    if isinstance(cfg, DictConfig):
        check_option_names(cfg)
    top = parse(RunConfig, values, "")
    groups = {}
    for group in GROUPS:
        node = getattr(top, group)
        if group == "callbacks":
            groups[group] = check_callbacks(node)
        elif group == "logger":
            groups[group] = parse_loggers(node)
        elif not isinstance(node, dict):
            raise ConfigError(f"the {group} group is missing; pick an option, e.g. {group}=<name>")
        else:
            groups[group] = parse_group(group, node)
    model = groups["model"]
    stateful = MODELS.option(model.name).config.stateful
    groups["regularization"].check_model(model.name, stateful)
    # A recurrent model reads each split as streams, its state carried: there is no window to slide.
    check(top.eval.stride is None or not stateful, "eval.stride", top.eval.stride,
          f"null for model={model.name}: only models that read windows (gpt2, transformer) slide them")
    # Checked here, not where the batch is chosen: --cfg job printed a config that a run refused.
    check(groups["data"].eval_batch_size != "auto" or not stateful, "data.eval_batch_size", "auto",
          f"a number for model={model.name}: only models that read windows (gpt2, transformer) size it; a "
          f"recurrent model's evaluation batch is its number of streams, which sets its perplexity (e.g. 16)")
    replacing = groups["embedding"].replacing()
    if replacing and getattr(model, "pretrained", None) is not None:
        raise ConfigError(f"{replacing}: would write over the token embedding of model.pretrained={model.pretrained} "
                          f"(and the output layer tied to it); leave embedding=learned, without init_std, to "
                          f"fine-tune the folder's own")
    world = groups["trainer"].processes()
    rows_per_step(groups["data"], groups["trainer"], world)
    check_eval_rows(groups["data"].eval_batch_size, world)  # here, else found once the processes run
    return Settings(**groups, eval=top.eval, paths=top.paths, seed=top.seed, resume=top.resume)


def parse_loggers(node: Any) -> dict[str, Any]:
    """``logger``: each chosen logger's name -> its settings, checked (``logger=none`` chooses none)."""
    node = node or {}
    check(isinstance(node, dict), "logger", node, "a mapping of logger names to their settings, e.g. logger=wandb")
    if isinstance(node.get("name"), str):  # a run's config stored when logger= chose one logger, its settings flat
        node = {} if node["name"] == "none" else {node["name"]: node}
    return {name: parse(schema_of("logger", name), {**(settings or {}), "name": name}, f"logger.{name}")
            for name, settings in node.items()}


def check_callbacks(node: Any) -> dict[str, Optional[dict]]:
    """``callbacks``: name -> the arguments of a Lightning callback with its ``_target_``, or null (off)."""
    check(isinstance(node, dict), "callbacks", node, "a mapping of names to callbacks")
    for name, entry in node.items():
        if entry is not None:
            target = entry.get("_target_") if isinstance(entry, dict) else None
            check(isinstance(target, str) and bool(target), f"callbacks.{name}._target_", target,
                  "the class path of a Lightning callback (or set callbacks." + name + "=null to turn it off)")
            if target in CALLBACK_CHECKS:
                CALLBACK_CHECKS[target](name, entry)
    return node


def check_eval_rows(rows: Any, world: int) -> None:
    """``data.eval_batch_size`` is rows in all, shared out among the ``world`` processes (so that the
    metric is the same for any process count): a number of them must divide evenly (auto is chosen so)."""
    if isinstance(rows, int) and rows % world:
        raise ConfigError(f"data.eval_batch_size={rows}: must be a multiple of the number of processes ({world}), "
                          f"e.g. data.eval_batch_size={-(-rows // world) * world}")


def rows_per_step(data, trainer, world: int) -> Optional[int]:
    """Rows per optimizer step on each process when ``data.effective_batch_size`` fixes them,
    checked against ``data.batch_size`` and ``trainer.accumulate_grad_batches`` (set, they must
    agree with it); None when it is not set."""
    effective = data.effective_batch_size
    if effective is None:
        return None
    if effective % world:
        raise ConfigError(f"data.effective_batch_size={effective}: must be a multiple of the number of "
                          f"processes ({world})")
    rows = effective // world
    given = trainer.accumulate_grad_batches
    if data.batch_size != "auto":
        if rows % data.batch_size:
            share = "" if world == 1 else f" over {world} processes, {rows} rows each"
            raise ConfigError(f"data.batch_size={data.batch_size}: must divide the rows per optimizer step, "
                              f"data.effective_batch_size={effective}{share} (or set data.batch_size=auto)")
        if given not in (1, rows // data.batch_size):
            raise ConfigError(f"trainer.accumulate_grad_batches={given}: data.effective_batch_size={effective} sets "
                              f"it ({rows // data.batch_size}); leave it at 1, or set data.effective_batch_size=null")
    elif given != 1:
        raise ConfigError(f"trainer.accumulate_grad_batches={given}: data.batch_size=auto sets it from "
                          f"data.effective_batch_size={effective}; leave it at 1")
    return rows
