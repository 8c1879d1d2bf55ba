"""The validation toolkit every config group uses: a leaf module that imports nothing of lmexp's
but its errors.

A group's settings are a dataclass: its fields and their defaults are the one source of the
option's settings (Hydra stores it as the YAML option's schema), OmegaConf checks names and
types, and the dataclass's ``validate`` checks ranges. Every failure is a ConfigError naming
the setting, e.g. ``regularization.dropout=1.5: must be in [0, 1)``.
"""

from __future__ import annotations

import difflib
import math
import os
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from lmexp.errors import ConfigError


@dataclass
class Option:
    """What every option of a registered group has: the name it is registered under."""

    name: Optional[str] = None

    def check_files(self) -> None:
        """The files this option will read, checked before a run starts. Settings alone never
        open files (a checkpoint's config must load where they are gone): the option's code
        checks a file where it opens it, with this same one-line message."""

    def values(self) -> dict:
        """The settings without the name, e.g. for a cache key that the name must not change."""
        return {k: v for k, v in asdict(self).items() if k != "name"}


def is_whole(value: Any) -> bool:
    """An int, and not a bool (which Python counts as one: a YAML true would pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or a float, and not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check(ok: bool, setting: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{setting}={show(value)}: must be {expected}")


def check_readable(path: Path, setting: str, value: Any) -> None:
    """A file that exists may still be closed to this user: opened here, it is one line now
    rather than a traceback from deep inside the reader. A name in a folder may also be a link to
    nothing, or no file at all: a named pipe, which opening would wait on for ever."""
    if path.is_symlink() and not path.exists():
        raise ConfigError(f"{setting}={show(value)}: {path} is a link to {os.readlink(path)}, which does not exist; "
                          f"point the link at a file, or remove it")
    if path.exists() and not path.is_file():
        raise ConfigError(f"{setting}={show(value)}: {path} is not a regular file (a folder, a pipe or a "
                          f"device); remove it, or give a text file")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise ConfigError(f"{setting}={show(value)}: cannot be read ({e.strerror}); make {path} readable "
                          f"(chmod a+r) or copy it where you can read it") from None


def show(value: Any) -> str:
    """A value as YAML and the command line write it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return "''" if value == "" else str(value)


def unknown_key(group: str, key: str, known: list[str]) -> ConfigError:
    """``group``: the config group, or "" for the top level."""
    prefix = f"{group}." if group else ""
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {prefix}{close[0]}? " if close else ""
    where = f" of this {group} option" if group else ""
    return ConfigError(f"{prefix}{key} is not a setting{where}; {hint}valid: {', '.join(prefix + k for k in known)}")


def settings_of(cls: type) -> list[str]:
    return [f.name for f in fields(cls) if f.init]


def type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        return " or ".join(type_name(a) for a in typing.get_args(hint))
    if origin in (list, tuple):
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return f"a list of {type_name(item)}"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def translate(error: OmegaConfBaseException, group: str, cls: Optional[type] = None,
              key: Optional[str] = None) -> ConfigError:
    """OmegaConf's multi-line message as one line that names ``group.key`` and what it must be.
    ``key``: the setting within ``group`` (by default the error's own key, relative to ``cls``)."""
    key = str(error.full_key or "") if key is None else key
    full_key = ".".join(k for k in (group, key) if k)
    if isinstance(error, ConfigKeyError) and cls is not None:
        return unknown_key(group, str(error.key), settings_of(cls))
    if isinstance(error, MissingMandatoryValue):
        return ConfigError(f"{full_key} is required: set {full_key}=...")
    hints = typing.get_type_hints(cls) if cls is not None else {}
    hint = hints.get(key.split("[")[0])
    if hint is not None and "[" in key:  # an item of a list
        hint = (typing.get_args(hint) or (Any,))[0]
    if hint is not None:
        return ConfigError(f"{full_key}={show(getattr(error, 'value', None))}: must be of type {type_name(hint)}")
    return ConfigError(f"{full_key}: {error.msg.splitlines()[0]}")


def parse(cls: type, node: Any, group: str) -> Any:
    """The dataclass ``cls`` with ``node``'s values (a DictConfig or dict) on its defaults, checked."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    try:
        obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), node or {}))
    except OmegaConfBaseException as e:
        raise translate(e, group, cls) from None
    for f in fields(obj):  # inf and nan pass every range check written as a comparison
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            setting = ".".join(k for k in (group, f.name) if k)
            raise ConfigError(f"{setting}={show(value)}: must be a finite number")
    if hasattr(obj, "validate"):
        obj.validate(group)
    return obj
