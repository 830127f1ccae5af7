r"""The instability experiment: the error barrier against the rewind iteration k, one command.

    python -m lth_jax.instability_experiment --config=configs/lenet300_100.py \
        --workdir=runs/lenet_instability --ks=0,100,500,1000,2000 \
        [--tickets=runs/lenet --levels=3,7]

For each trial, each k in ``--ks`` and each mask (the dense network, and the IMP ticket masks of
``--levels`` read from the lottery workdir ``--tickets``):

1. θ_k: the dense network trained from θ₀ for k iterations with the trial's data order and noise —
   the same trajectory as the lottery experiment's level 0 (same seed, same keys);
2. two copies of ``m ⊙ θ_k`` trained from iteration k to the end, one with the trial's SGD noise and
   one with other noise (data order, dropout, augmentation), all else equal;
3. the error barrier on the straight line between them (:mod:`lth_jax.instability`).

A config with learning-rate warmup is also run without it (``warmup`` = 0 in the records), so one
command answers whether warmup makes the network stable earlier. Results go to
``WORKDIR/instability.jsonl`` (one record per trial × warmup × mask × k, appended as each finishes;
a rerun of the same command resumes), ``WORKDIR/instability.md`` (table) and
``WORKDIR/instability.png`` (barrier against k, one line per density).

Ticket masks come from an experiment that rewound to its own ``prune.rewind_iteration``; here they
are applied to θ_k of every k (Frankle et al. 2020 run IMP once per k; that costs a whole IMP run per
k and is not done here).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lth_jax import instability as instability_lib
from lth_jax import lottery
from lth_jax import masks as masks_lib
from lth_jax import train as train_lib
from lth_jax import workdir as workdir_lib

RECORDS = "instability.jsonl"
CONFIG = "instability_config.json"


def rewind_state(exp: lottery.Experiment, trial: int, k: int) -> tuple[dict, dict]:
    """θ_k of a trial: ``(params, batch_stats)`` after k dense iterations (θ₀ for k = 0)."""
    seed = int(exp.config.seed)
    theta0 = exp.init_variables(lottery.trial_key(seed, trial, lottery.INIT))
    if k == 0:
        return theta0["params"], theta0["batch_stats"]
    trainer = dataclasses.replace(exp.trainer, iterations=k, eval_every=k, test_every=0)
    stack = lambda tree: jax.tree.map(lambda x: x[None], tree)
    run = train_lib.make_run_fn(trainer)(
        exp.data, stack(theta0["params"]), stack(theta0["batch_stats"]),
        stack(masks_lib.ones_like(theta0["params"])),
        lottery.trial_key(seed, trial, lottery.DATA)[None],
        lottery.trial_key(seed, trial, lottery.NOISE)[None])
    unstack = lambda tree: jax.tree.map(lambda x: x[0], tree)
    return unstack(run.params), unstack(run.batch_stats)


def ticket_masks(tickets: str | None, levels: Sequence[int], trials: int) -> dict[int, list]:
    """{level: [mask of trial t]}: level 0 is the dense (all-True) mask, the others are read from
    the lottery workdir ``tickets``."""
    out: dict[int, list] = {}
    if not levels or list(levels) == [0]:
        return out
    if not tickets:
        raise ValueError("--levels other than 0 need --tickets=LOTTERY_WORKDIR")
    saved = workdir_lib.load_experiment(tickets)
    for level in levels:
        if level == 0:
            continue
        if level not in saved["levels"]:
            raise ValueError(f"{tickets} has no finished level {level} (has "
                             f"{sorted(saved['levels'])})")
        mask = saved["levels"][level]["mask"]
        if jax.tree.leaves(mask)[0].shape[0] < trials:
            raise ValueError(f"{tickets} has fewer than {trials} trials")
        out[level] = [jax.tree.map(lambda x: np.asarray(x[t], bool), mask) for t in range(trials)]
    return out


def run(config: ml_collections.ConfigDict, workdir: str, ks: Sequence[int], *,
        tickets: str | None = None, levels: Sequence[int] = (0,), points: int = 11,
        log: Callable[[str], None] = print) -> list[dict]:
    """Run (or resume) the instability experiment; returns all its records."""
    exp = lottery.setup(config)
    ks = sorted({int(k) for k in ks})
    for k in ks:
        if not 0 <= k < exp.trainer.iterations or k % exp.trainer.eval_every:
            raise ValueError(f"rewind iteration {k} must be a multiple of train.eval_every="
                             f"{exp.trainer.eval_every} in [0, {exp.trainer.iterations})")
    levels = sorted({int(level) for level in levels} | {0})
    trials = int(config.trials)
    os.makedirs(workdir, exist_ok=True)
    identity = {"config": json.loads(json.dumps(config.to_dict())), "tickets": tickets or "",
                "points": points}
    path = os.path.join(workdir, CONFIG)
    if os.path.exists(path):
        with open(path) as f:
            if json.load(f) != identity:
                raise ValueError(f"{workdir} holds another instability experiment; use another "
                                 "--workdir")
    else:
        with open(path, "w") as f:
            json.dump(identity, f, indent=2, sort_keys=True)
    records = read_records(workdir)
    done = {(r["trial"], r["warmup"], r["level"], r["k"]) for r in records}
    masks = ticket_masks(tickets, levels, trials)
    warmups = [int(config.train.warmup_iterations)] + ([0] if config.train.warmup_iterations else [])
    seed = int(config.seed)
    # The two copies on two devices (one per core on a CPU, as the lottery runs), else batched.
    devices = jax.devices()[:2]
    mesh = jax.sharding.Mesh(np.array(devices), ("runs",)) if len(devices) == 2 else None
    batching = "map" if devices[0].platform == "cpu" else "vmap"
    log(f"instability: {config.model.name}, {trials} trial(s), k in {ks}, levels {levels}, "
        f"warmup {warmups}; workdir {workdir}")
    for warmup in warmups:
        cfg = ml_collections.ConfigDict(config.to_dict())
        cfg.train.warmup_iterations = warmup
        wexp = exp if warmup == warmups[0] else dataclasses.replace(
            exp, trainer=train_lib.make_trainer(exp.model, cfg.train, exp.trainer.augment))
        for trial in range(trials):
            dk = lottery.trial_key(seed, trial, lottery.DATA)
            nk = lottery.trial_key(seed, trial, lottery.NOISE)
            # Copy A follows the trial's own noise; copy B another draw of every noise source.
            data_keys = jnp.stack([dk, jax.random.fold_in(dk, 1)])
            noise_keys = jnp.stack([nk, jax.random.fold_in(nk, 1)])
            for k in ks:
                todo = [lv for lv in levels if (trial, warmup, lv, k) not in done]
                if not todo:
                    continue
                params_k, stats_k = rewind_state(wexp, trial, k)
                for level in todo:
                    mask = masks[level][trial] if level else masks_lib.ones_like(params_k)
                    result = instability_lib.instability(
                        wexp.trainer, wexp.data, masks_lib.apply(params_k, mask), stats_k, mask,
                        start=k, data_keys=data_keys, noise_keys=noise_keys, points=points,
                        batching=batching, mesh=mesh)
                    record = {
                        "trial": trial, "warmup": warmup, "level": level, "k": k,
                        "density": float(masks_lib.density(mask, exp.prunable)),
                        "barrier": float(result.curve.barrier),
                        "alphas": [float(a) for a in result.curve.alphas],
                        "error": [float(e) for e in result.curve.error],
                        "loss": [float(v) for v in result.curve.loss],
                        "final_test_accuracy": [float(a) for a in result.runs.final_test_accuracy],
                    }
                    _append(workdir, record)
                    records.append(record)
                    log(f"trial {trial} warmup {warmup} level {level:2d} "
                        f"({100 * record['density']:5.1f}%) k {k:6d}: barrier "
                        f"{100 * record['barrier']:.2f} pp (final test acc "
                        f"{100 * np.mean(record['final_test_accuracy']):.2f}%)")
    write_report(workdir, records)
    return records


def read_records(workdir: str) -> list[dict]:
    """The records of ``instability.jsonl`` (a half-written last line is ignored)."""
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


def _append(workdir: str, record: dict) -> None:
    with open(os.path.join(workdir, RECORDS), "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def summarise(records: list[dict]) -> dict[tuple[int, int], dict[int, tuple[float, float, float]]]:
    """{(warmup, level): {k: (mean, min, max) barrier over trials}}."""
    groups: dict = {}
    for r in records:
        groups.setdefault((r["warmup"], r["level"]), {}).setdefault(r["k"], []).append(r["barrier"])
    return {g: {k: (float(np.mean(v)), float(np.min(v)), float(np.max(v)))
                for k, v in sorted(ks.items())} for g, ks in sorted(groups.items())}


def write_report(workdir: str, records: list[dict]) -> None:
    """instability.md (barrier in pp, mean [min–max] over trials) and instability.png."""
    if not records:
        return
    density = {(r["warmup"], r["level"]): r["density"] for r in records}
    summary = summarise(records)
    ks = sorted({r["k"] for r in records})
    lines = ["# Error barrier (pp) against the rewind iteration k", "",
             "| warmup | % weights | " + " | ".join(f"k={k}" for k in ks) + " |",
             "|---:|---:|" + "---:|" * len(ks)]
    for (warmup, level), by_k in summary.items():
        cells = [f"{100 * by_k[k][0]:.2f} [{100 * by_k[k][1]:.2f}–{100 * by_k[k][2]:.2f}]"
                 if k in by_k else "—" for k in ks]
        lines.append(f"| {warmup} | {100 * density[(warmup, level)]:.1f} | " + " | ".join(cells)
                     + " |")
    with open(os.path.join(workdir, "instability.md"), "w") as f:
        f.write("\n".join(lines) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for (warmup, level), by_k in summary.items():
        x = np.array(list(by_k))
        mean, low, high = (np.array([v[i] for v in by_k.values()]) * 100 for i in range(3))
        label = f"{100 * density[(warmup, level)]:.1f}% weights" + (
            f", warmup {warmup}" if len({w for w, _ in summary}) > 1 else "")
        ax.errorbar(x, mean, yerr=[mean - low, high - mean], marker="o", capsize=3, label=label)
    ax.set_xscale("symlog", linthresh=max(1, min([k for k in ks if k] or [1])))
    ax.set_xlabel("rewind iteration k")
    ax.set_ylabel("error barrier (pp)")
    ax.axhline(2.0, color="grey", lw=0.8, ls=":")
    ax.legend(fontsize=8)
    ax.set_title("Instability: error rise between two copies trained from θ_k")
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "instability.png"), dpi=120)
    plt.close(fig)


def main(argv: Sequence[str]) -> None:
    from absl import flags
    from lth_jax import config as config_lib
    from lth_jax import data as data_lib
    del argv
    f = flags.FLAGS
    try:
        run(f.config, f.workdir, [int(k) for k in f.ks], tickets=f.tickets or None,
            levels=[int(v) for v in f.levels], points=f.points,
            log=lambda line: print(line, flush=True))
    except (ValueError, config_lib.ConfigError, data_lib.DatasetError) as e:
        print(f"lth_jax: error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(2)
    print(f"report: {os.path.join(f.workdir, 'instability.md')}, "
          f"{os.path.join(f.workdir, 'instability.png')}")


def _define_flags() -> None:
    # --config and --workdir are lth_jax.main's (imported first): the same config files, the same
    # one-line errors for bad --config.* overrides.
    from absl import flags
    flags.DEFINE_list("ks", ["0", "100", "500", "1000", "2000"], "Rewind iterations k.")
    flags.DEFINE_string("tickets", "", "A lottery workdir whose ticket masks to analyse.")
    flags.DEFINE_list("levels", ["0"], "Levels of --tickets to analyse (0 = the dense network).")
    flags.DEFINE_integer("points", 11, "Points on the linear path, ends included.")


if __name__ == "__main__":
    from absl import app
    from lth_jax import main as main_lib
    main_lib.cpu_device_flags()
    _define_flags()
    app.run(main, flags_parser=main_lib.parse_flags)
