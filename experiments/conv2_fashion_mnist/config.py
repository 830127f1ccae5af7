"""Conv-2 on Fashion-MNIST: the paper's Conv-2 setup on the real dataset available offline here.

The paper's Conv-2 hyperparameters (``lth_jax.config.conv_config``: Adam 2e-4, batch 60, layerwise
pruning, evaluation every 100 iterations on 5K validation examples, no augmentation, no dropout) on
28x28x1 Fashion-MNIST instead of 32x32x3 CIFAR-10, with three changes to fit a 2-core CPU:

* 8,000 iterations per run instead of 20,000. A dense probe run (1 trial, 28x28 Fashion-MNIST,
  README.md) still lowered its validation loss at 3,400 iterations (0.207, from 0.286 at 900);
  8,000 leaves early stopping before the end for the dense network and room for slower controls.
* Two of the paper's pruning rounds per level: per level conv 19%, fc 36%, output 19%
  (= 1 - 0.9², 1 - 0.8²), so level L here has the density of the paper's level 2L. Levels 0..5
  reach 11.0% of the weights (64.2, 41.3, 26.5, 17.1, 11.0%) in 22 runs instead of 38.
* 2 trials, ticket and reinit (no random-prune control); the test curve every 10th evaluation (the
  test accuracy at early stop is exact regardless).

    bash experiments/conv2_fashion_mnist/run.sh
"""

from lth_jax.config import conv_config

_PRE = r"(?:.*/)?"


def get_config():
    c = conv_config("conv2", dropout=False)
    c.dataset.name = "fashion_mnist"
    c.dataset.source = "files"
    c.train.iterations = 8_000
    c.train.test_every_evals = 10
    c.prune.rules = ((_PRE + r"Dense_2/kernel", 0.19), (_PRE + r"Conv_\d+/kernel", 0.19),
                     (_PRE + r"Dense_\d+/kernel", 0.36))
    c.prune.levels = 5
    c.controls.random_prune = False
    c.trials = 2
    return c
