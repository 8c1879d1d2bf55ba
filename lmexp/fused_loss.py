"""The output layer and the cross-entropy in one pass over row chunks, gradients included.

The ordinary path, ``F.cross_entropy(F.linear(h, W, b), y)``, writes the logits of every token
(tokens x vocabulary floats: 28 MB for a PTB batch of 20 x 35, 1.6 GB for GPT-2 at 8 x 1024),
keeps their log-softmax for the backward pass, and walks that array four more times there.
Here the rows go through in chunks (a batch whose logits fit in 32 MiB as one; larger ones in
chunks of a few MB, each used up while it is still in cache): a chunk's logits become its loss
and, at once, the gradient of the mean loss with respect to them (softmax - one-hot, over the
rows counted), which is multiplied out into the gradients of ``h``, ``W`` and ``b`` straight
away. The backward pass only scales those by the incoming gradient. The arithmetic is the
ordinary path's; a large batch's logits never exist whole.

It trades a second gradient buffer of the weight's size (``W`` is vocabulary x width) for the
logits, so it saves memory whenever a batch has more tokens than the width: GPT-2 small's
logits for 8 x 1024 tokens are 1.6 GB, its weight's gradient 154 MB. Training steps use it where
``applies`` says, and evaluation then scores its batches chunk by chunk too (``nll_sum``).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

# Rows of a chunk. Where a batch's logits fit in 32 MiB (the largest block lmexp/allocator.py
# has every glibc keep for reuse), the batch is one chunk: with the allocator keeping it, PTB's
# 700 x 10,000 logits whole took 0.92 of the ordinary path's time (forward and backward, taking
# turns) against 0.95 in chunks of 157 rows. Larger batches go in chunks of about 6 MiB and at
# least 128 rows: 128 rows ran 20% faster than 64 at GPT-2's vocabulary (thin products run far
# below the machine's peak), 256 no faster; at 2,048 x 11,559 rows, chunks of 136 to 725 rows
# ran within 3% of each other.
WHOLE_BYTES = 32 << 20
CHUNK_BYTES = 6 << 20
MIN_ROWS = 128
CHUNKS_HELD = 2  # a chunk's logits and their log-probabilities, at the most


def chunk_rows(vocab_size: int, rows: int) -> int:
    """Rows of ``h`` per chunk, for ``rows`` rows in all."""
    if rows * vocab_size * 4 <= WHOLE_BYTES:
        return max(rows, 1)
    return max(MIN_ROWS, CHUNK_BYTES // (4 * vocab_size))


def held_chunk_bytes(vocab_size: int) -> int:
    """The most the loss's chunks take at once, for any number of rows (for the memory estimate):
    CHUNKS_HELD of the largest chunk's logits."""
    return CHUNKS_HELD * max(WHOLE_BYTES, MIN_ROWS * vocab_size * 4)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor,
                ignore_index: int) -> torch.Tensor:
        counted = targets != ignore_index
        # Each row's weight in the mean: 1 / rows counted, 0 for an ignored row. It scales the
        # chunks' thin factors (hc, and grad_h's rows) rather than their logits-sized gradient.
        scale = counted.to(h.dtype) / counted.sum().clamp(min=1)
        grad_h, grad_w = torch.empty_like(h), torch.empty_like(weight)
        grad_b = torch.empty_like(bias) if bias is not None else None
        if h.size(0) == 0:  # no chunk to write them
            grad_w.zero_()
            if grad_b is not None:
                grad_b.zero_()
        total = h.new_zeros(())
        rows = chunk_rows(weight.size(0), h.size(0))
        for start in range(0, h.size(0), rows):
            hc, yc, sc = h[start:start + rows], targets[start:start + rows], scale[start:start + rows]
            yc = torch.where(counted[start:start + rows], yc, 0).unsqueeze(1)  # an ignored row's: any valid index
            logits = hc @ weight.t() if bias is None else torch.addmm(bias, hc, weight.t())
            grad = torch.log_softmax(logits, dim=1)
            del logits
            total -= grad.gather(1, yc).squeeze(1) @ sc
            # d(loss)/d(logits) = (softmax - one-hot) x the row's weight; the weight comes in below.
            grad.exp_().scatter_add_(1, yc, grad.new_full(yc.shape, -1.0))
            torch.mm(grad, weight, out=grad_h[start:start + rows]).mul_(sc.unsqueeze(1))
            hc = hc * sc.unsqueeze(1)
            if start == 0:  # the first chunk writes the sums, rather than adding to zeros
                torch.mm(grad.t(), hc, out=grad_w)
                if grad_b is not None:
                    torch.mv(grad.t(), sc, out=grad_b)
            else:
                grad_w.addmm_(grad.t(), hc)
                if grad_b is not None:
                    grad_b.addmv_(grad.t(), sc)
            del grad  # before the next chunk's logits: at most two chunks at a time (CHUNKS_HELD)
        # Kept on ctx rather than saved: they are neither inputs nor outputs, and backward hands
        # them on as the only reference, which lets autograd take them as the parameters'
        # .grad instead of copying them (the weight's is vocabulary x width).
        ctx.grads = grad_h, grad_w, grad_b
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grads, ctx.grads = ctx.grads, None  # a second backward through the same graph fails here
        if grads is None:
            raise RuntimeError("the fused loss's graph was already used by a backward pass; "
                               "backward(retain_graph=True) is not supported by it")
        # Scaled in place: no second copy of the weight's gradient.
        return (*(None if g is None else g.mul_(grad_output) for g in grads), None, None)


def applies(model: nn.Module, fused_loss: bool, compile: bool, autocast: bool) -> bool:
    """Whether a training step takes this path: asked for (``trainer.fused_loss``), a model with
    ``features`` and a float32 ``head``, not compiled (the compiled forward makes the logits
    itself), and outside autocast (whose lower-precision products the ordinary path keeps)."""
    head = getattr(model, "head", None)
    return fused_loss and not compile and not autocast and head is not None and head.weight.dtype == torch.float32


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor,
                         ignore_index: int = -100) -> torch.Tensor:
    """``F.cross_entropy(F.linear(h, weight, bias), targets, ignore_index=...)``, the mean over
    the rows whose target is not ``ignore_index``; ``h`` (N, C), ``weight`` (V, C), ``targets`` (N,).
    Rows none of which are counted give 0 and zero gradients, where the ordinary path gives NaN:
    a step with nothing to learn from leaves the weights as they are."""
    return _LinearCrossEntropy.apply(h, weight, bias, targets, ignore_index)


def nll_sum(h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor,
            ignore_index: int = -100) -> torch.Tensor:
    """The summed cross-entropy of ``F.linear(h, weight, bias)`` over the rows whose target is
    not ``ignore_index``, a chunk of rows at a time: evaluation's, which needs no gradient and
    so never holds more than one chunk's logits (GPT-2's for 16 x 1,024 tokens would be 3.3 GB)."""
    total = h.new_zeros((), dtype=torch.promote_types(h.dtype, torch.float32))  # half precision's in float32
    rows = chunk_rows(weight.size(0), h.size(0))
    for start in range(0, h.size(0), rows):
        yc = targets[start:start + rows]
        counted = yc != ignore_index
        logp = torch.log_softmax(F.linear(h[start:start + rows], weight, bias).to(total.dtype), dim=1)
        picked = logp.gather(1, torch.where(counted, yc, 0).unsqueeze(1)).squeeze(1)
        total -= torch.where(counted, picked, 0.0).sum()  # not * counted: an ignored row's -inf would make NaN
    return total


def training_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, state: Any, fused: bool) -> tuple[torch.Tensor, Any]:
    """A training step's mean cross-entropy and the model's new state, by this path (``fused``,
    where ``applies``) or the ordinary one."""
    if fused:
        hidden, state = model.features(x, state)
        return linear_cross_entropy(hidden.flatten(0, 1), model.head.weight, model.head.bias, y.flatten()), state
    logits, state = model(x, state)
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten()), state


def evaluation_nll(model: nn.Module, x: torch.Tensor, y: torch.Tensor, state: Any, fused: bool,
                   ignore_index: int = -100) -> tuple[torch.Tensor, Any]:
    """A batch's summed cross-entropy over its counted targets and the model's new state, by
    this path (``fused``) or the ordinary one."""
    if fused:
        hidden, state = model.features(x, state)
        return nll_sum(hidden.flatten(0, 1), model.head.weight, model.head.bias, y.flatten(), ignore_index), state
    logits, state = model(x, state)
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=ignore_index, reduction="sum"), state
