"""Model registry: the paper's networks as Flax Linen modules, with their pruning rules.

Every module is called as ``model.apply(variables, x, train=False)`` with ``x`` NHWC float32 and a
leading batch axis, and returns logits ``(batch, num_classes)``. Networks with batch norm (VGG-19,
ResNet-20) keep running statistics in the collection ``'batch_stats'``: in training call
``model.apply(variables, x, train=True, mutable=['batch_stats'])`` and get ``(logits, updates)``;
in evaluation no collection is mutable. Dropout (Conv-2/4/6 with ``dropout_rate > 0``) draws from
the RNG stream ``'dropout'`` and only when ``train=True``. All of this works under ``jax.jit`` and under
``jax.vmap`` over a leading trial axis of the variables.

The conv networks take ``conv = "auto" | "xla" | "canonical_vjp" | "winograd"``: which convolution
they use. "canonical_vjp" (:mod:`lth_jax.models.convolution`) computes the same values and gradients
as ``nn.Conv`` with a backward pass that XLA:CPU runs fast inside loops; "winograd" is that with
Winograd's F(2x2, 3x3) (:mod:`lth_jax.models.winograd`) for the training step's output, input
gradient and kernel gradient of the stride-1 3x3 layers at least 64 channels wide (the same values
up to float32 rounding; evaluation keeps the direct convolution); "auto"
picks "winograd" on CPUs and XLA's own convolution on GPUs/TPUs. The choice changes no parameter name or shape. Their 2x2
max-pools are :func:`max_pool` (:mod:`lth_jax.models.pooling`): ``nn.max_pool``'s values with a
gradient that avoids XLA:CPU's slow ``select_and_scatter``. VGG-19's and ResNet-20's batch norm is
:class:`lth_jax.models.batch_norm.BatchNorm`: Flax's ``nn.BatchNorm`` (the same parameters,
statistics and values) fused with the ReLU and residual sum after it, with a closed-form
backward pass.

Parameter paths are the ``'/'``-joined keys inside ``params``, e.g. ``"Dense_2/kernel"`` or
``"BasicBlock_3/shortcut_conv/kernel"``. A :class:`ModelSpec` carries the paper's per-round pruning
rates as ``(regex, rate)`` rules (first ``re.fullmatch`` wins, unmatched leaves get rate 0 and are
never pruned). The regexes accept an optional leading prefix (``"params/Dense_2/kernel"`` matches too) and
match only ``kernel`` leaves, so biases and batch-norm scale/shift are never pruned.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lth_jax.models.conv import ConvNet, conv2, conv4, conv6
from lth_jax.models.convolution import Conv, convolutions_in_one_piece
from lth_jax.models.lenet import LeNet300100, lenet300_100
from lth_jax.models.pooling import max_pool
from lth_jax.models.resnet import BasicBlock, ResNet, resnet20
from lth_jax.models.vgg import VGG, vgg19

__all__ = [
    "BasicBlock", "Conv", "ConvNet", "LeNet300100", "ModelSpec", "ResNet", "VGG",
    "create", "default_options", "init", "convolutions_in_one_piece", "max_pool", "names",
    "spec",
]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A network of the paper and how the paper prunes it.

    Attributes:
      name: registry name.
      build: constructor taking the model options as keyword arguments, returning the module.
      input_shape: default per-example HWC shape for a dummy input (the data decides the real one).
      rules: per-round pruning rates ``(regex, rate)``; first ``re.fullmatch`` on the ``'/'``-joined
        path inside params wins; unmatched leaves get rate 0.
      strategy: ``"layerwise"`` (each layer loses its own rate) or ``"global"`` (one magnitude
        threshold over all leaves with a nonzero rate).
      output_layer: regex (``re.fullmatch``) of the output layer's kernel path.
    """

    name: str
    build: Callable[..., nn.Module]
    input_shape: tuple[int, ...]
    rules: tuple[tuple[str, float], ...]
    strategy: str
    output_layer: str


# Optional prefix so the rules also match a path taken from the full variables dict.
_PRE = r"(?:.*/)?"
_CONV = _PRE + r"Conv_\d+/kernel"
_DENSE = _PRE + r"Dense_\d+/kernel"
_SHORTCUT = _PRE + r"[^/]*shortcut[^/]*/kernel"


def _out(layer: str) -> str:
    return _PRE + layer + "/kernel"


_SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec("lenet300_100", lenet300_100, (28, 28, 1),
                  ((_out("Dense_2"), 0.1), (_DENSE, 0.2)), "layerwise", _out("Dense_2")),
        ModelSpec("conv2", conv2, (32, 32, 3),
                  ((_out("Dense_2"), 0.1), (_CONV, 0.1), (_DENSE, 0.2)), "layerwise",
                  _out("Dense_2")),
        ModelSpec("conv4", conv4, (32, 32, 3),
                  ((_out("Dense_2"), 0.1), (_CONV, 0.1), (_DENSE, 0.2)), "layerwise",
                  _out("Dense_2")),
        ModelSpec("conv6", conv6, (32, 32, 3),
                  ((_out("Dense_2"), 0.1), (_CONV, 0.15), (_DENSE, 0.2)), "layerwise",
                  _out("Dense_2")),
        # VGG-19 and ResNet: the output layer and 1x1 shortcuts keep rate 0.0 explicitly (they are
        # listed so the exemption is visible, and first so the broader conv rule cannot catch them).
        ModelSpec("vgg19", vgg19, (32, 32, 3),
                  ((_out("Dense_0"), 0.0), (_CONV, 0.2)), "global", _out("Dense_0")),
        ModelSpec("resnet20", resnet20, (32, 32, 3),
                  ((_out("Dense_0"), 0.0), (_SHORTCUT, 0.0), (_CONV, 0.2)), "global",
                  _out("Dense_0")),
    )
}

# The paper calls its CIFAR ResNet-20 "ResNet-18".
_ALIASES: dict[str, str] = {"resnet18": "resnet20"}


def names() -> tuple[str, ...]:
    """Canonical registry names (aliases such as ``"resnet18"`` are accepted but not listed)."""
    return tuple(_SPECS)


def spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name`` (or of an alias). Raises ``ValueError`` if unknown."""
    key = _ALIASES.get(name, name)
    if key not in _SPECS:
        known = ", ".join(list(_SPECS) + [f"{a} (= {t})" for a, t in _ALIASES.items()])
        raise ValueError(f"unknown model {name!r}; known models: {known}")
    return _SPECS[key]


def default_options(name: str) -> dict[str, Any]:
    """The options ``create(name, ...)`` accepts, with their defaults."""
    params = inspect.signature(spec(name).build).parameters
    return {k: p.default for k, p in params.items()}


def create(name: str, **opts: Any) -> nn.Module:
    """Builds the module ``name`` with the given options (e.g. ``num_classes``, ``dropout_rate``).

    Raises ``ValueError`` for an unknown model name (listing the known ones) or an option the model
    does not take (naming it and the accepted ones).
    """
    s = spec(name)
    allowed = default_options(name)
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise ValueError(f"model {s.name!r} has no option(s) {', '.join(unknown)}; "
                         f"accepted: {', '.join(allowed)}")
    return s.build(**opts)


def init(model: nn.Module, key: jax.Array, input_shape: tuple[int, ...],
         batch_size: int = 2) -> dict[str, Any]:
    """Initialises ``model`` on a zero batch of shape ``(batch_size, *input_shape)``.

    Returns the variables dict: ``{'params': ...}`` plus ``'batch_stats'`` for batch-norm networks.
    Pure and deterministic in ``key`` (the ``'params'`` RNG); works under ``jax.jit``,
    ``jax.eval_shape`` (for a cheap shape-only init) and ``jax.vmap`` over keys.
    """
    x = jnp.zeros((batch_size, *input_shape), jnp.float32)
    return dict(model.init(key, x, train=False))
