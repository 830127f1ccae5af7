"""What an experiment is built from a config: model, data, pruning rules and trainer, and its keys.

``setup`` validates a config, loads the data and builds an ``Experiment``; ``trial_key`` gives the
key of every random draw of it (one root key, split by trial, purpose and level), so any run is
reproducible bit for bit on a CPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import jax
import ml_collections

from lth_jax import config as config_lib
from lth_jax import data as data_lib
from lth_jax import masks as masks_lib
from lth_jax import models
from lth_jax import pruning
from lth_jax import structured
from lth_jax import train as train_lib
from lth_jax import workdir as workdir_lib

PyTree = Any
# Key purposes: every random draw of an experiment is fold_in(fold_in(root, trial), purpose) [, level].
INIT, DATA, NOISE, REINIT, RANDOM_MASK = range(5)
#: The workdir or a checkpoint cannot be used for this experiment (one-line message).
ExperimentError = workdir_lib.WorkdirError


class Stopped(Exception):
    """The run stopped at a safe point because a stop was asked for (SIGINT/SIGTERM in ``cli``).

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
    return config_lib.to_json(config)


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
    identity: str             # config.identity of the config: in every record and checkpoint
    #: What the model, trainer and data shapes are built from (``setup``: a digest of the config's
    #: model, train and dataset sections and the dataset loaded); experiments with equal keys
    #: share compiled programs in a process (``runner.PROGRAM_CACHE_SIZE``). "" = share nothing:
    #: set it to "" in an Experiment whose model or trainer was changed by hand.
    programs_key: str = ""

    def init_variables(self, key: jax.Array) -> dict:
        """Fresh variables ``{'params', 'batch_stats'}`` from D_θ (batch_stats {} without BN)."""
        v = models.init(self.model, key, self.input_shape)
        return {"params": v["params"], "batch_stats": v.get("batch_stats", {})}

    @property
    def retrain(self) -> str:
        """``prune.retrain``: weight_rewinding | lr_rewinding | fine_tuning."""
        return str(self.config.prune.retrain)

    @property
    def retrain_start(self) -> int:
        """The iteration from which the pruned levels train: k under weight rewinding (the
        schedule replayed from θ_k), ``iterations − retrain_iterations`` under learning-rate
        rewinding and fine-tuning (the last t iterations)."""
        if self.retrain == "weight_rewinding":
            return int(self.config.prune.rewind_iteration)
        return int(self.config.train.iterations) - int(self.config.prune.retrain_iterations)

    def retraining(self) -> "Experiment":
        """The experiment that trains the pruned levels: this one, except under fine-tuning,
        whose trainer keeps the schedule's final learning rate ``lr(T − 1)`` at every step."""
        if self.retrain != "fine_tuning":
            return self
        final = float(self.trainer.lr(self.trainer.iterations - 1))
        trainer = dataclasses.replace(self.trainer, lr=train_lib.constant_schedule(final))
        return dataclasses.replace(self, trainer=trainer, programs_key=self.programs_key
                                   and f"{self.programs_key}:fine_tuning")


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
                      identity=config_lib.identity(resolved),
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


def trial_key(seed: int, trial: int, purpose: int, level: int | None = None) -> jax.Array:
    """The key for one purpose of one trial (and level): same seed, same draws, on any machine."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), trial), purpose)
    return key if level is None else jax.random.fold_in(key, level)
