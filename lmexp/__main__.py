"""``python -m lmexp [group=option ...] [key=value ...]``: train one run (or a sweep with -m)."""

from __future__ import annotations

import itertools
import json
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.types import Override, ValueType
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, read_write
from omegaconf.errors import OmegaConfBaseException

from lmexp.atomic import write_text
from lmexp.cli import (SWEEP_FLAGS, as_typed, check_hydra_settings, choices, compose, help_text, parse_overrides,
                       quoted, starts_a_sweep)
from lmexp.config import CONF_DIR, check_folder, load_settings
from lmexp.console import quiet_lightning
from lmexp.errors import ConfigError, UserError, one_line, reported_as_one_line, tell
from lmexp.resume import (ResumePoint, continuing_the_sweep, discard_unstarted, is_resume, left_in,
                          resume_argument)
from lmexp.slurm import RESTART_FOLDER, fixed_folder, in_batch_job, requeued_run
from lmexp.stops import StoppedEarly, reader_may_leave, stopping_early


def stopped_early(stop: StoppedEarly, run_dir: Path, then: str) -> None:
    """The run's folder as the run found it (discard_unstarted keeps one that holds checkpoints: a
    resumed run's), one line saying ``then`` what to do, and the signal's exit status."""
    discard_unstarted(run_dir)
    stop.end(f"{stop} before the run started: stopped; {then}")


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    with stopping_early():
        quiet_lightning()
        hydra_config = HydraConfig.get()
        run_dir = Path(hydra_config.runtime.output_dir)
        if hydra_config.mode == RunMode.MULTIRUN:
            return sweep_job(cfg, run_dir)
        with reported_as_one_line():
            if cfg.resume:
                cfg = ResumePoint.find(cfg.resume).config(list(hydra_config.overrides.task))
            else:
                name_the_group(cfg, hydra_config)
            try:
                # torch and Lightning: seconds, so not before the config is checked
                from lmexp.train import train

                results = train(cfg, run_dir)
            except UserError:
                if not cfg.resume:
                    discard_unstarted(run_dir)
                raise
            except StoppedEarly as stop:
                stopped_early(stop, run_dir, f"continue with: python -m lmexp resume={cfg.resume}" if cfg.resume
                              else "nothing was kept; start it again")
    if results["status"] == "interrupted":
        sys.exit(results["exit_code"])
    return results["best_val_ppl"]  # what a sweeper minimises


def sweep_job(cfg: DictConfig, run_dir: Path) -> float | None:
    """One job of a sweep. A job that fails is told in one line and recorded in its folder's
    results.json (status failed, the line), and the sweep goes on to the next job: one bad
    corner of a grid does not cost the rest. An unexpected error's traceback goes to the job's log.
    A job started again in its folder keeps the run it finished there, or continues the run it
    left stopped (lmexp.resume.left_in)."""
    from lmexp.train import train

    name_the_group(cfg, HydraConfig.get())
    try:
        finished, stopped = left_in(run_dir, cfg)
        if finished:
            print(f"lmexp: {run_dir.name} finished before: kept ({run_dir / 'results.json'})", flush=True)
            return finished["best_val_ppl"]
        if stopped:  # it goes on from its checkpoint
            cfg = stopped.config([])
        with launched_as_this_job(run_dir, [f"resume={run_dir}"] if stopped else None):
            results = train(cfg, run_dir)
    except StoppedEarly as stop:  # the sweep stops here, as at a step
        stopped_early(stop, run_dir, continuing_the_sweep())
    except Exception as e:
        told = one_line(e)
        if told is None:
            logging.getLogger("lmexp").exception("job failed")
            told = f"{type(e).__name__}: {e}".splitlines()[0]
        tell(told)
        record_failure(cfg, run_dir, told)
        return None
    if results["status"] == "interrupted":
        if os.environ.get("SUBMITIT_EXECUTOR"):  # a process of its own: its launcher's summary tells
            return None
        sys.exit(results["exit_code"])  # a signal stops the whole sweep, as it would a single run
    return results["best_val_ppl"]


def name_the_group(cfg: DictConfig, hydra_config: DictConfig) -> None:
    """``logger.wandb.group`` left null: the sweep this run belongs to (an Optuna search's study, a
    W&B sweep, else the multirun's folder), or the experiment preset it runs; W&B groups runs by it."""
    wandb = OmegaConf.select(cfg, "logger.wandb")
    if not isinstance(wandb, DictConfig) or wandb.get("group") is not None:
        return
    if hydra_config.mode == RunMode.MULTIRUN:
        group = OmegaConf.select(hydra_config, "sweeper.study_name") or hydra_config.sweep.dir
    elif os.environ.get("WANDB_SWEEP_ID"):  # set by `wandb agent` for each run it starts
        group = f"sweep-{os.environ['WANDB_SWEEP_ID']}"
    else:
        group = hydra_config.runtime.choices.get("experiment")
    with read_write(cfg):
        wandb.group = group


@contextmanager
def launched_as_this_job(run_dir: Path, command_line: list[str] | None = None) -> Iterator[None]:
    """Lightning's DDP launcher starts each further process of a run with this process's command
    line and hydra.run.dir (lightning_fabric's _hydra_subprocess_cmd). In a sweep that command
    line is the whole sweep: the second process would run every job again, in folders of its own.
    For the job's length, the command line is the job's own overrides and hydra.run.dir the job's
    folder, so that the further processes join this job as a single run does. The launcher also
    leaves its variables in this process's environment (LOCAL_RANK, WORLD_SIZE, MASTER_PORT...),
    where the next job would read them as processes started by a cluster and wait for them: each
    job starts with the environment the sweep started with. ``command_line``: the further
    processes' own, where it is not the job's overrides (``resume=``: a job continuing its run)."""
    hydra_config = HydraConfig.get()
    argv, environ = sys.argv, dict(os.environ)
    pattern = OmegaConf.to_container(hydra_config.run)["dir"]  # unresolved: ${now:...} as it was
    # hydra.mode=RUN: a preset may make every start a multirun (hparams_search sets MULTIRUN).
    sys.argv = [sys.argv[0], *(command_line or hydra_config.overrides.task), "hydra.mode=RUN"]
    with read_write(hydra_config):
        hydra_config.run.dir = str(run_dir)
    try:
        yield
    finally:
        sys.argv = argv
        os.environ.clear()
        os.environ.update(environ)
        with read_write(hydra_config):
            hydra_config.run.dir = pattern


def record_failure(cfg: DictConfig, run_dir: Path, told: str) -> None:
    """A failed job's results.json: how it ended and why, for the sweep's summary."""
    run_dir.mkdir(parents=True, exist_ok=True)
    # The names a finished run's results.json has too: the scaling report keys a study's runs by them.
    record = {"status": "failed", "error": told, "model": cfg.model.name, "data": cfg.data.name,
              "tokenizer": cfg.tokenizer.name, "seed": cfg.seed}
    write_text(run_dir / "results.json", json.dumps(record, indent=2) + "\n")


def run() -> None:
    """Check the command line before Hydra starts: a mistake is one line naming it (not Hydra's
    multi-line composition error), and no run folder is made for a run that cannot start."""
    typed = sys.argv[1:]
    sweep = starts_a_sweep(typed)
    argv = as_typed(typed, multirun=sweep)
    if sweep and not set(argv) & {*SWEEP_FLAGS, *CFG_FLAGS, "--help", "-h"}:
        # A preset that sweeps (experiment=scaling): Hydra takes a list to sweep over only after -m
        argv = ["-m", *argv]
    sys.argv = [sys.argv[0], *argv]  # what Hydra parses
    if "--help" in argv or "-h" in argv:
        with reader_may_leave(), reported_as_one_line():
            print(help_text([arg for arg in argv if not arg.startswith("-")]))
        return
    continued = requeued_run(fixed_folder(given_folder(typed)))
    if continued:  # SLURM started this job again, with its command line: the run goes on
        typed = argv = [f"resume={continued}"]
    resume = resume_argument(typed)
    if in_batch_job():  # where SLURM's restart of this command line would find the run, for its requeue
        os.environ[RESTART_FOLDER] = restart_folder(typed, resume)
    if resume:
        with reported_as_one_line():
            if any(arg.startswith("-") for arg in argv):
                raise ConfigError("resume= continues one run: use it without -m or other flags")
            point = ResumePoint.find(resume)
            load_settings(point.config(argv)).check_files()
        # The resumed run writes into the stopped run's folder, and leaves the record of how that
        # run was started (.hydra/) as it was.
        sys.argv = [sys.argv[0], *(f"resume={quoted(resume)}" if is_resume(a) else a for a in argv),
                    f"hydra.run.dir={quoted(point.run_dir)}", "hydra.output_subdir=null"]
    else:
        with reported_as_one_line():
            composed = check_before_hydra(argv, typed)
            key = "hydra.sweep.dir" if set(argv) & set(SWEEP_FLAGS) else "hydra.run.dir"
            if composed is not None and given_folder(typed, key) is None:
                sys.argv.append(f"{key}={quoted(claim_folder(default_folder(key), composed))}")
    try:
        main()
    except ValueError as e:  # Hydra's flags that cannot go together, which it raises as a traceback
        if not str(e).startswith("Only one of --run, --multirun"):
            raise
        with reported_as_one_line():
            raise ConfigError("--cfg prints one run's settings and -m (or a preset that sweeps, hparams_search=...) "
                              "starts a sweep: use one or the other") from None


# Hydra's flags that lmexp checks the command line for (--help is lmexp's own, above); the rest
# (--info, --shell-completion, --config-dir ...) go to Hydra as they are.
CFG_FLAGS = ("-c", "--cfg")
CFG_VALUES = ("job", "hydra", "all")
HYDRA_FLAGS = ("--hydra-help", "--version", "--resolve", "-p", "--package", "-r", "--run", "-sc", "--shell-completion",
               "-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "--experimental-rerun", "-i",
               "--info", *SWEEP_FLAGS, *CFG_FLAGS)


def check_before_hydra(argv: list[str], typed: list[str]) -> Optional[DictConfig]:
    """What can be checked before Hydra starts, in one line rather than Hydra's composition error:
    a run's settings and folder; --cfg's settings (which it prints, checked as a run's); each value
    of a sweep's overrides, and the sweep's folder. A sweep's settings are each job's to check when
    it starts (one failed job does not cost the sweep). Returns the run (a sweep's first job)
    composed, for a run or sweep that will make its folder; None for --cfg and Hydra's other modes."""
    flags = [arg for arg in argv if arg.startswith("-")]
    unknown = [flag for flag in flags if flag.split("=", 1)[0] not in HYDRA_FLAGS]
    if unknown:
        raise ConfigError(f"{unknown[0]} is not an option of python -m lmexp; see python -m lmexp --help (and "
                          f"--hydra-help for Hydra's flags)")
    cfgs = [i for i, arg in enumerate(argv) if arg in CFG_FLAGS]
    if len(cfgs) > 1:
        raise ConfigError("--cfg is given more than once; give it once, e.g. --cfg job")
    cfg = cfgs[0] if cfgs else None
    if cfg is not None and (cfg + 1 == len(argv) or argv[cfg + 1] not in CFG_VALUES):
        raise ConfigError(f"{argv[cfg]} takes what to print: {' or '.join(CFG_VALUES)}, e.g. --cfg job")
    if set(flags) - set(SWEEP_FLAGS) - set(CFG_FLAGS):
        return None  # Hydra's other modes
    overrides = [arg for i, arg in enumerate(argv) if not arg.startswith("-") and (cfg is None or i != cfg + 1)]
    check_hydra_settings(overrides)
    if set(flags) & set(SWEEP_FLAGS):
        if cfg is not None:
            raise ConfigError("--cfg prints one run's settings and -m starts a sweep: use one or the other")
        first = check_sweep(overrides)
        check_run_folder(typed, first, "hydra.sweep.dir", "outputs/multirun")
        return first
    else:
        # A preset that sweeps has had -m put in (run); a sweep here is one that Hydra refuses in
        # its multi-line way (range(), choice() without -m; any with --cfg).
        swept = next((o for o in parse_overrides(overrides) if o.is_sweep_override()), None)
        if swept is not None:
            key = swept.get_key_element()
            raise ConfigError(f"{swept.input_line}: --cfg prints one run's settings; give {key} one value"
                              if cfg is not None else f"{swept.input_line} sweeps: add -m to run a job for each "
                              f"value, or give {key} one value")
        composed = compose(overrides)
        load_settings(composed).check_files()
        if cfg is not None:
            return None
        check_run_folder(typed, composed)
        return composed


def check_sweep(overrides: list[str]) -> DictConfig:
    """Every value of every swept override composes: the i-th composition takes each sweep's i-th
    value (its last, once it has no more), so a mistyped key, option or value fails before any job
    starts, named by compose's own line. Sweeps the sweeper samples (Optuna's intervals) are left
    to it. Returns the first composition."""
    parsed = parse_overrides(overrides)
    values = []
    for o in parsed:
        if o.is_sweep_override():
            listed = swept_values(o, sampled=any(a.startswith(SAMPLING_SWEEPERS) for a in overrides))
            if listed is None:  # the sweeper samples it
                continue
            values.append([f"{o.get_key_element()}={v}" for v in listed])
        else:
            values.append([o.input_line])
    compositions = [compose([v[min(i, len(v) - 1)] for v in values]) for i in range(max(map(len, values), default=1))]
    return compositions[0]


# What makes a sweep's sweeper Optuna's, which samples intervals (conf/hparams_search/)
SAMPLING_SWEEPERS = ("hparams_search=", "hydra/sweeper=")


def swept_values(o: Override, sampled: bool) -> list[str] | None:
    """The values a swept override takes, as Hydra's basic sweeper would list them; None for an
    interval that a sampling sweeper draws from. No values, or an interval no sweeper here
    samples, is one line: Hydra would launch no job, or stop with a traceback."""
    try:
        if o.value_type == ValueType.GLOB_CHOICE_SWEEP:  # glob(): over a group's options
            listed = o.value().filter(choices(o.key_or_group)) if (CONF_DIR / o.key_or_group).is_dir() else []
        else:
            listed = list(o.sweep_string_iterator())
    except HydraException:  # an interval
        if sampled:
            return None
        raise ConfigError(f"{o.input_line}: only an Optuna search samples an interval (hparams_search=...); "
                          f"for a grid, list values, e.g. {o.get_key_element()}=0.001,0.01") from None
    except ValueError as e:  # range(1,5,0)
        raise ConfigError(f"{o.input_line}: {e}; give range(start, stop, step) a step that is not 0") from None
    if not listed:  # range(10,5), glob(zz*)
        raise ConfigError(f"{o.input_line}: sweeps no values; give it at least one")
    return listed


def restart_folder(typed: list[str], resume: str | None) -> str:
    """slurm.RESTART_FOLDER for this command line: the run (or sweep) folder it names, if every
    start of it names the same one."""
    if resume:
        try:
            return f"run:{ResumePoint.find(resume).run_dir.absolute()}"
        except UserError:  # told in one line below
            return ""
    sweep = starts_a_sweep(typed)
    folder = fixed_folder(given_folder(typed, "hydra.sweep.dir" if sweep else "hydra.run.dir"))
    return f"{'sweep' if sweep else 'run'}:{Path(folder).absolute()}" if folder else ""


def given_folder(argv: list[str], key: str = "hydra.run.dir") -> str | None:
    """The folder ``key`` (hydra.run.dir, hydra.sweep.dir) names on the command line, if it does."""
    return next((a.split("=", 1)[1].strip("'\"") for a in argv if a.lstrip("+").startswith(f"{key}=")), None)


def check_run_folder(argv: list[str], cfg: DictConfig, key: str = "hydra.run.dir", default: str = "outputs") -> None:
    """The run's (or sweep's) folder can be made: its ``${...}`` resolve (in ``cfg``, the composed
    run), and the nearest part of its path that exists is a folder this user may make folders in
    (``argv``: as typed). A disk that fills up later is reported when a write fails."""
    given = given_folder(argv, key)
    if given is not None and not given.strip():  # Hydra would run in the working folder itself
        raise ConfigError(f"{key}= is empty; give it a folder, or leave it out for a new folder under {default}/")
    if given and "${" in given and "${hydra:" not in given:  # ${hydra:...} only Hydra's own run resolves
        try:
            resolved_in(cfg, given)
        except OmegaConfBaseException as e:  # else Hydra's traceback when it makes the folder
            raise ConfigError(f"{key}={given}: cannot be resolved ({str(e).splitlines()[0].rstrip('.')}); "
                              f"name a setting that exists (${{model.name}}) or a variable that is set") from None
    folder = Path((given or default).split("${")[0] or ".").absolute()  # ${now:...} is filled in later
    check_folder(folder, f"{key}={given}" if given else f"the folder {folder}", f"set {key} to a folder")


def resolved_in(cfg: DictConfig, pattern: str) -> str:
    """A folder ``pattern`` with its ``${...}`` filled in from the run ``cfg`` (``${now:...}``, the
    environment's), as Hydra will resolve it; OmegaConf's error where one does not resolve."""
    return OmegaConf.create({**OmegaConf.to_container(cfg), "lmexp_folder": pattern}).lmexp_folder


def default_folder(key: str) -> str:
    """``key``'s pattern in conf/config.yaml, unresolved (``outputs/${now:...}-${model.name}-...``)."""
    node = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml"))  # unresolved
    for part in key.split("."):
        node = node[part]
    return node


def claim_folder(pattern: str, cfg: DictConfig) -> Path:
    """The folder ``pattern`` names for the run ``cfg`` now, made by this process: runs started in
    the same second (a shell loop of ``&``) once shared one folder, the last one's results.json
    and checkpoints over the others'; the second gets ``<name>-2``, the third ``-3``."""
    named = Path(resolved_in(cfg, pattern))
    for n in itertools.count(1):
        folder = named if n == 1 else named.with_name(f"{named.name}-{n}")
        try:
            folder.mkdir(parents=True)  # exist_ok=False: one process wins each name
            return folder
        except FileExistsError:
            continue


if __name__ == "__main__":
    run()
