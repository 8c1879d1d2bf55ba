"""The ``embedding=`` options: how a model's input table starts, and where the code is (``lmexp/embeddings.py``)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from lmexp.errors import ConfigError
from lmexp.registry import Registry
from lmexp.schema import Option, check, check_readable

EMBEDDINGS = Registry("embedding", "embedding")  # name -> Entry(init(embedding, config, context), config)


@dataclass
class LearnedEmbeddingConfig(Option):
    name: Optional[str] = "learned"
    init_std: Optional[float] = None  # null keeps the model's own initialisation

    def validate(self, group: str) -> None:
        if self.init_std is not None:
            check(self.init_std > 0, f"{group}.init_std", self.init_std, "> 0, or null for the model's own scheme")

    def replacing(self) -> Optional[str]:
        """The setting that writes over the table the model starts with, if any."""
        return f"embedding.init_std={self.init_std}" if self.init_std is not None else None


UNKNOWN_CHOICES = ("random", "zero", "mean")
FORMATS = ("word2vec", "word2vec_binary", "glove")


@dataclass
class VectorOptions(Option):
    """What both vector options share."""

    freeze: bool = False  # keep the rows fixed in training (refused when the output layer is tied)
    unknown: str = "random"  # rows without a vector: random (the model's own init) | zero | mean
    project: bool = False  # vector size != embedding width: map vectors by a fixed random projection

    def validate(self, group: str) -> None:
        check(self.unknown in UNKNOWN_CHOICES, f"{group}.unknown", self.unknown, "one of " + ", ".join(UNKNOWN_CHOICES))
        # Frozen, every row without a vector would be the same fixed vector: words the model cannot tell apart.
        check(not self.freeze or self.unknown == "random", f"{group}.unknown", self.unknown,
              f"random with {group}.freeze=true: frozen {self.unknown} rows make every word without a vector "
              f"one same word (or set {group}.freeze=false)")

    def replacing(self) -> Optional[str]:
        return f"embedding={self.name}"

    def refuse_frozen_tie(self, tied: bool, can_untie: bool = True) -> None:
        """Checked before any training or reading: freezing a tied matrix freezes the output layer too."""
        if self.freeze and tied:
            fix = "set model.tie_weights=false" if can_untie else \
                "this model always ties them, so set embedding.freeze=false"
            raise ConfigError(f"embedding.freeze=true would also freeze the tied output layer; {fix}")


@dataclass
class Word2VecEmbeddingConfig(VectorOptions):
    name: Optional[str] = "word2vec"
    sg: int = 1  # 1 skip-gram, 0 CBOW
    window: int = 5
    epochs: int = 5
    min_count: int = 1  # the tokenizer has already dropped rare words
    negative: int = 5  # negative samples per positive one
    workers: int = 1  # more threads train faster but not reproducibly
    vector_size: Optional[int] = None  # null = the embedding's own width
    seed: int = 1

    def validate(self, group: str) -> None:
        super().validate(group)
        check(self.sg in (0, 1), f"{group}.sg", self.sg, "1 (skip-gram) or 0 (CBOW)")
        for key in ("window", "epochs", "min_count", "negative", "workers"):
            check(getattr(self, key) >= 1, f"{group}.{key}", getattr(self, key), "a positive integer")
        if self.vector_size is not None:
            check(self.vector_size >= 1, f"{group}.vector_size", self.vector_size,
                  "a positive integer, or null for the embedding's width")
        check(self.seed >= 0, f"{group}.seed", self.seed, "a non-negative integer")

    def training_settings(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in asdict(VectorOptions())}


@dataclass
class PretrainedEmbeddingConfig(VectorOptions):
    name: Optional[str] = "pretrained"
    path: Optional[str] = None  # the vectors file (.gz allowed)
    format: str = "word2vec"  # word2vec (text) | word2vec_binary | glove (text, no header line)
    lowercase_lookup: bool = False  # a word without a vector tries its lowercased form

    def validate(self, group: str) -> None:
        super().validate(group)
        check(self.path is not None and self.path != "", f"{group}.path", self.path, "the path of a vectors file")
        check(self.format in FORMATS, f"{group}.format", self.format, "one of " + ", ".join(FORMATS))

    def vectors_file(self) -> Path:
        path = Path(os.path.expanduser(self.path))
        check(path.is_file(), "embedding.path", self.path, "an existing vectors file")
        check_readable(path, "embedding.path", self.path)
        return path

    def check_files(self) -> None:
        self.vectors_file()


EMBEDDINGS.declare("learned", LearnedEmbeddingConfig, "lmexp.embeddings:init_learned")
EMBEDDINGS.declare("word2vec", Word2VecEmbeddingConfig, "lmexp.embeddings:init_word2vec")
EMBEDDINGS.declare("pretrained", PretrainedEmbeddingConfig, "lmexp.embeddings:init_pretrained")
