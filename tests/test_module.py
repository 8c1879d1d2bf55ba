"""The LightningModule under a real Trainer: state carried in evaluation, exact sums."""

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import CONF_DIR, write_zipf_corpus
from lmexp.data.datamodule import IGNORE
from lmexp.module import LanguageModelModule
from lmexp.run import Run


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A validation split of about 8,000 tokens over 2,000 words: whole-split checks in
    seconds (the default corpus's 63,000 tokens and 11,559 words took a minute)."""
    folder = tmp_path_factory.mktemp("module") / "corpus"
    write_zipf_corpus(folder, words=2000, lines={"train": 600, "valid": 400, "test": 10}, longest=40, seed=3)
    return [f"data.{split}={folder / f'{split}.txt'}" for split in ("train", "valid", "test")]


def setup_run(cache_dir, *overrides, corpus=()):
    data = ["data=text", *corpus] if corpus else []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["model.embedding_size=32", "model.hidden_size=32", "logger=none",
                                           f"paths.cache_dir={cache_dir}", *data, *overrides])
    run = Run.from_config(cfg)
    return run.module, run.datamodule


def validate(module, dm):
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, use_distributed_sampler=False)
    (metrics,) = trainer.validate(module, datamodule=dm, verbose=False)
    return metrics


def test_validation_carries_state_across_windows(cache_dir, corpus):
    """With the state carried, cutting the same rows into windows of 7 or of 200 tokens
    scores the same tokens in the same context, so the perplexity is the same."""
    # A large input scale makes the state matter even in an untrained model.
    module, dm = setup_run(cache_dir, "data.bptt=200", "embedding.init_std=1.0", corpus=corpus)
    long_windows = validate(module, dm)
    dm.config.bptt = 7
    short_windows = validate(module, dm)
    assert short_windows["val/tokens"] == long_windows["val/tokens"]
    assert short_windows["val/ppl"] == pytest.approx(long_windows["val/ppl"], rel=1e-5)
    # Resetting the state at each window (what a module that forgot to carry it would do)
    # gives another number, so the equality above is not an accident.
    module.on_validation_batch_start = lambda *a: module._state.__setitem__("val", None)
    reset = validate(module, dm)["val/ppl"]
    assert abs(reset / long_windows["val/ppl"] - 1) > 1e-3


def test_validation_scores_every_token_once(cache_dir, corpus):
    module, dm = setup_run(cache_dir, "data.eval_batch_size=4", corpus=corpus)
    metrics = validate(module, dm)
    n = len(dm.corpus.ids["valid"])
    assert metrics["val/tokens"] == 4 * (n // 4 - 1)
    # The oracle: the whole split read in one pass, the state carried by the recurrence itself
    # (no windows, no batches), the NLL summed in float64 and divided once.
    rows = torch.from_numpy(np.asarray(dm.corpus.ids["valid"][: n // 4 * 4], dtype=np.int64)).view(4, -1)
    with torch.no_grad():
        logits, _ = module.model.eval()(rows[:, :-1])
    nll = F.cross_entropy(logits.flatten(0, 1).double(), rows[:, 1:].flatten(), reduction="sum").item()
    expected = nll / (4 * (n // 4 - 1))
    assert metrics["val/loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["val/ppl"] == pytest.approx(math.exp(expected), rel=1e-4)


def test_learned_embedding_init_std(cache_dir):
    module, _ = setup_run(cache_dir, "embedding.init_std=0.5")
    assert module.model.embedding.weight.std().item() == pytest.approx(0.5, rel=0.02)
    default, _ = setup_run(cache_dir)  # the LSTM's own uniform(-0.1, 0.1)
    assert default.model.embedding.weight.abs().max().item() <= torch.tensor(0.1).item()  # 0.1 in float32


def test_train_loss_is_written_every_log_interval_with_that_steps_value(cache_dir, tmp_path):
    """training_step calls self.log only on the steps Lightning writes out (it costs about a
    millisecond a call): metrics.csv must still hold, at each of those steps, that step's loss."""
    import csv

    from lmexp.cli import compose as compose_run

    run = Run.from_config(compose_run(["model.embedding_size=16", "model.hidden_size=16", "logger=csv",
                                       "trainer.log_every_n_steps=4", f"paths.cache_dir={cache_dir}"]))

    class Losses(pl.Callback):
        seen: dict = {}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.seen[trainer.global_step - 1] = float(outputs["loss"])

    losses = Losses()
    trainer = run.trainer(tmp_path, callbacks=[losses], loggers=run.loggers(tmp_path), max_steps=13, max_epochs=-1,
                          limit_val_batches=0, enable_progress_bar=False, enable_checkpointing=False,
                          enable_model_summary=False)
    trainer.fit(run.module, datamodule=run.datamodule)
    with open(tmp_path / "metrics.csv") as f:
        written = {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}
    assert sorted(written) == [3, 7, 11]
    assert written == {step: pytest.approx(losses.seen[step], rel=1e-6) for step in written}
    assert len(set(losses.seen.values())) > 3  # the losses differ, so a stale value would be caught


@pytest.mark.filterwarnings("ignore::UserWarning")  # self.log without a Trainer
def test_training_carries_the_recurrent_state_into_the_next_window_detached():
    """Truncated BPTT: the second window of a stream starts from the first one's final state (as
    values), so two training steps score what one pass over both windows would."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from conftest import CONF_DIR
    from lmexp.module import LanguageModelModule

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["model.embedding_size=8", "model.hidden_size=8", "model.num_layers=2",
                                           "regularization.dropout=0.0", "model.init_range=1.0"])
    module = LanguageModelModule(OmegaConf.to_container(cfg, resolve=True), [f"w{i}" for i in range(11)])
    torch.manual_seed(0)
    ids = torch.randint(0, 11, (2, 11))
    first = module.training_step((ids[:, :5], ids[:, 1:6]), 0)
    second = module.training_step((ids[:, 5:10], ids[:, 6:11]), 1)
    state = module._state["train"]
    assert state is not None and all(not t.requires_grad for layer in state for t in layer)
    with torch.no_grad():
        logits, _ = module.model(ids[:, :10])
    whole = F.cross_entropy(logits[:, 5:].flatten(0, 1), ids[:, 6:11].flatten())
    assert second.item() == pytest.approx(whole.item(), rel=1e-5) and first.item() != pytest.approx(second.item())


def test_evaluation_counts_only_the_targets_not_the_padding():
    """A split's last window is padded with IGNORE: perplexity divides by the real targets only."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["model.embedding_size=8", "model.hidden_size=8",
                                           "regularization.dropout=0.0"])
    module = LanguageModelModule(OmegaConf.to_container(cfg, resolve=True), [f"w{i}" for i in range(11)])
    module.eval()
    x = torch.randint(0, 11, (2, 5))
    y = torch.randint(0, 11, (2, 5))
    y[1, 3:] = IGNORE
    with torch.no_grad():
        module._evaluate((x, y), "val")
        logits, _ = module.model(x, None)  # the same first window, from no carried state
    nll, tokens = module.metrics["val"].compute()
    assert int(tokens) == 8
    expected = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="sum")
    assert float(nll) == pytest.approx(float(expected), rel=1e-5)


# --- small fits of a module, watched step by step -------------------------------------------
def small_trainer(callbacks=(), **settings):
    return pl.Trainer(**{"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False,
                         "enable_model_summary": False, "enable_checkpointing": False,
                         "use_distributed_sampler": False, "limit_val_batches": 2, "callbacks": list(callbacks),
                         **settings})


class Watch(pl.Callback):
    """What the module holds at each point of a fit."""

    def __init__(self):
        self.training, self.carried, self.after_sanity, self.validations = [], {}, None, []

    def on_sanity_check_end(self, trainer, module):
        self.after_sanity = (dict(module.best_val), dict(module.scored))

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.training.append([name for name, m in module.named_modules() if not m.training])
        self.carried[(trainer.current_epoch, batch_idx)] = module._state.get("train") is not None

    def on_validation_end(self, trainer, module):
        if not trainer.sanity_checking:
            self.validations.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})


@pytest.fixture(scope="module")
def fitted(cache_dir):
    """A module loaded for evaluation (eval mode) and then fitted: 2 epochs of 3 batches, a
    validation after each, a sanity check of 1 batch first."""
    module, datamodule = setup_run(cache_dir)
    module.eval()
    watch = Watch()
    small_trainer([watch], max_epochs=2, limit_train_batches=3, num_sanity_val_steps=1).fit(module, datamodule=datamodule)
    return module, watch


def test_a_module_in_eval_mode_trains_in_train_mode(fitted):
    """A checkpoint loads in eval mode: fitted (resumed), it must train with its dropout on."""
    _, watch = fitted
    assert len(watch.training) == 6 and watch.training == [[]] * 6  # no submodule in eval mode at any step


def test_each_epoch_starts_from_no_recurrent_state(fitted):
    """The training stream starts again at each epoch: the state its last window left is not carried
    into the first window of the next."""
    _, watch = fitted
    assert watch.carried == {(0, 0): False, (0, 1): True, (0, 2): True, (1, 0): False, (1, 1): True, (1, 2): True}


def test_the_sanity_check_is_neither_scored_nor_the_best_validation(fitted):
    module, watch = fitted
    assert watch.after_sanity == ({}, {})
    assert len(watch.validations) == 2
    tokens = watch.validations[0]["val/tokens"]  # 2 whole batches, not the sanity check's 1
    assert module.best_val["tokens"] == tokens == watch.validations[1]["val/tokens"]


def test_the_last_validation_is_scored_in_float64(fitted):
    """module.scored (what results.json, evaluate and the final test read) holds the last validation."""
    module, watch = fitted
    last = watch.validations[-1]
    assert set(module.scored) == {"val"}
    assert module.scored["val"]["ppl"] == pytest.approx(last["val/ppl"], rel=1e-6)
    assert module.scored["val"]["tokens"] == last["val/tokens"]
    assert module.best_val["ppl"] == pytest.approx(min(v["val/ppl"] for v in watch.validations), rel=1e-6)


def test_the_best_validation_is_the_lowest_perplexity_not_the_last(cache_dir):
    """Three validations, the second the best (the model's logits scaled up, then back, in between):
    best_val is the second's, not the last's nor the worst's."""
    module, datamodule = setup_run(cache_dir)
    trainer = small_trainer()
    weights = {k: v.clone() for k, v in module.state_dict().items()}
    seen = []
    for scale in (8.0, 1.0, 4.0):
        module.load_state_dict(weights)
        with torch.no_grad():
            for p in module.model.parameters():
                p.mul_(scale)
        trainer.validate(module, datamodule=datamodule, verbose=False)
        seen.append(module.scored["val"]["ppl"])
    assert seen[1] < seen[2] < seen[0]  # the middle one best
    assert module.best_val["ppl"] == seen[1]


def test_the_count_of_skipped_nonfinite_batches_survives_a_resume(cache_dir, tmp_path):
    """trainer.max_nonfinite bounds the whole run's skipped batches: a resumed run goes on counting
    from the checkpoint's, not from 0 (each resume would otherwise allow max_nonfinite more)."""
    module, datamodule = setup_run(cache_dir)
    trainer = small_trainer(max_steps=1, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, datamodule=datamodule)
    module.nonfinite_skipped = 3
    trainer.save_checkpoint(tmp_path / "last.ckpt")

    class Seen(pl.Callback):
        at_start = None

        def on_train_start(self, trainer, module):
            Seen.at_start = module.nonfinite_skipped

    resumed, datamodule = setup_run(cache_dir)
    assert resumed.nonfinite_skipped == 0
    small_trainer([Seen()], max_steps=2, num_sanity_val_steps=0, limit_val_batches=0).fit(
        resumed, datamodule=datamodule, ckpt_path=tmp_path / "last.ckpt")
    assert Seen.at_start == 3 and resumed.nonfinite_skipped == 3 and resumed.global_step == 2
