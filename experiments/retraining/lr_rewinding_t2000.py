"""Retrain branch of the retraining comparison: learning-rate rewinding by t = T/4 = 2,000
(keep the trained weights, replay iterations 6,000..8,000: 1,000 at 0.01, then 1,000 at 0.001).

    python -m lth_jax.main --config=experiments/retraining/config.py --workdir=runs/retraining \
        --branch=experiments/retraining/lr_rewinding_t2000.py
"""

from lth_jax import branches
from lth_jax.branches import retrain


def get_config():
    c = branches.default_config(retrain)
    c.rule = "lr_rewinding"
    c.retrain_iterations = 2_000
    c.rewind_iteration = -1
    return c
