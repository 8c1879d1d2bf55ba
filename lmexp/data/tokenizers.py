"""Tokenizers turn a line of text into units, and a vocabulary turns units into ids.

Registered by the name of their ``tokenizer=`` option.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional

import numpy as np

from lmexp.errors import ConfigError, UserError
from lmexp.registry import Registry
from lmexp.schema import Option, check, check_readable
from lmexp.stops import StoppedEarly

UNK, EOS = "<unk>", "<eos>"
TOKENIZERS = Registry("tokenizer", "tokenizer")  # name -> Entry(tokenizer class, its config)


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


class Tokenizer:
    """What the corpus cache, a checkpoint and generation ask of every tokenizer.

    ``split`` turns a line into units and ``decode`` units back into text. The ids are either
    counted (word, char: ``vocab`` ranks the train split's unit counts) or the tokenizer's own
    (``own_ids``: bpe, gpt2, whose Rust encoder gives ids for many lines at once through
    ``encode_lines``). ``fit`` learns from the train split, ``save`` returns what must be kept
    to split text the same way again and ``restore`` takes it back; all three do nothing for a
    tokenizer that has nothing to learn.
    """

    unk_token: Optional[str] = UNK
    eos_token: str = EOS
    own_ids = False  # the ids are the tokenizer's own, not counted from the corpus
    learns = False  # fit learns from the train split (reading it once more)

    def __init__(self, config, pretokenized: bool = False):
        self.config = config

    def settings(self) -> dict:
        """What decides the ids: part of the token cache's key."""
        raise NotImplementedError

    def fit(self, train_lines: Iterable) -> None:
        """Learn from the train split's lines (or batches of them); most tokenizers learn nothing."""

    def save(self) -> Optional[str]:
        """The learned state as text (a checkpoint and the cache keep it); None when there is none."""
        return None

    def restore(self, state: str) -> None:
        """Take back what ``save`` returned."""

    def split(self, line: str) -> list[str]:
        raise NotImplementedError

    def decode(self, units: list[str]) -> str:
        raise NotImplementedError

    def vocab(self, counts: Mapping[str, int]) -> Vocab:
        """The vocabulary from the train split's unit counts (a tokenizer with its own ids ignores them)."""
        raise NotImplementedError

    def build_vocab(self, train_units: Iterable[list[str]]) -> Vocab:
        counts: Counter = Counter()
        for units in train_units:
            counts.update(units)
        return self.vocab(counts)


@dataclass
class WordTokenizerConfig(Option):
    name: Optional[str] = "word"
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


@TOKENIZERS.register("word", WordTokenizerConfig)
class WordTokenizer(Tokenizer):
    """Words and punctuation as NLTK splits them.

    ``nltk.word_tokenize`` needs the downloaded Punkt models; this combines the same two
    steps from parts that need no download: Punkt's sentence splitter with its default
    parameters, then the Treebank-style ``NLTKWordTokenizer`` on each sentence, which only
    splits off a final period, hence the sentence step.
    """

    unk_token, eos_token = UNK, EOS

    def __init__(self, config: WordTokenizerConfig, pretokenized: bool = False):
        self.config = config
        self.whitespace = config.split == "whitespace" or (config.split == "auto" and pretokenized)
        self.min_freq = config.min_freq or (1 if pretokenized else 3)
        if not self.whitespace:  # NLTK only where it splits: a machine without it reads pre-tokenized text
            from nltk.tokenize import NLTKWordTokenizer
            from nltk.tokenize.punkt import PunktSentenceTokenizer

            self._sentences = PunktSentenceTokenizer()
            self._words = NLTKWordTokenizer()

    def settings(self) -> dict:
        settings = {"name": "word", **self.config.values(), "split": "whitespace" if self.whitespace else "nltk",
                    "min_freq": self.min_freq}
        if not self.whitespace:  # NLTK's rules change between its versions, and with them the ids
            import nltk

            settings["library"] = nltk.__version__
        return settings

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

    def vocab(self, counts: Mapping[str, int]) -> Vocab:
        return Vocab.build(Counter(counts), self.min_freq, self.config.max_size)


class RustBPE(Tokenizer):
    """What GPT-2's and the trained BPE share: Hugging Face ``tokenizers`` holds the ids and
    encodes many lines at once, which the corpus cache uses instead of ``split`` line by line
    (same ids). Its whole state is its tokenizer.json, which ``save`` returns."""

    own_ids = True
    _tok = None

    def _trained(self):
        return self._tok

    def save(self) -> Optional[str]:
        return self._trained().to_str()

    def restore(self, state: str) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self._tok = HFTokenizer.from_str(state)

    def split(self, line: str) -> list[str]:
        return self._trained().encode(line, add_special_tokens=False).tokens

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

    def vocab(self, counts: Mapping[str, int]) -> Vocab:
        vocab = self._trained().get_vocab(with_added_tokens=True)
        return Vocab([u for u, _ in sorted(vocab.items(), key=lambda kv: kv[1])], self.unk_token, self.eos_token)


GPT2_TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))  # either


@dataclass
class GPT2TokenizerConfig(Option):
    name: Optional[str] = "gpt2"
    path: Optional[str] = None  # folder with tokenizer.json, or vocab.json + merges.txt

    def validate(self, group: str) -> None:
        check(self.path is not None, f"{group}.path", self.path,
              "a folder holding GPT-2's tokenizer.json, or vocab.json and merges.txt")

    def files(self) -> list[Path]:
        """tokenizer.json, or vocab.json and merges.txt, from the folder ``path`` names."""
        folder = Path(os.path.expanduser(self.path))
        for files in ([folder / name for name in names] for names in GPT2_TOKENIZER_FILES):
            if all(f.is_file() for f in files):
                for f in files:
                    check_readable(f, "tokenizer.path", self.path)
                return files
        check(folder.is_dir(), "tokenizer.path", self.path, "an existing folder")
        raise ConfigError(f"tokenizer.path={self.path}: must be a folder with tokenizer.json, or vocab.json and merges.txt")

    def check_files(self) -> None:
        self.files()


@TOKENIZERS.register("gpt2", GPT2TokenizerConfig)
class GPT2Tokenizer(RustBPE):
    """GPT-2's byte-level BPE from local files, through Hugging Face ``tokenizers``.

    Units are GPT-2's token strings; the vocabulary is the files' (nothing is built from the
    corpus) and never meets an unknown unit. A line ends with GPT-2's own newline token, so a
    pretrained GPT-2 sees line breaks as it saw them in training. The files are read when the
    tokenizer is first used, unless a checkpoint's saved state was restored first: a trained
    model needs the folder no more.
    """

    unk_token, eos_token = None, "\u010a"  # "Ċ": the byte-level BPE unit for "\n"

    def _trained(self):
        if self._tok is None:
            self._tok = self._readable(self.config.files())
        return self._tok

    def _readable(self, files: list[Path]):
        """The files as a byte-level BPE with GPT-2's line-break unit, or one line naming tokenizer.path."""
        unreadable = f"tokenizer.path={self.config.path}: cannot be read as a tokenizer"
        if len(files) == 2:  # merges of units the vocabulary lacks make the library panic, printing Rust's trace
            try:
                vocab = json.loads(files[0].read_text(encoding="utf-8"))
                lines = files[1].read_text(encoding="utf-8").splitlines()
            except (OSError, ValueError) as e:
                raise UserError(f"{unreadable} ({' '.join(str(e).split())[:200]})") from None
            if not isinstance(vocab, dict):
                raise UserError(f"{unreadable} (vocab.json holds no mapping of units to ids)")
            for number, line in enumerate(lines, start=1):
                pair = line.split()
                if line.startswith("#version") or not pair:
                    continue
                if len(pair) != 2 or not all(u in vocab for u in (*pair, "".join(pair))):
                    raise UserError(f"{unreadable} (merges.txt line {number}, {line!r}: not two units of "
                                    f"vocab.json whose join is one too)")
        try:
            tok = self._read(files)
        except (KeyboardInterrupt, SystemExit, StoppedEarly):
            raise
        except BaseException as e:  # the library's errors, and its Rust panics, which are no Exception
            raise UserError(f"{unreadable} ({' '.join(str(e).split())[:200]})") from None
        if tok.token_to_id(self.eos_token) is None:
            raise UserError(f"tokenizer.path={self.config.path}: not a byte-level BPE like GPT-2's: it has no unit "
                            f"for a line break ({self.eos_token!r})")
        return tok

    @staticmethod
    def _read(files: list[Path]):
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers

        if len(files) == 1:
            return HFTokenizer.from_file(str(files[0]))
        tok = HFTokenizer(models.BPE.from_file(*(str(f) for f in files)))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        return tok

    def settings(self) -> dict:
        # The tokenizer's content, not where it was read from, decides the ids.
        return {"name": "gpt2", "files": hashlib.sha256(self.save().encode()).hexdigest()[:16]}

    def decode(self, units: list[str]) -> str:
        return self._trained().decoder.decode(units)


@dataclass
class CharTokenizerConfig(Option):
    name: Optional[str] = "char"
    bytes: bool = False  # true: the UTF-8 bytes of each line instead of its characters
    min_freq: int = 1  # characters (bytes) seen fewer times in train become <unk>
    lowercase: bool = False

    def validate(self, group: str) -> None:
        check(self.min_freq >= 1, f"{group}.min_freq", self.min_freq, "a positive integer")


@TOKENIZERS.register("char", CharTokenizerConfig)
class CharTokenizer(Tokenizer):
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
        return {"name": "char", **self.config.values()}

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

    def vocab(self, counts: Mapping[str, int]) -> Vocab:
        ranked = sorted((u for u, c in counts.items() if c >= self.config.min_freq and u not in (UNK, "\n")),
                        key=lambda u: (-counts[u], u))
        return Vocab([UNK, "\n", *ranked], UNK, "\n")


BPE_MOST = 1 << 24  # far beyond any vocabulary in use; past it, a typo's trainer aborts the process


@dataclass
class BPETokenizerConfig(Option):
    name: Optional[str] = "bpe"
    vocab_size: int = 8000  # at most this many ids: 256 bytes, <eos> and the learned merges
    min_frequency: int = 2  # a pair of units seen fewer times in train is never merged

    def validate(self, group: str) -> None:
        check(self.vocab_size >= 258, f"{group}.vocab_size", self.vocab_size,
              "at least 258 (256 bytes, <eos> and one merge)")
        # The trainer reserves memory for the ids asked for: 10^10 aborted in Rust, asking for 567 GB.
        check(self.vocab_size <= BPE_MOST, f"{group}.vocab_size", self.vocab_size,
              f"at most {BPE_MOST:,} (GPT-2 has 50,257)")
        check(self.min_frequency >= 1, f"{group}.min_frequency", self.min_frequency, "a positive integer")


@TOKENIZERS.register("bpe", BPETokenizerConfig)
class BPETokenizer(RustBPE):
    """Byte-level BPE (GPT-2's scheme) trained on the train split with Hugging Face ``tokenizers``.

    ``fit(train_lines)`` trains it; the corpus cache calls it before splitting, saves the
    trained tokenizer as ``tokenizer.json`` in the cache entry, and restores it from there
    when the entry is reused, so a second run does not train again. ``BPETokenizer.load``
    rebuilds a trained tokenizer from that file (for generation). Lines end with the special
    unit ``<eos>``; every byte is in the vocabulary, so no unit is unknown.
    """

    unk_token, eos_token = None, EOS
    learns = True

    def __init__(self, config: BPETokenizerConfig, pretokenized: bool = False):  # BPE reads any text alike
        from tokenizers import decoders

        self.config = config
        self._tok = None
        self._decoder = decoders.ByteLevel()

    def settings(self) -> dict:
        import tokenizers

        # The trained merges also depend on the train text, which the cache key already hashes.
        # "<eos>" written in the text is text (literal_eos): it was read as an end of line.
        return {"name": "bpe", **self.config.values(), "library": tokenizers.__version__, "literal_eos": True}

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
        self._tok = self._literal(tok)

    def restore(self, state: str) -> None:
        super().restore(state)
        self._tok = self._literal(self._tok)

    @staticmethod
    def _literal(tok):
        """``<eos>`` in the text encoded as the characters it is: lines end with the unit, which
        encode_lines appends, and decode gives the text back exactly."""
        tok.encode_special_tokens = True
        return tok

    @classmethod
    def load(cls, path, config: Optional[BPETokenizerConfig] = None) -> "BPETokenizer":
        """A trained tokenizer from its ``tokenizer.json`` (or the cache entry holding it)."""
        path = Path(path)
        tokenizer = cls(config or BPETokenizerConfig())
        tokenizer.restore((path / "tokenizer.json" if path.is_dir() else path).read_text(encoding="utf-8"))
        return tokenizer

    def _trained(self):
        if self._tok is None:
            raise UserError("tokenizer=bpe has not been trained: it is trained on the train split when the corpus "
                            "is first tokenized, and kept as tokenizer.json in that token cache entry")
        return self._tok

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


def make_tokenizer(config, pretokenized: bool = False, state: Optional[str] = None) -> Tokenizer:
    """The ``tokenizer=`` option ``config`` names, told whether its corpus is a pre-tokenized
    release, and restored from ``state`` (what its ``save`` returned) when given."""
    tokenizer = TOKENIZERS.option(config.name).make(config, pretokenized=pretokenized)
    if state is not None:
        tokenizer.restore(state)
    return tokenizer


def tokenizer_for(settings, state: Optional[str] = None) -> Tokenizer:
    """A run's tokenizer (``settings``: :class:`lmexp.config.Settings`): its ``tokenizer=`` option, told
    how the ``data=`` option's text is tokenized already."""
    return make_tokenizer(settings.tokenizer, pretokenized=settings.data.pretokenized(), state=state)
