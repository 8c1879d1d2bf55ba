"""Sampling from a trained model: the next id from logits, and a continuation of a prompt.

Recurrent models feed their state forward; attention models with a key/value cache (GPT-2)
run one token per step instead of re-reading the prefix.
"""

from __future__ import annotations

from typing import Optional

import torch

from lmexp.models import block_size


def pick(logits: torch.Tensor, temperature: float, top_k: Optional[int], generator: torch.Generator) -> int:
    """Next id from the last position's logits (V,); temperature 0 is greedy decoding."""
    if temperature == 0:
        return int(logits.argmax())
    # Shifted so that the largest is 0, in float64: a temperature of 1e-40 divided the logits to
    # infinities, and softmax of those is NaN. Ties at the k-th value stay, as in nanoGPT and transformers.
    logits = (logits.double() - logits.max()) / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1).to(generator.device)  # the generator's device: a GPU model's logits too
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.inference_mode()
def sample(model, ids: list[int], max_new_tokens: int, temperature: float = 1.0, top_k: Optional[int] = None,
           generator: Optional[torch.Generator] = None, use_cache: bool = True) -> list[int]:
    """Continue ``ids`` by ``max_new_tokens`` ids; returns only the new ones. The model samples
    in eval mode (no dropout: greedy decoding is deterministic), and is left in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        return _continue(model, ids, max_new_tokens, temperature, top_k, generator, use_cache)
    finally:
        model.train(was_training)


def _continue(model, ids: list[int], max_new_tokens: int, temperature: float, top_k: Optional[int],
              generator: Optional[torch.Generator], use_cache: bool) -> list[int]:
    generator = generator or torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    as_input = lambda xs: torch.tensor([xs], dtype=torch.long, device=device)  # noqa: E731  (1, T)
    window = block_size(model)
    out: list[int] = []
    if window is None:  # recurrent: read the prompt once, then one token per step
        logits, state = model(as_input(ids))
        for _ in range(max_new_tokens):
            out.append(pick(logits[0, -1], temperature, top_k, generator))
            logits, state = model(as_input(out[-1:]), state)
        return out
    context = list(ids)
    cached = use_cache and hasattr(model, "forward_with_cache")
    logits, cache = (model.forward_with_cache(as_input(context[-window:]), None) if cached
                     else model(as_input(context[-window:])))
    for _ in range(max_new_tokens):
        out.append(pick(logits[0, -1], temperature, top_k, generator))
        context.append(out[-1])
        if cached and len(context) <= window:
            logits, cache = model.forward_with_cache(as_input(out[-1:]), cache)
        else:  # past the block size the positions shift, so the window is read again
            logits, _ = model(as_input(context[-window:]))
    return out
