"""The token cache: content keys with remembered digests, chunked and parallel tokenizing, id types,
two processes preparing the same entry."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import lmexp.data.cache as cache
from lmexp.data.cache import tokenize_corpus
from lmexp.data.corpora import Corpus
from lmexp.data.tokenizers import (BPETokenizer, BPETokenizerConfig, CharTokenizer, CharTokenizerConfig,
                                   GPT2Tokenizer, GPT2TokenizerConfig, Vocab, WordTokenizer, WordTokenizerConfig)
from lmexp.errors import UserError

import concurrent_prepare

SHARED = Path(os.environ.get("LMEXP_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
HOUR_AGO = time.time() - 3600


def write_corpus(folder: Path, texts: dict, name="fixture", old=True) -> Corpus:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, text in texts.items():
        files[split] = folder / f"{split}.txt"
        files[split].write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        if old:  # as a corpus on disk usually is: written well before it is read
            os.utime(files[split], (HOUR_AGO, HOUR_AGO))
    return Corpus(name, files)


def word():
    return WordTokenizer(WordTokenizerConfig(min_freq=1))


# --- the key ----------------------------------------------------------------------------------


def test_digests_are_remembered_until_size_or_mtime_change(tmp_path):
    corpus = write_corpus(tmp_path / "text", {"train": "one two three\n", "valid": "one two\n", "test": "three\n"})
    first = tokenize_corpus(corpus, word(), tmp_path / "cache")
    index = json.loads((tmp_path / "cache" / "tokens" / "digests.json").read_text())
    assert {Path(k).name for k in index} == {"train.txt", "valid.txt", "test.txt"}

    # Touched, same bytes: the digest is computed again and the key stays.
    valid = corpus.files["valid"]
    os.utime(valid, (HOUR_AGO + 60, HOUR_AGO + 60))
    touched = tokenize_corpus(corpus, word(), tmp_path / "cache")
    assert touched.from_cache and touched.path == first.path

    # Same size and mtime: taken as unchanged without reading the file (the index is used).
    valid.write_text("two one\n")
    os.utime(valid, (HOUR_AGO + 60, HOUR_AGO + 60))
    assert tokenize_corpus(corpus, word(), tmp_path / "cache").path == first.path

    # Edited (a new mtime): a new entry, whose ids are the new text's.
    os.utime(valid, (HOUR_AGO + 120, HOUR_AGO + 120))
    edited = tokenize_corpus(corpus, word(), tmp_path / "cache")
    assert edited.path != first.path and not edited.from_cache
    assert [edited.vocab.itos[i] for i in edited.ids["valid"]] == ["two", "one", "<eos>"]


def test_a_corrupt_index_is_rebuilt_and_recent_files_are_not_remembered(tmp_path):
    corpus = write_corpus(tmp_path / "text", {"train": "a b\n", "valid": "b a\n", "test": "a\n"})
    first = tokenize_corpus(corpus, word(), tmp_path / "cache")
    index = tmp_path / "cache" / "tokens" / "digests.json"
    index.write_text("{not json")
    again = tokenize_corpus(corpus, word(), tmp_path / "cache")
    assert again.from_cache and again.path == first.path
    assert len(json.loads(index.read_text())) == 3

    fresh = write_corpus(tmp_path / "fresh", {"train": "a b\n", "valid": "b a\n", "test": "a\n"}, old=False)
    same = tokenize_corpus(fresh, word(), tmp_path / "cache")
    assert same.path == first.path  # the content decides, not the path
    # Just written: its mtime could hide another write, so its digest is not kept.
    assert not any("fresh" in k for k in json.loads(index.read_text()))


# --- chunked, parallel tokenizing gives the ids of the whole file, line by line ------------


def corpus_for_chunks(tmp_path: Path) -> Corpus:
    """Penn Treebank's valid and test splits when they are here, else generated sentences;
    plus lines chunk boundaries must respect: blank, white space, non-ASCII, no final newline."""
    ptb = SHARED / "ptb"
    if (ptb / "ptb.valid.txt").is_file():
        train, held = (ptb / "ptb.valid.txt").read_text(), (ptb / "ptb.test.txt").read_text()
    else:
        rng = random.Random(0)
        words = "the a cat dog sat on mat and ran to house garden over under big small red blue N".split()
        train, held = ("".join(" ".join(rng.choice(words) for _ in range(rng.randint(0, 20))) + "\n"
                               for _ in range(n)) for n in (8000, 3000))
    extra = "\n  \nÇa coûte 5 € — naïve café\u00a0ok\u2003fin 🙂\ttab\x0bvt\n\nend without newline"
    return write_corpus(tmp_path / "text", {"train": train + extra, "valid": held[: len(held) // 2] + extra,
                                            "test": held[len(held) // 2 :]})


def reference_ids(corpus: Corpus, tokenizer, vocab) -> dict:
    """What tokenizing a line at a time gives: the units of each line, then <eos>."""
    out = {}
    for split, path in corpus.files.items():
        lines = path.read_text(encoding="utf-8").split("\n")
        if lines[-1] == "":
            lines.pop()
        out[split] = [i for line in lines for i in (*vocab.ids(tokenizer.split(line)), vocab.eos)]
    return out


def gpt2_files(folder: Path, train: Path) -> Path:
    """GPT-2's file layout (vocab.json, merges.txt) for a small byte-level BPE, its ids with a
    gap, as a hand-edited vocabulary may have: the stored ids are ranks, as before."""
    if not (folder / "vocab.json").is_file():
        bpe = BPETokenizer(BPETokenizerConfig(vocab_size=400))
        bpe.fit(train.read_text(encoding="utf-8").split("\n"))
        folder.mkdir()
        bpe._tok.model.save(str(folder))
        vocab = json.loads((folder / "vocab.json").read_text())
        (folder / "vocab.json").write_text(json.dumps({u: i + 100 * (i >= 300) for u, i in vocab.items()}))
    return folder


TOKENIZERS = {
    "word": lambda folder, train: WordTokenizer(WordTokenizerConfig(), pretokenized=True),
    "word-lowercase-max": lambda folder, train: WordTokenizer(WordTokenizerConfig(min_freq=2, max_size=500,
                                                                                  lowercase=True)),
    "char": lambda folder, train: CharTokenizer(CharTokenizerConfig()),
    "bytes": lambda folder, train: CharTokenizer(CharTokenizerConfig(bytes=True, min_freq=3)),
    "bpe": lambda folder, train: BPETokenizer(BPETokenizerConfig(vocab_size=400)),
    "gpt2": lambda folder, train: GPT2Tokenizer(GPT2TokenizerConfig(path=str(gpt2_files(folder / "gpt2", train)))),
}


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_chunks_and_workers_do_not_change_the_ids(tmp_path, monkeypatch, name):
    corpus = corpus_for_chunks(tmp_path)
    make = lambda: TOKENIZERS[name](tmp_path, corpus.files["train"])  # noqa: E731
    whole = tokenize_corpus(corpus, make(), tmp_path / "one-chunk")
    assert whole.stats["valid"]["words"] == sum(len(line.split()) + 1 for line in
                                                corpus.files["valid"].read_text().split("\n"))
    reference = make()
    if name == "bpe":
        reference.restore((whole.path / "tokenizer.json").read_text())
    expected = reference_ids(corpus, reference, whole.vocab)
    for split in corpus.files:
        assert np.asarray(whole.ids[split]).tolist() == expected[split]
    monkeypatch.setattr(cache, "CHUNK_BYTES", 50_000)  # a dozen chunks a split
    for workers in ("1", "2"):  # chunks in this process; chunks in a pool of two
        monkeypatch.setenv("LMEXP_WORKERS", workers)
        chunked = tokenize_corpus(corpus, make(), tmp_path / f"chunks-{workers}")
        assert chunked.path.name == whole.path.name and not chunked.from_cache
        assert chunked.vocab.itos == whole.vocab.itos and chunked.stats == whole.stats
        for split in corpus.files:
            assert chunked.ids[split].dtype == whole.ids[split].dtype
            assert np.array_equal(chunked.ids[split], whole.ids[split])


def test_chunks_are_whole_lines(tmp_path):
    path = tmp_path / "f.txt"
    text = b"a\n\nbb bb\nccc\n\xc3\xa9\xc3\xa9\n" * 5 + b"last"
    path.write_bytes(text)
    for size in (1, 2, 3, 7, 100):
        ranges = cache._chunks(path, size)
        assert b"".join(text[a:b] for a, b in ranges) == text
        assert all(text[b - 1 : b] == b"\n" for _, b in ranges[:-1]) and ranges[-1][1] == len(text)
    path.write_bytes(b"")
    assert cache._chunks(path, 10) == []


def test_word_count_matches_str_split():
    others = "".join(c for c in map(chr, range(128, 0x110000)) if c.isspace())
    assert all(cache._OTHER_SPACE.fullmatch(c) for c in others)
    assert {c for c in map(chr, range(128)) if c.isspace()} == {chr(b) for b in np.flatnonzero(cache._ASCII_SPACE)}
    for text in ["", " ", "a", " a b  c ", "\ta\x1cb\x1f c\n\nd ", "é ü\u00a0x", "x\u3000y", "naïve café\n"]:
        assert cache._words(text.encode(), text) == len(text.split()), text


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
def test_bad_text_in_a_later_chunk_is_one_line_with_its_line_number(tmp_path, monkeypatch, workers):
    monkeypatch.setattr(cache, "CHUNK_BYTES", 64)
    monkeypatch.setenv("LMEXP_WORKERS", workers)
    bad = b"fine line\n" * 40 + b"broken \xff here\n" + b"fine\n" * 20
    corpus = write_corpus(tmp_path / "text", {"train": bad, "valid": b"fine\n", "test": b"fine\n"})
    with pytest.raises(UserError, match=rf"^{corpus.files['train']}: line 41 is not valid UTF-8 \(byte 407\); "
                                        r"convert the file to UTF-8, or set data.errors=replace$"):
        tokenize_corpus(corpus, word(), tmp_path / "cache")
    corpus.errors = "replace"  # the same file read with U+FFFD for the bad byte, in its own entry
    replaced = tokenize_corpus(corpus, word(), tmp_path / "cache")
    assert "\ufffd" in replaced.vocab.itos and replaced.stats["train"]["lines"] == 61
    blank = write_corpus(tmp_path / "blank", {"train": b"a b\n", "valid": b" \n" * 100, "test": b"a\n"})
    with pytest.raises(UserError, match=r"valid.txt is empty; every split needs text$"):
        tokenize_corpus(blank, word(), tmp_path / "cache")
    assert not list((tmp_path / "cache" / "tokens").glob(".tmp-*"))  # nothing half-written left behind


def test_id_type_is_the_smallest_that_fits_and_says_so_when_none_does():
    assert cache._id_dtype(3) == cache._id_dtype(65_536) == np.uint16
    assert cache._id_dtype(65_537) == cache._id_dtype(2**32) == np.uint32
    with pytest.raises(UserError, match=r"^a vocabulary of 4294967297 units does not fit 32-bit ids; "
                                        r"lower tokenizer.max_size$"):
        cache._id_dtype(2**32 + 1)
    cache._check_fits(np.array([0, 65_535]), np.uint16, 65_536)
    with pytest.raises(UserError, match=r"^token id 70000 does not fit uint16, chosen for a vocabulary of 50257"):
        cache._check_fits(np.array([0, 70_000]), np.uint16, 50_257)


def test_workers_setting(monkeypatch):
    monkeypatch.setenv("LMEXP_WORKERS", "3")
    assert cache.workers() == 3
    monkeypatch.setenv("LMEXP_WORKERS", "none")
    with pytest.raises(UserError, match=r"^LMEXP_WORKERS=none: must be a positive integer"):
        cache.workers()
    monkeypatch.delenv("LMEXP_WORKERS")
    assert cache.workers() >= 1


def test_no_progress_bar_without_a_terminal(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cache, "CHUNK_BYTES", 64)
    corpus = write_corpus(tmp_path / "text", {"train": "one two\n" * 100, "valid": "two\n", "test": "one\n"})
    data = tokenize_corpus(corpus, word(), tmp_path / "cache")
    assert data.stats["train"]["tokens"] == 300
    assert capsys.readouterr().err == ""  # stderr is not a terminal here: no bar, nothing written


def test_a_given_vocabulary_without_a_unit_met_is_one_line(tmp_path):
    corpus = write_corpus(tmp_path / "text", {"train": "the cat sat on the mat\n" * 50, "valid": "the cat\n",
                                              "test": "a zebra\n"})
    trained = tokenize_corpus(corpus, BPETokenizer(BPETokenizerConfig(vocab_size=300)), tmp_path / "cache")
    lacking = Vocab([u for u in trained.vocab.itos if u != "z"], None, "<eos>")
    tokenizer = BPETokenizer.load(trained.path)
    with pytest.raises(UserError, match=r"test.txt: unit 'z' is not in the vocabulary given, which has no <unk>"):
        tokenize_corpus(corpus, tokenizer, tmp_path / "cache", vocab=lacking)


def test_data_errors_replace_reaches_the_cache_through_prepare_corpus(tmp_path):
    from lmexp.data.corpora import TextConfig
    from lmexp.data.cache import prepare_corpus
    from lmexp.data.tokenizers import WordTokenizerConfig, make_tokenizer
    from lmexp.schema import parse

    files = {s: tmp_path / f"{s}.txt" for s in ("train", "valid", "test")}
    files["train"].write_bytes(b"one two\nthree \xff four\n")
    files["valid"].write_bytes(b"one\n")
    files["test"].write_bytes(b"two\n")

    def data(errors):
        config = parse(TextConfig, {"name": "text", **{s: str(p) for s, p in files.items()}, "errors": errors}, "data")
        tokenizer = make_tokenizer(parse(WordTokenizerConfig, {"name": "word", "min_freq": 1}, "tokenizer"))
        return prepare_corpus(config, tokenizer, tmp_path / "cache")

    with pytest.raises(UserError, match=r"train.txt: line 2 is not valid UTF-8 .*or set data.errors=replace$"):
        data("strict")
    corpus = data("replace")
    assert corpus.vocab.itos[corpus.ids["train"][4]] == "\ufffd"  # one two <eos> three \ufffd four <eos>


# --- two processes preparing the same entry: one tokenizes, the other waits and reads it --------


class Job:
    """tests/concurrent_prepare.py in its own process, its output in files (no pipe to fill or to hang on)."""

    def __init__(self, folder: Path, cache: Path, log: Path):
        self.out, self.err = log.with_suffix(".out"), log.with_suffix(".err")
        env = {**os.environ, "LMEXP_WORKERS": "1"}  # one process a job: the two jobs share 2 cores
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.process = subprocess.Popen([sys.executable, concurrent_prepare.__file__, str(folder), str(cache)],
                                            stdin=subprocess.PIPE, stdout=out, stderr=err, text=True, env=env)

    def ready(self) -> bool:
        assert self.process.poll() is None, self.err.read_text()[-2000:]
        return self.out.read_text().startswith("ready")

    def release(self) -> None:
        self.process.stdin.write("go\n")
        self.process.stdin.close()

    def result(self) -> dict:
        assert self.process.wait(timeout=60) == 0, self.err.read_text()[-2000:]
        return json.loads(self.out.read_text().splitlines()[1])

    def log(self) -> str:
        return self.err.read_text()


def wait_for(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.005)


@pytest.fixture
def jobs(tmp_path):
    """Two jobs on one corpus and one empty cache, imported and waiting to be released."""
    rng = random.Random(0)
    words = "the a cat dog sat on mat and ran to house garden over under big small red blue N".split()
    text = "".join(" ".join(rng.choice(words) for _ in range(rng.randint(1, 20))) + ".\n" for _ in range(2000))
    # 4 MB: about a second to tokenize by characters, long enough for the two jobs to overlap
    write_corpus(tmp_path / "text", {"train": text * 45, "valid": text[:5000], "test": text[-5000:]})
    started = [Job(tmp_path / "text", tmp_path / "cache", tmp_path / f"job{i}") for i in range(2)]
    try:
        wait_for(lambda: all(job.ready() for job in started), "ready jobs")
        yield started
    finally:
        for job in started:
            if job.process.poll() is None:
                job.process.kill()
                job.process.wait()


def entries(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "tokens").iterdir() if p.is_dir() and not p.name.startswith("."))


def test_two_jobs_released_together_tokenize_once(tmp_path, jobs):
    for job in jobs:
        job.release()
    results = [job.result() for job in jobs]
    (entry,) = entries(tmp_path / "cache")
    assert not list((tmp_path / "cache" / "tokens").glob(".tmp-*"))
    assert [r["path"] for r in results] == [str(entry)] * 2
    assert results[0]["ids"] == results[1]["ids"] and set(results[0]["ids"]) == {"train", "valid", "test"}
    # One tokenized; the other found no entry, waited for the first, then read what it made.
    assert sorted(r["from_cache"] for r in results) == [False, True]
    maker, reader = sorted(jobs, key=lambda job: results[jobs.index(job)]["from_cache"])
    assert "tokenized in" in maker.log() and "waiting" not in maker.log()
    assert reader.log().splitlines() == [f"tokens: waiting for another process preparing {entry}",
                                         f"tokens: cached in {entry}"]


def test_a_killed_preparer_leaves_no_entry_and_the_waiting_job_tokenizes(tmp_path, jobs):
    first, second = jobs
    tokens = tmp_path / "cache" / "tokens"
    first.release()
    wait_for(lambda: tokens.is_dir() and any(tokens.glob(".tmp-*")), "temporary folder")  # it holds the lock
    second.release()
    wait_for(lambda: "waiting for another process" in second.log() or second.process.poll() is not None, "waiting")
    assert "waiting for another process" in second.log(), second.log()
    first.process.send_signal(signal.SIGKILL)  # no clean-up of its own: only the kernel's release of its lock
    assert first.process.wait(timeout=30) == -signal.SIGKILL
    result = second.result()
    assert not result["from_cache"] and "tokenized in" in second.log()
    (entry,) = entries(tmp_path / "cache")
    assert result["path"] == str(entry)
    # The killed job's temporary folder is left (nothing can tell it from a live job's), never a half entry.
    assert len(list(tokens.glob(".tmp-*"))) == 1
    again = tokenize_corpus(concurrent_prepare.corpus(tmp_path / "text"), concurrent_prepare.tokenizer(),
                            tmp_path / "cache")
    assert again.from_cache and again.path == entry and concurrent_prepare.digests(again) == result["ids"]


def test_a_cache_hit_takes_no_lock_and_a_lock_that_cannot_be_had_is_no_error(tmp_path):
    corpus = write_corpus(tmp_path / "text", {"train": "a b\n", "valid": "b a\n", "test": "a\n"})
    char = lambda: CharTokenizer(CharTokenizerConfig())  # noqa: E731
    first = tokenize_corpus(corpus, char(), tmp_path / "cache")
    lock = first.path.parent / f".{first.path.name}.lock"
    assert lock.is_file()
    lock.unlink()
    # Found without a lock file, so a cache this process cannot write is read as before.
    assert tokenize_corpus(corpus, char(), tmp_path / "cache").from_cache and not lock.exists()

    # A lock file that cannot be opened (a folder in its place here; in use, a cache this process
    # cannot write) is no error of its own: the process goes on without the lock, as before there was one.
    other = tmp_path / "other" / "tokens" / first.path.name
    (other.parent / f".{other.name}.lock").mkdir(parents=True)
    made = tokenize_corpus(corpus, char(), tmp_path / "other")
    assert made.path == other and not made.from_cache and made.vocab.itos == first.vocab.itos


@pytest.mark.parametrize("damage", ["train cut short", "valid gone", "vocab gone", "meta cut short", "train overwritten"])
def test_a_damaged_entry_is_made_again(damage, tmp_path):
    """Only meta.json's presence was checked: a split file gone was a split skipped without a word
    (no validation), the rest tracebacks from numpy or json."""
    corpus = write_corpus(tmp_path / "text", {"train": "the cat sat on the mat\n" * 50, "valid": "the cat\n",
                                              "test": "the mat\n"})
    first = tokenize_corpus(corpus, word(), tmp_path / "cache")
    train, path = np.array(first.ids["train"]), first.path
    file, how = {"train cut short": ("train.npy", "cut"), "valid gone": ("valid.npy", "gone"),
                 "vocab gone": ("vocab.json", "gone"), "meta cut short": ("meta.json", "cut"),
                 "train overwritten": ("train.npy", "noise")}[damage]
    target = path / file
    if how == "gone":
        target.unlink()
    elif how == "cut":
        target.write_bytes(target.read_bytes()[:20])
    else:
        target.write_bytes(os.urandom(40))
    again = tokenize_corpus(corpus, word(), tmp_path / "cache")
    assert not again.from_cache and sorted(again.ids) == ["test", "train", "valid"]
    assert np.array_equal(np.asarray(again.ids["train"]), train)
    assert tokenize_corpus(corpus, word(), tmp_path / "cache").from_cache  # whole again


def test_entries_have_the_modes_a_shared_cache_needs(tmp_path):
    """tempfile's folders and files are private (0700, 0600), and the rename into place kept that:
    another user of a shared cache could not read an entry (PermissionError on its meta.json)."""
    corpus = write_corpus(tmp_path / "text", {"train": "the cat sat on the mat\n" * 5, "valid": "the cat\n",
                                              "test": "the mat\n"})
    umask = os.umask(0o022)
    try:
        entry = tokenize_corpus(corpus, word(), tmp_path / "cache").path
    finally:
        os.umask(umask)
    assert entry.stat().st_mode & 0o777 == 0o755
    assert (entry / "meta.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "cache" / "tokens" / "digests.json").stat().st_mode & 0o777 == 0o644


# --- mutation round 6 (2026-12-01): what the cache's tests could not see -----------------------


def test_a_zero_width_no_break_space_inside_a_file_is_text_whatever_the_chunks(tmp_path, monkeypatch):
    """U+FEFF is a byte-order mark only at a file's start; stripped at every chunk's start, the ids
    would depend on the chunk size, and the tokens would no longer match the bytes counted."""
    text = "ab\n" * 5 + "\ufeffab\n" + "ab\n" * 5
    corpus = write_corpus(tmp_path / "text", {"train": text, "valid": text, "test": text})
    whole = tokenize_corpus(corpus, CharTokenizer(CharTokenizerConfig()), tmp_path / "one")
    monkeypatch.setattr(cache, "CHUNK_BYTES", 3)  # a chunk a line
    monkeypatch.setenv("LMEXP_WORKERS", "1")
    chunked = tokenize_corpus(corpus, CharTokenizer(CharTokenizerConfig()), tmp_path / "chunks")
    assert "\ufeff" in whole.vocab.itos and chunked.vocab.itos == whole.vocab.itos
    for split in ("train", "valid", "test"):
        assert np.array_equal(chunked.ids[split], whole.ids[split])
        assert chunked.stats[split] == whole.stats[split]


def test_a_bad_small_split_is_reported_before_the_train_split_is_read(tmp_path):
    corpus = write_corpus(tmp_path / "text", {"train": b"bad \xff\n", "valid": b"also \xfe bad\n", "test": b"fine\n"})
    with pytest.raises(UserError, match=r"valid.txt: line 1 is not valid UTF-8"):
        tokenize_corpus(corpus, WordTokenizer(WordTokenizerConfig(split="whitespace")), tmp_path / "cache")
