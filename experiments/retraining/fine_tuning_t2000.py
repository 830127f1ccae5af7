"""Retrain branch of the retraining comparison: fine-tuning for t = T/4 = 2,000 iterations at the
schedule's final rate 0.001 (keep the trained weights).

    python -m lth_jax.main --config=experiments/retraining/config.py --workdir=runs/retraining \
        --branch=experiments/retraining/fine_tuning_t2000.py
"""

from lth_jax import branches
from lth_jax.branches import retrain


def get_config():
    c = branches.default_config(retrain)
    c.rule = "fine_tuning"
    c.retrain_iterations = 2_000
    c.rewind_iteration = -1
    return c
