"""The trunk of the Conv-2 instability branch (issue 20): Conv-2 on Fashion-MNIST, 1 trial, no
pruned levels (the dense network, level 0, provides θ₀).

The paper's Conv-2 hyperparameters (``lth_jax.config.conv_config``: Adam 2e-4, batch 60, no
augmentation, no dropout) on 28x28x1 Fashion-MNIST, with 2,000 iterations per training instead of
the paper's 20,000 so that the copies (about 5 model-steps/s per core here) fit a session::

    python -m lth_jax.main --config=experiments/instability/conv2.py \
        --workdir=runs/instability_conv2 --branch=experiments/instability/conv2_branch.py

The copies are compared after 2,000 iterations, early in Conv-2's training (a dense probe at the
paper's rate still lowered its validation loss at 3,400 iterations: experiments/conv2_fashion_mnist).
"""

from lth_jax.config import conv_config


def get_config():
    c = conv_config("conv2", dropout=False)
    c.dataset.name = "fashion_mnist"
    c.dataset.source = "files"
    c.train.iterations = 2_000
    c.prune.levels = 0
    c.controls.reinit = False
    c.controls.random_prune = False
    c.trials = 1
    return c
