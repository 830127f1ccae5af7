"""The cheaper-tickets experiment (issue 18): LeNet-300-100 on Fashion-MNIST, 3 trials.

Exactly the config of the recorded lottery ``experiments/lenet_fashion_mnist/config.py`` (loaded
from there, so the two cannot drift apart): ``lth_jax.cheaper_tickets`` refuses a lottery made with
another config, and takes θ₀ and the IMP masks from that lottery's workdir
(``runs/lenet_fashion_mnist``, made by ``experiments/lenet_fashion_mnist/run.sh``)::

    python -m lth_jax.cheaper_tickets --config=experiments/cheaper_tickets/config.py \
        --workdir=runs/cheaper_tickets --tickets=runs/lenet_fashion_mnist

The lottery's levels 3, 7, 12 and 15 hold 51.3%, 21.1%, 7.0% and 3.6% of the weights: the default
target densities of the mode.
"""

import importlib.util
import os


def get_config():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                        "lenet_fashion_mnist", "config.py")
    spec = importlib.util.spec_from_file_location("lenet_fashion_mnist_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
