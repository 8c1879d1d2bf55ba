"""Tokenizers turn a line of text into units, and a vocabulary turns units into ids.

Registered by the name of their ``tokenizer=`` option.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional

import numpy as np

from lmexp.config import check
from lmexp.errors import UserError
from lmexp.registry import Registry

UNK, EOS = "<unk>", "<eos>"


class Vocab:
    """Ids for units. ``eos`` ends every line; ``unk`` stands for units outside the vocabulary
    (None for tokenizers that cannot meet one, such as byte-level BPE). A vocabulary built
    from a corpus has ``<unk>`` = 0 and ``<eos>`` = 1."""

    def __init__(self, itos: list[str], unk: Optional[str] = UNK, eos: str = EOS):
        self.itos = itos
        self.stoi = {s: i for i, s in enumerate(itos)}
        self.unk = self.stoi[unk] if unk is not None else None
        self.eos = self.stoi[eos]

    def ids(self, units: list[str]) -> list[int]:
        if self.unk is None:
            return [self.stoi[u] for u in units]
        return [self.stoi.get(u, self.unk) for u in units]

    def __len__(self) -> int:
        return len(self.itos)

    @classmethod
    def build(cls, counts: Counter, min_freq: int = 1, max_size: Optional[int] = None) -> "Vocab":
        # Most frequent first, ties broken by the unit itself, so the ids never depend on
        # the order in which the corpus was read.
        ranked = sorted((u for u, c in counts.items() if c >= min_freq and u not in (UNK, EOS)),
                        key=lambda u: (-counts[u], u))
        if max_size is not None:
            ranked = ranked[: max(0, max_size - 2)]
        return cls([UNK, EOS, *ranked])


class _CountedVocab:
    """Tokenizers whose vocabulary is built from the train split's unit counts (word, char);
    each says how in ``vocab_from_counts``, which the corpus cache calls with counts it summed
    over chunks."""

    def build_vocab(self, train_units: Iterable[list[str]]) -> Vocab:
        counts: Counter = Counter()
        for units in train_units:
            counts.update(units)
        return self.vocab_from_counts(counts)

    def vocab_from_counts(self, counts: Mapping[str, int]) -> Vocab:
        raise NotImplementedError


@dataclass
class WordTokenizerConfig:
    # Released pre-tokenized corpora (PTB, WikiText tokens) are split on whitespace and keep
    # every word, so that the vocabulary is the published one: their makers already replaced
    # rare words by <unk>. Raw text is split by NLTK, and words seen fewer than 3 times in
    # train become <unk>, WikiText's rule.
    split: str = "auto"  # auto | nltk | whitespace
    min_freq: Optional[int] = None  # null: 1 for pre-tokenized corpora, 3 for raw text
    max_size: Optional[int] = None  # at most this many ids, <unk> and <eos> included
    lowercase: bool = False

    def validate(self, group: str) -> None:
        check(self.split in ("auto", "nltk", "whitespace"), f"{group}.split", self.split, "auto, nltk or whitespace")
        if self.min_freq is not None:
            check(self.min_freq >= 1, f"{group}.min_freq", self.min_freq, "a positive integer, or null")
        if self.max_size is not None:
            check(self.max_size >= 3, f"{group}.max_size", self.max_size, "at least 3 (<unk>, <eos> and one word), or null")


class WordTokenizer(_CountedVocab):
    """Words and punctuation as NLTK splits them.

    ``nltk.word_tokenize`` needs the downloaded Punkt models; this combines the same two
    steps from parts that need no download: Punkt's sentence splitter with its default
    parameters, then the Treebank-style ``NLTKWordTokenizer`` on each sentence, which only
    splits off a final period, hence the sentence step.
    """

    unk_token, eos_token = UNK, EOS

    def __init__(self, config: WordTokenizerConfig, pretokenized: bool = False):
        from nltk.tokenize import NLTKWordTokenizer
        from nltk.tokenize.punkt import PunktSentenceTokenizer

        self.config = config
        self.whitespace = config.split == "whitespace" or (config.split == "auto" and pretokenized)
        self.min_freq = config.min_freq or (1 if pretokenized else 3)
        self._sentences = PunktSentenceTokenizer()
        self._words = NLTKWordTokenizer()

    def settings(self) -> dict:
        return {"name": "word", **asdict(self.config), "split": "whitespace" if self.whitespace else "nltk",
                "min_freq": self.min_freq}

    def split(self, line: str) -> list[str]:
        if self.config.lowercase:
            line = line.lower()
        if self.whitespace:
            return line.split()
        return [w for s in self._sentences.tokenize(line) for w in self._words.tokenize(s)]

    def decode(self, units: list[str]) -> str:
        """Words joined by spaces, a line break for each <eos>: readable, not the original
        spacing, which word tokenization does not keep."""
        return " ".join(units).replace(f" {EOS} ", "\n").replace(EOS, "\n")

    def vocab_from_counts(self, counts: Mapping[str, int]) -> Vocab:
        return Vocab.build(Counter(counts), self.min_freq, self.config.max_size)


class _RustBPE:
    """What GPT-2's and the trained BPE share: Hugging Face ``tokenizers`` encodes many lines
    at once, which the corpus cache uses instead of ``split`` line by line (same ids)."""

    eos_token: str

    def _trained(self):
        return self._tok

    def encode_lines(self, lines: list[str]) -> np.ndarray:
        """The tokenizer's own ids of the lines, each followed by the id of ``eos_token``."""
        tok = self._trained()
        eos, ids = tok.token_to_id(self.eos_token), []
        # encode_batch_fast (tokenizers >= 0.20) leaves out the offsets, which are not kept.
        encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
        for encoding in encode(lines, add_special_tokens=False):
            ids += encoding.ids
            ids.append(eos)
        return np.array(ids, dtype=np.uint32)

    def units_by_id(self) -> list[Optional[str]]:
        """The unit of each of the tokenizer's own ids (None for an id it does not use)."""
        vocab = self._trained().get_vocab(with_added_tokens=True)
        units: list[Optional[str]] = [None] * (max(vocab.values()) + 1)
        for unit, i in vocab.items():
            units[i] = unit
        return units


@dataclass
class GPT2TokenizerConfig:
    path: Optional[str] = None  # folder with tokenizer.json, or vocab.json + merges.txt

    def validate(self, group: str) -> None:
        check(self.path is not None, f"{group}.path", self.path,
              "a folder holding GPT-2's tokenizer.json, or vocab.json and merges.txt")
        folder = Path(os.path.expanduser(self.path))
        check(folder.is_dir(), f"{group}.path", self.path, "an existing folder")
        check((folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file()
              and (folder / "merges.txt").is_file(), f"{group}.path", self.path,
              "a folder with tokenizer.json, or vocab.json and merges.txt")


class GPT2Tokenizer(_RustBPE):
    """GPT-2's byte-level BPE from local files, through Hugging Face ``tokenizers``.

    Units are GPT-2's token strings; the vocabulary is the files' (nothing is built from the
    corpus) and never meets an unknown unit. A line ends with GPT-2's own newline token, so a
    pretrained GPT-2 sees line breaks as it saw them in training.
    """

    unk_token, eos_token = None, "\u010a"  # "Ċ": the byte-level BPE unit for "\n"

    def __init__(self, config: GPT2TokenizerConfig, pretokenized: bool = False):  # BPE reads any text alike
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        self.config = config
        folder = Path(os.path.expanduser(config.path))
        if (folder / "tokenizer.json").is_file():
            self.files = [folder / "tokenizer.json"]
            self._tok = Tokenizer.from_file(str(self.files[0]))
        else:
            self.files = [folder / "vocab.json", folder / "merges.txt"]
            self._tok = Tokenizer(models.BPE.from_file(*(str(f) for f in self.files)))
            self._tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            self._tok.decoder = decoders.ByteLevel()

    def settings(self) -> dict:
        # The files' content, not their path, decides the ids.
        digest = hashlib.sha256(b"".join(f.read_bytes() for f in self.files)).hexdigest()[:16]
        return {"name": "gpt2", "files": digest}

    def split(self, line: str) -> list[str]:
        return self._tok.encode(line, add_special_tokens=False).tokens

    def decode(self, units: list[str]) -> str:
        return self._tok.decoder.decode(units)

    def build_vocab(self, train_units: Iterable[list[str]]) -> Vocab:
        itos = [u for u, _ in sorted(self._tok.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])]
        return Vocab(itos, self.unk_token, self.eos_token)


@dataclass
class CharTokenizerConfig:
    bytes: bool = False  # true: the UTF-8 bytes of each line instead of its characters
    min_freq: int = 1  # characters (bytes) seen fewer times in train become <unk>
    lowercase: bool = False

    def validate(self, group: str) -> None:
        check(self.min_freq >= 1, f"{group}.min_freq", self.min_freq, "a positive integer")


class CharTokenizer(_CountedVocab):
    """The characters of each line, or with ``bytes`` its UTF-8 bytes.

    A byte is the unit ``chr(byte)`` (its Latin-1 character), so a byte unit is a one-
    character string like a character unit, and ``"".join(units).encode("latin-1")`` gives
    the bytes back. A line ends with the unit ``"\\n"``, which no line contains, so decoding
    is joining the units: the text comes back exactly (lowercased with ``lowercase``).
    """

    unk_token, eos_token = UNK, "\n"

    def __init__(self, config: CharTokenizerConfig, pretokenized: bool = False):  # characters are characters
        self.config = config

    def settings(self) -> dict:
        return {"name": "char", **asdict(self.config)}

    def split(self, line: str) -> list[str]:
        if self.config.lowercase:
            line = line.lower()
        if self.config.bytes:
            return list(line.encode("utf-8").decode("latin-1"))
        return list(line)

    def decode(self, units: list[str]) -> str:
        text = "".join(units)
        if self.config.bytes:
            # A sampled byte sequence need not be valid UTF-8: show what is not as U+FFFD.
            return text.encode("latin-1", errors="replace").decode("utf-8", errors="replace")
        return text

    def vocab_from_counts(self, counts: Mapping[str, int]) -> Vocab:
        ranked = sorted((u for u, c in counts.items() if c >= self.config.min_freq and u not in (UNK, "\n")),
                        key=lambda u: (-counts[u], u))
        return Vocab([UNK, "\n", *ranked], UNK, "\n")


@dataclass
class BPETokenizerConfig:
    vocab_size: int = 8000  # at most this many ids: 256 bytes, <eos> and the learned merges
    min_frequency: int = 2  # a pair of units seen fewer times in train is never merged

    def validate(self, group: str) -> None:
        check(self.vocab_size >= 258, f"{group}.vocab_size", self.vocab_size,
              "at least 258 (256 bytes, <eos> and one merge)")
        check(self.min_frequency >= 1, f"{group}.min_frequency", self.min_frequency, "a positive integer")


class BPETokenizer(_RustBPE):
    """Byte-level BPE (GPT-2's scheme) trained on the train split with Hugging Face ``tokenizers``.

    ``fit(train_lines)`` trains it; the corpus cache calls it before splitting, saves the
    trained tokenizer as ``tokenizer.json`` in the cache entry, and restores it from there
    when the entry is reused, so a second run does not train again. ``BPETokenizer.load``
    rebuilds a trained tokenizer from that file (for generation). Lines end with the special
    unit ``<eos>``; every byte is in the vocabulary, so no unit is unknown.
    """

    unk_token, eos_token = None, EOS

    def __init__(self, config: BPETokenizerConfig, pretokenized: bool = False):  # BPE reads any text alike
        from tokenizers import decoders

        self.config = config
        self._tok = None
        self._decoder = decoders.ByteLevel()

    def settings(self) -> dict:
        import tokenizers

        # The trained merges also depend on the train text, which the cache key already hashes.
        return {"name": "bpe", **asdict(self.config), "library": tokenizers.__version__}

    def fit(self, train_lines: Iterable) -> None:
        """Train on the train split: its lines, or batches (lists) of them, in order."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=self.config.vocab_size, min_frequency=self.config.min_frequency,
                                      special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        length = len(train_lines) if isinstance(train_lines, list) else None  # only for the trainer's progress
        tok.train_from_iterator(train_lines, trainer=trainer, length=length)
        self._tok = tok

    def save(self, folder: Path) -> None:
        self._trained().save(str(Path(folder) / "tokenizer.json"))

    def restore(self, path) -> None:
        """Take the trained tokenizer from its ``tokenizer.json``, or the folder holding it (a cache entry)."""
        from tokenizers import Tokenizer

        path = Path(path)
        self._tok = Tokenizer.from_file(str(path / "tokenizer.json" if path.is_dir() else path))

    def restore_json(self, text: str) -> None:
        """Take the trained tokenizer from the content of its tokenizer.json (a checkpoint keeps it)."""
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_str(text)

    @classmethod
    def load(cls, path, config: Optional[BPETokenizerConfig] = None) -> "BPETokenizer":
        """A trained tokenizer from its ``tokenizer.json`` (or the folder holding it), e.g. for generation."""
        tokenizer = cls(config or BPETokenizerConfig())
        tokenizer.restore(path)
        return tokenizer

    def _trained(self):
        if self._tok is None:
            raise UserError("tokenizer=bpe has not been trained: it is trained on the train split when the corpus "
                            "is first tokenized, and kept as tokenizer.json in that token cache entry")
        return self._tok

    def split(self, line: str) -> list[str]:
        return self._trained().encode(line, add_special_tokens=False).tokens

    def decode(self, units: list[str]) -> str:
        """The text back exactly: byte-level pieces decoded, a line break for each <eos>."""
        lines, current = [], []
        for unit in units:
            if unit == EOS:
                lines.append(current)
                current = []
            else:
                current.append(unit)
        lines.append(current)
        return "\n".join(self._decoder.decode(piece) if piece else "" for piece in lines)

    def build_vocab(self, train_units: Iterable[list[str]]) -> Vocab:
        vocab = self._trained().get_vocab(with_added_tokens=True)
        return Vocab([u for u, _ in sorted(vocab.items(), key=lambda kv: kv[1])], None, EOS)


TOKENIZERS = Registry("tokenizer", "tokenizer", {
    "word": (WordTokenizer, WordTokenizerConfig),
    "char": (CharTokenizer, CharTokenizerConfig),
    "bpe": (BPETokenizer, BPETokenizerConfig),
    "gpt2": (GPT2Tokenizer, GPT2TokenizerConfig),
})
tokenizer_spec = TOKENIZERS.option


def make_tokenizer(settings, state: Optional[str] = None):
    """The run's tokenizer, told whether its corpus is a pre-tokenized release, and restored
    from ``state`` when it was trained (BPE)."""
    cls, _ = tokenizer_spec(settings.names["tokenizer"])
    tokenizer = cls(settings.tokenizer, pretokenized=settings.data.pretokenized())
    if state is not None:
        tokenizer.restore_json(state)
    return tokenizer
