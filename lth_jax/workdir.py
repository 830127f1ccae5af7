"""The work directory of an experiment: its files, its lock, its records and its checkpoints.

::

    WORKDIR/
      config.json      the resolved config
      results.jsonl    one JSON record per (trial, level, variant), appended as each level finishes
      checkpoints/     init (θ₀, θ_k), level_LLL (each finished level), progress_LLL (the level in
                       training, every runtime.checkpoint_minutes)
      lock             held (flock) by the one process writing here

``lottery`` writes a workdir (holding the lock); ``report`` and ``load_experiment`` only read it,
without the lock, also while a run is going. Both read it through this module, so the file names,
the variants, the expected runs and the reading of records (one de-duplication rule) are the same
for all of them.

Every checkpoint folder holds a ``lth_jax.json`` written last, before the commit (one rename): the
SHA-256 digest of its arrays and the experiment's identity (``identity``: a digest of the config
without ``runtime.*``), also stored in every record. A checkpoint without it, or whose arrays do not
match the digest, is damaged (``CheckpointError``) and its level is computed again.

No JAX here: orbax (and with it JAX) is imported only by the functions that read or write a
checkpoint.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lth_jax import config as config_lib

CONFIG = "config.json"
RESULTS = "results.jsonl"
CHECKPOINTS = "checkpoints"
LOCK = "lock"
INIT = "init"
META = "lth_jax.json"   # inside every checkpoint folder: digest and identity
FORMAT = 2              # of checkpoints (1: before digests)

#: Known variants, in order: the ticket, then the controls.
VARIANTS = ("ticket", "reinit", "random_prune")
REQUIRED_FIELDS = ("trial", "level", "variant")

PyTree = Any


class WorkdirError(ValueError):
    """The workdir cannot be used as it is; the message (one line) says which file and why."""


class CheckpointError(WorkdirError):
    """A checkpoint is missing, incomplete or damaged."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"checkpoint {name} {reason}")
        self.name = name


def level_checkpoint(level: int) -> str:
    """The name of the checkpoint of a finished level."""
    return f"level_{level:03d}"


def progress_checkpoint(level: int) -> str:
    """The name of the intra-level checkpoint of a level in training."""
    return f"progress_{level:03d}"


# ----------------------------------------------------------------------------- the experiment

def get_field(config: Mapping | None, *keys: str, default: Any = None) -> Any:
    """The value at ``config[keys[0]][keys[1]]...`` of a resolved config (plain JSON data), or
    ``default`` where a key is missing or a node is not a mapping."""
    node: Any = config
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    return node


def variants(config: Mapping) -> tuple[str, ...]:
    """The ticket and the controls the config enables, in the order of ``VARIANTS``."""
    return ("ticket",) + tuple(v for v in VARIANTS[1:] if get_field(config, "controls", v, default=False))


def level_runs(config: Mapping, level: int) -> list[tuple[str, int]]:
    """(variant, trial) of every run of a level, variant-major; level 0 (dense) has only tickets."""
    trials = int(get_field(config, "trials", default=1))
    return [(v, t) for v in (("ticket",) if level == 0 else variants(config)) for t in range(trials)]


def expected_runs(config: Mapping) -> list[tuple[int, str, int]]:
    """Every (level, variant, trial) the experiment in ``config`` produces, sorted by level, then
    variant (in the order of ``VARIANTS``), then trial."""
    levels = int(get_field(config, "prune", "levels", default=0))
    return [(level, v, t) for level in range(levels + 1) for v, t in level_runs(config, level)]


def identity(config: Mapping) -> str:
    """The experiment's identity (``config.identity``): a digest of the resolved config without
    ``runtime.*``, stored in every record and checkpoint."""
    return config_lib.identity(config)


def read_config(workdir: str) -> dict | None:
    """``config.json`` as a dict; None if there is none. Raises WorkdirError if it is not a JSON
    object."""
    path = os.path.join(workdir, CONFIG)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WorkdirError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise WorkdirError(f"{path} holds a JSON {type(config).__name__}, not a config object")
    return config


def write_json_atomically(path: str, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` by a rename: readers see the old file or the new one."""
    _write_atomically(path, lambda f: json.dump(data, f, indent=2, sort_keys=True))


def _write_atomically(path: str, write: Callable[[Any], Any]) -> None:
    """``write(file)`` into ``path.tmp``, synced, then renamed to ``path``; on any failure (a full
    disk) the temporary file is removed and ``path`` is left as it was."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# ----------------------------------------------------------------------------- records

def read_records(workdir: str, warn: Callable[[str], None] | None = None, *,
                 file: str = RESULTS, key: Sequence[str] = REQUIRED_FIELDS) -> list[dict]:
    """The records of ``workdir/file`` (none if it does not exist), in file order.

    The one reading rule, for the lottery, every branch, the report and ``load_experiment``
    (``key``: the fields that name a record, ``("trial", "level", "variant")`` for the lottery's):
    blank lines are skipped; a half-written *last* line (a process killed while appending) is
    dropped with a warning; any other line that is not a JSON object with the ``key`` fields raises
    WorkdirError naming the line. When a key appears more than once, the *later* record wins (at
    the later one's position), with a warning. A writer repairs the file by writing back what this
    returns (``write_records``).
    """
    path = os.path.join(workdir, file)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    by_key: dict[tuple, dict] = {}
    for index, (n, line) in enumerate(numbered):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, ValueError) as e:  # ValueError: an integer of 5,000 digits
            if index == len(numbered) - 1 and n == len(lines):  # no newline after it: cut short
                if warn:
                    warn(f"{path}:{n}: ignoring unparseable last line (half-written record?)")
                break
            raise WorkdirError(f"{path}: line {n} is not valid JSON ({e}); {_FIX}") from None
        if not isinstance(record, dict):
            raise WorkdirError(f"{path}: line {n} is a JSON {type(record).__name__}, not a record "
                               f"object; {_FIX}")
        absent = [k for k in key if k not in record]
        if absent:
            raise WorkdirError(f"{path}: line {n} lacks required field(s) {', '.join(absent)}; "
                               f"{_FIX}")
        try:
            name = record_name(record, key)
        except (TypeError, ValueError):
            raise WorkdirError(f"{path}: line {n} has a non-integer trial or level; "
                               f"{_FIX}") from None
        if name in by_key:
            if warn:
                shown = ", ".join(f"{k} {v!r}" for k, v in zip(key, name))
                warn(f"{path}:{n}: duplicate record for {shown}; keeping the later one")
            del by_key[name]  # so that the kept record takes the later position
        by_key[name] = record
    return list(by_key.values())


def record_name(record: Mapping, key: Sequence[str] = REQUIRED_FIELDS) -> tuple:
    """What names a record: the values of its ``key`` fields, hashable (lists become tuples);
    the lottery's ``(trial, level, variant)`` as ``(int, int, str)``. Raises TypeError or
    ValueError for a lottery record whose trial or level is not an integer."""
    if tuple(key) == REQUIRED_FIELDS:
        return int(record["trial"]), int(record["level"]), str(record["variant"])
    return tuple(_hashable(record[k]) for k in key)


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


_FIX = ("remove that line (a rerun restores a finished level's records from its checkpoint)")


def write_records(workdir: str, records: Sequence[dict], file: str = RESULTS) -> None:
    """Replace ``workdir/file`` by ``records`` atomically (a rename)."""
    _write_atomically(os.path.join(workdir, file), lambda f: f.writelines(
        json.dumps(r, allow_nan=False) + "\n" for r in records))


# ----------------------------------------------------------------------------- checkpoints

def checkpoint_path(workdir: str, name: str) -> str:
    return os.path.abspath(os.path.join(workdir, CHECKPOINTS, name))


def _flatten(tree: PyTree, prefix: str = "") -> list[tuple[str, Any]]:
    """(path, leaf) pairs in a canonical order: dict keys sorted; lists and tuples alike (orbax
    gives tuples back as lists)."""
    if isinstance(tree, Mapping):
        return [pair for k in sorted(tree, key=str) for pair in _flatten(tree[k], f"{prefix}{k}/")]
    if isinstance(tree, (list, tuple)):
        return [pair for i, x in enumerate(tree) for pair in _flatten(x, f"{prefix}{i}/")]
    return [(prefix.rstrip("/"), tree)]


def _map(fn: Callable[[Any], Any], tree: PyTree) -> PyTree:
    if isinstance(tree, Mapping):
        return {k: _map(fn, v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_map(fn, x) for x in tree]
    return fn(tree)


def digest(tree: PyTree) -> str:
    """SHA-256 over every leaf's path, dtype, shape and bytes (numpy arrays or scalars)."""
    import numpy as np

    h = hashlib.sha256()
    for path, leaf in _flatten(tree):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{path}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def tree_bytes(tree: PyTree) -> int:
    """The bytes of a tree's arrays (what a checkpoint of it takes on disk, about)."""
    import numpy as np

    return sum(np.asarray(leaf).nbytes for _, leaf in _flatten(tree))


def _checkpointer():
    import orbax.checkpoint as ocp  # slow to import, and it imports JAX: only when needed
    return ocp.PyTreeCheckpointer()


def write_checkpoint(workdir: str, name: str, tree: PyTree, meta: Mapping, *,
                     primary: bool = True, sync: Callable[[str], None] = lambda what: None) -> None:
    """Write ``tree`` (numpy arrays) as ``checkpoints/name`` with ``meta`` and the tree's digest
    in ``lth_jax.json``; committed by one rename, so a reader sees the old checkpoint or the new
    one, whole. Raises OSError (e.g. ENOSPC) with nothing half-written left under ``name``.

    With several processes every one calls this with the same tree: orbax's save is collective
    (process 0 writes replicated arrays), the folder operations are done by the ``primary``
    process, and ``sync(what)`` (a barrier) orders them.
    """
    import numpy as np

    tree = _map(np.asarray, tree)  # 0-d arrays, not numpy scalars (orbax returns those as floats)
    final = checkpoint_path(workdir, name)
    staging, old = final + ".staging", final + ".old"
    if primary:
        os.makedirs(os.path.dirname(final), exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    sync(f"{name} staging")
    try:
        _checkpointer().save(staging, tree)
        if primary:
            write_json_atomically(os.path.join(staging, META),
                                  {**meta, "digest": digest(tree), "format": FORMAT})
            if os.path.exists(final):
                os.replace(final, old)
            os.replace(staging, final)
    except BaseException:
        if primary:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if primary:
        shutil.rmtree(old, ignore_errors=True)
    sync(f"{name} committed")


def checkpoint_meta(workdir: str, name: str) -> dict | None:
    """The ``lth_jax.json`` of a committed checkpoint, or None (absent, or not readable)."""
    try:
        with open(os.path.join(checkpoint_path(workdir, name), META), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def read_checkpoint(workdir: str, name: str) -> tuple[PyTree, dict]:
    """(tree of numpy arrays, meta) of ``checkpoints/name``, verified against its digest.

    Raises CheckpointError (one line naming the checkpoint) if it does not exist, is incomplete
    (no ``lth_jax.json``: it was being written) or damaged (unreadable, or its arrays differ from
    the digest written at commit).
    """
    path = checkpoint_path(workdir, name)
    if not os.path.isdir(path):
        raise CheckpointError(name, "does not exist")
    meta = checkpoint_meta(workdir, name)
    if meta is None or "digest" not in meta:
        raise CheckpointError(name, "is incomplete (no digest: written by an older lth_jax, or "
                                    "cut short)")
    try:
        tree = _checkpointer().restore(path)
    except Exception as e:  # noqa: BLE001 -- orbax/tensorstore raise many kinds on damaged files
        first = " ".join(str(e).split())[:160]
        raise CheckpointError(name, f"is damaged (unreadable: {type(e).__name__}: {first})") from None
    if digest(tree) != meta["digest"]:
        raise CheckpointError(name, "is damaged (its arrays do not match the digest written at "
                                    "commit)")
    return tree, meta


def remove_checkpoint(workdir: str, name: str) -> None:
    shutil.rmtree(checkpoint_path(workdir, name), ignore_errors=True)


def clean_checkpoints(workdir: str) -> None:
    """Remove what an interrupted write leaves: staging folders, orbax temporary folders, and a
    replaced checkpoint's old copy (put back if the new one never arrived)."""
    folder = os.path.join(workdir, CHECKPOINTS)
    if not os.path.isdir(folder):
        return
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.endswith(".old"):
            final = path[:-len(".old")]
            if os.path.exists(final):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.replace(path, final)
        elif name.endswith(".staging") or ".orbax-checkpoint-tmp" in name:
            shutil.rmtree(path, ignore_errors=True)


def checkpoint_names(workdir: str) -> list[str]:
    folder = os.path.join(workdir, CHECKPOINTS)
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


# ----------------------------------------------------------------------------- the lock

class Lock:
    """The workdir's lock: an exclusive ``flock`` on ``WORKDIR/lock``, which names its holder.

    The kernel releases it when the process ends, however it ends (a SIGKILL too), so a lock left
    by a dead process is simply taken over; the file stays (it is never removed: removing it would
    let two processes hold locks on two different files). Readers do not take it.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK)
        self._fd: int | None = None
        self.previous: dict | None = None  # the holder named in the file when we took it over

    def acquire(self) -> "Lock":
        """Take the lock or raise WorkdirError naming the holder (pid, host, start time)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise WorkdirError(self._in_use(self._holder())) from None
        self.previous = self._holder()
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def holder(self) -> dict | None:
        """Who holds the lock now (without taking it, nor creating the file): their
        ``{'pid', 'host', 'started'}``, or None if it is free."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return self._holder() or {}
        finally:
            os.close(fd)  # (closing releases a lock taken here)
        return None

    def refuse_if_held(self) -> None:
        """Raise the WorkdirError of ``acquire`` if another process holds the lock."""
        holder = self.holder()
        if holder is not None:
            raise WorkdirError(self._in_use(holder))

    def _in_use(self, holder: dict | None) -> str:
        who = (f"process {holder.get('pid')} on host {holder.get('host')}, started "
               f"{holder.get('started')}" if holder else "another process")
        return (f"workdir {os.path.dirname(self.path) or '.'} is in use by {who}; wait for it to "
                "end, or use another --workdir")

    def _holder(self) -> dict | None:
        try:
            with open(self.path, encoding="utf-8") as f:
                holder = json.loads(f.read() or "null")
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def release(self) -> None:
        """Give the lock back; the file then names no holder, so the next process does not report
        taking over the lock of an ended one."""
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:  # a full or read-only disk: the flock is released all the same
                pass
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "Lock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


# ----------------------------------------------------------------------------- analysis API

def load_experiment(workdir: str) -> dict:
    """A finished (or partial) experiment, for analysing tickets in your own code.

    Returns ``{"config": dict, "theta0": {"params", "batch_stats"}, "theta_rewind": ...,
    "levels": {L: {"mask", "trained_params", "trained_batch_stats"}}, "records": [...]}`` where every
    array has a leading trial axis (numpy). ``levels[L]["mask"]`` is the ticket mask of level L
    (the trained params of a trial skipped at that level are NaN). Every checkpoint is verified
    against its digest (CheckpointError names a damaged one: running the experiment's command again
    recomputes it). Needs no lock: it can read a workdir while its experiment runs.
    """
    config = read_config(workdir)
    if config is None:
        raise WorkdirError(f"{workdir} has no {CONFIG}: not an lth_jax workdir")
    init, _ = read_checkpoint(workdir, INIT)
    levels = {}
    for name in checkpoint_names(workdir):
        if name.startswith("level_") and name[6:].isdigit():
            levels[int(name[6:])] = read_checkpoint(workdir, name)[0]["ticket"]
    return {"config": config, "theta0": init["theta0"], "theta_rewind": init["theta_rewind"],
            "levels": levels, "records": read_records(workdir)}
