"""The test session's settings and fixtures (the helpers the tests share are in helpers.py).

Settings: every test process (and every CLI process the tests start: ``helpers.cli_env``) compiles
with ``helpers.FAST_COMPILE``, and all of them share one persistent XLA compilation cache for the
session, so that a program compiled once (the same experiment run again, e.g. for resume) is not
compiled again (XLA does not write programs holding oneDNN's convolution into that cache: it
warns and compiles them again). Compilation dominates the suite's time on a CPU.
"""

import os
import tempfile

import helpers

# XLA reads XLA_FLAGS when its CPU client starts: before any test runs (xdist's workers inherit it).
if helpers.FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{helpers.FAST_COMPILE} {os.environ.get('XLA_FLAGS', '')}".strip()

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest  # noqa: E402

_CACHE = os.environ.get("LTH_JAX_TEST_CACHE") or tempfile.mkdtemp(prefix="lth_jax_xla_cache_")
os.environ.setdefault("LTH_JAX_TEST_CACHE", _CACHE)  # subprocesses started by tests share it
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
# The native kernel gradient (lth_jax.models.native) is compiled once for the session, into the
# same folder, not into the user's cache.
os.environ.setdefault("LTH_JAX_NATIVE_CACHE", os.path.join(_CACHE, "native"))


@pytest.fixture(autouse=True)
def _no_cli_left_running():
    """Kill what a failed test leaves running (or stopped) of the CLIs it started."""
    yield
    helpers.kill_started_clis()


@pytest.fixture(scope="session")
def tiny_reference(tmp_path_factory):
    """The tiny experiment without controls (``helpers.NO_CONTROLS``), run uninterrupted in this
    process on one device: ``(workdir, records, log lines)``. Tests copy the workdir before they
    change anything in it."""
    from lth_jax import lottery

    workdir = str(tmp_path_factory.mktemp("reference") / "run")
    logs = []
    records = lottery.run(helpers.tiny_no_controls(), workdir, log=logs.append)
    return workdir, records, logs


@pytest.fixture(scope="session")
def tiny_exp():
    """``tiny_reference``'s experiment setup (model, data, rules)."""
    from lth_jax import lottery

    return lottery.setup(helpers.tiny_no_controls())
