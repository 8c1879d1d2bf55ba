"""Optimizers, learning-rate schedules and the L1/L2 penalties: real models, one real step."""

import csv
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import CONF_DIR, SMALL, train_here
from lmexp.config import load_settings
from lmexp.options.regularization import RegularizationConfig
from lmexp.schema import parse
from lmexp.errors import ConfigError
from lmexp.models import build_model
from lmexp.module import LanguageModelModule
from lmexp.optim import build_adam, build_adamw, build_sgd, decay_groups, parameter_kinds
from lmexp.options.optimizer import OPTIMIZERS, AdamConfig, AdamWConfig, SGDConfig
from lmexp.options.trainer import cpu_has_bf16
from lmexp.options.scheduler import SCHEDULERS, CosineConfig, LinearConfig, PlateauConfig, StepConfig
from lmexp.regularization import penalties
from lmexp.schedulers import build_cosine, build_linear, build_plateau, build_step


def lstm(**overrides):
    node = {"name": "lstm", "embedding_size": 6, "hidden_size": 8, "num_layers": 1, "tie_weights": True, **overrides}
    torch.manual_seed(0)
    return build_model(node, vocab_size=11, dropout=0.0)


def transformer():
    node = {"name": "transformer", "d_model": 8, "n_head": 2, "n_layer": 1, "d_ff": 16, "block_size": 4,
            "positions": "learned"}
    torch.manual_seed(0)
    return build_model(node, vocab_size=11, dropout=0.0)


def reg(**kw):
    return parse(RegularizationConfig, kw, "regularization")


# The tied LSTM (embedding 6 != hidden 8, so a projection): what each parameter is, written out by hand.
LSTM_KINDS = {
    "embedding.weight": "embedding",  # also decoder.weight: the same tensor, listed once
    "layers.0.weight_ih_l0": "weight", "layers.0.weight_hh_l0": "weight", "layers.0.bias_ih_l0": "bias",
    "layers.0.bias_hh_l0": "bias",
    "projection.weight": "weight", "projection.bias": "bias", "decoder.bias": "bias",
}


def test_parameter_kinds_of_a_tied_lstm():
    model = lstm()
    assert model.decoder.weight is model.embedding.weight
    assert {name: kind for name, _, kind in parameter_kinds(model)} == LSTM_KINDS


def test_parameter_kinds_of_a_transformer():
    model = transformer()
    kinds = {name: kind for name, _, kind in parameter_kinds(model)}
    assert kinds["embedding.weight"] == kinds["position_embedding.weight"] == "embedding"
    norm_gains = [n for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)]
    assert norm_gains and all(kinds[f"{n}.weight"] == "norm" and kinds[f"{n}.bias"] == "bias" for n in norm_gains)
    assert "bias" in {kinds[n] for n in kinds if n.endswith("in_proj_bias")}
    assert {kinds[n] for n, p in model.named_parameters() if p.dim() >= 2 and "embedding" not in n} == {"weight"}


def test_a_one_dimensional_parameter_outside_a_norm_layer_is_not_decayed():
    """parameter_kinds: "any other 1-D parameter" (a gain or scale of a model's own) is a norm gain,
    so the default exclude keeps weight decay and the penalties off it."""
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4, bias=False)
            self.scale = nn.Parameter(torch.ones(4))

    model = Scaled()
    assert {name: kind for name, _, kind in parameter_kinds(model)} == {"proj.weight": "weight", "scale": "norm"}
    decayed, kept = decay_groups(model, 0.1)
    assert decayed["params"] == [model.proj.weight] and kept["params"] == [model.scale]


def included(model, exclude):
    return [dict(model.named_parameters())[n] for n, k in LSTM_KINDS.items() if k not in exclude]


@pytest.mark.parametrize("exclude", [["bias", "norm"], ["bias", "norm", "embedding"], []])
def test_l2_term_is_lambda_times_the_sum_of_squares_of_the_included_parameters(exclude):
    model = lstm()
    terms = penalties(model, reg(l2=0.3, exclude=exclude))
    assert set(terms) == {"l2"}  # l1 is zero: left out
    expected = 0.3 * sum((p.detach() ** 2).sum() for p in included(model, exclude))
    assert torch.allclose(terms["l2"], expected)
    # the tied matrix counts once: adding the decoder's copy again would change the sum
    assert not torch.allclose(terms["l2"], expected + 0.3 * (model.decoder.weight.detach() ** 2).sum())


def test_l1_gradient_is_lambda_times_the_sign_and_excluded_parameters_get_none():
    model = lstm()
    terms = penalties(model, reg(l1=0.01, exclude=["bias", "norm"]))
    assert set(terms) == {"l1"}
    terms["l1"].backward()
    for name, p in model.named_parameters():
        if LSTM_KINDS[name] == "bias":
            assert p.grad is None
        else:
            assert torch.allclose(p.grad, 0.01 * torch.sign(p.detach()))


def test_both_zero_means_no_terms():
    assert penalties(lstm(), reg(dropout=0.1)) == {}
    terms = penalties(lstm(), reg(l1=1e-3, l2=1e-3))
    assert set(terms) == {"l1", "l2"}


@pytest.mark.parametrize("values,message", [
    ({"l1": -1.0}, "regularization.l1=-1.0: must be >= 0"),
    ({"l2": -0.5}, "regularization.l2=-0.5: must be >= 0"),
    ({"exclude": ["biases"]}, "regularization.exclude=['biases']: must be a list of parameter kinds"),
])
def test_bad_regularization_rejected(values, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        reg(**values)


def test_bad_optimizer_settings_rejected():
    with pytest.raises(ConfigError, match="optimizer.nesterov=true: must be false when optimizer.momentum=0"):
        parse(SGDConfig, {"nesterov": True}, "optimizer")
    with pytest.raises(ConfigError, match="optimizer.exclude"):
        parse(AdamWConfig, {"exclude": ["gains"]}, "optimizer")


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("build,config", [
    (build_adamw, AdamWConfig(lr=0.1, weight_decay=0.5)),
    (build_adam, AdamConfig(lr=0.1, l2_in_gradient=0.5)),
    (build_sgd, SGDConfig(lr=0.1, weight_decay=0.5)),
])
@pytest.mark.parametrize("exclude", [["bias", "norm"], ["bias", "norm", "embedding"]])
def test_decay_changes_only_the_included_parameters_when_the_data_gradient_is_zero(build, config, exclude):
    model = lstm()
    config.exclude = exclude
    optimizer = build(model, config)
    before = snapshot(model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # the data says nothing: only decay can move a weight
    optimizer.step()
    for name, p in model.named_parameters():
        if LSTM_KINDS[name] in exclude:
            assert torch.equal(p.detach(), before[name]), name
        else:
            assert not torch.allclose(p.detach(), before[name]), name
    if build is build_adamw:  # decoupled: exactly p * (1 - lr * weight_decay)
        assert torch.allclose(model.layers[0].weight_hh_l0.detach(), before["layers.0.weight_hh_l0"] * (1 - 0.1 * 0.5))


def test_decay_groups_cover_every_parameter_once():
    model = lstm()
    groups = decay_groups(model, 0.1, ["bias", "norm"])
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters()) and len(ids) == len(set(ids))
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]


def test_coupled_l2_in_adam_and_decoupled_decay_in_adamw_differ_and_match_the_formulas():
    p0, g = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 0.1]])
    lr, wd, eps = 0.01, 0.3, 1e-8

    def one_step(build, config):
        model = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            model.weight.copy_(p0)
        optimizer = build(model, config)
        model.weight.grad = g.clone()
        optimizer.step()
        return model.weight.detach()

    adam = one_step(build_adam, AdamConfig(lr=lr, eps=eps, l2_in_gradient=wd))
    adamw = one_step(build_adamw, AdamWConfig(lr=lr, eps=eps, weight_decay=wd))
    # Adam's first step, bias-corrected: m_hat = g', v_hat = g'^2, with g' = g + wd * p (coupled).
    g_coupled = g + wd * p0
    assert torch.allclose(adam, p0 - lr * g_coupled / (g_coupled.abs() + eps), atol=1e-7)
    # AdamW: p * (1 - lr * wd), then the Adam step on g alone (decoupled).
    assert torch.allclose(adamw, p0 * (1 - lr * wd) - lr * g / (g.abs() + eps), atol=1e-7)
    assert not torch.allclose(adam, adamw, atol=1e-4)
    # The hand numbers: g' = [0.8, -0.5] -> Adam moves each weight by lr against sign(g').
    assert torch.allclose(adam, torch.tensor([[0.99, -1.99]]), atol=1e-6)
    assert torch.allclose(adamw, torch.tensor([[0.987, -2.004]]), atol=1e-6)


def test_sgd_momentum_and_nesterov_reach_torch():
    optimizer = build_sgd(lstm(), SGDConfig(lr=0.5, momentum=0.9, nesterov=True))
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"]) == (0.5, 0.9, True)
    assert set(OPTIMIZERS) >= {"sgd", "adam", "adamw"}


def sgd(lr=1.0):
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)


def test_plateau_divides_the_lr_by_the_factor_when_validation_gets_worse():
    optimizer = sgd(lr=1.0)
    spec = build_plateau(optimizer, PlateauConfig())
    assert spec["monitor"] == "val/ppl" and spec["interval"] == "epoch"
    spec["scheduler"].step(100.0)
    spec["scheduler"].step(90.0)  # better: kept
    assert optimizer.param_groups[0]["lr"] == 1.0
    spec["scheduler"].step(95.0)  # worse, patience 0: cut at once
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.25)
    spec["scheduler"].step(96.0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0625)


def lrs(optimizer, scheduler, steps):
    out = []
    for _ in range(steps + 1):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_cosine_schedule_matches_the_formula():
    peak, warmup, total, floor = 2.0, 10, 110, 0.1
    optimizer = sgd(lr=peak)
    spec = build_cosine(optimizer, CosineConfig(warmup_steps=warmup, min_lr_ratio=floor), total_steps=total)
    assert spec["interval"] == "step" and "monitor" not in spec
    lr = lrs(optimizer, spec["scheduler"], total + 5)
    assert lr[0] == 0.0  # step 0: warm-up starts from nothing
    assert lr[5] == pytest.approx(peak * 5 / warmup)
    assert lr[warmup] == pytest.approx(peak)  # end of warm-up: the peak
    assert lr[warmup + 50] == pytest.approx(peak * (floor + (1 - floor) * 0.5))  # halfway: cos(pi/2) = 0
    assert lr[total] == pytest.approx(peak * floor)  # the end
    assert lr[total + 5] == pytest.approx(peak * floor)  # and it stays there
    assert all(a >= b for a, b in zip(lr[warmup:], lr[warmup + 1:]))


def test_linear_and_step_schedules():
    optimizer = sgd(lr=1.0)
    spec = build_linear(optimizer, LinearConfig(warmup_steps=2, min_lr_ratio=0.0), total_steps=12)
    assert lrs(optimizer, spec["scheduler"], 12) == pytest.approx([0.0, 0.5] + [1 - k / 10 for k in range(11)])
    optimizer = sgd(lr=1.0)
    spec = build_step(optimizer, StepConfig(step_size=2, gamma=0.5))
    assert spec["interval"] == "epoch"
    assert lrs(optimizer, spec["scheduler"], 4) == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.25])
    # Zaremba et al.'s: 4 epochs at the full rate, then halved every epoch
    optimizer = sgd(lr=1.0)
    spec = build_step(optimizer, StepConfig(step_size=1, gamma=0.5, first_cut=4))
    assert lrs(optimizer, spec["scheduler"], 7) == pytest.approx([1.0] * 4 + [0.5, 0.25, 0.125, 0.0625])


def test_decaying_schedules_need_a_run_with_an_end():
    with pytest.raises(ConfigError, match="scheduler=cosine .* set trainer.max_steps"):
        build_cosine(sgd(), CosineConfig(), total_steps=math.inf)
    assert set(SCHEDULERS) == {"constant", "cosine", "linear", "step", "plateau"}


def composed(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["model.embedding_size=6", "model.hidden_size=8", "model.num_layers=1",
                                           *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


VOCAB = [f"w{i}" for i in range(11)]


def test_module_returns_the_optimizer_and_its_schedule():
    module = LanguageModelModule(composed("scheduler=plateau", "optimizer=sgd"), VOCAB)
    out = module.configure_optimizers()
    assert isinstance(out["optimizer"], torch.optim.SGD)
    assert out["lr_scheduler"]["monitor"] == "val/ppl" and out["lr_scheduler"]["interval"] == "epoch"
    out = LanguageModelModule(composed(), VOCAB).configure_optimizers()  # the default: constant, per step
    assert isinstance(out["optimizer"], torch.optim.AdamW) and out["lr_scheduler"]["interval"] == "step"


@pytest.mark.filterwarnings("ignore::UserWarning")  # self.log without a Trainer
@pytest.mark.parametrize("preset,terms", [("dropout", set()), ("none", set()), ("l1", {"l1"}), ("l2", {"l2"})])
def test_training_step_returns_cross_entropy_plus_the_penalties(preset, terms):
    module = LanguageModelModule(composed(f"regularization={preset}"), VOCAB)
    settings = load_settings(OmegaConf.create(composed(f"regularization={preset}")))
    module.model.eval()  # no dropout: the same forward twice
    x, y = torch.randint(0, 11, (2, 5)), torch.randint(0, 11, (2, 5))
    total = module.training_step((x, y), 0)
    module._state.clear()
    logits, _ = module.model(x)
    extra = penalties(module.model, settings.regularization)
    assert set(extra) == terms
    assert torch.allclose(total, F.cross_entropy(logits.flatten(0, 1), y.flatten()) + sum(extra.values()))


def test_end_to_end_cosine_sgd_with_l2_logs_the_penalty_and_a_changing_lr(tmp_path, cache_dir):
    args = [*SMALL, "scheduler=cosine", "scheduler.warmup_steps=2", "regularization=l2", "optimizer=sgd",
            "trainer.max_steps=4", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
            "trainer.log_every_n_steps=1", "logger=csv"]
    train_here(args, tmp_path / "run", cache_dir)
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    l2 = [float(r["train/l2"]) for r in rows if r.get("train/l2")]
    lr = [float(r["train/lr"]) for r in rows if r.get("train/lr")]
    assert l2 and all(v > 0 for v in l2)
    assert len(lr) == 4 and len(set(lr)) > 1
    # Warm-up 2 of 4 steps from 0 to optimizer.lr=1.0, then cosine down to min_lr_ratio=0.1: the
    # rate each of steps 0..3 used (the schedule's value before it steps).
    assert lr == pytest.approx([0.0, 0.5, 1.0, 0.1 + 0.9 * 0.5])


@pytest.mark.parametrize("build, config", [
    (build_adamw, AdamWConfig(lr=0.01, weight_decay=0.1)),
    (build_adam, AdamConfig(lr=0.01, l2_in_gradient=0.01)),
    (build_sgd, SGDConfig(lr=0.5, momentum=0.9, nesterov=True, weight_decay=0.01)),
])
def test_fused_steps_match_the_loop(build, config):
    """optimizer.fused=null takes torch's fused kernel on this CPU; ten steps of it land where
    ten steps of torch's loop (fused=false) do."""
    from dataclasses import replace

    x, y = torch.randint(11, (4, 5)), torch.randint(11, (4, 5))
    finals = {}
    for fused in (None, False):
        model = lstm()
        optimizer = build(model, replace(config, fused=fused))
        assert optimizer.param_groups[0]["fused"] is (True if fused is None else None)  # the path under test
        for _ in range(10):
            logits, _ = model(x)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        finals[fused] = torch.cat([p.detach().flatten() for p in model.parameters()])
    start = torch.cat([p.detach().flatten() for p in lstm().parameters()])
    assert not torch.allclose(finals[None], start)  # the steps moved the weights
    torch.testing.assert_close(finals[None], finals[False], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5, 0.65])
def test_lmexp_dropout_drops_at_the_rate_keeps_each_expectation_and_passes_the_masks_gradient(p):
    from lmexp.regularization import Dropout

    torch.manual_seed(0)
    dropout = Dropout(p).train()
    x = torch.ones(500, 800, requires_grad=True)  # 400,000 elements: the kept share within 0.25%
    y = dropout(x)
    kept = y > 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.0025
    assert torch.allclose(y[kept], torch.tensor(1 / (1 - p)), rtol=1e-4)  # p rounded to 1/65,536
    assert abs(y.mean().item() - 1) < 0.006
    y.backward(torch.full_like(y, 2.0))
    assert torch.equal(x.grad, 2 * y.detach())  # the gradient goes where the input was kept, scaled alike
    # Neighbouring elements share a 64-bit draw: their masks must still be independent.
    pairs = kept.flatten().view(-1, 4)
    both = (pairs[:, 0] & pairs[:, 1]).float().mean().item()
    assert abs(both - (1 - p) ** 2) < 0.005
    again = dropout(x.detach())
    assert not torch.equal(again > 0, kept)  # a new mask each call
    torch.manual_seed(0)
    assert torch.equal(dropout(x.detach()), y.detach())  # the same for the same seed
    assert torch.equal(dropout.eval()(x), x)


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bfloat16 arithmetic (AVX-512 BF16 or AMX)")
def test_mixed_precision_clips_through_torchs_loop_and_refuses_a_fused_optimizer(tmp_path, cache_dir):
    """trainer=gpu trains in bf16-mixed and clips gradients (0.5 by default): Lightning refuses to
    clip the gradients of a fused optimizer under mixed precision, at the first step, so the
    default (optimizer.fused=null) takes torch's loop there, and fused=true is refused in one line.
    bf16-mixed on this CPU takes Lightning's same precision plugin as on a GPU."""
    args = [*SMALL, "trainer.precision=bf16-mixed", "trainer.max_steps=3", "trainer.max_epochs=1",
            "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "trainer.num_sanity_val_steps=0"]
    results = train_here(args, tmp_path / "run", cache_dir)
    assert results["steps"] == 3 and math.isfinite(results["test_ppl"])
    with pytest.raises(ConfigError, match="optimizer.fused=true: Lightning does not clip the gradients of a fused"):
        train_here([*args, "optimizer.fused=true"], tmp_path / "fused", cache_dir)


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bfloat16 arithmetic (AVX-512 BF16 or AMX)")
def test_bf16_mixed_on_a_cpu_trains_as_float32_does_to_bfloat16s_tolerance(tmp_path, cache_dir):
    """The README's fast path for a CPU with bfloat16: the same losses as float32 to within
    bfloat16's rounding (8 bits of mantissa in the products), and not the same to the digit,
    which they would be if autocast had not reached the products."""
    args = [*SMALL, "regularization.dropout=0", "trainer.max_steps=6", "trainer.max_epochs=1",
            "trainer.log_every_n_steps=1", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
            "trainer.num_sanity_val_steps=0"]
    losses = {}
    for precision in ("32-true", "bf16-mixed"):
        results = train_here([*args, f"trainer.precision={precision}"], tmp_path / precision, cache_dir)
        rows = csv.DictReader((tmp_path / precision / "metrics.csv").open())
        losses[precision] = [float(r["train/loss"]) for r in rows if r.get("train/loss")] + [results["test_ppl"]]
    assert len(losses["32-true"]) == 7
    assert losses["bf16-mixed"] == pytest.approx(losses["32-true"], rel=2e-3)
    assert losses["bf16-mixed"] != losses["32-true"]


def test_plateau_threshold_is_relative_and_min_lr_is_a_floor():
    """scheduler.threshold is a relative improvement (threshold_mode rel): with 0.05, 100 -> 97 is
    only 3% better, so the rate is cut; under an absolute threshold 97 < 100 - 0.05 would count.
    min_lr bounds the cuts."""
    from lmexp.options.scheduler import PlateauConfig
    from lmexp.schedulers import build_plateau

    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    scheduler = build_plateau(optimizer, PlateauConfig(threshold=0.05, min_lr=0.1))["scheduler"]
    scheduler.step(100.0)
    scheduler.step(97.0)  # under 5% better: no improvement
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.25)
    scheduler.step(90.0)  # 7% better than 97's best (100): kept
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.25)
    scheduler.step(95.0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)  # 0.0625, floored at min_lr


def test_constant_schedule_warms_up_linearly_then_holds():
    from lmexp.options.scheduler import ConstantConfig
    from lmexp.schedulers import build_constant

    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=2.0)
    scheduler = build_constant(optimizer, ConstantConfig(warmup_steps=4))["scheduler"]
    seen = []
    for _ in range(7):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0])


@pytest.mark.parametrize("name, warmup, total, warned", [
    ("cosine", 100, 20, " and never decays; set scheduler.warmup_steps below 20 (e.g. 2, a tenth of the run)"),
    ("linear", 20, 20, " and never decays; set scheduler.warmup_steps below 20 (e.g. 2, a tenth of the run)"),
    ("constant", 30, 20.0, "; set scheduler.warmup_steps below 20 (e.g. 2, a tenth of the run)"),
    ("cosine", 19, 20, None), ("constant", 30, None, None), ("constant", 0, 20, None),
    ("cosine", 8, 5, " and never decays; set scheduler.warmup_steps below 5 (e.g. 0, no warm-up)")])
def test_a_warmup_that_fills_the_run_is_told(name, warmup, total, warned, caplog):
    """A preset's warm-up under a smaller budget (compare_archs' 100 steps in a run of 20) never
    reaches the peak rate: told in one warning naming the setting and a length that fits."""
    weight = torch.nn.Parameter(torch.zeros(1))
    config = SCHEDULERS.option(name).config(warmup_steps=warmup)
    with caplog.at_level("WARNING", logger="lmexp"):
        SCHEDULERS.option(name).make(torch.optim.SGD([weight], lr=1.0), config, total)
    said = [r.getMessage() for r in caplog.records]
    if warned is None:
        assert said == []
    else:
        assert said == [f"scheduler.warmup_steps={warmup} is not shorter than this run's {int(total)} optimizer steps: "
                        f"the rate never reaches optimizer.lr{warned}"]


def test_linear_schedule_ends_at_its_floor():
    from lmexp.options.scheduler import LinearConfig
    from lmexp.schedulers import build_linear

    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=2.0)
    scheduler = build_linear(optimizer, LinearConfig(warmup_steps=2, min_lr_ratio=0.25), total_steps=10)["scheduler"]
    seen = []
    for _ in range(13):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # warm-up 0, 1; then 2 * (1 - 0.75 * k / 8) for k = 0..8; then the floor, 0.5
    assert seen == pytest.approx([0.0, 1.0] + [2 * (1 - 0.75 * k / 8) for k in range(9)] + [0.5, 0.5])
