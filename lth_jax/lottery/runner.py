"""The devices: compiled training programs for the runs of a level, and their chunks.

``Runner`` compiles one program per (start, capture, number of runs) and spreads the runs over the
devices; ``Runner.begin`` puts runs on them as a ``Training``, which trains chunk by chunk
(``Training.advance``). Experiments built alike share their compiled programs within a process
(``PROGRAM_CACHE_SIZE``).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lth_jax import config as config_lib
from lth_jax import masks as masks_lib
from lth_jax import models
from lth_jax import processes
from lth_jax import train as train_lib
from lth_jax.lottery.experiment import Experiment, ExperimentError

PyTree = Any
#: The longest slice ``runtime.slice_iterations = 0`` picks (the largest divisor of eval_every up
#: to this): 10 steps of all runs on a device is a few seconds for the paper's conv nets on a CPU.
AUTO_SLICE = 10
#: On a CPU the automatic slice is also at most this long, estimated at CPU_FLOPS_ESTIMATE per
#: device: below what Conv-2 trains at on one core of every CPU measured (docs/performance.md,
#: "Older whole-network snapshots"), so an estimate errs towards shorter slices. Conv-2's 15.5
#: GFLOP step, 3 runs a device, gets slices of one step; LeNet's 72 MFLOP keeps 10.
AUTO_SLICE_SECONDS = 2.0
CPU_FLOPS_ESTIMATE = 25e9
#: How many experiments' compiled programs (``Runner``'s, ``imp.Steps``') one process keeps: a
#: second run of an experiment in the same process (a resume, a sweep in a notebook, the tests)
#: reuses them instead of tracing and lowering them again (seconds each).
PROGRAM_CACHE_SIZE = 8


_PROGRAMS: collections.OrderedDict = collections.OrderedDict()


def cached(key: tuple, make: Callable[[], Any]) -> Any:
    """``make()``, kept under ``key`` among the last PROGRAM_CACHE_SIZE of its kind (least recently
    used dropped first)."""
    if key in _PROGRAMS:
        _PROGRAMS.move_to_end(key)
        return _PROGRAMS[key]
    value = _PROGRAMS[key] = make()
    kind = [k for k in _PROGRAMS if k[0] == key[0]]
    for old in kind[:max(0, len(kind) - PROGRAM_CACHE_SIZE)]:
        del _PROGRAMS[old]
    return value


def clear_program_cache() -> None:
    """Forget every experiment's compiled programs kept by ``Runner`` and ``imp.Steps`` (e.g. after
    changing how ``jax.jit`` compiles)."""
    _PROGRAMS.clear()



# ----------------------------------------------------------------------------- devices

class _Program(NamedTuple):
    init: Callable            # (params, batch_stats) -> RunState, sharded like the runs
    chunk: Callable           # make_chunk_fn's function (compiled on first use)
    mesh: Mesh
    sharding: NamedSharding   # of every per-run argument
    per: int                  # the run axis is padded to a multiple of this
    trainer: train_lib.Trainer  # the experiment's, with this runner's slices


class Runner:
    """Trains the runs of a level on the devices, in chunks of slices of ``slice_iterations``
    steps (a divisor of ``eval_every``; 0 = automatic, ``_auto_slice``).

    A level with R runs uses ``d = min(R, devices)`` devices; the run axis is padded (repeating the
    last run) to a multiple of d and the padding is dropped from what comes back. Each device trains
    its slice of the runs (``batching``: ``"vmap"`` in lockstep, ``"map"`` one after another;
    ``"auto"`` = map on CPUs, vmap on accelerators). With ``data_parallel`` every run uses all
    devices instead, each batch split over them. One program is compiled per (start, capture, R)
    and serves every chunk; before its first use, XLA's estimate of its memory is checked against
    what the devices have (``ExperimentError`` if it cannot fit).
    """

    def __init__(self, exp: Experiment, num_devices: int = 0, batching: str = "auto",
                 data_parallel: bool = False, matmul_precision: str = "auto",
                 slice_iterations: int = 0):
        devices = jax.devices()
        self.devices = devices[:num_devices] if num_devices else devices
        self.exp = exp
        platform = self.devices[0].platform
        if batching == "auto":
            batching = "map" if platform == "cpu" else "vmap"
        self.batching = batching
        #: jax's matmul (and convolution) precision for the training programs: "auto" is
        #: "highest" on CPUs (float32 costs nothing extra there) and "default" on GPUs/TPUs
        #: (TF32 / bfloat16 passes: the tensor cores' rate, as PyTorch's cuDNN convolutions).
        self.matmul_precision = (("highest" if platform == "cpu" else "default")
                                 if matmul_precision == "auto" else matmul_precision)
        self.data_parallel = data_parallel
        every = exp.trainer.eval_every
        if slice_iterations and every % slice_iterations:
            raise config_lib.ConfigError(
                f"config.runtime.slice_iterations: {slice_iterations} does not divide "
                f"train.eval_every={every}")
        #: The steps of one slice, the unit of a chunk: short enough that a chunk (and so a stop)
        #: need not wait for a whole evaluation period of a slow network.
        self.slice_iterations = slice_iterations or self._auto_slice(platform)
        # The programs and their executables, by (start, capture, R); shared by the Runners of
        # experiments built alike (``Experiment.programs_key``) with the same options here.
        shared = ("runner", exp.programs_key, processes.count(),
                  tuple((d.platform, d.id) for d in self.devices), self.batching,
                  self.data_parallel, self.matmul_precision, self.slice_iterations,
                  tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(exp.data)))
        programs: tuple[dict[tuple, _Program], dict[tuple, Any]] = (
            cached(shared, lambda: ({}, {})) if exp.programs_key else ({}, {}))
        self._programs, self._compiled = programs
        self._data: dict[tuple, train_lib.DeviceData] = {}  # this experiment's, on the mesh

    def _auto_slice(self, platform: str) -> int:
        """The largest divisor of eval_every up to AUTO_SLICE; on a CPU also one whose slice of
        the most runs a device trains (every variant of every trial) is estimated at no more than
        AUTO_SLICE_SECONDS, from XLA's FLOP count of a step (of the unoptimised program: cheap)."""
        every = self.exp.trainer.eval_every
        divisors = [d for d in range(1, min(every, AUTO_SLICE) + 1) if every % d == 0]
        if platform != "cpu":
            return divisors[-1]
        trainer, exp = self.exp.trainer, self.exp
        variables = jax.eval_shape(exp.init_variables, jax.random.key(0))
        state = jax.eval_shape(trainer.init_state, variables["params"], variables["batch_stats"])
        mask = jax.eval_shape(masks_lib.ones_like, variables["params"])
        batch = jax.ShapeDtypeStruct((trainer.batch_size, *exp.input_shape), jnp.float32)
        labels = jax.ShapeDtypeStruct((trainer.batch_size,), jnp.int32)
        # In one piece: XLA counts a loop's body once, and the conv nets' kernel gradients and
        # Winograd products are loops over chunks of the batch on CPUs.
        with models.convolutions_in_one_piece():
            cost = jax.jit(trainer.step).lower(state, mask, batch, labels, jnp.int32(0),
                                               jax.random.key(0)).cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float((cost or {}).get("flops", 0.0))
        runs = int(exp.config.trials) * len(exp.variants)
        # Data parallel: every device trains a share of every run's batch; else whole runs.
        per_device = flops * (runs / len(self.devices) if self.data_parallel
                              else -(-runs // len(self.devices)))
        fits = [d for d in divisors if d * per_device <= AUTO_SLICE_SECONDS * CPU_FLOPS_ESTIMATE]
        return fits[-1] if fits else 1

    def _program(self, start: int, capture: int, runs: int) -> _Program:
        key = (start, capture, runs)
        if key in self._programs:
            return self._programs[key]
        trainer = dataclasses.replace(self.exp.trainer, slice_steps=self.slice_iterations)
        if self.data_parallel:
            # Every run uses all devices: each training batch is split over them (GSPMD inserts
            # the gradient all-reduce); params, masks and data are replicated.
            mesh = Mesh(np.array(self.devices), ("data",))
            trainer = dataclasses.replace(
                trainer, batch_sharding=NamedSharding(mesh, PartitionSpec("data")))
            sharding = NamedSharding(mesh, PartitionSpec())
            chunk = jax.jit(train_lib.make_chunk_fn(trainer, start=start, capture_iteration=capture,
                                                    batching=self.batching),
                            out_shardings=sharding, donate_argnums=1)
            per = 1
        else:
            # With several processes every one of them must hold a part of the mesh.
            used = len(self.devices) if processes.count() > 1 else min(runs, len(self.devices))
            mesh = Mesh(np.array(self.devices[:used]), ("runs",))
            chunk = train_lib.make_chunk_fn(trainer, start=start, capture_iteration=capture,
                                            batching=self.batching, mesh=mesh)
            sharding = NamedSharding(mesh, PartitionSpec("runs"))
            per = mesh.devices.size
        init = jax.jit(jax.vmap(lambda p, s: train_lib.init_run(trainer, p, s, start)),
                       out_shardings=sharding)
        self._programs[key] = _Program(init, chunk, mesh, sharding, per, trainer)
        return self._programs[key]

    def _device_data(self, mesh: Mesh) -> train_lib.DeviceData:
        """The experiment's data, replicated over ``mesh``'s devices."""
        if mesh.devices.size not in self._data:
            self._data[mesh.devices.size] = processes.to_global(
                self.exp.data, NamedSharding(mesh, PartitionSpec()))
        return self._data[mesh.devices.size]

    def begin(self, params: PyTree, batch_stats: PyTree, mask: PyTree, data_key: jax.Array,
              noise_key: jax.Array, *, start: int, capture: int,
              saved: dict | None = None) -> "Training":
        """The R runs given with a leading axis R, on the devices, ready to train from iteration
        ``start`` (or from ``saved``, a ``Training.snapshot()`` of these runs)."""
        with jax.default_matmul_precision(self.matmul_precision):
            return self._begin(params, batch_stats, mask, data_key, noise_key, start=start,
                               capture=capture, saved=saved)

    def _begin(self, params, batch_stats, mask, data_key, noise_key, *, start, capture, saved):
        runs = jax.tree.leaves(mask)[0].shape[0]
        program = self._program(start, capture, runs)
        padded = -(-runs // program.per) * program.per

        def put(tree):
            if padded != runs:
                tree = jax.tree.map(
                    lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], padded - runs, axis=0)]), tree)
            return processes.to_global(tree, program.sharding)

        mask, data_key, noise_key = put((mask, data_key, noise_key))
        if saved is None:
            state, done = program.init(put(params), put(batch_stats)), 0
        else:
            like = jax.eval_shape(program.init, params, batch_stats)
            state = put(jax.tree.unflatten(jax.tree.structure(like), list(saved["state"])))
            if int(saved["iterations"]) % self.slice_iterations:
                raise ValueError(f"saved at iteration {int(saved['iterations'])}, not a multiple "
                                 f"of slice_iterations={self.slice_iterations}")
            done = int(saved["iterations"]) // self.slice_iterations
        key = (start, capture, runs)
        # A lower bound first, before compiling for minutes: a slice's batch indices. (Both
        # checks run for a program already compiled too: what is free may have changed.)
        devices = _local(program.mesh)
        in_flight = padded // program.per if self.batching == "vmap" else 1
        self._check_memory(self.slice_iterations * self.exp.trainer.batch_size * 4 * in_flight,
                           devices, "its batch indices alone")
        data = self._device_data(program.mesh)
        args = (data, state, mask, data_key, noise_key, np.int32(0), np.int32(1))
        if key not in self._compiled:
            # Data parallel: every convolution over the whole batch at once. In chunks it is a
            # loop over an axis GSPMD splits over the devices, which runs slower
            # (docs/performance.md, "The kernel gradient a few examples at a time").
            with (models.convolutions_in_one_piece() if self.data_parallel
                  else contextlib.nullcontext()):
                self._compiled[key] = program.chunk.lower(*args).compile()
        self._check_compiled_memory(self._compiled[key], devices)
        return Training(self._compiled[key], data, state, mask, data_key, noise_key, runs,
                        train_lib.num_slices(program.trainer, start), done, self.slice_iterations)

    def __call__(self, params, batch_stats, mask, data_key, noise_key, *, start: int,
                 capture: int) -> train_lib.RunResult:
        """Train the R runs given with a leading axis R in one chunk; returns the RunResult as
        numpy arrays."""
        training = self.begin(params, batch_stats, mask, data_key, noise_key, start=start,
                              capture=capture)
        training.advance(training.slices)
        return training.result()

    def _check_compiled_memory(self, compiled, devices: list) -> None:
        try:
            stats = compiled.memory_analysis()
        except Exception:  # noqa: BLE001 -- not every backend has it; then nothing is checked
            return
        if stats is not None:
            self._check_memory(stats.temp_size_in_bytes + stats.argument_size_in_bytes
                               + stats.output_size_in_bytes - stats.alias_size_in_bytes, devices,
                               "XLA's estimate")

    @staticmethod
    def _check_memory(need: int, devices: list, what: str) -> None:
        """Refuse (ExperimentError) a program that needs more than ``need`` bytes per device."""
        if devices[0].platform == "cpu":  # the host's memory, shared by all its CPU devices
            have = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / len(devices)
        else:
            memory = devices[0].memory_stats() or {}
            if "bytes_limit" not in memory:
                return
            have = memory["bytes_limit"] - memory.get("bytes_in_use", 0)
        if need > have:
            raise ExperimentError(
                f"this config does not fit in memory: the training program needs "
                f"~{need / 2**30:.1f} GiB per device ({what}), {have / 2**30:.1f} GiB are free "
                f"per {devices[0].platform} device; use a smaller runtime.slice_iterations (a "
                "slice's batch indices are computed at once), train.batch_size, or fewer runs per "
                "device")


def _local(mesh: Mesh) -> list:
    """This process's devices of ``mesh`` (all of them with one process)."""
    return [d for d in mesh.devices.flat if d.process_index == jax.process_index()]


class Training:
    """The runs of a level on the devices, trained chunk by chunk with ``advance``. Reading its
    state (``best_so_far``, ``snapshot``, ``result``) gathers it from every process: with
    several, all must call them at the same points."""

    def __init__(self, compiled, data, state, mask, data_key, noise_key, runs: int, slices: int,
                 slice_: int, slice_iterations: int):
        self._compiled, self._data, self._state = compiled, data, state
        self._inputs = (mask, data_key, noise_key)
        self.runs, self.slices, self.slice = runs, slices, slice_
        self.slice_iterations = slice_iterations

    @property
    def done(self) -> bool:
        return self.slice >= self.slices

    @property
    def iterations(self) -> int:
        """The iterations trained so far, from the level's start."""
        return self.slice * self.slice_iterations

    def advance(self, count: int, poll: Callable[[], Any] | None = None) -> int:
        """Train the next ``count`` slices (fewer at the end); returns, when done, how many.

        ``poll`` is called about every 10 ms while the chunk runs (the wait is a Python loop, so
        signal handlers run meanwhile); an exception it raises propagates, and this Training is
        then unusable (its state was donated to the chunk still running)."""
        count = max(1, min(int(count), self.slices - self.slice))
        self._state = self._compiled(self._data, self._state, *self._inputs,
                                     np.int32(self.slice), np.int32(count))
        if poll is None:
            jax.block_until_ready(self._state.best_period)
        else:
            while not self._state.best_period.is_ready():
                poll()
                time.sleep(0.01)
        self.slice += count
        return count

    def best_so_far(self) -> tuple[np.ndarray, np.ndarray]:
        """Per run: the lowest validation loss so far and the validation accuracy there (NaN
        before the first evaluation)."""
        loss, period, accuracy = processes.to_host(
            (self._state.best_val_loss, self._state.best_period, self._state.curves.val_accuracy))
        loss, period, accuracy = loss[:self.runs], period[:self.runs], accuracy[:self.runs]
        at = np.where(period >= 0, accuracy[np.arange(self.runs), np.maximum(period, 0)], np.nan)
        return np.where(np.isfinite(loss), loss, np.nan), at

    def snapshot(self) -> dict:
        """What continues these runs exactly: the state of every run (numpy, the leaves of the
        RunState in order) and the iterations trained (from the level's start)."""
        return {"state": [x[:self.runs] for x in processes.to_host(jax.tree.leaves(self._state))],
                "iterations": np.int64(self.iterations)}

    def result(self) -> train_lib.RunResult:
        """The RunResult of the finished runs, as numpy arrays."""
        return jax.tree.map(lambda x: x[:self.runs],
                            processes.to_host(train_lib.run_result(self._state)))

    def curves(self) -> train_lib.Curves:
        """The runs' evaluation curves so far (numpy [R, periods]; NaN where not measured yet)."""
        return jax.tree.map(lambda x: x[:self.runs], processes.to_host(self._state.curves))

    def current(self) -> tuple[PyTree, PyTree]:
        """The runs' params and batch stats after the iterations trained so far (numpy, leading
        run axis): e.g. θ_k of a dense run stopped at iteration k."""
        train = processes.to_host((self._state.train.params, self._state.train.batch_stats))
        return jax.tree.map(lambda x: x[:self.runs], train)
