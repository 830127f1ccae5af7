"""The instability branch on LeNet-300-100 (issue 20): the dense network and the IMP tickets of
levels 3, 7 and 12 (51.3%, 21.1%, 7.0% of the weights), k = 0 ... 4,000, 2 trials.

Its trunk is the cheaper-tickets lottery (``experiments/cheaper_tickets/config.py``: the recorded
LeNet lottery's setup with 10K iterations per training, 3 trials, of which this uses the first 2),
so one trunk serves both experiments::

    python -m lth_jax.main --config=experiments/cheaper_tickets/config.py \
        --workdir=runs/cheaper_tickets --branch=experiments/instability/lenet_branch.py
"""

from lth_jax import branches
from lth_jax.branches import instability


def get_config():
    c = branches.default_config(instability)
    c.levels = (3, 7, 12)
    c.ks = (0, 100, 500, 1000, 2000, 4000)
    c.trials = 2
    return c
