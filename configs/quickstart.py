"""Quickstart: LeNet-300-100 on Fashion-MNIST read from local IDX files, 3 pruning levels with both
controls, small enough for a laptop CPU in about 2 minutes.

Fashion-MNIST files: ``apt-get install dataset-fashion-mnist`` (Debian/Ubuntu) puts them in
/usr/share/datasets/fashion-mnist/, or point --config.dataset.path at a folder with
{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz].
"""

from lth_jax.config import base_config


def get_config():
    c = base_config()
    c.model.name = "lenet300_100"
    c.dataset.name = "fashion_mnist"
    c.dataset.source = "files"
    c.train.iterations = 2_000
    c.train.batch_size = 60
    c.train.optimizer = "adam"
    c.train.learning_rate = 1.2e-3
    c.train.eval_every = 100
    c.prune.levels = 4      # 100% -> 80% -> 64% -> 51% -> 41% of the hidden weights
    c.trials = 2
    return c
