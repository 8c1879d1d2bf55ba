"""How a model's input embedding is initialised (the ``embedding=`` group)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch.nn as nn

from lmexp.data.tokenizers import Vocab
from lmexp.config import check
from lmexp.errors import ConfigError


@dataclass
class LearnedEmbeddingConfig:
    init_std: Optional[float] = None  # null keeps the model's own initialisation

    def validate(self, group: str) -> None:
        if self.init_std is not None:
            check(self.init_std > 0, f"{group}.init_std", self.init_std, "> 0, or null for the model's own scheme")


@dataclass
class EmbeddingContext:
    """What an initialiser may read: the model's vocabulary, the training split's ids (to train
    vectors on, or to measure coverage), and the cache folder (to keep trained vectors)."""

    vocab: Vocab
    train_ids: np.ndarray
    cache_dir: Path
    corpus_key: str  # names the tokenized corpus: part of any cache key built on it


def init_learned(embedding: nn.Embedding, config: LearnedEmbeddingConfig, context: EmbeddingContext) -> dict:
    """Random rows: the model's own scheme, or N(0, init_std). Returns statistics to report."""
    if config.init_std is not None:
        nn.init.normal_(embedding.weight, mean=0.0, std=config.init_std)
    return {}


EMBEDDINGS = {"learned": (init_learned, LearnedEmbeddingConfig)}


def embedding_spec(name: str):
    if name not in EMBEDDINGS:
        raise ConfigError(f"embedding={name} is not a known embedding; choose one of: {', '.join(sorted(EMBEDDINGS))}")
    return EMBEDDINGS[name]
