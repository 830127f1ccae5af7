"""The cheaper-tickets experiment (issue 18): LeNet-300-100 on Fashion-MNIST, 3 trials, 10K iterations.

The recorded lottery's setup (``experiments/lenet_fashion_mnist/config.py``, loaded from there so
the two cannot drift apart: Adam 1.2e-3, batch 60, layerwise fc 20% / output 10% per round,
evaluation every 100 iterations) with a budget of 10K iterations per training instead of 50K, so
that the trunk and the branches fit in one sitting on a 2-core CPU. What this changes: IMP prunes
the weights at the end of training, here after 10K iterations, so the masks are not the recorded
lottery's; and a run whose validation loss still falls at 10K (the sparsest non-IMP masks,
experiments/cheaper_tickets/README.md) is stopped there.

It is the trunk of the cheaper-tickets branch (``branch.py``; ``run.sh`` runs it and the early-bird
sweep) and of the LeNet instability branch (``experiments/instability/lenet_branch.py``), without
its controls (the branch trains the random-pruning control's mask itself)::

    python -m lth_jax.main --config=experiments/cheaper_tickets/config.py \
        --workdir=runs/cheaper_tickets --branch=experiments/cheaper_tickets/branch.py

The trunk's levels 3, 7, 12 and 15 hold 51.3%, 21.1%, 7.0% and 3.6% of the weights: the levels the
branch compares at.
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
