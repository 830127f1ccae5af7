r"""Run a lottery-ticket experiment, or a branch of one (``lth_jax.cli`` is the command line).

    python -m lth_jax.main --config=configs/lenet300_100.py --workdir=runs/lenet \
        --config.trials=5 --config.prune.levels=16
    python -m lth_jax.main --config=configs/lenet300_100.py --workdir=runs/lenet \
        --branch=configs/branches/instability.py --branch.levels="(0, 5)"

Running the same command again on the same workdir resumes where it stopped;
``python -m lth_jax.main --help [--config=FILE] [--branch=FILE]`` lists every field.
"""

from lth_jax import cli

if __name__ == "__main__":
    cli.note_signals()  # first of all: a Ctrl-C from the first moment counts
    cli.run()
