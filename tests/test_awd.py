"""Dropout variants, weight drop, AR/TAR and NT-ASGD (the AWD-LSTM techniques), on real models."""

import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from conftest import CONF_DIR
from lmexp.checkpoint import load_module
from lmexp.config import load_settings
from lmexp.options.regularization import RegularizationConfig
from lmexp.schema import parse
from lmexp.callbacks import WeightAveraging
from lmexp.errors import ConfigError
from lmexp.models import build_model
from lmexp.module import LanguageModelModule
from lmexp.run import Run
from lmexp.optim import NTASGD, averaged_parameters, build_ntasgd, swap_in_averages
from lmexp.options.optimizer import NTASGDConfig
from lmexp.regularization import DropoutRates, LockedDropout, activation_penalties, dropout_rates, embedding_dropout


def reg(**kw):
    return parse(RegularizationConfig, kw, "regularization")


def lstm(rates, num_layers=2, vocab=30):
    """A small tied LSTM with the dropout ``rates``."""
    torch.manual_seed(0)
    node = {"name": "lstm", "embedding_size": 8, "hidden_size": 12, "num_layers": num_layers, "tie_weights": True}
    return build_model(node, vocab_size=vocab, dropout=rates)


def compose_config(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


# --- settings --------------------------------------------------------------------------------

def test_sites_left_null_take_the_dropout_rate():
    rates = dropout_rates(reg(dropout=0.3, hidden_dropout=0.1, embed_dropout=0.05))
    assert rates == DropoutRates(embedding=0.05, input=0.3, hidden=0.1, output=0.3, attention=0.3, residual=0.3)


def test_each_sequence_site_takes_its_own_rate():
    """Every site set apart (AWD-LSTM's WT2 values: input 0.65, output 0.4): no two sites' rates may swap."""
    rates = dropout_rates(reg(dropout=0.1, input_dropout=0.65, hidden_dropout=0.3, output_dropout=0.4,
                              attention_dropout=0.2, residual_dropout=0.25, embed_dropout=0.05))
    assert (rates.input, rates.hidden, rates.output, rates.attention, rates.residual, rates.embedding) == \
        (0.65, 0.3, 0.4, 0.2, 0.25, 0.05)


def test_awd_preset_sets_the_papers_values():
    r = load_settings(compose_config("regularization=awd")).regularization
    assert (r.embed_dropout, r.input_dropout, r.hidden_dropout, r.output_dropout) == (0.1, 0.4, 0.3, 0.4)
    assert (r.weight_drop, r.ar, r.tar, r.locked_dropout) == (0.5, 2.0, 1.0, True)
    model = LanguageModelModule(OmegaConf.to_container(compose_config("regularization=awd", "model.num_layers=3"),
                                                       resolve=True), ["a", "b"]).model
    assert [type(m) for m in (model.input_drop, model.hidden_drop, model.output_drop)] == [LockedDropout] * 3
    assert (model.input_drop.p, model.hidden_drop.p, model.output_drop.p) == (0.4, 0.3, 0.4)
    assert model.dropout.weight == 0.5 and model.dropout.embedding == 0.1


@pytest.mark.parametrize("override", ["regularization.weight_drop=0.5", "regularization.ar=1",
                                      "regularization.tar=1", "regularization.locked_dropout=true"])
def test_recurrent_only_techniques_are_refused_for_attention_models(override):
    with pytest.raises(ConfigError, match=r"for model=gpt2: it applies to recurrent models"):
        load_settings(compose_config("model=gpt2", override))


# --- dropout variants ------------------------------------------------------------------------

def test_locked_dropout_uses_one_mask_across_time():
    drop = LockedDropout(0.5).train()
    torch.manual_seed(0)
    y = drop(torch.ones(4, 20, 16))  # (B, T, C)
    assert torch.equal(y, y[:, :1].expand_as(y))  # every time step the same as the first
    assert set(y.unique().tolist()) == {0.0, 2.0}  # dropped, or kept and scaled by 1/(1-p)
    assert not torch.equal(y[0, 0], y[1, 0])  # a mask per sequence
    plain = torch.nn.functional.dropout(torch.ones(4, 20, 16), 0.5)
    assert not torch.equal(plain, plain[:, :1].expand_as(plain))  # what locked avoids
    assert torch.equal(drop.eval()(torch.ones(4, 20, 16)), torch.ones(4, 20, 16))


def test_embedding_dropout_drops_every_occurrence_of_a_word():
    embedding = torch.nn.Embedding(10, 6)
    idx = torch.tensor([[1, 2, 1, 3, 1, 2, 3, 4]] * 3)
    torch.manual_seed(1)
    x = embedding_dropout(embedding, idx, 0.5, training=True)
    plain = embedding(idx)
    for word in idx.unique():
        at = idx == word
        scale = {(x[at] / plain[at]).mean().round(decimals=4).item()}
        assert scale <= {0.0, 2.0} and torch.allclose(x[at], plain[at] * scale.pop())  # the word wholly in or out
    assert torch.equal(embedding_dropout(embedding, idx, 0.5, training=False), plain)


def test_embedding_dropout_drops_words_at_its_rate():
    """p is the share of words dropped, not kept (at 0.5 the two read the same): 10% of 20,000."""
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(20_000, 4)
    idx = torch.arange(20_000).view(1, -1)  # every word once
    x = embedding_dropout(embedding, idx, 0.1, training=True)
    dropped = (x == 0).all(-1)
    assert abs(dropped.float().mean().item() - 0.1) < 0.01
    torch.testing.assert_close(x[~dropped], embedding(idx)[~dropped] / 0.9)


@pytest.mark.parametrize("site", ["input", "hidden", "output"])
def test_rnn_locked_dropout_acts_at_its_own_site_only_and_only_in_training(site):
    """Each site's module is watched: with only ``site``'s rate set, that module drops with one
    mask across time (out/in is 0 or 1/(1-p), the same at every step) and every other is the
    identity; in evaluation all are."""
    model = lstm(DropoutRates(**{site: 0.5}, locked=True), num_layers=2)
    seen = {}
    for name in ("input", "hidden", "output"):
        getattr(model, f"{name}_drop").register_forward_hook(
            lambda module, args, out, name=name: seen.__setitem__(name, (args[0], out)))
    x = torch.randint(0, 30, (4, 9))
    model.train()(x)
    assert set(seen) == {"input", "hidden", "output"}  # every site was passed through
    for name, (before, after) in seen.items():
        if name == site:
            mask = after / before
            assert set(mask.unique().tolist()) == {0.0, 2.0}
            assert torch.equal(mask, mask[:, :1].expand_as(mask))  # locked: one mask per sequence
        else:
            assert torch.equal(before, after)
    seen.clear()
    model.eval()(x)
    assert all(torch.equal(before, after) for before, after in seen.values()) and len(seen) == 3


def test_transformer_and_gpt2_have_their_own_attention_and_residual_rates():
    rates = DropoutRates(input=0.1, attention=0.2, residual=0.3)
    t = build_model({"name": "transformer", "d_model": 8, "n_head": 2, "n_layer": 1, "d_ff": 16, "block_size": 4},
                    vocab_size=11, dropout=rates)
    layer = t.encoder.layers[0]
    assert (t.drop.p, layer.self_attn.dropout, layer.dropout.p, layer.dropout1.p, layer.dropout2.p) == \
        (0.1, 0.2, 0.3, 0.3, 0.3)
    g = build_model({"name": "gpt2", "size": "tiny"}, vocab_size=11, dropout=rates)
    block = g.h[0]
    assert (g.drop.p, block.attn.dropout, block.attn.resid_dropout.p, block.mlp.dropout.p) == (0.1, 0.2, 0.3, 0.3)


# --- weight drop -------------------------------------------------------------------------------

def test_weight_drop_changes_the_recurrent_weights_in_training_only():
    model = lstm(DropoutRates(weight=0.5), num_layers=1)
    reference = lstm(DropoutRates(), num_layers=1)  # the same weights, no weight drop
    x = torch.randint(0, 30, (2, 9))
    before = model.layers[0].weight_hh_l0.detach().clone()
    model.train()(x)[0].sum().backward()
    grad = model.layers[0].weight_hh_l0.grad
    # DropConnect: a dropped connection passes no gradient; a kept one does (so about half are 0).
    assert 0.3 < (grad == 0).float().mean().item() < 0.7
    assert torch.equal(model.layers[0].weight_hh_l0.detach(), before)  # the parameter itself is untouched
    assert not torch.allclose(model(x)[0], reference.train()(x)[0])
    assert torch.equal(model.eval()(x)[0], reference.eval()(x)[0])  # evaluation: the full matrix
    model.zero_grad()
    model.eval()(x)[0].sum().backward()
    assert (model.layers[0].weight_hh_l0.grad == 0).float().mean().item() < 0.05


def test_weight_drop_is_dropout_of_the_recurrent_matrix():
    model = lstm(DropoutRates(weight=0.5), num_layers=1).train()
    x = torch.randint(0, 30, (2, 9))
    torch.manual_seed(7)
    out = model(x)[0]
    torch.manual_seed(7)  # the same mask, by hand
    dropped = F.dropout(model.layers[0].weight_hh_l0.detach(), 0.5, training=True)
    by_hand = lstm(DropoutRates(), num_layers=1)
    with torch.no_grad():
        by_hand.layers[0].weight_hh_l0.copy_(dropped)
    assert torch.allclose(out, by_hand.eval()(x)[0], atol=1e-6)


# --- AR / TAR --------------------------------------------------------------------------------

def test_ar_and_tar_match_the_papers_formulas():
    """AR is ar * mean(dropped ** 2), TAR tar * mean((raw_t - raw_{t-1}) ** 2) (Merity et al. 4.6),
    with raw and dropped seen from outside, by a hook on the model's output dropout: read from
    model.activations, the attribute under test, swapping them went unseen."""
    model = lstm(DropoutRates(output=0.5, locked=True)).train()
    seen = {}
    model.output_drop.register_forward_hook(lambda m, args, out: seen.update(raw=args[0], dropped=out))
    model(torch.randint(0, 30, (3, 10)))
    raw, dropped = seen["raw"], seen["dropped"]
    assert raw.shape == (3, 10, 12) and not torch.equal(raw, dropped)
    terms = activation_penalties(model, reg(ar=2.0, tar=1.0))
    assert torch.allclose(terms["ar"], 2.0 * (dropped ** 2).mean())
    diffs = torch.stack([raw[:, t] - raw[:, t - 1] for t in range(1, 10)], dim=1)  # h_t - h_{t-1}
    assert torch.allclose(terms["tar"], (diffs ** 2).mean())
    model.eval()(torch.randint(0, 30, (3, 10)))
    assert model.activations is None  # nothing kept when not training


@pytest.mark.filterwarnings("ignore::UserWarning")  # self.log without a Trainer
def test_training_step_adds_ar_and_tar_to_the_cross_entropy():
    config = OmegaConf.to_container(compose_config("regularization=awd", "model.embedding_size=6",
                                                   "model.hidden_size=8"), resolve=True)
    module = LanguageModelModule(config, [f"w{i}" for i in range(11)])
    x, y = torch.randint(0, 11, (2, 5)), torch.randint(0, 11, (2, 5))
    torch.manual_seed(3)
    total = module.training_step((x, y), 0)
    torch.manual_seed(3)  # the same dropout masks again
    logits, _ = module.model(x)
    terms = activation_penalties(module.model, module.regularization)
    assert set(terms) == {"ar", "tar"} and all(t > 0 for t in terms.values())
    assert torch.allclose(total, F.cross_entropy(logits.flatten(0, 1), y.flatten()) + terms["ar"] + terms["tar"])


# --- NT-ASGD ---------------------------------------------------------------------------------

def test_ntasgd_switches_when_validation_stops_improving():
    model = torch.nn.Linear(2, 1)
    optimizer = build_ntasgd(model, NTASGDConfig(lr=0.1, nonmono=2, weight_decay=0.0))
    for step, loss in enumerate([5.0, 4.0, 3.0, 3.5], start=1):  # 3.5 is worse than 3.0, but 3.0 is recent
        model(torch.ones(1, 2)).sum().backward()
        optimizer.step()
        assert not optimizer.observe(loss) and not optimizer.switched
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()  # step 5
    assert optimizer.observe(4.5)  # worse than 4.0, the best before the last two validations
    assert optimizer.switched and optimizer.param_groups[0]["t0"] == 5
    assert not optimizer.observe(9.0)  # it switches once
    restored = build_ntasgd(model, NTASGDConfig(lr=0.1, nonmono=2))
    restored.load_state_dict(optimizer.state_dict())
    assert restored.val_losses == [5.0, 4.0, 3.0, 3.5, 4.5, 9.0] and restored.switched


def test_ntasgd_a_validation_equal_to_the_older_best_does_not_switch():
    """The paper's trigger is val_loss > min(older losses): a tie is no sign of getting worse."""
    model = torch.nn.Linear(2, 1)
    optimizer = build_ntasgd(model, NTASGDConfig(lr=0.1, nonmono=1, weight_decay=0.0))
    for loss in (3.0, 2.0):
        assert not optimizer.observe(loss)
    assert not optimizer.observe(3.0) and not optimizer.switched  # equal to 3.0, the best before the last
    assert optimizer.observe(2.5) and optimizer.switched  # worse than 2.0: now it switches


def test_ntasgd_is_sgd_then_averages_the_iterates_after_the_switch():
    weight = torch.nn.Parameter(torch.tensor([1.0]))
    optimizer = NTASGD([weight], lr=0.1, nonmono=1)
    optimizer.val_losses = [1.0, 1.0]  # so that the next validation, worse, triggers
    iterates = []
    for step in range(1, 9):
        weight.grad = torch.tensor([step * 1.0])  # a different gradient each step
        optimizer.step()
        iterates.append(weight.item())
        if step == 3:
            assert not averaged_parameters(optimizer)  # plain SGD so far
            assert optimizer.observe(2.0)
    expected = 1.0 - 0.1 * torch.arange(1, 9).cumsum(0)  # SGD: w -= lr * g
    assert iterates == pytest.approx(expected.tolist(), abs=1e-6)
    (average,) = averaged_parameters(optimizer).values()
    # torch's ASGD copies the first iterate after t0 and averages from the next: steps 5..8.
    assert average.item() == pytest.approx(sum(iterates[4:]) / 4, abs=1e-6)


class PretendEarlierValidations(Callback):
    """Two earlier validations at loss 0 (better than any real one), so the first real
    validation triggers the switch: a run short enough for a test sees the averaging."""

    def on_train_start(self, trainer, pl_module):
        trainer.optimizers[0].val_losses = [0.0, 0.0]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_ntasgd_validates_and_checkpoints_the_averaged_weights(tmp_path, cache_dir):
    cfg = compose_config("optimizer=ntasgd", "optimizer.nonmono=1", "optimizer.lr=1.0", "model.embedding_size=16",
                         "model.hidden_size=16", "data.batch_size=8", "data.bptt=16", "logger=none",
                         f"paths.cache_dir={cache_dir}")
    run = Run.from_config(cfg)
    module, dm = run.module, run.datamodule
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_last=True, monitor="val/ppl")
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=6, val_check_interval=2, limit_val_batches=3,
                         num_sanity_val_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False, gradient_clip_val=0.25,
                         callbacks=[checkpoints, PretendEarlierValidations(), WeightAveraging()])
    trainer.fit(module, datamodule=dm)
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, NTASGD) and optimizer.switched and optimizer.param_groups[0]["t0"] == 2
    assert len(optimizer.val_losses) == 2 + 3  # the pretended two, then validations at steps 2, 4 and 6

    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    averages = averaged_parameters(optimizer)
    for name, p in module.named_parameters():
        assert torch.equal(saved["state_dict"][name], averages[p]), name  # the checkpoint holds the average
        assert torch.equal(saved["raw_state_dict"][name], p.detach()), name  # and the weights to resume from
    assert not torch.equal(saved["state_dict"]["model.decoder.bias"], saved["raw_state_dict"]["model.decoder.bias"])

    # The last validation scored the averaged weights: the checkpoint alone gives the same perplexity.
    logged = trainer.callback_metrics["val/ppl"].item()
    restored = load_module(tmp_path / "last.ckpt")
    (metrics,) = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=3,
                            use_distributed_sampler=False).validate(restored, datamodule=dm, verbose=False)
    assert metrics["val/ppl"] == pytest.approx(logged, rel=1e-5)
    assert math.isfinite(logged)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_test_without_a_checkpoint_scores_the_averaged_weights(tmp_path, cache_dir):
    """callbacks.checkpoint=null: the run's test scores the weights training ended with, which
    for an averaging optimizer are the averages (as validation scored), not the raw iterates."""
    cfg = compose_config("optimizer=ntasgd", "optimizer.nonmono=1", "optimizer.lr=1.0", "model.embedding_size=16",
                         "model.hidden_size=16", "data.batch_size=8", "data.bptt=16", "logger=none",
                         "callbacks.checkpoint=null", f"paths.cache_dir={cache_dir}")
    run = Run.from_config(cfg)
    module, dm = run.module, run.datamodule
    trainer = run.trainer(tmp_path, callbacks=[PretendEarlierValidations(), WeightAveraging()], max_steps=6,
                          val_check_interval=2, limit_val_batches=3, limit_test_batches=3, num_sanity_val_steps=0,
                          enable_progress_bar=False, enable_model_summary=False)
    assert trainer.checkpoint_callback is None  # Lightning adds none of its own
    trainer.fit(module, datamodule=dm)
    (tested,) = trainer.test(module, datamodule=dm, verbose=False)
    assert not list(tmp_path.rglob("*.ckpt"))

    raw = {name: p.detach().clone() for name, p in module.named_parameters()}
    plain = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                       enable_model_summary=False, limit_test_batches=3, use_distributed_sampler=False)
    (unaveraged,) = plain.test(module, datamodule=dm, verbose=False)
    averages = averaged_parameters(trainer.optimizers[0])
    swap_in_averages(averages)
    (averaged,) = plain.test(module, datamodule=dm, verbose=False)
    swap_in_averages(averages)
    assert tested["test/ppl"] == pytest.approx(averaged["test/ppl"], rel=1e-6)
    assert tested["test/ppl"] != pytest.approx(unaveraged["test/ppl"], rel=1e-3)
    for name, p in module.named_parameters():  # the test gave training's weights back
        assert torch.equal(p, raw[name]), name


def test_hidden_dropout_acts_between_layers_only():
    """regularization.hidden_dropout drops between recurrent layers: never after the last one, whose
    output only output_dropout touches (a second mask there would drop the output twice)."""
    model = lstm(DropoutRates(hidden=0.5, locked=True), num_layers=3)
    calls = []
    model.hidden_drop.register_forward_hook(lambda m, args, out: calls.append(1))
    model.train()(torch.randint(0, 30, (4, 9)))
    assert len(calls) == 2  # between layers 1-2 and 2-3
    # and output_drop (the identity here) reads the last layer's own, undropped output
    seen = {}
    model.layers[-1].register_forward_hook(lambda m, args, out: seen.update(last=out[0]))
    model.output_drop.register_forward_hook(lambda m, args, out: seen.update(read=args[0]))
    model(torch.randint(0, 30, (4, 9)))
    assert torch.equal(seen["read"], seen["last"])


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_test_from_an_averaging_runs_checkpoint_scores_the_averages_not_the_raw_weights(tmp_path, cache_dir):
    """train.py tests the best checkpoint with trainer.test(ckpt_path=...), which calls
    WeightAveraging.on_load_checkpoint: only a resumed fit takes the raw weights from it; a test
    scores the averages the checkpoint holds (those validation scored)."""
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import ModelCheckpoint
    from lmexp.callbacks import WeightAveraging
    from lmexp.checkpoint import load_module
    from lmexp.run import Run

    cfg = compose_config("optimizer=ntasgd", "optimizer.nonmono=1", "optimizer.lr=1.0", "model.embedding_size=16",
                         "model.hidden_size=16", "data.batch_size=8", "data.bptt=16", "logger=none",
                         f"paths.cache_dir={cache_dir}")
    run = Run.from_config(cfg)
    module, dm = run.module, run.datamodule
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=6, val_check_interval=2, limit_val_batches=3,
                         limit_test_batches=3, num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, use_distributed_sampler=False, gradient_clip_val=0.25,
                         callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True, monitor="val/ppl"),
                                    PretendEarlierValidations(), WeightAveraging()])
    trainer.fit(module, datamodule=dm)
    last = tmp_path / "last.ckpt"
    assert torch.load(last, weights_only=True)["raw_state_dict"]
    (tested,) = trainer.test(module, datamodule=dm, ckpt_path=str(last), verbose=False)
    plain = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                 limit_test_batches=3, use_distributed_sampler=False)
    (averaged,) = pl.Trainer(**plain).test(load_module(last), datamodule=dm, verbose=False)
    assert tested["test/ppl"] == pytest.approx(averaged["test/ppl"], rel=1e-5)
