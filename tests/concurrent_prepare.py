"""One job preparing a corpus, for the races between processes in tests/test_cache.py.

``python tests/concurrent_prepare.py FOLDER CACHE`` prints ``ready`` once its imports are
done, then waits for a line on stdin, so that a test can release two jobs at the same moment;
it then tokenizes FOLDER's train/valid/test.txt by characters into CACHE, logging on
stderr, and prints a JSON line: the entry, whether it came from the cache, and the ids' digests.
"""

import hashlib
import json
import logging
import sys
from pathlib import Path

import numpy as np

from lmexp.data.cache import TokenizedCorpus, tokenize_corpus
from lmexp.data.corpora import Corpus
from lmexp.data.tokenizers import CharTokenizer, CharTokenizerConfig

NAME = "race"


def corpus(folder: Path) -> Corpus:
    return Corpus(NAME, {s: folder / f"{s}.txt" for s in ("train", "valid", "test")})


def tokenizer() -> CharTokenizer:
    return CharTokenizer(CharTokenizerConfig())  # no NLTK to import (2 s a process)


def digests(data: TokenizedCorpus) -> dict[str, str]:
    """Each split's ids as one string (their type and the sha256 of their bytes): equal ids, equal strings."""
    return {s: f"{ids.dtype.str} {hashlib.sha256(np.ascontiguousarray(ids).tobytes()).hexdigest()}"
            for s, ids in data.ids.items()}


def main(folder: Path, cache: Path) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    made = tokenizer()
    print("ready", flush=True)
    sys.stdin.readline()
    data = tokenize_corpus(corpus(folder), made, cache)
    print(json.dumps({"path": str(data.path), "from_cache": data.from_cache, "ids": digests(data)}), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
