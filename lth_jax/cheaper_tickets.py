r"""Cheaper tickets: what IMP's full trainings buy, against one-shot, early-bird and pruning at init.

    python -m lth_jax.cheaper_tickets --config=experiments/cheaper_tickets/config.py \
        --workdir=runs/cheaper_tickets --tickets=runs/lenet_fashion_mnist \
        [--densities=0.513,0.211,0.07,0.036] [--methods=imp,oneshot,earlybird,snip,grasp,synflow,random]

``--tickets`` is a finished (or partly finished) lottery workdir of the same config (``lth_jax.main``
with iterative pruning). For each trial and each target density, every method finds a mask; all
masks of a trial (methods × densities, with their layerwise shuffles) then train together in one
program from the lottery's θ₀ (θ_k when it rewound to k), with the trial's data order and noise —
the same start, data and training as the lottery's tickets, so the runs compare on equal terms.

Methods (``METHODS``), and the cost of finding the mask:

* ``imp``: the lottery's ticket mask of the level whose density is closest to the target (by
  ``|log(density/target)|``); the record states the level and its actual density. Cost: the
  trainings that made it, one per level before it — ``iterations + (L − 1)·(iterations − k)``
  model-steps for level L ≥ 1 (level 0 trains from 0, later levels from k).
* ``oneshot``: ``scores.magnitude`` of the lottery's trained dense network (level 0) to the target,
  with IMP's allocation (below); rewound like IMP. Cost: one training, ``iterations`` model-steps.
* ``earlybird`` (You et al., ICLR 2020): the dense network trains from θ₀ (the lottery's level-0
  trajectory: same θ₀ and keys) in chunks of ``early_bird_every`` evaluation periods; after each
  chunk, ``scores.magnitude`` of the current weights at each target density (IMP's allocation) is
  fed to that density's detector (``scores.early_bird_update``, ε = ``early_bird_epsilon`` = 0.1,
  window W = ``early_bird_window`` = 5: fire when W consecutive distances between consecutive masks
  are below ε). Training stops when every density's detector has fired. Cost: the iterations trained
  when it fired (``max(·, k)`` with rewinding); a detector that never fires takes the last mask and
  costs the whole training (``early_bird.found`` is false). Note: the normalised Hamming distance of
  two masks of density p is at most ``2·min(p, 1−p)``, so below density ε/2 the detector fires at
  its (W+1)-th mask whatever the training does.
* ``snip`` / ``grasp`` / ``synflow``: ``scores.snip`` / ``grasp`` / ``synflow`` of θ₀ (θ_k with
  rewinding), global allocation over all prunable weights as in their papers (``allocation``
  "global"; "lottery" gives IMP's). SNIP and GraSP score on the trial's first ``score_batches``
  training batches (the batches its training sees first, augmented alike), in training mode (batch
  statistics of each batch; one dropout draw, the same for every batch); GraSP divides the logits by ``grasp_temperature`` = 200 as the authors'
  code does. SynFlow: ``synflow_rounds`` = 100 rounds. Cost, counted as forward+backward passes:
  SNIP one per batch (``score_batches`` passes of a training batch); GraSP one per batch for g plus
  one forward-over-reverse ``jvp`` of the gradient per batch for Hg, counted as two, so
  ``3·score_batches`` passes; SynFlow one per round on a single all-ones example. In model-steps
  (one pass over a training batch ≈ one step): ``cost = cost_model_steps + cost_examples /
  batch_size`` — SNIP 10, GraSP 30, SynFlow 100/60 ≈ 1.7 with the defaults and batch 60 (plus k
  with rewinding: θ_k takes k steps). Evaluation passes and the mask selection (a sort) are not
  counted, for any method.
* ``random``: ``pruning.random_like`` of the IMP mask with the key of the lottery's random-pruning
  control at that level, so it *is* that control's mask (IMP's per-layer counts at random
  positions); it is also IMP's layerwise shuffle, so IMP gets no separate ``imp+shuffle``. Cost 0
  (+k) under a layerwise strategy, where the per-layer counts follow from the rates alone; under a
  global strategy IMP's per-layer counts come out of IMP's trainings, so it is charged IMP's cost.

IMP's allocation (``oneshot``, ``earlybird``, and ``allocation="lottery"``): the lottery's strategy
at the target density. Global strategy: one magnitude ranking over the leaves the rules prune.
Layerwise strategy: leaf l keeps ``(1 − r_l)^x`` of its weights, with one real ``x`` for all leaves
solved so that the total is the target (x = L gives level L's proportions); so a layer's share
follows the rules' rates as IMP's does, at any density.

The layerwise-shuffle sanity check (Frankle et al., ICLR 2021): every mask but IMP's and random's
is also trained shuffled, ``pruning.random_like(key, mask)`` — the same count per layer at random
positions — as method ``"<name>+shuffle"``; its cost is its source's.

Per run, a record in ``WORKDIR/cheaper_tickets.jsonl`` (appended when the trial's program finishes):
``trial``, ``target_density``, ``method``, ``source`` (the unshuffled method), ``density`` (achieved,
of the prunable weights), ``alive`` and ``layer_alive`` (counts), ``layer_density``, ``imp_level``
and ``imp_density`` (the IMP level matched to the target), ``status`` ("ok"; "diverged" when a
training loss was non-finite or no validation loss was), ``early_stop_iteration``,
``test_accuracy_at_early_stop``, ``final_test_accuracy``, ``cost_model_steps``,
``cost_fwd_bwd_passes``, ``cost_examples``, ``cost`` (model-step equivalents), ``imp_cost``,
``early_bird`` (for early-bird runs), ``mask_file`` (the mask, ``masks.save`` format, under
``WORKDIR/cheaper_tickets_masks/``), the evaluation curves and ``train_seconds``. A rerun of the
same command skips the (trial, target density, method) groups already recorded; another config,
lottery or method setting in the same workdir is refused. ``WORKDIR/cheaper_tickets.md`` holds the
tables (rows = density; accuracy and gap to IMP, shuffles, cost as a fraction of IMP's, every
run), ``cheaper_tickets_accuracy_vs_density.png`` and ``cheaper_tickets_accuracy_vs_cost.png`` the
plots.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lth_jax import data as data_lib
from lth_jax import lottery
from lth_jax import masks as masks_lib
from lth_jax import pruning
from lth_jax import scores
from lth_jax import train as train_lib
from lth_jax import workdir as workdir_lib

PyTree = Any

METHODS = ("imp", "oneshot", "earlybird", "snip", "grasp", "synflow", "random")
#: Methods trained also with their mask shuffled within each layer. IMP's shuffle is ``random``;
#: a shuffle of ``random`` is another random mask of the same counts (nothing to learn from it).
SHUFFLED = ("oneshot", "earlybird", "snip", "grasp", "synflow")
DENSITIES = (0.513, 0.211, 0.07, 0.036)
ALLOCATIONS = ("global", "lottery")
LABELS = {"imp": "IMP", "oneshot": "one-shot", "earlybird": "early-bird", "snip": "SNIP",
          "grasp": "GraSP", "synflow": "SynFlow", "random": "random"}

RECORDS = "cheaper_tickets.jsonl"
MASKS = "cheaper_tickets_masks"
CONFIG = "cheaper_tickets_config.json"
REPORT = "cheaper_tickets.md"
DENSITY_PLOT = "cheaper_tickets_accuracy_vs_density.png"
COST_PLOT = "cheaper_tickets_accuracy_vs_cost.png"

#: Key purposes of this mode, apart from the lottery's (0..4): shuffles and score batches' dropout.
SHUFFLE, SCORE_NOISE = 100, 101
#: Config fields that may differ from the lottery's: they do not change θ₀, the training or IMP.
_FREE_FIELDS = ("runtime.", "trials", "controls.", "prune.levels")


@dataclasses.dataclass(frozen=True)
class Options:
    """The methods' settings (defaults as in the papers; see the module docstring).

    Attributes:
      score_batches: training batches SNIP and GraSP score on.
      grasp_temperature: GraSP's logits are divided by it (the authors' code: 200).
      synflow_rounds: SynFlow's rounds of scoring and pruning.
      early_bird_epsilon, early_bird_window: the early-bird detector's ε and W.
      early_bird_every: evaluation periods between two masks fed to the early-bird detector.
      allocation: SNIP/GraSP/SynFlow: "global" (one ranking over all prunable weights) or "lottery"
        (IMP's allocation).
      shuffle: also train the layerwise-shuffled masks.
    """
    score_batches: int = 10
    grasp_temperature: float = 200.0
    synflow_rounds: int = scores.SYNFLOW_ROUNDS
    early_bird_epsilon: float = scores.EARLY_BIRD_EPSILON
    early_bird_window: int = scores.EARLY_BIRD_WINDOW
    early_bird_every: int = 1
    allocation: str = "global"
    shuffle: bool = True

    def check(self) -> None:
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}")
        for name in ("score_batches", "synflow_rounds", "early_bird_window", "early_bird_every"):
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not self.early_bird_epsilon >= 0:
            raise ValueError(f"early_bird_epsilon must be >= 0, got {self.early_bird_epsilon!r}")
        if not self.grasp_temperature > 0:
            raise ValueError(f"grasp_temperature must be > 0, got {self.grasp_temperature!r}")


# ----------------------------------------------------------------------------- allocation

@dataclasses.dataclass(frozen=True)
class Allocation:
    """How a mask at a target density is spread over the leaves: ``mask_from_scores``'s
    ``density`` (a scalar, or a per-leaf PyTree), ``prunable`` (Python bools) and ``allocation``."""
    density: Any
    prunable: PyTree
    allocation: str


def lottery_allocation(exp: lottery.Experiment, target: float) -> Allocation:
    """IMP's allocation at ``target`` (a fraction of the prunable weights; see the module docstring).

    Global strategy: the leaves with a rate > 0 are pooled, at the density that makes the total
    ``target`` (prunable leaves with rate 0 keep all their weights). Layerwise strategy: leaf l
    gets ``(1 − r_l)^x``, x solved by bisection so that ``Σ n_l·(1 − r_l)^x = target·total``.
    Raises ValueError when the exempt leaves alone exceed ``target``.
    """
    shapes = jax.eval_shape(lambda: exp.init_variables(jax.random.key(0)))["params"]
    sizes = [math.prod(s.shape) for s in jax.tree.leaves(shapes)]
    use = [bool(p) for p in jax.tree.leaves(exp.prunable)]
    rates = [float(r) if u else 0.0 for r, u in zip(jax.tree.leaves(exp.rates), use)]
    total = sum(n for n, u in zip(sizes, use) if u)
    exempt = sum(n for n, u, r in zip(sizes, use, rates) if u and r == 0)
    if target * total < exempt:
        raise ValueError(f"target density {target} is below the share of the weights the pruning "
                         f"rules never prune ({exempt / total:.4f})")
    treedef = jax.tree.structure(exp.prunable)
    if exp.strategy == "global":
        pool = [u and r > 0 for u, r in zip(use, rates)]
        pooled = sum(n for n, p in zip(sizes, pool) if p)
        density = min(1.0, (target * total - exempt) / pooled) if pooled else 1.0
        return Allocation(density, jax.tree.unflatten(treedef, pool), "global")

    def kept(x: float) -> float:
        return exempt + sum(n * (1.0 - r) ** x for n, u, r in zip(sizes, use, rates) if u and r > 0)

    lo, hi = 0.0, 1.0
    while kept(hi) > target * total and hi < 1e6:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if kept(mid) > target * total else (lo, mid)
    x = 0.5 * (lo + hi)
    densities = [(1.0 - r) ** x if u and r > 0 else 1.0 for u, r in zip(use, rates)]
    return Allocation(jax.tree.unflatten(treedef, densities), exp.prunable, "layerwise")


def global_allocation(exp: lottery.Experiment, target: float) -> Allocation:
    """One ranking over all prunable weights: exactly ``round(target · total)`` survive."""
    return Allocation(float(target), exp.prunable, "global")


# ----------------------------------------------------------------------------- finding masks

class Finder:
    """The mask-finding methods of one experiment, jitted once (densities are traced arguments)."""

    def __init__(self, exp: lottery.Experiment, options: Options):
        self.exp, self.options = exp, options
        model = exp.model

        def apply(params, batch_stats, x, train, dropout_key):
            variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
            if train and batch_stats:  # batch statistics of the batch, as in training
                return model.apply(variables, x, train=True, rngs={"dropout": dropout_key},
                                   mutable=["batch_stats"])[0]
            return model.apply(variables, x, train=train, rngs={"dropout": dropout_key})

        def loss_fn(batch_stats, key, temperature):
            def loss(params, batch):
                x, y = batch
                logits = apply(params, batch_stats, x, True, key)
                return jnp.mean(train_lib.cross_entropy(logits / temperature, y))
            return loss

        ones = lambda p: masks_lib.ones_like(p)
        self._snip_scores = jax.jit(lambda p, s, batches, key: scores.snip_scores(
            loss_fn(s, key, 1.0), p, ones(p), batches))
        self._grasp_scores = jax.jit(lambda p, s, batches, key: scores.grasp_scores(
            loss_fn(s, key, float(options.grasp_temperature)), p, ones(p), batches, exp.prunable))
        self._abs = jax.jit(lambda p: jax.tree.map(jnp.abs, p))
        # Jitted: eager, every sort of random_like and every op of the batch gathering would be
        # compiled on its own (dozens of small compilations).
        self._random_like = jax.jit(pruning.random_like)
        self._batches = jax.jit(self._score_batches)
        self._select: dict[tuple, Callable] = {}
        self._feed: dict[tuple, Callable] = {}
        self._early: tuple | None = None
        self._synflow: dict[tuple, Callable] = {}
        self._apply = apply

    # -- selection at a target, one compiled program per allocation kind

    def _kind(self, a: Allocation) -> tuple:
        return (a.allocation, jax.tree.structure(a.density), tuple(jax.tree.leaves(a.prunable)))

    def select(self, score_tree: PyTree, a: Allocation) -> PyTree:
        """``mask_from_scores`` of a dense mask at the allocation ``a`` (numpy bool tree)."""
        kind = self._kind(a)
        if kind not in self._select:
            self._select[kind] = jax.jit(lambda s, d: scores.mask_from_scores(
                s, masks_lib.ones_like(s), d, a.prunable, a.allocation))
        return _numpy(self._select[kind](score_tree, a.density))

    def magnitude(self, params: PyTree, a: Allocation) -> PyTree:
        return self.select(self._abs(params), a)

    # -- pruning at initialisation

    def random_like(self, key: jax.Array, mask: PyTree) -> PyTree:
        """``pruning.random_like`` (numpy bool tree)."""
        return _numpy(self._random_like(key, mask))

    def score_batches(self, data_key: jax.Array, noise_key: jax.Array) -> tuple:
        """The trial's first ``score_batches`` training batches, as its training sees them:
        ``(x, y)`` with a leading axis of batches."""
        return self._batches(data_key, noise_key)

    def _score_batches(self, data_key: jax.Array, noise_key: jax.Array) -> tuple:
        exp, n = self.exp, int(self.options.score_batches)
        steps = jnp.arange(n, dtype=jnp.int32)
        n_train, bs = exp.data.train_labels.shape[0], exp.trainer.batch_size
        idx = jax.vmap(lambda t: data_lib.batch_indices(data_key, t, n_train, bs))(steps)
        x, y = exp.data.train_images[idx], exp.data.train_labels[idx]
        if exp.trainer.augment:  # the augmentation of step t in training (train.advance)
            x = jax.vmap(lambda t, xi: data_lib.augment(jax.random.fold_in(noise_key, 2 * t + 1),
                                                         xi))(steps, x)
        return x, y

    def snip_scores(self, params, batch_stats, batches, key) -> PyTree:
        return self._snip_scores(params, batch_stats, batches, key)

    def grasp_scores(self, params, batch_stats, batches, key) -> PyTree:
        """``−S`` (GraSP removes the largest ``S = −θ ⊙ Hg``: ``select`` keeps the highest)."""
        return jax.tree.map(jnp.negative, self._grasp_scores(params, batch_stats, batches, key))

    def synflow(self, params: PyTree, batch_stats: PyTree, a: Allocation) -> PyTree:
        kind = self._kind(a)
        if kind not in self._synflow:
            apply = lambda p, x: self._apply(p, batch_stats, x, False, jax.random.key(0))
            self._synflow[kind] = jax.jit(lambda p, d: scores.synflow(
                apply, p, masks_lib.ones_like(p), d, a.prunable, input_shape=self.exp.input_shape,
                rounds=int(self.options.synflow_rounds), allocation=a.allocation))
        return _numpy(self._synflow[kind](params, a.density))

    # -- early-bird

    def early_bird(self, params: PyTree, batch_stats: PyTree, data_key: jax.Array,
                   noise_key: jax.Array, allocations: Sequence[Allocation], log=print
                   ) -> list[dict]:
        """Train the dense network from ``params`` (θ₀) until the early-bird detector of every
        allocation has fired (or training ends). Returns per allocation ``{"mask", "found",
        "iteration"}``: the ticket, whether it fired, and the iteration of the mask it took."""
        exp, o = self.exp, self.options
        trainer = exp.trainer
        stack = lambda tree: jax.tree.map(lambda x: jnp.asarray(x)[None], tree)
        if self._early is None:  # compiled once, for every trial
            # Batched as the Runner batches (map on CPUs): this is the lottery's level-0 run.
            batching = "map" if jax.devices()[0].platform == "cpu" else "vmap"
            self._early = (train_lib.make_chunk_fn(trainer, start=0, batching=batching),
                           jax.jit(jax.vmap(lambda p, s: train_lib.init_run(trainer, p, s, 0))))
        chunk, init = self._early
        state = init(stack(params), stack(batch_stats))
        dense = stack(masks_lib.ones_like(params))
        kinds = tuple(self._kind(a) for a in allocations)
        if kinds not in self._feed:
            eps, window = float(o.early_bird_epsilon), int(o.early_bird_window)

            def feed(states, p, densities):
                out = []
                for st, a, d in zip(states, allocations, densities):
                    m = scores.mask_from_scores(jax.tree.map(jnp.abs, p), masks_lib.ones_like(p),
                                                d, a.prunable, a.allocation)
                    out.append(scores.early_bird_update(st, m, exp.prunable, eps, window))
                return out

            self._feed[kinds] = jax.jit(feed)
        feed = self._feed[kinds]

        states = [scores.early_bird_init(masks_lib.ones_like(params)) for _ in allocations]
        densities = [a.density for a in allocations]
        # exp.trainer's slice is a whole evaluation period: the chunk counts periods here.
        periods, period, fed = train_lib.num_periods(trainer, 0), 0, []
        while period < periods:
            count = min(int(o.early_bird_every), periods - period)
            state = chunk(exp.data, state, dense, data_key[None], noise_key[None],
                          np.int32(period), np.int32(count))
            period += count
            fed.append(period * trainer.eval_every)
            states = feed(states, jax.tree.map(lambda x: x[0], state.train.params), densities)
            if all(bool(s.found) for s in states):
                break
        log(f"  early-bird: trained {fed[-1]:,} of {trainer.iterations:,} iterations, "
            + ", ".join(f"{'found at ' + format(fed[int(s.found_at)], ',') if bool(s.found) else 'not found'}"
                        for s in states))
        return [{"mask": _numpy(s.ticket), "found": bool(s.found),
                 "iteration": fed[int(s.found_at)] if bool(s.found) else fed[-1]} for s in states]


# ----------------------------------------------------------------------------- the lottery's side

def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_tickets(config: ml_collections.ConfigDict, saved: dict, tickets: str) -> None:
    """Refuse a lottery that does not match ``config`` (ValueError naming the fields): everything
    but ``runtime.*``, ``trials``, ``controls.*`` and ``prune.levels`` must be equal, the lottery must
    be iterative and have at least ``config.trials`` trials."""
    mine = _flatten(json.loads(json.dumps(config.to_dict())))
    theirs = _flatten(saved["config"])
    diffs = [k for k in sorted(set(mine) | set(theirs))
             if not k.startswith(_FREE_FIELDS) and mine.get(k, "<missing>") != theirs.get(k, "<missing>")]
    if diffs:
        shown = "; ".join(f"{k}: tickets have {theirs.get(k, '<missing>')!r}, config has "
                          f"{mine.get(k, '<missing>')!r}" for k in diffs[:5])
        raise ValueError(f"--tickets {tickets} was made with another config ({shown}); use the "
                         "lottery's config")
    if theirs.get("prune.one_shot"):
        raise ValueError(f"--tickets {tickets} is a one-shot lottery (prune.one_shot); IMP's masks "
                         "and costs need an iterative one")
    have = int(theirs.get("trials", 1))
    if int(config.trials) > have:
        raise ValueError(f"config.trials={config.trials}, but --tickets {tickets} has {have} trial(s)")


def imp_levels(saved: dict, trial: int, prunable: PyTree) -> dict[int, float]:
    """{level: density} of the trial's IMP masks that are usable: the level is saved and the
    trial's ticket trained "ok" at every level before it (a later mask of a diverged ticket is
    not a ticket)."""
    status = {r["level"]: r.get("status", "ok") for r in saved["records"]
              if r["trial"] == trial and r["variant"] == "ticket"}
    out = {}
    for level in sorted(saved["levels"]):
        if any(status.get(lv) != "ok" for lv in range(level)):
            break
        mask = jax.tree.map(lambda x: np.asarray(x[trial], bool), saved["levels"][level]["mask"])
        out[level] = _density(mask, prunable)
    return out


def closest_level(levels: dict[int, float], target: float) -> int:
    """The level whose density is closest to ``target`` in ratio (``|log(d / target)|``)."""
    if not levels:
        raise ValueError("the lottery has no usable level")
    return min(levels, key=lambda lv: (abs(math.log(levels[lv] / target)), lv))


def imp_cost(level: int, iterations: int, k: int) -> int:
    """Model-steps of the trainings that make IMP's level-``level`` mask: level 0 trains from 0,
    levels 1..L−1 from k; level L's mask prunes level L−1's trained weights."""
    return 0 if level == 0 else iterations + (level - 1) * (iterations - k)


# ----------------------------------------------------------------------------- the experiment

def shuffle_key(seed: int, trial: int, method: str, target: float) -> jax.Array:
    """The key of a shuffled mask: per trial, method and target density (not its list position)."""
    key = lottery.trial_key(seed, trial, SHUFFLE, METHODS.index(method))
    return jax.random.fold_in(key, int(round(target * 1e6)))


def run(config: ml_collections.ConfigDict, workdir: str, *, tickets: str,
        densities: Sequence[float] = DENSITIES, methods: Sequence[str] = METHODS,
        options: Options = Options(), log: Callable[[str], None] = print) -> list[dict]:
    """Run (or resume) the cheaper-tickets experiment in ``workdir``; returns all its records.

    Args:
      config: the lottery's config (``trials`` may be fewer; ``runtime.*`` may differ).
      workdir: where ``cheaper_tickets.jsonl``, its config, the table and the plots go.
      tickets: the lottery workdir whose θ₀ (θ_k), masks and trained dense network are used.
      densities: target fractions of the prunable weights, in (0, 1).
      methods: a subset of ``METHODS``.
      options: the methods' settings.
      log: progress lines.
    Raises:
      ValueError: unknown method, bad density or option, a lottery of another config, or a
        workdir holding another cheaper-tickets experiment.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown}; methods are {', '.join(METHODS)}")
    methods = [m for m in METHODS if m in methods]
    densities = sorted({float(d) for d in densities}, reverse=True)
    if not densities or not all(0.0 < d < 1.0 for d in densities):
        raise ValueError(f"target densities must be in (0, 1), got {densities}")
    options.check()
    if not tickets:
        raise ValueError("--tickets=LOTTERY_WORKDIR is needed: θ₀ and IMP's masks come from it")
    saved = workdir_lib.load_experiment(tickets)
    check_tickets(config, saved, tickets)
    exp = lottery.setup(config)
    if exp.strategy not in ("layerwise", "global"):
        raise ValueError(f"config.prune.strategy: {config.prune.strategy!r}; the cheaper-tickets "
                         "methods rank single weights, so the lottery must prune by magnitude "
                         "(layerwise or global)")
    k = int(config.prune.rewind_iteration)
    iterations = exp.trainer.iterations
    if 0 not in saved["levels"] and ({"oneshot"} & set(methods)):
        raise ValueError(f"--tickets {tickets} has no finished level 0 (one-shot needs it)")

    os.makedirs(workdir, exist_ok=True)
    identity = {"config": {k_: v for k_, v in _flatten(json.loads(json.dumps(config.to_dict()))).items()
                           if not k_.startswith(("runtime.", "trials"))},
                "tickets": workdir_lib.identity(saved["config"]),
                "options": dataclasses.asdict(options)}
    path = os.path.join(workdir, CONFIG)
    if os.path.exists(path):
        with open(path) as f:
            if json.load(f) != identity:
                raise ValueError(f"{workdir} holds another cheaper-tickets experiment (another "
                                 "config, lottery or method setting); use another --workdir")
    else:
        workdir_lib.write_json_atomically(path, identity)

    records = read_records(workdir)
    have = {(r["trial"], r["target_density"], r["method"]) for r in records}
    # A group is done when its run and (if it has one) its shuffled run are recorded.
    done = {(t, d, m) for t, d, m in have if not (options.shuffle and m in SHUFFLED)
            or (t, d, f"{m}+shuffle") in have}
    seed, trials = int(config.seed), int(config.trials)
    finder = Finder(exp, options)
    runner = lottery.Runner(exp, int(config.runtime.devices), "auto")
    log(f"cheaper tickets: {config.model.name} on {exp.dataset_info.name}, {trials} trial(s), "
        f"densities {', '.join(f'{100 * d:g}%' for d in densities)}, methods {', '.join(methods)}"
        f"{' (+ shuffles)' if options.shuffle else ''}; tickets {tickets}; workdir {workdir}")
    for trial in range(trials):
        todo = [(d, m) for d in densities for m in methods if (trial, d, m) not in done]
        if not todo:
            continue
        runs = find_masks(exp, saved, trial, todo, options, finder=finder, log=log)
        # The masks first, then the records: a record's mask file always exists.
        os.makedirs(os.path.join(workdir, MASKS), exist_ok=True)
        for r in runs:
            r["mask_file"] = mask_file(trial, r["target"], r["method"])
            masks_lib.save(os.path.join(workdir, r["mask_file"]), r["mask"])
        t0 = time.monotonic()
        stack = lambda trees: jax.tree.map(lambda *xs: np.stack(xs), *trees)
        start = saved["theta_rewind"]
        params = jax.tree.map(lambda x: np.asarray(x[trial]), start["params"])
        stats = jax.tree.map(lambda x: np.asarray(x[trial]), start.get("batch_stats", {}))
        masks = stack([r["mask"] for r in runs])
        n = len(runs)
        log(f"trial {trial}: training {n} runs together from iteration {k:,}")
        result = runner(jax.tree.map(lambda m, p: np.where(m, p, 0).astype(p.dtype), masks,
                                     stack([params] * n)),
                        stack([stats] * n),
                        masks,
                        jnp.stack([lottery.trial_key(seed, trial, lottery.DATA)] * n),
                        jnp.stack([lottery.trial_key(seed, trial, lottery.NOISE)] * n),
                        start=k, capture=-1)
        seconds = time.monotonic() - t0
        new = [_record(exp, result, i, r, trial=trial, start=k, seconds=seconds, runs=n,
                       iterations=iterations) for i, r in enumerate(runs)]
        _append(workdir, new)
        records += new
        for r in new:
            acc = r["test_accuracy_at_early_stop"]
            log(f"trial {trial} target {100 * r['target_density']:5.1f}% {r['method']:<18} "
                f"density {100 * r['density']:6.2f}%  test acc at early stop "
                f"{'diverged' if acc is None else f'{100 * acc:.2f}%'}  cost {r['cost']:,.1f} "
                f"model-steps ({r['cost'] / max(r['imp_cost'], 1e-9):.3f} of IMP's)")
    write_report(workdir, records)
    return records


def mask_file(trial: int, target: float, method: str) -> str:
    """Where a run's mask is saved (``masks.save`` format), relative to the workdir."""
    return os.path.join(MASKS, f"trial{trial}_{target:g}_{method}.npz")


def find_masks(exp: lottery.Experiment, saved: dict, trial: int,
               groups: Sequence[tuple[float, str]], options: Options = Options(), *,
               finder: Finder | None = None, log: Callable[[str], None] = print) -> list[dict]:
    """The masks of one trial's (target density, method) ``groups``, with their costs.

    Args:
      exp: ``lottery.setup`` of the lottery's config.
      saved: ``workdir.load_experiment`` of the lottery (θ₀, θ_rewind, level masks, records).
      trial: the trial (its θ₀, keys and IMP masks).
      groups: (target density, method) pairs, method in ``METHODS``.
      options: the methods' settings; ``finder``: a ``Finder(exp, options)`` to reuse (its
        compiled programs).
    Returns:
      One dict per run, by target (descending) then ``METHODS`` order, each shuffled variant after
      its source: ``mask`` (numpy bool tree), ``method``, ``source``, ``target``, ``imp_level``,
      ``imp_density``, ``imp_cost``, ``cost_model_steps``, ``cost_fwd_bwd_passes``,
      ``cost_examples``, ``cost`` and, for early-bird, ``early_bird``.
    """
    finder = finder or Finder(exp, options)
    todo = set(groups)
    seed, k = int(exp.config.seed), int(exp.config.prune.rewind_iteration)
    at_init = global_allocation if options.allocation == "global" else lottery_allocation
    iterations = exp.trainer.iterations
    levels = imp_levels(saved, trial, exp.prunable)
    theta = saved["theta_rewind"]
    params = jax.tree.map(lambda x: np.asarray(x[trial]), theta["params"])
    stats = jax.tree.map(lambda x: np.asarray(x[trial]), theta.get("batch_stats", {}))
    theta0 = saved["theta0"]
    data_key = lottery.trial_key(seed, trial, lottery.DATA)
    noise_key = lottery.trial_key(seed, trial, lottery.NOISE)
    layerwise = exp.strategy == "layerwise"
    methods = {m for _, m in todo}
    if methods - set(METHODS):
        raise ValueError(f"unknown method(s) {sorted(methods - set(METHODS))}")
    targets = sorted({d for d, _ in todo}, reverse=True)

    def level_mask(level: int) -> PyTree:
        return jax.tree.map(lambda x: np.asarray(x[trial], bool), saved["levels"][level]["mask"])

    batches = score = None
    if methods & {"snip", "grasp"}:
        batches = finder.score_batches(data_key, noise_key)
        score_key = lottery.trial_key(seed, trial, SCORE_NOISE)
        score = {m: getattr(finder, f"{m}_scores")(params, stats, batches, score_key)
                 for m in ("snip", "grasp") if m in methods}
    early = {}
    if "earlybird" in methods:
        eb_targets = [d for d in targets if (d, "earlybird") in todo]
        theta0_t = jax.tree.map(lambda x: np.asarray(x[trial]), theta0)
        found = finder.early_bird(theta0_t["params"], theta0_t.get("batch_stats", {}), data_key,
                                  noise_key, [lottery_allocation(exp, d) for d in eb_targets],
                                  log=lambda line: log(f"trial {trial}:{line}"))
        early = dict(zip(eb_targets, found))
    if "oneshot" in methods:
        trained = jax.tree.map(lambda x: np.asarray(x[trial]), saved["levels"][0]["trained_params"])
        if 0 not in levels or not np.all([np.isfinite(x).all() for x in jax.tree.leaves(trained)]):
            raise ValueError(f"trial {trial} of the lottery has no trained dense network (level 0 "
                             "diverged or is missing)")

    B = exp.trainer.batch_size
    runs = []
    for target in targets:
        level = closest_level(levels, target)
        imp_mask = level_mask(level)
        base = {"target": target, "imp_level": level, "imp_density": levels[level],
                "imp_cost": imp_cost(level, iterations, k)}
        for method in METHODS:
            if (target, method) not in todo:
                continue
            steps, passes, examples, extra = k, 0, 0, {}
            if method == "imp":
                mask, steps = imp_mask, imp_cost(level, iterations, k)
            elif method == "random":
                mask = finder.random_like(
                    lottery.trial_key(seed, trial, lottery.RANDOM_MASK, level), imp_mask)
                steps = k if layerwise else imp_cost(level, iterations, k)
            elif method == "oneshot":
                mask, steps = finder.magnitude(trained, lottery_allocation(exp, target)), iterations
            elif method == "earlybird":
                eb = early[target]
                mask, steps = eb["mask"], max(eb["iteration"], k)
                extra = {"early_bird": {"found": eb["found"], "iteration": eb["iteration"],
                                        "epsilon": float(options.early_bird_epsilon),
                                        "window": int(options.early_bird_window),
                                        "every_iterations": int(options.early_bird_every)
                                        * exp.trainer.eval_every}}
            elif method in ("snip", "grasp"):
                mask = finder.select(score[method], at_init(exp, target))
                passes = options.score_batches * (1 if method == "snip" else 3)
                examples = passes * B
            else:  # synflow
                mask = finder.synflow(params, stats, at_init(exp, target))
                passes = examples = int(options.synflow_rounds)
            cost = {"cost_model_steps": int(steps), "cost_fwd_bwd_passes": int(passes),
                    "cost_examples": int(examples), "cost": steps + examples / B}
            runs.append({**base, **cost, **extra, "method": method, "source": method, "mask": mask})
            if options.shuffle and method in SHUFFLED:
                shuffled = finder.random_like(shuffle_key(seed, trial, method, target), mask)
                runs.append({**base, **cost, "method": f"{method}+shuffle", "source": method,
                             "mask": shuffled})
    return runs


def _numpy(tree: PyTree) -> PyTree:
    return jax.tree.map(np.asarray, tree)


def _density(mask: PyTree, prunable: PyTree) -> float:
    """Density of the prunable weights, from exact integer counts on the host."""
    alive, total = _count(mask, prunable)
    return alive / total if total else 1.0


def _count(mask: PyTree, prunable: PyTree) -> tuple[int, int]:
    pairs = [(np.asarray(m), bool(p)) for m, p in zip(jax.tree.leaves(mask), jax.tree.leaves(prunable))]
    return sum(int(m.sum()) for m, p in pairs if p), sum(m.size for m, p in pairs if p)


def _finite(value) -> float | None:
    return float(value) if np.isfinite(value) else None


def _record(exp, result: train_lib.RunResult, i: int, run_: dict, *, trial: int, start: int,
            seconds: float, runs: int, iterations: int) -> dict:
    every = exp.trainer.eval_every
    evals = np.arange(start + every, iterations + 1, every)
    mask = run_["mask"]
    alive, _ = _count(mask, exp.prunable)
    paths = masks_lib.leaf_paths(mask)
    layer_alive = {p: int(np.asarray(m).sum()) for p, m, u in
                   zip(paths, jax.tree.leaves(mask), jax.tree.leaves(exp.prunable)) if u}
    index = int(result.best_period[i])
    bad = int(result.nonfinite_step[i]) >= 0 or index < 0
    curve = lambda values: [_finite(v) for v in np.asarray(values[i], np.float64)]
    record = {
        "trial": trial, "target_density": run_["target"], "method": run_["method"],
        "source": run_["source"], "density": _density(mask, exp.prunable), "alive": alive,
        "layer_alive": layer_alive, "layer_density": masks_lib.layer_density(mask, exp.prunable),
        "imp_level": run_["imp_level"], "imp_density": run_["imp_density"],
        "status": "diverged" if bad else "ok",
        "early_stop_iteration": None if bad else int(evals[index]),
        "val_loss_at_early_stop": None if bad else _finite(result.val_loss[i][index]),
        "test_accuracy_at_early_stop": None if bad else _finite(result.best_test_accuracy[i]),
        "final_test_accuracy": None if bad else _finite(result.final_test_accuracy[i]),
        "cost_model_steps": run_["cost_model_steps"], "cost_fwd_bwd_passes": run_["cost_fwd_bwd_passes"],
        "cost_examples": run_["cost_examples"], "cost": run_["cost"], "imp_cost": run_["imp_cost"],
        "mask_file": run_["mask_file"], "start_iteration": start, "train_seconds": seconds,
        "runs_in_program": runs,
        "eval_iterations": [int(x) for x in evals], "train_loss": curve(result.train_loss),
        "val_loss": curve(result.val_loss), "val_accuracy": curve(result.val_accuracy),
        "test_accuracy": curve(result.test_accuracy),
    }
    if "early_bird" in run_:
        record["early_bird"] = run_["early_bird"]
    return record


def read_records(workdir: str) -> list[dict]:
    """The records of ``cheaper_tickets.jsonl`` (a half-written last line is ignored)."""
    path = os.path.join(workdir, RECORDS)
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return out


def _append(workdir: str, records: list[dict]) -> None:
    # One write per trial: a killed process leaves at most a half line, which read_records
    # ignores and this cuts off before appending (so it cannot end up between two records).
    path = os.path.join(workdir, RECORDS)
    if os.path.exists(path):
        with open(path, "rb+") as f:
            text = f.read()
            if text and not text.endswith(b"\n"):
                f.truncate(text.rfind(b"\n") + 1)
    with open(path, "a") as f:
        f.write("".join(json.dumps(r, allow_nan=False) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


# ----------------------------------------------------------------------------- report

def summarise(records: list[dict]) -> dict[tuple[float, str], dict]:
    """{(target, method): {"acc": [per trial], "gap": [per trial, vs IMP of the trial], "density",
    "final", "early_stop", "cost", "imp_cost", "passes", "found"}} over the "ok" runs."""
    imp = {(r["trial"], r["target_density"]): r["test_accuracy_at_early_stop"] for r in records
           if r["method"] == "imp" and r["status"] == "ok"}
    out: dict = {}
    for r in records:
        s = out.setdefault((r["target_density"], r["method"]), {
            "acc": [], "gap": [], "density": [], "final": [], "early_stop": [], "cost": [],
            "imp_cost": [], "passes": [], "found": [], "diverged": 0})
        s["density"].append(r["density"])
        s["cost"].append(r["cost"])
        s["imp_cost"].append(r["imp_cost"])
        s["passes"].append(r["cost_fwd_bwd_passes"])
        if "early_bird" in r:
            s["found"].append(r["early_bird"]["found"])
        if r["status"] != "ok":
            s["diverged"] += 1
            continue
        s["acc"].append(r["test_accuracy_at_early_stop"])
        s["final"].append(r["final_test_accuracy"])
        s["early_stop"].append(r["early_stop_iteration"])
        base = imp.get((r["trial"], r["target_density"]))
        if base is not None:
            s["gap"].append(r["test_accuracy_at_early_stop"] - base)
    return out


def _order(methods) -> list[str]:
    rank = {m: i for i, m in enumerate(METHODS)}
    return sorted(set(methods), key=lambda m: (rank.get(m.split("+")[0], 99), m))


def _mean(values) -> float | None:
    return float(np.mean(values)) if values else None


def _pct(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{100 * x:.{digits}f}"


def _gap(x: float | None) -> str:
    return "" if x is None else f" ({100 * x:+.2f})"


def write_report(workdir: str, records: list[dict]) -> None:
    """``cheaper_tickets.md`` and the two PNGs from the records (no-op without records)."""
    if not records:
        return
    summary = summarise(records)
    targets = sorted({t for t, _ in summary}, reverse=True)
    plain = _order(m for _, m in summary if "+" not in m)
    shuffled = _order(m for _, m in summary if "+" in m)
    trials = len({r["trial"] for r in records})
    label = lambda m: LABELS.get(m.split("+")[0], m) + ("+shuffle" if "+" in m else "")
    imp_density = {t: _mean([r["imp_density"] for r in records if r["target_density"] == t])
                   for t in targets}

    def row_head(t):
        return f"| {100 * t:g}% (IMP {100 * imp_density[t]:.1f}%) |"

    lines = [
        "# Cheaper tickets", "",
        f"{trials} trial(s). Accuracy: test accuracy (%) at the early-stopping iteration, mean over "
        "trials; in brackets the gap to IMP of the same trial and density (pp, mean over trials). "
        "Cost: the model-steps (training iterations; forward+backward passes of the at-init methods "
        "counted as passes over a training batch) to find the mask, as a fraction of IMP's.", "",
        "## Accuracy (gap to IMP)", "",
        "| target density | " + " | ".join(label(m) for m in plain) + " |",
        "|---:|" + "---:|" * len(plain)]
    for t in targets:
        cells = []
        for m in plain:
            s = summary.get((t, m))
            cells.append("—" if s is None else _pct(_mean(s["acc"]))
                         + ("" if m == "imp" else _gap(_mean(s["gap"]))))
        lines.append(row_head(t) + " " + " | ".join(cells) + " |")
    if shuffled:
        lines += ["", "## Layerwise shuffle: accuracy (change against the unshuffled mask, pp)", "",
                  "| target density | " + " | ".join(label(m) for m in shuffled) + " |",
                  "|---:|" + "---:|" * len(shuffled)]
        for t in targets:
            cells = []
            for m in shuffled:
                s, src = summary.get((t, m)), summary.get((t, m.split("+")[0]))
                change = (_mean(s["acc"]) - _mean(src["acc"]) if s and src and s["acc"]
                          and src["acc"] else None)
                cells.append("—" if s is None else _pct(_mean(s["acc"])) + _gap(change))
            lines.append(row_head(t) + " " + " | ".join(cells) + " |")
    lines += ["", "## Cost to find the mask, as a fraction of IMP's", "",
              "| target density | IMP (model-steps) | " + " | ".join(
                  label(m) for m in plain if m != "imp") + " |",
              "|---:|---:|" + "---:|" * (len(plain) - ("imp" in plain))]
    for t in targets:
        imp_cost_t = _mean([r["imp_cost"] for r in records if r["target_density"] == t])
        cells = []
        for m in plain:
            if m == "imp":
                continue
            s = summary.get((t, m))
            cells.append("—" if s is None else f"{_mean(s['cost']) / max(imp_cost_t, 1e-9):.4f}")
        lines.append(row_head(t) + f" {imp_cost_t:,.0f} | " + " | ".join(cells) + " |")
    lines += ["", "## Every method, mean [min–max] over trials", "",
              "| target | method | density % | test acc at early stop % | gap to IMP pp | "
              "final test acc % | early-stop iteration | cost (model-steps) | fwd+bwd passes | "
              "cost / IMP's |", "|---:|:---|" + "---:|" * 8]
    for t in targets:
        for m in plain + shuffled:
            s = summary.get((t, m))
            if s is None:
                continue
            acc = (f"{_pct(_mean(s['acc']))} [{_pct(min(s['acc']))}–{_pct(max(s['acc']))}]"
                   if s["acc"] else "—")
            note = ""
            if s["diverged"]:
                note += f" ({s['diverged']} diverged)"
            if s["found"] and not all(s["found"]):
                note += f" (detector fired in {sum(s['found'])}/{len(s['found'])})"
            gap = "" if m == "imp" or not s["gap"] else f"{100 * _mean(s['gap']):+.2f}"
            stop = "—" if not s["early_stop"] else f"{_mean(s['early_stop']):,.0f}"
            lines.append(
                f"| {100 * t:g}% | {label(m)}{note} | {100 * _mean(s['density']):.2f} | {acc} | "
                f"{gap} | {_pct(_mean(s['final']))} | {stop} | {_mean(s['cost']):,.1f} | "
                f"{_mean(s['passes']):,.0f} | "
                f"{_mean(s['cost']) / max(_mean(s['imp_cost']), 1e-9):.4f} |")
    with open(os.path.join(workdir, REPORT), "w") as f:
        f.write("\n".join(lines) + "\n")
    _plot(workdir, summary, targets, plain, shuffled, label)


def _plot(workdir, summary, targets, plain, shuffled, label) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    colors = dict(zip(METHODS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ticks = set()
    for m in plain + shuffled:
        pts = [(100 * _mean(s["density"]), 100 * _mean(s["acc"])) for t in targets
               if (s := summary.get((t, m))) and s["acc"]]
        if pts:
            x, y = zip(*pts)
            ticks.update(round(v, 1) for v in x)
            ax.plot(x, y, marker="o", ms=4, ls="--" if "+" in m else "-",
                    color=colors.get(m.split("+")[0]), alpha=0.6 if "+" in m else 1.0, label=label(m))
    ax.set_xscale("log")
    # The densities present as ticks, in plain percent (the log axis would print 7×10¹).
    ax.xaxis.set_major_locator(FixedLocator(sorted(ticks)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.invert_xaxis()
    ax.set_xlabel("weights remaining (%)")
    ax.set_ylabel("test accuracy at early stop (%)")
    ax.set_title("Cheaper tickets: accuracy against density (dashed: layerwise shuffle)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, DENSITY_PLOT), dpi=120)
    plt.close(fig)

    costs = [_mean(s["cost"]) for (_, m), s in summary.items() if "+" not in m]
    floor = min([c for c in costs if c > 0] or [1.0]) / 4
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in plain:
        pts = [(max(_mean(s["cost"]), floor), 100 * _mean(s["acc"]), t) for t in targets
               if (s := summary.get((t, m))) and s["acc"]]
        if not pts:
            continue
        x, y, ts = zip(*pts)
        ax.plot(x, y, marker="o", ms=4, color=colors.get(m), label=label(m))
        for xi, yi, ti in zip(x, y, ts):
            ax.annotate(f"{100 * ti:g}%", (xi, yi), fontsize=6, xytext=(3, 2),
                        textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel(f"cost to find the mask (model-steps, log; cost 0 drawn at {floor:g})")
    ax.set_ylabel("test accuracy at early stop (%)")
    ax.set_title("Cheaper tickets: accuracy against cost (labels: target density)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, COST_PLOT), dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- command line

def main(argv: Sequence[str]) -> None:
    from absl import flags
    from lth_jax import config as config_lib
    del argv
    f = flags.FLAGS
    options = Options(score_batches=f.score_batches, grasp_temperature=f.grasp_temperature,
                      synflow_rounds=f.synflow_rounds, early_bird_epsilon=f.early_bird_epsilon,
                      early_bird_window=f.early_bird_window, early_bird_every=f.early_bird_every,
                      allocation=f.allocation, shuffle=f.shuffle)
    try:
        run(f.config, f.workdir, tickets=f.tickets, densities=[float(d) for d in f.densities],
            methods=list(f.methods), options=options, log=lambda line: print(line, flush=True))
    except (ValueError, config_lib.ConfigError, data_lib.DatasetError) as e:
        print(f"lth_jax: error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(2)
    print(f"report: {os.path.join(f.workdir, REPORT)}, {os.path.join(f.workdir, DENSITY_PLOT)}, "
          f"{os.path.join(f.workdir, COST_PLOT)}")


def _define_flags() -> None:
    # --config and --workdir are lth_jax.main's (imported first): the same config files, the same
    # one-line errors for bad --config.* overrides.
    from absl import flags
    d = Options()
    flags.DEFINE_string("tickets", "", "The lottery workdir (lth_jax.main, same config) whose θ₀, "
                        "IMP masks and trained dense network to use.")
    flags.DEFINE_list("densities", [str(x) for x in DENSITIES], "Target densities (fractions of "
                      "the prunable weights).")
    flags.DEFINE_list("methods", list(METHODS), "Methods, a subset of " + ",".join(METHODS) + ".")
    flags.DEFINE_integer("score_batches", d.score_batches, "Training batches SNIP and GraSP score on.")
    flags.DEFINE_float("grasp_temperature", d.grasp_temperature, "GraSP's logit temperature.")
    flags.DEFINE_integer("synflow_rounds", d.synflow_rounds, "SynFlow's rounds.")
    flags.DEFINE_float("early_bird_epsilon", d.early_bird_epsilon, "Early-bird threshold ε on the "
                       "normalised Hamming distance between consecutive masks.")
    flags.DEFINE_integer("early_bird_window", d.early_bird_window, "Early-bird window W: "
                         "consecutive distances below ε.")
    flags.DEFINE_integer("early_bird_every", d.early_bird_every, "Evaluation periods between two "
                         "early-bird masks.")
    flags.DEFINE_enum("allocation", d.allocation, list(ALLOCATIONS), "SNIP/GraSP/SynFlow: one "
                      "global ranking, or IMP's allocation (lottery).")
    flags.DEFINE_bool("shuffle", d.shuffle, "Also train every mask shuffled within its layers.")


if __name__ == "__main__":
    from absl import app
    from lth_jax import main as main_lib
    main_lib.cpu_device_flags()
    _define_flags()
    app.run(main, flags_parser=main_lib.parse_flags)
