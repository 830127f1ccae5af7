"""Test-session settings: a persistent XLA compilation cache shared by the tests of one session,
so that programs compiled once (the same experiment run again, e.g. for resume) are not compiled
again. Compilation dominates the suite's time on a CPU."""

import os
import tempfile

import jax

_CACHE = os.environ.get("LTH_JAX_TEST_CACHE") or tempfile.mkdtemp(prefix="lth_jax_xla_cache_")
os.environ.setdefault("LTH_JAX_TEST_CACHE", _CACHE)  # subprocesses started by tests share it
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
