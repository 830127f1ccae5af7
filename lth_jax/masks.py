"""Masks: PyTrees of booleans with exactly the structure and shapes of the params.

A mask ``m`` says which weights of a network survive: ``m[i] = True`` keeps weight ``θ[i]``,
``False`` prunes it. The sparse network is ``m ⊙ θ``. Leaves that are never pruned (biases,
batch-norm scale and shift, exempt layers) are all-True; there are no ``None`` leaves.

The params may be a Flax Linen ``params`` dict or a Flax NNX state (``nnx.split(model, nnx.Param,
...)``); a mask then has the same structure (an ``nnx.State`` of ``nnx.Param`` holding bool arrays).
Leaf paths are written '/'-joined without NNX's trailing ``value`` attribute, e.g. ``Dense_0/kernel``
(Linen) or ``linear1/kernel`` (NNX).

``prunable`` arguments are PyTrees with the mask's structure whose leaves say whether a leaf counts
(Python bools from ``pruning.prunable``; bool or numeric scalars, nonzero = selected, also work).

Every function here is pure and works under ``jax.jit`` and ``jax.vmap``, with ``prunable`` traced
or not, except the host-side ones that make text or files: ``summary``, ``save`` and ``load``.
Where a result is a Python number on the host (``count``'s total, ``layer_density``, ``is_subset``)
it becomes a JAX array when it depends on traced values.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lth_jax.selection import is_traced

PyTree = Any

#: Format name and version written into a saved mask's structure entry (see ``save``).
FILE_FORMAT = "lth_jax.mask"
FILE_VERSION = 1
#: The entry of a saved ``.npz`` that holds the JSON structure; no leaf may have this path.
STRUCTURE_KEY = "__structure__"


def _is_variable_value(entry: Any) -> bool:
    # An NNX Variable (nnx.Param, ...) is a PyTree node whose one child is `.value`; dropping that
    # step makes NNX paths read like Linen's ("linear/kernel"), so the same rules match both.
    return isinstance(entry, jax.tree_util.GetAttrKey) and entry.name == "value"


def path_str(path: tuple) -> str:
    """'/'-joined names of a key path, e.g. ``(DictKey('Dense_0'), DictKey('kernel'))`` -> 'Dense_0/kernel'.

    A last ``GetAttrKey('value')`` (an NNX Variable's value) is left out: the kernel of an NNX
    ``linear`` layer is ``linear/kernel``.
    """
    if path and _is_variable_value(path[-1]):
        path = path[:-1]
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
    """Raise unless ``mask`` is a valid mask for ``params``. Reads only structure, shapes and dtypes,
    so it works on traced values (under ``jax.jit``) too.

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
        raise ValueError("mask does not match params: same paths but different container types "
                         f"({jax.tree.structure(params)} vs {jax.tree.structure(mask)})")
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


def selected_leaves(mask: PyTree, prunable: PyTree | None) -> list:
    """Per mask leaf: True/False (known now), or a traced bool scalar (known when the program runs).

    ``prunable`` leaves may be Python bools, NumPy/JAX scalars (nonzero = selected, so a tree of
    rates works) or tracers of those (``prunable`` passed as an argument of a jitted function).
    """
    n = len(jax.tree.leaves(mask))
    if prunable is None:
        return [True] * n
    flat = jax.tree_util.tree_flatten_with_path(prunable)[0]
    if len(flat) != n:
        raise ValueError(f"prunable has {len(flat)} leaves, the mask has {n}; make it with "
                         "pruning.prunable from the same params")
    out = []
    for path, s in flat:
        if jnp.ndim(s) != 0:
            raise ValueError(f"prunable leaf '{path_str(path)}' has shape {jnp.shape(s)}; "
                             "prunable holds one scalar per leaf")
        out.append(jnp.asarray(s) != 0 if is_traced(s) else bool(np.asarray(s) != 0))
    return out


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


def count(mask: PyTree, prunable: PyTree | None = None) -> tuple[jax.Array, int | jax.Array]:
    """(alive, total) weights of the leaves selected by ``prunable`` (all leaves when None).

    ``alive`` is an int32 scalar array. ``total`` is a Python int when the selection is known
    (``prunable`` not traced), else an int32 scalar array.
    """
    check_bool(mask)
    alive = jnp.zeros((), jnp.int32)
    total: int | jax.Array = 0
    for m, use in zip(jax.tree.leaves(mask), selected_leaves(mask, prunable)):
        if use is False:
            continue
        size = math.prod(jnp.shape(m))
        n = jnp.sum(m, dtype=jnp.int32)
        if use is True:
            alive, total = alive + n, total + size
        else:  # traced selection: count both ways, pick when the program runs
            alive = alive + jnp.where(use, n, 0)
            total = total + jnp.where(use, jnp.int32(size), 0)
    return alive, total


def density(mask: PyTree, prunable: PyTree | None = None) -> jax.Array:
    """Fraction of the prunable weights that are alive: ``Σ m / |m|`` over the selected leaves.

    Args:
        mask: bool PyTree.
        prunable: PyTree of bools with the mask's structure (see ``pruning.prunable``); None counts
            every leaf. May be traced.
    Returns:
        float32 scalar array in [0, 1] (1.0 when nothing is selected).
    """
    alive, total = count(mask, prunable)
    if isinstance(total, int):
        return jnp.ones((), jnp.float32) if total == 0 else alive.astype(jnp.float32) / jnp.float32(total)
    return jnp.where(total > 0, alive.astype(jnp.float32) / jnp.maximum(total, 1).astype(jnp.float32),
                     jnp.float32(1.0))


def layer_density(mask: PyTree, prunable: PyTree | None = None) -> dict[str, float | jax.Array]:
    """Per-leaf density ``{"Dense_0/kernel": 0.8, ...}`` of the selected leaves, in leaf order.

    On concrete values the densities are Python floats (exact, float64). Under ``jax.jit`` they are
    float32 scalar arrays; if ``prunable`` itself is traced the keys cannot depend on it, so every
    leaf appears and the unselected ones read NaN. An empty leaf has density 1.0.
    """
    check_bool(mask)
    out: dict[str, float | jax.Array] = {}
    flat = jax.tree_util.tree_flatten_with_path(mask)[0]
    for (path, m), use in zip(flat, selected_leaves(mask, prunable)):
        if use is False:
            continue
        if math.prod(jnp.shape(m)) == 0:
            value: float | jax.Array = 1.0
        elif is_traced(m) or use is not True:
            value = jnp.mean(m, dtype=jnp.float32)
        else:
            value = float(np.mean(np.asarray(m)))
        if use is not True:
            value = jnp.where(use, value, jnp.float32(jnp.nan))
        out[path_str(path)] = value
    return out


def overlap(mask_a: PyTree, mask_b: PyTree, prunable: PyTree | None = None) -> jax.Array:
    """Fraction of ``mask_a``'s survivors that also survive in ``mask_b``: ``Σ(a ∧ b) / Σ a``.

    Useful to compare tickets across levels or seeds. float32 scalar; 1.0 when ``a`` is empty.
    """
    check_matches(mask_a, mask_b)
    both = jax.tree.map(jnp.logical_and, mask_a, mask_b)
    alive_both, _ = count(both, prunable)
    alive_a, _ = count(mask_a, prunable)
    return jnp.where(alive_a > 0, alive_both / jnp.maximum(alive_a, 1), 1.0).astype(jnp.float32)


def is_subset(mask_new: PyTree, mask_old: PyTree) -> bool | jax.Array:
    """True iff every weight alive in ``mask_new`` is alive in ``mask_old`` (masks only shrink).

    A Python bool on concrete masks; a bool scalar array under ``jax.jit``.
    """
    check_matches(mask_old, mask_new)
    new, old = jax.tree.leaves(mask_new), jax.tree.leaves(mask_old)
    if any(is_traced(x) for x in new + old):
        return jnp.all(jnp.stack([jnp.all(~n | o) for n, o in zip(new, old)] or [jnp.bool_(True)]))
    return all(bool(np.all(~np.asarray(n) | np.asarray(o))) for n, o in zip(new, old))


def summary(mask: PyTree, prunable: PyTree | None = None) -> str:
    """A human-readable table: one line per selected leaf with alive/total and percent, then the total.

    Host-side (it makes text): call it on concrete masks, e.g. the one a jitted function returns.
    """
    check_bool(mask)
    flat = jax.tree_util.tree_flatten_with_path(mask)[0]
    selected = selected_leaves(mask, prunable)
    if any(is_traced(m) for _, m in flat) or any(not isinstance(s, bool) for s in selected):
        raise TypeError("masks.summary makes text from concrete values; call it outside jax.jit "
                        "(for a traced mask use masks.density / masks.layer_density)")
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


# ----------------------------------------------------------------------------- optax

class MaskedUpdatesState(NamedTuple):
    """State of ``masked_updates``: the mask itself, so that it is a traced argument of a jitted
    train step (one compiled step serves every mask)."""
    mask: PyTree


def masked_updates(mask: PyTree) -> optax.GradientTransformation:
    """An optax transformation that zeroes the updates of pruned weights: ``u ↦ where(m, u, 0)``.

    ``optax.chain(any_optimizer, masks.masked_updates(mask))`` started from ``m ⊙ θ`` keeps every
    pruned weight at exactly 0.0 after every ``optax.apply_updates``, whatever ``any_optimizer``
    adds (momentum, Adam, weight decay): the final update of a pruned weight is exactly 0.0, and
    ``0.0 + 0.0 = 0.0``. Surviving weights get the optimizer's update unchanged.

    Optimizer moments: placed *last*, it does not touch the inner optimizer's state. The gradient
    of a pruned weight is generally nonzero (it is ∂L/∂θ at θ = 0), so Adam's first and second
    moments and SGD's momentum of pruned weights fill up, but are never applied. For elementwise
    optimizers (SGD, momentum, Adam, AdamW, RMSProp, ...) the surviving weights' trajectory is
    exactly the same as if those moments were zero. For optimizers that mix coordinates (global
    gradient clipping, LAMB/LARS trust ratios, Shampoo) the pruned weights' gradients would enter
    the surviving weights' updates; put a second ``masked_updates`` first to zero those gradients:
    ``optax.chain(masks.masked_updates(mask), optimizer, masks.masked_updates(mask))`` — then the
    pruned weights' moments stay exactly 0. (That is what ``lth_jax.train`` does.)

    The mask is stored in the optimizer state (``MaskedUpdatesState``), not baked into the
    program: pass the state through your jitted step and one compilation serves every mask. A new
    mask needs a new state (``tx.init``), as a new pruning level needs a fresh optimizer anyway.

    Args:
        mask: bool PyTree with the params' structure and shapes (Linen params or an NNX state).
    Returns:
        An ``optax.GradientTransformation``; ``init(params)`` checks that ``mask`` matches params.
    """
    check_bool(mask)

    def init_fn(params: PyTree) -> MaskedUpdatesState:
        check_matches(params, mask)
        return MaskedUpdatesState(mask=mask)

    def update_fn(updates: PyTree, state: MaskedUpdatesState, params: PyTree | None = None):
        del params
        # Zip leaves in order rather than tree.map: wrappers such as nnx.Optimizer hand over the
        # updates and the stored mask as differently wrapped (pure vs Variable) NNX states.
        u_leaves, treedef = jax.tree.flatten(updates)
        m_leaves = jax.tree.leaves(state.mask)
        if len(u_leaves) != len(m_leaves):
            raise ValueError(f"masked_updates: the updates have {len(u_leaves)} leaves, the mask "
                             f"{len(m_leaves)}")
        out = []
        for path, u, m in zip(leaf_paths(updates), u_leaves, m_leaves):
            if jnp.shape(u) != jnp.shape(m):
                raise ValueError(f"masked_updates: update '{path}' has shape {jnp.shape(u)}, "
                                 f"the mask {jnp.shape(m)}")
            out.append(jnp.where(m, u, jnp.zeros((), jnp.result_type(u))))
        return jax.tree.unflatten(treedef, out), state

    return optax.GradientTransformation(init_fn, update_fn)


# ----------------------------------------------------------------------------- files

def _nnx():
    from flax import nnx  # local: Linen-only users never pay for importing NNX here
    return nnx


def _encode(node: Any, prefix: tuple[str, ...], arrays: dict[str, np.ndarray]) -> dict:
    """The JSON description of ``node``; its leaves go into ``arrays`` under their '/'-paths."""
    nnx = _nnx()
    name = "/".join(prefix)
    if isinstance(node, nnx.Variable):
        cls = type(node)
        return {"nnx_variable": f"{cls.__module__}:{cls.__qualname__}",
                "value": _encode(node.get_value(), prefix, arrays)}
    if type(node) is nnx.State:
        # One level of the State's own flattening: its children as stored (nested levels are
        # plain dicts; indexing a State would wrap them in States).
        children = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)[0]
        return {"nnx_state": [[entry.key, _encode(v, prefix + (str(entry.key),), arrays)]
                              for (entry,), v in children]}
    if isinstance(node, dict) and type(node) is dict:
        return {"dict": [[k, _encode(v, prefix + (str(k),), arrays)] for k, v in node.items()]}
    if type(node) in (list, tuple):
        return {type(node).__name__: [_encode(v, prefix + (str(i),), arrays) for i, v in enumerate(node)]}
    if node is None:
        return {"none": None}
    if not jax.tree_util.all_leaves([node]):
        raise TypeError(f"masks.save: cannot describe a {type(node).__name__} node at '{name}'; "
                        "masks are saved as nested dicts, lists, tuples and NNX states")
    if is_traced(node):
        raise TypeError("masks.save writes concrete values; call it outside jax.jit")
    value = np.asarray(node)
    if value.dtype != np.bool_:
        raise TypeError(f"mask leaf '{name}' has dtype {value.dtype}; masks are bool")
    if name == STRUCTURE_KEY:
        raise ValueError(f"masks.save: a leaf may not be called {STRUCTURE_KEY!r}")
    if name in arrays:
        raise ValueError(f"masks.save: two leaves share the path '{name}' (a key contains '/'?)")
    arrays[name] = value
    return {"leaf": name}


def _decode(node: dict, arrays: Any, used: list[str]) -> Any:
    kind = next((k for k in node if k != "value"), "")
    body = node.get(kind)
    if kind == "leaf":
        used.append(body)
        return jnp.asarray(arrays[body])
    if kind == "dict":
        return {k: _decode(v, arrays, used) for k, v in body}
    if kind in ("list", "tuple"):
        items = [_decode(v, arrays, used) for v in body]
        return items if kind == "list" else tuple(items)
    if kind == "none":
        return None
    nnx = _nnx()
    if kind == "nnx_state":
        return nnx.State({k: _decode(v, arrays, used) for k, v in body})
    if kind == "nnx_variable":
        import importlib
        module, qualname = body.split(":")
        cls: Any = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        if not (isinstance(cls, type) and issubclass(cls, nnx.Variable)):
            raise ValueError(f"masks.load: {body} is not an nnx.Variable type")
        return cls(_decode(node["value"], arrays, used))
    raise ValueError(f"masks.load: unknown structure node {node!r}")


def save(path: str | os.PathLike, mask: PyTree) -> None:
    """Write a bool PyTree (a mask, or any tree of bools) to ``path``; read it with ``load``.

    Format: a NumPy ``.npz`` (zip) file written at exactly ``path`` (``.npz`` is the natural suffix,
    none is added). Each leaf is a bool array stored under its '/'-joined path (``Dense_0/kernel``;
    for NNX ``linear/kernel``) and the entry ``__structure__`` holds a JSON string
    ``{"format": "lth_jax.mask", "version": 1, "tree": NODE}`` that describes the containers:
    ``{"dict": [[key, NODE], ...]}``, ``{"list": [...]}``, ``{"tuple": [...]}``, ``{"none": null}``,
    ``{"nnx_state": [[key, NODE], ...]}``, ``{"nnx_variable": "module:Class", "value": NODE}`` and
    ``{"leaf": "Dense_0/kernel"}``. Inspect one with NumPy alone::

        f = numpy.load("mask.npz"); f.files; f["Dense_0/kernel"].mean(); str(f["__structure__"])

    Python bool leaves (e.g. a ``prunable`` tree) are stored as 0-d arrays and load as such. The
    write is atomic (a temporary file renamed into place). Host-side: not for use under ``jax.jit``.

    Raises:
        TypeError: a leaf is not bool, or a container is not one of those above.
        ValueError: two leaves would get the same path.
    """
    arrays: dict[str, np.ndarray] = {}
    tree = _encode(mask, (), arrays)
    header = {"format": FILE_FORMAT, "version": FILE_VERSION, "tree": tree}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays, **{STRUCTURE_KEY: np.array(json.dumps(header))})
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".mask-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getvalue())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path: str | os.PathLike, like: PyTree | None = None) -> PyTree:
    """Read a mask written by ``save``. Leaves come back as JAX bool arrays.

    Args:
        path: the file ``save`` wrote.
        like: optional PyTree (e.g. the params) whose structure the result takes. Its leaves' paths
            and shapes must equal the saved ones. Use it for containers ``save`` records only by
            kind, e.g. NNX variables whose metadata (sharding) the params carry.
    Raises:
        ValueError: not an lth_jax mask file, or ``like`` does not match it (paths/shapes named).
    """
    with np.load(os.fspath(path), allow_pickle=False) as f:
        if STRUCTURE_KEY not in f.files:
            raise ValueError(f"{os.fspath(path)}: not an lth_jax mask file (no {STRUCTURE_KEY!r} entry)")
        header = json.loads(str(f[STRUCTURE_KEY]))
        if header.get("format") != FILE_FORMAT or header.get("version") != FILE_VERSION:
            raise ValueError(f"{os.fspath(path)}: format {header.get('format')!r} version "
                             f"{header.get('version')!r}; expected {FILE_FORMAT!r} {FILE_VERSION}")
        arrays = {name: f[name] for name in f.files if name != STRUCTURE_KEY}
    if like is None:
        return _decode(header["tree"], arrays, [])
    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    names = [path_str(p) for p, _ in flat]
    missing = [n for n in names if n not in arrays]
    extra = [n for n in arrays if n not in names]
    if missing or extra:
        raise ValueError(f"{os.fspath(path)} does not match `like`: "
                         + "; ".join(part for part in (
                             f"not in the file: {', '.join(missing[:5])}" if missing else "",
                             f"not in `like`: {', '.join(extra[:5])}" if extra else "") if part))
    for (_, leaf), name in zip(flat, names):
        if jnp.shape(leaf) != arrays[name].shape:
            raise ValueError(f"{os.fspath(path)}: '{name}' has shape {arrays[name].shape}, "
                             f"`like` has {jnp.shape(leaf)}")
    return jax.tree.unflatten(treedef, [jnp.asarray(arrays[n]) for n in names])
