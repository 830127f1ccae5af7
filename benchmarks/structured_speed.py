r"""Measured speed-up of structured tickets on this CPU (issue 19): compact network vs masked dense.

    python benchmarks/structured_speed.py                        # LeNet-300-100 and Conv-2
    python benchmarks/structured_speed.py --networks=lenet       # one network
    python benchmarks/structured_speed.py --json=rows.json       # also write the rows

What it measures, per network and per fraction of hidden units kept (50%, 25%, 10%):

* the ticket: ``structured.neuron_magnitude`` (per layer, L2 norm, links from
  ``structured.sequential_links``) removes ``1 - keep`` of every hidden layer's neurons (LeNet's
  Dense_0/Dense_1; Conv-2's Conv_0/Conv_1 filters and Dense_0/Dense_1 neurons; the logits stay)
  from the dense mask of freshly initialised params; ``compaction.compact`` turns it into the
  smaller dense network (checked: same logits, to float32 rounding);
* training: N steps of lth_jax's masked Adam step (``train.make_trainer(...).step`` with the
  network's config from ``configs/``) inside one jitted ``lax.scan``, as lth_jax trains: the dense
  model with the ticket's mask, and the compact model with an all-True mask (the same step, so the
  same mask overhead), on the same synthetic batches (batch 60). steps/s = N / seconds of a call;
* inference: a jitted forward pass over one batch of ``--infer_batch`` examples (the dense model
  computes on ``m ⊙ θ`` as ``Trainer.evaluate`` does). examples/s = batch / seconds per call (a
  timing of LeNet is 20 calls in a row, its calls being milliseconds);
* parameter counts (dense, alive under the mask, compact) and XLA's FLOP count of one train step;
* a check that the compact Conv-2 trains with lth_jax's fast convolution (``conv="auto"`` is the
  canonical-VJP convolution with Winograd's F(2x2, 3x3) on CPUs,
  ``lth_jax.models.convolution``): it counts the canonical NHWC/HWIO/NHWC convolutions in the
  train step's jaxpr, gradients included (Winograd's layers have none), and warns unless all
  are (plain ``nn.Conv`` gradients are not, and run ~85x slower inside a scan on XLA:CPU, which
  would make the comparison meaningless).

Each timed call is compiled and run once before timing. Dense and compact calls alternate (dense
first on even repeats, compact first on odd ones, and the fractions in rotated order), so machine
noise from other processes hits both alike; the table gives medians over ``--repeats`` and the
speed-up as the median of the per-repeat paired ratios (dense seconds / compact seconds).

Each network runs in a fresh process with the XLA flags the CLI sets on a CPU
(``--xla_force_host_platform_device_count=<cores> --xla_cpu_multi_thread_eigen=false``) and uses
one device: one single-threaded core, i.e. the speed of one run of the CLI's run axis.
``--xla=default`` leaves XLA's flags alone instead (one device, multi-threaded Eigen).
"""

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
KEEPS = (0.5, 0.25, 0.1)
# network -> (config file, input shape, default scan steps, inference batch, inference calls per
# timing). Conv-2's dense step takes ~0.3-0.8 s on one single-threaded core here (15 GFLOP), so a
# few steps and a 500-example inference batch keep a call near a second and the whole network under
# ~2 minutes. LeNet's 1,000-example forward pass takes ~1-10 ms, too short to time alone on a shared
# machine, so one timing is 20 calls in a row.
NETWORKS = {
    "lenet": ("lenet300_100.py", (28, 28, 1), 300, 1000, 20),
    "conv2": ("conv2.py", (32, 32, 3), 3, 500, 1),
}
BATCH = 60


def load_config(filename: str):
    spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, "configs", filename))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def child(spec: dict) -> list[dict]:
    """All rows of one network, in this (fresh) process."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lth_jax import compaction, masks, models, structured
    from lth_jax import train as train_lib
    from lth_jax.models import convolution

    config_file, shape, _, _, _ = NETWORKS[spec["network"]]
    cfg = load_config(config_file)
    options = {"conv": spec["conv"]} if "conv" in models.default_options(cfg.model.name) else {}
    model = models.create(cfg.model.name, **options)
    params = models.init(model, jax.random.key(0), shape)["params"]
    dense_mask = masks.ones_like(params)
    links = structured.sequential_links(params)
    producers = {p for p, _ in links}
    steps, repeats, infer_batch = spec["steps"], spec["repeats"], spec["infer_batch"]
    infer_calls = spec["infer_calls"]

    # Synthetic data: the step's cost does not depend on the values.
    kx, ky, ki = jax.random.split(jax.random.key(1), 3)
    xs = jax.random.normal(kx, (steps, BATCH) + tuple(shape), jnp.float32)
    ys = jax.random.randint(ky, (steps, BATCH), 0, 10)
    x_infer = jax.random.normal(ki, (infer_batch,) + tuple(shape), jnp.float32)

    def trainer_of(m):
        return train_lib.make_trainer(m, cfg.train, augment=False)

    def scan_fn(trainer):
        # The way lth_jax trains: a whole stretch of steps is one scanned program, so convolution
        # gradients sit inside a while loop (where XLA:CPU's slow path would show).
        def run(state, mask, xs, ys):
            def body(s, inputs):
                i, x, y = inputs
                return trainer.step(s, mask, x, y, i, jax.random.key(0))
            return jax.lax.scan(body, state, (jnp.arange(xs.shape[0]), xs, ys))
        return jax.jit(run)

    def step_gflop(trainer, state, mask):
        compiled = jax.jit(trainer.step).lower(state, mask, xs[0], ys[0], jnp.int32(0),
                                               jax.random.key(0)).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost.get("flops", 0.0)) / 1e9

    canonical = jax.lax.conv_dimension_numbers((1,) * 4, (1,) * 4, ("NHWC", "HWIO", "NHWC"))

    def conv_layouts(trainer, state, mask):
        """'k/n': k of the n convolutions in one train step (forward and gradients) are canonical
        NHWC/HWIO/NHWC ones, the layout XLA:CPU runs fast inside a scan; plain nn.Conv's gradients
        are not (convolution.py). Read from the jaxpr, sub-jaxprs included; '-' without convs."""
        found = []

        def walk(jaxpr):
            for eqn in jaxpr.eqns:
                if eqn.primitive.name == "conv_general_dilated":
                    found.append(eqn.params["dimension_numbers"] == canonical)
                for value in eqn.params.values():
                    for sub in value if isinstance(value, (list, tuple)) else (value,):
                        if hasattr(sub, "eqns"):
                            walk(sub)
                        elif hasattr(getattr(sub, "jaxpr", None), "eqns"):
                            walk(sub.jaxpr)

        walk(jax.make_jaxpr(trainer.step)(state, mask, xs[0], ys[0], jnp.int32(0),
                                          jax.random.key(0)).jaxpr)
        return f"{sum(found)}/{len(found)}" if found else "-"

    def timed(fn, *args, calls=1):
        """Seconds per call, over ``calls`` calls in a row."""
        t0 = time.perf_counter()
        for _ in range(calls):
            jax.block_until_ready(fn(*args))
        return (time.perf_counter() - t0) / calls

    count = lambda tree: int(sum(np.size(x) for x in jax.tree.leaves(tree)))
    alive = lambda tree: int(sum(np.sum(np.asarray(x)) for x in jax.tree.leaves(tree)))

    dense_trainer = trainer_of(model)
    dense_train = scan_fn(dense_trainer)
    dense_state = dense_trainer.init_state(params, {})
    dense_fwd = jax.jit(lambda p, m, x: model.apply({"params": masks.apply(p, m)}, x))
    dense_gflop = step_gflop(dense_trainer, dense_state, dense_mask)

    cases = []
    for keep in spec["keeps"]:
        rates = jax.tree_util.tree_map_with_path(
            lambda path, _: 1.0 - keep if masks.path_str(path) in {f"{p}/kernel" for p in producers}
            else 0.0, params)
        mask = structured.neuron_magnitude(params, dense_mask, rates, links=links)
        small = compaction.compact(model, params, mask)
        ones = masks.ones_like(small.params)
        trainer = trainer_of(small.model)
        state = trainer.init_state(small.params, {})
        fwd = jax.jit(lambda p, x, m=small.model: m.apply({"params": p}, x))
        train = scan_fn(trainer)
        # Compile and check: same logits; then one warm call of each training program.
        diff = float(jnp.max(jnp.abs(dense_fwd(params, mask, x_infer) - fwd(small.params, x_infer))))
        timed(dense_train, dense_state, mask, xs, ys)
        timed(train, state, ones, xs, ys)
        widths = (tuple(small.model.conv_features) + tuple(small.model.dense_features)
                  if hasattr(small.model, "conv_features") else tuple(small.model.features))
        cases.append(dict(
            keep=keep, mask=mask, small=small, ones=ones, state=state, fwd=fwd, train=train,
            row=dict(
                network=spec["network"], model=cfg.model.name, keep=keep, widths=list(widths),
                params_dense=count(params), params_alive=alive(mask),
                params_compact=count(small.params),
                compact_mask_all_true=alive(small.mask) == count(small.params),
                max_abs_logit_diff=diff,
                conv=(convolution.resolve(small.model.conv)
                      if hasattr(small.model, "conv") else "-"),
                canonical_convs_compact=conv_layouts(trainer, state, ones),
                canonical_convs_dense=conv_layouts(dense_trainer, dense_state, mask),
                step_gflop_dense=dense_gflop, step_gflop_compact=step_gflop(trainer, state, ones),
                train_steps=steps, infer_batch=infer_batch, infer_calls=infer_calls,
                repeats=repeats),
            t={"train_dense": [], "train_compact": [], "infer_dense": [], "infer_compact": []}))

    for r in range(repeats):
        shift = r % len(cases)
        for c in cases[shift:] + cases[:shift]:
            pairs = [("train_dense", dense_train, (dense_state, c["mask"], xs, ys)),
                     ("train_compact", c["train"], (c["state"], c["ones"], xs, ys)),
                     ("infer_dense", dense_fwd, (params, c["mask"], x_infer)),
                     ("infer_compact", c["fwd"], (c["small"].params, x_infer))]
            for kind in ("train", "infer"):
                first, second = [p for p in pairs if p[0].startswith(kind)]
                order = (first, second) if r % 2 == 0 else (second, first)
                for name, fn, args in order:
                    c["t"][name].append(timed(fn, *args, calls=1 if kind == "train" else infer_calls))

    rows = []
    for c in cases:
        t = c["t"]
        med = {k: statistics.median(v) for k, v in t.items()}
        row = c["row"] | {
            "train_steps_per_s_dense": steps / med["train_dense"],
            "train_steps_per_s_compact": steps / med["train_compact"],
            "train_speedup": statistics.median(
                d / s for d, s in zip(t["train_dense"], t["train_compact"])),
            "infer_examples_per_s_dense": infer_batch / med["infer_dense"],
            "infer_examples_per_s_compact": infer_batch / med["infer_compact"],
            "infer_speedup": statistics.median(
                d / s for d, s in zip(t["infer_dense"], t["infer_compact"])),
            "seconds": t,
            "platform": jax.devices()[0].platform, "devices_visible": len(jax.devices()),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
        }
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    print("| network | kept | widths | params dense / alive / compact | step GFLOP dense / compact "
          "| train steps/s dense | compact | × | infer ex/s dense | compact | × | max Δlogit |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['network']} | {100 * r['keep']:.0f}% | {'-'.join(map(str, r['widths']))} "
              f"| {r['params_dense']:,} / {r['params_alive']:,} / {r['params_compact']:,} "
              f"| {r['step_gflop_dense']:.3f} / {r['step_gflop_compact']:.3f} "
              f"| {r['train_steps_per_s_dense']:,.1f} | {r['train_steps_per_s_compact']:,.1f} "
              f"| {r['train_speedup']:.2f} "
              f"| {r['infer_examples_per_s_dense']:,.0f} | {r['infer_examples_per_s_compact']:,.0f} "
              f"| {r['infer_speedup']:.2f} | {r['max_abs_logit_diff']:.1e} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--networks", default="lenet,conv2", help="comma-separated: lenet, conv2")
    parser.add_argument("--keeps", default=",".join(map(str, KEEPS)),
                        help="fractions of hidden units kept")
    parser.add_argument("--steps", type=int, default=0,
                        help="train steps per scanned call (default: lenet 300, conv2 3)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per program")
    parser.add_argument("--infer_batch", type=int, default=0, help="inference batch (default: lenet 1000, conv2 500)")
    parser.add_argument("--conv", default="auto", help="Conv-2's convolution: auto | xla | canonical_vjp | winograd")
    parser.add_argument("--xla", default="cli", choices=("cli", "default"),
                        help="cli: the CLI's CPU flags (single-threaded devices); default: none")
    parser.add_argument("--json", default="", help="also write the rows to this JSON file")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(json.loads(args.child))), flush=True)
        return

    env = dict(os.environ)
    ncpu = os.cpu_count() or 1
    if args.xla == "cli":  # as the CLI sets them on a CPU (the probe of the platform is skipped:
        # these flags only touch the host platform)
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count="
                            f"{ncpu} --xla_cpu_multi_thread_eigen=false").strip()
    print(f"XLA_FLAGS={env.get('XLA_FLAGS', '')!r}; one device used; {ncpu} cores; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for network in [n for n in args.networks.split(",") if n]:
        if network not in NETWORKS:
            raise SystemExit(f"unknown network {network!r}; choose from {', '.join(NETWORKS)}")
        _, _, steps, infer_batch, infer_calls = NETWORKS[network]
        spec = dict(network=network, keeps=[float(k) for k in args.keeps.split(",")],
                    steps=args.steps or steps, repeats=args.repeats, conv=args.conv,
                    infer_batch=args.infer_batch or infer_batch, infer_calls=infer_calls)
        t0 = time.perf_counter()
        # A fresh process per network: XLA's flags are read once, at start-up.
        out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env,
                             capture_output=True, text=True, cwd=ROOT)
        lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
        if out.returncode or not lines:
            print(f"{network}: FAILED: {(out.stderr.strip().splitlines() or ['(no output)'])[-1]}")
            continue
        got = json.loads(lines[-1][7:])
        print(f"{network}: {time.perf_counter() - t0:.0f} s wall; conv {got[0]['conv']}; canonical "
              f"convolutions per train step: dense {got[0]['canonical_convs_dense']}, compact "
              f"{', '.join(r['canonical_convs_compact'] for r in got)}; load average now "
              f"{os.getloadavg()[0]:.2f}", flush=True)
        for r in got:
            done, total = (r["canonical_convs_compact"] + "/0").split("/")[:2]
            if r["conv"] in ("canonical_vjp", "winograd") and done != total:
                print(f"WARNING: {network} at {r['keep']:.0%}: only {done} of {total} convolutions "
                      "of the compact step are canonical; its gradients take XLA:CPU's slow path")
        rows += got
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
