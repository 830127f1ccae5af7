"""Instability: the error barrier between two copies trained from θ_k, against k (Frankle et al.,
ICML 2020, linear mode connectivity).

For each trial, each k and each mask (the dense network, and the trunk's ticket masks of
``levels``):

1. θ_k: the dense network trained from θ₀ for k iterations with the trial's data order and noise,
   the trajectory of the trunk's level 0 (same θ₀, same keys);
2. two copies of ``m ⊙ θ_k`` trained from iteration k to the end, one with the trial's SGD noise and
   one with other noise (data order, dropout, augmentation), all else equal;
3. the error barrier on the straight line between them (``lth_jax.instability``), batch-norm
   statistics re-estimated at every point.

A trunk with learning-rate warmup is also run without it (``without_warmup``), so one command
answers whether warmup makes the network stable earlier. The ticket masks come from the trunk,
which rewound to its own ``prune.rewind_iteration``; here they are applied to θ_k of every k
(the paper runs IMP once per k, a whole IMP run per k). Records (the branch folder's
``results.jsonl``): one per trial × warmup × mask × k with the barrier, the error and loss along
the path and both copies' final test accuracy.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lth_jax import config as config_lib
from lth_jax import instability as instability_lib
from lth_jax import masks as masks_lib
from lth_jax import stats
from lth_jax import train as train_lib
from lth_jax.branches import base
from lth_jax.lottery import DATA, NOISE, Experiment, RunBatch, trial_key

PyTree = Any
NAME = "instability"
FIELDS = (
    ("name", NAME, "the branch (lth_jax.branches.REGISTRY)"),
    ("levels", (), "trunk levels whose ticket masks are tested (0 = the dense network); () = 0 "
                   "and the trunk's last level (config.prune.levels)"),
    ("k_fractions", (0.0, 0.01, 0.05, 0.1, 0.25, 0.5), "rewind points k as fractions of "
                                                  "train.iterations, each rounded down to a "
                                                  "multiple of train.eval_every"),
    ("ks", (), "rewind points k in iterations (multiples of train.eval_every, below "
               "train.iterations); () = from k_fractions"),
    ("points", 11, "points on the straight line between the two copies, ends included"),
    ("bn_batches", 20, "training batches that re-estimate batch-norm statistics at each point"),
    ("without_warmup", True, "a trunk with learning-rate warmup is also run without it"),
    ("trials", 0, "trunk trials to use (0 = all)"),
)
RECORD_KEY = ("trial", "warmup", "level", "k")


def ks_of(config: ml_collections.ConfigDict, exp: Experiment) -> list[int]:
    """The rewind points: ``ks``, or ``k_fractions`` of the iterations (multiples of eval_every)."""
    T, every = exp.trainer.iterations, exp.trainer.eval_every
    if tuple(config.ks):
        return sorted({int(k) for k in config.ks})
    return sorted({int(f * T) // every * every for f in config.k_fractions})


def levels_of(config: ml_collections.ConfigDict, exp: Experiment) -> list[int]:
    return sorted({int(v) for v in config.levels} | {0} if tuple(config.levels)
                  else {0, int(exp.config.prune.levels)})


def check(config: ml_collections.ConfigDict, exp: Experiment) -> None:
    T, every = exp.trainer.iterations, exp.trainer.eval_every
    for field in ("ks", "k_fractions", "levels"):
        if not isinstance(config[field], (tuple, list)):
            raise config_lib.ConfigError(f"branch.{field}: must be a tuple, got {config[field]!r}")
    if not tuple(config.ks) and not tuple(config.k_fractions):
        raise config_lib.ConfigError("branch.k_fractions: empty, and branch.ks too: give at least "
                                     "one rewind point")
    for f in config.k_fractions:
        if not isinstance(f, (int, float)) or isinstance(f, bool) or not 0 <= f < 1:
            raise config_lib.ConfigError(f"branch.k_fractions: {f!r} is not a fraction in [0, 1)")
    for k in config.ks:
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < T or k % every:
            raise config_lib.ConfigError(f"branch.ks: {k!r} is not a multiple of train.eval_every="
                                         f"{every} in [0, train.iterations={T})")
    for level in config.levels:
        if isinstance(level, bool) or not isinstance(level, int) or level < 0:
            raise config_lib.ConfigError(f"branch.levels: {level!r} is not a level (an integer "
                                         ">= 0)")
    for field, low in (("points", 2), ("bn_batches", 1)):
        if isinstance(config[field], bool) or not isinstance(config[field], int) or \
                config[field] < low:
            raise config_lib.ConfigError(f"branch.{field}: must be an integer >= {low}, got "
                                         f"{config[field]!r}")
    if not isinstance(config.without_warmup, bool):
        raise config_lib.ConfigError(f"branch.without_warmup: must be True or False, got "
                                     f"{config.without_warmup!r}")


def trunk_levels(config: ml_collections.ConfigDict, exp: Experiment) -> int:
    return max(levels_of(config, exp))


def run(ctx: base.Context) -> None:
    cfg, exp = ctx.config, ctx.exp
    ks, levels = ks_of(cfg, exp), levels_of(cfg, exp)
    warmups = [int(exp.config.train.warmup_iterations)]
    if warmups[0] and cfg.without_warmup:
        warmups.append(0)
    done = ctx.done()
    seed = int(exp.config.seed)
    ctx.log(f"instability: {len(ctx.trials)} trial(s), k in {ks}, levels {levels}, warmup "
            f"{warmups}")
    T = exp.trainer.iterations
    todo_all = {(w, t, k): [lv for lv in levels if (t, w, lv, k) not in done]
                for w in warmups for t in ctx.trials for k in ks}
    # The model-steps of the copies still to train after each batch (the progress lines' ETA).
    steps = [2 * len(lv) * (T - k) for (_, _, k), lv in todo_all.items()]
    later = dict(zip(todo_all, [sum(steps[i + 1:]) for i in range(len(steps))]))
    for warmup in warmups:
        wexp = exp if warmup == warmups[0] else without_warmup(exp)
        runner = ctx.runner(wexp)
        path = jax.jit(lambda a, b, m, key: instability_lib.linear_path(
            wexp.trainer, wexp.data, wexp.data.test, a, b, m, points=int(cfg.points),
            bn_key=key, bn_batches=int(cfg.bn_batches)))
        for trial in ctx.trials:
            todo = {k: [lv for lv in levels if (trial, warmup, lv, k) not in done] for k in ks}
            if not any(todo.values()):
                continue
            thetas = rewind_points(ctx, wexp, trial, warmup, [k for k in ks if todo[k]])
            dk, nk = trial_key(seed, trial, DATA), trial_key(seed, trial, NOISE)
            for k in ks:
                if todo[k]:
                    _copies(ctx, wexp, runner, path, trial, warmup, k, todo[k], thetas[k], dk, nk,
                            later[(warmup, trial, k)])


def without_warmup(exp: Experiment) -> Experiment:
    """``exp`` with its learning-rate warmup removed (its own compiled programs)."""
    cfg = ml_collections.ConfigDict(exp.config.to_dict())
    cfg.train.warmup_iterations = 0
    return dataclasses.replace(exp, config=cfg, programs_key=exp.programs_key and
                               f"{exp.programs_key}:no-warmup",
                               trainer=train_lib.make_trainer(exp.model, cfg.train,
                                                              exp.trainer.augment))


def rewind_points(ctx: base.Context, exp: Experiment, trial: int, warmup: int,
                  ks: list[int]) -> dict[int, tuple]:
    """θ_k (params, batch_stats) of one trial for each k: the dense trajectory from θ₀ with the
    trial's keys, stopped at max(ks); kept in a checkpoint of the branch folder."""
    name = f"theta_k_w{warmup}_t{trial}"
    saved = ctx.folder.read(name)[0] if ctx.folder.has(name) else {}
    if all(str(k) in saved for k in ks):
        return {k: (saved[str(k)]["params"], saved[str(k)]["batch_stats"]) for k in ks}
    theta0 = jax.tree.map(lambda x: np.asarray(x[trial]), ctx.trunk.init()["theta0"])
    found = {0: (theta0["params"], theta0["batch_stats"])}
    wanted = set(ks) - {0}
    if wanted:
        seed = int(exp.config.seed)
        stack = lambda tree: jax.tree.map(lambda x: np.asarray(x)[None], tree)  # noqa: E731

        def at(training) -> None:
            iteration = training.iterations
            if iteration in wanted:
                params, stats_ = training.current()
                found[iteration] = jax.tree.map(lambda x: x[0], (params, stats_))

        batch = RunBatch(stack(theta0["params"]), stack(theta0["batch_stats"]),
                         stack(masks_lib.ones_like(theta0["params"])),
                         trial_key(seed, trial, DATA)[None], trial_key(seed, trial, NOISE)[None])
        ctx.train(f"progress_{name}", f"trial {trial} θ_k (warmup {warmup})", ctx.runner(exp),
                  batch, [("dense", trial)], start=0, until=max(wanted), at=at,
                  runs=[f"warmup_{warmup}/trial_{trial}/theta_k"])
    ctx.folder.save(name, {str(k): {"params": v[0], "batch_stats": v[1]}
                           for k, v in found.items()})
    return {k: found[k] for k in ks}


def _copies(ctx: base.Context, exp: Experiment, runner, path, trial: int, warmup: int, k: int,
            levels: list[int], theta_k: tuple, dk: jax.Array, nk: jax.Array,
            later_steps: int) -> None:
    """Train the two copies of every mask from θ_k (one batch) and record their barriers."""
    params_k, stats_k = theta_k
    masks = [masks_lib.ones_like(params_k) if level == 0 else jax.tree.map(
        lambda x: np.asarray(x[trial], bool), ctx.trunk.ticket(level)["mask"]) for level in levels]
    runs = [(m, copy) for m in masks for copy in (0, 1)]
    stack = lambda trees: jax.tree.map(lambda *xs: np.stack(xs), *trees)  # noqa: E731
    # Copy A follows the trial's own noise; copy B another draw of every noise source.
    batch = RunBatch(stack([masks_lib.apply(params_k, m) for m, _ in runs]),
                     stack([stats_k for _ in runs]), stack([m for m, _ in runs]),
                     jnp.stack([dk if c == 0 else jax.random.fold_in(dk, 1) for _, c in runs]),
                     jnp.stack([nk if c == 0 else jax.random.fold_in(nk, 1) for _, c in runs]))
    name = f"progress_w{warmup}_t{trial}_k{k}"
    order = [(level, copy) for level in levels for copy in (0, 1)]
    trained = ctx.train(name, f"trial {trial} k={k} (warmup {warmup})", runner, batch, order,
                        start=k, later_steps=later_steps, runs=[f"warmup_{warmup}/trial_{trial}/k_{k}/level_{level:02d}/"
                                       f"copy_{'ab'[copy]}" for level, copy in order])
    result = trained.result
    new = []
    for i, (level, mask) in enumerate(zip(levels, masks)):
        a, b = 2 * i, 2 * i + 1
        ends = [(jax.tree.map(lambda x: x[j], result.params),
                 jax.tree.map(lambda x: x[j], result.batch_stats)) for j in (a, b)]
        curve = jax.tree.map(np.asarray, path(ends[0], ends[1], mask, jax.random.fold_in(dk, 1)))
        new.append({"trial": trial, "warmup": warmup, "level": level, "k": k,
                    "density": _density(mask, exp.prunable),
                    "barrier": float(curve.barrier), "alphas": [float(x) for x in curve.alphas],
                    "error": [float(x) for x in curve.error],
                    "loss": [float(x) for x in curve.loss],
                    "final_test_accuracy": [float(result.final_test_accuracy[j]) for j in (a, b)],
                    "train_seconds": trained.seconds})
        ctx.log(f"trial {trial} warmup {warmup} level {level:2d} ({100 * new[-1]['density']:5.1f}%)"
                f" k {k:6d}: barrier {100 * new[-1]['barrier']:.2f} pp (final test acc "
                f"{100 * np.mean(new[-1]['final_test_accuracy']):.2f}%)")
    ctx.folder.add_records(new)
    ctx.folder.remove(name)


def _density(mask: PyTree, prunable: PyTree) -> float:
    alive, total = masks_lib.count(mask, prunable)
    return float(alive) / float(total) if float(total) else 1.0


# ----------------------------------------------------------------------------- report

REPORT, PLOT = "instability.md", "instability.png"


def summarise(records: list[dict]) -> dict[tuple[int, int], dict[int, stats.Estimate]]:
    """{(warmup, level): {k: the barrier's mean and 95% CI over trials}}."""
    groups: dict = {}
    for r in records:
        groups.setdefault((r["warmup"], r["level"]), {}).setdefault(r["k"], []).append(r["barrier"])
    return {g: {k: stats.mean_ci(v) for k, v in sorted(by_k.items())}
            for g, by_k in sorted(groups.items())}


def report(folder: str, records: list[dict], config: dict) -> list[str]:
    """``instability.md`` (barrier in pp, mean ± 95% CI over trials) and ``instability.png``."""
    if not records:
        return []
    density = {(r["warmup"], r["level"]): r["density"] for r in records}
    summary = summarise(records)
    ks = sorted({r["k"] for r in records})
    trials = len({r["trial"] for r in records})
    note = stats.few_trials_note(trials)
    lines = ["# Error barrier (pp) against the rewind iteration k", "",
             f"Mean ± half-width of the 95% confidence interval (Student's t) over {trials} "
             f"trial(s), SD in brackets.{' ' + note if note else ''} The paper calls a network "
             "stable at k when the barrier is below 2 pp.", "",
             "| warmup | % weights | " + " | ".join(f"k={k}" for k in ks) + " |",
             "|---:|---:|" + "---:|" * len(ks)]
    for (warmup, level), by_k in summary.items():
        cells = [_cell(by_k[k]) if k in by_k else "—" for k in ks]
        lines.append(f"| {warmup} | {100 * density[(warmup, level)]:.1f} | " + " | ".join(cells)
                     + " |")
    paths = [os.path.join(folder, REPORT), os.path.join(folder, PLOT)]
    with open(paths[0], "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    _plot(paths[1], summary, density, ks)
    return paths


def _cell(e: stats.Estimate) -> str:
    if e.half_width is None:
        return f"{100 * e.mean:.2f}"
    return f"{100 * e.mean:.2f} ± {100 * e.half_width:.2f} ({100 * e.sd:.2f})"


def _plot(path: str, summary: dict, density: dict, ks: list[int]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    several_warmups = len({w for w, _ in summary}) > 1
    for (warmup, level), by_k in summary.items():
        x = np.array(list(by_k))
        mean = np.array([100 * e.mean for e in by_k.values()])
        err = np.array([100 * (e.half_width or 0.0) for e in by_k.values()])
        label = f"{100 * density[(warmup, level)]:.1f}% weights" + (
            f", warmup {warmup}" if several_warmups else "")
        ax.errorbar(x, mean, yerr=err, marker="o", capsize=3, label=label)
    ax.set_xscale("symlog", linthresh=max(1, min([k for k in ks if k] or [1])))
    ax.set_xlabel("rewind iteration k")
    ax.set_ylabel("error barrier (pp)")
    ax.axhline(2.0, color="grey", lw=0.8, ls=":", label="2 pp (stability line)")
    ax.legend(fontsize=8)
    ax.set_title("Instability: error rise between two copies trained from θ_k\n"
                 "(error bars: 95% CI of the mean over trials)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
