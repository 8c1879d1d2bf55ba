"""GPT-2: parameter count, parity with transformers, causality, KV cache, learning, errors."""

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_dropout_acts_in_training_only
from lmexp.errors import ConfigError, UserError
from lmexp.models import build_model, model_config, parameter_counts, training_flops
from lmexp.models.gpt2 import GPT2
from lmexp.options.model import MODELS, GPT2Config
from lmexp.regularization import DropoutRates

ROOT = Path(__file__).resolve().parent.parent


def small(vocab=101, dropout=0.0, **shape):
    shape = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 64, **shape}
    return GPT2(GPT2Config(size="tiny", **shape), vocab_size=vocab, dropout=dropout)


def spread(model, std=0.3):
    """Random weights far larger than GPT-2's init, so that greedy choices are never near-ties."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model


def test_gpt2_small_has_124m_parameters():
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = GPT2(GPT2Config(size="small"), vocab_size=50257)
    assert model.num_params() == 124_439_808
    assert model.num_params(non_embedding=True) == 124_439_808 - 50257 * 768 - 1024 * 768
    assert model.config.resolved() == (12, 12, 768, 1024)


def test_sizes_resolve_and_explicit_values_override():
    assert GPT2Config(size="xl").resolved() == (48, 25, 1600, 1024)
    assert GPT2Config(size="medium", n_layer=3, block_size=64).resolved() == (3, 16, 1024, 64)


# --- parity with transformers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_model():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=64, vocab_size=101, n_positions=32)
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def hf_safetensors(hf_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf-safetensors")
    hf_model.save_pretrained(folder)
    assert (folder / "model.safetensors").is_file()
    return folder


@pytest.fixture(scope="module")
def hf_pickled(hf_model, tmp_path_factory):
    """pytorch_model.bin the old way: a bare GPT2Model's keys (no "transformer." prefix) plus
    the causal-mask buffers that old checkpoints carried."""
    folder = tmp_path_factory.mktemp("hf-bin")
    hf_model.config.save_pretrained(folder)
    sd = {k.removeprefix("transformer."): v for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    for i in range(2):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 32, 32))
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(sd, folder / "pytorch_model.bin")
    return folder


@pytest.mark.parametrize("folder", ["hf_safetensors", "hf_pickled"])
def test_logits_match_transformers(folder, hf_model, request):
    model = GPT2.from_pretrained(request.getfixturevalue(folder)).eval()
    idx = torch.randint(0, 101, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, state = model(idx)
        theirs = hf_model(idx).logits
    assert state is None and ours.shape == (2, 32, 101)
    assert (ours - theirs).abs().max().item() < 1e-4


def test_pretrained_setting_loads_the_weights_through_the_registry(hf_safetensors, hf_model):
    model = build_model({"name": "gpt2", "pretrained": str(hf_safetensors)}, vocab_size=101, dropout=0.0).eval()
    assert model.config.resolved() == (2, 2, 64, 32)
    idx = torch.randint(0, 101, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (model(idx)[0] - hf_model(idx).logits).abs().max().item() < 1e-4


def test_pretrained_vocab_and_shape_must_match_the_checkpoint(hf_safetensors):
    with pytest.raises(ConfigError, match=r"vocab_size 101 but the tokenizer has 50\b"):
        build_model({"name": "gpt2", "pretrained": str(hf_safetensors)}, vocab_size=50, dropout=0.0)
    with pytest.raises(ConfigError, match=r"model.n_layer=4 contradicts the checkpoint's 2"):
        build_model({"name": "gpt2", "pretrained": str(hf_safetensors), "n_layer": 4}, vocab_size=101, dropout=0.0)


# --- behaviour --------------------------------------------------------------------------------


def test_changing_a_token_never_changes_earlier_logits():
    torch.manual_seed(0)
    model = spread(small()).eval()
    idx = torch.randint(0, 101, (2, 24))
    with torch.no_grad():
        base, _ = model(idx)
        for t in (0, 7, 23):
            changed = idx.clone()
            changed[:, t] = (changed[:, t] + 1) % 101
            out, _ = model(changed)
            assert torch.allclose(out[:, :t], base[:, :t], atol=1e-6), t
            assert not torch.allclose(out[:, t], base[:, t])


def greedy(model, prompt, steps, cached):
    idx, cache, nxt = prompt, None, prompt
    for _ in range(steps):
        if cached:
            logits, cache = model.forward_with_cache(nxt, cache)  # only the new token after the prompt
        else:
            logits, _ = model(idx)  # the whole prefix every step
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        idx = torch.cat((idx, nxt), dim=1)
    return idx


def test_kv_cache_generation_equals_full_recomputation():
    torch.manual_seed(0)
    model = spread(small()).eval()
    prompt = torch.randint(0, 101, (2, 5))
    with torch.no_grad():
        full = greedy(model, prompt, 20, cached=False)
        fast = greedy(model, prompt, 20, cached=True)
    assert torch.equal(full, fast)
    assert len(set(full[0, 5:].tolist())) > 1  # not a degenerate repetition of one token


def test_kv_cache_takes_several_new_tokens_at_once_and_counts_positions():
    torch.manual_seed(0)
    model = spread(small()).eval()
    idx = torch.randint(0, 101, (2, 20))
    with torch.no_grad():
        whole, _ = model(idx)
        first, cache = model.forward_with_cache(idx[:, :8])
        rest, cache = model.forward_with_cache(idx[:, 8:], cache)  # 12 tokens after 8 cached
    assert torch.allclose(torch.cat((first, rest), dim=1), whole, atol=1e-5)
    assert len(cache) == 2 and cache[0][0].shape == (2, 2, 20, 16)  # (B, nh, T, hs)


def test_sequences_longer_than_the_block_are_refused():
    model = small(block_size=16).eval()
    with pytest.raises(ValueError, match="exceeds block_size=16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with torch.no_grad():
        _, cache = model.forward_with_cache(torch.zeros(1, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="16 cached \\+ 1 new tokens exceeds block_size=16"):
        model.forward_with_cache(torch.zeros(1, 1, dtype=torch.long), cache)


def test_overfits_a_tiny_repeated_text():
    torch.manual_seed(0)
    text = "the quick brown fox jumps over the lazy dog. " * 8
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text])
    model = small(vocab=len(chars), n_embd=64, block_size=64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    windows = torch.stack([data[i:i + 65] for i in range(0, len(data) - 65, 17)])  # (B, 65)
    x, y = windows[:, :-1], windows[:, 1:]
    for _ in range(60):
        logits, _ = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    # From ln(27) = 3.3 nats; the text is periodic, so only a window's first characters stay
    # uncertain. Seeds 0-4 end at 0.13-0.25 nats.
    assert loss.item() < 0.5


# --- registry and config --------------------------------------------------------------------


def test_registry_builds_a_tied_tiny_model_with_the_given_vocab_and_dropout():
    assert "gpt2" in MODELS
    model = build_model({"name": "gpt2", "size": "tiny"}, vocab_size=50, dropout=0.1)
    assert model.lm_head.weight is model.embedding.weight and model.wte is model.embedding
    assert model.embedding.num_embeddings == 50 and model.stateful is False
    assert model.drop.p == 0.1 and model.h[0].attn.dropout == 0.1 and model.h[0].mlp.dropout.p == 0.1
    logits, state = model(torch.zeros(3, 10, dtype=torch.long))
    assert logits.shape == (3, 10, 50) and state is None


def test_residual_projections_get_the_scaled_init():
    torch.manual_seed(0)
    model = small(n_layer=8, n_embd=128)
    assert abs(model.h[0].mlp.c_fc.weight.std().item() - 0.02) < 0.002
    assert abs(model.h[0].mlp.c_proj.weight.std().item() - 0.02 / 4) < 0.0005  # 1/sqrt(2 * 8)


@pytest.mark.parametrize("node, message", [
    ({"size": "huge"}, "model.size=huge: must be one of tiny|mini|small|medium|large|xl"),
    ({"size": "tiny", "n_embd": 100, "n_head": 3}, "model.n_embd=100: must be divisible by model.n_head \\(3\\)"),
    ({"n_layer": 0}, "model.n_layer=0: must be a positive integer"),
    ({"gelu": "relu"}, "model.gelu=relu: must be tanh or exact"),
    ({"gelu": "exact", "pretrained": "/some/folder"}, "model.gelu=exact: must be tanh with model.pretrained"),
])
def test_bad_settings_are_config_errors(node, message):
    with pytest.raises(ConfigError, match=message):
        model_config({"name": "gpt2", **node})


def test_exact_gelu_is_the_erf_form_and_changes_only_the_activation():
    """model.gelu=exact (nanoGPT's): the same weights give the logits of the erf GELU, computed
    here by hand for the first block's feed-forward."""
    torch.manual_seed(0)
    tanh = spread(small(), std=0.2)
    exact = small(gelu="exact")
    exact.load_state_dict(tanh.state_dict())  # the setting adds no parameter
    x = torch.randint(101, (2, 9))
    assert (tanh(x)[0] - exact(x)[0]).abs().max() > 1e-5  # the two forms differ by up to about 1e-3
    mlp, h = exact.h[0].mlp, torch.randn(2, 9, 32)
    by_hand = mlp.c_proj(0.5 * mlp.c_fc(h) * (1 + torch.erf(mlp.c_fc(h) / 2 ** 0.5)))
    torch.testing.assert_close(mlp(h), by_hand)


def test_from_pretrained_errors_name_the_path_and_the_fix(tmp_path, hf_safetensors):
    with pytest.raises(UserError, match=re.escape(f"model.pretrained={tmp_path / 'nowhere'}: does not exist; set it to")):
        GPT2.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(UserError, match="has no config.json"):
        GPT2.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text((hf_safetensors / "config.json").read_text())
    with pytest.raises(UserError, match="has no weights: expected model.safetensors or pytorch_model.bin"):
        GPT2.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    with pytest.raises(UserError, match="model.safetensors is unreadable or corrupt"):
        GPT2.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"garbage")
    with pytest.raises(UserError, match="pytorch_model.bin is unreadable or corrupt"):
        GPT2.from_pretrained(tmp_path)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients_and_keeps_less():
    """model.gradient_checkpointing: the same step (dropout masks included, torch replays the random
    state), with what the forward pass keeps for backward cut to each block's input."""
    from lmexp.memory import saved_bytes

    shape = dict(n_layer=4, n_head=2, n_embd=32, block_size=32)
    models = []
    for recompute in (False, True):
        torch.manual_seed(0)
        models.append(GPT2(GPT2Config(**shape, gradient_checkpointing=recompute), vocab_size=50, dropout=0.1))
    ids = torch.randint(0, 50, (3, 32), generator=torch.Generator().manual_seed(1))
    losses = []
    for model in models:
        torch.manual_seed(2)  # the dropout masks
        logits, _ = model.train()(ids)
        loss = F.cross_entropy(logits.flatten(0, 1), ids.flatten())
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for (name, eager), recomputed in zip(models[0].named_parameters(), models[1].parameters()):
        assert torch.allclose(eager.grad, recomputed.grad, rtol=1e-5, atol=1e-7), name
    kept = [saved_bytes(model, 3, 32, 50) - 2 * 3 * 32 * 50 * 4 for model in models]  # less the logits' gradients
    assert kept[1] < 0.5 * kept[0]


@pytest.mark.parametrize("variant", [{"scale_attn_weights": False}, {"tie_word_embeddings": False},
                                     {"activation_function": "relu"}, {"n_inner": 40},
                                     {"scale_attn_by_inverse_layer_idx": True}])
def test_a_gpt2_variant_computed_otherwise_is_refused_not_loaded(tmp_path, variant):
    """transformers' GPT-2 settings that this GPT-2 does not compute: loading such a folder would
    give other logits (an untied head was thrown away; unscaled attention scaled), so it is refused."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=16,
                                                              vocab_size=50, **variant))
    hf.save_pretrained(tmp_path)
    key = next(iter(variant))
    with pytest.raises(UserError, match=f"config.json: .*{key}.* unsupported"):
        GPT2.from_pretrained(tmp_path)


def test_a_fresh_gpt2_starts_with_zero_biases_as_gpt2_does():
    """GPT-2's init: every Linear's bias zero (and LayerNorm's), not PyTorch's uniform default."""
    torch.manual_seed(0)
    model = small()
    biases = {name: p for name, p in model.named_parameters() if name.endswith(".bias")}
    assert biases  # model.bias=true by default
    for name, p in biases.items():
        assert torch.count_nonzero(p) == 0, name


@pytest.mark.parametrize("site", ["embedding", "input", "attention", "residual"])
def test_each_gpt2_dropout_site_acts_in_training_and_not_in_eval(site):
    """regularization.<site>_dropout alone: it changes the training forward pass from call to
    call, and the eval pass is exactly that of the same weights without dropout."""
    torch.manual_seed(0)
    plain = small()
    dropped = small(dropout=DropoutRates(**{site: 0.5}))
    assert_dropout_acts_in_training_only(plain, dropped, vocab=101)


def test_residual_dropout_drops_the_attention_branch_too():
    """The residual rate applies to both branches into the residual stream: about half of the
    attention branch's output is zero at rate 0.5 in training (GPT-2's resid_dropout)."""
    torch.manual_seed(0)
    model = small(dropout=DropoutRates(residual=0.5)).train()
    x = torch.randn(4, 16, 32)
    with torch.no_grad():
        out, _ = model.h[0].attn(x)
    zeros = (out == 0).float().mean().item()
    assert 0.4 < zeros < 0.6


def test_a_checkpoints_own_layer_norm_epsilon_is_used(tmp_path):
    """A folder whose config.json sets layer_norm_epsilon (not 1e-5) gives transformers' logits:
    the checkpoint's epsilon replaces the setting's in every LayerNorm."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=50, n_positions=16,
                                     layer_norm_epsilon=0.5)
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # LayerNorm inputs of small variance, where epsilon matters
        for p in hf.parameters():
            p.mul_(0.2)
    hf.save_pretrained(tmp_path)
    model = GPT2.from_pretrained(tmp_path).eval()
    assert model.ln_f.eps == 0.5 and model.h[1].ln_2.eps == 0.5
    idx = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], hf(idx).logits, rtol=1e-4, atol=1e-5)


def test_a_pretrained_folder_with_bias_false_is_refused(tmp_path):
    """model.bias=false cannot hold a checkpoint's biases: a ConfigError naming the fix, not a
    model silently built with biases."""
    transformers = pytest.importorskip("transformers")

    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=16)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="model.bias=false: a GPT-2 checkpoint has biases; set model.bias=true"):
        GPT2(GPT2Config(pretrained=str(tmp_path), bias=False), vocab_size=50)


def test_weights_of_another_shape_than_config_json_says_are_a_user_error(tmp_path):
    """A folder whose config.json was edited (n_positions 16 -> 8) after saving: a UserError
    naming the weight and both shapes, not torch's RuntimeError from copying."""
    import json

    transformers = pytest.importorskip("transformers")

    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=16)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path)
    hf = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**hf, "n_positions": 8}))
    with pytest.raises(UserError, match=r"wpe.weight has shape \(16, 16\) but config.json implies \(8, 16\)"):
        GPT2.from_pretrained(tmp_path)


def test_a_cached_pass_in_training_with_gradient_checkpointing_keeps_its_keys_and_values():
    """A checkpointed block returns no keys and values: decoding in training mode with gradients on
    got an empty cache, and the next cached call failed (IndexError). Decoding runs blocks whole."""
    model = small(gradient_checkpointing=True).train()
    ids = torch.randint(0, 101, (1, 5))
    _, cache = model.forward_with_cache(ids[:, :4])
    assert len(cache) == 2
    last, _ = model.forward_with_cache(ids[:, 4:], cache)
    whole, _ = model(ids)
    torch.testing.assert_close(last[:, -1], whole[:, -1])


def test_training_flops_are_six_per_parameter_and_token_plus_attentions_by_hand():
    """Kaplan et al.'s C: 6 x N per token, N without embeddings (2 blocks of 12,704 and the final
    LayerNorm's 64, counted by hand), plus attention's 6 x layers x context x width per token; a
    recurrent model has no attention term."""
    model = small()  # 2 layers, width 32, context 64, the output matrix tied to the embedding
    block = 2 * 32 + (32 * 96 + 96) + (32 * 32 + 32) + 2 * 32 + (32 * 128 + 128) + (128 * 32 + 32)
    assert parameter_counts(model)[1] == 2 * block + 2 * 32 == 25_472
    assert training_flops(model, 10) == (6 * 25_472 + 6 * 2 * 64 * 32) * 10
    lstm = build_model({"name": "lstm", "embedding_size": 16, "hidden_size": 16, "num_layers": 1}, vocab_size=50)
    assert training_flops(lstm, 10) == 6 * parameter_counts(lstm)[1] * 10
