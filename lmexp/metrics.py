"""Exact perplexity over a whole split."""

from __future__ import annotations

import math

import torch
from torchmetrics import Metric


class SplitNLL(Metric):
    """Summed negative log-likelihood (nats) and number of predicted tokens over a split.

    Perplexity is exp(total NLL / total tokens). A mean of per-batch perplexities, or of
    per-batch mean losses when batches differ in size, is not the split's perplexity. The two
    sums are added across processes in ``compute``, so 1 and N processes give one number.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        # float64: a sum of ~1e6 token losses in float32 loses the digits perplexity needs.
        self.add_state("nll", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, nll_sum: torch.Tensor, tokens: int) -> None:
        # Made float64 again, not added in place: trainer.precision=bf16-true and 16-true convert
        # the module with .to(dtype), which torchmetrics lets reach its states (it guards .half()
        # and .bfloat16() only), and a sum kept in bfloat16 stops growing (8.7% low on a tiny
        # GPT-2's 16,561 tokens; float16's overflows at 65,504 nats).
        self.nll = self.nll.to(torch.float64) + nll_sum.detach().to(torch.float64)
        self.tokens += tokens

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.nll, self.tokens


def perplexity(nll_sum: float, tokens: int) -> float:
    """exp(mean NLL); inf where the mean overflows, as an untrained model's may."""
    mean = nll_sum / tokens
    return math.exp(mean) if mean < 709 else math.inf


def split_metrics(nll_sum: float, tokens: int, split: dict | None) -> dict[str, float]:
    """Metrics that rank runs with different tokenizers together, besides perplexity per token.

    ``split`` holds the whole split's ``tokens``, ``words`` (whitespace words plus one end of
    line per line: what published word-level perplexities on WikiText and PTB divide by) and
    UTF-8 ``bytes`` (one more per line). The NLL of the scored tokens is scaled to the whole
    split by tokens / scored (scoring skips at most the first token of each row and a short
    tail), then:

    - word-level perplexity = exp(NLL / words): for a word tokenizer on a pre-tokenized corpus
      words == tokens and it equals the token perplexity;
    - bits per byte = NLL / ln 2 / bytes: independent of the vocabulary (as nanochat's
      loss_eval explains), so word, character and BPE models compare directly.
    """
    out = {"loss": nll_sum / tokens, "ppl": perplexity(nll_sum, tokens), "tokens": float(tokens)}
    if split:
        whole = nll_sum * split["tokens"] / tokens
        out["word_ppl"] = perplexity(whole, split["words"])
        out["bpb"] = whole / math.log(2) / split["bytes"]
    return out
