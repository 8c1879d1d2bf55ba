"""What a sweep found: one row per job (what it changed, how it ended, its numbers), sorted by
validation perplexity, in ``summary.csv`` and ``summary.md`` in the sweep's folder.

Written when a multirun ends (``SweepSummary``, a Hydra callback in conf/config.yaml), and on
demand with ``python -m lmexp.summary SWEEP_DIR``: for a sweep that was stopped, or whose jobs
ran elsewhere (SLURM) and are still coming in. Each row comes from the job's own folder (its
``results.json`` and ``.hydra/overrides.yaml``), so the summary never disagrees with the jobs.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml
from hydra.experimental.callback import Callback

from lmexp.atomic import write_text
from lmexp.errors import HelpRequested, UserError, reported_as_one_line
from lmexp.stops import stopped_as_one_line

# (column, key in results.json, how the Markdown table shows it)
NUMBERS = (
    ("params", "params", "{:,}"),
    ("best_val_ppl", "best_val_ppl", "{:.2f}"),
    ("best_val_bpb", "val_bpb", "{:.3f}"),  # the best validation's (lowest NLL: lowest ppl and bpb at once)
    ("test_ppl", "test_ppl", "{:.2f}"),
    ("test_word_ppl", "test_word_ppl", "{:.2f}"),
    ("test_bpb", "test_bpb", "{:.3f}"),
    ("tokens_per_sec", "train_tokens_per_sec", "{:,.0f}"),
    ("wall_time_s", "wall_time_s", "{:.0f}"),
)
COLUMNS = ("job", "overrides", "status", *(name for name, _, _ in NUMBERS), "error")

# results.json's status, as a sweep's reader says it. A job with no results.json was killed,
# or is still running.
STATUS = {"finished": "done", "pruned": "pruned", "failed": "failed", "interrupted": "interrupted"}
MEASURES = {"best_val_ppl": "best validation perplexity", "best_val_bpb": "best validation bits per byte"}


def status_of(results: dict) -> str:
    """A job's status word (STATUS) from its results.json: one without a status is from before
    runs wrote one, which wrote it only for a finished run; none at all ({}) is a run killed or
    not done yet. The sweep summary and the report both read it here."""
    if not results:
        return "unfinished"
    return STATUS.get(results.get("status", "finished"), "unfinished")


def units(results: dict[str, Any]) -> Optional[str]:
    """What a run's perplexity is per: its tokenizer's units, of its vocabulary (a BPE of 8,000
    and one of 32,000 cut text into different pieces); None where results.json does not say, or
    the run has no perplexity (a failed job's record names its tokenizer, not its vocabulary)."""
    tokenizer, size = results.get("tokenizer"), results.get("vocab_size")
    if tokenizer is None or results.get("best_val_ppl") is None:
        return None
    return f"{tokenizer} of {size:,}" if isinstance(size, int) else tokenizer


def ranked_by(each_units: Iterable[Optional[str]]) -> str:
    """The column runs are ranked by: the best validation perplexity, per token. Runs that predict
    different units (units()) have perplexities that do not compare; the bits per byte of the
    same text do, so they rank those."""
    return "best_val_bpb" if len(set(each_units) - {None}) > 1 else "best_val_ppl"


def ranked_by_says(each_units: Iterable[Optional[str]]) -> str:
    """What a table's heading says it is ranked by, and why when it is not token perplexity."""
    names = sorted(set(each_units) - {None})
    measure = ranked_by(names)
    why = (f" (the runs predict different units: {', '.join(names)}; token perplexities do not compare across "
           f"them)" if measure != "best_val_ppl" else "")
    return MEASURES[measure] + why


def scored_apart_says(results: Iterable[dict[str, Any]]) -> str:
    """A sentence for the runs done (of these results.json) that predict the same units but were
    scored on different numbers of validation or test tokens: trainer.limit_val_batches and
    limit_test_batches count batches, whose tokens differ from model to model (an LSTM's streams, a
    Transformer's windows), so the perplexities are of different text. Empty where they agree."""
    done = [r for r in results if status_of(r) == "done"]
    apart = []
    for split, key in (("validation", "val_tokens"), ("test", "test_tokens")):
        for each in sorted({units(r) for r in done} - {None}):
            counts = sorted({r[key] for r in done if units(r) == each and isinstance(r.get(key), int)})
            if len(counts) > 1:
                apart.append(f"{split} {counts[0]:,} to {counts[-1]:,} tokens")
    if not apart:
        return ""
    return (f" They were scored on different amounts of text ({'; '.join(dict.fromkeys(apart))}), so their "
            "perplexities do not compare: trainer.limit_val_batches and limit_test_batches count batches, "
            "whose tokens differ from model to model; null scores the whole split.")


def job_folders(sweep_dir: Path) -> list[Path]:
    """The sweep's jobs: each folder Hydra made for one (it holds .hydra/overrides.yaml)."""
    return sorted((p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")), key=_job_order)


def _job_order(folder: Path) -> tuple:
    number = folder.name.split("-", 1)[0]  # hydra.sweep.subdir starts with the job's number
    return (int(number), folder.name) if number.isdigit() else (math.inf, folder.name)


def job_row(folder: Path) -> dict[str, Any]:
    overrides = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text()) or []
    try:
        results = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError):  # none: killed, or not done yet
        results = {}
    row = {"job": folder.name, "overrides": list(overrides), "status": status_of(results),
           "error": results.get("error"), "units": units(results), "results": results}
    row.update({name: results.get(key) for name, key, _ in NUMBERS})
    return row


def rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every job: those done first, the best validation perplexity first (bits per byte across
    units: ranked_by); then the rest (pruned, interrupted, failed, unfinished) likewise; jobs
    without a perplexity last, in job order."""
    found = [job_row(folder) for folder in job_folders(sweep_dir)]
    measure = ranked_by(r["units"] for r in found)
    return sorted(found, key=lambda r: ranking(r["status"], r[measure]))


def ranking(status: str, ppl: Any) -> tuple[bool, float]:
    """A sort key: runs done before the rest, whose perplexity is of part of their training (a
    pruned or interrupted run's) and does not compete; within each, lowest perplexity first."""
    return status != "done", best_first(ppl)


def best_first(ppl: Any) -> float:
    """A sort key for perplexities, lowest first; a run without one (failed, unfinished, diverged) last."""
    return ppl if _finite(ppl) else math.inf


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def shared_overrides(found: list[dict]) -> list[str]:
    """The overrides every job has: said once above the table, not in each row."""
    if not found:
        return []
    common = set(found[0]["overrides"]).intersection(*(r["overrides"] for r in found[1:]))
    return [o for o in found[0]["overrides"] if o in common] if len(found) > 1 else []


def as_csv(found: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in found:
        writer.writerow({**row, "overrides": " ".join(row["overrides"]),
                         **{k: "" if row[k] is None else row[k] for k in COLUMNS if k != "overrides"}})
    return out.getvalue()


def as_markdown(found: list[dict], sweep_dir: Path) -> str:
    shared = shared_overrides(found)
    done = sum(r["status"] == "done" for r in found)
    others = "".join(f", {n} {status}" for status in ("pruned", "failed", "interrupted", "unfinished")
                     if (n := sum(r["status"] == status for r in found)))
    lines = [f"# Sweep {sweep_dir}", "",
             f"{len(found)} job{'s' if len(found) != 1 else ''}: {done} done{others}. Jobs done first, each group by "
             f"{ranked_by_says(r['units'] for r in found)}."
             f"{scored_apart_says(r['results'] for r in found)}", ""]
    if shared:
        lines += [f"Every job: `{' '.join(shared)}`", ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    formats = {name: fmt for name, _, fmt in NUMBERS}
    for row in found:
        own = [o for o in row["overrides"] if o not in shared]
        # A | would end the cell, inside backticks too (an override's value may hold one).
        cells = [row["job"], f"`{' '.join(own)}`".replace("|", "\\|") if own else "", row["status"]]
        cells += ["" if row[name] is None else formats[name].format(row[name]) for name in formats]
        cells.append((row["error"] or "").replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    found = rows(sweep_dir)
    write_text(sweep_dir / "summary.csv", as_csv(found))
    write_text(sweep_dir / "summary.md", as_markdown(found, sweep_dir))
    return found


class SweepSummary(Callback):
    """Hydra's end of a multirun: the summary of every job, and where it is."""

    def __init__(self) -> None:
        self.started = 0.0

    def on_multirun_start(self, config, **kwargs: Any) -> None:
        self.started = time.time()

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        found = write_summary(sweep_dir)
        measure = ranked_by(r["units"] for r in found)
        best = found[0] if found and found[0]["status"] == "done" and _finite(found[0][measure]) else None
        said = {"best_val_ppl": "best val ppl {:.2f}", "best_val_bpb": "best val bpb {:.3f}"}[measure]
        # Hydra writes a job's .hydra when it launches it: a folder not launched by this sweep is an
        # earlier one's (another grid in the same folder, or the trials of a search continued).
        earlier = {r["job"] for r in found if (sweep_dir / r["job"] / ".hydra" / "overrides.yaml").stat().st_mtime
                   < self.started}
        before = f" ({len(earlier)} of them from before this sweep, not run in it)" if earlier else ""
        told = f"; {said.format(best[measure])} ({best['job']}{', from before' if best['job'] in earlier else ''})" \
            if best else ""
        # A failed job's one line has scrolled away by the end: the count, and where each one's is.
        failed = sum(r["status"] == "failed" for r in found)
        failures = f", {failed} failed (each one's error is in summary.md)" if failed else ""
        print(f"lmexp: sweep of {len(found)} jobs{before}{failures}{told} -> {sweep_dir / 'summary.md'}", flush=True)
        # Jobs of processes of their own (a submitit launcher's) stopped by a signal in this sweep; a
        # folder stopped before (an Optuna trial asked again in a folder of its own) is not news.
        stopped = [r["job"] for r in found if r["status"] == "interrupted"
                   and (sweep_dir / r["job"] / "results.json").stat().st_mtime >= self.started]
        if stopped:
            print(f"lmexp: {len(stopped)} of them stopped by a signal ({', '.join(stopped)}); the same "
                  f"command continues them", flush=True)
            sys.exit(1)


USAGE = "usage: python -m lmexp.summary SWEEP_DIR (a multirun's folder)"


def main(argv: list[str]) -> None:
    with stopped_as_one_line("lmexp.summary", "summary.csv and summary.md are each whole, old or new; run it again"), \
            reported_as_one_line():
        if argv in (["--help"], ["-h"]):
            raise HelpRequested(f"{USAGE}: writes summary.csv and summary.md there, and prints the table")
        if len(argv) != 1 or argv[0].startswith("-"):
            raise UserError(USAGE)
        sweep_dir = Path(argv[0])
        if not sweep_dir.is_dir() or not job_folders(sweep_dir):
            raise UserError(f"{sweep_dir}: no sweep jobs found (folders holding .hydra/overrides.yaml); "
                            "give the folder of a multirun, e.g. outputs/multirun/<date>/<time>")
        write_summary(sweep_dir)
        print((sweep_dir / "summary.md").read_text(), end="")


if __name__ == "__main__":
    main(sys.argv[1:])
