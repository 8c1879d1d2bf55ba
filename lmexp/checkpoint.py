"""Load a trained model from a Lightning checkpoint, with the config and vocabulary stored in it."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from lmexp.cli import existing_checkpoint
from lmexp.errors import UserError
from lmexp.module import LanguageModelModule


def load_module(path: str | Path, map_location: str = "cpu"):
    """The LanguageModelModule saved at ``path``. Reads with ``weights_only=True``: a checkpoint
    holds tensors and plain containers only, so loading one runs no pickled code."""
    path = existing_checkpoint(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"checkpoint {path} cannot be read ({reason}); it is truncated or not a checkpoint: "
                        f"use another one from the same run (last.ckpt or best-*.ckpt)") from None
    hparams = checkpoint.get("hyper_parameters", {}) if isinstance(checkpoint, dict) else {}
    if not {"config", "vocab"} <= set(hparams) or "state_dict" not in checkpoint:
        raise UserError(f"{path} is not an lmexp checkpoint (no stored config and vocabulary)")
    module = LanguageModelModule(hparams["config"], hparams["vocab"], hparams.get("tokenizer_state"))
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as e:
        raise UserError(f"checkpoint {path} does not match its own config: {str(e).splitlines()[0]}") from None
    return module.eval()
