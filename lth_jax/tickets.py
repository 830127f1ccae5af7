"""Where a subnetwork's surviving weights come from.

A winning ticket is ``m ⊙ θ₀``: the mask found by pruning, applied to the *original* initialisation
(``rewind``). With late resetting the survivors go back to ``θ_k``, the weights after ``k``
iterations of the first training run (pass ``θ_k`` as ``theta``). The random-reinitialisation
control keeps the mask but draws fresh weights from the same distribution (``reinit``).

Both functions are pure, work under ``jax.jit`` and ``jax.vmap``, and never modify ``theta``: θ₀
stays an immutable PyTree that every level rewinds to. They take Flax Linen params or a Flax NNX
state alike. With NNX, keep θ₀ as a copy: ``nnx.state(model, nnx.Param)`` (and ``nnx.split``) return
the model's own Variable objects, which an in-place update (``nnx.Optimizer.update``,
``nnx.update``) changes; ``jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))`` does not change.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

from lth_jax import masks as masks_lib

PyTree = Any


def rewind(theta: PyTree, mask: PyTree) -> PyTree:
    """``m ⊙ θ``: the survivors take their values from ``theta`` (θ₀ or θ_k), pruned weights are 0.

    Args:
      theta: the params to rewind to; float PyTree.
      mask: bool PyTree of the same structure and shapes.
    Returns:
      A new params PyTree; ``theta`` is not modified. jit- and vmap-able.
    """
    return masks_lib.apply(theta, mask)


def reinit(init_fn: Callable[[jax.Array], PyTree], key: jax.Array, mask: PyTree) -> PyTree:
    """``m ⊙ θ'`` with ``θ' = init_fn(key)`` freshly drawn from the initial distribution D_θ.

    Args:
      init_fn: ``key -> params`` (e.g. ``lambda k: model.init(k, x)["params"]``, or for NNX
        ``lambda k: nnx.state(MyModel(nnx.Rngs(k)), nnx.Param)``); must return a PyTree with the
        mask's structure and shapes.
      key: PRNG key for the fresh draw; same key, same weights.
      mask: bool PyTree.
    Returns:
      The masked fresh params. jit- and vmap-able when ``init_fn`` is (under ``jax.jit`` pass
      ``init_fn`` as a static argument or close over it).
    """
    return masks_lib.apply(init_fn(key), mask)
