"""LeNet-300-100 on MNIST (Frankle & Carbin 2019, Fig. 2): Adam 1.2e-3, 50K iterations, batch 60,
layerwise pruning: hidden layers 20% and the output layer 10% per round."""

from lth_jax.config import base_config


def get_config():
    c = base_config()
    c.model.name = "lenet300_100"
    c.dataset.name = "mnist"
    c.train.iterations = 50_000
    c.train.batch_size = 60
    c.train.optimizer = "adam"
    c.train.learning_rate = 1.2e-3
    c.prune.strategy = "paper"   # layerwise, rates from the model: fc 0.2, output 0.1
    c.prune.levels = 16          # hidden 0.8^16 = 2.8%: the paper's ladder down to 2.9% overall
    c.trials = 5
    return c
