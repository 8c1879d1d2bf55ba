"""Every model trains end to end from the command line; evaluate and generate use its checkpoints."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import clean_env, run_lmexp

# Each model shrunk to train a few steps in seconds on 2 cores.
MODELS = {
    "rnn": ["model.embedding_size=32", "model.hidden_size=32"],
    "gru": ["model.embedding_size=32", "model.hidden_size=32"],
    "lstm": ["model.embedding_size=32", "model.hidden_size=32"],
    "transformer": ["model.d_model=32", "model.n_head=2", "model.n_layer=2", "model.d_ff=64", "model.block_size=32"],
    "gpt2": ["model.size=tiny", "model.n_embd=32", "model.block_size=32"],
}
COMMON = ["data.batch_size=8", "data.bptt=16", "trainer.max_steps=12", "trainer.limit_val_batches=20",
          "trainer.limit_test_batches=20", "trainer.enable_progress_bar=false", "logger=csv"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir):
    out = {}
    for name, args in MODELS.items():
        cwd = tmp_path_factory.mktemp(name)
        result = run_lmexp([f"model={name}", *args, *COMMON], cwd=cwd, cache_dir=cache_dir)
        assert result.returncode == 0, f"model={name}: {result.stderr[-3000:]}"
        (run_dir,) = list((cwd / "outputs").glob("*/*"))
        out[name] = (run_dir, json.loads((run_dir / "results.json").read_text()))
    return out


def command(module, args, cwd, cache_dir):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=clean_env(cache_dir, cwd),
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_trains_validates_and_tests(runs, name):
    _, results = runs[name]
    assert results["model"] == name and results["steps"] == 12
    assert 1 < results["test_ppl"] < 3 * results["vocab_size"] and results["best_val_ppl"] > 1
    assert 0 < results["params_without_embeddings"] < results["params"]


def test_evaluate_scores_the_whole_split_for_an_attention_model(runs, cache_dir, tmp_path):
    run_dir, results = runs["gpt2"]
    result = command("lmexp.evaluate", [f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", "split=valid"], tmp_path,
                     cache_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["split"] == "valid" and got["model"] == "gpt2" and got["ppl"] > 1
    assert got["tokens"] == 63262 - 1  # every token of the split but the first (the run used 20 batches)


def test_evaluate_matches_the_training_runs_number(tmp_path, cache_dir):
    """Without batch limits, evaluate on the best checkpoint gives the run's test perplexity."""
    args = ["model.embedding_size=16", "model.hidden_size=16", "data.batch_size=8", "data.bptt=16",
            "trainer.max_steps=5", "trainer.enable_progress_bar=false", "logger=none"]
    assert run_lmexp(args, cwd=tmp_path, cache_dir=cache_dir).returncode == 0
    (run_dir,) = list((tmp_path / "outputs").glob("*/*"))
    results = json.loads((run_dir / "results.json").read_text())
    ckpt = results["best_checkpoint"] or str(run_dir / "checkpoints" / "last.ckpt")
    result = command("lmexp.evaluate", [f"ckpt={ckpt}", "split=test"], tmp_path, cache_dir)
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["tokens"] == results["test_tokens"]
    assert got["ppl"] == pytest.approx(results["test_ppl"], rel=1e-6)


@pytest.mark.parametrize("name", ["lstm", "transformer", "gpt2"])
def test_generate_samples_reproducibly_from_a_checkpoint(runs, name, cache_dir, tmp_path):
    run_dir, _ = runs[name]
    args = [f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", "prompt=The history of", "max_new_tokens=12",
            "temperature=0.8", "top_k=40", "seed=1"]
    first = command("lmexp.generate", args, tmp_path, cache_dir)
    assert first.returncode == 0, first.stderr[-2000:]
    text = first.stdout.strip()
    assert text.startswith("The history of") and len(text.split()) >= 3 + 12 - text.count("\n")
    assert command("lmexp.generate", args, tmp_path, cache_dir).stdout.strip() == text


def test_kv_cache_generation_equals_recomputation(runs):
    from lmexp.checkpoint import load_module
    from lmexp.generate import sample

    run_dir, _ = runs["gpt2"]
    model = load_module(run_dir / "checkpoints" / "last.ckpt").model
    prompt = [5, 17, 2, 9]
    with_cache = sample(model, prompt, 40, temperature=0, use_cache=True)  # runs past block_size=32
    without = sample(model, prompt, 40, temperature=0, use_cache=False)
    assert with_cache == without


@pytest.mark.parametrize("content,message", [
    (b"not a checkpoint at all", "cannot be read"),
    (None, "does not exist"),
])
def test_bad_checkpoint_is_one_line(tmp_path, cache_dir, content, message):
    ckpt = tmp_path / "broken.ckpt"
    if content is not None:
        ckpt.write_bytes(content)
    for module in ("lmexp.evaluate", "lmexp.generate"):
        result = command(module, [f"ckpt={ckpt}"], tmp_path, cache_dir)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("lmexp: error: checkpoint") and message in line


def test_truncated_checkpoint_is_one_line(runs, tmp_path, cache_dir):
    run_dir, _ = runs["lstm"]
    data = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    ckpt = tmp_path / "truncated.ckpt"
    ckpt.write_bytes(data[: len(data) // 2])
    result = command("lmexp.evaluate", [f"ckpt={ckpt}"], tmp_path, cache_dir)
    assert result.returncode == 2 and "cannot be read" in result.stderr and "Traceback" not in result.stderr
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)  # the original is intact


def test_a_bpe_checkpoint_generates_and_evaluates_on_its_own(tmp_path, cache_dir):
    """The trained BPE travels inside the checkpoint: no cache entry is needed to encode a prompt."""
    args = ["tokenizer=bpe", "tokenizer.vocab_size=400", "model.embedding_size=16", "model.hidden_size=16",
            "data.batch_size=8", "data.bptt=16", "trainer.max_steps=3", "trainer.limit_val_batches=2",
            "trainer.limit_test_batches=2", "trainer.enable_progress_bar=false", "logger=none"]
    assert run_lmexp(args, cwd=tmp_path, cache_dir=cache_dir).returncode == 0
    (ckpt,) = list((tmp_path / "outputs").glob("*/*/checkpoints/last.ckpt"))
    empty_cache = tmp_path / "empty-cache"
    result = command("lmexp.generate", [f"ckpt={ckpt}", "prompt=The history of", "max_new_tokens=8", "seed=1"],
                     tmp_path, empty_cache)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("The history of")
    result = command("lmexp.evaluate", [f"ckpt={ckpt}", "split=valid"], tmp_path, empty_cache)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["bpb"] > 0
