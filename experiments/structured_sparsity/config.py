"""The structured-sparsity experiment (issue 19): LeNet-300-100 on Fashion-MNIST, 2 trials, iterative
pruning with one pruning pattern per run of this config, and the reinit control for each.

    python -m lth_jax.main --config=experiments/structured_sparsity/config.py:PATTERN \
        --workdir=runs/structured_sparsity/PATTERN

PATTERN (``prune.strategy``):

* ``unstructured``: the paper's layerwise magnitude pruning (hidden layers 20%, output 10% per
  round), levels 0..10 (10.7% of the weights);
* ``2:4`` / ``1:4``: N:M magnitude pruning along each kernel's input axis, every kernel (the output
  layer's too), reached by rounds of one weight per group of 4: levels 0..2 (75%, 50%) and 0..3
  (75%, 50%, 25%), after which a round changes nothing;
* ``neuron``: whole hidden neurons by the L2 norm of their incoming weights, 20% of each hidden
  layer's alive neurons per round, each with its outgoing row; levels 0..10 (300 → 32 and
  100 → 11 neurons: about 10% of the weights).

The setup is the recorded lottery's (``experiments/lenet_fashion_mnist/config.py``, loaded from
there: Adam 1.2e-3, batch 60, validation every 100 iterations on 5K held-out examples, the test
curve every 1,000) with 10K iterations per training instead of 50K, as in
``experiments/cheaper_tickets``: IMP prunes the weights after 10K iterations of training, not 50K.
Level 0 is the same dense training in all four workdirs (same seed).
"""

import os

from lth_jax.config import load_file

#: pattern -> (prune.strategy, prune.levels)
PATTERNS = {
    "unstructured": ("paper", 10),
    "2:4": ("2:4", 2),
    "1:4": ("1:4", 3),
    "neuron": ("neuron", 10),
}


def get_config(pattern: str = "unstructured"):
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; choose one of {', '.join(PATTERNS)}")
    c = load_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                               "lenet_fashion_mnist", "config.py"))
    c.train.iterations = 10_000
    c.trials = 2
    c.prune.strategy, c.prune.levels = PATTERNS[pattern]
    c.controls.reinit = True
    c.controls.random_prune = False
    return c
