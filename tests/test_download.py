"""Tests for lth_jax.download and data.load(source="auto"): a local HTTP server on 127.0.0.1 (in a
thread) serves archives the tests make, with the checksums the tests give. Nothing here reaches
the internet: every table and mirror points at 127.0.0.1, and the data cache, TFDS data dir and
system data folders are temporary folders.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import os
import pickle
import queue
import re
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from lth_jax import data, download
from lth_jax.data import DatasetError
from lth_jax.download import ChecksumError, DownloadError, RemoteFile, UnreachableError

ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------------------------
# The local server


class _Server:
    """Files at URL paths, served over HTTP/1.0 with Range support. Knobs: `cut_next[path] = n`
    sends only n bytes of the next response for `path` (with the full Content-Length) and closes
    the connection; `ignore_range` answers every request with the whole file (200); `hold` makes
    the first request wait until the event is set; `delay` sleeps between 8 kB chunks."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.cut_next: dict[str, int] = {}
        self.ignore_range = False
        self.delay = 0.0
        self.hold: threading.Event | None = None
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_GET(self):
                server._serve(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.running = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        if self.running:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.running = False

    def _serve(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        path, range_header = handler.path, handler.headers.get("Range")
        with self._lock:
            self.requests.append((path, range_header))
            first = len(self.requests) == 1
        if first and self.hold is not None:
            self.hold.wait(10)
        body = self.files.get(path)
        if body is None:
            handler.send_error(404)
            return
        start = 0
        if range_header and not self.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", range_header)[1])
            if start >= len(body):
                handler.send_response(416)
                handler.send_header("Content-Range", f"bytes */{len(body)}")
                handler.end_headers()
                return
            handler.send_response(206)
            handler.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            handler.send_response(200)
        handler.send_header("Content-Length", str(len(body) - start))
        handler.end_headers()
        payload = body[start:]
        with self._lock:
            cut = self.cut_next.pop(path, None)
        if cut is not None:
            payload = payload[:cut]
        for i in range(0, len(payload), 8192):
            handler.wfile.write(payload[i : i + 8192])
            if self.delay:
                time.sleep(self.delay)
        handler.wfile.flush()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.stop()


def _dead_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _publish(server: _Server, name: str, contents: dict[str, bytes], *, extract: str = "",
             base: str | None = None) -> tuple[RemoteFile, ...]:
    """Serve `contents` under /<name>/<file> and return their table (true SHA-256 and sizes)."""
    base = server.url if base is None else base
    table = []
    for file, body in contents.items():
        server.files[f"/{name}/{file}"] = body
        table.append(RemoteFile(file, hashlib.sha256(body).hexdigest(), len(body),
                                (f"{base}/{name}/{file}",), extract))
    return tuple(table)


def _random_bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _idx_gz(array: np.ndarray) -> bytes:
    array = np.asarray(array, np.uint8)
    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(
        d.to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.tobytes(), mtime=0)


def _mnist_files(n_train: int = 30, n_test: int = 10, seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte.gz": _idx_gz(rng.integers(0, 256, (n_train, 28, 28))),
        "train-labels-idx1-ubyte.gz": _idx_gz(rng.integers(0, 10, n_train)),
        "t10k-images-idx3-ubyte.gz": _idx_gz(rng.integers(0, 256, (n_test, 28, 28))),
        "t10k-labels-idx1-ubyte.gz": _idx_gz(rng.integers(0, 10, n_test)),
    }


def _cifar_tarball(per_batch: int = 4, extra: dict[str, bytes] | None = None) -> bytes:
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        members = {f"cifar-10-batches-py/{n}": pickle.dumps(
            {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
             b"labels": [int(v) for v in rng.integers(0, 10, per_batch)]}) for n in names}
        members.update(extra or {})
        for member, body in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# ----------------------------------------------------------------------------------------------------
# fetch


def test_fetch_success(server, tmp_path):
    contents = {"a.bin": _random_bytes(100_000, 1), "b.bin": _random_bytes(3000, 2)}
    table = _publish(server, "toy", contents)
    out = io.StringIO()
    folder = download.fetch("toy", tmp_path / "toy", files=table, progress=out, retry_delay=0)
    assert folder == tmp_path / "toy"
    for file, body in contents.items():
        assert (folder / file).read_bytes() == body
    assert _listing(folder) == [".lock", "a.bin", "b.bin"]  # no .part left
    assert server.requests == [("/toy/a.bin", None), ("/toy/b.bin", None)]
    # Not a terminal: plain lines, each transfer ending on a line with its size, 100% and a rate.
    text = out.getvalue()
    assert "\r" not in text
    assert f"downloading {server.url}/toy/a.bin into {folder}" in text
    assert re.search(r"\[1/2\] a\.bin: 100\.0 kB / 100\.0 kB \(100%\), [\d.]+ [kMG]?B/s\n", text)
    assert re.search(r"\[2/2\] b\.bin: 3\.0 kB / 3\.0 kB \(100%\)", text)


def test_progress_on_a_terminal_redraws_one_line(server, tmp_path):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    table = _publish(server, "toy", {"a.bin": _random_bytes(200_000)})
    server.delay = 0.02  # 25 chunks over about half a second: several redraws
    out = Terminal()
    download.fetch("toy", tmp_path, files=table, progress=out)
    text = out.getvalue()
    assert text.count("\r\x1b[K") >= 3 and text.endswith("\n")
    assert "ETA" in text  # shown while the transfer runs
    assert "200.0 kB / 200.0 kB (100%)" in text.split("\r")[-1]


def test_mirror_layout(server, tmp_path):
    contents = _mnist_files()
    _publish(server, "mnist", contents)
    official = tuple(RemoteFile(f, hashlib.sha256(b).hexdigest(), len(b), ("http://0.0.0.0:9/x/" + f,))
                     for f, b in contents.items())  # official URLs unused: the mirror wins
    download.fetch("mnist", tmp_path / "a", files=official, mirror=server.url + "/", progress=None)
    assert sorted(p for p, _ in server.requests) == sorted(f"/mnist/{f}" for f in contents)
    # "{name}" places the dataset's name anywhere in the mirror's URL.
    server.files.update({f"/pub/mnist/data/{f}": b for f, b in contents.items()})
    download.fetch("mnist", tmp_path / "b", files=official, mirror=server.url + "/pub/{name}/data",
                   progress=None)
    for f, body in contents.items():
        assert (tmp_path / "b" / f).read_bytes() == body


def test_mirror_on_a_local_disk(tmp_path):
    # An air-gapped machine: the mirror is a folder (file:// URL), laid out <mirror>/<name>/<file>.
    contents = {"a.bin": _random_bytes(5000)}
    (tmp_path / "mirror" / "toy").mkdir(parents=True)
    (tmp_path / "mirror" / "toy" / "a.bin").write_bytes(contents["a.bin"])
    table = (RemoteFile("a.bin", hashlib.sha256(contents["a.bin"]).hexdigest(), 5000,
                        (_dead_url() + "/a.bin",)),)
    download.fetch("toy", tmp_path / "cache", files=table, mirror=(tmp_path / "mirror").as_uri(),
                   progress=None)
    assert (tmp_path / "cache" / "a.bin").read_bytes() == contents["a.bin"]


def test_checksum_mismatch_caches_nothing(server, tmp_path):
    body = _random_bytes(50_000)
    (good,) = _publish(server, "toy", {"a.bin": body})
    wrong = "0" * 64
    table = (RemoteFile(good.name, wrong, good.size, good.urls),)
    with pytest.raises(ChecksumError) as err:
        download.fetch("toy", tmp_path, files=table, progress=None)
    message = str(err.value)
    assert "\n" not in message
    assert f"{server.url}/toy/a.bin" in message
    assert hashlib.sha256(body).hexdigest() in message and wrong in message
    assert _listing(tmp_path) == [".lock"]  # neither a.bin nor a.bin.part


def test_cut_transfer_resumes_next_run(server, tmp_path):
    body = _random_bytes(120_000)
    table = _publish(server, "toy", {"a.bin": body})
    server.cut_next["/toy/a.bin"] = 50_000
    with pytest.raises(DownloadError) as err:
        download.fetch("toy", tmp_path, files=table, retries=0, progress=None)
    message = str(err.value)
    assert "\n" not in message and "interrupted" in message and "run again to resume" in message
    assert not (tmp_path / "a.bin").exists()  # nothing under the final name
    assert (tmp_path / "a.bin.part").read_bytes() == body[:50_000]
    # The next run asks for the rest only.
    download.fetch("toy", tmp_path, files=table, retries=0, progress=None)
    assert server.requests == [("/toy/a.bin", None), ("/toy/a.bin", "bytes=50000-")]
    assert (tmp_path / "a.bin").read_bytes() == body
    assert _listing(tmp_path) == [".lock", "a.bin"]


def test_cut_transfer_resumed_within_the_call(server, tmp_path):
    body = _random_bytes(90_000)
    table = _publish(server, "toy", {"a.bin": body})
    server.cut_next["/toy/a.bin"] = 40_000
    download.fetch("toy", tmp_path, files=table, retries=1, retry_delay=0, progress=None)
    assert server.requests == [("/toy/a.bin", None), ("/toy/a.bin", "bytes=40000-")]
    assert (tmp_path / "a.bin").read_bytes() == body


def test_server_without_ranges_restarts(server, tmp_path):
    body = _random_bytes(60_000)
    table = _publish(server, "toy", {"a.bin": body})
    server.ignore_range = True
    (tmp_path / "a.bin.part").write_bytes(body[:10_000])
    download.fetch("toy", tmp_path, files=table, progress=None)
    assert server.requests == [("/toy/a.bin", "bytes=10000-")]  # answered 200: whole file
    assert (tmp_path / "a.bin").read_bytes() == body


def test_part_file_from_other_bytes_is_dropped(server, tmp_path):
    body = _random_bytes(30_000)
    table = _publish(server, "toy", {"a.bin": body})
    (tmp_path / "a.bin.part").write_bytes(b"x" * 10_000)  # not a beginning of this file
    with pytest.raises(ChecksumError):
        download.fetch("toy", tmp_path, files=table, progress=None)
    assert _listing(tmp_path) == [".lock"]
    download.fetch("toy", tmp_path, files=table, progress=None)  # restarts from scratch
    assert (tmp_path / "a.bin").read_bytes() == body


def test_server_down_fails_fast_in_one_line(tmp_path):
    dead = _dead_url()
    table = (RemoteFile("a.bin", "0" * 64, 10, (f"{dead}/toy/a.bin", f"{dead}/other/a.bin")),)
    out = io.StringIO()
    start = time.monotonic()
    with pytest.raises(UnreachableError) as err:
        download.fetch("toy", tmp_path, files=table, progress=out)
    assert time.monotonic() - start < 2.0
    message = str(err.value)
    assert "\n" not in message
    assert f"{dead}/toy/a.bin: Connection refused" in message
    assert f"{dead}/other/a.bin: Connection refused" in message  # every location tried
    assert out.getvalue() == ""  # nothing printed before the error
    assert _listing(tmp_path) == [".lock"]


def test_http_error_names_status(server, tmp_path):
    table = (RemoteFile("missing.bin", "0" * 64, None, (f"{server.url}/toy/missing.bin",)),)
    with pytest.raises(UnreachableError, match=r"/toy/missing.bin: HTTP 404"):
        download.fetch("toy", tmp_path, files=table, progress=None)


def test_second_run_reuses_cache_without_network(server, tmp_path):
    contents = {"a.bin": _random_bytes(20_000), "b.bin": _random_bytes(500, 3)}
    table = _publish(server, "toy", contents)
    download.fetch("toy", tmp_path, files=table, progress=None)
    server.stop()  # any request now would fail
    out = io.StringIO()
    assert download.fetch("toy", tmp_path, files=table, progress=out) == tmp_path
    assert out.getvalue() == ""
    assert len(server.requests) == 2
    for file, body in contents.items():
        assert (tmp_path / file).read_bytes() == body


_FETCH_SCRIPT = """
import sys
from lth_jax import download
from lth_jax.download import RemoteFile
table = tuple(RemoteFile(n, h, int(s), (u,)) for n, h, s, u in (a.split(",") for a in sys.argv[2:]))
download.fetch("toy", sys.argv[1], files=table, timeout=20)
"""


def test_two_processes_fetch_at_once(server, tmp_path):
    contents = {"a.bin": _random_bytes(150_000, 4), "b.bin": _random_bytes(80_000, 5)}
    table = _publish(server, "toy", contents)
    server.hold = threading.Event()  # the first transfer waits until the other process waits too
    args = [f"{f.name},{f.sha256},{f.size},{f.urls[0]}" for f in table]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", _FETCH_SCRIPT, str(tmp_path / "toy"), *args],
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    lines: queue.Queue = queue.Queue()
    readers = []
    for proc in procs:
        def read(stream=proc.stderr):
            for line in stream:
                lines.put(line)
        readers.append(threading.Thread(target=read, daemon=True))
        readers[-1].start()
    seen = []
    try:
        deadline = time.monotonic() + 30
        while not any("waiting for another process" in line for line in seen):
            seen.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
    finally:
        server.hold.set()
    for proc in procs:
        assert proc.wait(timeout=30) == 0
    for reader in readers:
        reader.join(timeout=5)
    while not lines.empty():
        seen.append(lines.get())
    # Each file crossed the network once; the second process found them in place.
    assert sorted(server.requests) == [("/toy/a.bin", None), ("/toy/b.bin", None)]
    for file, body in contents.items():
        assert (tmp_path / "toy" / file).read_bytes() == body
    assert _listing(tmp_path / "toy") == [".lock", "a.bin", "b.bin"]
    assert not any("Error" in line for line in seen), seen


def test_archive_extracted_and_removed(server, tmp_path):
    table = _publish(server, "cifar10", {"cifar-10-python.tar.gz": _cifar_tarball()},
                     extract="cifar-10-batches-py")
    folder = download.fetch("cifar10", tmp_path / "cifar10", files=table, progress=None)
    assert _listing(folder) == [".lock", "cifar-10-batches-py"]  # no archive, no temp folder
    assert _listing(folder / "cifar-10-batches-py") == [
        "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    ds = data.load({"name": "cifar10", "source": "files", "path": folder, "validation_size": 2})
    assert ds.train_images.shape == (18, 32, 32, 3) and ds.test_images.shape == (4, 32, 32, 3)
    server.stop()
    download.fetch("cifar10", tmp_path / "cifar10", files=table, progress=None)  # done: no request


def test_archive_with_unsafe_member_refused(server, tmp_path):
    tarball = _cifar_tarball(extra={"../evil": b"boo"})
    table = _publish(server, "cifar10", {"cifar-10-python.tar.gz": tarball},
                     extract="cifar-10-batches-py")
    with pytest.raises(DownloadError, match=r"unexpected member '\.\./evil'"):
        download.fetch("cifar10", tmp_path / "c", files=table, progress=None)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "c" / "cifar-10-batches-py").exists()
    assert not list((tmp_path / "c").glob(".extract-*"))


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(download.DATA_ENV_VAR, str(tmp_path / "env"))
    assert download.cache_dir() == tmp_path / "env"
    monkeypatch.delenv(download.DATA_ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert download.cache_dir() == tmp_path / "xdg" / "lth_jax" / "datasets"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert download.cache_dir() == tmp_path / "home" / ".cache" / "lth_jax" / "datasets"


def test_official_table():
    assert set(download.OFFICIAL) == {"mnist", "fashion_mnist", "cifar10"}
    for name, files in download.OFFICIAL.items():
        for f in files:
            assert re.fullmatch(r"[0-9a-f]{64}", f.sha256) and f.size > 0 and f.urls
            assert all(u.endswith("/" + f.name) for u in f.urls)
    assert [f.extract for f in download.OFFICIAL["cifar10"]] == ["cifar-10-batches-py"]


# ----------------------------------------------------------------------------------------------------
# data.load(source="auto")


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """An empty data cache ($LTH_JAX_DATA), TFDS data dir and system data folder."""
    monkeypatch.setenv(download.DATA_ENV_VAR, str(tmp_path / "cache"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setattr(data, "SYSTEM_DATA_DIRS", (str(tmp_path / "system"),))
    return tmp_path


def test_auto_downloads_then_reuses_the_cache(server, isolated, monkeypatch, capfd):
    contents = _mnist_files()
    monkeypatch.setitem(download.OFFICIAL, "mnist", _publish(server, "mnist", contents))
    config = {"name": "mnist", "validation_size": 5}  # source defaults to "auto"
    ds = data.load(config, seed=0)
    cache = isolated / "cache" / "mnist"
    assert (ds.info.source, ds.info.location) == ("files", str(cache))
    assert ds.train_images.shape == (25, 28, 28, 1) and ds.test_images.shape == (10, 28, 28, 1)
    for file, body in contents.items():
        assert (cache / file).read_bytes() == body
    assert len(server.requests) == 4
    assert "downloading" in capfd.readouterr().err
    server.stop()
    again = data.load(config, seed=0)
    np.testing.assert_array_equal(again.test_images, ds.test_images)
    assert capfd.readouterr().err == ""


def test_auto_mirror_field(server, isolated, monkeypatch):
    contents = _mnist_files(seed=2)
    _publish(server, "fashion_mnist", contents)
    bogus = tuple(RemoteFile(f, hashlib.sha256(b).hexdigest(), len(b), (_dead_url() + "/" + f,))
                  for f, b in contents.items())
    monkeypatch.setitem(download.OFFICIAL, "fashion_mnist", bogus)
    ds = data.load({"name": "fashion_mnist", "mirror": server.url, "validation_size": 5})
    assert ds.info.location == str(isolated / "cache" / "fashion_mnist")
    assert {p for p, _ in server.requests} == {f"/fashion_mnist/{f}" for f in contents}


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_auto_offline_one_line(isolated, monkeypatch, capfd, caplog, name):
    dead = _dead_url()
    files = tuple(RemoteFile(f.name, f.sha256, f.size, (f"{dead}/{f.name}",), f.extract)
                  for f in download.OFFICIAL[name])
    monkeypatch.setitem(download.OFFICIAL, name, files)
    (isolated / "tfds" / name / "1.0.0").mkdir(parents=True)  # an unprepared TFDS folder
    start = time.monotonic()
    with pytest.raises(DatasetError) as err:
        data.load({"name": name})
    assert time.monotonic() - start < 2.0
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{data._PRETTY[name]} is not on this machine and cannot be downloaded")
    assert "Connection refused" in message and dead in message
    for way in (str(isolated / "cache" / name), "$LTH_JAX_DATA", "--config.dataset.source=files",
                "--config.dataset.path=", f"tfds build {name}", "--config.dataset.mirror="):
        assert way in message
    assert ("apt-get install dataset-fashion-mnist" in message) == (name == "fashion_mnist")
    assert capfd.readouterr().err == ""  # no progress line before it
    assert [r.getMessage() for r in caplog.records if r.levelno >= 30] == []  # no TFDS warning


def test_auto_offline_in_a_fresh_process(tmp_path):
    # What a user sees: the one line, and nothing on stderr before it (TFDS's absl warnings
    # included, which pytest would capture in-process).
    (tmp_path / "tfds" / "cifar10" / "3.0.2").mkdir(parents=True)
    script = ("from lth_jax import data\n"
              "try:\n"
              f"    data.load({{'name': 'cifar10', 'mirror': {_dead_url()!r}}})\n"
              "except data.DatasetError as e:\n"
              "    print(e)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), download.DATA_ENV_VAR: str(tmp_path / "cache"),
           "TFDS_DATA_DIR": str(tmp_path / "tfds")}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=60)
    elapsed = time.monotonic() - start
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.count("\n") == 1
    assert done.stdout.startswith("CIFAR-10 is not on this machine and cannot be downloaded")
    assert elapsed < 20  # mostly importing JAX; the fetch itself fails at once


def test_auto_checksum_mismatch_one_line(server, isolated, monkeypatch):
    contents = _mnist_files()
    table = _publish(server, "mnist", contents)
    table = (RemoteFile(table[0].name, "f" * 64, table[0].size, table[0].urls), *table[1:])
    monkeypatch.setitem(download.OFFICIAL, "mnist", table)
    with pytest.raises(DatasetError) as err:
        data.load({"name": "mnist"})
    message = str(err.value)
    assert "\n" not in message and message.startswith("MNIST download failed:")
    assert "train-images-idx3-ubyte.gz" in message and "f" * 64 in message
    assert not (isolated / "cache" / "mnist" / "train-images-idx3-ubyte.gz").exists()


def test_auto_prefers_local_files(isolated, monkeypatch):
    monkeypatch.setitem(download.OFFICIAL, "mnist", ())  # a download would fetch nothing
    system = isolated / "system" / "mnist"
    system.mkdir(parents=True)
    for file, body in _mnist_files(seed=5).items():
        (system / file).write_bytes(body)
    ds = data.load({"name": "mnist", "validation_size": 5})
    assert (ds.info.source, ds.info.location) == ("files", str(system))
    # The cache comes before the system folder.
    cache = isolated / "cache" / "mnist"
    cache.mkdir(parents=True)
    for file, body in _mnist_files(seed=6).items():
        (cache / file).write_bytes(body)
    assert data.load({"name": "mnist", "validation_size": 5}).info.location == str(cache)


def test_auto_never_downloads_over_malformed_files(server, isolated, monkeypatch):
    contents = _mnist_files()
    monkeypatch.setitem(download.OFFICIAL, "mnist", _publish(server, "mnist", contents))
    cache = isolated / "cache" / "mnist"
    cache.mkdir(parents=True)
    for file, body in contents.items():
        (cache / file).write_bytes(body)
    (cache / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.gz: cannot read it"):
        data.load({"name": "mnist", "validation_size": 5})
    assert server.requests == []


def test_auto_with_path_reads_that_folder_only(isolated, tmp_path):
    with pytest.raises(DatasetError, match="--config.dataset.path=FOLDER") as err:
        data.load({"name": "mnist", "path": str(tmp_path / "nowhere")})
    assert str(tmp_path / "nowhere") in str(err.value)


def test_auto_reads_prepared_tfds_first(isolated, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setitem(download.OFFICIAL, "mnist", ())
    version = str(tfds.builder_cls("mnist").VERSION)
    prepared = isolated / "tfds" / "mnist" / version
    prepared.mkdir(parents=True)
    (prepared / "dataset_info.json").write_text("{}")
    (prepared / "mnist-train.array_record-00000-of-00001").write_bytes(b"")
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = data.load({"name": "mnist", "validation_size": 2})
    assert ds.info.source == "tfds" and ds.train_images.shape == (10, 28, 28, 1)
    # Prepared in another format (no array_record files): not TFDS's, so the local files are read.
    (prepared / "mnist-train.array_record-00000-of-00001").unlink()
    system = isolated / "system" / "mnist"
    system.mkdir(parents=True)
    for file, body in _mnist_files().items():
        (system / file).write_bytes(body)
    assert data.load({"name": "mnist", "validation_size": 2}).info.source == "files"


def test_source_and_mirror_fields_checked(isolated):
    with pytest.raises(DatasetError, match="use one of auto, tfds, files, synthetic"):
        data.load({"name": "mnist", "source": "download"})
    with pytest.raises(DatasetError, match="config.dataset.mirror must be a URL string, got 3"):
        data.load({"name": "mnist", "mirror": 3})
