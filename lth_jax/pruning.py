"""Pruning rounds as pure functions ``(params, mask, ...) -> new mask``.

Counting rule (the contract every function here keeps):

* a round with rate ``r`` removes exactly ``k = round(r · alive)`` weights, where ``alive`` is the
  number of surviving weights of the leaf (layerwise) or of all prunable leaves together (global);
  ``round`` is round-half-to-even of the float32 product ``float32(r) · float32(alive)``;
* only surviving weights are removed, so masks only shrink; a leaf with rate 0 is untouched;
* the removed weights are those with the smallest score (``|w|`` for magnitude pruning, uniform
  noise for random pruning). Ties are broken by position: among equal scores the weight that comes
  first (leaves in ``jax.tree.leaves`` order, then row-major flat index) is removed first. A NaN
  score counts as larger than every number, so NaN weights are removed last.

Every function works under ``jax.jit`` and ``jax.vmap`` (e.g. over a leading trial axis of params
and masks). Rates are Python floats, usually made once by ``rates_by_rule``; they may also be traced.
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from lth_jax import masks as masks_lib

PyTree = Any
Rules = Sequence[tuple[str, float]]

DEFAULT_PRUNABLE = r"(.*/)?kernel"


def prunable(params: PyTree, pattern: str = DEFAULT_PRUNABLE) -> PyTree:
    """Which leaves may be pruned: a PyTree of Python bools with the params' structure.

    By default the kernels of Dense and Conv layers: leaves whose '/'-joined path fully matches
    ``pattern`` (default ``(.*/)?kernel``) and that have at least 2 dimensions. Biases and batch-norm
    scale/shift are never prunable by default.
    """
    regex = re.compile(pattern)
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: bool(regex.fullmatch(masks_lib.path_str(path))) and jnp.ndim(leaf) >= 2,
        params)


def _check_rate(rate: Any, where: str, allow_one: bool = True) -> None:
    if isinstance(rate, jax.core.Tracer):
        return
    value = float(rate)
    upper_ok = value <= 1.0 if allow_one else value < 1.0
    if not (value >= 0.0 and upper_ok):  # written so that NaN fails too
        raise ValueError(f"pruning rate {rate!r} for {where} is outside [0, 1]")


def rates_by_rule(params: PyTree, rules: Rules) -> PyTree:
    """Per-leaf pruning rates from ``(regex, rate)`` rules.

    Each leaf's '/'-joined path (e.g. ``"Dense_2/kernel"``) is tested against the rules in order
    with ``re.fullmatch``; the first match gives its rate; unmatched leaves get 0.0 (never pruned).

    Args:
      params: PyTree of arrays (only paths are read).
      rules: sequence of ``(regex, rate)`` with ``0 <= rate <= 1``.
    Returns:
      PyTree of Python floats with the params' structure.
    Raises:
      ValueError: a rate is outside [0, 1] or a regex does not compile (the rule is named).
    """
    compiled = []
    for i, rule in enumerate(rules):
        try:
            pattern, rate = rule
        except (TypeError, ValueError):
            raise ValueError(f"pruning rule #{i} {rule!r} is not a (regex, rate) pair") from None
        _check_rate(rate, f"rule #{i} {pattern!r}")
        try:
            compiled.append((re.compile(pattern), float(rate)))
        except re.error as e:
            raise ValueError(f"pruning rule #{i}: bad regex {pattern!r}: {e}") from None

    def rate_of(path, _):
        name = masks_lib.path_str(path)
        for regex, rate in compiled:
            if regex.fullmatch(name):
                return rate
        return 0.0

    return jax.tree_util.tree_map_with_path(rate_of, params)


def per_round_rate(total: float, rounds: int) -> float:
    """The per-round rate ``r = 1 - (1 - total)^(1/rounds)`` that prunes a fraction ``total`` in
    ``rounds`` rounds (after ``n`` rounds a fraction ``(1 - r)^n`` survives)."""
    _check_rate(total, "per_round_rate(total)")
    if int(rounds) != rounds or rounds < 1:
        raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
    return 1.0 - (1.0 - float(total)) ** (1.0 / int(rounds))


def compound_rate(rate: float, rounds: int) -> float:
    """The one-shot rate ``1 - (1 - rate)^rounds`` equal to ``rounds`` rounds of ``rate``."""
    _check_rate(rate, "compound_rate(rate)")
    return 1.0 - (1.0 - float(rate)) ** int(rounds)


def num_to_remove(rate: Any, alive: jax.Array) -> jax.Array:
    """``round(rate · alive)`` as int32, computed in float32 with round-half-to-even."""
    product = jnp.asarray(rate, jnp.float32) * jnp.asarray(alive).astype(jnp.float32)
    return jnp.round(product).astype(jnp.int32)


def _remove_lowest(scores: jax.Array, alive: jax.Array, k: jax.Array) -> jax.Array:
    """Flat bool mask: ``alive`` minus the ``k`` alive entries with the lowest score.

    Sort key (dead, score, index): dead entries last, ties by index. O(n log n).
    """
    n = scores.shape[0]
    index = jnp.arange(n, dtype=jnp.int32)
    dead = (~alive).astype(jnp.int32)
    # lax.sort orders NaN after +inf, giving the "NaN is largest" rule.
    _, _, order = jax.lax.sort((dead, scores, index), num_keys=2, is_stable=True)
    rank = jnp.zeros(n, jnp.int32).at[order].set(index)
    return alive & (rank >= k)


def _leaves(tree: PyTree, like: PyTree, what: str) -> list:
    leaves = jax.tree.leaves(tree)
    if len(leaves) != len(jax.tree.leaves(like)):
        raise ValueError(f"{what} has {len(leaves)} leaves, the mask has {len(jax.tree.leaves(like))}; "
                         "make it with rates_by_rule/prunable from the same params")
    return leaves


def _prune_each_leaf(score_fn, mask: PyTree, rates: PyTree) -> PyTree:
    """Apply ``_remove_lowest`` per leaf with ``k = round(rate · alive)``."""
    treedef = jax.tree.structure(mask)
    mask_leaves = jax.tree.leaves(mask)
    rate_leaves = _leaves(rates, mask, "rates")
    paths = masks_lib.leaf_paths(mask)
    out = []
    for i, (path, m, rate) in enumerate(zip(paths, mask_leaves, rate_leaves)):
        _check_rate(rate, f"leaf '{path}'")
        if not isinstance(rate, jax.core.Tracer) and float(rate) == 0.0:
            out.append(m)
            continue
        flat = m.reshape(-1)
        k = num_to_remove(rate, jnp.sum(flat, dtype=jnp.int32))
        out.append(_remove_lowest(score_fn(i, path).reshape(-1), flat, k).reshape(m.shape))
    return jax.tree.unflatten(treedef, out)


def layerwise_magnitude(params: PyTree, mask: PyTree, rates: PyTree) -> PyTree:
    """Layerwise magnitude pruning: per leaf, remove the ``round(rate · alive)`` smallest ``|w|``.

    Args:
      params: PyTree of float arrays (the trained weights θ_j).
      mask: bool PyTree of the same structure and shapes (current survivors).
      rates: PyTree of per-leaf rates in [0, 1] (see ``rates_by_rule``); 0 leaves the leaf untouched.
    Returns:
      The new mask, a subset of ``mask``. Pure; jit- and vmap-able.
    """
    masks_lib.check_matches(params, mask)
    param_leaves = jax.tree.leaves(params)
    # Cast before abs: |INT_MIN| overflows in its own integer dtype.
    return _prune_each_leaf(lambda i, _: jnp.abs(param_leaves[i].astype(jnp.float32)), mask, rates)


def random(key: jax.Array, mask: PyTree, rates: PyTree) -> PyTree:
    """Random pruning (the control): per leaf, remove ``round(rate · alive)`` surviving weights at
    uniformly random positions — the same counts as ``layerwise_magnitude`` with the same rates.

    The positions depend only on ``key`` (leaf ``i`` uses ``fold_in(key, i)``): same key, same mask.
    """
    masks_lib.check_bool(mask)
    mask_leaves = jax.tree.leaves(mask)
    return _prune_each_leaf(
        lambda i, _: jax.random.uniform(jax.random.fold_in(key, i), mask_leaves[i].shape),
        mask, rates)


def random_like(key: jax.Array, mask: PyTree) -> PyTree:
    """A random mask with exactly as many survivors per leaf as ``mask``, at random positions.

    This is the random-pruning control for any strategy (layerwise or global): it keeps the ticket's
    per-layer densities. All-True leaves stay all-True. Same key, same mask.
    """
    masks_lib.check_bool(mask)
    out = []
    for i, m in enumerate(jax.tree.leaves(mask)):
        flat = m.reshape(-1)
        full = jnp.ones_like(flat)
        k = flat.shape[0] - jnp.sum(flat, dtype=jnp.int32)
        scores = jax.random.uniform(jax.random.fold_in(key, i), flat.shape)
        out.append(_remove_lowest(scores, full, k).reshape(m.shape))
    return jax.tree.unflatten(jax.tree.structure(mask), out)


def global_magnitude(params: PyTree, mask: PyTree, rate: float, prunable: PyTree) -> PyTree:
    """Global magnitude pruning: one threshold over all prunable leaves together.

    Removes exactly ``round(rate · alive)`` weights with the smallest ``|w|`` among the surviving
    weights of all leaves where ``prunable`` is True (pooled); other leaves are untouched.

    Args:
      params: PyTree of float arrays.
      mask: bool PyTree of the same structure and shapes.
      rate: fraction in [0, 1] of the pooled survivors to remove.
      prunable: PyTree of Python bools (see ``prunable``), or of per-leaf rates where > 0 means
        prunable (so ``rates_by_rule`` output can be passed).
    Returns:
      The new mask. Pure; jit- and vmap-able.
    """
    masks_lib.check_matches(params, mask)
    _check_rate(rate, "global_magnitude(rate)")
    mask_leaves = jax.tree.leaves(mask)
    selected = [bool(s) for s in _leaves(prunable, mask, "prunable")]
    param_leaves = jax.tree.leaves(params)
    chosen = [i for i, s in enumerate(selected) if s]
    if not chosen:
        return mask
    scores = jnp.concatenate([jnp.abs(param_leaves[i].astype(jnp.float32)).reshape(-1)
                              for i in chosen])
    alive = jnp.concatenate([mask_leaves[i].reshape(-1) for i in chosen])
    k = num_to_remove(rate, jnp.sum(alive, dtype=jnp.int32))
    kept = _remove_lowest(scores, alive, k)
    out = list(mask_leaves)
    offset = 0
    for i in chosen:
        size = math.prod(mask_leaves[i].shape)
        out[i] = kept[offset:offset + size].reshape(mask_leaves[i].shape)
        offset += size
    return jax.tree.unflatten(jax.tree.structure(mask), out)
