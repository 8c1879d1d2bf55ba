"""The causal Transformer: causality, learning, weight tying, limits and config errors."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_dropout_acts_in_training_only
from lmexp.schema import parse
from lmexp.errors import ConfigError
from lmexp.models import build_model
from lmexp.models.transformer import TransformerLM
from lmexp.options.model import MODELS, TransformerConfig
from lmexp.regularization import DropoutRates

SMALL = {"d_model": 32, "n_head": 2, "n_layer": 2, "d_ff": 64, "block_size": 16}


def transformer(vocab=50, dropout=0.0, **overrides):
    return build_model({"name": "transformer", **SMALL, **overrides}, vocab_size=vocab, dropout=dropout)


def test_registry_builds_thetransformer():
    assert MODELS["transformer"].make is TransformerLM
    model = transformer(dropout=0.1)
    assert isinstance(model.embedding, torch.nn.Embedding) and model.embedding.num_embeddings == 50
    assert model.stateful is False and model.block_size == 16 and len(model.encoder.layers) == 2
    logits, state = model(torch.randint(0, 50, (3, 16)))
    assert logits.shape == (3, 16, 50) and state is None


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_changing_a_token_never_changes_earlier_logits(positions, norm_first):
    torch.manual_seed(0)
    model = transformer(positions=positions, norm_first=norm_first, dropout=0.1).eval()
    idx = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        before, _ = model(idx)
        for t in (0, 5, 15):
            changed = idx.clone()
            changed[:, t] = (changed[:, t] + 1) % 50
            after, _ = model(changed)
            assert torch.equal(after[:, :t], before[:, :t]), f"position < {t} saw token {t}"
            # ... and the change is seen from t on: the test can fail.
            assert not torch.allclose(after[:, t], before[:, t])


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_overfits_a_repeated_text(positions, norm_first):
    torch.manual_seed(0)
    model = transformer(vocab=20, positions=positions, norm_first=norm_first)
    data = torch.arange(20).repeat(4, 2)[:, :17]  # (4, 17): 0 1 2 ... 19 0 1 ...; 16 inputs per row
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        logits, _ = model(data[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), data[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05  # from about ln(20) = 3.0; seeds 0-4 end at 0.010-0.018


def test_weight_tying_shares_one_matrix():
    tied, untied = transformer(), transformer(tie_weights=False)
    assert tied.decoder.weight is tied.embedding.weight
    assert untied.decoder.weight is not untied.embedding.weight
    assert untied.num_params() - tied.num_params() == 50 * 32  # the output layer's own matrix
    count = sum(p.numel() for p in tied.parameters())
    assert tied.num_params() == count
    assert tied.num_params(non_embedding=True) == count - 50 * 32


def test_non_embedding_count_leaves_out_learned_positions():
    sinusoidal, learned = transformer(), transformer(positions="learned")
    assert learned.num_params() - sinusoidal.num_params() == 16 * 32
    assert learned.num_params(non_embedding=True) == sinusoidal.num_params(non_embedding=True)
    assert "positions" not in dict(sinusoidal.named_parameters())  # a buffer, never trained
    assert "positions" not in sinusoidal.state_dict()


@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_windows_longer_than_block_size_raise(positions):
    model = transformer(positions=positions)
    model(torch.zeros(1, 16, dtype=torch.long))  # block_size itself is fine
    with pytest.raises(ValueError, match="block_size=16"):
        model(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("node, setting", [
    ({"d_model": 30, "n_head": 4}, "model.d_model=30"),
    ({"positions": "rotary"}, "model.positions=rotary"),
    ({"activation": "swish"}, "model.activation=swish"),
    ({"n_layer": 0}, "model.n_layer=0"),
    ({"block_size": -1}, "model.block_size=-1"),
])
def test_bad_settings_are_config_errors_naming_the_setting(node, setting):
    with pytest.raises(ConfigError, match=setting):
        parse(TransformerConfig, node, "model")
    with pytest.raises(ConfigError, match=setting):
        build_model({"name": "transformer", **node}, vocab_size=50, dropout=0.0)


def test_defaults_parse_and_build_without_warnings():
    assert parse(TransformerConfig, {"name": "transformer"}, "model") == TransformerConfig()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. enable_nested_tensor's warning for norm_first
        for norm_first in (True, False):
            transformer(norm_first=norm_first, n_head=1)


def test_dropout_is_off_in_eval_mode():
    torch.manual_seed(0)
    model = transformer(dropout=0.5)
    idx = torch.randint(0, 50, (2, 16))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(idx)[0], model(idx)[0])
    model.train()
    with torch.no_grad():  # ... while in training it is on: the test can fail.
        assert not torch.equal(model(idx)[0], model(idx)[0])


def small_transformer(**overrides):
    """A 2-layer, 32-wide Transformer with dropout 0.1 and the ``overrides``."""
    torch.manual_seed(0)
    node = {"name": "transformer", "d_model": 32, "n_head": 2, "n_layer": 2, "d_ff": 64, "block_size": 16,
            **overrides}
    return build_model(node, vocab_size=50, dropout=0.1)


@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_the_transformer_input_is_sqrt_d_model_times_the_embedding_plus_the_positions(positions):
    """Vaswani et al. 3.4/3.5: what input dropout reads is embedding * sqrt(d_model) + position."""
    import math

    model = small_transformer(positions=positions).train()
    seen = {}
    model.drop.register_forward_hook(lambda m, args, out: seen.update(x=args[0], out=out))
    idx = torch.randint(0, 50, (3, 12))
    model(idx)
    pos = model.positions[:12] if positions == "sinusoidal" else model.position_embedding.weight[:12]
    assert torch.allclose(seen["x"], model.embedding(idx) * math.sqrt(32) + pos, atol=1e-6)
    assert not torch.equal(seen["out"], seen["x"])  # input dropout acts on that sum in training


@pytest.mark.parametrize("norm_first", [True, False])
def test_what_the_output_layer_reads_is_layer_normalised(norm_first):
    """Pre-LN needs a final LayerNorm (post-LN layers end with one): at initialisation (gain 1,
    bias 0) each position's features have mean 0 and variance 1."""
    model = small_transformer(norm_first=norm_first).eval()
    with torch.no_grad():
        h, _ = model.features(torch.randint(0, 50, (3, 12)))
    assert torch.allclose(h.mean(-1), torch.zeros(3, 12), atol=1e-5)
    assert torch.allclose(h.var(-1, unbiased=False), torch.ones(3, 12), atol=1e-3)


@pytest.mark.parametrize("site", ["embedding", "input", "attention", "residual"])
def test_each_transformer_dropout_site_acts_alone(site):
    """regularization.<site>_dropout set alone changes the training pass from call to call; the
    eval pass is the same weights' without dropout. attention_dropout in particular is its own
    rate, not the residual one that nn.TransformerEncoderLayer would use for everything."""
    torch.manual_seed(0)
    plain = transformer()
    dropped = transformer(dropout=DropoutRates(**{site: 0.5}))
    assert_dropout_acts_in_training_only(plain, dropped, vocab=50)


def test_the_attention_dropout_rate_is_the_attention_setting():
    model = transformer(dropout=DropoutRates(attention=0.3, residual=0.1))
    for layer in model.encoder.layers:
        assert layer.self_attn.dropout == 0.3
        assert layer.dropout1.p == pytest.approx(0.1) and layer.dropout.p == pytest.approx(0.1)


def test_activation_relu_is_the_feed_forwards_activation():
    """model.activation=relu computes relu in the feed-forward: the same weights give other
    logits than gelu, and the first layer's feed-forward is relu's by hand."""
    torch.manual_seed(0)
    gelu = transformer()
    relu = transformer(activation="relu")
    relu.load_state_dict(gelu.state_dict())
    idx = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert not torch.allclose(gelu.eval()(idx)[0], relu.eval()(idx)[0])
        layer, h = relu.encoder.layers[0], torch.randn(2, 5, 32)
        torch.testing.assert_close(layer._ff_block(h), layer.linear2(torch.relu(layer.linear1(h))))


def test_the_transformer_starts_with_embedding_rows_of_std_one_over_sqrt_d_model_and_a_zero_output_bias():
    torch.manual_seed(0)
    model = transformer(d_model=64, n_head=2)
    assert abs(model.embedding.weight.std().item() - 64 ** -0.5) < 0.01
    assert torch.count_nonzero(model.decoder.bias) == 0
    untied = transformer(d_model=64, n_head=2, tie_weights=False)
    assert abs(untied.decoder.weight.std().item() - 64 ** -0.5) < 0.01


@pytest.mark.parametrize("d_model", [8, 7])
def test_sinusoidal_positions_are_vaswanis_formula_by_hand(d_model):
    """PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d)), section 3.5."""
    import math

    from lmexp.models.transformer import sinusoidal_positions

    pe = sinusoidal_positions(12, d_model)
    assert pe.shape == (12, d_model)
    for p in range(12):
        for j in range(d_model):
            angle = p / 10000 ** ((j - j % 2) / d_model)
            expected = math.sin(angle) if j % 2 == 0 else math.cos(angle)
            assert pe[p, j].item() == pytest.approx(expected, abs=1e-5), (p, j)
    model = transformer()  # what the model adds: the same table
    torch.testing.assert_close(model.positions, sinusoidal_positions(16, 32))


@pytest.mark.parametrize("norm_first, final_norm", [(True, 2 * 32), (False, 0)])
def test_the_transformer_parameter_count_by_hand(norm_first, final_norm):
    """Only pre-LN adds a final LayerNorm (post-LN layers already end with one). Per layer:
    attention 4(d^2 + d), feed-forward 2 d d_ff + d_ff + d, two LayerNorms 4d; then the tied
    embedding and the output bias."""
    d, d_ff, layers, vocab = 32, 64, 2, 50
    model = transformer(norm_first=norm_first)
    per_layer = 4 * (d * d + d) + 2 * d * d_ff + d_ff + d + 4 * d
    assert sum(p.numel() for p in model.parameters()) == vocab * d + layers * per_layer + final_norm + vocab
    assert (model.encoder.norm is None) is (not norm_first)
