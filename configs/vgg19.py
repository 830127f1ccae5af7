"""VGG-19 on CIFAR-10 (Frankle & Carbin 2019, Sec. 4): SGD momentum 0.9, lr 0.1 with linear warmup
over 10K iterations, ÷10 at epochs 80 and 120 of 160 (batch 64: 703 iterations per epoch of 45K),
weight decay 1e-4, flip + pad-and-crop augmentation, global pruning 20% of the conv weights per
round, output layer not pruned."""

from lth_jax.config import base_config

STEPS_PER_EPOCH = 45_000 // 64  # 703


def get_config():
    c = base_config()
    c.model.name = "vgg19"
    c.dataset.name = "cifar10"
    c.dataset.augment = "on"
    c.train.iterations = 160 * STEPS_PER_EPOCH  # 112,480
    c.train.batch_size = 64
    c.train.optimizer = "momentum"
    c.train.momentum = 0.9
    c.train.learning_rate = 0.1
    c.train.warmup_iterations = 10_000
    c.train.lr_drops = (80 * STEPS_PER_EPOCH, 120 * STEPS_PER_EPOCH)
    c.train.lr_drop_factor = 0.1
    c.train.weight_decay = 1e-4
    c.train.eval_every = 160  # 112,480 = 703 · 160: evaluate every 160 iterations (703 points)
    c.train.eval_batch_size = 500
    c.prune.strategy = "paper"  # global 20%, output layer exempt
    c.prune.levels = 20         # 0.8^20 = 1.2% of the conv weights
    c.trials = 5
    return c
