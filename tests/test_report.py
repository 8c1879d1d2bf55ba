"""``python -m lmexp.report``: the page, the Markdown table and the figures of a real sweep of 4
runs (two architectures, two seeds each), checked against each run's results.json, and the page
loaded from disk in headless Chromium."""

import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import SMALL, clean_env, entry_point, run_lmexp
from lmexp.report.__main__ import main
from lmexp.report.figures import BITS_PER_BYTE, PERPLEXITY, captions, curve_lines, draw_figures
from lmexp.report.runs import find_runs, seed_groups
from lmexp.errors import UserError
from lmexp.report.table import COLUMNS, FORMATS, KEYS, NUMERIC, rows

JOBS = {"0-lstm-tiny": ("lstm", 1), "1-lstm-tiny": ("lstm", 2), "2-gru-tiny": ("gru", 1), "3-gru-tiny": ("gru", 2)}
HEAVY = ("torch", "pytorch_lightning", "lightning_fabric", "torchmetrics")
FIGURES = captions(PERPLEXITY)  # one tokenizer's runs: drawn by perplexity


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, cache_dir) -> Path:
    """Four validations per run (every 10 of 40 steps), each on 2 batches: curves to draw. Batches
    of 8 rows of 16 tokens: the output layer over the 11,559 words is most of a step's time."""
    folder = tmp_path_factory.mktemp("report")
    sweep = folder / "sweep"
    result = run_lmexp(["-m", "model=lstm,gru", "seed=1,2", *SMALL, "data.batch_size=8", "data.bptt=16",
                        "trainer.max_steps=40", "trainer.val_check_interval=10", "trainer.limit_val_batches=2",
                        "trainer.limit_test_batches=2", "trainer.num_sanity_val_steps=0", f"hydra.sweep.dir={sweep}"],
                       cwd=folder, cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in sweep.glob("*-tiny")) == sorted(JOBS)
    return sweep


@pytest.fixture(scope="module")
def report(sweep, cache_dir) -> subprocess.CompletedProcess:
    """``python -m lmexp.report SWEEP`` as a user runs it: the report goes to SWEEP/report."""
    done = entry_point("lmexp.report", [str(sweep)], cwd=sweep.parent, cache_dir=cache_dir, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def results(sweep: Path) -> dict[str, dict]:
    return {job: json.loads((sweep / job / "results.json").read_text()) for job in JOBS}


def precision(column: str) -> float:
    """Half the last digit a column's format shows: how far its text may be from the number."""
    decimals = re.search(r"\.(\d+)f", FORMATS[column])
    return 0.5 * 10 ** -int(decimals.group(1)) if decimals else 0


def check_row(cells: dict[str, str], record: dict) -> None:
    """One table row's text against the run's results.json, each number to its format's precision."""
    assert cells["model"] == record["model"] and cells["status"] == "done"
    for column in NUMERIC:
        number = float(cells[column].replace(",", ""))
        assert number == pytest.approx(record[KEYS[column]], abs=precision(column)), column


def markdown_rows(text: str) -> dict[str, dict[str, str]]:
    """The rows of a Markdown table, by folder."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    names = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [dict(zip(names, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[1:]]
    return {row["folder"]: row for row in rows}


class TableCells(HTMLParser):
    """Each body row of the page's table: its cells' text and their data-value (the exact number)."""

    def __init__(self):
        super().__init__()
        self.rows: list[list[dict]] = []
        self.cell = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag == "td":
            self.cell = {"text": "", **dict(attrs)}
            self.rows[-1].append(self.cell)

    def handle_endtag(self, tag):
        if tag == "td":
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell["text"] += data


def test_the_report_writes_the_page_the_figures_and_the_table(sweep, report):
    out = sweep / "report"
    assert {p.name for p in out.iterdir()} == {"report.html", "report.md", *FIGURES}
    for name in FIGURES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    *table, last = report.stdout.splitlines()
    assert "\n".join(table) + "\n" == (out / "report.md").read_text()
    assert last == f"lmexp: report of 4 runs -> {out / 'report.html'}"


def test_the_markdown_table_holds_each_runs_numbers(sweep, report):
    rows = markdown_rows((sweep / "report" / "report.md").read_text())
    assert sorted(rows) == sorted(JOBS)
    for job, record in results(sweep).items():
        check_row(rows[job], record)
        assert rows[job]["seed"] == str(JOBS[job][1])
    by_ppl = sorted(JOBS, key=lambda job: results(sweep)[job]["best_val_ppl"])
    assert list(rows) == by_ppl  # the best first


def test_the_pages_table_holds_each_runs_numbers_exactly(sweep, report):
    parser = TableCells()
    parser.feed((sweep / "report" / "report.html").read_text())
    body = [row for row in parser.rows if row]  # the header row has no td
    assert len(body) == len(JOBS)
    names = [column for column, _, _ in COLUMNS]
    for row in body:
        cells = dict(zip(names, row))
        record = results(sweep)[cells["folder"]["text"]]
        check_row({name: cell["text"] for name, cell in cells.items()}, record)
        for column in NUMERIC:  # what sorting compares: the number itself, not its text
            assert float(cells[column]["data-value"]) == record[KEYS[column]], column


def test_the_page_fetches_nothing_from_the_network(sweep, report):
    text = (sweep / "report" / "report.html").read_text()
    assert "http://" not in text and "https://" not in text and "@import" not in text and "url(" not in text
    references = re.findall(r"""\b(?:src|href)\s*=\s*["']([^"']*)""", text)
    assert len(references) == len(FIGURES) + len(JOBS)  # the figures, the folders' links
    for reference in references:
        assert reference.startswith("data:image/png;base64,") or not re.match(r"^([a-z][a-z0-9+.-]*:|//)", reference)
    assert sorted(r for r in references if not r.startswith("data:")) == sorted(f"../{job}/" for job in JOBS)


def test_a_glob_and_a_run_folder_make_reports_of_their_runs(sweep, tmp_path, capsys):
    main([str(sweep / "*-lstm-*"), "--out", str(tmp_path / "lstm")])
    rows = markdown_rows(capsys.readouterr().out)
    assert sorted(rows) == ["0-lstm-tiny", "1-lstm-tiny"]

    run = tmp_path / "run"  # a copy: the report goes into the folder given
    shutil.copytree(sweep / "2-gru-tiny", run, ignore=shutil.ignore_patterns("checkpoints"))
    main([str(run)])
    out = capsys.readouterr().out
    check_row(markdown_rows(out)["run"], results(sweep)["2-gru-tiny"])
    assert out.splitlines()[-1] == f"lmexp: report of 1 run -> {run / 'report' / 'report.html'}"
    assert (run / "report" / "report.html").is_file()


@pytest.mark.parametrize("given, says", [("missing", "missing: no such file or folder"),
                                         ("empty", "empty: no run folders (folders holding results.json) here")])
def test_a_bad_path_is_one_line_and_imports_no_torch(given, says, tmp_path):
    (tmp_path / "empty").mkdir()
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "lmexp.report", given], cwd=tmp_path,
                          env=clean_env(tmp_path / "cache", tmp_path), capture_output=True, text=True, timeout=120)
    told = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    assert done.returncode == 2 and told == [f"lmexp: error: {says}"], done.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0]
                for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & set(HEAVY), f"imported {sorted(imported & set(HEAVY))}"
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("argv, says", [
    ([], "give the folders of the runs"),
    (["runs", "--bogus"], "unrecognized arguments: --bogus; usage: python -m lmexp.report"),
    (["--wandb", "team/lmexp", "--group", "g", "runs"], "--wandb makes the dashboard on W&B"),
    (["--wandb", "team/lmexp"], "--wandb needs --group NAME"),
    (["runs", "--group", "g"], "--group goes with --wandb"),
])
def test_a_command_line_mistake_is_one_line(argv, says, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    told = capsys.readouterr().err.splitlines()
    assert exited.value.code == 2 and len(told) == 1 and told[0].startswith(f"lmexp: error: {says}"), told


def test_the_seeds_of_each_model_make_one_band(sweep):
    runs = find_runs([str(sweep)])
    groups = seed_groups(runs)
    assert sorted((g[0].model, sorted(r.seed for r in g)) for g in groups) == [("gru", [1, 2]), ("lstm", [1, 2])]
    for line in curve_lines(runs, lambda p: p.tokens):
        assert line.seeds == 2 and line.x == [1280, 2560, 3840, 5120]  # 8 rows of 16 tokens, 10 steps apart
        assert any(low < high for low, high in zip(line.low, line.high))  # the seeds differ: a band, not a line
        # Each validation's two perplexities, one per seed: the band is between them, the line halfway.
        seeds = list(zip(*([p.val_ppl for p in r.curve] for r in runs if r.model == line.model)))
        assert line.low == [min(pair) for pair in seeds] and line.high == [max(pair) for pair in seeds]
        assert line.ppl == pytest.approx([sum(pair) / 2 for pair in seeds])
    # Settings that change neither what a run learns nor its speed do not part seeds (a run shown
    # with the progress bar, saved on another schedule, logged more often) ...
    lstm = next(r for r in runs if r.model == "lstm" and r.seed == 2)
    quiet = replace(lstm, config={
        **lstm.config, "trainer": {**lstm.config["trainer"], "enable_progress_bar": True, "log_every_n_steps": 1},
        "callbacks": {**lstm.config["callbacks"], "progress_bar": None,
                      "checkpoint": {**lstm.config["callbacks"]["checkpoint"], "every_n_minutes": 1}}})
    assert len(seed_groups([r for r in runs if r is not lstm] + [quiet])) == 2
    # ... but one more setting that does (here a learning rate, or compiling: a speed) makes an experiment of its own.
    compiled = replace(lstm, config={**lstm.config, "trainer": {**lstm.config["trainer"], "compile": True}})
    assert len(seed_groups([r for r in runs if r is not lstm] + [compiled])) == 3
    tuned = replace(lstm, config={**lstm.config, "optimizer": {**lstm.config["optimizer"], "lr": 0.1}})
    assert len(seed_groups([r for r in runs if r is not lstm] + [tuned])) == 3
    labels = sorted(line.label for line in curve_lines([r for r in runs if r is not lstm] + [tuned],
                                                       lambda p: p.tokens))
    assert labels == ["gru (2 seeds)", "lstm optimizer.lr=0.006", "lstm optimizer.lr=0.1"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("no chromium or chromium-browser on PATH (.ci/run installs Debian's chromium)")
    return found


def test_chromium_renders_the_page_from_disk(sweep, report, tmp_path):
    browser = chromium()
    page = (sweep / "report" / "report.html").as_uri()
    # as root (CI) Chromium needs --no-sandbox; its own profile keeps it off the user's
    common = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--virtual-time-budget=5000", "--dump-dom", page],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout).group(0)
    assert f'data-rendered="{len(FIGURES)}"' in body, body  # every figure decoded, the table filled
    tbody = dom.stdout.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    assert tbody.count("<tr>") == len(JOBS)

    shot = tmp_path / "page.png"
    taken = subprocess.run([*common, "--window-size=1280,1400", f"--screenshot={shot}", page],
                           capture_output=True, text=True, timeout=120)
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[:2] == (1400, 1280)
    assert pixels[..., :3].std() > 0.05  # not a blank page: text, lines and figures on white


def test_chromium_sorts_the_table_with_blanks_and_nan_last(tmp_path):
    """Clicking best_val_ppl in the page, in Chromium: numbers in order (a diverged run's Infinity
    is a number), then the runs without one, a NaN among them, whichever way it sorts."""
    from lmexp.report.html import page
    from lmexp.report.runs import read_run
    from lmexp.report.table import rows

    values = {"a": 30.0, "b": float("nan"), "c": 10.0, "d": None, "e": float("inf"), "f": 20.0, "g": float("nan")}
    for name, ppl in values.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"status": "interrupted", "best_val_ppl": ppl}))
    found = rows([read_run(tmp_path / name) for name in values])
    folder = [column for column, _, _ in COLUMNS].index("folder")
    clicks = f"""<script>
window.addEventListener("load", () => {{
  const header = Array.from(document.querySelectorAll("#runs th")).find(h => h.textContent === "best_val_ppl");
  const order = () => Array.from(document.querySelectorAll("#runs tbody tr")).map(r => r.cells[{folder}].textContent);
  header.click();
  const ascending = order();
  header.click();
  document.body.dataset.sorted = ascending.join("") + "|" + order().join("");
}});
</script>
</body>"""
    html_file = tmp_path / "sorted.html"
    html_file.write_text(page(found, [], tmp_path, tmp_path).replace("</body>", clicks))
    common = [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--virtual-time-budget=5000", "--dump-dom", html_file.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    ascending, descending = re.search(r'data-sorted="([^"]*)"', dom.stdout).group(1).split("|")
    assert ascending[:4] == "cfae" and descending[:4] == "eafc"
    assert sorted(ascending[4:]) == sorted(descending[4:]) == ["b", "d", "g"]


def test_runs_of_different_units_are_drawn_by_bits_per_byte(tmp_path):
    """A word run and a BPE run: their token perplexities do not compare, so every figure shows
    bits per byte (metrics.csv's val/bpb, results.json's val_bpb), under its own file name."""
    for name, tokenizer, bpbs in (("word", "word", (2.0, 1.8)), ("bpe", "bpe", (2.2, 1.7))):
        run = tmp_path / name
        run.mkdir()
        (run / "results.json").write_text(json.dumps({
            "status": "finished", "model": "lstm", "tokenizer": tokenizer, "vocab_size": 100, "params": 1000,
            "train_flops": 1e9, "best_val_ppl": 50.0 if name == "word" else 20.0, "val_bpb": bpbs[-1]}))
        (run / "metrics.csv").write_text("step,trainer/tokens,trainer/wall_time_s,val/ppl,val/bpb\n" + "".join(
            f"{10 * (i + 1)},{100 * (i + 1)},{i + 1},{60.0 - i},{bpb}\n" for i, bpb in enumerate(bpbs)))
    runs = find_runs([str(tmp_path)])
    drawn = draw_figures(runs, tmp_path)
    assert [p.name for p in drawn] == list(captions(BITS_PER_BYTE))
    lines = curve_lines(runs, lambda p: p.tokens, BITS_PER_BYTE)
    assert sorted(line.ppl for line in lines) == [[2.0, 1.8], [2.2, 1.7]]  # the y values: bits per byte
    assert drawn[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("file, text, says", [
    ("results.json", '{"status": "fini', "results.json cannot be read"),
    ("results.json", "[1, 2]", "results.json holds no mapping of settings"),
    ("config.yaml", "a: [", "config.yaml cannot be read"),
    ("config.yaml", "just text", "config.yaml holds no mapping of settings"),
    ("metrics.csv", "val/ppl\n12.5\n", "metrics.csv: a validation row without its step"),
])
def test_a_malformed_run_folder_is_one_line_naming_its_file(file, text, says, tmp_path):
    """One broken folder among good ones failed the whole report with a traceback."""
    for name in ("good", "bad"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"status": "finished", "model": "lstm",
                                                                   "best_val_ppl": 10.0}))
    (tmp_path / "bad" / file).write_text(text)
    with pytest.raises(UserError, match=says) as e:
        find_runs([str(tmp_path)])
    assert str(tmp_path / "bad" / file) in str(e.value) and "\n" not in str(e.value)


def test_a_results_json_without_a_status_ranks_as_the_finished_run_it_shows(tmp_path):
    # Written before runs recorded their status: shown as done, it was ranked among the unfinished.
    for name, record in (("old", {"model": "lstm", "best_val_ppl": 10.0}),
                         ("stopped", {"status": "interrupted", "model": "lstm", "best_val_ppl": 50.0}),
                         ("done", {"status": "finished", "model": "lstm", "best_val_ppl": 100.0})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(record))
    assert [row.folder for row in rows(find_runs([str(tmp_path)]))] == ["old", "done", "stopped"]


def test_each_legend_names_what_tells_its_line_apart_and_counts_seeds(tmp_path):
    """Three LSTM experiments, two differing in a fourth setting: the legend took the first three
    keys that differed from any sibling, so two lines had the same label; and '(2 seeds)' counted
    runs, here two of one seed."""
    from lmexp.report.figures import labels
    from lmexp.report.runs import RunRecord

    def run(folder, seed, **tokenizer):
        config = {"model": {"name": "lstm"}, "seed": seed, "tokenizer": {"name": "word", "split": "auto",
                                                                        "min_freq": None, **tokenizer},
                  "trainer": {"max_steps": 100}}
        return RunRecord(tmp_path / folder, {"model": "lstm", "seed": seed}, config)

    char = run("a", 1, name="char", split="none", min_freq=2)
    word, longer = run("b", 1), run("c", 1)
    longer.config["trainer"]["max_steps"] = 200
    again = run("d", 1)
    got = labels([[char], [word, again], [longer]])
    assert len(set(got)) == 3, got
    assert got[1] == "lstm tokenizer.name=word trainer.max_steps=100 (1 seed, 2 runs)"
    assert got[2] == "lstm tokenizer.name=word trainer.max_steps=200"


def write_run(folder: Path, results: dict, config: dict | None = None, metrics: str | None = None) -> None:
    """A run folder as lmexp leaves one: results.json, and config.yaml and metrics.csv when given."""
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))
    if config is not None:
        (folder / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    if metrics is not None:
        (folder / "metrics.csv").write_text(metrics)


def test_a_line_is_the_seeds_mean_to_the_last_validation_they_all_reached(tmp_path):
    """Three LSTM seeds, the second stopped after two validations, and two GRU seeds: each
    line is the mean (not the median) of its seeds' perplexities and of their x (wall times
    differ from seed to seed), up to the validations every seed reached; a validation logged
    as inf (diverged) is no point; every line of two seeds or more has its band; and each
    architecture keeps its colour however the runs are listed."""
    from lmexp.report.figures import colours, draw_curves

    header = "step,trainer/tokens,trainer/wall_time_s,val/ppl\n"
    for model, seeds in (("lstm", {1: ([1, 2, 3], [10, 8, 6]), 2: ([2, 4], [20, 9]), 3: ([3, 9, 12], [60, 13, 7])}),
                         ("gru", {1: ([1, 2], [30, 20]), 2: ([2, 3], [40, 30])})):
        for seed, (times, ppls) in seeds.items():
            rows = "".join(f"{10 * (i + 1)},{100 * (i + 1)},{t},{p}\n" for i, (t, p) in enumerate(zip(times, ppls)))
            if (model, seed) == ("lstm", 1):
                rows += "40,400,4,inf\n"
            write_run(tmp_path / f"{model}{seed}", {"status": "finished", "model": model, "seed": seed},
                      {"model": {"name": model}, "seed": seed}, header + rows)
    runs = find_runs([str(tmp_path)])
    assert [p.step for p in runs[[r.folder.name for r in runs].index("lstm1")].curve] == [10, 20, 30]
    by_tokens = {line.model: line for line in curve_lines(runs, lambda p: p.tokens)}
    lstm = by_tokens["lstm"]
    assert (lstm.x, lstm.seeds) == ([100, 200], 3)
    assert lstm.ppl == pytest.approx([30, 10]) and (lstm.low, lstm.high) == ([10, 8], [60, 13])
    by_time = {line.model: line for line in curve_lines(runs, lambda p: p.wall_time_s)}
    assert by_time["lstm"].x == pytest.approx([2, 5]) and by_time["gru"].x == pytest.approx([1.5, 2.5])
    palette = colours(runs)
    assert colours(runs[::-1]) == palette == {"gru": "C0", "lstm": "C1"}
    axes = draw_curves(list(by_tokens.values()), palette, "training tokens seen").axes[0]
    assert len(axes.collections) == 2  # a band for each line, the GRU's of two seeds too


def test_bits_per_byte_figures_show_bits_per_byte_and_replace_a_previous_reports(tmp_path):
    """Runs of two tokenizers, drawn by bits per byte: a run that logged no val/bpb (from before
    it was logged) has no bits-per-byte curve, each scatter point is the run's val_bpb (not its
    token perplexity), and the perplexity figures an earlier report left in the folder go."""
    from lmexp.report.figures import colours, draw_scatter

    header = "step,trainer/tokens,trainer/wall_time_s,val/ppl"
    write_run(tmp_path / "runs" / "word", {"status": "finished", "model": "lstm", "tokenizer": "word", "params": 1000,
                                           "best_val_ppl": 50.0, "val_bpb": 1.8},
              metrics=f"{header},val/bpb\n10,100,1,60,2.0\n20,200,2,50,1.8\n")
    write_run(tmp_path / "runs" / "bpe", {"status": "finished", "model": "gru", "tokenizer": "bpe", "params": 2000,
                                          "best_val_ppl": 20.0, "val_bpb": 1.7},
              metrics=f"{header}\n10,100,1,30\n20,200,2,20\n")
    runs = find_runs([str(tmp_path / "runs")])
    assert [(line.model, line.ppl) for line in curve_lines(runs, lambda p: p.tokens, BITS_PER_BYTE)] == \
        [("lstm", [2.0, 1.8])]
    axes = draw_scatter(runs, "params", colours(runs), "parameters", BITS_PER_BYTE).axes[0]
    assert sorted(tuple(point) for c in axes.collections for point in c.get_offsets()) == [(1000, 1.8), (2000, 1.7)]
    out = tmp_path / "report"
    out.mkdir()
    for stale in captions(PERPLEXITY):
        (out / stale).write_bytes(b"an earlier report's")
    drawn = draw_figures(runs, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in drawn)


def test_run_folders_are_found_at_any_depth(tmp_path):
    """outputs/multirun/<date>/<time>/<job>: python -m lmexp.report outputs reports every job."""
    for job in ("0-lstm", "1-gru"):
        write_run(tmp_path / "outputs" / "multirun" / "2026-01-01" / "10-00-00" / job,
                  {"status": "finished", "model": job.split("-")[1], "best_val_ppl": 10.0})
    assert sorted(run.folder.name for run in find_runs([str(tmp_path / "outputs")])) == ["0-lstm", "1-gru"]


def test_a_folders_and_an_errors_odd_characters_stay_text_and_the_link_opens_the_folder(tmp_path):
    """A run folder named with '<', '&', '#', a space and '|', and a failed run's error quoting:
    the page shows them as text (escaped, the tooltip too), links the folder with its name
    percent-encoded ('#' would start a fragment), and the Markdown table keeps its cells."""
    import urllib.parse

    from lmexp.report.html import page
    from lmexp.report.table import as_markdown

    name = "lr=1e-3 #2 <b>&amp|x"
    error = 'lmexp: error: model "big" > 2 <GB> & more'
    write_run(tmp_path / "runs" / name, {"status": "failed", "model": "lstm", "error": error})
    write_run(tmp_path / "runs" / "ok", {"status": "finished", "model": "lstm", "best_val_ppl": 10.0})
    found = rows(find_runs([str(tmp_path / "runs")]))
    out = tmp_path / "runs" / "report"
    parser = TableCells()
    parser.feed(page(found, [], tmp_path / "runs", out))
    columns = [column for column, _, _ in COLUMNS]
    cells = {row[columns.index("folder")]["text"]: dict(zip(columns, row)) for row in parser.rows if row}
    assert sorted(cells) == sorted([name, "ok"])
    assert cells[name]["status"] == {"text": "failed", "title": error}
    # ... and in a column of its own, as summary.md's (the Markdown table had no way to tell it
    # until 2026-12-02, the page only on hovering the status)
    assert cells[name]["error"]["text"] == error and cells["ok"]["error"]["text"] == ""
    html_text = page(found, [], tmp_path / "runs", out)
    href = re.search(r'<a href="([^"]*)">[^<]*lr=1e-3', html_text).group(1)
    assert " " not in href and "#" not in href and urllib.parse.unquote(href) == f"../{name}/"
    markdown = as_markdown(found, tmp_path / "runs")
    (line,) = [line for line in markdown.splitlines() if line.startswith("| lstm | failed")]
    assert len(re.split(r"(?<!\\)\|", line)[1:-1]) == len(COLUMNS)
    assert re.split(r"(?<!\\)\|", line)[-2].strip() == error


def test_runs_without_a_perplexity_come_last_by_folder_whatever_order_the_paths_came_in(tmp_path):
    for name in ("a", "b", "c"):
        write_run(tmp_path / name, {"status": "failed", "model": "lstm", "error": "lmexp: error: ..."})
    write_run(tmp_path / "d", {"status": "finished", "model": "lstm", "best_val_ppl": 10.0})
    found = rows(find_runs([str(tmp_path / name) for name in ("c", "a", "d", "b")]))
    assert [row.folder for row in found] == ["d", "a", "b", "c"]
