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
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore(states: dict) -> None:
    random.setstate(states["python"])
    numpy = states["numpy"]
    np.random.set_state({**numpy, "state": {**numpy["state"], "key": numpy["state"]["key"].numpy().astype(np.uint32)}})
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
