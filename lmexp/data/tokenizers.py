"""Tokenizers turn a line of text into units, and a vocabulary turns units into ids.

Registered by the name of their ``tokenizer=`` option.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Iterable, Optional

from lmexp.config import check
from lmexp.errors import ConfigError

UNK, EOS = "<unk>", "<eos>"


class Vocab:
    """Ids for units; 0 is ``<unk>`` and 1 is ``<eos>``, the end of every line."""

    def __init__(self, itos: list[str]):
        self.itos = itos
        self.stoi = {s: i for i, s in enumerate(itos)}
        self.unk, self.eos = self.stoi[UNK], self.stoi[EOS]

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
    min_freq: int = 3  # rarer words become <unk>, as in WikiText
    max_size: Optional[int] = None  # at most this many ids, <unk> and <eos> included
    lowercase: bool = False

    def validate(self, group: str) -> None:
        check(self.min_freq >= 1, f"{group}.min_freq", self.min_freq, "a positive integer")
        if self.max_size is not None:
            check(self.max_size >= 3, f"{group}.max_size", self.max_size, "at least 3 (<unk>, <eos> and one word), or null")


class WordTokenizer:
    """Words and punctuation as NLTK splits them.

    ``nltk.word_tokenize`` needs the downloaded Punkt models; this combines the same two
    steps from parts that need no download: Punkt's sentence splitter with its default
    parameters, then the Treebank-style ``NLTKWordTokenizer`` on each sentence, which only
    splits off a final period, hence the sentence step.
    """

    def __init__(self, config: WordTokenizerConfig):
        from nltk.tokenize import NLTKWordTokenizer
        from nltk.tokenize.punkt import PunktSentenceTokenizer

        self.config = config
        self._sentences = PunktSentenceTokenizer()
        self._words = NLTKWordTokenizer()

    def settings(self) -> dict:
        return {"name": "word", **asdict(self.config)}

    def split(self, line: str) -> list[str]:
        if self.config.lowercase:
            line = line.lower()
        return [w for s in self._sentences.tokenize(line) for w in self._words.tokenize(s)]

    def decode(self, units: list[str]) -> str:
        """Words joined by spaces, a line break for each <eos>: readable, not the original
        spacing, which word tokenization does not keep."""
        return " ".join(units).replace(f" {EOS} ", "\n").replace(EOS, "\n")

    def build_vocab(self, train_units: Iterable[list[str]]) -> Vocab:
        counts: Counter = Counter()
        for units in train_units:
            counts.update(units)
        return Vocab.build(counts, self.config.min_freq, self.config.max_size)


TOKENIZERS = {"word": (WordTokenizer, WordTokenizerConfig)}


def tokenizer_spec(name: str):
    if name not in TOKENIZERS:
        raise ConfigError(f"tokenizer={name} is not a known tokenizer; choose one of: {', '.join(sorted(TOKENIZERS))}")
    return TOKENIZERS[name]
