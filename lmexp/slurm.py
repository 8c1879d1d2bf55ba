"""SLURM's warning before it stops a job (``#SBATCH --signal=USR1@90``: a time limit or a
preemption coming): the run finishes its step, writes its checkpoint and results.json, and
requeues the job; SLURM starts the requeued job with the same command line, which continues the
run from that checkpoint (``hydra.run.dir`` names the run's folder after the job, whose id a
requeue keeps).

Lightning's own SLURM handler checkpoints inside the signal handler, in the middle of a step, so
that its checkpoint does not resume exactly, and into a file of its own (``hpc_ckpt_N.ckpt``);
it is off (``SLURMEnvironment(auto_requeue=False)``), and lmexp/callbacks.py takes the signal
instead: ``StopOnSignal`` in the training steps, ``stopping_on_signals`` outside them. The job is
requeued only where its command line, started again, names the run's folder (``RESTART_FOLDER``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Mapping, Optional

from lmexp.errors import UserError

WARNING = signal.SIGUSR1
# The folder SLURM's restart of this job's command line continues in, as python -m lmexp found it
# named there: "run:<folder>" (hydra.run.dir, or resume=), "sweep:<folder>" (hydra.sweep.dir),
# or "" for none (not named, or named with ${now:...}, which each start fills in anew).
RESTART_FOLDER = "LMEXP_RESTART_FOLDER"


def in_batch_job(environ: Mapping[str, str] = os.environ) -> bool:
    """A task of a SLURM batch job, not an interactive allocation: as Lightning's SLURMEnvironment.detect."""
    return "SLURM_NTASKS" in environ and environ.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def job_id(environ: Mapping[str, str] = os.environ) -> str:
    """The id ``scontrol`` takes: an array job's task as ``<array id>_<task>``."""
    array = environ.get("SLURM_ARRAY_JOB_ID")
    return f"{array}_{environ['SLURM_ARRAY_TASK_ID']}" if array else environ["SLURM_JOB_ID"]


def requeue(environ: Mapping[str, str] = os.environ) -> Optional[str]:
    """``scontrol requeue`` this job; None if it was, else why not (SLURM stops it soon after)."""
    try:  # the SIGTERM SLURM stops a job it requeues with: this run has ended, with its own status
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except ValueError:  # not the main thread
        previous = None
    try:
        done = subprocess.run(["scontrol", "requeue", job_id(environ)], capture_output=True, text=True, timeout=60)
        failed = None if done.returncode == 0 else " ".join((done.stderr or done.stdout).split())
    except (OSError, subprocess.TimeoutExpired) as e:
        failed = str(e)
    if failed is not None and previous is not None:
        # Not requeued, so no SIGTERM comes from a requeue; a later one (scancel, the time limit)
        # must still end the process.
        signal.signal(signal.SIGTERM, previous)
    return None if failed is None else f"scontrol requeue: {failed}"


def fixed_folder(named: Optional[str]) -> Optional[str]:
    """A folder as written on the command line, as every start of it names it: ``${oc.env:VAR}``
    filled in (SLURM_JOB_ID: a requeued job keeps it); None when not named, or named with what
    another start fills in otherwise (``${now:...}``)."""
    if not named or "${" in re.sub(r"\$\{oc\.env:[^${}]*\}", "", named):
        return None
    from omegaconf import OmegaConf

    try:
        return str(OmegaConf.create({"folder": named}).folder)
    except Exception:  # a variable that is not set: Hydra will refuse it too
        return None


def restart_continues(run_dir: Path, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the job SLURM starts again with this command line continues the run in ``run_dir``.
    A submitit job is started again as the call it was, in its own folder; a process started
    neither by python -m lmexp nor by submitit is taken at its word."""
    named = environ.get(RESTART_FOLDER)
    if named is None or environ.get("SUBMITIT_EXECUTOR"):
        return True
    kind, _, folder = named.partition(":")
    here = Path(run_dir).resolve()
    return bool(folder) and Path(folder).resolve() == (here if kind == "run" else here.parent)


def requeued_run(run_dir: Optional[str], environ: Mapping[str, str] = os.environ) -> Optional[str]:
    """The run folder a requeued job continues: its ``hydra.run.dir``, when SLURM has started the
    job again (``SLURM_RESTART_COUNT``) and the folder holds the checkpoint it stopped at."""
    if not run_dir or int(environ.get("SLURM_RESTART_COUNT") or 0) < 1:
        return None
    return run_dir if (Path(run_dir) / "checkpoints" / "last.ckpt").is_file() else None


def check_no_lightning_checkpoint(run_dir: Path, resume: Optional[str],
                                  environ: Mapping[str, str] = os.environ) -> None:
    """Lightning, asked to fit from no checkpoint in a SLURM job, restores the newest
    ``hpc_ckpt_N.ckpt`` in the run's folder instead: one its own handler wrote before lmexp turned
    it off (a folder of an older lmexp, used again). That would continue another run, mid-step,
    where this one starts; refused in one line."""
    found = sorted(Path(run_dir).glob("hpc_ckpt_*.ckpt"), key=_version)  # by number, as Lightning picks: 10 after 9
    if resume is None and found and in_batch_job(environ):
        more = f" (and {len(found) - 1} more like it)" if len(found) > 1 else ""
        raise UserError(f"{found[-1]}{more}: a checkpoint of Lightning's own SLURM handler (an older lmexp let it "
                        f"write one), which Lightning would restore in place of starting this run; move "
                        f"{'them' if more else 'it'} out of {run_dir}, or start the run in another folder")


def _version(checkpoint: Path) -> int:
    number = checkpoint.stem.rpartition("_")[2]
    return int(number) if number.isdigit() else -1
