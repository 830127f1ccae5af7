"""Retraining after pruning, another way: IMP's pruned levels retrained by another rule, from the
trunk's dense level 0 (Renda, Frankle & Carbin, ICLR 2020).

    python -m lth_jax.main --config=CONFIG --workdir=W --branch=configs/branches/retrain.py \\
        --branch.rule=lr_rewinding --branch.retrain_iterations=2000

The trunk's level 0 (the same θ₀, data order and dense training) is shared: level 1 prunes the
trunk's trained dense network, and each later level prunes this branch's previous retrained
network, as Renda et al. do. The rules (``config.RETRAIN_RULES``):

* ``weight_rewinding``: rewind the survivors to θ_k and replay the schedule from k (the lottery
  ticket); ``rewind_iteration`` k may differ from the trunk's: θ_k is then taken from the dense
  trajectory of the trunk's level 0 (trained again from θ₀ to k with the same keys);
* ``lr_rewinding``: keep the trained weights, replay the last ``retrain_iterations`` t of the
  learning-rate schedule (iterations T − t .. T, the same rate at every step as the schedule's end);
* ``fine_tuning``: keep the trained weights, train t iterations at the schedule's final rate.

Its records are the lottery's (trial, level, variant; levels ≥ 1, each with ``retrain`` and
``cost_model_steps``), kept in the branch folder, which is a lottery workdir whose level 0, θ₀ and
θ_rewind are the trunk's (``lottery.Store`` with a base). The controls: ``random_prune`` (a random
mask of the ticket's per-layer counts: on θ_k under weight rewinding; among the previous network's
survivors, on its trained weights, under the other rules) and ``reinit`` (weight rewinding only).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from lth_jax import config as config_lib
from lth_jax import lottery
from lth_jax import masks as masks_lib
from lth_jax import workdir as workdir_lib
from lth_jax.branches import base
from lth_jax.lottery import imp as imp_lib
from lth_jax.lottery.level import level_batch

NAME = "retrain"
FIELDS = (
    ("name", NAME, "the branch (lth_jax.branches.REGISTRY)"),
    ("rule", "lr_rewinding", "weight_rewinding | lr_rewinding | fine_tuning (config.prune.retrain)"),
    ("retrain_iterations", 0, "t, the iterations of each retraining under lr_rewinding and "
                              "fine_tuning (a multiple of train.eval_every); 0 = train.iterations"),
    ("rewind_iteration", -1, "k of weight_rewinding (a multiple of train.eval_every); -1 = the "
                             "trunk's prune.rewind_iteration"),
    ("levels", 0, "pruning levels after the trunk's level 0; 0 = the trunk's prune.levels"),
    ("random_prune", False, "also train the random-pruning control at every level"),
    ("reinit", False, "also train the random-reinitialisation control (weight_rewinding only)"),
)
RECORD_KEY = workdir_lib.REQUIRED_FIELDS


def experiment(config: ml_collections.ConfigDict, exp: lottery.Experiment,
               identity: str = "") -> lottery.Experiment:
    """The trunk's experiment with this branch's retraining rule, levels and controls (and
    ``identity``, the branch folder's, in its records and checkpoints). Raises ConfigError
    naming the branch field that makes no valid experiment."""
    c = ml_collections.ConfigDict(exp.config.to_dict())
    T = int(c.train.iterations)
    c.prune.retrain = str(config.rule)
    weights = config.rule == "weight_rewinding"
    c.prune.retrain_iterations = 0 if weights else int(config.retrain_iterations or T)
    if weights and int(config.rewind_iteration) >= 0:
        c.prune.rewind_iteration = int(config.rewind_iteration)
    elif not weights:
        c.prune.rewind_iteration = 0
    c.prune.levels = int(config.levels or exp.config.prune.levels)
    c.controls.random_prune = bool(config.random_prune)
    c.controls.reinit = bool(config.reinit)
    try:
        config_lib.validate(c)
    except config_lib.ConfigError as e:
        message = str(e)
        for field, name in (("prune.retrain_iterations", "retrain_iterations"),
                            ("prune.rewind_iteration", "rewind_iteration"),
                            ("prune.retrain", "rule"), ("controls.reinit", "reinit"),
                            ("prune.levels", "levels")):
            message = message.replace(f"config.{field}:", f"branch.{name}:")
        raise config_lib.ConfigError(message) from None
    return dataclasses.replace(exp, config=c, identity=identity or exp.identity,
                               variants=workdir_lib.variants(config_lib.to_json(c)))


def check(config: ml_collections.ConfigDict, exp: lottery.Experiment) -> None:
    for field in ("random_prune", "reinit"):
        if not isinstance(config[field], bool):
            raise config_lib.ConfigError(f"branch.{field}: must be True or False, got "
                                         f"{config[field]!r}")
    for field, low in (("retrain_iterations", 0), ("rewind_iteration", -1), ("levels", 0)):
        if isinstance(config[field], bool) or not isinstance(config[field], int) or \
                config[field] < low:
            raise config_lib.ConfigError(f"branch.{field}: must be an integer >= {low}, got "
                                         f"{config[field]!r}")
    if config.rule == "weight_rewinding" and config.retrain_iterations:
        raise config_lib.ConfigError("branch.retrain_iterations: weight rewinding retrains from k "
                                     "to the end; set it to 0 (or another rule)")
    if config.rule != "weight_rewinding" and config.rewind_iteration > 0:
        raise config_lib.ConfigError(f"branch.rewind_iteration: {config.rule} keeps the trained "
                                     "weights and rewinds none; leave it at -1")
    if exp.config.prune.one_shot:
        raise config_lib.ConfigError("config.prune.one_shot: the retrain branch retrains iterative "
                                     "pruning's levels")
    experiment(config, exp)


def trunk_levels(config: ml_collections.ConfigDict, exp: lottery.Experiment) -> int:
    return 0  # the dense level 0 only


def make_folder(path: str, identity: str, saved: dict, log: Callable[[str], None],
                exp: lottery.Experiment, config: ml_collections.ConfigDict,
                trunk: lottery.Trunk) -> lottery.Store:
    """The branch folder as a lottery workdir whose level 0, θ₀ and θ_rewind are the trunk's."""
    return lottery.Store(experiment(config, exp, identity), path, log, base=trunk,
                         what="branch folder", identity=identity, config=saved)


def run(ctx: base.Context) -> None:
    exp = experiment(ctx.config, ctx.exp, ctx.folder.identity)
    store = ctx.folder
    trunk_k = int(ctx.exp.config.prune.rewind_iteration)
    k = int(exp.config.prune.rewind_iteration)
    if exp.retrain == "weight_rewinding" and k != trunk_k and not store.has(workdir_lib.INIT):
        store.save_rewind_point(rewind_point(ctx, k))
    runner = ctx.runner(exp)
    retrain_runner = ctx.runner(exp.retraining()) if exp.retrain == "fine_tuning" else runner
    ctx.log(f"retrain: {exp.retrain}" + (f" from k={k}" if exp.retrain == "weight_rewinding" else
                                         f" for {exp.config.prune.retrain_iterations} iterations")
            + f", levels 1..{exp.config.prune.levels}, variants {', '.join(exp.variants)}")
    imp_lib.imp(exp, imp_lib.steps(exp, lambda: ctx.check_stop("before the next level's training")),
                store, imp_lib.LevelTrainer(exp, ctx.train, runner, retrain_runner))


def rewind_point(ctx: base.Context, k: int) -> dict:
    """θ_k of every trial ({"params", "batch_stats"}, leading trial axis): the dense trajectory of
    the trunk's level 0 (θ₀, the trials' keys, all trials as one batch) stopped at k."""
    theta0 = ctx.trunk.init()["theta0"]
    if k == 0:
        return theta0
    trials = list(range(int(ctx.exp.config.trials)))
    mask = jax.vmap(masks_lib.ones_like)(theta0["params"])
    runs = {"ticket": (theta0["params"], theta0["batch_stats"], mask)}
    batch, order = level_batch(runs, trials, int(ctx.exp.config.seed))
    found: dict[str, Any] = {}

    def at(training) -> bool:
        if training.iterations == k:
            params, stats = training.current()
            found.update(params=params, batch_stats=stats)
            return True
        return False

    ctx.train("progress_rewind_point", f"dense to θ_{k}", ctx.runner(), batch, order, start=0,
              until=k, at=at, runs=[f"theta_{k}/trial_{t}" for _, t in order])
    return jax.tree.map(np.asarray, found)


def report(folder: str, records: list[dict], config: dict) -> list[str]:
    """``report.md`` and ``accuracy_vs_density.png`` in the branch folder: the trunk's level 0
    and this branch's levels, summarised as the lottery's report does (``lth_jax.report``)."""
    from lth_jax import report as report_lib
    trunk = os.path.dirname(os.path.dirname(folder))
    records = [r for r in workdir_lib.read_records(trunk) if r["level"] == 0] + records
    budget = float((config["trunk"].get("train") or {}).get("iterations") or 0) or None
    rows = report_lib.summarize(records, budget=budget)
    trials = len({r["trial"] for r in records})
    paths = [os.path.join(folder, "report.md"), os.path.join(folder, "accuracy_vs_density.png")]
    with open(paths[0], "w", encoding="utf-8") as f:
        f.write(f"# {_title(config['branch'])}\n\nLevel 0 is the trunk's dense network.\n\n"
                + report_lib.format_table(rows, trials) + "\n")
    if not report_lib.plot_metric_vs_density(rows, "test_accuracy_at_early_stop", paths[1],
                                             title=_title(config["branch"])):
        paths.pop()
    return paths


def _title(branch_config: dict) -> str:
    rule = branch_config["rule"]
    if rule == "weight_rewinding":
        k = branch_config["rewind_iteration"]
        return f"Retrained by weight rewinding (k = {k if k >= 0 else 'the trunk’s'})"
    t = branch_config["retrain_iterations"] or "train.iterations"
    return f"Retrained by {rule.replace('_', ' ')} (t = {t})"
