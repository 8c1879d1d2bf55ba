"""Each fast path's measured effect: lmexp's training loop with a switch on and off.

    python benchmarks/fast_paths.py [--steps 60] [--warmup 5] [--rounds 4] [--threads 2] [--data ../shared/data]
                                    [--switch trainer.compile]

For every (switch, config) below, the two settings take turns (order flipped every round),
each timed with ``benchmarks/throughput.py``'s clock over the same steps of the same batches;
prints the median training tokens/s of each and the speed-up, one JSON line per row. A switch
that acts on the whole process (``PROCESS_WIDE``: once set, it stays set) is timed in a fresh
process each time; the others in this one. Configs that need a corpus of ``--data`` are
skipped when it is absent.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from throughput import lightning_loop

ROOT = Path(__file__).resolve().parent.parent

# (switch, its "on" and "off" overrides, the config it is measured on, a file the config needs)
ROWS = [
    ("optimizer.fused", ["optimizer.fused=null"], ["optimizer.fused=false"], [], None),
    ("optimizer.fused", ["optimizer.fused=null"], ["optimizer.fused=false"],
     ["experiment=nanogpt_shakespeare_char_cpu", "data.path={data}/tinyshakespeare/input.txt"], "tinyshakespeare/input.txt"),
    # The warm-up steps hold the compilation (the first step waits for it), not the timed ones.
    ("trainer.compile", ["trainer.compile=true"], ["trainer.compile=false"],
     ["experiment=nanogpt_shakespeare_char_cpu", "data.path={data}/tinyshakespeare/input.txt"], "tinyshakespeare/input.txt"),
    ("trainer.compile", ["trainer.compile=true"], ["trainer.compile=false"],
     ["experiment=word_lm_example", "data.root={data}/ptb"], "ptb/ptb.train.txt"),
    ("trainer.fused_loss", ["trainer.fused_loss=true"], ["trainer.fused_loss=false"], [], None),
    ("trainer.fused_loss", ["trainer.fused_loss=true"], ["trainer.fused_loss=false"],
     ["experiment=word_lm_example", "data.root={data}/ptb"], "ptb/ptb.train.txt"),
    ("trainer.fused_loss", ["trainer.fused_loss=true"], ["trainer.fused_loss=false"],
     ["experiment=word_lm_example_transformer", "data.root={data}/ptb"], "ptb/ptb.train.txt"),
    ("trainer.keep_freed_memory", ["trainer.keep_freed_memory=true"], ["trainer.keep_freed_memory=false"], [], None),
    ("trainer.keep_freed_memory", ["trainer.keep_freed_memory=true"], ["trainer.keep_freed_memory=false"],
     ["experiment=word_lm_example", "data.root={data}/ptb"], "ptb/ptb.train.txt"),
    ("trainer.keep_freed_memory", ["trainer.keep_freed_memory=true"], ["trainer.keep_freed_memory=false"],
     ["experiment=nanogpt_shakespeare_char_cpu", "data.path={data}/tinyshakespeare/input.txt"], "tinyshakespeare/input.txt"),
]
# bfloat16 products on a CPU that has them (AVX-512 BF16 or AMX); skipped where it has not.
ROWS += [("trainer.precision", ["trainer.precision=bf16-mixed"], ["trainer.precision=32-true"], config, needs)
         for config, needs in (([], None),
                               (["experiment=word_lm_example", "data.root={data}/ptb"], "ptb/ptb.train.txt"),
                               (["experiment=nanogpt_shakespeare_char_cpu", "data.path={data}/tinyshakespeare/input.txt"],
                                "tinyshakespeare/input.txt"))]
PROCESS_WIDE = {"trainer.keep_freed_memory"}  # glibc's malloc settings, made when the trainer is


def measure(overrides: list[str], steps: int, warmup: int, threads: int) -> float:
    """One timing of lmexp's loop with these overrides, in a process of its own."""
    from lmexp.cli import compose
    from lmexp.run import Run

    torch.set_num_threads(threads)
    return lightning_loop(Run.from_config(compose(overrides)), steps, warmup, torch.device("cpu"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--switch", help="only the rows of this switch, e.g. trainer.compile")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from lmexp.cli import compose
    from lmexp.options.trainer import cpu_has_bf16
    from lmexp.run import Run

    for switch, on, off, config, needs in ROWS:
        if args.switch and switch != args.switch:
            continue
        config = [c.format(data=args.data.resolve()) for c in config]
        if needs and not (args.data / needs).is_file():
            print(json.dumps({"switch": switch, "config": config, "skipped": f"{args.data / needs} is not here"}))
            continue
        if switch == "trainer.precision" and not cpu_has_bf16():
            print(json.dumps({"switch": switch, "config": config, "skipped": "this CPU has no bfloat16 arithmetic"}))
            continue
        overrides = {name: ["logger=none", "trainer.enable_progress_bar=false", *config, *o]
                     for name, o in (("on", on), ("off", off))}
        if switch in PROCESS_WIDE:
            def timed(name: str) -> float:
                # spawn: a fork would inherit this process's settings, and its OpenMP threads' state.
                with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
                    return fresh.submit(measure, overrides[name], args.steps, args.warmup, args.threads).result()
        else:
            runs = {name: Run.from_config(compose(o)) for name, o in overrides.items()}

            def timed(name: str) -> float:
                return lightning_loop(runs[name], args.steps, args.warmup, torch.device("cpu"))
        rates = {"on": [], "off": []}
        for r in range(args.rounds):
            for name in (("on", "off") if r % 2 == 0 else ("off", "on")):
                rates[name].append(timed(name))
        fast, slow = statistics.median(rates["on"]), statistics.median(rates["off"])
        print(json.dumps({"switch": switch, "on": on, "off": off, "config": config or ["(default run)"],
                          "threads": torch.get_num_threads(), "steps": args.steps, "rounds": args.rounds,
                          "on_tokens_per_sec": round(fast), "off_tokens_per_sec": round(slow),
                          "speedup": round(fast / slow, 3), "all_on": [round(x) for x in rates["on"]],
                          "all_off": [round(x) for x in rates["off"]]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
