"""Experiment loggers (the ``logger=`` group, any number of them): W&B (offline unless
configured), TensorBoard, CSV, or none.

Every choice but ``none`` also writes ``metrics.csv`` in the run folder (``Run.loggers`` adds
it), so a run's numbers can be read, and reported (``python -m lmexp.report``), without any
service. A resumed run (``resumed``: the step it continues from) continues each: the same ``metrics.csv``, the same W&B
run, the same TensorBoard folder. At the end each gets the run's results (``log_results``): W&B
as the run's summary, TensorBoard in its HParams view beside the settings.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Optional

from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment

import yaml

from lmexp.atomic import write_text
from lmexp.config import flat
from lmexp.options.logger import CSVConfig, TensorBoardConfig, WandbConfig
from lmexp.wandb_account import has_wandb_account

# results.json's numbers that a dashboard shows for each run: W&B's run summary, TensorBoard's HParams.
RESULTS = ("best_val_ppl", "test_ppl", "test_word_ppl", "test_bpb", "val_word_ppl", "val_bpb", "params",
           "params_without_embeddings", "train_tokens", "train_flops", "train_tokens_per_sec", "wall_time_s")


def _numbers(results: dict) -> dict:
    return {key: results[key] for key in RESULTS if isinstance(results.get(key), (int, float))}


def wandb_mode(requested: Optional[str]) -> str:
    """Online only when the user asked for it or has an account configured, so that a run
    never stops to prompt for a login or waits on a network that is not there."""
    if requested:
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if has_wandb_account() else "offline"


class _ContinuedWriter(ExperimentWriter):
    """Lightning's CSV writer, appending to the ``metrics.csv`` it finds (Lightning's deletes it)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = list(csv.DictReader(f).fieldnames or [])


class ContinuedCSVLogger(CSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._experiment = _ContinuedWriter(log_dir=self.log_dir)
        return self._experiment


def csv_logger(run_dir: Path, resumed: bool = False) -> CSVLogger:
    # Each row is written as it is logged (Lightning's default holds 100): a killed run keeps them.
    return (ContinuedCSVLogger if resumed else CSVLogger)(save_dir=str(run_dir), name="", version="",
                                                          flush_logs_every_n_steps=1)  # -> run_dir/metrics.csv


def drop_rows_from(run_dir: Path, step: int) -> None:
    """Remove the rows of ``metrics.csv`` logged at ``step`` or later: a run resumed from a
    checkpoint of that step does those steps again, so each step keeps one row."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = [row for row in reader if row.get("step") in (None, "") or int(row["step"]) < step]
        fields = reader.fieldnames or []
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, out.getvalue())


def wandb_run_id(run_dir: Path) -> Optional[str]:
    """The id of the W&B run in a run folder (``wandb/<offline-run|run>-<time>-<id>``), the latest if several."""
    runs = sorted((p for p in (run_dir / "wandb").glob("*run-*-*") if p.is_dir()), key=lambda p: p.name.split("-")[-2])
    return runs[-1].name.rsplit("-", 1)[-1] if runs else None


class WandbRunLogger(WandbLogger):
    def log_results(self, results: dict) -> None:
        if self._experiment is not None:  # never started (stopped before its first value): nothing to sum up
            best = {} if results.get("best_val_ppl") is None else {"val/ppl": results["best_val_ppl"]}
            # val/ppl's summary is the best validation's, not the last's: a W&B sweep (sweeps/*.yaml:
            # metric val/ppl) ranks its runs by their summary, as the tested checkpoint is the best.
            self.experiment.summary.update({**_numbers(results), **best, "status": results["status"]})


class TensorBoardRunLogger(TensorBoardLogger):
    def __init__(self, run_config: dict, **kwargs) -> None:
        super().__init__(**kwargs)
        self._run_config = run_config

    def log_results(self, results: dict) -> None:
        # HParams shows a run's settings beside the metrics named here; written once, at the end,
        # when they have values (Lightning's placeholder hp_metric is off).
        self.log_hyperparams(self._run_config, metrics={f"hparams/{k}": v for k, v in _numbers(results).items()})


def beside_the_sweep(run_config: dict) -> dict:
    """``run_config`` as a W&B agent's run can keep it. The agent's parameters (a file that
    WANDB_SWEEP_PARAM_PATH names) replace the config's keys of those names, and stay locked: its
    grid finds the points done by their values. A config group swept by its choice (``model:
    gru``) would lose the group's settings (``model.hidden_size``, and ``model.name``, by which
    the W&B report groups architectures), so they are written beside it, flat, under the names W&B
    shows a nested config by."""
    path = os.environ.get("WANDB_SWEEP_PARAM_PATH")  # wandb.env.SWEEP_PARAM_PATH: set by the agent
    if not path or not os.path.isfile(path):
        return run_config
    with open(path) as f:
        swept = yaml.safe_load(f) or {}
    config = dict(run_config)
    for key in [k for k in swept if isinstance(config.get(k), dict)]:
        config.update(flat(config.pop(key), f"{key}."))
    return config


def build_wandb(config: WandbConfig, run_dir: Path, name: str, group: str, tags: list[str], run_config: dict,
                resumed: Optional[int] = None) -> Logger:
    """``group``: the data's name, for when ``logger.wandb.group`` is null (python -m lmexp sets
    it in a sweep or an experiment: name_the_group in lmexp/__main__.py). W&B shows the nested
    config flattened (``model.hidden_size``), as its run table and parallel coordinates want it."""
    mode = wandb_mode(config.mode)
    if mode != "online":
        # wandb >= 0.2x starts an OpenTelemetry exporter that asks the W&B server whether it takes
        # analytics, unless the process-wide settings (read from WANDB_MODE when wandb sets up)
        # are offline: an offline run must not reach for the network at all.
        os.environ["WANDB_MODE"] = mode
    run_id = wandb_run_id(run_dir) if resumed is not None else None
    group = config.group or group
    tags = list(dict.fromkeys([*config.tags, *tags]))
    return WandbRunLogger(project=config.project, entity=config.entity, name=name, group=group, tags=tags,
                          save_dir=str(run_dir), mode=mode, config=beside_the_sweep(run_config),
                          **({"id": run_id, "resume": "allow"} if run_id else {}))


def build_tensorboard(config: TensorBoardConfig, run_dir: Path, name: str, group: str, tags: list[str],
                      run_config: dict, resumed: Optional[int] = None) -> Logger:
    # <run folder>/tensorboard, the same folder when resumed: TensorBoard reads every event file in
    # it, and discards the earlier segment's points from the step the run continues from (purge_step),
    # which it logs again; metrics.csv is cut there likewise (drop_rows_from).
    return TensorBoardRunLogger(run_config, save_dir=str(run_dir), name="tensorboard", version="",
                                default_hp_metric=False, **({"purge_step": resumed} if resumed is not None else {}))


def build_csv(config: CSVConfig, run_dir: Path, name: str, group: str, tags: list[str], run_config: dict,
              resumed: Optional[int] = None) -> Logger:
    logger = csv_logger(run_dir, resumed is not None)
    logger.log_hyperparams(run_config)
    return logger


def close(loggers: list[Logger], results: Optional[dict] = None, exit_code: int = 0) -> None:
    """Hand each logger the run's ``results``, then finish the W&B run now, not at interpreter
    exit, so that each job of a multirun in one process gets its own run and the offline files
    are complete when train() returns. A non-zero ``exit_code`` marks it as not finished (an
    interrupted run)."""
    for logger in loggers:
        if results is not None and hasattr(logger, "log_results"):
            logger.log_results(results)
        logger.save()
        if isinstance(logger, WandbLogger) and logger._experiment is not None:  # not started: nothing to finish
            logger.experiment.finish(exit_code=exit_code)
