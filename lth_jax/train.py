"""Masked training: the optimizer, the masked train step, and a training run in chunks.

A training run (all iterations, with an evaluation every ``eval_every`` iterations) is a loop over
slices (a whole evaluation period, or a fixed part of one), each a ``lax.scan`` over its steps.
``advance`` trains any number of slices of a run from a ``RunState`` (params, optimizer state,
best-so-far params, curves so far) and returns the next one, so a long run is a sequence of calls
of one compiled program (``make_chunk_fn``) that can stop, report and checkpoint between chunks,
and continue bit for bit. ``make_chunk_fn`` and
``make_run_fn`` (a whole run at once) batch a leading *run* axis, so the trials and controls of a
pruning level train together; the mask is a traced argument, so every level reuses the same
compiled program.

Masks are enforced inside the step, three times: the forward pass sees ``m ⊙ θ``, the gradient is
masked, and the params after the update are masked again. So a pruned weight is exactly 0.0 after
every step, whatever the optimizer state (momentum, Adam moments, weight decay) holds.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lth_jax import data as data_lib
from lth_jax import masks as masks_lib

PyTree = Any


# ----------------------------------------------------------------------------- optimizer

def learning_rate_schedule(cfg: ml_collections.ConfigDict) -> Callable[[jax.Array], jax.Array]:
    """``step -> lr``: linear warmup, then piecewise-constant drops.

    ``lr(t) = η · min(1, (t + 1) / W) · γ^{#{d ∈ drops : d ≤ t}}`` with η = ``learning_rate``,
    W = ``warmup_iterations`` (no warmup when 0), γ = ``lr_drop_factor``. ``t`` is the absolute
    training iteration (a rewound run that starts at iteration k continues the schedule at k).
    """
    base = float(cfg.learning_rate)
    warmup = int(cfg.warmup_iterations)
    drops = jnp.asarray(sorted(int(d) for d in cfg.lr_drops), jnp.int32)
    factor = float(cfg.lr_drop_factor)

    def schedule(step):
        step = jnp.asarray(step, jnp.int32)
        lr = jnp.float32(base)
        if warmup > 0:
            lr = lr * jnp.minimum(1.0, (step + 1).astype(jnp.float32) / warmup)
        if drops.size:
            lr = lr * jnp.float32(factor) ** jnp.sum(step >= drops).astype(jnp.float32)
        return lr

    return schedule


def make_direction(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The optimizer without its learning rate: the update is ``-lr(t) · direction``.

    * ``adam``: Adam's ``m̂ / (√v̂ + ε)`` (b1 0.9, b2 0.999, ε 1e-8);
    * ``momentum``: ``v ← μ v + g`` (heavy ball, as in PyTorch's SGD);
    * ``sgd``: ``g``.

    Weight decay λ is L2 regularisation added to the gradient first (``g + λ θ``), as in the paper's
    SGD setups (the coupled form, not AdamW).
    """
    parts = []
    if float(cfg.weight_decay) > 0:
        parts.append(optax.add_decayed_weights(float(cfg.weight_decay)))
    if cfg.optimizer == "adam":
        parts.append(optax.scale_by_adam())
    elif cfg.optimizer == "momentum":
        parts.append(optax.trace(decay=float(cfg.momentum), nesterov=False))
    elif cfg.optimizer != "sgd":
        raise ValueError(f"config.train.optimizer: unknown optimizer {cfg.optimizer!r}")
    return optax.chain(*parts) if parts else optax.identity()


# ----------------------------------------------------------------------------- the step

def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy; logits [B, C] float, labels [B] int -> [B] float32."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


class TrainState(NamedTuple):
    """What a training run carries from step to step (one run; stacked along axis 0 when batched)."""
    params: PyTree
    batch_stats: PyTree  # {} for models without batch norm
    opt_state: PyTree


def _variables(params, batch_stats):
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


@dataclasses.dataclass(frozen=True)
class Trainer:
    """The static pieces of a training run: model, optimizer and sizes. Hashable by identity.

    Attributes:
      model: a Flax module called as ``model.apply(variables, x, train=...)``.
      direction: optimizer direction (``make_direction``); lr: schedule (``learning_rate_schedule``).
      iterations, eval_every, batch_size, eval_batch_size: sizes (Python ints).
      augment: whether training batches get flip + pad-and-crop augmentation.
      test_every: measure the test curve every this many iterations (a multiple of eval_every; the
        paper's protocol is every evaluation); 0 = never (the test accuracy at the early-stopping
        iteration and at the end is measured in any case).
      batch_sharding: optional ``jax.sharding.Sharding`` of a training batch (data parallelism): the
        batch is split over its devices and XLA inserts the gradient all-reduce; None = no constraint.
      slice_steps: the iterations of one *slice*, the unit a chunk of ``advance`` counts in: a
        divisor of ``eval_every`` (0 = ``eval_every``: a slice is a whole evaluation period).
        Shorter slices let a run stop, report and checkpoint within an evaluation period; the
        numbers do not depend on it.
    """
    model: nn.Module
    direction: optax.GradientTransformation
    lr: Callable[[jax.Array], jax.Array]
    iterations: int
    eval_every: int
    batch_size: int
    eval_batch_size: int
    augment: bool
    test_every: int = 0
    batch_sharding: Any = None
    slice_steps: int = 0

    @property
    def slice_iterations(self) -> int:
        """The iterations of one slice (``slice_steps``, or ``eval_every`` when 0)."""
        steps = self.slice_steps or self.eval_every
        if self.eval_every % steps:
            raise ValueError(f"slice_steps={steps} does not divide eval_every={self.eval_every}")
        return steps

    def init_state(self, params: PyTree, batch_stats: PyTree) -> TrainState:
        """A fresh optimizer state for every training run."""
        return TrainState(params, batch_stats, self.direction.init(params))

    def step(self, state: TrainState, mask: PyTree, images: jax.Array, labels: jax.Array,
             step: jax.Array, dropout_key: jax.Array) -> tuple[TrainState, jax.Array]:
        """One masked SGD/Adam step on a batch. Pure. Returns the new state and the mean loss.

        ``θ ← m ⊙ (θ̃ - lr(t) · d(m ⊙ ∇L(θ̃)))`` with ``θ̃ = m ⊙ θ`` and ``d`` the optimizer direction:
        the forward pass, the gradient, weight decay and the update all see only the survivors.
        """
        params = masks_lib.apply(state.params, mask)

        def loss_fn(params):
            variables = _variables(params, state.batch_stats)
            if state.batch_stats:
                logits, updated = self.model.apply(variables, images, train=True,
                                                   rngs={"dropout": dropout_key},
                                                   mutable=["batch_stats"])
                new_stats = updated["batch_stats"]
            else:
                logits = self.model.apply(variables, images, train=True, rngs={"dropout": dropout_key})
                new_stats = state.batch_stats
            return jnp.mean(cross_entropy(logits, labels)), new_stats

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        grads = masks_lib.apply(grads, mask)
        direction, opt_state = self.direction.update(grads, state.opt_state, params)
        lr = self.lr(step)
        params = jax.tree.map(lambda p, d: p - lr * d.astype(p.dtype), params, direction)
        return TrainState(masks_lib.apply(params, mask), new_stats, opt_state), loss

    def evaluate(self, params: PyTree, batch_stats: PyTree, mask: PyTree, split: "EvalSplit"
                 ) -> tuple[jax.Array, jax.Array]:
        """(mean loss, accuracy) of ``m ⊙ θ`` on a padded split, in chunks of ``eval_batch_size``."""
        variables = _variables(masks_lib.apply(params, mask), batch_stats)

        def chunk(args):
            x, y, w = args
            logits = self.model.apply(variables, x, train=False)
            correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
            return jnp.sum(cross_entropy(logits, y) * w), jnp.sum(correct * w)

        losses, corrects = jax.lax.map(chunk, (split.images, split.labels, split.weights))
        count = jnp.maximum(jnp.sum(split.weights), 1.0)
        return jnp.sum(losses) / count, jnp.sum(corrects) / count


class EvalSplit(NamedTuple):
    """An evaluation split reshaped into chunks: images [n_chunks, chunk, H, W, C], labels and
    weights [n_chunks, chunk]; padding examples have weight 0."""
    images: jax.Array
    labels: jax.Array
    weights: jax.Array


def chunk_split(images: np.ndarray, labels: np.ndarray, chunk: int) -> EvalSplit:
    """Pad a split to a multiple of ``chunk`` (weight 0 for the padding) and reshape into chunks."""
    n = len(labels)
    chunk = max(1, min(chunk, max(n, 1)))
    n_chunks = max(1, -(-n // chunk))
    pad = n_chunks * chunk - n
    images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
    labels = np.concatenate([labels, np.zeros((pad,), labels.dtype)])
    weights = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    return EvalSplit(images.reshape((n_chunks, chunk) + images.shape[1:]),
                     labels.reshape(n_chunks, chunk), weights.reshape(n_chunks, chunk))


class DeviceData(NamedTuple):
    """The dataset on the device: training arrays and the chunked evaluation splits."""
    train_images: jax.Array
    train_labels: jax.Array
    validation: EvalSplit
    test: EvalSplit


def device_data(dataset: data_lib.Dataset, eval_batch_size: int) -> DeviceData:
    """Put a loaded dataset on the device in the layout the training program reads."""
    to = lambda tree: jax.tree.map(jnp.asarray, tree)
    return DeviceData(
        jnp.asarray(dataset.train_images), jnp.asarray(dataset.train_labels),
        to(chunk_split(dataset.validation_images, dataset.validation_labels, eval_batch_size)),
        to(chunk_split(dataset.test_images, dataset.test_labels, eval_batch_size)))


# ----------------------------------------------------------------------------- a run, in chunks

class RunResult(NamedTuple):
    """The outcome of one training run (arrays gain a leading run axis when batched).

    Curves have one entry per evaluation, at iterations ``start + eval_every · (1..P)``; the test
    curve is NaN where the test set was not evaluated (see ``Trainer.test_every``).
    ``best_period`` is the evaluation with the minimum validation loss (the early-stopping point;
    the first one on ties, -1 if no loss was finite), and ``best_test_loss``/``best_test_accuracy``
    are measured on the params of that evaluation, and ``final_test_*`` on the final params,
    whatever ``test_every``.
    ``nonfinite_step`` is the first iteration whose training loss was NaN/inf, or -1, and
    ``initial_loss`` the training loss of the run's first step (the reference of ``diverged``).
    ``captured_*`` hold params and batch_stats after ``capture_iteration`` (θ_k for rewinding), or
    the initial ones when no capture was asked for.
    """
    params: PyTree
    batch_stats: PyTree
    train_loss: jax.Array
    val_loss: jax.Array
    val_accuracy: jax.Array
    test_loss: jax.Array
    test_accuracy: jax.Array
    best_period: jax.Array
    best_test_loss: jax.Array
    best_test_accuracy: jax.Array
    final_test_loss: jax.Array
    final_test_accuracy: jax.Array
    nonfinite_step: jax.Array
    captured_params: PyTree
    captured_batch_stats: PyTree
    initial_loss: jax.Array


class Curves(NamedTuple):
    """A run's evaluation curves, one entry per evaluation period; NaN where not measured (yet)."""
    train_loss: jax.Array     # mean training loss over the period's steps
    val_loss: jax.Array
    val_accuracy: jax.Array
    test_loss: jax.Array
    test_accuracy: jax.Array


class RunState(NamedTuple):
    """Everything a training run carries from one chunk of slices to the next.

    With it, the run's mask and its two keys, a run continues exactly (bit for bit) as if it had
    never stopped: the data order and the noise depend only on the keys and the absolute iteration.
    Arrays gain a leading run axis when batched.
    """
    train: TrainState
    curves: Curves
    period_loss: jax.Array       # the sum of the current period's training losses so far
    initial_loss: jax.Array      # the training loss of the run's first step (NaN before it)
    nonfinite_step: jax.Array    # the first iteration with a non-finite training loss, or -1
    best_val_loss: jax.Array     # the minimum validation loss so far (inf before the first)
    best_period: jax.Array       # its evaluation period, or -1
    best_params: PyTree          # the params and batch stats there (the early-stopping point)
    best_batch_stats: PyTree
    captured_params: PyTree      # θ_k after capture_iteration (the initial ones until then)
    captured_batch_stats: PyTree
    final: jax.Array             # [best test loss, best test acc, final test loss, final test acc]:
                                 # measured by the chunk that ends the run, NaN until then


def num_periods(trainer: Trainer, start: int = 0) -> int:
    """How many evaluation periods a run from iteration ``start`` has."""
    return (trainer.iterations - start) // trainer.eval_every


def num_slices(trainer: Trainer, start: int = 0) -> int:
    """How many slices (``Trainer.slice_iterations`` each) a run from iteration ``start`` has."""
    return num_periods(trainer, start) * (trainer.eval_every // trainer.slice_iterations)


def init_run(trainer: Trainer, params: PyTree, batch_stats: PyTree, start: int = 0) -> RunState:
    """The state of a run about to train ``params`` from iteration ``start`` (fresh optimizer)."""
    nan = jnp.full((num_periods(trainer, start),), jnp.nan, jnp.float32)
    return RunState(train=trainer.init_state(params, batch_stats), curves=Curves(*[nan] * 5),
                    period_loss=jnp.float32(0.0),
                    initial_loss=jnp.float32(jnp.nan), nonfinite_step=jnp.int32(-1),
                    best_val_loss=jnp.float32(jnp.inf), best_period=jnp.int32(-1),
                    best_params=params, best_batch_stats=batch_stats,
                    captured_params=params, captured_batch_stats=batch_stats,
                    final=jnp.full((4,), jnp.nan, jnp.float32))


def advance(trainer: Trainer, data: DeviceData, state: RunState, mask: PyTree,
            data_key: jax.Array, noise_key: jax.Array, first: jax.Array, count: jax.Array, *,
            start: int = 0, capture_iteration: int = -1) -> RunState:
    """Train slices ``first .. first + count - 1`` of a run from iteration ``start``.

    Pure; one run (vmap or map it for several). A slice is ``trainer.slice_iterations`` steps
    (a divisor of ``eval_every``; by default a whole evaluation period). ``first`` and ``count``
    may be traced, so one compiled program trains chunks of any length (clipped to the run's
    slices). The chunk that reaches the last slice also measures the test set on the best and the
    final params.

    The data order depends only on ``data_key``: step ``t`` uses
    ``data.batch_indices(data_key, t, ...)`` (slice ``t mod S`` of the permutation of epoch
    ``t // S``), so a run that starts at iteration k sees the same batches as the first run did
    from k on, and a run continued from a ``RunState`` sees the batches it would have seen.
    ``noise_key`` drives dropout and augmentation (folded with the step).

    Every ``eval_every`` iterations (in the slice that ends a period) the validation loss and
    accuracy are measured, and the params with the lowest validation loss so far are kept (a
    select per evaluation), so the test accuracy at the early-stopping iteration is exact even when
    the test curve is measured more sparsely. The period's training losses are summed step by step
    into ``state.period_loss`` (one float32 addition per step, in step order), so the curves are
    the same bits however the period was cut into slices and chunks.

    Args:
      start, capture_iteration: Python ints; ``capture_iteration`` must be a multiple of
        ``eval_every`` in ``(start, iterations)`` to capture θ_k, else nothing is captured.
    """
    n_train = data.train_labels.shape[0]
    bs = trainer.batch_size
    steps_per_slice = trainer.slice_iterations
    per_period = trainer.eval_every // steps_per_slice
    slices = num_slices(trainer, start)
    capture_period = (capture_iteration - start) // trainer.eval_every - 1 \
        if capture_iteration > start else -1
    # test_ratio must agree with tested_evaluations().
    test_ratio = max(1, trainer.test_every // trainer.eval_every) if trainer.test_every else 0

    def one_step(carry, xs):
        train, bad, initial, total = carry
        step, idx = xs
        images, labels = data.train_images[idx], data.train_labels[idx]
        if trainer.batch_sharding is not None:
            images = jax.lax.with_sharding_constraint(images, trainer.batch_sharding)
            labels = jax.lax.with_sharding_constraint(labels, trainer.batch_sharding)
        if trainer.augment:
            images = data_lib.augment(jax.random.fold_in(noise_key, 2 * step + 1), images)
        train, loss = trainer.step(train, mask, images, labels, step,
                                   jax.random.fold_in(noise_key, 2 * step))
        bad = jnp.where((bad < 0) & ~jnp.isfinite(loss), step, bad)
        initial = jnp.where(step == start, loss, initial)
        return (train, bad, initial, total + loss), None

    def test_eval(params, batch_stats):
        return trainer.evaluate(params, batch_stats, mask, data.test)

    def evaluation(period, s):
        """The end of period ``period``: its curves entry, the best-so-far and θ_k selects."""
        train = s.train
        val_loss, val_acc = trainer.evaluate(train.params, train.batch_stats, mask, data.validation)
        nan = jnp.full((), jnp.nan, jnp.float32)
        if test_ratio == 1:
            test_loss, test_acc = test_eval(train.params, train.batch_stats)
        elif test_ratio > 1:  # `period` is not batched, so this stays a real branch under vmap
            test_loss, test_acc = jax.lax.cond((period + 1) % test_ratio == 0, test_eval,
                                               lambda *_: (nan, nan), train.params, train.batch_stats)
        else:
            test_loss = test_acc = nan
        values = (s.period_loss / trainer.eval_every, val_loss, val_acc, test_loss, test_acc)
        curves = Curves(*(curve.at[period].set(value) for curve, value in zip(s.curves, values)))
        better = val_loss < s.best_val_loss  # strict: the first minimum wins; NaN never does
        pick = lambda take, new, old: jax.tree.map(lambda a, b: jnp.where(take, a, b), new, old)
        best_params, best_stats = pick(better, (train.params, train.batch_stats),
                                       (s.best_params, s.best_batch_stats))
        captured = (s.captured_params, s.captured_batch_stats)
        if capture_period >= 0:
            captured = pick(period == capture_period, (train.params, train.batch_stats), captured)
        return s._replace(curves=curves, period_loss=jnp.zeros_like(s.period_loss),
                          best_val_loss=jnp.where(better, val_loss, s.best_val_loss),
                          best_period=jnp.where(better, period, s.best_period),
                          best_params=best_params, best_batch_stats=best_stats,
                          captured_params=captured[0], captured_batch_stats=captured[1])

    def one_slice(index, s):
        period, within = index // per_period, index % per_period
        steps = start + index * steps_per_slice + jnp.arange(steps_per_slice, dtype=jnp.int32)
        # The batch indices of the whole slice at once: one vectorised permutation evaluation
        # instead of one per step.
        indices = jax.vmap(lambda t: data_lib.batch_indices(data_key, t, n_train, bs))(steps)
        (train, bad, initial, total), _ = jax.lax.scan(
            one_step, (s.train, s.nonfinite_step, s.initial_loss, s.period_loss), (steps, indices))
        s = s._replace(train=train, initial_loss=initial, nonfinite_step=bad, period_loss=total)
        if per_period == 1:
            return evaluation(period, s)
        # `index` is not batched, so this stays a real branch under vmap.
        return jax.lax.cond(within == per_period - 1, evaluation, lambda _, s: s, period, s)

    first = jnp.asarray(first, jnp.int32)
    end = jnp.minimum(first + jnp.asarray(count, jnp.int32), slices)
    state = jax.lax.fori_loop(first, end, one_slice, state)

    def finish(s):
        best = test_eval(s.best_params, s.best_batch_stats)
        final = test_eval(s.train.params, s.train.batch_stats)
        return s._replace(final=jnp.stack([*best, *final]).astype(jnp.float32))

    # `end` is not batched either: the test passes run only in the chunk that ends the run.
    return jax.lax.cond(end >= slices, finish, lambda s: s, state)


def run_result(state: RunState) -> RunResult:
    """The RunResult of a finished run's state (batched or not)."""
    final = [state.final[..., i] for i in range(4)]
    return RunResult(state.train.params, state.train.batch_stats, *state.curves, state.best_period,
                     *final, state.nonfinite_step, state.captured_params,
                     state.captured_batch_stats, state.initial_loss)


def train_run(trainer: Trainer, data: DeviceData, params: PyTree, batch_stats: PyTree,
              mask: PyTree, data_key: jax.Array, noise_key: jax.Array, *, start: int = 0,
              capture_iteration: int = -1) -> RunResult:
    """Train ``m ⊙ θ`` from iteration ``start`` to ``trainer.iterations`` in one go: ``advance``
    over all evaluation periods (see there for the data order, evaluation and capture)."""
    state = init_run(trainer, params, batch_stats, start)
    return run_result(advance(trainer, data, state, mask, data_key, noise_key, 0,
                              num_slices(trainer, start),
                              start=start, capture_iteration=capture_iteration))


def diverged(train_loss: np.ndarray, initial_loss: float, num_classes: int) -> int:
    """The rule for a finite blow-up: the index of the first evaluation period whose mean training
    loss exceeds ``DIVERGENCE_FACTOR · max(initial_loss, ln num_classes)``, or -1.

    ``ln C`` is the loss of a uniform guess over C classes, so the bound is at least ten times
    worse than guessing, averaged over a whole period (a single bad batch cannot trip it). A
    non-finite loss is caught separately (``RunResult.nonfinite_step``). The recorded
    LeNet-300-100 experiment stays far below the bound (tests/test_divergence.py reads every one of
    its records).
    """
    bound = DIVERGENCE_FACTOR * max(float(initial_loss) if np.isfinite(initial_loss) else 0.0,
                                    math.log(max(num_classes, 2)))
    over = np.flatnonzero(np.asarray(train_loss, np.float64) > bound)
    return int(over[0]) if over.size else -1


DIVERGENCE_FACTOR = 10.0


def eval_iterations(trainer: Trainer, start: int = 0) -> np.ndarray:
    """The iterations at which a run from ``start`` evaluates: start + eval_every·(1..P)."""
    return np.arange(start + trainer.eval_every, trainer.iterations + 1, trainer.eval_every)


def tested_evaluations(trainer: Trainer, start: int = 0) -> np.ndarray:
    """bool per evaluation of ``eval_iterations``: whether the test set was measured there."""
    periods = len(eval_iterations(trainer, start))
    if not trainer.test_every:
        return np.zeros(periods, bool)
    ratio = max(1, trainer.test_every // trainer.eval_every)
    return (np.arange(periods) + 1) % ratio == 0


def early_stopping(val_loss: np.ndarray, iterations: np.ndarray) -> tuple[int, int]:
    """(index, iteration) of the minimum validation loss; the first one on ties. NaN never wins."""
    losses = np.where(np.isfinite(val_loss), val_loss, np.inf)
    index = int(np.argmin(losses))
    return index, int(iterations[index])


def make_run_fn(trainer: Trainer, *, start: int = 0, capture_iteration: int = -1,
                batching: str = "vmap", mesh: jax.sharding.Mesh | None = None
                ) -> Callable[..., RunResult]:
    """``train_run`` over a leading run axis, jitted (and sharded over ``mesh``'s ``"runs"`` axis).

    The returned function takes ``(data, params, batch_stats, mask, data_key, noise_key)`` where
    every argument but ``data`` has a leading axis R (the runs: trials × variants) and returns a
    ``RunResult`` with leading axis R. One compilation per (trainer, start, R, shapes).

    ``batching``: ``"vmap"`` trains the runs in lockstep as one batched computation (best on
    accelerators, where it fills the chip); ``"map"`` trains them one after another inside the same
    program (``lax.map``; best on CPUs, where batched small matmuls run slower than plain ones).
    Both give the same numbers up to floating-point reassociation.

    With a ``mesh``, R must be a multiple of the mesh size; each device trains its own slice of the
    runs (``shard_map``: no communication between devices during training), the data is
    replicated on every device.
    """
    if batching not in ("vmap", "map"):
        raise ValueError(f"batching must be 'vmap' or 'map', got {batching!r}")

    def local(data, params, batch_stats, mask, data_key, noise_key):
        run = lambda p, s, m, dk, nk: train_run(trainer, data, p, s, m, dk, nk, start=start,
                                                capture_iteration=capture_iteration)
        if batching == "vmap":
            return jax.vmap(run)(params, batch_stats, mask, data_key, noise_key)
        return jax.lax.map(lambda args: run(*args), (params, batch_stats, mask, data_key, noise_key))

    if mesh is None:
        return jax.jit(local)
    runs = jax.sharding.PartitionSpec("runs")
    replicated = jax.sharding.PartitionSpec()
    sharded = jax.shard_map(local, mesh=mesh, in_specs=(replicated,) + (runs,) * 5,
                            out_specs=runs, check_vma=False)
    return jax.jit(sharded)


def make_chunk_fn(trainer: Trainer, *, start: int = 0, capture_iteration: int = -1,
                  batching: str = "vmap", mesh: jax.sharding.Mesh | None = None
                  ) -> Callable[..., RunState]:
    """``advance`` over a leading run axis, jitted (and sharded over ``mesh``'s ``"runs"`` axis).

    The returned function takes ``(data, state, mask, data_key, noise_key, first, count)``: every
    argument but ``data`` and the two int32 scalars ``first``/``count`` (the chunk's slices) has a
    leading axis R, and returns the next ``RunState`` (the input state is donated). One compilation
    per (trainer, start, R, shapes) serves every chunk. ``batching`` and ``mesh``: as in
    ``make_run_fn``.
    """
    if batching not in ("vmap", "map"):
        raise ValueError(f"batching must be 'vmap' or 'map', got {batching!r}")

    def local(data, state, mask, data_key, noise_key, first, count):
        run = lambda s, m, dk, nk: advance(trainer, data, s, m, dk, nk, first, count, start=start,
                                           capture_iteration=capture_iteration)
        if batching == "vmap":
            return jax.vmap(run)(state, mask, data_key, noise_key)
        return jax.lax.map(lambda args: run(*args), (state, mask, data_key, noise_key))

    if mesh is None:
        return jax.jit(local, donate_argnums=1)
    runs = jax.sharding.PartitionSpec("runs")
    replicated = jax.sharding.PartitionSpec()
    sharded = jax.shard_map(local, mesh=mesh, in_specs=(replicated,) + (runs,) * 4 + (replicated,) * 2,
                            out_specs=runs, check_vma=False)
    return jax.jit(sharded, donate_argnums=1)


def make_trainer(model: nn.Module, train_cfg: ml_collections.ConfigDict, augment: bool,
                 batch_sharding: Any = None) -> Trainer:
    """A Trainer from ``config.train`` (``batch_sharding``: see ``Trainer``)."""
    return Trainer(model=model, direction=make_direction(train_cfg),
                   lr=learning_rate_schedule(train_cfg), iterations=int(train_cfg.iterations),
                   eval_every=int(train_cfg.eval_every), batch_size=int(train_cfg.batch_size),
                   eval_batch_size=int(train_cfg.eval_batch_size), augment=bool(augment),
                   test_every=int(train_cfg.eval_every) * int(train_cfg.test_every_evals),
                   batch_sharding=batch_sharding)


def constant_schedule(rate: float) -> Callable[[jax.Array], jax.Array]:
    """``step -> rate`` for every step (fine-tuning at a schedule's final learning rate)."""
    return lambda step: jnp.full((), rate, jnp.float32)
