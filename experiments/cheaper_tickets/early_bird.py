"""One early-bird setting of the ε/W sweep: the cheaper-tickets branch with early-bird alone.

``get_config("eps<ε>_w<W>")``: this folder's ``branch.py`` with ``methods = ("earlybird",)``, no
shuffles, and the detector's ε and window W; each setting is a branch folder of its own on the
same trunk::

    python -m lth_jax.main --config=experiments/cheaper_tickets/config.py \
        --workdir=runs/cheaper_tickets --branch=experiments/cheaper_tickets/early_bird.py:eps0.1_w10

``run.sh`` runs the settings eps0.1_w10, eps0.1_w20, eps0.05_w5, eps0.02_w5 and eps0.01_w5;
``early_bird_sweep.py`` tabulates them with the main branch's ε = 0.1, W = 5.
"""

import os

from lth_jax.config import load_file

def get_config(setting="eps0.1_w10"):
    eps, window = setting.removeprefix("eps").split("_w")
    c = load_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "branch.py"))
    c.methods = ("earlybird",)
    c.shuffle = False
    c.early_bird_epsilon = float(eps)
    c.early_bird_window = int(window)
    return c
