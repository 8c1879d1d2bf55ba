"""lmexp's own entries of the ``callbacks`` group (conf/callbacks/default.yaml), checked with the
rest of the config before anything runs. Lightning takes their arguments unchecked and fails on
them mid-run, if at all: EarlyStopping compares ``patience="abc"`` only once validation stops
improving, and ModelCheckpoint looks for its ``monitor`` after the first validation's epoch.
A callback of the user's own (``+callbacks.x._target_=...``) is checked when it is built."""

from __future__ import annotations

from typing import Callable

from lmexp.schema import check, is_number, is_whole

# What validation logs (lmexp/module.py, lmexp/metrics.py): what a checkpoint or an early stop may
# watch. Every one is lower-is-better.
MONITORABLE = ("val/ppl", "val/loss", "val/word_ppl", "val/bpb")


def _check_watch(name: str, entry: dict) -> None:
    check(entry.get("monitor") in MONITORABLE, f"callbacks.{name}.monitor", entry.get("monitor"),
          f"one of {', '.join(MONITORABLE)} (what validation logs)")
    # max would keep the worst checkpoint, or stop a run for improving (a sweep file's goal is held alike)
    check(entry.get("mode", "min") == "min", f"callbacks.{name}.mode", entry.get("mode"),
          f"min: {entry.get('monitor')} is lower-is-better")


def check_checkpoint(name: str, entry: dict) -> None:
    _check_watch(name, entry)
    steps, minutes = entry.get("every_n_steps"), entry.get("every_n_minutes")
    check(steps is None or (is_whole(steps) and steps >= 1), f"callbacks.{name}.every_n_steps", steps,
          "a positive integer, or null (off)")
    check(minutes is None or (is_number(minutes) and minutes > 0),
          f"callbacks.{name}.every_n_minutes", minutes, "a positive number, or null (off)")
    check(not (steps or minutes) or entry.get("save_last") in (True, "link"), f"callbacks.{name}.save_last",
          entry.get("save_last"), "true while every_n_steps or every_n_minutes is set (they write last.ckpt; set them to null "
          "to write none)")


def check_early_stopping(name: str, entry: dict) -> None:
    _check_watch(name, entry)
    patience = entry.get("patience")
    check(patience is None or (is_whole(patience) and patience >= 0), f"callbacks.{name}.patience", patience,
          "a whole number of validations without improvement, or null (never stop early)")


CHECKS: dict[str, Callable[[str, dict], None]] = {"lmexp.callbacks.Checkpoint": check_checkpoint,
                                                  "lmexp.callbacks.early_stopping": check_early_stopping}
