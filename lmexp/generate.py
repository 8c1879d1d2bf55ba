"""``python -m lmexp.generate ckpt=PATH prompt="The meaning of" max_new_tokens=50 temperature=0.8 top_k=40 seed=1``

Samples text from a checkpoint, or with ``pretrained=FOLDER`` (instead of ``ckpt=``) from a local
Hugging Face GPT-2 folder as it is (how: ``lmexp/sampling.py``). The options are checked before
torch is imported, which takes seconds.
"""

from __future__ import annotations

import sys
from typing import Optional

from lmexp.cli import check_model_options, parse_command_line
from lmexp.errors import UserError, reported_as_one_line
from lmexp.schema import check, is_number, is_whole
from lmexp.stops import stopped_as_one_line

OPTIONS = {"ckpt": None, "pretrained": None, "prompt": "", "max_new_tokens": 50, "temperature": 1.0, "top_k": None,
           "seed": None, "cache": True}


def generate(ckpt: Optional[str] = None, pretrained: Optional[str] = None, prompt: str = "",
             max_new_tokens: int = 50, temperature: float = 1.0, top_k: Optional[int] = None,
             seed: Optional[int] = None, cache: bool = True) -> str:
    check(is_whole(max_new_tokens) and max_new_tokens >= 1, "max_new_tokens", max_new_tokens, "a positive integer")
    check(is_number(temperature) and 0 <= temperature < float("inf"), "temperature", temperature,
          "a number >= 0 (0 is greedy decoding)")
    check(top_k is None or (is_whole(top_k) and top_k >= 1), "top_k", top_k, "a positive integer, or null")
    check(seed is None or (is_whole(seed) and seed >= 0), "seed", seed, "a non-negative integer, or null")
    check(isinstance(cache, bool), "cache", cache, "true or false")
    check_model_options(ckpt, pretrained)
    import torch  # with the model below: seconds, so not before the options are checked

    from lmexp.data.tokenizers import Vocab
    from lmexp.run import Run
    from lmexp.sampling import sample

    run = Run.from_checkpoint(ckpt) if ckpt else Run.from_pretrained(pretrained)
    module, tokenizer = run.module, run.tokenizer
    vocab = Vocab(module.hparams.vocab, tokenizer.unk_token, tokenizer.eos_token)
    # An empty prompt starts a new line, as the training text does after each end of line.
    units = prompt_units(tokenizer, prompt, vocab.itos[vocab.unk] if vocab.unk is not None else None) \
        if prompt.strip() else []
    unknown = sorted({u for u in units if u not in vocab.stoi})
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        instead = f", or write {vocab.itos[vocab.unk]} for them" if vocab.unk is not None else ""
        raise UserError(f"prompt={prompt!r}: the model's vocabulary has no {shown}; use units it was trained "
                        f"on{instead}")
    ids = vocab.ids(units) or [vocab.eos]
    generator = torch.Generator().manual_seed(seed if seed is not None else torch.seed())
    new = sample(module.model, ids, max_new_tokens, temperature, top_k, generator, use_cache=cache)
    return tokenizer.decode(units + [vocab.itos[i] for i in new])


def prompt_units(tokenizer, prompt: str, unk: Optional[str]) -> list[str]:
    """The prompt's units, where it may write the unknown unit (``<unk>``) as itself: a word or
    character tokenizer would cut it into '<', 'unk', '>'."""
    if not unk or unk not in prompt:
        return tokenizer.split(prompt)
    units: list[str] = []
    for i, piece in enumerate(prompt.split(unk)):
        units += ([unk] if i else []) + (tokenizer.split(piece) if piece else [])
    return units


def main(argv: list[str]) -> None:
    with stopped_as_one_line("lmexp.generate", "nothing was written"), reported_as_one_line():
        options, _ = parse_command_line(argv, OPTIONS, groups=())
        text = generate(**options)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
