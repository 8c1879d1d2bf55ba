"""The ``model=`` options, by name: each architecture file registers its class and settings here."""

from lmexp.registry import Registry

MODELS = Registry("model", "model")  # name -> Entry(model class, its config dataclass)
