"""Every shipped option composes and validates; bad input is one line naming the setting."""

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import CONF_DIR, run_lmexp
from lmexp.config import GROUPS, load_settings
from lmexp.errors import ConfigError

OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))]


def compose_config(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_every_group_has_a_folder_with_options():
    assert set(GROUPS) == {p.name for p in CONF_DIR.iterdir() if p.is_dir()}
    assert all(any(g == group for g, _ in OPTIONS) for group in GROUPS)


# Options that need a file of the user's: (setting, files to create, what the setting points at).
NEEDS_FILES = {
    ("tokenizer", "gpt2"): ("tokenizer.path", ["vocab.json", "merges.txt"], "."),
    ("embedding", "pretrained"): ("embedding.path", ["vectors.txt"], "vectors.txt"),
    ("data", "text"): ("data.path", ["input.txt"], "input.txt"),
}


@pytest.mark.parametrize("group,option", OPTIONS)
def test_option_composes_and_validates(group, option, tmp_path):
    overrides = [f"{group}={option}"]
    if (group, option) in NEEDS_FILES:
        key, files, target = NEEDS_FILES[group, option]
        with pytest.raises(ConfigError, match=f"{key}"):
            load_settings(compose_config(*overrides))
        for name in files:
            (tmp_path / name).write_text("")
        overrides.append(f"{key}={(tmp_path / target).resolve()}")
    cfg = compose_config(*overrides)
    settings = load_settings(cfg)
    if "name" in cfg[group] and group != "data":  # data.name may pick a size: wikitext -> wikitext-2
        assert settings.names[group] == option  # file name and registered name agree


def test_defaults_are_the_embedded_lstm_run():
    settings = load_settings(compose_config())
    assert settings.names == {"data": "tiny", "tokenizer": "word", "embedding": "learned", "model": "lstm",
                              "optimizer": "adamw", "scheduler": "constant", "logger": "wandb"}
    assert settings.model.cell == "lstm"


@pytest.mark.parametrize("override,message", [
    ("regularization.dropout=1.5", "regularization.dropout=1.5: must be in [0, 1)"),
    ("data.batch_size=0", "data.batch_size=0: must be a positive integer"),
    ("trainer.max_epochs=-2", "trainer.max_epochs=-2: must be a positive integer, or -1"),
    ("optimizer.lr=fast", "optimizer.lr=fast: must be of type float"),
    ("seed=-1", "seed=-1: must be a non-negative integer"),
])
def test_bad_values_rejected_in_process(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_settings(compose_config(override))


def test_unknown_key_added_with_plus_is_caught_by_the_schema():
    with pytest.raises(ConfigError, match=r"model.hiden_size is not a setting .* did you mean model.hidden_size"):
        load_settings(compose_config("+model.hiden_size=3"))


def test_unknown_trainer_argument_is_caught():
    with pytest.raises(ConfigError, match="trainer.max_epoch is not a setting"):
        load_settings(compose_config("+trainer.max_epoch=3"))


def test_extra_lightning_arguments_pass_through():
    settings = load_settings(compose_config("+trainer.benchmark=true"))
    assert settings.trainer.kwargs()["benchmark"] is True


@pytest.mark.parametrize("override,expected", [
    ("model=transformerz", "model=transformerz is not an option; choose one of: "),
    ("model.hiden_size=3", "model.hiden_size is not a setting; did you mean model.hidden_size?"),
    ("regularization.dropout=1.5", "regularization.dropout=1.5: must be in [0, 1)"),
    ("data.batch_size=0", "data.batch_size=0: must be a positive integer"),
    ("trainer.max_epochs=-2", "trainer.max_epochs=-2: must be a positive integer, or -1 for no limit"),
    ("data.bptt=", "data.bptt='': must be of type int"),
    ("trainer.detect_anomaly=true", "add it with +trainer.detect_anomaly=<value>"),
])
def test_bad_input_on_the_command_line_is_one_line(tmp_path, cache_dir, override, expected):
    result = run_lmexp([override], cwd=tmp_path, cache_dir=cache_dir, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lmexp: error: ") and expected in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "outputs").exists()  # nothing started


def test_resolved_config_round_trips_through_plain_containers():
    cfg = compose_config()
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert load_settings(OmegaConf.create(plain)).names == load_settings(cfg).names
