"""Models: the config's ``model.name`` picks a class (``lmexp/options/model.py`` lists them).

Every model takes token ids (B, T) and an optional state and returns logits (B, T, V) and
the new state (None for models without one), and exposes its input table as ``.embedding``.
The models here also split the two steps: ``features(idx, state)`` returns what the output
layer reads (B, T, C) and the new state, and ``head`` is that output layer (an ``nn.Linear``),
which training's fused loss (``trainer.fused_loss``) applies itself.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch.nn as nn

from lmexp.options.model import MODELS
from lmexp.schema import parse


def model_config(node: Any) -> Any:
    """The settings of the ``model=`` option that ``node["name"]`` names, checked."""
    return parse(MODELS.option(node["name"]).config, node, "model")


def build_model(config: Any, vocab_size: int, dropout: Any = 0.0) -> nn.Module:
    """``config``: a model's settings (or a mapping of them); ``dropout``: a
    :class:`lmexp.regularization.DropoutRates`, or one rate for every standard site."""
    if isinstance(config, Mapping):
        config = model_config(config)
    return MODELS.option(config.name).make(config, vocab_size=vocab_size, dropout=dropout)


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(total, without embeddings): the second is the size that scaling laws and fair
    comparisons across vocabularies use (Kaplan et al.'s N): without the token and position
    embeddings, and without the output layer's own parameters, an untied matrix or a bias, which
    are as many as the vocabulary is large. A tied output matrix counts once, in the total."""
    total = sum(p.numel() for p in model.parameters())
    without = model.num_params(non_embedding=True) if hasattr(model, "num_params") else \
        total - model.embedding.weight.numel()
    return total, without - sum(p.numel() for p in model.head.parameters() if p is not model.embedding.weight)


def training_flops(model: nn.Module, tokens: int) -> int:
    """An estimate of the floating-point operations ``tokens`` training tokens cost: 6 per
    parameter without embeddings per token (forward and backward, Kaplan et al. 2020, eq. 2.1), plus
    attention's, 6 x layers x context x width per token. Like Kaplan's C, it leaves out the
    embeddings and the output layer's product with them, so runs are ranked by the compute of
    the part that the architectures differ in. A model without ``attention_shape`` has no
    attention term."""
    _, without_embeddings = parameter_counts(model)
    per_token = 6 * without_embeddings
    attention = getattr(model, "attention_shape", None)  # (layers, width) of a model that attends over its window
    if attention is not None:
        layers, width = attention
        per_token += 6 * layers * model.block_size * width
    return per_token * tokens


def block_size(model: nn.Module) -> Optional[int]:
    """The window length an attention model reads; None for a model that carries state."""
    if getattr(model, "stateful", False):
        return None
    return model.block_size
