"""Downloading a release into the cache, against a local HTTP server on 127.0.0.1."""

import functools
import http.server
import shutil
import socket
import threading
import time

import pytest

from lmexp.data.corpora import PTBConfig, corpus_spec
from lmexp.errors import UserError
from test_real_corpora import need


@pytest.fixture
def server(tmp_path):
    """Serves tmp_path/www on a free loopback port; counts the GET requests."""
    root = tmp_path / "www"
    root.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root, requests
    httpd.shutdown()
    httpd.server_close()


def test_ptb_downloads_into_the_cache_checks_md5_and_is_not_fetched_twice(server, tmp_path):
    url, root, requests = server
    for split in ("train", "valid", "test"):
        shutil.copy(need("ptb") / f"ptb.{split}.txt", root)
    cache = tmp_path / "cache"
    corpus = corpus_spec("ptb").load(PTBConfig(url=url), cache)
    assert sorted(requests) == ["/ptb.test.txt", "/ptb.train.txt", "/ptb.valid.txt"]
    assert corpus.files["train"] == cache / "corpora" / "ptb" / "ptb.train.txt"
    assert corpus.files["train"].read_bytes() == (need("ptb") / "ptb.train.txt").read_bytes()
    assert corpus_spec("ptb").load(PTBConfig(url=url), cache).files == corpus.files
    assert len(requests) == 3  # the second load found the files in the cache


def test_a_corrupt_download_is_refused_and_leaves_nothing(server, tmp_path):
    url, root, _ = server
    for split in ("train", "valid", "test"):
        (root / f"ptb.{split}.txt").write_text(" not the real treebank \n" * 100)
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match=r"ptb.train.txt is corrupt \(md5 .*expected f26c4b92"):
        corpus_spec("ptb").load(PTBConfig(url=url), cache)
    assert not list((cache / "corpora" / "ptb").iterdir())  # no partial or bad file kept


def test_offline_fails_at_once_with_where_to_put_the_files(tmp_path):
    with socket.socket() as s:  # a port nothing listens on: connection refused, as offline
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"could not download http://127.0.0.1:\d+/ptb.train.txt .*offline\? put the "
                                        r"file at .*corpora/ptb/ptb.train.txt by hand, or set data.root"):
        corpus_spec("ptb").load(PTBConfig(url=f"http://127.0.0.1:{port}"), tmp_path / "cache")
    assert time.perf_counter() - start < 5


def test_no_download_when_told_not_to(tmp_path):
    with pytest.raises(UserError, match=r"not found in .*corpora/ptb; put the files there"):
        corpus_spec("ptb").load(PTBConfig(download=False), tmp_path / "cache")
