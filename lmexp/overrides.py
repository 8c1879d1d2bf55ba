"""Check the command line before Hydra starts a run, so that a mistyped option or key is
one line naming it (with the valid choices), not Hydra's multi-line composition error,
and no run folder is created for a run that cannot start."""

from __future__ import annotations

import difflib
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lmexp.errors import ConfigError


def _choices(conf_dir: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def check_command_line(argv: list[str], conf_dir: Path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from lmexp.config import load_settings

    if any(arg.startswith("-") for arg in argv):
        return  # -m, --cfg, --help ...: Hydra's own modes, and sweeps, are checked per job
    try:
        parsed = OverridesParser.create().parse_overrides(argv)
    except HydraException as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    parsed = [o for o in parsed if not o.key_or_group.startswith("hydra")]
    if any(o.is_sweep_override() for o in parsed):
        return

    groups = [o for o in parsed if (conf_dir / o.key_or_group).is_dir()]
    for o in groups:
        value = o.value()
        if not o.is_delete() and not (conf_dir / o.key_or_group / f"{value}.yaml").exists():
            raise ConfigError(f"{o.key_or_group}={value} is not an option; choose one of: "
                              f"{', '.join(_choices(conf_dir, o.key_or_group))}")

    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        try:
            base = compose("config", overrides=[o.input_line for o in groups])
            for o in parsed:
                if o not in groups and not (o.is_add() or o.is_force_add() or o.is_delete()):
                    _check_key(base, o.key_or_group)
            cfg = compose("config", overrides=[o.input_line for o in parsed])
        except HydraException as e:
            raise ConfigError(" ".join(str(e).split())) from None
    load_settings(cfg)


def _check_key(cfg: DictConfig, key: str) -> None:
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if isinstance(parent, DictConfig) and leaf in parent:
        return
    if not isinstance(parent, DictConfig):
        raise ConfigError(f"{key} is not a setting: {parent_key or key} is not a group of settings")
    if parent_key == "trainer" and _is_trainer_argument(leaf):
        raise ConfigError(f"{key} is a Lightning Trainer argument not listed in the trainer config; "
                          f"add it with +{key}=<value>")
    known = sorted(str(k) for k in parent.keys())
    close = difflib.get_close_matches(leaf, known, n=1)
    where = f"{parent_key}." if parent_key else ""
    hint = f"did you mean {where}{close[0]}? " if close else ""
    raise ConfigError(f"{key} is not a setting; {hint}valid: {', '.join(where + k for k in known)}")


def _is_trainer_argument(name: str) -> bool:
    import inspect

    import pytorch_lightning as pl

    return name in inspect.signature(pl.Trainer.__init__).parameters
