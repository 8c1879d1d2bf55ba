"""``python -m lmexp resume=RUN_DIR``: continue a stopped run in its own folder, from its latest
checkpoint, with the settings it was started with.

Only the settings that leave the run itself unchanged may be given again: its budget (a higher
``trainer.max_epochs``), checkpointing and logging, and, for a model that reads windows, the
micro-batch (``data.batch_size``, ``trainer.accumulate_grad_batches``) at the same rows per
optimizer step: a run that ran out of memory goes on from its checkpoint in smaller pieces.
Anything else (another model, corpus, batch or learning rate) would make a different run,
refused in one line.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from lmexp.cli import apply_overrides, existing_checkpoint, parse_overrides, unquoted
from lmexp.config import plain_config
from lmexp.errors import ConfigError, UserError
from lmexp.summary import job_folders

# For a model that reads windows, a resumed run may take them in other batches: see other_batches.
BATCHES = ("data.batch_size", "trainer.accumulate_grad_batches", "data.eval_batch_size")
# What other_batches sets, which a run resumed so writes into its config.yaml (train.keep_batches):
# the batches, and the evaluation limits it converts to count the same windows in them.
KEPT_BATCHES = (*BATCHES, "trainer.limit_val_batches", "trainer.limit_test_batches")
RESUMABLE = ("trainer.max_epochs", "trainer.max_steps", "trainer.max_tokens", "trainer.max_time",
             "trainer.min_epochs", "trainer.min_steps", "trainer.accelerator", "trainer.enable_progress_bar",
             "trainer.enable_model_summary", "callbacks.checkpoint.every_n_steps",
             "callbacks.checkpoint.every_n_minutes", "callbacks.early_stopping.patience", "logger.wandb.mode",
             "logger.wandb.project", "logger.wandb.entity", "logger.wandb.tags", "paths.cache_dir", *BATCHES)


@dataclass
class ResumePoint:
    run_dir: Path  # the stopped run's folder, which the resumed run continues
    checkpoint: Path

    @classmethod
    def find(cls, path: str) -> "ResumePoint":
        """``resume=``: a run folder (its ``checkpoints/last.ckpt``: the latest state) or a checkpoint file in one."""
        given = Path(path).expanduser()
        if given.is_dir():
            run_dir, checkpoint = given, given / "checkpoints" / "last.ckpt"
        elif given.is_file():
            checkpoint = given
            run_dir = given.parent.parent if given.parent.name == "checkpoints" else given.parent
        else:
            raise UserError(f"resume={path}: no such run folder or checkpoint")
        # Whether it is a run's folder comes first: an empty folder or a sweep's had been told that
        # its run stopped before its first checkpoint (until 2026-12-02, a review).
        if not (run_dir / "config.yaml").is_file():
            if job_folders(run_dir):
                raise UserError(f"resume={path}: a sweep's folder; continue the sweep with its command and "
                                f"hydra.sweep.dir={run_dir}, or resume one of its jobs' folders")
            raise UserError(f"resume={path}: {run_dir} holds no config.yaml; resume= takes an lmexp run folder "
                            f"(outputs/<date>/<time>-<model>-<data>)")
        if not checkpoint.is_file():
            raise UserError(f"resume={path}: {checkpoint} does not exist (the run stopped before its first "
                            f"checkpoint); start the run again")
        try:  # a file that is no checkpoint (config.yaml itself, one cut short): told before torch reads it
            existing_checkpoint(checkpoint)
        except UserError as e:
            raise UserError(f"resume={path}: {e}") from None
        return cls(run_dir, checkpoint)

    def config(self, overrides: list[str]) -> DictConfig:
        """The stored run's config, with the command line's budget and logging ``overrides``."""
        kept = []
        # resume= itself is left out before parsing: a path may hold what Hydra's grammar does not (spaces).
        for override in parse_overrides([o for o in overrides if not is_resume(o)]):
            key = override.key_or_group.lstrip("+~")
            if key not in RESUMABLE:
                raise ConfigError(f"{override.input_line}: a resumed run keeps its settings; only these may "
                                  f"change: {', '.join(RESUMABLE)} (start a new run to change the rest)")
            kept.append(override.input_line)
        try:
            stored = OmegaConf.to_container(OmegaConf.load(self.run_dir / "config.yaml"))
        except Exception as e:  # YAML's and OmegaConf's errors: an edited file
            raise UserError(f"resume={self.run_dir}: its config.yaml cannot be read ({' '.join(str(e).split())}); "
                            f"restore the file the run wrote") from None
        config = apply_overrides(stored, kept)
        changed = {override.partition("=")[0].lstrip("+~") for override in kept}
        if changed & set(BATCHES):
            other_batches(stored, config, kept, changed)
        config.resume = str(self.checkpoint)
        return config


def other_batches(stored: dict, config: DictConfig, kept: list[str], changed: set[str]) -> None:
    """Other batches for a resumed run, for a model that reads windows: a run that ran out of
    memory goes on from its checkpoint in smaller pieces. A smaller evaluation batch scores the
    same windows. Another micro-batch (each so many windows, in the order the epoch's shuffle
    gave) must keep the rows per optimizer step, so that the run goes on as it would have; the
    checkpoint's counts of batches and the epoch's length are converted as it loads
    (LanguageModelModule.on_load_checkpoint, the data module's load_state_dict). A recurrent
    model's rows are its streams, which its carried state and its perplexity are made of: not
    changed."""
    from lmexp.options.model import MODELS

    given = " ".join(kept)
    model = config.model.name
    if MODELS.option(model).config.stateful:
        raise ConfigError(f"{given}: model={model} reads its data as streams (data.batch_size of them in training, "
                          f"data.eval_batch_size in evaluation), which its carried state and its perplexity are "
                          f"made of; a resumed run keeps them (start a new run to change them)")
    if "data.eval_batch_size" in changed:
        evaluation_windows_kept(stored, config, given)
    if not changed & {"data.batch_size", "trainer.accumulate_grad_batches"}:
        return
    if config.data.get("effective_batch_size") is not None:
        # It fixes the rows per step; the run's plan derives the accumulation from the new micro-batch.
        if not any(override.startswith("trainer.accumulate_grad_batches") for override in kept):
            config.trainer.accumulate_grad_batches = 1
        return
    before = stored["data"]["batch_size"] * stored["trainer"]["accumulate_grad_batches"]
    batch, accumulate = config.data.batch_size, config.trainer.accumulate_grad_batches
    if not (isinstance(batch, int) and isinstance(accumulate, int) and batch * accumulate == before):
        smaller = max([d for d in range(1, before) if before % d == 0] or [1])  # the next smaller micro-batch
        raise ConfigError(f"{given}: a resumed run keeps its {before} rows per optimizer step "
                          f"(data.batch_size={stored['data']['batch_size']} x trainer.accumulate_grad_batches="
                          f"{stored['trainer']['accumulate_grad_batches']}); give both, e.g. data.batch_size={smaller} "
                          f"trainer.accumulate_grad_batches={before // smaller}")


def evaluation_windows_kept(stored: dict, config: DictConfig, given: str) -> None:
    """An integer trainer.limit_val_batches or limit_test_batches counts evaluation batches: in
    another evaluation batch, the same windows are that many more or fewer of them."""
    before, now = stored["data"]["eval_batch_size"], config.data.eval_batch_size
    for key in ("limit_val_batches", "limit_test_batches"):
        limit = config.trainer.get(key)
        if isinstance(limit, int) and not isinstance(limit, bool) and isinstance(before, int):
            if not isinstance(now, int) or (limit * before) % now:
                raise ConfigError(f"{given}: trainer.{key}={limit} counts evaluation batches of {before} windows, "
                                  f"which batches of {now} do not make; give a data.eval_batch_size that divides "
                                  f"{limit * before}")
            config.trainer[key] = limit * before // now


def is_resume(arg: str) -> bool:
    return arg.partition("=")[0] == "resume"


def resume_argument(argv: list[str]) -> str | None:
    """The value of ``resume=`` on a command line, if there is one."""
    values = [unquoted(arg.partition("=")[2]) for arg in argv if is_resume(arg)]
    return values[-1] if values and values[-1] not in ("", "null") else None


# What a run was asked for, beside config.yaml (what it ran: with the batch plan and a fitted
# width filled in): a sweep's job started again in its folder is recognised by it.
REQUESTED = "requested.yaml"


def left_in(run_dir: Path, cfg: DictConfig) -> tuple[dict | None, ResumePoint | None]:
    """What a sweep's job, started again in its folder (the sweep run again on its folder, or SLURM
    requeueing a submitit job), finds there from its first start, if that had the same settings:
    (results, None) for a run that finished, kept as it is; (None, point) for a run stopped
    before its end with a checkpoint, continued from it; (None, None) otherwise: the job starts.
    A run of other settings found there (another grid's job of this number) is cleared first: its
    results.json and checkpoints would otherwise pass for this job's once its config is written."""
    requested = run_dir / REQUESTED
    try:  # a run from before requested.yaml was written: its config.yaml
        stored = OmegaConf.to_container(OmegaConf.load(requested if requested.is_file() else run_dir / "config.yaml"))
    except (OSError, ValueError):  # never started here
        return None, None
    try:
        results = json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):  # killed before it could write one
        results = {}
    if stored != plain_config(cfg):
        (run_dir / "results.json").unlink(missing_ok=True)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        return None, None
    if results.get("status") == "finished":
        return results, None
    if results.get("status") in (None, "interrupted") and (run_dir / "checkpoints" / "last.ckpt").is_file():
        return None, ResumePoint.find(str(run_dir))
    return None, None


# What a run writes before its first step: Hydra's record of the command, the log, the config,
# the CSV logger's hyperparameters. W&B starts its run at the first logged value.
BEFORE_THE_FIRST_STEP = (".hydra", "lmexp.log", "config.yaml", REQUESTED, "hparams.yaml")


def discard_unstarted(run_dir: Path) -> None:
    """A run refused, or stopped by a signal, before its first step leaves no folder behind (Hydra
    made it before any check inside the run could fail). Only this run's own files go, and only
    from a folder that holds no other run's results: a folder named with hydra.run.dir may hold more."""
    if (run_dir / "results.json").exists() or any((run_dir / "checkpoints").glob("*")):
        return
    # Under DDP every process is refused alike and cleans up, the further processes' logs too: what
    # another process has removed already is no error.
    for path in [*(run_dir / name for name in BEFORE_THE_FIRST_STEP), *run_dir.glob("train_ddp_process_*.log")]:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    # Then the folder, and above it only the folders Hydra made for it in the working folder
    # (outputs/<date>/), if now empty: a folder elsewhere that hydra.run.dir names may be the user's own.
    folder, here = run_dir, Path.cwd()
    while (folder == run_dir or here in folder.parents) and folder.is_dir() and not any(folder.iterdir()):
        with contextlib.suppress(OSError):  # removed by another process, or written into since
            folder.rmdir()
        folder = folder.parent


def continuing_the_sweep() -> Optional[str]:
    """How a job of a sweep (python -m lmexp -m) stopped by a signal goes on: with the sweep, which
    continues the job (as resume= would) and runs the jobs after it, and in an Optuna search tries
    a stopped trial's settings again as a new trial. None for a run that is no sweep's job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return f"continue with the sweep's command and hydra.sweep.dir={Path(HydraConfig.get().sweep.dir).resolve()}"
