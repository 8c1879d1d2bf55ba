"""Checkpoints: written atomically, and loaded back as a model with the config and vocabulary stored in them."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch
from lightning_fabric.plugins import TorchCheckpointIO

from lmexp.atomic import replaced
from lmexp.cli import existing_checkpoint
from lmexp.errors import UserError
from lmexp.module import LanguageModelModule


def load_module(path: str | Path, map_location: str = "cpu"):
    """The LanguageModelModule saved at ``path``. Reads with ``weights_only=True``: a checkpoint
    holds tensors and plain containers only, so loading one runs no pickled code."""
    path = existing_checkpoint(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        if zipfile.is_zipfile(path):  # torch.save's format, holding more than tensors and containers
            raise UserError(f"{path} is not an lmexp checkpoint: it holds pickled Python objects (a whole module "
                            f"saved with torch.save?), which are never unpickled here, since unpickling runs code; "
                            f"use a checkpoint a run wrote (checkpoints/last.ckpt or best-*.ckpt)") from None
        raise UserError(f"checkpoint {path} cannot be read (it is not in torch.save's format); use another one "
                        f"from the same run (last.ckpt or best-*.ckpt)") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Each checkpoint written to a temporary file in its own folder, flushed to disk, then renamed
    over the previous one: a run killed while saving keeps its previous checkpoint whole.
    Lightning's own save renames from the system's temporary folder, and where that is another
    file system the rename is a copy, which a kill can leave half-written."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Optional[Any] = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with replaced(path) as f:
            torch.save(checkpoint, f)
