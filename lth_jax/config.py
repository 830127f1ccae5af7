"""The experiment config: its schema with defaults, and validation with one-line errors.

Every ``configs/*.py`` starts from ``base_config()`` and sets the paper's values. Fields:

* ``seed``, ``trials``
* ``model``: ``name`` (see ``lth_jax.models.names()``), ``dropout_rate``, ``conv`` (auto | xla |
  canonical_vjp | winograd: the convolution implementation)
* ``dataset``: ``name``, ``source`` (tfds | files | synthetic), ``path``, ``data_dir``,
  ``validation_size``, ``augment`` (auto | on | off) and, for synthetic data, ``image_shape`` (() =
  the shape of ``name``), ``num_classes``, ``train_size``, ``test_size``; optional, not in
  ``base_config()`` (so that configs without it keep their experiment identity):
  ``train_subset`` (train on only the first N examples left after the validation hold-out)
* ``train``: ``iterations``, ``batch_size``, ``optimizer`` (adam | sgd | momentum),
  ``learning_rate``, ``momentum``, ``weight_decay``, ``lr_drops`` (iterations), ``lr_drop_factor``,
  ``warmup_iterations``, ``eval_every``, ``test_every_evals`` (0 = no test curve), ``eval_batch_size``
* ``prune``: ``strategy`` (paper | layerwise | global | neuron | global_neuron | "N:M" such as
  "2:4"; see ``STRATEGIES``), ``rules`` (``((regex, rate), ...)``, empty =
  the model's paper rules), ``global_rate`` (0 = the rules' rate), ``levels``, ``one_shot``,
  ``rewind_iteration``
* ``controls``: ``reinit``, ``random_prune`` (bools)
* ``runtime``: ``devices`` (0 = all), ``data_parallel``, ``distributed`` (bools; with
  ``coordinator_address``, ``num_processes``, ``process_id`` and ``process_timeout_seconds`` for
  several processes), ``matmul_precision`` (auto | default | high | highest),
  ``checkpoint_minutes`` (intra-level checkpoints; 0 = at level ends only), ``chunk_seconds``
  (training time between two stop checks), ``stop_wait_seconds`` (how long a stop waits for the
  chunk in flight, to save its progress, before giving it up), ``slice_iterations`` (a chunk is
  whole slices of this many steps, a divisor of ``eval_every``; 0 = automatic, up to 10),
  ``progress_seconds`` (between two progress lines).
  These change how, not what, is computed: a workdir may be resumed with other values.
"""

from __future__ import annotations

import math
import re

import ml_collections

OPTIMIZERS = ("adam", "sgd", "momentum")
#: ``prune.strategy``: "paper" (the network's own: layerwise or global), "layerwise" / "global"
#: (magnitude per leaf / over all leaves), "neuron" / "global_neuron" (whole Dense neurons and Conv
#: filters by L2 norm, per layer / over all layers: ``structured.neuron_magnitude`` /
#: ``global_neuron_magnitude``), or an N:M pattern written "N:M" (e.g. "2:4": N:M magnitude
#: pruning reached by rounds, ``structured.nm_iterative``; see ``nm_pattern``).
STRATEGIES = ("paper", "layerwise", "global", "neuron", "global_neuron")
SOURCES = ("tfds", "files", "synthetic")
AUGMENT = ("auto", "on", "off")
MATMUL_PRECISIONS = ("auto", "default", "high", "highest")
# = lth_jax.models.convolution.IMPLEMENTATIONS (tested)
CONVOLUTIONS = ("auto", "xla", "canonical_vjp", "winograd")


class ConfigError(ValueError):
    """A config value is invalid; the message names the field."""


def base_config() -> ml_collections.ConfigDict:
    """The schema with defaults (LeNet-300-100 on MNIST, the paper's setup, one trial)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.trials = 1

    c.model = ml_collections.ConfigDict()
    c.model.name = "lenet300_100"
    c.model.dropout_rate = 0.0
    # Convolution implementation (conv nets): "auto" = "winograd" on CPU (gradients as canonical
    # convolutions, fast inside XLA:CPU loops, and Winograd's F(2x2, 3x3) for the wide stride-1 3x3
    # layers), "xla" on GPU/TPU. See lth_jax.models.convolution.
    c.model.conv = "auto"

    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = "mnist"
    c.dataset.source = "tfds"
    c.dataset.path = ""
    c.dataset.data_dir = ""
    c.dataset.validation_size = 5000
    c.dataset.augment = "auto"
    # Synthetic data only. image_shape () = the shape of the dataset `name` (cifar10: 32x32x3,
    # mnist/fashion_mnist: 28x28x1), so `--config.dataset.source=synthetic` keeps a config's model
    # and FLOPs. train_size exceeds validation_size's default, so any config runs on synthetic data.
    c.dataset.image_shape = ()
    c.dataset.num_classes = 10
    c.dataset.train_size = 10_000
    c.dataset.test_size = 2_000

    c.train = ml_collections.ConfigDict()
    c.train.iterations = 50_000
    c.train.batch_size = 60
    c.train.optimizer = "adam"
    c.train.learning_rate = 1.2e-3
    c.train.momentum = 0.9
    c.train.weight_decay = 0.0
    c.train.lr_drops = ()
    c.train.lr_drop_factor = 0.1
    c.train.warmup_iterations = 0
    c.train.eval_every = 100
    # The test curve: measured at every this many evaluations (1 = every evaluation, the paper's
    # protocol; 0 = never). Test accuracy at early stop and at the end is measured regardless.
    c.train.test_every_evals = 1
    c.train.eval_batch_size = 2500

    c.prune = ml_collections.ConfigDict()
    c.prune.strategy = "paper"
    c.prune.rules = ()
    c.prune.global_rate = 0.0
    c.prune.levels = 16
    c.prune.one_shot = False
    c.prune.rewind_iteration = 0

    c.controls = ml_collections.ConfigDict()
    c.controls.reinit = True
    c.controls.random_prune = True

    c.runtime = ml_collections.ConfigDict()
    c.runtime.devices = 0             # how many devices to use (0 = all)
    c.runtime.data_parallel = False   # split each batch over the devices (one large run, e.g. VGG-19)
    c.runtime.distributed = False     # several processes (hosts): jax.distributed.initialize()
    c.runtime.coordinator_address = ""  # "host:port" of process 0 ("" = JAX detects it)
    c.runtime.num_processes = 0       # how many processes (0 = JAX detects it)
    c.runtime.process_id = -1         # this process's index (-1 = JAX detects it)
    c.runtime.process_timeout_seconds = 60.0  # a silent process is waited for this long
    c.runtime.matmul_precision = "auto"  # auto (highest on CPU, default on GPU/TPU) | default | high | highest
    c.runtime.checkpoint_minutes = 10.0  # intra-level checkpoint every this often (0 = level ends only)
    c.runtime.chunk_seconds = 4.0     # each chunk of a level trains about this long: a stop waits for it
    c.runtime.stop_wait_seconds = 8.0  # ... at most this long (twice chunk_seconds), then gives it up
    c.runtime.slice_iterations = 0    # a chunk is whole slices of this many steps (0 = auto)
    c.runtime.progress_seconds = 30.0  # at most one progress line per this many seconds
    return c


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


#: Fields a config may add to ``base_config()``'s. Not in it, so that adding them did not change
#: the experiment identity (``workdir.identity``) of the configs that do not set them.
OPTIONAL_FIELDS: dict[str, tuple[str, ...]] = {"dataset": ("train_subset",)}


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
            unknown = sorted(set(c[group].keys()) - set(expected[group].keys())
                             - set(OPTIONAL_FIELDS.get(group, ())))
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
    if "train_subset" in c.dataset:  # optional: see the module docstring
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
    for field in ("data_parallel", "distributed"):
        if not isinstance(c.runtime[field], bool):
            _fail(f"runtime.{field}", f"must be True or False, got {c.runtime[field]!r}")
    for field in ("reinit", "random_prune"):
        if not isinstance(c.controls[field], bool):
            _fail(f"controls.{field}", f"must be True or False, got {c.controls[field]!r}")
    if not isinstance(p.one_shot, bool):
        _fail("prune.one_shot", f"must be True or False, got {p.one_shot!r}")
