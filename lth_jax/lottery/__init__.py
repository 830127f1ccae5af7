"""The lottery-ticket experiment: levels × variants × trials, trained in chunks that stop and resume.

One job per module (each imports only those listed before it):

* ``experiment``: ``setup`` builds an ``Experiment`` (model, data, rules, trainer) from a config;
  ``trial_key`` and the key purposes.
* ``runner``: ``Runner`` (devices, compiled programs) and ``Training`` (runs on the devices).
* ``level``: ``ChunkedTrainer``: a batch of runs trained chunk by chunk, with progress, stops,
  intra-level checkpoints and resume.
* ``records``: a finished level's records and checkpoint tree.
* ``store``: ``Folder`` (lock, identity, records, checkpoints), ``Store`` (the lottery's
  workdir) and ``Trunk`` (a finished lottery, read by a branch).
* ``imp``: the algorithm (``imp.imp``, ``next_mask``, ``Steps``) and ``run``.
"""

from lth_jax.lottery.experiment import (DATA, INIT, NOISE, RANDOM_MASK, REINIT, Experiment,
                                        ExperimentError, Stopped, config_to_json, setup, trial_key)
from lth_jax.lottery.imp import Steps, next_mask, run, steps
from lth_jax.lottery.level import ChunkedTrainer, RunBatch, Trained
from lth_jax.lottery.records import TIMING_FIELDS, make_record, skipped_record
from lth_jax.lottery.runner import Runner, Training, clear_program_cache
from lth_jax.lottery.store import Folder, Store, Trunk
from lth_jax.workdir import CONFIG, RESULTS, VARIANTS, load_experiment

__all__ = ["CONFIG", "DATA", "INIT", "NOISE", "RANDOM_MASK", "REINIT", "RESULTS", "TIMING_FIELDS",
           "VARIANTS", "ChunkedTrainer", "Experiment", "ExperimentError", "Folder", "RunBatch",
           "Runner", "Steps", "Stopped", "Store", "Trained", "Training", "Trunk",
           "clear_program_cache", "config_to_json", "load_checkpoint", "load_experiment",
           "make_record", "next_mask", "read_records", "run", "setup", "skipped_record", "steps",
           "trial_key"]


def load_checkpoint(workdir: str, name: str):
    """The arrays of ``checkpoints/name``, verified (``workdir.read_checkpoint``)."""
    from lth_jax import workdir as workdir_lib
    return workdir_lib.read_checkpoint(workdir, name)[0]


def read_records(workdir: str) -> list[dict]:
    """The records of ``results.jsonl`` (``workdir.read_records``: one reading rule everywhere)."""
    from lth_jax import workdir as workdir_lib
    return workdir_lib.read_records(workdir)
