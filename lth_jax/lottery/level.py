"""Chunked training of a set of runs: progress lines, stops, intra-level checkpoints, resume.

``ChunkedTrainer`` trains R runs (``RunBatch``: params, batch stats, masks and keys with a leading
run axis) as chunks of one compiled program (``runner.Runner.begin``). The lottery trains each
level's runs this way (``train_level``), and every branch trains its runs the same way, so the
manners are the same everywhere: a progress line, a stop within a chunk, a checkpoint every
``runtime.checkpoint_minutes`` and a resume equal to an uninterrupted run.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lth_jax import processes
from lth_jax import train as train_lib
from lth_jax.tensorboard import TAGS, TensorBoardWriter
from lth_jax import workdir as workdir_lib
from lth_jax.lottery.experiment import DATA, NOISE, Stopped, trial_key
from lth_jax.lottery.runner import Runner, Training

PyTree = Any
#: The layout of an intra-level checkpoint's RunState (part of its inputs digest): 2 = with the
#: period's training loss so far (``RunState.period_loss``), which slices need.
PROGRESS_LAYOUT = 2


class RunBatch(NamedTuple):
    """R runs trained together: every field has a leading run axis R."""
    params: PyTree
    batch_stats: PyTree
    masks: PyTree
    data_keys: jax.Array
    noise_keys: jax.Array


class Trained(NamedTuple):
    """What training a batch of runs gave: the result of the runs named in ``order``."""
    result: train_lib.RunResult | None   # None when no run was trained
    order: list[tuple]                   # a label per run, e.g. (variant, trial)
    start: int
    seconds: float


class ProgressStore(Protocol):
    """Where a ``ChunkedTrainer`` keeps its intra-level checkpoints (``store.Folder``); its
    TensorBoard event files go to ``path/tensorboard``."""
    path: str

    def progress(self, name: str, inputs: str) -> tuple[dict, dict] | None: ...

    def save_progress(self, name: str, snapshot: dict, meta: dict) -> None: ...

    def check_disk(self, what: str, need: int) -> None: ...


class ChunkedTrainer:
    """Trains batches of runs as chunks of one compiled program (``Runner.begin``).

    The chunk length follows the clock: each chunk aims at ``runtime.chunk_seconds`` of training
    (whole slices of ``runtime.slice_iterations`` steps, at least one), measured on the previous
    chunk, so that a stop asked for by ``stop`` is honoured within about that time on any device
    (plus an evaluation, when the chunk ends a period; a chunk still running
    ``runtime.stop_wait_seconds`` after the stop is given up, with one process). Between chunks: a
    progress line (at most one per ``runtime.progress_seconds``), the stop check, and every
    ``runtime.checkpoint_minutes`` (0: never) an intra-level checkpoint, also written when a stop
    ends the batch early. A batch with an intra-level checkpoint made from the same inputs
    continues from it.
    """

    def __init__(self, runtime: ml_collections.ConfigDict, store: ProgressStore,
                 log: Callable[[str], None], check_stop: Callable[..., int],
                 stop: Callable[[], int] | None = None):
        self.store, self.log, self.check_stop = store, log, check_stop
        #: With one process, a stop noted (``stop()``) while a chunk runs waits stop_wait_seconds
        #: for it, then gives it up (a long chunk: an evaluation of a big net, or a slow device).
        #: Several processes agree on stops between chunks only, so they always wait.
        self.stop = stop if processes.count() == 1 else None
        self.chunk_seconds = float(runtime.chunk_seconds)
        self.stop_wait_seconds = float(runtime.stop_wait_seconds)
        self.progress_seconds = float(runtime.progress_seconds)
        self.checkpoint_seconds = 60.0 * float(runtime.checkpoint_minutes)
        self.rate: float | None = None  # model-steps/s measured so far (for the ETAs)
        #: Live curves for ``tensorboard --logdir``: process 0 writes them as chunks finish; a
        #: resumed batch sends its curves again and the writer skips the points it has.
        self.live_curves = bool(runtime.get("tensorboard", False))  # the same in every process
        self.tensorboard = TensorBoardWriter(os.path.join(store.path, "tensorboard"),
                                             enabled=self.live_curves and processes.is_primary())

    def __call__(self, name: str, label: str, runner: Runner, batch: RunBatch, order: list[tuple],
                 *, start: int, capture: int = -1, later_steps: int = 0,
                 until: int | None = None, runs: list[str] | None = None,
                 at: Callable[[Training], bool | None] | None = None) -> Trained:
        """Train the runs of ``batch`` from iteration ``start`` to the end of the schedule.

        Args:
          name: the intra-level checkpoint's name in the store (unique per batch).
          label: how progress lines and stops name the batch ("level 3", "trial 0 k=500").
          runner: the devices and programs (its experiment's trainer sets the schedule).
          order: one label per run (len R), kept in ``Trained.order``.
          runs: the TensorBoard run (a folder name under ``tensorboard/``) of each run; default:
            the batch's ``name`` and the run's ``order`` label.
          later_steps: model-steps still to train after this batch (for the whole ETA).
          until: stop after this iteration instead of the end (no intra-level checkpoint: the
            runs are recomputed on resume; e.g. θ_k); ``at(training)`` is then called at every
            multiple of ``eval_every`` on the way, and ends the training early when it returns
            True (e.g. an early-bird ticket found).
        """
        if not order:
            return Trained(None, [], start, 0.0)
        trainer = runner.exp.trainer
        line, label = label, " ".join(label.split())  # progress lines keep the padding
        inputs = _inputs(batch, start, capture)
        saved = None if until is not None else self._resume_point(name, label, inputs, runner,
                                                                   start)
        if until is None:
            state_bytes = (6 * workdir_lib.tree_bytes(_numpy(batch.params))
                           + workdir_lib.tree_bytes(_numpy(batch.masks)))
            self.store.check_disk(label, 3 * state_bytes)  # progress (old + new) and the result
        self.check_stop(f"before {label}")
        training = runner.begin(batch.params, batch.batch_stats, batch.masks, batch.data_keys,
                                batch.noise_keys, start=start, capture=capture,
                                saved=saved[0] if saved else None)
        seconds = float(saved[1]["seconds"]) if saved else 0.0
        if saved:
            self.log(f"{label}: resuming at iteration {start + training.iterations:,} from its "
                     "intra-level checkpoint")
        runs = runs or [f"{name.removeprefix('progress_')}/{'_'.join(map(str, o))}" for o in order]
        self._densities(runs, batch.masks, runner.exp.prunable, start + trainer.eval_every)
        slices = training.slices if until is None else (until - start) // training.slice_iterations
        per_period = trainer.eval_every // training.slice_iterations
        count, saved_at, said_at = 1, time.monotonic(), -math.inf
        saved_iterations = training.iterations if saved else None
        steps, clock = 0, 0.0  # model-steps trained and seconds taken by this process, this batch
        while training.slice < slices:
            if until is not None:  # end chunks at every evaluation (``at`` looks) and at until
                count = min(count, per_period - training.slice % per_period,
                            slices - training.slice)
            t0 = time.monotonic()
            count = training.advance(count, self._poll(label, start, training, saved_iterations))
            elapsed = time.monotonic() - t0
            seconds += elapsed
            steps, clock = steps + len(order) * training.slice_iterations * count, clock + elapsed
            # The batch's rate so far, not the last chunk's: a short last chunk (the remainder
            # and its final evaluation) would make the ETA of the batches after it jump.
            self.rate = steps / max(clock, 1e-9)
            count = max(1, int(self.chunk_seconds / max(elapsed / count, 1e-9)))
            self._curves(runs, training, start, trainer.eval_every)
            now = time.monotonic()
            finished = training.slice >= slices
            # Every process must train and checkpoint alike: the clock-driven choices are agreed
            # (the shortest next chunk; report, save or stop if any process would).
            neg_count, say = processes.agree_max(
                [-count, now - said_at >= self.progress_seconds or finished])
            count = -neg_count
            if say:
                self._progress(line, training, start, len(order), trainer.iterations,
                               slices, later_steps)
                said_at = now
            if at is not None and training.slice % per_period == 0 and at(training):
                break
            if finished:
                break
            stopping = self.check_stop(None, raise_=False)  # (after the progress line it follows)
            save = until is None and processes.agree_max([bool(self.checkpoint_seconds) and (
                bool(stopping) or now - saved_at >= self.checkpoint_seconds)])[0]
            if save:
                self.store.save_progress(name, training.snapshot(),
                                         {"inputs": inputs, "seconds": seconds,
                                          "runs": [list(r) for r in order]})
                saved_at, saved_iterations = now, training.iterations
            if stopping:
                done = start + training.iterations
                kept = ("saved at iteration {:,}".format(done) if save else
                        "not saved (runtime.checkpoint_minutes=0)" if until is None else
                        "recomputed on resume")
                self.check_stop(f"in {label} at iteration {done:,} (progress {kept})")
        return Trained(training.result() if until is None else None, order, start, seconds)

    def _resume_point(self, name: str, label: str, inputs: str, runner: Runner,
                      start: int) -> tuple[dict, dict] | None:
        """The batch's intra-level checkpoint made from the same inputs, if it lies on a slice
        boundary of this runner (else the batch starts again, with a line saying why)."""
        saved = self.store.progress(name, inputs)
        if saved and int(saved[0]["iterations"]) % runner.slice_iterations:
            self.log(f"lth_jax: the intra-level checkpoint of {label} is at iteration "
                     f"{start + int(saved[0]['iterations']):,}, not a multiple of "
                     f"runtime.slice_iterations={runner.slice_iterations}; {label} starts again "
                     "from its beginning")
            return None
        return saved

    def _densities(self, runs: list[str], masks: PyTree, prunable: PyTree, step: int) -> None:
        """Each run's fraction of the prunable weights kept, at its first evaluation's step."""
        if not self.tensorboard.enabled:
            return
        leaves = [np.asarray(x) for x, p in zip(jax.tree.leaves(masks), jax.tree.leaves(prunable))
                  if p]
        for i, run in enumerate(runs):
            kept = sum(int(x[i].sum()) for x in leaves) / max(sum(x[i].size for x in leaves), 1)
            self.tensorboard.add_scalar(run, TAGS["density"], step, kept)

    def _curves(self, runs: list[str], training: Training, start: int, every: int) -> None:
        """The curves computed so far, and the rate, to TensorBoard (written at once). Every
        process gathers the curves (a collective); process 0 writes them."""
        if not self.live_curves:
            return
        curves = training.curves()
        steps = start + every * np.arange(1, curves.val_loss.shape[1] + 1)
        upto = start + training.iterations
        for i, run in enumerate(runs):
            self.tensorboard.add_curves(run, steps, {
                TAGS[key]: getattr(curves, key)[i] for key in
                ("train_loss", "val_loss", "val_accuracy", "test_accuracy")}, upto=upto)
            if self.rate:
                self.tensorboard.add_scalar(run, TAGS["model_steps_per_s"], upto, self.rate)
        self.tensorboard.flush()

    def _poll(self, label: str, start: int, training: Training,
              saved_iterations: int | None) -> Callable[[], None] | None:
        """What ``Training.advance`` polls: gives the chunk up (``Stopped``, abandoned) once a
        stop has waited ``runtime.stop_wait_seconds`` for it."""
        if self.stop is None:
            return None
        noted: list[float] = []

        def poll() -> None:
            signum = self.stop()
            if not signum:
                return
            if not noted:
                noted.append(time.monotonic())
            elif time.monotonic() - noted[0] >= self.stop_wait_seconds:
                kept = ("no progress saved" if saved_iterations is None else
                        f"progress saved at iteration {start + saved_iterations:,}")
                raise Stopped(signum, f"stopped in {label} at iteration "
                              f"{start + training.iterations:,} without waiting for the chunk "
                              f"in flight ({kept})", abandoned=True)
        return poll

    def _progress(self, label: str, training: Training, start: int, runs: int, iterations: int,
                  slices: int, later_steps: int) -> None:
        loss, accuracy = training.best_so_far()
        remaining = (slices - training.slice) * training.slice_iterations * runs
        rate = self.rate or float("nan")
        best = (f"best val loss {np.nanmean(loss):.4f} acc {100 * np.nanmean(accuracy):.2f}%"
                if np.isfinite(loss).any() else "no finite val loss yet")
        self.log(f"{label}  iteration {start + training.iterations:,}/{iterations:,}  {best} "
                 f"(mean of {runs} runs)  {rate:,.0f} model-steps/s  ETA {duration(remaining / rate)}"
                 f" for these runs, {duration((remaining + later_steps) / rate)} in all")


def _inputs(batch: RunBatch, start: int, capture: int) -> str:
    """A digest of what fixes the runs besides their state: masks, data order, noise, start,
    capture, and the RunState's layout (``PROGRESS_LAYOUT``). A checkpoint made from other inputs
    is not resumed."""
    return workdir_lib.digest({
        "mask": _numpy(batch.masks),
        "data": np.asarray(jax.random.key_data(batch.data_keys)),
        "noise": np.asarray(jax.random.key_data(batch.noise_keys)),
        "start": np.int64(start), "capture": np.int64(capture),
        "layout": np.int64(PROGRESS_LAYOUT)})


def level_batch(runs: dict, trials: list[int], seed: int) -> tuple[RunBatch, list[tuple]]:
    """The runs of ``trials`` of every variant in ``runs`` ({variant: (params, batch_stats,
    mask)}, leading trial axis) as one batch, variant after variant, with the trials' own data
    order and noise (keys ``(trial, DATA)`` and ``(trial, NOISE)``); and their (variant, trial)."""
    order = [(v, t) for v in runs for t in trials]
    data_keys = jnp.stack([trial_key(seed, t, DATA) for _, t in order]) if order else None
    noise_keys = jnp.stack([trial_key(seed, t, NOISE) for _, t in order]) if order else None
    if not order:
        return RunBatch(None, None, None, None, None), order
    (params, stats, masks) = _gather_runs(tuple(runs.values()), np.array(trials))
    return RunBatch(params, stats, masks, data_keys, noise_keys), order


@jax.jit
def _gather_runs(runs: tuple, pick: jax.Array) -> tuple:
    """The (params, batch_stats, mask) of the trials ``pick`` of every variant in ``runs`` (a
    tuple of such triples, leading trial axis), variant after variant. One program: eagerly,
    each leaf's gather and concatenation is a program of its own, each traced and lowered."""
    return tuple(jax.tree.map(lambda *xs: jnp.concatenate([x[pick] for x in xs]),
                              *[r[i] for r in runs]) for i in range(3))


def duration(seconds: float) -> str:
    """A duration for a progress line: "42 s", "3.5 min", "2.1 h", or "?"."""
    if not np.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _numpy(tree: PyTree) -> PyTree:
    return jax.tree.map(np.asarray, tree)
