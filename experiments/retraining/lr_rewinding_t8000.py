"""Retrain branch of the retraining comparison: learning-rate rewinding by t = T = 8,000
(keep the trained weights, replay the whole schedule: 0.1, 0.01 from 4,000, 0.001 from 7,000).

    python -m lth_jax.main --config=experiments/retraining/config.py --workdir=runs/retraining \
        --branch=experiments/retraining/lr_rewinding_t8000.py
"""

from lth_jax import branches
from lth_jax.branches import retrain


def get_config():
    c = branches.default_config(retrain)
    c.rule = "lr_rewinding"
    c.retrain_iterations = 8_000
    c.rewind_iteration = -1
    return c
