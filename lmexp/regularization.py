"""Coupled L1 and L2 penalties (``regularization.l1``, ``regularization.l2``).

Added to the training loss, so their gradients flow through the optimizer like the data's:
``l2 * sum(p ** 2)`` adds ``2 * l2 * p`` to each gradient, ``l1 * sum(|p|)`` adds
``l1 * sign(p)``. This is not ``optimizer.weight_decay``, which AdamW applies to the weights
directly, outside its adaptive step (decoupled).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from lmexp.config import RegularizationConfig
from lmexp.optim import included_parameters


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
