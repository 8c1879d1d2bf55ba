"""The runs a report is about, read from their own folders only (``results.json``,
``config.yaml``, ``metrics.csv``), so that a report needs no service and no account."""

from __future__ import annotations

import csv
import glob
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from lmexp.errors import UserError


@dataclass
class Point:
    """One validation of a run: where it was (step, training tokens seen, seconds since the run
    began), its perplexity and its bits per byte (None where the corpus has no byte counts)."""

    step: int
    tokens: Optional[float]
    wall_time_s: Optional[float]
    val_ppl: float
    val_bpb: Optional[float] = None


@dataclass
class RunRecord:
    folder: Path
    results: dict[str, Any]  # results.json
    config: dict[str, Any]  # config.yaml: every setting the run used
    curve: list[Point] = field(default_factory=list)  # metrics.csv's validation rows, in order

    @property
    def model(self) -> str:
        return self.results.get("model") or self.config.get("model", {}).get("name", "?")

    @property
    def seed(self) -> Optional[int]:
        return self.results.get("seed", self.config.get("seed"))


def _number(text: Optional[str]) -> Optional[float]:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def read_curve(metrics_csv: Path) -> list[Point]:
    """The rows of ``metrics.csv`` that hold a validation perplexity (Lightning's CSV logger writes
    one row per step and logging call; a validation's row also holds ``trainer/tokens`` and
    ``trainer/wall_time_s``, runs from before those were logged leave them None)."""
    if not metrics_csv.is_file():
        return []
    points: dict[int, Point] = {}
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            ppl = _number(row.get("val/ppl"))
            if ppl is None:
                continue
            step = _number(row.get("step"))
            if step is None:
                raise UserError(f"{metrics_csv}: a validation row without its step; is this Lightning's CSV log?")
            step = int(step)
            points[step] = Point(step, _number(row.get("trainer/tokens")), _number(row.get("trainer/wall_time_s")), ppl,
                                 _number(row.get("val/bpb")))
    return [points[s] for s in sorted(points)]


def read_run(folder: Path) -> RunRecord:
    results = _mapping(folder / "results.json", json.loads)
    config_file = folder / "config.yaml"
    config = _mapping(config_file, yaml.safe_load) if config_file.is_file() else {}
    return RunRecord(folder, results, config, read_curve(folder / "metrics.csv"))


def _mapping(file: Path, parse: Any) -> dict[str, Any]:
    """A run's JSON or YAML file as the mapping it must be: anything else is one line naming it."""
    try:
        value = parse(file.read_text())
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise UserError(f"{file} cannot be read ({' '.join(str(e).split())[:200]}); mend it, or leave its "
                        f"folder out of the paths reported") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{file} holds no mapping of settings; mend it, or leave its folder out of the paths reported")
    return value


def find_runs(paths: list[str]) -> list[RunRecord]:
    """Every run folder (one holding ``results.json``) at or under each path; a path may be a
    glob. Sweep folders are searched to any depth; a run appears once however it was named."""
    folders: dict[Path, None] = {}
    for pattern in paths:
        matches = sorted(glob.glob(pattern)) or ([pattern] if Path(pattern).exists() else [])
        if not matches:
            raise UserError(f"{pattern}: no such file or folder")
        for match in map(Path, matches):
            if match.is_file() and match.name == "results.json":
                match = match.parent
            found = [match] if (match / "results.json").is_file() else \
                sorted(p.parent for p in match.rglob("results.json"))
            folders.update((f.resolve(), None) for f in found)
    if not folders:
        raise UserError(f"{' '.join(paths)}: no run folders (folders holding results.json) here")
    return [read_run(folder) for folder in folders]


# Settings that change neither what a run learns nor how fast: where its cache is, how it was
# logged and shown, when it saved, which checkpoint it continued from. Runs that differ only in
# these and their seed are one experiment. (Speed settings, such as trainer.compile, stay: the
# report's curves against wall time tell them apart.)
NOT_THE_EXPERIMENT = ("seed", "resume", "paths", "logger", "trainer.enable_progress_bar", "trainer.log_every_n_steps",
                      "trainer.num_sanity_val_steps", "callbacks.progress_bar", "callbacks.signals",
                      "callbacks.lr_monitor", "callbacks.throughput", "callbacks.checkpoint.dirpath",
                      "callbacks.checkpoint.every_n_steps", "callbacks.checkpoint.every_n_minutes")


def experiment_settings(run: RunRecord) -> dict[str, Any]:
    return without_keys(run.config, NOT_THE_EXPERIMENT)


def without_keys(settings: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """``settings`` less the dotted ``keys`` (``trainer.log_every_n_steps``), at any depth."""
    kept = {}
    for name, value in settings.items():
        if name in keys:
            continue
        inner = tuple(k.split(".", 1)[1] for k in keys if k.startswith(f"{name}."))
        kept[name] = without_keys(value, inner) if inner and isinstance(value, dict) else value
    return kept


def seed_groups(runs: list[RunRecord]) -> list[list[RunRecord]]:
    """The runs grouped by experiment: each group's runs have the same settings but for the seed,
    in the order the runs came. A run without its config.yaml (a job that failed before it
    started) is a group of its own: nothing says what it shares with others."""
    groups: dict[str, list[RunRecord]] = {}
    for run in runs:
        key = json.dumps(experiment_settings(run), sort_keys=True, default=str) if run.config else str(run.folder)
        groups.setdefault(key, []).append(run)
    return list(groups.values())
