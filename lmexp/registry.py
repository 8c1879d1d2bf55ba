"""The options of a config group, found by name: one lookup, one message for an unknown name."""

from __future__ import annotations

import importlib
from typing import Any, Callable, NamedTuple

from lmexp.errors import ConfigError


class Entry(NamedTuple):
    target: Any  # what the option's settings are handed to (a class or a function), or "module:name" of it
    config: type  # the settings' dataclass: the option's schema and the one source of its defaults

    @property
    def make(self) -> Any:
        """The class or function itself. A "module:name" target is imported here, when a run first
        needs it, so that checking a config never imports torch or Lightning."""
        if not isinstance(self.target, str):
            return self.target
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)


class Registry(dict):
    """name -> :class:`Entry`. The groups whose code needs torch list each option with its code's
    "module:name" in ``lmexp/options/<group>.py``; the others register their code with
    ``@REGISTRY.register(name, Config)`` where it is written."""

    def __init__(self, group: str, noun: str):
        super().__init__()
        self.group, self.noun = group, noun

    def register(self, name: str, config: type) -> Callable[[Any], Any]:
        def add(make: Any) -> Any:
            self[name] = Entry(make, config)
            return make

        return add

    def declare(self, name: str, config: type, target: str) -> None:
        """The option ``name``: settings ``config``, code at ``target`` ("module:name"), imported when used."""
        self[name] = Entry(target, config)

    def option(self, name: str) -> Entry:
        if name not in self:
            choices = ", ".join(sorted(self))
            raise ConfigError(f"{self.group}={name} is not a known {self.noun}; choose one of: {choices}")
        return self[name]
