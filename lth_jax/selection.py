"""The selection core shared by ``pruning``, ``scores`` and ``structured``: remove the k lowest of a
set of scores, with one rule for ties and NaN, and the checks every pruning function makes.

The rule (the project's counting rule): among the alive entries, order by score, then by position
(flat index, and leaf order when leaves are pooled), and remove the first ``k``; NaN counts as the
largest score. Dead entries are never chosen and never come back, so masks only shrink.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def is_traced(x: Any) -> bool:
    """Whether ``x`` is a tracer (known only when the jitted program runs)."""
    return isinstance(x, jax.core.Tracer)


def remove_lowest(scores: jax.Array, alive: jax.Array, k: jax.Array) -> jax.Array:
    """Flat bool mask: ``alive`` minus the ``k`` alive entries with the lowest ``scores``.

    ``scores`` [n] float, ``alive`` [n] bool, ``k`` an int32 scalar (may be traced). Sort key
    (dead, score, index): dead entries last, ties by index; O(n log n). Pure.
    """
    n = scores.shape[0]
    index = jnp.arange(n, dtype=jnp.int32)
    dead = (~alive).astype(jnp.int32)
    # lax.sort orders NaN after +inf, giving the "NaN is largest" rule.
    _, _, order = jax.lax.sort((dead, scores, index), num_keys=2, is_stable=True)
    rank = jnp.zeros(n, jnp.int32).at[order].set(index)
    return alive & (rank >= k)


def keep_highest(scores: jax.Array, alive: jax.Array, keep: jax.Array) -> jax.Array:
    """Flat bool mask: of the ``alive`` entries, the ``keep`` with the highest ``scores``.

    Removes ``max(Σ alive − keep, 0)`` lowest-scoring alive entries with ``remove_lowest``'s sort,
    so ties and NaNs follow the same rule. Pure.
    """
    remove = jnp.maximum(jnp.sum(alive, dtype=jnp.int32) - keep, 0)
    return remove_lowest(scores, alive, remove)


def pool(mask_leaves: list, selected: list) -> tuple[list[int], jax.Array]:
    """The leaves pooled by a global selection and their alive entries, flat and concatenated.

    ``selected`` per leaf: True, False (left out of the pool) or a traced bool (pooled; its
    entries count as alive only if it is selected when the program runs). Returns the pooled
    leaves' indices (leaf order: with the flat index, the tie order) and the pooled alive [n].
    """
    chosen = [i for i, s in enumerate(selected) if s is not False]
    alive = [(mask_leaves[i] if selected[i] is True else mask_leaves[i] & selected[i]).reshape(-1)
             for i in chosen]
    return chosen, jnp.concatenate(alive) if alive else jnp.zeros((0,), bool)


def unpool(kept: jax.Array, mask_leaves: list, selected: list, chosen: list[int]) -> list:
    """``mask_leaves`` with the pooled leaves ``chosen`` replaced by their part of ``kept`` (a
    flat bool [n] over the pool, as ``pool`` made it); a traced selection keeps the old leaf
    where it is not selected."""
    out = list(mask_leaves)
    offset = 0
    for i in chosen:
        size = math.prod(mask_leaves[i].shape)
        new = kept[offset:offset + size].reshape(mask_leaves[i].shape)
        out[i] = new if selected[i] is True else jnp.where(selected[i], new, mask_leaves[i])
        offset += size
    return out


def check_rate(rate: Any, where: str, allow_one: bool = True) -> None:
    """Raise ValueError naming ``where`` unless ``rate`` is in [0, 1] ([0, 1) without
    ``allow_one``); NaN fails too. A traced rate is not checked (it is known only at run time)."""
    if is_traced(rate):
        return
    value = float(rate)
    upper_ok = value <= 1.0 if allow_one else value < 1.0
    if not (value >= 0.0 and upper_ok):  # written so that NaN fails too
        raise ValueError(f"pruning rate {rate!r} for {where} is outside [0, 1]")


def leaves_like(tree: PyTree, like: PyTree, what: str) -> list:
    """The leaves of ``tree`` (a per-leaf tree such as rates), after checking that it has as many
    leaves as ``like`` (the params or mask); ValueError naming ``what`` otherwise."""
    leaves = jax.tree.leaves(tree)
    if len(leaves) != len(jax.tree.leaves(like)):
        raise ValueError(f"{what} has {len(leaves)} leaves, the params/mask "
                         f"{len(jax.tree.leaves(like))}; make it with rates_by_rule/prunable from "
                         "the same params")
    return leaves
