"""benchmarks/references.py's ``Turns``: two training loops take turns in blocks of steps, each
clocked only in its own turns; a loop that fails leaves the other to finish alone."""

import multiprocessing
import statistics
import sys
import threading
import time

import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import references  # noqa: E402  (benchmarks/references.py)


def loop(side, name: str, seconds: float, order: list) -> None:
    side.begin()
    while True:
        order.append(name)
        time.sleep(seconds)  # a step: 10 tokens
        if not side.after_step(10):
            return


def test_two_loops_take_turns_and_each_clock_leaves_out_its_waiting():
    # The two sides in two threads here (in two processes in the benchmark): the pipe is the same.
    ours, theirs = multiprocessing.Pipe()
    fast, slow = references.Turns(theirs, True, 2, 3, 4), references.Turns(ours, False, 2, 3, 4)
    order = []
    other = threading.Thread(target=loop, args=(fast, "fast", 0.01, order))
    other.start()
    loop(slow, "slow", 0.03, order)
    other.join()
    assert order == ["fast"] * 2 + ["slow"] * 2 + (["fast"] * 3 + ["slow"] * 3) * 4
    assert slow.result() == ("done", fast.rates, torch.get_num_threads()) and len(fast.rates) == len(slow.rates) == 4
    # 10 tokens a step of at least 10 (30) ms is at most 1,000 (333) tokens/s. The steps' times
    # are 1 to 3, and so are the rates: a clock that also ran while the other loop had its turn
    # would put both at the same rate.
    assert all(r <= 1000 for r in fast.rates) and all(r <= 1000 / 3 for r in slow.rates)
    assert statistics.median(fast.rates) > 2 * statistics.median(slow.rates)


def test_a_reference_that_fails_leaves_lmexp_to_finish_alone_and_says_why():
    ours, theirs = multiprocessing.Pipe()
    ids = torch.full((5000,), 50)  # ids past the vocabulary of 10: the reference's embedding fails
    failing = threading.Thread(target=references.reference_process, args=(theirs, "lstm", ids, 10, 0, 1, 1, 2, 3))
    failing.start()
    side, order = references.Turns(ours, False, 1, 2, 3), []
    loop(side, "lmexp", 0.001, order)
    failing.join()
    assert len(order) == 1 + 2 * 3 and len(side.rates) == 3
    kind, message = side.result()
    assert kind == "error" and message.startswith("IndexError")
