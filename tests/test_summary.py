"""A sweep's summary and the runs report rank the jobs that finished: a pruned or interrupted
job's perplexity is of part of its training, and once came first as the sweep's best."""

import json
import re
import shutil

from lmexp.report.runs import read_run
from lmexp.report.table import rows as report_rows
from lmexp.summary import rows as summary_rows

JOBS = {  # job folder -> results.json
    "0-lstm-tiny": {"status": "finished", "best_val_ppl": 800.0},
    "1-gru-tiny": {"status": "interrupted", "best_val_ppl": 500.0},
    "2-rnn-tiny": {"status": "pruned", "best_val_ppl": 600.0},
    "3-rnn-tiny": {"status": "failed", "error": "lmexp: error: ..."},
    "4-lstm-tiny": {"status": "finished", "best_val_ppl": 700.0},
}


def test_jobs_done_come_first_and_only_they_can_be_best(tmp_path):
    for name, results in JOBS.items():
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(f"- model={name.split('-')[1]}\n")
        (tmp_path / name / "results.json").write_text(json.dumps(results))
    order = ["4-lstm-tiny", "0-lstm-tiny", "1-gru-tiny", "2-rnn-tiny", "3-rnn-tiny"]
    assert [row["job"] for row in summary_rows(tmp_path)] == order
    assert [row.folder for row in report_rows([read_run(tmp_path / name) for name in JOBS])] == order


def test_an_override_holding_a_bar_stays_in_its_cell(tmp_path):
    from lmexp.summary import COLUMNS, as_markdown

    job = tmp_path / "0-lstm-tiny"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- \"+trainer.logger_name=a|b\"\n")
    (job / "results.json").write_text(json.dumps({"status": "finished", "best_val_ppl": 1.5}))
    (table_row,) = [line for line in as_markdown(summary_rows(tmp_path), tmp_path).splitlines()
                    if line.startswith("| 0-lstm-tiny")]
    assert len(re.split(r"(?<!\\)\|", table_row)[1:-1]) == len(COLUMNS)  # cells split at the bars not escaped
    assert "a\\|b" in table_row


def test_runs_of_different_units_are_ranked_by_bits_per_byte(tmp_path):
    """A word model's perplexity per word and a BPE model's per subword do not compare, nor two
    BPEs' of different vocabularies; the bits per byte of the same text do. The BPE run has the
    lower token perplexity, the word run the lower bits per byte: the word run ranks first, and
    the heading says why."""
    jobs = {"0-lstm-tiny": {"status": "finished", "tokenizer": "bpe", "vocab_size": 8000, "best_val_ppl": 90.0,
                            "val_bpb": 2.1},
            "1-lstm-tiny": {"status": "finished", "tokenizer": "word", "vocab_size": 11559, "best_val_ppl": 300.0,
                            "val_bpb": 1.9},
            "2-lstm-tiny": {"status": "pruned", "tokenizer": "word", "vocab_size": 11559, "best_val_ppl": 250.0,
                            "val_bpb": 1.5}}

    def write(jobs):
        for name, results in jobs.items():
            (tmp_path / name / ".hydra").mkdir(parents=True, exist_ok=True)
            (tmp_path / name / ".hydra" / "overrides.yaml").write_text(f"- tokenizer={results['tokenizer']}\n")
            (tmp_path / name / "results.json").write_text(json.dumps(results))

    from lmexp.report.table import as_markdown as report_markdown
    from lmexp.summary import as_csv, as_markdown

    write(jobs)
    order = ["1-lstm-tiny", "0-lstm-tiny", "2-lstm-tiny"]
    found = summary_rows(tmp_path)
    assert [row["job"] for row in found] == order
    assert [row["best_val_bpb"] for row in found] == [1.9, 2.1, 1.5]
    assert "each group by best validation bits per byte (the runs predict different units: bpe of 8,000, " \
        "word of 11,559; token perplexities" in as_markdown(found, tmp_path)
    assert as_csv(found).splitlines()[0].split(",")[5] == "best_val_bpb"  # a column; the units are not one
    report = report_rows([read_run(tmp_path / name) for name in jobs])
    assert [row.folder for row in report] == order
    assert "each group by best validation bits per byte (the runs predict" in report_markdown(report, tmp_path)

    write({name: {**results, "tokenizer": "bpe"} for name, results in jobs.items()})  # two BPE vocabularies
    assert [row["job"] for row in summary_rows(tmp_path)] == order
    write({name: {**results, "tokenizer": "word", "vocab_size": 11559} for name, results in jobs.items()})
    assert [row["job"] for row in summary_rows(tmp_path)] == ["0-lstm-tiny", "1-lstm-tiny", "2-lstm-tiny"]
    assert "each group by best validation perplexity." in as_markdown(summary_rows(tmp_path), tmp_path)


def test_the_sweeps_last_line_tells_the_jobs_an_earlier_sweep_left_in_its_folder(tmp_path, capsys):
    """Another grid run in a sweep's folder: the summary covers every job folder there, and its
    last line crowned a job of the earlier grid as this sweep's best, without a word."""
    import os

    from omegaconf import OmegaConf

    from lmexp.summary import SweepSummary

    summary = SweepSummary()
    for name, ppl in (("0-rnn-tiny", 500.0), ("1-rnn-tiny", 300.0)):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(f"- seed={name[0]}\n")
        (tmp_path / name / "results.json").write_text(json.dumps({"status": "finished", "best_val_ppl": ppl}))
        os.utime(tmp_path / name / ".hydra" / "overrides.yaml", (1e9, 1e9))  # both from an earlier sweep
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    summary.on_multirun_start(config)
    (tmp_path / "0-rnn-tiny" / ".hydra" / "overrides.yaml").write_text("- seed=0\n")  # this sweep's one job
    summary.on_multirun_end(config)
    assert ("lmexp: sweep of 2 jobs (1 of them from before this sweep, not run in it); best val ppl 300.00 "
            "(1-rnn-tiny, from before)") in capsys.readouterr().out


def test_the_sweeps_last_line_counts_its_failed_jobs(tmp_path, capsys):
    """A failed job's one line comes mid-sweep, long scrolled away when the sweep ends: the last
    line counts them and says where their errors are (until 2026-12-02 it named the best job alone)."""
    from omegaconf import OmegaConf

    from lmexp.summary import SweepSummary

    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    summary = SweepSummary()
    summary.on_multirun_start(config)
    for name, results in (("0-transformer-ptb", {"status": "failed", "error": "lmexp: error: model.target_params"}),
                          ("1-lstm-ptb", {"status": "finished", "best_val_ppl": 9158.53})):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(f"- seed={name[0]}\n")
        (tmp_path / name / "results.json").write_text(json.dumps(results))
    summary.on_multirun_end(config)
    assert capsys.readouterr().out == ("lmexp: sweep of 2 jobs, 1 failed (each one's error is in summary.md); best val "
                                      f"ppl 9158.53 (1-lstm-ptb) -> {tmp_path / 'summary.md'}\n")


def test_runs_scored_on_different_amounts_of_text_are_said_not_to_compare(tmp_path):
    """trainer.limit_val_batches=5 scores 5 batches: 5,120 tokens of an LSTM's streams, 10,240 of
    a Transformer's windows. Ranked side by side, their perplexities are of different text: the
    summary's and the report's headings say so (until 2026-12-02 they ranked them unremarked).
    Runs that predict different units (word, BPE) cut the same text into different counts, and
    are not told apart for it; nor are runs not done."""
    from lmexp.report.table import as_markdown as report_markdown
    from lmexp.summary import as_markdown

    def job(name, status="finished", tokenizer="word", vocab=10000, val=5120, test=5120):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(f"- seed={name[0]}\n")
        (tmp_path / name / "results.json").write_text(json.dumps(
            {"status": status, "best_val_ppl": 300.0 + int(name[0]), "tokenizer": tokenizer, "vocab_size": vocab,
             "val_tokens": val, "test_tokens": test}))

    job("0-lstm-ptb")
    job("1-transformer-ptb")
    job("2-lstm-ptb", tokenizer="bpe", vocab=8000, val=7000, test=7000)  # other units: their own count
    job("3-transformer-ptb", status="interrupted", val=640)  # not done: not compared
    assert "different amounts of text" not in as_markdown(summary_rows(tmp_path), tmp_path)
    shutil.rmtree(tmp_path / "1-transformer-ptb")
    job("1-transformer-ptb", val=10240, test=10240)
    said = ("They were scored on different amounts of text (validation 5,120 to 10,240 tokens; test 5,120 to "
            "10,240 tokens), so their perplexities do not compare: trainer.limit_val_batches and "
            "limit_test_batches count batches, whose tokens differ from model to model; null scores the whole split.")
    assert said in as_markdown(summary_rows(tmp_path), tmp_path)
    runs = [read_run(tmp_path / name) for name in sorted(p.name for p in tmp_path.iterdir())]
    assert said in report_markdown(report_rows(runs), tmp_path)


def test_a_diverged_run_ranks_after_every_finite_one_in_the_summary_and_the_report(tmp_path):
    """A run whose perplexity is NaN or inf (diverged) must not head the table: NaN compares
    false with everything, so a sort key that lets it through leaves it where it was listed."""
    from lmexp.report.runs import read_run
    from lmexp.report.table import rows as report_rows
    from lmexp.summary import rows as summary_rows

    jobs = {"0-lstm-tiny": float("nan"), "1-lstm-tiny": 700.0, "2-lstm-tiny": float("inf"), "3-lstm-tiny": 500.0}
    for name, ppl in jobs.items():
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(f"- seed={name[0]}\n")
        (tmp_path / name / "results.json").write_text(json.dumps({"status": "finished", "best_val_ppl": ppl}))
    ranked = [row["job"] for row in summary_rows(tmp_path)]
    assert ranked[:2] == ["3-lstm-tiny", "1-lstm-tiny"]
    reported = [row.folder for row in report_rows([read_run(tmp_path / name) for name in jobs])]
    assert reported[:2] == ["3-lstm-tiny", "1-lstm-tiny"]


def test_jobs_without_a_perplexity_stay_in_job_order_and_their_errors_in_their_cells(tmp_path):
    """Twelve failed jobs: listed 0 to 11 as Hydra numbered them (not 0, 1, 10, 11, 2, ...), each
    error, '|' and all, in the error cell of its own row."""
    from lmexp.summary import COLUMNS, as_markdown

    for job in range(12):
        (tmp_path / f"{job}-lstm-tiny" / ".hydra").mkdir(parents=True)
        (tmp_path / f"{job}-lstm-tiny" / ".hydra" / "overrides.yaml").write_text(f"- seed={job}\n")
        (tmp_path / f"{job}-lstm-tiny" / "results.json").write_text(json.dumps(
            {"status": "failed", "error": "lmexp: error: data.path 'a|b' not found"}))
    found = summary_rows(tmp_path)
    assert [row["job"] for row in found] == [f"{job}-lstm-tiny" for job in range(12)]
    for line in as_markdown(found, tmp_path).splitlines()[-12:]:
        cells = re.split(r"(?<!\\)\|", line)[1:-1]
        assert len(cells) == len(COLUMNS) and cells[-1].strip() == "lmexp: error: data.path 'a\\|b' not found"


def test_a_sweep_whose_jobs_were_all_pruned_names_no_best(tmp_path, capsys):
    """A pruned job's perplexity is of part of its training: with no job done, none is the best."""
    from omegaconf import OmegaConf

    from lmexp.summary import SweepSummary

    for name, ppl in (("0-rnn-tiny", 500.0), ("1-rnn-tiny", 300.0)):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(f"- seed={name[0]}\n")
        (tmp_path / name / "results.json").write_text(json.dumps({"status": "pruned", "best_val_ppl": ppl}))
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    summary = SweepSummary()
    summary.on_multirun_start(config)
    summary.on_multirun_end(config)
    assert capsys.readouterr().out == f"lmexp: sweep of 2 jobs (2 of them from before this sweep, not run in it) " \
                                      f"-> {tmp_path / 'summary.md'}\n"


def test_a_job_from_before_runs_wrote_a_status_is_done_in_the_summary_as_in_the_report(tmp_path):
    """results.json without a status was written only for a finished run: the report showed such
    jobs as done, and the sweep summary, until 2026-12-01, as unfinished, naming no best."""
    from lmexp.report.runs import find_runs

    for job, ppl in ((0, 20.0), (1, 10.0)):
        (tmp_path / f"{job}-lstm" / ".hydra").mkdir(parents=True)
        (tmp_path / f"{job}-lstm" / ".hydra" / "overrides.yaml").write_text(f"- seed={job}\n")
        (tmp_path / f"{job}-lstm" / "results.json").write_text(json.dumps({"model": "lstm", "best_val_ppl": ppl}))
    (tmp_path / "2-lstm" / ".hydra").mkdir(parents=True)  # killed before it wrote results.json
    (tmp_path / "2-lstm" / ".hydra" / "overrides.yaml").write_text("- seed=2\n")
    summary = [(row["job"], row["status"]) for row in summary_rows(tmp_path)]
    assert summary == [("1-lstm", "done"), ("0-lstm", "done"), ("2-lstm", "unfinished")]
    report = [(row.folder, row.value("status")) for row in report_rows(find_runs([str(tmp_path)]))]
    assert report == [("1-lstm", "done"), ("0-lstm", "done")]
