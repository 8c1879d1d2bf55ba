import atexit
import contextlib
import importlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode

from forkserver import ForkServer

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"

# The cores shared out among the workers (pytest -n), for each worker and the runs it starts:
# two workers on 2 cores each running torch with 2 threads made every run wait on the other's
# threads (the suite took a third longer). Tests that compare two runs make both with this count.
THREADS = max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
torch.set_num_threads(THREADS)
os.environ["OMP_NUM_THREADS"] = str(THREADS)  # every process a test starts


# The files with the longest runs go first: the workers take files in this order, and one of
# these started last would leave the other worker idle while it ran (3 minutes on 2 cores).
LONGEST_FIRST = ("test_bad_inputs.py", "test_end_to_end.py", "test_resume.py", "test_ddp.py", "test_model_zoo_runs.py",
                 "test_optuna.py", "test_memory.py", "test_evaluate.py", "test_checkpoints.py", "test_atomic_writes.py",
                 "test_sizing.py", "test_module.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache for the whole session: the tiny corpus is tokenized once."""
    return tmp_path_factory.mktemp("lmexp-cache")


def clean_env(cache_dir: Path, home: Path) -> dict:
    """No W&B account, no inherited W&B mode: what a fresh machine sees."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(LMEXP_CACHE=str(cache_dir), HOME=str(home), PYTHONUNBUFFERED="1")
    return env


def entry_point(module: str, args: list[str], cwd: Path, cache_dir: Path,
                timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m <module>`` (lmexp.evaluate, lmexp.generate, lmexp.prepare) as a user runs it, in a
    process of its own (forked: see :func:`forked`)."""
    return forked(module, args, cwd, clean_env(cache_dir, cwd), timeout)


def entry_here(module: str, args: list[str], cache_dir: Path, capsys) -> str:
    """``python -m <module>`` (lmexp.evaluate, lmexp.generate) run in this process; its stdout. For
    a command line whose own path another test already takes through ``entry_point``: a fresh
    interpreter spends about 10 s importing torch and Lightning first."""
    main = importlib.import_module(module).main
    before = os.environ.get("LMEXP_CACHE")
    os.environ["LMEXP_CACHE"] = str(cache_dir)
    capsys.readouterr()
    try:
        main(args)
    finally:
        os.environ.pop("LMEXP_CACHE") if before is None else os.environ.update(LMEXP_CACHE=before)
    return capsys.readouterr().out


def signal_mask(pid: int, kind: str) -> int:
    """Process ``pid``'s signals of a ``kind`` the kernel lists: SigCgt (caught), SigIgn (ignored)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1], 16) for line in f if line.startswith(f"{kind}:"))


def handles_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has a SIGTERM handler of its own: lmexp.stops installs one when a
    command's main starts, and no import before it does. A test that signals a command waits for
    it, rather than for a time that a loaded machine outruns."""
    return bool(signal_mask(pid, "SigCgt") & 1 << (signal.SIGTERM - 1))


def ignores_sigint(pid: int) -> bool:
    """Whether process ``pid`` ignores SIGINT: a tokenizing worker, once its initializer has run."""
    with contextlib.suppress(FileNotFoundError, StopIteration):
        return bool(signal_mask(pid, "SigIgn") & 1 << (signal.SIGINT - 1))
    return False


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (a tokenizing pool's workers), from any of its threads."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that has ended since
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def write_zipf_corpus(folder: Path, words: int, lines: dict[str, int], longest: int, seed: int) -> None:
    """train/valid/test files of ``lines[split]`` lines, each of 3 to ``longest`` words drawn from a
    Zipf distribution over ``words`` words: many distinct contexts, some words far more common."""
    folder.mkdir()
    generator = torch.Generator().manual_seed(seed)
    frequencies = 1.0 / torch.arange(1, words + 1, dtype=torch.float64)
    for split, count in lines.items():
        text = []
        for _ in range(count):
            length = int(torch.randint(3, longest + 1, (1,), generator=generator))
            drawn = torch.multinomial(frequencies, length, replacement=True, generator=generator)
            text.append(" ".join(f"w{i}" for i in drawn.tolist()))
        (folder / f"{split}.txt").write_text("\n".join(text) + "\n")


_forks: ForkServer | None = None


def forked(module: str, args: list[str], cwd: Path, env: dict, timeout: int) -> subprocess.CompletedProcess:
    """``python -m module`` as a process forked from one that has imported lmexp (tests/forkserver.py):
    a fresh interpreter spends about 10 s importing torch and Lightning before its first step."""
    global _forks
    if _forks is None:
        _forks = ForkServer(dict(os.environ), Path(tempfile.mkdtemp(prefix="lmexp-forks-")))
        atexit.register(_forks.close)
    return _forks.run(module, args, cwd=cwd, env=env, timeout=timeout)


def run_lmexp(args: list[str], cwd: Path, cache_dir: Path, timeout: int = 600,
              connections: Path | None = None, faults: bool = False,
              commands: Path | None = None, environ: dict | None = None,
              fresh: bool = False) -> subprocess.CompletedProcess:
    """``python -m lmexp *args``: a process of its own, forked from one that has imported lmexp,
    or with ``fresh`` (or ``connections``) a fresh interpreter.
    ``connections``: refuse every connection beyond this machine, and list the attempts in that file
    (the guard is installed when an interpreter starts). ``faults``: make tests/faults.py's callbacks
    importable by the run. ``commands``: a folder of programs found before the system's (a cluster's
    sbatch, which this machine does not have). ``environ``: more variables (those srun sets for a
    SLURM job's task)."""
    env = {**clean_env(cache_dir, cwd), **(environ or {})}
    if commands is not None:
        env["PATH"] = os.pathsep.join([str(commands), env.get("PATH", "")])
    paths = [env.get("PYTHONPATH", "")]
    if connections is not None:
        paths.insert(0, str(ROOT / "tests" / "no_network"))
        env.update(LMEXP_TEST_CONNECTIONS=str(connections))
    if faults:
        paths.insert(0, str(ROOT / "tests"))
    env.update(PYTHONPATH=os.pathsep.join(paths))
    if connections is None and not fresh:
        return forked("lmexp", args, cwd, env, timeout)
    return subprocess.run([sys.executable, "-m", "lmexp", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


# Small enough to train in seconds on 2 cores, large enough to learn something. Logged to CSV:
# a W&B offline run adds 5 s to each; the tests of the W&B run ask for it (logger=wandb after SMALL).
def train_here(args: list[str], run_dir: Path, cache_dir: Path) -> dict:
    """A run trained in this process, for a test that needs only what it leaves (results.json, a
    checkpoint): a fresh interpreter spends about 10 s importing torch and Lightning first. The
    command line's own path is the subject of the tests that use ``run_lmexp``."""
    from lmexp.cli import compose
    from lmexp.train import train

    return train(compose([*args, f"paths.cache_dir={cache_dir}"]), run_dir)


SMALL = ["model.embedding_size=32", "model.hidden_size=32", "model.num_layers=1", "data.batch_size=16",
         "data.bptt=32", "trainer.enable_progress_bar=false", "logger=csv"]


def assert_dropout_acts_in_training_only(plain: torch.nn.Module, dropped: torch.nn.Module, vocab: int) -> None:
    """``dropped`` (a model built with a dropout rate) given ``plain``'s weights: its training pass
    changes from call to call, its eval pass is exactly ``plain``'s."""
    dropped.load_state_dict(plain.state_dict())
    idx = torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(dropped.eval()(idx)[0], plain.eval()(idx)[0])
        dropped.train()
        assert not torch.equal(dropped(idx)[0], dropped(idx)[0])


def sweep_of(preset: str) -> dict[str, list[str]]:
    """The preset's sweep as Hydra's basic sweeper expands it: each key's values."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        hydra = hydra_compose("config", overrides=[f"experiment={preset}"], return_hydra_config=True).hydra
    assert hydra.mode == RunMode.MULTIRUN
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in hydra.sweeper.params.items()])
    return {o.get_key_element(): list(o.sweep_string_iterator()) for o in parsed}
