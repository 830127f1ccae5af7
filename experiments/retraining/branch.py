"""The retrain branches of the retraining comparison, one per setting (T = 8,000 iterations; the
schedule is 0.1, then 0.01 from 4,000, then 0.001 from 7,000):

- ``lr_rewinding_t8000``: learning-rate rewinding by t = T (keep the trained weights, replay the
  whole schedule);
- ``lr_rewinding_t2000``: learning-rate rewinding by t = T/4 (replay iterations 6,000..8,000:
  1,000 at 0.01, then 1,000 at 0.001);
- ``fine_tuning_t8000``, ``fine_tuning_t2000``: fine-tuning for t = T and T/4 iterations at the
  schedule's final rate 0.001 (keep the trained weights);
- ``weight_rewinding_k400``: weight rewinding to θ_k, k = T/20 = 400 (the survivors rewound to
  their value at iteration 400 of the dense training, then iterations 400..8,000: 7,600 a level).

Weight rewinding to θ₀ is the trunk itself. Each setting is a branch folder of its own::

    python -m lth_jax.main --config=experiments/retraining/config.py --workdir=runs/retraining \
        --branch=experiments/retraining/branch.py:lr_rewinding_t8000
"""

from lth_jax import branches
from lth_jax.branches import retrain

#: setting -> (rule, retrain_iterations, rewind_iteration)
SETTINGS = {
    "lr_rewinding_t8000": ("lr_rewinding", 8_000, -1),
    "lr_rewinding_t2000": ("lr_rewinding", 2_000, -1),
    "fine_tuning_t8000": ("fine_tuning", 8_000, -1),
    "fine_tuning_t2000": ("fine_tuning", 2_000, -1),
    "weight_rewinding_k400": ("weight_rewinding", 0, 400),
}


def get_config(setting="lr_rewinding_t8000"):
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; one of {', '.join(SETTINGS)}")
    c = branches.default_config(retrain)
    c.rule, c.retrain_iterations, c.rewind_iteration = SETTINGS[setting]
    return c
