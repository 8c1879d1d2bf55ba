"""``hydra/sweeper=optuna`` (conf/hydra/sweeper/optuna.yaml; the presets in conf/hparams_search/):
a Hydra sweeper that asks an Optuna study for each job's settings and tells it what the job found.

Written here rather than taken from ``hydra-optuna-sweeper``, which pins optuna<3 (2021) and
cannot prune: its jobs are never given their trial. Each job here knows its trial
(``callbacks.pruning.trial=N`` and the study, added to the job's overrides) and reports each validation to the
study itself (lmexp/pruning.py), so pruning works with any launcher, in-process or SLURM.

The study lives in the sweep folder's ``optuna.db`` (SQLite) unless ``hydra.sweeper.storage``
names another, and ``n_trials`` counts the study's finished trials: the same command with the
stopped sweep's ``hydra.sweep.dir`` carries on where it stopped, and several machines given one
storage share the work. A trial stopped by a signal or a kill is not counted: its settings are
tried again. The search space is written as the Hydra Optuna sweeper's is (``choice``, ``range``,
``interval``, ``tag(log, interval(...))``), so its users' presets carry over.

Hydra imports this module at every start (it scans hydra_plugins), so Optuna is imported only
when a sweep begins.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from lmexp.cli import quoted

log = logging.getLogger("lmexp")

INTERRUPTED = "interrupted"  # a study's user attribute: the trials stopped by a signal or kill, tried again
SEARCH = "lmexp_search"  # a study's user attribute: the search space and fixed overrides it was made for


def search_space(arguments: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Overrides (``key=value`` strings) -> ({key: Optuna distribution}, fixed overrides). A key's
    last override wins: ``model.hidden_size=512`` on the command line fixes what a preset searches."""
    from lmexp.errors import ConfigError

    chosen: dict[str, Any] = {}
    for override in OverridesParser.create().parse_overrides(list(arguments)):
        key, value = override.get_key_element(), override.value()
        chosen.pop(key, None)
        try:
            chosen[key] = _distribution(override, key, value)
        except ValueError as e:  # Optuna's: a low above its high, a log scale from 0, no choices
            raise ConfigError(f"{override.input_line}: {' '.join(str(e).split())}") from None
    return ({k: v for k, v in chosen.items() if not isinstance(v, str)},
            [v for v in chosen.values() if isinstance(v, str)])


def _distribution(override: Override, key: str, value: Any) -> Any:
    """An override's Optuna distribution, or the override itself (text) where it fixes the key."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not override.is_sweep_override():
        return f"{key}={override.get_value_element_as_str()}"
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        return CategoricalDistribution(_choices(override))
    if override.is_range_sweep():
        is_float = any(isinstance(x, float) for x in (value.start, value.stop, value.step))
        last = value.stop - value.step  # range() excludes its stop; Optuna's high is included
        return (FloatDistribution(value.start, last, step=value.step) if is_float
                else IntDistribution(int(value.start), int(last), step=int(value.step)))
    # interval(low, high), tag(log, interval(low, high))
    log_scale = "log" in value.tags
    is_int = isinstance(value.start, int) and isinstance(value.end, int)
    return (IntDistribution(value.start, value.end, log=log_scale) if is_int
            else FloatDistribution(value.start, value.end, log=log_scale))


def _choices(override: Override) -> list:
    return list(override.sweep_iterator(transformer=Transformer.encode))


def suggest(trial: Any, space: dict[str, Any]) -> list[str]:
    """The trial's value for each searched key, as overrides."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    chosen = []
    for key, d in space.items():
        if isinstance(d, CategoricalDistribution):
            value = trial.suggest_categorical(key, d.choices)
        elif isinstance(d, IntDistribution):
            value = trial.suggest_int(key, d.low, d.high, step=d.step, log=d.log)
        else:
            value = trial.suggest_float(key, d.low, d.high, step=d.step, log=d.log)
        chosen.append(f"{key}={value}")
    return chosen


def absolute_storage(storage: str) -> str:
    """A SQLite URL with a relative path, made absolute: jobs that run elsewhere find the same file."""
    prefix = "sqlite:///"
    if storage.startswith(prefix) and not storage.startswith(prefix + "/"):
        return prefix + str(Path(storage[len(prefix):]).absolute())
    return storage


def consecutive(trials: list) -> list[list]:
    """Trials split into runs of consecutive numbers (another machine sharing the study may
    take numbers in between): each run is launched as job numbers equal to its trial numbers."""
    runs: list[list] = []
    for trial in trials:
        if runs and trial.number == runs[-1][-1].number + 1:
            runs[-1].append(trial)
        else:
            runs.append([trial])
    return runs


class OptunaSweeper(Sweeper):
    def __init__(self, study_name: str, storage: str, n_trials: int, n_jobs: int = 1, direction: str = "minimize",
                 seed: int = 1234, sampler: Any = None, params: Optional[DictConfig] = None) -> None:
        # The pruner is the jobs' (callbacks.pruning): they decide, each after its validations.
        self.study_name, self.storage = study_name, storage
        self.n_trials, self.n_jobs, self.direction, self.seed = n_trials, n_jobs, direction, seed
        self.sampler = sampler  # Hydra's partial of its _target_, given its seed here
        self.params = dict(params or {})

    def _sampler(self, study: Any) -> Any:
        """The sampler, seeded with ``seed`` plus the trials the study already has: a resumed
        search draws new settings, not the ones it drew when it started (a seeded sampler made
        afresh repeats its first draws)."""
        if callable(self.sampler):
            return self.sampler(seed=self.seed + len(study.get_trials(deepcopy=False)))
        return self.sampler

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)
        self.sweep_dir = Path(config.hydra.sweep.dir)

    def sweep(self, arguments: list[str]) -> list:
        from lmexp.errors import reported_as_one_line

        with reported_as_one_line():  # Hydra would print a mistake in the search's settings as a traceback
            return self._search(arguments)

    def _search(self, arguments: list[str]) -> list:
        import optuna

        from lmexp.errors import ConfigError

        for key in ("n_trials", "n_jobs"):
            value = getattr(self, key)
            if not (isinstance(value, int) and value > 0):
                raise ConfigError(f"hydra.sweeper.{key}={value}: must be a positive integer")
        if self.direction not in ("minimize", "maximize"):
            raise ConfigError(f"hydra.sweeper.direction={self.direction}: must be minimize or maximize")
        if not (isinstance(self.seed, int) and not isinstance(self.seed, bool)):
            raise ConfigError(f"hydra.sweeper.seed={self.seed}: must be an integer")
        space, fixed = search_space([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        try:
            study = optuna.create_study(study_name=self.study_name, storage=absolute_storage(self.storage),
                                        direction=self.direction, load_if_exists=True)
        except Exception as e:  # a storage URL it cannot open: Optuna's or SQLAlchemy's own error
            raise ConfigError(f"hydra.sweeper.storage={self.storage}: {' '.join(str(e).split())[:300]}") from None
        self._same_search(study, space, fixed)
        study.sampler = self._sampler(study)
        self._retry_stopped(study)
        log.info("Optuna study %s in %s: %d of %d trials done", self.study_name, self.storage,
                 self._finished(study), self.n_trials)
        returns = []
        while (left := self.n_trials - self._finished(study)) > 0:
            batch = [study.ask() for _ in range(min(self.n_jobs, left))]
            runs = [(run, [(*fixed, *suggest(t, space), *self._trial_of(t)) for t in run]) for run in consecutive(batch)]
            try:
                for _, overrides in runs:
                    self.validate_batch_is_legal(overrides)
            except Exception as e:  # a setting of the search space that does not compose: no trial can run
                for trial in batch:  # never run: not counted, and not asked again
                    self._stopped(study, trial.number, again=False)
                if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
                    study.set_user_attr(SEARCH, None)  # a search that never ran: the mended one may take its study
                raise ConfigError(f"a trial's settings do not compose: {' '.join(str(e).split())}") from None
            stopped = False
            try:
                for run, overrides in runs:
                    for trial, job in zip(run, self.launcher.launch(overrides, initial_job_idx=run[0].number)):
                        state, value = self._outcome(job)
                        if state is None:  # a job of its own process (submitit's) stopped by a signal
                            self._stopped(study, trial.number)
                            stopped = True
                        else:
                            study.tell(trial, value, state=state)
                        returns.append(job)
            except BaseException:  # a signal, or a launcher that died: the trials that did not end go again
                for trial in batch:
                    self._stopped(study, trial.number)
                raise
            if stopped:  # the search stops as at a signal in this process; the same command continues it
                break
        return returns

    def _same_search(self, study: Any, space: dict[str, Any], fixed: list[str]) -> None:
        """A study continued (its name, in the same storage) must go on with the search it began:
        trials of two searches in one study would be sampled from, pruned against, counted and
        ranked as one. A study made without this record (by hand, or before it) is taken as it is."""
        from optuna.distributions import distribution_to_json

        from lmexp.errors import ConfigError

        search = {"space": {k: distribution_to_json(d) for k, d in space.items()}, "fixed": sorted(fixed)}
        before = study.user_attrs.get(SEARCH)
        if before is None:
            study.set_user_attr(SEARCH, search)
            return
        if before == search:
            return
        keys = {k for k in {*before["space"], *search["space"]} if before["space"].get(k) != search["space"].get(k)}
        keys |= {o.split("=", 1)[0] for o in set(before["fixed"]) ^ set(search["fixed"])}
        raise ConfigError(f"hydra.sweeper.study_name={self.study_name}: that study in {self.storage} searched "
                          f"otherwise ({', '.join(sorted(keys))} differ); continue it with its own settings, or "
                          f"start another in a new hydra.sweep.dir (a new study in this folder would write its "
                          f"trials over this one's job folders)")

    def _trial_of(self, trial: Any) -> tuple[str, ...]:
        """The job's own overrides that name its trial: its pruning callback reports there."""
        # Quoted for the override grammar: a sweep folder's name may hold spaces, brackets, commas.
        return (f"callbacks.pruning.storage={quoted(absolute_storage(self.storage))}",
                f"callbacks.pruning.study_name={quoted(self.study_name)}", f"callbacks.pruning.trial={trial.number}")

    @staticmethod
    def _outcome(job: Any) -> tuple[Any, Optional[float]]:
        """What a job found, from its folder's results.json (the summary reads the same file)."""
        import json

        from optuna.trial import TrialState

        try:
            folder = Path(job.hydra_cfg.hydra.runtime.output_dir)
            results = json.loads((folder / "results.json").read_text())
        except (AttributeError, OSError, ValueError):
            return TrialState.FAIL, None
        value = results.get("best_val_ppl")
        if results.get("status") == "interrupted":  # None: not an outcome, a trial to ask again
            return None, None
        if results.get("status") == "pruned":
            return TrialState.PRUNED, None
        if results.get("status") == "finished" and value is not None:
            return TrialState.COMPLETE, float(value)
        return TrialState.FAIL, None

    @staticmethod
    def _finished(study: Any) -> int:
        """Trials that ended (completed, pruned or failed), not those a signal or kill stopped."""
        stopped = set(study.user_attrs.get(INTERRUPTED, []))
        return sum(t.state.is_finished() and t.number not in stopped for t in study.get_trials(deepcopy=False))

    @staticmethod
    def _stopped(study: Any, number: int, again: bool = True) -> None:
        """A trial that did not end: failed, not counted, and (``again``) its settings asked again."""
        from optuna.trial import TrialState

        trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
        if trial.state.is_finished():
            return
        study.set_user_attr(INTERRUPTED, [*study.user_attrs.get(INTERRUPTED, []), number])
        study.tell(number, state=TrialState.FAIL)
        if again:
            study.enqueue_trial(trial.params, skip_if_exists=False)

    def _retry_stopped(self, study: Any) -> None:
        """Trials this sweep folder's jobs left running when the sweep was killed: tried again.
        A running trial without a job folder here belongs to another machine sharing the study."""
        from optuna.trial import TrialState

        here = {int(number) for p in self.sweep_dir.iterdir()
                if p.is_dir() and (number := p.name.split("-", 1)[0]).isdigit()}
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.number in here:
                log.info("trial %d was stopped before it ended: its settings are tried again", trial.number)
                OptunaSweeper._stopped(study, trial.number)
