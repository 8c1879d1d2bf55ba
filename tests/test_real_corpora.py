"""The released corpora in ../shared/data (beside the project's root), when they are there.

Token counts count one <eos> per line, blank lines included, as the published figures do.
Set LMEXP_SHARED_DATA to point elsewhere; each test is skipped, with the reason, without them.
"""

import json
import os
import shutil
from pathlib import Path

import pytest

from lmexp.data.cache import tokenize_corpus
from lmexp.data.corpora import PTBConfig, WikiTextConfig, CORPORA
from lmexp.data.tokenizers import WordTokenizer, WordTokenizerConfig
from lmexp.errors import UserError

SHARED = Path(os.environ.get("LMEXP_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def need(folder: str) -> Path:
    path = SHARED / folder
    if not path.is_dir():
        pytest.skip(f"{path} is absent (set LMEXP_SHARED_DATA to a folder holding {folder}/)")
    return path


def test_penn_treebank_matches_the_published_counts(tmp_path):
    root = need("ptb")
    config = PTBConfig(root=str(root))
    corpus = CORPORA.option("ptb").make(config, tmp_path)
    data = tokenize_corpus(corpus, WordTokenizer(WordTokenizerConfig(), pretokenized=config.pretokenized()), tmp_path)
    assert len(data.vocab) == 10_000
    assert {s: data.stats[s]["tokens"] for s in data.stats} == {"train": 929_589, "valid": 73_760, "test": 82_430}
    assert data.stats["train"]["unk"] == 45_020
    again = tokenize_corpus(corpus, WordTokenizer(WordTokenizerConfig(), pretokenized=True), tmp_path)
    assert again.from_cache and again.path == data.path


def test_wikitext2_valid_and_test_match_the_published_counts(tmp_path):
    """The train split cannot be had here: a copy of valid stands in for it, in WikiText's layout."""
    source = need("wikitext-2")
    root = tmp_path / "wikitext-2"
    root.mkdir()
    for split in ("valid", "test"):
        shutil.copy(source / f"{split}.txt", root / f"wiki.{split}.tokens")
    shutil.copy(source / "valid.txt", root / "wiki.train.tokens")
    config = WikiTextConfig(root=str(root))
    corpus = CORPORA.option("wikitext-2").make(config, tmp_path)
    data = tokenize_corpus(corpus, WordTokenizer(WordTokenizerConfig(), pretokenized=config.pretokenized()), tmp_path)
    assert data.stats["valid"]["tokens"] == 217_646 and data.stats["test"]["tokens"] == 245_569
    assert data.stats["valid"]["lines"] == 3_760 and data.stats["test"]["lines"] == 4_358
    assert len(data.vocab) == 13_776 + 1  # valid's distinct words (with <unk>), plus <eos>


def test_missing_release_says_where_to_put_it(tmp_path):
    with pytest.raises(UserError, match=r"data=ptb: ptb.train.txt/ptb.valid.txt/ptb.test.txt or .* not found in "
                                        r".*corpora/ptb; put the files there, or set data.root"):
        CORPORA.option("ptb").make(PTBConfig(download=False), tmp_path)
    with pytest.raises(UserError, match=r"data.root=/nowhere does not exist"):
        CORPORA.option("ptb").make(PTBConfig(root="/nowhere"), tmp_path)


def test_word_perplexity_equals_token_perplexity_on_ptb(tmp_path, cache_dir):
    from conftest import SMALL, run_lmexp

    root = need("ptb")
    result = run_lmexp(["data=ptb", f"data.root={root}", *SMALL, "trainer.max_steps=3", "trainer.limit_val_batches=3",
                        "logger=none"], cwd=tmp_path, cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    (results_file,) = list((tmp_path / "outputs").glob("*/*/results.json"))
    results = json.loads(results_file.read_text())
    assert results["test_word_ppl"] == pytest.approx(results["test_ppl"], rel=1e-9)
    assert results["val_word_ppl"] == pytest.approx(results["best_val_ppl"], rel=1e-9)
    assert 0 < results["test_bpb"] < 20
