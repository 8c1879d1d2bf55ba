"""The options of a config group, found by name: one lookup, one message for an unknown name."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from lmexp.errors import ConfigError


class Entry(NamedTuple):
    make: Any  # what the option's settings are handed to: a class, or a function
    config: type  # the settings' dataclass: the option's schema and the one source of its defaults


class Registry(dict):
    """name -> :class:`Entry`. Filled by ``@REGISTRY.register(name, Config)`` beside each option's code."""

    def __init__(self, group: str, noun: str):
        super().__init__()
        self.group, self.noun = group, noun

    def register(self, name: str, config: type) -> Callable[[Any], Any]:
        def add(make: Any) -> Any:
            self[name] = Entry(make, config)
            return make

        return add

    def option(self, name: str) -> Entry:
        if name not in self:
            choices = ", ".join(sorted(self))
            raise ConfigError(f"{self.group}={name} is not a known {self.noun}; choose one of: {choices}")
        return self[name]
