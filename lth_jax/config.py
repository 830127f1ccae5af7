"""The experiment config: its fields with defaults and meaning, and validation with one-line errors.

Every ``configs/*.py`` starts from ``base_config()`` and sets the paper's values. ``FIELDS`` is the
schema: one row per field, ``(dotted name, default, meaning)``; ``base_config()`` is built from it and
``--help`` prints it, so a field is described once. Groups: ``seed``/``trials``, ``model``,
``dataset``, ``train``, ``prune``, ``controls`` and ``runtime``; ``runtime.*`` changes how, not
what, is computed (a workdir may be resumed with other values).

The experiment's identity (``identity``) is a digest of the config without ``runtime.*``. Fields added
after the first experiments were recorded are listed in ``LATER_FIELDS`` with a neutral default (the
behaviour from before they existed): at that default they are left out of the identity and of the
comparison with a saved config, so that workdirs made before them keep their identity.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any, Mapping

import ml_collections

OPTIMIZERS = ("adam", "sgd", "momentum")
#: ``prune.strategy``: "paper" (the network's own: layerwise or global), "layerwise" / "global"
#: (magnitude per leaf / over all leaves), "neuron" / "global_neuron" (whole Dense neurons and Conv
#: filters by L2 norm, per layer / over all layers: ``structured.neuron_magnitude`` /
#: ``global_neuron_magnitude``), or an N:M pattern written "N:M" (e.g. "2:4": N:M magnitude
#: pruning reached by rounds, ``structured.nm_iterative``; see ``nm_pattern``).
STRATEGIES = ("paper", "layerwise", "global", "neuron", "global_neuron")
SOURCES = ("auto", "tfds", "files", "synthetic")
AUGMENT = ("auto", "on", "off")
MATMUL_PRECISIONS = ("auto", "default", "high", "highest")
# = lth_jax.models.convolution.IMPLEMENTATIONS (tested)
CONVOLUTIONS = ("auto", "xla", "canonical_vjp", "winograd")
#: ``prune.retrain``: how a pruned network is retrained after each pruning round (Renda, Frankle &
#: Carbin, ICLR 2020). ``weight_rewinding``: rewind the survivors to θ₀ (θ_k) and replay the schedule
#: from k, the lottery ticket. ``lr_rewinding``: keep the trained weights and replay the last
#: ``retrain_iterations`` of the learning-rate schedule. ``fine_tuning``: keep the trained weights
#: and train ``retrain_iterations`` at the schedule's final learning rate.
RETRAIN_RULES = ("weight_rewinding", "lr_rewinding", "fine_tuning")


class ConfigError(ValueError):
    """A config value is invalid; the message names the field."""


#: The schema: (field, default, meaning). The meaning is what ``--help`` prints.
FIELDS: tuple[tuple[str, Any, str], ...] = (
    ("seed", 0, "root random seed: θ₀, data order, random masks and reinit all derive from it"),
    ("trials", 1, "independent repetitions, each with its own θ₀ and data order"),
    ("model.name", "lenet300_100",
     "network: lenet300_100, conv2, conv4, conv6, vgg19, resnet20 (= resnet18)"),
    ("model.dropout_rate", 0.0, "dropout after each hidden FC layer (Conv-2/4/6 only; paper: 0.5)"),
    ("model.conv", "auto",
     "convolution implementation: auto (winograd on CPU, xla on GPU/TPU) | xla | canonical_vjp | "
     "winograd (canonical_vjp + Winograd F(2x2,3x3) on wide 3x3 stride-1 layers)"),
    ("dataset.name", "mnist", "mnist | fashion_mnist | cifar10 (any name with source=synthetic)"),
    ("dataset.source", "auto", "auto (a prepared TFDS dataset, else the files in the data cache "
                               "or /usr/share/datasets, else a verified download of the official "
                               "files) | tfds | files (IDX or CIFAR-10 python batches) | synthetic "
                               "(made-up data, no files)"),
    ("dataset.path", "", "folder of the files (source=files or auto); empty: the data cache "
                         "($LTH_JAX_DATA, else ~/.cache/lth_jax/datasets)/NAME, then "
                         "/usr/share/datasets/NAME"),
    ("dataset.data_dir", "", "TFDS data dir (source=tfds or auto); empty: TFDS's default"),
    ("dataset.mirror", "", "base URL the downloads of source=auto come from, laid out "
                           "{mirror}/{name}/{file} ('' = the official sites; file:// works)"),
    ("dataset.validation_size", 5000,
     "training examples held out; early stopping = minimum validation loss"),
    ("dataset.augment", "auto",
     "auto (on for 32x32 RGB data such as CIFAR-10) | on | off: random crops and flips"),
    # Synthetic data only. () = the shape of dataset.name (cifar10: 32x32x3, mnist/fashion_mnist:
    # 28x28x1), so --config.dataset.source=synthetic keeps a config's model and FLOPs; train_size
    # exceeds validation_size's default, so any config runs on synthetic data.
    ("dataset.image_shape", (), "synthetic: (height, width, channels); () = the named dataset's shape"),
    ("dataset.num_classes", 10, "synthetic: number of classes"),
    ("dataset.train_size", 10_000, "synthetic: training examples (validation included)"),
    ("dataset.test_size", 2_000, "synthetic: test examples"),
    ("dataset.train_subset", 0, "train on only the first N examples left after the validation "
                                "hold-out (0 = all of them)"),
    ("train.iterations", 50_000, "training iterations of every run (each level, trial and variant)"),
    ("train.batch_size", 60, "examples per training step"),
    ("train.optimizer", "adam", "adam | sgd | momentum"),
    ("train.learning_rate", 1.2e-3, "learning rate (after warmup, before drops)"),
    ("train.momentum", 0.9, "momentum coefficient (optimizer=momentum)"),
    ("train.weight_decay", 0.0, "L2 weight decay, added to the gradient"),
    ("train.lr_drops", (), "iterations where the learning rate is multiplied by lr_drop_factor"),
    ("train.lr_drop_factor", 0.1, "factor applied at each of lr_drops"),
    ("train.warmup_iterations", 0, "linear learning-rate warmup over this many iterations (0 = none)"),
    ("train.eval_every", 100, "validation every this many iterations (divides iterations)"),
    ("train.test_every_evals", 1, "test curve at every N-th evaluation (1 = all, the paper's "
                                  "protocol; 0 = none); the test accuracy at early stop is exact "
                                  "regardless"),
    ("train.eval_batch_size", 2500, "batch size of the evaluation passes"),
    ("prune.strategy", "paper", "paper (the network's own: layerwise or global) | layerwise | "
                                "global | neuron | global_neuron (whole neurons/filters) | N:M, "
                                "e.g. 2:4"),
    ("prune.rules", (), "((regex, rate), ...): per-round rate of the leaves whose whole '/'-path "
                        "matches; first match wins; () = the model's paper rules"),
    ("prune.global_rate", 0.0, "per-round rate of global pruning; 0 = the rules' (single) rate"),
    ("prune.levels", 16, "pruning levels after the dense level 0 (rate 0.2: level L keeps 0.8^L)"),
    ("prune.one_shot", False, "prune level L in one step from the dense run instead of iteratively"),
    ("prune.rewind_iteration", 0, "rewind survivors to θ_k, the weights at iteration k (late "
                                  "resetting); 0 = θ₀"),
    ("prune.retrain", "weight_rewinding",
     "how each pruned network is retrained: weight_rewinding (to θ₀ or θ_k, the lottery ticket) | "
     "lr_rewinding (keep the trained weights, replay the last retrain_iterations of the schedule) "
     "| fine_tuning (keep the trained weights, retrain_iterations at the final learning rate)"),
    ("prune.retrain_iterations", 0, "t, the retraining budget of lr_rewinding and fine_tuning (a "
                                    "multiple of train.eval_every, at most train.iterations)"),
    ("controls.reinit", True, "also train each ticket's mask from fresh random weights"),
    ("controls.random_prune", True, "also train a random mask with the ticket's per-layer counts"),
    ("runtime.devices", 0, "devices to use (0 = all)"),
    ("runtime.data_parallel", False, "split each batch over the devices (one large run, e.g. VGG-19)"),
    ("runtime.distributed", False, "several processes (hosts): jax.distributed.initialize() first"),
    ("runtime.coordinator_address", "", "'host:port' of process 0 (runtime.distributed; '' = JAX "
                                        "detects it: Cloud TPU, SLURM, ...)"),
    ("runtime.num_processes", 0, "number of processes (runtime.distributed; 0 = JAX detects it)"),
    ("runtime.process_id", -1, "this process's index (runtime.distributed; -1 = JAX detects it)"),
    ("runtime.process_timeout_seconds", 60.0, "a process silent this long (dead, host down) stops "
                                              "the others with one line"),
    ("runtime.matmul_precision", "auto", "auto (highest on CPU; default on GPU/TPU: TF32 / "
                                         "bfloat16 passes) | default | high | highest"),
    ("runtime.checkpoint_minutes", 10.0,
     "checkpoint within a level this often (0 = at level ends only)"),
    ("runtime.chunk_seconds", 4.0, "training time between two checks for a stop (Ctrl-C, SIGTERM)"),
    # Twice chunk_seconds, so that an ordinary chunk finishes and is saved; a number of its own, so
    # that a stop is bounded by itself.
    ("runtime.stop_wait_seconds", 8.0, "a stop waits this long for the chunk in flight (to save its "
                                       "progress), then gives it up"),
    ("runtime.slice_iterations", 0, "a chunk is whole slices of this many steps, a divisor of "
                                    "train.eval_every (0 = auto: up to 10, ~2 s on a CPU)"),
    ("runtime.progress_seconds", 30.0, "at most one progress line per this many seconds"),
    ("runtime.tensorboard", True, "write TensorBoard event files to WORKDIR/tensorboard as chunks "
                                  "finish (view: tensorboard --logdir WORKDIR/tensorboard)"),
)

#: Fields that change how, not what, is computed: never part of the identity. A mirror serves
#: the same files, verified by their checksums.
NOT_IDENTITY = ("runtime.", "dataset.mirror")
#: Fields added after experiments were recorded, with the default that means "as before they
#: existed": at that value they are left out of the identity (``comparable``).
LATER_FIELDS: dict[str, Any] = {
    "dataset.train_subset": 0,
    "prune.retrain": "weight_rewinding",
    "prune.retrain_iterations": 0,
}


def build(fields: tuple[tuple[str, Any, str], ...]) -> ml_collections.ConfigDict:
    """A ConfigDict with the default of every ``(dotted name, default, meaning)`` row, groups made
    on the way (``FIELDS``, or a branch's fields)."""
    c = ml_collections.ConfigDict()
    for name, default, _ in fields:
        node = c
        *groups, leaf = name.split(".")
        for group in groups:
            if group not in node:
                node[group] = ml_collections.ConfigDict()
            node = node[group]
        node[leaf] = default
    return c


def base_config() -> ml_collections.ConfigDict:
    """The schema with defaults (LeNet-300-100 on MNIST, the paper's setup, one trial)."""
    return build(FIELDS)


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``: a nested dict (a resolved config) by dotted field name."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def to_json(config: ml_collections.ConfigDict) -> dict:
    """The resolved config as plain JSON data (tuples become lists)."""
    return json.loads(json.dumps(config.to_dict()))


def comparable(resolved: Mapping) -> dict[str, Any]:
    """What makes two experiments the same: the resolved config (plain JSON data), flattened,
    without the ``NOT_IDENTITY`` fields and the ``LATER_FIELDS`` at their neutral default."""
    flat = flatten(resolved)
    return {k: v for k, v in flat.items() if not k.startswith(NOT_IDENTITY)
            and not (k in LATER_FIELDS and v == LATER_FIELDS[k])}


def identity(resolved: Mapping) -> str:
    """The experiment's identity: a digest of ``comparable(resolved)``, stored in every record and
    checkpoint. Equal for configs that differ only in ``runtime.*`` or in later fields left at
    their neutral default."""
    flat = comparable(resolved)
    nested: dict[str, Any] = {}
    for name, value in flat.items():  # the nested form, so that identities made before stand
        node = nested
        *groups, leaf = name.split(".")
        for group in groups:
            node = node.setdefault(group, {})
        node[leaf] = value
    text = json.dumps(nested, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def differences(saved: Mapping, current: Mapping) -> list[tuple[str, Any, Any]]:
    """``(field, saved value, current value)`` of every field in which two resolved configs differ
    for ``comparable``; ``"<missing>"`` stands for a field one of them lacks."""
    a, b = comparable(saved), comparable(current)
    return [(k, a.get(k, "<missing>"), b.get(k, "<missing>")) for k in sorted(set(a) | set(b))
            if a.get(k, "<missing>") != b.get(k, "<missing>")]


# (iterations, learning rate) of Conv-2/4/6 without and with dropout, from the paper's Fig. 2 and
# Appendix F.
CONV_PAPER = {
    "conv2": {"plain": (20_000, 2e-4), "dropout": (60_000, 3e-4)},
    "conv4": {"plain": (25_000, 3e-4), "dropout": (75_000, 2e-4)},
    "conv6": {"plain": (30_000, 3e-4), "dropout": (90_000, 2e-4)},
}


def conv_config(name: str, dropout: bool) -> ml_collections.ConfigDict:
    """The paper's Conv-2/4/6 setup (CIFAR-10, Adam, batch 60, layerwise pruning), with or without
    dropout 0.5 (three times the iterations, Appendix F)."""
    iterations, learning_rate = CONV_PAPER[name]["dropout" if dropout else "plain"]
    c = base_config()
    c.model.name = name
    c.model.dropout_rate = 0.5 if dropout else 0.0
    c.dataset.name = "cifar10"
    c.dataset.augment = "off"  # the paper trains Conv-2/4/6 without augmentation
    c.train.iterations = iterations
    c.train.batch_size = 60
    c.train.optimizer = "adam"
    c.train.learning_rate = learning_rate
    c.prune.strategy = "paper"  # layerwise: conv 10% (Conv-6: 15%), fc 20%, output 10%
    c.prune.levels = 18         # fc 0.8^18 = 1.8% of the fc weights
    c.trials = 5
    return c


def _fail(field: str, message: str):
    # One line, even when a value's repr has several (a ConfigDict's does).
    raise ConfigError(f"config.{field}: " + " ".join(message.splitlines()).strip())


def _get(c, field: str):
    """The value at a dotted path, e.g. ``_get(c, "train.iterations")``."""
    value = c
    for part in field.split("."):
        value = value[part]
    return value


def _int_at_least(c, field: str, low: int) -> int:
    value = _get(c, field)
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(field, f"must be an integer, got {value!r}")
    if value < low:
        _fail(field, f"must be >= {low}, got {value}")
    return value


def _number(c, field: str) -> float:
    """The field as a finite float (inf or nan would only show up as a diverged run)."""
    value = _get(c, field)
    try:
        number = float(value)
    except (TypeError, ValueError):
        _fail(field, f"must be a number, got {value!r}")
    if not math.isfinite(number):
        _fail(field, f"must be a finite number, got {value!r}")
    return number


def _sequence(c, field: str) -> tuple:
    value = _get(c, field)
    if not isinstance(value, (tuple, list)):
        _fail(field, f"must be a tuple, got {value!r}")
    return tuple(value)


def _choice(c, field: str, options) -> str:
    value = _get(c, field)
    if value not in options:
        _fail(field, f"unknown value {value!r}; choose one of {', '.join(options)}")
    return value


def load_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """``get_config()`` of the config file at ``path`` (``get_config(arg)`` when ``arg`` is given),
    as ``--config=PATH[:ARG]`` loads it. For configs built on another config file, e.g.
    ``load_file(os.path.join(os.path.dirname(__file__), "other.py"))``.

    Raises:
      OSError: the file cannot be loaded.
    """
    import importlib.util

    module_spec = importlib.util.spec_from_file_location("_lth_jax_config_file", path)
    if module_spec is None or module_spec.loader is None:
        raise OSError(f"cannot load {path}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config() if arg is None else module.get_config(arg)


def nm_pattern(strategy: str) -> tuple[int, int] | None:
    """``(n, m)`` of an N:M strategy string such as "2:4" (1 <= n < m <= 64); None for any other
    string. A malformed "N:M" (e.g. "4:4", "0:4") is None too, and refused by ``validate``."""
    match = re.fullmatch(r"(\d+):(\d+)", strategy) if isinstance(strategy, str) else None
    if not match:
        return None
    n, m = int(match.group(1)), int(match.group(2))
    return (n, m) if 1 <= n < m <= 64 else None


def validate(c: ml_collections.ConfigDict) -> None:
    """Check every field before any training; raise ConfigError naming the first bad field.

    Checks that depend on the data (batch size vs. dataset size) are made by ``lottery`` after
    loading it.
    """
    from lth_jax import models  # local: config sits below models in the layering only for this check

    expected = base_config()
    for group in expected.keys():
        if group not in c:
            _fail(group, "missing group" if isinstance(expected[group], ml_collections.ConfigDict)
                  else "missing field")
        if isinstance(expected[group], ml_collections.ConfigDict):
            if not isinstance(c[group], ml_collections.ConfigDict):
                _fail(group, f"must be a group of fields, got {c[group]!r}")
            unknown = sorted(set(c[group].keys()) - set(expected[group].keys()))
            if unknown:
                _fail(f"{group}.{unknown[0]}",
                      f"unknown field; {group} has {', '.join(sorted(expected[group].keys()))}")
            missing = sorted(set(expected[group].keys()) - set(c[group].keys()))
            if missing:
                _fail(f"{group}.{missing[0]}", "missing field")
    unknown = sorted(set(c.keys()) - set(expected.keys()))
    if unknown:
        _fail(unknown[0], f"unknown field; top-level fields are {', '.join(sorted(expected.keys()))}")

    if _int_at_least(c, "seed", 0) >= 2**32:  # jax.random.key takes 32 bits: 2**32 would be 0
        _fail("seed", f"must be < 2**32, got {c.seed}")
    _int_at_least(c, "trials", 1)
    try:
        models.spec(c.model.name)
    except (ValueError, TypeError) as e:
        _fail("model.name", str(e))
    _choice(c, "model.conv", CONVOLUTIONS)
    if not 0.0 <= _number(c, "model.dropout_rate") < 1.0:
        _fail("model.dropout_rate", f"must be in [0, 1), got {c.model.dropout_rate}")

    source = _choice(c, "dataset.source", SOURCES)
    if source != "synthetic" and c.dataset.name not in ("mnist", "fashion_mnist", "cifar10"):
        _fail("dataset.name", f"unknown dataset {c.dataset.name!r} for source {source!r}; "
                              "choose mnist, fashion_mnist or cifar10 (or source=synthetic)")
    _int_at_least(c, "dataset.validation_size", 0)
    _int_at_least(c, "dataset.train_subset", 0)
    _choice(c, "dataset.augment", AUGMENT)
    if source == "synthetic":
        shape = _sequence(c, "dataset.image_shape")
        if shape and (len(shape) != 3 or any((not isinstance(s, int)) or s < 1 for s in shape)):
            _fail("dataset.image_shape", f"must be (height, width, channels) or () for the shape "
                                         f"of dataset.name, got {shape}")
        _int_at_least(c, "dataset.num_classes", 2)
        _int_at_least(c, "dataset.train_size", 1)
        _int_at_least(c, "dataset.test_size", 1)

    t = c.train
    iterations = _int_at_least(c, "train.iterations", 1)
    if iterations >= 2**31:  # the iteration counter is an int32 in the training program
        _fail("train.iterations", f"must be < 2**31, got {iterations}")
    eval_every = _int_at_least(c, "train.eval_every", 1)
    if iterations % eval_every:
        _fail("train.iterations", f"{iterations} is not a multiple of train.eval_every={eval_every}")
    _int_at_least(c, "train.test_every_evals", 0)
    _int_at_least(c, "train.batch_size", 1)
    _int_at_least(c, "train.eval_batch_size", 1)
    _choice(c, "train.optimizer", OPTIMIZERS)
    if not _number(c, "train.learning_rate") > 0:
        _fail("train.learning_rate", f"must be > 0, got {t.learning_rate}")
    if not 0.0 <= _number(c, "train.momentum") < 1.0:
        _fail("train.momentum", f"must be in [0, 1), got {t.momentum}")
    if not _number(c, "train.weight_decay") >= 0:
        _fail("train.weight_decay", f"must be >= 0, got {t.weight_decay}")
    for drop in _sequence(c, "train.lr_drops"):
        if isinstance(drop, bool) or not isinstance(drop, int) or not 0 < drop < iterations:
            _fail("train.lr_drops", f"{drop!r} is not an iteration in (0, {iterations})")
    if not 0 < _number(c, "train.lr_drop_factor") <= 1:
        _fail("train.lr_drop_factor", f"must be in (0, 1], got {t.lr_drop_factor}")
    warmup = _int_at_least(c, "train.warmup_iterations", 0)
    if warmup > iterations:
        _fail("train.warmup_iterations", f"{warmup} exceeds train.iterations={iterations}")

    p = c.prune
    if nm_pattern(p.strategy) is None:
        if isinstance(p.strategy, str) and re.fullmatch(r"\d+:\d+", p.strategy):
            _fail("prune.strategy", f"N:M pattern {p.strategy!r} needs 1 <= N < M <= 64")
        if p.strategy not in STRATEGIES:
            _fail("prune.strategy", f"unknown value {p.strategy!r}; choose one of "
                                    f"{', '.join(STRATEGIES)} or an N:M pattern such as 2:4")
    _int_at_least(c, "prune.levels", 0)
    for i, rule in enumerate(_sequence(c, "prune.rules")):
        if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)):
            _fail("prune.rules", f"rule #{i} {rule!r} is not a (regex, rate) pair")
        try:
            re.compile(rule[0])
        except re.error as e:
            _fail("prune.rules", f"rule #{i}: bad regex {rule[0]!r}: {e}")
        try:
            rate = float(rule[1])
        except (TypeError, ValueError):
            _fail("prune.rules", f"rule #{i} {rule[0]!r}: rate {rule[1]!r} is not a number")
        if not 0.0 <= rate < 1.0:
            _fail("prune.rules", f"rule #{i} {rule[0]!r}: rate {rule[1]} is outside [0, 1)")
    if not 0.0 <= _number(c, "prune.global_rate") < 1.0:
        _fail("prune.global_rate", f"must be in [0, 1), got {p.global_rate}")
    rewind = _int_at_least(c, "prune.rewind_iteration", 0)
    if rewind >= iterations:
        _fail("prune.rewind_iteration", f"{rewind} must be < train.iterations={iterations}")
    if rewind % eval_every:
        _fail("prune.rewind_iteration",
              f"{rewind} must be a multiple of train.eval_every={eval_every} (θ_k is captured at evaluations)")
    _int_at_least(c, "runtime.devices", 0)
    if not _number(c, "runtime.checkpoint_minutes") >= 0:
        _fail("runtime.checkpoint_minutes", f"must be >= 0, got {c.runtime.checkpoint_minutes}")
    if not _number(c, "runtime.chunk_seconds") > 0:
        _fail("runtime.chunk_seconds", f"must be > 0, got {c.runtime.chunk_seconds}")
    if not _number(c, "runtime.stop_wait_seconds") >= 0:
        _fail("runtime.stop_wait_seconds", f"must be >= 0, got {c.runtime.stop_wait_seconds}")
    slice_iterations = _int_at_least(c, "runtime.slice_iterations", 0)
    if slice_iterations and eval_every % slice_iterations:
        _fail("runtime.slice_iterations",
              f"{slice_iterations} does not divide train.eval_every={eval_every}")
    if not _number(c, "runtime.progress_seconds") >= 0:
        _fail("runtime.progress_seconds", f"must be >= 0, got {c.runtime.progress_seconds}")
    _choice(c, "runtime.matmul_precision", MATMUL_PRECISIONS)
    if not isinstance(c.runtime.coordinator_address, str):
        _fail("runtime.coordinator_address",
              f"must be a 'host:port' string, got {c.runtime.coordinator_address!r}")
    if c.runtime.coordinator_address and not re.fullmatch(r"\S+:\d{1,5}",
                                                          c.runtime.coordinator_address):
        _fail("runtime.coordinator_address",
              f"must be 'host:port', got {c.runtime.coordinator_address!r}")
    processes = _int_at_least(c, "runtime.num_processes", 0)
    process_id = _int_at_least(c, "runtime.process_id", -1)
    if processes and process_id >= processes:
        _fail("runtime.process_id", f"{process_id} must be < runtime.num_processes={processes}")
    if not _number(c, "runtime.process_timeout_seconds") > 0:
        _fail("runtime.process_timeout_seconds",
              f"must be > 0, got {c.runtime.process_timeout_seconds}")
    if not c.runtime.distributed and (c.runtime.coordinator_address or processes > 1
                                      or process_id > 0):
        _fail("runtime.distributed", "must be True when runtime.coordinator_address, "
              "num_processes or process_id is set")
    if not isinstance(c.dataset.mirror, str):
        _fail("dataset.mirror", f"must be a URL string, got {c.dataset.mirror!r}")
    for field in ("data_parallel", "distributed", "tensorboard"):
        if not isinstance(c.runtime[field], bool):
            _fail(f"runtime.{field}", f"must be True or False, got {c.runtime[field]!r}")
    for field in ("reinit", "random_prune"):
        if not isinstance(c.controls[field], bool):
            _fail(f"controls.{field}", f"must be True or False, got {c.controls[field]!r}")
    if not isinstance(p.one_shot, bool):
        _fail("prune.one_shot", f"must be True or False, got {p.one_shot!r}")
    _check_retraining(c)


def _check_retraining(c: ml_collections.ConfigDict) -> None:
    """The retraining rule and its budget, and the combinations that mean nothing under it."""
    p = c.prune
    rule = _choice(c, "prune.retrain", RETRAIN_RULES)
    budget = _int_at_least(c, "prune.retrain_iterations", 0)
    iterations, eval_every = c.train.iterations, c.train.eval_every
    if rule == "weight_rewinding":
        if budget:
            _fail("prune.retrain_iterations", f"{budget}, but weight rewinding retrains from "
                  "prune.rewind_iteration to the end; set it to 0 (or prune.retrain=lr_rewinding "
                  "or fine_tuning)")
        return
    if not budget:
        _fail("prune.retrain_iterations", f"must be > 0 with prune.retrain={rule} (the iterations "
              "of each retraining)")
    if budget > iterations or budget % eval_every:
        _fail("prune.retrain_iterations", f"{budget} must be a multiple of train.eval_every="
              f"{eval_every} in (0, train.iterations={iterations}]")
    if p.rewind_iteration:
        _fail("prune.rewind_iteration", f"{p.rewind_iteration}, but prune.retrain={rule} keeps the "
              "trained weights and rewinds none; set it to 0")
    if c.controls.reinit:
        # The ticket keeps its trained weights; fresh weights retrained for t iterations at the end
        # of the schedule are no control for that (the random-pruning control is: random survivors
        # of the same trained network, retrained alike).
        _fail("controls.reinit", f"prune.retrain={rule} keeps the trained weights, so a "
              "reinitialised network retrained alike compares nothing; set controls.reinit=False")
