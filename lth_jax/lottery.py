"""The lottery-ticket experiment: levels × variants × trials, with checkpoints and resume.

Iterative magnitude pruning, as in Frankle & Carbin (2019), for every trial at once::

    θ₀ ← init(key)                                       # kept, never mutated
    level 0:  train the dense net m₀ = 1 from θ₀           (capture θ_k if rewinding to k > 0)
    level L:  m_L ← prune(θ_{L-1} trained, m_{L-1})        (one-shot: prune the dense run to level L)
              ticket        m_L ⊙ θ₀ (or θ_k)            trained from iteration k
              reinit        m_L ⊙ θ'  (fresh init)       control
              random_prune  m'_L ⊙ θ₀ (random mask, same per-layer counts as m_L)   control

All (variant, trial) runs of a level train together in one vmapped program (``train.make_run_fn``)
spread over the devices. After each level its checkpoint is written, then its records are appended
to ``results.jsonl``; a level counts as finished only when both exist, and a rerun of the same
command continues at the first unfinished level.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lth_jax import config as config_lib
from lth_jax import data as data_lib
from lth_jax import masks as masks_lib
from lth_jax import models
from lth_jax import pruning
from lth_jax import tickets
from lth_jax import train as train_lib

PyTree = Any
VARIANTS = ("ticket", "reinit", "random_prune")
# Key purposes: every random draw of an experiment is fold_in(fold_in(root, trial), purpose) [, level].
INIT, DATA, NOISE, REINIT, RANDOM_MASK = range(5)
RESULTS = "results.jsonl"
CONFIG = "config.json"
# Fields of a record that measure the machine rather than the experiment (differ between reruns).
TIMING_FIELDS = ("train_seconds",)


class ExperimentError(RuntimeError):
    """The workdir or a checkpoint cannot be used for this experiment."""


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
    strategy: str             # "layerwise" | "global"
    global_rate: float
    variants: tuple[str, ...]

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
    if strategy == "global" and not global_rate:
        if len(positive) > 1:
            raise config_lib.ConfigError(
                f"config.prune.global_rate: the rules give several rates {positive}; set one rate "
                "for global pruning")
        global_rate = positive[0] if positive else 0.0

    augment = {"on": True, "off": False, "auto": data_lib.needs_augmentation(info)}[
        config.dataset.augment]
    variants = ("ticket",) + tuple(v for v in VARIANTS[1:] if config.controls[v])
    if config.runtime.data_parallel:
        devices = int(config.runtime.devices) or jax.device_count()
        if config.train.batch_size % devices:
            raise config_lib.ConfigError(
                f"config.train.batch_size: {config.train.batch_size} does not split evenly over "
                f"{devices} devices (runtime.data_parallel)")
    return Experiment(config=config, model=model, dataset_info=info,
                      data=train_lib.device_data(dataset, int(config.train.eval_batch_size)),
                      trainer=train_lib.make_trainer(model, config.train, augment),
                      input_shape=input_shape, prunable=pruning.prunable(params_shape),
                      rates=rates, strategy=strategy, global_rate=global_rate, variants=variants)


def _dataset_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict(config.dataset.to_dict())
    d.path = d.path or None
    d.data_dir = d.data_dir or None
    return d


# ----------------------------------------------------------------------------- pure pieces

def trial_key(seed: int, trial: int, purpose: int, level: int | None = None) -> jax.Array:
    """The key for one purpose of one trial (and level): same seed, same draws, on any machine."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), trial), purpose)
    return key if level is None else jax.random.fold_in(key, level)


def next_mask(exp: Experiment, trained: PyTree, mask: PyTree, level: int, one_shot: bool) -> PyTree:
    """The ticket mask of ``level`` from the previous level's trained params and mask (iterative),
    or from the dense run's trained params and the all-True mask (one-shot: ``level`` rounds at
    once). Pure; vmap it over trials."""
    rounds = level if one_shot else 1
    if exp.strategy == "global":
        return pruning.global_magnitude(trained, mask, pruning.compound_rate(exp.global_rate, rounds),
                                        exp.rates)
    rates = jax.tree.map(lambda r: pruning.compound_rate(r, rounds), exp.rates)
    return pruning.layerwise_magnitude(trained, mask, rates)


def level_inputs(exp: Experiment, theta: dict, ticket_mask: PyTree, level: jax.Array
                 ) -> tuple[PyTree, PyTree, PyTree]:
    """Params, batch stats and masks of every run of a pruning level, stacked in the order of
    ``expected_runs`` (variant-major: all trials of the ticket, then of each control).

    * ticket: ``m ⊙ θ_rewind`` (θ₀ or θ_k);
    * reinit: ``m ⊙ θ'`` with θ' drawn fresh with the key (trial, REINIT, level);
    * random_prune: a random mask with the ticket's per-layer counts (key (trial, RANDOM_MASK,
      level)) applied to θ_rewind.

    Args have a leading trial axis; ``level`` may be traced (one compilation serves all levels).
    Pure.
    """
    seed, trials = int(exp.config.seed), int(exp.config.trials)
    keys = lambda purpose: jax.vmap(lambda t: trial_key(seed, t, purpose, level))(jnp.arange(trials))
    rewind = jax.vmap(tickets.rewind)
    parts = []
    for variant in exp.variants:
        if variant == "ticket":
            parts.append((rewind(theta["params"], ticket_mask), theta["batch_stats"], ticket_mask))
        elif variant == "reinit":
            fresh = jax.vmap(exp.init_variables)(keys(REINIT))
            parts.append((rewind(fresh["params"], ticket_mask), fresh["batch_stats"], ticket_mask))
        elif variant == "random_prune":
            random_mask = jax.vmap(pruning.random_like)(keys(RANDOM_MASK), ticket_mask)
            parts.append((rewind(theta["params"], random_mask), theta["batch_stats"], random_mask))
    return tuple(jax.tree.map(lambda *xs: jnp.concatenate(xs), *[p[i] for p in parts])
                 for i in range(3))


# ----------------------------------------------------------------------------- devices

class Runner:
    """Runs the batched training program of a level, spreading its runs over the devices.

    A level with R runs uses ``d = min(R, devices)`` devices; the run axis is padded (repeating the
    last run) to a multiple of d and the padding is dropped from the result. Each device trains its
    slice of the runs (``batching``: ``"vmap"`` in lockstep, ``"map"`` one after another; ``"auto"``
    = map on CPUs, vmap on accelerators). Compiled programs are cached per (start, capture, R).
    """

    def __init__(self, exp: Experiment, num_devices: int = 0, batching: str = "auto",
                 data_parallel: bool = False):
        devices = jax.devices()
        self.devices = devices[:num_devices] if num_devices else devices
        self.exp = exp
        if batching == "auto":
            batching = "map" if self.devices[0].platform == "cpu" else "vmap"
        self.batching = batching
        self.data_parallel = data_parallel
        self._fns: dict[tuple, tuple] = {}
        self._data: dict[int, train_lib.DeviceData] = {}

    def _program(self, start: int, capture: int, runs: int):
        key = (start, capture, runs)
        if key in self._fns:
            return self._fns[key]
        if self.data_parallel:
            # Every run uses all devices: each training batch is split over them (GSPMD inserts
            # the gradient all-reduce); params, masks and data are replicated.
            mesh = Mesh(np.array(self.devices), ("data",))
            trainer = dataclasses.replace(
                self.exp.trainer, batch_sharding=NamedSharding(mesh, PartitionSpec("data")))
            fn = jax.jit(train_lib.make_run_fn(trainer, start=start, capture_iteration=capture,
                                               batching=self.batching),
                         out_shardings=NamedSharding(mesh, PartitionSpec()))
            run_spec = PartitionSpec()
        else:
            mesh = Mesh(np.array(self.devices[:min(runs, len(self.devices))]), ("runs",))
            fn = train_lib.make_run_fn(self.exp.trainer, start=start, capture_iteration=capture,
                                       batching=self.batching, mesh=mesh)
            run_spec = PartitionSpec("runs")
        d = (mesh.devices.size, self.data_parallel)
        if d not in self._data:
            self._data[d] = jax.device_put(self.exp.data, NamedSharding(mesh, PartitionSpec()))
        self._fns[key] = (fn, mesh, run_spec, self._data[d])
        return self._fns[key]

    def __call__(self, params, batch_stats, mask, data_key, noise_key, *, start: int,
                 capture: int) -> train_lib.RunResult:
        """Train the R runs given with a leading axis R; returns the RunResult as numpy arrays."""
        runs = jax.tree.leaves(mask)[0].shape[0]
        fn, mesh, run_spec, data = self._program(start, capture, runs)
        per = 1 if self.data_parallel else mesh.devices.size
        padded = -(-runs // per) * per
        args = (params, batch_stats, mask, data_key, noise_key)
        if padded != runs:
            args = jax.tree.map(
                lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], padded - runs, axis=0)]), args)
        args = jax.device_put(args, NamedSharding(mesh, run_spec))
        result = fn(data, *args)
        return jax.tree.map(lambda x: np.asarray(x)[:runs], result)


# ----------------------------------------------------------------------------- records

def _finite_list(values) -> list:
    return [float(v) if np.isfinite(v) else None for v in np.asarray(values, np.float64)]


def _density(mask: PyTree, prunable: PyTree) -> float:
    """``masks.density`` on the host (exact integer counts, no device round trip)."""
    pairs = [(np.asarray(m), s) for m, s in zip(jax.tree.leaves(mask), jax.tree.leaves(prunable))]
    total = sum(m.size for m, s in pairs if s)
    return sum(int(m.sum()) for m, s in pairs if s) / total if total else 1.0


def make_record(exp: Experiment, result: train_lib.RunResult, i: int, *, trial: int, level: int,
                variant: str, mask: PyTree, start: int, seconds: float, runs: int,
                skipped_because: str | None = None) -> dict:
    """The JSON record of run ``i`` of a batched result (fields as in DESIGN.md)."""
    iterations = train_lib.eval_iterations(exp.trainer, start)
    index = int(result.best_period[i])
    test_curve = np.asarray(result.test_accuracy[i])
    tested = train_lib.tested_evaluations(exp.trainer, start)
    bad = int(result.nonfinite_step[i])
    record = {
        "trial": trial, "level": level, "variant": variant,
        "density": _density(mask, exp.prunable),
        "layer_density": masks_lib.layer_density(mask, exp.prunable),
        "status": "ok",
        "early_stop_iteration": int(iterations[index]),
        "val_loss_at_early_stop": float(result.val_loss[i][index]),
        "val_accuracy_at_early_stop": float(result.val_accuracy[i][index]),
        "test_accuracy_at_early_stop": float(result.best_test_accuracy[i]),
        "final_test_accuracy": float(result.final_test_accuracy[i]),
        "train_seconds": seconds,
        "runs_in_program": runs,
        "eval_iterations": [int(x) for x in iterations],
        "train_loss": _finite_list(result.train_loss[i]),
        "val_loss": _finite_list(result.val_loss[i]),
        "val_accuracy": _finite_list(result.val_accuracy[i]),
        "test_iterations": [int(x) for x in iterations[tested]],
        "test_loss": _finite_list(np.asarray(result.test_loss[i])[tested]),
        "test_accuracy": _finite_list(test_curve[tested]),
    }
    failure = None
    if skipped_because:  # before divergence: a run of a diverged trial diverges again, typically
        failure = skipped_because
        record["status"] = "skipped"
    elif bad >= 0:
        failure = (f"non-finite training loss at iteration {bad} "
                   f"(level {level}, variant {variant}, trial {trial})")
        record["status"] = "diverged"
    elif index < 0:  # e.g. the last step of the only period blew up: no loss saw it
        failure = (f"no finite validation loss up to iteration {int(iterations[-1])} "
                   f"(level {level}, variant {variant}, trial {trial})")
        record["status"] = "diverged"
    if failure:
        record["failure"] = failure
        for field in ("early_stop_iteration", "val_loss_at_early_stop", "val_accuracy_at_early_stop",
                      "test_accuracy_at_early_stop", "final_test_accuracy"):
            record[field] = None
    return record


def read_records(workdir: str) -> list[dict]:
    """The complete records of ``results.jsonl`` (a half-written last line is ignored)."""
    path = os.path.join(workdir, RESULTS)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        text = f.read()
    records = []
    lines = text.split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines):  # the last line, without its newline: killed mid-write
                break
            raise ExperimentError(f"{path}:{n} is not valid JSON") from None
    return records


def _write_records(workdir: str, records: list[dict]) -> None:
    """Atomically replace results.jsonl with ``records``."""
    path = os.path.join(workdir, RESULTS)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _append_records(workdir: str, records: list[dict]) -> None:
    # One write of whole lines: a kill leaves at most one partial last line, which is dropped.
    with open(os.path.join(workdir, RESULTS), "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


# ----------------------------------------------------------------------------- checkpoints

def _checkpointer():
    import orbax.checkpoint as ocp  # imported lazily: it is slow to import and only needed here
    return ocp.PyTreeCheckpointer()


def _ckpt_path(workdir: str, name: str) -> str:
    return os.path.abspath(os.path.join(workdir, "checkpoints", name))


@contextlib.contextmanager
def _signals_deferred():
    """Hold SIGINT/SIGTERM inside the block and deliver them right after it.

    An exception raised by a signal handler in the middle of orbax's save (its event loop, its
    threads) leaves them half torn down and may be swallowed by an ``except Exception`` there.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = {sig: signal.signal(sig, lambda signum, _: received.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        for sig in dict.fromkeys(received):
            signal.raise_signal(sig)


class _NotedSignals:
    """While entered, SIGINT/SIGTERM still go to the Python handlers in place (which raise:
    KeyboardInterrupt, main's Stop) but are also noted, and ``check()`` raises a noted one again.

    An exception raised by a handler inside a garbage-collector callback or a destructor is only
    printed by Python ("Exception ignored in ..."), and the run would go on to the end: ``run``
    calls ``check()`` between levels so that such a signal still stops it there.
    """

    def __enter__(self):
        self.noted, self.previous = [], {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                handler = signal.getsignal(sig)
                if callable(handler):  # (SIG_DFL/SIG_IGN raise nothing that could be lost)
                    self.previous[sig] = handler
                    signal.signal(sig, self._forward)
        return self

    def _forward(self, signum, frame):
        self.noted.append(signum)
        self.previous[signum](signum, frame)

    def check(self) -> None:
        """Raise (through its handler) a SIGINT/SIGTERM received since the last check, if any."""
        if self.noted:
            signum = self.noted[-1]
            self.noted.clear()
            self.previous[signum](signum, None)

    def __exit__(self, *exc_info):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def save_checkpoint(workdir: str, name: str, tree: PyTree) -> None:
    """Write ``tree`` under checkpoints/name atomically (orbax commits by a final rename).
    SIGINT/SIGTERM arriving meanwhile take effect once the write is done."""
    path = _ckpt_path(workdir, name)
    tree = jax.tree.map(np.asarray, tree)
    checkpointer = _checkpointer()
    with _signals_deferred():
        if os.path.exists(path):
            shutil.rmtree(path)
        checkpointer.save(path, tree)


def load_checkpoint(workdir: str, name: str, like: PyTree | None = None) -> PyTree:
    """Read checkpoints/name; with ``like``, check it has the same structure and shapes (when
    ``like`` is a dict, only the parts of the checkpoint under its keys are checked)."""
    path = _ckpt_path(workdir, name)
    if not os.path.exists(path):
        raise ExperimentError(f"checkpoint {path} does not exist")
    tree = _checkpointer().restore(path)
    if like is not None:
        part = ({k: tree[k] for k in like if k in tree}
                if isinstance(like, dict) and isinstance(tree, dict) else tree)
        got = {p: np.shape(x) for p, x in zip(masks_lib.leaf_paths(part), jax.tree.leaves(part))}
        want = {p: np.shape(x) for p, x in zip(masks_lib.leaf_paths(like), jax.tree.leaves(like))}
        if got != want:
            diff = sorted(set(got.items()) ^ set(want.items()))[0]
            raise ExperimentError(f"checkpoint {path} does not fit this experiment's model "
                                  f"(first difference at '{diff[0]}'): is it from another model?")
    return tree


def _clean_partial_checkpoints(workdir: str) -> None:
    folder = os.path.join(workdir, "checkpoints")
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if ".orbax-checkpoint-tmp" in name or name.endswith(".tmp"):
                shutil.rmtree(os.path.join(folder, name), ignore_errors=True)


# ----------------------------------------------------------------------------- the workdir

def config_to_json(config: ml_collections.ConfigDict) -> dict:
    """The resolved config as plain JSON data (tuples become lists)."""
    return json.loads(json.dumps(config.to_dict()))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Create the workdir with config.json, or check that the one there holds the same experiment.

    ``runtime.*`` fields may differ (they change how, not what, is computed).
    """
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, CONFIG)
    resolved = config_to_json(config)
    if os.path.exists(path):
        with open(path) as f:
            try:
                saved = json.load(f)
            except json.JSONDecodeError:
                raise ExperimentError(f"{path} is not valid JSON; remove the workdir to start over")
        a, b = _flatten(saved), _flatten(resolved)
        diffs = [k for k in sorted(set(a) | set(b))
                 if not k.startswith("runtime.") and a.get(k, "<missing>") != b.get(k, "<missing>")]
        if diffs:
            shown = "; ".join(f"{k}: workdir has {a.get(k, '<missing>')!r}, config has "
                              f"{b.get(k, '<missing>')!r}" for k in diffs[:5])
            raise ExperimentError(f"{workdir} holds a different experiment ({shown}). Use another "
                                  "--workdir, or the same config to resume.")
    else:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(resolved, f, indent=2, sort_keys=True)
        os.replace(tmp, path)


def expected_runs(exp: Experiment, level: int) -> list[tuple[str, int]]:
    """(variant, trial) of every run of a level, in the order they are batched."""
    variants = ("ticket",) if level == 0 else exp.variants
    return [(v, t) for v in variants for t in range(exp.config.trials)]


def finished_levels(exp: Experiment, workdir: str, records: list[dict]) -> int:
    """How many levels (0, 1, ...) are finished: their checkpoint and all their records exist."""
    have = {(r["level"], r["variant"], r["trial"]) for r in records}
    level = 0
    while level <= exp.config.prune.levels:
        complete = all((level, v, t) in have for v, t in expected_runs(exp, level))
        if not (complete and os.path.exists(_ckpt_path(workdir, f"level_{level:03d}"))):
            break
        level += 1
    return level


# ----------------------------------------------------------------------------- the experiment

def run(config: ml_collections.ConfigDict, workdir: str, log: Callable[[str], None] = print,
        exp: Experiment | None = None) -> list[dict]:
    """Run (or resume) the whole experiment in ``workdir``; returns all records.

    Levels already finished in ``workdir`` are kept; the first unfinished level starts again from
    its checkpointed inputs, so the final records equal an uninterrupted run's (timing fields aside).
    """
    with _NotedSignals() as signals:
        return _run(config, workdir, log, exp, signals.check)


def _run(config: ml_collections.ConfigDict, workdir: str, log: Callable[[str], None],
         exp: Experiment | None, check_signals: Callable[[], None]) -> list[dict]:
    exp = exp or setup(config)
    cfg = exp.config
    prepare_workdir(cfg, workdir)
    _clean_partial_checkpoints(workdir)
    records = read_records(workdir)
    done = finished_levels(exp, workdir, records)
    records = [r for r in records if r["level"] < done]
    _write_records(workdir, records)  # drops records of an unfinished level and any partial line

    runner = Runner(exp, int(cfg.runtime.devices), data_parallel=bool(cfg.runtime.data_parallel))
    trials = int(cfg.trials)
    seed = int(cfg.seed)
    k = int(cfg.prune.rewind_iteration)
    levels = int(cfg.prune.levels)
    data_keys = jnp.stack([trial_key(seed, t, DATA) for t in range(trials)])
    noise_keys = jnp.stack([trial_key(seed, t, NOISE) for t in range(trials)])
    init_template = jax.jit(jax.vmap(exp.init_variables))(
        jnp.stack([trial_key(seed, t, INIT) for t in range(trials)]))
    log(f"lth_jax: {cfg.model.name} on {exp.dataset_info.name} ({exp.dataset_info.source}), "
        f"{trials} trial(s), levels 0..{levels}, {cfg.train.iterations} iterations, variants "
        f"{', '.join(exp.variants)}; {len(runner.devices)} {runner.devices[0].platform} device(s), "
        f"runs batched by {runner.batching}"
        f"{', each batch split over the devices' if runner.data_parallel else ''}; workdir {workdir}")
    if done:
        log(f"resuming: levels 0..{done - 1} already finished ({len(records)} records kept)")
    check_signals()

    prepare = jax.jit(lambda theta, mask, level: level_inputs(exp, theta, mask, level))
    one_shot = bool(cfg.prune.one_shot)
    # The level only matters for one-shot pruning (the compound rate); iterative pruning compiles once.
    prune_fn = jax.jit(jax.vmap(lambda p, m, level: next_mask(exp, p, m, level, one_shot),
                                in_axes=(0, 0, None)), static_argnums=2)
    level_seconds = []

    if done == 0:
        theta0 = init_template
        ones = jax.vmap(masks_lib.ones_like)(theta0["params"])
        t0 = time.time()
        result = runner(theta0["params"], theta0["batch_stats"], ones, data_keys, noise_keys,
                        start=0, capture=k if k > 0 else -1)
        seconds = time.time() - t0
        rewind_to = ({"params": result.captured_params, "batch_stats": result.captured_batch_stats}
                     if k > 0 else theta0)
        save_checkpoint(workdir, "init", {"theta0": theta0, "theta_rewind": rewind_to})
        level_state = {"mask": ones, "trained_params": result.params,
                       "trained_batch_stats": result.batch_stats}
        save_checkpoint(workdir, "level_000", {"ticket": level_state})
        new = [make_record(exp, result, t, trial=t, level=0, variant="ticket",
                           mask=jax.tree.map(lambda x: x[t], ones), start=0, seconds=seconds,
                           runs=trials) for t in range(trials)]
        for r in new:
            if r["status"] == "diverged":
                log(f"WARNING: {r['failure']}; later levels of trial {r['trial']} are marked skipped")
        _append_records(workdir, new)
        records += new
        level_seconds.append(seconds / trials)
        _log_level(log, exp, new, 0, seconds, level_seconds, levels)
        done = 1
    init = load_checkpoint(workdir, "init", {"theta0": init_template, "theta_rewind": init_template})
    level_like = {"ticket": {"mask": init_template["params"],
                             "trained_params": init_template["params"],
                             "trained_batch_stats": init_template["batch_stats"]}}
    dense = load_checkpoint(workdir, "level_000", level_like)["ticket"]
    previous = load_checkpoint(workdir, f"level_{done - 1:03d}", level_like)["ticket"]
    diverged: dict[int, int] = {}  # trial -> the first level whose ticket failed
    for r in records:
        if r["variant"] == "ticket" and r["status"] != "ok":
            diverged[r["trial"]] = min(r["level"], diverged.get(r["trial"], r["level"]))

    for level in range(done, levels + 1):
        check_signals()
        source = dense if one_shot else previous
        ticket_mask = prune_fn(source["trained_params"], source["mask"], level if one_shot else 1)
        runs = expected_runs(exp, level)
        params, stats, run_masks = prepare(init["theta_rewind"], ticket_mask, jnp.int32(level))
        run_masks = jax.tree.map(np.asarray, run_masks)
        t0 = time.time()
        result = runner(params, stats, run_masks,
                        data_keys[np.array([t for _, t in runs])],
                        noise_keys[np.array([t for _, t in runs])], start=k, capture=-1)
        seconds = time.time() - t0
        ticket_idx = [i for i, (v, _) in enumerate(runs) if v == "ticket"]
        previous = {"mask": ticket_mask,
                    "trained_params": jax.tree.map(lambda x: x[np.array(ticket_idx)], result.params),
                    "trained_batch_stats": jax.tree.map(lambda x: x[np.array(ticket_idx)],
                                                        result.batch_stats)}
        save_checkpoint(workdir, f"level_{level:03d}",
                        {"ticket": previous,
                         "runs": {"mask": run_masks, "trained_params": result.params}})
        new = []
        for i, (variant, t) in enumerate(runs):
            skipped = (f"the trial's ticket diverged at level {diverged[t]}"
                       if t in diverged and diverged[t] < level else None)
            new.append(make_record(exp, result, i, trial=t, level=level, variant=variant,
                                   mask=jax.tree.map(lambda x: x[i], run_masks), start=k,
                                   seconds=seconds, runs=len(runs), skipped_because=skipped))
        for r in new:
            if r["variant"] == "ticket" and r["status"] == "diverged":
                diverged.setdefault(r["trial"], level)
                log(f"WARNING: {r['failure']}; later levels of trial {r['trial']} are marked skipped")
            elif r["status"] == "diverged":
                log(f"WARNING: {r['failure']}")
        _append_records(workdir, new)
        records += new
        level_seconds.append(seconds / len(runs))
        _log_level(log, exp, new, level, seconds, level_seconds, levels)
    check_signals()
    return records


def _log_level(log, exp, new, level, seconds, seconds_per_run, levels) -> None:
    """One progress line; the time left is estimated from the median seconds per run so far."""
    tickets_ok = [r for r in new if r["variant"] == "ticket" and r["status"] == "ok"]
    remaining_runs = (levels - level) * len(exp.variants) * int(exp.config.trials)
    eta = np.median(seconds_per_run[-3:]) * remaining_runs
    if tickets_ok:
        acc = np.mean([r["test_accuracy_at_early_stop"] for r in tickets_ok])
        es = np.mean([r["early_stop_iteration"] for r in tickets_ok])
        summary = f"ticket test acc {100 * acc:.2f}% at early stop (iteration {es:.0f})"
    else:
        summary = "no ticket finished (diverged)"
    controls = []
    for variant in exp.variants[1:]:
        ok = [r for r in new if r["variant"] == variant and r["status"] == "ok"]
        if ok:
            controls.append(f"{variant} {100 * np.mean([r['test_accuracy_at_early_stop'] for r in ok]):.2f}%")
    log(f"level {level:2d}/{levels}  density {100 * new[0]['density']:6.2f}%  {summary}"
        + (f"; {', '.join(controls)}" if controls else "")
        + f"  [{seconds:.1f}s, ~{eta / 60:.1f} min left]")


# ----------------------------------------------------------------------------- analysis API

def load_experiment(workdir: str) -> dict:
    """A finished (or partial) experiment, for analysing tickets in your own code.

    Returns ``{"config": dict, "theta0": {"params", "batch_stats"}, "theta_rewind": ...,
    "levels": {L: {"mask", "trained_params", "trained_batch_stats"}}, "records": [...]}`` where every
    array has a leading trial axis (numpy). ``levels[L]["mask"]`` is the ticket mask of level L.
    """
    path = os.path.join(workdir, CONFIG)
    if not os.path.exists(path):
        raise ExperimentError(f"{workdir} has no {CONFIG}: not an lth_jax workdir")
    with open(path) as f:
        config = json.load(f)
    init = load_checkpoint(workdir, "init")
    levels = {}
    folder = os.path.join(workdir, "checkpoints")
    for name in sorted(os.listdir(folder)):
        if name.startswith("level_") and name[6:].isdigit():
            levels[int(name[6:])] = load_checkpoint(workdir, name)["ticket"]
    return {"config": config, "theta0": init["theta0"], "theta_rewind": init["theta_rewind"],
            "levels": levels, "records": read_records(workdir)}
