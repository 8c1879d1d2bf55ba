"""Stop a hopeless trial of an Optuna search early (``callbacks.pruning``, set by the
``hparams_search`` presets; the sweeper gives each job its trial number).

After each validation the job reports its validation perplexity to its trial in the study's
storage, and asks the pruner (Optuna's median pruner by default) whether to stop: a trial worse
than the median of the trials before it at the same validation ends there, and its
``results.json`` says ``"status": "pruned"``. Optuna's own Lightning callback
(optuna-integration) is written for the ``lightning`` package, whose Trainer refuses callbacks of
``pytorch_lightning``'s, and needs the trial object, which only the sweeper's process holds.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from lmexp.errors import ConfigError

log = logging.getLogger("lmexp")


class OptunaPruning(Callback):
    def __init__(self, storage: str, study_name: str, trial: int, pruner: Any = None,
                 monitor: str = "val/ppl") -> None:
        import optuna
        from hydra_plugins.lmexp_optuna_sweeper.optuna_sweeper import absolute_storage

        try:
            self.study = optuna.load_study(study_name=study_name, storage=absolute_storage(storage), pruner=pruner)
        except KeyError:
            raise ConfigError(f"callbacks.pruning: no Optuna study {study_name!r} in {storage}; "
                              "pruning is for the jobs of an hparams_search sweep") from None
        found = [t for t in self.study.get_trials(deepcopy=False) if t.number == trial]
        if not found:
            raise ConfigError(f"callbacks.pruning.trial={trial}: study {study_name!r} has no such trial")
        if found[0].state.is_finished():  # resume= on a stopped trial's folder: Optuna refuses its reports
            raise ConfigError(f"callbacks.pruning.trial={trial}: trial {trial} of study {study_name!r} has ended "
                              f"({found[0].state.name}); a search tries a stopped trial's settings again as a new "
                              "trial: continue with the search's command and its hydra.sweep.dir")
        self.trial = optuna.trial.Trial(self.study, found[0]._trial_id)
        self.number, self.monitor = trial, monitor
        self.validations = 0  # the step each report is made at: the n-th validation of the run
        self.pruned_at: Optional[int] = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self.validations += 1
        prune = False
        if trainer.is_global_zero:
            value = trainer.callback_metrics.get(self.monitor)
            if value is not None:
                self.trial.report(float(value), step=self.validations)
                prune = self.trial.should_prune()
        if trainer.strategy.broadcast(prune):  # every process stops together
            log.info("Optuna trial %d pruned after validation %d: %s is worse than the pruner allows",
                     self.number, self.validations, self.monitor)
            self.pruned_at = self.validations
            trainer.should_stop = True

    def results(self) -> dict:
        """What this adds to the run's results.json."""
        pruned = {"status": "pruned", "pruned_at_validation": self.pruned_at} if self.pruned_at else {}
        return {"optuna_trial": self.number, **pruned}

    def state_dict(self) -> dict:  # a resumed trial goes on counting its validations
        return {"validations": self.validations}

    def load_state_dict(self, state: dict) -> None:
        self.validations = state["validations"]


def optuna_pruning(storage: Optional[str] = None, study_name: Optional[str] = None, trial: Optional[int] = None,
                   pruner: Any = None, monitor: str = "val/ppl") -> Optional[OptunaPruning]:
    """The callback, for a job of an Optuna sweep (the sweeper sets the three); off otherwise. The pruner: a
    trial is stopped once 3 trials have finished and it has validated twice, if it is worse than
    their median at the same validation (Optuna's MedianPruner)."""
    if storage is None or study_name is None or trial is None:
        return None
    if pruner is None:
        import optuna

        pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)
    return OptunaPruning(storage, study_name, trial, pruner, monitor)
