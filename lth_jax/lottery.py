"""The lottery-ticket experiment: levels × variants × trials, trained in chunks that stop and resume.

``imp`` is the algorithm (Frankle & Carbin 2019, iterative magnitude pruning), every trial at once::

    θ₀ ← init(key)                                       kept, never mutated
    level 0:  train the dense net m₀ = 1 from θ₀           (capture θ_k if rewinding to k > 0)
    level L:  m_L ← prune(θ_{L-1} trained, m_{L-1})        (one-shot: prune the dense run to level L)
              ticket        m_L ⊙ θ₀ (or θ_k)            trained from iteration k
              reinit        m_L ⊙ θ'  (fresh init)       control
              random_prune  m'_L ⊙ θ₀ (random mask, same per-layer counts as m_L)   control

``LevelTrainer`` trains all runs of a level together (``Runner`` spreads them over the devices) as
a sequence of chunks of one compiled program. Between chunks it prints progress, checks for a stop,
and every ``runtime.checkpoint_minutes`` saves an intra-level checkpoint; a rerun of the same
command continues from it with results identical to an uninterrupted run's. ``Store`` keeps it all
in the workdir (layout in ``lth_jax.workdir``): θ₀/θ_k, each finished level's checkpoint (committed
first) and records (written after), and the progress of the level in training.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lth_jax import config as config_lib
from lth_jax import data as data_lib
from lth_jax import masks as masks_lib
from lth_jax import models
from lth_jax import processes
from lth_jax import pruning
from lth_jax import structured
from lth_jax import tickets
from lth_jax import train as train_lib
from lth_jax import workdir as workdir_lib
from lth_jax.workdir import load_experiment  # noqa: F401 -- part of this module's API

PyTree = Any
VARIANTS = workdir_lib.VARIANTS
# Key purposes: every random draw of an experiment is fold_in(fold_in(root, trial), purpose) [, level].
INIT, DATA, NOISE, REINIT, RANDOM_MASK = range(5)
RESULTS = workdir_lib.RESULTS
CONFIG = workdir_lib.CONFIG
# Fields of a record that measure the machine rather than the experiment (differ between reruns).
TIMING_FIELDS = ("train_seconds",)
#: The longest slice ``runtime.slice_iterations = 0`` picks (the largest divisor of eval_every up
#: to this): 10 steps of all runs on a device is a few seconds for the paper's conv nets on a CPU.
AUTO_SLICE = 10
#: On a CPU the automatic slice is also at most this long, estimated at CPU_FLOPS_ESTIMATE per
#: device (Conv-2 trained at ~33 GFLOP/s a core on 2026-12-01's AMD EPYC, ~31 on 2026-12-02's
#: Intel Xeon): Conv-2's 15.5 GFLOP step, 3 runs a device, gets slices of one step, LeNet's
#: 72 MFLOP keeps 10.
AUTO_SLICE_SECONDS = 2.0
CPU_FLOPS_ESTIMATE = 25e9
#: The layout of an intra-level checkpoint's RunState (part of its inputs digest): 2 = with the
#: period's training loss so far (``RunState.period_loss``), which slices need.
PROGRESS_LAYOUT = 2
#: The workdir or a checkpoint cannot be used for this experiment (one-line message).
ExperimentError = workdir_lib.WorkdirError
#: How many experiments' compiled programs (``Runner``'s, ``Pieces``') one process keeps: a
#: second run of an experiment in the same process (a resume, a sweep in a notebook, the tests)
#: reuses them instead of tracing and lowering them again (seconds each).
PROGRAM_CACHE_SIZE = 8


class Stopped(Exception):
    """The run stopped at a safe point because a stop was asked for (SIGINT/SIGTERM in ``main``).

    ``signum`` is the signal; the message says where the run stopped and what is saved.
    ``abandoned``: a chunk of training was still running on the devices and was given up (its
    work is lost; the last intra-level checkpoint stands): the process should end at once
    (``os._exit``), without waiting for it.
    """

    def __init__(self, signum: int, message: str, abandoned: bool = False):
        super().__init__(message)
        self.signum, self.abandoned = signum, abandoned


def config_to_json(config: ml_collections.ConfigDict) -> dict:
    """The resolved config as plain JSON data (tuples become lists)."""
    return json.loads(json.dumps(config.to_dict()))


# ----------------------------------------------------------------------------- setup

@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything built once from a config: model, data, pruning rules, trainer."""
    config: ml_collections.ConfigDict
    model: Any
    dataset_info: data_lib.DatasetInfo
    data: train_lib.DeviceData
    trainer: train_lib.Trainer
    input_shape: tuple[int, ...]
    prunable: PyTree          # kernels: what "fraction of weights remaining" counts
    rates: PyTree             # per-round rate per leaf (layerwise) / which leaves pool (global)
    strategy: str             # "layerwise" | "global" | "neuron" | "global_neuron" | "N:M"
    global_rate: float
    variants: tuple[str, ...]
    identity: str             # workdir.identity of the config: in every record and checkpoint
    #: What the model, trainer and data shapes are built from (``setup``: a digest of the config's
    #: model, train and dataset sections and the dataset loaded); experiments with equal keys
    #: share compiled programs in a process (``PROGRAM_CACHE_SIZE``). "" = share nothing: set it
    #: to "" in an Experiment whose model or trainer was changed by hand.
    programs_key: str = ""

    def init_variables(self, key: jax.Array) -> dict:
        """Fresh variables ``{'params', 'batch_stats'}`` from D_θ (batch_stats {} without BN)."""
        v = models.init(self.model, key, self.input_shape)
        return {"params": v["params"], "batch_stats": v.get("batch_stats", {})}


def setup(config: ml_collections.ConfigDict) -> Experiment:
    """Validate the config, load the data and build the model, rules and trainer."""
    config_lib.validate(config)
    spec = models.spec(config.model.name)
    dataset = data_lib.load(_dataset_config(config), seed=int(config.seed))
    info = dataset.info
    if config.train.batch_size > len(dataset.train_labels):
        raise config_lib.ConfigError(
            f"config.train.batch_size: {config.train.batch_size} is larger than the training set "
            f"({len(dataset.train_labels)} examples)")
    if len(dataset.validation_labels) == 0:
        raise config_lib.ConfigError("config.dataset.validation_size: must be > 0 (early stopping "
                                     "uses the validation loss)")
    options = {"num_classes": info.num_classes}
    if "dropout_rate" in models.default_options(spec.name):
        options["dropout_rate"] = float(config.model.dropout_rate)
    elif config.model.dropout_rate:
        raise config_lib.ConfigError(f"config.model.dropout_rate: model {spec.name!r} has no dropout")
    if "conv" in models.default_options(spec.name):  # LeNet has no convolution to choose
        options["conv"] = config.model.conv
    model = models.create(spec.name, **options)
    input_shape = tuple(info.image_shape)
    params_shape = jax.eval_shape(lambda k: models.init(model, k, input_shape),
                                  jax.random.key(0))["params"]

    strategy = spec.strategy if config.prune.strategy == "paper" else config.prune.strategy
    rules = tuple(tuple(r) for r in config.prune.rules) or spec.rules
    rates = pruning.rates_by_rule(params_shape, rules)
    positive = sorted({r for r in jax.tree.leaves(rates) if r > 0})
    if not positive and config.prune.levels > 0:
        raise config_lib.ConfigError("config.prune.rules: no parameter gets a rate > 0; paths are "
                                     + ", ".join(masks_lib.leaf_paths(params_shape)))
    global_rate = float(config.prune.global_rate)
    if strategy in ("global", "global_neuron") and not global_rate:
        if len(positive) > 1:
            raise config_lib.ConfigError(
                f"config.prune.global_rate: the rules give several rates {positive}; set one rate "
                "for global pruning")
        global_rate = positive[0] if positive else 0.0
    _check_structured(strategy, params_shape, int(config.prune.levels))

    augment = {"on": True, "off": False, "auto": data_lib.needs_augmentation(info)}[
        config.dataset.augment]
    variants = workdir_lib.variants(config_to_json(config))
    available = jax.devices()
    if int(config.runtime.devices) > len(available):
        raise config_lib.ConfigError(
            f"config.runtime.devices: {config.runtime.devices} devices asked for, but there are "
            f"{len(available)} {available[0].platform} device(s) here")
    if config.runtime.data_parallel:
        devices = int(config.runtime.devices) or jax.device_count()
        if config.train.batch_size % devices:
            raise config_lib.ConfigError(
                f"config.train.batch_size: {config.train.batch_size} does not split evenly over "
                f"{devices} devices (runtime.data_parallel)")
    resolved = config_to_json(config)
    built_from = {**{k: resolved[k] for k in ("model", "train", "dataset")},
                  "info": [info.name, info.source, list(info.image_shape), info.num_classes],
                  "augment": augment, "sizes": [len(dataset.train_labels),
                                                len(dataset.validation_labels),
                                                len(dataset.test_labels)]}
    return Experiment(config=config, model=model, dataset_info=info,
                      data=train_lib.device_data(dataset, int(config.train.eval_batch_size)),
                      trainer=train_lib.make_trainer(model, config.train, augment),
                      input_shape=input_shape, prunable=pruning.prunable(params_shape),
                      rates=rates, strategy=strategy, global_rate=global_rate, variants=variants,
                      identity=workdir_lib.identity(resolved),
                      programs_key=hashlib.sha256(json.dumps(
                          built_from, sort_keys=True).encode()).hexdigest()[:16])


def _check_structured(strategy: str, params_shape: PyTree, levels: int) -> None:
    """Refuse, naming the field, a structured strategy the network or the level count cannot take."""
    nm = config_lib.nm_pattern(strategy)
    if nm is not None:
        rounds = structured.nm_rounds(*nm)
        if levels > rounds:  # one-shot level L is L rounds at once: the same bound
            raise config_lib.ConfigError(
                f"config.prune.levels: {levels}, but N:M {strategy} is reached by rounds in "
                f"{rounds} level(s) (one weight per group of {nm[1]} per round); later levels would "
                f"retrain the same mask. Set prune.levels <= {rounds}")
    elif strategy in ("neuron", "global_neuron"):
        try:
            structured.sequential_links(params_shape)
        except ValueError as e:
            raise config_lib.ConfigError(
                f"config.prune.strategy: {strategy!r} needs a sequential network (LeNet, Conv-2/4/6)"
                f" whose layers feed one another in order: {e}") from None


def _dataset_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict(config.dataset.to_dict())
    d.path = d.path or None
    d.data_dir = d.data_dir or None
    return d


# ----------------------------------------------------------------------------- keys and pieces

def trial_key(seed: int, trial: int, purpose: int, level: int | None = None) -> jax.Array:
    """The key for one purpose of one trial (and level): same seed, same draws, on any machine."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), trial), purpose)
    return key if level is None else jax.random.fold_in(key, level)


def next_mask(exp: Experiment, trained: PyTree, mask: PyTree, rounds: int) -> PyTree:
    """``mask`` pruned by ``rounds`` rounds at once by the magnitudes of ``trained``: 1 round from
    the previous level's ticket (iterative pruning), or L rounds from the dense mask (one-shot
    pruning to level L, the compound rate). Pure; vmap it over trials."""
    nm = config_lib.nm_pattern(exp.strategy)
    if nm is not None:  # every leaf with a rate > 0 goes to N:M, one weight per group per round
        return structured.nm_iterative(trained, mask, exp.rates, rounds, n=nm[0], m=nm[1],
                                       partial="pad")
    if exp.strategy in ("global", "global_neuron"):
        rate = pruning.compound_rate(exp.global_rate, rounds)
        if exp.strategy == "global_neuron":
            return structured.global_neuron_magnitude(trained, mask, rate, exp.rates)
        return pruning.global_magnitude(trained, mask, rate, exp.rates)
    rates = jax.tree.map(lambda r: pruning.compound_rate(r, rounds), exp.rates)
    if exp.strategy == "neuron":
        return structured.neuron_magnitude(trained, mask, rates)
    return pruning.layerwise_magnitude(trained, mask, rates)


class Pieces:
    """The steps of ``imp``, jitted over a leading trial axis (the level is a traced argument, so
    each compiles once): θ₀, the all-True mask, pruning, rewinding and the two controls. Pieces of
    experiments with equal ``programs_key`` and ``identity`` share their compiled programs."""

    def __init__(self, exp: Experiment, check: Callable[[], Any] = lambda: None):
        key = (exp.programs_key, exp.identity) if exp.programs_key else None
        jitted = _cached(("pieces", key), lambda: _jitted_pieces(exp)) if key else _jitted_pieces(exp)
        # ``check`` (the stop check) runs before each piece: the first call of each compiles
        # for seconds, and a stop asked for meanwhile need not wait for the next one too.
        for name, fn in jitted.items():
            setattr(self, name, _after(check, fn))


def _jitted_pieces(exp: Experiment) -> dict[str, Callable]:
    exp = dataclasses.replace(exp, data=None)  # what the cache keeps need not hold the data
    seed, trials = int(exp.config.seed), jnp.arange(int(exp.config.trials))
    keys = lambda purpose, level: jax.vmap(lambda t: trial_key(seed, t, purpose, level))(trials)
    init_params = lambda key: exp.init_variables(key)["params"]
    return {
        # () -> θ₀ {'params', 'batch_stats'} of every trial, from the key (trial, INIT).
        "theta0": jax.jit(lambda: jax.vmap(exp.init_variables)(
            jax.vmap(lambda t: trial_key(seed, t, INIT))(trials))),
        "all_true": jax.jit(jax.vmap(masks_lib.ones_like)),
        # (trained, mask, rounds) -> the next ticket mask (``next_mask``).
        "prune": jax.jit(jax.vmap(lambda p, m, rounds: next_mask(exp, p, m, rounds),
                                  in_axes=(0, 0, None)), static_argnums=2),
        "rewind": jax.jit(jax.vmap(tickets.rewind)),
        # (mask, level) -> (m ⊙ θ', batch stats of θ'), θ' drawn with the key (trial, REINIT, level).
        "reinit": jax.jit(lambda mask, level: (
            jax.vmap(lambda k, m: tickets.reinit(init_params, k, m))(keys(REINIT, level), mask),
            jax.vmap(exp.init_variables)(keys(REINIT, level))["batch_stats"])),
        # (mask, level) -> a random mask with each leaf's count of ``mask`` (key (trial,
        # RANDOM_MASK, level)).
        "random_mask": jax.jit(lambda mask, level: jax.vmap(pruning.random_like)(
            keys(RANDOM_MASK, level), mask)),
    }


_PROGRAMS: collections.OrderedDict = collections.OrderedDict()


def _cached(key: tuple, make: Callable[[], Any]) -> Any:
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
    """Forget every experiment's compiled programs kept by ``Runner`` and ``Pieces`` (e.g. after
    changing how ``jax.jit`` compiles)."""
    _PROGRAMS.clear()


def _after(check: Callable[[], Any], fn: Callable) -> Callable:
    def call(*args):
        check()
        return fn(*args)
    return call


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
            _cached(shared, lambda: ({}, {})) if exp.programs_key else ({}, {}))
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
            # loop over an axis GSPMD splits over the devices (Conv-2 on 2 CPU devices: 5.7
            # against 6.8 steps/s, BUILD_NOTES.md "The kernel gradient a few examples at a time").
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


# ----------------------------------------------------------------------------- records

def _finite_list(values) -> list:
    return [float(v) if np.isfinite(v) else None for v in np.asarray(values, np.float64)]


def _finite(value) -> float | None:
    return float(value) if np.isfinite(value) else None


def _density(mask: PyTree, prunable: PyTree) -> float:
    """``masks.density`` on the host (exact integer counts, no device round trip)."""
    pairs = [(np.asarray(m), s) for m, s in zip(jax.tree.leaves(mask), jax.tree.leaves(prunable))]
    total = sum(m.size for m, s in pairs if s)
    return sum(int(m.sum()) for m, s in pairs if s) / total if total else 1.0


_OUTCOME_FIELDS = ("early_stop_iteration", "val_loss_at_early_stop", "val_accuracy_at_early_stop",
                   "test_accuracy_at_early_stop", "final_test_accuracy")


def make_record(exp: Experiment, result: train_lib.RunResult, i: int, *, trial: int, level: int,
                variant: str, mask: PyTree, start: int, seconds: float, runs: int) -> dict:
    """The JSON record of run ``i`` of a batched result (fields as in DESIGN.md).

    ``status`` is "ok", or "diverged" with a ``failure`` message naming level, variant, trial and
    iteration, and null results, when (the divergence rule, ``train.diverged``): a training loss
    was non-finite, or a period's mean training loss exceeded ``train.DIVERGENCE_FACTOR`` times
    max(initial loss, ln classes), or no validation loss was finite.
    """
    iterations = train_lib.eval_iterations(exp.trainer, start)
    index = int(result.best_period[i])
    test_curve = np.asarray(result.test_accuracy[i])
    tested = train_lib.tested_evaluations(exp.trainer, start)
    record = {
        "trial": trial, "level": level, "variant": variant, "experiment": exp.identity,
        "density": _density(mask, exp.prunable),
        "layer_density": masks_lib.layer_density(mask, exp.prunable),
        "status": "ok",
        "early_stop_iteration": int(iterations[index]),
        "val_loss_at_early_stop": _finite(result.val_loss[i][index]),
        "val_accuracy_at_early_stop": _finite(result.val_accuracy[i][index]),
        "test_accuracy_at_early_stop": _finite(result.best_test_accuracy[i]),
        "final_test_accuracy": _finite(result.final_test_accuracy[i]),
        "train_seconds": seconds,
        "runs_in_program": runs,
        "initial_train_loss": _finite(result.initial_loss[i]),
        "eval_iterations": [int(x) for x in iterations],
        "train_loss": _finite_list(result.train_loss[i]),
        "val_loss": _finite_list(result.val_loss[i]),
        "val_accuracy": _finite_list(result.val_accuracy[i]),
        "test_iterations": [int(x) for x in iterations[tested]],
        "test_loss": _finite_list(np.asarray(result.test_loss[i])[tested]),
        "test_accuracy": _finite_list(test_curve[tested]),
    }
    where = f"(level {level}, variant {variant}, trial {trial})"
    bad = int(result.nonfinite_step[i])
    blowup = train_lib.diverged(result.train_loss[i], result.initial_loss[i],
                                exp.dataset_info.num_classes)
    failure = None
    if bad >= 0:
        failure = f"non-finite training loss at iteration {bad} {where}"
    elif blowup >= 0:
        first = int(iterations[blowup]) - exp.trainer.eval_every
        failure = (f"training loss {float(result.train_loss[i][blowup]):.3g} averaged over "
                   f"iterations {first}-{int(iterations[blowup])}, above "
                   f"{train_lib.DIVERGENCE_FACTOR:g} x max(initial loss, ln classes) {where}")
    elif index < 0:  # e.g. the last step of the only period blew up: no loss saw it
        failure = f"no finite validation loss up to iteration {int(iterations[-1])} {where}"
    if failure:
        record.update(status="diverged", failure=failure, **dict.fromkeys(_OUTCOME_FIELDS))
    return record


def skipped_record(exp: Experiment, *, trial: int, level: int, variant: str, mask: PyTree,
                   diverged_at: int) -> dict:
    """The record of a run that is not trained because its trial's ticket diverged earlier."""
    return {"trial": trial, "level": level, "variant": variant, "experiment": exp.identity,
            "density": _density(mask, exp.prunable),
            "layer_density": masks_lib.layer_density(mask, exp.prunable),
            "status": "skipped", "failure": f"not trained: the trial's ticket diverged at level "
                                            f"{diverged_at}",
            **dict.fromkeys(_OUTCOME_FIELDS), "train_seconds": 0.0, "runs_in_program": 0,
            "initial_train_loss": None, "eval_iterations": [], "train_loss": [], "val_loss": [],
            "val_accuracy": [], "test_iterations": [], "test_loss": [], "test_accuracy": []}


def level_records(exp: Experiment, level: int, runs: dict, trained: "Trained",
                  diverged: dict[int, int]) -> list[dict]:
    """The records of a level, in ``workdir.level_runs`` order: trained runs from their result,
    runs of trials whose ticket diverged at an earlier level as skipped."""
    out = []
    for variant, (_, _, mask) in runs.items():
        host_mask = _numpy(mask)  # (one copy, not an eager device op per leaf and trial)
        for t in range(int(exp.config.trials)):
            run_mask = jax.tree.map(lambda x: x[t], host_mask)
            if t in diverged:
                out.append(skipped_record(exp, trial=t, level=level, variant=variant,
                                          mask=run_mask, diverged_at=diverged[t]))
            else:
                i = trained.order.index((variant, t))
                out.append(make_record(exp, trained.result, i, trial=t, level=level,
                                       variant=variant, mask=run_mask, start=trained.start,
                                       seconds=trained.seconds, runs=len(trained.order)))
    return out


# ----------------------------------------------------------------------------- the store

class Trained(NamedTuple):
    """What training a level gave: the result of the runs in ``order`` ((variant, trial) pairs)."""
    result: train_lib.RunResult | None   # None when no run was trained (all trials skipped)
    order: list[tuple[str, int]]
    start: int
    seconds: float


def _numpy(tree: PyTree) -> PyTree:
    return jax.tree.map(np.asarray, tree)


class Store:
    """The experiment's state in its workdir, for the one process that holds the workdir's lock.

    * ``init``: θ₀ and θ_rewind (θ₀, or θ_k) of every trial;
    * a finished level: its checkpoint (the ticket masks and trained params of every trial, the
      masks and trained params of every run; its records and the experiment's identity in the
      checkpoint's meta), committed first, then its records in results.jsonl;
    * the level in training: its intra-level checkpoint (``LevelTrainer``).

    A level is finished when its checkpoint is committed and verifies against its digest; its
    records come from results.jsonl, or from the checkpoint when results.jsonl lost them. A
    damaged checkpoint is reported in one line and its level computed again. Every write is
    atomic; an OSError (disk full, read-only) becomes one ``ExperimentError`` line.
    """

    def __init__(self, exp: Experiment, workdir: str, log: Callable[[str], None]):
        self.exp, self.workdir, self.log = exp, workdir, log
        self.identity = exp.identity
        self.config = config_to_json(exp.config)
        self._lock = workdir_lib.Lock(workdir)
        self.primary = processes.is_primary()  # the one process that writes files here
        self._finished: dict[int, list[dict]] = {}   # level -> its records
        self._cached: dict[int, dict] = {}           # level -> checkpoint tree (level 0, the last)
        self._init_digest: str | None = None

    # -- opening

    def open(self) -> None:
        """Create or check the workdir, take its lock, and find the finished levels (verifying
        every level checkpoint). Raises ExperimentError when the workdir cannot be used.

        With several processes, process 0 takes the lock and writes; every process reads the
        same files in the same order (orbax's reads are collective)."""
        if self.primary:
            try:
                if os.path.exists(self.workdir) and not os.path.isdir(self.workdir):
                    raise ExperimentError(f"--workdir {self.workdir} is a file, not a directory")
                os.makedirs(self.workdir, exist_ok=True)
                self._lock.acquire()
            except OSError as e:
                raise ExperimentError(
                    f"cannot use --workdir {self.workdir}: {e.strerror or e}") from None
            previous = self._lock.previous
            if previous and previous.get("pid") != os.getpid():
                self.log(f"lth_jax: took over the lock of process {previous.get('pid')} on "
                         f"{previous.get('host')} (started {previous.get('started')}), which "
                         "has ended")
            self._write(lambda: workdir_lib.clean_checkpoints(self.workdir), "checkpoints/")
        processes.barrier("workdir opened")
        if not os.path.isdir(self.workdir):
            raise ExperimentError(f"--workdir {self.workdir} does not exist on process "
                                  f"{processes.index()}: with several processes it must be on a "
                                  "filesystem every host sees")
        records = workdir_lib.read_records(self.workdir, warn=lambda m: self.log(f"lth_jax: {m}"))
        self._check_experiment(records)
        self._find_finished(records)

    def close(self) -> None:
        self._lock.release()

    def _write(self, fn: Callable[[], Any], what: str, everyone: bool = False) -> Any:
        """``fn()`` (a write) in process 0 only, or in every process (``everyone``: checkpoints,
        whose orbax writes are collective); an OSError becomes one ExperimentError line."""
        if not (self.primary or everyone):
            return None
        try:
            return fn()
        except OSError as e:
            raise ExperimentError(f"cannot write {what} in {self.workdir}: {e.strerror or e}; "
                                  "nothing of it was kept") from None

    def _check_experiment(self, records: list[dict]) -> None:
        """Refuse a workdir of another experiment: config.json's fields, and the identity stored
        in every record and checkpoint (which also guards a workdir whose config.json is gone)."""
        path = os.path.join(self.workdir, CONFIG)
        try:
            saved, damaged = workdir_lib.read_config(self.workdir), None
        except workdir_lib.WorkdirError as e:
            saved, damaged = None, str(e)
        nothing_saved = not records and not workdir_lib.checkpoint_names(self.workdir)
        if saved is not None and nothing_saved:
            saved = None  # config.json of a run that saved nothing (e.g. refused): replaced
        if saved is not None:
            a, b = _flatten(saved), _flatten(self.config)
            diffs = [k for k in sorted(set(a) | set(b)) if not k.startswith("runtime.")
                     and a.get(k, "<missing>") != b.get(k, "<missing>")]
            if diffs:
                shown = "; ".join(f"{k}: workdir has {a.get(k, '<missing>')!r}, config has "
                                  f"{b.get(k, '<missing>')!r}" for k in diffs[:5])
                raise ExperimentError(f"{self.workdir} holds a different experiment ({shown}). Use "
                                      "another --workdir, or the same config to resume.")
        others = [f"results.jsonl (trial {r['trial']}, level {r['level']})" for r in records
                  if r.get("experiment", self.identity) != self.identity]
        for name in workdir_lib.checkpoint_names(self.workdir):
            meta = workdir_lib.checkpoint_meta(self.workdir, name)
            if meta and meta.get("experiment", self.identity) != self.identity:
                others.append(f"checkpoints/{name}")
        if others:
            why = (" and its config.json is missing" if saved is None and damaged is None else
                   f" and its config.json is unreadable" if damaged else "")
            raise ExperimentError(
                f"{self.workdir} holds results of another experiment ({others[0]} has another "
                f"experiment identity than this config's {self.identity}){why}. Use another "
                "--workdir, or the config those results were made with.")
        if saved is None:
            if damaged:
                self.log(f"lth_jax: {damaged}; rewritten from this config"
                         + ("" if nothing_saved else " (the saved results are of this experiment)"))
            self._write(lambda: workdir_lib.write_json_atomically(path, self.config), CONFIG)

    def _find_finished(self, records: list[dict]) -> None:
        by_run = {(r["level"], r["variant"], r["trial"]): r for r in records}
        last = None
        for level in range(int(self.exp.config.prune.levels) + 1):
            name = workdir_lib.level_checkpoint(level)
            if not os.path.exists(workdir_lib.checkpoint_path(self.workdir, name)):
                continue
            try:
                tree, meta = workdir_lib.read_checkpoint(self.workdir, name)
            except workdir_lib.CheckpointError as e:
                self.log(f"lth_jax: {e}; level {level} is computed again")
                self._write(lambda: workdir_lib.remove_checkpoint(self.workdir, name), name)
                continue
            expected = workdir_lib.level_runs(self.config, level)
            kept = [by_run.get((level, v, t)) for v, t in expected]
            if None in kept:
                kept = meta["records"]
                self.log(f"lth_jax: the records of level {level} are restored from its checkpoint")
            self._finished[level] = kept
            self._init_digest = meta.get("init_digest", self._init_digest)
            if level == 0:
                self._cached[0] = tree
            last = level
        if last:
            self._cached[last] = workdir_lib.read_checkpoint(
                self.workdir, workdir_lib.level_checkpoint(last))[0]
        for name in workdir_lib.checkpoint_names(self.workdir):  # progress of a finished level
            if name.startswith("progress_") and int(name[len("progress_"):]) in self._finished:
                self._write(lambda: workdir_lib.remove_checkpoint(self.workdir, name), name)
        self._write_records()

    def _write_records(self) -> None:
        records = self.records()
        text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in records)
        path = os.path.join(self.workdir, RESULTS)
        if os.path.exists(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                if f.read() == text:
                    return
        elif not records:
            return
        self._write(lambda: workdir_lib.write_records(self.workdir, records), RESULTS)

    def __enter__(self) -> "Store":
        try:
            self.open()
        except BaseException:
            self.close()  # (an open that fails after taking the lock gives it back)
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- reading

    def records(self) -> list[dict]:
        """The records of the finished levels, by level (each in ``workdir.level_runs`` order)."""
        return [r for level in sorted(self._finished) for r in self._finished[level]]

    def is_finished(self, level: int) -> bool:
        return level in self._finished

    def diverged_tickets(self, before: int) -> dict[int, int]:
        """trial -> the first level below ``before`` at which its ticket did not finish "ok"."""
        out: dict[int, int] = {}
        for r in self.records():
            if r["variant"] == "ticket" and r["status"] != "ok" and r["level"] < before:
                out[r["trial"]] = min(r["level"], out.get(r["trial"], r["level"]))
        return out

    def ticket(self, level: int) -> dict:
        """A finished level's ticket: ``{'mask', 'trained_params', 'trained_batch_stats'}``."""
        if level not in self._cached:
            self._cached[level] = workdir_lib.read_checkpoint(
                self.workdir, workdir_lib.level_checkpoint(level))[0]
        return self._cached[level]["ticket"]

    def theta0(self, build: Callable[[], PyTree]) -> dict:
        """θ₀ of every trial: from the init checkpoint, or ``build()`` (from the seed) when there
        is none yet or it was lost or damaged. A rebuilt θ₀ is checked against the digest the
        saved levels recorded, and the init checkpoint written again."""
        name = workdir_lib.INIT
        if os.path.exists(workdir_lib.checkpoint_path(self.workdir, name)):
            try:
                init, meta = workdir_lib.read_checkpoint(self.workdir, name)
                self._init_digest = meta["digest"]
                return init["theta0"]
            except workdir_lib.CheckpointError as e:
                self.log(f"lth_jax: {e}; θ₀ is rebuilt from the seed")
        theta0 = _numpy(build())
        if 0 in self._finished:  # θ_rewind: θ₀, or θ_k as level 0 captured it
            level0 = self._cached[0]
            init = {"theta0": theta0, "theta_rewind": level0.get("theta_rewind", theta0)}
            if self._init_digest and workdir_lib.digest(init) != self._init_digest:
                raise ExperimentError(
                    f"checkpoints/{name} is lost or damaged, and θ₀ rebuilt from the seed differs "
                    "from the one the saved levels were trained from (e.g. another JAX version): "
                    f"restore checkpoints/{name} from a backup, or start over in a new --workdir")
            self._save_init(init)
        return theta0

    def theta_rewind(self) -> dict:
        """θ_rewind (θ₀, or θ_k) of every trial; exists once level 0 is finished."""
        return workdir_lib.read_checkpoint(self.workdir, workdir_lib.INIT)[0]["theta_rewind"]

    def progress(self, level: int, inputs: str) -> tuple[dict, dict] | None:
        """The intra-level checkpoint of ``level`` — (snapshot, meta) — if there is one that
        verifies and was made from the same inputs (masks, keys); else None."""
        name = workdir_lib.progress_checkpoint(level)
        if not os.path.exists(workdir_lib.checkpoint_path(self.workdir, name)):
            return None
        try:
            tree, meta = workdir_lib.read_checkpoint(self.workdir, name)
        except workdir_lib.CheckpointError as e:
            self.log(f"lth_jax: {e}; level {level} starts again from its beginning")
            return None
        if meta.get("inputs") != inputs:
            self.log(f"lth_jax: checkpoint {name} was made from other inputs; level {level} "
                     "starts again from its beginning")
            return None
        return tree, meta

    # -- writing

    def save_progress(self, level: int, snapshot: dict, meta: dict) -> None:
        name = workdir_lib.progress_checkpoint(level)
        self._write(lambda: workdir_lib.write_checkpoint(
            self.workdir, name, snapshot, {"experiment": self.identity, "level": level, **meta},
            **self._collective), f"checkpoints/{name}", everyone=True)

    def _save_init(self, init: dict) -> None:
        self._write(lambda: workdir_lib.write_checkpoint(
            self.workdir, workdir_lib.INIT, init, {"experiment": self.identity},
            **self._collective), "checkpoints/init", everyone=True)
        self._init_digest = workdir_lib.digest(init)

    def save_level(self, level: int, tree: dict, records: list[dict], theta0: dict) -> None:
        """Commit a finished level: (at level 0: θ₀ and θ_rewind, which is θ₀ or the tree's
        ``theta_rewind``), its checkpoint, then its records; its intra-level checkpoint goes."""
        tree = _numpy(tree)
        if level == 0:
            theta0 = _numpy(theta0)
            self._save_init({"theta0": theta0, "theta_rewind": tree.get("theta_rewind", theta0)})
        name = workdir_lib.level_checkpoint(level)
        self._write(lambda: workdir_lib.write_checkpoint(
            self.workdir, name, tree, {"experiment": self.identity, "level": level,
                                       "init_digest": self._init_digest, "records": records},
            **self._collective), f"checkpoints/{name}", everyone=True)
        self._finished[level] = records
        self._cached = {k: v for k, v in self._cached.items() if k == 0}
        self._cached[level] = tree
        self._write_records()
        progress = workdir_lib.progress_checkpoint(level)
        self._write(lambda: workdir_lib.remove_checkpoint(self.workdir, progress), progress)

    @property
    def _collective(self) -> dict:
        """How ``workdir.write_checkpoint`` runs in this process (see ``processes``)."""
        return {"primary": self.primary, "sync": processes.barrier}

    def check_disk(self, level: int, need: int) -> None:
        """Refuse to start a level whose checkpoints would not fit on the workdir's disk."""
        free = shutil.disk_usage(self.workdir).free
        if need > free:
            raise ExperimentError(
                f"not enough disk space for level {level} in {self.workdir}: its checkpoints need "
                f"~{need / 2**20:,.0f} MiB, {free / 2**20:,.0f} MiB are free")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ----------------------------------------------------------------------------- the algorithm

def imp(exp: Experiment, pieces: Pieces, store: Store, train: "LevelTrainer") -> None:
    """Iterative magnitude pruning with its controls, for every trial at once.

    Per level: the ticket's mask (dense at level 0), the runs (the ticket and each control),
    training (all runs together), the records. A finished level is never computed again, and the
    runs of a trial whose ticket diverged at an earlier level are recorded as skipped, untrained.
    """
    k, one_shot = int(exp.config.prune.rewind_iteration), bool(exp.config.prune.one_shot)
    theta0 = store.theta0(build=pieces.theta0)
    for level in range(int(exp.config.prune.levels) + 1):
        if store.is_finished(level):
            continue
        if level == 0:  # the dense network from θ₀; with rewinding, θ_k is captured on the way
            mask, theta, start, capture = pieces.all_true(theta0["params"]), theta0, 0, k or -1
        else:  # prune the last trained ticket (one-shot: the dense one), rewind to θ₀ or θ_k
            source = store.ticket(0 if one_shot else level - 1)
            mask = pieces.prune(source["trained_params"], source["mask"], level if one_shot else 1)
            theta, start, capture = store.theta_rewind(), k, -1
        runs = {"ticket": (pieces.rewind(theta["params"], mask), theta["batch_stats"], mask)}
        if level and "reinit" in exp.variants:  # the ticket's mask on a fresh draw from D_θ
            runs["reinit"] = (*pieces.reinit(mask, level), mask)
        if level and "random_prune" in exp.variants:  # a random mask of the ticket's layer sizes
            random_mask = pieces.random_mask(mask, level)
            runs["random_prune"] = (pieces.rewind(theta["params"], random_mask),
                                    theta["batch_stats"], random_mask)
        diverged = store.diverged_tickets(before=level)
        trained = train(level, runs, [t for t in range(int(exp.config.trials)) if t not in diverged],
                        start=start, capture=capture)
        records = level_records(exp, level, runs, trained, diverged)
        store.save_level(level, level_checkpoint(exp, runs, trained, k), records, theta0=theta0)
        train.log_level(level, records, trained)


def level_checkpoint(exp: Experiment, runs: dict, trained: Trained, k: int) -> dict:
    """A level's checkpoint: ``ticket`` (mask, trained params and batch stats of every trial; NaN
    params for a trial not trained), ``runs`` (mask and trained params of every trained run, in
    ``trained.order``) and, at level 0 with rewinding, ``theta_rewind`` (θ_k of every trial)."""
    mask = runs["ticket"][2]
    trials = int(exp.config.trials)
    index = {t: i for i, (v, t) in enumerate(trained.order) if v == "ticket"}

    def per_trial(field, like):
        def leaf(x, y):
            rows = [np.asarray(x[index[t]]) if t in index else np.full(y.shape[1:], np.nan, y.dtype)
                    for t in range(trials)]
            return np.stack(rows)
        if trained.result is None:
            return jax.tree.map(lambda y: np.full(y.shape, np.nan, y.dtype), like)
        return jax.tree.map(leaf, getattr(trained.result, field), like)

    params, stats = runs["ticket"][0], runs["ticket"][1]
    tree = {"ticket": {"mask": mask, "trained_params": per_trial("params", params),
                       "trained_batch_stats": per_trial("batch_stats", stats)}}
    if trained.order:
        host = {v: _numpy(runs[v][2]) for v in runs}  # (indexed on the host: no device op a leaf)
        masks = [jax.tree.map(lambda x: x[t], host[v]) for v, t in trained.order]
        tree["runs"] = {"mask": jax.tree.map(lambda *xs: np.stack(xs), *masks),
                        "trained_params": trained.result.params}
    if k and trained.start == 0 and trained.result is not None:
        tree["theta_rewind"] = {"params": per_trial("captured_params", params),
                                "batch_stats": per_trial("captured_batch_stats", stats)}
    return tree


# ----------------------------------------------------------------------------- training a level

@jax.jit
def _gather_runs(runs: tuple, pick: jax.Array, keys: tuple, which: jax.Array) -> tuple:
    """The (params, batch_stats, mask) of the trials ``pick`` of every variant in ``runs`` (a
    tuple of such triples, leading trial axis), variant after variant, and the rows ``which`` of
    each of ``keys``. One program: eagerly, each leaf's gather and concatenation is a program of
    its own, each traced and lowered on its own (46 of the 118 a tiny LeNet CLI run lowered)."""
    stacked = tuple(jax.tree.map(lambda *xs: jnp.concatenate([x[pick] for x in xs]),
                                 *[r[i] for r in runs]) for i in range(3))
    return stacked, tuple(k[which] for k in keys)


class LevelTrainer:
    """Trains the runs of a level as chunks of one compiled program (``Runner.begin``).

    The chunk length follows the clock: each chunk aims at ``runtime.chunk_seconds`` of training
    (whole slices of ``runtime.slice_iterations`` steps, at least one), measured on the previous
    chunk, so that a stop asked for by ``stop`` is honoured within about that time on any device
    (plus an evaluation, when the chunk ends a period; a chunk still running
    ``runtime.stop_wait_seconds`` after the stop is given up, with one process). Between chunks: a
    progress line (at most one per ``runtime.progress_seconds``), the stop check, and every
    ``runtime.checkpoint_minutes`` (0: never) an intra-level checkpoint, also written when a stop
    ends the level early. A level with an intra-level checkpoint made from the same inputs
    continues from it.
    """

    def __init__(self, exp: Experiment, store: Store, runner: Runner, log: Callable[[str], None],
                 check_stop: Callable[[str], None], stop: Callable[[], int] | None = None):
        self.exp, self.store, self.runner, self.log, self.check_stop = exp, store, runner, log, check_stop
        #: With one process, a stop noted (``stop()``) while a chunk runs waits stop_wait_seconds
        #: for it, then gives it up (a long chunk: an evaluation of a big net, or a slow device).
        #: Several processes agree on stops between chunks only, so they always wait.
        self.stop = stop if processes.count() == 1 else None
        cfg = exp.config
        seed, trials = int(cfg.seed), int(cfg.trials)
        self.data_keys = jnp.stack([trial_key(seed, t, DATA) for t in range(trials)])
        self.noise_keys = jnp.stack([trial_key(seed, t, NOISE) for t in range(trials)])
        self.chunk_seconds = float(cfg.runtime.chunk_seconds)
        # Its default is twice chunk_seconds', so that an ordinary chunk finishes and is saved; a
        # separate number, not a multiple of chunk_seconds, so that a stop is bounded by itself.
        self.stop_wait_seconds = float(cfg.runtime.stop_wait_seconds)
        self.progress_seconds = float(cfg.runtime.progress_seconds)
        self.checkpoint_seconds = 60.0 * float(cfg.runtime.checkpoint_minutes)
        self.rate = None  # model-steps/s measured so far (for the ETAs)

    def __call__(self, level: int, runs: dict, trials: list[int], *, start: int,
                 capture: int) -> Trained:
        """Train the runs of ``trials`` of every variant in ``runs`` ({variant: (params,
        batch_stats, mask)}, leading trial axis) from iteration ``start``."""
        order = [(v, t) for v in runs for t in trials]
        if not order:
            return Trained(None, [], start, 0.0)
        (params, stats, masks), (data_keys, noise_keys) = _gather_runs(
            tuple(runs.values()), np.array(trials), (self.data_keys, self.noise_keys),
            np.array([t for _, t in order]))
        # What fixes the runs besides their state: masks, data order, noise, start, capture (and
        # the RunState's layout, which changed when slices came in).
        inputs = workdir_lib.digest({"mask": _numpy(masks), "data": np.asarray(jax.random.key_data(
            data_keys)), "noise": np.asarray(jax.random.key_data(noise_keys)),
            "start": np.int64(start), "capture": np.int64(capture),
            "layout": np.int64(PROGRESS_LAYOUT)})
        saved = self.store.progress(level, inputs)
        if saved and int(saved[0]["iterations"]) % self.runner.slice_iterations:
            self.log(f"lth_jax: the intra-level checkpoint of level {level} is at iteration "
                     f"{start + int(saved[0]['iterations']):,}, not a multiple of "
                     f"runtime.slice_iterations={self.runner.slice_iterations}; level {level} "
                     "starts again from its beginning")
            saved = None
        state_bytes = 6 * workdir_lib.tree_bytes(_numpy(params)) + workdir_lib.tree_bytes(_numpy(masks))
        self.store.check_disk(level, 3 * state_bytes)  # progress (old + new) and the level's
        self.check_stop(f"before level {level}")
        training = self.runner.begin(params, stats, masks, data_keys, noise_keys, start=start,
                                     capture=capture, saved=saved[0] if saved else None)
        seconds = float(saved[1]["seconds"]) if saved else 0.0
        if saved:
            self.log(f"level {level}: resuming at iteration {start + training.iterations:,} "
                     "from its intra-level checkpoint")
        count, saved_at, said_at = 1, time.monotonic(), -math.inf
        saved_iterations = training.iterations if saved else None
        steps, clock = 0, 0.0  # model-steps trained and seconds taken by this process, this level
        while not training.done:
            t0 = time.monotonic()
            count = training.advance(count, self._poll(level, start, training, saved_iterations))
            elapsed = time.monotonic() - t0
            seconds += elapsed
            steps, clock = steps + len(order) * training.slice_iterations * count, clock + elapsed
            # The level's rate so far, not the last chunk's: a short last chunk (the level's
            # remainder and its final evaluation) made the ETA of the levels after it jump (a
            # Conv-2 level ended with "~15.8 h left" for 33 min of work).
            self.rate = steps / max(clock, 1e-9)
            count = max(1, int(self.chunk_seconds / max(elapsed / count, 1e-9)))
            now = time.monotonic()
            # Every process must train and checkpoint alike: the clock-driven choices are agreed
            # (the shortest next chunk; report, save or stop if any process would).
            neg_count, say = processes.agree_max(
                [-count, now - said_at >= self.progress_seconds or training.done])
            count = -neg_count
            if say:
                self._progress(level, training, start, len(order))
                said_at = now
            if training.done:
                break
            stopping = self.check_stop(None, raise_=False)  # (after the progress line it follows)
            save = processes.agree_max([bool(self.checkpoint_seconds) and (
                bool(stopping) or now - saved_at >= self.checkpoint_seconds)])[0]
            if save:
                self.store.save_progress(level, training.snapshot(),
                                         {"inputs": inputs, "seconds": seconds,
                                          "runs": [list(r) for r in order]})
                saved_at, saved_iterations = now, training.iterations
            if stopping:
                done = start + training.iterations
                kept = ("saved at iteration {:,}".format(done) if self.checkpoint_seconds else
                        "not saved (runtime.checkpoint_minutes=0)")
                self.check_stop(f"in level {level} at iteration {done:,} (progress {kept})")
        return Trained(training.result(), order, start, seconds)

    def _poll(self, level: int, start: int, training: Training,
              saved_iterations: int | None) -> Callable[[], None] | None:
        """What ``Training.advance`` polls: gives the chunk up (``Stopped``, abandoned) once a
        stop has waited ``runtime.stop_wait_seconds`` for it."""
        if self.stop is None:
            return None
        noted: list[float] = []

        def poll() -> None:
            signum = self.stop()
            if not signum:
                return
            if not noted:
                noted.append(time.monotonic())
            elif time.monotonic() - noted[0] >= self.stop_wait_seconds:
                kept = ("no progress saved" if saved_iterations is None else
                        f"progress saved at iteration {start + saved_iterations:,}")
                raise Stopped(signum, f"stopped in level {level} at iteration "
                              f"{start + training.iterations:,} without waiting for the chunk "
                              f"in flight ({kept})", abandoned=True)
        return poll

    def _progress(self, level: int, training: Training, start: int, runs: int) -> None:
        cfg = self.exp.config
        loss, accuracy = training.best_so_far()
        remaining = (training.slices - training.slice) * training.slice_iterations * runs
        later = (int(cfg.prune.levels) - level) * len(self.exp.variants) * int(cfg.trials) * (
            int(cfg.train.iterations) - int(cfg.prune.rewind_iteration))
        rate = self.rate or float("nan")
        best = (f"best val loss {np.nanmean(loss):.4f} acc {100 * np.nanmean(accuracy):.2f}%"
                if np.isfinite(loss).any() else "no finite val loss yet")
        self.log(f"level {level:2d}  iteration {start + training.iterations:,}/"
                 f"{int(cfg.train.iterations):,}  {best} (mean of {runs} runs)  "
                 f"{rate:,.0f} model-steps/s  ETA level {_duration(remaining / rate)}, "
                 f"experiment {_duration((remaining + later) / rate)}")

    def log_level(self, level: int, new: list[dict], trained: Trained) -> None:
        """The line that ends a level: density, ticket and control accuracies, time."""
        cfg = self.exp.config
        tickets_ok = [r for r in new if r["variant"] == "ticket" and r["status"] == "ok"]
        if tickets_ok:
            acc = np.mean([r["test_accuracy_at_early_stop"] for r in tickets_ok])
            es = np.mean([r["early_stop_iteration"] for r in tickets_ok])
            summary = f"ticket test acc {100 * acc:.2f}% at early stop (iteration {es:.0f})"
        else:
            summary = "no ticket finished (diverged or skipped)"
        controls = []
        for variant in self.exp.variants[1:]:
            ok = [r["test_accuracy_at_early_stop"] for r in new
                  if r["variant"] == variant and r["status"] == "ok"]
            if ok:
                controls.append(f"{variant} {100 * np.mean(ok):.2f}%")
        for r in new:
            if r["status"] == "diverged":
                later = "; later levels of its trial are skipped" if r["variant"] == "ticket" else ""
                self.log(f"WARNING: {r['failure']}{later}")
        later = (int(cfg.prune.levels) - level) * len(self.exp.variants) * int(cfg.trials) * (
            int(cfg.train.iterations) - int(cfg.prune.rewind_iteration))
        eta = f", ~{_duration(later / self.rate)} left" if self.rate else ""
        self.log(f"level {level:2d}/{int(cfg.prune.levels)}  density {100 * new[0]['density']:6.2f}%"
                 f"  {summary}" + (f"; {', '.join(controls)}" if controls else "")
                 + f"  [{trained.seconds:.1f}s{eta}]")


def _duration(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


# ----------------------------------------------------------------------------- the experiment

def run(config: ml_collections.ConfigDict, workdir: str, log: Callable[[str], None] = print,
        exp: Experiment | None = None, stop: Callable[[], int] | None = None) -> list[dict]:
    """Run (or resume) the whole experiment in ``workdir``; returns all records.

    Finished levels in ``workdir`` are kept; the first unfinished level continues from its
    intra-level checkpoint (or starts again), so the final records equal an uninterrupted run's
    (timing fields aside). The workdir is locked while this runs.

    ``stop`` is polled at safe points (between startup steps, chunks and levels); when it returns
    a signal number, the level's progress is saved (see ``LevelTrainer``) and ``Stopped`` raised.
    """
    def check_stop(where: str | None, raise_: bool = True) -> int:
        # With several processes a stop asked for in any of them stops them all, at one point.
        signum = processes.agree_max([stop() if stop else 0])[0]
        if signum and raise_:
            raise Stopped(signum, f"stopped {where or 'before training'}")
        return signum

    # Refused at once if another process is writing there (before loading data for minutes);
    # the lock itself is taken by the Store, once the config and data are known to be good.
    if processes.is_primary():
        workdir_lib.Lock(workdir).refuse_if_held()
    else:  # process 0 prints the progress; the others only their errors
        log = lambda line: None  # noqa: E731
    exp = exp or setup(config)
    check_stop("after loading the data")
    with Store(exp, workdir, log) as store:
        check_stop("after opening the workdir")
        cfg = exp.config
        runner = Runner(exp, int(cfg.runtime.devices), data_parallel=bool(cfg.runtime.data_parallel),
                        matmul_precision=str(cfg.runtime.matmul_precision),
                        slice_iterations=int(cfg.runtime.slice_iterations))
        log(f"lth_jax: {cfg.model.name} on {exp.dataset_info.name} ({exp.dataset_info.source}), "
            f"{cfg.trials} trial(s), levels 0..{cfg.prune.levels}, {cfg.train.iterations} iterations, "
            f"variants {', '.join(exp.variants)}; {len(runner.devices)} "
            f"{runner.devices[0].platform} device(s), runs batched by {runner.batching}"
            f"{', each batch split over the devices' if runner.data_parallel else ''}"
            f"{f' in {processes.count()} processes' if processes.count() > 1 else ''}; "
            f"workdir {workdir}")
        done = [level for level in range(int(cfg.prune.levels) + 1) if store.is_finished(level)]
        if done:
            log(f"resuming: levels {_ranges(done)} already finished "
                f"({len(store.records())} records kept)")
        imp(exp, Pieces(exp, lambda: check_stop("before the next level's training")), store,
            LevelTrainer(exp, store, runner, log, check_stop, stop))
        check_stop("at the end")
        return store.records()


def _ranges(levels: list[int]) -> str:
    """[0, 1, 2, 5] -> '0..2, 5'."""
    parts, first = [], levels[0]
    for a, b in zip(levels, levels[1:] + [None]):
        if b != a + 1:
            parts.append(f"{first}..{a}" if a > first else f"{a}")
            first = b
    return ", ".join(parts)


def load_checkpoint(workdir: str, name: str) -> PyTree:
    """The arrays of ``checkpoints/name``, verified (``workdir.read_checkpoint``)."""
    return workdir_lib.read_checkpoint(workdir, name)[0]


def read_records(workdir: str) -> list[dict]:
    """The records of ``results.jsonl`` (``workdir.read_records``: one reading rule everywhere)."""
    return workdir_lib.read_records(workdir)
