"""The report's figures, as PNG files: validation perplexity against training tokens and against
wall time (one line per experiment; the seeds of one experiment as their mean and a band from
the lowest to the highest), and best validation perplexity against parameters and against
training FLOPs (one point per run). One colour per architecture in every figure. Runs that
predict different units (lmexp.summary.units) are drawn by bits per byte instead, as the table
ranks them.

Drawn with matplotlib's Agg canvas and no pyplot: no display, and no figure left open in a
global registry."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Callable, Optional

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatterSciNotation

from lmexp.atomic import replaced
from lmexp.config import flat
from lmexp.report.runs import Point, RunRecord, experiment_settings, seed_groups
from lmexp.summary import ranked_by, units

DPI = 120
SIZE = (6.4, 4.2)  # inches: 768 x 504 pixels at DPI
LINE_STYLES = ("-", "--", ":", "-.")  # experiments of one architecture share its colour


@dataclass(frozen=True)
class Measure:
    """What the figures' y axes show: a validation's number (``of``), a run's best (results.json's ``best``)."""

    name: str  # as the axes and captions say it
    file: str  # as the figures' file names say it
    of: Callable[[Point], Optional[float]]
    best: str


PERPLEXITY = Measure("perplexity", "ppl", lambda p: p.val_ppl, "best_val_ppl")
BITS_PER_BYTE = Measure("bits per byte", "bpb", lambda p: p.val_bpb, "val_bpb")


def measure_of(runs: list[RunRecord]) -> Measure:
    return BITS_PER_BYTE if ranked_by(units(run.results) for run in runs) == "best_val_bpb" else PERPLEXITY


@dataclass
class Line:
    """One experiment's validation curve: at each validation that all its seeds reached, the mean
    of their x and perplexity, and the lowest and highest perplexity."""

    label: str
    model: str
    x: list[float]
    ppl: list[float]
    low: list[float]
    high: list[float]
    seeds: int


def colours(runs: list[RunRecord]) -> dict[str, str]:
    """Architecture -> colour, in name order, so that a model keeps its colour however the
    runs were listed."""
    return {model: f"C{i % 10}" for i, model in enumerate(sorted({run.model for run in runs}))}


def labels(groups: list[list[RunRecord]]) -> list[str]:
    """The model's name, and where several experiments have one model, the settings in which
    they differ (``lstm optimizer.lr=0.001``): what tells their lines apart."""
    found = []
    for group in groups:
        model = group[0].model
        settings = flat(experiment_settings(group[0]))
        siblings = [flat(experiment_settings(g[0])) for g in groups if g[0].model == model and g is not group]
        # A key for each sibling not yet told apart (the first in which they differ): a legend entry
        # that names what separates the lines, not the whole config, nor the first keys that differ anywhere.
        differing: list[str] = []
        for other in siblings:
            if not any(other.get(k) != settings[k] for k in differing):
                differing += [k for k in settings if other.get(k) != settings[k]][:1]
        label = " ".join([model, *(f"{k}={settings[k]}" for k in settings if k in differing)])
        seeds = len({run.seed for run in group})
        runs = f", {len(group)} runs" if len(group) > seeds else ""
        found.append(f"{label} ({seeds} seed{'s' if seeds > 1 else ''}{runs})" if len(group) > 1 else label)
    return found


def curve_lines(runs: list[RunRecord], x_of: Callable[[Point], Optional[float]],
                measure: Measure = PERPLEXITY) -> list[Line]:
    """A line for each experiment whose runs logged validations with an x (``x_of``: a point's
    training tokens or wall time; None where the run did not log it) and the ``measure``."""
    def drawn(p: Point) -> bool:
        return x_of(p) is not None and measure.of(p) is not None

    groups = seed_groups([r for r in runs if any(drawn(p) for p in r.curve)])
    lines = []
    for group, label in zip(groups, labels(groups)):
        by_step = [{p.step: p for p in run.curve if drawn(p)} for run in group]
        steps = sorted(set(by_step[0]).intersection(*by_step[1:]))  # a seed stopped early ends the band
        if not steps:
            continue
        ppl = [[measure.of(points[s]) for points in by_step] for s in steps]
        lines.append(Line(label, group[0].model, [mean(x_of(points[s]) for points in by_step) for s in steps],
                          [mean(p) for p in ppl], [min(p) for p in ppl], [max(p) for p in ppl], len(group)))
    return lines


def short_number(x: float) -> str:
    """600, 1.5k, 387.5k, 2.46G: a tick label that stays short on every scale (four digits: the
    ticks of an axis from 387,783 to 389,895 parameters differ in the fourth)."""
    if abs(x) >= 1e15:  # a diverged run's perplexity
        return f"{x:.3g}"
    for size, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= size:
            return f"{x / size:.4g}{suffix}"
    return f"{x:.4g}"


class ShortLogFormatter(LogFormatterSciNotation):
    """Matplotlib's choice of which ticks of a log axis to label, labelled with short numbers:
    an axis within one decade (perplexities 530 to 560) labels its minor ticks, and 5.3x10^2 there
    is unreadable."""

    def __call__(self, x, pos=None):
        return short_number(x) if super().__call__(x, pos) else ""


def new_axes(xlabel: str, ylabel: str, log_x: bool = False):
    figure = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    # perplexity falls by factors; model sizes and budgets are compared by factors
    axes.set(xlabel=xlabel, ylabel=ylabel, yscale="log", xscale="log" if log_x else "linear")
    for axis in [axes.yaxis, axes.xaxis] if log_x else [axes.yaxis]:
        axis.set_major_formatter(ShortLogFormatter())
        axis.set_minor_formatter(ShortLogFormatter(labelOnlyBase=False))
    axes.grid(True, which="both", alpha=0.3)
    return figure, axes


def draw_curves(lines: list[Line], palette: dict[str, str], xlabel: str, measure: Measure = PERPLEXITY) -> Figure:
    figure, axes = new_axes(xlabel, f"validation {measure.name}")
    seen: dict[str, int] = {}  # lines of each architecture so far
    for line in lines:
        nth = seen[line.model] = seen.get(line.model, -1) + 1
        colour, style = palette[line.model], LINE_STYLES[nth % len(LINE_STYLES)]
        axes.plot(line.x, line.ppl, style, color=colour, marker="o", markersize=3, label=line.label)
        if line.seeds > 1:
            axes.fill_between(line.x, line.low, line.high, color=colour, alpha=0.2, linewidth=0)
    axes.legend(fontsize="small")
    return figure


def draw_scatter(runs: list[RunRecord], key: str, palette: dict[str, str], xlabel: str,
                 measure: Measure = PERPLEXITY) -> Figure:
    figure, axes = new_axes(xlabel, f"best validation {measure.name}", log_x=True)
    for model, colour in palette.items():
        points = [(r.results[key], r.results[measure.best]) for r in runs if r.model == model]
        if points:
            axes.scatter([x for x, _ in points], [y for _, y in points], color=colour, label=model, alpha=0.8)
    axes.legend(fontsize="small")
    return figure


def plotted(run: RunRecord, key: str, measure: Measure = PERPLEXITY) -> bool:
    """The run has both numbers, and they fit a log axis (a diverged run's perplexity may be inf)."""
    x, y = run.results.get(key), run.results.get(measure.best)
    return all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in (x, y))


def captions(measure: Measure) -> dict[str, str]:
    """file -> caption, in the page's order"""
    name, file = measure.name, measure.file
    return {f"val_{file}_by_tokens.png": f"Validation {name} against training tokens seen",
            f"val_{file}_by_wall_time.png": f"Validation {name} against wall time",
            f"best_val_{file}_by_params.png": f"Best validation {name} against parameters",
            f"best_val_{file}_by_flops.png": f"Best validation {name} against training FLOPs (estimated)"}


CAPTIONS = {**captions(PERPLEXITY), **captions(BITS_PER_BYTE)}


def draw_figures(runs: list[RunRecord], out_dir: Path) -> list[Path]:
    """Every figure the runs have data for, written to ``out_dir``; their paths in page order.
    A figure without a single line or point (runs from before a number was logged) is left out."""
    palette, measure = colours(runs), measure_of(runs)
    by_tokens, by_time, by_params, by_flops = captions(measure)
    drawn = {}
    if lines := curve_lines(runs, lambda p: p.tokens, measure):
        drawn[by_tokens] = draw_curves(lines, palette, "training tokens seen", measure)
    if lines := curve_lines(runs, lambda p: p.wall_time_s, measure):
        drawn[by_time] = draw_curves(lines, palette, "wall time (s)", measure)
    if sized := [r for r in runs if plotted(r, "params", measure)]:
        drawn[by_params] = draw_scatter(sized, "params", palette, "parameters", measure)
    if budgeted := [r for r in runs if plotted(r, "train_flops", measure)]:
        drawn[by_flops] = draw_scatter(budgeted, "train_flops", palette, "training FLOPs (estimated)", measure)
    for stale in CAPTIONS.keys() - drawn.keys():  # a previous report's, which this page does not show
        (out_dir / stale).unlink(missing_ok=True)
    return [save(figure, name, out_dir) for name, figure in drawn.items()]


def save(figure: Figure, name: str, out_dir: Path) -> Path:
    figure.axes[0].set_title(CAPTIONS[name])
    path = out_dir / name
    with replaced(path) as f:
        # no Software entry: the PNG then names no web address, even base64-encoded in the page
        figure.savefig(f, format="png", dpi=DPI, metadata={"Software": None})
    return path
