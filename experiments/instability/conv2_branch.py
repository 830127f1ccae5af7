"""The instability branch on Conv-2 (issue 20): the dense network only, 1 trial, k = 0 ... 1,000.

Its trunk is ``conv2.py`` (the paper's Conv-2 on Fashion-MNIST, 2,000 iterations, no pruned
levels: level 0, the dense network, provides θ₀)::

    python -m lth_jax.main --config=experiments/instability/conv2.py \
        --workdir=runs/instability_conv2 --branch=experiments/instability/conv2_branch.py
"""

from lth_jax import branches
from lth_jax.branches import instability


def get_config():
    c = branches.default_config(instability)
    c.levels = (0,)
    c.ks = (0, 100, 500, 1000)
    c.trials = 1
    return c
