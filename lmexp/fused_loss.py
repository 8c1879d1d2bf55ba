"""The output layer and the cross-entropy in one pass over row chunks, gradients included.

The ordinary path, ``F.cross_entropy(F.linear(h, W, b), y)``, writes the logits of every token
(tokens x vocabulary floats: 28 MB for a PTB batch of 20 x 35, 1.6 GB for GPT-2 at 8 x 1024),
keeps their log-softmax for the backward pass, and walks that array four more times there.
Here the rows go through in chunks of a few MB of logits, each used up while it is still in
cache: a chunk's logits become its loss and, at once, the gradient of the mean loss with
respect to them (softmax - one-hot, over the rows counted), which is multiplied out into the
gradients of ``h``, ``W`` and ``b`` straight away. The backward pass only scales those by the
incoming gradient. The arithmetic is the ordinary path's; the logits never exist whole.

It trades a second gradient buffer of the weight's size (``W`` is vocabulary x width) for the
logits, so it saves memory whenever a batch has more tokens than the width: GPT-2 small's
logits for 8 x 1024 tokens are 1.6 GB, its weight's gradient 154 MB. Training steps use it where
``applies`` says.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

CHUNK_BYTES = 4 << 20  # 1 to 16 MiB ran within a few % of each other here (L2: 4 MiB a core)


def chunk_rows(vocab_size: int) -> int:
    # Not below 64 rows: thinner chunks make matrix products too small to run at full speed.
    return max(64, CHUNK_BYTES // (4 * vocab_size))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor,
                ignore_index: int) -> torch.Tensor:
        counted = targets != ignore_index
        count = counted.sum().clamp(min=1).to(h.dtype)
        grad_h, grad_w = torch.empty_like(h), torch.zeros_like(weight)
        grad_b = torch.zeros_like(bias) if bias is not None else None
        total = h.new_zeros(())
        rows = chunk_rows(weight.size(0))
        for start in range(0, h.size(0), rows):
            hc, yc, kc = h[start:start + rows], targets[start:start + rows], counted[start:start + rows]
            yc = torch.where(kc, yc, 0).unsqueeze(1)  # an ignored row's target is any valid index, then masked
            logits = hc @ weight.t() if bias is None else torch.addmm(bias, hc, weight.t())
            lse = torch.logsumexp(logits, dim=1)
            total += ((lse - logits.gather(1, yc).squeeze(1)) * kc).sum()
            # d(mean loss)/d(logits) = (softmax - one-hot) / count, for counted rows; in place.
            grad = logits.sub_(lse.unsqueeze(1)).exp_()
            grad.scatter_add_(1, yc, grad.new_full(yc.shape, -1.0))
            grad.mul_((kc.to(grad.dtype) / count).unsqueeze(1))
            torch.mm(grad, weight, out=grad_h[start:start + rows])
            grad_w.addmm_(grad.t(), hc)
            if grad_b is not None:
                grad_b += grad.sum(0)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        return total / count

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        # Scaled in place: no second copy of the weight's gradient. A second backward through the
        # same graph would find them changed, and autograd refuses it.
        grads = [None if g is None else g.mul_(grad_output) for g in ctx.saved_tensors]
        return (*grads, None, None)


def applies(model: nn.Module, fused_loss: bool, compile: bool, autocast: bool) -> bool:
    """Whether a training step takes this path: asked for (``trainer.fused_loss``), a model with
    ``features`` and a float32 ``head``, not compiled (the compiled forward makes the logits
    itself), and outside autocast (whose lower-precision products the ordinary path keeps)."""
    head = getattr(model, "head", None)
    return fused_loss and not compile and not autocast and head is not None and head.weight.dtype == torch.float32


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor,
                         ignore_index: int = -100) -> torch.Tensor:
    """``F.cross_entropy(F.linear(h, weight, bias), targets, ignore_index=...)``, the mean over
    the rows whose target is not ``ignore_index``; ``h`` (N, C), ``weight`` (V, C), ``targets`` (N,)."""
    return _LinearCrossEntropy.apply(h, weight, bias, targets, ignore_index)


def training_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, state: Any, fused: bool) -> tuple[torch.Tensor, Any]:
    """A training step's mean cross-entropy and the model's new state, by this path (``fused``,
    where ``applies``) or the ordinary one."""
    if fused:
        hidden, state = model.features(x, state)
        return linear_cross_entropy(hidden.flatten(0, 1), model.head.weight, model.head.bias, y.flatten()), state
    logits, state = model(x, state)
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten()), state
