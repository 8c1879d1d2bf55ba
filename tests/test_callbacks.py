"""The callbacks group: entries on and off from the command line, and any Lightning callback by class path."""

import csv
import json

import pytest
import pytorch_lightning as pl
import torch

from conftest import SMALL, run_lmexp, train_here


def test_early_stopping_swa_by_class_path_and_an_entry_turned_off(tmp_path, cache_dir):
    args = [*SMALL, "trainer.max_epochs=6", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
            "trainer.limit_test_batches=2", "trainer.log_every_n_steps=1", "logger=csv",
            # No validation can improve by 1e9 nats: the run stops after patience=1 validation without one.
            "callbacks.early_stopping.patience=1", "+callbacks.early_stopping.min_delta=1e9",
            "+callbacks.swa._target_=pytorch_lightning.callbacks.StochasticWeightAveraging",
            "+callbacks.swa.swa_lrs=0.01", "callbacks.lr_monitor=null"]
    result = run_lmexp(args, cwd=tmp_path, cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == 2 * 3  # two epochs of 3 batches: the first sets the best, the second stops it
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert any(key.startswith("StochasticWeightAveraging") for key in checkpoint["callbacks"])
    assert any(key.startswith("EarlyStopping") for key in checkpoint["callbacks"])
    with (run_dir / "metrics.csv").open() as f:
        columns = next(csv.reader(f))
    assert "train/tokens_per_sec" in columns and "train/lr" not in columns  # lr_monitor is off


def test_a_callback_that_cannot_be_built_is_one_line(tmp_path, cache_dir):
    result = run_lmexp([*SMALL, "+callbacks.bad._target_=pytorch_lightning.callbacks.EarlyStopping",
                        "+callbacks.bad.patience_typo=3", "trainer.max_steps=1"], cwd=tmp_path, cache_dir=cache_dir)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmexp: error: callbacks.bad: ") and "patience_typo" in lines[0]


def test_the_progress_bar_redraws_five_times_a_second_and_goes_with_enable_progress_bar(tmp_path):
    # Lightning's own Rich bar redraws 100 times a second, from a thread that competes with
    # training: 10% of the nanoGPT CPU recipe's speed here.
    from pytorch_lightning.callbacks import ProgressBar, RichProgressBar

    from lmexp.cli import compose
    from lmexp.run import Run

    run = Run.from_config(compose(["logger=none"]))
    bars = [c for c in run.trainer(tmp_path).callbacks if isinstance(c, ProgressBar)]
    assert len(bars) == 1 and isinstance(bars[0], RichProgressBar) and bars[0].refresh_rate == 5
    quiet = run.trainer(tmp_path, enable_progress_bar=False)  # Lightning would refuse the bar itself
    assert not any(isinstance(c, ProgressBar) for c in quiet.callbacks)
    # callbacks.progress_bar=null, as any callback is turned off: no bar (Lightning's own took its
    # place, at 100 redraws a second, until 2026-12-02); a bar of the user's own stays.
    off = Run.from_config(compose(["logger=none", "callbacks.progress_bar=null"])).trainer(tmp_path)
    assert off.progress_bar_callback is None and not any(isinstance(c, ProgressBar) for c in off.callbacks)
    own = Run.from_config(compose(["logger=none", "callbacks.progress_bar=null",
                                   "+callbacks.bar._target_=pytorch_lightning.callbacks.TQDMProgressBar"]))
    assert type(own.trainer(tmp_path).progress_bar_callback).__name__ == "TQDMProgressBar"


def test_the_progress_bar_counts_epochs_without_a_total_when_epochs_are_unlimited(tmp_path):
    """A token budget's run sets max_epochs=-1: Lightning 2.6's bar read "Epoch 3/-2" there."""
    from lmexp.cli import compose
    from lmexp.run import Run

    for max_epochs, shown in ((-1, "Epoch 3"), (5, "Epoch 3/4")):
        run = Run.from_config(compose(["logger=none", f"trainer.max_epochs={max_epochs}", "trainer.max_steps=100"]))
        trainer = run.trainer(tmp_path)
        bar = trainer.progress_bar_callback
        bar.setup(trainer, run.module, "fit")
        assert bar._get_train_description(3).rstrip() == shown


def test_the_latest_state_saved_at_a_validations_step_leaves_that_validation_its_best_checkpoint(tmp_path,
                                                                                               cache_dir):
    """every_n_steps=10 writes last.ckpt at step 10, where a mid-epoch validation follows: Lightning
    skips any save at a step it has saved at, so the latest-state save must not count as one,
    or that validation's best checkpoint would never be written."""
    args = [*SMALL, "trainer.max_epochs=1", "trainer.limit_train_batches=20", "trainer.val_check_interval=10",
            "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "trainer.num_sanity_val_steps=0",
            "callbacks.checkpoint.every_n_steps=10", "+callbacks.checkpoint.save_top_k=-1", "logger=none"]
    train_here(args, tmp_path / "run", cache_dir)
    saved = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("best-*.ckpt"))
    assert saved == ["best-epoch=0-step=10.ckpt", "best-epoch=0-step=20.ckpt"]


def test_the_checkpoint_entry_turned_off_writes_no_checkpoint(tmp_path, cache_dir):
    """Lightning adds a ModelCheckpoint of its own unless told not to; the test then loaded that
    last state as the run's best checkpoint."""
    results = train_here([*SMALL, "trainer.max_steps=4", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
                          "callbacks.checkpoint=null"], tmp_path / "run", cache_dir)
    assert not list((tmp_path / "run").rglob("*.ckpt"))
    assert results["status"] == "finished" and results["best_checkpoint"] is None and results["steps"] == 4
    assert results["test_ppl"] > 1


def test_the_default_checkpoint_and_early_stop_keep_the_lowest_perplexity(tmp_path):
    """Every metric they may watch is lower-is-better: the default callbacks, as built, must keep
    the checkpoint of the lowest val/ppl and stop when it stops falling; mode=max, which would keep
    the worst, is refused (it was accepted)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from conftest import CONF_DIR

    conf = OmegaConf.load(CONF_DIR / "callbacks" / "default.yaml")
    checkpoint = instantiate(conf.checkpoint, dirpath=str(tmp_path))
    assert (checkpoint.monitor, checkpoint.mode) == ("val/ppl", "min")
    assert checkpoint.kth_value == torch.tensor(float("inf"))  # the first score of any size beats it
    stop = instantiate(conf.early_stopping, patience=2)
    assert (stop.monitor, stop.mode) == ("val/ppl", "min")
    assert stop.monitor_op(torch.tensor(90.0), torch.tensor(100.0))  # 90 improves on 100
    from lmexp.cli import compose
    from lmexp.config import load_settings
    from lmexp.errors import ConfigError

    for override in ("callbacks.checkpoint.mode=max", "+callbacks.early_stopping.mode=max"):
        with pytest.raises(ConfigError, match=f"^{override.lstrip('+')}: must be min: val/ppl is lower-is-better"):
            load_settings(compose([override]))


class TwoRates(pl.LightningModule):
    """Two parameter groups: at one rate (as lmexp's decay and no-decay groups are), or at two."""

    def __init__(self, rates):
        super().__init__()
        self.rates, self.a, self.b = rates, torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return (self.a(batch[0]) + self.b(batch[0])).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD([{"params": self.a.parameters(), "lr": self.rates[0]},
                                {"params": self.b.parameters(), "lr": self.rates[1]}])

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 2)), batch_size=2)


@pytest.mark.parametrize("rates", [(0.1, 0.1), (0.1, 0.2)])
def test_learning_rates_are_one_curve_only_when_the_groups_share_one(rates, tmp_path):
    """Groups at one rate log one train/lr curve; groups at two rates keep a curve each, which one
    merged curve would hide (mutation round 7)."""
    from pytorch_lightning.loggers import CSVLogger

    from lmexp.callbacks import LearningRate

    trainer = pl.Trainer(max_steps=2, logger=CSVLogger(tmp_path, name="", version=""), callbacks=[LearningRate()],
                         log_every_n_steps=1, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(TwoRates(rates))
    with open(tmp_path / "metrics.csv", newline="") as f:
        logged = {k for row in csv.DictReader(f) for k, v in row.items() if v and "lr" in k}
    assert logged == ({"train/lr"} if rates[0] == rates[1] else {"lr-SGD/pg1", "lr-SGD/pg2"})  # Lightning's names


def test_a_run_without_checkpoints_reports_its_best_validation_all_its_time_and_logs_the_unigram_ppl(tmp_path, cache_dir, monkeypatch):
    """callbacks.checkpoint=null: no checkpoint holds a best score, so results.json's best_val_ppl is the
    module's own best validation (not null). wall_time_s counts the seconds earlier segments of the run
    spent (lmexp.train._earlier, which a resumed run reads from its checkpoint)."""
    import csv

    import lmexp.train
    from conftest import SMALL, train_here

    monkeypatch.setattr(lmexp.train, "_earlier", lambda trainer: 1000.0)
    results = train_here([*SMALL, "trainer.max_steps=4", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
                          "callbacks.checkpoint=null"], tmp_path / "run", cache_dir)
    assert results["best_checkpoint"] is None and results["best_val_ppl"] > 1
    assert 1000 < results["wall_time_s"] < 1000 + 600
    # The test's unigram perplexity goes to the loggers too (metrics.csv), as the test's other scores do.
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    logged = [float(r["test/unigram_ppl"]) for r in rows if r.get("test/unigram_ppl")]
    assert logged == [pytest.approx(results["test_unigram_ppl"], rel=1e-6)]
