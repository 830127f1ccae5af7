"""Fetching the original dataset files into the data cache, verified by their published SHA-256.

`fetch(name, folder)` makes `folder` hold dataset `name` as `data`'s ``source="files"`` reads it:
MNIST's and Fashion-MNIST's four IDX ``.gz`` files, or CIFAR-10's ``cifar-10-batches-py`` folder
(extracted from the python tarball, which is then removed). What it guarantees:

* Nothing unverified under a final name: each file is written to ``NAME.part``, checked against
  its SHA-256, and renamed to ``NAME`` only when it matches. A mismatch removes the ``.part`` file
  (nothing is cached) and raises `ChecksumError`. An archive is extracted into a temporary folder
  renamed into place when complete.
* An interrupted transfer keeps its ``.part`` file; the next attempt (in this call, up to
  `retries` times, or the next run) resumes it with an HTTP Range request, or restarts it where
  the server ignores the range.
* Offline or unreachable: `UnreachableError` within about `timeout` seconds per location (a
  failed connection is not retried), with a one-line message.
* Several processes may fetch into the same folder at once: they take turns on a lock file
  (``folder/.lock``, flock), and whoever comes second finds the files there.
* A progress bar on `progress` (stderr by default): bytes, rate and ETA on one updating line on a
  terminal, a plain line every few seconds otherwise.

No JAX or NumPy here: `data` imports this module, and so can a process that only fetches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TextIO

try:
    import fcntl
except ImportError:  # not on Windows: there the lock is skipped (see _folder_lock)
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DATA_ENV_VAR",
    "RemoteFile",
    "OFFICIAL",
    "DownloadError",
    "ChecksumError",
    "UnreachableError",
    "cache_dir",
    "fetch",
    "file_url",
]

#: The data cache: `cache_dir()` is $LTH_JAX_DATA when set.
DATA_ENV_VAR = "LTH_JAX_DATA"

_USER_AGENT = "lth_jax (dataset fetch; https://pypi.org/project/lth_jax)"
_CHUNK = 1 << 16


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset as published.

    Attributes:
      name: its file name: in the cache folder, and the last part of each URL (and of a mirror's).
      sha256: the SHA-256 of the published file (lower-case hex).
      size: its size in bytes, or None if unknown. Used by the progress bar, and a transfer that
        grows past it stops at once (it cannot match the checksum).
      urls: its official locations, tried in order.
      extract: for a tar archive, the folder it holds; the archive is extracted next to it, this
        folder renamed into place when complete, and the archive removed. "" for a plain file.
    """

    name: str
    sha256: str
    size: int | None
    urls: tuple[str, ...]
    extract: str = ""


def _table(bases: Sequence[str], files: Sequence[tuple[str, int, str]], extract: str = "",
           ) -> tuple[RemoteFile, ...]:
    return tuple(RemoteFile(name, sha, size, tuple(base + name for base in bases), extract)
                 for name, size, sha in files)


#: The official files of each dataset `fetch` knows. Where the values come from:
#:
#: * MNIST: the SHA-256 and sizes TFDS registers for the files of Google's CVDF mirror
#:   (tensorflow_datasets/url_checksums/mnist.txt), the mirror TFDS downloads from; Yann LeCun's
#:   original site, whose files these are, is tried second. The sizes equal those of the original
#:   files; their SHA-256 is not published there (only the files), and these digests have not been
#:   checked against that site's files.
#: * Fashion-MNIST: TFDS's url_checksums/fashion_mnist.txt for the official S3 files of
#:   zalandoresearch/fashion-mnist (whose README publishes MD5s only). Debian's dataset-fashion-mnist
#:   ships the same data re-compressed (other bytes), so its files do not match these digests;
#:   `data` reads them where they are installed, without a checksum.
#: * CIFAR-10: the python tarball of the Toronto page, whose MD5 (c58f30108f718f92721af3b95e74349a)
#:   is published there; its SHA-256 is the one Keras checks (keras/datasets/cifar10.py,
#:   file_hash), with the same size (170,498,071 bytes); not checked against a download of the
#:   tarball.
OFFICIAL: Mapping[str, tuple[RemoteFile, ...]] = {
    "mnist": _table(
        ("https://storage.googleapis.com/cvdf-datasets/mnist/", "https://yann.lecun.com/exdb/mnist/"),
        (
            ("train-images-idx3-ubyte.gz", 9912422,
             "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
            ("train-labels-idx1-ubyte.gz", 28881,
             "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
            ("t10k-images-idx3-ubyte.gz", 1648877,
             "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
            ("t10k-labels-idx1-ubyte.gz", 4542,
             "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
        ),
    ),
    "fashion_mnist": _table(
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        (
            ("train-images-idx3-ubyte.gz", 26421880,
             "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
            ("train-labels-idx1-ubyte.gz", 29515,
             "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
            ("t10k-images-idx3-ubyte.gz", 4422102,
             "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
            ("t10k-labels-idx1-ubyte.gz", 5148,
             "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
        ),
    ),
    "cifar10": _table(
        ("https://www.cs.toronto.edu/~kriz/",),
        (("cifar-10-python.tar.gz", 170498071,
          "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),),
        extract="cifar-10-batches-py",
    ),
}


class DownloadError(Exception):
    """A dataset could not be fetched. The message is one line naming the file and the URL."""


class ChecksumError(DownloadError):
    """A downloaded file does not have its published SHA-256; it was not kept."""


class UnreachableError(DownloadError):
    """No location of a file answered (offline, DNS, refused, timed out, HTTP error)."""


def cache_dir() -> Path:
    """The data cache: $LTH_JAX_DATA if set, else $XDG_CACHE_HOME/lth_jax/datasets, else
    ~/.cache/lth_jax/datasets. Dataset `name` lives in its subfolder `name`. Not created here."""
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    # XDG: a relative XDG_CACHE_HOME is invalid and is ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "lth_jax" / "datasets"


def file_url(mirror: str, name: str, file: RemoteFile) -> str:
    """Where `file` of dataset `name` lies on `mirror`: ``{mirror}/{name}/{file}``, or, when the
    mirror contains ``{name}``, that substituted, then ``/{file}``. Any scheme urllib opens works
    (http, https, file)."""
    if "{name}" in mirror:
        base = mirror.replace("{name}", name)
    else:
        base = f"{mirror.rstrip('/')}/{name}"
    return f"{base.rstrip('/')}/{file.name}"


def fetch(
    name: str,
    folder: str | os.PathLike | None = None,
    *,
    files: Sequence[RemoteFile] | None = None,
    mirror: str = "",
    timeout: float = 10.0,
    retries: int = 2,
    retry_delay: float = 1.0,
    progress: TextIO | bool | None = True,
) -> Path:
    """Make `folder` hold dataset `name`'s files, downloading those it lacks.

    Args:
      name: the dataset ("mnist", "fashion_mnist", "cifar10", or any name with `files` given).
      folder: where its files go; None: ``cache_dir() / name``. Created if missing.
      files: the files to fetch; None: ``OFFICIAL[name]``.
      mirror: "" for each file's official URLs; else a base URL used instead (see `file_url`).
      timeout: seconds to wait to connect, and for each read of a transfer.
      retries: how many times an interrupted transfer is resumed within this call (a location
        that cannot be connected to is not retried: the next one is tried, then it fails).
      retry_delay: seconds before each resumption.
      progress: where the progress bar and the line saying what is fetched go: a stream, True
        (sys.stderr at call time) or False/None (silent).

    Returns:
      `folder`, holding every file under its name (an archive: its extracted folder).

    Raises:
      ChecksumError: a file's SHA-256 differs from `files`' value (the bad bytes are removed).
      UnreachableError: no location of a file could be reached.
      DownloadError: a transfer interrupted more than `retries` times (its ``.part`` file is
        kept, and the next call resumes it), a bad archive, or the folder cannot be written.

    A file present under its final name is taken as it is (a verified download, or the user's
    own), so a second call with everything there touches no network. Safe to run from several
    processes at once on the same folder.
    """
    if files is None:
        if name not in OFFICIAL:
            raise DownloadError(f"no official files known for dataset {name!r}; known: "
                                f"{', '.join(OFFICIAL)}.")
        files = OFFICIAL[name]
    target = cache_dir() / name if folder is None else Path(folder).expanduser()
    if progress is True:
        progress = sys.stderr
    elif progress is False:
        progress = None
    if all(_done(target, f) for f in files):
        return target  # the common case, before any lock or write
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(f"cannot create the data folder {target}: {err.strerror or err}.") from err
    with _folder_lock(target, progress):
        # Another process may have finished while this one waited for the lock; a killed one may
        # have left an extraction half done.
        for stale in target.glob(".extract-*"):
            shutil.rmtree(stale, ignore_errors=True)
        todo = [f for f in files if not _done(target, f)]
        for index, f in enumerate(todo, 1):
            urls = (file_url(mirror, name, f),) if mirror else f.urls
            label = f"[{index}/{len(todo)}] {f.name}" if len(todo) > 1 else f.name
            _download(f, urls, target, label, timeout, retries, retry_delay, progress)
            if f.extract:
                _extract(target / f.name, f, target)
    return target


# ----------------------------------------------------------------------------------------------------
# Pieces


def _done(folder: Path, f: RemoteFile) -> bool:
    if f.extract:
        return (folder / f.extract).is_dir()
    return (folder / f.name).is_file()


@contextlib.contextmanager
def _folder_lock(folder: Path, progress: TextIO | None) -> Iterator[None]:
    """Holds an exclusive flock on ``folder/.lock`` (blocking; says so once if it must wait).
    The lock goes with the process, so a killed fetch never leaves the folder locked."""
    if fcntl is None:  # no flock: unique work is still renamed atomically, only not serialised
        yield
        return
    path = folder / ".lock"
    try:
        handle = open(path, "a+b")
    except OSError as err:
        raise DownloadError(f"cannot create the lock file {path}: {err.strerror or err}.") from err
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress is not None:
                print(f"lth_jax: waiting for another process fetching into {folder} ...",
                      file=progress, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _Interrupted(Exception):
    """A transfer stopped before its end (connection closed or reset, read timed out)."""


class _NoAnswer(Exception):
    """A location could not be reached or refused the file (no bytes came)."""


def _download(f: RemoteFile, urls: Sequence[str], folder: Path, label: str, timeout: float,
              retries: int, retry_delay: float, progress: TextIO | None) -> None:
    """Fetch `f` into ``folder/f.name`` through ``f.name.part``, verified; see `fetch`."""
    final = folder / f.name
    part = folder / (f.name + ".part")
    failures = []
    for url in urls:
        try:
            _transfer(url, part, f.size, label, timeout, retries, retry_delay, progress)
            break
        except _NoAnswer as err:
            failures.append(f"{url}: {err}")
    else:
        raise UnreachableError(f"cannot download {f.name}: " + "; ".join(failures))
    digest = _sha256(part)
    if digest != f.sha256:
        part.unlink(missing_ok=True)
        raise ChecksumError(f"{url}: SHA-256 {digest}, expected {f.sha256}: a damaged or other "
                            f"file; not cached.")
    os.replace(part, final)  # atomic: the final name only ever holds verified bytes


def _transfer(url: str, part: Path, size: int | None, label: str, timeout: float, retries: int,
              retry_delay: float, progress: TextIO | None) -> None:
    """Bring `part` to the whole of `url`'s content: resumed with a Range request where `part`
    already holds a beginning, restarted where the server ignores the range."""
    interruptions = 0
    announced = False
    while True:
        have = part.stat().st_size if part.exists() else 0
        if size is not None and have >= size:
            if have == size:
                return  # complete: the checksum decides
            part.unlink()  # longer than the file: not a beginning of it
            have = 0
        headers = {"User-Agent": _USER_AGENT}
        if have:
            headers["Range"] = f"bytes={have}-"
        request = urllib.request.Request(url, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as err:
            err.close()
            if err.code == 416 and have:  # our beginning is no beginning of theirs: restart
                part.unlink(missing_ok=True)
                continue
            raise _NoAnswer(f"HTTP {err.code} {err.reason}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            if not interruptions:
                raise _NoAnswer(_reason(err)) from None
            error: BaseException = err  # reconnecting after an interruption: count it as one
        else:
            if progress is not None and not announced:  # said once connected: offline, one line
                announced = True
                print(f"lth_jax: downloading {url} into {part.parent}", file=progress, flush=True)
            try:
                with response:
                    _receive(response, part, have, size, label, progress)
                return
            except _Interrupted as err:
                error = err
        interruptions += 1
        kept = part.stat().st_size if part.exists() else 0
        where = f"at {_human(kept)}{' of ' + _human(size) if size else ''}"
        if interruptions > retries:
            raise DownloadError(f"{url}: transfer interrupted ({_reason(error)}) {where}; run "
                                f"again to resume it (kept in {part}).")
        if progress is not None:
            print(f"lth_jax: transfer interrupted ({_reason(error)}) {where}; resuming "
                  f"({interruptions}/{retries})", file=progress, flush=True)
        time.sleep(retry_delay)


def _receive(response, part: Path, have: int, size: int | None, label: str,
             progress: TextIO | None) -> None:
    """Append (206 to our range) or write (anything else) the response's body to `part`."""
    status = getattr(response, "status", None) or 200
    content_range = response.headers.get("Content-Range", "") if response.headers else ""
    resumed = have > 0 and status == 206 and content_range.startswith(f"bytes {have}-")
    if not resumed:
        have = 0
    length = response.headers.get("Content-Length") if response.headers else None
    expected_end = have + int(length) if length and length.isdigit() else size
    bar = _Progress(progress, label, expected_end if expected_end else size, start=have)
    try:
        with open(part, "ab" if resumed else "wb") as out:
            written = have
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (OSError, http.client.HTTPException) as err:  # IncompleteRead, reset, timeout
                    raise _Interrupted(_reason(err)) from err
                if not chunk:
                    break
                out.write(chunk)
                written += len(chunk)
                if size is not None and written > size:
                    raise _Interrupted(f"more than the {size} bytes the file has")
                bar.update(written)
            out.flush()
            os.fsync(out.fileno())
        if expected_end is not None and written < expected_end:
            raise _Interrupted(f"connection closed after {written} of {expected_end} bytes")
    finally:
        bar.close()


def _extract(archive: Path, f: RemoteFile, folder: Path) -> None:
    """Extract `archive`'s ``f.extract`` folder into `folder`, then remove `archive`. Only
    regular files and folders under ``f.extract`` are taken (no links, no absolute or ``..``
    paths): an archive is data, not something to trust with the file system."""
    work = Path(tempfile.mkdtemp(prefix=".extract-", dir=folder))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = []
                for member in tar.getmembers():
                    parts = Path(member.name).parts
                    if (member.name.startswith("/") or ".." in parts or not parts
                            or parts[0] != f.extract or not (member.isfile() or member.isdir())):
                        raise DownloadError(f"{archive}: unexpected member {member.name!r} "
                                            f"(only files under {f.extract}/ belong there).")
                    members.append(member)
                kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(work, members=members, **kwargs)
        except (tarfile.TarError, OSError, EOFError) as err:
            raise DownloadError(f"{archive}: cannot extract it ({type(err).__name__}: {err}).") from err
        if not (work / f.extract).is_dir():
            raise DownloadError(f"{archive}: holds no {f.extract}/ folder.")
        os.replace(work / f.extract, folder / f.extract)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    archive.unlink()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _reason(err: BaseException | None) -> str:
    """The cause of a network error in a few words ('Name or service not known', 'Connection
    refused', 'timed out')."""
    if err is None:
        return "unknown error"
    reason = getattr(err, "reason", None)
    if isinstance(reason, BaseException):
        err = reason
    elif isinstance(reason, str) and reason:
        return reason
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = str(err) or type(err).__name__
    return text if not isinstance(err, http.client.IncompleteRead) else "connection closed early"


def _human(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # unreachable


class _Progress:
    """Bytes, rate and ETA of one transfer. On a terminal one line redrawn (``\\r``) at most
    10 times a second; elsewhere (a log file, a pipe) a plain line every `every` seconds; both
    end with a final line."""

    def __init__(self, stream: TextIO | None, label: str, total: int | None, start: int = 0,
                 every: float = 10.0):
        self.stream = stream
        self.label = label
        self.total = total
        self.start_bytes = start
        self.current = start
        self.started = time.monotonic()
        self.shown = 0.0
        self.every = every
        isatty = getattr(stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.closed = False

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = (self.current - self.start_bytes) / elapsed
        text = f"{self.label}: {_human(self.current)}"
        if self.total:
            text += f" / {_human(self.total)} ({100 * self.current / self.total:3.0f}%)"
        text += f", {_human(rate)}/s"
        if self.total and rate > 0 and self.current < self.total:
            left = int((self.total - self.current) / rate)
            hours, minutes, seconds = left // 3600, left // 60 % 60, left % 60
            text += f", ETA {hours}:{minutes:02d}:{seconds:02d}" if hours else \
                f", ETA {minutes}:{seconds:02d}"
        return text

    def update(self, current: int) -> None:
        self.current = current
        if self.stream is None:
            return
        now = time.monotonic()
        if now - self.shown < (0.1 if self.tty else self.every):
            return
        self.shown = now
        if self.tty:
            self.stream.write("\r\x1b[K" + self.line())
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.stream is None or self.closed:
            return
        self.closed = True
        self.stream.write(("\r\x1b[K" if self.tty else "") + self.line() + "\n")
        self.stream.flush()
