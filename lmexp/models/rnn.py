"""Recurrent language models: embedding -> stacked LSTM, GRU or Elman RNN -> softmax.

The architecture of Zaremba et al. 2014 ("Recurrent Neural Network Regularization") with
the weight tying of Press & Wolf 2017 / Inan et al. 2017: the output layer reuses the input
embedding matrix, which both saves parameters and lowers perplexity. The dropout variants and
weight drop of AWD-LSTM (Merity et al. 2017, "Regularizing and Optimizing LSTM Language Models")
are options (``regularization.*``); layers are separate modules so that each can have its own
locked dropout and dropped recurrent matrix.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from lmexp.options.model import RNNConfig
from lmexp.regularization import DropoutRates, embedding_dropout, sequence_dropout

State = Optional[list]  # per layer: (h, c) for an LSTM, h for a GRU / RNN

_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class RecurrentLM(nn.Module):
    stateful = RNNConfig.stateful

    def __init__(self, config: RNNConfig, vocab_size: int, dropout: DropoutRates | float = 0.0):
        super().__init__()
        self.config = config
        self.dropout = rates = DropoutRates.of(dropout)
        self.embedding = nn.Embedding(vocab_size, config.embedding_size)
        self.input_drop = sequence_dropout(rates.input, rates.locked)
        self.hidden_drop = sequence_dropout(rates.hidden, rates.locked)
        self.output_drop = sequence_dropout(rates.output, rates.locked)
        extra = {"nonlinearity": config.nonlinearity} if config.name == "rnn" else {}
        widths = [config.hidden_size] * config.num_layers
        if config.tie_weights and config.tie_with == "last_layer":
            widths[-1] = config.embedding_size
        inputs = [config.embedding_size] + widths
        self.layers = nn.ModuleList(_CELLS[config.name](inputs[i], widths[i], batch_first=True, **extra)
                                    for i in range(config.num_layers))
        # Tying needs the decoder input to have the embedding's width; project when they differ.
        needs_projection = config.tie_weights and widths[-1] != config.embedding_size
        self.projection = nn.Linear(widths[-1], config.embedding_size) if needs_projection else None
        decoder_in = config.embedding_size if config.tie_weights else widths[-1]
        self.decoder = nn.Linear(decoder_in, vocab_size)
        self._init_weights()
        if config.tie_weights:
            self.decoder.weight = self.embedding.weight
        self.activations: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # for AR/TAR, training only

    def _init_weights(self) -> None:
        if self.config.init_range is not None:  # Zaremba et al.'s code: every parameter, biases too
            for p in self.parameters():
                nn.init.uniform_(p, -self.config.init_range, self.config.init_range)
            return
        # pytorch/examples' word_language_model: uniform(-0.1, 0.1) for both ends, zero output bias.
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def _recur(self, layer: nn.Module, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        if self.training and self.dropout.weight > 0:
            # Weight drop (DropConnect, Wan et al. 2013): one mask on the recurrent matrix for the
            # whole window, so every time step sees the same dropped connections; the fused
            # cuDNN/MKL kernel still runs, on the dropped copy.
            dropped = F.dropout(layer.weight_hh_l0, self.dropout.weight, training=True)
            return functional_call(layer, {"weight_hh_l0": dropped}, (x, state))
        return layer(x, state)

    @property
    def head(self) -> nn.Linear:
        return self.decoder

    def forward(self, idx: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]:
        out, new_state = self.features(idx, state)
        return self.decoder(out), new_state  # (B, T, V)

    def features(self, idx: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]:
        """What the output layer reads (B, T, C), and the new state."""
        x = embedding_dropout(self.embedding, idx, self.dropout.embedding, self.training)  # (B, T, E)
        x = self.input_drop(x)
        new_state = []
        for i, layer in enumerate(self.layers):
            x, layer_state = self._recur(layer, x, None if state is None else state[i])  # (B, T, H)
            new_state.append(layer_state)
            if i < len(self.layers) - 1:
                x = self.hidden_drop(x)
        out = self.output_drop(x)
        self.activations = (x, out) if self.training else None
        if self.projection is not None:
            out = self.projection(out)  # (B, T, E)
        return out, new_state
