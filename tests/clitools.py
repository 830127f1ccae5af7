"""Helpers of the command-line tests (tests/test_cli_*.py): the CLI in a subprocess, polled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import FAST_COMPILE, REPO
from lth_jax import lottery
from lth_jax import workdir as workdir_lib

TIMING = set(lottery.TIMING_FIELDS)


def strip_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def error_line(stderr: str) -> str:
    """The one line on stderr (fails if there are more)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    return lines[0]


def cli_env(xla_flags: str = "") -> dict:
    """The environment of a CLI subprocess: the session's compilation cache, the test processes'
    ``FAST_COMPILE`` (so that its numbers equal theirs), and ``xla_flags`` (none: the CLI's own
    default of one host device per core)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{FAST_COMPILE} {xla_flags}".strip()
    cache = os.environ.get("LTH_JAX_TEST_CACHE")
    if cache:  # compiled programs are shared between the CLI processes of the session
        env["JAX_COMPILATION_CACHE_DIR"] = cache
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return env


_STARTED: list[Cli] = []


@pytest.fixture(autouse=True)
def _no_cli_left_running():
    """Kill what a failed test leaves running (or stopped) of the CLIs it started. (Autouse in
    the test modules that import it.)"""
    yield
    while _STARTED:
        cli = _STARTED.pop()
        if cli.proc.poll() is None:
            cli.proc.kill()
            cli.proc.wait()


class Cli:
    """The CLI in a subprocess, stdout and stderr going to files (polled, never blocking)."""

    def __init__(self, workdir, *flags, tag="run", env=None):
        self.out_path = f"{workdir}.{tag}.out"
        self.err_path = f"{workdir}.{tag}.err"
        self._out = open(self.out_path, "w")
        self._err = open(self.err_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lth_jax.main", "--config=configs/tiny.py", f"--workdir={workdir}",
             "--report=false", *flags],
            cwd=REPO, env=env or cli_env(), stdout=self._out, stderr=self._err)
        _STARTED.append(self)

    @property
    def stdout(self) -> str:
        with open(self.out_path) as f:
            return f.read()

    @property
    def stderr(self) -> str:
        with open(self.err_path) as f:
            return f.read()

    def wait(self, timeout=240) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the CLI did not exit in {timeout}s; stderr:\n{self.stderr[-3000:]}")
        self._out.close()
        self._err.close()
        return rc

    def until(self, condition, what: str, timeout=240, poll=0.002):
        """Poll ``condition()`` until it returns something truthy (returned) or the process ends."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = condition()
            if got:
                return got
            if self.proc.poll() is not None:
                raise AssertionError(f"the CLI exited ({self.proc.returncode}) before {what}; "
                                     f"stderr:\n{self.stderr[-3000:]}")
            time.sleep(poll)
        self.proc.kill()
        raise AssertionError(f"timed out waiting for {what}")

    def signal(self, signum):
        self.proc.send_signal(signum)


def run_cli(workdir, *flags, timeout=240) -> tuple[int, str, str]:
    cli = Cli(workdir, *flags, tag="once")
    rc = cli.wait(timeout)
    return rc, cli.stdout, cli.stderr


def partial_checkpoints(workdir) -> list[str]:
    folder = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(folder):
        return []
    return [n for n in os.listdir(folder) if ".orbax-checkpoint-tmp" in n or n.endswith(".staging")]


def results_text(workdir) -> str:
    path = os.path.join(workdir, lottery.RESULTS)
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        return f.read()


def check_results_file(text, reference_records) -> list[dict]:
    """Whole lines of valid JSON, unique (level, variant, trial), a prefix of the reference."""
    assert text == "" or text.endswith("\n"), "a partial last line"
    records = [json.loads(line) for line in text.splitlines()]
    keys = [(r["level"], r["variant"], r["trial"]) for r in records]
    assert len(keys) == len(set(keys)), f"duplicated records: {keys}"
    assert strip_timing(records) == strip_timing(reference_records)[:len(records)]
    return records


def stopped_while_writing(cli, workdir, first="") -> str:
    """Wait until the CLI has started (and so removed the debris of an earlier kill), then stop it
    (SIGSTOP) while it writes a checkpoint named ``first`` or later: orbax's temporary folder
    exists, the final rename has not happened. Returns the checkpoint's name; the caller sends a
    signal, then SIGCONT."""
    cli.until(lambda: "lth_jax: " in cli.stdout, "the CLI to start")
    while True:
        tmp = cli.until(lambda: [n for n in partial_checkpoints(workdir) if n >= first],
                        f"a checkpoint {first} being written")[0]
        cli.signal(signal.SIGSTOP)
        if tmp in partial_checkpoints(workdir):
            return tmp.split(".orbax-checkpoint-tmp")[0]
        cli.signal(signal.SIGCONT)  # too late (rare): wait for the next checkpoint


def crashed(stderr) -> bool:
    """Whether Python printed a traceback for an exception that ended the program (not one it
    only reports, "Exception ignored in ...": see test_a_signal_lost_in_a_destructor_...)."""
    lines = stderr.splitlines()
    return any(line.startswith("Traceback") and not (i and lines[i - 1].startswith("Exception ignored"))
               for i, line in enumerate(lines))


def assert_same_experiment(workdir, reference_workdir):
    """θ0, θ_rewind, every level's mask and trained params are bitwise equal, no debris is left."""
    a, b = lottery.load_experiment(workdir), lottery.load_experiment(reference_workdir)
    assert sorted(a["levels"]) == sorted(b["levels"])
    for name in ("theta0", "theta_rewind"):
        for x, y in zip(jax.tree.leaves(a[name]), jax.tree.leaves(b[name]), strict=True):
            np.testing.assert_array_equal(x, y)
    for level in a["levels"]:
        for x, y in zip(jax.tree.leaves(a["levels"][level]), jax.tree.leaves(b["levels"][level]),
                        strict=True):
            np.testing.assert_array_equal(x, y)
    assert partial_checkpoints(workdir) == []
    assert not [n for n in workdir_lib.checkpoint_names(workdir) if n.startswith("progress_")]
