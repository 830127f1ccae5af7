"""Branches: experiments on a lottery's artifacts (θ₀, θ_k, each level's mask and trained weights)
that leave the lottery itself untouched (OpenLTH's idea, the JAX way).

    python -m lth_jax.main --config=configs/lenet300_100.py --workdir=W \\
        --branch=configs/branches/instability.py --branch.levels="(0, 5)"

The trunk levels a branch needs are trained or resumed first by the lottery's own code; then the
branch runs into ``W/branches/<name>-<digest>/`` with the lottery's machinery (``base.run``).

A branch is one module of its own logic plus an entry in ``REGISTRY`` (or, for a branch of your
own, any importable module: its config's ``name`` is the module's import path). It defines:

* ``NAME`` and ``FIELDS``: its config schema, ``(field, default, meaning)`` rows (a ``name`` field
  first), from which ``default_config`` and ``--help`` are made;
* ``RECORD_KEY``: the fields that name one of its records;
* ``check(config, exp)``: refuse bad fields (``ConfigError`` naming ``branch.FIELD``);
* ``trunk_levels(config, exp)``: the last trunk level it needs;
* ``run(ctx)``: the experiment (``base.Context``: the trunk, the branch folder, chunked training);
* ``report(folder, records, config) -> [paths]``: its tables and plots, into its folder;
* optionally ``make_folder(path, identity, saved, log, exp, config, trunk)``: its folder as
  something richer than a ``lottery.Folder`` (``retrain``'s is a ``lottery.Store``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

import ml_collections

from lth_jax import config as config_lib

#: name -> the module of a branch. Add yours here.
REGISTRY: dict[str, str] = {
    "cheaper_tickets": "lth_jax.branches.cheaper_tickets",
    "instability": "lth_jax.branches.instability",
    "retrain": "lth_jax.branches.retrain",
}


def names() -> list[str]:
    return sorted(REGISTRY)


#: What a branch module defines (its ``make_folder`` is optional).
CONTRACT = ("FIELDS", "RECORD_KEY", "check", "trunk_levels", "run", "report")


def get(name: str) -> ModuleType:
    """The module of branch ``name``: a ``REGISTRY`` entry, or any importable module that keeps
    the branch contract (a branch of your own, e.g. a file beside your configs); ConfigError
    naming ``branch.name`` otherwise."""
    path = REGISTRY.get(name, name)
    try:
        module = importlib.import_module(path) if path else None
    except ImportError as e:
        module, why = None, f" ({e})" if name not in REGISTRY and e.name != path else ""
    else:
        why = ""
    if module is None:
        raise config_lib.ConfigError(f"branch.name: unknown branch {name!r}{why}; branches are "
                                     f"{', '.join(names())}, or an importable module of your own")
    missing = [attr for attr in CONTRACT if not hasattr(module, attr)]
    if missing:
        raise config_lib.ConfigError(f"branch.name: module {path!r} is not a branch: it lacks "
                                     f"{', '.join(missing)}")
    return module


def default_config(branch: ModuleType) -> ml_collections.ConfigDict:
    """The branch's config with every field at its default (``configs/branches/*.py``)."""
    return config_lib.build(branch.FIELDS)


def run(branch_config: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
        workdir: str, **kwargs) -> str:
    """Run (or resume) a branch: ``base.run``."""
    from lth_jax.branches import base
    return base.run(branch_config, config, workdir, **kwargs)
