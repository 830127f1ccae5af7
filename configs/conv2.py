"""Conv-2 on CIFAR-10 (Frankle & Carbin 2019, Fig. 2).

Settings: lth_jax.config.conv_config (iterations, Adam learning rate, batch 60, layerwise pruning).
"""

from lth_jax.config import conv_config


def get_config():
    return conv_config("conv2", dropout=False)
