"""The report as one HTML file that needs nothing else: the figures are inside it as ``data:``
PNGs, the style and the script inline, no address on the web. It opens from disk, mailed or
copied anywhere, with no network.

Once every figure is decoded and the table filled, the page sets ``data-rendered`` on its body
to the number of figures: what a browser test waits for."""

from __future__ import annotations

import base64
import html
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Optional
from urllib.parse import quote

from lmexp.report.figures import CAPTIONS
from lmexp.report.table import COLUMNS, NUMERIC, Row
from lmexp.summary import ranked_by_says, scored_apart_says, units

TOOLTIPS = {
    "params": "parameters, embeddings included",
    "best_val_ppl": "best validation perplexity (per token)",
    "best_val_bpb": "bits per byte at the best validation: compares runs of different tokenizers or vocabularies on one text",
    "test_ppl": "test perplexity of the best checkpoint",
    "test_word_ppl": "test perplexity per word",
    "test_bpb": "test bits per byte",
    "tokens_per_sec": "training tokens per second",
    "wall_time_s": "seconds from the run's start to its end",
    "folder": "the run's folder (results.json, config.yaml, metrics.csv)",
}

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0 2em; }
th, td { padding: 0.3em 0.7em; border-bottom: 1px solid #ddd; white-space: nowrap; }
th { cursor: pointer; user-select: none; background: #f4f4f4; text-align: left; }
th[data-order=ascending]::after { content: " \\25B2"; }
th[data-order=descending]::after { content: " \\25BC"; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
section { display: grid; grid-template-columns: repeat(auto-fill, minmax(480px, 1fr)); gap: 1em; }
section img { width: 100%; border: 1px solid #eee; }
"""

# Sorting by a header: numbers by their exact value (data-value), text as text; blanks last
# either way; a second click reverses. Then the marker a browser test waits for.
SCRIPT = """
const table = document.getElementById("runs");
const headers = Array.from(table.tHead.rows[0].cells);
headers.forEach((header, column) => header.addEventListener("click", () => {
  const ascending = header.dataset.order !== "ascending";
  headers.forEach(h => delete h.dataset.order);
  header.dataset.order = ascending ? "ascending" : "descending";
  const numeric = header.dataset.kind === "number";
  const key = cell => {
    const text = numeric ? cell.dataset.value : cell.textContent;
    if (text === undefined || text === "") return null;
    const value = numeric ? Number(text) : text;
    return Number.isNaN(value) ? null : value;  // NaN (a diverged run's) would make the order arbitrary
  };
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = key(a.cells[column]), y = key(b.cells[column]);
    if (x === null || y === null) return (x === null) - (y === null);
    const order = numeric ? x - y : x.localeCompare(y, undefined, {numeric: true});
    return ascending ? order : -order;
  });
  body.append(...rows);
}));

function markRendered(triesLeft) {
  const images = Array.from(document.images);
  const decoded = images.every(image => image.complete && image.naturalWidth > 0);
  if (decoded && table.tBodies[0].rows.length === Number(table.dataset.rows)) {
    document.body.dataset.rendered = String(images.length);
  } else if (triesLeft > 0) {
    setTimeout(markRendered, 50, triesLeft - 1);
  }
}
window.addEventListener("load", () => markRendered(200));
"""


def table_html(found: list[Row], out_dir: Path) -> str:
    head = "".join(f'<th data-kind="{"number" if column in NUMERIC else "text"}"'
                   f'{_title(TOOLTIPS.get(column))}>{column}</th>' for column, _, _ in COLUMNS)
    body = "\n".join(f"<tr>{''.join(_cell(row, column, out_dir) for column, _, _ in COLUMNS)}</tr>" for row in found)
    return (f'<table id="runs" data-rows="{len(found)}">\n<thead><tr>{head}</tr></thead>\n'
            f"<tbody>\n{body}\n</tbody>\n</table>")


def _title(text: Optional[str]) -> str:
    return f' title="{html.escape(text)}"' if text else ""


def _cell(row: Row, column: str, out_dir: Path) -> str:
    text = html.escape(row.cell(column))
    if column in NUMERIC:
        value = row.value(column)
        # JSON's spelling of a number is JavaScript's: Number("Infinity") for a diverged run
        return f'<td class="number" data-value="{"" if value is None else json.dumps(value)}">{text}</td>'
    if column == "folder":  # a relative link: it opens the run's folder wherever the two are copied together
        href = quote(Path(os.path.relpath(row.run.folder, out_dir)).as_posix()) + "/"
        return f'<td><a href="{href}">{text}</a></td>'
    if column == "status":
        return f"<td{_title(row.run.results.get('error'))}>{text}</td>"  # a failed run's line
    return f"<td>{text}</td>"


def figure_html(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(CAPTIONS[path.name])}" src="data:image/png;base64,{data}">'  # titled inside


def page(found: list[Row], figures: list[Path], base: Path, out_dir: Path) -> str:
    title = f"lmexp report: {len(found)} run{'s' if len(found) != 1 else ''}"
    made = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p>Runs under <code>{html.escape(str(base))}</code>, made {made}, ranked by {html.escape(ranked_by_says(
    units(row.run.results) for row in found))}.{html.escape(scored_apart_says(
    row.run.results for row in found))} Click a column's name to sort by it.</p>
{table_html(found, out_dir)}
<section>
{chr(10).join(figure_html(path) for path in figures)}
</section>
<script>{SCRIPT}</script>
</body>
</html>
"""
