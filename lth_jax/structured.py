"""Pruning patterns that hardware can use: N:M sparsity and whole neurons / filters.

The functions here are pruning rounds like those of :mod:`lth_jax.pruning`: pure functions
``(params, mask, ...) -> new mask`` over PyTrees, the new mask a subset of the old one (masks only
shrink), all of them under ``jax.jit`` and ``jax.vmap`` with their array arguments traced. They take
the same ``rates`` / ``prunable`` PyTrees as ``pruning.layerwise_magnitude`` /
``pruning.global_magnitude``, so they drop in where those are called.

Kernels are Flax's: a Dense kernel is ``(in, out)``, a Conv kernel is HWIO ``(h, w, in, out)``. In
both the *input* axis is axis ``-2`` and the *output* (unit) axis is the last one.

**N:M** (``nm_magnitude``, ``nm_iterative``): along the input axis, every run of ``m`` consecutive
input indices ``[g·m, (g+1)·m)`` at one fixed position of the other axes is a *group*: for a Dense
kernel the group ``(g, o)`` is ``kernel[g·m:(g+1)·m, o]`` (``m`` consecutive rows of one column);
for a Conv kernel the group ``(y, x, g, o)`` is ``kernel[y, x, g·m:(g+1)·m, o]`` (``m`` consecutive
input channels at one kernel tap of one filter). This is the layout of 2:4 sparse tensor cores when
the layer is computed as ``x @ kernel`` (the ``m`` weights of a group multiply ``m`` consecutive
entries of the reduction dimension). A group keeps its alive weights with the largest ``|w|``;
ties go by position (the lower input index is removed first, as in ``pruning``'s counting rule) and
a NaN weight counts as the largest. An input dimension that is not a multiple of ``m`` is refused
(``partial="error"``, the default), or its last, short group of ``s < m`` weights is treated as a
full group padded with ``m - s`` absent weights (``partial="pad"``): it keeps at most ``n`` of its
``s`` weights, which is exactly what a kernel zero-padded to a multiple of ``m`` needs to be N:M.

**Neurons and filters** (``neuron_magnitude``, ``global_neuron_magnitude``): a *unit* of a layer is
one output index ``u`` of its kernel: a Dense neuron (kernel column ``kernel[:, u]`` and
``bias[u]``) or a Conv filter (``kernel[:, :, :, u]`` and ``bias[u]``). Its *incoming* weights are
that column/filter and the bias entry; its *outgoing* weights are the weights of the next layer
that read it. Which layer feeds which is an explicit argument, ``links``: a sequence of
``(producer, consumer)`` layer paths (the '/'-joined path before ``/kernel``, e.g.
``("Conv_1", "Dense_0")``). The consumer's kernel input axis (``-2``) has size ``S·U`` for a
producer of ``U`` units, and input index ``r`` reads unit ``r mod U``: ``S = 1`` for Dense→Dense and
Conv→Conv, ``S = h·w`` for a Conv feeding a Dense through a channels-last (NHWC) flatten, where row
``r = (y·w + x)·U + u`` reads channel ``u`` at spatial position ``(y, x)`` (max-pooling in between
does not move channels). ``sequential_links(params)`` builds the links of lth_jax's sequential
networks (LeNet-300-100, Conv-2/4/6) from their parameter paths and shapes. Only producers' units
are removed: the last layer (the logits) is never a producer, so its units always stay.

A unit is *alive* while some weight of its kernel column/filter is alive. Removing a unit removes
its whole column/filter, its bias entry and all its outgoing rows, so a removed unit outputs
``relu(0) = 0`` and nothing reads it: a network pruned this way computes the same function as the
smaller dense network without those units (``lth_jax.compaction`` builds it). When a round prunes a
producer, units that were already dead there (an all-pruned column, e.g. from unstructured
pruning) get the same treatment, so the result is *consistent* (``is_consistent``).

Scores and counting: a unit's score is the L1 (``Σ|w|``) or L2 (``√Σw²``) norm of its masked
incoming kernel weights (``m ⊙ w``; the bias is not counted), all computed from the masks the round
starts with, before any removal of the round. Per layer (``neuron_magnitude``), a producer with
rate ``r`` loses exactly ``round(r · alive units)`` units (float32, half to even), those with the
smallest score, ties by unit index. Globally (``global_neuron_magnitude``), ``round(r · alive
units of all selected producers)`` units go, by one threshold over *normalised* scores.

Iterative N:M (the choice made here; docs/design.md, "Decisions"): **N:M is reached by rounds.**
``nm_iterative`` removes ``step`` (default 1) more of the smallest alive weights from every group
that still has more than ``n`` alive, never going below ``n``; from the dense mask, 2:4 takes two
rounds (4 → 3 → 2 alive per group, densities 75%, 50%) and 1:4 three (75%, 50%, 25%); after that a
round changes nothing. This keeps IMP's premise (prune a little, retrain from θ₀, prune again)
where one step of N:M would be one-shot pruning. ``rounds=L`` from the dense mask is the one-shot
mask of level L, as ``pruning.compound_rate`` is for the magnitude strategies. ``nm_magnitude`` is
the one-shot form (every group down to ``n`` at once), which is also what ``nm_iterative`` gives
once ``rounds · step >= m - n``.
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lth_jax import masks as masks_lib
from lth_jax import pruning
from lth_jax.selection import check_rate, is_traced, leaves_like, remove_lowest

PyTree = Any
#: ``(producer, consumer)`` layer paths; see the module docstring.
Links = Sequence[tuple[str, str]]

NORMS = ("l1", "l2")
NORMALIZATIONS = ("fan_in", "none")
PARTIAL = ("error", "pad")




# ----------------------------------------------------------------------------- N:M


def _check_nm(n: Any, m: Any, partial: str) -> None:
    if not isinstance(m, (int, np.integer)) or isinstance(m, bool) or m < 1:
        raise ValueError(f"m must be a positive Python int (it fixes the group shape), got {m!r}")
    if not is_traced(n):
        if int(n) != n or not 0 <= int(n) <= m:
            raise ValueError(f"n must be an integer in [0, m={m}], got {n!r}")
    if partial not in PARTIAL:
        raise ValueError(f"partial must be one of {PARTIAL}, got {partial!r}")


def _group_ranks(scores: jax.Array, alive: jax.Array) -> jax.Array:
    """Per group (last axis, size m): the rank of each entry among the group's *alive* entries in
    removal order, smallest score first (key: NaN last, then score, then position).

    Pairwise comparisons, O(m²) per group: m is small (4, 8), and this avoids a sort per group.
    """
    m = scores.shape[-1]
    nan = jnp.isnan(scores)
    value = jnp.where(nan, jnp.float32(0), scores)
    nan_i, nan_j = nan[..., :, None], nan[..., None, :]
    v_i, v_j = value[..., :, None], value[..., None, :]
    index = jnp.arange(m)
    earlier = index[None, :] < index[:, None]  # [i, j]: j comes before i
    # [.., i, j]: key_j < key_i, lexicographic on (isnan, value, position).
    below = (~nan_j & nan_i) | ((nan_j == nan_i) & ((v_j < v_i) | ((v_j == v_i) & earlier)))
    return jnp.sum(below & alive[..., None, :], axis=-1, dtype=jnp.int32)


def _nm_leaf(score: jax.Array, alive: jax.Array, m: int, partial: str, path: str,
             keep_count) -> jax.Array:
    """The N:M rule on one kernel: ``keep_count(alive_per_group)`` largest-score alive weights of
    each group survive. ``score`` and ``alive`` have the kernel's shape (..., in, out)."""
    s = jnp.moveaxis(score, -2, -1)  # (..., out, in): groups run along the last axis
    a = jnp.moveaxis(alive, -2, -1)
    size = s.shape[-1]
    pad = (-size) % m
    if pad:
        if partial == "error":
            raise ValueError(
                f"N:M with m={m}: leaf '{path}' has input dimension {size}, not a multiple of {m} "
                "(pass partial='pad' to treat the last group as padded, or give the leaf rate 0)")
        widths = [(0, 0)] * (s.ndim - 1) + [(0, pad)]
        s = jnp.pad(s, widths)
        a = jnp.pad(a, widths, constant_values=False)  # padded entries are absent, never counted
    groups = s.shape[:-1] + (s.shape[-1] // m, m)
    sg, ag = s.reshape(groups), a.reshape(groups)
    count = jnp.sum(ag, axis=-1, keepdims=True, dtype=jnp.int32)
    keep = ag & (_group_ranks(sg, ag) >= count - keep_count(count))
    keep = keep.reshape(a.shape)[..., :size]
    return jnp.moveaxis(keep, -1, -2)


def _nm_apply(params: PyTree, mask: PyTree, rates: PyTree, m: int, partial: str,
              keep_count) -> PyTree:
    masks_lib.check_matches(params, mask)
    param_leaves = jax.tree.leaves(params)
    mask_leaves = jax.tree.leaves(mask)
    rate_leaves = leaves_like(rates, mask, "rates")
    out = []
    for path, p, mk, rate in zip(masks_lib.leaf_paths(mask), param_leaves, mask_leaves, rate_leaves):
        static = not is_traced(rate)
        if static and float(rate) == 0.0:
            out.append(mk)
            continue
        if jnp.ndim(mk) < 2:
            if static:
                raise ValueError(f"N:M needs a kernel with an input axis; leaf '{path}' has shape "
                                 f"{jnp.shape(mk)} and a nonzero rate")
            out.append(mk)  # a traced rate on a bias: it cannot be N:M, leave it as it is
            continue
        # Cast before abs: |INT_MIN| overflows in its own integer dtype (as pruning does).
        new = _nm_leaf(jnp.abs(p.astype(jnp.float32)), mk, m, partial, path, keep_count)
        out.append(new if static else jnp.where(rate != 0, new, mk))
    return jax.tree.unflatten(jax.tree.structure(mask), out)


def nm_magnitude(params: PyTree, mask: PyTree, rates: PyTree, *, n: int | jax.Array, m: int,
                 partial: str = "error") -> PyTree:
    """One-shot N:M magnitude pruning: every group of ``m`` consecutive input weights keeps (at
    most) its ``n`` alive weights with the largest ``|w|``.

    For each selected leaf and each group ``G`` (grouping in the module docstring), the new mask
    is ``alive ∩ top_n(G)``: the ``min(n, alive(G))`` alive weights of largest ``|w|``; a group with
    ``n`` or fewer alive weights is unchanged. The result is a subset of ``mask`` in which every
    group of a selected leaf has at most ``n`` alive weights (exactly ``n`` from a dense mask).

    Args:
      params: PyTree of arrays (float; integer is cast to float32 before ``|w|``).
      mask: bool PyTree with the params' structure and shapes.
      rates: PyTree of per-leaf numbers with the params' structure (e.g. from
        ``pruning.rates_by_rule``): nonzero selects the leaf for N:M, 0 leaves it untouched; the
        value itself is not used. May be traced. A selected leaf must have >= 2 dimensions.
      n: weights kept per group, an integer in [0, m]; may be traced (one compiled program serves
        every n).
      m: group size, a Python int (it fixes the program's shapes).
      partial: "error" (default) refuses a selected leaf whose input dimension is not a multiple
        of ``m``; "pad" treats its last short group as padded with absent weights (keeps at most
        ``n`` of it).
    Returns:
      The new bool mask. Pure; jit- and vmap-able.
    Raises:
      ValueError: bad ``n``/``m``/``partial``, a selected leaf with < 2 dims, or a partial group
        with ``partial="error"``.
    """
    _check_nm(n, m, partial)
    n_ = jnp.asarray(n, jnp.int32)
    return _nm_apply(params, mask, rates, m, partial, lambda count: jnp.minimum(count, n_))


def nm_iterative(params: PyTree, mask: PyTree, rates: PyTree, rounds: int | jax.Array = 1, *,
                 n: int | jax.Array, m: int, step: int = 1, partial: str = "error") -> PyTree:
    """N:M reached by rounds: ``rounds`` rounds at once, each removing the ``step`` smallest-``|w|``
    alive weights of every group that has more than ``n`` alive (never going below ``n``).

    Per group with ``a`` alive weights the new count is ``max(a - step·rounds, min(a, n))``: the
    weights kept are the alive ones of largest ``|w|`` (ties by position, NaN largest). From the
    dense mask 2:4 (step 1) is reached in 2 rounds (4 → 3 → 2 per group) and 1:4 in 3; once a group
    is at ``n`` later rounds leave it. ``rounds = L`` from the dense mask gives level L's one-shot
    mask, and ``rounds = 1`` from level L-1's mask is the iterative step (the calling convention of
    ``lottery.next_mask``: ``nm_iterative(trained, mask, rates, rounds, n=2, m=4)``).

    Args:
      params, mask, rates, m, partial: as in ``nm_magnitude`` (nonzero rate = the leaf is N:M).
      rounds: number of rounds applied at once, an integer >= 0; may be traced.
      n: the floor: weights per group that are never removed (the N of N:M); may be traced.
      step: weights removed per group per round, a positive integer; may be traced.
    Returns:
      The new bool mask, a subset of ``mask``. Pure; jit- and vmap-able.
    """
    _check_nm(n, m, partial)
    if not is_traced(rounds) and (int(rounds) != rounds or rounds < 0):
        raise ValueError(f"rounds must be an integer >= 0, got {rounds!r}")
    if not is_traced(step) and (int(step) != step or step < 1):
        raise ValueError(f"step must be a positive integer, got {step!r}")
    n_ = jnp.asarray(n, jnp.int32)
    removed = jnp.asarray(step, jnp.int32) * jnp.asarray(rounds, jnp.int32)
    return _nm_apply(params, mask, rates, m, partial,
                     lambda count: jnp.maximum(count - removed, jnp.minimum(count, n_)))


def nm_rounds(n: int, m: int, step: int = 1) -> int:
    """Rounds ``nm_iterative`` needs from a dense mask to reach N:M: ``ceil((m - n) / step)``."""
    _check_nm(n, m, "error")
    if int(step) != step or step < 1:
        raise ValueError(f"step must be a positive integer, got {step!r}")
    return -(-(m - int(n)) // int(step))


def is_nm(mask: PyTree, n: int, m: int, prunable: PyTree | None = None, *,
          partial: str = "error") -> bool | jax.Array:
    """True iff every group of ``m`` (module docstring) of every selected leaf has at most ``n``
    alive weights: the mask is usable by N:M hardware.

    ``prunable`` selects the leaves (default ``pruning.prunable(mask)``: the Dense/Conv kernels;
    nonzero = selected, may be traced: then a selected leaf of fewer than 2 dims, which has no
    input axis, makes the result False). A Python bool on concrete values, a bool array under jit.
    """
    _check_nm(n, m, partial)
    selection = masks_lib.selected_leaves(mask, pruning.prunable(mask) if prunable is None else prunable)
    results = []
    for path, mk, use in zip(masks_lib.leaf_paths(mask), jax.tree.leaves(mask), selection):
        if use is False:
            continue
        if jnp.ndim(mk) < 2:
            if use is not True:  # a traced selection: such a leaf passes only when unselected
                results.append(~use)
                continue
            raise ValueError(f"is_nm: selected leaf '{path}' has shape {jnp.shape(mk)}, no input axis")
        a = jnp.moveaxis(mk, -2, -1)
        pad = (-a.shape[-1]) % m
        if pad:
            if partial == "error":
                raise ValueError(f"is_nm with m={m}: leaf '{path}' has input dimension "
                                 f"{a.shape[-1]}, not a multiple of {m} (pass partial='pad')")
            a = jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, pad)], constant_values=False)
        counts = jnp.sum(a.reshape(a.shape[:-1] + (-1, m)), axis=-1)
        ok = jnp.all(counts <= n)
        results.append(ok if use is True else (~use) | ok)
    if not results:
        return True
    every = jnp.all(jnp.stack(results))
    if any(is_traced(x) for x in results):
        return every
    return bool(every)


# ----------------------------------------------------------------------------- links

_SEQUENTIAL = re.compile(
    r"(?:(?P<prefix>.*)/)?(?P<kind>Conv|Dense)_(?P<index>\d+)/(?P<leaf>kernel|bias)")


def sequential_links(params: PyTree) -> tuple[tuple[str, str], ...]:
    """The links of an lth_jax sequential network, from its parameter paths and shapes.

    For params whose leaves are all ``Conv_i/{kernel,bias}`` and ``Dense_j/{kernel,bias}`` (Flax
    auto names, optionally under one common prefix such as ``params/``): the layers in the order
    ``Conv_0, Conv_1, ..., Dense_0, Dense_1, ...`` (indices compared as numbers) form a chain, and
    each consecutive pair is a link. That is LeNet-300-100 (``Dense_0 → Dense_1 → Dense_2``) and
    Conv-2/4/6 (``Conv_0 → … → Conv_{k-1} → Dense_0 → Dense_1 → Dense_2``, with a flatten between
    the last conv and ``Dense_0``). Reads only paths and shapes (works on masks, tracers and
    ``jax.ShapeDtypeStruct`` leaves).

    Raises:
      ValueError: a leaf of another kind (batch norm, residual blocks: such networks are not a
        chain; pass ``links`` explicitly), mixed prefixes, fewer than two layers, or shapes that do
        not chain (consumer input size not ``S ×`` producer units).
    """
    prefixes, layers = set(), {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = masks_lib.path_str(path)
        match = _SEQUENTIAL.fullmatch(name)
        if match is None:
            raise ValueError(f"sequential_links: leaf '{name}' is not a Conv_i/Dense_i kernel or bias; "
                             "this is not one of lth_jax's sequential networks, pass links explicitly")
        prefixes.add(match["prefix"])
        layer = name.rsplit("/", 1)[0]
        layers.setdefault(layer, (0 if match["kind"] == "Conv" else 1, int(match["index"]), {}))
        layers[layer][2][match["leaf"]] = jnp.shape(leaf)
    if len(prefixes) > 1:
        raise ValueError("sequential_links: layers under different prefixes "
                         f"{sorted(map(str, prefixes))}")
    order = sorted(layers, key=lambda k: layers[k][:2])
    if len(order) < 2:
        raise ValueError(f"sequential_links: need at least two layers, found {order}")
    links = tuple(zip(order[:-1], order[1:]))
    resolve_links(params, links)  # checks kernels and shapes
    return links


class _Producer:
    """Leaf indices of one producer layer and of the kernels that read its units."""

    def __init__(self, name: str, kernel: int, bias: int | None, units: int, fan_in: int):
        self.name, self.kernel, self.bias, self.units, self.fan_in = name, kernel, bias, units, fan_in
        self.consumers: list[int] = []


def resolve_links(tree: PyTree, links: Links) -> list[_Producer]:
    """Validate ``links`` against ``tree``'s paths and shapes; producers in order of first mention."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    index = {masks_lib.path_str(path): i for i, (path, _) in enumerate(flat)}
    shapes = [jnp.shape(leaf) for _, leaf in flat]

    def kernel_of(layer: str) -> int:
        i = index.get(f"{layer}/kernel")
        if i is None:
            raise ValueError(f"links: no leaf '{layer}/kernel'")
        if len(shapes[i]) < 2:
            raise ValueError(f"links: '{layer}/kernel' has shape {shapes[i]}; a kernel has >= 2 dims")
        return i

    producers: dict[str, _Producer] = {}
    consumed: set[str] = set()
    for link in links:
        try:
            producer, consumer = link
        except (TypeError, ValueError):
            raise ValueError(f"links: {link!r} is not a (producer, consumer) pair") from None
        if producer == consumer:
            raise ValueError(f"links: layer '{producer}' feeds itself")
        if consumer in consumed:
            raise ValueError(f"links: '{consumer}' is the consumer of two links; each consumer "
                             "must read exactly one producer's units")
        consumed.add(consumer)
        if producer not in producers:
            k = kernel_of(producer)
            units = shapes[k][-1]
            bias = index.get(f"{producer}/bias")
            if bias is not None and shapes[bias] != (units,):
                raise ValueError(f"links: '{producer}/bias' has shape {shapes[bias]}, the kernel "
                                 f"{shapes[k]} has {units} units")
            producers[producer] = _Producer(producer, k, bias, units, math.prod(shapes[k][:-1]))
        p = producers[producer]
        c = kernel_of(consumer)
        fan = shapes[c][-2]
        if fan % p.units:
            raise ValueError(f"links: '{consumer}/kernel' {shapes[c]} has input size {fan}, not a "
                             f"multiple of the {p.units} units of '{producer}'")
        p.consumers.append(c)
    return list(producers.values())


def _links(tree: PyTree, links: Links | None) -> list[_Producer]:
    return resolve_links(tree, sequential_links(tree) if links is None else links)


def alive_units(mask: PyTree, links: Links | None = None) -> dict[str, jax.Array]:
    """``{producer: bool (units,)}``: a unit is alive while some weight of its kernel column /
    filter is alive. ``links`` default: ``sequential_links(mask)``. Pure; jit- and vmap-able."""
    leaves = jax.tree.leaves(mask)
    return {p.name: jnp.any(leaves[p.kernel].reshape(-1, p.units), axis=0)
            for p in _links(mask, links)}


def _consumer_rows(per_unit: jax.Array, rows: int) -> jax.Array:
    """Consumer input index r reads unit r mod U: tile the per-unit vector over the S positions."""
    return jnp.tile(per_unit, rows // per_unit.shape[0])


def _remove_units(mask_leaves: list, producer: _Producer, dead: jax.Array) -> None:
    """Clear (in the list, functionally) the incoming and outgoing weights of the ``dead`` units."""
    keep = ~dead
    mask_leaves[producer.kernel] = mask_leaves[producer.kernel] & keep  # broadcast on the last axis
    if producer.bias is not None:
        mask_leaves[producer.bias] = mask_leaves[producer.bias] & keep
    for c in producer.consumers:
        m = mask_leaves[c]
        rows = _consumer_rows(keep, m.shape[-2])
        mask_leaves[c] = m & rows[:, None]  # (in, 1) broadcasts over Dense (in, out) and HWIO


def is_consistent(mask: PyTree, links: Links | None = None) -> bool | jax.Array:
    """True iff every dead unit (no alive weight in its column/filter) also has its bias entry and
    all its outgoing weights pruned: the whole-neuron rule. A Python bool on concrete masks, a bool
    array under jit.

    ``neuron_magnitude`` and ``global_neuron_magnitude`` keep it for the producers they prune. One
    case stays False until the next round prunes that layer: a unit whose inputs were *all*
    removed upstream (a layer before it emptied) has a dead column but its own bias, as the
    round left it; it outputs ``relu(bias)``, a constant, and ``compaction`` keeps it.
    """
    leaves = jax.tree.leaves(mask)
    checks = []
    for p in _links(mask, links):
        dead = ~jnp.any(leaves[p.kernel].reshape(-1, p.units), axis=0)
        if p.bias is not None:
            checks.append(~jnp.any(dead & leaves[p.bias]))
        for c in p.consumers:
            rows = _consumer_rows(dead, leaves[c].shape[-2])
            checks.append(~jnp.any(jnp.moveaxis(leaves[c], -2, -1) & rows))
    every = jnp.all(jnp.stack(checks)) if checks else jnp.bool_(True)
    return every if any(is_traced(x) for x in leaves) else bool(every)


# ----------------------------------------------------------------------------- neuron pruning


def _unit_scores(params: PyTree, mask: PyTree, producers: list[_Producer], norm: str) -> list:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    p_leaves, m_leaves = jax.tree.leaves(params), jax.tree.leaves(mask)
    out = []
    for p in producers:
        w = jnp.where(m_leaves[p.kernel], p_leaves[p.kernel].astype(jnp.float32), jnp.float32(0))
        w = w.reshape(-1, p.units)
        out.append(jnp.sum(jnp.abs(w), axis=0) if norm == "l1" else jnp.sqrt(jnp.sum(w * w, axis=0)))
    return out


def neuron_magnitude(params: PyTree, mask: PyTree, rates: PyTree, *, links: Links | None = None,
                     norm: str = "l2") -> PyTree:
    """Per-layer structured pruning: each producer layer loses the ``round(rate · alive units)``
    units (Dense neurons / Conv filters) whose incoming weights have the smallest norm.

    The rate of a producer is its kernel's entry in ``rates`` (e.g. ``rates["Dense_0"]["kernel"]``);
    other leaves' rates are not read (the output layer is no producer: its units never go). A unit's
    score is ``‖m ⊙ w‖₁`` or ``‖m ⊙ w‖₂`` over its kernel column/filter; ties by unit index. Each
    removed unit, and each unit of a pruned producer that was already dead, loses its column/filter,
    bias entry and outgoing rows in the consumers (the whole-neuron rule; module docstring). Norms
    are all taken from ``mask`` as given, so the order of ``links`` does not matter.

    Args:
      params: PyTree of arrays.
      mask: bool PyTree with the params' structure and shapes.
      rates: per-leaf rates in [0, 1] (``pruning.rates_by_rule``); a producer with rate 0 loses no
        unit (its kernel still loses the rows of removed units of the layer before). May be traced.
      links: ``(producer, consumer)`` layer paths; default ``sequential_links(params)``. Python
        strings, read when tracing: close over them, or make them a static argument of
        ``jax.jit`` as a tuple of tuples (hashable).
      norm: "l1" or "l2".
    Returns:
      The new mask, a subset of ``mask``. Pure; jit- and vmap-able.
    """
    masks_lib.check_matches(params, mask)
    producers = _links(params, links)
    rate_leaves = leaves_like(rates, mask, "rates")
    scores = _unit_scores(params, mask, producers, norm)
    out = list(jax.tree.leaves(mask))
    deaths = []
    for p, score in zip(producers, scores):
        rate = rate_leaves[p.kernel]
        check_rate(rate, f"layer '{p.name}'")
        if not is_traced(rate) and float(rate) == 0.0:
            continue
        alive = jnp.any(out[p.kernel].reshape(-1, p.units), axis=0)
        k = pruning.num_to_remove(rate, jnp.sum(alive, dtype=jnp.int32))
        dead = ~remove_lowest(score, alive, k)
        deaths.append((p, dead if not is_traced(rate) else dead & (rate != 0)))
    # Decide every layer's units first (above, from the mask as given), then remove: a consumer's
    # lost rows must not change which of its own units are alive in this round.
    for p, dead in deaths:
        _remove_units(out, p, dead)
    return jax.tree.unflatten(jax.tree.structure(mask), out)


def global_neuron_magnitude(params: PyTree, mask: PyTree, rate: float | jax.Array,
                            prunable: PyTree, *, links: Links | None = None, norm: str = "l2",
                            normalize: str = "fan_in") -> PyTree:
    """Global structured pruning: ``round(rate · alive units)`` units of all selected producers
    together, those with the smallest normalised score (one threshold across layers).

    Normalisation (``normalize``): layers differ in fan-in (a Conv-2 filter has 27 or 576 weights, a
    LeNet neuron 784 or 300), and a raw norm grows with it. ``"fan_in"`` (default) divides the L1
    norm by the fan-in ``F`` (the column's full size, pruned weights counted as 0) and the L2 norm
    by ``√F``: the score is the unit's mean ``|w|`` / root-mean-square weight, on the same scale as
    the per-weight ``|w|`` that ``pruning.global_magnitude`` compares across layers. The divisor is a
    constant per layer, so it never reorders units within a layer. ``"none"`` compares raw norms.
    Ties across layers go by position (producer order in ``links``, then unit index).

    Args:
      params, mask, links, norm: as in ``neuron_magnitude``.
      rate: fraction in [0, 1] of the pooled alive units to remove; may be traced.
      prunable: PyTree with the params' structure; a producer takes part iff its kernel's entry is
        nonzero (``pruning.prunable`` output or a tree of rates); may be traced. Non-producer
        leaves are not read.
      normalize: "fan_in" or "none".
    Returns:
      The new mask, a subset of ``mask``. Pure; jit- and vmap-able.
    """
    masks_lib.check_matches(params, mask)
    check_rate(rate, "global_neuron_magnitude(rate)")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    producers = _links(params, links)
    selected = masks_lib.selected_leaves(mask, prunable)
    chosen = [p for p in producers if selected[p.kernel] is not False]
    if not chosen:
        return mask
    scores = _unit_scores(params, mask, chosen, norm)
    if normalize == "fan_in":
        scores = [s / jnp.float32(p.fan_in if norm == "l1" else math.sqrt(p.fan_in))
                  for p, s in zip(chosen, scores)]
    out = list(jax.tree.leaves(mask))
    alive = []
    for p in chosen:
        a = jnp.any(out[p.kernel].reshape(-1, p.units), axis=0)
        alive.append(a if selected[p.kernel] is True else a & selected[p.kernel])
    pooled_alive = jnp.concatenate(alive)
    k = pruning.num_to_remove(rate, jnp.sum(pooled_alive, dtype=jnp.int32))
    kept = remove_lowest(jnp.concatenate(scores), pooled_alive, k)
    offset = 0
    for p in chosen:
        dead = ~kept[offset:offset + p.units]
        offset += p.units
        use = selected[p.kernel]
        _remove_units(out, p, dead if use is True else dead & use)
    return jax.tree.unflatten(jax.tree.structure(mask), out)
