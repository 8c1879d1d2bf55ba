"""Perplexities computed from a model's forward pass alone, as the oracles of the tests that
check lmexp's evaluation (data module layout, carried state, process share-out)."""

import math

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def stream_nll(model, ids: np.ndarray, rows: int, bptt: int) -> torch.Tensor:
    """Per-token NLL, (rows, length - 1), of a recurrent model reading the split as ``rows``
    contiguous streams (the last len(ids) mod rows ids left out), its state carried along."""
    length = len(ids) // rows
    streams = torch.from_numpy(ids[: rows * length].astype(np.int64)).view(rows, length)
    state, out = None, []
    for start in range(0, length - 1, bptt):
        x, y = streams[:, start : start + bptt], streams[:, start + 1 : start + bptt + 1]
        x = x[:, : y.shape[1]]
        logits, state = model(x, state)
        out.append(F.cross_entropy(logits.flatten(0, 1).double(), y.flatten(), reduction="none").view(rows, -1))
    return torch.cat(out, dim=1)


@torch.no_grad()
def window_nll(model, ids: np.ndarray, block: int) -> list[torch.Tensor]:
    """Per-token NLL of an attention model in non-overlapping windows of ``block`` tokens: window
    k predicts ids k*block+1 .. (k+1)*block from the ids before them in the window; the last
    window ends at the split's end and predicts only what no window did before it."""
    n, out = len(ids), []
    ids = torch.from_numpy(ids.astype(np.int64))
    starts = [min(k * block, n - 1 - block) for k in range(math.ceil((n - 1) / block))]
    logits, _ = model(torch.stack([ids[start : start + block] for start in starts]), None)
    logp = F.log_softmax(logits.double(), dim=-1)
    for k, start in enumerate(starts):
        targets = torch.arange(k * block + 1, min((k + 1) * block, n - 1) + 1)  # the ids window k predicts
        out.append(-logp[k, targets - 1 - start, ids[targets]])
    return out
