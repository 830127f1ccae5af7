"""What a finished level leaves: the JSON record of every run and the level's checkpoint tree.

A record holds the run's identity (trial, level, variant, the experiment's identity), its
density, its outcome (early-stopping iteration, validation and test numbers there, final test
accuracy; or ``status`` "diverged"/"skipped" with a ``failure`` message and null outcomes), its
cost, and its evaluation curves (the fields: docs/design.md, "Records").
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from lth_jax import masks as masks_lib
from lth_jax import train as train_lib
from lth_jax.lottery.experiment import Experiment
from lth_jax.lottery.level import Trained

PyTree = Any
#: Fields of a record that measure the machine rather than the experiment (differ between reruns).
TIMING_FIELDS = ("train_seconds",)


def _finite_list(values) -> list:
    return [float(v) if np.isfinite(v) else None for v in np.asarray(values, np.float64)]


def _finite(value) -> float | None:
    return float(value) if np.isfinite(value) else None


def _density(mask: PyTree, prunable: PyTree) -> float:
    """``masks.density`` on the host (exact integer counts, no device round trip)."""
    pairs = [(np.asarray(m), s) for m, s in zip(jax.tree.leaves(mask), jax.tree.leaves(prunable))]
    total = sum(m.size for m, s in pairs if s)
    return sum(int(m.sum()) for m, s in pairs if s) / total if total else 1.0


_OUTCOME_FIELDS = ("early_stop_iteration", "val_loss_at_early_stop", "val_accuracy_at_early_stop",
                   "test_accuracy_at_early_stop", "final_test_accuracy")


def make_record(exp: Experiment, result: train_lib.RunResult, i: int, *, trial: int, level: int,
                variant: str, mask: PyTree, start: int, seconds: float, runs: int) -> dict:
    """The JSON record of run ``i`` of a batched result (docs/design.md, "Records").

    ``status`` is "ok", or "diverged" with a ``failure`` message naming level, variant, trial and
    iteration, and null results, when (the divergence rule, ``train.diverged``): a training loss
    was non-finite, or a period's mean training loss exceeded ``train.DIVERGENCE_FACTOR`` times
    max(initial loss, ln classes), or no validation loss was finite.
    """
    iterations = train_lib.eval_iterations(exp.trainer, start)
    index = int(result.best_period[i])
    test_curve = np.asarray(result.test_accuracy[i])
    tested = train_lib.tested_evaluations(exp.trainer, start)
    record = {
        "trial": trial, "level": level, "variant": variant, "experiment": exp.identity,
        "density": _density(mask, exp.prunable),
        "layer_density": masks_lib.layer_density(mask, exp.prunable),
        "status": "ok",
        "early_stop_iteration": int(iterations[index]),
        "val_loss_at_early_stop": _finite(result.val_loss[i][index]),
        "val_accuracy_at_early_stop": _finite(result.val_accuracy[i][index]),
        "test_accuracy_at_early_stop": _finite(result.best_test_accuracy[i]),
        "final_test_accuracy": _finite(result.final_test_accuracy[i]),
        "train_seconds": seconds,
        "runs_in_program": runs,
        "cost_model_steps": exp.trainer.iterations - start,
        "initial_train_loss": _finite(result.initial_loss[i]),
        "eval_iterations": [int(x) for x in iterations],
        "train_loss": _finite_list(result.train_loss[i]),
        "val_loss": _finite_list(result.val_loss[i]),
        "val_accuracy": _finite_list(result.val_accuracy[i]),
        "test_iterations": [int(x) for x in iterations[tested]],
        "test_loss": _finite_list(np.asarray(result.test_loss[i])[tested]),
        "test_accuracy": _finite_list(test_curve[tested]),
    }
    where = f"(level {level}, variant {variant}, trial {trial})"
    bad = int(result.nonfinite_step[i])
    blowup = train_lib.diverged(result.train_loss[i], result.initial_loss[i],
                                exp.dataset_info.num_classes)
    failure = None
    if bad >= 0:
        failure = f"non-finite training loss at iteration {bad} {where}"
    elif blowup >= 0:
        first = int(iterations[blowup]) - exp.trainer.eval_every
        failure = (f"training loss {float(result.train_loss[i][blowup]):.3g} averaged over "
                   f"iterations {first}-{int(iterations[blowup])}, above "
                   f"{train_lib.DIVERGENCE_FACTOR:g} x max(initial loss, ln classes) {where}")
    elif index < 0:  # e.g. the last step of the only period blew up: no loss saw it
        failure = f"no finite validation loss up to iteration {int(iterations[-1])} {where}"
    if level:  # the rule that retrained this pruned network (level 0 is the dense training)
        record["retrain"] = exp.retrain
    if failure:
        record.update(status="diverged", failure=failure, **dict.fromkeys(_OUTCOME_FIELDS))
    return record


def skipped_record(exp: Experiment, *, trial: int, level: int, variant: str, mask: PyTree,
                   diverged_at: int) -> dict:
    """The record of a run that is not trained because its trial's ticket diverged earlier."""
    return {"trial": trial, "level": level, "variant": variant, "experiment": exp.identity,
            "density": _density(mask, exp.prunable),
            "layer_density": masks_lib.layer_density(mask, exp.prunable),
            "status": "skipped", "failure": f"not trained: the trial's ticket diverged at level "
                                            f"{diverged_at}",
            **dict.fromkeys(_OUTCOME_FIELDS), "train_seconds": 0.0, "runs_in_program": 0,
            "cost_model_steps": 0,
            "initial_train_loss": None, "eval_iterations": [], "train_loss": [], "val_loss": [],
            "val_accuracy": [], "test_iterations": [], "test_loss": [], "test_accuracy": []}


def level_records(exp: Experiment, level: int, runs: dict, trained: Trained,
                  diverged: dict[int, int]) -> list[dict]:
    """The records of a level, in ``workdir.level_runs`` order: trained runs from their result,
    runs of trials whose ticket diverged at an earlier level as skipped."""
    out = []
    for variant, (_, _, mask) in runs.items():
        host_mask = _numpy(mask)  # (one copy, not an eager device op per leaf and trial)
        for t in range(int(exp.config.trials)):
            run_mask = jax.tree.map(lambda x: x[t], host_mask)
            if t in diverged:
                out.append(skipped_record(exp, trial=t, level=level, variant=variant,
                                          mask=run_mask, diverged_at=diverged[t]))
            else:
                i = trained.order.index((variant, t))
                out.append(make_record(exp, trained.result, i, trial=t, level=level,
                                       variant=variant, mask=run_mask, start=trained.start,
                                       seconds=trained.seconds, runs=len(trained.order)))
    return out


def level_tree(exp: Experiment, level: int, runs: dict, trained: Trained, k: int) -> dict:
    """A level's checkpoint: ``ticket`` (mask, trained params and batch stats of every trial; NaN
    params for a trial not trained), ``runs`` (mask and trained params of every trained run, in
    ``trained.order``) and, at level 0 with rewinding, ``theta_rewind`` (θ_k of every trial)."""
    mask = runs["ticket"][2]
    trials = int(exp.config.trials)
    index = {t: i for i, (v, t) in enumerate(trained.order) if v == "ticket"}

    def per_trial(field, like):
        def leaf(x, y):
            rows = [np.asarray(x[index[t]]) if t in index else np.full(y.shape[1:], np.nan, y.dtype)
                    for t in range(trials)]
            return np.stack(rows)
        if trained.result is None:
            return jax.tree.map(lambda y: np.full(y.shape, np.nan, y.dtype), like)
        return jax.tree.map(leaf, getattr(trained.result, field), like)

    params, stats = runs["ticket"][0], runs["ticket"][1]
    tree = {"ticket": {"mask": mask, "trained_params": per_trial("params", params),
                       "trained_batch_stats": per_trial("batch_stats", stats)}}
    if trained.order:
        host = {v: _numpy(runs[v][2]) for v in runs}  # (indexed on the host: no device op a leaf)
        masks = [jax.tree.map(lambda x: x[t], host[v]) for v, t in trained.order]
        tree["runs"] = {"mask": jax.tree.map(lambda *xs: np.stack(xs), *masks),
                        "trained_params": trained.result.params}
    if k and level == 0 and trained.result is not None:
        tree["theta_rewind"] = {"params": per_trial("captured_params", params),
                                "batch_stats": per_trial("captured_batch_stats", stats)}
    return tree


def _numpy(tree: PyTree) -> PyTree:
    return jax.tree.map(np.asarray, tree)
