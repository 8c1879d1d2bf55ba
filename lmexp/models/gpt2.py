"""GPT-2 (Radford et al. 2019): learned positions, pre-LayerNorm transformer blocks, tied head.

Written in the style of nanoGPT (Karpathy) so that a local Hugging Face GPT-2 folder loads
into it key for key, and the numerics match ``transformers.GPT2LMHeadModel`` (tanh GELU,
LayerNorm eps 1e-5, attention scaled by 1/sqrt(head size)).

Pretrained weights: set ``model.pretrained=/path/to/hf-gpt2-folder`` (config.json plus
model.safetensors or pytorch_model.bin); the folder then decides the architecture, and the
tokenizer must be GPT-2's, since the vocabulary has to match the checkpoint's.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lmexp.errors import ConfigError, UserError
from lmexp.options.model import SHAPE, GPT2Config, read_hf_config
from lmexp.regularization import Dropout, DropoutRates, embedding_dropout

KV = tuple[torch.Tensor, torch.Tensor]  # (B, nh, T, hs) each
Cache = list[KV]  # one (k, v) per layer


class CausalSelfAttention(nn.Module):
    def __init__(self, n_head: int, n_embd: int, dropout: DropoutRates, bias: bool):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)  # q, k, v for all heads in one matmul
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.dropout = dropout.attention
        self.resid_dropout = Dropout(dropout.residual)

    def forward(self, x: torch.Tensor, past: Optional[KV] = None) -> tuple[torch.Tensor, KV]:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if past is not None:
            k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)  # (B, nh, P+T, hs)
        P = k.size(2) - T
        dropout_p = self.dropout if self.training else 0.0
        if P == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        elif T == 1:
            # One new token may see every cached one; is_causal would align the mask top-left
            # and let it see only the first.
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        else:
            # Several new tokens after a cache: the causal mask aligned bottom-right.
            mask = torch.ones(T, P + T, dtype=torch.bool, device=x.device).tril(diagonal=P)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y)), (k, v)


class MLP(nn.Module):
    def __init__(self, n_embd: int, dropout: DropoutRates, bias: bool, gelu: str = "tanh"):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        # GPT-2's "gelu_new" is the tanh form; the exact erf GELU would break HF parity.
        self.gelu = nn.GELU(approximate="tanh" if gelu == "tanh" else "none")
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = Dropout(dropout.residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, n_head: int, n_embd: int, dropout: DropoutRates, bias: bool, eps: float, gelu: str = "tanh"):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, eps=eps, bias=bias)
        self.attn = CausalSelfAttention(n_head, n_embd, dropout, bias)
        self.ln_2 = nn.LayerNorm(n_embd, eps=eps, bias=bias)
        self.mlp = MLP(n_embd, dropout, bias, gelu)

    def forward(self, x: torch.Tensor, past: Optional[KV] = None) -> tuple[torch.Tensor, KV]:
        a, kv = self.attn(self.ln_1(x), past)
        x = x + a
        return x + self.mlp(self.ln_2(x)), kv


def _block_output(block: Block, x: torch.Tensor) -> torch.Tensor:
    return block(x)[0]


class GPT2(nn.Module):
    stateful = GPT2Config.stateful

    def __init__(self, config: GPT2Config, vocab_size: int, dropout: DropoutRates | float = 0.0):
        super().__init__()
        self.dropout = dropout = DropoutRates.of(dropout)
        hf = None
        if config.pretrained is not None:
            hf = read_hf_config(Path(config.pretrained))
            config = _adopt_checkpoint_shape(config, hf, vocab_size)
        self.config = config
        n_layer, n_head, n_embd, block_size = config.resolved()
        layer_norm_epsilon = config.layer_norm_epsilon
        self.block_size = block_size
        self.attention_shape = (n_layer, n_embd)  # for training_flops' attention term
        self.embedding = nn.Embedding(vocab_size, n_embd)  # wte; named for the embedding= group
        self.wpe = nn.Embedding(block_size, n_embd)
        self.drop = Dropout(dropout.input)
        self.h = nn.ModuleList(Block(n_head, n_embd, dropout, config.bias, layer_norm_epsilon, config.gelu)
                               for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, eps=layer_norm_epsilon, bias=config.bias)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.embedding.weight  # tied (Press & Wolf 2017), as in GPT-2
        self.apply(self._init_weights)
        # GPT-2 scales the init of the projections into the residual stream by 1/sqrt(2 * n_layer)
        # (two per block) so that the stream's variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))
        if hf is not None:
            self._load_hf_weights(Path(config.pretrained))

    @property
    def wte(self) -> nn.Embedding:
        return self.embedding

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # parameters() yields the tied matrix once
        if non_embedding:
            n -= self.embedding.weight.numel() + self.wpe.weight.numel()
        return n

    def _run(self, idx: torch.Tensor, cache: Optional[Cache], keep: bool = False) -> tuple[torch.Tensor, Cache]:
        """The blocks' output; with ``keep``, each block's keys and values too, for decoding. Not
        kept otherwise: they are views of each block's query-key-value product, which a pass
        without gradients would hold to its end (GPT-2 small: 75 MB a row of 1,024 tokens)."""
        B, T = idx.size()
        past = 0 if cache is None else cache[0][0].size(2)
        if past + T > self.block_size:
            what = f"sequence of length {T}" if cache is None else f"{past} cached + {T} new tokens"
            raise ValueError(f"{what} exceeds block_size={self.block_size}; crop the context")
        pos = torch.arange(past, past + T, dtype=torch.long, device=idx.device)  # (T,)
        tokens = embedding_dropout(self.embedding, idx, self.dropout.embedding, self.training)
        x = self.drop(tokens + self.wpe(pos))  # (B, T, C)
        new_cache = []
        # Decoding (keep) runs each block whole: a checkpointed block returns no keys and values.
        checkpointed = self.config.gradient_checkpointing and self.training and torch.is_grad_enabled() and not keep
        for i, block in enumerate(self.h):
            if checkpointed:  # torch keeps x, and recomputes the block (its dropout masks too) in backward
                x = checkpoint(_block_output, block, x, use_reentrant=False)
                continue
            x, kv = block(x, None if cache is None else cache[i])
            if keep:
                new_cache.append(kv)
        return self.ln_f(x), new_cache  # (B, T, C)

    @property
    def head(self) -> nn.Linear:
        return self.lm_head

    def forward(self, idx: torch.Tensor, state: None = None) -> tuple[torch.Tensor, None]:
        return self.lm_head(self._run(idx, None)[0]), None  # (B, T, V)

    def features(self, idx: torch.Tensor, state: None = None) -> tuple[torch.Tensor, None]:
        """What the output layer reads (B, T, C); no state."""
        return self._run(idx, None)[0], None

    def forward_with_cache(self, idx: torch.Tensor, cache: Optional[Cache] = None) -> tuple[torch.Tensor, Cache]:
        """Incremental decoding: pass the prompt with cache=None, then only the new token(s)
        with the returned cache; positions continue from the cache's length."""
        hidden, cache = self._run(idx, cache, keep=True)
        return self.lm_head(hidden), cache

    # --- Hugging Face checkpoints ------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | Path, dropout: DropoutRates | float = 0.0) -> "GPT2":
        """A local Hugging Face GPT-2 folder: config.json + model.safetensors or pytorch_model.bin."""
        hf = read_hf_config(Path(path))
        config = GPT2Config(n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                            block_size=hf["n_positions"], pretrained=str(path))
        return cls(config, vocab_size=hf["vocab_size"], dropout=dropout)

    @torch.no_grad()
    def _load_hf_weights(self, folder: Path) -> None:
        file, sd = _read_hf_weights(folder)
        # HF's Conv1D stores weights as (in, out); nn.Linear wants (out, in).
        transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        for name, p in self.state_dict(keep_vars=True).items():
            if name == "lm_head.weight":
                continue  # tied to wte; a separate head in the file would be a copy
            key = "wte.weight" if name == "embedding.weight" else name
            if key not in sd:
                raise UserError(f"{file} lacks the weight {key!r}: is it a GPT-2 checkpoint? "
                                f"Re-save it with transformers' GPT2LMHeadModel.save_pretrained")
            w = sd[key].t() if key.endswith(transposed) else sd[key]
            if w.shape != p.shape:
                raise UserError(f"{file}: {key} has shape {tuple(w.shape)} but config.json implies {tuple(p.shape)}; "
                                f"the folder's config.json and weights do not belong together")
            p.copy_(w)


def _adopt_checkpoint_shape(config: GPT2Config, hf: dict, vocab_size: int) -> GPT2Config:
    """The checkpoint decides the architecture; explicit settings may only agree with it."""
    if hf["vocab_size"] != vocab_size:
        raise ConfigError(f"model.pretrained={config.pretrained} has vocab_size {hf['vocab_size']} but the "
                          f"tokenizer has {vocab_size}; use the checkpoint's tokenizer (GPT-2 BPE)")
    if not config.bias:
        raise ConfigError(f"model.bias=false: a GPT-2 checkpoint has biases; set model.bias=true "
                          f"with model.pretrained={config.pretrained}")
    shape = dict(zip(SHAPE, (hf["n_layer"], hf["n_head"], hf["n_embd"], hf["n_positions"])))
    for key, value in shape.items():
        mine = getattr(config, key)
        if mine is not None and mine != value:
            raise ConfigError(f"model.{key}={mine} contradicts the checkpoint's {value} in {config.pretrained}; "
                              f"set model.{key}=null to take it from the checkpoint")
    return replace(config, bias=True, layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-5)), **shape)


def _read_hf_weights(folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    safe, pickled = folder / "model.safetensors", folder / "pytorch_model.bin"
    if safe.is_file():
        file = safe
    elif pickled.is_file():
        file = pickled
    else:
        raise UserError(f"{folder} has no weights: expected model.safetensors or pytorch_model.bin "
                        f"(sharded checkpoints are unsupported; re-save with save_pretrained)")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(file), device="cpu")
        else:
            sd = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # each library raises its own types for truncated or foreign files
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{file} is unreadable or corrupt ({reason}); re-download or re-save the checkpoint") from None
    if not isinstance(sd, dict):
        raise UserError(f"{file} does not hold a state dict; re-save the checkpoint with save_pretrained")
    # GPT2LMHeadModel prefixes "transformer."; a bare GPT2Model does not. The causal-mask
    # buffers of older files are not weights.
    return file, {k.removeprefix("transformer."): v for k, v in sd.items()
                  if not k.endswith((".attn.bias", ".attn.masked_bias"))}
