"""``python -m <entry point>`` run as a fresh process, forked from one that has already imported
lmexp, torch and Lightning: a table of seventy bad inputs would otherwise spend 2 to 13 s of
imports on each before it reads its first setting.

What each command gets is a process of its own, as from the shell: its argv, working folder,
environment, stdout and stderr (files), and exit status; ``runpy`` runs the entry point's
``__main__`` as ``python -m`` does. What it does not get is a fresh interpreter: modules imported
here are not imported again, so how an entry point's imports behave is left to the tests that
start it in a fresh interpreter (``conftest.run_lmexp``, ``tests/test_startup.py``).

The server runs in a process of its own, started by :class:`ForkServer` (a pytest worker has
threads, which a fork must not inherit): one JSON request per line on stdin, one reply per line.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

def _child(request: dict) -> None:
    """In the forked process: become the command, then exit with its status."""
    import runpy
    import signal
    import traceback

    signal.alarm(request["timeout"])  # a command that hangs is killed (status -14), as subprocess's timeout would
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    # Streams of its own on those descriptors, unbuffered as PYTHONUNBUFFERED makes a fresh
    # process's: a command killed by a signal keeps every line it wrote (the server's are block-buffered).
    sys.stdin = sys.__stdin__ = open(os.devnull)
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(open(1, "wb", 0, closefd=False), write_through=True)
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(open(2, "wb", 0, closefd=False), write_through=True,
                                                   errors="backslashreplace")
    sys.argv = [request["module"], *request["args"]]
    for imported in (request["module"], f"{request['module']}.__main__"):  # run afresh as __main__, as python -m does
        sys.modules.pop(imported, None)
    code = 0
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)  # a package runs its __main__
    except SystemExit as e:  # as the interpreter ends on one: a number is the status, a message goes to stderr
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    except BaseException:  # what an interpreter prints for an uncaught exception
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def serve() -> None:
    import importlib
    import logging

    # Lightning, imported where the root logger has no handler, gives its own logger one of its
    # own on stderr. A command imports it only after Hydra has set up logging, which sends its
    # lines (GPU available: ...) to the run's log and stdout: so a handler is there while it imports.
    placeholder = logging.NullHandler()
    logging.getLogger().addHandler(placeholder)
    for module in ("lmexp.__main__", "lmexp.evaluate", "lmexp.generate", "lmexp.prepare", "lmexp.train"):
        importlib.import_module(module)  # the entry points, and torch and Lightning with them
    logging.getLogger().removeHandler(placeholder)
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)


class ForkServer:
    def __init__(self, env: dict, folder: Path):
        self.folder = folder
        self.process = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        env=env, text=True)
        assert self.process.stdout.readline().strip() == "ready"
        self.count = 0

    def run(self, module: str, args: list[str], cwd: Path, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
        """``python -m module *args`` in ``cwd`` with exactly ``env``; its status, stdout and stderr."""
        self.count += 1
        out, err = self.folder / f"{self.count}.out", self.folder / f"{self.count}.err"
        request = {"module": module, "args": args, "cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err),
                   "timeout": timeout}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        reply = json.loads(self.process.stdout.readline())
        return subprocess.CompletedProcess([module, *args], reply["returncode"], out.read_text(), err.read_text())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


if __name__ == "__main__":
    serve()
