"""Experiment loggers (the ``logger=`` group): W&B (offline unless configured), CSV, or none.

Every option but ``none`` also writes ``metrics.csv`` in the run folder, so a run's numbers
can be read without any service.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Optional

from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger

from lmexp.options.logger import NoConfig, WandbConfig


def wandb_mode(requested: Optional[str]) -> str:
    """Online only when the user asked for it or has an account configured, so that a run
    never stops to prompt for a login or waits on a network that is not there."""
    if requested:
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1]
        if netrc.netrc().authenticators(host):
            return "online"
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline"


def csv_logger(run_dir: Path) -> CSVLogger:
    return CSVLogger(save_dir=str(run_dir), name="", version="")  # -> run_dir/metrics.csv


def build_wandb(config: WandbConfig, run_dir: Path, name: str, group: str, run_config: dict) -> list[Logger]:
    mode = wandb_mode(config.mode)
    if mode != "online":
        # wandb >= 0.2x starts an OpenTelemetry exporter that asks the W&B server whether it takes
        # analytics, unless the process-wide settings (read from WANDB_MODE when wandb sets up)
        # are offline: an offline run must not reach for the network at all.
        os.environ["WANDB_MODE"] = mode
    wandb = WandbLogger(project=config.project, entity=config.entity, name=name, group=group, tags=config.tags,
                        save_dir=str(run_dir), mode=mode, config=run_config)
    return [wandb, csv_logger(run_dir)]


def build_csv(config: NoConfig, run_dir: Path, name: str, group: str, run_config: dict) -> list[Logger]:
    logger = csv_logger(run_dir)
    logger.log_hyperparams(run_config)
    return [logger]


def build_none(config: NoConfig, run_dir: Path, name: str, group: str, run_config: dict) -> list[Logger]:
    return []


def close(loggers: list[Logger]) -> None:
    """Finish the W&B run now, not at interpreter exit, so that each job of a multirun in
    one process gets its own run and the offline files are complete when train() returns."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()

