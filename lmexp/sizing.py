"""A model's parameters counted from its settings, and a model sized to a parameter count
(``model.target_params`` and ``model.target_params_without_embeddings``).

Architectures compare fairly at equal size (Kaplan et al. 2020 count parameters without
embeddings; the total is what memory and a checkpoint cost). Each architecture has one width
knob; its depth, and the ratios of its other widths to that one, stay as configured. The count
grows with the width, so the width is found by bisection, over candidates built on the meta
device: shapes without storage, so that a 65,536-wide candidate costs what a 16-wide one does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

import torch

from lmexp.errors import ConfigError
from lmexp.models import build_model, parameter_counts
from lmexp.options.model import TARGETS, GPT2Config, RNNConfig, TransformerConfig

log = logging.getLogger("lmexp")

WIDEST = 2**16  # the widest candidate: bounds the search
TOLERANCE = 0.05  # how far, relative to the target, the chosen count may be
WHAT = {"target_params": "parameter count", "target_params_without_embeddings": "parameter count without embeddings"}


@dataclass(frozen=True)
class Knob:
    setting: str  # the width's setting, e.g. hidden_size
    step: int  # widths are multiples of it: attention heads must divide the width
    at: Callable[[int], Any]  # width -> the model's settings at that width


def scaled(width: int, numerator: int, denominator: int) -> int:
    """``width`` times the ratio the config had, e.g. embedding_size / hidden_size."""
    return max(1, round(width * numerator / denominator))


def knob_of(config: Any) -> Knob:
    if isinstance(config, RNNConfig):
        # Equal sizes stay equal, so a tied model without the projection layer stays without it.
        return Knob("hidden_size", 1, lambda w: replace(
            config, hidden_size=w, embedding_size=scaled(w, config.embedding_size, config.hidden_size)))
    if isinstance(config, TransformerConfig):
        return Knob("d_model", config.n_head, lambda w: replace(
            config, d_model=w, d_ff=scaled(w, config.d_ff, config.d_model)))
    if isinstance(config, GPT2Config):
        # Written out, so that the fitted model no longer depends on model.size's table.
        n_layer, n_head, _, block_size = config.resolved()
        return Knob("n_embd", n_head, lambda w: replace(
            config, n_layer=n_layer, n_head=n_head, n_embd=w, block_size=block_size))
    raise ConfigError(f"model.target_params: model={config.name} has no width to fit; unset it for this model")


def shape_of(config: Any) -> Optional[dict[str, int]]:
    """The settings that decide a model's size, its number of layers first, with their values
    (GPT-2's named size's where unset); None for a kind of model added since (README: Adding an
    option), whose settings lmexp cannot read."""
    if isinstance(config, RNNConfig):
        return {"num_layers": config.num_layers, "hidden_size": config.hidden_size,
                "embedding_size": config.embedding_size}
    if isinstance(config, TransformerConfig):
        return {"n_layer": config.n_layer, "d_model": config.d_model, "d_ff": config.d_ff}
    if isinstance(config, GPT2Config):
        n_layer, _, n_embd, _ = config.resolved()
        return {"n_layer": n_layer, "n_embd": n_embd}
    return None


def depth_of(config: Any) -> tuple[str, int]:
    """The setting of a model's number of layers, and its value."""
    return next(iter(shape_of(config).items()))


def counted_at_depth(config: Any, vocab_size: int) -> Callable[[int], int]:
    """depth -> the total parameters of this model with that many layers, counted without building
    it: candidates are built on the meta device (as the fitting's are) at depths 2 and 3 and the
    count extended by their difference. Every layer past the first and before the last is alike (a
    recurrent model's first reads the embedding's width and, tied with ``last_layer``, its last
    writes it), so from two layers on each adds the same; a million-layer model costs two small
    ones. Fewer than four layers are built as they are."""
    setting, _ = depth_of(config)
    built: dict[int, int] = {}

    def at(depth: int) -> int:
        if depth not in built:
            with torch.device("meta"):
                built[depth] = parameter_counts(build_model(replace(config, **{setting: depth}), vocab_size))[0]
        return built[depth]

    return lambda depth: at(depth) if depth <= 3 else at(2) + (depth - 2) * (at(3) - at(2))


def fit_to_target(config: Any, vocab_size: int) -> tuple[Any, Optional[dict]]:
    """``config`` (a model's settings) with the width whose parameter count is nearest the target,
    written out, and the target cleared: a checkpoint's config then rebuilds the same model without
    solving again. Also what was chosen, e.g. ``{"target_params": 1000000, "hidden_size": 412,
    "params": 1002345, "params_without_embeddings": 123456}``; ``(config, None)`` with no target set."""
    # A model whose settings have no targets (one added without them) is never fitted.
    setting = next((key for key in TARGETS if getattr(config, key, None) is not None), None)
    if setting is None:
        return config, None
    target, which = getattr(config, setting), TARGETS.index(setting)  # parameter_counts' order
    knob = knob_of(config)
    counted: dict[int, tuple[int, int]] = {}

    def counts(k: int) -> tuple[int, int]:  # k: the width in steps
        if k not in counted:
            with torch.device("meta"):
                counted[k] = parameter_counts(build_model(knob.at(k * knob.step), vocab_size))
        return counted[k]

    widest = WIDEST // knob.step
    low, high = 1, widest  # the narrowest width whose count reaches the target, or the widest
    while low < high:
        middle = (low + high) // 2
        if counts(middle)[which] >= target:
            high = middle
        else:
            low = middle + 1
    nearest = min((max(low - 1, 1), low), key=lambda k: abs(counts(k)[which] - target))
    if abs(counts(nearest)[which] - target) > TOLERANCE * target:
        raise ConfigError(_unreachable(config, setting, target, knob, lambda k: counts(k)[which], low, widest))
    fitted = replace(knob.at(nearest * knob.step), **{key: None for key in TARGETS})
    params, without = counts(nearest)
    chosen = {setting: target, knob.setting: nearest * knob.step, "params": params,
              "params_without_embeddings": without}
    log.info("model.%s=%d: %s=%d gives %s parameters (%s without embeddings), %+.1f%%", setting, target,
             knob.setting, nearest * knob.step, f"{params:,}", f"{without:,}",
             100 * (counts(nearest)[which] - target) / target)
    return fitted, chosen


def _unreachable(config: Any, setting: str, target: int, knob: Knob, count: Callable[[int], int], low: int,
                 widest: int) -> str:
    head = (f"model.{setting}={target}: no {knob.setting} of this {config.name} gives a {WHAT[setting]} within "
            f"{TOLERANCE:.0%} of it")
    width = knob.setting

    def at(k: int) -> str:
        return f"{count(k):,} at {width}={k * knob.step}"

    if target < count(1) or target > count(widest):
        return f"{head}: its counts run from {at(1)} to {at(widest)}; choose a target in that range"
    finer = (f", or fewer heads than model.n_head={knob.step} for finer steps of {width}" if knob.step > 1 else "")
    return f"{head}: the nearest are {at(low - 1)} and {at(low)}; choose a target near one of them{finer}"
