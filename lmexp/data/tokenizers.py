"""Tokenizers turn a line of text into units, and a vocabulary turns units into ids.

Registered by the name of their ``tokenizer=`` option.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional

from lmexp.config import check
from lmexp.errors import ConfigError

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


class WordTokenizer:
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

    def build_vocab(self, train_units: Iterable[list[str]]) -> Vocab:
        counts: Counter = Counter()
        for units in train_units:
            counts.update(units)
        return Vocab.build(counts, self.min_freq, self.config.max_size)


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


class GPT2Tokenizer:
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


TOKENIZERS = {"word": (WordTokenizer, WordTokenizerConfig), "gpt2": (GPT2Tokenizer, GPT2TokenizerConfig)}


def make_tokenizer(settings):
    """The run's tokenizer, told whether its corpus is a pre-tokenized release."""
    cls, _ = tokenizer_spec(settings.names["tokenizer"])
    return cls(settings.tokenizer, pretokenized=settings.data.pretokenized())


def tokenizer_spec(name: str):
    if name not in TOKENIZERS:
        raise ConfigError(f"tokenizer={name} is not a known tokenizer; choose one of: {', '.join(sorted(TOKENIZERS))}")
    return TOKENIZERS[name]
