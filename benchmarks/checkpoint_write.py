"""What writing checkpoints atomically costs: lmexp's AtomicCheckpointIO against Lightning's
TorchCheckpointIO, on a checkpoint the size of GPT-2 small's (124M parameters with AdamW's two
moments: about 1.5 GB) or ``--params`` of your choice.

    python benchmarks/checkpoint_write.py [--params 124e6] [--rounds 5] [--folder outputs/bench]

The two take turns (order flipped every round), writing into ``--folder`` (the file system the
run folders are on); prints the median seconds of each, one JSON line. AtomicCheckpointIO's extra
work is the fsync that makes the renamed file durable; Lightning's serialises into memory first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from lightning_fabric.plugins import TorchCheckpointIO

from lmexp.checkpoint import AtomicCheckpointIO

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=124e6)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--folder", type=Path, default=ROOT / "outputs" / "bench-checkpoint-write")
    args = parser.parse_args()
    n = int(args.params)
    checkpoint = {"state_dict": {"w": torch.randn(n)}, "optimizer_states": [{"exp_avg": torch.randn(n),
                                                                            "exp_avg_sq": torch.rand(n)}]}
    args.folder.mkdir(parents=True, exist_ok=True)
    writers = {"lightning": TorchCheckpointIO(), "lmexp_atomic": AtomicCheckpointIO()}
    seconds: dict[str, list[float]] = {name: [] for name in writers}
    for round_ in range(args.rounds):
        for name in (list(writers) if round_ % 2 == 0 else list(writers)[::-1]):
            path = args.folder / f"{name}.ckpt"
            start = time.perf_counter()
            writers[name].save_checkpoint(checkpoint, path)
            seconds[name].append(time.perf_counter() - start)
    size = (args.folder / "lmexp_atomic.ckpt").stat().st_size
    for path in args.folder.glob("*.ckpt"):
        path.unlink()
    print(json.dumps({"bytes": size, "rounds": args.rounds, "threads": torch.get_num_threads(),
                      **{f"{name}_s": round(statistics.median(s), 3) for name, s in seconds.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
