"""Instability analysis by linear mode connectivity (Frankle et al., ICML 2020).

A state (params, batch stats, mask, start iteration k) is *stable* when two copies of it, trained to
the end with different SGD noise (data order, dropout, augmentation) and everything else equal, land
in one linearly connected basin: the error does not rise along the straight line between the two
results. The measure is the **error barrier**

    B = max_α E(θ_α) − (E(θ_0) + E(θ_1)) / 2,    θ_α = (1 − α) θ_A + α θ_B,  α ∈ {0, 1/(n−1), …, 1},

with E the error (1 − accuracy) of ``m ⊙ θ_α`` on an evaluation split. B = 0 when the path never
rises above its ends (then also for identical copies); the paper calls a state stable when B ≈ 0
(it uses < 2% error).

Batch norm: the running statistics of an interpolated network are not the interpolation of the two
networks' statistics, so at every point (endpoints included) they are re-estimated: the mean and
variance of every batch-norm layer are averaged over ``bn_batches`` training batches of the
interpolated network in training mode (the procedure of Izmailov et al.'s SWA that the paper follows).
Networks without batch norm are evaluated as they are, so the curve's endpoints equal the two runs'
own evaluations exactly.

Everything here is pure and jittable; the two copies train as two runs of one program
(``train.make_run_fn``), like the trials of a level.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lth_jax import data as data_lib
from lth_jax import masks as masks_lib
from lth_jax import train as train_lib
from lth_jax.models.vgg import BN_MOMENTUM

PyTree = Any


def interpolate(a: PyTree, b: PyTree, alpha: jax.Array | float) -> PyTree:
    """``(1 − α)·a + α·b`` leaf by leaf (two PyTrees of one structure; α a scalar). Pure."""
    return jax.tree.map(lambda x, y: (1 - alpha) * x + alpha * y, a, b)


def error_barrier(errors: jax.Array | np.ndarray) -> jax.Array:
    """``max(errors) − (errors[0] + errors[-1]) / 2`` along the last axis (errors at α = 0 … 1)."""
    errors = jnp.asarray(errors)
    return jnp.max(errors, axis=-1) - (errors[..., 0] + errors[..., -1]) / 2


def reestimate_batch_stats(trainer: train_lib.Trainer, data: train_lib.DeviceData,
                           params: PyTree, batch_stats: PyTree, mask: PyTree, key: jax.Array,
                           num_batches: int) -> PyTree:
    """Batch-norm statistics of ``m ⊙ θ`` averaged over ``num_batches`` random training batches.

    Each batch's mean and variance are read off Flax's running-average update started from zeros
    (``new = (1 − momentum) · batch_statistic``), then averaged with equal weights. Returns
    ``batch_stats`` unchanged (``{}``) for networks without batch norm. Pure.
    """
    if not batch_stats:
        return batch_stats
    zeros = jax.tree.map(jnp.zeros_like, batch_stats)
    variables = {"params": masks_lib.apply(params, mask), "batch_stats": zeros}
    n = data.train_labels.shape[0]

    def one(i):
        idx = data_lib.batch_indices(key, i, n, trainer.batch_size)
        _, updated = trainer.model.apply(variables, data.train_images[idx], train=True,
                                         rngs={"dropout": jax.random.fold_in(key, i)},
                                         mutable=["batch_stats"])
        return jax.tree.map(lambda s: s / (1 - BN_MOMENTUM), updated["batch_stats"])

    stats = jax.lax.map(one, jnp.arange(num_batches, dtype=jnp.int32))
    return jax.tree.map(lambda s: jnp.mean(s, axis=0), stats)


class PathCurve(NamedTuple):
    """Loss and error of ``m ⊙ θ_α`` at each α (arrays of shape [points]); ``barrier`` scalar."""
    alphas: jax.Array
    loss: jax.Array
    error: jax.Array
    barrier: jax.Array


def linear_path(trainer: train_lib.Trainer, data: train_lib.DeviceData, split: train_lib.EvalSplit,
                a: tuple[PyTree, PyTree], b: tuple[PyTree, PyTree], mask: PyTree, *,
                points: int = 11, bn_key: jax.Array | None = None, bn_batches: int = 20
                ) -> PathCurve:
    """Evaluate ``points`` evenly spaced networks on the segment from ``a`` to ``b``.

    Args:
      a, b: ``(params, batch_stats)`` of the two ends (``batch_stats`` ``{}`` without batch norm).
      split: the evaluation split (``data.validation`` or ``data.test``).
      bn_key, bn_batches: the training batches on which batch-norm statistics are re-estimated at
        every point (networks with batch norm only; ``bn_key`` defaults to ``key(0)``).
    Pure; jit it (``points`` and ``bn_batches`` static).
    """
    if points < 2:
        raise ValueError(f"points must be >= 2 (the two ends), got {points}")
    bn_key = jax.random.key(0) if bn_key is None else bn_key
    alphas = jnp.linspace(0.0, 1.0, points, dtype=jnp.float32)

    def at(alpha):
        params = interpolate(a[0], b[0], alpha)
        stats = interpolate(a[1], b[1], alpha)
        stats = reestimate_batch_stats(trainer, data, params, stats, mask, bn_key, bn_batches)
        return trainer.evaluate(params, stats, mask, split)

    loss, accuracy = jax.lax.map(at, alphas)
    error = 1.0 - accuracy
    return PathCurve(alphas, loss, error, error_barrier(error))


class Instability(NamedTuple):
    """The outcome of :func:`instability`: the path between the two copies and the copies' runs
    (``runs`` is a ``train.RunResult`` with a leading axis of 2)."""
    curve: PathCurve
    runs: train_lib.RunResult


def instability(trainer: train_lib.Trainer, data: train_lib.DeviceData, params: PyTree,
                batch_stats: PyTree, mask: PyTree, *, start: int, data_keys: jax.Array,
                noise_keys: jax.Array, points: int = 11, split: str = "test",
                bn_batches: int = 20, batching: str = "vmap",
                mesh: jax.sharding.Mesh | None = None) -> Instability:
    """Train two copies of ``(m ⊙ θ, batch_stats)`` from iteration ``start`` to the end and measure
    the error barrier between them.

    Args:
      data_keys, noise_keys: ``[2]`` keys, one per copy: the SGD noise that tells the copies apart
        (equal keys give identical copies and a barrier of exactly 0 on a CPU).
      start: the iteration k the state belongs to (the learning-rate schedule continues from it).
      split: ``"test"`` or ``"validation"``.
      batching, mesh: how the two copies share the program (``train.make_run_fn``); with a
        ``mesh`` of 1 or 2 devices (axis ``"runs"``) each device trains its copies.
    Returns the curve and both runs' results. Host-side driver around two jitted programs.
    """
    stack = lambda tree: jax.tree.map(lambda x: jnp.stack([x, x]), tree)
    args = (stack(params), stack(batch_stats), stack(mask), data_keys, noise_keys)
    run_fn = train_lib.make_run_fn(trainer, start=start, batching=batching, mesh=mesh)
    if mesh is not None:
        from jax.sharding import NamedSharding, PartitionSpec
        data = jax.device_put(data, NamedSharding(mesh, PartitionSpec()))
        args = jax.device_put(args, NamedSharding(mesh, PartitionSpec("runs")))
    runs = jax.tree.map(np.asarray, run_fn(data, *args))
    if mesh is not None:
        data = jax.device_put(data, mesh.devices.flat[0])
    ends = [(jax.tree.map(lambda x: x[i], runs.params),
             jax.tree.map(lambda x: x[i], runs.batch_stats)) for i in (0, 1)]
    eval_split = {"test": data.test, "validation": data.validation}[split]
    path = jax.jit(lambda a, b, m, k: linear_path(trainer, data, eval_split, a, b, m, points=points,
                                                  bn_key=k, bn_batches=bn_batches))
    curve = path(ends[0], ends[1], mask, jax.random.fold_in(data_keys[0], 1))
    return Instability(curve, runs)
