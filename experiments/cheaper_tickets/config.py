"""The cheaper-tickets experiment (issue 18): LeNet-300-100 on Fashion-MNIST, 3 trials, 10K iterations.

The recorded lottery's setup (``experiments/lenet_fashion_mnist/config.py``, loaded from there so
the two cannot drift apart: Adam 1.2e-3, batch 60, layerwise fc 20% / output 10% per round,
evaluation every 100 iterations) with a budget of 10K iterations per training instead of 50K, so
that the lottery and the side-by-side run fit in one sitting on a 2-core CPU (19 min measured). What
this changes: IMP prunes the weights at the end of training, here after 10K iterations, so the
masks are not the recorded lottery's; and a run whose validation loss still falls at 10K (the
sparsest at-init masks, experiments/cheaper_tickets/README.md) is stopped there.

The lottery that provides θ₀ and the IMP masks is run with this same config and without its
controls (``lth_jax.cheaper_tickets`` makes the random-pruning control's mask itself)::

    python -m lth_jax.main --config=experiments/cheaper_tickets/config.py \
        --workdir=runs/cheaper_tickets_lottery --noreport
    python -m lth_jax.cheaper_tickets --config=experiments/cheaper_tickets/config.py \
        --workdir=runs/cheaper_tickets --tickets=runs/cheaper_tickets_lottery

The lottery's levels 3, 7, 12 and 15 hold 51.3%, 21.1%, 7.0% and 3.6% of the weights: the default
target densities of the mode.
"""

import os

from lth_jax.config import load_file


def get_config():
    c = load_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                               "lenet_fashion_mnist", "config.py"))
    c.train.iterations = 10_000
    c.controls.reinit = False
    c.controls.random_prune = False
    return c
