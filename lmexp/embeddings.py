"""How a model's input embedding is initialised (the ``embedding=`` group)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch.nn as nn

from lmexp.config import check
from lmexp.errors import ConfigError


@dataclass
class LearnedEmbeddingConfig:
    init_std: Optional[float] = None  # null keeps the model's own initialisation

    def validate(self, group: str) -> None:
        if self.init_std is not None:
            check(self.init_std > 0, f"{group}.init_std", self.init_std, "> 0, or null for the model's own scheme")


def init_learned(embedding: nn.Embedding, config: LearnedEmbeddingConfig, vocab: list[str]) -> None:
    if config.init_std is not None:
        nn.init.normal_(embedding.weight, mean=0.0, std=config.init_std)


EMBEDDINGS = {"learned": (init_learned, LearnedEmbeddingConfig)}


def embedding_spec(name: str):
    if name not in EMBEDDINGS:
        raise ConfigError(f"embedding={name} is not a known embedding; choose one of: {', '.join(sorted(EMBEDDINGS))}")
    return EMBEDDINGS[name]
