"""The trunk of the retraining comparison (issue 37): LeNet-300-100 on Fashion-MNIST with SGD and
a step schedule, retrained by weight rewinding to θ₀ (k = 0), 3 trials, levels 0..14.

SGD (no momentum) at 0.1, batch 60, T = 8,000 iterations (8.7 epochs of the 55K training examples
left after the 5K validation hold-out), learning rate ×0.1 at 4,000 and 7,000 (0.1 → 0.01 → 0.001).
The convergence probe (probe.sh, README.md): the dense validation loss is flat from ~4,500 on
(0.278 → 0.272), within 0.007 of what 16,000 iterations reach; 4,000 iterations are not enough
(still falling at the end), momentum 0.9 at 0.1 is too hot (val loss 0.55-0.60 before the first
drop). The last drop at 7T/8 makes the last quarter of the schedule hold two rates, so that
learning-rate rewinding by T/4 differs from fine-tuning for T/4 (with drops at T/2 and 3T/4 they
would be the same run).

Layerwise pruning (LeNet's rules): 20% of the hidden layers and 10% of the output layer per level;
level 14 keeps 4.5% of the prunable weights. No controls (this compares retraining rules). Every
100 iterations a validation pass (early stopping = minimum validation loss); the test curve every
10th evaluation, the test accuracy at the early stop exact regardless.

    bash experiments/retraining/run.sh
"""

from lth_jax.config import base_config


def get_config():
    c = base_config()
    c.model.name = "lenet300_100"
    c.dataset.name = "fashion_mnist"
    c.dataset.source = "files"
    c.train.iterations = 8_000
    c.train.batch_size = 60
    c.train.optimizer = "sgd"
    c.train.learning_rate = 0.1
    c.train.lr_drops = (4_000, 7_000)
    c.train.lr_drop_factor = 0.1
    c.train.eval_every = 100
    c.train.test_every_evals = 10
    c.prune.strategy = "paper"   # layerwise: hidden 20%, output 10% per level
    c.prune.levels = 14          # hidden 0.8^14 = 4.4%, 4.5% of the prunable weights overall
    c.prune.rewind_iteration = 0  # the trunk is weight rewinding to θ₀
    c.controls.reinit = False
    c.controls.random_prune = False
    c.trials = 3
    return c
