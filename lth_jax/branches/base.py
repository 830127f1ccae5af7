"""What every branch gets: the trunk first, then its own folder with the lottery's machinery.

``run`` checks the branch's config, trains or resumes the trunk levels the branch needs (the
lottery's ``run``), then opens ``W/branches/<name>-<digest>/`` as a ``Folder`` (lock, identity,
records with one reading rule, verified checkpoints) and calls the branch's ``run`` with a
``Context``: chunked training with progress lines, stops within a chunk and intra-level
checkpoints (``ChunkedTrainer``), the same as the lottery's.

The digest is of the trunk's identity and the branch's config, so each setting of a branch has a
folder of its own, and a branch accepts exactly one lottery: the one in ``--workdir``, made by
``--config`` (the trunk refuses another experiment's workdir).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from types import ModuleType
from typing import Callable

import ml_collections

from lth_jax import branches
from lth_jax import config as config_lib
from lth_jax import lottery
from lth_jax import processes
from lth_jax import workdir as workdir_lib
from lth_jax.lottery import imp as imp_lib
from lth_jax.lottery.level import ChunkedTrainer
from lth_jax.lottery.runner import Runner

BRANCHES = "branches"


@dataclasses.dataclass
class Context:
    """What a branch's ``run`` works with.

    Attributes:
      exp: the trunk's experiment (model, data, trainer, rules).
      config: the branch's config (checked by its ``check``).
      trunk: the trunk's finished levels: ``init()`` (θ₀, θ_rewind), ``ticket(level)``,
        ``level(level)``, ``records()``.
      folder: the branch's folder: ``records()``, ``add_records``, ``save``/``read``/``has``
        checkpoints, ``write`` (files of process 0).
      train: chunked training of a ``RunBatch`` (``ChunkedTrainer``).
      log: progress lines (process 0's; the others' are silent).
      check_stop: ``check_stop(where)`` raises ``Stopped`` when a stop was asked for.
      trials: the trunk trials the branch uses.
    """
    exp: lottery.Experiment
    config: ml_collections.ConfigDict
    trunk: lottery.Trunk
    folder: lottery.Folder
    train: ChunkedTrainer
    log: Callable[[str], None]
    check_stop: Callable[..., int]
    trials: list[int]
    _runners: dict = dataclasses.field(default_factory=dict)

    def runner(self, exp: lottery.Experiment | None = None) -> Runner:
        """The ``Runner`` of ``exp`` (default: the trunk's), made once per experiment."""
        exp = exp or self.exp
        key = exp.programs_key or id(exp)
        if key not in self._runners:
            self._runners[key] = imp_lib.make_runner(exp)
        return self._runners[key]

    def done(self) -> set[tuple]:
        """The names (``RECORD_KEY`` values) of the records already made."""
        return {workdir_lib.record_name(r, self.folder.record_key) for r in self.folder.records()}


def folder_of(workdir: str, name: str, identity: str) -> str:
    """Where a branch with this identity keeps its files: ``W/branches/<name>-<digest>``."""
    return os.path.join(workdir, BRANCHES, f"{name}-{identity[:8]}")


def branch_identity(trunk_identity: str, branch_config: ml_collections.ConfigDict) -> str:
    """A digest of the trunk's identity and the branch's config."""
    text = json.dumps({"trunk": trunk_identity,
                       "branch": config_lib.comparable(config_lib.to_json(branch_config))},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_fields(branch: ModuleType, branch_config: ml_collections.ConfigDict) -> None:
    """Refuse fields the branch does not have, and missing ones (ConfigError naming them)."""
    name = branch_config.get("name", "")
    known = [name for name, _, _ in branch.FIELDS]
    have = list(config_lib.flatten(branch_config.to_dict()))
    unknown = sorted(set(have) - set(known))
    if unknown:
        raise config_lib.ConfigError(f"branch.{unknown[0]}: unknown field; branch "
                                     f"{name} has {', '.join(known)}")
    missing = sorted(set(known) - set(have))
    if missing:
        raise config_lib.ConfigError(f"branch.{missing[0]}: missing field")


def trials_of(branch_config: ml_collections.ConfigDict, exp: lottery.Experiment) -> list[int]:
    """The trunk trials a branch uses: its ``trials`` field (0 = all the trunk's)."""
    have = int(exp.config.trials)
    wanted = int(branch_config.get("trials", 0) or have)
    if not 0 < wanted <= have:
        raise config_lib.ConfigError(f"branch.trials: {wanted}, but the trunk has {have} "
                                     "trial(s) (config.trials); 0 = all of them")
    return list(range(wanted))


def run(branch_config: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
        workdir: str, log: Callable[[str], None] = print,
        stop: Callable[[], int] | None = None) -> str:
    """Run (or resume) the branch of ``branch_config`` on the lottery of ``config`` in
    ``workdir``; returns the branch's folder.

    Every check comes before anything is written (a typo in a field leaves no trace); the trunk
    levels the branch needs are trained or resumed first; the branch's own work resumes from what
    its folder holds, and its records equal an uninterrupted run's (timing fields aside).
    """
    name = str(branch_config.get("name", ""))
    branch = branches.get(name)
    check_fields(branch, branch_config)
    check_stop = imp_lib.stop_checker(stop)
    if processes.is_primary():
        workdir_lib.Lock(workdir).refuse_if_held()
    else:
        log = lambda line: None  # noqa: E731
    exp = lottery.setup(config)
    trials = trials_of(branch_config, exp)
    branch.check(branch_config, exp)
    needed = int(branch.trunk_levels(branch_config, exp))
    if needed > int(config.prune.levels):
        raise config_lib.ConfigError(
            f"config.prune.levels: {config.prune.levels}, but branch {name} needs trunk level "
            f"{needed}; set --config.prune.levels={needed} or more (the trunk's identity changes "
            "with it), or change the branch's fields")
    check_stop("after loading the data")
    lottery.run(config, workdir, log=log, exp=exp, stop=stop, levels=needed)
    identity = branch_identity(exp.identity, branch_config)
    path = folder_of(workdir, name, identity)
    saved = {"branch": config_lib.to_json(branch_config), "trunk": exp.identity}
    trunk = lottery.Trunk(workdir, exp.identity)
    if hasattr(branch, "make_folder"):  # a branch whose folder is a lottery workdir of its own
        folder = branch.make_folder(path, identity, saved, log, exp, branch_config, trunk)
    else:
        folder = lottery.Folder(path, identity=identity, config=saved, log=log,
                                record_key=branch.RECORD_KEY, what="branch folder",
                                noun="branch folder")
    with folder:
        check_stop("after opening the branch folder")
        ctx = Context(exp=exp, config=branch_config, trunk=trunk, folder=folder, log=log,
                      check_stop=check_stop, trials=trials,
                      train=ChunkedTrainer(config.runtime, folder, log, check_stop, stop))
        kept = len(folder.records())
        log(f"branch {name}: trunk levels 0..{needed} ready; folder {path}"
            + (f" ({kept} records kept)" if kept else ""))
        branch.run(ctx)
        # Every batch is finished now: an intra-level checkpoint still here is of one whose
        # records were written just before a kill.
        for name in workdir_lib.checkpoint_names(path):
            if name.startswith("progress_"):
                folder.remove(name)
        check_stop("at the end")
    return path


def write_report(folder: str) -> list[str]:
    """The branch's tables and plots (its module's ``report``), written into its folder; returns
    their paths."""
    branch, branch_config, trunk_config, records = read_folder(folder)
    return branch.report(folder, records, {"branch": branch_config, "trunk": trunk_config})


def folders(workdir: str) -> list[str]:
    """The folders of the branches in ``workdir`` (those with a config.json), sorted."""
    root = os.path.join(workdir, BRANCHES)
    if not os.path.isdir(root):
        return []
    return sorted(os.path.join(root, d) for d in os.listdir(root)
                  if os.path.isfile(os.path.join(root, d, workdir_lib.CONFIG)))


def read_folder(path: str) -> tuple[ModuleType, dict, dict, list[dict]]:
    """(branch module, branch config, trunk config, records) of a branch folder, for reports.
    Raises WorkdirError naming the file when its config.json is not a branch's."""
    saved = workdir_lib.read_config(path) or {}
    name = (saved.get("branch") or {}).get("name") if isinstance(saved.get("branch"), dict) else None
    if not name:
        raise workdir_lib.WorkdirError(f"{os.path.join(path, workdir_lib.CONFIG)} names no branch")
    try:
        branch = branches.get(name)
    except config_lib.ConfigError as e:
        raise workdir_lib.WorkdirError(f"{os.path.join(path, workdir_lib.CONFIG)}: {e}") from None
    trunk = workdir_lib.read_config(os.path.dirname(os.path.dirname(path))) or {}
    records = workdir_lib.read_records(path, key=branch.RECORD_KEY)
    return branch, saved["branch"], trunk, records

