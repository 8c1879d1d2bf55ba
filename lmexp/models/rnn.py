"""Recurrent language models: embedding -> stacked LSTM, GRU or Elman RNN -> softmax.

The architecture of Zaremba et al. 2014 ("Recurrent Neural Network Regularization") with
the weight tying of Press & Wolf 2017 / Inan et al. 2017: the output layer reuses the input
embedding matrix, which both saves parameters and lowers perplexity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from lmexp.config import check
from lmexp.models import register

State = Optional[object]  # (h, c) for an LSTM, h for a GRU / RNN


@dataclass
class RNNConfig:
    embedding_size: int = 128
    hidden_size: int = 256
    num_layers: int = 1
    tie_weights: bool = True
    nonlinearity: str = "tanh"  # Elman RNN only
    cell: str = "lstm"  # set by the registry name

    def validate(self, group: str) -> None:
        for key in ("embedding_size", "hidden_size", "num_layers"):
            check(getattr(self, key) >= 1, f"{group}.{key}", getattr(self, key), "a positive integer")
        check(self.nonlinearity in ("tanh", "relu"), f"{group}.nonlinearity", self.nonlinearity, "tanh or relu")
        check(self.cell == "rnn" or self.nonlinearity == "tanh", f"{group}.nonlinearity", self.nonlinearity,
              f"tanh for model={self.cell} (only model=rnn has a choice)")


_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


@register("rnn", RNNConfig, cell="rnn")
@register("gru", RNNConfig, cell="gru")
@register("lstm", RNNConfig, cell="lstm")
class RecurrentLM(nn.Module):
    stateful = True  # the data module streams contiguous windows and the state carries over

    def __init__(self, config: RNNConfig, vocab_size: int, dropout: float = 0.0):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(vocab_size, config.embedding_size)
        self.drop = nn.Dropout(dropout)
        extra = {"nonlinearity": config.nonlinearity} if config.cell == "rnn" else {}
        self.rnn = _CELLS[config.cell](
            config.embedding_size,
            config.hidden_size,
            config.num_layers,
            batch_first=True,
            dropout=dropout if config.num_layers > 1 else 0.0,  # between layers; the last layer's is self.drop
            **extra,
        )
        # Tying needs the decoder input to have the embedding's width; project when they differ.
        needs_projection = config.tie_weights and config.hidden_size != config.embedding_size
        self.projection = nn.Linear(config.hidden_size, config.embedding_size) if needs_projection else None
        decoder_in = config.embedding_size if config.tie_weights else config.hidden_size
        self.decoder = nn.Linear(decoder_in, vocab_size)
        self._init_weights()
        if config.tie_weights:
            self.decoder.weight = self.embedding.weight

    def _init_weights(self) -> None:
        # Uniform(-0.1, 0.1) as in Zaremba et al. and pytorch/examples word_language_model.
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, idx: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]:
        x = self.drop(self.embedding(idx))  # (B, T, E)
        out, state = self.rnn(x, state)  # (B, T, H)
        out = self.drop(out)
        if self.projection is not None:
            out = self.projection(out)  # (B, T, E)
        return self.decoder(out), state  # (B, T, V)
