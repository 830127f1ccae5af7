"""Quickstart: LeNet-300-100 on Fashion-MNIST read from local IDX files; the dense network (level 0)
and 4 pruning levels (100% -> 80% -> 64% -> 51% -> 41% of the hidden layers' weights, the output
layer at 10% per level), 2 trials, both controls: 26 runs of 2,000 iterations. Run it with
``bash experiments/quickstart.sh``; README.md has its measured time on a 2-core CPU.

At 2,000 iterations the validation loss of most runs is still falling, so their early-stopping
iteration is the last evaluation (the terminal summary says how many); the paper's 50K-iteration
runs are in experiments/lenet_fashion_mnist/.

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
    # The test curve every 4th evaluation (400 iterations): the test passes over 10K examples are
    # a large part of a short run's time; the test accuracy at early stop stays exact.
    c.train.test_every_evals = 4
    c.prune.levels = 4      # levels 0..4: 100% -> 80% -> 64% -> 51% -> 41% of the hidden weights
    c.trials = 2
    return c
