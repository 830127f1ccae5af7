"""What the tests share, in one place (``from helpers import ...``; pytest puts tests/ on the path).

* The tiny experiment: ``TINY``, ``tiny_config``, ``cli_flags``, ``NO_CONTROLS``, ``conv2_on_8x8``
  and the small synthetic LeNet of the training tests (``synthetic_lenet``).
* XLA's options for the suite: ``FAST_COMPILE`` (set for every test process by conftest.py and
  passed to the CLI processes) and ``fusion_emitters`` for the bit-for-bit comparisons.
* Small PyTrees: ``make_params``, ``random_mask``, ``assert_tree_equal``, ``stack``.
* Records: ``strip_timing``, ``quiet``.
* Child processes: ``popen`` (every child starts with SIGINT and SIGTERM at their default action),
  the command line in a subprocess (``Cli``, ``run_cli``, ``cli_env``, ...), a lock holder.

conftest.py holds the pytest side only: the session's settings and the fixtures.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ----------------------------------------------------------------------------- XLA for the suite

#: XLA's CPU backend without LLVM's optimisations and with its older (non-MLIR) fusion emitters,
#: for every program the tests compile, in the test processes and in the CLI processes they start
#: (``cli_env``): the suite's programs are small and run for a few steps, so its time is
#: compiling, which each of the two flags cuts (docs/performance.md, "The test suite"). The one test
#: that trains for real under it, the README's linen example, compiles optimised
#: (``test_readme.OPTIMIZED``). XLA reads XLA_FLAGS when its CPU client starts.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"

#: What the older emitters do not keep: programs that compute the same steps in loops of another
#: shape (slices of 1 or 50 steps, a level resumed mid-way, a test pass every other evaluation,
#: runs spread over devices) are bitwise equal under XLA's fusion emitters (the default, O0 or
#: not), not under the older ones (last-bit differences). The tests that compare such programs bit
#: for bit compile with the fusion emitters (``fusion_emitters``; in a subprocess, the jit option).
FUSION_EMITTERS = {"xla_cpu_use_fusion_emitters": True}


@contextlib.contextmanager
def fusion_emitters():
    """Every ``jax.jit`` made inside compiles with ``FUSION_EMITTERS`` (jits made at import time
    do not: they compile one program, the same on both sides of a comparison). The programs
    ``lottery`` keeps between runs are forgotten on entry and on exit: they were compiled the other
    way."""
    from lth_jax import lottery

    lottery.clear_program_cache()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(jax, "jit", functools.partial(jax.jit, compiler_options=FUSION_EMITTERS))
            yield
    finally:
        lottery.clear_program_cache()


# ----------------------------------------------------------------------------- the tiny experiment

#: configs/tiny.py shrunk for tests (LeNet-300-100 on 8x8 synthetic images, 2 trials, levels 0..2,
#: 100 iterations, 4 evaluations per run: a tiny run's time is mostly per-step overhead of the
#: unoptimised programs, so fewer steps make it shorter); the CLI gets the same values as
#: --config.* overrides (``cli_flags``).
#: Tests that share these shapes share compiled programs through the session's XLA cache.
TINY = {
    "dataset.image_shape": (8, 8, 1),
    "dataset.train_size": 700,
    "dataset.test_size": 200,
    "dataset.validation_size": 100,
    "train.iterations": 100,
    "train.batch_size": 50,
    "train.eval_every": 25,
    "train.eval_batch_size": 128,
    "prune.levels": 2,
    "trials": 2,
    "runtime.progress_seconds": 0.0,
}

#: The tiny experiment without its controls: every level trains the same R = 2 runs, so one
#: training program serves all levels.
NO_CONTROLS = {"controls.reinit": False, "controls.random_prune": False}


def set_field(c, key: str, value) -> None:
    """``c.a.b = value`` for ``key`` "a.b"."""
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value


def tiny_config(**overrides):
    """configs/tiny.py with TINY and ``overrides`` applied ('a.b' keys may be written a__b)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny_config", os.path.join(REPO, "configs", "tiny.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    for key, value in {**TINY, **{k.replace("__", "."): v for k, v in overrides.items()}}.items():
        set_field(c, key, value)
    return c


def tiny_no_controls(**overrides):
    """``tiny_config`` without controls (``NO_CONTROLS``), and ``overrides``."""
    return tiny_config(**{**NO_CONTROLS, **overrides})


def cli_flags(**overrides) -> list[str]:
    """``tiny_config(**overrides)`` as --config.* flags for ``--config=configs/tiny.py``."""
    values = {**TINY, **{k.replace("__", "."): v for k, v in overrides.items()}}
    return [f"--config.{k}={v}" for k, v in values.items()]


def conv2_on_8x8(iterations: int):
    """Conv-2's config (its 64-channel layers) on 8x8x3 synthetic images: 40 training examples,
    batch 4, ``iterations`` steps in one evaluation period; a tiny conv run."""
    from lth_jax import config as config_lib

    c = config_lib.conv_config("conv2", dropout=False)
    c.dataset.source = "synthetic"
    c.dataset.image_shape = (8, 8, 3)
    c.dataset.train_size, c.dataset.validation_size, c.dataset.test_size = 40, 8, 8
    c.train.iterations = c.train.eval_every = iterations
    c.train.batch_size, c.train.eval_batch_size = 4, 8
    return c


def synthetic_lenet(keep: float):
    """LeNet-300-100 for 4 classes on 6x6x1 synthetic images (300 training, 60 validation, 100
    test examples), its params at key 0 and a random mask keeping about ``keep`` of every leaf:
    ``(dataset, model, params, mask)``."""
    from lth_jax import data as data_lib
    from lth_jax import models

    ds = data_lib.load({"name": "synthetic", "source": "synthetic", "image_shape": (6, 6, 1),
                        "num_classes": 4, "train_size": 300, "test_size": 100,
                        "validation_size": 60}, seed=0)
    model = models.create("lenet300_100", num_classes=4)
    params = models.init(model, jax.random.key(0), (6, 6, 1))["params"]
    rng = np.random.default_rng(0)
    mask = jax.tree.map(lambda p: jnp.asarray(rng.random(p.shape) < keep), params)
    return ds, model, params, mask


# ----------------------------------------------------------------------------- small PyTrees

def make_params(seed, shapes, *, ties=False, quantize=None):
    """float32 arrays of ``shapes`` (a PyTree of shape tuples), standard normal from ``seed``.
    ``ties``: integers in [-3, 3] instead (few magnitudes, both signs: many ties at a threshold);
    ``quantize=q``: the normal values rounded to multiples of 1/q (ties too)."""
    rng = np.random.default_rng(seed)

    def leaf(shape):
        if ties:
            return jnp.asarray(rng.integers(-3, 4, size=shape).astype(np.float32))
        x = rng.normal(size=shape)
        if quantize:
            x = np.round(x * quantize) / quantize
        return jnp.asarray(x.astype(np.float32))

    return jax.tree.map(leaf, shapes, is_leaf=lambda x: isinstance(x, tuple))


def random_mask(seed, params, keep, prunable=None):
    """A bool mask of ``params``' structure, each weight alive with probability ``keep``; with
    ``prunable`` (a PyTree of bools), the leaves it leaves out are all-True (and draw nothing)."""
    rng = np.random.default_rng(seed)
    if prunable is None:
        return jax.tree.map(lambda p: jnp.asarray(rng.random(p.shape) < keep), params)
    return jax.tree.map(lambda p, use: jnp.asarray(rng.random(p.shape) < keep) if use
                        else jnp.ones(p.shape, bool), params, prunable)


def assert_tree_equal(a, b):
    """The same structure and, leaf by leaf, the same values (bit for bit)."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def stack(trees):
    """PyTrees of one structure stacked leaf by leaf along a new leading axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


# ----------------------------------------------------------------------------- records

def strip_timing(records):
    """Records without ``lottery.TIMING_FIELDS`` (what resume equality ignores)."""
    from lth_jax import lottery

    timing = set(lottery.TIMING_FIELDS)
    return [{k: v for k, v in r.items() if k not in timing} for r in records]


def quiet(_line):
    """A ``log`` that drops every line."""


# ----------------------------------------------------------------------------- child processes

def default_signals() -> None:
    """In a child, before it runs: SIGINT and SIGTERM at their default action. A process started
    in the background by a non-interactive shell (``nohup python -m pytest -q &``) ignores SIGINT,
    and an ignored signal stays ignored across exec: without this, a SIGINT a test sends to a
    child that has not yet installed its own handler is lost."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def popen(args, **kwargs) -> subprocess.Popen:
    """``subprocess.Popen`` with default signal handling in the child (``default_signals``): for
    every child a test sends a signal to.

    A ``preexec_fn`` makes Popen fork, and JAX warns at every fork of a process that has started
    its threads. The child runs only ``default_signals`` (two ``signal.signal`` calls, no import,
    no JAX) before it execs, so the warning does not apply here and is silenced for this call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called",
                                category=RuntimeWarning)
        return subprocess.Popen(args, preexec_fn=default_signals, **kwargs)


def lock_holder(folder: str) -> subprocess.Popen:
    """A process that takes ``workdir.Lock(folder)``, says "held" on its stdout (a pipe) and then
    sleeps a minute; the caller reads that line, then kills it."""
    return popen([sys.executable, "-c", "import time; from lth_jax import workdir; "
                  f"workdir.Lock({folder!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                 cwd=REPO, stdout=subprocess.PIPE, text=True)


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


#: Every ``Cli`` started and not yet reaped; conftest.py's autouse fixture kills what a test leaves.
STARTED: list[Cli] = []


def kill_started_clis() -> None:
    """Kill (and reap) every CLI a test started that still runs or is stopped."""
    while STARTED:
        cli = STARTED.pop()
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
        self.proc = popen(
            [sys.executable, "-m", "lth_jax.main", "--config=configs/tiny.py", f"--workdir={workdir}",
             "--report=false", *flags],
            cwd=REPO, env=env or cli_env(), stdout=self._out, stderr=self._err)
        STARTED.append(self)

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
    from lth_jax import lottery

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
    from lth_jax import lottery
    from lth_jax import workdir as workdir_lib

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
