"""The retrain branch with its defaults (its fields: python -m lth_jax.main --help
--branch=configs/branches/retrain.py). Run it on a lottery with
python -m lth_jax.main --config=CONFIG --workdir=W --branch=configs/branches/retrain.py."""

from lth_jax import branches
from lth_jax.branches import retrain


def get_config():
    return branches.default_config(retrain)
