"""``python -m lmexp.report --wandb ENTITY/PROJECT --group NAME``: a W&B report on one group of runs
(an experiment or a sweep: ``logger.wandb.group``), built with W&B's own report API
(wandb-workspaces, the ``dashboard`` extra) and saved to the project, where it shows the runs'
logged metrics as they are now.

Two panel grids show the same runs. The first groups them by architecture (``model.name``): one
validation curve per architecture, its runs (seeds, settings) averaged in a band. The second shows
each run: W&B averages a grouped run set in parallel coordinates and scatter plots too, which would
hide the swept settings there.
"""

from __future__ import annotations

import os
import re
import warnings
from urllib.parse import urlsplit

from lmexp.errors import UserError
from lmexp.wandb_account import has_wandb_account

try:
    import wandb
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr
except ImportError:  # the dashboard extra: the local report does without it
    wr = None

ARCHITECTURE = "model.name"
# What a sweep most often varies. Sizes are left to the parameter count: W&B's config holds the
# width a model.target_params* chose with the target cleared (lmexp/sizing.py), and each
# architecture names its width differently (hidden_size, d_model, n_embd).
SWEPT = (ARCHITECTURE, "optimizer.lr", "regularization.dropout", "data.batch_size", "seed")
# Summary keys lmexp writes at a run's end (lmexp/loggers.py's RESULTS). The best validation, not
# W&B's summary of val/ppl (its last value): the best checkpoint is the one tested.
PERPLEXITY, PARAMETERS = "best_val_ppl", "params"
TABLE_SUMMARY = (PARAMETERS, "train_flops", PERPLEXITY, "test_ppl")
GRID_WIDTH = 24  # W&B's panel grid is 24 units wide


def entity_and_project(text: str) -> tuple[str, str]:
    found = re.fullmatch(r"([^/\s]+)/([^/\s]+)", text)  # what else a name may hold, W&B judges
    if found is None:
        raise UserError(f"--wandb {text!r}: expected ENTITY/PROJECT, the W&B user or team and the project the "
                        f"runs were logged to (logger.wandb.entity, logger.wandb.project), e.g. --wandb my-team/lmexp")
    return found.group(1), found.group(2)


def group_filter(group: str) -> str:
    """The run set filter for the runs of ``group``. wandb-workspaces parses a filter as a Python
    expression after rewriting its operators, inside quoted values too ('=' becomes '=='): a group
    whose name the round trip changes would show other runs, or none, so it is refused."""
    if not group:
        raise UserError("--group: expected the name of the runs' W&B group (logger.wandb.group)")
    text = f"Metric('Group') == {group!r}"
    with warnings.catch_warnings():  # its note on rewriting '<', for a group about to be refused
        warnings.simplefilter("ignore")
        kept = expr.expr_to_filters(text).value == group
    if not kept:
        raise UserError(f"--group {group!r}: a W&B report cannot select a group whose name holds '=', '<' or '>' "
                        f"(wandb-workspaces rewrites them); rename the group in W&B")
    return text


def config_column(key: str) -> str:
    """The run table's name for a config key: W&B stores a nested config as ``{"model": {"value":
    {"name": ...}}}``, so ``model.name`` is ``config:model.value.name``."""
    top, _, rest = key.partition(".")
    return f"config:{top}.value" + (f".{rest}" if rest else "")


def dashboard(entity_project: str, group: str, swept: list[str] | None = None) -> wr.Report:
    """The report on ``group``'s runs in ``ENTITY/PROJECT``, built and not saved: no network.
    ``swept``: the config keys of the parallel coordinates and the run table (default SWEPT)."""
    if wr is None:
        raise UserError("the W&B report needs wandb-workspaces: pip install 'lmexp[dashboard]'")
    entity, project = entity_and_project(entity_project)
    runs = {"entity": entity, "project": project, "filters": group_filter(group)}
    swept = list(swept or SWEPT)
    by_architecture = wr.Runset(**runs, name="by architecture", groupby=[f"config.{ARCHITECTURE}"])
    each_run = wr.Runset(**runs, name="runs", order=[wr.OrderBy(wr.SummaryMetric(PERPLEXITY), ascending=True)],
                         pinned_columns=[f"summary:{PERPLEXITY}"],
                         visible_columns=[*map(config_column, swept), *(f"summary:{k}" for k in TABLE_SUMMARY)])
    curves = wr.LinePlot(
        title="Validation perplexity by training tokens", x="trainer/tokens", y=["val/ppl"], log_y=True,
        title_x="training tokens", title_y="validation perplexity", groupby=wr.Config(ARCHITECTURE),
        groupby_aggfunc="mean", groupby_rangefunc="minmax", layout=wr.Layout(x=0, y=0, w=GRID_WIDTH, h=10))
    settings = wr.ParallelCoordinatesPlot(
        title="Settings and best validation perplexity",
        columns=[*(wr.ParallelCoordinatesPlotColumn(wr.Config(key)) for key in swept),
                 wr.ParallelCoordinatesPlotColumn(wr.SummaryMetric(PARAMETERS), display_name="parameters", log=True),
                 wr.ParallelCoordinatesPlotColumn(wr.SummaryMetric(PERPLEXITY), display_name="best val ppl")],
        layout=wr.Layout(x=0, y=0, w=GRID_WIDTH, h=10))
    scaling = wr.ScatterPlot(
        title="Best validation perplexity by parameters", x=wr.SummaryMetric(PARAMETERS),
        y=wr.SummaryMetric(PERPLEXITY), log_x=True, log_y=True, layout=wr.Layout(x=0, y=10, w=GRID_WIDTH, h=10))
    return wr.Report(
        entity=entity, project=project, title=f"lmexp: {group}"[:128],  # W&B's longest title
        description=f"The runs of W&B group {group!r}, made by python -m lmexp.report.",
        blocks=[wr.H2("Validation perplexity by architecture"),
                wr.P(f"One line per architecture ({ARCHITECTURE}): the mean of its runs, the band their range."),
                wr.PanelGrid(runsets=[by_architecture], panels=[curves]),
                wr.H2("Each run"),
                wr.P("Every run's settings and best validation perplexity; the table is sorted by it."),
                wr.PanelGrid(runsets=[each_run], panels=[settings, scaling])])


def report_url(report: wr.Report) -> str:
    # wandb-workspaces writes the title into the URL's path as it is, so a '/' in it (a multirun
    # folder's group) would split the path; W&B's own links spell the title in letters, digits and '-'.
    reports = f"/{report.entity}/{report.project}/reports/"
    app = report.url.split(reports)[0]  # e.g. https://wandb.ai
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", report.title)
    return f"{app}{reports}{slug}--{report.id}"


def build_dashboard(entity_project: str, group: str) -> str:
    """Build the report on ``group``'s runs, save it to W&B and return its URL."""
    report = dashboard(entity_project, group)
    base_url = os.environ.get("WANDB_BASE_URL")
    if base_url and (urlsplit(base_url).scheme not in ("http", "https") or not urlsplit(base_url).netloc):
        raise UserError(f"WANDB_BASE_URL={base_url!r}: expected the W&B server's address, e.g. https://api.wandb.ai; "
                        f"set it so, or unset it for W&B's own")
    if not has_wandb_account():
        raise UserError("the W&B report needs a W&B account (WANDB_API_KEY, or `wandb login`) and none is "
                        "configured here; the local report needs none: python -m lmexp.report PATH "
                        "(run or sweep folders)")
    try:
        report.save()
    except wandb.errors.Error as e:  # the key refused, the server out of reach
        raise UserError(f"W&B did not save the report: {' '.join(str(e).split())}") from None
    except ValueError as e:
        if "not found" not in str(e):  # wandb-workspaces' message for a project missing or not this account's
            raise
        raise UserError(f"--wandb {entity_project}: W&B has no such project for this account") from None
    return report_url(report)
