"""The W&B sweep files in sweeps/ check and compose offline; a broken one is one line naming the
file and the parameter (lmexp/sweeps.py). Composition only: nothing trains, nothing reaches W&B."""

from pathlib import Path

import pytest
from hydra.types import RunMode
from omegaconf import OmegaConf

from conftest import ROOT, entry_point
from lmexp.errors import ConfigError
from lmexp.metrics import split_metrics
from lmexp.sweeps import METRIC_GOALS, check_sweep_file

SWEEPS = ROOT / "sweeps"
SWEEP_FILES = sorted(SWEEPS.glob("*.yaml"))


def test_the_three_sweeps_are_there():
    """The parametrized test below runs once per file found: an empty folder would pass it."""
    assert {"architectures_grid.yaml", "lstm_bayes.yaml", "gpt2_random.yaml"} <= {p.name for p in SWEEP_FILES}


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_each_sweep_file_checks_and_composes(path):
    check = check_sweep_file(path)
    assert check.values and all(check.values.values())
    for param, values in check.values.items():  # every value in some composed command line
        assert {f"{param}={v}" for v in values} <= {arg for line in check.command_lines for arg in line}, param
    assert all("logger=wandb" in line for line in check.command_lines)
    count = sum(len(v) for v in check.values.values())
    assert check.summary() == f"{path}: {len(check.values)} parameters, {count} values composed"


def test_the_metrics_a_sweep_may_optimise_are_ones_lmexp_logs():
    """module.py logs "val/" + each key of split_metrics after every validation."""
    logged = {f"val/{key}" for key in split_metrics(10.0, 5, {"tokens": 5, "words": 4, "bytes": 20})}
    assert set(METRIC_GOALS) <= logged


def one_edit(tmp_path: Path, name: str, old: str, new: str) -> Path:
    """A copy of sweeps/<name> with one edit: the real file but for that."""
    text = (SWEEPS / name).read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} is not in {name} once"
    path = tmp_path / name
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


METRIC_BLOCK = """metric:
  name: val/ppl              # logged after every validation (lmexp/module.py); lower is better
  goal: minimize
"""
# (file, text, replacement, what the message names after the file, a fragment of the fix)
BROKEN = {
    "unknown setting": ("lstm_bayes.yaml", "  model.hidden_size:", "  model.hiden_size:",
                        "parameter model.hiden_size", "did you mean model.hidden_size?"),
    "wrong type": ("lstm_bayes.yaml", "values: [0.0, 1.0e-7,", "values: [strong, 1.0e-7,",
                   "parameter regularization.l2", "regularization.l2=strong: must be of type float"),
    "missing metric": ("gpt2_random.yaml", METRIC_BLOCK, "", "metric is missing",
                       "add metric: {name: val/ppl, goal: minimize}"),
    "grid with a distribution": ("architectures_grid.yaml", "    values: [1234, 1235]",
                                 "    distribution: int_uniform\n    min: 1\n    max: 9",
                                 "parameter seed", "method grid takes values or value"),
    "log_uniform_values from 0": ("lstm_bayes.yaml", "min: 3.0e-4", "min: 0.0",
                                  "parameter optimizer.lr", "log_uniform_values needs min > 0"),
    "number YAML reads as text": ("gpt2_random.yaml", "min: 1.0e-4", "min: 1e-4",
                                  "parameter optimizer.lr", "write 1.0e-4"),
    "command without ${args_no_hyphens}": ("architectures_grid.yaml", "  - ${args_no_hyphens}", "",
                                           "command", "${args_no_hyphens} must appear once, after lmexp"),
    "command with ${args} instead": ("architectures_grid.yaml", "  - ${args_no_hyphens}", "  - ${args}",
                                     "command", "${args} passes the parameters in a form Hydra does not take"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_sweep_file_is_one_line_naming_file_and_parameter(case, tmp_path):
    name, old, new, named, fix = BROKEN[case]
    path = one_edit(tmp_path, name, old, new)
    with pytest.raises(ConfigError) as raised:
        check_sweep_file(path)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {named}"), message
    assert fix in message, message


def test_the_command_line_reports_a_broken_file_in_one_line(tmp_path, cache_dir):
    path = one_edit(tmp_path, "lstm_bayes.yaml", "min: 3.0e-4", "min: -1.0")
    result = entry_point("lmexp.sweeps", [str(path)], tmp_path, cache_dir, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lmexp: error: {path}: parameter optimizer.lr: "), result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("mode, sweeper, environ, experiment, group", [
    (RunMode.MULTIRUN, {"study_name": "lstm_optuna"}, {}, None, "lstm_optuna"),
    (RunMode.MULTIRUN, {}, {}, "compare", "outputs/multirun/2026-11-30/03-00-00"),
    (RunMode.RUN, {}, {"WANDB_SWEEP_ID": "abc123"}, "compare", "sweep-abc123"),
    (RunMode.RUN, {}, {}, "word_lm_example", "word_lm_example"),
    (RunMode.RUN, {}, {}, None, None),  # then the data's name (lmexp/run.py)
])
def test_a_runs_wandb_group_is_its_sweep_or_its_experiment(monkeypatch, mode, sweeper, environ, experiment, group):
    from lmexp.__main__ import name_the_group

    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    hydra = OmegaConf.create({"mode": mode, "sweeper": sweeper, "sweep": {"dir": "outputs/multirun/2026-11-30/03-00-00"},
                              "runtime": {"choices": {"experiment": experiment}}})
    cfg = OmegaConf.create({"logger": {"wandb": {"name": "wandb", "group": None}, "csv": {"name": "csv"}}})
    name_the_group(cfg, hydra)
    assert cfg.logger.wandb.group == group
    chosen = OmegaConf.create({"logger": {"wandb": {"name": "wandb", "group": "mine"}}})
    name_the_group(chosen, hydra)
    assert chosen.logger.wandb.group == "mine"  # the user's group stays


def test_run_names_say_the_parameter_count_in_short():
    from lmexp.run import short_count

    assert [short_count(n) for n in (999, 468_519, 4_600_000, 124_439_808, 1_500_000_000)] == \
        ["999", "469K", "4.6M", "124M", "1.5B"]


def test_a_sweep_that_maximises_perplexity_is_refused(tmp_path):
    """goal: maximize on val/ppl would have W&B's Bayesian search hunt for the worst runs."""
    from lmexp.errors import ConfigError
    from lmexp.sweeps import check_sweep_file

    source = ROOT / "sweeps" / "gpt2_random.yaml"
    text = source.read_text(encoding="utf-8")
    assert text.count("goal: minimize") == 1
    path = tmp_path / "gpt2_random.yaml"
    path.write_text(text.replace("goal: minimize", "goal: maximize"), encoding="utf-8")
    with pytest.raises(ConfigError, match="lower-is-better; set goal: minimize"):
        check_sweep_file(path)


@pytest.mark.parametrize("argv, sweeps", [
    (["-m", "model=gpt2"], True),
    (["experiment=scaling"], True),  # a preset that sets hydra.mode=MULTIRUN
    (["hparams_search=lstm_optuna", "optimizer.lr=interval(1e-4,1e-2)"], True),
    (["hydra.mode=MULTIRUN", "seed=1,2"], True),
    (["model=gpt2", "seed=1"], False),
    (["experiment=word_lm_example"], False),
    (["+experiment/scaling=lstm"], False),
    # hydra.mode=RUN after a preset that sweeps: one run. A sweep's job starts its further DDP processes
    # so (its overrides, hydra.mode=RUN, hydra.run.dir): read as a sweep, the second process of an
    # Optuna trial on two processes started a whole new search of its own.
    (["experiment=scaling", "hydra.mode=RUN"], False),
    (["hparams_search=lstm_optuna", "trainer=ddp_cpu", "hydra.mode=RUN", "hydra.run.dir=outputs/x/0-lstm-tiny",
      "hydra.job.name=train_ddp_process_1"], False),
])
def test_what_starts_a_sweep(argv, sweeps):
    from lmexp.cli import starts_a_sweep

    assert starts_a_sweep(argv) is sweeps


def test_a_folder_given_with_plus_plus_is_the_folder_given():
    """++hydra.run.dir=mine was not seen as given, and a folder of lmexp's own was claimed over it."""
    from lmexp.__main__ import given_folder

    assert given_folder(["model=gpt2", "++hydra.run.dir=mine"]) == "mine"
    assert given_folder(["-m", "++hydra.sweep.dir=mysweep"], "hydra.sweep.dir") == "mysweep"
    assert given_folder(["model=gpt2"]) is None
