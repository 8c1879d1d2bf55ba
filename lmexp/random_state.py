"""Every random state a run draws from, as plain values: a checkpoint holds them (and loads with
``weights_only``), so that a resumed run draws the same dropout masks as the run left alone."""

from __future__ import annotations

import random

import numpy as np
import torch


def capture() -> dict:
    numpy = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {**numpy, "state": {**numpy["state"], "key": torch.from_numpy(numpy["state"]["key"].astype(np.int64))}},
        "torch": torch.get_rng_state(),
        # This process's GPU only: get_rng_state_all would make a CUDA context on every GPU in
        # every DDP process, and a run resumed on fewer GPUs could not set them all back.
        "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }


def restore(states: dict) -> None:
    random.setstate(states["python"])
    numpy = states["numpy"]
    np.random.set_state({**numpy, "state": {**numpy["state"], "key": numpy["state"]["key"].numpy().astype(np.uint32)}})
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        # One state (or, in checkpoints written before 2026-11-30, one per GPU: this device's, if kept)
        device = torch.cuda.current_device()
        torch.cuda.set_rng_state(states["cuda"][device if device < len(states["cuda"]) else 0])


def process_seed(seed: int, rank: int, step: int) -> int:
    """The seed of one DDP process's own random stream, from the run's seed, the process's rank
    and the step it starts at."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def generator_states() -> torch.Tensor:
    """This process's torch generators as one byte tensor (CPU's, then its GPU's where CUDA is in
    use): what its dropout masks are drawn from, of the same size in every process of a run."""
    states = [torch.get_rng_state()]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states.append(torch.cuda.get_rng_state())
    return torch.cat(states)


def restore_generators(states: torch.Tensor) -> None:
    cpu = torch.get_rng_state().numel()
    torch.set_rng_state(states[:cpu].clone())
    if states.numel() > cpu and torch.cuda.is_available():
        torch.cuda.set_rng_state(states[cpu:].clone())
