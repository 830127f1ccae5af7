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

Rates are fractions in [0, 1]: 0 leaves a leaf untouched, 1 removes all its surviving weights.
(Experiment configs take [0, 1): a level with no weights left cannot be trained.)

Params may be Flax Linen params or a Flax NNX state (``nnx.split(model, nnx.Param, ...)``); the
paths rules and ``prunable`` see are '/'-joined keys, ``Dense_0/kernel`` or ``linear1/kernel``.

Every function works under ``jax.jit`` and ``jax.vmap`` (e.g. over a leading trial axis of params
and masks) with its arguments traced, ``rates``, ``rate`` and ``prunable`` included. Rates are
usually Python floats made once by ``rates_by_rule`` (a setup step that reads only paths).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from lth_jax import masks as masks_lib
from lth_jax.selection import (check_rate, is_traced, leaves_like, pool, remove_lowest,
                               unpool)

PyTree = Any
Rules = Sequence[tuple[str, float]]

DEFAULT_PRUNABLE = r"(.*/)?kernel"


def prunable(params: PyTree, pattern: str = DEFAULT_PRUNABLE) -> PyTree:
    """Which leaves may be pruned: a PyTree of Python bools with the params' structure.

    By default the kernels of Dense and Conv layers (Linen ``Dense``/``Conv``, NNX
    ``Linear``/``Conv``): leaves whose '/'-joined path fully matches ``pattern`` (default
    ``(.*/)?kernel``) and that have at least 2 dimensions. Biases and batch-norm scale/shift are
    never prunable by default. Reads only paths and shapes, so it works on traced params too.
    """
    regex = re.compile(pattern)
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: bool(regex.fullmatch(masks_lib.path_str(path))) and jnp.ndim(leaf) >= 2,
        params)


_prunable_fn = prunable  # rates_by_rule's keyword argument `prunable` shadows the function


def _few(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "") if names else "none"


def rates_by_rule(params: PyTree, rules: Rules, prunable: PyTree | None = None) -> PyTree:
    """Per-leaf pruning rates from ``(regex, rate)`` rules.

    Each prunable leaf's '/'-joined path (e.g. ``"Dense_2/kernel"``; NNX: ``"linear2/kernel"``) is
    tested against the rules in order with ``re.fullmatch`` (the *whole* path: ``"kernel"`` alone
    matches nothing, write ``".*kernel"``); the first match gives its rate. Unmatched and
    non-prunable leaves get 0.0 (never pruned).

    Every rule must set the rate of at least one prunable leaf, so that a typo cannot silently
    prune nothing; a rule with rate 0 (an exemption) counts as setting the leaves it matches.

    Args:
      params: PyTree of arrays (only paths and shapes are read; ``jax.ShapeDtypeStruct`` leaves or
        tracers work).
      rules: sequence of ``(regex, rate)`` with ``0 <= rate <= 1``.
      prunable: which leaves rules may apply to (PyTree of bools); default ``prunable(params)``,
        the Dense/Conv kernels.
    Returns:
      PyTree of Python floats with the params' structure.
    Raises:
      ValueError: a rate is outside [0, 1], a regex does not compile, or a rule sets no prunable
        leaf (the rule is named, with a few of the prunable leaves' paths).
    """
    compiled = []
    for i, rule in enumerate(rules):
        try:
            pattern, rate = rule
        except (TypeError, ValueError):
            raise ValueError(f"pruning rule #{i} {rule!r} is not a (regex, rate) pair") from None
        check_rate(rate, f"rule #{i} {pattern!r}")
        try:
            compiled.append((pattern, re.compile(pattern), float(rate)))
        except re.error as e:
            raise ValueError(f"pruning rule #{i}: bad regex {pattern!r}: {e}") from None

    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = [masks_lib.path_str(path) for path, _ in flat]
    selection = _prunable_fn(params) if prunable is None else prunable
    selected = [bool(s) for s in leaves_like(selection, params, "prunable")]
    owner: list[int | None] = []
    rates = []
    for name, use in zip(names, selected):
        hit = next((i for i, (_, regex, _) in enumerate(compiled) if regex.fullmatch(name)), None)
        owner.append(hit if use else None)
        rates.append(compiled[hit][2] if use and hit is not None else 0.0)

    candidates = [n for n, use in zip(names, selected) if use]
    for i, (pattern, regex, _) in enumerate(compiled):
        if i in owner:
            continue
        matched = [n for n in candidates if regex.fullmatch(n)]
        if matched:
            taken = sorted({owner[names.index(n)] for n in matched})
            raise ValueError(
                f"pruning rule #{i} {pattern!r} sets no leaf: the prunable leaves it matches "
                f"({_few(matched)}) are all set by earlier rule(s) #{', #'.join(map(str, taken))} "
                "(the first matching rule wins; put the more specific rule first)")
        message = f"pruning rule #{i} {pattern!r} matches no prunable leaf"
        others = [n for n in names if regex.fullmatch(n)]
        if others:
            message += f" (it matches {_few(others)}, which are not prunable)"
        elif any(regex.search(n) for n in candidates):
            parts = [n for n in candidates if regex.search(n)]
            hint = next((h for h in (".*" + pattern, ".*" + pattern + ".*")
                         if any(re.fullmatch(h, n) for n in parts)), ".*" + pattern + ".*")
            message += (f": a rule must match the whole '/'-joined path, and {pattern!r} is only part "
                        f"of {_few(parts)}; write e.g. {hint!r}")
        raise ValueError(f"{message}; prunable leaves: {_few(candidates)}")
    return jax.tree.unflatten(treedef, rates)


def per_round_rate(total: float, rounds: int) -> float | jax.Array:
    """The per-round rate ``r = 1 - (1 - total)^(1/rounds)`` that prunes a fraction ``total`` in
    ``rounds`` rounds (after ``n`` rounds a fraction ``(1 - r)^n`` survives).

    A Python float for Python arguments (``rounds`` a positive integer); a float32 array when an
    argument is traced (under ``jax.jit``), computed by the same formula.
    """
    if is_traced(total) or is_traced(rounds):
        return 1.0 - (1.0 - jnp.asarray(total, jnp.float32)) ** (1.0 / jnp.asarray(rounds, jnp.float32))
    check_rate(total, "per_round_rate(total)")
    if int(rounds) != rounds or rounds < 1:
        raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
    return 1.0 - (1.0 - float(total)) ** (1.0 / int(rounds))


def compound_rate(rate: float, rounds: int) -> float | jax.Array:
    """The one-shot rate ``1 - (1 - rate)^rounds`` equal to ``rounds`` rounds of ``rate``.

    A Python float for Python arguments (``rounds`` an integer >= 0); a float32 array when an
    argument is traced.
    """
    if is_traced(rate) or is_traced(rounds):
        return 1.0 - (1.0 - jnp.asarray(rate, jnp.float32)) ** jnp.asarray(rounds, jnp.float32)
    check_rate(rate, "compound_rate(rate)")
    if int(rounds) != rounds or rounds < 0:
        raise ValueError(f"rounds must be an integer >= 0, got {rounds!r}")
    return 1.0 - (1.0 - float(rate)) ** int(rounds)


def num_to_remove(rate: Any, alive: jax.Array) -> jax.Array:
    """``round(rate · alive)`` as int32, computed in float32 with round-half-to-even."""
    product = jnp.asarray(rate, jnp.float32) * jnp.asarray(alive).astype(jnp.float32)
    return jnp.round(product).astype(jnp.int32)


def _prune_each_leaf(score_fn, mask: PyTree, rates: PyTree) -> PyTree:
    """Apply ``selection.remove_lowest`` per leaf with ``k = round(rate · alive)``."""
    treedef = jax.tree.structure(mask)
    mask_leaves = jax.tree.leaves(mask)
    rate_leaves = leaves_like(rates, mask, "rates")
    paths = masks_lib.leaf_paths(mask)
    out = []
    for i, (path, m, rate) in enumerate(zip(paths, mask_leaves, rate_leaves)):
        check_rate(rate, f"leaf '{path}'")
        if not is_traced(rate) and float(rate) == 0.0:
            out.append(m)
            continue
        flat = m.reshape(-1)
        k = num_to_remove(rate, jnp.sum(flat, dtype=jnp.int32))
        out.append(remove_lowest(score_fn(i, path).reshape(-1), flat, k).reshape(m.shape))
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


def random_like(key: jax.Array, mask: PyTree, within: PyTree | None = None) -> PyTree:
    """A random mask with exactly as many survivors per leaf as ``mask``, at random positions.

    This is the random-pruning control for any strategy (layerwise or global): it keeps the ticket's
    per-layer densities. All-True leaves stay all-True. Same key, same mask.

    ``within`` (a bool PyTree like ``mask``, each leaf with at least as many survivors): the
    positions are drawn among its survivors only, e.g. random pruning of the network that
    ``mask`` was pruned from (``mask`` ⊆ ``within``); None = among all positions.
    """
    masks_lib.check_bool(mask)
    candidates = jax.tree.leaves(within) if within is not None else [None] * len(
        jax.tree.leaves(mask))
    out = []
    for i, (m, c) in enumerate(zip(jax.tree.leaves(mask), candidates)):
        flat = m.reshape(-1)
        pool = jnp.ones_like(flat) if c is None else c.reshape(-1)
        k = jnp.sum(pool, dtype=jnp.int32) - jnp.sum(flat, dtype=jnp.int32)
        scores = jax.random.uniform(jax.random.fold_in(key, i), flat.shape)
        out.append(remove_lowest(scores, pool, k).reshape(m.shape))
    return jax.tree.unflatten(jax.tree.structure(mask), out)


def global_magnitude(params: PyTree, mask: PyTree, rate: float, prunable: PyTree) -> PyTree:
    """Global magnitude pruning: one threshold over all prunable leaves together.

    Removes exactly ``round(rate · alive)`` weights with the smallest ``|w|`` among the surviving
    weights of all leaves where ``prunable`` is True (pooled); other leaves are untouched.

    Args:
      params: PyTree of float arrays.
      mask: bool PyTree of the same structure and shapes.
      rate: fraction in [0, 1] of the pooled survivors to remove; may be traced.
      prunable: PyTree of bools (see ``prunable``), or of per-leaf rates where nonzero means
        prunable (so ``rates_by_rule`` output can be passed). May be traced (an argument of a
        jitted function): the selection is then made when the program runs, with the same result.
    Returns:
      The new mask. Pure; jit- and vmap-able.
    """
    masks_lib.check_matches(params, mask)
    check_rate(rate, "global_magnitude(rate)")
    mask_leaves = jax.tree.leaves(mask)
    selected = masks_lib.selected_leaves(mask, prunable)
    param_leaves = jax.tree.leaves(params)
    # Leaves known to be out stay out of the pool; a traced selection pools the leaf and decides
    # at run time whether its weights compete. Either way the pooled order is leaf order, then flat
    # index, so ties are broken as the counting rule says.
    chosen, alive = pool(mask_leaves, selected)
    if not chosen:
        return mask
    scores = jnp.concatenate([jnp.abs(param_leaves[i].astype(jnp.float32)).reshape(-1)
                              for i in chosen])
    k = num_to_remove(rate, jnp.sum(alive, dtype=jnp.int32))
    out = unpool(remove_lowest(scores, alive, k), mask_leaves, selected, chosen)
    return jax.tree.unflatten(jax.tree.structure(mask), out)
