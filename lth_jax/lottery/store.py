"""Persistence: a folder that one process writes (``Folder``), the lottery's state in its workdir
(``Store``), and a finished lottery read by a branch (``Trunk``).

A ``Folder`` is the machinery every writer shares, the lottery and each branch alike: the lock
(``workdir.Lock``), the config identity (``config.json`` and the identity in every record and
checkpoint), the records file with its one reading rule (``workdir.read_records``; a torn last line
and duplicates are repaired by writing the file back), verified checkpoints, intra-level progress
checkpoints, and the disk check. Every write is atomic; an OSError (disk full, read-only) becomes
one ``ExperimentError`` line. With several processes, process 0 takes the lock and writes files,
every process reads the same files in the same order, and checkpoints are written by all of them
(orbax's writes are collective).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from lth_jax import config as config_lib
from lth_jax import processes
from lth_jax import workdir as workdir_lib
from lth_jax.lottery.experiment import Experiment, ExperimentError, config_to_json

PyTree = Any


class Folder:
    """A directory that one process writes: lock, identity, records, verified checkpoints.

    ``config`` (plain JSON data) is written as ``config.json``; ``identity`` is stored in every
    record (field ``experiment``) and checkpoint (meta ``experiment``), so that a folder holding
    another experiment's results is refused, also when its ``config.json`` is gone. Records are
    named by ``record_key`` (their fields); ``what`` names the folder in messages.
    """

    def __init__(self, path: str, *, identity: str, config: Mapping, log: Callable[[str], None],
                 record_key: Sequence[str] = workdir_lib.REQUIRED_FIELDS,
                 what: str = "--workdir", noun: str = "workdir"):
        self.path, self.identity, self.config, self.log = path, identity, dict(config), log
        self.record_key, self.what, self.noun = tuple(record_key), what, noun
        self._lock = workdir_lib.Lock(path)
        self.primary = processes.is_primary()  # the one process that writes files here
        self._records: list[dict] = []

    # -- opening and closing

    def open(self) -> None:
        """Create or check the folder, take its lock, read its records (repairing the file) and
        check that everything in it is this experiment's. Raises ExperimentError."""
        if self.primary:
            try:
                if os.path.exists(self.path) and not os.path.isdir(self.path):
                    raise ExperimentError(f"{self.what} {self.path} is a file, not a directory")
                os.makedirs(self.path, exist_ok=True)
                self._lock.acquire()
            except OSError as e:
                raise ExperimentError(
                    f"cannot use {self.what} {self.path}: {e.strerror or e}") from None
            previous = self._lock.previous
            if previous and previous.get("pid") != os.getpid():
                self.log(f"lth_jax: took over the lock of process {previous.get('pid')} on "
                         f"{previous.get('host')} (started {previous.get('started')}), which "
                         "has ended")
            self.write(lambda: workdir_lib.clean_checkpoints(self.path), "checkpoints/")
        processes.barrier(f"{self.path} opened")
        if not os.path.isdir(self.path):
            raise ExperimentError(f"{self.what} {self.path} does not exist on process "
                                  f"{processes.index()}: with several processes it must be on a "
                                  "filesystem every host sees")
        records = workdir_lib.read_records(self.path, warn=lambda m: self.log(f"lth_jax: {m}"),
                                           key=self.record_key)
        self._check_identity(records)
        self.set_records(records)  # (a torn last line or a duplicate: the file is repaired)

    def close(self) -> None:
        self._lock.release()

    def __enter__(self) -> "Folder":
        try:
            self.open()
        except BaseException:
            self.close()  # (an open that fails after taking the lock gives it back)
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def write(self, fn: Callable[[], Any], what: str, everyone: bool = False) -> Any:
        """``fn()`` (a write) in process 0 only, or in every process (``everyone``: checkpoints,
        whose orbax writes are collective); an OSError becomes one ExperimentError line."""
        if not (self.primary or everyone):
            return None
        try:
            return fn()
        except OSError as e:
            raise ExperimentError(f"cannot write {what} in {self.path}: {e.strerror or e}; "
                                  "nothing of it was kept") from None

    def _check_identity(self, records: list[dict]) -> None:
        """Refuse a folder of another experiment: config.json's fields, and the identity stored
        in every record and checkpoint (which also guards a folder whose config.json is gone)."""
        path = os.path.join(self.path, workdir_lib.CONFIG)
        try:
            saved, damaged = workdir_lib.read_config(self.path), None
        except workdir_lib.WorkdirError as e:
            saved, damaged = None, str(e)
        nothing_saved = not records and not workdir_lib.checkpoint_names(self.path)
        if saved is not None and nothing_saved:
            saved = None  # config.json of a run that saved nothing (e.g. refused): replaced
        if saved is not None:
            diffs = config_lib.differences(saved, self.config)
            if diffs:
                shown = "; ".join(f"{k}: {self.noun} has {a!r}, config has {b!r}"
                                  for k, a, b in diffs[:5])
                raise ExperimentError(f"{self.path} holds a different experiment ({shown}). Use "
                                      f"another {self.what}, or the same config to resume.")
        others = [f"{workdir_lib.RESULTS} ({', '.join(f'{k} {r[k]}' for k in self.record_key)})"
                  for r in records if r.get("experiment", self.identity) != self.identity]
        for name in workdir_lib.checkpoint_names(self.path):
            meta = workdir_lib.checkpoint_meta(self.path, name)
            if meta and meta.get("experiment", self.identity) != self.identity:
                others.append(f"checkpoints/{name}")
        if others:
            why = (" and its config.json is missing" if saved is None and damaged is None else
                   " and its config.json is unreadable" if damaged else "")
            raise ExperimentError(
                f"{self.path} holds results of another experiment ({others[0]} has another "
                f"experiment identity than this config's {self.identity}){why}. Use another "
                f"{self.what}, or the config those results were made with.")
        if saved is None:
            if damaged:
                self.log(f"lth_jax: {damaged}; rewritten from this config"
                         + ("" if nothing_saved else " (the saved results are of this experiment)"))
            self.write(lambda: workdir_lib.write_json_atomically(path, self.config),
                       workdir_lib.CONFIG)

    # -- records

    def records(self) -> list[dict]:
        """The records kept here, in file order (after the reading rule)."""
        return list(self._records)

    def set_records(self, records: list[dict]) -> None:
        """Make ``records`` the folder's records; the file is rewritten (atomically) only when
        its text differs, which also repairs a torn last line or a duplicate."""
        self._records = list(records)
        text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in records)
        path = os.path.join(self.path, workdir_lib.RESULTS)
        if os.path.exists(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                if f.read() == text:
                    return
        elif not records:
            return
        self.write(lambda: workdir_lib.write_records(self.path, records), workdir_lib.RESULTS)

    def add_records(self, new: list[dict]) -> None:
        """Append ``new`` (each with this folder's identity); a record with the key of one kept
        replaces it."""
        name = lambda r: workdir_lib.record_name(r, self.record_key)  # noqa: E731
        names = {name(r) for r in new}
        self.set_records([r for r in self._records if name(r) not in names]
                         + [{**r, "experiment": self.identity} for r in new])

    # -- checkpoints

    def has(self, name: str) -> bool:
        return os.path.exists(workdir_lib.checkpoint_path(self.path, name))

    def read(self, name: str) -> tuple[PyTree, dict]:
        """(tree, meta) of checkpoint ``name``, verified (CheckpointError if damaged)."""
        return workdir_lib.read_checkpoint(self.path, name)

    def save(self, name: str, tree: PyTree, meta: Mapping | None = None) -> None:
        """Commit checkpoint ``name`` (numpy arrays), with this folder's identity in its meta."""
        tree = _numpy(tree)
        self.write(lambda: workdir_lib.write_checkpoint(
            self.path, name, tree, {"experiment": self.identity, **(meta or {})},
            primary=self.primary, sync=processes.barrier), f"checkpoints/{name}", everyone=True)

    def remove(self, name: str) -> None:
        self.write(lambda: workdir_lib.remove_checkpoint(self.path, name), name)

    def progress(self, name: str, inputs: str) -> tuple[dict, dict] | None:
        """The intra-level checkpoint ``name`` — (snapshot, meta) — if there is one that verifies
        and was made from the same inputs (masks, keys); else None."""
        if not self.has(name):
            return None
        try:
            tree, meta = self.read(name)
        except workdir_lib.CheckpointError as e:
            self.log(f"lth_jax: {e}; its runs start again from their beginning")
            return None
        if meta.get("inputs") != inputs:
            self.log(f"lth_jax: checkpoint {name} was made from other inputs; its runs start "
                     "again from their beginning")
            return None
        return tree, meta

    def save_progress(self, name: str, snapshot: dict, meta: dict) -> None:
        self.save(name, snapshot, meta)

    def check_disk(self, what: str, need: int) -> None:
        """Refuse to start training whose checkpoints would not fit on the folder's disk."""
        free = shutil.disk_usage(self.path).free
        if need > free:
            raise ExperimentError(
                f"not enough disk space for {what} in {self.path}: its checkpoints need "
                f"~{need / 2**20:,.0f} MiB, {free / 2**20:,.0f} MiB are free")


class Store(Folder):
    """The lottery's state in its workdir (layout in ``lth_jax.workdir``).

    * ``init``: θ₀ and θ_rewind (θ₀, or θ_k) of every trial;
    * a finished level: its checkpoint (the ticket masks and trained params of every trial, the
      masks and trained params of every run; its records and the experiment's identity in the
      checkpoint's meta), committed first, then its records in results.jsonl;
    * the level in training: its intra-level checkpoint (``level.ChunkedTrainer``).

    A level is finished when its checkpoint is committed and verifies against its digest; its
    records come from results.jsonl, or from the checkpoint when results.jsonl lost them. A
    damaged checkpoint is reported in one line and its level computed again.

    ``base`` (a ``Trunk``): the dense level 0, θ₀ and θ_rewind are that lottery's, read from it;
    only the later levels are kept here (a branch that retrains the trunk's level 0 another way).
    """

    def __init__(self, exp: Experiment, workdir: str, log: Callable[[str], None], *,
                 base: "Trunk | None" = None, what: str = "--workdir",
                 identity: str | None = None, config: Mapping | None = None):
        super().__init__(workdir, identity=identity or exp.identity,
                         config=config_to_json(exp.config) if config is None else config,
                         log=log, what=what, noun="workdir" if base is None else what)
        self.exp, self.base = exp, base
        self._finished: dict[int, list[dict]] = {}   # level -> its records
        self._cached: dict[int, dict] = {}           # level -> checkpoint tree (level 0, the last)
        self._init_digest: str | None = None

    @property
    def workdir(self) -> str:
        return self.path

    def open(self) -> None:
        """Create or check the workdir, take its lock, and find the finished levels (verifying
        every level checkpoint)."""
        super().open()
        self._find_finished(self._records)

    def _find_finished(self, records: list[dict]) -> None:
        by_run = {(r["level"], r["variant"], r["trial"]): r for r in records}
        last = None
        if self.base is not None:
            self._finished[0] = [r for r in self.base.records() if r["level"] == 0]
            self._cached[0] = self.base.level(0)
        for level in range(int(self.exp.config.prune.levels) + 1):
            name = workdir_lib.level_checkpoint(level)
            if (self.base is not None and level == 0) or not self.has(name):
                continue
            try:
                tree, meta = self.read(name)
            except workdir_lib.CheckpointError as e:
                self.log(f"lth_jax: {e}; level {level} is computed again")
                self.remove(name)
                continue
            expected = workdir_lib.level_runs(config_to_json(self.exp.config), level)
            kept = [by_run.get((level, v, t)) for v, t in expected]
            if None in kept:
                kept = meta["records"]
                self.log(f"lth_jax: the records of level {level} are restored from its checkpoint")
            self._finished[level] = kept
            self._init_digest = meta.get("init_digest", self._init_digest)
            if level == 0:
                self._cached[0] = tree
            last = level
        if last:
            self._cached[last] = self.read(workdir_lib.level_checkpoint(last))[0]
        for name in workdir_lib.checkpoint_names(self.path):  # progress of a finished level
            if name.startswith("progress_") and name[len("progress_"):].isdigit() and int(
                    name[len("progress_"):]) in self._finished:
                self.remove(name)
        self.set_records(self.own_records())

    # -- reading

    def records(self) -> list[dict]:
        """The records of the levels finished here, by level (``own_records``)."""
        return self.own_records()

    def own_records(self) -> list[dict]:
        """The records of the levels finished here, by level (each in ``level_runs`` order)."""
        own = sorted(lv for lv in self._finished if not (self.base is not None and lv == 0))
        return [r for level in own for r in self._finished[level]]

    def level_records(self) -> list[dict]:
        """The records of every finished level, the base's level 0 included."""
        return [r for level in sorted(self._finished) for r in self._finished[level]]

    def is_finished(self, level: int) -> bool:
        return level in self._finished

    def diverged_tickets(self, before: int) -> dict[int, int]:
        """trial -> the first level below ``before`` at which its ticket did not finish "ok"."""
        out: dict[int, int] = {}
        for r in self.level_records():
            if r["variant"] == "ticket" and r["status"] != "ok" and r["level"] < before:
                out[r["trial"]] = min(r["level"], out.get(r["trial"], r["level"]))
        return out

    def ticket(self, level: int) -> dict:
        """A finished level's ticket: ``{'mask', 'trained_params', 'trained_batch_stats'}``."""
        if level not in self._cached:
            self._cached[level] = self.read(workdir_lib.level_checkpoint(level))[0]
        return self._cached[level]["ticket"]

    def theta0(self, build: Callable[[], PyTree]) -> dict:
        """θ₀ of every trial: from the init checkpoint, or ``build()`` (from the seed) when there
        is none yet or it was lost or damaged. A rebuilt θ₀ is checked against the digest the
        saved levels recorded, and the init checkpoint written again."""
        if self.base is not None:
            return self.base.init()["theta0"]
        name = workdir_lib.INIT
        if self.has(name):
            try:
                init, meta = self.read(name)
                self._init_digest = meta["digest"]
                return init["theta0"]
            except workdir_lib.CheckpointError as e:
                self.log(f"lth_jax: {e}; θ₀ is rebuilt from the seed")
        theta0 = _numpy(build())
        if 0 in self._finished:  # θ_rewind: θ₀, or θ_k as level 0 captured it
            level0 = self._cached[0]
            init = {"theta0": theta0, "theta_rewind": level0.get("theta_rewind", theta0)}
            if self._init_digest and workdir_lib.digest(init) != self._init_digest:
                raise ExperimentError(
                    f"checkpoints/{name} is lost or damaged, and θ₀ rebuilt from the seed differs "
                    "from the one the saved levels were trained from (e.g. another JAX version): "
                    f"restore checkpoints/{name} from a backup, or start over in a new --workdir")
            self._save_init(init)
        return theta0

    def theta_rewind(self) -> dict:
        """θ_rewind (θ₀, or θ_k) of every trial; exists once level 0 is finished. With a base,
        the base's, unless this store has a rewind point of its own (``save_rewind_point``)."""
        if self.base is not None and not self.has(workdir_lib.INIT):
            return self.base.init()["theta_rewind"]
        return self.read(workdir_lib.INIT)[0]["theta_rewind"]

    def save_rewind_point(self, theta_rewind: dict) -> None:
        """Keep ``theta_rewind`` (θ_k of every trial) as this store's own, beside the base's θ₀
        (a branch rewinding to another k than its base)."""
        base_init = self.base.init() if self.base is not None else {}
        self._save_init({"theta0": base_init.get("theta0", theta_rewind),
                         "theta_rewind": theta_rewind})

    # -- writing

    def _save_init(self, init: dict) -> None:
        self.save(workdir_lib.INIT, init)
        self._init_digest = workdir_lib.digest(_numpy(init))

    def save_level(self, level: int, tree: dict, records: list[dict], theta0: dict) -> None:
        """Commit a finished level: (at level 0: θ₀ and θ_rewind, which is θ₀ or the tree's
        ``theta_rewind``), its checkpoint, then its records; its intra-level checkpoint goes."""
        tree = _numpy(tree)
        if level == 0:
            theta0 = _numpy(theta0)
            self._save_init({"theta0": theta0, "theta_rewind": tree.get("theta_rewind", theta0)})
        self.save(workdir_lib.level_checkpoint(level), tree,
                  {"level": level, "init_digest": self._init_digest, "records": records})
        self._finished[level] = records
        self._cached = {k: v for k, v in self._cached.items() if k == 0}
        self._cached[level] = tree
        self.set_records(self.own_records())
        self.remove(workdir_lib.progress_checkpoint(level))


class Trunk:
    """A lottery's finished levels, read for a branch: θ₀ and θ_rewind, each level's checkpoint
    and records. It takes no lock: finished levels are never rewritten, and the branch runs
    after the levels it needs are finished. Every checkpoint is verified on read and must carry
    the lottery's ``identity``."""

    def __init__(self, workdir: str, identity: str):
        self.workdir, self.identity = workdir, identity
        self._levels: dict[int, dict] = {}
        self._init: dict | None = None

    def _read(self, name: str) -> PyTree:
        tree, meta = workdir_lib.read_checkpoint(self.workdir, name)
        if meta.get("experiment", self.identity) != self.identity:
            raise ExperimentError(f"{self.workdir}: checkpoints/{name} is of another experiment")
        return tree

    def init(self) -> dict:
        """``{"theta0", "theta_rewind"}`` of every trial (leading trial axis, numpy)."""
        if self._init is None:
            self._init = self._read(workdir_lib.INIT)
        return self._init

    def level(self, level: int) -> dict:
        """A finished level's checkpoint tree (``records.level_tree``)."""
        if level not in self._levels:
            self._levels[level] = self._read(workdir_lib.level_checkpoint(level))
        return self._levels[level]

    def ticket(self, level: int) -> dict:
        """A finished level's ticket: ``{'mask', 'trained_params', 'trained_batch_stats'}``."""
        return self.level(level)["ticket"]

    def records(self) -> list[dict]:
        """The lottery's records (the reading rule of ``workdir.read_records``)."""
        return workdir_lib.read_records(self.workdir)


def _numpy(tree: PyTree) -> PyTree:
    return jax.tree.map(np.asarray, tree)
