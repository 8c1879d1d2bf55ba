"""Resume and clean stops, with the faults done for real: a run killed with SIGKILL (mid-epoch,
or during validation) or stopped by SIGTERM or SIGINT, then continued with ``resume=``, ends
exactly as the same run left alone: the same perplexities, and the same loss at every step,
each step once."""

import csv
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
import torch

from conftest import SMALL, clean_env, run_lmexp, train_here

# Validation and test read 10 batches each: scoring the whole split (120 batches of an
# 11,559-word softmax) took most of each run's time, and resuming inside it needs only a few.
# Two epochs of 20 steps, a checkpoint every 10.
TRAINING = ["data.batch_size=16", "data.bptt=32", "trainer.enable_progress_bar=false", "trainer.max_epochs=2",
            "trainer.limit_train_batches=20", "trainer.limit_val_batches=10", "trainer.limit_test_batches=10",
            "trainer.log_every_n_steps=1", "callbacks.checkpoint.every_n_steps=10", "logger=csv"]
MODELS = {
    "lstm": [a for a in SMALL if a.startswith("model.")],  # carries its state from window to window
    "transformer": ["model=transformer", "model.d_model=32", "model.n_layer=1", "model.n_head=2", "model.d_ff=64",
                    "model.block_size=32"],  # reads windows in a shuffled order
}


def losses(run_dir: Path) -> list[tuple[int, float]]:
    """(step, training loss) of every row of metrics.csv, in the order written."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return [(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(f) if r.get("train/loss")]


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def run(tmp_path: Path, name: str, args: list[str], cache_dir: Path, fault: str = "", expect: int = 0) -> Path:
    """One run in ``tmp_path/name``; ``fault``: "SIGNAL@STEP" or "SIGNAL@STEP:val=BATCH" (tests/faults.py)."""
    run_dir = tmp_path / name
    extra = [f"hydra.run.dir={run_dir}"]
    if fault:
        sig, _, where = fault.partition("@")
        step, _, val = where.partition(":val=")
        extra += ["+callbacks.fault._target_=faults.SignalAt", f"+callbacks.fault.signal={sig}",
                  f"+callbacks.fault.step={step}", f"+callbacks.fault.marker={tmp_path / (name + '.sent')}"]
        extra += [f"+callbacks.fault.val_batch={val}"] if val else []
    result = run_lmexp([*args, *extra], cwd=tmp_path, cache_dir=cache_dir, faults=True)
    assert result.returncode == expect, result.stderr[-3000:]
    (tmp_path / f"{name}.out").write_text(result.stdout)
    return run_dir


def resume(tmp_path: Path, run_dir: Path, cache_dir: Path, *overrides: str):
    return run_lmexp([f"resume={run_dir}", *overrides], cwd=tmp_path, cache_dir=cache_dir, faults=True)


def resume_here(run_dir: Path) -> dict:
    """``resume=run_dir`` in this process, as the command line resolves it (lmexp.resume), for the
    tests whose subject is what the resumed run does; the command line's own path is taken by
    test_a_finished_run_resumed_with_a_larger_budget_trains_on and the signal test with W&B."""
    from lmexp.resume import ResumePoint
    from lmexp.train import train

    point = ResumePoint.find(str(run_dir))
    return train(point.config([f"resume={run_dir}"]), point.run_dir)


@pytest.fixture(scope="module")
def left_alone(tmp_path_factory, cache_dir) -> dict[str, Path]:
    """Each model's run, never stopped, trained in this process (conftest.train_here): the
    stopped runs, which go through the command line, must end as it does."""
    tmp_path = tmp_path_factory.mktemp("left-alone")
    for model, args in MODELS.items():
        train_here([*args, *TRAINING], tmp_path / model, cache_dir)
    return {model: tmp_path / model for model in MODELS}


def assert_same_run(resumed: Path, alone: Path) -> None:
    got, expected = results(resumed), results(alone)
    assert got["status"] == "finished" and got["resumed_from"].endswith("last.ckpt")
    assert (got["steps"], got["epochs"]) == (expected["steps"], expected["epochs"])
    for key in ("best_val_ppl", "test_ppl"):
        assert got[key] == pytest.approx(expected[key], rel=1e-6), key
    # The tokens counted before the checkpoint are carried on (TokenThroughput's state), and the
    # last row logged says the whole run's; so is its wall time, at least the last row's.
    assert (got["train_tokens"], got["train_flops"]) == (expected["train_tokens"], expected["train_flops"])
    with open(resumed / "metrics.csv", newline="") as f:
        clock = [float(r["trainer/wall_time_s"]) for r in csv.DictReader(f) if r.get("trainer/wall_time_s")]
    assert got["wall_time_s"] >= clock[-1]
    with open(resumed / "metrics.csv", newline="") as f:
        logged = [float(r["trainer/tokens"]) for r in csv.DictReader(f) if r.get("trainer/tokens")]
    assert logged[-1] == got["train_tokens"]
    # Every step once, in order, with the loss it had in the run left alone: none repeated (the
    # rows of the steps redone after the checkpoint were replaced), none skipped.
    resumed_losses, alone_losses = losses(resumed), losses(alone)
    assert [s for s, _ in resumed_losses] == [s for s, _ in alone_losses] == list(range(expected["steps"]))
    assert [v for _, v in resumed_losses] == pytest.approx([v for _, v in alone_losses], rel=1e-6)


@pytest.mark.parametrize("model, when", [
    ("lstm", "SIGKILL@15"),  # at step 15 of the first epoch's 20; the latest checkpoint is step 10's
    # In the first epoch's validation (after step 20), at its fourth batch: the latest checkpoint
    # is step 10's again (step 20 is the epoch's last, whose checkpoint waits for the validation).
    ("transformer", "SIGKILL@20:val=3"),
])
def test_killed_and_resumed_ends_as_the_run_left_alone(model, when, left_alone, tmp_path, cache_dir):
    killed = run(tmp_path, "killed", [*MODELS[model], *TRAINING], cache_dir, fault=when, expect=-signal.SIGKILL)
    assert not (killed / "results.json").exists() and (killed / "checkpoints" / "last.ckpt").is_file()
    assert torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10
    resume_here(killed)
    assert_same_run(killed, left_alone[model])


@pytest.mark.parametrize("model, sig, step, stopped_at, code, logger", [
    # mid-epoch: the signal lands in step 15's batch-end hooks, before the stop's own (which runs
    # after every other callback's), so step 15 is the last; resumed from the command line,
    # continuing its W&B run
    ("lstm", "SIGTERM", 15, 15, 143, "wandb"),
    ("transformer", "SIGINT", 20, 20, 130, "csv"),  # the epoch's last step: it stops after the epoch's validation
])
def test_a_signal_stops_cleanly_and_the_run_resumes_as_left_alone(model, sig, step, stopped_at, code, logger,
                                                                 left_alone, tmp_path, cache_dir):
    args = [*MODELS[model], *TRAINING, f"logger={logger}"]
    stopped = run(tmp_path, "stopped", args, cache_dir, fault=f"{sig}@{step}", expect=code)
    assert f"lmexp: {sig} at step {stopped_at}: stopped; continue with: python -m lmexp resume={stopped}" \
        in (tmp_path / "stopped.out").read_text()
    record = results(stopped)
    assert record["status"] == "interrupted" and record["signal"] == sig and record["exit_code"] == code
    assert record["steps"] == stopped_at and Path(record["checkpoint"]) == stopped / "checkpoints" / "last.ckpt"
    assert record["epochs"] == 1  # begun, as a finished run counts them (0, the epoch's index, until 2026-12-02)
    if logger == "csv":
        resume_here(stopped)
        assert_same_run(stopped, left_alone[model])
        return
    result = resume(tmp_path, stopped, cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming {stopped} from step {stopped_at}" in result.stdout
    assert_same_run(stopped, left_alone[model])
    # One W&B run, continued: both processes wrote under the same run id.
    ids = {p.name.rsplit("-", 1)[-1] for p in (stopped / "wandb").glob("offline-run-*")}
    assert len(list((stopped / "wandb").glob("offline-run-*"))) == 2 and len(ids) == 1


def test_a_killed_run_resumed_continues_its_w_and_b_run_from_the_checkpoint(left_alone, tmp_path, cache_dir):
    """Killed at step 15 with W&B offline (the latest checkpoint is step 10's), then resumed: the
    resumed segment of the same W&B run holds every step from the checkpoint on, once each, with the
    run left alone's losses. The killed segment holds what W&B had written to disk before the kill:
    in this short run, nothing (README: Resume and stops). So lmexp sends every step it redoes
    again rather than guessing what W&B kept: a step W&B had kept then appears twice, never none."""
    from wandb_records import config_and_history

    killed = run(tmp_path, "killed", [*MODELS["lstm"], *TRAINING, "logger=wandb"], cache_dir, fault="SIGKILL@15",
                 expect=-signal.SIGKILL)
    result = resume(tmp_path, killed, cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(killed, left_alone["lstm"])
    segments = sorted((killed / "wandb").glob("offline-run-*/run-*.wandb"))  # named by their start time
    assert len(segments) == 2 and len({p.parent.name.rsplit("-", 1)[-1] for p in segments}) == 1
    sent = [[(row["trainer/global_step"], row["train/loss"]) for row in config_and_history(segment, finished)[1]
             if "train/loss" in row] for segment, finished in zip(segments, (False, True))]
    alone = dict(losses(left_alone["lstm"]))
    assert [step for step, _ in sent[1]] == list(range(10, len(alone)))
    assert [loss for _, loss in sent[1]] == pytest.approx([alone[s] for s, _ in sent[1]], rel=1e-6)
    assert [step for step, _ in sent[0]] == list(range(len(sent[0])))  # a prefix of the killed run's steps


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_before_the_run_starts_stops_it_in_one_line_and_leaves_no_folder(sig, tmp_path, cache_dir):
    """Ctrl+C or SIGTERM while torch and Lightning are imported (seconds), before the run takes the
    stop signals itself: one line and the signal's exit status, and no folder left with only
    Hydra's files in it. Before 2026-12-02 SIGINT gave KeyboardInterrupt's traceback from the
    import it was in, and SIGTERM ended the process without a word; both left the folder.
    A fresh interpreter: a process forked from this one has imported them already."""
    run_dir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "lmexp", *MODELS["lstm"], *TRAINING, f"hydra.run.dir={run_dir}"],
                               cwd=tmp_path, env=clean_env(cache_dir, tmp_path), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run_dir / ".hydra" / "overrides.yaml").exists():  # Hydra's, just before lmexp's main
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.01)
    time.sleep(0.2)
    process.send_signal(sig)
    out, err = process.communicate(timeout=120)
    name = signal.Signals(sig).name
    assert (process.returncode, err.splitlines()) == \
        (128 + sig, [f"lmexp: {name} before the run started: stopped; nothing was kept; start it again"]), out + err
    assert not run_dir.exists()


@pytest.mark.parametrize("sig, resumed_at", [("SIGKILL", 10), ("SIGTERM", 15)])
def test_a_sweep_run_again_in_its_folder_continues_its_killed_job(sig, resumed_at, left_alone, tmp_path, cache_dir):
    """A sweep killed in a job (SIGKILL at step 15; the latest checkpoint is step 10's), or stopped
    there by SIGTERM (its checkpoint step 15's), and started again on the same folder, as SLURM
    does when it requeues a submitit job: the job continues its run from that checkpoint and ends
    as the run left alone. The stopped job's line says to go on with the sweep (resume= would
    continue that job alone, and on an Optuna trial's folder is refused)."""
    sweep = tmp_path / "sweep"
    args = ["-m", *MODELS["lstm"], *TRAINING, f"hydra.sweep.dir={sweep}", "+callbacks.fault._target_=faults.SignalAt",
            f"+callbacks.fault.signal={sig}", "+callbacks.fault.step=15", f"+callbacks.fault.marker={tmp_path / 'sent'}"]
    killed = run_lmexp(args, cwd=tmp_path, cache_dir=cache_dir, faults=True)
    assert killed.returncode == (-signal.SIGKILL if sig == "SIGKILL" else 128 + signal.SIGTERM)
    (job,) = sweep.glob("0-*")
    assert (job / "results.json").exists() == (sig == "SIGTERM") and (job / "checkpoints" / "last.ckpt").is_file()
    if sig == "SIGTERM":
        assert (f"lmexp: SIGTERM at step 15: stopped; continue with the sweep's command and "
                f"hydra.sweep.dir={sweep}") in killed.stdout
    again = run_lmexp(args, cwd=tmp_path, cache_dir=cache_dir, faults=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming {job} from step {resumed_at}" in again.stdout
    assert_same_run(job, left_alone["lstm"])
    assert "1 job: 1 done." in (sweep / "summary.md").read_text()


# What srun gives the one task of a one-node, one-task batch job.
SLURM_TASK = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "lmexp", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
              "SLURM_JOB_NUM_NODES": "1", "SLURM_NODELIST": "127.0.0.1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
              "SLURM_NODEID": "0"}


def test_slurms_warning_requeues_the_job_and_the_requeued_job_goes_on_as_left_alone(left_alone, tmp_path,
                                                                                     cache_dir):
    """SIGUSR1 (#SBATCH --signal=USR1@90) at step 15 of a trainer=slurm run: it stops after step
    15 with its checkpoint and asks SLURM to requeue it (an scontrol that records the request
    stands in for SLURM's); started again by SLURM with the same command line, it continues
    from that checkpoint and ends as the run left alone."""
    commands = tmp_path / "bin"
    commands.mkdir()
    (commands / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    (commands / "scontrol").chmod(0o755)
    run_dir = tmp_path / "outputs" / "slurm" / "4242"
    # One task: strategy auto (one device) is the run left alone's. A DDP of one process ends
    # 0.08% away from it (676.03 against 675.46), as uninterrupted as resumed.
    args = [*MODELS["lstm"], *TRAINING, "trainer=slurm", "trainer.accelerator=cpu", "trainer.precision=32-true",
            "trainer.matmul_precision=null", "trainer.strategy=auto", f"hydra.run.dir={run_dir}", "+callbacks.fault._target_=faults.SignalAt",
            "+callbacks.fault.signal=SIGUSR1", "+callbacks.fault.step=15", f"+callbacks.fault.marker={tmp_path / 'sent'}"]
    warned = run_lmexp(args, cwd=tmp_path, cache_dir=cache_dir, faults=True, commands=commands, environ=SLURM_TASK)
    assert warned.returncode == 128 + signal.SIGUSR1, warned.stderr[-3000:]
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    assert f"lmexp: SIGUSR1 at step 15: stopped; requeueing SLURM job 4242, which continues from {checkpoint}" \
        in warned.stdout
    assert results(run_dir)["status"] == "interrupted" and results(run_dir)["signal"] == "SIGUSR1"
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"

    requeued = run_lmexp(args, cwd=tmp_path, cache_dir=cache_dir, faults=True, commands=commands,
                         environ={**SLURM_TASK, "SLURM_RESTART_COUNT": "1"})
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert f"resuming {run_dir} from step 15" in requeued.stdout
    assert_same_run(run_dir, left_alone["lstm"])
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"


def slurm_commands(tmp_path: Path, then: str = "") -> Path:
    """A folder with an ``scontrol`` that records what it is asked (then runs ``then``)."""
    commands = tmp_path / "bin"
    commands.mkdir(exist_ok=True)
    (commands / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n{then}\n')
    (commands / "scontrol").chmod(0o755)
    return commands


SLURM_RUN = [*MODELS["lstm"], *TRAINING, "trainer=slurm", "trainer.accelerator=cpu", "trainer.precision=32-true",
             "trainer.matmul_precision=null", "trainer.strategy=auto"]


@pytest.mark.parametrize("folder", ["named", "by its variable", "not named"])
def test_a_requeue_is_promised_only_where_the_requeued_job_finds_the_run(folder, tmp_path, cache_dir):
    """hydra.run.dir=.../${oc.env:SLURM_JOB_ID} names the job's folder as $SLURM_JOB_ID does, and
    the requeued job continues there; with no folder named, the job started again would begin
    afresh in a folder of its own, so the run is not requeued and says how to continue it. (The
    command line's own text was looked for, ${...} and all: the requeued job started afresh over
    the run, after a promise that it would continue it.)"""
    commands = slurm_commands(tmp_path)
    where = {"named": [f"hydra.run.dir={tmp_path / 'slurm' / '4242'}"],
             "by its variable": [f"hydra.run.dir={tmp_path / 'slurm'}/${{oc.env:SLURM_JOB_ID}}"],
             "not named": []}[folder]
    args = [*SLURM_RUN, "trainer.max_epochs=1", *where, "+callbacks.fault._target_=faults.SignalAt",
            "+callbacks.fault.signal=SIGUSR1", "+callbacks.fault.step=15", f"+callbacks.fault.marker={tmp_path / 's'}"]
    warned = run_lmexp(args, cwd=tmp_path, cache_dir=cache_dir, faults=True, commands=commands, environ=SLURM_TASK)
    assert warned.returncode == 128 + signal.SIGUSR1, warned.stderr[-3000:]
    if folder == "not named":
        (run_dir,) = (tmp_path / "outputs").glob("*/*")
        assert "(not requeued: this job's command line, started again, would not find this folder" in warned.stdout
        assert f"continue with: python -m lmexp resume={run_dir}" in warned.stdout
        assert not (tmp_path / "scontrol.log").exists()
        return
    run_dir = tmp_path / "slurm" / "4242"
    assert f"requeueing SLURM job 4242, which continues from {run_dir / 'checkpoints' / 'last.ckpt'}" in warned.stdout
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    requeued = run_lmexp(args, cwd=tmp_path, cache_dir=cache_dir, faults=True, commands=commands,
                         environ={**SLURM_TASK, "SLURM_RESTART_COUNT": "1"})
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert f"resuming {run_dir} from step 15" in requeued.stdout and results(run_dir)["steps"] == 20


def test_a_checkpoint_of_lightnings_own_slurm_handler_is_refused_not_restored(left_alone, tmp_path, cache_dir):
    """An older lmexp let Lightning's SLURM handler write hpc_ckpt_N.ckpt into a run's folder;
    Lightning, fitting from no checkpoint in a SLURM job, restores the newest one. A new run started
    in such a folder went on silently from the old run's step instead of starting."""
    run_dir = tmp_path / "slurm" / "4242"
    run_dir.mkdir(parents=True)
    shutil.copy(left_alone["lstm"] / "checkpoints" / "last.ckpt", run_dir / "hpc_ckpt_1.ckpt")
    args = [*SLURM_RUN, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"]
    refused = run_lmexp(args, cwd=tmp_path, cache_dir=cache_dir, commands=slurm_commands(tmp_path), environ=SLURM_TASK)
    assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr[-3000:]
    assert refused.stderr.startswith(f"lmexp: error: {run_dir / 'hpc_ckpt_1.ckpt'}: a checkpoint of Lightning's own "
                                     f"SLURM handler") and f"move it out of {run_dir}" in refused.stderr
    assert not (run_dir / "results.json").exists() and (run_dir / "hpc_ckpt_1.ckpt").is_file()
    # Outside a SLURM job Lightning does not look for it: the run starts, from step 0.
    started = run_lmexp(args, cwd=tmp_path, cache_dir=cache_dir)
    assert started.returncode == 0, started.stderr[-3000:]
    assert results(run_dir)["steps"] == 20 and "resumed_from" in results(run_dir) and not results(run_dir)["resumed_from"]


@pytest.mark.parametrize("stage", ["sanity", "test"])
def test_slurms_warning_outside_the_training_steps_is_lmexps_to_handle(stage, tmp_path, cache_dir):
    """SIGUSR1 in the sanity check or the test of a SLURM job went to Lightning's handler: it wrote
    hpc_ckpt_1.ckpt, requeued the job, and let the run go on to its end (exit status 0), or (in
    setting up) the signal's default action killed the process. Now it stops as at a step: the
    test's run, checkpointed at its last step, is requeued; the sanity check's has nothing to continue."""
    commands = slurm_commands(tmp_path)
    run_dir = tmp_path / "slurm" / "4242"
    args = [*SLURM_RUN, "trainer.max_epochs=1", "trainer.num_sanity_val_steps=2", f"hydra.run.dir={run_dir}",
            "+callbacks.fault._target_=faults.SignalDuring", "+callbacks.fault.signal=SIGUSR1",
            f"+callbacks.fault.stage={stage}", f"+callbacks.fault.marker={tmp_path / 'sent'}"]
    warned = run_lmexp(args, cwd=tmp_path, cache_dir=cache_dir, faults=True, commands=commands, environ=SLURM_TASK)
    assert warned.returncode == 128 + signal.SIGUSR1 and "Traceback" not in warned.stderr, warned.stderr[-3000:]
    assert not list(run_dir.glob("hpc_ckpt_*")) and "auto-requeue" not in warned.stdout + warned.stderr  # Lightning's
    stopped = results(run_dir)
    assert (stopped["status"], stopped["signal"]) == ("interrupted", "SIGUSR1")
    if stage == "sanity":
        assert stopped["steps"] == 0 and not (tmp_path / "scontrol.log").exists()
        return
    assert stopped["steps"] == 20 and (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"


def test_slurms_stop_of_the_job_it_requeues_leaves_the_runs_own_ending(tmp_path, cache_dir):
    """SLURM signals a job's processes as it requeues it: a SIGTERM that arrived while scontrol
    ran raised in the middle of the requeue, a traceback and exit status 1."""
    commands = slurm_commands(tmp_path, then="kill -TERM $PPID; sleep 1")
    run_dir = tmp_path / "slurm" / "4242"
    args = [*SLURM_RUN, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}", "+callbacks.fault._target_=faults.SignalAt",
            "+callbacks.fault.signal=SIGUSR1", "+callbacks.fault.step=15", f"+callbacks.fault.marker={tmp_path / 's'}"]
    warned = run_lmexp(args, cwd=tmp_path, cache_dir=cache_dir, faults=True, commands=commands, environ=SLURM_TASK)
    assert warned.returncode == 128 + signal.SIGUSR1 and "Traceback" not in warned.stderr, warned.stderr[-3000:]
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n" and results(run_dir)["steps"] == 15


def test_a_resumed_run_stopped_before_its_state_is_restored_keeps_its_checkpoint(tmp_path, cache_dir):
    """A signal while a resumed run sets up, before its checkpoint is loaded, reported step 0 and
    'it stopped before its first checkpoint: start it again', which would throw the steps away."""
    run_dir = tmp_path / "run"
    marker = tmp_path / "sent"
    marker.touch()  # nothing sent in the first start
    first = run_lmexp([*MODELS["lstm"], *TRAINING, "trainer.max_steps=10", f"hydra.run.dir={run_dir}",
                       "+callbacks.fault._target_=faults.SignalDuring", "+callbacks.fault.signal=SIGTERM",
                       "+callbacks.fault.stage=setup", f"+callbacks.fault.marker={marker}"],
                      cwd=tmp_path, cache_dir=cache_dir, faults=True)
    assert first.returncode == 0, first.stderr[-3000:]
    marker.unlink()
    stopped = resume(tmp_path, run_dir, cache_dir, "trainer.max_steps=20")
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert f"SIGTERM at step 10: stopped; continue with: python -m lmexp resume={run_dir}" in stopped.stdout
    record = results(run_dir)
    assert record["steps"] == 10 and Path(record["checkpoint"]) == run_dir / "checkpoints" / "last.ckpt"


def test_a_second_signal_ends_the_run_at_once_and_timed_checkpoints_are_kept(tmp_path, cache_dir):
    # Checkpoints every 6 ms (on each logging step, here every step): some are written before step 5.
    # The run's own handler takes the first SIGTERM; the second, right after, must end it then.
    twice = run(tmp_path, "twice", [*MODELS["lstm"], *TRAINING, "callbacks.checkpoint.every_n_steps=null",
                                    "callbacks.checkpoint.every_n_minutes=0.0001", "+callbacks.fault.times=2"],
                cache_dir, fault="SIGTERM@5", expect=-signal.SIGTERM)  # ended by the signal, not after the step
    assert not (twice / "results.json").exists()
    saved = torch.load(twice / "checkpoints" / "last.ckpt", weights_only=True)
    assert 1 <= saved["global_step"] <= 5


def test_a_finished_run_resumed_with_a_larger_budget_trains_on(left_alone, tmp_path, cache_dir):
    import shutil

    run_dir = tmp_path / "a run's folder, é"  # a path with spaces, a quote and non-ASCII works
    shutil.copytree(left_alone["lstm"], run_dir)
    result = resume(tmp_path, run_dir, cache_dir, "trainer.max_epochs=3")
    assert result.returncode == 0, result.stderr[-3000:]
    record = results(run_dir)
    assert (record["epochs"], record["steps"]) == (3, 60)
    assert [s for s, _ in losses(run_dir)] == list(range(60))  # the first 40 rows kept, 20 appended


@pytest.mark.parametrize("old_folder, budget", [
    ("moved", "trainer.max_steps=5"),  # the folder moved, resumed as it is: its test is all that is left
    ("copied", "trainer.max_steps=8"),  # copied, the original kept, and trained on in the copy
])
def test_a_run_folder_moved_or_copied_resumes_from_its_new_place(old_folder, budget, tmp_path, cache_dir):
    """The checkpoint callback's state holds the absolute paths of the folder it was written in:
    until 2026-12-02 a moved run's resume tested the old folder's best checkpoint (a traceback,
    ``Checkpoint file not found``, once that folder was gone), and a copy trained on kept the
    copied best checkpoint beside its new one. The new folder's files are read and replaced; the
    old folder is left as it was."""
    from lmexp.resume import ResumePoint
    from lmexp.train import train

    old, new = tmp_path / "run", tmp_path / "elsewhere" / "run"
    first = train_here([*SMALL, "trainer.max_steps=5", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2"],
                       old, cache_dir)
    shutil.copytree(old, new)
    if old_folder == "moved":
        shutil.rmtree(old)
    kept = {p: p.read_bytes() for p in old.rglob("*") if p.is_file()}
    point = ResumePoint.find(str(new))
    record = train(point.config([f"resume={new}", budget]), point.run_dir)
    steps = int(budget.split("=")[1])
    assert record["status"] == "finished" and record["steps"] == steps
    best = new / "checkpoints" / f"best-epoch=0-step={steps}.ckpt"
    assert record["best_checkpoint"] == str(best)
    assert sorted(p.name for p in (new / "checkpoints").iterdir()) == [best.name, "last.ckpt"]
    if steps == first["steps"]:  # nothing trained: the same checkpoint tested, the same numbers
        assert (record["test_ppl"], record["best_val_ppl"]) == (first["test_ppl"], first["best_val_ppl"])
    assert {p: p.read_bytes() for p in old.rglob("*") if p.is_file()} == kept


@pytest.mark.parametrize("override, message", [
    ("model.hidden_size=64", "model.hidden_size=64: a resumed run keeps its settings; only these may change: "
                             "trainer.max_epochs"),
    ("optimizer=sgd", "optimizer=sgd: a resumed run keeps its settings"),
])
def test_resuming_with_settings_that_change_the_run_is_refused_in_one_line(override, message, left_alone, tmp_path,
                                                                           cache_dir):
    result = resume(tmp_path, left_alone["lstm"], cache_dir, override)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"lmexp: error: {message}") and len(result.stderr.splitlines()) == 1


def test_resume_names_what_is_missing_in_one_line(tmp_path, cache_dir):
    """An empty folder and a sweep's were told their run had stopped before its first checkpoint
    (until 2026-12-02, a review)."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "no-config" / "checkpoints").mkdir(parents=True)
    (tmp_path / "no-config" / "checkpoints" / "last.ckpt").write_bytes(b"")
    (tmp_path / "unstarted").mkdir()
    (tmp_path / "unstarted" / "config.yaml").write_text("seed: 1\n")
    (tmp_path / "sweep" / "0" / ".hydra").mkdir(parents=True)
    (tmp_path / "sweep" / "0" / ".hydra" / "overrides.yaml").write_text("- model=lstm\n")
    for path, message in ((tmp_path / "nowhere", "no such run folder or checkpoint"),
                          (tmp_path / "empty", "holds no config.yaml"),
                          (tmp_path / "unstarted", "does not exist (the run stopped before its first checkpoint)"),
                          (tmp_path / "sweep", f"a sweep's folder; continue the sweep with its command and "
                                               f"hydra.sweep.dir={tmp_path / 'sweep'}"),
                          (tmp_path / "no-config", "holds no config.yaml")):
        result = resume(tmp_path, path, cache_dir)
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith(f"lmexp: error: resume={path}: ") and message in result.stderr
    both = run_lmexp(["-m", f"resume={tmp_path / 'empty'}"], cwd=tmp_path, cache_dir=cache_dir)
    assert both.returncode == 2 and "resume= continues one run" in both.stderr


@pytest.mark.parametrize("budget, larger", [("trainer.max_steps=10", "trainer.max_steps=-1"),
                                            ("trainer.max_tokens=5000", "trainer.max_tokens=null")])
def test_a_run_its_budget_stopped_mid_epoch_resumed_with_a_larger_one_ends_as_the_run_left_alone(
        budget, larger, left_alone, tmp_path, cache_dir):
    """Stopped by trainer.max_steps or max_tokens inside the first epoch (validated there, as any
    stop is), then resumed with the budget raised: the rest of that epoch is trained, not
    skipped, and the run ends as the one left alone."""
    from lmexp.resume import ResumePoint
    from lmexp.train import train

    run_dir = tmp_path / "stopped"
    first = train_here([*MODELS["lstm"], *TRAINING, budget], run_dir, cache_dir)
    assert first["steps"] == 10 and first["epochs"] == 1
    point = ResumePoint.find(str(run_dir))
    train(point.config([f"resume={run_dir}", larger]), point.run_dir)
    assert_same_run(run_dir, left_alone["lstm"])


@pytest.mark.parametrize("every", [7, 5])  # validations at steps 7, 14, ...: the stop at 10 is not one; at 5, 10: it is
def test_a_run_stopped_inside_an_epoch_validated_by_interval_logs_each_step_once_resumed(every, tmp_path, cache_dir):
    """A budget's stop at step 10 validates, and writes last.ckpt there, before Lightning counts
    the step for its loggers. Resumed from it, where the stop was no validation of the interval's,
    Lightning did not count it: every later row was logged one step early, step 9 twice and the
    last step never (a review, 2026-12-01). Checkpoints only at validations, as by default."""
    from lmexp.resume import ResumePoint
    from lmexp.train import train

    args = [*MODELS["lstm"], *(a for a in TRAINING if not a.startswith("callbacks.checkpoint.every_n_steps")),
            "callbacks.checkpoint.every_n_minutes=null", f"trainer.val_check_interval={every}"]
    train_here(args, tmp_path / "alone", cache_dir)
    run_dir = tmp_path / "stopped"
    assert train_here([*args, "trainer.max_steps=10"], run_dir, cache_dir)["steps"] == 10
    point = ResumePoint.find(str(run_dir))
    train(point.config([f"resume={run_dir}", "trainer.max_steps=-1"]), point.run_dir)
    assert_same_run(run_dir, tmp_path / "alone")


def test_a_two_process_lstm_stopped_mid_epoch_resumes_each_process_from_its_own_state(tmp_path, cache_dir):
    """trainer=ddp_cpu, stopped by trainer.max_steps at step 4 of the epoch's 8 and resumed with the
    budget lifted: each process continues its own rows from its own carried state (the checkpoint
    holds both processes' rows), so the run ends as the one left alone. Before, both processes
    continued from the first one's state, the second's streams from rows not theirs: the
    validation perplexity was 6e-6 off, every loss within 1e-6 (an untrained model's state says
    little), so the states themselves are compared."""
    args = [*SMALL, "trainer=ddp_cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=8",
            "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "trainer.log_every_n_steps=1",
            "trainer.num_sanity_val_steps=0", "+callbacks.state._target_=faults.CarriedStateAt",
            "+callbacks.state.step=4"]
    alone, stopped = tmp_path / "alone", tmp_path / "stopped"
    done = run_lmexp([*args, f"+callbacks.state.folder={tmp_path / 'alone-state'}", f"hydra.run.dir={alone}"],
                     cwd=tmp_path, cache_dir=cache_dir, faults=True)
    assert done.returncode == 0, done.stderr[-3000:]
    first = run_lmexp([*args, f"+callbacks.state.folder={tmp_path / 'resumed-state'}", "trainer.max_steps=4",
                       f"hydra.run.dir={stopped}"], cwd=tmp_path, cache_dir=cache_dir, faults=True)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (results(stopped)["steps"], results(stopped)["epochs"]) == (4, 1)
    assert not (tmp_path / "resumed-state").exists()  # step 4 is the resumed run's first
    again = resume(tmp_path, stopped, cache_dir, "trainer.max_steps=-1")
    assert again.returncode == 0, again.stderr[-3000:]
    # The state each process carries into step 4 (an LSTM layer's (h, c), 16 rows each): its own,
    # as the run left alone carried it; the two processes' differ, so the comparison can tell.
    expected = [torch.load(tmp_path / "alone-state" / f"rank{rank}.pt") for rank in (0, 1)]
    got = [torch.load(tmp_path / "resumed-state" / f"rank{rank}.pt") for rank in (0, 1)]
    for rank in (0, 1):
        for mine, theirs in zip(got[rank][0], expected[rank][0]):
            assert mine.shape == (1, 16, 32) and torch.equal(mine, theirs), rank
    assert not torch.equal(expected[0][0][0], expected[1][0][0])
    got, expected = results(stopped), results(alone)
    assert (got["steps"], got["epochs"]) == (expected["steps"], expected["epochs"]) == (8, 1)
    resumed_losses, alone_losses = losses(stopped), losses(alone)
    assert [s for s, _ in resumed_losses] == [s for s, _ in alone_losses] == list(range(8))
    assert [v for _, v in resumed_losses] == pytest.approx([v for _, v in alone_losses], rel=1e-6)
    for key in ("best_val_ppl", "test_ppl"):
        assert got[key] == pytest.approx(expected[key], rel=1e-6), key


@pytest.mark.parametrize("saved, world, kept", [
    (2, 2, "own"),  # each process its own block of rows
    (None, 1, "all"), (1, 1, "all"),  # one process: the state as saved, in a checkpoint of before 2026-11-30 too
    (None, 2, None),  # an older checkpoint holds the first process's rows alone
    (2, 1, None), (2, 4, None),  # another process count lays the stream out in other rows
])
def test_each_process_takes_its_rows_of_the_saved_state_or_none_that_are_not_its_own(saved, world, kept, caplog):
    from types import SimpleNamespace

    import pytorch_lightning as pl

    from lmexp.module import LanguageModelModule

    module = LanguageModelModule.__new__(LanguageModelModule)  # no model needed: the hook reads the trainer
    pl.LightningModule.__init__(module)
    rows = torch.arange(8.0).view(1, 8, 1)
    state = [(rows, -rows)]  # an LSTM layer's (h, c): (layers, rows, hidden)
    for rank in range(world):
        module.trainer = SimpleNamespace(world_size=world, global_rank=rank, is_global_zero=rank == 0)
        got = module._own_rows(state, saved)
        if kept is None:
            assert got is None
            continue
        mine = rows if kept == "all" else rows[:, 4 * rank : 4 * rank + 4]
        assert type(got) is list and type(got[0]) is tuple
        assert torch.equal(got[0][0], mine) and torch.equal(got[0][1], -mine)
    warned = [r.getMessage() for r in caplog.records if "recurrent state reset" in r.getMessage()]
    assert len(warned) == (kept is None)  # said once, by the first process


@pytest.mark.parametrize("stage, sig", [("sanity", "SIGTERM"), ("test", "SIGINT")])
def test_a_signal_outside_the_training_steps_stops_the_run_as_at_a_step(stage, sig, tmp_path, cache_dir):
    """Before the first step (the sanity check) and in the test, StopOnSignal does not listen, and
    Lightning's handling ended the process with status 0 (SIGTERM) or 1 (SIGINT), no results.json.
    Now: the documented status, results.json, and a run stopped in its test resumes to its end."""
    run_dir = tmp_path / "run"
    args = [*MODELS["lstm"], *TRAINING, "trainer.max_epochs=1", "trainer.num_sanity_val_steps=2"]
    result = run_lmexp([*args, f"hydra.run.dir={run_dir}", "+callbacks.fault._target_=faults.SignalDuring",
                        f"+callbacks.fault.signal={sig}", f"+callbacks.fault.stage={stage}",
                        f"+callbacks.fault.marker={tmp_path / 'sent'}"], cwd=tmp_path, cache_dir=cache_dir, faults=True)
    code = 128 + getattr(signal, sig)
    assert result.returncode == code and "Traceback" not in result.stderr, result.stderr[-3000:]
    stopped = results(run_dir)
    assert (stopped["status"], stopped["signal"], stopped["exit_code"]) == ("interrupted", sig, code)
    if stage == "sanity":
        assert stopped["steps"] == 0 and stopped["checkpoint"] is None
        assert "stopped before its first checkpoint: start it again" in result.stdout
        return
    assert stopped["steps"] == 20 and Path(stopped["checkpoint"]).name == "last.ckpt"
    # its units and size, as a finished run's: a report ranks it among other tokenizers' runs by bits per byte
    from lmexp.summary import units

    assert units(stopped) == f"word of {stopped['vocab_size']:,}" and stopped["val_bpb"] > 0
    assert stopped["params"] > stopped["params_without_embeddings"] > 0
    again = resume(tmp_path, run_dir, cache_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    done = results(run_dir)
    assert done["status"] == "finished" and done["steps"] == 20 and done["test_ppl"] < done["vocab_size"]


def test_resume_of_what_is_no_checkpoint_or_an_edited_run_is_one_line_and_changes_nothing(tmp_path, cache_dir):
    """resume= of a file that is no checkpoint (the run's config.yaml), of a run whose config.yaml
    was edited (another model: its checkpoint would not load) or no longer reads as YAML: one line,
    before metrics.csv is cut back to the checkpoint's step (a failed resume had cut it)."""
    run_dir = tmp_path / "run"
    train_here([*SMALL, "trainer.max_epochs=1", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2",
                "trainer.limit_test_batches=2"], run_dir, cache_dir)
    config, metrics = (run_dir / "config.yaml").read_text(), (run_dir / "metrics.csv").read_text()
    edited = config.replace("hidden_size: 32", "hidden_size: 64")
    assert edited != config
    for given, text, said in ((run_dir / "config.yaml", config, "it is not in torch.save's format"),
                              (run_dir, edited, "the model in its config.yaml is not the checkpoint's"),
                              (run_dir, config + "model: [\n", "its config.yaml cannot be read")):
        (run_dir / "config.yaml").write_text(text)
        result = run_lmexp([f"resume={given}"], cwd=tmp_path, cache_dir=cache_dir)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"lmexp: error: resume={given}") and said in line, line
        assert (run_dir / "metrics.csv").read_text() == metrics


def test_a_sweep_run_again_keeps_jobs_whose_batch_plan_the_run_filled_in(tmp_path, cache_dir):
    """config.yaml holds what the run filled in (data.effective_batch_size=32 of 16-row batches:
    accumulate_grad_batches 2), not what the job asked for: compared with it, a finished job was
    trained again. requested.yaml, beside it, is what the job is recognised by."""
    sweep = tmp_path / "sweep"
    args = ["-m", *MODELS["lstm"], *TRAINING, "trainer.max_epochs=1", "trainer.limit_train_batches=4",
            "data.effective_batch_size=32", f"hydra.sweep.dir={sweep}"]
    first = run_lmexp(args, cwd=tmp_path, cache_dir=cache_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    (job,) = sweep.glob("0-*")
    assert "accumulate_grad_batches: 2" in (job / "config.yaml").read_text()
    again = run_lmexp(args, cwd=tmp_path, cache_dir=cache_dir)
    assert again.returncode == 0 and f"lmexp: {job.name} finished before: kept" in again.stdout, again.stderr[-3000:]


def test_a_job_of_other_settings_in_the_folder_leaves_nothing_to_be_taken_for_this_ones(tmp_path, cache_dir):
    """A grid run into a folder that another grid's stopped job left (results.json interrupted,
    last.ckpt of step 5): the new job starts afresh, and killed before its first checkpoint, it
    must not then be continued from the other run's checkpoint, as it was (a hybrid: 5 steps at
    one learning rate, then the rest at another)."""
    sweep = tmp_path / "sweep"
    args = ["-m", *MODELS["lstm"], *TRAINING, "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}",
            "callbacks.checkpoint.every_n_steps=null", "+callbacks.fault._target_=faults.SignalAt"]
    other = run_lmexp([*args, "optimizer.lr=0.003", "+callbacks.fault.signal=SIGTERM", "+callbacks.fault.step=5",
                       f"+callbacks.fault.marker={tmp_path / 'first'}"], cwd=tmp_path, cache_dir=cache_dir, faults=True)
    assert other.returncode == 143, other.stderr[-3000:]
    (job,) = sweep.glob("0-*")
    assert (job / "checkpoints" / "last.ckpt").is_file()
    mine = [*args, "optimizer.lr=0.03", "+callbacks.fault.signal=SIGKILL", "+callbacks.fault.step=3",
            f"+callbacks.fault.marker={tmp_path / 'second'}"]
    killed = run_lmexp(mine, cwd=tmp_path, cache_dir=cache_dir, faults=True)
    assert killed.returncode == -signal.SIGKILL
    assert not (job / "results.json").exists() and not (job / "checkpoints" / "last.ckpt").exists()
    again = run_lmexp(mine, cwd=tmp_path, cache_dir=cache_dir, faults=True)
    assert again.returncode == 0 and "resuming" not in again.stdout, again.stderr[-3000:]
    done = results(job)
    assert done["status"] == "finished" and done["resumed_from"] is None and done["steps"] == 20


def test_a_killed_run_resumed_has_each_step_once_in_tensorboard(tmp_path, cache_dir):
    """metrics.csv is cut back to the checkpoint's step on resume; TensorBoard's folder was not,
    so the steps between the checkpoint (10) and the kill (15) were there twice."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = [*MODELS["lstm"], *(a for a in TRAINING if not a.startswith("logger=")), "trainer.max_epochs=1",
            "logger=[csv,tensorboard]"]
    killed = run(tmp_path, "killed", args, cache_dir, fault="SIGKILL@15", expect=-signal.SIGKILL)
    again = resume(tmp_path, killed, cache_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    events = EventAccumulator(str(killed / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == list(range(20))  # logged every step; the first segment's 10 to 15 purged
    assert [r[0] for r in losses(killed)] == steps


def test_the_w_and_b_run_a_resume_continues_is_the_latest_started(tmp_path):
    """A run folder holding two W&B runs (another id started later in it): the one continued is
    the one started last, by the time in its folder's name, whatever the ids' letters."""
    from lmexp.loggers import wandb_run_id

    assert wandb_run_id(tmp_path) is None
    for folder in ("offline-run-20260101_100000-zzzz1111", "run-20260102_090000-aaaa2222", "latest-run"):
        (tmp_path / "wandb" / folder).mkdir(parents=True)
    assert wandb_run_id(tmp_path) == "aaaa2222"


@pytest.mark.parametrize("epoch", [
    "trainer.limit_train_batches=20",  # 20 batches of 16: 40 of 8
    # 0.05 of the epoch's batches: 38 of 16, 608 windows, but 77 of 8, 616 windows; and each epoch
    # drops a last part-filled batch of up to 15 windows in batches of 16, up to 7 in batches of 8
    "trainer.limit_train_batches=0.05",
])
def test_a_run_resumed_in_smaller_micro_batches_goes_on_as_left_alone(epoch, tmp_path, cache_dir):
    """A run that ran out of memory goes on from its checkpoint in smaller micro-batches at the
    same rows per step (resume=RUN data.batch_size=8 trainer.accumulate_grad_batches=2): the
    same windows in the same order, each step's gradient the same up to float32's summation
    order, so it ends as the run left alone. Lightning's counts of batches in the checkpoint,
    the data module's place in the epoch and the epoch's length are converted to the new
    micro-batch; until 2026-12-01 the micro-batch could not change on resume, and the
    checkpoints of a run stopped by memory could only be resumed into the same failure."""
    from lmexp.resume import ResumePoint
    from lmexp.train import train

    # No dropout: masks depend on the batch's shape.
    args = [*MODELS["transformer"], *(a for a in TRAINING if "limit_train" not in a), epoch, "regularization=none"]
    alone = train_here(args, tmp_path / "alone", cache_dir)
    run_dir = tmp_path / "stopped"
    assert train_here([*args, "trainer.max_steps=10"], run_dir, cache_dir)["steps"] == 10
    point = ResumePoint.find(str(run_dir))
    # Another evaluation batch scores the same windows: limit_val_batches=10 counts batches of the run's size.
    evaluation = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["eval_batch_size"]
    smaller = point.config([f"resume={run_dir}", "data.eval_batch_size=4"])
    assert (smaller.data.eval_batch_size, smaller.trainer.limit_val_batches) == (4, 10 * evaluation // 4)
    got = train(point.config([f"resume={run_dir}", "trainer.max_steps=-1", "data.batch_size=8",
                              "trainer.accumulate_grad_batches=2", "data.eval_batch_size=4"]), point.run_dir)
    assert (got["steps"], got["epochs"], got["train_tokens"]) == (alone["steps"], alone["epochs"],
                                                                  alone["train_tokens"])
    assert (got["batch_size"], got["accumulate_grad_batches"]) == (8, 2)
    # Resumed again, it goes on in these batches, not in the ones that ran out of memory.
    stored = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (stored["data"]["batch_size"], stored["trainer"]["accumulate_grad_batches"]) == (8, 2)
    # and in this evaluation batch, with the limits that count the same windows in it
    assert (stored["data"]["eval_batch_size"], stored["trainer"]["limit_val_batches"],
            stored["trainer"]["limit_test_batches"]) == (4, 10 * evaluation // 4, 10 * evaluation // 4)
    for key in ("best_val_ppl", "test_ppl"):
        assert got[key] == pytest.approx(alone[key], rel=1e-5), key
    steps = [s for s, _ in losses(run_dir)]
    assert steps == sorted(set(steps)) == list(range(alone["steps"]))  # each step once: none redone, none skipped


@pytest.mark.parametrize("overrides, message", [
    (["data.batch_size=8"], "data.batch_size=8: a resumed run keeps its 16 rows per optimizer step (data.batch_size"
                            "=16 x trainer.accumulate_grad_batches=1); give both, e.g. data.batch_size=8 "
                            "trainer.accumulate_grad_batches=2"),
    (["data.batch_size=6", "trainer.accumulate_grad_batches=2"], "data.batch_size=6 trainer.accumulate_grad_batches=2"
                                                                 ": a resumed run keeps its 16 rows per optimizer "
                                                                 "step"),
])
def test_another_micro_batch_on_resume_keeps_the_rows_per_step_and_the_streams(overrides, message, left_alone,
                                                                               tmp_path):
    from lmexp.errors import ConfigError
    from lmexp.resume import ResumePoint

    with pytest.raises(ConfigError, match=re.escape(message)):
        ResumePoint.find(str(left_alone["transformer"])).config(overrides)
    with pytest.raises(ConfigError, match=r"model=lstm reads its data as streams \(data.batch_size of them"):
        ResumePoint.find(str(left_alone["lstm"])).config(["data.batch_size=8", "trainer.accumulate_grad_batches=2"])


def test_a_larger_micro_batch_than_the_epochs_windows_divide_into_is_refused(tmp_path, cache_dir):
    """Batches of 8, two a step, with limit_train_batches=0.05: 77 a process, 616 windows an epoch
    (its last step one micro-batch). Batches of 16 cannot make those windows, and until a review
    found it the resumed run took 38 batches of 16 an epoch, 608 windows: a step fewer each epoch."""
    from lmexp.errors import UserError
    from lmexp.resume import ResumePoint
    from lmexp.train import train

    args = [*MODELS["transformer"], *(a for a in TRAINING if "limit_train" not in a), "trainer.limit_train_batches=0.05",
            "regularization=none", "data.batch_size=8", "trainer.accumulate_grad_batches=2", "trainer.max_steps=10"]
    run_dir = tmp_path / "stopped"
    train_here(args, run_dir, cache_dir)
    point = ResumePoint.find(str(run_dir))
    config = point.config([f"resume={run_dir}", "trainer.max_steps=-1", "data.batch_size=16",
                           "trainer.accumulate_grad_batches=1"])
    with pytest.raises(UserError, match=r"^data.batch_size=16: the run's epochs are 616 windows on each process "
                                        r"\(160 done in this one\), which micro-batches of 16 do not make; resume "
                                        r"with a data.batch_size that divides 8, e.g. 8$"):
        train(config, point.run_dir)


@pytest.mark.parametrize("flag", ["-m", "--cfg"])
def test_resume_with_a_flag_is_refused_before_the_folder_is_read(flag, tmp_path, monkeypatch, capsys):
    """resume= continues one run: with -m it would start a sweep whose job trains afresh (a sweep job
    reads no resume=). Refused in one line, before the folder named is looked into."""
    import sys

    from lmexp.__main__ import run

    monkeypatch.setattr(sys, "argv", ["lmexp", f"resume={tmp_path / 'missing'}", flag])
    with pytest.raises(SystemExit) as exit:
        run()
    assert exit.value.code == 2
    assert "resume= continues one run: use it without -m or other flags" in capsys.readouterr().err


@pytest.mark.parametrize("callback, checkpoint, how", [
    (None, None, "no checkpoint was written (callbacks.checkpoint is off)"),
    (object(), None, "it stopped before its first checkpoint: start it again"),
    (object(), "last.ckpt", "continue with: python -m lmexp resume={run_dir}")])
def test_a_stopped_runs_line_and_results_tell_how_it_stopped(callback, checkpoint, how, tmp_path, monkeypatch, capsys):
    """What a signal's stop prints and writes: the advice that fits (checkpoints off is not 'start it
    again'), the shell's exit status, the vocabulary size a report ranks it by, and the seconds of the
    run's earlier segments counted in."""
    import json
    import signal
    import time
    from types import SimpleNamespace

    import lmexp.train as train
    from lmexp.callbacks import Interrupted

    monkeypatch.setattr(train, "_earlier", lambda trainer: 1000.0)
    monkeypatch.setattr(train, "ending_on_signals", lambda: None)  # the test process keeps its handlers
    settings = SimpleNamespace(names={"model": "lstm", "data": "tiny", "tokenizer": "word"}, resume=None, seed=3)
    module = SimpleNamespace(hparams=SimpleNamespace(vocab=["<unk>", "a", "b"]), best_val={"ppl": 12.5})
    run = SimpleNamespace(parameters=(10, 5), settings=settings, module=module)
    trainer = SimpleNamespace(checkpoint_callback=callback, current_epoch=0, is_global_zero=True, callbacks=[],
                              fit_loop=SimpleNamespace(epoch_progress=SimpleNamespace(total=SimpleNamespace(started=1))))
    results = train._interrupted(Interrupted(signal.SIGTERM, 7, checkpoint), trainer, run, [], tmp_path,
                                 time.perf_counter())
    assert capsys.readouterr().out == f"lmexp: SIGTERM at step 7: stopped; {how.format(run_dir=tmp_path)}\n"
    assert results["exit_code"] == 143 and results["vocab_size"] == 3 and results["best_val_ppl"] == 12.5
    assert 1000 <= results["wall_time_s"] < 1000 + 60
    assert json.loads((tmp_path / "results.json").read_text()) == results
