"""``key=value`` arguments for the entry points other than training (evaluate, generate)."""

from __future__ import annotations

import difflib
from typing import Any

import yaml

from lmexp.errors import ConfigError


def parse_arguments(argv: list[str], options: dict[str, Any], allow_overrides: bool = False) -> tuple[dict, list[str]]:
    """Split ``argv`` into this command's own options (with their defaults filled in) and,
    when allowed, run-config overrides (``data=ptb``, ``data.root=...``) left for the caller.
    Values are read as YAML scalars, as Hydra reads them: ``3`` is an int, ``null`` is None."""
    values, overrides = dict(options), []
    for arg in argv:
        key, sep, raw = arg.partition("=")
        if not sep:
            raise ConfigError(f"argument {arg!r} is not key=value; options: {', '.join(options)}")
        if key in options:
            values[key] = yaml.safe_load(raw) if raw else ""
            if isinstance(options[key], str) and values[key] is not None:
                values[key] = raw  # keep text as typed: prompt=1984 stays a string
        elif allow_overrides and (key.split(".")[0] in ("data", "tokenizer", "eval", "trainer", "paths")):
            overrides.append(arg)
        else:
            close = difflib.get_close_matches(key, list(options), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"{key} is not an option{hint} (options: {', '.join(options)})")
    missing = [k for k, v in values.items() if v is ...]
    if missing:
        raise ConfigError(f"{missing[0]} is required: add {missing[0]}=...")
    return values, overrides
