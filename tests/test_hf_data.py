"""data=hf: real `datasets` objects saved in tmp_path, read through lmexp's loader; never the internet.

The text is gensim's Lee background corpus (300 news articles, one per line), installed with gensim.
"""

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import pytest

datasets = pytest.importorskip("datasets", reason='data=hf needs the datasets library: pip install "lmexp[hf]"')

from conftest import ROOT, SMALL, run_lmexp  # noqa: E402
from lmexp.schema import parse  # noqa: E402
from lmexp.data.corpora import HFConfig, CORPORA, SPLITS, cut_bounds  # noqa: E402
from lmexp.errors import ConfigError, UserError  # noqa: E402

OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(autouse=True)
def no_internet(monkeypatch, tmp_path):
    """Offline mode for `datasets` in subprocesses, its cache in tmp_path, and no connection
    beyond the loopback from this process, whatever the library tries."""
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    connect = socket.socket.connect

    def loopback_only(self, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise OSError(f"test tried to reach {address}")
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)


@pytest.fixture(scope="module")
def articles() -> list[str]:
    from gensim.test.utils import datapath

    with open(datapath("lee_background.cor"), encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    assert len(lines) == 300
    return lines


def as_text(lines) -> str:
    return "".join(line + "\n" for line in lines)


def save_splits(folder, articles):
    """train 240 articles, validation 30, test 30, as save_to_disk writes them; an extra column too."""
    parts = {"train": articles[:240], "validation": articles[240:270], "test": articles[270:]}
    dd = datasets.DatasetDict({k: datasets.Dataset.from_dict({"text": v, "id": list(range(len(v)))})
                               for k, v in parts.items()})
    dd.save_to_disk(str(folder))
    return parts


def load(cache, **settings):
    return CORPORA.option("hf").make(HFConfig(**settings), cache)


def test_a_saved_dataset_dict_becomes_one_text_file_per_split(tmp_path, articles):
    parts = save_splits(tmp_path / "lee", articles)
    corpus = load(tmp_path / "cache", dataset=str(tmp_path / "lee"))
    (folder,) = (tmp_path / "cache" / "corpora").iterdir()
    assert folder.name.startswith("hf-lee-local-") and corpus.name == "hf-lee-local"
    assert corpus.files == {s: folder / f"{s}.txt" for s in ("train", "valid", "test")}
    for split, name in (("train", "train"), ("valid", "validation"), ("test", "test")):
        text = corpus.files[split].read_text(encoding="utf-8")
        assert text == as_text(parts[name]) and text.count("\n") == len(parts[name])


def test_the_cached_text_is_read_without_datasets_or_the_folder(tmp_path, articles, monkeypatch):
    save_splits(tmp_path / "lee", articles)
    first = load(tmp_path / "cache", dataset=str(tmp_path / "lee"))
    shutil.rmtree(tmp_path / "lee")
    monkeypatch.setitem(sys.modules, "datasets", None)  # any import of it now fails
    again = load(tmp_path / "cache", dataset=str(tmp_path / "lee"))
    assert again == first and again.files["test"].read_text(encoding="utf-8") == as_text(articles[270:])


def test_a_folder_saved_again_is_read_again(tmp_path, articles):
    save_splits(tmp_path / "lee", articles)
    first = load(tmp_path / "cache", dataset=str(tmp_path / "lee"))
    shutil.rmtree(tmp_path / "lee")
    save_splits(tmp_path / "lee", articles[::-1])
    again = load(tmp_path / "cache", dataset=str(tmp_path / "lee"))
    assert again.files == first.files  # same settings, same folder: the text is rewritten in place
    assert again.files["train"].read_text(encoding="utf-8") == as_text(articles[::-1][:240])


def test_settings_that_change_the_text_get_their_own_cache_folder(tmp_path, articles):
    save_splits(tmp_path / "lee", articles)
    a = load(tmp_path / "cache", dataset=str(tmp_path / "lee"))
    b = load(tmp_path / "cache", dataset=str(tmp_path / "lee"), test=None, split=[0.9, 0.0, 0.1])
    assert a.files["train"].parent != b.files["train"].parent


def test_records_keep_their_line_breaks_and_lose_one_trailing_newline(tmp_path):
    records = ["first\nsecond", "ends with a newline\n", "", None, "windows\r\nline", "  spaces kept  "]
    datasets.Dataset.from_dict({"text": records}).save_to_disk(str(tmp_path / "odd"))
    corpus = load(tmp_path / "cache", dataset=str(tmp_path / "odd"), valid=None, test=None, split=[1.0, 0.0, 0.0])
    assert list(corpus.files) == ["train"]  # a lone Dataset is the train split; fraction 0: no valid, no test
    assert corpus.files["train"].read_text(encoding="utf-8") == \
        "first\nsecond\nends with a newline\n\n\nwindows\nline\n  spaces kept  \n"


def test_missing_valid_and_test_are_cut_from_train(tmp_path, articles):
    datasets.Dataset.from_dict({"text": articles}).save_to_disk(str(tmp_path / "one"))
    corpus = load(tmp_path / "cache", dataset=str(tmp_path / "one"), valid=None, test=None, split=[0.8, 0.1, 0.1])
    expected = {s: articles[a:b] for s, (a, b) in zip(SPLITS, cut_bounds(len(articles), [0.8, 0.1, 0.1]))}
    assert {s: p.read_text(encoding="utf-8") for s, p in corpus.files.items()} == \
        {s: as_text(lines) for s, lines in expected.items()}
    assert [len(expected[s]) for s in ("train", "valid", "test")] == [240, 30, 30]


def test_only_the_missing_split_is_cut(tmp_path, articles):
    parts = save_splits(tmp_path / "lee", articles)
    corpus = load(tmp_path / "cache", dataset=str(tmp_path / "lee"), valid=None, split=[0.9, 0.1, 0.0])
    assert corpus.files["train"].read_text(encoding="utf-8") == as_text(parts["train"][:216])
    assert corpus.files["valid"].read_text(encoding="utf-8") == as_text(parts["train"][216:])
    assert corpus.files["test"].read_text(encoding="utf-8") == as_text(parts["test"])  # the dataset's own


def test_a_train_split_too_small_to_cut_is_refused_and_no_cut_is_kept(tmp_path):
    datasets.Dataset.from_dict({"text": ["only", "", "  "]}).save_to_disk(str(tmp_path / "small"))
    with pytest.raises(UserError, match=r"^data.split=\[0.34, 0.33, 0.33\]: the train split of .*small is too "
                                        r"small to cut; the valid split would have no text$"):
        load(tmp_path / "cache", dataset=str(tmp_path / "small"), valid=None, test=None, split=[0.34, 0.33, 0.33])
    (folder,) = (tmp_path / "cache" / "corpora").iterdir()
    assert not (folder / "valid.txt").exists() and not (folder / "source.txt").exists()


def test_a_cut_from_train_never_holds_the_split_in_memory(tmp_path):
    import tracemalloc

    records = [f"record {i}: a line of text much like any other in a corpus of this kind" for i in range(200_000)]
    datasets.Dataset.from_dict({"text": records}).save_to_disk(str(tmp_path / "big"))
    del records
    tracemalloc.start()
    try:
        corpus = load(tmp_path / "cache", dataset=str(tmp_path / "big"), valid=None, test=None,
                      split=[0.9, 0.05, 0.05])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert corpus.files["test"].read_text(encoding="utf-8").startswith("record 190000: ")
    # The train split as a list of lines was about 30 MB of Python strings here.
    assert peak < 12 << 20, f"{peak / 2**20:.1f} MiB at the peak"


@pytest.mark.parametrize("fmt", ["parquet", "json"])
def test_a_folder_of_data_files_is_read_by_split_name(tmp_path, articles, fmt):
    parts = save_splits(tmp_path / "lee", articles)
    folder = tmp_path / fmt
    folder.mkdir()
    for name, split in datasets.load_from_disk(str(tmp_path / "lee")).items():
        getattr(split, f"to_{fmt}")(str(folder / f"{name}.{fmt}"))
    corpus = load(tmp_path / "cache", dataset=str(folder))
    assert corpus.files["valid"].read_text(encoding="utf-8") == as_text(parts["validation"])
    assert corpus.files["train"].read_text(encoding="utf-8") == as_text(parts["train"])


@pytest.mark.parametrize("settings,message", [
    ({"column": "body"}, r"^data.column=body: split train of .*lee has no such column; its columns: text, id$"),
    ({"column": "id"}, r"^data.column=id: holds int64, not text; its columns: text, id$"),
    ({"valid": "dev"}, r"^data.valid=dev: .*lee has no split dev; its splits: train, validation, test; "
                       r"or set data.valid=null to cut it from train by data.split$"),
])
def test_a_wrong_setting_names_what_the_dataset_has(tmp_path, articles, settings, message):
    save_splits(tmp_path / "lee", articles)
    with pytest.raises(UserError, match=message):
        load(tmp_path / "cache", dataset=str(tmp_path / "lee"), **settings)
    assert not list((tmp_path / "cache" / "corpora").rglob("*.txt"))  # nothing half-written


def test_a_missing_folder_says_so(tmp_path):
    with pytest.raises(UserError, match=r"^data.dataset=\./nowhere: no such folder \(.*nowhere\); point it at a "
                                        r"folder saved with save_to_disk or holding data files, or give a Hub name"):
        load(tmp_path / "cache", dataset="./nowhere")


def test_without_the_datasets_library_one_line_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(UserError, match=r'^data=hf needs the datasets library: pip install "lmexp\[hf\]"$'):
        load(tmp_path / "cache", dataset="Salesforce/wikitext")


def test_offline_a_hub_name_fails_with_one_line_and_the_fixes(tmp_path):
    """In a fresh process: `datasets` reads HF_DATASETS_OFFLINE when it is imported."""
    script = textwrap.dedent(f"""
        from pathlib import Path
        from lmexp.data.corpora import HFConfig, CORPORA
        from lmexp.errors import UserError
        try:
            CORPORA.option("hf").make(HFConfig(dataset="nonexistent-user/nonexistent-dataset"), Path({str(tmp_path)!r}))
        except UserError as e:
            print(e)
    """)
    env = {**os.environ, **OFFLINE, "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    (line,) = out.stdout.splitlines()
    assert line.startswith("data.dataset=nonexistent-user/nonexistent-dataset: could not load it (")
    assert "offline" in line.lower() or "reach" in line.lower()
    assert line.endswith("; connect to the internet, or set HF_DATASETS_OFFLINE=1 with a copy in the Hugging Face "
                         "cache, or point data.dataset at a local folder")


def test_without_offline_variables_an_unreachable_hub_is_one_line_at_once(tmp_path):
    """No HF_*_OFFLINE set and no network (every connection refused: tests/no_network): the Hub's
    client retried for about 30 s, with 11 warning lines, before the one line. Now the Hub is
    asked once, and offline mode goes to the cache at once."""
    script = textwrap.dedent(f"""
        from pathlib import Path
        from lmexp.data.corpora import HFConfig, CORPORA
        from lmexp.errors import UserError
        try:
            CORPORA.option("hf").make(HFConfig(dataset="nonexistent-user/nonexistent-dataset"), Path({str(tmp_path)!r}))
        except UserError as e:
            print(e)
    """)
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE}
    env.update(HF_HOME=str(tmp_path / "hf"), LMEXP_TEST_CONNECTIONS=str(tmp_path / "connections.txt"),
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "no_network"), env.get("PYTHONPATH", "")]))
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - start
    assert out.returncode == 0, out.stderr[-2000:]
    (line,) = out.stdout.splitlines()
    assert "could not load it (the Hugging Face Hub cannot be reached (" in line
    assert "Retrying" not in out.stderr and took < 20, (took, out.stderr[-2000:])
    assert (tmp_path / "connections.txt").read_text().count("huggingface.co") == 1  # asked once


@pytest.mark.parametrize("override,message", [
    ({"split": [0.5, 0.5]}, "data.split=[0.5, 0.5]: must be three non-negative fractions"),
    ({"column": ""}, "data.column='': must be the name of the text column"),
    ({"tokenized": "maybe"}, "data.tokenized=maybe: must be of type bool"),  # OmegaConf reads yes/no as booleans
])
def test_settings_are_checked_before_anything_runs(override, message):
    with pytest.raises(ConfigError, match=f"^{message}".replace("[", r"\[").replace("]", r"\]")):
        parse(HFConfig, override, "data")


def test_tokenized_text_is_split_on_spaces():
    from lmexp.data.tokenizers import WordTokenizer, WordTokenizerConfig

    def words(config: HFConfig) -> list[str]:
        return WordTokenizer(WordTokenizerConfig(), pretokenized=config.pretokenized()).split("don't stop.")

    assert words(HFConfig(tokenized=True)) == ["don't", "stop."]  # the words as the text has them
    assert words(HFConfig()) == ["do", "n't", "stop", "."]  # raw text: NLTK's split


@pytest.mark.slow
def test_lmexp_trains_on_a_saved_dataset(tmp_path, articles):
    save_splits(tmp_path / "lee", articles)
    cwd = tmp_path / "run"
    cwd.mkdir()
    result = run_lmexp(["data=hf", f"data.dataset={tmp_path / 'lee'}", *SMALL, "trainer.max_steps=3",
                        "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "logger=none"],
                       cwd=cwd, cache_dir=tmp_path / "cache", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (results_file,) = (cwd / "outputs").glob("*/*/results.json")
    results = json.loads(results_file.read_text())
    assert results["data"] == "hf" and results["steps"] == 3
    assert math.isfinite(results["test_ppl"]) and results["test_ppl"] > 1
