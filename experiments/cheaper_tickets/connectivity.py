r"""Dead units and disconnected weights of the cheaper-tickets masks (issue 40's shuffle finding).

    python experiments/cheaper_tickets/connectivity.py \
        --folder=runs/cheaper_tickets/branches/cheaper_tickets-<digest> > connectivity.md

For every record of the branch folder (trial, level, method) its saved mask (``masks/*.npz``,
``lth_jax.masks.load``) is read, and for the chain of Dense kernels (LeNet-300-100: 784 → 300 →
100 → 10) it counts:

* **dead units**: hidden units with no alive incoming or no alive outgoing weight (they pass no
  signal from the input to the output; a unit without inputs still passes its bias, a constant);
* **disconnected weights**: alive weights that lie on no input-to-output path, i.e. whose source
  unit is not reachable from the input or whose target unit cannot reach the output through alive
  weights (they cannot change what the network computes from its input);
* **input pixels used**: pixels with at least one alive weight on an input-to-output path (and,
  in the header, how many pixels are constant over the training images: weights from those act
  as a bias, not as a feature detector);
* **the kept weights' initial values** (θ₀ of the trial, from the trunk's checkpoint), per layer:
  *scale*, the RMS of the alive weights' θ₀ over the RMS of all the layer's θ₀ (1 for a mask
  that ignores θ₀, as a shuffled one does in expectation); and for the first hidden layer *sign
  bias*, the mean over units with inputs of ``|Σ θ₀| / sqrt(Σ θ₀²)`` of their alive incoming
  weights (about 0.80 when the signs are independent of the mask, ``E|N(0, 1)|``; larger when a
  unit keeps weights of one sign);
* **feature rank at θ₀**: how many different features the first hidden layer computes at
  ``m ⊙ θ₀``: the participation ratio ``(Σλ)² / Σλ²`` of the eigenvalues λ of the covariance of
  its pre-activations over the first 2,000 training images (300 for 300 uncorrelated units of
  equal variance; 1 when every unit computes a multiple of one feature).

It prints a Markdown table: per level and method, each count's mean ± 95% CI over trials and the
test accuracy at early stop (from the records), and a second table of the shuffled-minus-
unshuffled paired differences. The dataset is read with the trunk's dataset config
(``W/config.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import re

import jax
import numpy as np

from lth_jax import data as data_lib
from lth_jax import lottery
from lth_jax import masks as masks_lib
from lth_jax import stats
from lth_jax import workdir as workdir_lib
from lth_jax.branches import cheaper_tickets

LABELS = cheaper_tickets.LABELS


def kernels(mask) -> list[np.ndarray]:
    """The Dense kernels' masks, input layer first (``Dense_0``, ``Dense_1``, ...)."""
    flat = {path: np.asarray(leaf, bool) for path, leaf in zip(
        masks_lib.leaf_paths(mask), jax.tree.leaves(mask))}
    found = sorted((int(m.group(1)), a) for p, a in flat.items()
                   if (m := re.fullmatch(r"Dense_(\d+)/kernel", p)))
    if not found or [i for i, _ in found] != list(range(len(found))):
        raise ValueError(f"not a chain of Dense kernels: {sorted(flat)}")
    return [a for _, a in found]


def connectivity(ks: list[np.ndarray], theta0: list[np.ndarray], images: np.ndarray) -> dict:
    """Counts of one mask (its kernels ``ks``, each ``(in, out)``; ``theta0`` the kernels' θ₀;
    ``images`` flattened training images for the feature rank)."""
    # Forward: units reachable from the input; backward: units that reach the output.
    forward = [np.ones(ks[0].shape[0], bool)]
    for k in ks:
        forward.append((forward[-1][:, None] & k).any(axis=0))
    backward = [np.ones(ks[-1].shape[1], bool)]
    for k in reversed(ks):
        backward.insert(0, (k & backward[0][None, :]).any(axis=1))
    alive = sum(int(k.sum()) for k in ks)
    on_path = [k & forward[i][:, None] & backward[i + 1][None, :] for i, k in enumerate(ks)]
    dead = {}
    for i in range(1, len(ks)):  # hidden layer i: outputs of kernel i-1, inputs of kernel i
        has_in, has_out = ks[i - 1].any(axis=0), ks[i].any(axis=1)
        dead[f"h{i}"] = int((~(has_in & has_out)).sum())
    rms = lambda x: float(np.sqrt(np.mean(np.square(x)))) if x.size else float("nan")  # noqa: E731
    w = np.where(ks[0], theta0[0], 0.0)
    fed = ks[0].any(axis=0)
    z = np.abs(w.sum(axis=0)[fed]) / np.sqrt(np.square(w).sum(axis=0)[fed])
    pre = images @ w
    lam = np.linalg.eigvalsh(np.cov(pre, rowvar=False))
    return {"alive": alive,
            "dead": dead,
            "rank": float(lam.sum() ** 2 / np.square(lam).sum()),
            "dead_units": sum(dead.values()),
            "disconnected": alive - sum(int(p.sum()) for p in on_path),
            "pixels_used": int(on_path[0].any(axis=1).sum()),
            "scale": [rms(t[k]) / rms(t) for k, t in zip(ks, theta0)],
            "sign_bias": float(z.mean())}


def kernel_values(params) -> list[np.ndarray]:
    """The Dense kernels' values, input layer first (as ``kernels``)."""
    return [np.asarray(params[f"Dense_{i}"]["kernel"]) for i in range(len(params))
            if f"Dense_{i}" in params]


def training_images(trunk_config: dict) -> np.ndarray:
    """The trunk's training images (normalised as it trains on them), flattened as LeNet sees
    them."""
    data = data_lib.load(dict(trunk_config["dataset"]), seed=int(trunk_config["seed"]))
    return np.asarray(data.train_images).reshape(len(data.train_labels), -1)


def _rank(method: str) -> tuple[int, str]:
    return cheaper_tickets.METHODS.index(method.split("+")[0]), method


def _label(method: str) -> str:
    return LABELS.get(method.split("+")[0], method) + ("+shuffle" if "+" in method else "")


def _cell(e: stats.Estimate, scale: float = 1.0, digits: int = 1, signed: bool = False) -> str:
    if e.mean is None:
        return "—"
    fmt = f"{{:{'+' if signed else ''}.{digits}f}}"
    text = fmt.format(scale * e.mean)
    return text if e.half_width is None else f"{text} ± {scale * e.half_width:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", required=True, help="the cheaper-tickets branch folder")
    args = parser.parse_args()
    with open(os.path.join(args.folder, "config.json")) as f:
        identity = json.load(f)["trunk"]  # a branch folder: {"branch": ..., "trunk": identity}
    workdir = os.path.normpath(os.path.join(args.folder, os.pardir, os.pardir))
    with open(os.path.join(workdir, "config.json")) as f:
        trunk_config = json.load(f)
    images = training_images(trunk_config)
    const = images.min(axis=0) == images.max(axis=0)
    theta0 = lottery.Trunk(workdir, identity).init()["theta0"]["params"]
    records = [r for r in workdir_lib.read_records(
        args.folder, key=cheaper_tickets.RECORD_KEY) if r.get("mask_file")]
    rows = {}
    for r in records:
        values = kernel_values(jax.tree.map(lambda x, t=r["trial"]: np.asarray(x[t]), theta0))
        counts = connectivity(kernels(masks_lib.load(os.path.join(args.folder, r["mask_file"]))),
                              values, images[:2000])
        rows[(r["level"], r["method"], r["trial"])] = {
            **counts, **{f"scale{i + 1}": v for i, v in enumerate(counts["scale"])},
            "acc": r["test_accuracy_at_early_stop"] if r["status"] == "ok" else None,
            "density": r["density"]}
    shape = kernels(masks_lib.load(os.path.join(args.folder, records[0]["mask_file"])))
    hidden = " + ".join(str(k.shape[1]) for k in shape[:-1])
    trials = sorted({t for _, _, t in rows})
    groups = sorted({(lv, m) for lv, m, _ in rows}, key=lambda g: (g[0], _rank(g[1])))

    def est(level, method, field):
        return stats.mean_ci([rows[(level, method, t)][field] for t in trials
                              if (level, method, t) in rows
                              and rows[(level, method, t)][field] is not None])

    def paired(level, method, field, against):
        a = {t: rows[(level, method, t)][field] for t in trials if (level, method, t) in rows}
        b = {t: rows[(level, against, t)][field] for t in trials if (level, against, t) in rows}
        return stats.paired_difference({t: v for t, v in a.items() if v is not None},
                                       {t: v for t, v in b.items() if v is not None})

    names = [f"h{i}" for i in range(1, len(shape))]
    print("# Connectivity of the cheaper-tickets masks\n")
    print(f"LeNet-300-100 (hidden units {hidden}; {int(const.sum())} of {const.size} input pixels "
          f"are constant over the training images). {len(trials)} trial(s); mean ± 95% CI over "
          "trials (Student's t). *Dead*: hidden units with no alive incoming or outgoing weight, "
          "per hidden layer. *Disconnected*: alive weights on no input-to-output path (% of the "
          "alive weights). *Pixels*: input pixels on some input-to-output path. *Scale L*: RMS "
          "of the alive weights' θ₀ in layer L over the RMS of all its θ₀. *Sign bias*: first "
          "hidden layer, mean over units of |Σ θ₀| / sqrt(Σ θ₀²) of their alive inputs (0.80 "
          "for signs independent of the mask). *Rank h1*: participation ratio (Σλ)²/Σλ² of the "
          "covariance eigenvalues of the first hidden layer's pre-activations at θ₀ on 2,000 "
          "training images (the number of different features it computes at the start). *Acc*: "
          "test accuracy at early stop (%).\n")
    layers = range(1, len(shape) + 1)
    print("| level | density | method | " + " | ".join(f"dead {n}" for n in names)
          + " | disconnected % | pixels | " + " | ".join(f"scale {i}" for i in layers)
          + " | sign bias | rank h1 | acc % |")
    print("|---:|---:|:---|" + "---:|" * (len(names) + len(layers) + 5))
    for lv, m in groups:
        alive = est(lv, m, "alive").mean
        dead = [stats.mean_ci([rows[(lv, m, t)]["dead"][n] for t in trials if (lv, m, t) in rows])
                for n in names]
        print(f"| {lv} | {100 * est(lv, m, 'density').mean:.1f}% | "
              f"{_label(m)} | " + " | ".join(_cell(d) for d in dead)
              + f" | {_cell(est(lv, m, 'disconnected'), 100 / alive, 2)} | "
              f"{_cell(est(lv, m, 'pixels_used'), 1, 0)} | "
              + " | ".join(_cell(est(lv, m, f"scale{i}"), 1, 2) for i in layers)
              + f" | {_cell(est(lv, m, 'sign_bias'), 1, 2)} | {_cell(est(lv, m, 'rank'), 1, 1)} | "
              f"{_cell(est(lv, m, 'acc'), 100, 2)} |")
    print("\n## Shuffled minus unshuffled (paired per trial)\n")
    print("| level | density | method | Δ dead units | Δ disconnected weights | Δ pixels | Δ scale 1 "
          "| Δ sign bias | Δ rank h1 | Δ acc pp |")
    print("|---:|---:|:---|---:|---:|---:|---:|---:|---:|---:|")
    for lv, m in groups:
        if "+" not in m:
            continue
        src = m.split("+")[0]
        print(f"| {lv} | {100 * est(lv, m, 'density').mean:.1f}% | {_label(src)} | "
              f"{_cell(paired(lv, m, 'dead_units', src), 1, 1, True)} | "
              f"{_cell(paired(lv, m, 'disconnected', src), 1, 0, True)} | "
              f"{_cell(paired(lv, m, 'pixels_used', src), 1, 0, True)} | "
              f"{_cell(paired(lv, m, 'scale1', src), 1, 2, True)} | "
              f"{_cell(paired(lv, m, 'sign_bias', src), 1, 2, True)} | "
              f"{_cell(paired(lv, m, 'rank', src), 1, 1, True)} | "
              f"{_cell(paired(lv, m, 'acc', src), 100, 2, True)} |")


if __name__ == "__main__":
    main()
