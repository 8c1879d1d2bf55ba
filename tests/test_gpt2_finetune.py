"""Fine-tuning from a local Hugging Face GPT-2 folder, with GPT-2's tokenizer files, end to end."""

import json
import math

import pytest
import torch

from conftest import ROOT, entry_point, run_lmexp
from lmexp.data.corpora import DataConfig, load_tiny

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory, cache_dir):
    """A small byte-level BPE trained on the tiny corpus and a random GPT-2 of its vocabulary,
    saved as transformers saves them: what a user's local copy of a hub model looks like."""
    from tokenizers import ByteLevelBPETokenizer

    folder = tmp_path_factory.mktemp("hf-gpt2")
    train = load_tiny(DataConfig(), cache_dir).files["train"]
    bpe = ByteLevelBPETokenizer()
    bpe.train([str(train)], vocab_size=400, min_frequency=2, show_progress=False)
    bpe.save_model(str(folder))  # vocab.json, merges.txt
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=bpe.get_vocab_size())
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(folder)
    return folder, model


def test_gpt2_tokenizer_round_trips_text(hf_folder):
    from lmexp.data.tokenizers import GPT2Tokenizer, GPT2TokenizerConfig

    folder, _ = hf_folder
    tok = GPT2Tokenizer(GPT2TokenizerConfig(path=str(folder)))
    line = "Anarchism is a political philosophy, naïvely 1539."
    units = tok.split(line)
    assert len(units) > 5 and tok.decode(units) == line
    vocab = tok.build_vocab([])
    assert vocab.unk is None and vocab.itos[vocab.eos] == "\u010a" and tok.decode(["\u010a"]) == "\n"


def test_finetuning_starts_from_the_pretrained_weights(hf_folder, tmp_path, cache_dir):
    folder, hf_model = hf_folder
    args = ["model=gpt2", f"model.pretrained={folder}", "tokenizer=gpt2", f"tokenizer.path={folder}",
            "optimizer.lr=1e-12", "optimizer.weight_decay=0", "data.batch_size=4", "data.effective_batch_size=null",
            "trainer.max_steps=2", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
            "trainer.enable_progress_bar=false", "logger=none"]
    result = run_lmexp(args, cwd=tmp_path, cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = list((tmp_path / "outputs").glob("*/*"))
    results = json.loads((run_dir / "results.json").read_text())
    assert results["tokenizer"] == "gpt2" and results["vocab_size"] == hf_model.config.vocab_size
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    ours = state["model.h.1.mlp.c_fc.weight"]
    theirs = hf_model.state_dict()["transformer.h.1.mlp.c_fc.weight"].t()  # HF's Conv1D is (in, out)
    assert torch.allclose(ours, theirs, atol=1e-6)  # lr 1e-12: still the pretrained weights
    assert torch.allclose(state["model.embedding.weight"], hf_model.state_dict()["transformer.wte.weight"], atol=1e-6)
    # A random GPT-2 of a 400-unit vocabulary is near uniform: perplexity near the vocabulary size.
    assert 100 < results["test_ppl"] < 1000


def test_pretrained_with_a_word_tokenizer_is_refused_in_one_line(hf_folder, tmp_path, cache_dir):
    folder, _ = hf_folder
    result = run_lmexp(["model=gpt2", f"model.pretrained={folder}", "trainer.max_steps=1"], cwd=tmp_path,
                       cache_dir=cache_dir)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("lmexp: error:")]
    assert "use the checkpoint's tokenizer" in line


def test_zero_shot_scoring_agrees_with_transformers_on_the_same_windows(hf_folder, tmp_path, cache_dir):
    """``lmexp.evaluate pretrained=FOLDER`` scores the folder's GPT-2 as it is, with its own tokenizer,
    in sliding windows (eval.stride); transformers' model on the same windows gives the same number."""
    from test_eval_stride import sliding_window_nll

    from lmexp.run import Run

    folder, hf_model = hf_folder
    corpus = ROOT / "tests" / "data" / "small-corpus.txt"  # a test split of about 1,000 words: dozens of windows
    settings = ["data=text", f"data.path={corpus}", "data.split=[0.5,0.25,0.25]", "eval.stride=24",
                "data.eval_batch_size=3"]
    done = entry_point("lmexp.evaluate", [f"pretrained={folder}", "split=test", *settings], tmp_path, cache_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    ours = json.loads(done.stdout.splitlines()[-1])
    run = Run.from_pretrained(folder, [*settings, f"paths.cache_dir={cache_dir}"], "test")
    ids = run.corpus.ids["test"]
    with torch.no_grad():
        nll = sliding_window_nll(lambda x, _: (hf_model(x).logits, None), ids, 64, 24)
    assert ours["pretrained"] == str(folder) and ours["tokens"] == len(ids) - 1 == len(nll)
    assert ours["ppl"] == pytest.approx(math.exp(nll.mean().item()), rel=1e-4)
    # Per word (lmexp/metrics.py): the scored tokens' NLL scaled to the whole split's tokens (the first
    # is never scored), over its words; compared as logs, whose float32 sums agree to 1e-5.
    split = run.corpus.stats["test"]
    assert math.log(ours["word_ppl"]) == pytest.approx(nll.sum().item() * split["tokens"] / len(nll) / split["words"],
                                                       rel=1e-5)


def test_sampling_from_a_pretrained_folder(hf_folder, tmp_path, cache_dir):
    """Named with a ~, as a README line or a shell that does not expand it passes it on."""
    folder, _ = hf_folder
    (tmp_path / "gpt2").symlink_to(folder)  # tmp_path is the command's HOME
    done = entry_point("lmexp.generate", ["pretrained=~/gpt2", "prompt=The cat", "max_new_tokens=5", "seed=1"],
                       tmp_path, cache_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("The cat") and len(done.stdout.strip()) > len("The cat")


def test_greedy_sampling_from_a_pretrained_folder_is_transformers_greedy_decoding(hf_folder, cache_dir):
    """A pretrained folder is sampled without dropout (the default regularization's 0.2 is for
    training): greedy decoding is transformers' own, the same each time, whatever mode the model was in."""
    from lmexp.run import Run
    from lmexp.sampling import sample

    folder, hf_model = hf_folder
    run = Run.from_pretrained(folder, [f"paths.cache_dir={cache_dir}"])
    assert not run.module.training
    prompt = [5, 17, 42]
    expected = hf_model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                 pad_token_id=0)[0, len(prompt):].tolist()
    model = run.module.model.train()  # as a caller mid-training would hand it over
    assert sample(model, prompt, 12, temperature=0) == expected
    assert model.training  # left as it was
    assert sample(model.eval(), prompt, 12, temperature=0, use_cache=False) == expected


def test_top_k_samples_only_the_k_largest_logits():
    from lmexp.sampling import pick

    logits = torch.tensor([0.0, 4.0, 3.0, 2.0, 1.0, 2.5])
    generator = torch.Generator().manual_seed(0)
    for k, allowed in ((1, {1}), (2, {1, 2}), (3, {1, 2, 5})):
        drawn = {pick(logits, 100.0, k, generator) for _ in range(300)}  # hot: nearly uniform among the kept
        assert drawn == allowed, k
    # no top_k, or one >= the vocabulary: every id may come
    assert {pick(logits, 100.0, None, generator) for _ in range(500)} == set(range(6))
    assert {pick(logits, 100.0, 6, generator) for _ in range(500)} == set(range(6))


def test_temperature_divides_the_logits_once():
    """Draws at temperature 2 follow softmax(logits / 2) (dividing twice gives softmax(logits / 4):
    [0.26, 0.34, 0.40] against [0.19, 0.31, 0.51])."""
    from lmexp.sampling import pick

    logits = torch.tensor([0.0, 1.0, 2.0])
    generator = torch.Generator().manual_seed(0)
    draws = torch.tensor([pick(logits, 2.0, None, generator) for _ in range(4000)])
    seen = torch.bincount(draws, minlength=3).double() / len(draws)
    torch.testing.assert_close(seen, torch.softmax(logits.double() / 2, 0), atol=0.03, rtol=0)


def small_gpt2(block_size=16, dropout=0.0):
    """A 2-layer, 32-wide GPT-2 of 101 ids with weights drawn wide (greedy choices never near ties)."""
    import torch
    from lmexp.models.gpt2 import GPT2
    from lmexp.options.model import GPT2Config

    torch.manual_seed(0)
    model = GPT2(GPT2Config(size="tiny", n_layer=2, n_head=2, n_embd=32, block_size=block_size), vocab_size=101,
                 dropout=dropout)
    with torch.no_grad():  # weights far from GPT-2's init: greedy choices are never near-ties
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


@pytest.mark.parametrize("training", [False, True])
def test_sampling_leaves_the_model_in_the_mode_it_was_in(training):
    from lmexp.sampling import sample

    model = small_gpt2(dropout=0.5).train(training)
    sample(model, [5, 17, 2], 4, temperature=0)
    assert model.training is training
    assert all(m.training is training for m in model.modules())


def test_kv_cache_sampling_past_the_block_size_is_recomputation():
    """The window is read again once the context outgrows block_size: the same tokens as without a cache."""
    import torch
    from lmexp.sampling import sample

    model = small_gpt2(block_size=16).eval()
    prompt = [5, 17, 2, 9, 40, 3]
    for temperature, top_k in ((0, None), (0.8, 20)):
        cached, plain = (sample(model, prompt, 30, temperature, top_k, torch.Generator().manual_seed(1),
                                use_cache=use) for use in (True, False))  # 36 > 16: well past the window
        assert cached == plain
