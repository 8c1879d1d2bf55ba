"""SIGINT (Ctrl+C) and SIGTERM before anything takes them itself: one line and the status a shell
expects (128 + the signal), not a traceback from whatever import or loop the signal fell in, and
not, for SIGTERM, an end where the process stands that skips every clean-up (a cache entry's
temporary folder, an evaluation's scratch folder). A training run takes the signals itself once it
starts (lmexp.callbacks) and stops at a step; before that, and in the other commands, these do.
And a reader that leaves early (``| head``) ends a command quietly, as it ends other tools."""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from typing import Iterator, NoReturn


class StoppedEarly(BaseException):
    """A stop signal, raised where the process was: the blocks it leaves clean up as they go. No
    KeyboardInterrupt: Lightning's trainer ends the process on one with status 1 and a message of
    its own (its _call_and_handle_interrupt), where it re-raises any other BaseException after its
    teardown. No Exception either, which code that handles errors would take for one."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    def end(self, told: str) -> NoReturn:
        """``told`` as lmexp's one line, and the status a shell gives a process this signal ended."""
        print(f"lmexp: {told}", file=sys.stderr, flush=True)
        sys.exit(128 + self.signum)


@contextmanager
def stopping_early() -> Iterator[None]:
    """A stop signal raises StoppedEarly inside: SIGTERM would otherwise end the process where it
    stands, and SIGINT raise a KeyboardInterrupt, which Lightning turns into exit status 1."""
    def stop(signum: int, frame) -> None:
        raise StoppedEarly(signum)

    try:
        previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread, which alone takes signals
        previous = {}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def reader_may_leave() -> Iterator[None]:
    """Output piped into a reader that stops reading (``--help | head``): the command ends with no
    word and 128 + SIGPIPE, as ``cat`` does, not with BrokenPipeError's traceback. Flushed here,
    so that the write that fails is not the interpreter's own at exit, which it reports too."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        sys.exit(128 + signal.SIGPIPE)


@contextmanager
def stopped_as_one_line(command: str, kept: str) -> Iterator[None]:
    """For a command that writes its files whole or not at all (lmexp.atomic): a stop signal ends
    it with one line, naming the command and what ``kept`` says of its files, and 128 + signal;
    a reader that leaves ends it as reader_may_leave says."""
    try:
        with reader_may_leave(), stopping_early():
            yield
    except StoppedEarly as stop:
        stop.end(f"{stop}: {command} stopped; {kept}")
