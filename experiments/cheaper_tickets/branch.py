"""The cheaper-tickets branch of this folder: every method at the trunk's levels 3, 7, 12 and 15.

On the lottery of ``config.py`` (LeNet-300-100 on Fashion-MNIST, 3 trials, 10K iterations), those
levels hold 51.3%, 21.1%, 7.0% and 3.6% of the weights. The other fields are the branch's defaults
(``configs/branches/cheaper_tickets.py``: early-bird ε = 0.1, W = 5; SNIP/GraSP on 10 batches;
SynFlow 100 rounds; global allocation for the at-init methods; layerwise shuffles)::

    python -m lth_jax.main --config=experiments/cheaper_tickets/config.py \
        --workdir=runs/cheaper_tickets --branch=experiments/cheaper_tickets/branch.py
"""

from lth_jax import branches
from lth_jax.branches import cheaper_tickets


def get_config():
    c = branches.default_config(cheaper_tickets)
    c.levels = (3, 7, 12, 15)
    return c
