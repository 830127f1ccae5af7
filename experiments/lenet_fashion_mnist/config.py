"""The LeNet-300-100 reproduction on Fashion-MNIST (the real dataset available offline here).

The paper's LeNet setup (Adam 1.2e-3, 50K iterations, batch 60, layerwise pruning fc 20% / output
10% per round, evaluation every 100 iterations, 5K validation examples) on Fashion-MNIST instead of
MNIST; 3 trials, levels 0..15 (3.6% of the weights), both controls. The test curve is measured every
10th evaluation (every 1,000 iterations) to save time; the test accuracy at the early-stopping
iteration is exact regardless.

    python -m lth_jax.main --config=experiments/lenet_fashion_mnist/config.py \
        --workdir=runs/lenet_fashion_mnist
"""

from lth_jax.config import base_config


def get_config():
    c = base_config()
    c.model.name = "lenet300_100"
    c.dataset.name = "fashion_mnist"
    c.dataset.source = "files"
    c.train.iterations = 50_000
    c.train.batch_size = 60
    c.train.optimizer = "adam"
    c.train.learning_rate = 1.2e-3
    c.train.eval_every = 100
    c.train.test_every_evals = 10
    c.prune.levels = 15
    c.trials = 3
    return c
