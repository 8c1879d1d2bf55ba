"""Optimizers (the ``optimizer=`` group).

Every optimizer splits the parameters with :func:`decay_groups`: its decay (decoupled for
AdamW, L2-in-the-gradient for SGD and Adam) touches neither the kinds named in ``exclude``
(default ``[bias, norm]``; ``embedding`` may be added).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Optional

import torch
import torch.nn as nn

from lmexp.errors import ConfigError
from lmexp.options.optimizer import AdamConfig, AdamWConfig, ASGDConfig, NTASGDConfig, SGDConfig

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase) + (
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


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


def _fused(model: nn.Module, setting: bool | None) -> bool | None:
    """``optimizer.fused``: null uses torch's fused kernel wherever torch has one for the
    parameters' device (CPU and CUDA both, for Adam, AdamW and SGD), which torch itself does
    not choose on a CPU: one kernel over all parameters, not one small update per tensor.
    False is torch's own choice (a loop over the tensors on a CPU)."""
    if setting is None:
        return True if next(model.parameters()).device.type in _fused_devices() else None
    return setting or None


def clippable(config: Any, precision: str, clip: Optional[float]) -> Any:
    """``config`` with ``fused`` decided for a run that clips its gradients under mixed precision
    (bf16-mixed, 16-mixed: trainer=gpu's): Lightning refuses to clip the gradients of an optimizer
    that unscales them inside its step, as torch's fused kernels do, so null takes torch's loop
    there and true is refused in one line."""
    if not clip or not str(precision).endswith("-mixed") or getattr(config, "fused", False) is False:
        return config
    if config.fused:
        raise ConfigError(f"optimizer.fused=true: Lightning does not clip the gradients of a fused optimizer under "
                          f"trainer.precision={precision}; use optimizer.fused=null, or trainer.gradient_clip_val=null")
    return replace(config, fused=False)


def _fused_devices() -> list[str]:
    try:  # torch's own list (private, so a release may drop it)
        from torch.optim.optimizer import _get_fused_kernels_supported_devices
    except ImportError:
        return ["cuda"]  # the devices torch's fused optimizers had before it listed others
    return _get_fused_kernels_supported_devices()


def build_adamw(model: nn.Module, config: AdamWConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(decay_groups(model, config.weight_decay, config.exclude), lr=config.lr,
                             betas=tuple(config.betas), eps=config.eps, fused=_fused(model, config.fused))


def build_adam(model: nn.Module, config: AdamConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(decay_groups(model, config.l2_in_gradient, config.exclude), lr=config.lr,
                            betas=tuple(config.betas), eps=config.eps, fused=_fused(model, config.fused))


def build_sgd(model: nn.Module, config: SGDConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(decay_groups(model, config.weight_decay, config.exclude), lr=config.lr,
                           momentum=config.momentum, nesterov=config.nesterov, fused=_fused(model, config.fused))


def build_asgd(model: nn.Module, config: ASGDConfig) -> torch.optim.Optimizer:
    return torch.optim.ASGD(decay_groups(model, config.weight_decay, config.exclude), lr=config.lr,
                            lambd=config.lambd, alpha=config.alpha, t0=config.t0)


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

