"""``python -m lmexp.generate ckpt=PATH prompt="The meaning of" max_new_tokens=50 temperature=0.8 top_k=40 seed=1``

Samples text from a checkpoint. Recurrent models feed their state forward; attention models
with a key/value cache (GPT-2) run one token per step instead of re-reading the prefix.
"""

from __future__ import annotations

import sys
from typing import Optional

import torch

from lmexp.cli import parse_command_line
from lmexp.data.tokenizers import Vocab
from lmexp.errors import reported_as_one_line
from lmexp.models import block_size
from lmexp.run import Run
from lmexp.schema import check

OPTIONS = {"ckpt": ..., "prompt": "", "max_new_tokens": 50, "temperature": 1.0, "top_k": None, "seed": None,
           "cache": True}


def pick(logits: torch.Tensor, temperature: float, top_k: Optional[int], generator: torch.Generator) -> int:
    """Next id from the last position's logits (V,); temperature 0 is greedy decoding."""
    if temperature == 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator))


@torch.inference_mode()
def sample(model, ids: list[int], max_new_tokens: int, temperature: float = 1.0, top_k: Optional[int] = None,
           generator: Optional[torch.Generator] = None, use_cache: bool = True) -> list[int]:
    """Continue ``ids`` by ``max_new_tokens`` ids; returns only the new ones."""
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


def generate(ckpt: str, prompt: str = "", max_new_tokens: int = 50, temperature: float = 1.0,
             top_k: Optional[int] = None, seed: Optional[int] = None, cache: bool = True) -> str:
    check(isinstance(max_new_tokens, int) and max_new_tokens >= 0, "max_new_tokens", max_new_tokens,
          "a non-negative integer")
    check(isinstance(temperature, (int, float)) and temperature >= 0, "temperature", temperature,
          ">= 0 (0 is greedy decoding)")
    check(top_k is None or (isinstance(top_k, int) and top_k >= 1), "top_k", top_k, "a positive integer, or null")
    run = Run.from_checkpoint(ckpt)
    module, tokenizer = run.module, run.tokenizer
    vocab = Vocab(module.hparams.vocab, tokenizer.unk_token, tokenizer.eos_token)
    # An empty prompt starts a new line, as the training text does after each end of line.
    units = tokenizer.split(prompt) if prompt.strip() else []
    ids = vocab.ids(units) or [vocab.eos]
    generator = torch.Generator().manual_seed(seed if seed is not None else torch.seed())
    new = sample(module.model, ids, max_new_tokens, temperature, top_k, generator, use_cache=cache)
    return tokenizer.decode(units + [vocab.itos[i] for i in new])


def main(argv: list[str]) -> None:
    with reported_as_one_line():
        options, _ = parse_command_line(argv, OPTIONS, groups=())
        text = generate(**options)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
