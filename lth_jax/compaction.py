"""Compaction: a structurally pruned network as a smaller dense network with the same outputs.

A masked network with whole units pruned (``structured.neuron_magnitude``) still runs at its full
size: the pruned weights are zeros in dense matrices. ``compact`` removes those units for real: it
returns a network of the same family with fewer neurons / filters and params cut out of the masked
ones, which computes the same logits (up to float32 summation order) at a fraction of the cost.

Families (all with Flax's auto names ``Conv_i`` / ``Dense_i``, so paths and rules carry over):

* LeNet-300-100 (``models.LeNet300100``) and ``CompactMLP(features=(h1, h2, ...))``: flatten, hidden
  Dense + ReLU layers of widths ``features``, output Dense. ``CompactMLP((300, 100))`` is
  LeNet-300-100 (same params, same init).
* Conv-2/4/6 (``models.ConvNet``) and ``CompactConvNet(conv_features=..., dense_features=...)``: one
  3×3 SAME conv + ReLU per entry of ``conv_features``, a 2×2 max-pool after every second conv,
  flatten, hidden Dense + ReLU (+ dropout) per entry of ``dense_features``, output Dense.
  ``CompactConvNet((64, 64), (256, 256))`` is Conv-2.

``models.LeNet300100`` and ``models.ConvNet`` fix their hidden widths (300/100; 256/256, and one
width per pair of convs), so the compact families are defined here rather than in ``models``.

Which units go (``kept_units``): a hidden unit is removed when it provably cannot change the
logits, judged from the mask alone: it has no alive incoming weight and no alive bias (it outputs
``relu(0) = 0``), or no alive outgoing weight (nothing reads it). Removing a unit drops its column
and bias and its outgoing rows, which may make a unit of the next layer removable in turn; this is
repeated until nothing changes. A mask made by ``structured.neuron_magnitude`` loses exactly its
removed units; an unstructured mask loses just the units it happens to have cut off.

Host-side: the result's shapes depend on the mask's values, so ``compact`` takes concrete arrays
(not under ``jax.jit``); the compact model itself is an ordinary Flax module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lth_jax import masks as masks_lib
from lth_jax import structured
from lth_jax.models.conv import ConvNet
from lth_jax.models.convolution import conv_function
from lth_jax.models.lenet import BIAS_INIT, KERNEL_INIT, LeNet300100
from lth_jax.models.pooling import max_pool

PyTree = Any


class CompactMLP(nn.Module):
    """LeNet-style MLP with configurable hidden widths: flatten, ``Dense(f) + ReLU`` for each ``f``
    in ``features``, then ``Dense(num_classes)``. Params ``Dense_0 .. Dense_{len(features)}``.

    ``__call__(x, train=False)``: ``x`` with a leading batch axis (flattened); float32 logits
    ``(batch, num_classes)``; ``train`` has no effect. Same initialisers as ``LeNet300100``.
    """

    features: Sequence[int] = (300, 100)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        del train
        x = jnp.asarray(x, jnp.float32).reshape((x.shape[0], -1))
        for width in self.features:
            x = nn.relu(nn.Dense(width, kernel_init=KERNEL_INIT, bias_init=BIAS_INIT)(x))
        return nn.Dense(self.num_classes, kernel_init=KERNEL_INIT, bias_init=BIAS_INIT)(x)


class CompactConvNet(nn.Module):
    """Conv-k with one width per layer: 3×3 SAME conv + ReLU for each entry of ``conv_features``, a
    2×2/2 max-pool after every ``pool_every``-th conv, flatten, ``Dense(f) + ReLU`` (+ dropout, as in
    ``ConvNet``) for each ``f`` in ``dense_features``, then ``Dense(num_classes)``.

    ``__call__(x, train=False)``: ``x`` NHWC; float32 logits. Dropout needs the ``'dropout'`` RNG
    when ``train`` and ``dropout_rate > 0``. ``conv`` chooses the convolution as in ``ConvNet``.
    """

    conv_features: Sequence[int] = (64, 64)
    dense_features: Sequence[int] = (256, 256)
    num_classes: int = 10
    dropout_rate: float = 0.0
    conv: str = "auto"
    pool_every: int = 2

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if len(self.conv_features) % self.pool_every:
            raise ValueError(f"CompactConvNet: {len(self.conv_features)} convs is not a multiple of "
                             f"pool_every={self.pool_every}")
        x = jnp.asarray(x, jnp.float32)
        conv = conv_function(self.conv)
        for i, width in enumerate(self.conv_features):
            x = nn.relu(nn.Conv(width, (3, 3), padding="SAME", kernel_init=KERNEL_INIT,
                                bias_init=BIAS_INIT, conv_general_dilated=conv)(x))
            if (i + 1) % self.pool_every == 0:
                x = max_pool(x, 2)
        x = x.reshape((x.shape[0], -1))
        for width in self.dense_features:
            x = nn.relu(nn.Dense(width, kernel_init=KERNEL_INIT, bias_init=BIAS_INIT)(x))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, kernel_init=KERNEL_INIT, bias_init=BIAS_INIT)(x)


class Compacted(NamedTuple):
    """``compact``'s result: the smaller module, its params (``m ⊙ θ`` cut down) and the mask cut
    down the same way (True where the original weight was alive)."""

    model: nn.Module
    params: PyTree
    mask: PyTree


def _sequential_names(params: Mapping) -> tuple[list[str], list[str]]:
    if not isinstance(params, Mapping) or "params" in params:
        raise TypeError("compact takes the params dict (variables['params']) of a sequential "
                        "lth_jax network: keys Conv_i / Dense_i")
    convs = sorted((k for k in params if k.startswith("Conv_")), key=lambda k: int(k[5:]))
    denses = sorted((k for k in params if k.startswith("Dense_")), key=lambda k: int(k[6:]))
    return convs, denses


def kept_units(params: PyTree, mask: PyTree) -> dict[str, np.ndarray]:
    """``{layer: bool (units,)}`` for every hidden layer of a sequential lth_jax network: which
    units ``compact`` keeps (module docstring: a unit goes when, by the mask, it has no alive
    incoming weight and no alive bias, or no alive outgoing weight; repeated to a fixed point).

    Host-side, concrete arrays. Links are ``structured.sequential_links(params)``.
    """
    masks_lib.check_matches(params, mask)
    links = structured.sequential_links(params)
    producers = structured.resolve_links(params, links)
    work = [np.asarray(m).copy() for m in jax.tree.leaves(mask)]
    keep = {p.name: np.ones(p.units, bool) for p in producers}
    changed = True
    while changed:
        changed = False
        for p in producers:
            incoming = work[p.kernel].reshape(-1, p.units).any(axis=0)
            if p.bias is not None:
                incoming = incoming | work[p.bias]
            outgoing = np.zeros(p.units, bool)
            for c in p.consumers:
                rows = np.moveaxis(work[c], -2, 0).reshape(work[c].shape[-2], -1).any(axis=1)
                outgoing |= rows.reshape(-1, p.units).any(axis=0)
            new = keep[p.name] & incoming & outgoing
            if (new != keep[p.name]).any():
                changed = True
                keep[p.name] = new
            # Clear what a removed unit owns, so the next layer sees its rows gone.
            work[p.kernel] = work[p.kernel] & new
            if p.bias is not None:
                work[p.bias] = work[p.bias] & new
            for c in p.consumers:
                rows = np.tile(new, work[c].shape[-2] // p.units)
                work[c] = work[c] & rows[:, None]
    return keep


def compact(model: nn.Module, params: PyTree, mask: PyTree) -> Compacted:
    """The smaller dense network equal to ``model`` with params ``m ⊙ θ``.

    Args:
      model: ``models.LeNet300100``, ``models.ConvNet`` (Conv-2/4/6), or a ``CompactMLP`` /
        ``CompactConvNet`` (compacting again is allowed).
      params: its params dict (``variables["params"]``), concrete arrays.
      mask: bool mask of ``params`` (any mask; for a large gain, one from
        ``structured.neuron_magnitude`` / ``global_neuron_magnitude``).
    Returns:
      ``Compacted(model, params, mask)``: a ``CompactMLP`` / ``CompactConvNet`` whose hidden widths
      are the kept units' counts (``kept_units``), its params (the kept rows/columns of ``m ⊙ θ``,
      in the original order; other pruned weights inside stay 0.0) and its mask.
      ``compacted.model.apply({"params": compacted.params}, x)`` equals
      ``model.apply({"params": masks.apply(params, mask)}, x)`` up to float32 rounding.
    Raises:
      TypeError: another model or params layout; ValueError: the mask does not match.
    """
    if not isinstance(model, (LeNet300100, CompactMLP, ConvNet, CompactConvNet)):
        raise TypeError(f"compact handles LeNet300100, ConvNet, CompactMLP and CompactConvNet, "
                        f"not {type(model).__name__}")
    convs, denses = _sequential_names(params)
    is_conv = isinstance(model, (ConvNet, CompactConvNet))
    if bool(convs) != is_conv or len(denses) < 1:
        raise TypeError(f"params with layers {convs + denses} do not belong to a {type(model).__name__}")
    keep = kept_units(params, mask)
    links = dict(structured.sequential_links(params))
    feeds = {consumer: producer for producer, consumer in links.items()}
    # Host-side NumPy throughout: eager JAX would compile a program per leaf shape.
    masked = jax.tree.map(lambda p, m: np.where(np.asarray(m), np.asarray(p), np.zeros_like(p, shape=())),
                          params, mask)

    def cut(layer: str, leaf: str, tree: PyTree) -> jax.Array:
        a = np.asarray(tree[layer][leaf])
        if layer in keep:  # its own units: the last axis of kernel and bias
            a = a[..., keep[layer]]
        if leaf == "kernel" and layer in feeds:  # rows reading removed units of the layer before
            units = keep[feeds[layer]]
            a = np.compress(np.tile(units, a.shape[-2] // units.shape[0]), a, axis=-2)
        return jnp.asarray(a)

    new_params = {layer: {leaf: cut(layer, leaf, masked) for leaf in masked[layer]} for layer in masked}
    new_mask = {layer: {leaf: cut(layer, leaf, mask) for leaf in mask[layer]} for layer in mask}
    widths = lambda names: tuple(int(keep[n].sum()) for n in names)
    num_classes = int(np.shape(params[denses[-1]]["kernel"])[-1])
    if is_conv:
        pool_every = 2 if isinstance(model, ConvNet) else model.pool_every
        small = CompactConvNet(conv_features=widths(convs), dense_features=widths(denses[:-1]),
                               num_classes=num_classes, dropout_rate=model.dropout_rate,
                               conv=model.conv, pool_every=pool_every)
    else:
        small = CompactMLP(features=widths(denses[:-1]), num_classes=num_classes)
    return Compacted(small, new_params, new_mask)
