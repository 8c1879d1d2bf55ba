"""Training speed on one GPU: tokens/s, model FLOPs utilisation (MFU) and peak memory.

    python benchmarks/gpu.py [--tiny] [--device cuda|cpu] [--results benchmarks/RESULTS.md] [--threads 2]

Rows: GPT-2 small (124M, block 1024, bf16-mixed, the recipe's micro-batch: data.batch_size=auto,
up to 32 rows) with trainer.compile false, then true; the 2 x 650 LSTM of the classic word-level
recipe (``experiment=zaremba_medium``: embedding 650, bptt 35, batch 20, float32 as the recipe
trains). Each is timed once with ``benchmarks/throughput.py``'s clock (the steps after the warm-up
ones, which hold torch.compile's compilation; Lightning's start-up is outside): a GPU lent to one
process is steady enough, and rounds taking turns would not fit the 5-minute budget with two
compilations each. The corpora are synthetic (ids drawn uniformly, written and tokenized in a
temporary folder): speed depends on the shapes alone, and these give GPT-2's vocabulary of
50,257 ids and WikiText-2's of 33,278, which the embedded corpus (11,559 words) does not.

MFU = model FLOPs per second / the device's peak, measured here as the best rate of a large square
matrix product (8192^3 in bfloat16 on a GPU; 1024^3 in float32 on a CPU, the precision its rows
train in). Model FLOPs per token: lmexp's ``training_flops`` (6 x parameters without embeddings,
plus attention's 6 x layers x context x width, the causal half that a fused kernel computes)
plus the output layer's 6 x vocabulary x width, which that estimate leaves out, tied to the
embedding or not (GPT-2 small: 567M + 232M = 799M a token; nanoGPT's count,
whose attention term also counts the masked half, is 855M). A row has an MFU only if it trains
in the peak's precision: on a GPU the LSTM (float32) has none. Peak memory: torch.cuda's peak
allocation in each row; on a CPU the process's peak resident memory in each row (VmHWM, reset).

Without CUDA, or with --tiny, every row is tiny (GPT-2 ``size=tiny``, a 64-wide LSTM, a few
steps): a check that the script works, about 40 s on 2 cores. Prints one JSON line per row and a last
one with the wall time (the budget is 5 minutes on one GPU); appends a section to --results (by
default benchmarks/RESULTS.md for full-size runs; a tiny run writes nowhere unless given one).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch._dynamo.utils import counters  # what torch.compile compiled: a compile row that made nothing was eager

from throughput import lightning_loop, synchronizer

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 300

GPT = ["model=gpt2", "regularization.dropout=0"]  # as nanoGPT trains GPT-2 small when it reports MFU
LSTM = ["experiment=zaremba_medium"]
# (row, overrides, vocabulary, warm-up steps, timed steps, most tokens a batch can hold): the
# corpus is sized from the last two so that an epoch never ends inside the timed steps.
FULL = [
    ("gpt2-small", GPT + ["trainer=gpu", "trainer.compile=false"], 50257, 10, 50, 32 * 1024),
    ("gpt2-small", GPT + ["trainer=gpu", "trainer.compile=true"], 50257, 10, 50, 32 * 1024),
    ("lstm-2x650", LSTM, 33278, 20, 400, 20 * 35),
]
TINY_GPT = GPT + ["trainer=cpu", "model.size=tiny", "data.batch_size=4", "data.effective_batch_size=null"]
TINY = [
    ("gpt2-tiny", TINY_GPT + ["trainer.compile=false"], 1000, 2, 4, 4 * 128),
    ("gpt2-tiny", TINY_GPT + ["trainer.compile=true"], 1000, 2, 4, 4 * 128),
    ("lstm-2x64", LSTM + ["trainer=cpu", "model.embedding_size=64", "model.hidden_size=64"], 1000, 2, 6, 20 * 35),
]


def peak_flops(device: torch.device) -> tuple[float, str]:
    """The best rate of a large square matrix product, about the most the device does, and what it was."""
    n, dtype, repeats = (8192, torch.bfloat16, 50) if device.type == "cuda" else (1024, torch.float32, 5)
    a, b, c = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(3))
    sync, best = synchronizer(device), 0.0
    for span in range(6):  # the first span warms up (clocks, the choice of kernel)
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b, out=c)
        sync()
        if span:
            best = max(best, repeats * 2 * n**3 / (time.perf_counter() - start))
    return best, f"{str(dtype).removeprefix('torch.')} {n}^3 matrix product"


def synthetic_corpus(scratch: str, vocab: int, tokens: int) -> list[str]:
    """train/valid/test files of words drawn uniformly from ``vocab - 2`` (the word tokenizer adds
    <unk> and <eos>), every word in train; the overrides that read them. Rows of the same corpus
    share the files, and so the tokens that lmexp caches."""
    folder = Path(scratch, f"vocab{vocab}-tokens{tokens}")
    if not folder.exists():
        folder.mkdir()
        rng, words = random.Random(0), [f"w{i}" for i in range(vocab - 2)]
        for split, n in (("train", tokens), ("valid", 1000), ("test", 1000)):
            drawn = (words if split == "train" else []) + rng.choices(words, k=n)
            lines = (" ".join(drawn[i:i + 100]) for i in range(0, len(drawn), 100))
            (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return ["data=text", *(f"data.{s}={folder}/{s}.txt" for s in ("train", "valid", "test")),
            "tokenizer.split=whitespace", "tokenizer.min_freq=1"]


def peak_memory(device: torch.device, reset: bool = False) -> float:
    """MB since the last reset: torch.cuda's peak allocation, or the process's peak resident memory."""
    if device.type == "cuda":
        if reset:
            torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    from lmexp.memory import peak_resident, reset_peak_resident

    if reset:
        reset_peak_resident()
    return peak_resident() / 2**20


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
              if line.startswith("model name")]
    return models[0] if models else platform.processor() or "CPU"


def measure(name, overrides, vocab, warmup, steps, batch_tokens, scratch, device, peak, peak_what) -> dict:
    from lmexp.cli import compose
    from lmexp.models import training_flops
    from lmexp.run import Run

    tokens = (warmup + steps) * batch_tokens * 5 // 4 + vocab
    data = synthetic_corpus(scratch, vocab, tokens)
    run = Run.from_config(compose([*overrides, *data, f"paths.cache_dir={scratch}/cache", "logger=none"]))
    s, model = run.settings, run.module.model
    output_layer = 6 * model.head.weight.numel()  # training_flops leaves it out, tied or not
    flops_per_token = training_flops(model, 1) + output_layer
    gc.collect()  # the previous row's module must not count in this row's peak
    if device.type == "cuda":
        torch.cuda.empty_cache()
    peak_memory(device, reset=True)
    graphs = counters["stats"]["unique_graphs"]
    rate = lightning_loop(run, steps, warmup, device, progress_bar=False)
    graphs = counters["stats"]["unique_graphs"] - graphs  # torch.compile's work in this row: none is eager
    # MFU only where the row trains in the precision whose peak was measured
    comparable = str(s.trainer.precision).startswith("bf16" if device.type == "cuda" else "32")
    return {
        "row": name, "compile": s.trainer.compile, "graphs_compiled": graphs, "precision": str(s.trainer.precision),
        "device": str(device),
        "threads": torch.get_num_threads(), "params": run.parameters[0], "vocab": run.datamodule.vocab_size,
        "corpus": "synthetic (words drawn uniformly)", "batch": s.data.batch_size,
        "window": run.module.block_size or s.data.bptt, "warmup": warmup, "steps": steps,
        "tokens_per_sec": round(rate), "flops_per_token": flops_per_token, "peak_tflops": round(peak / 1e12, 2),
        "peak_of": peak_what, "mfu": round(rate * flops_per_token / peak, 4) if comparable else None,
        "peak_memory_mb": round(peak_memory(device), 1),
        "memory": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak resident (VmHWM)",
    }


def write_results(path: Path, device: torch.device, rows: list[dict], peak_what: str, wall: float) -> None:
    lines = [f"## {device_name(device)}, {datetime.date.today().isoformat()}", "",
             f"torch {torch.__version__}; peak {rows[0]['peak_tflops']} TFLOP/s ({peak_what}); "
             f"{rows[0]['threads']} threads; wall time {wall:.0f} s (budget {BUDGET_S} s).", "",
             "| row | compile | precision | params | batch x window | tokens/s | MFU | peak memory (MB) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        lines.append(f"| {r['row']} | {r['compile']} | {r['precision']} | {r['params']:,} | {r['batch']} x "
                     f"{r['window']} | {r['tokens_per_sec']:,} | {mfu} | {r['peak_memory_mb']:,.0f} |")
    lines.append(f"\nPeak memory: {rows[0]['memory']}; corpora synthetic (see benchmarks/gpu.py).\n")
    if not path.exists():
        path.write_text("# Measured by benchmarks/gpu.py\n\nOne section per run, newest last.\n\n")
    with path.open("a") as f:
        f.write("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny rows, a few steps (always so without CUDA)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--results", type=Path, help="the markdown file a section is appended to")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tiny = args.tiny or device.type == "cpu"
    # Tiny figures mean nothing beside a GPU's: they go to a file only when one is named.
    results = args.results or (None if tiny else ROOT / "benchmarks" / "RESULTS.md")

    peak, peak_what = peak_flops(device)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for row in TINY if tiny else FULL:
            rows.append(measure(*row, scratch, device, peak, peak_what))
            print(json.dumps(rows[-1]), flush=True)
    wall = time.perf_counter() - start
    if results:
        write_results(results, device, rows, peak_what, wall)
    mfus = [r["mfu"] for r in rows if r["row"].startswith("gpt2") and r["mfu"] is not None]
    print(json.dumps({"device": device_name(device), "tiny": tiny, "wall_s": round(wall, 1), "budget_s": BUDGET_S,
                      "best_gpt2_mfu": max(mfus, default=None), "results": str(results) if results else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
