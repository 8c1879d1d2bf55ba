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


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose mask costs a quarter of the random numbers on a CPU. torch's CPU
    dropout draws a 32-bit number from its Mersenne Twister for every element: 1.5 ms forward
    and backward for a 20 x 35 x 200 batch here, three of them a twentieth of a word_lm_example
    step. This one draws 64 random bits for every 4 elements and keeps an element whose 16 bits
    reach a threshold: 0.6 ms. The rate is p rounded to a multiple of 1/65,536 (0.2 becomes
    0.199997) and kept elements are scaled by 1 / (1 - that rate), so that each element keeps
    its expectation; the masks are not torch's for the same seed. On a GPU (whose dropout is one
    fused kernel) and outside training it is ``nn.Dropout``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not 0 < self.p < 1 or x.device.type != "cpu" or self.inplace:
            return super().forward(x)
        threshold = round(self.p * 65536)
        if threshold in (0, 65536):  # p within 1/131,072 of 0 or 1: torch's own, which has no rounding
            return super().forward(x)
        bits = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_(-2**63, 2**63 - 1)
        keep = bits.view(torch.int16)[:x.numel()].view(x.shape) >= threshold - 32768
        return _Masked.apply(x, keep, 65536 / (65536 - threshold))


class _Masked(torch.autograd.Function):
    """``x * keep * scale`` saving the boolean mask, as torch's dropout does, not a float copy."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x.mul(keep).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None, None


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
    return LockedDropout(p) if locked else Dropout(p)


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
