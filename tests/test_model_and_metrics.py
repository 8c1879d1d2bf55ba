"""The LSTM model, carried state, and exact perplexity."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_dropout_acts_in_training_only
from lmexp.errors import ConfigError
from lmexp.metrics import SplitNLL, perplexity
from lmexp.models import build_model
from lmexp.options.model import MODELS
from lmexp.module import detach
from lmexp.regularization import DropoutRates


def lstm(vocab=50, **overrides):
    node = {"name": "lstm", "embedding_size": 16, "hidden_size": 24, "num_layers": 2, "tie_weights": True, **overrides}
    return build_model(node, vocab_size=vocab, dropout=0.0)


@pytest.mark.parametrize("name,cls", [("rnn", torch.nn.RNN), ("gru", torch.nn.GRU), ("lstm", torch.nn.LSTM)])
def test_registry_picks_the_recurrent_cell(name, cls):
    assert {"rnn", "gru", "lstm", "transformer", "gpt2"} <= set(MODELS)
    model = lstm(name=name)
    assert [type(layer) for layer in model.layers] == [cls, cls] and model.stateful


def test_rnn_nonlinearity_is_only_for_the_elman_rnn():
    assert lstm(name="rnn", nonlinearity="relu").layers[0].nonlinearity == "relu"
    with pytest.raises(ConfigError, match="model.nonlinearity=relu: must be tanh for model=lstm"):
        lstm(nonlinearity="relu")


def test_weight_tying_shares_one_matrix_and_projects_when_sizes_differ():
    tied = lstm(embedding_size=16, hidden_size=24)
    assert tied.decoder.weight is tied.embedding.weight and tied.projection is not None
    untied = lstm(tie_weights=False)
    assert untied.decoder.weight is not untied.embedding.weight and untied.projection is None
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    awd = lstm(embedding_size=16, hidden_size=24, tie_with="last_layer")  # AWD-LSTM: 16 -> 24 -> 16, no projection
    assert awd.projection is None and [layer.hidden_size for layer in awd.layers] == [24, 16]
    assert count(awd) == 50 * 16 + 4 * 24 * (16 + 24 + 2) + 4 * 16 * (24 + 16 + 2) + 50
    assert awd(torch.zeros(2, 3, dtype=torch.long))[0].shape == (2, 3, 50)
    assert count(lstm(embedding_size=24, hidden_size=24, tie_weights=False)) - count(
        lstm(embedding_size=24, hidden_size=24)) == 50 * 24  # the decoder's own matrix


def test_init_range_draws_every_parameter_uniformly_in_range():
    torch.manual_seed(0)
    model = lstm(init_range=0.05, tie_weights=False)
    for name, p in model.named_parameters():  # biases too, as Zaremba et al.'s code
        assert p.abs().max() <= 0.05 and p.abs().max() > 0.045, name
    default = lstm(tie_weights=False)  # PyTorch's own for the recurrent layers: +-1/sqrt(24)
    assert default.layers[0].weight_hh_l0.abs().max() > 0.15 and not default.decoder.bias.any()
    with pytest.raises(ConfigError, match=r"model.init_range=0.0: must be a positive number"):
        lstm(init_range=0)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_carrying_state_equals_running_the_whole_sequence(cell):
    torch.manual_seed(0)
    model = lstm(name=cell).eval()
    idx = torch.randint(0, 50, (3, 20))
    whole, _ = model(idx)
    state, pieces = None, []
    for chunk in idx.split(7, dim=1):
        logits, state = model(chunk, detach(state))
        pieces.append(logits)
    assert torch.allclose(torch.cat(pieces, dim=1), whole, atol=1e-5)
    # ... and without the state the windows differ: the test can fail.
    fresh = torch.cat([model(chunk)[0] for chunk in idx.split(7, dim=1)], dim=1)
    assert not torch.allclose(fresh, whole, atol=1e-3)


def test_detach_cuts_the_graph_but_keeps_values():
    h = torch.ones(2, requires_grad=True) * 2
    c = torch.ones(2, requires_grad=True) * 3
    out = detach((h, c))
    assert isinstance(out, tuple) and not out[0].requires_grad and torch.equal(out[1], c.detach())


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_recurrent_models_learn_a_repeated_text(cell):
    torch.manual_seed(0)
    model = lstm(vocab=20, name=cell)
    data = torch.arange(20).repeat(4, 3)  # (4, 60): 0 1 2 ... 19 0 1 ...
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        logits, _ = model(data[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), data[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05  # from ln(20) = 3.0


def test_perplexity_is_exp_of_total_nll_over_total_tokens():
    metric = SplitNLL()
    # Batch 1: 2 tokens with NLL 1 and 3; batch 2: one token with NLL 8 (sizes differ).
    metric.update(torch.tensor(4.0), 2)
    metric.update(torch.tensor(8.0), 1)
    nll, tokens = metric.compute()
    assert nll.item() == 12.0 and tokens.item() == 3
    # e^4: not the mean of the batches' perplexities, (e^2 + e^8) / 2, nor e^(mean of their losses), e^5
    assert perplexity(nll.item(), tokens.item()) == pytest.approx(math.exp(4.0))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_sum_stays_float64_in_a_module_converted_to_half_precision(dtype):
    """trainer.precision=bf16-true and 16-true convert the module, metrics included, with .to(dtype):
    the split's sum must still be added in float64 (in bfloat16, 4,000 batches of 5.3 nats stop
    counting at 2,048; in float16 the sum overflows at 65,504)."""
    metric = SplitNLL().to(dtype)
    for _ in range(4000):
        metric.update(torch.tensor(5.3, dtype=dtype), 1)
    nll, tokens = metric.compute()
    assert nll.dtype == torch.float64 and tokens.item() == 4000
    assert nll.item() == pytest.approx(4000 * torch.tensor(5.3, dtype=dtype).double().item(), rel=1e-9)
    metric.reset()
    metric.update(torch.tensor(1.0), 1)
    assert metric.compute()[0].item() == 1.0  # reset to zero, whatever dtype the default was given


def test_uniform_predictions_have_perplexity_equal_to_the_vocabulary():
    vocab = 37
    logits = torch.zeros(5, 11, vocab)
    targets = torch.randint(0, vocab, (5, 11))
    metric = SplitNLL()
    metric.update(F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum"), targets.numel())
    nll, tokens = metric.compute()
    assert perplexity(nll.item(), tokens.item()) == pytest.approx(vocab, rel=1e-6)


def test_perplexity_overflow_is_inf_not_an_error():
    assert perplexity(1e6, 1) == math.inf


def test_word_perplexity_and_bits_per_byte_on_a_hand_computed_case():
    from lmexp.metrics import split_metrics

    # 10 scored of 12 tokens, NLL 20 nats; the split has 12 tokens, 8 words and 30 bytes.
    m = split_metrics(20.0, 10, {"tokens": 12, "words": 8, "bytes": 30})
    whole = 20.0 * 12 / 10
    assert m["ppl"] == pytest.approx(math.exp(2.0))
    assert m["word_ppl"] == pytest.approx(math.exp(whole / 8))
    assert m["bpb"] == pytest.approx(whole / math.log(2) / 30)
    # A word tokenizer on pre-tokenized text has words == tokens: word ppl == token ppl.
    same = split_metrics(20.0, 10, {"tokens": 12, "words": 12, "bytes": 30})
    assert same["word_ppl"] == pytest.approx(same["ppl"])
    assert "bpb" not in split_metrics(20.0, 10, None)


def _synced(shares):
    """SplitNLL after a cross-process sync of ``shares`` [(nll, tokens), ...]: the first is this
    process's, the others arrive through a stand-in for torch.distributed's all_gather (the path
    Lightning takes under DDP)."""
    from lmexp.metrics import SplitNLL

    metrics = []
    for nll, tokens in shares:
        metric = SplitNLL()
        metric.update(torch.tensor(nll), tokens)
        metrics.append(metric)
    mine = metrics[0]

    def gather(tensor, group=None):  # every process's value of the state being synced
        name = next(n for n in ("nll", "tokens") if getattr(mine, n) is tensor)
        return [getattr(m, name) for m in metrics]

    mine.sync(dist_sync_fn=gather, should_sync=True, distributed_available=lambda: True)
    return mine.nll, mine.tokens  # what compute() returns once synced


def test_split_nll_adds_both_sums_over_the_processes():
    """Unequal shares (a split that does not divide evenly): only sums of both states give the
    one-process number; a mean or max of either would not."""
    nll, tokens = _synced([(30.0, 10), (90.0, 20), (12.0, 4)])
    assert float(nll) == pytest.approx(132.0)
    assert int(tokens) == 34


@pytest.mark.parametrize("node, says", [
    ({"tie_with": "middle"}, "model.tie_with=middle: must be projection or last_layer"),
    ({"hidden_size": 0}, "model.hidden_size=0: must be a positive integer"),
    ({"nonlinearity": "sigmoid", "name": "rnn"}, "model.nonlinearity=sigmoid: must be tanh or relu"),
])
def test_bad_recurrent_settings_are_config_errors_naming_the_setting(node, says):
    from lmexp.models import model_config

    with pytest.raises(ConfigError, match=f"^{says}"):
        model_config({"name": "lstm", **node})


def test_an_untied_model_decodes_the_last_layers_width():
    """tie_weights=false with hidden_size != embedding_size: the output layer reads the last
    layer's hidden_size outputs directly (no projection), and the model runs."""
    node = {"name": "lstm", "embedding_size": 16, "hidden_size": 24, "num_layers": 2, "tie_weights": False}
    model = build_model(node, vocab_size=50, dropout=0.0)
    assert model.projection is None and model.decoder.in_features == 24
    logits, _ = model(torch.zeros(2, 3, dtype=torch.long))
    assert logits.shape == (2, 3, 50)
    assert sum(p.numel() for p in model.parameters()) == \
        50 * 16 + 4 * 24 * (16 + 24 + 2) + 4 * 24 * (24 + 24 + 2) + 24 * 50 + 50


def test_embedding_dropout_acts_on_a_recurrent_model_in_training_only():
    """regularization.embed_dropout alone (whole rows of the input table): the training pass
    changes from call to call; the eval pass is the same weights' without dropout."""
    node = {"name": "lstm", "embedding_size": 16, "hidden_size": 16, "num_layers": 1}
    torch.manual_seed(0)
    plain = build_model(node, vocab_size=50, dropout=0.0)
    dropped = build_model(node, vocab_size=50, dropout=DropoutRates(embedding=0.5))
    assert_dropout_acts_in_training_only(plain, dropped, vocab=50)
