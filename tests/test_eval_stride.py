"""``eval.stride`` end to end: sliding-window evaluation of an attention model, through
``Trainer.validate`` of a run built by ``Run.from_config`` and through ``lmexp.evaluate`` on a
checkpoint, against a perplexity computed here from the definition with ``model.forward`` only.

The definition (README, data pipeline): windows of ``block_size`` tokens start every ``S``
tokens (at 0, S, 2S, ...); the first window predicts all of its tokens, each later window only
its last S, and the last window ends at the split's end and predicts what no window did before
it. Every token but the first is predicted exactly once, from the tokens before it in its
window. ``S = block_size`` (the default, ``eval.stride=null``) is non-overlapping windows.

The model's weights are drawn from N(0, std²) so that its predictions depend strongly on the
context: the perplexity with a stride differs from the non-overlapping one, and the test can fail.
"""

import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import write_zipf_corpus

ROOT = Path(__file__).resolve().parent.parent
BLOCK = 16
STRIDE = 5  # the run's eval.stride: divides neither the block nor the split


@torch.no_grad()
def sliding_window_nll(model, ids: np.ndarray, block: int, stride: int) -> torch.Tensor:
    """The NLL of ids[1:], each token t predicted from its context ids[start:t]: start 0 for the
    first window's tokens (t <= block); else the window k*stride whose last ``stride`` targets
    k*stride + block - stride < t <= k*stride + block hold t, or, where that window would run
    past the split's end, the last window, which starts at n - 1 - block."""
    n = len(ids)
    contexts = defaultdict(list)  # context length -> the targets t predicted from that many tokens
    for t in range(1, n):
        start = 0 if t <= block else min(math.ceil((t - block) / stride) * stride, n - 1 - block)
        assert t - start <= block and (t <= block or t - start >= block - stride)
        contexts[t - start].append(t)
    ids = torch.from_numpy(ids.astype(np.int64))
    nll = torch.full((n - 1,), math.nan, dtype=torch.float64)
    for length, targets in contexts.items():
        targets = torch.tensor(targets)
        x = ids[targets[:, None] - length + torch.arange(length)]  # (m, length): just the context
        logits, _ = model(x, None)
        logp = F.log_softmax(logits[:, -1].double(), dim=-1)  # the prediction after the last context token
        nll[targets - 1] = -logp[torch.arange(len(targets)), ids[targets]]
    assert not nll.isnan().any()
    return nll


@pytest.fixture(scope="module")
def stride_run(tmp_path_factory, cache_dir):
    """A small Transformer with spread weights, validated with eval.stride=STRIDE through
    Run.from_config and Trainer.validate, then saved as a Lightning checkpoint."""
    from hydra import compose, initialize_config_dir

    from lmexp.run import Run

    folder = tmp_path_factory.mktemp("stride")
    write_zipf_corpus(folder / "corpus", words=200, lines={"train": 600, "valid": 150, "test": 10}, longest=14,
                      seed=3)
    data = [f"data.{split}={folder / 'corpus' / f'{split}.txt'}" for split in ("train", "valid", "test")]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[
            "model=transformer", "model.d_model=32", "model.n_head=2", "model.n_layer=2", "model.d_ff=64",
            f"model.block_size={BLOCK}", f"eval.stride={STRIDE}", "data=text", *data, "data.eval_batch_size=7",
            "logger=none", f"paths.cache_dir={cache_dir}"])
    run = Run.from_config(cfg)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in run.module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    trainer = run.trainer(folder, callbacks=[], loggers=[], enable_progress_bar=False, enable_model_summary=False)
    (metrics,) = trainer.validate(run.module, datamodule=run.datamodule, verbose=False)
    ckpt = folder / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    ids = np.asarray(run.corpus.ids["valid"])
    model = run.module.model.eval()
    expected = {stride: sliding_window_nll(model, ids, BLOCK, stride) for stride in (STRIDE, 1, BLOCK)}
    return run, metrics, ckpt, ids, expected


def ppl(nll: torch.Tensor) -> float:
    return math.exp(nll.sum().item() / nll.numel())


def test_the_split_exercises_every_case(stride_run):
    _, _, _, ids, expected = stride_run
    n = len(ids)
    assert (n - 1 - BLOCK) % STRIDE and (n - 1) % BLOCK  # the last window is shorter than a stride step
    # Sliding windows change the perplexity, by far more than the tolerance below.
    assert abs(ppl(expected[STRIDE]) / ppl(expected[BLOCK]) - 1) > 1e-2
    assert abs(ppl(expected[1]) / ppl(expected[STRIDE]) - 1) > 1e-3
    # Not an untrained model's near-uniform prediction.
    assert expected[BLOCK].std() > 1.0


def test_validate_with_eval_stride(stride_run):
    run, metrics, _, ids, expected = stride_run
    assert run.datamodule.eval_stride == STRIDE
    assert metrics["val/tokens"] == len(ids) - 1
    assert metrics["val/ppl"] == pytest.approx(ppl(expected[STRIDE]), rel=1e-5)


# The checkpoint's stored eval.stride, then others on top (stride 1: 1,387 windows, 64 a batch).
@pytest.mark.parametrize("overrides,stride", [([], STRIDE), (["eval.stride=1", "data.eval_batch_size=64"], 1),
                                              (["eval.stride=null"], BLOCK), ([f"eval.stride={BLOCK}"], BLOCK)],
                         ids=["stored", "stride=1", "stride=null", "stride=block"])
def test_evaluate_a_checkpoint_with_eval_stride(stride_run, overrides, stride):
    from lmexp.evaluate import evaluate

    _, _, ckpt, ids, expected = stride_run
    result = evaluate(str(ckpt), "valid", overrides)
    assert result["tokens"] == len(ids) - 1
    assert result["ppl"] == pytest.approx(ppl(expected[stride]), rel=1e-5)
