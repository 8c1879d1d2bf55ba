"""The ``scheduler=`` options: each schedule's settings, and where its builder is (``lmexp/schedulers.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from lmexp.registry import Registry
from lmexp.schema import Option, check

SCHEDULERS = Registry("scheduler", "scheduler")  # name -> Entry(build(optimizer, config, total_steps), config)


@dataclass
class ConstantConfig(Option):
    name: Optional[str] = "constant"
    warmup_steps: int = 0  # linear warm-up from 0, then the optimizer's lr for the rest of the run

    def validate(self, group: str) -> None:
        check(self.warmup_steps >= 0, f"{group}.warmup_steps", self.warmup_steps, "a non-negative integer")


@dataclass
class DecayConfig(Option):
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # the final lr as a fraction of optimizer.lr

    def validate(self, group: str) -> None:
        check(self.warmup_steps >= 0, f"{group}.warmup_steps", self.warmup_steps, "a non-negative integer")
        check(0.0 <= self.min_lr_ratio <= 1.0, f"{group}.min_lr_ratio", self.min_lr_ratio, "in [0, 1]")


@dataclass
class CosineConfig(DecayConfig):
    name: Optional[str] = "cosine"


@dataclass
class LinearConfig(DecayConfig):
    name: Optional[str] = "linear"


@dataclass
class StepConfig(Option):
    name: Optional[str] = "step"
    step_size: int = 1  # epochs between cuts
    gamma: float = 0.5  # lr *= gamma every step_size epochs
    # Epochs at the full rate before the first cut (Zaremba et al.'s 4 before halving each epoch);
    # null: step_size, as torch's StepLR.
    first_cut: Optional[int] = None

    def validate(self, group: str) -> None:
        check(self.step_size >= 1, f"{group}.step_size", self.step_size, "a positive integer (epochs)")
        check(0.0 < self.gamma <= 1.0, f"{group}.gamma", self.gamma, "in (0, 1]")
        check(self.first_cut is None or self.first_cut >= 0, f"{group}.first_cut", self.first_cut,
              "a non-negative integer (epochs before the first cut), or null for step_size")


@dataclass
class PlateauConfig(Option):
    name: Optional[str] = "plateau"
    factor: float = 0.25  # lr *= factor when val/ppl stops improving: the classic "divide by 4"
    patience: int = 0  # validations without improvement tolerated before cutting
    threshold: float = 0.0  # relative improvement that counts; 0: any improvement
    min_lr: float = 0.0

    def validate(self, group: str) -> None:
        check(0.0 < self.factor < 1.0, f"{group}.factor", self.factor, "in (0, 1)")
        check(self.patience >= 0, f"{group}.patience", self.patience, "a non-negative integer")
        check(self.threshold >= 0, f"{group}.threshold", self.threshold, ">= 0")
        check(self.min_lr >= 0, f"{group}.min_lr", self.min_lr, ">= 0")


SCHEDULERS.declare("constant", ConstantConfig, "lmexp.schedulers:build_constant")
SCHEDULERS.declare("cosine", CosineConfig, "lmexp.schedulers:build_cosine")
SCHEDULERS.declare("linear", LinearConfig, "lmexp.schedulers:build_linear")
SCHEDULERS.declare("step", StepConfig, "lmexp.schedulers:build_step")
SCHEDULERS.declare("plateau", PlateauConfig, "lmexp.schedulers:build_plateau")
