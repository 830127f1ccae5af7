"""A tiny config for tests and smoke runs: LeNet-300-100 on synthetic 28x28 data, seconds on a CPU."""

from lth_jax.config import base_config


def get_config():
    c = base_config()
    c.model.name = "lenet300_100"
    c.dataset.name = "synthetic"
    c.dataset.source = "synthetic"
    c.dataset.image_shape = (28, 28, 1)
    c.dataset.num_classes = 10
    c.dataset.train_size = 1200
    c.dataset.test_size = 300
    c.dataset.validation_size = 200
    c.train.iterations = 200
    c.train.batch_size = 60
    c.train.learning_rate = 1.2e-3
    c.train.eval_every = 50
    c.train.eval_batch_size = 300
    c.prune.levels = 2
    c.trials = 2
    return c
