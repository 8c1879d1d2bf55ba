"""lmexp/slurm.py's decisions, unit by unit: which process is a batch job, the id scontrol takes,
the folder a restart continues in, the checkpoint it continues from. The SLURM runs themselves
are in tests/test_resume.py."""

import signal

import pytest

from lmexp import slurm
from lmexp.errors import UserError

JOB = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "lmexp", "SLURM_JOB_ID": "4242"}


def test_an_interactive_allocation_is_not_a_batch_job():
    assert slurm.in_batch_job(JOB)
    assert not slurm.in_batch_job({**JOB, "SLURM_JOB_NAME": "bash"})
    assert not slurm.in_batch_job({**JOB, "SLURM_JOB_NAME": "interactive"})
    assert not slurm.in_batch_job({"SLURM_JOB_NAME": "lmexp"})


def test_an_array_task_is_requeued_as_array_id_underscore_task():
    assert slurm.job_id({"SLURM_JOB_ID": "4250", "SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "3"}) == "4242_3"
    assert slurm.job_id({"SLURM_JOB_ID": "4250"}) == "4250"


def test_a_refused_requeue_says_why_and_leaves_sigterm_handled(tmp_path, monkeypatch):
    scontrol = tmp_path / "scontrol"
    scontrol.write_text("#!/bin/sh\necho 'Invalid job id specified' >&2\nexit 1\n")
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    before = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, stop_here := lambda signum, frame: None)
        assert slurm.requeue(JOB) == "scontrol requeue: Invalid job id specified"
        # Not requeued: SIGTERM is handled as before (scancel or the time limit still ends the process).
        assert signal.getsignal(signal.SIGTERM) is stop_here
        monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))  # no scontrol at all
        assert slurm.requeue(JOB).startswith("scontrol requeue: [Errno 2]")
        assert signal.getsignal(signal.SIGTERM) is stop_here
        scontrol.write_text("#!/bin/sh\nexit 0\n")
        monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
        assert slurm.requeue(JOB) is None
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # requeued: SLURM's SIGTERM is ignored
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_folder_each_start_names_anew_is_not_fixed(monkeypatch):
    from hydra.core.utils import setup_globals

    setup_globals()  # ${now:...} resolves, as in python -m lmexp: only the text tells it apart
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert slurm.fixed_folder("out/${oc.env:SLURM_JOB_ID}") == "out/4242"
    assert slurm.fixed_folder("out/${now:%H-%M-%S}") is None
    assert slurm.fixed_folder(None) is None


def test_a_restart_continues_a_run_in_its_folder_and_a_sweeps_job_in_the_sweeps(tmp_path):
    job = tmp_path / "0-lstm"
    assert slurm.restart_continues(job, {slurm.RESTART_FOLDER: f"sweep:{tmp_path}"})
    assert not slurm.restart_continues(tmp_path, {slurm.RESTART_FOLDER: f"sweep:{tmp_path}"})
    assert slurm.restart_continues(tmp_path, {slurm.RESTART_FOLDER: f"run:{tmp_path}"})
    assert not slurm.restart_continues(job, {slurm.RESTART_FOLDER: f"run:{tmp_path}"})
    assert not slurm.restart_continues(tmp_path, {slurm.RESTART_FOLDER: ""})
    assert slurm.restart_continues(tmp_path, {slurm.RESTART_FOLDER: "", "SUBMITIT_EXECUTOR": "slurm"})


def test_only_a_restarted_job_continues_the_checkpoint_in_its_folder(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").touch()
    assert slurm.requeued_run(str(tmp_path), {}) is None
    assert slurm.requeued_run(str(tmp_path), {"SLURM_RESTART_COUNT": "0"}) is None
    assert slurm.requeued_run(str(tmp_path), {"SLURM_RESTART_COUNT": "1"}) == str(tmp_path)


def test_lightnings_own_checkpoint_is_refused_only_where_lightning_would_restore_it(tmp_path):
    (tmp_path / "hpc_ckpt_1.ckpt").touch()
    with pytest.raises(UserError, match="hpc_ckpt_1.ckpt"):
        slurm.check_no_lightning_checkpoint(tmp_path, None, JOB)
    slurm.check_no_lightning_checkpoint(tmp_path, str(tmp_path / "checkpoints" / "last.ckpt"), JOB)  # resume= given
    slurm.check_no_lightning_checkpoint(tmp_path, None, {})  # not a SLURM job


def test_the_lightning_checkpoint_named_is_the_one_lightning_would_restore(tmp_path):
    """Lightning restores the highest number: hpc_ckpt_10 after hpc_ckpt_9 (as text, 9 came last)."""
    for n in (9, 10):
        (tmp_path / f"hpc_ckpt_{n}.ckpt").touch()
    with pytest.raises(UserError) as refused:
        slurm.check_no_lightning_checkpoint(tmp_path, None, JOB)
    assert str(refused.value).startswith(f"{tmp_path / 'hpc_ckpt_10.ckpt'} (and 1 more like it): a checkpoint of ")
    assert f"move them out of {tmp_path}," in str(refused.value)
