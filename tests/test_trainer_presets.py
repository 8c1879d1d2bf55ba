"""The trainer= presets (one GPU, every GPU of a node, CPU processes, SLURM) and what this
machine cannot run, refused in one line before the corpus is read."""

import pytest
import torch
from lightning_fabric.plugins.environments import SLURMEnvironment

from conftest import SMALL
from lmexp.cli import compose
from lmexp.config import load_settings
from lmexp.errors import ConfigError
from lmexp.options.trainer import TrainerConfig, cpu_has_bf16
from lmexp.schema import parse
from lmexp.run import Run

# (accelerator, devices, num_nodes, strategy, precision, matmul_precision) each preset sets.
PRESETS = {
    "cpu": ("cpu", 1, 1, "auto", "32-true", None),
    "gpu": ("gpu", 1, 1, "auto", "bf16-mixed", "high"),
    "ddp": ("gpu", -1, 1, "ddp", "bf16-mixed", "high"),
    "ddp_cpu": ("cpu", 2, 1, "ddp", "32-true", None),
    "slurm": ("gpu", 1, 1, "ddp", "bf16-mixed", "high"),  # outside a SLURM job: one task on one node
    "default": ("auto", "auto", 1, "auto", "auto", None),
}


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_composes_to_its_settings(preset, monkeypatch):
    for variable in ("SLURM_NTASKS_PER_NODE", "SLURM_JOB_NUM_NODES"):
        monkeypatch.delenv(variable, raising=False)
    t = load_settings(compose([f"trainer={preset}"])).trainer
    assert (t.accelerator, t.devices, t.num_nodes, t.strategy, t.precision, t.matmul_precision) == PRESETS[preset]


def test_the_slurm_preset_takes_its_counts_from_the_job(monkeypatch):
    """sbatch's --nodes and --ntasks-per-node are the one place the counts are said."""
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    t = load_settings(compose(["trainer=slurm"])).trainer
    assert (t.devices, t.num_nodes, t.processes()) == (4, 2, 8)


def check_machine(settings: dict, environ: dict) -> None:
    parse(TrainerConfig, settings, "trainer").check_machine(environ)


def test_more_than_one_machine_needs_a_cluster_launcher():
    with pytest.raises(ConfigError, match=r"^trainer.num_nodes=2: several machines need a launcher .* or set "
                                          r"trainer.num_nodes=1$"):
        check_machine({"num_nodes": 2, "accelerator": "cpu", "precision": "32-true"}, {})
    for launcher in ({"SLURM_JOB_ID": "1234"}, {"TORCHELASTIC_RUN_ID": "abc"}):
        check_machine({"num_nodes": 2, "accelerator": "cpu", "precision": "32-true"}, launcher)


@pytest.mark.parametrize("devices,processes", [("2", 2), (" 3 ", 3), ("0,2", 2), ("1,", 1), ([0, 1, 2], 3), (2, 2)])
def test_devices_given_as_a_string_count_as_lightning_reads_them(devices, processes):
    """Lightning reads "2" as two devices and "0,2" as two indices: a run of two processes, which
    the one-process settings (skip_nonfinite) must see. A string counted as one process let it through."""
    trainer = parse(TrainerConfig, {"accelerator": "cpu", "devices": devices}, "trainer")
    assert trainer.processes() == processes
    if processes > 1:
        with pytest.raises(ConfigError, match="skip_nonfinite"):
            parse(TrainerConfig, {"accelerator": "cpu", "devices": devices, "skip_nonfinite": True}, "trainer")


def test_ddp_on_every_gpu_counts_the_gpus():
    """trainer=ddp is devices=-1: one process per CUDA device; the plan divides the step by them
    (it was -1, and every GPT-2 run under it was refused for a batch of -32 rows)."""
    trainer = load_settings(compose(["trainer=ddp"])).trainer
    assert trainer.devices == -1 and trainer.processes() == max(1, torch.cuda.device_count())
    # The default's auto and auto: Lightning takes every GPU there is, which the plan counts (the
    # config check counts one: it does not wait for torch to tell).
    default = load_settings(compose([])).trainer
    assert (default.accelerator, default.devices, default.processes()) == ("auto", "auto", 1)
    assert default.processes(exact=True) == (torch.cuda.device_count() if torch.cuda.is_available() else 1)


def test_a_gpu_the_machine_lacks_is_refused_before_the_corpus_is_read():
    settings = {"num_nodes": 1, "accelerator": "gpu", "precision": "32-true"}
    have = torch.cuda.device_count()
    if not have:
        with pytest.raises(ConfigError, match=r"^trainer.accelerator=gpu: this machine has no CUDA GPU .* set "
                                              r"trainer=cpu$"):
            check_machine({**settings, "devices": 1}, {})
    else:
        check_machine({**settings, "devices": have}, {})
        with pytest.raises(ConfigError, match=rf"^trainer.devices={have + 1}: this machine has {have} CUDA GPU"):
            check_machine({**settings, "devices": have + 1}, {})
    check_machine({**settings, "accelerator": "cpu", "devices": 4}, {})


def test_bfloat16_on_a_cpu_without_it_is_refused():
    settings = {"num_nodes": 1, "accelerator": "cpu", "precision": "bf16-mixed"}
    if cpu_has_bf16():
        check_machine(settings, {})  # a CPU with AVX-512 BF16 or AMX runs it
    else:
        with pytest.raises(ConfigError, match=r"^trainer.precision=bf16-mixed: this CPU has no bfloat16 arithmetic"):
            check_machine(settings, {})
    check_machine({**settings, "precision": "32-true"}, {})


def test_a_single_run_under_slurm_takes_lightnings_slurm_environment(monkeypatch, cache_dir, tmp_path):
    """What srun gives each task of a one-node, one-task job: Lightning reads the ranks from it.
    matmul_precision reaches torch when the trainer is built."""
    job = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "lmexp", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
           "SLURM_JOB_NUM_NODES": "1", "SLURM_NODELIST": "127.0.0.1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
           "SLURM_NODEID": "0"}
    for name, value in job.items():
        monkeypatch.setenv(name, value)
    run = Run.from_config(compose([*SMALL, "trainer=slurm", "trainer.accelerator=cpu", "trainer.precision=32-true",
                                   "logger=none", f"paths.cache_dir={cache_dir}"]))
    before = torch.get_float32_matmul_precision()
    try:
        trainer = run.trainer(tmp_path, callbacks=[], loggers=[])
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)
    environment = trainer.strategy.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and environment.job_id() == 4242
    assert (environment.world_size(), environment.global_rank(), trainer.num_nodes) == (1, 0, 1)
