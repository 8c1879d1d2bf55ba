"""Causal Transformer language model: token + position embedding -> masked self-attention stack -> softmax.

The decoder-only use of the encoder stack of Vaswani et al. 2017 ("Attention Is All You Need"):
PyTorch's own nn.TransformerEncoderLayer with a causal mask, so position t attends only to
positions <= t. ``norm_first=True`` is the pre-LN arrangement of Xiong et al. 2020 ("On Layer
Normalization in the Transformer Architecture"; also GPT-2), which trains without a learning-rate
warm-up; ``norm_first=False`` is the original post-LN. The output layer reuses the input embedding
(Press & Wolf 2017), as in the recurrent models.

The model keeps no state between windows: each window of ``block_size`` tokens or fewer is
read from scratch, so ``stateful = False``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from lmexp.options.model import TransformerConfig
from lmexp.regularization import Dropout, DropoutRates, embedding_dropout


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    """Vaswani et al. 2017, section 3.5: PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...)."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)  # (L, 1)
    inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model)
    pe[:, 0::2] = torch.sin(position * inv_freq)
    pe[:, 1::2] = torch.cos(position * inv_freq[: d_model // 2])  # an odd d_model has one sine more
    return pe  # (L, C)


class TransformerLM(nn.Module):
    stateful = TransformerConfig.stateful

    def __init__(self, config: TransformerConfig, vocab_size: int, dropout: DropoutRates | float = 0.0):
        super().__init__()
        self.config = config
        self.dropout = rates = DropoutRates.of(dropout)
        self.block_size = config.block_size  # the data module cuts windows of this length
        self.attention_shape = (config.n_layer, config.d_model)  # for training_flops' attention term
        self.embedding = nn.Embedding(vocab_size, config.d_model)
        if config.positions == "learned":
            self.position_embedding = nn.Embedding(config.block_size, config.d_model)
        else:
            self.position_embedding = None
            # A buffer, not a parameter: fixed, moves with .to(device); not persistent because
            # it is a function of the config, so checkpoints hold only what was learned.
            self.register_buffer("positions", sinusoidal_positions(config.block_size, config.d_model),
                                 persistent=False)
        self.drop = Dropout(rates.input)
        layer = nn.TransformerEncoderLayer(
            config.d_model,
            config.n_head,
            dim_feedforward=config.d_ff,
            dropout=rates.residual,  # the feed-forward's hidden layer and both residual branches
            activation=config.activation,
            batch_first=True,
            norm_first=config.norm_first,
        )
        layer.self_attn.dropout = rates.attention  # the layer has one rate for all; attention's is separate here
        for name in ("dropout", "dropout1", "dropout2"):  # lmexp's dropout: the same rate, cheaper masks on a CPU
            setattr(layer, name, Dropout(rates.residual))
        # Pre-LN leaves the residual stream unnormalised after the last layer, so it needs one
        # LayerNorm before the output layer; post-LN layers already end with one.
        final_norm = nn.LayerNorm(config.d_model) if config.norm_first else None
        # Nested tensors only speed up padded batches, and there is no padding here; leaving them
        # on warns for norm_first=True.
        self.encoder = nn.TransformerEncoder(layer, config.n_layer, norm=final_norm, enable_nested_tensor=False)
        self.decoder = nn.Linear(config.d_model, vocab_size)
        self._init_weights()
        if config.tie_weights:
            self.decoder.weight = self.embedding.weight

    def _init_weights(self) -> None:
        # Rows of std d_model^-1/2 (as in tensor2tensor, which Vaswani et al. used) give logits of
        # about unit scale from the unit-variance final LayerNorm output when the matrix is the
        # tied output layer; forward() multiplies them back by sqrt(d_model) at the input.
        nn.init.normal_(self.embedding.weight, mean=0.0, std=self.config.d_model ** -0.5)
        if self.position_embedding is not None:
            # Small (GPT-2's 0.02), so that at first the input is mostly the token; attention over a
            # causal prefix already carries some order, and the table grows where position matters.
            nn.init.normal_(self.position_embedding.weight, mean=0.0, std=0.02)
        if not self.config.tie_weights:
            nn.init.normal_(self.decoder.weight, mean=0.0, std=self.config.d_model ** -0.5)
        nn.init.zeros_(self.decoder.bias)

    @property
    def head(self) -> nn.Linear:
        return self.decoder

    def forward(self, idx: torch.Tensor, state: None = None) -> tuple[torch.Tensor, None]:
        return self.decoder(self.features(idx)[0]), None  # (B, T, V)

    def features(self, idx: torch.Tensor, state: None = None) -> tuple[torch.Tensor, None]:
        """What the output layer reads (B, T, C); no state."""
        B, T = idx.shape
        if T > self.block_size:
            # Learned positions have no row past block_size; sinusoidal ones would extrapolate to
            # lengths never trained on. One rule for both keeps the two kinds comparable.
            raise ValueError(f"a window of {T} tokens is longer than model.block_size={self.block_size}")
        # Scaled by sqrt(d_model) (Vaswani et al., section 3.4) so that token embeddings have about
        # unit variance, the scale of the sinusoids, rather than being drowned by them.
        x = embedding_dropout(self.embedding, idx, self.dropout.embedding, self.training)
        x = x * math.sqrt(self.config.d_model)  # (B, T, C)
        if self.position_embedding is not None:
            x = x + self.position_embedding(torch.arange(T, device=idx.device))  # (B, T, C)
        else:
            x = x + self.positions[:T].to(x.dtype)  # (B, T, C)
        x = self.drop(x)  # on the sum of embeddings and positions, as in Vaswani et al. 5.4
        # -inf above the diagonal: position t attends to positions <= t only. is_causal lets the
        # attention kernel skip the masked half; the mask itself is still required.
        mask = nn.Transformer.generate_square_subsequent_mask(T, device=idx.device, dtype=x.dtype)  # (T, T)
        return self.encoder(x, mask=mask, is_causal=True), None  # (B, T, C)

    def num_params(self, non_embedding: bool = False) -> int:
        # parameters() yields a tied matrix once, so the output layer is not counted twice.
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.embedding.weight.numel()
            if self.position_embedding is not None:
                n -= self.position_embedding.weight.numel()
        return n
