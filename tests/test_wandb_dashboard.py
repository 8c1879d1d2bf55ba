"""The W&B report (lmexp/report/wandb_dashboard.py): built offline and checked panel by panel;
saved by the real wandb SDK over HTTP to a W&B server on this machine (tests/wandb_server.py),
which records what W&B would receive."""

import json
import os
import socket
import subprocess
import sys

import pytest
import wandb_workspaces.reports.v2 as wr
from wandb_workspaces import expr

from conftest import ROOT, clean_env
from wandb_server import WandbServer
from lmexp.errors import UserError
from lmexp.report.wandb_dashboard import build_dashboard, dashboard
from lmexp.wandb_account import has_wandb_account

GROUP = "multirun/2026-11-30/10-00-00"  # a multirun folder: the group of a grid sweep
LOCAL = ("127.0.0.1", "::1", "localhost", "0.0.0.0", "", None)


@pytest.fixture
def no_network(monkeypatch):
    """Every connection or name lookup beyond this machine fails, and fails the test (a library
    that swallowed the error would still be caught): tests/no_network does the same for a process."""
    attempts = []
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def refuse(what):
        attempts.append(what)
        raise OSError(f"the test allows no network: {what}")

    def guarded_connect(self, address):
        if isinstance(address, tuple) and address[0] not in LOCAL:
            refuse(f"connect {address}")
        return connect(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host not in LOCAL:
            refuse(f"getaddrinfo {host}")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    yield
    assert attempts == []


@pytest.fixture
def no_account(monkeypatch, tmp_path):
    """A fresh machine's W&B state: no key in the environment, no ~/.netrc."""
    for name in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_MODE", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))


@pytest.fixture
def wandb_server(monkeypatch, no_account):
    """An account, on a W&B server on this machine (tests/wandb_server.py) that knows one project."""
    server = WandbServer(key="k" * 40, projects={"lmexp"})
    monkeypatch.setenv("WANDB_API_KEY", server.key)
    monkeypatch.setenv("WANDB_BASE_URL", server.url)
    yield server
    server.close()


def grids(report):
    return [block for block in report.blocks if isinstance(block, wr.PanelGrid)]


def test_report_shows_the_group_by_architecture_then_each_run(no_network):
    report = dashboard("my-team/lmexp", GROUP)
    assert (report.entity, report.project, report.title) == ("my-team", "lmexp", f"lmexp: {GROUP}")
    by_architecture, each_run = grids(report)

    for grid in (by_architecture, each_run):
        (runset,) = grid.runsets
        assert (runset.entity, runset.project) == ("my-team", "lmexp")
        selected = expr.expr_to_filters(runset.filters)
        assert (selected.key.section, selected.key.name, selected.op, selected.value) == ("run", "group", "=", GROUP)
    assert [expr.groupby_str_to_key(key) for key in by_architecture.runsets[0].groupby] == \
        [expr.Key(section="config", name="model.value.name")]  # the nested config, as W&B stores it
    assert each_run.runsets[0].groupby == []  # grouped, W&B would average the runs in both panels

    (curves,) = by_architecture.panels
    assert isinstance(curves, wr.LinePlot)
    line = curves._to_model().config  # what W&B receives
    assert (line.x_axis, line.metrics, line.y_log_scale) == ("trainer/tokens", ["val/ppl"], True)
    assert (line.group_by, line.aggregate) == ("model.value.name", True)

    settings, scaling = each_run.panels
    assert isinstance(settings, wr.ParallelCoordinatesPlot)
    axes = [column.accessor for column in settings._to_model().config.columns]
    assert axes == ["config:model.value.name", "config:optimizer.value.lr", "config:regularization.value.dropout",
                    "config:data.value.batch_size", "config:seed.value", "summary:params", "summary:best_val_ppl"]
    assert isinstance(scaling, wr.ScatterPlot)
    scatter = scaling._to_model().config
    assert (scatter.x_axis, scatter.y_axis) == ("summary:params", "summary:best_val_ppl")
    assert scatter.x_axis_log_scale and scatter.y_axis_log_scale

    table = each_run.runsets[0]  # the runs table under the grid: each run, best first
    assert [(order.name, order.ascending) for order in table.order] == [(wr.SummaryMetric("best_val_ppl"), True)]
    assert set(axes) <= {*table.pinned_columns, *table.visible_columns}
    assert {"summary:test_ppl", "summary:train_flops"} <= set(table.visible_columns)


def test_the_swept_settings_are_the_axes_and_columns(no_network):
    (_, each_run) = grids(dashboard("my-team/lmexp", GROUP, swept=["optimizer.lr", "model.hidden_size"]))
    settings = each_run.panels[0]
    assert [column.accessor for column in settings._to_model().config.columns] == \
        ["config:optimizer.value.lr", "config:model.value.hidden_size", "summary:params", "summary:best_val_ppl"]
    assert "config:model.value.hidden_size" in each_run.runsets[0].visible_columns


@pytest.mark.parametrize("group", ["it's \"quoted\"", "back\\slash", "sweep-4f2a"])
def test_any_quoting_of_the_group_is_kept(group, no_network):
    by_architecture, _ = grids(dashboard("my-team/lmexp", group))
    assert expr.expr_to_filters(by_architecture.runsets[0].filters).value == group


@pytest.mark.parametrize("group", ["lr=1e-3", "a<b", ""])
def test_a_group_the_filter_cannot_hold_is_one_line(group, no_network):
    with pytest.raises(UserError, match="--group") as raised:
        dashboard("my-team/lmexp", group)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("entity_project", ["lmexp", "my-team/lmexp/extra", "/lmexp", "my-team/", "my team/lmexp"])
def test_a_malformed_entity_project_is_one_line(entity_project, no_network, wandb_server):
    with pytest.raises(UserError, match="^--wandb .*expected ENTITY/PROJECT") as raised:
        build_dashboard(entity_project, GROUP)
    assert "\n" not in str(raised.value)
    assert wandb_server.saved == []


def test_without_an_account_the_report_is_refused_in_one_line(no_network, no_account):
    with pytest.raises(UserError, match="needs a W&B account") as raised:
        build_dashboard("my-team/lmexp", GROUP)
    assert "python -m lmexp.report PATH" in str(raised.value) and "\n" not in str(raised.value)


def test_saving_sends_the_report_and_returns_its_address(no_network, wandb_server):
    url = build_dashboard("my-team/lmexp", GROUP)
    # the group's '/' kept out of the path: W&B finds a report by the id after '--'
    assert url == f"{wandb_server.url}/my-team/lmexp/reports/lmexp-multirun-2026-11-30-10-00-00--VmlldzoxMjM0"
    (sent,) = wandb_server.saved
    assert (sent["entityName"], sent["projectName"], sent["displayName"]) == ("my-team", "lmexp", f"lmexp: {GROUP}")
    saved = [block["metadata"] for block in json.loads(sent["spec"])["blocks"] if block["type"] == "panel-grid"]
    assert [grid["runSets"][0]["filters"]["filters"] for grid in saved] == \
        2 * [[{"key": {"section": "run", "name": "group"}, "op": "=", "value": GROUP, "disabled": False}]]
    assert [grid["runSets"][0]["grouping"] for grid in saved] == [[{"section": "config", "name": "model.value.name"}],
                                                                  []]
    assert [[panel["viewType"] for panel in grid["panelBankSectionConfig"]["panels"]] for grid in saved] == \
        [["Run History Line Plot"], ["Parallel Coordinates Plot", "Scatter Plot"]]


def test_a_project_w_and_b_lacks_is_one_line(no_network, wandb_server):
    with pytest.raises(UserError, match="^--wandb my-team/lmexpp: W&B has no such project"):
        build_dashboard("my-team/lmexpp", GROUP)
    assert wandb_server.saved == []


@pytest.mark.parametrize("base_url", ["notaurl", "api.wandb.ai", "https://"])
def test_a_server_address_that_is_none_is_one_line(base_url, monkeypatch, no_network, wandb_server):
    """wandb's settings check raises pydantic's ValidationError for it, a ValueError the saving's
    own refusals are told apart from: it once came out as a 50-line traceback."""
    monkeypatch.setenv("WANDB_BASE_URL", base_url)
    with pytest.raises(UserError, match=f"^WANDB_BASE_URL='{base_url}': expected the W&B server's address") as raised:
        build_dashboard("my-team/lmexp", GROUP)
    assert "\n" not in str(raised.value) and wandb_server.saved == []


def test_a_refusal_from_w_and_b_is_one_line(monkeypatch, no_network, wandb_server):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # a key the server does not know
    with pytest.raises(UserError, match="^W&B did not save the report: .*credentials") as raised:
        build_dashboard("my-team/lmexp", GROUP)
    assert "\n" not in str(raised.value) and wandb_server.saved == []


@pytest.mark.parametrize("host, base_url, found", [
    ("api.wandb.ai", None, True),
    ("api.forge.coreweave.com", None, True),  # where newer wandb releases log in
    ("api.wandb.ai", "https://wandb.mycompany.com", False),
    ("wandb.mycompany.com", "https://wandb.mycompany.com", True),
])
def test_an_account_is_a_login_for_the_w_and_b_host(host, base_url, found, monkeypatch, tmp_path, no_account):
    netrc = tmp_path / ".netrc"
    netrc.write_text(f"machine {host}\n  login user\n  password {'k' * 40}\n")
    netrc.chmod(0o600)  # Python's netrc refuses a password others can read
    if base_url:
        monkeypatch.setenv("WANDB_BASE_URL", base_url)
    assert has_wandb_account() is found


@pytest.mark.parametrize("entity_project, told", [("lmexp", "--wandb 'lmexp': expected ENTITY/PROJECT"),
                                                  ("my-team/lmexp", "the W&B report needs a W&B account")])
def test_the_command_tells_what_is_missing_in_one_line_without_network(entity_project, told, tmp_path):
    """``python -m lmexp.report --wandb`` in a new interpreter, with no account and every connection
    refused and listed (tests/no_network): the imports, wandb's own start-up and the report's making."""
    connections = tmp_path / "connections.txt"
    env = clean_env(tmp_path / "cache", tmp_path)
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "no_network"), env.get("PYTHONPATH", "")]),
               LMEXP_TEST_CONNECTIONS=str(connections))
    done = subprocess.run([sys.executable, "-m", "lmexp.report", "--wandb", entity_project, "--group", GROUP],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"lmexp: error: {told}")
    assert not connections.exists(), connections.read_text()


def test_the_architectures_line_is_its_runs_mean_and_the_band_their_range(no_network):
    """What the report's paragraph says of the curves: the mean of each architecture's runs, the
    band from the lowest to the highest (W&B's default would be other aggregates)."""
    by_architecture, _ = grids(dashboard("my-team/lmexp", GROUP))
    line = by_architecture.panels[0]._to_model().config
    assert (line.group_by, line.group_agg, line.group_area) == ("model.value.name", "mean", "minmax")
