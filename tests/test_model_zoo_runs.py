"""Every model trains end to end from the command line; evaluate and generate use its checkpoints."""

import json
import math

import numpy as np
import pytest
import torch

from conftest import entry_here, entry_point, train_here
from lmexp.data.corpora import CORPORA, DataConfig
from lmexp.run import Run
from oracles import stream_nll, window_nll

# Each model shrunk to train a few steps in seconds on 2 cores.
MODELS = {
    "rnn": ["model.embedding_size=32", "model.hidden_size=32"],
    "gru": ["model.embedding_size=32", "model.hidden_size=32"],
    "lstm": ["model.embedding_size=32", "model.hidden_size=32"],
    "transformer": ["model.d_model=32", "model.n_head=2", "model.n_layer=2", "model.d_ff=64", "model.block_size=32"],
    # GPT-2's recipe would accumulate 8-row micro-batches to its 32-row step: 8 rows it is, as for the others.
    "gpt2": ["model.size=tiny", "model.n_embd=32", "model.block_size=32", "data.effective_batch_size=null"],
}
COMMON = ["data.batch_size=8", "data.bptt=16", "trainer.max_steps=12", "trainer.limit_val_batches=20",
          "trainer.limit_test_batches=20", "trainer.enable_progress_bar=false", "logger=csv"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir):
    """Each model trained in this process (conftest.train_here)."""
    out = {}
    for name, args in MODELS.items():
        run_dir = tmp_path_factory.mktemp(name) / "run"
        out[name] = (run_dir, train_here([f"model={name}", *args, *COMMON], run_dir, cache_dir))
    return out


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_trains_validates_and_tests(runs, name, cache_dir):
    """The run's test perplexity, recomputed from its best checkpoint's forward pass alone over
    the same 20 test batches (data.eval_batch_size=16 rows of data.bptt=16, or 16 windows)."""
    run_dir, results = runs[name]
    assert results["model"] == name and results["steps"] == 12 and results["best_val_ppl"] > 1
    assert 0 < results["params_without_embeddings"] < results["params"]
    tested = results["best_checkpoint"] or run_dir / "checkpoints" / "last.ckpt"  # no best: the last weights
    run = Run.from_checkpoint(tested, [f"paths.cache_dir={cache_dir}"], split="test")
    model, ids = run.module.model, np.asarray(run.corpus.ids["test"])
    if run.module.block_size is None:
        nll = stream_nll(model, ids, rows=16, bptt=16)[:, : 20 * 16]
    else:
        nll = torch.cat(window_nll(model, ids, run.module.block_size)[: 20 * 16])
    assert results["test_tokens"] == nll.numel()
    assert results["test_ppl"] == pytest.approx(math.exp(nll.mean().item()), rel=1e-5)


def test_evaluate_scores_the_whole_split_for_an_attention_model(runs, cache_dir, tmp_path):
    run_dir, results = runs["gpt2"]
    result = entry_point("lmexp.evaluate", [f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", "split=valid"], tmp_path,
                         cache_dir, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["split"] == "valid" and got["model"] == "gpt2" and got["ppl"] > 1
    assert got["tokens"] == 63262 - 1  # every token of the split but the first (the run used 20 batches)


def test_evaluate_matches_the_training_runs_number(tmp_path, cache_dir, capsys):
    """Without batch limits, evaluate on the best checkpoint gives the run's test perplexity."""
    args = ["model.embedding_size=16", "model.hidden_size=16", "data.batch_size=8", "data.bptt=16",
            "trainer.max_steps=5", "trainer.enable_progress_bar=false", "logger=none"]
    run_dir = tmp_path / "run"
    results = train_here(args, run_dir, cache_dir)
    ckpt = results["best_checkpoint"] or str(run_dir / "checkpoints" / "last.ckpt")
    got = json.loads(entry_here("lmexp.evaluate", [f"ckpt={ckpt}", "split=test"], cache_dir, capsys).splitlines()[-1])
    assert got["tokens"] == results["test_tokens"]
    assert got["ppl"] == pytest.approx(results["test_ppl"], rel=1e-6)


@pytest.mark.parametrize("name", ["lstm", "transformer", "gpt2"])
def test_generate_samples_reproducibly_from_a_checkpoint(runs, name, cache_dir, tmp_path, capsys):
    run_dir, _ = runs[name]
    args = [f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", "prompt=The history of", "max_new_tokens=12",
            "temperature=0.8", "top_k=40", "seed=1"]
    if name == "gpt2":  # as a user runs it; the other models' command lines in the worker
        first = entry_point("lmexp.generate", args, tmp_path, cache_dir, timeout=300)
        assert first.returncode == 0, first.stderr[-2000:]
        text = first.stdout.strip()
    else:
        text = entry_here("lmexp.generate", args, cache_dir, capsys).strip()
    assert text.startswith("The history of") and len(text.split()) >= 3 + 12 - text.count("\n")
    assert entry_here("lmexp.generate", args, cache_dir, capsys).strip() == text  # again (here, in this process): the same text


def spread(model, seed: int = 0, std: float = 0.5):
    """Weights far from a 12-step model's near-uniform predictions: a wrong cache or state
    changes which token comes next."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)
    return model


def assert_varied(tokens: list[int]) -> None:
    assert len(set(tokens)) > 3  # not one token repeated (greedy decoding may still fall into a loop)


def test_kv_cache_generation_equals_recomputation(runs):
    from lmexp.checkpoint import load_module
    from lmexp.sampling import sample

    run_dir, _ = runs["gpt2"]
    model = spread(load_module(run_dir / "checkpoints" / "last.ckpt").model)
    prompt = [5, 17, 2, 9]
    for temperature, top_k in ((0, None), (0.8, 40)):  # greedy, then sampling with a fixed seed
        with_cache, without = (sample(model, prompt, 40, temperature, top_k, torch.Generator().manual_seed(1),
                                      use_cache=cached) for cached in (True, False))  # runs past block_size=32
        assert with_cache == without
        assert_varied(with_cache)
    other_prompt = sample(model, [6, 17, 2, 9], 40, temperature=0)
    assert other_prompt != sample(model, prompt, 40, temperature=0)  # the prompt matters


@torch.no_grad()
def test_recurrent_generation_carries_its_state_as_recomputation_would(runs):
    """Each new token read with the carried state gives the logits of reading the whole
    sequence so far again from an empty state."""
    from lmexp.checkpoint import load_module
    from lmexp.sampling import sample

    run_dir, _ = runs["lstm"]
    model = spread(load_module(run_dir / "checkpoints" / "last.ckpt").model, std=1.0)
    prompt = [5, 17, 2, 9]
    generated = sample(model, prompt, 30, temperature=0)
    recomputed = []
    for _ in range(30):
        logits, _ = model(torch.tensor([prompt + recomputed]))
        recomputed.append(int(logits[0, -1].argmax()))
    assert generated == recomputed
    assert_varied(generated)
    # The control: a state reset before each new token generates something else.
    forgetful = [int(model(torch.tensor([[t]]))[0][0, -1].argmax()) for t in [prompt[-1], *generated[:-1]]]
    assert forgetful != generated


def test_generate_with_and_without_the_cache_from_the_command_line(runs, cache_dir, tmp_path, capsys):
    checkpoint = torch.load(runs["gpt2"][0] / "checkpoints" / "last.ckpt", weights_only=True)
    generator = torch.Generator().manual_seed(0)
    for value in checkpoint["state_dict"].values():
        if value.is_floating_point():
            value.copy_(torch.randn(value.shape, generator=generator) * 0.5)
    ckpt = tmp_path / "spread.ckpt"
    torch.save(checkpoint, ckpt)
    args = [f"ckpt={ckpt}", "prompt=The history of", "max_new_tokens=40", "temperature=0.8", "top_k=40", "seed=1"]
    result = entry_point("lmexp.generate", [*args, "cache=true"], tmp_path, cache_dir, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    texts = [result.stdout.strip(), entry_here("lmexp.generate", [*args, "cache=false"], cache_dir, capsys).strip()]
    assert texts[0] == texts[1]
    assert_varied(texts[0].split()[3:])


def test_a_bpe_checkpoint_generates_and_evaluates_on_its_own(tmp_path, cache_dir, capsys):
    """The trained BPE travels inside the checkpoint: no cache entry is needed to encode a prompt."""
    text = tmp_path / "text.txt"  # 600 lines of the embedded corpus: tokenized again below, in an empty cache
    text.write_text("".join(CORPORA.option("tiny").make(DataConfig(), cache_dir).files["train"].open().readlines()[:600]))
    args = ["data=text", f"data.path={text}", "tokenizer=bpe", "tokenizer.vocab_size=400", "model.embedding_size=16",
            "model.hidden_size=16",
            "data.batch_size=8", "data.bptt=16", "trainer.max_steps=3", "trainer.limit_val_batches=2",
            "trainer.limit_test_batches=2", "trainer.enable_progress_bar=false", "logger=none"]
    train_here(args, tmp_path / "run", cache_dir)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    empty_cache = tmp_path / "empty-cache"
    result = entry_point("lmexp.generate", [f"ckpt={ckpt}", "prompt=The history of", "max_new_tokens=8", "seed=1"],
                         tmp_path, empty_cache, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("The history of")
    scored = entry_here("lmexp.evaluate", [f"ckpt={ckpt}", "split=valid"], empty_cache, capsys)
    assert json.loads(scored.strip().splitlines()[-1])["bpb"] > 0


def test_a_tiny_temperature_samples_the_largest_logit_and_numbers_read_as_typed():
    """temperature=1e-40 divided the logits to infinities (softmax: NaN, a traceback); 1e-6 on
    the command line was text to YAML 1.1, refused as not a number; pretrained=2024 was a number."""
    from lmexp.cli import parse_command_line
    from lmexp.generate import OPTIONS
    from lmexp.sampling import pick

    generator = torch.Generator().manual_seed(0)
    logits = torch.tensor([1.0, 3.0, 2.0, -5.0])
    assert {pick(logits, t, None, generator) for t in (1e-40, 1e-300) for _ in range(5)} == {1}
    options, _ = parse_command_line(["temperature=1e-6", "pretrained=2024", "prompt=~", "top_k=3", "seed=null"],
                                    OPTIONS, groups=())
    assert (options["temperature"], options["pretrained"], options["prompt"]) == (1e-6, "2024", "~")
    assert (options["top_k"], options["seed"]) == (3, None)


def test_evaluate_runs_on_this_machine_whatever_the_trainer_settings_it_is_given(runs, cache_dir, tmp_path):
    """A checkpoint keeps the training machine's trainer settings (here four GPUs under DDP). Any
    trainer.* setting on the command line made evaluate take all of them: four processes, or
    Lightning's 'No supported gpu backend found' on a machine without one."""
    from lmexp.evaluate import evaluate

    run_dir, _ = runs["lstm"]
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    saved["hyper_parameters"]["config"]["trainer"].update(accelerator="gpu", devices=4, strategy="ddp")
    torch.save(saved, tmp_path / "gpus.ckpt")
    for overrides in ([], ["trainer.precision=32-true"]):
        got = evaluate(str(tmp_path / "gpus.ckpt"), "valid", [f"paths.cache_dir={cache_dir}", *overrides])
        assert got["processes"] == 1 and got["ppl"] > 1


def test_a_prompt_may_write_the_unknown_unit_as_the_refusal_advises(runs, cache_dir, capsys):
    """'write <unk> for them', said of a prompt's unknown words, could not be followed: the word
    tokenizer cut <unk> into '<', 'unk', '>' and refused those in turn."""
    from lmexp.data.tokenizers import CharTokenizer, CharTokenizerConfig
    from lmexp.generate import prompt_units

    run_dir, _ = runs["lstm"]
    args = [f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", "prompt=<unk> of the", "max_new_tokens=3", "seed=1"]
    assert entry_here("lmexp.generate", args, cache_dir, capsys).strip().startswith("<unk> of the")
    assert prompt_units(CharTokenizer(CharTokenizerConfig()), "a <unk>b<unk>", "<unk>") == ["a", " ", "<unk>", "b", "<unk>"]
