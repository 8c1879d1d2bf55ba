"""Every shipped option composes and validates; bad input is one line naming the setting."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import CONF_DIR, run_lmexp
from lmexp.cli import compose
from lmexp.config import GROUPS, PRESETS, REGISTRIES, load_settings, schema_of
from lmexp.data.corpora import CORPORA
from lmexp.data.tokenizers import make_tokenizer
from lmexp.options.embedding import EMBEDDINGS
from lmexp.errors import ConfigError

OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))]


def compose_config(*overrides):
    return compose(list(overrides))  # as every entry point composes: mistakes are one-line ConfigErrors


def test_every_group_has_a_folder_with_options():
    assert set(GROUPS) | set(PRESETS) | {"hydra"} == {p.name for p in CONF_DIR.iterdir() if p.is_dir()}
    assert all(any(g == group for g, _ in OPTIONS) for group in GROUPS)


def test_the_yaml_options_reach_every_registered_option():
    """The parametrized tests below run once per YAML file: this makes sure that list is the
    whole of what the code offers (an empty or partial list would pass them silently)."""
    assert set(REGISTRIES) < set(GROUPS)
    for group, registry in REGISTRIES.items():
        reached = {name for g, option in OPTIONS if g == group for name in chosen_names(group, option)}
        assert reached == set(registry), group


def chosen_names(group: str, option: str) -> list[str]:
    """The registered names an option file chooses: one, or for the logger group (which maps each
    chosen logger to its settings: logger=[wandb,tensorboard]) as many as it holds."""
    node = compose_config(f"{group}={option}")[group]
    return [settings["name"] for settings in (node or {}).values()] if group == "logger" else [node["name"]]


@pytest.mark.parametrize("group,option", [(g, o) for g, o in OPTIONS if g != "callbacks" and (g, o) != ("logger", "none")])
def test_each_option_names_where_its_schema_is(group, option):
    """The YAML option's comment names its schema's class and file: they must be that option's."""
    import importlib
    import re

    text = (CONF_DIR / group / f"{option}.yaml").read_text()
    named = re.search(r"Every setting and its default: (\w+) in (lmexp/[\w/]+)\.py", text)
    assert named, f"conf/{group}/{option}.yaml does not name its schema"
    cls, module = named.group(1), named.group(2).replace("/", ".")
    node = compose_config(f"{group}={option}")[group]
    schema = schema_of(group, chosen_names(group, option)[0] if group == "logger" else node.get("name"))
    assert (schema.__name__, schema.__module__) == (cls, module)
    assert getattr(importlib.import_module(module), cls) is schema


# Options that need a file of the user's: (setting, what the setting points at).
NEEDS_FILES = {
    ("tokenizer", "gpt2"): ("tokenizer.path", "."),
    ("embedding", "pretrained"): ("embedding.path", "vectors.txt"),
    ("data", "text"): ("data.path", "input.txt"),
}


@pytest.mark.parametrize("group,option", OPTIONS)
def test_option_composes_and_validates(group, option, tmp_path):
    """Every option composes and validates; one that needs a file names it (null is refused
    here), but the file is not opened until the run reads it."""
    overrides = [f"{group}={option}"]
    if (group, option) in NEEDS_FILES:
        key, target = NEEDS_FILES[group, option]
        with pytest.raises(ConfigError, match=f"^{key}=null: must be"):
            load_settings(compose_config(*overrides))
        overrides.append(f"{key}={tmp_path / 'not-made-yet' / target}")
    cfg = compose_config(*overrides)
    settings = load_settings(cfg)
    if group == "logger":
        assert list(settings.logger) == ([] if option == "none" else [option])  # file name and registered name agree
    elif "name" in cfg[group] and group != "data":  # data.name may pick a size: wikitext -> wikitext-2
        assert settings.names[group] == option


def open_files(settings, tmp_path):
    """What a run does first with each option's file: read it."""
    make_tokenizer(settings.tokenizer).split("a line")
    if settings.embedding.name == "pretrained":
        EMBEDDINGS.option("pretrained").make(None, settings.embedding, None)
    CORPORA.option(settings.data.name).make(settings.data, tmp_path / "cache")


@pytest.mark.parametrize("group,option", sorted(NEEDS_FILES))
def test_a_missing_file_is_one_line_where_it_is_opened(group, option, tmp_path):
    """Settings are checked without touching files (a checkpoint must load where they are
    gone); the file is checked when the run opens it, in one line naming the setting."""
    key, target = NEEDS_FILES[group, option]
    settings = load_settings(compose_config(f"{group}={option}", f"{key}={tmp_path / 'absent' / target}"))
    with pytest.raises(ConfigError, match=f"^{key}=") as error:
        open_files(settings, tmp_path)
    assert "\n" not in str(error.value)


def test_defaults_are_the_embedded_lstm_run():
    settings = load_settings(compose_config())
    assert settings.names == {"data": "tiny", "tokenizer": "word", "embedding": "learned", "model": "lstm",
                              "optimizer": "adamw", "scheduler": "constant"}
    assert list(settings.logger) == ["wandb"]
    assert settings.model.name == "lstm"


@pytest.mark.parametrize("override,message", [
    ("regularization.dropout=1.5", "regularization.dropout=1.5: must be in [0, 1)"),
    ("data.batch_size=0", "data.batch_size=0: must be a positive integer"),
    ("trainer.max_epochs=-2", "trainer.max_epochs=-2: must be a positive integer, or -1"),
    ("optimizer.lr=fast", "optimizer.lr=fast: must be of type float"),
    ("seed=-1", "seed=-1: must be an integer from 0 to 4294967295"),
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


def test_resolved_config_round_trips_through_plain_containers():
    """A checkpoint stores the config as plain containers: read back, every setting is the same."""
    cfg = compose_config("model=gpt2", "model.size=tiny", "optimizer=sgd", "regularization=l2", "+trainer.benchmark=true")
    plain = OmegaConf.to_container(cfg, resolve=True)
    again = load_settings(plain)
    assert again == load_settings(cfg)
    assert again.model.size == "tiny" and again.optimizer.name == "sgd" and again.regularization.l2 == 1e-6
    assert again.trainer.extra == {"benchmark": True}


def test_a_missing_file_is_refused_before_a_run_folder_is_made(tmp_path, cache_dir):
    """Settings never open files, but training checks every file it will read before it starts."""
    result = run_lmexp(["data=text", f"data.path={tmp_path / 'absent.txt'}"], cwd=tmp_path, cache_dir=cache_dir,
                       timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [f"lmexp: error: data.path={tmp_path / 'absent.txt'}: must be an existing text file or folder "
                     f"of .txt files"]
    assert not (tmp_path / "outputs").exists()


def test_the_cache_folder_is_one_that_exists_or_can_be_made(tmp_path):
    from lmexp.config import PathsConfig

    assert PathsConfig(str(tmp_path / "new" / "cache")).cache() == tmp_path / "new" / "cache"  # the run makes it
    assert PathsConfig("/proc/1").cache() == Path("/proc/1")  # a folder no one may write in: a read-only cache is read
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=rf"^paths.cache_dir={tmp_path}/file/cache: {tmp_path}/file is a file, not a "
                                          r"folder; set paths.cache_dir \(or LMEXP_CACHE, its default\) to a folder$"):
        PathsConfig(str(tmp_path / "file" / "cache")).cache()
    with pytest.raises(ConfigError, match=r"^paths.cache_dir=/proc/1/cache: no folder can be made in /proc/1 \(.+\); "
                                          r"set paths.cache_dir \(or LMEXP_CACHE, its default\) to a folder you may "
                                          r"write in$"):
        PathsConfig("/proc/1/cache").cache()


def test_a_config_stored_with_one_flat_logger_still_loads():
    """Runs and checkpoints made when logger= chose one logger stored its settings flat
    (logger.mode): they resume and evaluate as before, with that one logger."""
    from omegaconf import OmegaConf

    stored = OmegaConf.to_container(compose_config(), resolve=True)
    stored["logger"] = {"name": "wandb", "project": "mine", "entity": None, "mode": "offline", "group": None, "tags": []}
    (chosen,) = load_settings(stored).logger.items()
    assert chosen[0] == "wandb" and (chosen[1].project, chosen[1].mode) == ("mine", "offline")
    stored["logger"] = {"name": "none"}
    assert load_settings(stored).logger == {}


def test_a_name_of_the_same_kind_as_its_option_is_taken():
    """config.check_option_names refuses a name whose settings are another kind's (model=lstm
    model.name=gpt2: tests/test_bad_inputs.py); names that take the same settings stay open,
    cosine and linear too, two classes with the same fields (a review found it refused)."""
    for overrides, group, name in ((["scheduler=cosine", "scheduler.name=linear"], "scheduler", "linear"),
                                   (["model=lstm", "model.name=gru"], "model", "gru"),
                                   (["data=wikitext", "data.name=wikitext-103"], "data", "wikitext-103")):
        assert getattr(load_settings(compose(overrides)), group).name == name


def test_seed_zero_is_taken():
    """seed=0 is one of numpy's seeds (the check's own message: an integer from 0 to 4294967295)."""
    assert load_settings(compose(["seed=0"])).seed == 0
    with pytest.raises(ConfigError, match=r"^seed=-1: must be an integer from 0"):
        load_settings(compose(["seed=-1"]))


def test_an_effective_batch_the_processes_cannot_share_is_refused():
    """Two processes cannot share 5 rows a step: refused, not 2 rows each (4 a step)."""
    with pytest.raises(ConfigError, match=r"^data\.effective_batch_size=5: must be a multiple of the number of "
                                          r"processes \(2\)$"):
        load_settings(compose(["trainer=ddp_cpu", "data.effective_batch_size=5", "data.batch_size=auto"]))


def test_an_accumulation_that_agrees_with_the_effective_batch_is_taken():
    settings = load_settings(compose(["data.effective_batch_size=32", "data.batch_size=8",
                                      "trainer.accumulate_grad_batches=4"]))
    assert settings.trainer.accumulate_grad_batches == 4


def test_auto_with_an_accumulation_of_its_own_is_refused():
    with pytest.raises(ConfigError, match=r"^trainer\.accumulate_grad_batches=3: data\.batch_size=auto sets it from "
                                          r"data\.effective_batch_size=32; leave it at 1$"):
        load_settings(compose(["data.effective_batch_size=32", "data.batch_size=auto",
                               "trainer.accumulate_grad_batches=3"]))


def test_a_config_without_its_schemas_loads():
    """A stored config made a DictConfig again (no dataclass types: OmegaConf.create) loads."""
    from omegaconf import OmegaConf

    from lmexp.config import plain_config

    cfg = OmegaConf.create(plain_config(compose(["model=gpt2"])))
    assert load_settings(cfg).model.name == "gpt2"


def test_plain_config_of_a_dict_leaves_out_hydras_node():
    from lmexp.config import plain_config

    assert plain_config({"seed": 1, "hydra": {"run": {"dir": "x"}}}) == {"seed": 1}


@pytest.mark.parametrize("override, message", [
    ("data.batch_size=true", "data.batch_size=true: must be a positive integer, or auto"),
    ("callbacks.checkpoint.every_n_steps=true", "callbacks.checkpoint.every_n_steps=true: must be a positive integer"),
    ("+callbacks.foo._target_=''", "callbacks.foo._target_='': must be the class path of a Lightning callback"),
])
def test_a_boolean_or_empty_value_is_refused_as_written(override, message):
    """YAML's true is no number (Python counts it as 1), and is shown as it was written; an empty
    _target_ names no callback."""
    with pytest.raises(ConfigError) as refused:
        load_settings(compose([override]))
    assert str(refused.value).startswith(message), str(refused.value)


def test_a_bad_item_of_a_list_names_the_items_type():
    with pytest.raises(ConfigError, match=r"^optimizer\.betas\[1\]=abc: must be of type float$"):
        load_settings(compose(["optimizer=adam", "optimizer.betas=[0.9,abc]"]))


@pytest.mark.parametrize("stride", [0, -3])
def test_an_evaluation_stride_below_one_is_refused_with_the_settings(stride):
    """eval.stride=0 was taken, and read as the block size by the windows (``stride or block``)."""
    with pytest.raises(ConfigError, match=rf"^eval\.stride={stride}: must be a positive integer, or null$"):
        load_settings(compose(["model=gpt2", f"eval.stride={stride}"]))
