"""Optimizers (the ``optimizer=`` group).

Every optimizer splits the parameters with :func:`decay_groups`: its decay (decoupled for
AdamW, L2-in-the-gradient for SGD and Adam) touches neither the kinds named in ``exclude``
(default ``[bias, norm]``; ``embedding`` may be added).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn

from lmexp.registry import Registry
from lmexp.schema import Option, check

OPTIMIZERS = Registry("optimizer", "optimizer")  # name -> Entry(build(model, config), config)

# Parameter kinds that ``exclude`` settings may name; every other parameter is a "weight".
EXCLUDABLE = ("bias", "norm", "embedding")
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase) + (
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def check_exclude(exclude: list[str], setting: str) -> None:
    check(all(kind in EXCLUDABLE for kind in exclude), setting, exclude,
          f"a list of parameter kinds from: {', '.join(EXCLUDABLE)}")


def parameter_kinds(model: nn.Module) -> list[tuple[str, nn.Parameter, str]]:
    """``(name, parameter, kind)`` for each trainable parameter, a tied matrix once.

    kind is ``embedding`` for the weight of an ``nn.Embedding`` (the input table, learned
    positions; an output matrix tied to the input table is that same tensor), ``bias`` for a
    bias (``*.bias``, and the fused ``bias_ih_l0``/``in_proj_bias`` of torch's LSTM and
    attention), ``norm`` for a normalisation layer's gain and any other 1-D parameter, else
    ``weight``.
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    norms = {id(p) for m in model.modules() if isinstance(m, _NORMS) for p in m.parameters(recurse=False)}
    kinds = []
    for name, p in model.named_parameters():  # named_parameters() yields a shared tensor once
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if id(p) in embeddings:
            kind = "embedding"
        elif leaf == "bias" or leaf.startswith("bias_") or leaf.endswith("_bias"):
            kind = "bias"
        elif id(p) in norms or p.dim() < 2:
            kind = "norm"
        else:
            kind = "weight"
        kinds.append((name, p, kind))
    return kinds


def included_parameters(model: nn.Module, exclude: list[str] | tuple[str, ...]) -> list[nn.Parameter]:
    """The trainable parameters whose kind is not in ``exclude``, each tensor once."""
    return [p for _, p, kind in parameter_kinds(model) if kind not in exclude]


def decay_groups(model: nn.Module, weight_decay: float,
                 exclude: list[str] | tuple[str, ...] = ("bias", "norm")) -> list[dict]:
    """Decay matrices (and, unless excluded, embeddings); leave biases and norm gains alone,
    as GPT-2 and nanoGPT do: shrinking a bias or a gain towards zero regularises nothing useful."""
    kinds = parameter_kinds(model)
    groups = [
        {"params": [p for _, p, kind in kinds if kind not in exclude], "weight_decay": weight_decay},
        {"params": [p for _, p, kind in kinds if kind in exclude], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]] or groups[:1]


def _fused(model: nn.Module) -> bool | None:
    return True if next(model.parameters()).is_cuda else None


def _check_betas(betas: list[float], setting: str) -> None:
    check(len(betas) == 2 and all(0 <= b < 1 for b in betas), setting, betas, "two numbers in [0, 1)")


def _default_exclude() -> list[str]:
    return ["bias", "norm"]


@dataclass
class AdamFamilyConfig(Option):
    """What Adam and AdamW share."""

    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    exclude: list[str] = field(default_factory=_default_exclude)  # kinds the decay must not touch

    def validate(self, group: str) -> None:
        check(self.lr > 0, f"{group}.lr", self.lr, "> 0")
        _check_betas(self.betas, f"{group}.betas")
        check(self.eps > 0, f"{group}.eps", self.eps, "> 0")
        check_exclude(self.exclude, f"{group}.exclude")


@dataclass
class AdamWConfig(AdamFamilyConfig):
    name: Optional[str] = "adamw"
    lr: float = 6e-3
    weight_decay: float = 0.01  # decoupled (Loshchilov & Hutter 2019): p -= lr * weight_decay * p

    def validate(self, group: str) -> None:
        super().validate(group)
        check(self.weight_decay >= 0, f"{group}.weight_decay", self.weight_decay, ">= 0")


@OPTIMIZERS.register("adamw", AdamWConfig)
def build_adamw(model: nn.Module, config: AdamWConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(decay_groups(model, config.weight_decay, config.exclude), lr=config.lr,
                             betas=tuple(config.betas), eps=config.eps, fused=_fused(model))


@dataclass
class AdamConfig(AdamFamilyConfig):
    name: Optional[str] = "adam"
    # Coupled L2: torch Adam's weight_decay, added to the gradient (g += l2_in_gradient * p) and so
    # divided by Adam's adaptive denominator like the rest of it. For decoupled decay use optimizer=adamw.
    l2_in_gradient: float = 0.0

    def validate(self, group: str) -> None:
        super().validate(group)
        check(self.l2_in_gradient >= 0, f"{group}.l2_in_gradient", self.l2_in_gradient, ">= 0")


@OPTIMIZERS.register("adam", AdamConfig)
def build_adam(model: nn.Module, config: AdamConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(decay_groups(model, config.l2_in_gradient, config.exclude), lr=config.lr,
                            betas=tuple(config.betas), eps=config.eps, fused=_fused(model))


@dataclass
class SGDConfig(Option):
    name: Optional[str] = "sgd"
    lr: float = 1.0
    momentum: float = 0.0
    nesterov: bool = False
    # torch SGD's: g += weight_decay * p. Without momentum that is exactly p -= lr * weight_decay * p.
    weight_decay: float = 0.0
    exclude: list[str] = field(default_factory=_default_exclude)  # kinds weight_decay must not touch

    def validate(self, group: str) -> None:
        check(self.lr > 0, f"{group}.lr", self.lr, "> 0")
        check(0 <= self.momentum < 1, f"{group}.momentum", self.momentum, "in [0, 1)")
        check(not self.nesterov or self.momentum > 0, f"{group}.nesterov", self.nesterov,
              f"false when {group}.momentum=0 (Nesterov needs momentum)")
        check(self.weight_decay >= 0, f"{group}.weight_decay", self.weight_decay, ">= 0")
        check_exclude(self.exclude, f"{group}.exclude")


@OPTIMIZERS.register("sgd", SGDConfig)
def build_sgd(model: nn.Module, config: SGDConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(decay_groups(model, config.weight_decay, config.exclude), lr=config.lr,
                           momentum=config.momentum, nesterov=config.nesterov, fused=_fused(model))


@dataclass
class ASGDConfig(Option):
    """torch's averaged SGD (Polyak & Juditsky 1992): SGD whose iterates are averaged from step
    ``t0`` on; validation and checkpoints use the average."""

    name: Optional[str] = "asgd"
    averages = True  # not a setting: the run adds the WeightAveraging callback

    lr: float = 1.0
    lambd: float = 1e-4  # the step size decays as lr / (1 + lambd * lr * step) ** alpha
    alpha: float = 0.75
    t0: float = 1e6  # the step from which the average starts
    weight_decay: float = 0.0  # coupled, as torch ASGD's: g += weight_decay * p
    exclude: list[str] = field(default_factory=_default_exclude)

    def validate(self, group: str) -> None:
        check(self.lr > 0, f"{group}.lr", self.lr, "> 0")
        for key in ("lambd", "alpha", "t0", "weight_decay"):
            check(getattr(self, key) >= 0, f"{group}.{key}", getattr(self, key), ">= 0")
        check_exclude(self.exclude, f"{group}.exclude")


@OPTIMIZERS.register("asgd", ASGDConfig)
def build_asgd(model: nn.Module, config: ASGDConfig) -> torch.optim.Optimizer:
    return torch.optim.ASGD(decay_groups(model, config.weight_decay, config.exclude), lr=config.lr,
                            lambd=config.lambd, alpha=config.alpha, t0=config.t0)


@dataclass
class NTASGDConfig(Option):
    name: Optional[str] = "ntasgd"
    averages = True  # not a setting: the run adds the WeightAveraging callback

    lr: float = 30.0  # AWD-LSTM's, with trainer.gradient_clip_val=0.25
    nonmono: int = 5  # switch when validation is worse than the best of all but the last nonmono
    weight_decay: float = 1.2e-6  # coupled, as in AWD-LSTM: g += weight_decay * p
    exclude: list[str] = field(default_factory=list)  # AWD-LSTM decays every parameter

    def validate(self, group: str) -> None:
        check(self.lr > 0, f"{group}.lr", self.lr, "> 0")
        check(self.nonmono >= 1, f"{group}.nonmono", self.nonmono, "a positive integer")
        check(self.weight_decay >= 0, f"{group}.weight_decay", self.weight_decay, ">= 0")
        check_exclude(self.exclude, f"{group}.exclude")


class NTASGD(torch.optim.ASGD):
    """Non-monotonically triggered ASGD (Merity et al. 2017, section 3): plain SGD until the
    validation loss has not improved on the best of all but the last ``nonmono`` validations,
    then averaged SGD from that step on. torch's ASGD with ``lambd=0`` is SGD with an average
    that starts at ``t0``, so the switch is setting ``t0`` to the current step."""

    def __init__(self, params, lr: float, nonmono: int):
        super().__init__(params, lr=lr, lambd=0.0, t0=math.inf)
        self.nonmono = nonmono
        self.val_losses: list[float] = []

    @property
    def switched(self) -> bool:
        return math.isfinite(self.param_groups[0]["t0"])

    def observe(self, val_loss: float) -> bool:
        """Record one validation; return True when this one triggers the switch."""
        history, self.val_losses = self.val_losses, self.val_losses + [val_loss]
        if self.switched or len(history) <= self.nonmono or val_loss <= min(history[:-self.nonmono]):
            return False
        step = max((float(s["step"]) for s in self.state.values() if "step" in s), default=0.0)
        for group in self.param_groups:
            group["t0"] = step
        return True

    def state_dict(self) -> dict:
        return {**super().state_dict(), "val_losses": list(self.val_losses)}

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        self.val_losses = list(state_dict.pop("val_losses", []))
        super().load_state_dict(state_dict)


@OPTIMIZERS.register("ntasgd", NTASGDConfig)
def build_ntasgd(model: nn.Module, config: NTASGDConfig) -> torch.optim.Optimizer:
    return NTASGD(decay_groups(model, config.weight_decay, config.exclude), lr=config.lr, nonmono=config.nonmono)


def averaged_parameters(optimizer: torch.optim.Optimizer) -> dict[nn.Parameter, torch.Tensor]:
    """Each parameter's running average, for an averaging optimizer whose average has begun;
    empty otherwise (before ``t0``, torch's ASGD keeps ``ax`` equal to the parameter anyway)."""
    if not isinstance(optimizer, torch.optim.ASGD):
        return {}
    averages = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if "ax" in state and float(state["step"]) > group["t0"]:
                averages[p] = state["ax"]
    return averages


def swap_in_averages(averages: dict[nn.Parameter, torch.Tensor]) -> None:
    """Exchange each parameter's values with its average; a second call undoes the first."""
    with torch.no_grad():
        for p, ax in averages.items():
            current = p.detach().clone()
            p.copy_(ax)
            ax.copy_(current)

