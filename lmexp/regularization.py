"""Regularization: dropout variants, the AWD-LSTM activation penalties, coupled L1 and L2.

Dropout sites (``regularization.*_dropout``) are resolved once into :class:`DropoutRates`, which
every model takes and applies where its architecture has the site.

Penalties are added to the training loss, so their gradients flow through the optimizer like
the data's: ``l2 * sum(p ** 2)`` adds ``2 * l2 * p`` to each gradient, ``l1 * sum(|p|)`` adds
``l1 * sign(p)``. This is not ``optimizer.weight_decay``, which AdamW applies to the weights
directly, outside its adaptive step (decoupled).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from lmexp.optim import included_parameters
from lmexp.options.regularization import RegularizationConfig


@dataclass(frozen=True)
class DropoutRates:
    embedding: float = 0.0  # whole words (rows of the input table)
    input: float = 0.0  # the embedded input
    hidden: float = 0.0  # between recurrent layers
    output: float = 0.0  # the last recurrent layer's output
    attention: float = 0.0  # attention weights
    residual: float = 0.0  # residual branches and the feed-forward's hidden layer
    weight: float = 0.0  # DropConnect on recurrent hidden-to-hidden weights
    locked: bool = False  # one mask per sequence (recurrent models)

    @classmethod
    def of(cls, dropout: "DropoutRates | float") -> "DropoutRates":
        """A plain float is the classic single rate at every standard site."""
        if isinstance(dropout, DropoutRates):
            return dropout
        p = float(dropout)
        return cls(input=p, hidden=p, output=p, attention=p, residual=p)


def dropout_rates(config: RegularizationConfig) -> DropoutRates:
    """Each site's rate: its own setting, or ``regularization.dropout`` where that is null."""
    def rate(value):
        return config.dropout if value is None else value

    return DropoutRates(embedding=config.embed_dropout, input=rate(config.input_dropout),
                        hidden=rate(config.hidden_dropout), output=rate(config.output_dropout),
                        attention=rate(config.attention_dropout), residual=rate(config.residual_dropout),
                        weight=config.weight_drop, locked=config.locked_dropout)


class LockedDropout(nn.Module):
    """Variational dropout (Gal & Ghahramani 2016): one mask per sequence, shared by all time
    steps, so a recurrent layer sees the same units missing throughout the window instead of
    noise that changes every step."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        if not self.training or self.p == 0:
            return x
        mask = x.new_empty(x.size(0), 1, x.size(2)).bernoulli_(1 - self.p).div_(1 - self.p)  # (B, 1, C)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


def sequence_dropout(p: float, locked: bool) -> nn.Module:
    return LockedDropout(p) if locked else nn.Dropout(p)


def embedding_dropout(embedding: nn.Embedding, idx: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Embedding lookup that drops whole words (Gal & Ghahramani 2016; AWD-LSTM's ``dropoute``):
    every occurrence of a dropped word in the batch is zero and kept words are scaled by 1/(1-p).
    Masking the looked-up rows, not the whole table, gives the same result for B*T rows of work
    instead of V."""
    x = embedding(idx)  # (B, T, C)
    if not training or p == 0:
        return x
    keep = x.new_empty(embedding.num_embeddings).bernoulli_(1 - p).div_(1 - p)  # (V,)
    return x * keep[idx].unsqueeze(-1)


def penalties(model: nn.Module, config: RegularizationConfig) -> dict[str, torch.Tensor]:
    """The non-zero penalty terms, ``{"l1": ..., "l2": ...}``, over the parameters whose kind is
    not in ``config.exclude``; a tied matrix counts once. Empty when both are zero."""
    if not (config.l1 or config.l2):
        return {}
    params = included_parameters(model, config.exclude)
    terms = {}
    if not params:  # everything excluded: nothing to penalise
        return terms
    if config.l1:
        terms["l1"] = config.l1 * torch.stack([p.abs().sum(dtype=torch.float32) for p in params]).sum()
    if config.l2:
        terms["l2"] = config.l2 * torch.stack([p.pow(2).sum(dtype=torch.float32) for p in params]).sum()
    return terms


def activation_penalties(model: nn.Module, config: RegularizationConfig) -> dict[str, torch.Tensor]:
    """AWD-LSTM's activation regularization (Merity et al. 2017, section 4.6) on the last
    recurrent layer's output of the latest training forward: ``ar`` penalises large activations
    (of the dropped output, as in the paper), ``tar`` large changes between consecutive time
    steps (of the raw output, so that dropout noise is not penalised as change)."""
    raw, dropped = model.activations  # (B, T, H) each
    terms = {}
    if config.ar:
        terms["ar"] = config.ar * dropped.float().pow(2).mean()
    if config.tar:
        terms["tar"] = config.tar * (raw[:, 1:] - raw[:, :-1]).float().pow(2).mean()
    return terms
