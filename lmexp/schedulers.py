"""Learning-rate schedules (the ``scheduler=`` group).

Each option builds Lightning's ``lr_scheduler`` dict for an optimizer: ``{"scheduler": ...,
"interval": "step" | "epoch"}``, plus ``"monitor"`` for the one that watches validation.
``total_steps`` is the run's number of optimizer steps (Lightning's
``trainer.estimated_stepping_batches``); only the schedules that decay towards the end need it.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Optional

import torch

from lmexp.errors import ConfigError
from lmexp.options.scheduler import ConstantConfig, CosineConfig, LinearConfig, PlateauConfig, StepConfig

MONITOR = "val/ppl"  # what plateau watches: logged at the end of every validation

log = logging.getLogger("lmexp")


def _finite_total(name: str, total_steps: Optional[float]) -> int:
    if total_steps is None or not math.isfinite(total_steps) or total_steps < 1:
        raise ConfigError(f"scheduler={name} decays over the whole run, which has no end: set trainer.max_steps "
                          f"or trainer.max_epochs")
    return int(total_steps)


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up from 0 at step 0 to 1 at ``warmup_steps``."""
    return step / warmup_steps if step < warmup_steps else 1.0


def cosine_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """lr / peak lr: ``step / warmup_steps`` during warm-up, then half a cosine from 1 down to
    ``min_lr_ratio`` at ``total_steps`` (and ``min_lr_ratio`` after it)."""
    if step < warmup_steps:
        return warmup_factor(step, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def linear_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Warm-up as for cosine, then a straight line from 1 down to ``min_lr_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return warmup_factor(step, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 1 - (1 - min_lr_ratio) * progress


def _warn_if_the_warmup_fills_the_run(name: str, warmup_steps: int, total_steps: Optional[float]) -> None:
    """A warm-up as long as the run never reaches the peak rate (nor, where the schedule decays,
    the decay): a preset's warm-up under a budget made smaller, most likely. Told, not refused:
    a run may stop early on purpose."""
    if total_steps is not None and math.isfinite(total_steps) and warmup_steps >= total_steps >= 1:
        total = int(total_steps)
        # A tenth of a run under 10 steps is 0 (a review read "e.g. 0, a tenth of the run" as a slip).
        example = f"{total // 10}, a tenth of the run" if total >= 10 else "0, no warm-up"
        log.warning("scheduler.warmup_steps=%d is not shorter than this run's %d optimizer steps: the rate never "
                    "reaches optimizer.lr%s; set scheduler.warmup_steps below %d (e.g. %s)",
                    warmup_steps, total, "" if name == "constant" else " and never decays", total, example)


def _lambda(optimizer: torch.optim.Optimizer, factor: Callable[[int], float]) -> dict:
    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step"}


def build_constant(optimizer, config: ConstantConfig, total_steps: Optional[float] = None) -> dict:
    _warn_if_the_warmup_fills_the_run("constant", config.warmup_steps, total_steps)
    return _lambda(optimizer, lambda step: warmup_factor(step, config.warmup_steps))


def build_cosine(optimizer, config: CosineConfig, total_steps: Optional[float] = None) -> dict:
    total = _finite_total("cosine", total_steps)
    _warn_if_the_warmup_fills_the_run("cosine", config.warmup_steps, total)
    return _lambda(optimizer, lambda step: cosine_factor(step, config.warmup_steps, total, config.min_lr_ratio))


def build_linear(optimizer, config: LinearConfig, total_steps: Optional[float] = None) -> dict:
    total = _finite_total("linear", total_steps)
    _warn_if_the_warmup_fills_the_run("linear", config.warmup_steps, total)
    return _lambda(optimizer, lambda step: linear_factor(step, config.warmup_steps, total, config.min_lr_ratio))


def step_cuts(epoch: int, step_size: int, first_cut: Optional[int] = None) -> int:
    """How many times the rate has been cut by the start of (0-based) ``epoch``: first after
    ``first_cut`` epochs (``step_size`` when null, as torch's StepLR), then every ``step_size``."""
    first = step_size if first_cut is None else first_cut
    return 0 if epoch < first else (epoch - first) // step_size + 1


def build_step(optimizer, config: StepConfig, total_steps: Optional[float] = None) -> dict:
    if config.first_cut is None:  # torch's own, whose state the checkpoints of earlier versions hold
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda epoch: config.gamma ** step_cuts(epoch, config.step_size, config.first_cut))
    return {"scheduler": scheduler, "interval": "epoch"}


def build_plateau(optimizer, config: PlateauConfig, total_steps: Optional[float] = None) -> dict:
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=config.factor, patience=config.patience, threshold=config.threshold,
        threshold_mode="rel", min_lr=config.min_lr)
    return {"scheduler": scheduler, "interval": "epoch", "monitor": MONITOR}

