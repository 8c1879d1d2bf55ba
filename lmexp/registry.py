"""The options of a config group, found by name: one lookup, one message for an unknown name."""

from __future__ import annotations

from typing import Any

from lmexp.errors import ConfigError


class Registry(dict):
    """name -> what the option's code needs (a class, a function, its config dataclass)."""

    def __init__(self, group: str, noun: str, entries: dict[str, Any] | None = None):
        super().__init__(entries or {})
        self.group, self.noun = group, noun

    def option(self, name: str) -> Any:
        if name not in self:
            choices = ", ".join(sorted(self))
            raise ConfigError(f"{self.group}={name} is not a known {self.noun}; choose one of: {choices}")
        return self[name]
