"""``trainer.fused_loss``: the output layer and the cross-entropy in one pass over row chunks
(lmexp/fused_loss.py) give the loss and the gradients of the ordinary path, and a run trains the
same with it on and off."""

import csv

import pytest
import torch
import torch.nn.functional as F

from conftest import train_here
from lmexp import fused_loss
from lmexp.fused_loss import MIN_ROWS, chunk_rows, linear_cross_entropy, nll_sum


def both_paths(n: int, width: int, vocab: int, bias: bool, ignore_every: int = 0, scale: float = 1.0):
    torch.manual_seed(0)
    h, w = torch.randn(n, width, dtype=torch.float64), torch.randn(vocab, width, dtype=torch.float64) * 0.3
    b = torch.randn(vocab, dtype=torch.float64) if bias else None
    y = torch.randint(vocab, (n,))
    if ignore_every:
        y[::ignore_every] = -100
    grads = []
    for loss_of in (lambda *a: F.cross_entropy(F.linear(*a[:3]), a[3]), linear_cross_entropy):
        leaves = [t.clone().requires_grad_() for t in (h, w) + ((b,) if bias else ())]
        loss = loss_of(leaves[0], leaves[1], leaves[2] if bias else None, y)
        (loss * scale).backward()
        grads.append([loss.detach()] + [t.grad for t in leaves])
    return grads


@pytest.fixture(params=["whole", "chunked"])
def chunked(request, monkeypatch):
    """A batch small enough to be one chunk, or, with no batch counting as small, in chunks of
    MIN_ROWS (13,000 words: MIN_ROWS rows of them pass CHUNK_BYTES)."""
    if request.param == "chunked":
        monkeypatch.setattr(fused_loss, "WHOLE_BYTES", 0)
    return request.param == "chunked"


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("ignore_every", [0, 3])
def test_the_loss_and_every_gradient_match_the_ordinary_path(bias, ignore_every, chunked):
    vocab = 13_000
    rows = 2 * MIN_ROWS + MIN_ROWS // 3  # chunked: three chunks, the last part-filled
    assert chunk_rows(vocab, rows) == (MIN_ROWS if chunked else rows)
    ordinary, fused = both_paths(rows, 24, vocab, bias, ignore_every, scale=0.25)
    assert len(ordinary) == len(fused) == (4 if bias else 3)
    for a, b in zip(ordinary, fused):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_a_tied_matrix_gets_both_uses_gradients():
    torch.manual_seed(0)
    vocab, width = 50, 8
    emb = torch.randn(vocab, width, requires_grad=True)
    idx, y = torch.randint(vocab, (2, 6)), torch.randint(vocab, (12,))
    grads = []
    for fused in (False, True):
        emb.grad = None
        h = torch.tanh(F.embedding(idx, emb)).flatten(0, 1)
        loss = linear_cross_entropy(h, emb, None, y) if fused else F.cross_entropy(h @ emb.t(), y)
        loss.backward()
        grads.append(emb.grad.clone())
    torch.testing.assert_close(grads[1], grads[0])


GPT = ["model=gpt2", "model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32"]
COMMON = ["data.batch_size=4", "data.effective_batch_size=null", "trainer.max_epochs=1", "trainer.max_steps=5",
          "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "trainer.num_sanity_val_steps=0",
          "trainer.log_every_n_steps=1", "logger=csv", "trainer.enable_progress_bar=false", "trainer.deterministic=true"]


def losses(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.mark.parametrize("model", [["model=lstm", "model.embedding_size=32", "model.hidden_size=32", "data.bptt=16"],
                                   ["model=transformer", "model.d_model=32", "model.n_layer=1", "model.n_head=2",
                                    "model.d_ff=64", "model.block_size=16"],
                                   GPT], ids=["lstm", "transformer", "gpt2"])
def test_a_run_trains_and_scores_the_same_with_the_fused_loss(model, tmp_path, cache_dir):
    # Dropout on: the same masks must be drawn in the same order on both paths.
    on = train_here([*model, *COMMON], tmp_path / "on", cache_dir)
    off = train_here([*model, *COMMON, "trainer.fused_loss=false"], tmp_path / "off", cache_dir)
    assert len(losses(tmp_path / "on")) == 5
    assert losses(tmp_path / "on") == pytest.approx(losses(tmp_path / "off"), rel=1e-5)
    assert on["test_ppl"] == pytest.approx(off["test_ppl"], rel=1e-5)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # a step without a Trainer logs nothing
def test_the_fused_loss_is_taken_where_it_applies_and_only_there():
    from lmexp.cli import compose
    from lmexp.run import Run

    x, y = torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.long)
    for overrides, taken in (([], True), (["trainer.fused_loss=false"], False), (["trainer.compile=true"], False)):
        module = Run.from_config(compose(["logger=none", *overrides])).module
        assert module._fused_loss(x) is taken, overrides
        if taken:
            with torch.autocast("cpu", dtype=torch.bfloat16):  # lower-precision products stay autocast's
                assert not module._fused_loss(x)
        # The paths' numbers are the same; how they get them is not. A training step's loss comes
        # out of the fused Function, or out of the ordinary cross-entropy ...
        loss = module.training_step((x, y), 0)
        assert loss.grad_fn.name() == ("_LinearCrossEntropyBackward" if taken else "NllLossBackward0"), overrides
        # ... and evaluation reads the output layer's weights chunk by chunk, never calling the layer
        # for the whole batch's logits.
        calls = []
        module.model.head.register_forward_hook(lambda *_: calls.append(1))
        with torch.no_grad():
            module.validation_step((x, y), 0)
        assert len(calls) == (0 if taken else 1), overrides


def test_only_a_float32_output_layer_takes_the_fused_loss():
    """trainer.precision=bf16-true / 16-true convert the model: its head is then half precision, and
    the ordinary path (logits cast to float32 for the cross-entropy) must take the step."""
    from lmexp.models import build_model

    model = build_model({"name": "lstm", "embedding_size": 8, "hidden_size": 8, "num_layers": 1}, vocab_size=11)
    assert fused_loss.applies(model, True, False, False)
    for dtype in (torch.bfloat16, torch.float16):
        assert not fused_loss.applies(model.to(dtype), True, False, False), dtype


def test_evaluation_sums_half_precision_rows_in_float32():
    """nll_sum's promise: half-precision rows' losses are summed in float32, not in their own dtype
    (in bfloat16 a sum of 4,096 losses of ~4 nats is off by tens of nats)."""
    torch.manual_seed(0)
    h, w = torch.randn(4096, 16), torch.randn(50, 16) * 0.3
    y = torch.randint(50, (4096,))
    total = nll_sum(h.bfloat16(), w.bfloat16(), None, y)
    exact = F.cross_entropy(F.linear(h.bfloat16(), w.bfloat16()).double(), y, reduction="sum")
    assert total.dtype == torch.float32
    assert total.item() == pytest.approx(exact.item(), rel=1e-4)


@pytest.mark.parametrize("bias", [True, False])
def test_evaluation_sums_the_same_loss_chunk_by_chunk(bias, chunked):
    torch.manual_seed(0)
    vocab = 13_000
    rows = 2 * MIN_ROWS + 5  # chunked: three chunks, the last nearly empty
    h, w = torch.randn(rows, 16, dtype=torch.float64), torch.randn(vocab, 16, dtype=torch.float64)
    b = torch.randn(vocab, dtype=torch.float64) if bias else None
    y = torch.randint(vocab, (rows,))
    y[::4] = -100
    ordinary = F.cross_entropy(F.linear(h, w, b), y, reduction="sum")
    torch.testing.assert_close(nll_sum(h, w, b, y), ordinary, rtol=1e-12, atol=0)


def test_rows_none_of_which_are_counted_give_zero_not_nan():
    """The ordinary path's mean over no rows is NaN, which would spread through every weight."""
    h = torch.randn(6, 8, requires_grad=True)
    weight = torch.randn(11, 8, requires_grad=True)
    loss = linear_cross_entropy(h, weight, None, torch.full((6,), -100))
    loss.backward()
    assert loss.item() == 0.0
    assert not h.grad.any() and not weight.grad.any()
