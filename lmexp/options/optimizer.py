"""The ``optimizer=`` options: each optimizer's settings, and where its builder is (``lmexp/optim.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from lmexp.registry import Registry
from lmexp.schema import Option, check

OPTIMIZERS = Registry("optimizer", "optimizer")  # name -> Entry(build(model, config), config)


# Parameter kinds that ``exclude`` settings may name; every other parameter is a "weight".
EXCLUDABLE = ("bias", "norm", "embedding")


def check_exclude(exclude: list[str], setting: str) -> None:
    check(all(kind in EXCLUDABLE for kind in exclude), setting, exclude,
          f"a list of parameter kinds from: {', '.join(EXCLUDABLE)}")


def _check_betas(betas: list[float], setting: str) -> None:
    check(len(betas) == 2 and all(0 <= b < 1 for b in betas), setting, betas, "two numbers in [0, 1)")


def _default_exclude() -> list[str]:
    return ["bias", "norm"]


@dataclass
class AdamFamilyConfig(Option):
    """What Adam and AdamW share."""

    state_copies = 2  # not a setting: copies of the parameters the optimizer keeps (the two moments)

    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    exclude: list[str] = field(default_factory=_default_exclude)  # kinds the decay must not touch
    fused: Optional[bool] = None  # null: torch's fused kernel wherever it has one (CPU too); false: its loop

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


@dataclass
class GPT2AdamWConfig(AdamWConfig):
    """AdamW as nanoGPT trains GPT-2 (after GPT-3's paper): what ``model=gpt2`` brings."""

    name: Optional[str] = "adamw_gpt2"
    lr: float = 6e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.1  # on matrices only: biases and norms are in exclude


@dataclass
class AdamConfig(AdamFamilyConfig):
    name: Optional[str] = "adam"
    # Coupled L2: torch Adam's weight_decay, added to the gradient (g += l2_in_gradient * p) and so
    # divided by Adam's adaptive denominator like the rest of it. For decoupled decay use optimizer=adamw.
    l2_in_gradient: float = 0.0

    def validate(self, group: str) -> None:
        super().validate(group)
        check(self.l2_in_gradient >= 0, f"{group}.l2_in_gradient", self.l2_in_gradient, ">= 0")


@dataclass
class SGDConfig(Option):
    name: Optional[str] = "sgd"
    lr: float = 1.0
    momentum: float = 0.0
    nesterov: bool = False
    # torch SGD's: g += weight_decay * p. Without momentum that is exactly p -= lr * weight_decay * p.
    weight_decay: float = 0.0
    exclude: list[str] = field(default_factory=_default_exclude)  # kinds weight_decay must not touch
    fused: Optional[bool] = None  # null: torch's fused kernel wherever it has one (CPU too); false: its loop

    def validate(self, group: str) -> None:
        check(self.lr > 0, f"{group}.lr", self.lr, "> 0")
        check(0 <= self.momentum < 1, f"{group}.momentum", self.momentum, "in [0, 1)")
        check(not self.nesterov or self.momentum > 0, f"{group}.nesterov", self.nesterov,
              f"false when {group}.momentum=0 (Nesterov needs momentum)")
        check(self.weight_decay >= 0, f"{group}.weight_decay", self.weight_decay, ">= 0")
        check_exclude(self.exclude, f"{group}.exclude")

    @property
    def state_copies(self) -> int:  # the momentum buffer
        return 1 if self.momentum > 0 else 0


@dataclass
class ASGDConfig(Option):
    """torch's averaged SGD (Polyak & Juditsky 1992): SGD whose iterates are averaged from step
    ``t0`` on; validation and checkpoints use the average."""

    name: Optional[str] = "asgd"
    averages = True  # not a setting: the run adds the WeightAveraging callback
    state_copies = 1  # the average (torch ASGD's ax)

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


@dataclass
class NTASGDConfig(Option):
    name: Optional[str] = "ntasgd"
    averages = True  # not a setting: the run adds the WeightAveraging callback
    state_copies = 1  # the average (ASGD's ax, once NT-ASGD switches)

    lr: float = 30.0  # AWD-LSTM's, with trainer.gradient_clip_val=0.25
    nonmono: int = 5  # switch when validation is worse than the best of all but the last nonmono
    weight_decay: float = 1.2e-6  # coupled, as in AWD-LSTM: g += weight_decay * p
    exclude: list[str] = field(default_factory=list)  # AWD-LSTM decays every parameter

    def validate(self, group: str) -> None:
        check(self.lr > 0, f"{group}.lr", self.lr, "> 0")
        check(self.nonmono >= 1, f"{group}.nonmono", self.nonmono, "a positive integer")
        check(self.weight_decay >= 0, f"{group}.weight_decay", self.weight_decay, ">= 0")
        check_exclude(self.exclude, f"{group}.exclude")


OPTIMIZERS.declare("adamw", AdamWConfig, "lmexp.optim:build_adamw")
OPTIMIZERS.declare("adamw_gpt2", GPT2AdamWConfig, "lmexp.optim:build_adamw")
OPTIMIZERS.declare("adam", AdamConfig, "lmexp.optim:build_adam")
OPTIMIZERS.declare("sgd", SGDConfig, "lmexp.optim:build_sgd")
OPTIMIZERS.declare("asgd", ASGDConfig, "lmexp.optim:build_asgd")
OPTIMIZERS.declare("ntasgd", NTASGDConfig, "lmexp.optim:build_ntasgd")
