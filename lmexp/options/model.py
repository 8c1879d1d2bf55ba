"""The ``model=`` options: each architecture's settings, and where its class is.

Adding a model: its class in a file under ``lmexp/models/``, its settings and one
``MODELS.declare`` line here, and a YAML option under ``conf/model/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from lmexp.errors import UserError
from lmexp.registry import Registry
from lmexp.schema import Option, check, check_readable

MODELS = Registry("model", "model")  # name -> Entry(model class, its settings)

# Settings every model has: a parameter count its width is fitted to (lmexp/sizing.py), the
# total (a tied output layer counted once) or the count without embeddings that scaling laws use.
# The depth and the other widths' ratios to the fitted one stay as set.
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # a Hugging Face folder's weights, either
TARGETS = ("target_params", "target_params_without_embeddings")


def check_targets(config: Option, group: str) -> None:
    for key in TARGETS:
        value = getattr(config, key)
        check(value is None or value >= 1, f"{group}.{key}", value, "a positive integer (a parameter count), or null")
    check(config.target_params is None or config.target_params_without_embeddings is None,
          f"{group}.target_params_without_embeddings", config.target_params_without_embeddings,
          f"null when {group}.target_params is set: a model is fitted to one count or the other")


@dataclass
class RNNConfig(Option):
    # Not a setting: the data module streams contiguous windows and the model carries its state over.
    stateful = True

    name: Optional[str] = "lstm"  # lstm, gru or rnn: the cell
    embedding_size: int = 128
    hidden_size: int = 256
    num_layers: int = 1
    tie_weights: bool = True
    # How a tied model whose hidden_size differs from embedding_size meets the embedding's width:
    # a projection after the last layer, or a last layer as wide as the embedding (AWD-LSTM's).
    tie_with: str = "projection"  # or last_layer
    nonlinearity: str = "tanh"  # Elman RNN only
    # Every parameter uniform in [-init_range, init_range], as Zaremba et al. initialise; null: the
    # embedding and output layer uniform in [-0.1, 0.1] and the recurrent layers PyTorch's own.
    init_range: Optional[float] = None
    # Either one set chooses hidden_size, and embedding_size keeps its ratio to it: see TARGETS.
    target_params: Optional[int] = None
    target_params_without_embeddings: Optional[int] = None

    def validate(self, group: str) -> None:
        check_targets(self, group)
        for key in ("embedding_size", "hidden_size", "num_layers"):
            check(getattr(self, key) >= 1, f"{group}.{key}", getattr(self, key), "a positive integer")
        check(self.tie_with in ("projection", "last_layer"), f"{group}.tie_with", self.tie_with,
              "projection or last_layer")
        check(self.init_range is None or self.init_range > 0, f"{group}.init_range", self.init_range,
              "a positive number (every parameter uniform in [-init_range, init_range]), or null")
        check(self.nonlinearity in ("tanh", "relu"), f"{group}.nonlinearity", self.nonlinearity, "tanh or relu")
        check(self.name == "rnn" or self.nonlinearity == "tanh", f"{group}.nonlinearity", self.nonlinearity,
              f"tanh for model={self.name} (only model=rnn has a choice)")


@dataclass
class TransformerConfig(Option):
    stateful = False  # not a setting: each window is read from scratch

    name: Optional[str] = "transformer"
    d_model: int = 256
    n_head: int = 4
    n_layer: int = 4
    d_ff: int = 1024  # the feed-forward's hidden width, 4 * d_model as in Vaswani et al.
    block_size: int = 128  # the longest window the model reads
    positions: str = "sinusoidal"  # or "learned"
    norm_first: bool = True  # pre-LN; False is the original post-LN
    activation: str = "gelu"  # or "relu"
    tie_weights: bool = True
    # Either one set chooses d_model, a multiple of n_head, and d_ff keeps its ratio to it: see TARGETS.
    target_params: Optional[int] = None
    target_params_without_embeddings: Optional[int] = None

    def validate(self, group: str) -> None:
        check_targets(self, group)
        for key in ("d_model", "n_head", "n_layer", "d_ff", "block_size"):
            check(getattr(self, key) >= 1, f"{group}.{key}", getattr(self, key), "a positive integer")
        check(self.d_model % self.n_head == 0, f"{group}.d_model", self.d_model,
              f"divisible by {group}.n_head={self.n_head}")
        check(self.positions in ("sinusoidal", "learned"), f"{group}.positions", self.positions,
              "sinusoidal or learned")
        check(self.activation in ("gelu", "relu"), f"{group}.activation", self.activation, "gelu or relu")


# name -> (n_layer, n_head, n_embd, block_size); tiny and mini train on a laptop CPU.
SIZES = {
    "tiny": (2, 2, 128, 128),
    "mini": (4, 4, 256, 256),
    "small": (12, 12, 768, 1024),
    "medium": (24, 16, 1024, 1024),
    "large": (36, 20, 1280, 1024),
    "xl": (48, 25, 1600, 1024),
}
SHAPE = ("n_layer", "n_head", "n_embd", "block_size")


@dataclass
class GPT2Config(Option):
    stateful = False  # not a setting: each window is read from scratch

    name: Optional[str] = "gpt2"
    size: str = "small"  # one of SIZES; the explicit fields below override it
    n_layer: Optional[int] = None
    n_head: Optional[int] = None
    n_embd: Optional[int] = None
    block_size: Optional[int] = None  # the longest context, i.e. the number of learned positions
    bias: bool = True  # biases in the Linears and LayerNorms, as in GPT-2
    pretrained: Optional[str] = None  # a local Hugging Face GPT-2 folder whose weights are loaded
    layer_norm_epsilon: float = 1e-5  # a pretrained folder's own value replaces it
    # tanh: GPT-2's approximation ("gelu_new"), which Hugging Face parity needs; exact: the erf
    # form, nanoGPT's (and about twice as fast on a CPU)
    gelu: str = "tanh"
    # Keep each block's input only and recompute the block in backward: a block's activations at a
    # time instead of every block's, for about a third more compute (training only).
    gradient_checkpointing: bool = False
    # Either one set chooses n_embd, a multiple of n_head, and writes out the size's shape: see TARGETS.
    target_params: Optional[int] = None
    target_params_without_embeddings: Optional[int] = None

    def check_files(self) -> None:
        if self.pretrained is not None:
            folder = Path(self.pretrained)
            read_hf_config(folder)
            weights = [folder / name for name in HF_WEIGHTS]
            check(any(f.is_file() for f in weights), "model.pretrained", self.pretrained,
                  "a folder holding weights too: model.safetensors or pytorch_model.bin (save it with "
                  "save_pretrained; sharded checkpoints are unsupported)")
            check_readable(next(f for f in weights if f.is_file()), "model.pretrained", self.pretrained)

    def shape(self) -> "GPT2Config":
        """These settings with the size's shape written out: what a checkpoint keeps, so that it
        is rebuilt without the named size table or the pretrained folder."""
        return replace(self, pretrained=None, **dict(zip(SHAPE, self.resolved())))

    def resolved(self) -> tuple[int, int, int, int]:
        """(n_layer, n_head, n_embd, block_size): the named size with explicit values on top."""
        named = SIZES.get(self.size, SIZES["small"])
        return tuple(named[i] if getattr(self, k) is None else getattr(self, k) for i, k in enumerate(SHAPE))

    def validate(self, group: str) -> None:
        check_targets(self, group)
        for key in TARGETS:
            check(self.pretrained is None or getattr(self, key) is None, f"{group}.{key}", getattr(self, key),
                  f"null with {group}.pretrained: the checkpoint's folder fixes the width")
        check(self.size in SIZES, f"{group}.size", self.size, f"one of {'|'.join(SIZES)}")
        for key in SHAPE:
            value = getattr(self, key)
            check(value is None or value >= 1, f"{group}.{key}", value, "a positive integer, or null for the size's")
        check(self.gelu in ("tanh", "exact"), f"{group}.gelu", self.gelu, "tanh or exact")
        check(self.pretrained is None or self.gelu == "tanh", f"{group}.gelu", self.gelu,
              f"tanh with {group}.pretrained: GPT-2's weights were trained with it")
        _, n_head, n_embd, _ = self.resolved()
        check(n_embd % n_head == 0, f"{group}.n_embd", n_embd, f"divisible by {group}.n_head ({n_head})")


def read_hf_config(folder: Path) -> dict:
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise UserError(f"model.pretrained={folder}: {what}; set it to a local Hugging Face GPT-2 folder "
                        f"(config.json + model.safetensors)")
    file = folder / "config.json"
    if not file.is_file():
        raise UserError(f"model.pretrained={folder}: has no config.json; it must be a Hugging Face GPT-2 folder "
                        f"(save one with GPT2LMHeadModel.save_pretrained)")
    try:
        hf = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{file} is not valid JSON ({e}); re-save the checkpoint") from None
    missing = [k for k in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size") if k not in hf]
    if missing:
        raise UserError(f"{file} lacks {', '.join(missing)}: is it a GPT-2 config? re-save the checkpoint")
    # Variants that this implementation does not compute the same way as HF.
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise UserError(f"{file}: activation_function={hf['activation_function']} is unsupported; "
                        f"this GPT-2 uses the tanh GELU (gelu_new)")
    if hf.get("n_inner") not in (None, 4 * hf["n_embd"]) or hf.get("scale_attn_by_inverse_layer_idx"):
        raise UserError(f"{file}: n_inner other than 4*n_embd and scale_attn_by_inverse_layer_idx are unsupported")
    if hf.get("scale_attn_weights") is False or hf.get("tie_word_embeddings") is False:
        raise UserError(f"{file}: scale_attn_weights=false and tie_word_embeddings=false are unsupported; this GPT-2 "
                        f"scales attention by 1/sqrt(head size) and ties its output layer to the token embedding")
    return hf


MODELS.declare("lstm", RNNConfig, "lmexp.models.rnn:RecurrentLM")
MODELS.declare("gru", RNNConfig, "lmexp.models.rnn:RecurrentLM")
MODELS.declare("rnn", RNNConfig, "lmexp.models.rnn:RecurrentLM")
MODELS.declare("transformer", TransformerConfig, "lmexp.models.transformer:TransformerLM")
MODELS.declare("gpt2", GPT2Config, "lmexp.models.gpt2:GPT2")
