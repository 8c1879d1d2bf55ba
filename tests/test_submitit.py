"""Sweeps whose jobs each become a SLURM job, through Hydra's submitit launcher: the same sweep
run here as local processes (submitit_local), and the batch script a SLURM sweep submits,
written by submitit itself from the launcher's settings (no cluster here: an sbatch that keeps
the script and refuses it stands in for SLURM's)."""

import json
import re

from conftest import SMALL, run_lmexp

SHORT = [*SMALL, "trainer.max_steps=2", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
         "logger=csv"]


def test_a_two_job_sweep_runs_through_submitit_local(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    result = run_lmexp(["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "model=rnn,lstm",
                        *SHORT, f"hydra.sweep.dir={sweep}"], cwd=tmp_path, cache_dir=cache_dir, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    for job, model in (("0-rnn-tiny", "rnn"), ("1-lstm-tiny", "lstm")):
        results = json.loads((sweep / job / "results.json").read_text())
        assert results["status"] == "finished" and results["model"] == model and results["steps"] == 2
    # Each job ran in a process of submitit's, which logged into the sweep's .submitit folder.
    logs = list((sweep / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2, logs
    assert len((sweep / "summary.csv").read_text().splitlines()) == 1 + 2  # the launching process's summary


def test_a_job_stopped_by_a_signal_is_told_in_one_line_and_continued_by_the_same_command(tmp_path, cache_dir):
    """A job stopped by SIGTERM (a preemption) exited its submitit process with status 143 before
    submitit had its result: the launching process ended in submitit's 50-line traceback. The job
    now returns, the summary counts it, and the launcher says so in one line and exits 1."""
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "model=lstm", *SHORT,
            "trainer.max_steps=4", f"hydra.sweep.dir={sweep}", "+callbacks.fault._target_=faults.SignalAt",
            "+callbacks.fault.signal=SIGTERM", "+callbacks.fault.step=2", f"+callbacks.fault.marker={tmp_path / 's'}"]
    stopped = run_lmexp(args, cwd=tmp_path, cache_dir=cache_dir, timeout=400, faults=True)
    assert stopped.returncode == 1 and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    assert "lmexp: 1 of them stopped by a signal (0-lstm-tiny); the same command continues them" in stopped.stdout
    assert json.loads((sweep / "0-lstm-tiny" / "results.json").read_text())["status"] == "interrupted"
    again = run_lmexp(args, cwd=tmp_path, cache_dir=cache_dir, timeout=400, faults=True)
    assert again.returncode == 0, again.stderr[-3000:]
    done = json.loads((sweep / "0-lstm-tiny" / "results.json").read_text())
    assert done["status"] == "finished" and done["steps"] == 4 and done["resumed_from"]


SBATCH = """#!/bin/sh
# The batch script is sbatch's last argument: keep it, then refuse as a cluster that is down would.
for script; do :; done
cp "$script" "{kept}"
echo "sbatch: error: no SLURM controller here (a test keeps the script)" >&2
exit 1
"""


def test_a_slurm_sweep_submits_the_settings_its_config_names(tmp_path, cache_dir):
    commands, kept, sweep = tmp_path / "bin", tmp_path / "submitted.sh", tmp_path / "sweep"
    commands.mkdir()
    (commands / "sbatch").write_text(SBATCH.format(kept=kept))
    (commands / "srun").write_text("#!/bin/sh\necho 'srun: not run here' >&2\nexit 1\n")  # submitit looks for it
    for program in ("sbatch", "srun"):
        (commands / program).chmod(0o755)
    result = run_lmexp(["-m", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu-long",
                        "hydra.launcher.timeout_min=720", "hydra.launcher.nodes=1", "hydra.launcher.tasks_per_node=1",
                        "hydra.launcher.gpus_per_node=1", "hydra.launcher.cpus_per_task=8", "trainer=gpu",
                        "model=rnn,lstm", *SHORT, f"hydra.sweep.dir={sweep}"], cwd=tmp_path, cache_dir=cache_dir,
                       timeout=120, commands=commands)
    assert result.returncode != 0 and "no SLURM controller here" in result.stdout + result.stderr
    script = kept.read_text()
    settings = dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", script, flags=re.M))
    assert settings["job-name"] == "lmexp"  # hydra.job.name
    assert settings["partition"] == "gpu-long" and settings["time"] == "720"
    assert (settings["nodes"], settings["ntasks-per-node"], settings["gpus-per-node"], settings["cpus-per-task"]) \
        == ("1", "1", "1", "8")
    assert settings["array"].startswith("0-1")  # one array task per job of the sweep
    assert settings["output"].startswith(f"{sweep}/.submitit/")  # the job's logs in the sweep's folder
    assert "submitit" in script  # what each array task runs: submitit's own job process
