"""The paper's "ResNet-18" (a CIFAR ResNet-20) on CIFAR-10 (Frankle & Carbin 2019, Sec. 4): 30K
iterations, batch 128, SGD momentum 0.9, lr 0.03 with linear warmup over 20K iterations, ÷10 at 20K
and 25K, weight decay 1e-4, flip + pad-and-crop augmentation, global pruning 20% of the conv weights
per round; 1x1 shortcuts and the output layer are not pruned."""

from lth_jax.config import base_config


def get_config():
    c = base_config()
    c.model.name = "resnet20"
    c.dataset.name = "cifar10"
    c.dataset.augment = "on"
    c.train.iterations = 30_000
    c.train.batch_size = 128
    c.train.optimizer = "momentum"
    c.train.momentum = 0.9
    c.train.learning_rate = 0.03
    c.train.warmup_iterations = 20_000
    c.train.lr_drops = (20_000, 25_000)
    c.train.lr_drop_factor = 0.1
    c.train.weight_decay = 1e-4
    c.train.eval_batch_size = 1000
    c.prune.strategy = "paper"  # global 20%, shortcuts and output exempt
    c.prune.levels = 12         # 0.8^12 = 6.9% of the conv weights
    c.trials = 5
    return c
