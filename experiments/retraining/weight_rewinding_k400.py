"""Retrain branch of the retraining comparison: weight rewinding to θ_k, k = T/20 = 400
(the survivors rewound to their value at iteration 400 of the dense training, then iterations
400..8,000 of the schedule: 7,600 per level).

    python -m lth_jax.main --config=experiments/retraining/config.py --workdir=runs/retraining \
        --branch=experiments/retraining/weight_rewinding_k400.py
"""

from lth_jax import branches
from lth_jax.branches import retrain


def get_config():
    c = branches.default_config(retrain)
    c.rule = "weight_rewinding"
    c.retrain_iterations = 0
    c.rewind_iteration = 400
    return c
