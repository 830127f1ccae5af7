"""The instability branch with its defaults (its fields: python -m lth_jax.main --help
--branch=configs/branches/instability.py). Run it on a lottery with
python -m lth_jax.main --config=CONFIG --workdir=W --branch=configs/branches/instability.py."""

from lth_jax import branches
from lth_jax.branches import instability


def get_config():
    return branches.default_config(instability)
