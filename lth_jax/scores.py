"""Cheaper tickets: masks at a target density from scores (pruning at initialisation: SNIP, GraSP,
SynFlow; one-shot magnitude) and early-bird tickets.

Every mask-making function here is pure, ``(params, mask, ...) -> new mask``, and works under
``jax.jit`` and ``jax.vmap`` like :mod:`lth_jax.pruning`. The network enters as a function the
caller passes in (close over it, or make it a static argument, under ``jax.jit``)::

    loss_fn(params, batch) -> scalar loss        # SNIP, GraSP
    apply_fn(params, x) -> outputs (logits)      # SynFlow (data-free)

e.g. ``loss_fn = lambda p, b: optax.softmax_cross_entropy_with_integer_labels(model.apply({"params":
p}, b[0]), b[1]).mean()``. ``batches`` is any PyTree whose leaves share a leading axis of the
number of batches (``(x, y)`` with ``x`` of shape ``(n, B, 28, 28, 1)``); the functions loop over
it with ``lax.scan``, one batch in memory at a time.

**Target density.** ``density`` is the fraction of the prunable weights that the new mask keeps,
counted against their *total* number (as ``masks.density`` counts): a round keeps exactly
``keep = round(density · total)`` weights (float32 product, round half to even — the counting rule
of :mod:`lth_jax.pruning`), namely the ``keep`` surviving weights with the highest scores.

* ``allocation="global"``: ``density`` is one number; ``total`` and the ranking pool all prunable
  leaves together (SNIP, GraSP and SynFlow are global in their papers).
* ``allocation="layerwise"``: per leaf, ``keep_l = round(density_l · size_l)``; ``density`` is one
  number for every prunable leaf, or a PyTree of per-leaf densities with the params' structure
  (e.g. ``densities_from_rates(pruning.rates_by_rule(...), rounds)``, or an IMP ticket's
  ``densities_like(ticket)``).

Pruned weights never come back (masks only shrink): if a mask already has ``keep`` or fewer
survivors it is returned unchanged. Leaves outside ``prunable`` are never touched. Ties at the
threshold are broken by position exactly as in :mod:`lth_jax.pruning` (among equal scores the
weight that comes first — earlier leaf, then lower row-major index — is removed first; NaN counts
as the largest score). The selection uses ``selection.keep_highest`` (pruning's core) for that reason.

**Cost** (for comparing with IMP's full trainings), per call: ``snip`` — one forward+backward
pass per batch; ``grasp`` — one forward+backward per batch for g, then one forward-over-reverse
pass (``jax.jvp`` of the gradient, about two forward+backward) per batch for Hg; ``synflow`` —
``rounds`` forward+backward passes on a single all-ones example; ``magnitude`` — none.

**Batch norm.** The loss or apply function decides the mode. SNIP and GraSP use the batch
statistics of each batch in their reference code (training mode): write ``loss_fn`` with
``train=True, mutable=["batch_stats"]`` and drop the returned statistics (nothing here keeps
state). SynFlow runs in evaluation mode: close ``apply_fn`` over the ``batch_stats`` at
initialisation (running mean 0, variance 1, so each BN layer is the affine map
``|γ|·x/√(1+ε) + |β|`` of the absolute-valued params). Only ``params`` are made absolute; the
reference code also takes ``|·|`` of the running statistics, which at initialisation changes
nothing.

**Early-bird tickets** (You et al., ICLR 2020): ``hamming_distance`` between consecutive magnitude
masks of the training network, and ``early_bird_init`` / ``early_bird_update``, a pure detector
whose state goes through a jitted or scanned training loop. Defaults ``ε = 0.1``, window ``W = 5``
(the paper's).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from lth_jax import masks as masks_lib
from lth_jax import pruning
from lth_jax.selection import is_traced, keep_highest, pool, unpool

PyTree = Any
Allocation = Literal["global", "layerwise"]
LossFn = Callable[[PyTree, Any], jax.Array]
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]

ALLOCATIONS = ("global", "layerwise")
#: Early-bird defaults from You et al. (ICLR 2020): stop when the normalised Hamming distance of
#: consecutive masks stays below ε = 0.1 for a FIFO window of 5 distances.
EARLY_BIRD_EPSILON = 0.1
EARLY_BIRD_WINDOW = 5
#: SynFlow's default number of rounds (Tanaka et al., NeurIPS 2020 use 100).
SYNFLOW_ROUNDS = 100


def _check_fraction(value: Any, what: str) -> None:
    if is_traced(value):
        return
    v = float(value)
    if not 0.0 <= v <= 1.0:  # NaN fails too
        raise ValueError(f"{what} {value!r} is outside [0, 1]")


def _is_scalar(tree: Any) -> bool:
    return jax.tree_util.treedef_is_leaf(jax.tree.structure(tree)) and jnp.ndim(tree) == 0


def _score_dtype(x: jax.Array) -> Any:
    # Rank in at least float32 (as pruning does); keep float64 scores (SynFlow with x64) as they are.
    return jnp.promote_types(jnp.result_type(x), jnp.float32)


def _count(fraction: Any, n: Any) -> jax.Array:
    """``round(fraction · n)`` as int32: float32 product, round half to even (pruning's rule)."""
    return pruning.num_to_remove(fraction, n)


def mask_from_scores(scores: PyTree, mask: PyTree, density: Any, prunable: PyTree,
                     allocation: Allocation = "global") -> PyTree:
    """Keep the highest-scoring surviving weights: exactly ``round(density · total)`` of them.

    Args:
      scores: PyTree of real arrays with the mask's structure and shapes (only prunable leaves are
        read). Ranked in float32 (float64 stays float64).
      mask: bool PyTree, the current survivors.
      density: target fraction in [0, 1] of the prunable weights (of their total, not of the
        survivors). ``"global"``: a scalar. ``"layerwise"``: a scalar for every prunable leaf, or a
        PyTree of per-leaf scalars with the mask's structure. May be traced.
      prunable: PyTree of bools with the mask's structure (``pruning.prunable``; nonzero numbers
        count as True); may be traced. Other leaves are returned untouched.
      allocation: ``"global"`` (one ranking over all prunable weights) or ``"layerwise"`` (per leaf).
    Returns:
      The new mask, a subset of ``mask``: where ``mask`` had more than ``keep`` survivors, exactly
      ``keep`` survive (per leaf or pooled); otherwise unchanged. Pure; jit- and vmap-able.
    Raises:
      ValueError: unknown allocation, a density outside [0, 1], a non-scalar density for
        ``"global"``, or trees that do not match.
    """
    masks_lib.check_matches(scores, mask)
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
    mask_leaves = jax.tree.leaves(mask)
    score_leaves = jax.tree.leaves(scores)
    selected = masks_lib.selected_leaves(mask, prunable)
    treedef = jax.tree.structure(mask)

    if allocation == "global":
        if not _is_scalar(density):
            raise ValueError("allocation='global' takes one scalar density; per-leaf densities "
                             "need allocation='layerwise'")
        _check_fraction(density, "density")
        chosen, alive = pool(mask_leaves, selected)
        if not chosen:
            return mask
        dtype = jnp.result_type(*[_score_dtype(score_leaves[i]) for i in chosen])
        flat_scores = jnp.concatenate([score_leaves[i].astype(dtype).reshape(-1) for i in chosen])
        # A traced selection pools the leaf and decides when the program runs whether it counts.
        total: Any = 0
        for i in chosen:
            size = math.prod(mask_leaves[i].shape)
            total = total + (size if selected[i] is True else jnp.where(selected[i], size, 0))
        kept = keep_highest(flat_scores, alive, _count(density, total))
        out = unpool(kept, mask_leaves, selected, chosen)
        return jax.tree.unflatten(treedef, out)

    if _is_scalar(density):
        densities = [density] * len(mask_leaves)
    else:
        densities = jax.tree.leaves(density)
        if len(densities) != len(mask_leaves):
            raise ValueError(f"density has {len(densities)} leaves, the mask {len(mask_leaves)}; "
                             "give one density per leaf (params' structure) or a scalar")
    paths = masks_lib.leaf_paths(mask)
    out = []
    for path, m, s, d, use in zip(paths, mask_leaves, score_leaves, densities, selected):
        if use is False:
            out.append(m)
            continue
        if jnp.ndim(d) != 0:
            raise ValueError(f"density for '{path}' has shape {jnp.shape(d)}; one scalar per leaf")
        _check_fraction(d, f"density for '{path}'")
        if not is_traced(d) and float(d) == 1.0:
            out.append(m)  # keeps every weight: nothing to sort
            continue
        flat = m.reshape(-1)
        new = keep_highest(s.astype(_score_dtype(s)).reshape(-1), flat,
                            _count(d, flat.shape[0])).reshape(m.shape)
        out.append(new if use is True else jnp.where(use, new, m))
    return jax.tree.unflatten(treedef, out)


def densities_like(mask: PyTree) -> PyTree:
    """Per-leaf densities of ``mask`` as a PyTree with its structure (float32 scalars), for
    ``allocation="layerwise"``: another method at exactly the layer proportions of a given mask
    (e.g. an IMP ticket's). ``mask_from_scores(s, dense, densities_like(ticket), ...)`` keeps exactly
    the ticket's count in every leaf: ``float32(c/n)·n`` rounds back to ``c`` (provably below 2^22
    weights per leaf; checked for every ``c`` at leaf sizes up to 2^24 − 1). jit- and vmap-able.
    """
    masks_lib.check_bool(mask)
    return jax.tree.map(lambda m: jnp.mean(m, dtype=jnp.float32) if m.size else jnp.float32(1.0), mask)


def densities_from_rates(rates: PyTree, rounds: int = 1) -> PyTree:
    """Per-leaf densities ``(1 − r)^rounds`` from per-round rates (``pruning.rates_by_rule``).

    The densities the rates reach after ``rounds`` rounds (up to the per-round rounding of counts),
    for ``allocation="layerwise"``: e.g. the layer proportions of the paper's IMP at level L.
    A leaf with rate 0 gets density 1.0 (untouched). Python floats for Python rates.
    """
    if int(rounds) != rounds or rounds < 0:
        raise ValueError(f"rounds must be an integer >= 0, got {rounds!r}")

    def one(rate: Any) -> Any:
        _check_fraction(rate, "rate")
        if is_traced(rate):
            return (1.0 - jnp.asarray(rate, jnp.float32)) ** int(rounds)
        return (1.0 - float(rate)) ** int(rounds)

    return jax.tree.map(one, rates)


# ----------------------------------------------------------------------------- scores

def _num_batches(batches: PyTree) -> int:
    leaves = jax.tree.leaves(batches)
    if not leaves:
        raise ValueError("batches is empty; pass a PyTree whose leaves have a leading batch axis")
    sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
    if None in sizes or len(sizes) != 1:
        raise ValueError(f"every leaf of batches needs the same leading axis (the number of "
                         f"batches); got leading sizes {sorted(map(str, sizes))}")
    (n,) = sizes
    if n == 0:
        raise ValueError("batches holds 0 batches")
    return n


def _mean_over_batches(fn: Callable[[Any], PyTree], batches: PyTree, like: PyTree) -> PyTree:
    """``mean_b fn(batch_b)`` by ``lax.scan`` (one batch at a time); ``fn`` returns a tree like ``like``."""
    n = _num_batches(batches)

    def body(acc: PyTree, batch: Any) -> tuple[PyTree, None]:
        return jax.tree.map(jnp.add, acc, fn(batch)), None

    total, _ = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, like), batches)
    return jax.tree.map(lambda t: t / n, total)


def _masked_grad(loss_fn: LossFn, mask: PyTree) -> Callable[[PyTree, Any], PyTree]:
    """``θ, batch ↦ ∇_θ L(m ⊙ θ, batch)``: the pruned network's gradient; 0 at pruned weights."""
    return jax.grad(lambda theta, batch: loss_fn(masks_lib.apply(theta, mask), batch))


def snip_scores(loss_fn: LossFn, params: PyTree, mask: PyTree, batches: PyTree) -> PyTree:
    """SNIP's connection sensitivity (Lee et al., ICLR 2019): ``|θ̃ ⊙ ḡ|``.

    ``θ̃ = m ⊙ θ`` and ``ḡ = mean_b ∇_θ L(θ̃, batch_b)`` (the gradient averaged over the batches,
    then multiplied — what the SynFlow authors' reference code does; SNIP itself uses one batch).
    This is ``|∂L/∂c|`` at ``c = 1`` for a multiplicative gate ``c`` on each weight. SNIP's
    normalisation by the sum does not change the ranking and is left out.

    Args:
      loss_fn: ``(params, batch) -> scalar``.
      params: float PyTree θ (usually θ₀).
      mask: bool PyTree; pruned weights score 0.
      batches: PyTree with a leading axis of batches (see the module docstring).
    Returns:
      A PyTree like ``params`` of non-negative scores (every leaf; only prunable ones matter).
    """
    masks_lib.check_matches(params, mask)
    grad = _masked_grad(loss_fn, mask)
    g = _mean_over_batches(lambda b: grad(params, b), batches, params)
    return jax.tree.map(lambda t, gi: jnp.abs(t * gi), masks_lib.apply(params, mask), g)


def grasp_scores(loss_fn: LossFn, params: PyTree, mask: PyTree, batches: PyTree,
                 prunable: PyTree | None = None) -> PyTree:
    """GraSP's score (Wang et al., ICLR 2020), in the paper's sign: ``S = −θ̃ ⊙ Hg``.

    ``g = mean_b ∇L_b`` and ``Hg = mean_b ∇²L_b · g`` at ``θ̃ = m ⊙ θ``, both of the pruned network
    (derivatives of ``L(m ⊙ θ)``, so rows and columns of pruned weights are 0). As in the reference
    code, ``g`` is restricted to the ``prunable`` leaves (the Conv/Dense kernels): ``Hg = H·g_w``.
    ``Hg`` is a Hessian-vector product, ``jax.jvp`` of the gradient function in direction ``g``
    (forward-over-reverse; no Hessian is formed).

    **Sign.** ``S ≈`` the first-order change of the gradient norm ``gᵀg`` when a weight is removed
    (set to 0), up to a factor 2: a *large* ``S`` means removing the weight *reduces* gradient flow
    *least* (or increases it). GraSP therefore removes the weights with the **largest** ``S`` and
    keeps the lowest; ``grasp`` does that (it ranks ``−S``). The reference code computes ``g`` and
    ``Hg`` on logits divided by a temperature ``T = 200``; put that in ``loss_fn`` to match it.

    Args:
      loss_fn: ``(params, batch) -> scalar``; must be twice differentiable.
      params, mask, batches: as for ``snip_scores``.
      prunable: PyTree of bools (may be traced) selecting the leaves of ``g``; None = every leaf.
    Returns:
      A PyTree like ``params``: ``−θ̃ ⊙ Hg`` on every leaf.
    """
    masks_lib.check_matches(params, mask)
    grad = _masked_grad(loss_fn, mask)
    g = _mean_over_batches(lambda b: grad(params, b), batches, params)
    selected = masks_lib.selected_leaves(mask, prunable)
    g = jax.tree.unflatten(jax.tree.structure(g), [
        x if s is True else jnp.zeros_like(x) if s is False else jnp.where(s, x, jnp.zeros_like(x))
        for x, s in zip(jax.tree.leaves(g), selected)])

    def hvp(batch: Any) -> PyTree:
        return jax.jvp(lambda theta: grad(theta, batch), (params,), (g,))[1]

    hg = _mean_over_batches(hvp, batches, params)
    return jax.tree.map(lambda t, h: -(t * h), masks_lib.apply(params, mask), hg)


def synflow_scores(apply_fn: ApplyFn, params: PyTree, mask: PyTree, input_shape: Sequence[int],
                   dtype: Any = jnp.float32) -> PyTree:
    """SynFlow's synaptic saliency (Tanaka et al., NeurIPS 2020): ``|θ̃ ⊙ ∂R/∂θ|``, data-free.

    ``R = 1ᵀ f(|θ̃|, 1)``: the sum of the outputs of the network run with every param replaced by
    its absolute value (``θ̃ = m ⊙ θ``, biases too, as in the reference code) on one all-ones input
    of shape ``(1, *input_shape)``. For a bias-free ReLU network ``R = 1ᵀ(∏_l |W_l|)1`` (all
    activations are non-negative, so ReLU is the identity), and the scores of each layer sum to R.
    For a 2-layer linear net ``x ↦ x·W1·W2``: ``score(W1[i,j]) = |W1[i,j]|·Σ_k |W2[j,k]|`` and
    ``score(W2[j,k]) = |W2[j,k]|·(Σ_i |W1[i,j]| + |b1[j]|)``.

    Args:
      apply_fn: ``(params, x) -> outputs`` in evaluation mode (see the module docstring on BN).
      params, mask: as for ``snip_scores``.
      input_shape: per-example input shape, e.g. ``(28, 28, 1)``.
      dtype: dtype of the forward pass. ``R`` is a product over layers and can overflow float32 in
        very deep nets; the reference code uses float64, here that needs ``jax_enable_x64``.
    Returns:
      A PyTree like ``params`` of non-negative scores of ``dtype``.
    """
    masks_lib.check_matches(params, mask)
    x = jnp.ones((1, *tuple(input_shape)), dtype)

    def r(theta: PyTree) -> jax.Array:
        positive = jax.tree.map(jnp.abs, masks_lib.apply(theta, mask))
        return jnp.sum(apply_fn(positive, x))

    theta = jax.tree.map(lambda p: jnp.asarray(p).astype(dtype), params)
    g = jax.grad(r)(theta)
    return jax.tree.map(lambda t, gi: jnp.abs(t * gi), masks_lib.apply(theta, mask), g)


# ----------------------------------------------------------------------------- masks

def magnitude(params: PyTree, mask: PyTree, density: Any, prunable: PyTree,
              allocation: Allocation = "global") -> PyTree:
    """One-shot magnitude pruning to a target density: keep the ``round(density · total)`` largest
    ``|w|`` (``mask_from_scores`` with ``|θ|``). The early-bird mask of a training network is
    ``magnitude(params, masks.ones_like(params), density, prunable)``."""
    masks_lib.check_matches(params, mask)
    return mask_from_scores(jax.tree.map(lambda p: jnp.abs(p.astype(_score_dtype(p))), params),
                            mask, density, prunable, allocation)


def snip(loss_fn: LossFn, params: PyTree, mask: PyTree, batches: PyTree, density: Any,
         prunable: PyTree, allocation: Allocation = "global") -> PyTree:
    """SNIP: keep the weights with the highest ``snip_scores`` at ``density`` (one shot).

    Cost: one forward+backward pass per batch. Returns a subset of ``mask``; pure, jit/vmap-able.
    """
    return mask_from_scores(snip_scores(loss_fn, params, mask, batches), mask, density, prunable,
                            allocation)


def grasp(loss_fn: LossFn, params: PyTree, mask: PyTree, batches: PyTree, density: Any,
          prunable: PyTree, allocation: Allocation = "global") -> PyTree:
    """GraSP: remove the weights with the *largest* ``S = −θ̃ ⊙ Hg`` (``grasp_scores``), keeping the
    ``round(density · total)`` lowest (one shot; ties: the earlier weight is removed first).

    Cost: per batch one forward+backward (g) and one jvp of the gradient (Hg).
    """
    s = grasp_scores(loss_fn, params, mask, batches, prunable)
    return mask_from_scores(jax.tree.map(jnp.negative, s), mask, density, prunable, allocation)


def synflow(apply_fn: ApplyFn, params: PyTree, mask: PyTree, density: Any, prunable: PyTree, *,
            input_shape: Sequence[int], rounds: int = SYNFLOW_ROUNDS,
            allocation: Allocation = "global", dtype: Any = jnp.float32) -> PyTree:
    """Iterative SynFlow: ``rounds`` rounds of scoring and pruning on an exponential schedule.

    Round ``k = 1..n`` re-scores the current mask (``synflow_scores``) and keeps
    ``round(density^(k/n) · total)`` weights (per leaf for ``"layerwise"``, with ``density_l^(k/n)``);
    the last round uses ``density`` itself, so the result has exactly the target count (when the
    mask started with more). Rounds run in a ``lax.fori_loop``: one compiled body.

    Args:
      apply_fn, params, mask, input_shape, dtype: as for ``synflow_scores``.
      density, prunable, allocation: as for ``mask_from_scores``.
      rounds: number of rounds n, a Python int >= 1 (the paper: 100).
    Cost: ``rounds`` forward+backward passes on one example.
    """
    masks_lib.check_matches(params, mask)
    if int(rounds) != rounds or rounds < 1:
        raise ValueError(f"rounds must be an integer >= 1, got {rounds!r}")
    rounds = int(rounds)
    # Validate here: inside the loop the densities are traced.
    if _is_scalar(density):
        _check_fraction(density, "density")
    else:
        for d in jax.tree.leaves(density):
            _check_fraction(d, "density")

    def round_density(d: Any, k: jax.Array) -> jax.Array:
        d = jnp.asarray(d, jnp.float32)
        return jnp.where(k == rounds, d, d ** (k.astype(jnp.float32) / rounds))

    def body(k: jax.Array, m: PyTree) -> PyTree:
        d_k = jax.tree.map(lambda d: round_density(d, k), density)
        s = synflow_scores(apply_fn, params, m, input_shape, dtype)
        return mask_from_scores(s, m, d_k, prunable, allocation)

    return jax.lax.fori_loop(1, rounds + 1, body, mask)


# ----------------------------------------------------------------------------- early bird

def hamming_distance(mask_a: PyTree, mask_b: PyTree, prunable: PyTree | None = None) -> jax.Array:
    """Normalised Hamming distance: the fraction of the selected weights whose mask bits differ.

    ``Σ [a ≠ b] / total`` over the leaves selected by ``prunable`` (None: every leaf; pass
    ``pruning.prunable(params)`` so that never-pruned leaves do not dilute it). float32 scalar in
    [0, 1]; 0.0 when nothing is selected. Two masks of density ``p`` are at most ``2·min(p, 1−p)``
    apart. jit- and vmap-able.
    """
    masks_lib.check_matches(mask_a, mask_b)
    differ, total = masks_lib.count(jax.tree.map(jnp.not_equal, mask_a, mask_b), prunable)
    total = jnp.asarray(total, jnp.float32)
    return jnp.where(total > 0, differ.astype(jnp.float32) / jnp.maximum(total, 1.0),
                     jnp.float32(0.0))


class EarlyBirdState(NamedTuple):
    """State of the early-bird detector; every field is an array (or a bool PyTree), so the state
    can be carried through ``lax.scan`` / ``jax.jit`` and batched with ``jax.vmap``.

    Attributes:
      previous: the last mask fed.
      evaluations: int32, how many masks were fed.
      distance: float32, Hamming distance of the last mask to the one before (+inf after the first).
      streak: int32, how many consecutive distances, ending with the last, were below ε.
      found: bool, whether the detector has fired (it stays True).
      found_at: int32, the 0-based index of the evaluation (mask) at which it fired; -1 before.
      ticket: the early-bird mask: the mask fed when the detector fired, frozen from then on;
        until it fires, the last mask fed (the fallback when training ends first).
    """
    previous: PyTree
    evaluations: jax.Array
    distance: jax.Array
    streak: jax.Array
    found: jax.Array
    found_at: jax.Array
    ticket: PyTree


def early_bird_init(like: PyTree) -> EarlyBirdState:
    """The detector before any mask: ``like`` is any mask with the right structure (e.g.
    ``masks.ones_like(params)``); it is not counted as an evaluation."""
    masks_lib.check_bool(like)
    return EarlyBirdState(previous=like, evaluations=jnp.zeros((), jnp.int32),
                          distance=jnp.full((), jnp.inf, jnp.float32),
                          streak=jnp.zeros((), jnp.int32), found=jnp.zeros((), jnp.bool_),
                          found_at=jnp.full((), -1, jnp.int32), ticket=like)


def early_bird_update(state: EarlyBirdState, mask: PyTree, prunable: PyTree,
                      epsilon: Any = EARLY_BIRD_EPSILON,
                      window: Any = EARLY_BIRD_WINDOW) -> EarlyBirdState:
    """Feed the mask of one evaluation; the detector fires when the last ``window`` distances
    between consecutive masks are all ``< epsilon``.

    With masks ``m_0, m_1, …`` fed in order and ``d_t = hamming_distance(m_t, m_{t−1})``, it fires
    at the first ``t`` with ``d_{t−W+1}, …, d_t < ε`` (so ``t ≥ W``: ``W + 1`` masks at least), and
    ``state.ticket`` is ``m_t``. This is the paper's rule (a FIFO of the last ``W = 5`` distances of
    consecutive epochs, drawn when its maximum is below ``ε = 0.1``). The authors' code instead
    compares the newest mask with each of the previous 4 and fires when all those distances are
    ``≤ 0.1``; that is a stricter check over the same 5 masks.

    You et al. prune channels (batch-norm scaling factors); here the mask is unstructured, typically
    ``scores.magnitude(params, masks.ones_like(params), density, prunable)`` of the dense network
    being trained, at the target density.

    Args:
      state: from ``early_bird_init`` or a previous update.
      mask: bool PyTree with the state's structure.
      prunable: leaves the distance counts (see ``hamming_distance``); may be traced.
      epsilon: distance threshold ε (strict ``<``); may be traced.
      window: W, number of consecutive distances below ε; may be traced.
    Returns:
      The new state. Pure; jit- and vmap-able.
    """
    masks_lib.check_matches(state.previous, mask)
    if not is_traced(epsilon) and not float(epsilon) >= 0.0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon!r}")
    if not is_traced(window) and (int(window) != window or window < 1):
        raise ValueError(f"window must be an integer >= 1, got {window!r}")
    distance = jnp.where(state.evaluations > 0, hamming_distance(mask, state.previous, prunable),
                         jnp.float32(jnp.inf))
    streak = jnp.where(distance < epsilon, state.streak + 1, 0).astype(jnp.int32)
    fire = ~state.found & (streak >= window)
    ticket = jax.tree.map(lambda t, m: jnp.where(state.found, t, m), state.ticket, mask)
    return EarlyBirdState(previous=mask, evaluations=state.evaluations + 1, distance=distance,
                          streak=streak, found=state.found | fire,
                          found_at=jnp.where(fire, state.evaluations, state.found_at).astype(jnp.int32),
                          ticket=ticket)
