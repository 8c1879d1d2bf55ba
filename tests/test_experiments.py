"""The ``experiment=`` presets: each composes into a valid run, sets what its recipe says, yields
to the command line, and builds the same network as the reference it reproduces."""

import sys

import pytest

from conftest import CONF_DIR, ROOT, SMALL, run_lmexp
from lmexp.cli import compose
from lmexp.config import load_settings
from lmexp.models import build_model

sys.path.insert(0, str(ROOT / "benchmarks"))
import references  # noqa: E402  (the re-implemented references, benchmarks/references.py)

PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
NEEDS = {"nanogpt_shakespeare_char": ["data.path=input.txt"]}


def settings(preset, *overrides):
    return load_settings(compose([f"experiment={preset}", *NEEDS.get(preset, []), *overrides]))


def test_the_benchmark_presets_are_all_here():
    assert {preset for preset, _, _ in references.RECIPES.values()} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_composes_and_validates(preset):
    s = settings(preset)
    assert s.names["model"] in ("lstm", "transformer", "gpt2")


def test_the_lstm_preset_is_the_examples_recipe():
    s = settings("pytorch_examples_lstm")
    assert s.names == {**s.names, "data": "ptb", "model": "lstm", "optimizer": "sgd", "scheduler": "plateau"}
    assert (s.model.embedding_size, s.model.hidden_size, s.model.num_layers, s.model.tie_weights) == (200, 200, 2, False)
    assert (s.data.batch_size, s.data.bptt, s.optimizer.lr, s.optimizer.momentum) == (20, 35, 20.0, 0.0)
    assert (s.scheduler.factor, s.scheduler.patience, s.trainer.gradient_clip_val) == (0.25, 0, 0.25)
    assert (s.regularization.dropout, s.regularization.embed_dropout, s.regularization.weight_drop) == (0.2, 0.0, 0.0)


def test_the_command_line_wins_over_a_preset():
    s = settings("pytorch_examples_lstm", "data=tiny", "optimizer.lr=1.5", "model.num_layers=3")
    assert (s.names["data"], s.optimizer.lr, s.model.num_layers, s.data.bptt) == ("tiny", 1.5, 3, 35)


@pytest.mark.parametrize("preset, reference", [
    ("pytorch_examples_lstm", lambda v: references.ExamplesRNN(v, 200, 200, 2, 0.2)),
    ("pytorch_examples_transformer", lambda v: references.ExamplesTransformer(v, 200, 2, 200, 2, 0.2)),
    ("nanogpt_shakespeare_char", lambda v: references.NanoGPT(v, 4, 4, 128, 64)),
])
def test_each_preset_builds_the_references_network(preset, reference):
    """Same parameter count as the reference's network for the same vocabulary: the speed
    comparison in benchmarks/references.py is of the same amount of arithmetic."""
    vocab = 1000
    ours = build_model(settings(preset).model, vocab)
    theirs = reference(vocab)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


def test_a_preset_trains(tmp_path, cache_dir):
    """A preset end to end, on the embedded corpus so that no data is needed."""
    done = run_lmexp(["experiment=pytorch_examples_transformer", "data=tiny", "logger=csv", "trainer.max_steps=6",
                      "trainer.max_epochs=1", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
                      *[a for a in SMALL if a.startswith("trainer.")]], tmp_path, cache_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "lmexp: transformer on tiny: test ppl" in done.stdout


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
