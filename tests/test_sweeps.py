"""The W&B sweep files in sweeps/ check and compose offline; a broken one is one line naming the
file and the parameter (lmexp/sweeps.py). Composition only: nothing trains, nothing reaches W&B."""

import math
from pathlib import Path

import pytest
import yaml
from hydra.types import RunMode
from omegaconf import OmegaConf

from conftest import ROOT, entry_point
from lmexp.cli import compose
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


# --- sweep files written for one check each: a minimal valid file, one part changed ----------
COMMAND = ["${env}", "${interpreter}", "-m", "lmexp", "logger=wandb", "${args_no_hyphens}"]


def sweep_file(tmp_path, parameters, **top):
    sweep = {"program": "lmexp/__main__.py", "method": "random", "metric": {"name": "val/ppl", "goal": "minimize"},
             "parameters": parameters, "command": COMMAND, **top}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep), encoding="utf-8")
    return path


def refused(tmp_path, parameters, says, **top):
    with pytest.raises(ConfigError) as raised:
        check_sweep_file(sweep_file(tmp_path, parameters, **top))
    assert says in str(raised.value), str(raised.value)


def test_an_integer_q_gives_integer_multiples_of_q(tmp_path):
    check = check_sweep_file(sweep_file(tmp_path, {"model.hidden_size": {"distribution": "q_uniform", "min": 100,
                                                                         "max": 500, "q": 64}}))
    assert check.values["model.hidden_size"] == [128, 512]
    assert all(type(v) is int for v in check.values["model.hidden_size"])
    assert "model.hidden_size=128" in check.command_lines[0]


def test_a_normal_distribution_is_composed_at_two_standard_deviations(tmp_path):
    check = check_sweep_file(sweep_file(tmp_path, {"regularization.dropout": {"distribution": "normal", "mu": 0.3,
                                                                              "sigma": 0.05}}))
    assert check.values["regularization.dropout"] == pytest.approx([0.2, 0.4])


def test_a_beta_distribution_is_composed_at_its_mean(tmp_path):
    check = check_sweep_file(sweep_file(tmp_path, {"regularization.dropout": {"distribution": "beta", "a": 1.0,
                                                                              "b": 3.0}}))
    assert check.values["regularization.dropout"] == pytest.approx([0.25])


def test_inv_log_uniform_takes_negated_exponents(tmp_path):
    check = check_sweep_file(sweep_file(tmp_path, {"optimizer.lr": {"distribution": "inv_log_uniform", "min": 4.0,
                                                                    "max": 8.0}}))
    assert check.values["optimizer.lr"] == pytest.approx([math.exp(-8.0), math.exp(-4.0)])


def test_a_zero_sigma_is_taken(tmp_path):
    check = check_sweep_file(sweep_file(tmp_path, {"regularization.dropout": {"distribution": "normal", "mu": 0.3,
                                                                              "sigma": 0.0}}))
    assert check.values["regularization.dropout"] == pytest.approx([0.3, 0.3])


@pytest.mark.parametrize("entry, says", [
    ({"distribution": "int_uniform", "min": 1.5, "max": 9}, "int_uniform needs integer bounds"),
    ({"distribution": "uniform", "min": 7, "max": 7}, "min (7) must be below max (7)"),
    ({"distribution": "q_uniform", "min": 1, "max": 9, "q": 0}, "q: 0 must be > 0"),
])
def test_a_distribution_that_cannot_draw_is_refused(entry, says, tmp_path):
    refused(tmp_path, {"seed": entry}, says)


@pytest.mark.parametrize("top, says", [
    ({"metric": {"name": "val/ppl", "goal": "minimize", "target": "low"}}, "metric.target: 'low' is not a number"),
    ({"early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 1}}, "early_terminate.eta: 1 is not a number above 1"),
    ({"early_terminate": {"min_iter": 1}}, "early_terminate.type: None: W&B's only kind is hyperband"),
    ({"command": [*COMMAND, "${args_no_hyphens}"]}, "${args_no_hyphens} must appear once, after lmexp (found 2"),
    ({"command": ["${env}", "${interpreter}", "${args_no_hyphens}", "-m", "lmexp", "logger=wandb"]},
     "${args_no_hyphens} must appear once, after lmexp (found 1, 0 after lmexp)"),
    ({"command": [*COMMAND[:-1], "model", "${args_no_hyphens}"]}, "'model': after lmexp the command takes only key=value"),
])
def test_a_sweep_file_w_and_b_would_run_badly_is_refused(top, says, tmp_path):
    refused(tmp_path, {"seed": {"values": [1, 2]}}, says, **top)


@pytest.mark.parametrize("entry, says", [
    ({"values": [0.1, 0.2], "probabilities": [1.2, -0.2]}, "probabilities must list one non-negative number per value"),
    ({"values": [0.1, 0.2], "probabilities": [1.0]}, "probabilities must list one non-negative number per value"),
    ({"values": [0.1, None]}, "null reaches lmexp as the text None"),
    ({"values": [0.1, {"a": 1}]}, "reaches the command as a Python dict"),
    ({"value": 0.1, "values": [0.1, 0.2]}, "has both value and values"),
    ({"parameters": {"x": {"values": [1]}}}, "nested parameters reach the command as one Python dict"),
    ({"values": [0.1, 0.2], "distribution": "uniform"}, "values goes with distribution categorical, not uniform"),
])
def test_a_parameter_w_and_b_would_pass_badly_is_refused(entry, says, tmp_path):
    refused(tmp_path, {"regularization.dropout": entry}, says)


def test_a_setting_both_the_command_and_a_parameter_set_is_refused(tmp_path):
    refused(tmp_path, {"seed": {"values": [1, 2]}}, "parameter seed: the command sets it too",
            command=[*COMMAND[:-1], "seed=3", "${args_no_hyphens}"])


def test_runs_that_would_not_log_to_w_and_b_are_refused(tmp_path):
    refused(tmp_path, {"seed": {"values": [1, 2]}}, "so W&B would never see the metric",
            command=[*COMMAND[:-2], "logger=csv", "${args_no_hyphens}"])


def test_a_commands_bad_override_is_blamed_on_the_command(tmp_path):
    with pytest.raises(ConfigError) as raised:
        check_sweep_file(sweep_file(tmp_path, {"seed": {"values": [1, 2]}},
                                    command=[*COMMAND[:-1], "trainer.max_epochs=abc", "${args_no_hyphens}"]))
    assert str(raised.value).startswith(f"{tmp_path / 'sweep.yaml'}: command: "), str(raised.value)


@pytest.mark.parametrize("top, says", [({"run_cap": 0}, "run_cap: 0 is not a positive integer")])
def test_a_top_level_value_out_of_range_is_refused(top, says, tmp_path):
    refused(tmp_path, {"seed": {"values": [1, 2]}}, says, **top)


def test_a_file_that_is_not_a_mapping_is_one_line(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("- program\n- method\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="this one holds list"):
        check_sweep_file(path)


def test_a_failed_jobs_results_json_names_the_run_as_a_finished_ones_does(tmp_path):
    """The scaling report and a sweep's summary key runs by model, data, tokenizer and seed: a failed
    job's record has each, the seed included."""
    import json

    from lmexp.__main__ import record_failure

    record_failure(compose(["model=gru", "seed=7"]), tmp_path / "job", "boom")
    record = json.loads((tmp_path / "job" / "results.json").read_text())
    assert record == {"status": "failed", "error": "boom", "model": "gru", "data": record["data"],
                      "tokenizer": record["tokenizer"], "seed": 7}
    assert record["data"] and record["tokenizer"]


def test_a_count_of_exactly_a_thousand_a_million_a_billion_takes_the_unit():
    from lmexp.run import short_count

    assert [short_count(n) for n in (1000, 10**6, 10**9)] == ["1K", "1M", "1B"]
