"""The ``logger=`` options: each logger's settings, and where its builder is (``lmexp/loggers.py``).

The group chooses any number of them (``logger=[wandb,tensorboard]``, Hydra's selection of several
configs from one group), so ``logger`` maps each chosen name to its settings: ``logger.wandb.mode``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from lmexp.registry import Registry
from lmexp.schema import Option, check

LOGGERS = Registry("logger", "logger")  # name -> Entry(build(config, run_dir, name, group, tags, run_config, resumed: step or None), config)


@dataclass
class WandbConfig(Option):
    name: Optional[str] = "wandb"
    project: str = "lmexp"
    entity: Optional[str] = None
    mode: Optional[str] = None  # online | offline | disabled; null: online only if an account is configured
    # null: the sweep's (an Optuna search's study, a W&B sweep's id, else the multirun folder), or
    # the experiment preset's name, or the data's
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)  # beside the run's model, data and tokenizer

    def validate(self, group: str) -> None:
        check(self.mode in (None, "online", "offline", "disabled"), f"{group}.mode", self.mode,
              "online, offline, disabled, or null (online only when W&B is configured)")


@dataclass
class CSVConfig(Option):
    pass


@dataclass
class TensorBoardConfig(Option):
    pass


LOGGERS.declare("wandb", WandbConfig, "lmexp.loggers:build_wandb")
LOGGERS.declare("tensorboard", TensorBoardConfig, "lmexp.loggers:build_tensorboard")
LOGGERS.declare("csv", CSVConfig, "lmexp.loggers:build_csv")
