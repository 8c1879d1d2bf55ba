"""Training speed against the code people would otherwise run: the PyTorch examples' word-level
LSTM and Transformer, and nanoGPT's character-level GPT, each on the same recipe as lmexp.

    python benchmarks/references.py [--recipes lstm transformer gpt] [--warmup 10] [--block 10]
                                    [--turns 30] [--threads 2] [--data ../shared/data]
                                    [--reference-keeps-freed-memory]

The references are re-implemented below from their published descriptions, minimal and
faithful in what costs time: the layout of the tensors, the modules, the loss, the update.
- ``lstm`` and ``transformer``: pytorch/examples' word_language_model. The text is one column
  per batch row, sequence first ((T, B) tensors), cut into ``bptt`` windows in order; the
  LSTM is one multi-layer ``nn.LSTM`` module, its state carried between windows (detached);
  the Transformer is ``nn.TransformerEncoder`` (post-LN, ReLU) under a causal mask made once
  and cached; dropout on the embedding, between layers and on the output; the loss is
  log-softmax then NLL; the update is plain SGD written out (``p -= lr * grad``) after
  clipping the gradient norm. The Transformer is the example's model as the issue that asked
  for this benchmark describes it (``nn.TransformerEncoder``, dropout 0.2 throughout). The
  example's current ``model.py`` subclasses ``nn.Transformer`` instead, which adds a final
  LayerNorm (400 parameters at width 200) and leaves the layers' dropout at that class's 0.1
  (0.2 on the positions only): one LayerNorm of a step's 700 x 200 activations more, beside
  products over 4.5M parameters; what is timed here is the model the issue names.
- ``gpt``: nanoGPT's GPT. Pre-LayerNorm blocks, one fused QKV projection,
  ``scaled_dot_product_attention`` with ``is_causal``, tied head, no biases (its Shakespeare
  default); batches of random windows; AdamW with decay only on matrices, its warm-up and
  cosine schedule, gradient clipping at 1.0.

lmexp runs the same recipe from the ``experiment=`` presets in ``conf/experiment/``, through its
own Lightning loop (``benchmarks/throughput.py``), progress bar and callbacks included. The two
loops run in two processes and take turns every ``block`` steps (``Turns``), so that each pair
of neighbouring turns sees the machine in the same state; the output gives each one's median and
best training tokens per second over its turns, the ratio lmexp / reference of the medians, and
the median, quartiles and range of the pairs' own ratios. Prints one JSON line per recipe.
The reference runs with glibc's allocator as it comes, lmexp with its ``trainer.keep_freed_memory``;
``--reference-keeps-freed-memory`` gives the reference that setting too, to see how much of a
lead is lmexp's code and how much the setting.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from throughput import lightning_loop

ROOT = Path(__file__).resolve().parent.parent


# --- pytorch/examples word_language_model ---------------------------------------------------

class ExamplesRNN(nn.Module):
    """Embedding -> dropout -> one multi-layer nn.LSTM (dropout between layers) -> dropout -> Linear."""

    def __init__(self, ntoken: int, ninp: int, nhid: int, nlayers: int, dropout: float):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)  # sequence first
        self.decoder = nn.Linear(nhid, ntoken)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        self.nlayers, self.nhid = nlayers, nhid

    def forward(self, x, hidden):  # x: (T, B)
        output, hidden = self.rnn(self.drop(self.encoder(x)), hidden)
        decoded = self.decoder(self.drop(output)).view(-1, self.decoder.out_features)
        return F.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz: int):
        weight = next(self.parameters())
        return (weight.new_zeros(self.nlayers, bsz, self.nhid), weight.new_zeros(self.nlayers, bsz, self.nhid))


class ExamplesTransformer(nn.Module):
    """Embedding * sqrt(d) + sinusoidal positions -> nn.TransformerEncoder (post-LN, ReLU) -> Linear."""

    def __init__(self, ntoken: int, ninp: int, nhead: int, nhid: int, nlayers: int, dropout: float):
        super().__init__()
        self.input_emb = nn.Embedding(ntoken, ninp)
        layer = nn.TransformerEncoderLayer(ninp, nhead, nhid, dropout)  # sequence first, post-LN, ReLU
        self.encoder = nn.TransformerEncoder(layer, nlayers, enable_nested_tensor=False)
        self.decoder = nn.Linear(ninp, ntoken)
        self.pos_drop = nn.Dropout(dropout)
        position = torch.arange(5000, dtype=torch.float).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, ninp, 2).float() * (-math.log(10000.0) / ninp))
        pe = torch.zeros(5000, ninp)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(position * div_term), torch.cos(position * div_term)
        self.register_buffer("pe", pe.unsqueeze(1))  # (L, 1, C)
        self.ninp, self.src_mask = ninp, None
        nn.init.uniform_(self.input_emb.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, src):  # (T, B)
        if self.src_mask is None or self.src_mask.size(0) != len(src):  # made once per length, then cached
            mask = torch.triu(torch.full((len(src), len(src)), float("-inf"), device=src.device), diagonal=1)
            self.src_mask = mask
        x = self.pos_drop(self.input_emb(src) * math.sqrt(self.ninp) + self.pe[: src.size(0)])
        return F.log_softmax(self.decoder(self.encoder(x, mask=self.src_mask)), dim=-1)


def reference_model(recipe: str, vocab: int) -> nn.Module:
    """Each recipe's reference network, as its training loop below builds it (and as
    tests/test_experiments.py and ``compare`` count its parameters against lmexp's)."""
    if recipe == "lstm":
        return ExamplesRNN(vocab, 200, 200, 2, 0.2)
    if recipe == "transformer":
        return ExamplesTransformer(vocab, 200, 2, 200, 2, 0.2)
    return NanoGPT(vocab, 4, 4, 128, 64)


def batchify(ids: torch.Tensor, bsz: int) -> torch.Tensor:
    """(N,) -> (N // bsz, bsz): each column a contiguous stretch of the text."""
    n = ids.size(0) // bsz
    return ids[: n * bsz].view(bsz, -1).t().contiguous()


def examples_steps(kind: str, train_ids: torch.Tensor, vocab: int, seed: int) -> Iterator[int]:
    """The word_language_model training loop, epoch after epoch of windows in order, SGD written
    out; yields each step's target count once the step is done."""
    torch.manual_seed(seed)
    bsz, bptt, clip = 20, 35, 0.25
    model, lr = reference_model(kind, vocab).train(), 20.0 if kind == "lstm" else 5.0
    data = batchify(train_ids, bsz)
    criterion = nn.NLLLoss()
    while True:
        hidden = model.init_hidden(bsz) if kind == "lstm" else None
        for i in range(0, data.size(0) - 1, bptt):
            seq_len = min(bptt, data.size(0) - 1 - i)
            x, y = data[i: i + seq_len], data[i + 1: i + 1 + seq_len].reshape(-1)
            model.zero_grad()
            if kind == "lstm":
                hidden = tuple(h.detach() for h in hidden)
                output, hidden = model(x, hidden)
            else:
                output = model(x).view(-1, vocab)
            loss = criterion(output, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-lr)
            yield y.numel()


# --- nanoGPT ----------------------------------------------------------------------------------

class NanoBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(n_embd, bias=False), nn.LayerNorm(n_embd, bias=False)
        self.c_attn, self.attn_proj = nn.Linear(n_embd, 3 * n_embd, bias=False), nn.Linear(n_embd, n_embd, bias=False)
        self.c_fc, self.mlp_proj = nn.Linear(n_embd, 4 * n_embd, bias=False), nn.Linear(4 * n_embd, n_embd, bias=False)
        self.n_head = n_head

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.attn_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class NanoGPT(nn.Module):
    def __init__(self, vocab: int, n_layer: int, n_head: int, n_embd: int, block_size: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, n_embd), nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(NanoBlock(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=False)
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)
        self.wte.weight = self.lm_head.weight  # tied
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, mean=0.0, std=std)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def nanogpt_steps(train_ids: torch.Tensor, vocab: int, seed: int) -> Iterator[int]:
    """nanoGPT's train.py on its CPU Shakespeare settings: random windows, AdamW, cosine schedule;
    yields each step's target count once the step is done."""
    torch.manual_seed(seed)
    block, bsz, lr, min_lr, warmup_iters, max_iters = 64, 12, 1e-3, 1e-4, 100, 2000
    model = reference_model("gpt", vocab).train()
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99))

    def rate(it: int) -> float:
        if it < warmup_iters:
            return lr * (it + 1) / (warmup_iters + 1)
        ratio = min(1.0, (it - warmup_iters) / (max_iters - warmup_iters))
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)

    for it in itertools.count():
        for group in optimizer.param_groups:
            group["lr"] = rate(it)
        ix = torch.randint(len(train_ids) - block, (bsz,))
        x = torch.stack([train_ids[i: i + block] for i in ix])
        y = torch.stack([train_ids[i + 1: i + 1 + block] for i in ix])
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        yield y.numel()


# --- the comparison -----------------------------------------------------------------------------

RECIPES = {  # name -> (the experiment preset, the data override it needs, the file that must exist)
    "lstm": ("word_lm_example", "data.root={data}/ptb", "ptb/ptb.train.txt"),
    "transformer": ("word_lm_example_transformer", "data.root={data}/ptb", "ptb/ptb.train.txt"),
    "gpt": ("nanogpt_shakespeare_char_cpu", "data.path={data}/tinyshakespeare/input.txt", "tinyshakespeare/input.txt"),
}


class Turns:
    """One side of two training loops that take turns, each in its own process: one runs
    ``block`` steps while the other waits, then the other. A slow spell of the shared machine
    (seconds to minutes here) falls on both alike, and each pair of neighbouring turns gives a
    ratio of its own. A loop's clock runs only in its turns, from being handed the turn to
    handing it on: everything it does between steps is counted, its waiting is not. Each loop's
    first turn is ``warmup`` steps, not counted. Processes, not threads: two threads of one
    process ran both loops at about two thirds of their speed alone here (each thread has its
    own OpenMP team, and the allocator its own arena)."""

    def __init__(self, conn, first: bool, warmup: int, block: int, turns: int):
        self.conn, self.first = conn, first
        self.warmup, self.block, self.turns = warmup, block, turns
        self.steps = self.tokens = 0
        self.since = 0.0
        self.rates: list[float] = []  # each counted turn's tokens per second
        self.other: Optional[tuple] = None  # ("done", its rates) or ("error", its message), once it has stopped

    def begin(self) -> None:
        """Before the loop's first step: wait for its first turn."""
        if not self.first:
            self._wait()
        self.since = time.perf_counter()

    def after_step(self, tokens: int) -> bool:
        """After each step; False once this loop has run all its turns."""
        self.steps += 1
        self.tokens += tokens
        n = self.steps - self.warmup
        if n < 0 or n % self.block:
            return True
        if n > 0:
            self.rates.append(self.tokens / (time.perf_counter() - self.since))
        self.tokens = 0
        if n == self.turns * self.block:
            # The threads read back where they ran, so that the table shows both sides had the same.
            self.stop(("done", self.rates, torch.get_num_threads()))
            return False
        if self.other is None:
            self.conn.send(("turn",))
            self._wait()
        self.since = time.perf_counter()
        return True

    def stop(self, message: tuple) -> None:
        """At the end, or on an error: the other loop runs on alone."""
        if self.other is None:
            self.conn.send(message)

    def _wait(self) -> None:
        message = self.conn.recv()
        if message[0] != "turn":
            self.other = message

    def result(self) -> tuple:
        """What the other loop sent when it stopped (waiting for it if it has not)."""
        while self.other is None:
            self._wait()
        return self.other


def reference_process(conn, recipe: str, train_ids: torch.Tensor, vocab: int, seed: int, threads: int,
                      warmup: int, block: int, turns: int, keeps_freed_memory: bool = False) -> None:
    """The reference's side, in a process of its own; it takes the first turn."""
    torch.set_num_threads(threads)
    if keeps_freed_memory:  # what lmexp's trainer.keep_freed_memory does to lmexp's process
        from lmexp.allocator import keep_freed_memory

        keep_freed_memory()
    side = Turns(conn, True, warmup, block, turns)
    try:
        steps = nanogpt_steps(train_ids, vocab, seed) if recipe == "gpt" else examples_steps(recipe, train_ids, vocab, seed)
        side.begin()
        for tokens in steps:
            if not side.after_step(tokens):
                break
    except BaseException as error:  # noqa: BLE001 (sent to the other side, which reports it)
        with contextlib.suppress(OSError):  # the other side is gone too
            side.stop(("error", f"{type(error).__name__}: {error}"))


def compare(recipe: str, data: Path, warmup: int, block: int, turns: int, threads: int,
            reference_keeps_freed_memory: bool = False) -> dict:
    import multiprocessing

    import pytorch_lightning as pl

    from lmexp.cli import compose
    from lmexp.run import Run

    preset, data_override, needed = RECIPES[recipe]
    if not (data / needed).is_file():
        return {"recipe": recipe, "skipped": f"{data / needed} is not here (--data names the folder)"}
    run = Run.from_config(compose([f"experiment={preset}", data_override.format(data=data), "logger=none"]))
    vocab = run.datamodule.vocab_size
    params = {"reference_params": sum(p.numel() for p in reference_model(recipe, vocab).parameters()),
              "lmexp_params": sum(p.numel() for p in run.module.model.parameters())}
    if len(set(params.values())) > 1:  # not the same arithmetic: no speed comparison
        raise SystemExit(f"{recipe}: the reference has {params['reference_params']:,} parameters and lmexp's "
                         f"experiment={preset} {params['lmexp_params']:,}; make them the same network")
    # The reference reads the same ids lmexp tokenized, so both see the same vocabulary and text.
    train_ids = torch.from_numpy(run.corpus.ids["train"].astype("int64"))
    ours, theirs = multiprocessing.Pipe()
    side = Turns(ours, False, warmup, block, turns)
    # spawn: a process forked from one whose OpenMP threads have run can hang in its first parallel region.
    reference = multiprocessing.get_context("spawn").Process(
        target=reference_process, args=(theirs, recipe, train_ids, vocab, run.settings.seed,
                                        threads, warmup, block, turns, reference_keeps_freed_memory))

    class TakeTurns(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            self.threads = torch.get_num_threads()
            side.begin()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            side.after_step(batch[1].numel())

    taking_turns = TakeTurns()
    reference.start()
    try:
        lightning_loop(run, turns * block, warmup, torch.device("cpu"), callbacks=[taking_turns])
        kind, ref, *reference_threads = side.result()
    finally:
        ours.close()  # a reference still waiting for its turn (lmexp failed) gets EOFError, and stops
        reference.join()
    if kind == "error":
        raise SystemExit(f"the reference failed: {ref}")
    us = side.rates
    paired = sorted(b / a for a, b in zip(ref, us))
    quartiles = statistics.quantiles(paired, n=4)
    return {"recipe": recipe, "preset": f"experiment={preset}", "vocab": vocab, **params, "warmup": warmup,
            "reference_keeps_freed_memory": reference_keeps_freed_memory,
            "block": block, "turns": turns, "threads": taking_turns.threads,
            "reference_threads": reference_threads[0], "cpu_count": os.cpu_count(),
            "reference_tokens_per_sec": round(statistics.median(ref)), "lmexp_tokens_per_sec": round(statistics.median(us)),
            "reference_best": round(max(ref)), "lmexp_best": round(max(us)),
            "ratio": round(statistics.median(us) / statistics.median(ref), 3),
            "paired_ratio": round(statistics.median(paired), 3),
            "paired_quartiles": [round(quartiles[0], 3), round(quartiles[2], 3)],
            "paired_range": [round(paired[0], 3), round(paired[-1], 3)]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--warmup", type=int, default=10, help="each loop's first turn, not counted")
    parser.add_argument("--block", type=int, default=10, help="steps in a turn")
    parser.add_argument("--turns", type=int, default=30, help="counted turns of each loop")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--reference-keeps-freed-memory", action="store_true",
                        help="give the reference lmexp's allocator setting too (trainer.keep_freed_memory)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for recipe in args.recipes:
        print(json.dumps(compare(recipe, args.data.resolve(), args.warmup, args.block, args.turns, args.threads,
                                 args.reference_keeps_freed_memory)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
