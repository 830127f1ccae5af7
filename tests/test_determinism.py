"""Bit-reproducibility at the compile settings real runs use.

The rest of the suite proves the three kinds of reproducibility under the suite's own compile
settings (``helpers.FAST_COMPILE``: XLA's O0, with the fusion emitters switched on for the
comparisons of loop shapes):

- the same experiment run twice gives the same records, θ₀, masks and trained parameters
  (``test_seeds.test_same_seed_gives_identical_records_theta0_and_masks``);
- chunkings and slice lengths give the same bits
  (``test_lottery.test_a_whole_level_in_one_chunk_equals_chunks_of_slices``,
  ``test_the_slice_length_does_not_change_the_numbers``,
  ``test_winograd.test_a_winograd_run_continues_bit_for_bit_across_slices``);
- a run killed and resumed equals an uninterrupted one (``test_lottery``'s resume tests,
  ``test_cli_resume``, the CLI with 2 devices against one in-process device).

A recorded experiment, though, is compiled the way ``python -m lth_jax.main`` compiles it: XLA's
default optimisation, one host device per core, single-threaded. This file checks the same three
properties there, in fresh processes with exactly those flags: the tiny experiment run
uninterrupted on 2 devices; run again, killed in level 1 while training in chunks of one 25-step
slice, and resumed with slices of one step (other chunk programs); and run on 1 device. Records
(timing aside) and every checkpointed array must be equal, bit for bit.

What it does not cover: another kind of machine (another CPU's instruction set makes XLA pick
other kernels; a GPU another arithmetic order) or another version of jax/XLA. Those change the
last bits, and training can grow them (experiments/lenet_fashion_mnist/README.md measures how
much).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from helpers import REPO, TINY
from lth_jax import lottery

#: What ``python -m lth_jax.main`` sets on a 2-core CPU (``cpu_device_flags``), and nothing of the
#: test suite's FAST_COMPILE: XLA's default optimisation level and emitters.
PRODUCTION = "--xla_force_host_platform_device_count={devices} --xla_cpu_multi_thread_eigen=false"

SCRIPT = textwrap.dedent("""
    import importlib.util, json, sys
    workdir, overrides, kill_at, resume_overrides = sys.argv[1], json.loads(sys.argv[2]), \\
        json.loads(sys.argv[3]), json.loads(sys.argv[4])
    from lth_jax import lottery

    def config(extra):
        spec = importlib.util.spec_from_file_location("tiny", "configs/tiny.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        c = module.get_config()
        for key, value in {**overrides, **extra}.items():
            node = c
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = tuple(value) if isinstance(value, list) else value
        return c

    class Killed(Exception):
        pass

    def log(line):
        if kill_at and line.startswith(kill_at):
            raise Killed(line)

    try:
        lottery.run(config({}), workdir, log=log)
        killed = False
    except Killed:
        killed = True
    if kill_at:
        assert killed, "the run was not killed"
        lottery.run(config(resume_overrides), workdir, log=lambda line: None)
    print("done")
""")


def run_process(workdir, devices, kill_at="", first=None, resume=None):
    env = dict(os.environ)
    env["XLA_FLAGS"] = PRODUCTION.format(devices=devices)
    for name in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
        env.pop(name, None)  # every program compiled afresh, as on a new machine
    overrides = {**{k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()},
                 **(first or {})}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(workdir), json.dumps(overrides), json.dumps(kill_at),
         json.dumps(resume or {})],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr[-3000:]


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in lottery.TIMING_FIELDS} for r in records]


@pytest.mark.slow
def test_production_compiles_are_bit_reproducible_across_processes_chunks_resume_and_devices(
        tmp_path):
    reference = tmp_path / "reference"
    run_process(reference, devices=2)
    resumed = tmp_path / "resumed"
    run_process(resumed, devices=2, kill_at="level  1  iteration 50/",
                first={"runtime.chunk_seconds": 1e-6, "runtime.checkpoint_minutes": 1e-9,
                       "runtime.slice_iterations": 25},
                resume={"runtime.slice_iterations": 1})
    one_device = tmp_path / "one_device"
    run_process(one_device, devices=1)

    expected = without_timing(lottery.read_records(str(reference)))
    assert len(expected) == 14  # 2 trials: level 0 (2 runs), levels 1-2 (3 variants x 2)
    ref = lottery.load_experiment(str(reference))
    for other in (resumed, one_device):
        assert without_timing(lottery.read_records(str(other))) == expected, other.name
        got = lottery.load_experiment(str(other))
        assert sorted(got["levels"]) == sorted(ref["levels"]) == [0, 1, 2]
        for part in (lambda s: s["theta0"], lambda s: s["theta_rewind"],
                     *(lambda s, lvl=lvl: s["levels"][lvl] for lvl in (0, 1, 2))):
            for x, y in zip(jax.tree.leaves(part(got)), jax.tree.leaves(part(ref)), strict=True):
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=other.name)
