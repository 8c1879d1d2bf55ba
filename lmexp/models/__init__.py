"""Model registry: the config's ``model.name`` picks a class; adding a model is one file + one YAML.

Every model takes token ids (B, T) and an optional state and returns logits (B, T, V) and
the new state (None for models without one), and exposes its input table as ``.embedding``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch.nn as nn

from lmexp.config import parse, to_dict
from lmexp.registry import Registry


@dataclass
class ModelSpec:
    cls: type[nn.Module]
    config_cls: type
    fixed: dict[str, Any] = field(default_factory=dict)  # settings the name implies, e.g. cell="lstm"


MODELS = Registry("model", "model")  # name -> ModelSpec


model_spec = MODELS.option


def register(name: str, config_cls: type, **fixed: Any):
    def add(cls: type[nn.Module]) -> type[nn.Module]:
        MODELS[name] = ModelSpec(cls, config_cls, fixed)
        return cls

    return add


def parse_model_config(node: Any) -> Any:
    spec = model_spec(node["name"])
    return parse(spec.config_cls, {**to_dict(node), **spec.fixed}, "model")


def build_model(node: Any, vocab_size: int, dropout: Any = 0.0) -> nn.Module:
    """``dropout``: a :class:`lmexp.regularization.DropoutRates`, or one rate for every standard site."""
    spec = model_spec(node["name"])
    return spec.cls(parse_model_config(node), vocab_size=vocab_size, dropout=dropout)


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(total, without embeddings): the second is the size that scaling laws and fair
    comparisons across vocabularies use. A tied output matrix counts once."""
    total = sum(p.numel() for p in model.parameters())
    if hasattr(model, "num_params"):
        return total, model.num_params(non_embedding=True)
    return total, total - model.embedding.weight.numel()


def block_size(model: nn.Module) -> Optional[int]:
    """The window length an attention model reads; None for a model that carries state."""
    if getattr(model, "stateful", False):
        return None
    return model.block_size


# Importing the architecture modules fills the registry.
from lmexp.models import gpt2, rnn, transformer  # noqa: E402,F401
