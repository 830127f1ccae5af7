"""One experiment over several processes (hosts), with JAX's multi-controller runtime.

Every process runs the same command and the same code: it loads the whole dataset, computes θ₀,
the masks and the controls itself (they are deterministic from the seed), and takes part in the
training programs, whose runs are sharded over the devices of all processes (a global mesh). What
comes back from the devices is gathered to every process (``to_host``), so all of them hold the
same results; only process 0 (``is_primary``) writes the workdir's files, while checkpoints are
written by orbax with all processes taking part (it writes replicated arrays from process 0).
The workdir must be on a filesystem every process sees.

Decisions taken from a process's own clock or signals (how long a chunk is, whether to stop, to
checkpoint or to report progress) are agreed on (``agree_max``), so that every process calls the
same programs in the same order. A process that dies, or fails with an error, makes the others
stop with one line (``Watchdog``) instead of hanging in the next collective.

With one process (the default) every function here is a no-op or an identity, and costs nothing.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

PyTree = Any

#: Exit status of a process stopped because another one died or failed.
EXIT_PEER_LOST = 2
_PREFIX = "lth_jax/"
_WATCHDOG: list["Watchdog"] = []  # this process's, once started


def initialize(runtime, *, platform_hint: str = "") -> None:
    """``jax.distributed.initialize`` from the config's ``runtime`` fields, then a ``Watchdog``.

    ``coordinator_address`` ("host:port" of process 0), ``num_processes`` (0 = not set) and
    ``process_id`` (-1 = not set) are passed on when set; with none set, JAX detects them itself
    (Cloud TPU, SLURM, Open MPI, ...). Must run before anything else uses JAX's backends.
    ``runtime.process_timeout_seconds`` is how long a silent process is waited for.
    """
    if not runtime.distributed:
        return
    kwargs: dict[str, Any] = {}
    if runtime.coordinator_address:
        kwargs["coordinator_address"] = str(runtime.coordinator_address)
    if int(runtime.num_processes):
        kwargs["num_processes"] = int(runtime.num_processes)
    if int(runtime.process_id) >= 0:
        kwargs["process_id"] = int(runtime.process_id)
    timeout = float(runtime.process_timeout_seconds)
    # CPU devices talk over gloo (TCP); GPUs and TPUs use their own interconnects.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # JAX's own heartbeat check aborts the process with a many-line fatal log; ours (the
    # watchdog) must see a dead process first and say so in one line.
    jax.distributed.initialize(initialization_timeout=max(int(timeout), 30),
                               heartbeat_timeout_seconds=int(3 * timeout) + 30, **kwargs)
    if jax.process_count() > 1:
        _WATCHDOG.append(Watchdog(timeout))
        _WATCHDOG[0].start()


def shutdown() -> None:
    """Leave the experiment together: stop the watchdog, then enter JAX's shutdown barrier
    (``jax.distributed.shutdown``), which every process must call. Call it before exiting, after
    a stop or at the end of the experiment. Without it, process 0's exit can take the coordination
    service away while another process's JAX client still polls it, and that process dies by
    SIGABRT in the interpreter's teardown. No-op with one process."""
    if not initialized():
        return
    if _WATCHDOG:
        _WATCHDOG[0].stopped.set()  # others leaving is no longer a failure
    jax.distributed.shutdown()


def initialized() -> bool:
    """Whether ``initialize`` connected this process to others (without starting a backend)."""
    return _client() is not None


def count() -> int:
    return jax.process_count()


def index() -> int:
    return jax.process_index()


def is_primary() -> bool:
    """True in process 0, the one that writes the workdir's files and prints progress."""
    return jax.process_index() == 0


def to_host(tree: PyTree) -> PyTree:
    """The tree's arrays as numpy arrays, whole: arrays sharded over other processes' devices are
    gathered (a collective: every process must call it at the same point)."""
    def leaf(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)
    return jax.tree.map(leaf, tree)


def to_global(tree: PyTree, sharding) -> PyTree:
    """``jax.device_put(tree, sharding)`` for a sharding that may span processes: every process
    holds the same values and places only its own devices' shards (nothing crosses hosts)."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def place(x: np.ndarray) -> jax.Array:
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    def leaf(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):  # typed keys: their raw bits
            return jax.random.wrap_key_data(place(np.asarray(jax.random.key_data(x))),
                                            impl=jax.random.key_impl(x))
        return place(np.asarray(x))
    return jax.tree.map(leaf, tree)


def agree_max(values: Sequence[int]) -> list[int]:
    """The element-wise maximum of ``values`` over all processes (a collective). Take the minimum
    of ``v`` as ``-agree_max([-v])[0]``."""
    if jax.process_count() == 1:
        return [int(v) for v in values]
    from jax.experimental import multihost_utils
    gathered = multihost_utils.process_allgather(np.asarray(values, np.int64))
    return [int(v) for v in np.max(np.asarray(gathered).reshape(-1, len(values)), axis=0)]


def barrier(name: str) -> None:
    """Wait until every process gets here (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"{_PREFIX}{name}")


def fail(message: str, status: int) -> None:
    """Tell the other processes that this one stops with ``message`` (their watchdogs print it
    and stop them), then exit at once with ``status``: JAX's exit would wait minutes in a
    shutdown barrier for processes that are still training."""
    client = _client()
    if client is not None:
        try:
            client.key_value_set(f"{_PREFIX}failed/{jax.process_index()}", message)
        except Exception:  # noqa: BLE001 -- the coordinator may be gone already
            pass
    os.write(2, (message.rstrip("\n") + "\n").encode())
    os._exit(status)


def wait_for_watchdog() -> None:
    """After an error in a collective: give the watchdog the time to find a process that died
    (it then ends this one with its line); returns when it finds none."""
    if _WATCHDOG:
        _WATCHDOG[0].join(_WATCHDOG[0].timeout + 3 * _WATCHDOG[0].period)


def _client():
    from jax._src import distributed
    return distributed.global_state.client


class Watchdog(threading.Thread):
    """Stops this process with one line when another process dies or fails.

    Every ``period`` seconds each process bumps its own counter in the coordination service's
    key-value store and reads the others'. A process whose counter has not moved for
    ``timeout`` seconds (by this process's clock: no clocks are compared), or that posted a
    failure (``fail``), ends this one: its line on stderr, exit ``EXIT_PEER_LOST``. When the
    coordinator (process 0) is gone, the store cannot be reached: that ends this process too.
    """

    def __init__(self, timeout: float, period: float | None = None,
                 exit_fn: Callable[[str, int], None] | None = None, *, client=None,
                 me: int | None = None, n: int | None = None):
        super().__init__(name="lth_jax-watchdog", daemon=True)
        self.timeout = float(timeout)
        self.period = period if period is not None else max(0.2, min(2.0, self.timeout / 5))
        self.exit_fn = exit_fn or _exit_now
        self.client = client  # (tests pass their own; else JAX's, once initialized)
        self.me = jax.process_index() if me is None else me
        self.n = jax.process_count() if n is None else n
        self.stopped = threading.Event()  # set by ``shutdown``: the processes leave together

    def run(self) -> None:
        client = self.client or _client()
        beat, seen, unreachable_since = 0, {}, None
        while not self.stopped.is_set():
            now = time.monotonic()
            try:
                beat += 1
                client.key_value_set(f"{_PREFIX}alive/{self.me}", str(beat), allow_overwrite=True)
                alive = _entries(client, "alive")
                failed = _entries(client, "failed")
                unreachable_since = None
            except Exception as e:  # noqa: BLE001 -- the coordinator (process 0) is gone
                unreachable_since = unreachable_since or now
                if self.stopped.is_set():
                    return
                if now - unreachable_since > self.timeout:
                    return self.exit_fn(
                        f"lth_jax: error: the coordinator (process 0 of {self.n}) cannot be "
                        f"reached ({type(e).__name__}); stopping. Run the same command again on "
                        "every host to resume from the saved progress.", EXIT_PEER_LOST)
                self.stopped.wait(self.period)
                continue
            for peer in range(self.n):
                if peer == self.me:
                    continue
                if peer in failed:
                    why = failed[peer].strip().removeprefix("lth_jax: error: ")
                    return self.exit_fn(f"lth_jax: error: process {peer} of {self.n} stopped: "
                                        f"{why}", EXIT_PEER_LOST)
                if peer not in seen or seen[peer][0] != alive.get(peer):
                    seen[peer] = (alive.get(peer), now)
                elif now - seen[peer][1] > self.timeout:
                    return self.exit_fn(
                        f"lth_jax: error: process {peer} of {self.n} stopped responding (no sign "
                        f"of life for {self.timeout:g} s: it died or its host is down); stopping "
                        "this one too. Run the same command again on every host to resume from "
                        "the saved progress.", EXIT_PEER_LOST)
            self.stopped.wait(self.period)


def _entries(client, directory: str) -> dict[int, str]:
    """{process: value} of the keys ``lth_jax/<directory>/<process>``."""
    out = {}
    for key, value in client.key_value_dir_get(f"{_PREFIX}{directory}/"):
        last = key.rstrip("/").rpartition("/")[2]
        if last.isdigit():
            out[int(last)] = value
    return out


def _exit_now(message: str, status: int) -> None:
    os.write(2, (message + "\n").encode())
    os._exit(status)
