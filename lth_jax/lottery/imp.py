"""The algorithm: iterative magnitude pruning with its controls (Frankle & Carbin 2019), every
trial at once, and ``run``, which runs or resumes it in a workdir::

    θ₀ ← init(key)                                   kept, never mutated
    level 0:  train the dense net m₀ = 1 from θ₀       (capture θ_k if rewinding to k > 0)
    level L:  m_L ← prune(θ_{L-1} trained, m_{L-1})    (one-shot: prune the dense run to level L)
              ticket        retrained by prune.retrain:  m_L ⊙ θ₀ (θ_k) from k  (weight rewinding)
                                                         m_L ⊙ θ_{L-1} from T − t (lr rewinding,
                                                         fine-tuning at the final rate)
              reinit        m_L ⊙ θ'  (fresh init), from k               control (weight rewinding)
              random_prune  a random mask of m_L's per-layer counts,     control
                            on θ₀ (θ_k); under lr rewinding and fine-tuning its survivors are drawn
                            among θ_{L-1}'s (random pruning of the same trained network)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lth_jax import config as config_lib
from lth_jax import masks as masks_lib
from lth_jax import processes
from lth_jax import pruning
from lth_jax import structured
from lth_jax import tensorboard
from lth_jax import tickets
from lth_jax import workdir as workdir_lib
from lth_jax.lottery import records as records_lib
from lth_jax.lottery.experiment import (INIT, RANDOM_MASK, REINIT, Experiment, Stopped, setup,
                                        trial_key)
from lth_jax.lottery.level import ChunkedTrainer, Trained, duration, level_batch
from lth_jax.lottery.runner import Runner, cached
from lth_jax.lottery.store import Store, Trunk

PyTree = Any


def next_mask(exp: Experiment, trained: PyTree, mask: PyTree, rounds: int) -> PyTree:
    """``mask`` pruned by ``rounds`` rounds at once by the magnitudes of ``trained``: 1 round from
    the previous level's ticket (iterative pruning), or L rounds from the dense mask (one-shot
    pruning to level L, the compound rate). Pure; vmap it over trials."""
    nm = config_lib.nm_pattern(exp.strategy)
    if nm is not None:  # every leaf with a rate > 0 goes to N:M, one weight per group per round
        return structured.nm_iterative(trained, mask, exp.rates, rounds, n=nm[0], m=nm[1],
                                       partial="pad")
    if exp.strategy in ("global", "global_neuron"):
        rate = pruning.compound_rate(exp.global_rate, rounds)
        if exp.strategy == "global_neuron":
            return structured.global_neuron_magnitude(trained, mask, rate, exp.rates)
        return pruning.global_magnitude(trained, mask, rate, exp.rates)
    rates = jax.tree.map(lambda r: pruning.compound_rate(r, rounds), exp.rates)
    if exp.strategy == "neuron":
        return structured.neuron_magnitude(trained, mask, rates)
    return pruning.layerwise_magnitude(trained, mask, rates)


class Steps(NamedTuple):
    """The steps of ``imp``, jitted over a leading trial axis (the level is a traced argument, so
    each compiles once). ``steps(exp)`` makes them."""
    #: () -> θ₀ {'params', 'batch_stats'} of every trial, from the key (trial, INIT).
    theta0: Callable[[], dict]
    #: params -> the all-True mask.
    all_true: Callable[[PyTree], PyTree]
    #: (trained, mask, rounds) -> the next ticket mask (``next_mask``; rounds static).
    prune: Callable[[PyTree, PyTree, int], PyTree]
    #: (θ, mask) -> m ⊙ θ.
    rewind: Callable[[PyTree, PyTree], PyTree]
    #: (mask, level) -> (m ⊙ θ', batch stats of θ'), θ' drawn with the key (trial, REINIT, level).
    reinit: Callable[[PyTree, int], tuple]
    #: (mask, within, level) -> a random mask with each leaf's count of ``mask``, drawn among
    #: the survivors of ``within`` (all-True: anywhere), key (trial, RANDOM_MASK, level).
    random_mask: Callable[[PyTree, PyTree, int], PyTree]


def steps(exp: Experiment, check: Callable[[], Any] = lambda: None) -> Steps:
    """The jitted ``Steps`` of ``exp`` (shared by experiments with equal ``programs_key`` and
    identity). ``check`` (the stop check) runs before each: the first call of each compiles for
    seconds, and a stop asked for meanwhile need not wait for the next one too."""
    key = (exp.programs_key, exp.identity) if exp.programs_key else None
    jitted = cached(("steps", key), lambda: _jitted_steps(exp)) if key else _jitted_steps(exp)

    def after_check(fn: Callable) -> Callable:
        def call(*args):
            check()
            return fn(*args)
        return call

    return Steps(*(after_check(fn) for fn in jitted))


def _jitted_steps(exp: Experiment) -> Steps:
    exp = dataclasses.replace(exp, data=None)  # what the cache keeps need not hold the data
    seed, trials = int(exp.config.seed), jnp.arange(int(exp.config.trials))
    keys = lambda purpose, level: jax.vmap(lambda t: trial_key(seed, t, purpose, level))(trials)
    init_params = lambda key: exp.init_variables(key)["params"]
    return Steps(
        theta0=jax.jit(lambda: jax.vmap(exp.init_variables)(
            jax.vmap(lambda t: trial_key(seed, t, INIT))(trials))),
        all_true=jax.jit(jax.vmap(masks_lib.ones_like)),
        prune=jax.jit(jax.vmap(lambda p, m, rounds: next_mask(exp, p, m, rounds),
                               in_axes=(0, 0, None)), static_argnums=2),
        rewind=jax.jit(jax.vmap(tickets.rewind)),
        reinit=jax.jit(lambda mask, level: (
            jax.vmap(lambda k, m: tickets.reinit(init_params, k, m))(keys(REINIT, level), mask),
            jax.vmap(exp.init_variables)(keys(REINIT, level))["batch_stats"])),
        random_mask=jax.jit(lambda mask, within, level: jax.vmap(pruning.random_like)(
            keys(RANDOM_MASK, level), mask, within)))


def imp(exp: Experiment, step: Steps, store: Store, train: Callable[..., Trained],
        levels: int | None = None) -> None:
    """Iterative magnitude pruning with its controls, for every trial at once, up to level
    ``levels`` (default ``prune.levels``). A finished level is never computed again, and the runs
    of a trial whose ticket diverged at an earlier level are recorded as skipped, untrained."""
    k, one_shot, rule = exp.retrain_start, bool(exp.config.prune.one_shot), exp.retrain
    theta0 = store.theta0(build=step.theta0)
    for level in range(int(exp.config.prune.levels if levels is None else levels) + 1):
        if store.is_finished(level):
            continue
        if level == 0:  # the dense network from θ₀; with rewinding, θ_k is captured on the way
            mask, theta, start = step.all_true(theta0["params"]), theta0, 0
            capture = int(exp.config.prune.rewind_iteration) or -1
        else:  # prune the last trained ticket (one-shot: the dense one), then retrain it
            source = store.ticket(0 if one_shot else level - 1)
            mask = step.prune(source["trained_params"], source["mask"], level if one_shot else 1)
            theta = (store.theta_rewind() if rule == "weight_rewinding" else
                     {"params": source["trained_params"], "batch_stats":
                      source["trained_batch_stats"]})
            start, capture = k, -1
        runs = {"ticket": (step.rewind(theta["params"], mask), theta["batch_stats"], mask)}
        if level and "reinit" in exp.variants:  # the ticket's mask on a fresh draw from D_θ
            runs["reinit"] = (*step.reinit(mask, level), mask)
        if level and "random_prune" in exp.variants:  # a random mask of the ticket's layer sizes
            within = step.all_true(mask) if rule == "weight_rewinding" else source["mask"]
            random_mask = step.random_mask(mask, within, level)
            runs["random_prune"] = (step.rewind(theta["params"], random_mask),
                                    theta["batch_stats"], random_mask)
        diverged = store.diverged_tickets(before=level)
        trained = train(level, runs, [t for t in range(int(exp.config.trials))
                                      if t not in diverged], start=start, capture=capture)
        records = records_lib.level_records(exp, level, runs, trained, diverged)
        store.save_level(level, records_lib.level_tree(exp, level, runs, trained, k),
                         records, theta0=theta0)
        log_level(exp, store.log, level, records, trained, getattr(train, "rate", None))


def log_level(exp: Experiment, log: Callable[[str], None], level: int, new: list[dict],
              trained: Trained, rate: float | None) -> None:
    """The line that ends a level: density, ticket and control accuracies, time."""
    cfg = exp.config
    tickets_ok = [r for r in new if r["variant"] == "ticket" and r["status"] == "ok"]
    if tickets_ok:
        acc = np.mean([r["test_accuracy_at_early_stop"] for r in tickets_ok])
        es = np.mean([r["early_stop_iteration"] for r in tickets_ok])
        summary = f"ticket test acc {100 * acc:.2f}% at early stop (iteration {es:.0f})"
    else:
        summary = "no ticket finished (diverged or skipped)"
    controls = []
    for variant in exp.variants[1:]:
        ok = [r["test_accuracy_at_early_stop"] for r in new
              if r["variant"] == variant and r["status"] == "ok"]
        if ok:
            controls.append(f"{variant} {100 * np.mean(ok):.2f}%")
    for r in new:
        if r["status"] == "diverged":
            later = "; later levels of its trial are skipped" if r["variant"] == "ticket" else ""
            log(f"WARNING: {r['failure']}{later}")
    eta = f", ~{duration(later_steps(exp, level) / rate)} left" if rate else ""
    log(f"level {level:2d}/{int(cfg.prune.levels)}  density {100 * new[0]['density']:6.2f}%"
        f"  {summary}" + (f"; {', '.join(controls)}" if controls else "")
        + f"  [{trained.seconds:.1f}s{eta}]")


def later_steps(exp: Experiment, level: int) -> int:
    """The model-steps of the levels after ``level``."""
    cfg = exp.config
    return ((int(cfg.prune.levels) - level) * len(exp.variants) * int(cfg.trials)
            * (int(cfg.train.iterations) - exp.retrain_start))


class LevelTrainer:
    """Trains the runs of a level (``imp``'s ``train``): the runs of every trial not skipped, as
    one batch of ``ChunkedTrainer`` on the level's runner (the pruned levels' under fine-tuning)."""

    def __init__(self, exp: Experiment, chunks: ChunkedTrainer, runner: Runner,
                 retrain_runner: Runner):
        self.exp, self.chunks, self.runner, self.retrain_runner = exp, chunks, runner, retrain_runner

    @property
    def rate(self) -> float | None:
        return self.chunks.rate

    def __call__(self, level: int, runs: dict, trials: list[int], *, start: int,
                 capture: int) -> Trained:
        batch, order = level_batch(runs, trials, int(self.exp.config.seed))
        return self.chunks(workdir_lib.progress_checkpoint(level), f"level {level:2d}",
                           self.runner if level == 0 else self.retrain_runner, batch, order,
                           start=start, capture=capture,
                           later_steps=later_steps(self.exp, level),
                           runs=[tensorboard.run_name(level, v, t) for v, t in order])


def stop_checker(stop: Callable[[], int] | None) -> Callable[..., int]:
    """``check_stop(where, raise_=True)``: the signal a stop was asked for with (0 if none),
    agreed by every process; raises ``Stopped`` naming ``where`` when there is one and
    ``raise_``."""
    def check_stop(where: str | None, raise_: bool = True) -> int:
        # With several processes a stop asked for in any of them stops them all, at one point.
        signum = processes.agree_max([stop() if stop else 0])[0]
        if signum and raise_:
            raise Stopped(signum, f"stopped {where or 'before training'}")
        return signum
    return check_stop


def make_runner(exp: Experiment) -> Runner:
    """The ``Runner`` of an experiment, with its ``runtime`` settings."""
    rt = exp.config.runtime
    return Runner(exp, int(rt.devices), data_parallel=bool(rt.data_parallel),
                  matmul_precision=str(rt.matmul_precision),
                  slice_iterations=int(rt.slice_iterations))


def run(config: ml_collections.ConfigDict, workdir: str, log: Callable[[str], None] = print,
        exp: Experiment | None = None, stop: Callable[[], int] | None = None,
        levels: int | None = None, base: Trunk | None = None) -> list[dict]:
    """Run (or resume) the experiment in ``workdir`` up to level ``levels`` (default: all of
    ``prune.levels``); returns the records of its finished levels.

    Finished levels in ``workdir`` are kept; the first unfinished level continues from its
    intra-level checkpoint (or starts again), so the final records equal an uninterrupted run's
    (timing fields aside). The workdir is locked while this runs. ``base``: the dense level 0, θ₀
    and θ_rewind come from that lottery (a branch retraining it another way; ``Store``).

    ``stop`` is polled at safe points (between startup steps, chunks and levels); when it returns
    a signal number, the level's progress is saved (see ``ChunkedTrainer``) and ``Stopped`` raised.
    """
    check_stop = stop_checker(stop)
    # Refused at once if another process is writing there (before loading data for minutes);
    # the lock itself is taken by the Store, once the config and data are known to be good.
    if processes.is_primary():
        workdir_lib.Lock(workdir).refuse_if_held()
    else:  # process 0 prints the progress; the others only their errors
        log = lambda line: None  # noqa: E731
    exp = exp or setup(config)
    check_stop("after loading the data")
    with Store(exp, workdir, log, base=base) as store:
        check_stop("after opening the workdir")
        cfg = exp.config
        runner = make_runner(exp)
        retrain_runner = make_runner(exp.retraining()) if exp.retrain == "fine_tuning" else runner
        last = int(cfg.prune.levels if levels is None else levels)
        log(f"lth_jax: {cfg.model.name} on {exp.dataset_info.name} ({exp.dataset_info.source}), "
            f"{cfg.trials} trial(s), levels 0..{last}, {cfg.train.iterations} iterations, "
            f"variants {', '.join(exp.variants)}"
            + ("" if exp.retrain == "weight_rewinding" else
               f", retrained by {exp.retrain} for {cfg.prune.retrain_iterations}")
            + f"; {len(runner.devices)} {runner.devices[0].platform} device(s), runs batched by "
            f"{runner.batching}"
            f"{', each batch split over the devices' if runner.data_parallel else ''}"
            f"{f' in {processes.count()} processes' if processes.count() > 1 else ''}; "
            f"workdir {workdir}")
        done = [level for level in range(last + 1) if store.is_finished(level)]
        if done:
            kept = [r for r in store.level_records() if r["level"] <= last]
            log(f"resuming: levels {_ranges(done)} already finished ({len(kept)} records kept)")
        chunks = ChunkedTrainer(cfg.runtime, store, log, check_stop, stop)
        imp(exp, steps(exp, lambda: check_stop("before the next level's training")), store,
            LevelTrainer(exp, chunks, runner, retrain_runner), levels=last)
        check_stop("at the end")
        return store.own_records()


def _ranges(levels: list[int]) -> str:
    """[0, 1, 2, 5] -> '0..2, 5'."""
    parts, first = [], levels[0]
    for a, b in zip(levels, levels[1:] + [None]):
        if b != a + 1:
            parts.append(f"{first}..{a}" if a > first else f"{a}")
            first = b
    return ", ".join(parts)
