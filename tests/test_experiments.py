"""The ``experiment=`` presets: each composes into a valid run, sets what its recipe says, yields
to the command line, and builds the same network as the reference it reproduces."""

import csv
import json
import sys

import pytest

from conftest import CONF_DIR, ROOT, run_lmexp
from lmexp.cli import compose
from lmexp.config import load_settings
from lmexp.models import build_model

sys.path.insert(0, str(ROOT / "benchmarks"))
import references  # noqa: E402  (the re-implemented references, benchmarks/references.py)

PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
NEEDS = {"nanogpt_shakespeare_char": ["data.path=input.txt"], "nanogpt_shakespeare_char_cpu": ["data.path=input.txt"]}


def settings(preset, *overrides):
    return load_settings(compose([f"experiment={preset}", *NEEDS.get(preset, []), *overrides]))


def test_the_benchmark_presets_are_all_here():
    assert {preset for preset, _, _ in references.RECIPES.values()} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_composes_and_validates(preset):
    s = settings(preset)
    assert s.names["model"] in ("lstm", "transformer", "gpt2")


def test_the_lstm_preset_is_the_examples_recipe():
    s = settings("word_lm_example")
    assert s.names == {**s.names, "data": "ptb", "model": "lstm", "optimizer": "sgd", "scheduler": "plateau"}
    assert (s.model.embedding_size, s.model.hidden_size, s.model.num_layers, s.model.tie_weights) == (200, 200, 2, False)
    assert (s.data.batch_size, s.data.bptt, s.optimizer.lr, s.optimizer.momentum) == (20, 35, 20.0, 0.0)
    assert (s.scheduler.factor, s.scheduler.patience, s.trainer.gradient_clip_val) == (0.25, 0, 0.25)
    assert (s.regularization.dropout, s.regularization.embed_dropout, s.regularization.weight_drop) == (0.2, 0.0, 0.0)


def test_the_command_line_wins_over_a_preset():
    s = settings("word_lm_example", "data=tiny", "optimizer.lr=1.5", "model.num_layers=3")
    assert (s.names["data"], s.optimizer.lr, s.model.num_layers, s.data.bptt) == ("tiny", 1.5, 3, 35)


@pytest.mark.parametrize("recipe", sorted(references.RECIPES))
def test_each_preset_builds_the_references_network(recipe):
    """Same parameter count as the reference's network for the same vocabulary: the speed
    comparison in benchmarks/references.py is of the same amount of arithmetic (it refuses to
    compare otherwise, and prints both counts)."""
    vocab = 1000
    ours = build_model(settings(references.RECIPES[recipe][0]).model, vocab)
    theirs = references.reference_model(recipe, vocab)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


MULTIRUNS = {"compare_archs", "scaling"}  # tested beside their sweeps below and in test_scaling.py


@pytest.mark.parametrize("preset", sorted(set(PRESETS) - MULTIRUNS))
def test_each_recipe_trains_a_few_steps(preset, tmp_path, cache_dir):
    """Each recipe as it is but for the machine, the text and the batch: on this CPU, a few steps of
    4 rows of the embedded corpus (or, for a character-level recipe, a text file), so that no data
    is needed and the GPU recipes take seconds."""
    text = tmp_path / "input.txt"
    text.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n\n" * 2000)
    data = [f"data.path={text}"] if preset in NEEDS else ["data=tiny"]
    done = run_lmexp([f"experiment={preset}", *data, "trainer=cpu", "data.batch_size=4", "logger=csv",
                      "trainer.max_steps=3",
                      "trainer.max_epochs=1", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
                      "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false"], tmp_path, cache_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    (results,) = tmp_path.glob("outputs/**/results.json")
    assert json.loads(results.read_text())["steps"] == 3


@pytest.mark.parametrize("preset, published", [("zaremba_small", (120.7, 114.5)), ("zaremba_medium", (86.2, 82.7)),
                                               ("zaremba_large", (82.2, 78.4)), ("awd_lstm_ptb", (60.7, 58.8))])
def test_each_paper_recipe_states_its_source_and_published_figures(preset, published):
    comment = (CONF_DIR / "experiment" / f"{preset}.yaml").read_text()
    assert all(f"{number}" in comment for number in published)


def test_the_zaremba_recipes_are_the_papers_updates_per_token():
    """The paper sums its loss over the unrolled steps; lmexp averages over tokens. SGD's step is the
    same when the rate and the clip are scaled by the window: lr 1 -> bptt, clip c -> c / bptt."""
    for preset, (width, init, bptt, clip, epochs, first_cut, gamma) in {
            "zaremba_small": (200, 0.1, 20, 5, 13, 4, 0.5),
            "zaremba_medium": (650, 0.05, 35, 5, 39, 6, 1 / 1.2),
            "zaremba_large": (1500, 0.04, 35, 10, 55, 14, 1 / 1.15)}.items():
        s = settings(preset)
        assert (s.model.embedding_size, s.model.hidden_size, s.model.num_layers, s.model.tie_weights) == (
            width, width, 2, False)
        assert (s.model.init_range, s.data.bptt, s.data.batch_size, s.trainer.max_epochs) == (init, bptt, 20, epochs)
        assert (s.optimizer.lr, s.optimizer.momentum, s.optimizer.weight_decay) == (bptt, 0.0, 0.0)
        assert s.trainer.gradient_clip_val == pytest.approx(clip / bptt)
        assert (s.scheduler.step_size, s.scheduler.first_cut) == (1, first_cut)
        assert s.scheduler.gamma == pytest.approx(gamma)


def test_the_awd_recipe_builds_the_papers_24m_parameter_network():
    """AWD-LSTM on PTB is 24M parameters (the paper's table 1): the last of the 3 layers is as wide as
    the 400-wide tied embedding, with no projection."""
    s = settings("awd_lstm_ptb")
    model = build_model(s.model, 10_000)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(24e6, rel=0.02)
    assert model.projection is None and [layer.hidden_size for layer in model.layers] == [1150, 1150, 400]
    assert (s.names["optimizer"], s.optimizer.lr, s.optimizer.nonmono, s.trainer.gradient_clip_val) == (
        "ntasgd", 30.0, 5, 0.25)
    rates = s.regularization
    assert (rates.input_dropout, rates.hidden_dropout, rates.output_dropout, rates.embed_dropout,
            rates.weight_drop, rates.locked_dropout) == (0.4, 0.25, 0.4, 0.1, 0.5, True)


def test_compare_archs_sizes_all_five_alike_and_gives_them_the_same_data_and_recipe():
    """Fair by construction: every architecture within 5% of the same parameter count on PTB's
    vocabulary, the same token budget, tokens per step, window, recipe and seeds."""
    from dataclasses import asdict

    from conftest import sweep_of
    from lmexp.sizing import fit_to_target

    sweep = sweep_of("compare_archs")
    assert sweep["+experiment/compare_archs"] == ["rnn", "gru", "lstm", "transformer", "gpt2"]
    assert len(sweep["seed"]) >= 2
    shared = set()
    for architecture in sweep["+experiment/compare_archs"]:
        s = settings("compare_archs", f"+experiment/compare_archs={architecture}")
        assert (s.names["model"], s.names["data"]) == (architecture, "ptb")
        window = getattr(s.model, "block_size", None) or s.data.bptt
        shared.add((s.model.target_params, s.trainer.max_tokens, s.trainer.max_epochs, s.data.batch_size,
                    s.data.effective_batch_size, window, s.names["optimizer"], s.optimizer.lr,
                    s.names["scheduler"], s.scheduler.warmup_steps, s.trainer.gradient_clip_val,
                    s.regularization.dropout))
        model, chosen = fit_to_target(s.model, 10_000)  # PTB's vocabulary
        assert abs(chosen["params"] - s.model.target_params) <= 0.05 * s.model.target_params
        assert asdict(model)["target_params"] is None  # the width is written out, the target cleared
    (one,) = shared
    assert one[:3] == (2_000_000, 1_000_000, -1) and one[5] == 64


def test_the_nanogpt_recipe_validates_every_n_steps_across_epochs(tmp_path, cache_dir):
    """nanoGPT validates every 250 steps whatever the epochs; so does its recipe (Lightning's
    check_val_every_n_epoch=null), here every 4 steps of epochs 3 steps long, and at the end."""
    text = tmp_path / "input.txt"
    text.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n\n" * 60)  # 3 steps of 4 x 256
    done = run_lmexp(["experiment=nanogpt_shakespeare_char", f"data.path={text}", "trainer=cpu", "data.batch_size=4",
                      "trainer.max_steps=10", "trainer.val_check_interval=4", "trainer.limit_val_batches=1",
                      "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false", "logger=csv"],
                     tmp_path, cache_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    (metrics,) = tmp_path.glob("outputs/**/metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    assert [int(r["step"]) + 1 for r in rows if r.get("val/ppl")] == [4, 8, 10]


@pytest.mark.parametrize("preset", ["zaremba_medium", "zaremba_large", "awd_lstm_ptb"])
def test_a_gpu_recipe_that_trains_in_float32_multiplies_in_float32(preset):
    """trainer=gpu sets matmul_precision=high (TF32); a recipe whose published numbers are float32's
    sets it back, or its products would be TF32's 10-bit mantissas (they were, until 2026-12-01)."""
    s = settings(preset)
    assert s.trainer.precision == "32-true" and s.trainer.matmul_precision == "highest"
