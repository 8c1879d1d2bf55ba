"""python -m lmexp.prepare: tokenize and cache without training, report as JSON."""

import json

from conftest import entry_point


def prepare(args, cwd, cache):
    return entry_point("lmexp.prepare", args, cwd, cache, timeout=300)


def test_prepare_reports_the_corpus_and_the_second_call_hits_the_cache(tmp_path):
    cache = tmp_path / "cache"
    first = prepare(["tokenizer.min_freq=5"], tmp_path, cache)
    assert first.returncode == 0, first.stderr[-2000:]
    report = json.loads(first.stdout)
    assert report["data"] == "tiny" and report["tokenizer"] == "word" and not report["from_cache"]
    assert set(report["splits"]) == {"train", "valid", "test"}
    train = report["splits"]["train"]
    assert train["lines"] == 6515 and train["tokens"] > train["lines"] and train["bytes"] > train["tokens"]
    assert 0 < report["splits"]["test"]["oov_rate"] < 0.5 and report["vocab_size"] < 11559  # min_freq 5 < 3's
    second = json.loads(prepare(["tokenizer.min_freq=5"], tmp_path, cache).stdout)
    assert second["from_cache"] and second["cache"] == report["cache"] and second["splits"] == report["splits"]
    assert not (tmp_path / "outputs").exists()  # nothing trained, no run folder


def test_prepare_bad_input_is_one_line(tmp_path):
    result = prepare(["data=ptb", "data.root=/nowhere"], tmp_path, tmp_path / "cache")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "lmexp: error: data.root=/nowhere does not exist; point it at a folder holding " \
                                    "the ptb files"


def test_prepare_reports_the_out_of_vocabulary_share_as_unknown_tokens_over_tokens(tmp_path):
    from lmexp.prepare import prepare

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"the cat sat on mat{i % 3} rare{i}\n" for i in range(50)))
    report = prepare(["data=text", f"data.path={corpus}", "data.split=[0.8,0.1,0.1]", "tokenizer=word",
                      "tokenizer.min_freq=2", f"paths.cache_dir={tmp_path / 'cache'}"])
    for split in report["splits"].values():
        assert split["unk"] > 0 and split["oov_rate"] == split["unk"] / split["tokens"]
