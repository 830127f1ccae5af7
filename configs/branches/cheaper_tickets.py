"""The cheaper-tickets branch with its defaults (its fields: python -m lth_jax.main --help
--branch=configs/branches/cheaper_tickets.py). Run it on a lottery with
python -m lth_jax.main --config=CONFIG --workdir=W --branch=configs/branches/cheaper_tickets.py."""

from lth_jax import branches
from lth_jax.branches import cheaper_tickets


def get_config():
    return branches.default_config(cheaper_tickets)
