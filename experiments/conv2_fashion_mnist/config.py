"""Conv-2 on Fashion-MNIST: the paper's Conv-2 setup on the real dataset available offline here.

The paper's Conv-2 hyperparameters (``lth_jax.config.conv_config``: Adam 2e-4, batch 60, layerwise
pruning, evaluation every 100 iterations on 5K validation examples, no augmentation, no dropout) on
28x28x1 Fashion-MNIST instead of 32x32x3 CIFAR-10, with four changes so that the whole experiment
fits one ~70-minute run on a 2-core CPU (README.md):

* Training on 10,000 of the 55,000 examples left after the validation hold-out
  (``dataset.train_subset``), so that the dense network overfits early: its validation loss is
  lowest at 1,100-1,300 iterations (probe/dense_probe_subset10k.log: 0.307 at 1,100, 0.306 at
  1,300, higher at 1,200 and 1,400-1,600).
* 1,500 iterations per run instead of 20,000: the dense network's early stop comes before the
  end (the probe trains trial 0's level 0 from the same θ₀ and data order, in another program:
  its validation loss was lowest at 1,300, 0.306; the experiment's run, at 1,100, 0.305).
* Five of the paper's pruning rounds per level: per level conv 41.0%, fc 67.2%, output 41.0%
  (= 1 - 0.9^5, 1 - 0.8^5), so level L here has the density of the paper's level 5L. Levels 0..2
  reach ~11% of the weights in 10 runs.
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
    c.dataset.train_subset = 10_000
    c.train.iterations = 1_500
    c.train.test_every_evals = 10
    c.prune.rules = ((_PRE + r"Dense_2/kernel", 0.40951), (_PRE + r"Conv_\d+/kernel", 0.40951),
                     (_PRE + r"Dense_\d+/kernel", 0.67232))
    c.prune.levels = 2
    c.controls.random_prune = False
    c.trials = 2
    return c
