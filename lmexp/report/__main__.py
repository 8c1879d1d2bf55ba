"""``python -m lmexp.report PATH... [--out DIR]``: a report of finished runs, from their folders
alone. PATH: a run's folder, a sweep's, any folder above them, or a glob of them.

Writes ``report.html`` (one self-contained page: the runs table, sortable, and the figures),
``report.md`` (the table) and the figures' PNGs to DIR, and prints the table. DIR: ``PATH/report``
when PATH is one folder, else ``./report``.

``--scaling``: the scaling study of the runs instead (lmexp/report/scaling.py).
``--wandb ENTITY/PROJECT --group NAME``: a W&B dashboard of a group of runs instead, made on the
W&B server from the runs logged there (lmexp/report/wandb_dashboard.py); no PATH."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmexp.atomic import write_text
from lmexp.errors import UserError, reported_as_one_line
from lmexp.report.figures import draw_figures
from lmexp.report.html import page
from lmexp.report.runs import RunRecord, find_runs
from lmexp.report.table import as_markdown, common_folder, rows
from lmexp.stops import stopped_as_one_line


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, as every lmexp command tells a mistake
        raise UserError(f"{message}; usage: {' '.join(self.format_usage().split()[1:])}")


def parser() -> Parser:
    made = Parser(prog="python -m lmexp.report", description="A report of finished runs, from their folders alone.")
    made.add_argument("paths", nargs="*", metavar="PATH", help="run or sweep folders, or globs of them")
    made.add_argument("--out", type=Path, help="where the report goes (default: PATH/report for one folder, "
                                               "else ./report)")
    made.add_argument("--scaling", action="store_true", help="the scaling study of the runs instead")
    made.add_argument("--wandb", metavar="ENTITY/PROJECT", help="a W&B dashboard of a group of runs instead")
    made.add_argument("--group", help="with --wandb: the group of runs the dashboard shows")
    return made


def out_dir(args: argparse.Namespace) -> Path:
    if args.out is not None:
        folder = args.out
    elif len(args.paths) == 1 and Path(args.paths[0]).is_dir():
        folder = Path(args.paths[0]) / "report"
    else:
        folder = Path("report")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot make the report's folder {folder}: {e.strerror}; choose another with --out DIR") \
            from None
    return folder


def write_report(runs: list[RunRecord], out: Path) -> tuple[str, Path]:
    """The page, the table and the figures in ``out``: the table's Markdown and the page's path."""
    found, base = rows(runs), common_folder(runs)
    markdown = as_markdown(found, base)
    write_text(out / "report.md", markdown)
    html_path = out / "report.html"
    write_text(html_path, page(found, draw_figures(runs, out), base, out))
    return markdown, html_path


def main(argv: list[str]) -> None:
    with stopped_as_one_line("lmexp.report", "each file written is whole, old or new; run it again"), \
            reported_as_one_line():
        args = parser().parse_args(argv)
        if args.wandb:
            if args.paths or args.scaling or args.out:
                raise UserError("--wandb makes the dashboard on W&B from the runs logged there: "
                                "give no PATH, --out or --scaling with it")
            if not args.group:
                raise UserError("--wandb needs --group NAME: the group of runs the dashboard shows")
            from lmexp.report.wandb_dashboard import build_dashboard  # W&B's client: only for this

            print(build_dashboard(args.wandb, args.group))
            return
        if args.group:
            raise UserError("--group goes with --wandb ENTITY/PROJECT")
        if not args.paths:
            raise UserError("give the folders of the runs: python -m lmexp.report PATH... (or --wandb)")
        runs = find_runs(args.paths)
        out = out_dir(args)
        if args.scaling:
            from lmexp.report.scaling import scaling_report  # its fits: only for this

            print(scaling_report(runs, out).rstrip("\n"))
            return
        markdown, html_path = write_report(runs, out)
        print(markdown, end="")
        print(f"lmexp: report of {len(runs)} run{'s' if len(runs) != 1 else ''} -> {html_path}")


if __name__ == "__main__":
    main(sys.argv[1:])
