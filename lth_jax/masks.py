"""Masks: PyTrees of booleans with exactly the structure and shapes of the params.

A mask ``m`` says which weights of a network survive: ``m[i] = True`` keeps weight ``θ[i]``,
``False`` prunes it. The sparse network is ``m ⊙ θ``. Leaves that are never pruned (biases,
batch-norm scale and shift, exempt layers) are all-True; there are no ``None`` leaves.

Every function here is pure. ``ones_like``, ``apply`` and ``density`` work under ``jax.jit`` and
``jax.vmap``; ``layer_density``, ``summary`` and ``check_matches`` read concrete values and are
host-side helpers.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def path_str(path: tuple) -> str:
    """'/'-joined names of a key path, e.g. ``(DictKey('Dense_0'), DictKey('kernel'))`` -> 'Dense_0/kernel'."""
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return "/".join(parts)


def leaf_paths(tree: PyTree) -> list[str]:
    """The '/'-joined path of every leaf of ``tree``, in ``jax.tree.leaves`` order."""
    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def check_matches(params: PyTree, mask: PyTree) -> None:
    """Raise unless ``mask`` is a valid mask for ``params``.

    Raises:
        ValueError: the two trees differ in structure or in a leaf's shape; the message names the first
            differing path.
        TypeError: a mask leaf is not of dtype bool.
    """
    p_leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    m_leaves = jax.tree_util.tree_flatten_with_path(mask)[0]
    p_paths = [path_str(p) for p, _ in p_leaves]
    m_paths = [path_str(p) for p, _ in m_leaves]
    if p_paths != m_paths or jax.tree.structure(params) != jax.tree.structure(mask):
        for i in range(max(len(p_paths), len(m_paths))):
            a = p_paths[i] if i < len(p_paths) else "<none>"
            b = m_paths[i] if i < len(m_paths) else "<none>"
            if a != b:
                raise ValueError("mask does not match params: first differing leaf is "
                                 f"params '{a}' vs mask '{b}'")
        raise ValueError("mask does not match params: same paths but different container types")
    for (path, p), (_, m) in zip(p_leaves, m_leaves):
        if jnp.shape(p) != jnp.shape(m):
            raise ValueError(f"mask does not match params at '{path_str(path)}': "
                             f"params shape {jnp.shape(p)} vs mask shape {jnp.shape(m)}")
        if jnp.result_type(m) != jnp.bool_:
            raise TypeError(f"mask leaf '{path_str(path)}' has dtype {jnp.result_type(m)}; masks are bool")


def check_bool(mask: PyTree) -> None:
    """Raise TypeError naming the first leaf of ``mask`` that is not bool."""
    for path, m in jax.tree_util.tree_flatten_with_path(mask)[0]:
        if jnp.result_type(m) != jnp.bool_:
            raise TypeError(f"mask leaf '{path_str(path)}' has dtype {jnp.result_type(m)}; masks are bool")


def ones_like(params: PyTree) -> PyTree:
    """The all-True mask of ``params``: every weight survives. Leaves are ``bool`` of the params' shapes."""
    return jax.tree.map(lambda p: jnp.ones(jnp.shape(p), dtype=jnp.bool_), params)


def apply(params: PyTree, mask: PyTree) -> PyTree:
    """``m ⊙ θ``: zero the pruned weights.

    Uses ``where`` rather than a product so that a pruned ``inf``/``nan`` weight also becomes exactly 0.

    Args:
        params: PyTree of arrays.
        mask: bool PyTree of the same structure and shapes.
    Returns:
        PyTree like ``params`` (same dtypes) with ``0`` where ``mask`` is False.
    """
    check_matches(params, mask)
    return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros((), jnp.result_type(p))), params, mask)


def count(mask: PyTree, prunable: PyTree | None = None) -> tuple[jax.Array, int]:
    """(alive, total) weights of the leaves selected by ``prunable`` (all leaves when None).

    ``alive`` is an int32 scalar array (traceable); ``total`` a Python int (static).
    """
    check_bool(mask)
    leaves = jax.tree.leaves(mask)
    selected = [True] * len(leaves) if prunable is None else [bool(x) for x in jax.tree.leaves(prunable)]
    if len(selected) != len(leaves):
        raise ValueError(f"prunable has {len(selected)} leaves, mask has {len(leaves)}")
    alive = jnp.zeros((), jnp.int32)
    total = 0
    for m, use in zip(leaves, selected):
        if use:
            alive = alive + jnp.sum(m, dtype=jnp.int32)
            total += int(np.prod(jnp.shape(m)))
    return alive, total


def density(mask: PyTree, prunable: PyTree | None = None) -> jax.Array:
    """Fraction of the prunable weights that are alive: ``Σ m / |m|`` over the selected leaves.

    Args:
        mask: bool PyTree.
        prunable: PyTree of Python bools with the mask's structure (see ``pruning.prunable``); None
            counts every leaf.
    Returns:
        float32 scalar array in [0, 1] (1.0 when nothing is selected). Traceable.
    """
    alive, total = count(mask, prunable)
    if total == 0:
        return jnp.ones((), jnp.float32)
    return alive.astype(jnp.float32) / jnp.float32(total)


def layer_density(mask: PyTree, prunable: PyTree | None = None) -> dict[str, float]:
    """Per-leaf density ``{"Dense_0/kernel": 0.8, ...}`` of the selected leaves (host-side, concrete)."""
    check_bool(mask)
    flat = jax.tree_util.tree_flatten_with_path(mask)[0]
    selected = [True] * len(flat) if prunable is None else [bool(x) for x in jax.tree.leaves(prunable)]
    return {path_str(path): float(np.mean(np.asarray(m))) if np.size(m) else 1.0
                    for (path, m), use in zip(flat, selected) if use}


def overlap(mask_a: PyTree, mask_b: PyTree, prunable: PyTree | None = None) -> jax.Array:
    """Fraction of ``mask_a``'s survivors that also survive in ``mask_b``: ``Σ(a ∧ b) / Σ a``.

    Useful to compare tickets across levels or seeds. float32 scalar; 1.0 when ``a`` is empty.
    """
    both = jax.tree.map(jnp.logical_and, mask_a, mask_b)
    alive_both, _ = count(both, prunable)
    alive_a, _ = count(mask_a, prunable)
    return jnp.where(alive_a > 0, alive_both / jnp.maximum(alive_a, 1), 1.0).astype(jnp.float32)


def summary(mask: PyTree, prunable: PyTree | None = None) -> str:
    """A human-readable table: one line per selected leaf with alive/total and percent, then the total."""
    check_bool(mask)
    flat = jax.tree_util.tree_flatten_with_path(mask)[0]
    selected = [True] * len(flat) if prunable is None else [bool(x) for x in jax.tree.leaves(prunable)]
    lines = []
    alive_sum = total_sum = 0
    for (path, m), use in zip(flat, selected):
        if not use:
            continue
        alive, total = int(np.sum(np.asarray(m))), int(np.size(m))
        alive_sum += alive
        total_sum += total
        lines.append(f"{path_str(path):<40} {alive:>10,} / {total:>10,}  {100 * alive / max(total, 1):6.2f}%")
    lines.append(f"{'total':<40} {alive_sum:>10,} / {total_sum:>10,}  "
                 f"{100 * alive_sum / max(total_sum, 1):6.2f}%")
    return "\n".join(lines)


def is_subset(mask_new: PyTree, mask_old: PyTree) -> bool:
    """True iff every weight alive in ``mask_new`` is alive in ``mask_old`` (masks only shrink)."""
    return all(bool(np.all(~np.asarray(n) | np.asarray(o)))
               for n, o in zip(jax.tree.leaves(mask_new), jax.tree.leaves(mask_old)))

