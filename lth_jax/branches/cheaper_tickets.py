"""Cheaper tickets: what IMP's full trainings buy, against one-shot, early-bird and pruning at init.

    python -m lth_jax.main --config=configs/lenet300_100.py --workdir=runs/lenet \
        --branch=configs/branches/cheaper_tickets.py [--branch.levels="(3, 7, 12, 15)"]

For each trial and each trunk level L of ``levels``, every method finds a mask with IMP's density
at level L (IMP's and random's exactly; the others up to rounding, since IMP rounds each layer's
count at every round and IMP's allocation below rounds once: a few weights apart at most, 1 of
56,094 at 21.1% in experiments/cheaper_tickets); all masks of a trial (methods × levels, with their layerwise shuffles) then
train together in one batch from the trunk's θ₀ (θ_k when it rewound to k), with the trial's data
order and noise: the same start, data and training as the trunk's tickets, so the runs compare on
equal terms. IMP's mask at level L *is* the trunk's ticket, and ``random``'s is the trunk's
random-pruning control: their outcomes are the trunk's records (no mask is trained twice; a trunk
without that control has ``random`` trained here).

Methods (``METHODS``), and the cost of finding the mask:

* ``imp``: the trunk's ticket mask of level L. Cost: the trainings that made it, one per level
  before it: ``iterations + (L − 1)·(iterations − k)`` model-steps (level 0 trains from 0, later
  levels from k).
* ``oneshot``: ``scores.magnitude`` of the trunk's trained dense network (level 0), with IMP's
  allocation (below); rewound like IMP. Cost: one training, ``iterations`` model-steps.
* ``earlybird`` (You et al., ICLR 2020): the dense network trains from θ₀ (the trunk's level-0
  trajectory: same θ₀ and keys), in chunks of ``early_bird_every`` evaluation periods; after each,
  ``scores.magnitude`` of the current weights at each level's density (IMP's allocation) is fed
  to that level's detector (``scores.early_bird_update``, ε = ``early_bird_epsilon``, window W =
  ``early_bird_window``: fire when W consecutive distances between consecutive masks are below ε).
  Training stops when every detector has fired. Cost: the iterations trained when it fired
  (``max(·, k)`` with rewinding); a detector that never fires takes the last mask and costs the
  whole training (``early_bird.found`` false). The normalised Hamming distance of two masks of
  density p is at most ``2·min(p, 1−p)``, so below density ε/2 the detector fires at its (W+1)-th
  mask whatever the training does.
* ``snip`` / ``grasp`` / ``synflow``: ``scores.snip`` / ``grasp`` / ``synflow`` of θ₀ (θ_k with
  rewinding), one global ranking over all prunable weights as in their papers (``allocation``
  "global"; "lottery" gives IMP's). SNIP and GraSP score on the trial's first ``score_batches``
  training batches (the batches its training sees first, augmented alike), in training mode
  (batch statistics of each batch; one dropout draw, the same for every batch); GraSP divides the
  logits by ``grasp_temperature`` as the authors' code does. SynFlow: ``synflow_rounds`` rounds.
  Cost, counted as forward+backward passes: SNIP one per batch; GraSP one per batch for g plus
  one forward-over-reverse ``jvp`` of the gradient per batch for Hg, counted as two, so
  ``3·score_batches``; SynFlow one per round on a single all-ones example. In model-steps (one
  pass over a training batch ≈ one step): ``cost = cost_model_steps + cost_examples /
  batch_size`` (plus k with rewinding: θ_k takes k steps). Evaluation passes and the mask
  selection (a sort) are not counted, for any method.
* ``random``: the trunk's random-pruning control mask of level L (``pruning.random_like`` of IMP's
  mask with the key (trial, RANDOM_MASK, L)): IMP's per-layer counts at random positions; it is
  also IMP's layerwise shuffle, so IMP gets no separate ``imp+shuffle``. Cost 0 (+k) under a
  layerwise strategy, where the per-layer counts follow from the rates alone; under a global
  strategy the counts come out of IMP's trainings, so it is charged IMP's cost.

IMP's allocation (``oneshot``, ``earlybird``, ``allocation="lottery"``): the trunk's strategy at
the level's density. Global: one magnitude ranking over the leaves the rules prune. Layerwise:
leaf l keeps ``(1 − r_l)^x`` of its weights, one real ``x`` for all leaves solved so that the total
is the density (x = L gives level L's proportions).

The layerwise-shuffle sanity check (Frankle et al., ICLR 2021): every mask but IMP's and random's
is also trained shuffled, ``pruning.random_like(key, mask)`` (the same count per layer at random
positions), as method ``"<name>+shuffle"``; its cost is its source's.

A record per (trial, level, method): ``target_density`` (IMP's density at the level),
``density`` (achieved) and the per-layer ``alive``/``layer_density``, ``status``, the early-stop
iteration and test accuracies, the costs (``cost_model_steps``, ``cost_fwd_bwd_passes``,
``cost_examples``, ``cost``, ``imp_cost``), ``early_bird`` (early-bird runs), ``trained_in``
("trunk" or "branch"), ``mask_file`` (``masks.save`` format, under ``masks/`` in the branch
folder), the evaluation curves and ``train_seconds``. ``cheaper_tickets.md`` holds the tables and
``cheaper_tickets_accuracy_vs_density.png`` / ``cheaper_tickets_accuracy_vs_cost.png`` the plots.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lth_jax import config as config_lib
from lth_jax import data as data_lib
from lth_jax import lottery
from lth_jax import masks as masks_lib
from lth_jax import pruning
from lth_jax import scores
from lth_jax import stats
from lth_jax import train as train_lib
from lth_jax import workdir as workdir_lib
from lth_jax.branches import base

PyTree = Any

NAME = "cheaper_tickets"
METHODS = ("imp", "oneshot", "earlybird", "snip", "grasp", "synflow", "random")
#: Methods trained also with their mask shuffled within each layer. IMP's shuffle is ``random``;
#: a shuffle of ``random`` is another random mask of the same counts (nothing to learn from it).
SHUFFLED = ("oneshot", "earlybird", "snip", "grasp", "synflow")
ALLOCATIONS = ("global", "lottery")
LABELS = {"imp": "IMP", "oneshot": "one-shot", "earlybird": "early-bird", "snip": "SNIP",
          "grasp": "GraSP", "synflow": "SynFlow", "random": "random"}
FIELDS = (
    ("name", NAME, "the branch (lth_jax.branches.REGISTRY)"),
    ("levels", (), "trunk levels whose density every method's mask gets (IMP's mask is that "
                   "level's ticket); () = up to four levels spread over 1..config.prune.levels"),
    ("methods", METHODS, "methods, a subset of " + ", ".join(METHODS)),
    ("score_batches", 10, "training batches SNIP and GraSP score on"),
    ("grasp_temperature", 200.0, "GraSP's logits are divided by it (the authors' code: 200)"),
    ("synflow_rounds", scores.SYNFLOW_ROUNDS, "SynFlow's rounds of scoring and pruning"),
    ("early_bird_epsilon", scores.EARLY_BIRD_EPSILON, "early-bird threshold ε on the normalised "
                                                      "Hamming distance of consecutive masks"),
    ("early_bird_window", scores.EARLY_BIRD_WINDOW, "early-bird window W: consecutive distances "
                                                    "below ε"),
    ("early_bird_every", 1, "evaluation periods between two masks fed to the early-bird detector"),
    ("allocation", "global", "SNIP/GraSP/SynFlow: global (one ranking over all prunable weights) "
                             "| lottery (IMP's allocation)"),
    ("shuffle", True, "also train every mask but IMP's and random's shuffled within its layers"),
    ("trials", 0, "trunk trials to use (0 = all)"),
)
RECORD_KEY = ("trial", "level", "method")
MASKS = "masks"
REPORT = "cheaper_tickets.md"
DENSITY_PLOT = "cheaper_tickets_accuracy_vs_density.png"
COST_PLOT = "cheaper_tickets_accuracy_vs_cost.png"
#: Key purposes of this branch, apart from the lottery's (0..4): shuffles and score batches' dropout.
SHUFFLE, SCORE_NOISE = 100, 101


@dataclasses.dataclass(frozen=True)
class Options:
    """The methods' settings (the branch's fields; defaults as in the papers)."""
    score_batches: int = 10
    grasp_temperature: float = 200.0
    synflow_rounds: int = scores.SYNFLOW_ROUNDS
    early_bird_epsilon: float = scores.EARLY_BIRD_EPSILON
    early_bird_window: int = scores.EARLY_BIRD_WINDOW
    early_bird_every: int = 1
    allocation: str = "global"
    shuffle: bool = True


def options_of(config: ml_collections.ConfigDict) -> Options:
    return Options(**{f.name: config[f.name] for f in dataclasses.fields(Options)})


def levels_of(config: ml_collections.ConfigDict, exp: lottery.Experiment) -> list[int]:
    """The levels compared at: ``levels``, or up to four spread over 1..prune.levels."""
    if tuple(config.levels):
        return sorted({int(v) for v in config.levels})
    last = int(exp.config.prune.levels)
    return sorted({max(1, round(last * i / 4)) for i in range(1, 5)}) if last else []


def check(config: ml_collections.ConfigDict, exp: lottery.Experiment) -> None:
    """Refuse, naming the field, what the methods cannot compare."""
    fail = lambda field, why: config_lib.ConfigError(f"{field}: {why}")  # noqa: E731
    if exp.retrain != "weight_rewinding":
        raise fail("config.prune.retrain", f"{exp.retrain!r}; the methods' masks are trained from "
                   "θ₀ (θ_k) as tickets are, so the trunk must use weight_rewinding")
    if exp.config.prune.one_shot:
        raise fail("config.prune.one_shot", "IMP's masks and costs need an iterative trunk")
    if exp.strategy not in ("layerwise", "global"):
        raise fail("config.prune.strategy", f"{exp.config.prune.strategy!r}; the methods rank single "
                   "weights, so the trunk must prune by magnitude (layerwise or global)")
    for field in ("levels", "methods"):
        if not isinstance(config[field], (tuple, list)):
            raise fail(f"branch.{field}", f"must be a tuple, got {config[field]!r}")
    unknown = [m for m in config.methods if m not in METHODS]
    if unknown or not tuple(config.methods):
        raise fail("branch.methods", f"unknown or none: {list(config.methods)}; methods are "
                   f"{', '.join(METHODS)}")
    for level in config.levels:
        if isinstance(level, bool) or not isinstance(level, int) or level < 1:
            raise fail("branch.levels", f"{level!r} is not a pruned level (an integer >= 1)")
    if not levels_of(config, exp):
        raise fail("config.prune.levels", "0: there is no pruned level to compare at")
    for name in ("score_batches", "synflow_rounds", "early_bird_window", "early_bird_every"):
        value = config[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise fail(f"branch.{name}", f"must be an integer >= 1, got {value!r}")
    if not (isinstance(config.early_bird_epsilon, (int, float)) and config.early_bird_epsilon >= 0):
        raise fail("branch.early_bird_epsilon", f"must be >= 0, got {config.early_bird_epsilon!r}")
    if not (isinstance(config.grasp_temperature, (int, float)) and config.grasp_temperature > 0):
        raise fail("branch.grasp_temperature", f"must be > 0, got {config.grasp_temperature!r}")
    if config.allocation not in ALLOCATIONS:
        raise fail("branch.allocation", f"unknown value {config.allocation!r}; choose "
                   f"{' or '.join(ALLOCATIONS)}")
    if not isinstance(config.shuffle, bool):
        raise fail("branch.shuffle", f"must be True or False, got {config.shuffle!r}")


def trunk_levels(config: ml_collections.ConfigDict, exp: lottery.Experiment) -> int:
    return max(levels_of(config, exp))


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

    def feed(self, allocations: Sequence[Allocation]) -> Callable:
        """``(states, params, densities) -> states``: each allocation's early-bird detector fed
        the magnitude mask of ``params`` at its density (one compiled program per kind)."""
        kinds = tuple(self._kind(a) for a in allocations)
        if kinds not in self._feed:
            eps, window = float(self.options.early_bird_epsilon), int(self.options.early_bird_window)
            prunable = self.exp.prunable

            def feed(states, p, densities):
                out = []
                for st, a, d in zip(states, allocations, densities):
                    m = scores.mask_from_scores(jax.tree.map(jnp.abs, p), masks_lib.ones_like(p),
                                                d, a.prunable, a.allocation)
                    out.append(scores.early_bird_update(st, m, prunable, eps, window))
                return out

            self._feed[kinds] = jax.jit(feed)
        return self._feed[kinds]

    def synflow(self, params: PyTree, batch_stats: PyTree, a: Allocation) -> PyTree:
        kind = self._kind(a)
        if kind not in self._synflow:
            apply = lambda p, x: self._apply(p, batch_stats, x, False, jax.random.key(0))
            self._synflow[kind] = jax.jit(lambda p, d: scores.synflow(
                apply, p, masks_lib.ones_like(p), d, a.prunable, input_shape=self.exp.input_shape,
                rounds=int(self.options.synflow_rounds), allocation=a.allocation))
        return _numpy(self._synflow[kind](params, a.density))

# ----------------------------------------------------------------------------- the lottery's side

def imp_cost(level: int, iterations: int, k: int) -> int:
    """Model-steps of the trainings that make IMP's level-``level`` mask: level 0 trains from 0,
    levels 1..L−1 from k; level L's mask prunes level L−1's trained weights."""
    return 0 if level == 0 else iterations + (level - 1) * (iterations - k)


# ----------------------------------------------------------------------------- the experiment

def shuffle_key(seed: int, trial: int, method: str, level: int) -> jax.Array:
    """The key of a shuffled mask: per trial, method and level (not its list position)."""
    key = lottery.trial_key(seed, trial, SHUFFLE, METHODS.index(method))
    return jax.random.fold_in(key, level)


# ----------------------------------------------------------------------------- the branch

def run(ctx: base.Context) -> None:
    exp, cfg = ctx.exp, ctx.config
    options = options_of(cfg)
    methods = [m for m in METHODS if m in tuple(cfg.methods)]
    levels = levels_of(cfg, exp)
    finder = Finder(exp, options)
    done = ctx.done()
    ctx.log(f"cheaper tickets: {len(ctx.trials)} trial(s), levels {levels}, methods "
            f"{', '.join(methods)}{' (+ shuffles)' if options.shuffle else ''}")
    trunk_records = {(r["trial"], r["level"], r["variant"]): r for r in ctx.trunk.records()}
    for trial in ctx.trials:
        ok = usable_levels(trunk_records, trial, levels)
        if len(ok) < len(levels):
            ctx.log(f"trial {trial}: the trunk's ticket diverged before level {len(ok) and ok[-1] + 1 or levels[0]}; "
                    f"its levels {[lv for lv in levels if lv not in ok]} are left out")
        todo = [(lv, m) for lv in ok for m in methods + [f"{m}+shuffle" for m in methods
                                                         if options.shuffle and m in SHUFFLED]
                if (trial, lv, m) not in done]
        if not todo:
            continue
        groups = sorted({(lv, m.split("+")[0]) for lv, m in todo})
        runs = find_masks(ctx, trial, groups, options, finder=finder)
        runs = [r for r in runs if (r["level"], r["method"]) in set(todo)]
        # The masks first, then the records: a record's mask file always exists.
        for r in runs:
            r["mask_file"] = os.path.join(MASKS, f"trial{trial}_level{r['level']}_{r['method']}.npz")
            ctx.folder.write(lambda r=r: _save_mask(ctx.folder.path, r), r["mask_file"])
        later = len(ctx.trials) - 1 - ctx.trials.index(trial)  # trials after this one
        new = _outcomes(ctx, trial, runs, trunk_records, later)
        ctx.folder.add_records(sorted(new, key=lambda r: (r["level"], _rank(r["method"]))))
        for r in new:
            acc = r["test_accuracy_at_early_stop"]
            ctx.log(f"trial {trial} level {r['level']:2d} ({100 * r['target_density']:5.1f}%) "
                    f"{r['method']:<18} test acc at early stop "
                    f"{'—' if acc is None else f'{100 * acc:.2f}%'}  cost {r['cost']:,.1f} "
                    f"model-steps ({r['cost'] / max(r['imp_cost'], 1e-9):.3f} of IMP's)"
                    + ("  [trunk's run]" if r["trained_in"] == "trunk" else ""))


def _outcomes(ctx: base.Context, trial: int, runs: list[dict], trunk_records: dict,
              later_trials: int = 0) -> list[dict]:
    """The records of a trial's runs, each mask trained once: IMP's ticket and the random mask
    have the trunk's outcome (the trunk trained them); of the other runs, those with equal masks
    (e.g. one-shot at level 1 is IMP's level-1 ticket) share one training."""
    exp = ctx.exp
    trunk_variant = {"imp": "ticket", "random": "random_prune"}
    known: dict[str, dict] = {}  # mask digest -> the record whose outcome it has
    for r in runs:
        r["digest"] = workdir_lib.digest(r["mask"])
        trunk_record = trunk_records.get((trial, r["level"], trunk_variant.get(r["method"], "")))
        if trunk_record is not None:
            known.setdefault(r["digest"], {**trunk_record, "trained_in": "trunk"})
    unique = {}
    for r in runs:
        if r["digest"] not in known:
            unique.setdefault(r["digest"], r)
    if unique:
        for record, r in zip(_train(ctx, trial, list(unique.values()), later_trials),
                             unique.values()):
            known[r["digest"]] = record
    return [_record_from(exp, r, known[r["digest"]], trial) for r in runs]


def usable_levels(trunk_records: dict, trial: int, levels: list[int]) -> list[int]:
    """The levels whose IMP mask is a ticket for this trial: its ticket trained "ok" at every
    level before (a later mask of a diverged ticket is no ticket)."""
    out = []
    for level in levels:
        if all(trunk_records.get((trial, lv, "ticket"), {}).get("status") == "ok"
               for lv in range(level)):
            out.append(level)
    return out


def _save_mask(folder: str, run_: dict) -> None:
    path = os.path.join(folder, run_["mask_file"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    masks_lib.save(path, run_["mask"])


def _train(ctx: base.Context, trial: int, runs: list[dict], later_trials: int = 0) -> list[dict]:
    """Train a trial's masks together from θ_rewind with the trial's keys; their records.
    ``later_trials``: trials still to train after this one (about as many runs each: the ETA)."""
    exp = ctx.exp
    seed, k = int(exp.config.seed), int(exp.config.prune.rewind_iteration)
    theta = jax.tree.map(lambda x: np.asarray(x[trial]), ctx.trunk.init()["theta_rewind"])
    stack = lambda trees: jax.tree.map(lambda *xs: np.stack(xs), *trees)  # noqa: E731
    n = len(runs)
    masks = stack([r["mask"] for r in runs])
    batch = lottery.RunBatch(
        jax.tree.map(lambda m, p: np.where(m, p, 0).astype(p.dtype), masks,
                     stack([theta["params"]] * n)),
        stack([theta["batch_stats"]] * n), masks,
        jnp.stack([lottery.trial_key(seed, trial, lottery.DATA)] * n),
        jnp.stack([lottery.trial_key(seed, trial, lottery.NOISE)] * n))
    name = f"progress_t{trial}"
    trained = ctx.train(name, f"trial {trial}", ctx.runner(), batch,
                        [(r["level"], r["method"]) for r in runs], start=k,
                        later_steps=later_trials * n * (exp.trainer.iterations - k),
                        runs=[f"trial_{trial}/level_{r['level']:02d}/{r['method']}" for r in runs])
    ctx.folder.remove(name)
    return [_record(exp, trained, i, r, trial=trial) for i, r in enumerate(runs)]


def find_masks(ctx: base.Context, trial: int, groups: Sequence[tuple[int, str]],
               options: Options = Options(), *, finder: Finder | None = None) -> list[dict]:
    """The masks of one trial's (level, method) ``groups``, with their costs.

    Returns one dict per run, by level then ``METHODS`` order, each shuffled variant after its
    source: ``mask`` (numpy bool tree), ``method``, ``source``, ``level``, ``target`` (IMP's
    density at the level), ``imp_cost``, ``cost_model_steps``, ``cost_fwd_bwd_passes``,
    ``cost_examples``, ``cost`` and, for early-bird, ``early_bird``.
    """
    exp, trunk = ctx.exp, ctx.trunk
    finder = finder or Finder(exp, options)
    todo = set(groups)
    seed, k = int(exp.config.seed), int(exp.config.prune.rewind_iteration)
    at_init = global_allocation if options.allocation == "global" else lottery_allocation
    iterations = exp.trainer.iterations
    init = trunk.init()
    params = jax.tree.map(lambda x: np.asarray(x[trial]), init["theta_rewind"]["params"])
    stats_ = jax.tree.map(lambda x: np.asarray(x[trial]), init["theta_rewind"]["batch_stats"])
    data_key = lottery.trial_key(seed, trial, lottery.DATA)
    noise_key = lottery.trial_key(seed, trial, lottery.NOISE)
    layerwise = exp.strategy == "layerwise"
    methods = {m for _, m in todo}
    levels = sorted({lv for lv, _ in todo})

    def level_mask(level: int) -> PyTree:
        return jax.tree.map(lambda x: np.asarray(x[trial], bool), trunk.ticket(level)["mask"])

    density = {lv: _density(level_mask(lv), exp.prunable) for lv in levels}
    score = {}
    if methods & {"snip", "grasp"}:
        batches = finder.score_batches(data_key, noise_key)
        score_key = lottery.trial_key(seed, trial, SCORE_NOISE)
        score = {m: getattr(finder, f"{m}_scores")(params, stats_, batches, score_key)
                 for m in ("snip", "grasp") if m in methods}
    early = {}
    if "earlybird" in methods:
        eb_levels = [lv for lv in levels if (lv, "earlybird") in todo]
        found = early_bird(ctx, finder, trial, [lottery_allocation(exp, density[lv])
                                                for lv in eb_levels])
        early = dict(zip(eb_levels, found))
    if "oneshot" in methods:
        trained = jax.tree.map(lambda x: np.asarray(x[trial]), trunk.ticket(0)["trained_params"])
        if not np.all([np.isfinite(x).all() for x in jax.tree.leaves(trained)]):
            raise lottery.ExperimentError(f"trial {trial} of the trunk has no trained dense "
                                          "network (its level 0 diverged)")
    B = exp.trainer.batch_size
    runs = []
    for level in levels:
        imp_mask, target = level_mask(level), density[level]
        head = {"level": level, "target": target, "imp_cost": imp_cost(level, iterations, k)}
        for method in METHODS:
            if (level, method) not in todo:
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
                eb = early[level]
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
                mask = finder.synflow(params, stats_, at_init(exp, target))
                passes = examples = int(options.synflow_rounds)
            cost = {"cost_model_steps": int(steps), "cost_fwd_bwd_passes": int(passes),
                    "cost_examples": int(examples), "cost": steps + examples / B}
            runs.append({**head, **cost, **extra, "method": method, "source": method,
                         "mask": mask})
            if options.shuffle and method in SHUFFLED:
                shuffled = finder.random_like(shuffle_key(seed, trial, method, level), mask)
                runs.append({**head, **cost, "method": f"{method}+shuffle", "source": method,
                             "mask": shuffled})
    return runs


def early_bird(ctx: base.Context, finder: Finder, trial: int,
               allocations: Sequence[Allocation]) -> list[dict]:
    """Train the dense network from θ₀ (the trunk's level-0 trajectory) until the early-bird
    detector of every allocation has fired (or training ends), with the branch's chunked training
    (progress, stops). Per allocation ``{"mask", "found", "iteration"}``: the ticket, whether it
    fired, and the iteration of the mask it took."""
    exp, o = ctx.exp, finder.options
    seed = int(exp.config.seed)
    theta0 = jax.tree.map(lambda x: np.asarray(x[trial]), ctx.trunk.init()["theta0"])
    stack = lambda tree: jax.tree.map(lambda x: np.asarray(x)[None], tree)  # noqa: E731
    feed = finder.feed(allocations)
    states = [scores.early_bird_init(masks_lib.ones_like(theta0["params"])) for _ in allocations]
    densities = [a.density for a in allocations]
    every = int(o.early_bird_every) * exp.trainer.eval_every
    fed: list[int] = []

    def at(training) -> bool:
        if training.iterations % every and training.iterations < exp.trainer.iterations:
            return False
        fed.append(training.iterations)
        params = jax.tree.map(lambda x: x[0], training.current()[0])
        states[:] = feed(states, params, densities)
        return all(bool(s.found) for s in states)

    batch = lottery.RunBatch(stack(theta0["params"]), stack(theta0["batch_stats"]),
                             stack(masks_lib.ones_like(theta0["params"])),
                             lottery.trial_key(seed, trial, lottery.DATA)[None],
                             lottery.trial_key(seed, trial, lottery.NOISE)[None])
    ctx.train(f"progress_early_bird_t{trial}", f"trial {trial} early-bird", ctx.runner(), batch,
              [("dense", trial)], start=0, until=exp.trainer.iterations, at=at,
              runs=[f"trial_{trial}/early_bird"])
    ctx.log(f"trial {trial}: early-bird trained {fed[-1]:,} of {exp.trainer.iterations:,} "
            "iterations, " + ", ".join(
                f"found at {fed[int(s.found_at)]:,}" if bool(s.found) else "not found"
                for s in states))
    return [{"mask": _numpy(s.ticket), "found": bool(s.found),
             "iteration": fed[int(s.found_at)] if bool(s.found) else fed[-1]} for s in states]


def _numpy(tree: PyTree) -> PyTree:
    return jax.tree.map(np.asarray, tree)


def _density(mask: PyTree, prunable: PyTree) -> float:
    """Density of the prunable weights, from exact integer counts on the host."""
    alive, total = _count(mask, prunable)
    return alive / total if total else 1.0


def _count(mask: PyTree, prunable: PyTree) -> tuple[int, int]:
    pairs = [(np.asarray(m), bool(p)) for m, p in zip(jax.tree.leaves(mask), jax.tree.leaves(prunable))]
    return sum(int(m.sum()) for m, p in pairs if p), sum(m.size for m, p in pairs if p)


def _rank(method: str) -> tuple[int, str]:
    return METHODS.index(method.split("+")[0]), method


# ----------------------------------------------------------------------------- records

_COST_FIELDS = ("cost_model_steps", "cost_fwd_bwd_passes", "cost_examples", "cost", "imp_cost")
_FIELD_NAMES = ("trial", "level", "method", "source", "target_density", "density", "alive",
                "layer_alive", "layer_density", "mask_file", "early_bird") + _COST_FIELDS


def _fields(exp: lottery.Experiment, run_: dict, trial: int) -> dict:
    """What every record of a run has besides its outcome: names, densities, counts, costs."""
    mask = run_["mask"]
    alive, _ = _count(mask, exp.prunable)
    paths = masks_lib.leaf_paths(mask)
    out = {"trial": trial, "level": run_["level"], "method": run_["method"],
           "source": run_["source"], "target_density": run_["target"],
           "density": _density(mask, exp.prunable), "alive": alive,
           "layer_alive": {p: int(np.asarray(m).sum()) for p, m, u in zip(
               paths, jax.tree.leaves(mask), jax.tree.leaves(exp.prunable)) if u},
           "layer_density": masks_lib.layer_density(mask, exp.prunable),
           **{k: run_[k] for k in _COST_FIELDS}, "mask_file": run_["mask_file"]}
    if "early_bird" in run_:
        out["early_bird"] = run_["early_bird"]
    return out


def _record(exp: lottery.Experiment, trained: lottery.Trained, i: int, run_: dict, *,
            trial: int) -> dict:
    """The record of run ``i`` of a trial's batch: the lottery's record of the run
    (``lottery.make_record``: outcome, status, curves) with the method's fields."""
    record = lottery.make_record(exp, trained.result, i, trial=trial, level=run_["level"],
                                 variant=run_["method"], mask=run_["mask"], start=trained.start,
                                 seconds=trained.seconds, runs=len(trained.order))
    for field in ("variant", "retrain", "experiment"):
        record.pop(field, None)
    return {**record, **_fields(exp, run_, trial), "trained_in": "branch"}


def _record_from(exp: lottery.Experiment, run_: dict, trained: dict, trial: int) -> dict:
    """The record of ``run_`` with the outcome and curves of ``trained``, the record of the run
    that trained its mask (a trunk record, or a record of this branch: ``trained_in`` says
    which; ``same_mask_as`` names another method whose mask it shares)."""
    record = {k: v for k, v in trained.items() if k not in _FIELD_NAMES + (
        "variant", "retrain", "experiment", "same_mask_as")}
    record = {**record, **_fields(exp, run_, trial)}
    if trained.get("method", run_["method"]) != run_["method"] and trained["trained_in"] == "branch":
        record["same_mask_as"] = trained["method"]
    return record


# ----------------------------------------------------------------------------- report

def summarise(records: list[dict]) -> dict[tuple[int, str], dict]:
    """{(level, method): {"acc", "gap" (paired, against IMP of the same trial), "change"
    (shuffles: paired, against the unshuffled mask), "final", "early_stop": Estimates over the
    "ok" runs; "density", "target", "cost", "imp_cost", "passes": means; "found": early-bird
    detectors that fired; "diverged": count; "censored": early stops at the last evaluation}}."""
    ok = [r for r in records if r["status"] == "ok"]
    acc = {(r["trial"], r["level"], r["method"]): r["test_accuracy_at_early_stop"] for r in ok}
    out: dict = {}
    for key in sorted({(r["level"], r["method"]) for r in records}, key=lambda x: (x[0], _rank(x[1]))):
        rs = [r for r in records if (r["level"], r["method"]) == key]
        good = [r for r in rs if r["status"] == "ok"]
        level, method = key
        mine = {r["trial"]: r["test_accuracy_at_early_stop"] for r in good}
        against = "imp" if "+" not in method else method.split("+")[0]
        other = {t: a for (t, lv, m), a in acc.items() if lv == level and m == against}
        out[key] = {
            "acc": stats.mean_ci(mine.values()),
            "gap": stats.paired_difference(mine, other) if method != "imp" else None,
            "final": stats.mean_ci(r["final_test_accuracy"] for r in good),
            "early_stop": stats.mean_ci(r["early_stop_iteration"] for r in good),
            "censored": sum(bool(r["eval_iterations"]) and r["early_stop_iteration"]
                            == r["eval_iterations"][-1] for r in good),
            "density": float(np.mean([r["density"] for r in rs])),
            "target": float(np.mean([r["target_density"] for r in rs])),
            "cost": float(np.mean([r["cost"] for r in rs])),
            "imp_cost": float(np.mean([r["imp_cost"] for r in rs])),
            "passes": float(np.mean([r["cost_fwd_bwd_passes"] for r in rs])),
            "found": [r["early_bird"]["found"] for r in rs if "early_bird" in r],
            "diverged": len(rs) - len(good), "n": len(rs)}
    return out


def _pct(e: stats.Estimate | None, signed: bool = False) -> str:
    if e is None or e.mean is None:
        return "—"
    mean = f"{100 * e.mean:+.2f}" if signed else f"{100 * e.mean:.2f}"
    return mean if e.half_width is None else f"{mean} ± {100 * e.half_width:.2f}"


def _label(method: str) -> str:
    return LABELS.get(method.split("+")[0], method) + ("+shuffle" if "+" in method else "")


def report(folder: str, records: list[dict], config: dict) -> list[str]:
    """``cheaper_tickets.md`` and the two PNGs from the records (nothing without records)."""
    if not records:
        return []
    summary = summarise(records)
    levels = sorted({lv for lv, _ in summary})
    plain = sorted({m for _, m in summary if "+" not in m}, key=_rank)
    shuffled = sorted({m for _, m in summary if "+" in m}, key=_rank)
    trials = len({r["trial"] for r in records})
    target = {lv: summary[next(k for k in summary if k[0] == lv)]["target"] for lv in levels}
    note = stats.few_trials_note(trials)
    head = lambda lv: f"| {lv} | {100 * target[lv]:.1f}% |"  # noqa: E731
    lines = [
        "# Cheaper tickets", "",
        f"{trials} trial(s). Every method's mask has IMP's density at the level. Accuracy: test "
        "accuracy (%) at the early-stopping iteration, mean ± half-width of the 95% confidence "
        "interval over trials (Student's t); the gap to IMP (pp) is paired: per trial, the "
        "method minus IMP of the same trial and level, then its mean ± 95% CI."
        + (f" {note}" if note else "") + " Cost: the model-steps (training iterations; "
        "forward+backward passes of the at-init methods counted as passes over a training "
        "batch) to find the mask, as a fraction of IMP's.", "",
        "## Accuracy", "",
        "| level | density | " + " | ".join(_label(m) for m in plain) + " |",
        "|---:|---:|" + "---:|" * len(plain)]
    for lv in levels:
        cells = [_pct(summary[(lv, m)]["acc"]) if (lv, m) in summary else "—" for m in plain]
        lines.append(head(lv) + " " + " | ".join(cells) + " |")
    lines += ["", "## Gap to IMP (pp, paired)", "",
              "| level | density | " + " | ".join(_label(m) for m in plain if m != "imp") + " |",
              "|---:|---:|" + "---:|" * (len(plain) - ("imp" in plain))]
    for lv in levels:
        cells = [_pct(summary[(lv, m)]["gap"], signed=True) if (lv, m) in summary else "—"
                 for m in plain if m != "imp"]
        lines.append(head(lv) + " " + " | ".join(cells) + " |")
    if shuffled:
        lines += ["", "## Layerwise shuffle: change against the unshuffled mask (pp, paired)", "",
                  "| level | density | " + " | ".join(_label(m) for m in shuffled) + " |",
                  "|---:|---:|" + "---:|" * len(shuffled)]
        for lv in levels:
            cells = [_pct(summary[(lv, m)]["gap"], signed=True) if (lv, m) in summary else "—"
                     for m in shuffled]
            lines.append(head(lv) + " " + " | ".join(cells) + " |")
    lines += ["", "## Cost to find the mask, as a fraction of IMP's", "",
              "| level | density | IMP (model-steps) | " + " | ".join(
                  _label(m) for m in plain if m != "imp") + " |",
              "|---:|---:|---:|" + "---:|" * (len(plain) - ("imp" in plain))]
    for lv in levels:
        imp_cost_ = next(s["imp_cost"] for (l2, _), s in summary.items() if l2 == lv)
        cells = [f"{summary[(lv, m)]['cost'] / max(imp_cost_, 1e-9):.4f}" if (lv, m) in summary
                 else "—" for m in plain if m != "imp"]
        lines.append(head(lv) + f" {imp_cost_:,.0f} | " + " | ".join(cells) + " |")
    lines += ["", "## Every method", "",
              "Mean ± 95% CI over trials; early stops marked * when some run's minimum "
              "validation loss was at its last evaluation (censored: the true early stop may be "
              "later).", "",
              "| level | method | density % | test acc at early stop % | gap pp | final test acc "
              "% | early-stop iteration | cost (model-steps) | fwd+bwd passes | cost / IMP's |",
              "|---:|:---|" + "---:|" * 8]
    for (lv, m), s in summary.items():
        note_ = ""
        if s["diverged"]:
            note_ += f" ({s['diverged']} diverged)"
        if s["found"] and not all(s["found"]):
            note_ += f" (detector fired in {sum(s['found'])}/{len(s['found'])})"
        stop = "—" if s["early_stop"].mean is None else (
            f"{s['early_stop'].mean:,.0f}" + ("*" if s["censored"] else ""))
        lines.append(
            f"| {lv} | {_label(m)}{note_} | {100 * s['density']:.2f} | {_pct(s['acc'])} | "
            f"{_pct(s['gap'], signed=True) if s['gap'] else ''} | {_pct(s['final'])} | {stop} | "
            f"{s['cost']:,.1f} | {s['passes']:,.0f} | {s['cost'] / max(s['imp_cost'], 1e-9):.4f} |")
    paths = [os.path.join(folder, name) for name in (REPORT, DENSITY_PLOT, COST_PLOT)]
    with open(paths[0], "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    _plot(paths[1], paths[2], summary, levels, plain, shuffled)
    return paths


def _plot(density_path: str, cost_path: str, summary: dict, levels: list[int], plain: list[str],
          shuffled: list[str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    colors = dict(zip(METHODS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ticks = set()
    for m in plain + shuffled:
        pts = [(100 * s["density"], 100 * s["acc"].mean, 100 * (s["acc"].half_width or 0.0))
               for lv in levels if (s := summary.get((lv, m))) and s["acc"].mean is not None]
        if pts:
            x, y, err = zip(*pts)
            ticks.update(round(v, 1) for v in x)
            ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=2, ls="--" if "+" in m else "-",
                        color=colors.get(m.split("+")[0]), alpha=0.6 if "+" in m else 1.0,
                        label=_label(m))
    ax.set_xscale("log")
    # The densities present as ticks, in plain percent (the log axis would print 7×10¹).
    ax.xaxis.set_major_locator(FixedLocator(sorted(ticks)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.invert_xaxis()
    ax.set_xlabel("weights remaining (%)")
    ax.set_ylabel("test accuracy at early stop (%)")
    ax.set_title("Cheaper tickets: accuracy against density (dashed: layerwise shuffle)\n"
                 "error bars: 95% CI of the mean over trials", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(density_path, dpi=120)
    plt.close(fig)

    costs = [s["cost"] for (_, m), s in summary.items() if "+" not in m]
    floor = min([c for c in costs if c > 0] or [1.0]) / 4
    fig, axes = plt.subplots(1, len(levels), figsize=(3.2 * len(levels) + 1, 4), sharey=False,
                             squeeze=False)
    for ax, lv in zip(axes[0], levels):
        for m in plain:
            s = summary.get((lv, m))
            if not s or s["acc"].mean is None:
                continue
            ax.errorbar([max(s["cost"], floor)], [100 * s["acc"].mean],
                        yerr=[100 * (s["acc"].half_width or 0.0)], marker="o", ms=5, capsize=2,
                        color=colors.get(m), label=_label(m))
        ax.set_xscale("log")
        ax.set_title(f"level {lv}: {100 * summary[next(k for k in summary if k[0] == lv)]['target']:.1f}%"
                     " of the weights", fontsize=9)
        ax.set_xlabel("cost to find the mask (model-steps)", fontsize=8)
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("test accuracy at early stop (%)")
    handles, labels_ = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels_, fontsize=7, loc="lower center", ncol=len(plain))
    fig.suptitle(f"Cheaper tickets: accuracy against cost (a cost of 0 is drawn at {floor:.3g}; "
                 "error bars: 95% CI over trials)", fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    fig.savefig(cost_path, dpi=120)
    plt.close(fig)
