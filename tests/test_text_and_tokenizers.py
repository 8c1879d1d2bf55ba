"""tokenizer=char, tokenizer=bpe and data=text: real files in tmp_path, real training of the BPE."""

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from conftest import run_lmexp
from lmexp.schema import parse
from lmexp.data.cache import tokenize_corpus
from lmexp.data.corpora import Corpus, TextConfig, cut_bounds, load_text
from lmexp.data.tokenizers import (EOS, UNK, BPETokenizer, BPETokenizerConfig, CharTokenizer, CharTokenizerConfig,
                                   TOKENIZERS, WordTokenizer, WordTokenizerConfig)
from lmexp.errors import ConfigError, UserError

TEXT = ("The quick brown fox jumps over the lazy dog.\n"
        "Ça coûte 5 € — naïve café, Ünïcödé; 日本語のテキスト 🙂\n"
        "  leading spaces, trailing tabs\t\n"
        "\n"
        "last line\n")


def write_corpus(folder: Path, train: str, valid: str, test: str, name: str = "fixture") -> Corpus:
    files = {}
    for split, text in (("train", train), ("valid", valid), ("test", test)):
        files[split] = folder / f"{split}.txt"
        files[split].write_text(text, encoding="utf-8")
    return Corpus(name, files)


def sentences(n: int, seed: int = 0) -> str:
    words = "the a cat dog sat on mat and ran to house garden over under big small red blue".split()
    rng = random.Random(seed)
    return "".join(" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + ".\n" for _ in range(n))


def decoded(corpus, split: str, tokenizer) -> str:
    return tokenizer.decode([corpus.vocab.itos[i] for i in np.asarray(corpus.ids[split])])


# --- tokenizer=char ---------------------------------------------------------------------------


@pytest.mark.parametrize("as_bytes", [False, True])
def test_char_round_trip_is_exact(tmp_path, as_bytes):
    corpus = write_corpus(tmp_path, TEXT, TEXT, TEXT)
    tokenizer = CharTokenizer(CharTokenizerConfig(bytes=as_bytes))
    tokenized = tokenize_corpus(corpus, tokenizer, tmp_path / "cache")
    assert decoded(tokenized, "test", tokenizer) == TEXT
    assert tokenized.stats["test"]["unk"] == 0
    itos = tokenized.vocab.itos
    assert itos[:2] == [UNK, "\n"] and tokenized.vocab.eos == 1
    if as_bytes:
        assert all(len(u) == 1 and ord(u) < 256 for u in itos[1:])
        assert tokenized.stats["test"]["tokens"] == len(TEXT.encode("utf-8"))
    else:
        assert "日" in itos and "🙂" in itos
        assert tokenized.stats["test"]["tokens"] == len(TEXT)


def test_char_vocabulary_comes_from_train_only(tmp_path):
    corpus = write_corpus(tmp_path, "aab\nab\n", "abz\n", "xyz\n")
    tokenizer = CharTokenizer(CharTokenizerConfig())
    tokenized = tokenize_corpus(corpus, tokenizer, tmp_path / "cache")
    assert tokenized.vocab.itos == [UNK, "\n", "a", "b"]  # most frequent first
    assert tokenized.stats["valid"]["unk"] == 1 and tokenized.stats["test"]["unk"] == 3
    assert decoded(tokenized, "valid", tokenizer) == f"ab{UNK}\n"


def test_char_min_freq_and_lowercase(tmp_path):
    tokenizer = CharTokenizer(CharTokenizerConfig(min_freq=2, lowercase=True))
    vocab = tokenizer.build_vocab([tokenizer.split("AaBc")])
    assert vocab.itos == [UNK, "\n", "a"]
    assert tokenizer.settings() != CharTokenizer(CharTokenizerConfig()).settings()  # a new cache entry
    with pytest.raises(ConfigError, match=r"^tokenizer.min_freq=0: must be a positive integer$"):
        parse(CharTokenizerConfig, {"min_freq": 0}, "tokenizer")


def test_char_bytes_decode_shows_broken_utf8_as_replacement():
    tokenizer = CharTokenizer(CharTokenizerConfig(bytes=True))
    units = tokenizer.split("é")
    assert len(units) == 2 and tokenizer.decode(units) == "é"
    assert tokenizer.decode(units[:1]) == "\ufffd"


# --- tokenizer=bpe ----------------------------------------------------------------------------


class CountingBPE(BPETokenizer):
    fits = 0

    def fit(self, train_lines):
        CountingBPE.fits += 1
        super().fit(train_lines)


def test_bpe_trains_keeps_its_size_round_trips_and_is_cached(tmp_path):
    train = sentences(400) + TEXT
    corpus = write_corpus(tmp_path, train, sentences(30, seed=1), TEXT)
    config = BPETokenizerConfig(vocab_size=300, min_frequency=2)
    CountingBPE.fits = 0
    first = tokenize_corpus(corpus, CountingBPE(config), tmp_path / "cache")
    assert CountingBPE.fits == 1 and not first.from_cache
    assert 258 <= len(first.vocab) <= 300
    assert first.vocab.unk is None and first.vocab.itos[first.vocab.eos] == EOS
    assert (first.path / "tokenizer.json").is_file()
    # Merges were learned: fewer tokens than bytes.
    assert first.stats["train"]["tokens"] < first.stats["train"]["bytes"]

    again = CountingBPE(config)
    second = tokenize_corpus(corpus, again, tmp_path / "cache")
    assert second.from_cache and CountingBPE.fits == 1  # not trained again
    assert second.path == first.path and second.vocab.itos == first.vocab.itos
    for split, text in (("train", train), ("test", TEXT)):
        assert decoded(second, split, again) == text  # the restored tokenizer decodes exactly
    assert again.split("the cat sat") == BPETokenizer.load(first.path / "tokenizer.json").split("the cat sat")

    # Another size is another entry.
    CountingBPE.fits = 0
    bigger = tokenize_corpus(corpus, CountingBPE(BPETokenizerConfig(vocab_size=400)), tmp_path / "cache")
    assert CountingBPE.fits == 1 and bigger.path != first.path and len(bigger.vocab) > len(first.vocab)


def test_bpe_untrained_and_bad_size_are_one_line():
    with pytest.raises(UserError, match="tokenizer=bpe has not been trained"):
        BPETokenizer(BPETokenizerConfig()).split("text")
    with pytest.raises(ConfigError, match=r"^tokenizer.vocab_size=100: must be at least 258"):
        parse(BPETokenizerConfig, {"vocab_size": 100}, "tokenizer")


def test_registered_names():
    assert TOKENIZERS.option("char") == (CharTokenizer, CharTokenizerConfig)
    assert TOKENIZERS.option("bpe") == (BPETokenizer, BPETokenizerConfig)


# --- data=text --------------------------------------------------------------------------------


def text_config(**values) -> TextConfig:
    return parse(TextConfig, values, "data")


def split_lines(corpus: Corpus) -> dict:
    return {s: p.read_text(encoding="utf-8").splitlines() for s, p in corpus.files.items()}


def test_text_path_is_cut_in_order_at_line_boundaries(tmp_path):
    source = tmp_path / "input.txt"
    lines = [f"line {i} é" for i in range(100)]
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    corpus = load_text(text_config(path=str(source)), tmp_path / "cache")
    parts = split_lines(corpus)
    assert [len(parts[s]) for s in ("train", "valid", "test")] == [90, 5, 5]
    assert parts["train"] + parts["valid"] + parts["test"] == lines
    assert corpus.files["train"].parent.parent == tmp_path / "cache" / "corpora"
    assert corpus.files["train"].parent.name.startswith("text-")

    written = corpus.files["train"].stat().st_mtime_ns
    assert load_text(text_config(path=str(source)), tmp_path / "cache").files == corpus.files
    assert corpus.files["train"].stat().st_mtime_ns == written  # written once

    nano = load_text(text_config(path=str(source), split=[0.9, 0.1, 0]), tmp_path / "cache")
    assert nano.files["train"].parent != corpus.files["train"].parent  # the fractions are in the key
    assert [len(v) for v in split_lines(nano).values()] == [90, 10]
    assert "test" not in nano.files  # a zero fraction: the split does not exist


def test_text_folder_of_txt_files_is_read_in_name_order(tmp_path):
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "b.txt").write_text("b1\nb2\n")
    (folder / "a.txt").write_text("a1\na2\na3")  # no final line break: still a line of its own
    (folder / "notes.md").write_text("not read\n")
    corpus = load_text(text_config(path=str(folder), split=[0.6, 0.2, 0.2]), tmp_path / "cache")
    assert split_lines(corpus) == {"train": ["a1", "a2", "a3"], "valid": ["b1"], "test": ["b2"]}


def test_text_explicit_split_files_are_used_as_they_are(tmp_path):
    corpus = write_corpus(tmp_path, "train text\n", "valid text\n", "test text\n")
    cfg = text_config(train=str(corpus.files["train"]), valid=str(corpus.files["valid"]),
                      test=str(corpus.files["test"]))
    assert load_text(cfg, tmp_path / "cache").files == corpus.files
    relative = text_config(root=str(tmp_path), train="train.txt", valid="valid.txt", test="test.txt")
    assert load_text(relative, tmp_path / "cache").files == corpus.files


@pytest.mark.parametrize("values,message", [
    ({}, r"^data.path=null: must be a text file or a folder of .txt files \(or set data.train"),
    ({"path": "{source}", "split": [0.5, 0.3, 0.1]}, r"^data.split=\[0.5, 0.3, 0.1\]: must be fractions summing to 1"),
    ({"path": "{source}", "split": [0, 0.5, 0.5]}, r"^data.split=\[0.0, 0.5, 0.5\]: must be fractions summing to 1, "
                                                   r"with train > 0"),
    ({"path": "{source}", "split": [1.5, -0.5, 0]}, r"^data.split=\[1.5, -0.5, 0.0\]: must be three non-negative"),
    ({"train": "{source}"}, r"^data.valid=null: must be a text file: with data.train, set data.valid"),
    ({"path": "{source}", "train": "{source}"}, r"^data.train=.*: must be null when data.path is set"),
])
def test_text_bad_settings_are_one_line(tmp_path, monkeypatch, values, message):
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "input.txt"
    source.write_text("some text\n")
    values = {k: v.replace("{source}", str(source)) if isinstance(v, str) else v for k, v in values.items()}
    with pytest.raises(ConfigError, match=message) as caught:
        text_config(**values)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("values,message", [
    ({"path": "missing.txt"}, r"^data.path=missing.txt: must be an existing text file or folder of .txt files$"),
    ({"path": "."}, r"^data.path=.: must be a folder holding .txt files$"),
    ({"train": "{source}", "valid": "{source}", "test": "nope.txt"}, r"^data.test=nope.txt: must be an existing"),
])
def test_text_missing_files_are_one_line_when_read(tmp_path, monkeypatch, values, message):
    """The settings alone are valid (a checkpoint's config loads where the files are gone);
    reading the corpus names the setting whose file is missing."""
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "input.txt"
    source.write_text("some text\n")
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")
    values = {k: v.replace("{source}", str(source)) if isinstance(v, str) else v for k, v in values.items()}
    config = text_config(**values)
    with pytest.raises(ConfigError, match=message) as caught:
        load_text(config, tmp_path / "cache")
    assert "\n" not in str(caught.value)


def test_text_too_short_to_cut_is_a_user_error(tmp_path):
    source = tmp_path / "input.txt"
    source.write_text("one\ntwo\nthree\n")
    with pytest.raises(UserError, match=r"data.path=.*: 3 lines are too few to cut by data.split=\[0.9, 0.05, 0.05\]"):
        load_text(text_config(path=str(source)), tmp_path / "cache")


def test_text_invalid_utf8_is_a_user_error(tmp_path):
    source = tmp_path / "input.txt"
    source.write_bytes(b"fine\n\xff bad\n")
    with pytest.raises(UserError, match="input.txt: line 2 is not valid UTF-8 \\(byte 5\\); convert the file to "
                                        "UTF-8, or set data.errors=replace"):
        load_text(text_config(path=str(source), split=[0.5, 0.5, 0]), tmp_path / "cache")
    corpus = load_text(text_config(path=str(source), split=[0.5, 0.5, 0], errors="replace"), tmp_path / "cache")
    assert corpus.files["valid"].read_text(encoding="utf-8") == "\ufffd bad\n"


def test_a_cut_made_with_replace_is_not_found_by_a_strict_run(tmp_path):
    source = tmp_path / "input.txt"
    source.write_bytes(b"fine\n\xff bad\n")
    load_text(text_config(path=str(source), split=[0.5, 0.5, 0], errors="replace"), tmp_path / "cache")
    with pytest.raises(UserError, match="line 2 is not valid UTF-8"):
        load_text(text_config(path=str(source), split=[0.5, 0.5, 0]), tmp_path / "cache")


def whole_text_cut(sources: list, fractions: list) -> dict:
    """The cut as the whole text defines it: each file decoded, without a byte-order mark, ending
    with a line break; the files joined, split at line breaks, cut by the fractions."""
    texts = [p.read_bytes().decode("utf-8").removeprefix("\ufeff") for p in sources]
    text = "".join(t if t.endswith("\n") or not t else t + "\n" for t in texts)
    lines = text.split("\n")[:-1]
    n = len(lines)
    ends = [round(n * fractions[0]), round(n * (fractions[0] + fractions[1])), n]
    if fractions[2] == 0:
        ends[1] = n
    return dict(zip(("train", "valid", "test"), ([line + "\n" for line in lines[a:b]] for a, b in
                                                 zip([0, ends[0], ends[1]], ends))))


@pytest.mark.parametrize("block", [1, 7, 64, 1 << 20])
def test_text_is_cut_a_block_at_a_time_as_the_whole_text_would_be(tmp_path, monkeypatch, block):
    """Byte-order marks, CRLF, files without a last line break, empty and mark-only files, blank
    lines and characters of several bytes, read in blocks that end anywhere."""
    import lmexp.data.corpora as corpora

    monkeypatch.setattr(corpora, "BLOCK_BYTES", block)
    rng = random.Random(block)
    folder = tmp_path / "books"
    folder.mkdir()
    pieces = ["plain line", "", "  ", "café — naïve 日本語 🙂", "crlf line\r", "tab\tline", "\r"]
    contents = [b"", "\ufeff".encode(), "\ufeffmark then text\nsecond".encode()]
    for i in range(6):
        lines = [rng.choice(pieces) for _ in range(rng.randint(1, 40))]
        text = "\n".join(lines) + ("\n" if i % 2 else "")
        contents.append((("\ufeff" if i == 3 else "") + text).encode())
    for i, content in enumerate(contents):
        (folder / f"{i:02d}.txt").write_bytes(content)
    sources = sorted(folder.glob("*.txt"))
    for fractions in ([0.8, 0.1, 0.1], [0.5, 0.5, 0], [0.34, 0.33, 0.33]):
        corpus = load_text(text_config(path=str(folder), split=fractions), tmp_path / f"cache{fractions}")
        expected = whole_text_cut(sources, fractions)
        written = {s: p.read_bytes().decode("utf-8") for s, p in corpus.files.items()}
        assert written == {s: "".join(lines) for s, lines in expected.items() if s in corpus.files}


def test_text_is_cut_without_holding_the_source_in_memory(tmp_path):
    import tracemalloc

    source = tmp_path / "input.txt"
    line = "a line of text, much like any other — with a character or two beyond ASCII\n"
    with open(source, "w", encoding="utf-8") as f:
        for _ in range(32):
            f.write(line * 8_000)  # 32 blocks of 640 KB: 20 MB
    tracemalloc.start()
    try:
        load_text(text_config(path=str(source)), tmp_path / "cache")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Reading the source whole held it about five times over (bytes, text, lines): 100 MB here.
    assert peak < 12 << 20, f"{peak / 2**20:.1f} MiB at the peak for a {source.stat().st_size / 2**20:.0f} MiB source"


def test_a_cut_already_made_is_found_without_reading_the_sources(tmp_path):
    source = tmp_path / "input.txt"
    source.write_text("".join(f"line {i}\n" for i in range(100)))
    old = 1_700_000_000
    os.utime(source, (old, old))
    first = load_text(text_config(path=str(source)), tmp_path / "cache")

    # Other bytes at the same size and mtime: the digest is the one remembered, so the source was not read.
    source.write_text("".join(f"LINE {i}\n" for i in range(100)))
    os.utime(source, (old, old))
    assert load_text(text_config(path=str(source)), tmp_path / "cache").files == first.files

    # A new mtime: hashed again, a new cut with the new text.
    os.utime(source, (old + 60, old + 60))
    edited = load_text(text_config(path=str(source)), tmp_path / "cache")
    assert edited.files["train"].parent != first.files["train"].parent
    assert edited.files["valid"].read_text().startswith("LINE 90\n")


# --- end to end -------------------------------------------------------------------------------

TINY_RUN = ["model.embedding_size=16", "model.hidden_size=16", "model.num_layers=1", "trainer.max_steps=3",
            "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "logger=none",
            "trainer.enable_progress_bar=false", "data.batch_size=4", "data.eval_batch_size=4", "data.bptt=16"]


@pytest.mark.parametrize("tokenizer", [["tokenizer=char"], ["tokenizer=bpe", "tokenizer.vocab_size=500"]],
                         ids=["char", "bpe"])
def test_lmexp_runs_with_text_and_tokenizer(tmp_path, tokenizer):
    cwd = tmp_path / "run"
    cwd.mkdir()
    source = tmp_path / "input.txt"
    source.write_text(sentences(600) + TEXT, encoding="utf-8")
    result = run_lmexp(["data=text", f"data.path={source}", *tokenizer, *TINY_RUN], cwd=cwd,
                       cache_dir=tmp_path / "cache", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (results_file,) = (cwd / "outputs").glob("*/*/results.json")
    results = json.loads(results_file.read_text())
    assert results["tokenizer"] == tokenizer[0].split("=")[1] and results["data"] == "text"
    assert results["steps"] == 3 and results["test_ppl"] > 1
    if tokenizer[0] == "tokenizer=bpe":
        (entry,) = (tmp_path / "cache" / "tokens").glob("text-bpe-*")
        assert (entry / "tokenizer.json").is_file()
        assert len(json.loads((entry / "vocab.json").read_text())) <= 500


def test_a_zero_fraction_split_is_absent_and_not_evaluated(tmp_path, cache_dir):
    """nanoGPT's split: data.split=[0.9, 0.1, 0] trains and validates, and has no test."""
    import json

    from conftest import SMALL, run_lmexp

    source = tmp_path / "input.txt"
    source.write_text("".join(f"line {i} of the corpus , with some words in it .\n" for i in range(400)))
    result = run_lmexp(["data=text", f"data.path={source}", "data.split=[0.9,0.1,0]", *SMALL, "trainer.max_steps=3",
                        "logger=csv"], cwd=tmp_path, cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    (results_file,) = list((tmp_path / "outputs").glob("*/*/results.json"))
    results = json.loads(results_file.read_text())
    assert results["test_ppl"] is None and results["best_val_ppl"] > 1
    assert "no test split" in result.stdout


def test_bpe_reads_eos_written_in_the_text_as_text(tmp_path):
    """'<eos>' in a line was matched as the special unit: a false end of line in the ids, and
    decode gave a line break where the text had those five characters."""
    text = "see <eos> here\nline two\n"
    corpus = write_corpus(tmp_path, sentences(200) + text, sentences(20, seed=1), text)
    tokenizer = BPETokenizer(BPETokenizerConfig(vocab_size=300))
    first = tokenize_corpus(corpus, tokenizer, tmp_path / "cache")
    assert decoded(first, "test", tokenizer) == text
    assert int((np.asarray(first.ids["test"]) == first.vocab.eos).sum()) == 2  # the two lines' ends only
    restored = BPETokenizer.load(first.path)
    assert restored.split("a <eos> b") == tokenizer.split("a <eos> b") and "<eos>" not in restored.split("a <eos> b")


def test_the_nltk_word_keys_name_nltks_version():
    """NLTK's rules change between versions (''Quoted'' splits otherwise in 3.6 and 3.10): an
    entry made with one must not be read with the other. Whitespace splitting needs no NLTK."""
    import nltk

    assert WordTokenizer(WordTokenizerConfig(split="nltk")).settings()["library"] == nltk.__version__
    assert "library" not in WordTokenizer(WordTokenizerConfig(split="whitespace")).settings()


def test_word_tokenizer_lowercase_lowercases_the_units():
    from lmexp.data.tokenizers import WordTokenizer, WordTokenizerConfig

    tok = WordTokenizer(WordTokenizerConfig(split="whitespace", lowercase=True))
    assert tok.split("The Cat SAT") == ["the", "cat", "sat"]
    assert WordTokenizer(WordTokenizerConfig(split="whitespace")).split("The Cat") == ["The", "Cat"]


def test_the_bpe_cache_key_changes_with_the_tokenizers_library(monkeypatch):
    """Another release of Hugging Face tokenizers may train other merges from the same text: its
    entries must not be taken for this one's."""
    import tokenizers

    from lmexp.data.tokenizers import BPETokenizer, BPETokenizerConfig

    before = BPETokenizer(BPETokenizerConfig()).settings()
    monkeypatch.setattr(tokenizers, "__version__", "0.0.1-other")
    assert BPETokenizer(BPETokenizerConfig()).settings() != before


# --- mutation round 6 (2026-12-01): what the tokenizers' tests could not see -------------------


def test_word_min_freq_is_3_for_raw_text_and_1_for_released_tokens():
    units = [["a"] * 3 + ["b"] * 2 + ["c"]]
    raw = WordTokenizer(WordTokenizerConfig(split="whitespace"), pretokenized=False)
    assert raw.build_vocab(units).itos == [UNK, EOS, "a"]
    released = WordTokenizer(WordTokenizerConfig(), pretokenized=True)
    assert released.build_vocab(units).itos == [UNK, EOS, "a", "b", "c"]


def test_char_bytes_lowercase_lowercases_characters_not_bytes():
    tok = CharTokenizer(CharTokenizerConfig(bytes=True, lowercase=True))
    units = tok.split("ÉA")
    assert units == list("éa".encode("utf-8").decode("latin-1")) and tok.decode(units) == "éa"


def test_word_decode_ends_a_line_at_each_eos_without_spaces_around_it():
    tok = WordTokenizer(WordTokenizerConfig(split="whitespace"))
    assert tok.decode(["the", "cat", EOS, "a", "dog"]) == "the cat\na dog"


def test_bpe_min_frequency_decides_which_pairs_merge():
    sizes = {}
    for m in (1, 2):
        tok = BPETokenizer(BPETokenizerConfig(vocab_size=300, min_frequency=m))
        tok.fit(["xyzw"])  # every pair once
        sizes[m] = len(tok.vocab({}))
    assert sizes[2] == 257 and sizes[1] > 257  # 256 bytes and <eos>; with 1, merges of pairs seen once


def test_a_zero_test_fraction_leaves_no_line_to_rounding():
    n = 10_000_000
    bounds = cut_bounds(n, [0.3333333, 0.6666666, 0.0])  # sums to 1 within check_fractions' 1e-6
    assert bounds[1][1] == n and bounds[2] == (n, n)
