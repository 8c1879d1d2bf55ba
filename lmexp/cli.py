"""The command line of every entry point (``python -m lmexp``, ``lmexp.evaluate``,
``lmexp.generate``, ``lmexp.prepare``): ``key=value`` arguments, run-config overrides in
Hydra's grammar, and one line for each mistake, naming it and the choices.

A command's own options (``ckpt=``, ``prompt=``, ...) are read as YAML scalars, except that
text options and paths keep what was typed (``prompt=1984``, ``prompt=~`` and ``pretrained=2024``
are text), and that ``1e-6`` is a number (YAML 1.1 reads it as text). Every other argument is an
override of the run config, composed by Hydra exactly as training composes it.
"""

from __future__ import annotations

import difflib
import functools
import re
import zipfile
from pathlib import Path
from typing import Any, Optional

import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lmexp.config import CONF_DIR, GROUPS, SEVERAL, schema_of
from lmexp.data.tokenizers import GPT2_TOKENIZER_FILES
from lmexp.errors import ConfigError, HelpRequested, UserError
from lmexp.options.model import HF_WEIGHTS
from lmexp.schema import show, translate
from lmexp.options.trainer import lightning_arguments


PATH_OPTIONS = ("ckpt", "pretrained")  # text, though their default is null
EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def option_value(key: str, raw: str, default: Any) -> Any:
    """An option's value as typed: text for a text option or a path, else a YAML scalar."""
    if isinstance(default, str) or key in PATH_OPTIONS:
        return raw
    if EXPONENT.fullmatch(raw.strip()):
        return float(raw)
    return yaml.safe_load(raw) if raw else ""


def parse_command_line(argv: list[str], options: dict[str, Any],
                       groups: Optional[tuple[str, ...]] = None) -> tuple[dict, list[str]]:
    """Split ``argv`` into this command's ``options`` (their defaults filled in) and run-config
    overrides, allowed for the config ``groups`` named (all when None, none when empty)."""
    values, overrides = dict(options), []
    for arg in argv:
        key, sep, raw = arg.partition("=")
        if arg in ("--help", "-h"):
            raise HelpRequested(command_help(options, groups))
        if not sep:
            raise ConfigError(f"argument {arg!r} is not key=value; options: {', '.join(options)}")
        if key in options:
            values[key] = option_value(key, raw, options[key])
        elif groups is None or key.lstrip("+~").split(".")[0] in groups:
            overrides.extend(as_typed([arg]))
        else:
            # A run-config setting (trainer=ddp_cpu) is not a misspelt option: no look-alike to suggest.
            close = [] if key.lstrip("+~").split(".")[0] in GROUPS else difflib.get_close_matches(key, list(options), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            allowed = ", ".join(options) + (", or " if options and groups else "")
            allowed += f"settings of {', '.join(groups)}" if groups else ""
            raise ConfigError(f"{key} is not an option{hint} (options: {allowed})")
    return values, overrides


def command_help(options: dict[str, Any], groups: Optional[tuple[str, ...]]) -> str:
    """What ``--help`` prints for a command that ``parse_command_line`` reads."""
    listed = [f"  {k}={show(v)}  (default)" for k, v in options.items()]
    lines = ["options, each key=value:", *(listed or ["  none"])]
    if groups is None or groups:
        lines.append(f"and any setting of {', '.join(groups) if groups else 'the run config'} "
                     f"(e.g. {(groups or ('data',))[0]}.<key>=<value>; python -m lmexp --help lists them)")
    return "\n".join(lines)


def check_model_options(ckpt: Optional[str], pretrained: Optional[str]) -> None:
    """``ckpt=`` or ``pretrained=``, exactly one, naming a file or folder that exists: checked before
    torch is imported to read it."""
    if (ckpt is None) == (pretrained is None):
        raise ConfigError("name one model: ckpt=PATH (a run's checkpoint) or pretrained=FOLDER (a Hugging Face "
                          "GPT-2 folder)")
    if ckpt is not None:
        existing_checkpoint(ckpt)
        return
    folder = Path(pretrained).expanduser()
    holds = lambda *names: all((folder / name).is_file() for name in names)  # noqa: E731
    # Here, named as given: the model's and tokenizer's own checks would name model.pretrained and tokenizer.path.
    if not (holds("config.json") and any(holds(name) for name in HF_WEIGHTS)
            and any(holds(*names) for names in GPT2_TOKENIZER_FILES)):
        raise ConfigError(f"pretrained={pretrained}: must be a local Hugging Face GPT-2 folder (config.json, "
                          f"model.safetensors or pytorch_model.bin, and the tokenizer's tokenizer.json or "
                          f"vocab.json and merges.txt)")


ZIP_HEADER = b"PK\x03\x04"


def existing_checkpoint(ckpt: str | Path) -> Path:
    """``ckpt=``: a file that exists, checked before torch is imported to read it."""
    if not str(ckpt).strip():  # Path("") is the working folder
        raise UserError("ckpt= is empty; pass ckpt=<run folder>/checkpoints/last.ckpt or a best-*.ckpt")
    path = Path(ckpt)
    if path.is_dir():
        last = path / "checkpoints" / "last.ckpt"
        hint = f"pass ckpt={last}" if last.is_file() else "pass a .ckpt file in it"
        raise UserError(f"checkpoint {path} is a folder, not a checkpoint file; {hint}")
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass ckpt=<run folder>/checkpoints/last.ckpt or a best-*.ckpt")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise UserError(f"checkpoint {path} cannot be read ({e}); make it readable (chmod a+r)") from None
    # torch.save writes a zip archive (a legacy one starts as a pickle): anything else, or a zip
    # cut short, is told now rather than after the seconds that importing torch takes.
    if not head.startswith(b"\x80") and not (head == ZIP_HEADER and zipfile.is_zipfile(path)):
        reason = ("it is empty" if not head else "it is a zip archive cut short" if head == ZIP_HEADER
                  else "it is not in torch.save's format")
        raise UserError(f"checkpoint {path} cannot be read ({reason}); it is truncated or not a checkpoint: use "
                        f"another one from the same run (last.ckpt or best-*.ckpt)")
    return path


def quoted(value: str | Path) -> str:
    """A value (a path) quoted for Hydra's override grammar: spaces and any characters kept."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def unquoted(value: str) -> str:
    """A value that :func:`quoted` wrote, as Hydra reads it; any other value as it is. A second
    DDP process is started with the first one's command line, which lmexp had already quoted."""
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return OverridesParser.create().parse_override(f"value={value}").value()
    return value


SWEEP_FLAGS = ("-m", "--multirun")


def starts_a_sweep(argv: list[str]) -> bool:
    """Whether this command line (as typed) starts a sweep: ``-m``, ``hydra.mode=MULTIRUN``, or
    an option that sets it (``experiment=scaling``, ``hparams_search=...``), whose comma lists
    are then values to sweep over, as they are after ``-m``."""
    if any(arg in SWEEP_FLAGS for arg in argv):
        return True
    mode, preset = None, False
    for arg in argv:
        key, _, value = arg.partition("=")
        if key.lstrip("+") == "hydra.mode":  # the last one given wins, over a preset's: a sweep's job
            mode = value  # started as one run (hydra.mode=RUN: its further DDP processes) stays one
        elif value and not arg.startswith("-") and _sets_multirun(key.lstrip("+~"), value):
            preset = True
    return mode == "MULTIRUN" if mode is not None else preset


@functools.cache
def _sets_multirun(group: str, option: str) -> bool:
    path = CONF_DIR / group / f"{option}.yaml"
    if "." in group or not path.resolve().is_relative_to(CONF_DIR.resolve()) or not path.is_file():
        return False  # a setting, or no option: compose names the mistake
    try:
        return OmegaConf.select(OmegaConf.load(path), "hydra.mode") == "MULTIRUN"
    except (OmegaConfBaseException, yaml.YAMLError):
        return False


def as_typed(argv: list[str], multirun: bool = False) -> list[str]:
    """Each ``key=value`` whose value Hydra's grammar cannot take bare (non-ASCII letters, quotes,
    brackets) quoted for it, so that a path works as it was typed; outside a sweep (``-m``), also
    one with commas, which would otherwise read as a list of values to sweep over."""
    parser = OverridesParser.create()
    typed = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and value and not arg.startswith("-") and not (value[0] == value[-1] and value[0] in "'\""):
            try:
                bare = parser.parse_override(arg)
                quote = not multirun and bare.is_sweep_override() and getattr(bare.value(), "simple_form", False)
            except HydraException:
                quote = True
            arg = f"{key}={quoted(value)}" if quote else arg
        typed.append(arg)
    return typed


# Entry points a user may type as the first word of python -m lmexp's command line
COMMANDS = ("evaluate", "generate", "prepare", "report")


def parse_overrides(overrides: list[str]) -> list[Override]:
    parser = OverridesParser.create()
    parsed = []
    for arg in overrides:
        key = arg.partition("=")[0].lstrip("+~")
        if arg in COMMANDS:
            raise ConfigError(f"{arg} is a command of its own: python -m lmexp.{arg} (see its --help)")
        if "=" not in arg and not arg.startswith("~") or not key:
            raise ConfigError(f"{arg}: not a setting; write key=value (model.hidden_size=512) or group=option "
                              f"(model=gpt2)")
        try:
            parsed.append(parser.parse_override(arg))
        except HydraException as e:
            why = str(e).splitlines()[0]
            raise ConfigError(f"{arg}: Hydra cannot read it ({why}); write key=value with a dotted key, "
                              f"e.g. model.hidden_size=512") from None
    return [o for o in parsed if not o.key_or_group.startswith("hydra")]


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _check_options(parsed: list[Override]) -> list[Override]:
    """The group overrides (``model=gpt2``), each naming an option that exists."""
    groups = [o for o in parsed if (CONF_DIR / o.key_or_group).is_dir()]
    for o in groups:
        value = o.value()
        if isinstance(value, list) and o.key_or_group not in SEVERAL:
            raise ConfigError(f"{o.key_or_group}=[{','.join(map(str, value))}]: a run has one {o.key_or_group}; "
                              f"to run each, sweep them: python -m lmexp -m {o.key_or_group}={','.join(map(str, value))}")
        for chosen in value if isinstance(value, list) else [value]:  # logger=[wandb,tensorboard] chooses two
            if not o.is_delete() and chosen not in choices(o.key_or_group):
                raise ConfigError(f"{o.key_or_group}={chosen} is not an option; choose one of: "
                                  f"{', '.join(choices(o.key_or_group))}")
    return groups


def compose(overrides: list[str]) -> DictConfig:
    """``conf/config.yaml`` with ``overrides``, as ``python -m lmexp`` would run it; every
    mistake in an override is one ConfigError."""
    parsed = parse_overrides(overrides)
    groups = _check_options(parsed)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        try:
            return hydra_compose("config", overrides=[o.input_line for o in parsed])
        except (HydraException, OmegaConfBaseException) as e:
            failed = e
        # Only a command line that fails is composed again, with its group choices alone, to name
        # the setting at fault and the ones it may have meant: a second composition costs as much
        # as the first (half a second).
        try:
            base = hydra_compose("config", overrides=[o.input_line for o in groups])
        except (HydraException, OmegaConfBaseException) as e:
            raise _composition_error(e, None) from None
        for o in parsed:
            if o not in groups and not (o.is_add() or o.is_force_add() or o.is_delete()):
                _check_key(base, o.key_or_group)
        raise _composition_error(failed, base) from None


# Hydra's settings that take any text, checked as folders elsewhere (check_run_folder): a command
# line with no others is not composed again, which costs half a second.
TEXT_ONLY = ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir", "hydra.job.name", "hydra.output_subdir")


def check_hydra_settings(overrides: list[str]) -> None:
    """Hydra's own groups and settings on the command line (hydra/launcher=submitit_slurm,
    hydra.launcher.timeout_min=60, hydra.job.chdir=false), composed into Hydra's config now: a
    mistake there is one line, where Hydra would print its block of lines once it had started."""
    if not any(o.lstrip("+~").startswith("hydra") and o.split("=", 1)[0] not in TEXT_ONLY for o in overrides):
        return
    try:  # with the rest of the command line but its sweeps: a preset (hparams_search=) sets Hydra's settings too
        fixed = [o.input_line for o in OverridesParser.create().parse_overrides(overrides) if not o.is_sweep_override()]
    except HydraException as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        try:
            hydra_compose("config", overrides=fixed, return_hydra_config=True)
        except (HydraException, OmegaConfBaseException) as e:
            raise _hydra_error(e) from None


def _hydra_error(error: Exception) -> ConfigError:
    text = " ".join(str(error).split())
    missing = re.search(r"Could not find '(hydra/[\w/]+)/([^']+)'.* Available options in '[^']+': (.*?)"
                        r"(?: Config search path|$)", text)
    if missing:
        group, option, options = missing.groups()
        return ConfigError(f"{group}={option} is not an option; choose one of: {', '.join(options.split())}")
    cause = error.__cause__
    reason = str(cause).splitlines()[0] if cause is not None and str(cause) else ""
    return ConfigError(f"{str(error).splitlines()[0]}: {reason}" if reason else text)


def help_text(overrides: list[str]) -> str:
    """``python -m lmexp --help``: the groups and their options, and the whole config that
    ``overrides`` compose. Hydra's own help lists every stored schema as an option as well and
    takes seconds to do it; its flags stay under ``--hydra-help``."""
    groups = "\n".join(f"  {group}: {', '.join(choices(group))}"
                       for group in sorted(p.name for p in CONF_DIR.iterdir() if choices(p.name)))
    config = OmegaConf.to_yaml(compose(overrides)).rstrip()
    return f"""usage: python -m lmexp [group=option ...] [key=value ...]
       python -m lmexp -m model=lstm,gru optimizer.lr=1e-3,3e-3   (a sweep: one run per combination)

Config groups (group=option; each option is conf/<group>/<option>.yaml):
{groups}

Config (key=value sets any setting; +trainer.NAME=VALUE passes another Lightning Trainer argument):
{config}

Hydra's own flags (--cfg job, --multirun, --config-dir, ...): python -m lmexp --hydra-help"""


def apply_overrides(config: dict, overrides: list[str]) -> DictConfig:
    """A stored run config (a checkpoint's) with ``overrides`` on top: ``data=ptb`` takes the
    ptb option whole, as composition would give it; ``data.root=...`` sets one setting."""
    cfg = OmegaConf.create(config)
    parsed = parse_overrides(overrides)
    groups = _check_options(parsed)
    if groups:
        fresh = compose([o.input_line for o in groups])
        for o in groups:
            cfg[o.key_or_group] = fresh[o.key_or_group]
    for o in parsed:
        if o in groups:
            continue
        if OmegaConf.select(cfg, o.key_or_group, default=KeyError) is KeyError and not o.is_add():
            raise ConfigError(f"{o.key_or_group} is not a setting of this checkpoint's config")
        OmegaConf.update(cfg, o.key_or_group, o.value(), force_add=o.is_add())
    return cfg


def _check_key(cfg: DictConfig, key: str) -> None:
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if isinstance(parent, DictConfig) and leaf in parent:
        return
    if not isinstance(parent, DictConfig):
        raise ConfigError(f"{key} is not a setting: {parent_key or key} is not a group of settings")
    if parent_key == "trainer.extra":  # where +trainer.NAME=VALUE lands
        raise ConfigError(f"{key} is not a setting; for a Lightning Trainer argument write +trainer.{leaf}=<value>")
    if parent_key == "trainer" and leaf in lightning_arguments():
        raise ConfigError(f"{key} is a Lightning Trainer argument not listed in the trainer config; "
                          f"add it with +{key}=<value>")
    known = sorted(str(k) for k in parent.keys())
    close = difflib.get_close_matches(leaf, known, n=1)
    where = f"{parent_key}." if parent_key else ""
    # A setting one level further down (logger.mode: each logger's settings are logger.<name>.*)
    deeper = [f"{k}.{leaf}" for k in known if isinstance(parent.get(k), DictConfig) and leaf in parent[k]]
    hint = f"did you mean {where}{(deeper or close)[0]}? " if deeper or close else ""
    raise ConfigError(f"{key} is not a setting; {hint}valid: {', '.join(where + k for k in known)}")


def _composition_error(error: Exception, base: Optional[DictConfig]) -> ConfigError:
    """Hydra's error, caused by OmegaConf's at ``group.key``, as schema.translate words it."""
    cause = error
    while cause is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__
    if cause is None or not cause.full_key:
        return ConfigError(" ".join(str(error).split()))
    full_key = str(cause.full_key)
    group, _, key = full_key.partition(".") if "." in full_key else ("", "", full_key)
    node = base.get(group) if base is not None and group else None
    try:
        cls = schema_of(group, node.get("name") if isinstance(node, DictConfig) else None)
    except ConfigError:  # a group that is not a schema's (callbacks), or an unknown option
        cls = None
    return translate(cause, group, cls, key)

