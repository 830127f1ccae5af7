"""lth_jax: the Lottery Ticket Hypothesis in JAX/Flax.

The pure library core is `masks`, `pruning` and `tickets`; `models`, `data`, `train`, `lottery` and
`report` build the experiment on top of it. docs/design.md maps every module and what it may
import.
"""

__version__ = "0.1.0"
