"""Downloading a release into the cache, against a local HTTP server on 127.0.0.1."""

import functools
import hashlib
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from lmexp.data import corpora
from lmexp.data.corpora import PTBConfig, WikiTextConfig, CORPORA
from lmexp.data.download import download
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


def test_ptb_downloads_into_the_cache_checks_md5_and_is_not_fetched_twice(server, tmp_path, monkeypatch):
    """With files of its own and their MD5s in place of the release's: no real corpus needed."""
    url, root, requests = server
    files = {}
    for split in ("train", "valid", "test"):
        text = f" the {split} split of a stand - in treebank \n".encode() * 50
        (root / f"ptb.{split}.txt").write_bytes(text)
        files[split] = (f"ptb.{split}.txt", hashlib.md5(text).hexdigest())
    monkeypatch.setattr(corpora, "PTB_FILES", files)
    cache = tmp_path / "cache"
    corpus = CORPORA.option("ptb").make(PTBConfig(url=url), cache)
    assert sorted(requests) == ["/ptb.test.txt", "/ptb.train.txt", "/ptb.valid.txt"]
    assert corpus.files["train"] == cache / "corpora" / "ptb" / "ptb.train.txt"
    assert corpus.files["train"].read_bytes() == (root / "ptb.train.txt").read_bytes()
    assert CORPORA.option("ptb").make(PTBConfig(url=url), cache).files == corpus.files
    assert len(requests) == 3  # the second load found the files in the cache


def test_the_release_md5s_are_those_of_the_real_files():
    for split, (name, md5) in corpora.PTB_FILES.items():
        assert hashlib.md5((need("ptb") / name).read_bytes()).hexdigest() == md5, split


def test_a_corrupt_download_is_refused_and_leaves_nothing(server, tmp_path):
    url, root, _ = server
    for split in ("train", "valid", "test"):
        (root / f"ptb.{split}.txt").write_text(" not the real treebank \n" * 100)
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match=r"ptb.train.txt is corrupt \(md5 .*expected f26c4b92"):
        CORPORA.option("ptb").make(PTBConfig(url=url), cache)
    assert not files_in(cache / "corpora")  # no partial or bad file kept


def closed_port() -> int:
    with socket.socket() as s:  # a port nothing listens on: connection refused, as offline
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_fails_at_once_with_where_to_put_the_files(tmp_path):
    port = closed_port()
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"could not download http://127.0.0.1:\d+/ptb.train.txt .*offline\? put the "
                                        r"file at .*corpora/ptb/ptb.train.txt by hand, or set data.root"):
        CORPORA.option("ptb").make(PTBConfig(url=f"http://127.0.0.1:{port}"), tmp_path / "cache")
    assert time.perf_counter() - start < 5


def files_in(folder) -> list:
    """Every file but the release's lock (lmexp/locks.py), which stays, as the token cache's do."""
    return [p for p in folder.rglob("*") if p.is_file() and p.suffix != ".lock"]


@pytest.mark.parametrize("url", ["notaurl", "http://[::1", "http://a b", "http://127.0.0.1:port"])
def test_a_data_url_that_is_no_url_is_one_line_and_leaves_nothing(tmp_path, url):
    with pytest.raises(UserError, match=r"^could not download .*ptb.train.txt: not a URL \(.+\); set data.url to an "
                                        r"http:// or https:// address, or put the file at .*corpora/ptb/ptb.train.txt"):
        CORPORA.option("ptb").make(PTBConfig(url=url), tmp_path / "cache")
    assert not files_in(tmp_path)


@pytest.fixture
def answering():
    """Starts servers on free loopback ports that answer each request with the bytes given, then
    hang up: servers that do not speak HTTP, or break off."""
    listeners = []

    def start(reply: bytes) -> str:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)

        def answer():
            while True:
                try:
                    connection, _ = listener.accept()
                except OSError:  # closed at the end of the test
                    return
                with connection:
                    connection.recv(1 << 16)
                    connection.sendall(reply)

        threading.Thread(target=answer, daemon=True).start()
        return f"http://127.0.0.1:{listener.getsockname()[1]}"

    yield start
    for listener in listeners:
        listener.close()


@pytest.mark.parametrize("reply,error", [
    (b"garbage\r\n\r\n", "BadStatusLine"),
    (b"", "RemoteDisconnected"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc", "IncompleteRead"),  # 16 bytes promised
])
def test_a_broken_reply_is_one_line_and_leaves_nothing(answering, tmp_path, reply, error):
    with pytest.raises(UserError, match=rf"^could not download http://127.0.0.1:\d+/ptb.train.txt \(a broken reply: "
                                        rf"{error}\(.*\)\); try again, or put the file at "):
        CORPORA.option("ptb").make(PTBConfig(url=answering(reply)), tmp_path / "cache")
    assert not files_in(tmp_path)


def test_a_content_length_that_is_no_number_is_left_to_the_checksum(answering, tmp_path):
    url = answering(b"HTTP/1.0 200 OK\r\nContent-Length: many\r\n\r\nthe text")
    assert download(f"{url}/a.txt", tmp_path / "a.txt", hashlib.md5(b"the text").hexdigest()).read_bytes() == b"the text"


def test_a_failed_download_closes_its_temporary_file(tmp_path):
    open_files = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        with pytest.raises(UserError, match="offline"):
            download(f"http://127.0.0.1:{closed_port()}/a.txt", tmp_path / "a.txt")
    assert len(os.listdir("/proc/self/fd")) == open_files
    assert not files_in(tmp_path)


def test_no_download_when_told_not_to(tmp_path):
    with pytest.raises(UserError, match=r"not found in .*corpora/ptb; put the files there"):
        CORPORA.option("ptb").make(PTBConfig(download=False), tmp_path / "cache")


# --- WikiText: a zip of the three split files, each SHA1-checked --------------------------------

SPLITS = ("train", "valid", "test")


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def serve_release(root, folder: str, suffix: str, texts: dict) -> None:
    """A zip in the release's layout: <folder>/wiki.<split>.<suffix>."""
    with zipfile.ZipFile(root / f"{folder}-v1.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for split, data in texts.items():
            zf.writestr(f"{folder}/wiki.{split}.{suffix}", data)


def wikitext_texts() -> dict:
    return {s: "".join(f" = {s} article {i} = \n The text of paragraph {i} . \n" for i in range(50)).encode()
            for s in SPLITS}


@pytest.mark.parametrize("name,variant,folder,suffix", [("wikitext-2", "tokens", "wikitext-2", "tokens"),
                                                        ("wikitext-103", "raw", "wikitext-103-raw", "raw")])
def test_wikitext_downloads_the_zip_unpacks_checked_files_and_is_not_fetched_twice(
        server, tmp_path, monkeypatch, name, variant, folder, suffix):
    url, root, requests = server
    texts = wikitext_texts()
    serve_release(root, folder, suffix, texts)
    monkeypatch.setitem(corpora.WIKITEXT_SHA1, folder, {s: sha1(texts[s]) for s in SPLITS})
    cache = tmp_path / "cache"
    corpus = CORPORA.option(name).make(WikiTextConfig(variant=variant, url=url), cache)
    assert requests == [f"/{folder}-v1.zip"]
    assert corpus.name == folder
    assert corpus.files == {s: cache / "corpora" / folder / f"wiki.{s}.{suffix}" for s in SPLITS}
    assert {s: p.read_bytes() for s, p in corpus.files.items()} == texts
    assert [p.name for p in (cache / "corpora").iterdir() if p.suffix != ".lock"] == [folder]  # the zip is gone
    assert CORPORA.option(name).make(WikiTextConfig(variant=variant, url=url), cache).files == corpus.files
    assert len(requests) == 1  # the second load found the files in the cache


def test_without_a_lock_two_runs_fetching_one_release_at_once_each_unpack_their_own_zip(
        server, tmp_path, monkeypatch):
    """Where no lock can be had (no flock), both download. Both once downloaded to one shared zip
    name and removed it after unpacking: the first one's clean-up could delete the second one's
    zip before it was opened (FileNotFoundError, a traceback). The order is forced: B's download
    lands before A unpacks, B unpacks after A is done."""
    from lmexp import locks
    from lmexp.data import download as fetching

    monkeypatch.setattr(locks, "fcntl", None)
    url, root, _ = server
    texts = wikitext_texts()
    serve_release(root, "wikitext-2", "tokens", texts)
    monkeypatch.setitem(corpora.WIKITEXT_SHA1, "wikitext-2", {s: sha1(texts[s]) for s in SPLITS})
    b_downloaded, a_done = threading.Event(), threading.Event()
    real_download, real_extract = fetching.download, fetching.extract

    def download_in_order(*args, **kwargs):
        got = real_download(*args, **kwargs)
        if threading.current_thread().name == "A":
            b_downloaded.wait(60)
        return got

    def extract_in_order(*args, **kwargs):
        if threading.current_thread().name == "B":
            b_downloaded.set()
            a_done.wait(60)
        return real_extract(*args, **kwargs)

    monkeypatch.setattr(fetching, "download", download_in_order)
    monkeypatch.setattr(fetching, "extract", extract_in_order)
    cache, told = tmp_path / "cache", {}

    def fetch():
        try:
            told[threading.current_thread().name] = CORPORA.option("wikitext-2").make(WikiTextConfig(url=url), cache)
        except Exception as e:  # noqa: BLE001 (the test reports it)
            told[threading.current_thread().name] = e
        finally:
            if threading.current_thread().name == "A":
                a_done.set()

    a = threading.Thread(target=fetch, name="A")
    a.start()
    time.sleep(0.5)  # A is downloading (it waits for B's download before it unpacks)
    b = threading.Thread(target=fetch, name="B")
    b.start()
    a.join(120)
    b.join(120)
    assert not any(isinstance(result, Exception) for result in told.values()), told
    assert {s: p.read_bytes() for s, p in told["B"].files.items()} == texts
    assert [p.name for p in (cache / "corpora").iterdir()] == ["wikitext-2"]  # no zip, no private folder left


# --- jobs that start together, a job killed mid-download, a server too slow to finish ----------

FETCH = """
import json, logging, sys
from pathlib import Path
from lmexp.data import corpora
from lmexp.data.corpora import CORPORA, WikiTextConfig
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
url, cache, sums = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
corpora.WIKITEXT_SHA1["wikitext-2"] = sums
print("ready", flush=True)
sys.stdin.readline()
corpus = CORPORA.option("wikitext-2").make(WikiTextConfig(url=url), cache)
print(json.dumps({s: str(p) for s, p in corpus.files.items()}), flush=True)
"""


@pytest.fixture
def slow_server(tmp_path):
    """Serves tmp_path/www as ``server`` does, each reply's body in 8 pieces over ``pause`` × 8 s
    (long enough for two jobs to overlap), or stopping after ``stop_after`` pieces and hanging."""
    root = tmp_path / "www"
    root.mkdir()
    requests, timing = [], {"pause": 0.1, "stop_after": None}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            path = root / self.path.lstrip("/")
            if not path.is_file():
                self.send_error(404)
                return
            body = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            piece = -(-len(body) // 8)
            for i in range(8):
                if timing["stop_after"] is not None and i >= timing["stop_after"]:
                    time.sleep(60)  # a download that is under way when its job is killed
                    return
                self.wfile.write(body[i * piece:(i + 1) * piece])
                self.wfile.flush()
                time.sleep(timing["pause"])

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root, requests, timing
    httpd.shutdown()
    httpd.server_close()


def fetching_job(url, cache, sums, log):
    out, err = open(log.with_suffix(".out"), "w"), open(log.with_suffix(".err"), "w")
    job = subprocess.Popen([sys.executable, "-c", FETCH, url, str(cache), json.dumps(sums)], stdin=subprocess.PIPE,
                           stdout=out, stderr=err, text=True)
    job.out, job.err = log.with_suffix(".out"), log.with_suffix(".err")
    return job


def wait_for(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.01)


def test_two_jobs_fetching_one_release_at_once_download_it_once(slow_server, tmp_path):
    url, root, requests, _ = slow_server
    texts = wikitext_texts()
    serve_release(root, "wikitext-2", "tokens", texts)
    sums = {s: sha1(texts[s]) for s in SPLITS}
    jobs = [fetching_job(url, tmp_path / "cache", sums, tmp_path / f"job{i}") for i in range(2)]
    try:
        wait_for(lambda: all(job.out.read_text().startswith("ready") for job in jobs), "ready jobs")
        for job in jobs:
            job.stdin.write("go\n")
            job.stdin.close()
        for job in jobs:
            assert job.wait(timeout=60) == 0, job.err.read_text()[-2000:]
    finally:
        for job in jobs:
            job.kill() if job.poll() is None else None
    assert requests == ["/wikitext-2-v1.zip"]  # once, not once a job
    found = [json.loads(job.out.read_text().splitlines()[1]) for job in jobs]
    assert found[0] == found[1] and {s: Path(p).read_bytes() for s, p in found[0].items()} == texts
    waited = [job for job in jobs if "waiting for another process downloading" in job.err.read_text()]
    assert len(waited) == 1, [job.err.read_text() for job in jobs]
    assert sorted(p.name for p in (tmp_path / "cache" / "corpora").iterdir()) == [".wikitext-2.lock", "wikitext-2"]


def test_what_a_job_killed_mid_download_left_is_removed_by_the_next(slow_server, tmp_path):
    url, root, requests, timing = slow_server
    texts = wikitext_texts()
    serve_release(root, "wikitext-2", "tokens", texts)
    sums = {s: sha1(texts[s]) for s in SPLITS}
    corpora_dir = tmp_path / "cache" / "corpora"
    timing["stop_after"] = 4
    job = fetching_job(url, tmp_path / "cache", sums, tmp_path / "job")
    try:
        wait_for(lambda: job.out.read_text().startswith("ready"), "a ready job")
        job.stdin.write("go\n")
        job.stdin.close()
        parts = lambda: [p for p in corpora_dir.rglob("*") if p.is_file() and ".part-" in str(p)]  # noqa: E731
        wait_for(lambda: parts() and requests, "a download under way")
        time.sleep(0.5)  # half the zip has come; the server holds back the rest
    finally:
        job.kill()  # SIGKILL: no clean-up of its own
        job.wait()
    assert parts(), "the killed job left its temporaries (a kill cannot clean up)"
    timing["stop_after"] = None
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(corpora.WIKITEXT_SHA1, "wikitext-2", sums)
        corpus = CORPORA.option("wikitext-2").make(WikiTextConfig(url=url), tmp_path / "cache")
    assert {s: p.read_bytes() for s, p in corpus.files.items()} == texts
    assert not parts()
    assert sorted(p.name for p in corpora_dir.iterdir()) == [".wikitext-2.lock", "wikitext-2"]


def test_a_server_too_slow_to_ever_finish_is_given_up_on(answering, tmp_path, monkeypatch):
    """Alive (a byte every 0.1 s, so no read waits long enough to time out) but too slow: a
    download of 10,000 bytes at 10 bytes a second would take 17 minutes."""
    from lmexp.data import download as fetching

    monkeypatch.setattr(fetching, "LOW_SPEED", (100, 1.0))
    listener = socket.create_server(("127.0.0.1", 0))

    def trickle():
        connection, _ = listener.accept()
        with connection:
            connection.recv(1 << 16)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n")
            try:
                for _ in range(10_000):
                    connection.sendall(b"x")
                    time.sleep(0.1)
            except OSError:  # the client gave up
                pass

    threading.Thread(target=trickle, daemon=True).start()
    told = []
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/ptb.train.txt"
    attempt = threading.Thread(target=lambda: told.append(catch(lambda: download(url, tmp_path / "a.txt"))),
                               daemon=True)
    start = time.monotonic()
    attempt.start()
    attempt.join(20)
    listener.close()
    assert told, "still downloading after 20 s"
    assert isinstance(told[0], UserError), told[0]
    assert re.match(r"could not download http://127.0.0.1:\d+/ptb.train.txt: the server sent \d+ bytes in 1 s "
                    r"\(less than 100 bytes in 1 s\); try again later, or put the file at ", str(told[0]))
    assert time.monotonic() - start < 5
    assert not files_in(tmp_path)


def catch(call):
    try:
        return call()
    except Exception as e:  # noqa: BLE001 (the test reads it)
        return e


def test_a_server_that_answers_404_names_data_url(server, tmp_path):
    url, _, _ = server
    with pytest.raises(UserError, match=r"ptb.train.txt: the server answered 404 File not found; check data.url"):
        CORPORA.option("ptb").make(PTBConfig(url=f"{url}/nothere"), tmp_path / "cache")


def test_a_corrupt_wikitext_file_is_refused_and_leaves_nothing(server, tmp_path, monkeypatch):
    url, root, _ = server
    texts = wikitext_texts()
    monkeypatch.setitem(corpora.WIKITEXT_SHA1, "wikitext-2", {s: sha1(texts[s]) for s in SPLITS})
    serve_release(root, "wikitext-2", "tokens", {**texts, "valid": texts["valid"] + b" tampered \n"})
    cache = tmp_path / "cache"
    expected = sha1(texts["valid"])
    with pytest.raises(UserError, match=rf"^wikitext-2-v1.zip: wikitext-2/wiki.valid.tokens is corrupt \(sha1 "
                                        rf"[0-9a-f]{{40}}, expected {expected}\); try again, or put wiki.train.tokens, "
                                        rf"wiki.valid.tokens, wiki.test.tokens \(from wikitext-2-v1.zip\) in "
                                        rf".*corpora/wikitext-2, or set data.root to a folder that has them$"):
        CORPORA.option("wikitext-2").make(WikiTextConfig(url=url), cache)
    assert not files_in(cache / "corpora")  # no zip, no temporary file
    assert [p.name for p in (cache / "corpora").iterdir()] == [".wikitext-2.lock"]  # and no folder


def test_a_file_that_is_not_the_release_is_refused(server, tmp_path):
    url, root, _ = server
    (root / "wikitext-2-v1.zip").write_text("<html>moved</html>")
    with pytest.raises(UserError, match=r"^wikitext-2-v1.zip is not the release expected \(.*\); try again, or put "):
        CORPORA.option("wikitext-2").make(WikiTextConfig(url=url), tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache" / "corpora").iterdir() if p.suffix != ".lock"] == []


def test_wikitext_offline_says_which_files_go_where(tmp_path):
    with pytest.raises(UserError, match=r"^could not download http://127.0.0.1:\d+/wikitext-2-raw-v1.zip \(.*\); "
                                        r"offline\? put wiki.train.raw, wiki.valid.raw, wiki.test.raw \(from "
                                        r"wikitext-2-raw-v1.zip\) in .*corpora/wikitext-2-raw, or set data.root to a "
                                        r"folder that has them$"):
        CORPORA.option("wikitext-2").make(WikiTextConfig(variant="raw", url=f"http://127.0.0.1:{closed_port()}"),
                                       tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache" / "corpora").iterdir() if p.suffix != ".lock"] == []


def test_wikitext_without_download_says_which_files_go_where(tmp_path):
    with pytest.raises(UserError, match=r"^data=wikitext-2: wiki.train.tokens/wiki.valid.tokens/wiki.test.tokens or "
                                        r"train.txt/valid.txt/test.txt not found in .*corpora/wikitext-2; put the "
                                        r"files there \(from https://wikitext.smerity.com/wikitext-2-v1.zip\), or "
                                        r"set data.root to a folder that has them$"):
        CORPORA.option("wikitext-2").make(WikiTextConfig(download=False), tmp_path / "cache")


def test_wikitext2_sha1s_match_the_real_release_files(server, tmp_path, monkeypatch):
    """valid.txt and test.txt in shared/data/wikitext-2 are the release's wiki.valid/test.tokens: served in a zip
    of the release's layout, they pass the real hashes (train stands in as a copy of valid, with its own hash)."""
    source = need("wikitext-2")
    real = corpora.WIKITEXT_SHA1["wikitext-2"]
    texts = {s: (source / f"{s}.txt").read_bytes() for s in ("valid", "test")}
    assert {s: sha1(t) for s, t in texts.items()} == {"valid": real["valid"], "test": real["test"]}
    url, root, _ = server
    serve_release(root, "wikitext-2", "tokens", {"train": texts["valid"], **texts})
    monkeypatch.setitem(corpora.WIKITEXT_SHA1, "wikitext-2", {**real, "train": sha1(texts["valid"])})
    corpus = CORPORA.option("wikitext-2").make(WikiTextConfig(url=url), tmp_path / "cache")
    assert corpus.files["test"].read_bytes() == texts["test"]


def test_a_reply_shorter_than_announced_is_not_kept_even_without_a_checksum(answering, tmp_path):
    """http.client ends a read at a hang-up as at the end of the body: without a checksum to catch
    it, the short file was kept as if whole (before 2026-11-30)."""
    url = answering(b"HTTP/1.0 200 OK\r\nContent-Length: 100\r\n\r\nonly some")
    with pytest.raises(UserError, match=r"a.txt: the server sent 9 of the 100 bytes it announced; try again, or "):
        download(f"{url}/a.txt", tmp_path / "a.txt")
    assert not files_in(tmp_path)
