"""Optimizers (the ``optimizer=`` group)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from lmexp.config import check
from lmexp.errors import ConfigError


@dataclass
class AdamWConfig:
    lr: float = 6e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.01  # decoupled (Loshchilov & Hutter 2019); not on biases and norms

    def validate(self, group: str) -> None:
        check(self.lr > 0, f"{group}.lr", self.lr, "> 0")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"{group}.betas", self.betas,
              "two numbers in [0, 1)")
        check(self.eps > 0, f"{group}.eps", self.eps, "> 0")
        check(self.weight_decay >= 0, f"{group}.weight_decay", self.weight_decay, ">= 0")


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (and embeddings); leave vectors (biases, norm gains) alone, as GPT-2 and
    nanoGPT do: shrinking a bias or a gain towards zero regularises nothing useful."""
    params = [p for p in model.parameters() if p.requires_grad]  # tied weights appear once
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def build_adamw(model: nn.Module, config: AdamWConfig) -> torch.optim.Optimizer:
    on_gpu = next(model.parameters()).is_cuda
    return torch.optim.AdamW(decay_groups(model, config.weight_decay), lr=config.lr, betas=tuple(config.betas),
                             eps=config.eps, fused=True if on_gpu else None)


OPTIMIZERS = {"adamw": (build_adamw, AdamWConfig)}


def optimizer_spec(name: str):
    if name not in OPTIMIZERS:
        raise ConfigError(f"optimizer={name} is not a known optimizer; choose one of: {', '.join(sorted(OPTIMIZERS))}")
    return OPTIMIZERS[name]
