"""A sweep's summary and the runs report rank the jobs that finished: a pruned or interrupted
job's perplexity is of part of its training, and once came first as the sweep's best."""

import json
import re

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


def test_runs_of_different_tokenizers_are_ranked_by_bits_per_byte(tmp_path):
    """A word model's perplexity per word and a BPE model's per subword do not compare; the bits
    per byte of the same text do. The BPE run has the lower token perplexity, the word run the
    lower bits per byte: the word run ranks first, and the heading says why."""
    jobs = {"0-lstm-tiny": {"status": "finished", "tokenizer": "bpe", "best_val_ppl": 90.0, "val_bpb": 2.1},
            "1-lstm-tiny": {"status": "finished", "tokenizer": "word", "best_val_ppl": 300.0, "val_bpb": 1.9},
            "2-lstm-tiny": {"status": "pruned", "tokenizer": "word", "best_val_ppl": 250.0, "val_bpb": 1.5}}
    for name, results in jobs.items():
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(f"- tokenizer={results['tokenizer']}\n")
        (tmp_path / name / "results.json").write_text(json.dumps(results))
    order = ["1-lstm-tiny", "0-lstm-tiny", "2-lstm-tiny"]
    found = summary_rows(tmp_path)
    assert [row["job"] for row in found] == order
    assert [row["best_val_bpb"] for row in found] == [1.9, 2.1, 1.5]
    from lmexp.summary import as_csv, as_markdown

    assert "each group by best validation bits per byte (the tokenizers differ: bpe, word; token perplexities" \
        in as_markdown(found, tmp_path)
    assert as_csv(found).splitlines()[0].split(",")[5] == "best_val_bpb"  # the column, not the tokenizer
    report = report_rows([read_run(tmp_path / name) for name in jobs])
    assert [row.folder for row in report] == order
    from lmexp.report.table import as_markdown as report_markdown

    assert "each group by best validation bits per byte (the tokenizers" in report_markdown(report, tmp_path)

    for name in jobs:  # one tokenizer: token perplexity ranks them, as ever
        results = json.loads((tmp_path / name / "results.json").read_text())
        (tmp_path / name / "results.json").write_text(json.dumps({**results, "tokenizer": "word"}))
    assert [row["job"] for row in summary_rows(tmp_path)] == ["0-lstm-tiny", "1-lstm-tiny", "2-lstm-tiny"]
    assert "each group by best validation perplexity." in as_markdown(summary_rows(tmp_path), tmp_path)
