"""Test-session settings: a persistent XLA compilation cache shared by the tests of one session,
so that programs compiled once (the same experiment run again, e.g. for resume) are not compiled
again. Compilation dominates the suite's time on a CPU."""

import contextlib
import functools
import os
import tempfile

import jax
import pytest

#: XLA's CPU backend without LLVM's optimisations and with its older (non-MLIR) fusion emitters,
#: for every program the tests compile, in the test processes and in the CLI processes they start
#: (``clitools.cli_env``): the suite's programs are small and run for a few steps, so its time is
#: compiling, which each of the two flags cuts (BUILD_NOTES.md). The one test that trains for real
#: under it, the README's linen example, compiles optimised (``test_readme.OPTIMIZED``). XLA reads
#: XLA_FLAGS when its CPU client starts: after this import.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
if FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):  # (xdist's workers inherit it)
    os.environ["XLA_FLAGS"] = f"{FAST_COMPILE} {os.environ.get('XLA_FLAGS', '')}".strip()

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


_CACHE = os.environ.get("LTH_JAX_TEST_CACHE") or tempfile.mkdtemp(prefix="lth_jax_xla_cache_")
os.environ.setdefault("LTH_JAX_TEST_CACHE", _CACHE)  # subprocesses started by tests share it
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


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


# ----------------------------------------------------------------------------- the tiny experiment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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


def set_field(c, key: str, value) -> None:
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


def cli_flags(**overrides) -> list[str]:
    """``tiny_config(**overrides)`` as --config.* flags for ``--config=configs/tiny.py``."""
    values = {**TINY, **{k.replace("__", "."): v for k, v in overrides.items()}}
    return [f"--config.{k}={v}" for k, v in values.items()]
