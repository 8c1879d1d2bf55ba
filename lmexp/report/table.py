"""The runs table of a report: one row per run, the best validation perplexity first, with the
numbers in the formats of a sweep's summary.md (lmexp/summary.py), as Markdown and as the
cells of the HTML page."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmexp.report.runs import RunRecord
from lmexp.summary import NUMBERS, ranked_by, ranked_by_says, ranking, scored_apart_says, status_of, units

# (column, key in results.json, format); the text columns have no format
COLUMNS = (("model", "model", None), ("status", "status", None), *NUMBERS, ("seed", "seed", "{}"),
           ("folder", None, None), ("error", "error", None))  # a failed run's line, as summary.md's
KEYS = {column: key for column, key, _ in COLUMNS}
FORMATS = {column: form for column, _, form in COLUMNS}
NUMERIC = tuple(column for column, _, form in COLUMNS if form)


@dataclass
class Row:
    run: RunRecord
    folder: str  # the run's folder below the folder all the runs share

    def value(self, column: str) -> Any:
        """The column's number as results.json holds it, or its text."""
        if column == "folder":
            return self.folder
        if column == "status":
            return status_of(self.run.results)
        if column == "model":
            return self.run.model
        if column == "seed":
            return self.run.seed
        return self.run.results.get(KEYS[column])

    def cell(self, column: str) -> str:
        value, form = self.value(column), FORMATS[column]
        if value is None:
            return ""
        return form.format(value) if form else str(value)


def common_folder(runs: list[RunRecord]) -> Path:
    """The deepest folder that holds every run (for one run, the folder it is in)."""
    if len(runs) == 1:
        return runs[0].folder.parent
    return Path(os.path.commonpath([run.folder for run in runs]))


def rows(runs: list[RunRecord]) -> list[Row]:
    """Runs done first, best validation perplexity first (bits per byte across units:
    ranked_by); then pruned and interrupted runs, whose perplexity is of part of their training;
    runs without one (failed, unfinished) after, by folder."""
    base = common_folder(runs)
    found = [Row(run, str(run.folder.relative_to(base))) for run in runs]
    measure = KEYS[ranked_by(units(run.results) for run in runs)]
    return sorted(found, key=lambda row: (*ranking(status_of(row.run.results), row.run.results.get(measure)),
                                          row.folder))


def as_markdown(found: list[Row], base: Path) -> str:
    lines = [f"# Runs under {base}", "",
             f"{len(found)} run{'s' if len(found) != 1 else ''}, those done first, each group by "
             f"{ranked_by_says(units(row.run.results) for row in found)}."
             f"{scored_apart_says(row.run.results for row in found)}", "",
             "| " + " | ".join(column for column, _, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in found:
        lines.append("| " + " | ".join(row.cell(column).replace("|", "\\|") for column, _, _ in COLUMNS) + " |")
    return "\n".join(lines) + "\n"
