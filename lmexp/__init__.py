"""lmexp: config-driven language-model experiments."""

__version__ = "0.1.0"
