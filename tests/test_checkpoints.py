"""A checkpoint is self-contained: evaluate and generate need nothing the run was trained from.

The runs below train from files the test writes (a text corpus, a vectors file, a local GPT-2
folder with its tokenizer), delete them, and then score another corpus and sample from the
checkpoint alone. Checkpoints written before the run builder existed still load and score as
they did.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import ROOT, entry_here, entry_point, train_here
from lmexp.evaluate import evaluate

WORDS = "the cat sat on a mat while dogs ran over green hills and birds sang songs of old kings".split()


def score_and_sample(ckpt: Path, cwd: Path, cache_dir: Path, capsys) -> tuple[dict, str]:
    """lmexp.evaluate on the embedded corpus, as a user runs it (a fresh process: nothing of the
    training run's is in memory), and lmexp.generate (in the worker, whose training run held the
    files in no cache: lmexp keeps none in memory)."""
    scored = entry_point("lmexp.evaluate", [f"ckpt={ckpt}", "data=tiny", "split=valid"], cwd, cache_dir)
    assert scored.returncode == 0, scored.stderr[-3000:]
    sampled = entry_here("lmexp.generate", [f"ckpt={ckpt}", "prompt=the cat", "max_new_tokens=8", "seed=1"],
                         cache_dir, capsys)
    return json.loads(scored.stdout.strip().splitlines()[-1]), sampled


def test_text_corpus_and_pretrained_vectors_are_not_needed_after_training(tmp_path, cache_dir, capsys):
    corpus, vectors = tmp_path / "mine" / "corpus.txt", tmp_path / "mine" / "vectors.txt"
    corpus.parent.mkdir()
    generator = torch.Generator().manual_seed(0)
    lines = [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (9,), generator=generator)) for _ in range(300)]
    corpus.write_text("\n".join(lines) + "\n")
    rows = torch.randn(len(WORDS), 16, generator=generator)
    vectors.write_text(f"{len(WORDS)} 16\n" + "".join(f"{w} {' '.join(f'{v:.5f}' for v in row.tolist())}\n"
                                                     for w, row in zip(WORDS, rows)))
    results = train_here(["data=text", f"data.path={corpus}", "embedding=pretrained", f"embedding.path={vectors}",
                          "model.embedding_size=16", "model.hidden_size=16", "data.batch_size=4", "data.bptt=16",
                          "trainer.max_steps=3", "trainer.limit_val_batches=2", "trainer.enable_progress_bar=false",
                          "logger=none"], tmp_path / "run", cache_dir)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert results["embedding_vocab_coverage"] > 0.8  # the vectors file was read

    shutil.rmtree(corpus.parent)
    stored = torch.load(ckpt, weights_only=True)["hyper_parameters"]["config"]
    assert stored["data"]["path"] == str(corpus) and stored["embedding"]["path"] == str(vectors)  # named, not needed
    scored, text = score_and_sample(ckpt, tmp_path, cache_dir, capsys)
    assert scored["data"] == "tiny" and scored["tokens"] > 10_000 and scored["ppl"] > 1
    words = text.split()
    assert words[:2] == ["the", "cat"] and len(words) >= 5  # the prompt and new words (line ends print as breaks)


@pytest.fixture
def gpt2_folder(tmp_path, cache_dir):
    """A local Hugging Face GPT-2 folder: a byte-level BPE's files and a random GPT-2 of its vocabulary."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import ByteLevelBPETokenizer

    from lmexp.data.corpora import DataConfig, load_tiny

    folder = tmp_path / "hf-gpt2"
    folder.mkdir()
    bpe = ByteLevelBPETokenizer()
    bpe.train([str(load_tiny(DataConfig(), cache_dir).files["train"])], vocab_size=400, min_frequency=2,
              show_progress=False)
    bpe.save_model(str(folder))  # vocab.json, merges.txt
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=bpe.get_vocab_size())
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def test_gpt2_folder_and_its_tokenizer_are_not_needed_after_training(gpt2_folder, tmp_path, cache_dir, capsys):
    train_here(["model=gpt2", f"model.pretrained={gpt2_folder}", "tokenizer=gpt2", f"tokenizer.path={gpt2_folder}",
                "data.batch_size=4", "data.effective_batch_size=null", "trainer.max_steps=2",
                "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "trainer.enable_progress_bar=false",
                "logger=none"], tmp_path / "run", cache_dir)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    shutil.rmtree(gpt2_folder)
    stored = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    # The folder's shape, written out: the checkpoint is rebuilt without reading config.json.
    model = stored["config"]["model"]
    assert (model["n_layer"], model["n_head"], model["n_embd"], model["block_size"], model["pretrained"]) == \
        (2, 2, 32, 64, None)
    assert stored["tokenizer_state"] and json.loads(stored["tokenizer_state"])["model"]["type"] == "BPE"
    scored, text = score_and_sample(ckpt, tmp_path, cache_dir, capsys)
    # A random GPT-2 of a 400-unit vocabulary barely trained: near uniform, so near 400.
    assert scored["tokens"] > 10_000 and 100 < scored["ppl"] < 1000
    assert text.startswith("the cat") and len(text) > len("the cat")


# Written by the code before the run builder (git 87ddae2) on tests/data/small-corpus.txt, and
# what its lmexp.evaluate printed for the test split then.
BEFORE = {"lstm": {"ppl": 23.544681549072266, "tokens": 192, "word_ppl": 23.544681549072266},
          "gpt2": {"ppl": 5.262233257293701, "tokens": 904, "word_ppl": 1239.2825927734375}}


@pytest.mark.parametrize("model", sorted(BEFORE))
def test_checkpoints_written_before_the_run_builder_load_and_score_the_same(model, monkeypatch, cache_dir):
    monkeypatch.setenv("LMEXP_CACHE", str(cache_dir))
    ckpt = ROOT / "tests" / "data" / f"pre-run-builder-{model}.ckpt"
    result = evaluate(str(ckpt), "test", [f"data.path={ROOT / 'tests' / 'data' / 'small-corpus.txt'}"])
    assert result["model"] == model and result["tokens"] == BEFORE[model]["tokens"]
    assert result["ppl"] == pytest.approx(BEFORE[model]["ppl"], rel=1e-6)
    assert result["word_ppl"] == pytest.approx(BEFORE[model]["word_ppl"], rel=1e-6)


@pytest.mark.parametrize("validating", [["trainer.max_epochs=3", "trainer.limit_train_batches=4"],
                                        ["trainer.max_epochs=1", "trainer.limit_train_batches=12",
                                         "trainer.val_check_interval=4"]], ids=["at-epoch-ends", "inside-an-epoch"])
def test_last_ckpt_is_written_after_every_validation_even_one_that_did_not_improve(validating, tmp_path, cache_dir):
    """Lightning (2.6) writes last.ckpt at a validation only when a best checkpoint was written
    there. A learning rate of 3 makes every validation worse than the first: last.ckpt must still
    hold the run's last step (it held step 4 of 12, and a resumed run trained 8 steps again), for
    validations at epochs' ends and inside an epoch (another hook writes it there; a mutation
    review found that one untested)."""
    from conftest import SMALL

    run_dir = tmp_path / "run"
    results = train_here([*SMALL, "optimizer.lr=3", *validating, "trainer.limit_val_batches=2",
                          "trainer.limit_test_batches=2", "scheduler=constant"], run_dir, cache_dir)
    assert results["steps"] == 12
    best = torch.load(run_dir / "checkpoints" / Path(results["best_checkpoint"]).name, map_location="cpu",
                      weights_only=False)
    assert best["global_step"] == 4  # the first validation was the best: the others did not improve
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 12


def test_a_checkpoint_without_a_vocabulary_is_one_line(tmp_path):
    """A config but no vocabulary: the one-line refusal, not a KeyError (mutation round 7)."""
    from lmexp.checkpoint import load_module
    from lmexp.errors import UserError

    torch.save({"hyper_parameters": {"config": {}}, "state_dict": {}}, tmp_path / "x.ckpt")
    with pytest.raises(UserError, match="is not an lmexp checkpoint"):
        load_module(tmp_path / "x.ckpt")
