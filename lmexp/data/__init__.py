"""Corpora, tokenizers, the token cache and the datamodule."""
