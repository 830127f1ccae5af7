"""Several processes, one experiment: two CLI processes on this machine (jax.distributed, CPU
collectives over gloo on localhost, one CPU device each) against one process.

(Slow: each case starts two or three CLI processes; a file of its own so that xdist balances it.)
"""

from __future__ import annotations

import json
import os
import signal
import socket

import pytest

from helpers import Cli, check_results_file, cli_env, cli_flags, results_text, run_cli
from lth_jax import processes

FLAGS = cli_flags(runtime__chunk_seconds=0.25)
#: The training runs' length of the tests that stop or kill a process in training: long enough
#: for that, and one length, so that they share their compiled programs.
ITERATIONS = "--config.train.iterations=400"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_two(workdir, *flags, port=None, tag="", only=None):
    """Processes 0 and 1 of one experiment, one CPU device each (``only``: {process: flags})."""
    env = cli_env("--xla_force_host_platform_device_count=1 --xla_cpu_multi_thread_eigen=false")
    common = ["--config.runtime.distributed=True", "--config.runtime.num_processes=2",
              f"--config.runtime.coordinator_address=127.0.0.1:{port or _port()}", *flags]
    return [Cli(workdir, *common, f"--config.runtime.process_id={i}", *(only or {}).get(i, []),
                tag=f"{tag}p{i}", env=env) for i in (0, 1)]


def _records(workdir) -> list[dict]:
    return [json.loads(line) for line in results_text(workdir).splitlines()]


def test_two_processes_write_the_records_of_one_each_once_and_resume(tmp_path):
    """Two processes (SIGINT to process 1 only, mid-level: both stop at one chunk with the
    level's progress saved; the same two commands again finish the experiment) end with the
    records of one process with two devices, line for line (timings aside), each written once."""
    # Levels 0..1: the stop and the resume are in level 1, its last (a level after it would
    # only repeat level 1's programs, ~10 s of this test's time).
    flags = [*FLAGS, ITERATIONS, "--config.runtime.checkpoint_minutes=10",
             "--config.prune.levels=1"]
    rc, _, err = run_cli(str(tmp_path / "one"), *flags)  # one process, two host devices
    assert rc == 0, err[-3000:]
    reference = _records(str(tmp_path / "one"))
    assert len(reference) == 2 + 2 * 3  # level 0: 2 trials; level 1: 3 variants x 2

    two = str(tmp_path / "two")
    clis = _start_two(two, *flags, tag="a")
    clis[0].until(lambda: "level  1  iteration" in clis[0].stdout, "level 1 in training")
    clis[1].signal(signal.SIGINT)
    rcs = [cli.wait(300) for cli in clis]
    assert rcs == [130, 130], [cli.stderr[-2000:] for cli in clis]
    assert "stopped in level 1" in clis[0].stderr and "progress saved" in clis[0].stderr
    check_results_file(results_text(two), reference)  # level 0's, once

    clis = _start_two(two, *flags, tag="b")
    rcs = [cli.wait(300) for cli in clis]
    assert rcs == [0, 0], [cli.stderr[-2000:] for cli in clis]
    assert "level 1: resuming at iteration" in clis[0].stdout
    assert "2 processes" in clis[0].stdout and "level  1/1" in clis[0].stdout
    assert "level" not in clis[1].stdout  # progress comes from process 0 only
    assert len(check_results_file(results_text(two), reference)) == len(reference)
    assert sorted(os.listdir(two)) == sorted(os.listdir(str(tmp_path / "one")))


@pytest.mark.parametrize("dead", [1, 0])
def test_a_process_that_dies_stops_the_other(tmp_path, dead):
    """SIGKILL (no goodbye) to process 1: process 0 stops within the timeout (3 s here) with one
    line, instead of hanging in its next collective. To process 0, the coordinator: JAX's client
    in process 1 sees the service's socket close and ends the process itself, at once, with its
    own fatal log ("... another task died ..."), which lth_jax cannot replace (its callback for
    this does not reach Python in this jaxlib): no hang either."""
    workdir = str(tmp_path / "run")
    # (A short experiment: the survivor cannot finish without its peer, every chunk ends in a
    # collective.)
    flags = [*FLAGS, ITERATIONS, "--config.runtime.process_timeout_seconds=3"]
    clis = _start_two(workdir, *flags)
    clis[0].until(lambda: "level  0  iteration" in clis[0].stdout, "training")
    clis[dead].proc.kill()
    survivor = clis[1 - dead]
    rc = survivor.wait(60)
    if dead == 1:
        assert rc == processes.EXIT_PEER_LOST, survivor.stderr[-3000:]
        lines = [line for line in survivor.stderr.splitlines() if line.startswith("lth_jax")]
        assert len(lines) == 1 and "process 1 of 2 stopped responding" in lines[0], lines
    else:
        assert rc == -signal.SIGABRT
        assert "This most likely indicates that another task died" in survivor.stderr


def test_an_error_in_one_process_stops_the_other_with_its_line(tmp_path):
    workdir = str(tmp_path / "run")
    # Process 1's batch is larger than the training set: refused after loading the data.
    clis = _start_two(workdir, *FLAGS, only={1: ["--config.train.batch_size=5000"]})
    rcs = [cli.wait(120) for cli in clis]
    assert rcs == [processes.EXIT_PEER_LOST, 2]
    mine = [line for line in clis[1].stderr.splitlines() if line.startswith("lth_jax")]
    assert mine == ["lth_jax: error: config.train.batch_size: 5000 is larger than the training set "
                    "(600 examples) (process 1)"], clis[1].stderr
    theirs = [line for line in clis[0].stderr.splitlines() if line.startswith("lth_jax")]
    assert theirs == ["lth_jax: error: process 1 of 2 stopped: config.train.batch_size: 5000 is "
                      "larger than the training set (600 examples) (process 1)"], clis[0].stderr


def test_data_parallel_over_two_processes_equals_one_process(tmp_path):
    """runtime.data_parallel: every run's batches split over the devices of both processes (the
    gradient all-reduce crosses processes), the same records as one process with two devices."""
    flags = [*FLAGS, "--config.runtime.data_parallel=True", "--config.prune.levels=0"]
    rc, _, err = run_cli(str(tmp_path / "one"), *flags)
    assert rc == 0, err[-3000:]
    clis = _start_two(str(tmp_path / "two"), *flags)
    rcs = [cli.wait(300) for cli in clis]
    assert rcs == [0, 0], [cli.stderr[-2000:] for cli in clis]
    reference = _records(str(tmp_path / "one"))
    assert len(check_results_file(results_text(str(tmp_path / "two")), reference)) == len(reference)
