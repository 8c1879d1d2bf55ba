"""Corpus, vocabulary, cache and the batch layout for recurrent models."""

import hashlib
import math
from collections import Counter

import numpy as np
import pytest
import torch

from lmexp.data.cache import tokenize_corpus
from lmexp.data.corpora import TINY_VERSION, Corpus, DataConfig, build_tiny, load_tiny, tiny_source
from lmexp.data.cache import prepare_corpus
from lmexp.data.datamodule import IGNORE, BlockWindows, LMDataModule, StreamWindows
from lmexp.data.tokenizers import EOS, UNK, WordTokenizer, WordTokenizerConfig
from lmexp.errors import UserError


def write_corpus(folder, train, valid, test, name="fixture"):
    files = {}
    for split, text in (("train", train), ("valid", valid), ("test", test)):
        files[split] = folder / f"{split}.txt"
        files[split].write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return Corpus(name, files)


class CountingTokenizer(WordTokenizer):
    """The real word tokenizer, counting the lines it is asked to split."""

    calls = 0

    def split(self, line):
        CountingTokenizer.calls += 1
        return super().split(line)


def test_window_layout_matches_the_drawing():
    ids = np.arange(24)  # a..x
    windows = StreamWindows(ids, rows=4, bptt=2)
    assert len(windows) == 3
    x0, y0 = windows[0]
    assert x0.tolist() == [[0, 1], [6, 7], [12, 13], [18, 19]]
    assert y0.tolist() == [[1, 2], [7, 8], [13, 14], [19, 20]]
    x2, y2 = windows[2]
    assert x2.tolist() == [[4], [10], [16], [22]] and y2.tolist() == [[5], [11], [17], [23]]
    # Row b of window k+1 continues row b of window k, so a carried state sees a continuous stream.
    x1, _ = windows[1]
    assert (x1[:, 0] == y0[:, -1]).all()


def test_every_token_but_each_rows_first_is_predicted_once():
    ids = np.arange(103)
    windows = StreamWindows(ids, rows=5, bptt=7)
    targets = torch.cat([windows[k][1] for k in range(len(windows))], dim=1)
    assert targets.numel() == 5 * (103 // 5 - 1)
    assert sorted(targets.flatten().tolist()) == sorted(set(range(100)) - {0, 20, 40, 60, 80})


def test_processes_split_rows_and_together_score_the_same_tokens():
    ids = np.arange(1000)
    whole = StreamWindows(ids, rows=8, bptt=16)
    parts = [StreamWindows(ids, rows=8, bptt=16, part=p, parts=2) for p in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(whole)  # no process waits for another
    for k in range(len(whole)):
        assert torch.equal(torch.cat([parts[0][k][1], parts[1][k][1]]), whole[k][1])


def test_vocabulary_comes_from_train_only(tmp_path):
    corpus = write_corpus(tmp_path, "the cat sat .\nthe cat ran .\n", "the dog sat .\n", "a cat .\n")
    tok = WordTokenizer(WordTokenizerConfig(min_freq=1))
    data = tokenize_corpus(corpus, tok, tmp_path / "cache")
    assert data.vocab.itos[:2] == [UNK, EOS]
    assert "dog" not in data.vocab.stoi and "a" not in data.vocab.stoi
    # Most frequent first (".", "cat", "the": twice each), ties broken by the unit itself.
    assert data.vocab.itos == [UNK, EOS, ".", "cat", "the", "ran", "sat"]
    valid = [data.vocab.itos[i] for i in data.ids["valid"]]
    assert valid == ["the", UNK, "sat", ".", EOS]
    assert data.stats["valid"] == {"lines": 1, "tokens": 5, "unk": 1, "bytes": 14, "words": 5}
    assert data.ids["train"].dtype == np.uint16


def test_min_freq_and_max_size():
    from collections import Counter

    from lmexp.data.tokenizers import Vocab

    counts = Counter({"a": 5, "b": 3, "c": 3, "d": 1})
    assert Vocab.build(counts, min_freq=2).itos == [UNK, EOS, "a", "b", "c"]
    assert Vocab.build(counts, min_freq=1, max_size=4).itos == [UNK, EOS, "a", "b"]


def test_nltk_word_tokenizer_splits_sentences_and_punctuation():
    tok = WordTokenizer(WordTokenizerConfig())
    assert tok.split("It's 3.5 km long. Then it ends, they said.") == [
        "It", "'s", "3.5", "km", "long", ".", "Then", "it", "ends", ",", "they", "said", "."]


def test_second_tokenization_reads_the_cache(tmp_path):
    corpus = write_corpus(tmp_path, "one two three\n" * 5, "one two\n", "three one\n")
    CountingTokenizer.calls = 0
    first = tokenize_corpus(corpus, CountingTokenizer(WordTokenizerConfig(min_freq=1)), tmp_path / "cache")
    assert not first.from_cache and CountingTokenizer.calls == 7
    second = tokenize_corpus(corpus, CountingTokenizer(WordTokenizerConfig(min_freq=1)), tmp_path / "cache")
    assert second.from_cache and CountingTokenizer.calls == 7 and second.path == first.path
    assert np.array_equal(np.asarray(first.ids["train"]), np.asarray(second.ids["train"]))


def test_changed_text_or_settings_make_a_new_entry(tmp_path):
    corpus = write_corpus(tmp_path, "one two three\n", "one two\n", "three one\n")
    base = tokenize_corpus(corpus, WordTokenizer(WordTokenizerConfig(min_freq=1)), tmp_path / "cache").path
    other = tokenize_corpus(corpus, WordTokenizer(WordTokenizerConfig(min_freq=1, lowercase=True)), tmp_path / "cache")
    assert other.path != base and not other.from_cache
    corpus.files["valid"].write_text("two one\n")
    changed = tokenize_corpus(corpus, WordTokenizer(WordTokenizerConfig(min_freq=1)), tmp_path / "cache")
    assert changed.path != base and not changed.from_cache


@pytest.mark.parametrize("valid,message", [
    (b"fine\n\xff\xfe broken\n", r"valid.txt: line 2 is not valid UTF-8"),
    (b"\n  \n", r"valid.txt is empty"),
])
def test_bad_split_files_are_one_line_errors(tmp_path, valid, message):
    corpus = write_corpus(tmp_path, "one two\n", valid, "two\n")
    with pytest.raises(UserError, match=message):
        tokenize_corpus(corpus, WordTokenizer(WordTokenizerConfig(min_freq=1)), tmp_path / "cache")


def test_tiny_corpus_is_real_split_by_article_and_deterministic(cache_dir):
    corpus = load_tiny(DataConfig(), cache_dir)
    texts = {s: p.read_text(encoding="utf-8") for s, p in corpus.files.items()}
    words = {s: len(t.split()) for s, t in texts.items()}
    assert words["train"] > 300_000 and words["valid"] > 30_000 and words["test"] > 20_000
    titles = {s: {line for line in t.splitlines() if line.startswith("= ")} for s, t in texts.items()}
    assert titles["train"] and not (titles["train"] & titles["valid"]) and not (titles["train"] & titles["test"])
    assert "= Anarchism =" in titles["train"]
    assert "'''" not in texts["train"] and "[[" not in texts["train"]  # markup stripped
    assert build_tiny(tiny_source()) == texts


def tiny_datamodule(cache_dir, data: DataConfig, **kwargs) -> LMDataModule:
    corpus = prepare_corpus(data, WordTokenizer(WordTokenizerConfig()), cache_dir)
    return LMDataModule(corpus, data, **kwargs)


def test_datamodule_batches_and_unigram_baseline(cache_dir):
    dm = tiny_datamodule(cache_dir, DataConfig(name="tiny", batch_size=4, eval_batch_size=2, bptt=8))
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == y.shape == (4, 8) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    # The closed form, counted another way: train counts + 1 over their sum, weighted by how often
    # each unit is a scored target (every test token but the first of each of the 2 rows).
    train = Counter(np.asarray(dm.corpus.ids["train"]).tolist())
    total = sum(train.values()) + dm.vocab_size
    rows = np.asarray(dm.corpus.ids["test"])[: len(dm.corpus.ids["test"]) // 2 * 2].reshape(2, -1)
    targets = Counter(rows[:, 1:].ravel().tolist())
    n = sum(targets.values())
    expected = math.exp(-sum(c * math.log((train[u] + 1) / total) for u, c in targets.items()) / n)
    assert dm.unigram_perplexity("test") == pytest.approx(expected, rel=1e-9)
    assert 100 < expected < dm.vocab_size


def array_datamodule(ids: dict, data: DataConfig, vocab_size: int = 50, **kwargs) -> LMDataModule:
    """A data module over ids made here: no text to tokenize."""
    from pathlib import Path

    from lmexp.data.cache import TokenizedCorpus
    from lmexp.data.tokenizers import Vocab

    vocab = Vocab([UNK, EOS, *(f"w{i}" for i in range(vocab_size - 2))])
    return LMDataModule(TokenizedCorpus(Path("."), vocab, ids, {}, False), data, **kwargs)


def test_a_split_too_short_for_its_rows_names_the_setting_that_sets_them():
    """The stage sets the rows, not the split's name: evaluation reads any split (lmexp.evaluate
    split=train) in data.eval_batch_size rows."""
    dm = array_datamodule({"train": np.arange(10), "valid": np.arange(4)}, DataConfig(batch_size=8, eval_batch_size=16))
    with pytest.raises(UserError, match=r"^the train split of 10 tokens is too short for 8 rows; lower data.batch_size$"):
        dm.windows("train", training=True)
    for split, tokens in (("valid", 4), ("train", 10)):
        with pytest.raises(UserError, match=rf"^the {split} split of {tokens} tokens is too short for 16 rows; lower "
                                            r"data.eval_batch_size$"):
            dm.windows(split)


@pytest.mark.parametrize("block_size", [None, 8])
def test_unigram_perplexity_counts_the_scored_targets_as_gathering_them_did(block_size):
    rng = np.random.default_rng(0)
    ids = {split: rng.zipf(1.5, size=n).clip(max=49).astype(np.uint16) for split, n in (("train", 3001), ("test", 997))}
    dm = array_datamodule(ids, DataConfig(eval_batch_size=3, bptt=8), block_size=block_size)
    counts = np.bincount(ids["train"], minlength=50) + 1.0
    logp = np.log(counts / counts.sum())
    # The targets gathered whole, as the streams (3 rows) or the windows score them.
    targets = ids["test"][: 997 // 3 * 3].reshape(3, -1)[:, 1:].ravel() if block_size is None else ids["test"][1:]
    assert dm.unigram_perplexity("test") == pytest.approx(np.exp(-logp[targets.astype(np.int64)].mean()), rel=1e-12)


@pytest.mark.parametrize("block_size", [None, 8])
def test_unigram_perplexity_makes_no_copy_of_the_split(monkeypatch, block_size):
    """numpy reports its arrays to tracemalloc: the peak stays under one copy of the uint16 split."""
    import tracemalloc

    from lmexp.data import cache

    ids = np.random.default_rng(0).integers(0, 50, size=1 << 20).astype(np.uint16)
    dm = array_datamodule({"train": ids[:4096], "test": ids}, DataConfig(eval_batch_size=4), block_size=block_size)
    monkeypatch.setattr(cache, "COUNT_BLOCK", 4096)
    tracemalloc.start()
    try:
        dm.unigram_perplexity("test")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < ids.nbytes // 4


def test_block_windows_match_the_drawing():
    from lmexp.data.datamodule import IGNORE, BlockWindows

    windows = BlockWindows(np.arange(10), block=4, stride=2, evaluation=True)
    got = [(x.tolist(), y.tolist()) for x, y in (windows[k] for k in range(len(windows)))]
    m = IGNORE
    assert got == [([0, 1, 2, 3], [1, 2, 3, 4]), ([2, 3, 4, 5], [m, m, 5, 6]), ([4, 5, 6, 7], [m, m, 7, 8]),
                   ([5, 6, 7, 8], [m, m, m, 9])]
    train = BlockWindows(np.arange(10), block=4)
    assert [train[k][0].tolist() for k in range(len(train))] == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize("block,stride", [(16, None), (16, 16), (16, 5), (16, 1), (7, 3)])
def test_block_evaluation_scores_every_token_but_the_first_once(block, stride):
    from lmexp.data.datamodule import IGNORE, BlockWindows

    ids = np.arange(103)
    windows = BlockWindows(ids, block=block, stride=stride, evaluation=True)
    scored = []
    for k in range(len(windows)):
        x, y = windows[k]
        assert len(x) == block and torch.equal(x[1:], torch.from_numpy(ids[windows.ends[k] - block + 1:
                                                                          windows.ends[k]]))
        kept = y[y != IGNORE]
        # Each scored token sees at least block - stride tokens before it (all of them in window 0).
        if k > 0:
            first = (y != IGNORE).nonzero()[0].item()
            assert first >= block - (stride or block)
        scored += kept.tolist()
    assert sorted(scored) == list(range(1, 103))


def test_block_layout_for_attention_models_in_the_datamodule(cache_dir):
    dm = tiny_datamodule(cache_dir, DataConfig(name="tiny", batch_size=4, eval_batch_size=3, bptt=8), block_size=32,
                         seed=1)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == y.shape == (4, 32) and torch.equal(x[:, 1:], y[:, :-1])
    first_epoch = [x.tolist() for x, _ in dm.train_dataloader()][:3]
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(1)
    assert [x.tolist() for x, _ in loader][:3] != first_epoch  # reshuffled each epoch
    n_valid = sum(int((y != -100).sum()) for _, y in dm.val_dataloader())
    assert n_valid == len(dm.corpus.ids["valid"]) - 1


def test_consecutive_seeds_shuffle_their_epochs_apart(cache_dir):
    """torch's DistributedSampler seeds its shuffle with seed + epoch, so seed 2's first epoch was
    seed 1's second, batch for batch: a comparison's two seeds trained on the same orders one
    epoch apart. Each (seed, epoch) now has its own order; the same pair, the same order."""
    def order(seed: int, epoch: int) -> list:
        dm = tiny_datamodule(cache_dir, DataConfig(name="tiny", batch_size=4, eval_batch_size=3, bptt=8),
                             block_size=32, seed=seed)
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return list(loader.sampler)

    assert order(2, 0) != order(1, 1) and order(1, 0) != order(1, 1) and order(1, 0) != order(2, 0)
    assert order(1, 1) == order(1, 1)
    assert sorted(order(1, 1)) == sorted(order(2, 0))  # every window, once


def test_a_train_split_of_fewer_windows_than_a_batch_on_each_process_is_refused():
    from lmexp.data.datamodule import BlockWindows, check_one_batch

    windows = BlockWindows(np.arange(81), block=8)  # 10 windows
    check_one_batch(windows, 8, batch_size=5, world=2)  # 5 windows each: one batch
    with pytest.raises(UserError, match=r"^data.batch_size=4: the train split's 81 tokens make 10 window\(s\) of "
                                        r"model.block_size=8 tokens, fewer than one batch on each of 3 processes; "
                                        r"lower data.batch_size or model.block_size"):
        check_one_batch(windows, 8, batch_size=4, world=3)


def test_ids_are_counted_a_block_at_a_time_as_at_once(monkeypatch):
    from lmexp.data import cache

    ids = np.random.default_rng(0).integers(0, 50, size=1001).astype(np.uint16)
    monkeypatch.setattr(cache, "COUNT_BLOCK", 64)  # 16 blocks, the last part-filled
    assert np.array_equal(cache.id_counts(ids, 50), np.bincount(ids, minlength=50))
    assert np.array_equal(cache.id_counts(ids, 40), np.bincount(ids, minlength=50)[:40])  # ids past size dropped


def test_batches_for_a_gpu_are_made_in_page_locked_memory(cache_dir):
    from types import SimpleNamespace

    dm = tiny_datamodule(cache_dir, DataConfig(name="tiny", batch_size=4, eval_batch_size=2, bptt=8))
    assert not dm.train_dataloader().pin_memory  # no trainer, or one on the CPU: nothing to copy ahead
    # A trainer on a GPU, as the loaders see one (none here to run on).
    dm.trainer = SimpleNamespace(global_rank=0, world_size=1, strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))
    assert dm.train_dataloader().pin_memory and dm.val_dataloader().pin_memory and dm.test_dataloader().pin_memory


def test_a_last_line_without_a_line_break_counts_the_break_it_is_read_with(tmp_path):
    """stats' bytes and words (bits per byte, word perplexity) count one line break a line, also for
    a last line the file does not end with a break: 'the dog sat .' is 14 bytes and 5 words either way."""
    from lmexp.data.cache import tokenize_corpus
    from lmexp.data.corpora import Corpus
    from lmexp.data.tokenizers import WordTokenizer, WordTokenizerConfig

    files = {}
    for split, text in {"train": "the cat sat .\n", "valid": "the dog sat .", "test": "a cat .\n"}.items():
        files[split] = tmp_path / f"{split}.txt"
        files[split].write_text(text)
    data = tokenize_corpus(Corpus("fixture", files), WordTokenizer(WordTokenizerConfig(min_freq=1)), tmp_path / "c")
    assert data.stats["valid"]["bytes"] == 14 and data.stats["valid"]["words"] == 5
    assert data.stats["valid"]["tokens"] == 5  # the <eos> the line is read with


@pytest.mark.parametrize("tokenizer", ["char", "word", "bpe"])
def test_windows_line_ends_and_a_byte_order_mark_read_as_the_plain_text(tmp_path, tokenizer):
    """A file saved with CRLF line ends, or with a UTF-8 byte-order mark, is the same text: the same
    ids, vocabulary and counts (bits per byte, word perplexity). Before, the character and BPE
    tokenizers had a '\\r' unit on every line (a CRLF valid split beside an LF train split: one
    <unk> a line), and the mark was a unit, or glued to the first word."""
    from lmexp.data.cache import tokenize_corpus
    from lmexp.data.corpora import Corpus
    from lmexp.data.tokenizers import TOKENIZERS

    text = "".join(f"the {w} sat on line {i} .\n" for i, w in enumerate(["cat", "dog", "hen"] * 30))
    variants = {"plain": text.encode(), "crlf": text.replace("\n", "\r\n").encode(),
                "bom": "\ufeff".encode() + text.encode()}
    made = {}
    for name, raw in variants.items():
        folder = tmp_path / name
        folder.mkdir()
        files = {s: folder / f"{s}.txt" for s in ("train", "valid", "test")}
        for split, path in files.items():
            path.write_bytes(raw if split != "train" else text.encode())  # train as it is: the same vocabulary
        option = TOKENIZERS.option(tokenizer)
        made[name] = tokenize_corpus(Corpus(name, files), option.make(option.config()), tmp_path / f"cache-{name}")
    plain = made["plain"]
    for name in ("crlf", "bom"):
        assert made[name].vocab.itos == plain.vocab.itos
        for split in ("valid", "test"):
            assert np.array_equal(made[name].ids[split], plain.ids[split]), (name, split)
            assert made[name].stats[split] == plain.stats[split], (name, split)


@pytest.mark.parametrize("raw", [b"ab\r\ncd\r\n", b"ab\r\ncd\r", b"ab\rcd\r", b"ab\r\r\n", b"ab\r\r", b"ab\ncd",
                                 "\ufeffab\r\ncd".encode()])
def test_the_bytes_counted_are_those_of_the_lines_read(raw):
    """Bits per byte divides by the bytes of the text as its lines are read (one line break each):
    a file's last \\r with no \\n after it is dropped from the line, so it is no byte either."""
    from lmexp.data.cache import _decode, _lines, _text_bytes

    lines = _lines(_decode(raw, None, 0))
    assert _text_bytes(raw, 0) == sum(len(line.encode()) + 1 for line in lines)


# --- mutation round 6 (2026-12-01): what the data pipeline's tests could not see --------------


def test_a_split_shorter_than_the_block_is_scored_whole_in_one_shorter_window():
    windows = BlockWindows(np.arange(5), block=8, evaluation=True)
    (x, y), = [windows[k] for k in range(len(windows))]
    assert x.tolist() == [0, 1, 2, 3] and y[y != IGNORE].tolist() == [1, 2, 3, 4]
    train = BlockWindows(np.arange(5), block=8)
    assert [train[k][0].tolist() for k in range(len(train))] == [[0, 1, 2, 3]]


def test_evaluation_batches_come_in_window_order():
    """A shuffled evaluation gives the same perplexity over the whole split, but another one under
    trainer.limit_val_batches: a different set of windows scored."""
    ids = np.arange(2, 83) % 100
    dm = array_datamodule({"train": ids, "valid": ids, "test": ids}, DataConfig(batch_size=2, eval_batch_size=3),
                          vocab_size=100, block_size=4, seed=7)
    xs = torch.cat([x for x, _ in dm.val_dataloader()])
    assert xs.tolist() == [ids[e - 4: e].tolist() for e in dm.blocks("valid").ends]


def test_rows_of_exactly_bptt_tokens_are_refused_as_one_window_of_the_whole_row():
    data = DataConfig(batch_size=2, bptt=8)
    with pytest.raises(UserError, match=r"^data.bptt=8 with data.batch_size=2: each of the 2 rows of the train split "
                                        r"holds 8 tokens, not one window of 8 and its target"):
        array_datamodule({"train": np.arange(2, 18)}, data).windows("train", training=True)
    assert len(array_datamodule({"train": np.arange(2, 20)}, data).windows("train", training=True)) == 1


TINY_SOURCE_DIGEST = "a53f4648dec4"  # gensim's shortened Wikipedia dump, as installed here
TINY_DIGESTS = {"train": "cc812ef57450895f", "valid": "755ea0c9d52fb71b", "test": "19413e7b9ffefd71"}


def test_the_tiny_corpus_is_the_one_its_version_names():
    """Any change to the cleaning or to the 8/1/1 article split changes the text: bump TINY_VERSION
    (so that cached copies are rebuilt) and these digests together. A test that builds the corpus
    and compares it with itself could not see a split swapped or a line rule changed."""
    if hashlib.sha256(tiny_source().read_bytes()).hexdigest()[:12] != TINY_SOURCE_DIGEST:
        pytest.skip("gensim ships another test file than the one these digests were taken from")
    texts = build_tiny(tiny_source())
    assert TINY_VERSION == 1
    assert {s: hashlib.sha256(t.encode()).hexdigest()[:16] for s, t in texts.items()} == TINY_DIGESTS
