"""The instability experiment (issue 20), LeNet-300-100 on Fashion-MNIST: 2 trials, 10K iterations.

The cheaper-tickets experiment's config (``experiments/cheaper_tickets/config.py``, loaded from
there: the recorded lottery's setup with 10K iterations per training) with 2 trials, so that the
ticket masks can come from that experiment's lottery workdir (same θ₀, same data order)::

    python -m lth_jax.instability_experiment --config=experiments/instability/lenet.py \
        --workdir=runs/instability_lenet --tickets=runs/cheaper_tickets_lottery \
        --levels=3,7,12 --ks=0,100,500,1000,2000,4000
"""

import os

from lth_jax.config import load_file


def get_config():
    c = load_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                               "cheaper_tickets", "config.py"))
    c.trials = 2
    return c
