"""Nothing lost, nothing silent: interruption and resume, determinism, divergence, bad input,
fuzzing of the config check and the pruning core, and loading a saved experiment back.

The experiment here is ``configs/tiny.py`` shrunk to LeNet-300-100 on 8x8 synthetic images, two
trials, levels 0..2, no controls. The CLI runs in subprocesses with its default device setup (one
XLA host device per core); the reference run is in-process (one device): their numbers must agree
bitwise. Compiled programs are shared through the session's XLA cache (tests/conftest.py).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lth_jax import config as config_lib
from lth_jax import data as data_lib
from lth_jax import lottery, masks, pruning, tickets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = set(lottery.TIMING_FIELDS)

# configs/tiny.py, shrunk; the CLI gets the same values as --config.* overrides.
TINY = {
    "dataset.image_shape": (8, 8, 1),
    "dataset.train_size": 700,
    "dataset.test_size": 200,
    "dataset.validation_size": 100,
    "train.iterations": 100,
    "train.batch_size": 50,
    "train.eval_every": 50,
    "train.eval_batch_size": 128,
    "prune.levels": 2,
    "trials": 2,
    # Without the controls every level trains the same R=2 runs: one training program serves all
    # levels, which halves the compilation (the controls' resume is covered by test_lottery).
    "controls.reinit": False,
    "controls.random_prune": False,
}
LEVELS = TINY["prune.levels"]


def set_field(c, key, value):
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value


def tiny(**overrides) -> ml_collections.ConfigDict:
    """configs/tiny.py with TINY and ``overrides`` ('a.b' keys written as a__b) applied."""
    path = os.path.join(REPO, "configs", "tiny.py")
    spec = importlib.util.spec_from_file_location("tiny_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    for key, value in {**TINY, **{k.replace("__", "."): v for k, v in overrides.items()}}.items():
        set_field(c, key, value)
    return c


def cli_flags(**overrides) -> list[str]:
    values = {**TINY, **{k.replace("__", "."): v for k, v in overrides.items()}}
    return [f"--config.{k}={v}" for k, v in values.items()]


def strip_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def quiet(_line):
    pass


# ----------------------------------------------------------------------------- the CLI

def cli_env() -> dict:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the CLI's own default: one host device per core
    cache = os.environ.get("LTH_JAX_TEST_CACHE")
    if cache:  # compiled programs are shared between the CLI processes of the session
        env["JAX_COMPILATION_CACHE_DIR"] = cache
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
    return env


_STARTED: list[Cli] = []


@pytest.fixture(autouse=True)
def _no_cli_left_running():
    """Kill what a failed test leaves running (or stopped) of the CLIs it started."""
    yield
    while _STARTED:
        cli = _STARTED.pop()
        if cli.proc.poll() is None:
            cli.proc.kill()
            cli.proc.wait()


class Cli:
    """The CLI in a subprocess, stdout and stderr going to files (polled, never blocking)."""

    def __init__(self, workdir, *flags, tag="run"):
        self.out_path = f"{workdir}.{tag}.out"
        self.err_path = f"{workdir}.{tag}.err"
        self._out = open(self.out_path, "w")
        self._err = open(self.err_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lth_jax.main", "--config=configs/tiny.py", f"--workdir={workdir}",
             "--report=false", *flags],
            cwd=REPO, env=cli_env(), stdout=self._out, stderr=self._err)
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
    return [n for n in os.listdir(folder) if ".orbax-checkpoint-tmp" in n]


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
    """θ0, θ_rewind, every level's mask and trained params are bitwise equal."""
    a, b = lottery.load_experiment(workdir), lottery.load_experiment(reference_workdir)
    assert sorted(a["levels"]) == sorted(b["levels"]) == list(range(LEVELS + 1))
    for name in ("theta0", "theta_rewind"):
        for x, y in zip(jax.tree.leaves(a[name]), jax.tree.leaves(b[name]), strict=True):
            np.testing.assert_array_equal(x, y)
    for level in a["levels"]:
        for x, y in zip(jax.tree.leaves(a["levels"][level]), jax.tree.leaves(b["levels"][level]),
                        strict=True):
            np.testing.assert_array_equal(x, y)
    assert partial_checkpoints(workdir) == []


# ----------------------------------------------------------------------------- the reference

@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted in-process run (one device): (workdir, records, log lines)."""
    workdir = str(tmp_path_factory.mktemp("reference") / "run")
    logs = []
    records = lottery.run(tiny(), workdir, log=logs.append)
    return workdir, records, logs


@pytest.fixture(scope="module")
def exp():
    """The reference experiment's setup (model, data, rules)."""
    return lottery.setup(tiny())


def test_reference_run_is_complete(reference):
    workdir, records, _ = reference
    assert len(records) == 2 * (1 + LEVELS)
    assert all(r["status"] == "ok" for r in records)
    assert strip_timing(lottery.read_records(workdir)) == strip_timing(records)


# ----------------------------------------------------------------------------- 1. interruption

@pytest.mark.slow
def test_killed_interrupted_and_resumed_cli_equals_uninterrupted(reference, tmp_path):
    """One workdir, the same CLI command four times:

    1. SIGKILL while a checkpoint is being written (level 0's first);
    2. SIGTERM while level 1's checkpoint is being written: exit 130, how to resume on stderr, and
       the checkpoint is completed first (signals wait for the write), its records are not written;
       (to hit the write, the CLI is frozen with SIGSTOP when orbax's temporary folder appears,
       and the signal sent while it is frozen)
    3. (a partial last line is appended to results.jsonl, as a SIGKILL in the middle of an append
       would leave) SIGINT, i.e. Ctrl-C, while resuming: exit 130, how to resume on stderr;
    4. runs to the end.

    After every step the records are whole, unique and a prefix of the uninterrupted in-process
    run's; at the end they equal it (timing aside) and so do θ0, θ_rewind and every level's masks
    and trained params, bit for bit (the CLI has 2 host devices, the reference 1).
    """
    ref_dir, ref_records, _ = reference
    workdir = str(tmp_path / "run")
    flags = cli_flags()

    # 1. SIGKILL in the middle of writing a checkpoint: its debris is left behind
    cli = Cli(workdir, *flags, tag="kill")
    name = stopped_while_writing(cli, workdir)
    cli.signal(signal.SIGKILL)
    assert cli.wait() == -signal.SIGKILL
    assert any(n.startswith(name + ".") for n in partial_checkpoints(workdir))
    check_results_file(results_text(workdir), ref_records)

    # 2. SIGTERM while level 1's checkpoint (usually; or a later one) is being written: the write
    # completes, then the CLI stops before writing that level's records
    cli = Cli(workdir, *flags, tag="term")
    name = stopped_while_writing(cli, workdir, "level_001")
    level = int(name[len("level_"):])
    cli.signal(signal.SIGTERM)
    cli.signal(signal.SIGCONT)
    assert cli.wait() == 130, cli.stderr[-3000:]
    assert "resume" in cli.stderr and not crashed(cli.stderr), cli.stderr[-3000:]
    assert partial_checkpoints(workdir) == []
    assert os.path.isdir(os.path.join(workdir, "checkpoints", name))
    records = check_results_file(results_text(workdir), ref_records)
    assert {r["level"] for r in records} == set(range(level))

    # 3. SIGINT while resuming, with a partial line at the end of results.jsonl
    with open(os.path.join(workdir, lottery.RESULTS), "a") as f:
        f.write('{"trial": 0, "level": 1, "variant": "tic')
    cli = Cli(workdir, *flags, tag="int")
    cli.until(lambda: f"resuming: levels 0..{level - 1}" in cli.stdout, "the CLI to resume")
    cli.signal(signal.SIGINT)
    assert cli.wait() == 130, cli.stderr[-3000:]
    assert "resume" in cli.stderr and not crashed(cli.stderr), cli.stderr[-3000:]
    check_results_file(results_text(workdir), ref_records)

    # 4. the same command finishes the experiment
    cli = Cli(workdir, *flags, tag="finish")
    assert cli.wait() == 0, cli.stderr[-3000:]
    assert f"resuming: levels 0..{level - 1}" in cli.stdout
    check_results_file(results_text(workdir), ref_records)
    assert strip_timing(lottery.read_records(workdir)) == strip_timing(ref_records)
    assert_same_experiment(workdir, ref_dir)


class Interrupted(Exception):
    pass


def test_a_signal_lost_in_a_destructor_still_stops_the_run(tmp_path, monkeypatch):
    """A signal handler's exception raised inside a destructor or a gc callback (JAX has one) is
    only printed by Python, "Exception ignored in ...": the run still stops, at the next level."""
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)

    def handler(signum, frame):
        raise Interrupted()

    previous = signal.signal(signal.SIGTERM, handler)

    class Swallower:
        def __del__(self):
            signal.raise_signal(signal.SIGTERM)  # the handler raises in here

    def log(line):
        if line.startswith("level  0/"):
            Swallower()  # (collected at once)

    workdir = str(tmp_path / "run")
    try:
        with pytest.raises(Interrupted):
            lottery.run(tiny(prune__levels=1), workdir, log=log)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert [type(u.exc_value) for u in unraisable] == [Interrupted]
    assert {r["level"] for r in lottery.read_records(workdir)} == {0}


# ----------------------------------------------------------------------------- 2. determinism

@pytest.fixture(scope="module")
def level0_runs(tmp_path_factory):
    """Level 0 of the reference experiment run again, with seed 0 and with seed 1."""
    runs = {}
    for seed in (0, 1):
        workdir = str(tmp_path_factory.mktemp(f"seed{seed}") / "run")
        runs[seed] = (workdir, lottery.run(tiny(seed=seed, prune__levels=0), workdir, log=quiet))
    return runs


def test_same_seed_gives_identical_records_theta0_and_masks(reference, level0_runs):
    """Here in this process; the interrupted CLI (2 devices, another process) is checked against
    the same reference in the interruption test above."""
    ref_dir, ref_records, _ = reference
    workdir, records = level0_runs[0]
    assert strip_timing(records) == strip_timing([r for r in ref_records if r["level"] == 0])
    a, b = lottery.load_experiment(workdir), lottery.load_experiment(ref_dir)
    for part in (lambda s: s["theta0"], lambda s: s["theta_rewind"], lambda s: s["levels"][0]):
        for x, y in zip(jax.tree.leaves(part(a)), jax.tree.leaves(part(b)), strict=True):
            np.testing.assert_array_equal(x, y)


def next_masks(exp, saved):
    """The level-1 ticket masks from a saved level 0 (as lottery.run computes them)."""
    level0 = saved["levels"][0]
    prune = jax.jit(jax.vmap(lambda p, m, level: lottery.next_mask(exp, p, m, level, False),
                             in_axes=(0, 0, None)), static_argnums=2)
    return prune(level0["trained_params"], level0["mask"], 1)


def test_different_seed_changes_theta0_masks_and_data_order(reference, level0_runs, exp):
    (dir0, rec0), (dir1, rec1) = level0_runs[0], level0_runs[1]
    a, b = lottery.load_experiment(dir0), lottery.load_experiment(dir1)
    kernels = jax.tree.leaves(exp.prunable)  # biases start at 0 whatever the seed
    ref_masks = lottery.load_experiment(reference[0])["levels"][1]["mask"]
    theta0 = [jax.tree.leaves(s["theta0"]["params"]) for s in (a, b)]
    for x, y, kernel in zip(*theta0, kernels, strict=True):
        assert np.array_equal(x, y) != kernel
    masks1 = [jax.tree.leaves(next_masks(exp, s)) for s in (a, b)]
    for m0, m1, ref, kernel in zip(*masks1, jax.tree.leaves(ref_masks), kernels, strict=True):
        np.testing.assert_array_equal(m0, ref)  # (as the reference run pruned)
        assert np.array_equal(m0, m1) != kernel
    for r0, r1 in zip(rec0, rec1, strict=True):
        assert r0["val_loss"] != r1["val_loss"]
    # the data order itself: the first batches differ
    n, bs = 600, TINY["train.batch_size"]
    for trial in range(TINY["trials"]):
        first = [np.concatenate([np.asarray(data_lib.batch_indices(
            lottery.trial_key(seed, trial, lottery.DATA), t, n, bs)) for t in range(3)])
            for seed in (0, 1)]
        assert not np.array_equal(*first)


# ----------------------------------------------------------------------------- 3. divergence

def _raise_on_constant(token):
    raise ValueError(f"results.jsonl holds the non-JSON number {token}")


def test_divergence_is_recorded_and_later_levels_are_skipped(tmp_path):
    workdir = str(tmp_path / "run")
    logs = []
    # (the reference's shapes: only the training program is compiled anew)
    cfg = tiny(train__optimizer="sgd", train__learning_rate=1e30)
    records = lottery.run(cfg, workdir, log=logs.append)
    with open(os.path.join(workdir, lottery.RESULTS)) as f:
        text = f.read()
    on_disk = [json.loads(line, parse_constant=_raise_on_constant) for line in text.splitlines()]
    assert strip_timing(on_disk) == strip_timing(records)
    assert [(r["level"], r["trial"]) for r in records] == [(lv, t) for lv in range(LEVELS + 1)
                                                          for t in range(TINY["trials"])]

    accuracy_fields = ("early_stop_iteration", "val_loss_at_early_stop", "val_accuracy_at_early_stop",
                       "test_accuracy_at_early_stop", "final_test_accuracy")
    for r in records:
        assert all(r[field] is None for field in accuracy_fields), r
        for curve in ("train_loss", "val_loss", "val_accuracy", "test_loss", "test_accuracy"):
            assert all(v is None or math.isfinite(v) for v in r[curve])
        if r["level"] == 0:
            assert r["status"] == "diverged"
            failure = r["failure"]
            assert "non-finite training loss at iteration" in failure
            iteration = int(failure.split("iteration ")[1].split()[0])
            assert 0 <= iteration < TINY["train.iterations"]
            assert f"level 0, variant ticket, trial {r['trial']}" in failure
        else:  # the trial's ticket diverged at level 0: every later level is skipped
            assert r["status"] == "skipped", r
            assert "diverged at level 0" in r["failure"]
    assert any(line.startswith("WARNING: non-finite training loss") for line in logs)
    assert any("no ticket finished" in line for line in logs)

    # resumed at level 2, the skipped records are the same
    resumed = str(tmp_path / "resumed")
    shutil.copytree(workdir, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", f"level_{LEVELS:03d}"))
    assert strip_timing(lottery.run(cfg, resumed, log=quiet)) == strip_timing(records)


@pytest.mark.parametrize("nonfinite_step", [0, -1])
def test_non_finite_numbers_never_reach_the_results(exp, nonfinite_step):
    """make_record on a RunResult whose evaluations are all NaN/inf, with a non-finite training
    loss (nonfinite_step 0) or without one (as when the loss blows up at the last step of a run
    with one evaluation period, after its loss was measured): the record is not 'ok', names level, variant and trial, has None
    where numbers are missing and serialises as strict JSON."""
    shapes = jax.eval_shape(exp.init_variables, jax.random.key(0))["params"]
    mask = jax.tree.map(lambda s: np.ones(s.shape, bool), shapes)
    periods = TINY["train.iterations"] // TINY["train.eval_every"]
    nan = np.full((1, periods), np.nan, np.float32)
    result = lottery.train_lib.RunResult(
        params=None, batch_stats=None, train_loss=np.ones((1, periods), np.float32), val_loss=nan,
        val_accuracy=nan, test_loss=np.full((1, periods), np.inf, np.float32), test_accuracy=nan,
        best_period=np.array([-1]), best_test_loss=np.array([np.nan]),
        best_test_accuracy=np.array([np.nan]), final_test_loss=np.array([np.inf]),
        final_test_accuracy=np.array([np.nan]), nonfinite_step=np.array([nonfinite_step]),
        captured_params=None, captured_batch_stats=None)
    record = lottery.make_record(exp, result, 0, trial=1, level=2, variant="reinit", mask=mask,
                                 start=0, seconds=1.0, runs=1)
    assert record["status"] == "diverged"
    assert "level 2, variant reinit, trial 1" in record["failure"]
    assert record["test_accuracy_at_early_stop"] is None and record["final_test_accuracy"] is None
    json.loads(json.dumps(record), parse_constant=_raise_on_constant)


# ----------------------------------------------------------------------------- 4. bad input

def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    return lines[0]


@pytest.mark.parametrize("field, value", [
    ("prune.rules", ((".*kernel", 1.0),)),
    ("prune.global_rate", -0.1),
    ("prune.global_rate", 1.0),
    ("prune.levels", -1),
    ("train.iterations", 310),
    ("train.optimizer", "adamw"),
    ("model.name", "lenet5"),
    ("prune.strategy", "magnitude"),
    ("dataset.source", "web"),
    ("dataset.augment", "maybe"),
    ("model.dropout_rate", 1.0),
    ("train.learning_rate", 0.0),
    ("train.learning_rate", float("inf")),
    ("train.weight_decay", float("nan")),
    ("prune.rewind_iteration", 25),
    ("trials", 0),
    ("train.batch_size", 650),  # the training set has 700 - 100 = 600 examples
])
def test_bad_value_is_refused_before_anything_is_written(tmp_path, field, value):
    workdir = str(tmp_path / "run")
    cfg = tiny()
    set_field(cfg, field, value)
    with pytest.raises(config_lib.ConfigError) as info:
        lottery.run(cfg, workdir, log=quiet)
    assert str(info.value).startswith(f"config.{field}:"), str(info.value)
    assert "\n" not in str(info.value)
    assert not os.path.exists(workdir)


def test_unknown_field_is_refused(tmp_path):
    cfg = ml_collections.ConfigDict(tiny().to_dict())
    cfg.train.iteratons = 5
    with pytest.raises(config_lib.ConfigError, match=r"^config\.train\.iteratons: unknown field"):
        lottery.run(cfg, str(tmp_path / "run"), log=quiet)
    assert not os.path.exists(tmp_path / "run")


def test_cli_bad_value_exits_2_with_one_line(tmp_path):
    """(The values above all end the same way in the CLI: one of them is enough here.)"""
    workdir = str(tmp_path / "run")
    rc, _, stderr = run_cli(workdir, *cli_flags(), "--config.train.iterations=55")
    assert rc == 2, stderr
    assert error_line(stderr).startswith("lth_jax: error: config.train.iterations: 55 is not a "
                                         "multiple of train.eval_every=50")
    assert not os.path.exists(workdir)


def test_cli_mistyped_field_exits_2_with_one_line(tmp_path):
    workdir = str(tmp_path / "run")
    rc, _, stderr = run_cli(workdir, *cli_flags(), "--config.train.iteratons=5")
    assert not os.path.exists(workdir)
    assert "iteratons" in stderr
    assert rc == 2
    assert error_line(stderr).startswith("lth_jax: error: config.train.iteratons")


def test_workdir_of_another_experiment_is_refused_untouched(reference, tmp_path):
    """(The CLI prints ExperimentError like the ConfigError above: ``lth_jax: error: ...``.)"""
    workdir = str(tmp_path / "run")
    shutil.copytree(reference[0], workdir)
    with open(os.path.join(workdir, lottery.RESULTS), "rb") as f:
        before = f.read()
    with pytest.raises(lottery.ExperimentError, match="different experiment") as info:
        lottery.run(tiny(train__learning_rate=0.01), workdir, log=quiet)
    assert "train.learning_rate: workdir has 0.0012, config has 0.01" in str(info.value)
    assert "\n" not in str(info.value)
    with open(os.path.join(workdir, lottery.RESULTS), "rb") as f:
        assert f.read() == before


def _write_idx(path, array, ndim):
    header = (0x0800 | ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_truncated_dataset_file_is_refused(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    _write_idx(folder / "train-images-idx3-ubyte", rng.integers(0, 256, (50, 28, 28)), 3)
    _write_idx(folder / "train-labels-idx1-ubyte", rng.integers(0, 10, (50,)), 1)
    _write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 256, (20, 28, 28)), 3)
    _write_idx(folder / "t10k-labels-idx1-ubyte", rng.integers(0, 10, (20,)), 1)
    truncated = folder / "train-images-idx3-ubyte"
    with open(truncated, "r+b") as f:
        f.truncate(16 + 50 * 28 * 28 - 100)
    workdir = str(tmp_path / "run")
    cfg = tiny(dataset__name="mnist", dataset__source="files", dataset__path=str(folder),
               dataset__validation_size=10, train__batch_size=10)
    with pytest.raises(data_lib.DatasetError, match="truncated") as info:
        lottery.run(cfg, workdir, log=quiet)
    assert str(truncated) in str(info.value) and "\n" not in str(info.value)
    assert not os.path.exists(workdir)


@pytest.mark.parametrize("file, garbage", [(lottery.RESULTS, '{"trial": 0, "lev\n'),
                                           (lottery.CONFIG, '{"seed": 0, ')])
def test_corrupt_workdir_file_is_refused_untouched(reference, tmp_path, file, garbage):
    """A damaged results.jsonl (not just a partial last line) or config.json stops the run with the
    file's name; nothing is rewritten."""
    workdir = str(tmp_path / "run")
    shutil.copytree(reference[0], workdir)
    path = os.path.join(workdir, file)
    with open(path) as f:
        lines = f.readlines()
    lines.insert(1 if file == lottery.RESULTS else 0, garbage)
    with open(path, "w") as f:
        f.writelines(lines[:1] if file == lottery.CONFIG else lines)
    with open(path, "rb") as f:
        before = f.read()
    with pytest.raises(lottery.ExperimentError, match="is not valid JSON") as info:
        lottery.run(tiny(), workdir, log=quiet)
    assert path in str(info.value)
    with open(path, "rb") as f:
        assert f.read() == before


def _shrink_first_kernel(tree):
    """The same tree with Dense_0's kernel narrower: a checkpoint of another model."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x[..., :-1] if masks.path_str(path).endswith("Dense_0/kernel") else x, tree)


@pytest.mark.parametrize("name", ["init", f"level_{LEVELS - 1:03d}"])
def test_checkpoint_of_another_model_is_refused_on_resume(reference, tmp_path, name):
    workdir = str(tmp_path / "run")
    shutil.copytree(reference[0], workdir)
    lottery.save_checkpoint(workdir, name,
                            _shrink_first_kernel(lottery.load_checkpoint(workdir, name)))
    # keep the last level unfinished so that the resume needs the one before's checkpoint
    records = [r for r in lottery.read_records(workdir) if r["level"] < LEVELS]
    lottery._write_records(workdir, records)
    with pytest.raises(lottery.ExperimentError, match="another model") as info:
        lottery.run(tiny(), workdir, log=quiet)
    assert name in str(info.value) and "Dense_0/kernel" in str(info.value)
    assert strip_timing(lottery.read_records(workdir)) == strip_timing(records)


def test_load_checkpoint_checks_the_model(reference):
    workdir = reference[0]
    init = lottery.load_checkpoint(workdir, "init")
    assert lottery.load_checkpoint(workdir, "init", like=init) is not None
    with pytest.raises(lottery.ExperimentError, match="another model"):
        lottery.load_checkpoint(workdir, "init", like=_shrink_first_kernel(init))
    with pytest.raises(lottery.ExperimentError, match="another model"):
        lottery.load_checkpoint(workdir, "init", like={**init, "theta_k": init["theta0"]})
    # a dict ``like`` checks the parts it names
    assert lottery.load_checkpoint(workdir, "init", like={"theta0": init["theta0"]}) is not None
    with pytest.raises(lottery.ExperimentError, match="another model"):
        lottery.load_checkpoint(workdir, "init", like={"theta0": _shrink_first_kernel(init["theta0"])})
    with pytest.raises(lottery.ExperimentError, match="does not exist"):
        lottery.load_checkpoint(workdir, "level_099")


# ----------------------------------------------------------------------------- 5. fuzzing

BASE = tiny().to_dict()
FIELDS = sorted([f"{g}.{k}" for g, group in BASE.items() if isinstance(group, dict) for k in group]
                + [g for g, v in BASE.items() if not isinstance(v, dict)])
GROUPS = sorted(g for g, v in BASE.items() if isinstance(v, dict))

ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.integers(-10**6, 10**6),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 1),
    st.text(max_size=6),
    st.sampled_from(["adam", "sgd", "momentum", "paper", "global", "layerwise", "files", "tfds",
                     "synthetic", "mnist", "cifar10", "lenet300_100", "conv2", "on", "off", "auto",
                     "[", "(.*)kernel"]),
    st.lists(st.integers(-5, 400), max_size=3).map(tuple),
    st.tuples(st.text(max_size=4), st.one_of(st.floats(-1, 2), st.text(max_size=3), st.none())),
    st.lists(st.tuples(st.sampled_from([".*kernel", "(", ".*"]),
                       st.one_of(st.floats(-1, 2), st.just(math.nan), st.text(max_size=2))),
             max_size=2).map(tuple),
    st.dictionaries(st.text("abcxyz", min_size=1, max_size=3), st.integers(), max_size=2),
)

MUTATION = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(FIELDS), ANY_VALUE),
    st.tuples(st.just("delete"), st.sampled_from(FIELDS + GROUPS), st.none()),
    st.tuples(st.just("set"), st.sampled_from(GROUPS), ANY_VALUE),  # a group replaced by a value
    st.tuples(st.just("add"), st.sampled_from([f"{g}.extra" for g in GROUPS] + ["extra"]), ANY_VALUE),
)


@hypothesis.settings(max_examples=30, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.too_slow])
@hypothesis.given(mutations=st.lists(MUTATION, min_size=1, max_size=3))
def test_validate_passes_or_names_the_field(mutations):
    """Any config (a dict with any values, as a config file may build) either validates or raises
    ConfigError 'config.FIELD: ...' naming a changed field."""
    d = copy.deepcopy(BASE)
    changed = []
    for action, field, value in mutations:
        *parents, leaf = field.split(".")
        node = d
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        if action == "delete":
            node.pop(leaf, None)
        else:
            node[leaf] = value
        changed.append(field)
    hypothesis.assume(changed)
    cfg = ml_collections.ConfigDict(d)
    try:
        config_lib.validate(cfg)
    except config_lib.ConfigError as e:
        message = str(e)
        assert message.startswith("config.") and "\n" not in message, message
        named = message.split(":")[0][len("config."):]

        def blames(f):
            return (named == f or named.startswith(f + ".") or f.startswith(named + ".")
                    or f in message  # e.g. "config.train.iterations: ... train.eval_every=7"
                    # e.g. "config.dataset.name: unknown dataset 'x' for source 'files'"
                    or named.split(".")[0] == f.split(".")[0] and f.split(".")[-1] in message)

        assert any(blames(f) for f in changed), (changed, message)


DTYPES = [np.float32, jnp.bfloat16, np.int32, np.bool_]
SHAPES = st.sampled_from([(), (0,), (3,), (2, 3)])  # few shapes and dtypes: few compilations


class Spec:
    """A leaf to be: its shape and dtype (an object, so that tree functions see a leaf)."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = shape, dtype

    def __repr__(self):
        return f"Spec({self.shape}, {np.dtype(self.dtype).name})"


def leaf_specs():
    return st.builds(Spec, SHAPES, st.sampled_from(DTYPES))


def nested(leaf):
    return st.recursive(
        leaf,
        lambda inner: st.one_of(st.dictionaries(st.sampled_from("abcd"), inner, min_size=1,
                                                max_size=3),
                                st.lists(inner, min_size=1, max_size=3),
                                st.lists(inner, min_size=1, max_size=2).map(tuple)),
        max_leaves=4)


@st.composite
def pruning_inputs(draw):
    """(params, mask, rates): usually well-formed, sometimes broken in one way."""
    specs = draw(nested(leaf_specs()))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def param(spec):
        shape, dtype = spec.shape, spec.dtype
        values = rng.normal(size=shape) * 10.0 ** rng.integers(-3, 4)
        if rng.random() < 0.2 and values.size:
            values.flat[rng.integers(values.size)] = rng.choice([np.nan, np.inf, -np.inf, 0.0])
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)  # inf -> INT_MIN/INT_MAX (see test_magnitude_of_the_most_...)
            return jnp.asarray(np.clip(np.nan_to_num(values), info.min, info.max).astype(dtype))
        return jnp.asarray(values).astype(dtype)

    params = jax.tree.map(param, specs)
    mask = jax.tree.map(lambda p: rng.random(np.shape(p)) < 0.7, params)
    rates = jax.tree.map(lambda p: float(rng.choice([0.0, 0.2, 0.5, 1.0, rng.random()])), params)
    fault = draw(st.sampled_from(["none"] * 4 + ["dtype", "shape", "structure", "rate", "rates_tree"]))
    leaves, treedef = jax.tree.flatten(mask)
    i = draw(st.integers(0, len(leaves) - 1))
    if fault == "dtype":  # a mask leaf of another dtype
        leaves[i] = leaves[i].astype(draw(st.sampled_from([np.int32, np.float32, np.uint8])))
        mask = jax.tree.unflatten(treedef, leaves)
    elif fault == "shape":
        leaves[i] = np.ones(np.shape(leaves[i]) + (2,), bool)
        mask = jax.tree.unflatten(treedef, leaves)
    elif fault == "structure":
        mask = draw(st.sampled_from([leaves, {"x": leaves}, leaves + [np.ones(3, bool)],
                                     tuple(leaves)]))
    elif fault == "rate":
        rate_leaves = jax.tree.leaves(rates)
        rate_leaves[i] = draw(st.sampled_from([-0.1, 1.5, float("nan"), float("inf")]))
        rates = jax.tree.unflatten(jax.tree.structure(rates), rate_leaves)
    elif fault == "rates_tree":
        rates = draw(st.sampled_from([jax.tree.leaves(rates)[:-1], {"x": 0.2}, 0.2]))
    return params, mask, rates, fault


def alive_count(m):
    return int(np.sum(np.asarray(m)))


def check_new_mask(new, mask, counts=None):
    """``new`` is a valid mask, a subset of ``mask``, with exactly the expected removals."""
    assert jax.tree.structure(new) == jax.tree.structure(mask)
    for i, (n, m) in enumerate(zip(jax.tree.leaves(new), jax.tree.leaves(mask))):
        n, m = np.asarray(n), np.asarray(m)
        assert n.dtype == np.bool_ and n.shape == m.shape
        assert not np.any(n & ~m), "a pruned weight came back"
        if counts is not None:
            assert m.sum() - n.sum() == counts[i]


def magnitudes(p):
    """|w| as the pruning contract orders them: NaN largest."""
    a = np.abs(np.asarray(p).astype(np.float64))
    return np.where(np.isnan(a), np.inf, a)


@hypothesis.settings(max_examples=20, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.too_slow])
@hypothesis.given(inputs=pruning_inputs(), seed=st.integers(0, 100), global_rate=st.floats(0, 1))
def test_pruning_on_random_pytrees_works_or_raises_value_or_type_error(inputs, seed, global_rate):
    params, mask, rates, fault = inputs
    ref = lambda r, m: int(np.round(np.float32(r) * np.float32(alive_count(m)))) if r else 0
    counts = lambda: [ref(r, m) for r, m in zip(jax.tree.leaves(rates), jax.tree.leaves(mask))]

    def attempt(fn, must_fail):
        """fn() or None when it raised ValueError/TypeError (any other exception fails the test)."""
        try:
            out = fn()
        except (ValueError, TypeError):
            assert fault != "none", "well-formed input was refused"
            return None
        assert fault not in must_fail, f"input with a bad {fault} was accepted"
        return out

    # layerwise magnitude: exactly round(rate · alive) of the smallest |w| go, per leaf
    new = attempt(lambda: pruning.layerwise_magnitude(params, mask, rates),
                  ("dtype", "shape", "rate"))
    if new is not None:
        check_new_mask(new, mask, counts())
        for p, n, m in zip(jax.tree.leaves(params), jax.tree.leaves(new), jax.tree.leaves(mask)):
            removed, kept = np.asarray(m) & ~np.asarray(n), np.asarray(n)
            if removed.any() and kept.any():
                assert magnitudes(p)[removed].max() <= magnitudes(p)[kept].min()

    # random pruning: the same counts at random positions
    new = attempt(lambda: pruning.random(jax.random.key(seed), mask, rates), ("dtype", "rate"))
    if new is not None:
        check_new_mask(new, mask, counts())

    # global magnitude, pooled over the leaves with rate > 0
    prunable = jax.tree.map(bool, rates)
    new = attempt(lambda: pruning.global_magnitude(params, mask, global_rate, prunable),
                  ("dtype", "shape"))
    if new is not None:
        chosen = [bool(s) for s in jax.tree.leaves(prunable)]
        check_new_mask(new, mask)
        pooled = sum(alive_count(m) for m, s in zip(jax.tree.leaves(mask), chosen) if s)
        removed = sum(alive_count(m) - alive_count(n) for m, n, s in
                      zip(jax.tree.leaves(mask), jax.tree.leaves(new), chosen) if s)
        assert removed == (int(np.round(np.float32(global_rate) * np.float32(pooled)))
                           if any(chosen) else 0)
        for p, m, n, s in zip(jax.tree.leaves(params), jax.tree.leaves(mask), jax.tree.leaves(new),
                              chosen):
            if not s:
                np.testing.assert_array_equal(np.asarray(m), np.asarray(n))
        gone = [magnitudes(p)[np.asarray(m) & ~np.asarray(n)]
                for p, m, n, s in zip(jax.tree.leaves(params), jax.tree.leaves(mask),
                                      jax.tree.leaves(new), chosen) if s]
        kept = [magnitudes(p)[np.asarray(n)]
                for p, n, s in zip(jax.tree.leaves(params), jax.tree.leaves(new), chosen) if s]
        gone = np.concatenate(gone) if gone else np.zeros(0)
        kept = np.concatenate(kept) if kept else np.zeros(0)
        if gone.size and kept.size:
            assert gone.max() <= kept.min()

    # applying the mask: zero exactly where pruned, dtypes and shapes kept
    applied = attempt(lambda: masks.apply(params, mask), ("dtype", "shape"))
    if applied is not None:
        for p, m, a in zip(jax.tree.leaves(params), jax.tree.leaves(mask), jax.tree.leaves(applied),
                           strict=True):
            m = np.asarray(m)
            assert a.dtype == p.dtype and a.shape == p.shape
            a, p = np.asarray(a).astype(np.float64), np.asarray(p).astype(np.float64)
            np.testing.assert_array_equal(a[~m], 0)
            np.testing.assert_array_equal(a[m], p[m])  # NaN where NaN


def test_magnitude_of_the_most_negative_integer():
    params = {"w": jnp.array([1, np.iinfo(np.int32).min, 2, 3], jnp.int32)}
    mask = masks.ones_like(params)
    new = pruning.layerwise_magnitude(params, mask, {"w": 0.25})
    np.testing.assert_array_equal(np.asarray(new["w"]), [False, True, True, True])


# ----------------------------------------------------------------------------- 6. loading back

def test_load_experiment_gives_theta0_masks_and_trained_params(reference, exp):
    workdir, records, _ = reference
    saved = lottery.load_experiment(workdir)
    assert saved["config"] == lottery.config_to_json(tiny())
    assert strip_timing(saved["records"]) == strip_timing(records)
    trials = TINY["trials"]
    theta0 = saved["theta0"]
    # θ0 is the seeded init of each trial, unchanged by training
    fresh = jax.jit(jax.vmap(exp.init_variables))(
        jnp.stack([lottery.trial_key(0, t, lottery.INIT) for t in range(trials)]))
    for x, y in zip(jax.tree.leaves(fresh), jax.tree.leaves(theta0), strict=True):
        np.testing.assert_array_equal(np.asarray(x), y)
    shapes = jax.tree.map(lambda x: (trials,) + x.shape,
                          jax.eval_shape(exp.init_variables, jax.random.key(0))["params"])
    assert sorted(saved["levels"]) == list(range(LEVELS + 1))
    for level, state in saved["levels"].items():
        for name in ("mask", "trained_params"):
            assert jax.tree.map(np.shape, state[name]) == shapes
        assert all(m.dtype == np.bool_ for m in jax.tree.leaves(state["mask"]))
        for p, m in zip(jax.tree.leaves(state["trained_params"]), jax.tree.leaves(state["mask"])):
            assert np.all(p[~m] == 0.0)
        if level:
            previous = saved["levels"][level - 1]["mask"]
            assert masks.is_subset(state["mask"], previous)
            assert not masks.is_subset(previous, state["mask"])
        kernels = [m for m, k in zip(jax.tree.leaves(state["mask"]), jax.tree.leaves(exp.prunable))
                   if k]
        density = [r["density"] for r in records if r["level"] == level and r["variant"] == "ticket"]
        for t in range(trials):
            alive = sum(int(m[t].sum()) for m in kernels)
            assert alive / sum(m[t].size for m in kernels) == density[t]


def test_rewinding_theta0_with_a_level_mask_reproduces_that_level(reference, exp):
    """m_L ⊙ θ0 (tickets.rewind) is the level's starting point: training it again gives the saved
    trained ticket and the recorded curves, bit for bit."""
    workdir, records, _ = reference
    saved = lottery.load_experiment(workdir)
    level = LEVELS
    mask = saved["levels"][level]["mask"]
    start = jax.vmap(tickets.rewind)(saved["theta0"]["params"], mask)
    for s, m, t0 in zip(jax.tree.leaves(start), jax.tree.leaves(mask),
                        jax.tree.leaves(saved["theta0"]["params"])):
        np.testing.assert_array_equal(np.asarray(s), np.where(m, t0, 0))
    trials = TINY["trials"]
    keys = lambda purpose: jnp.stack([lottery.trial_key(0, t, purpose) for t in range(trials)])
    result = lottery.Runner(exp)(start, saved["theta0"]["batch_stats"], mask,
                                 keys(lottery.DATA), keys(lottery.NOISE), start=0, capture=-1)
    trained = saved["levels"][level]["trained_params"]
    for x, y in zip(jax.tree.leaves(result.params), jax.tree.leaves(trained), strict=True):
        np.testing.assert_array_equal(x, y)
    tickets_at_level = [r for r in records if r["level"] == level and r["variant"] == "ticket"]
    for t, r in enumerate(tickets_at_level):
        assert r["val_loss"] == [float(v) for v in np.asarray(result.val_loss[t], np.float64)]
