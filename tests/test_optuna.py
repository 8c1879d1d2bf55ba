"""Optuna searches (``hparams_search=``, the sweeper in hydra_plugins/): a real study in SQLite,
real trials through ``python -m lmexp``, stopped by a signal or a kill and resumed, and pruned."""

import json
from functools import partial
from types import SimpleNamespace

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import HydraContext
from omegaconf import OmegaConf

from conftest import SMALL, run_lmexp
from hydra_plugins.lmexp_optuna_sweeper.optuna_sweeper import (INTERRUPTED, OptunaSweeper, absolute_storage,
                                                                consecutive, search_space, suggest)
from lmexp.cli import compose as compose_run
from lmexp.config import CONF_DIR, load_settings
from lmexp.errors import ConfigError

PRESETS = sorted(p.stem for p in (CONF_DIR / "hparams_search").glob("*.yaml"))

# Two validations per trial (what the pruner compares), in a few seconds.
BUDGET = ["trainer.max_epochs=2", "trainer.limit_train_batches=6", "trainer.limit_val_batches=2",
          "trainer.limit_test_batches=2"]


def study_in(sweep) -> optuna.Study:
    return optuna.load_study(study_name="lstm_optuna", storage=f"sqlite:///{sweep / 'optuna.db'}")


def results_of(sweep, number: int) -> dict:
    (job,) = sweep.glob(f"{number}-*")
    return json.loads((job / "results.json").read_text())


def test_search_space_is_written_as_hydras_optuna_sweeper_writes_it():
    space, fixed = search_space(["optimizer.lr=tag(log, interval(1e-4, 1e-2))", "model.hidden_size=choice(64, 128)",
                                 "model.num_layers=range(1, 4)", "regularization.dropout=interval(0, 0.5)",
                                 "data.bptt=range(16, 64, 16)", "model=choice(lstm, gru)", "seed=7"])
    lr, hidden, layers, dropout, bptt, model = (space[k] for k in ("optimizer.lr", "model.hidden_size",
                                                                   "model.num_layers", "regularization.dropout",
                                                                   "data.bptt", "model"))
    assert (lr.low, lr.high, lr.log) == (1e-4, 1e-2, True)
    assert hidden.choices == (64, 128) and model.choices == ("lstm", "gru")
    assert (layers.low, layers.high, layers.step) == (1, 3, 1)  # range() leaves out its stop, as Python's
    assert (bptt.low, bptt.high, bptt.step) == (16, 48, 16)
    assert (dropout.low, dropout.high, dropout.log) == (0.0, 0.5, False)
    assert fixed == ["seed=7"]


def test_the_command_line_fixes_or_replaces_what_a_preset_searches():
    space, fixed = search_space(["model.hidden_size=choice(64, 128)", "optimizer.lr=interval(0.1, 1)",
                                 "model.hidden_size=32", "optimizer.lr=choice(0.5, 1.0)"])
    assert fixed == ["model.hidden_size=32"] and list(space) == ["optimizer.lr"]
    assert space["optimizer.lr"].choices == (0.5, 1.0)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_presets_trials_compose_into_valid_runs(preset):
    """A preset's search space, drawn from 6 times: each draw is a run the config accepts (a
    misspelt key or a value out of range fails here, not hours into a search)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        sweeper = compose("config", overrides=[f"hparams_search={preset}"], return_hydra_config=True).hydra.sweeper
    assert sweeper.study_name == preset and sweeper.n_trials > 0
    space, fixed = search_space([f"{k}={v}" for k, v in sweeper.params.items()])
    assert space and not fixed
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(6):
        trial = study.ask()
        settings = load_settings(compose_run([f"hparams_search={preset}", *suggest(trial, space)]))
        for key, value in trial.params.items():
            group, name = key.split(".", 1)
            assert getattr(getattr(settings, group), name) == value
        study.tell(trial, 1.0)


def test_trials_numbered_apart_are_launched_apart():
    trials = [type("T", (), {"number": n})() for n in (3, 4, 6, 7, 9)]
    assert [[t.number for t in run] for run in consecutive(trials)] == [[3, 4], [6, 7], [9]]


def search(sweep, tmp_path, n_trials: int, *more: str) -> list[str]:
    return ["hparams_search=lstm_optuna", f"hydra.sweeper.n_trials={n_trials}", *SMALL, *BUDGET,
            f"hydra.sweep.dir={sweep}", *more]


def stop_at_step_3(tmp_path, signal: str) -> list[str]:
    return ["+callbacks.stop._target_=faults.SignalAt", f"+callbacks.stop.signal={signal}", "+callbacks.stop.step=3",
            f"+callbacks.stop.marker={tmp_path / 'signalled'}"]  # once: the resumed search is not signalled


def test_a_search_stopped_by_ctrl_c_resumes_from_its_study_and_tries_the_stopped_settings_again(tmp_path,
                                                                                                  cache_dir):
    sweep = tmp_path / "search"
    args = search(sweep, tmp_path, 3, *stop_at_step_3(tmp_path, "SIGINT"))
    stopped = run_lmexp(["-m", *args], cwd=tmp_path, cache_dir=cache_dir, faults=True)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert results_of(sweep, 0)["status"] == "interrupted"
    first, again = study_in(sweep).trials
    assert first.state == TrialState.FAIL and again.state == TrialState.WAITING
    assert again.system_attrs["fixed_params"] == first.params  # enqueued: asked next, with these settings
    # The stop line says how to go on: with the search. resume= on the trial's folder would report
    # to a trial that has ended (Optuna's traceback at its first validation until 2026-12-02).
    assert f"continue with the sweep's command and hydra.sweep.dir={sweep}" in stopped.stdout
    (job,) = sweep.glob("0-*")
    alone = run_lmexp([f"resume={job}"], cwd=tmp_path, cache_dir=cache_dir, faults=True)
    assert (alone.returncode, alone.stderr.splitlines()[-1:]) == (2, [
        "lmexp: error: callbacks.pruning.trial=0: trial 0 of study 'lstm_optuna' has ended (FAIL); a search "
        "tries a stopped trial's settings again as a new trial: continue with the search's command and its "
        "hydra.sweep.dir"]), alone.stderr[-3000:]

    resumed = run_lmexp(["-m", *args], cwd=tmp_path, cache_dir=cache_dir, faults=True)
    assert resumed.returncode == 0 and "Traceback" not in resumed.stderr, resumed.stderr[-3000:]
    assert "Optuna study lstm_optuna in" in resumed.stdout and "0 of 3 trials done" in resumed.stdout
    trials = study_in(sweep).trials
    assert [t.state for t in trials] == [TrialState.FAIL, *[TrialState.COMPLETE] * 3]
    assert trials[1].params == trials[0].params and trials[2].params != trials[1].params
    for trial in trials[1:]:
        results = results_of(sweep, trial.number)
        # the study holds what the job found: its best validation perplexity, each validation's
        assert trial.value == results["best_val_ppl"] and results["optuna_trial"] == trial.number
        assert sorted(trial.intermediate_values) == [1, 2]
        assert min(trial.intermediate_values.values()) == pytest.approx(trial.value, rel=1e-6)
        (job,) = sweep.glob(f"{trial.number}-*")
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        assert {f"{k}={v}" for k, v in trial.params.items()} <= set(overrides)
        assert f"callbacks.pruning.trial={trial.number}" in overrides and "model.hidden_size=32" in overrides
    summary = (sweep / "summary.md").read_text()
    assert "4 jobs: 3 done, 1 interrupted." in summary


def test_a_study_continued_with_another_search_is_refused_in_one_line(tmp_path, cache_dir):
    """The same sweep folder (its optuna.db, the same study name) given another search space or
    other fixed settings would mix two searches in one study: refused before any trial; the
    search it began goes on."""
    sweep = tmp_path / "search"
    first = run_lmexp(["-m", *search(sweep, tmp_path, 1)], cwd=tmp_path, cache_dir=cache_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    for other, differ in ((["optimizer.lr=choice(0.1, 0.2)"], "optimizer.lr differ"),
                          (["regularization.dropout=0.3"], "regularization.dropout differ")):
        refused = run_lmexp(["-m", *search(sweep, tmp_path, 2, *other)], cwd=tmp_path, cache_dir=cache_dir)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
        assert refused.stderr.strip().splitlines()[-1].startswith(
            "lmexp: error: hydra.sweeper.study_name=lstm_optuna: that study in ") and differ in refused.stderr
    assert len(study_in(sweep).trials) == 1
    again = run_lmexp(["-m", *search(sweep, tmp_path, 2)], cwd=tmp_path, cache_dir=cache_dir)
    assert again.returncode == 0 and "1 of 2 trials done" in again.stdout, again.stderr[-3000:]
    assert [t.state for t in study_in(sweep).trials] == [TrialState.COMPLETE] * 2


def test_a_trial_a_kill_left_running_in_this_sweep_is_tried_again(tmp_path):
    """A search killed with SIGKILL leaves its trial "running" in the study (nobody told it
    otherwise). Started again, the sweeper fails it, does not count it, and enqueues its settings;
    a running trial with no job folder here is another machine's, and is left alone."""
    from hydra_plugins.lmexp_optuna_sweeper.optuna_sweeper import OptunaSweeper

    sweep = tmp_path / "search"
    (sweep / "0-lstm-tiny").mkdir(parents=True)
    study = optuna.create_study(study_name="lstm_optuna", storage=f"sqlite:///{sweep / 'optuna.db'}")
    distribution = optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    killed, elsewhere = study.ask({"optimizer.lr": distribution}), study.ask({"optimizer.lr": distribution})
    sweeper = OptunaSweeper(study_name="lstm_optuna", storage=f"sqlite:///{sweep / 'optuna.db'}", n_trials=3)
    sweeper.sweep_dir = sweep
    sweeper._retry_stopped(study)
    first, other, again = study_in(sweep).trials
    assert (first.state, other.state, again.state) == (TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)
    assert again.system_attrs["fixed_params"] == killed.params and killed.number == 0 and elsewhere.number == 1
    assert sweeper._finished(study_in(sweep)) == 0  # the killed trial is not one of the n_trials


def test_a_trial_worse_than_the_median_is_pruned(tmp_path, cache_dir):
    """Three finished trials of perplexity 1 at every validation: the next one, worse at its
    second validation, stops there, and says so in its results.json, the study and the summary.
    The sweep's folder has a name the override grammar must be given quoted (the trials' study
    path was not, before 2026-11-30, and no trial composed)."""
    sweep = tmp_path / "a search, é (1)"
    sweep.mkdir()
    study = optuna.create_study(study_name="lstm_optuna", storage=f"sqlite:///{sweep / 'optuna.db'}")
    for _ in range(3):
        study.add_trial(optuna.trial.create_trial(value=1.0, intermediate_values={1: 1.0, 2: 1.0, 3: 1.0}))
    budget = ["trainer.max_epochs=3", "trainer.limit_train_batches=6", "trainer.limit_val_batches=2",
              "trainer.limit_test_batches=2"]
    args = ["-m", "hparams_search=lstm_optuna", "hydra.sweeper.n_trials=4", *SMALL, *budget,
            f"hydra.sweep.dir='{sweep}'"]
    result = run_lmexp(args, cwd=tmp_path, cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    pruned = study_in(sweep).trials[3]
    assert pruned.state == TrialState.PRUNED and sorted(pruned.intermediate_values) == [1, 2]
    results = results_of(sweep, 3)
    assert results["status"] == "pruned" and results["pruned_at_validation"] == 2 and results["epochs"] == 2
    assert "Optuna trial 3 pruned after validation 2" in result.stdout
    assert "1 job: 0 done, 1 pruned." in (sweep / "summary.md").read_text()


def test_mistakes_in_a_search_are_one_line(tmp_path, cache_dir):
    for args, said in ((["hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0: must be a positive integer"),
                       # each value listed is composed before the search starts
                       (["model.hiden_size=choice(1,2)"], "model.hiden_size is not a setting; did you mean "
                                                           "model.hidden_size?"),
                       # an interval is the sampler's: the search composes the trial it draws
                       (["model.hiden_size=interval(1,2)"], "a trial's settings do not compose: Could not override "
                                                             "'model.hiden_size'")):
        result = run_lmexp(["-m", "hparams_search=lstm_optuna", f"hydra.sweep.dir={tmp_path / 'search'}", *args],
                           cwd=tmp_path, cache_dir=cache_dir)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"lmexp: error: {said}" in result.stderr


def test_a_trial_stopped_in_a_process_of_its_own_is_asked_again(tmp_path, cache_dir):
    """Under submitit a job stopped by a signal returns, with an interrupted results.json: the
    study counted it as a failed trial and the same command ran nothing more ('1 of 1 trials
    done'), though the search had said the same command continues it."""
    sweep = tmp_path / "search"
    args = ["-m", *search(sweep, tmp_path, 1, *stop_at_step_3(tmp_path, "SIGTERM")), "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=10"]
    stopped = run_lmexp(args, cwd=tmp_path, cache_dir=cache_dir, faults=True, timeout=400)
    assert stopped.returncode == 1 and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    assert "1 of them stopped by a signal (0-lstm-tiny)" in stopped.stdout
    (first, again) = study_in(sweep).trials
    assert first.state == TrialState.FAIL and again.state == TrialState.WAITING
    assert again.system_attrs["fixed_params"] == first.params  # enqueued: asked next, with these settings
    resumed = run_lmexp(args, cwd=tmp_path, cache_dir=cache_dir, faults=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [t.state for t in study_in(sweep).trials] == [TrialState.FAIL, TrialState.COMPLETE]


@pytest.mark.parametrize("override, says", [
    ("optimizer.lr=interval(1e-2,1e-4)", "optimizer.lr=interval(1e-2,1e-4): `low <= high` must hold"),
    ("hydra.sweeper.direction=up", "hydra.sweeper.direction=up: must be minimize or maximize"),
    ("hydra.sweeper.seed=abc", "hydra.sweeper.seed=abc: must be an integer"),
    ("hydra.sweeper.storage=foo://bar", "hydra.sweeper.storage=foo://bar: "),
])
def test_a_bad_search_setting_is_one_line(override, says, tmp_path, cache_dir):
    result = run_lmexp(["-m", *search(tmp_path / "search", tmp_path, 1), override], cwd=tmp_path, cache_dir=cache_dir)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith(f"lmexp: error: {says}")


def test_a_mistyped_key_leaves_the_study_to_the_mended_search(tmp_path, cache_dir):
    """A searched key that does not compose recorded the search and a failed trial that never ran:
    the command mended afterwards was refused as another search, its study counting that trial."""
    sweep = tmp_path / "search"
    typo = run_lmexp(["-m", *search(sweep, tmp_path, 1), "regularization.embed_dropot=interval(0.0,0.2)"], cwd=tmp_path,
                     cache_dir=cache_dir)
    assert typo.returncode == 2 and "a trial's settings do not compose" in typo.stderr, typo.stderr[-3000:]
    mended = run_lmexp(["-m", *search(sweep, tmp_path, 1), "regularization.embed_dropout=interval(0.0,0.2)"], cwd=tmp_path,
                       cache_dir=cache_dir)
    assert mended.returncode == 0, mended.stderr[-3000:]
    assert [t.state for t in study_in(sweep).trials] == [TrialState.FAIL, TrialState.COMPLETE]


def test_a_range_with_a_float_step_is_a_float_range():
    space, _ = search_space(["regularization.dropout=range(0,1,0.25)"])
    d = space["regularization.dropout"]
    assert (d.low, d.high, d.step) == (0.0, 0.75, 0.25)


def test_a_relative_sqlite_storage_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_storage("sqlite:///search/optuna.db") == f"sqlite:///{tmp_path}/search/optuna.db"
    assert absolute_storage(f"sqlite:///{tmp_path}/x.db") == f"sqlite:///{tmp_path}/x.db"


def test_a_boolean_seed_is_refused(tmp_path):
    sweeper = OptunaSweeper("s", f"sqlite:///{tmp_path / 'o.db'}", n_trials=1, seed=True)
    sweeper.sweep_dir = tmp_path / "search"
    with pytest.raises(ConfigError, match="hydra.sweeper.seed=True: must be an integer"):
        sweeper._search([])


# --- the sweeper's own steps, with Hydra's real config loader and a launcher that finds a
# perplexity for each job (its optimizer.lr) --------------------------------------------------
def job_with(folder, results):
    """A job as a launcher returns it: its hydra config names its folder, which holds results.json."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results))
    return SimpleNamespace(hydra_cfg=OmegaConf.create({"hydra": {"runtime": {"output_dir": str(folder)}}}))


@pytest.mark.parametrize("status", ["failed", "diverged", "out_of_memory"])
def test_a_job_that_did_not_finish_is_a_failed_trial_whatever_perplexity_it_wrote(tmp_path, status):
    """A run that failed or diverged after some validations writes their best_val_ppl too: the
    study must not rank it as a completed trial."""
    job = job_with(tmp_path / "0-lstm", {"status": status, "best_val_ppl": 5.0})
    assert OptunaSweeper._outcome(job) == (TrialState.FAIL, None)
    finished = job_with(tmp_path / "1-lstm", {"status": "finished", "best_val_ppl": 5.0})
    assert OptunaSweeper._outcome(finished) == (TrialState.COMPLETE, 5.0)


class FoundLauncher:
    """Hydra's launcher interface: each job "finds" a perplexity of its optimizer.lr, written to its
    folder's results.json as a run writes it."""

    def __init__(self, root):
        self.root, self.launched = root, []

    def launch(self, overrides, initial_job_idx):
        jobs = []
        for number, job in enumerate(overrides, start=initial_job_idx):
            settings = dict(o.split("=", 1) for o in job)
            self.launched.append(number)
            jobs.append(job_with(self.root / f"{number}-lstm",
                                 {"status": "finished", "best_val_ppl": float(settings["optimizer.lr"])}))
        return jobs


@pytest.fixture
def sweeper_for(tmp_path):
    """An OptunaSweeper set up as Hydra sets it up (the real config loader composes each batch),
    its jobs run by a FoundLauncher, its study in tmp_path's SQLite file."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = compose("config", overrides=["hparams_search=lstm_optuna"], return_hydra_config=True)
        context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=None)

        def make(**settings):
            sweeper = OptunaSweeper(study_name="lstm_optuna", storage=f"sqlite:///{tmp_path / 'search' / 'optuna.db'}",
                                    **{"params": {"optimizer.lr": "interval(0.1, 1.0)"},
                                       "sampler": partial(optuna.samplers.RandomSampler), **settings})
            sweeper.config, sweeper.hydra_context = config, context
            sweeper.sweep_dir = tmp_path / "search"
            sweeper.launcher = FoundLauncher(sweeper.sweep_dir)
            return sweeper

        yield make


PRESET = ["hparams_search=lstm_optuna"]  # a fixed override, as on the command line: it adds callbacks.pruning


def test_a_search_told_to_maximize_maximizes(sweeper_for, tmp_path):
    sweeper = sweeper_for(n_trials=3, direction="maximize")
    sweeper._search(PRESET)
    study = study_in(tmp_path / "search")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert study.best_value == max(t.value for t in study.trials)


def test_a_last_batch_asks_only_for_the_trials_left(sweeper_for, tmp_path):
    """n_trials=3 in batches of n_jobs=2: 2 jobs, then 1 (not 2: a fourth trial run past n_trials)."""
    sweeper = sweeper_for(n_trials=3, n_jobs=2)
    returns = sweeper._search(PRESET)
    assert len(returns) == 3 and sweeper.launcher.launched == [0, 1, 2]
    assert [t.state for t in study_in(tmp_path / "search").trials] == [TrialState.COMPLETE] * 3


def test_settings_that_do_not_compose_are_failed_and_not_asked_again(sweeper_for, tmp_path):
    """A trial whose settings do not compose never ran: it is failed, not counted, and its
    settings are not enqueued (asked again, they would fail again, and a mended search would draw them)."""
    sweeper = sweeper_for(n_trials=2, n_jobs=2)
    with pytest.raises(ConfigError, match="a trial's settings do not compose"):
        sweeper._search([*PRESET, "model.hiden_size=interval(1, 2)"])
    study = study_in(tmp_path / "search")
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    assert sweeper.launcher.launched == []
    assert sorted(study.user_attrs[INTERRUPTED]) == [0, 1]  # not counted among n_trials
    assert not study.get_trials(states=(TrialState.WAITING,))


def test_a_trial_that_ended_is_not_stopped_again(tmp_path):
    """At a signal every trial of the batch is stopped, those already told too: a trial that ended
    keeps its outcome and counts, and is not asked again."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}")
    done = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study.tell(done, 2.0)
    running = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    for trial in (done, running):
        OptunaSweeper._stopped(study, trial.number)
    first, second, again = study.trials
    assert (first.state, first.value) == (TrialState.COMPLETE, 2.0)
    assert (second.state, again.state) == (TrialState.FAIL, TrialState.WAITING)
    assert again.system_attrs["fixed_params"] == running.params
    assert study.user_attrs[INTERRUPTED] == [running.number] and OptunaSweeper._finished(study) == 1
