r"""Training throughput of lth_jax: model-steps/s, examples/s, GFLOP/s against the machine's matmul rate.

    python experiments/benchmark.py                 # all cases (LeNet's: ~6 minutes on a 2-core CPU;
                                                    # Conv-2's did not finish in 500 s there)
    python experiments/benchmark.py --cases=lenet   # a subset (comma-separated name prefixes)
    python experiments/benchmark.py --iterations=4000 --runs=4

Each case runs in a fresh process (XLA's device count and threading are fixed at start-up) and trains
R runs of a level with the real program of `lth_jax.lottery.Runner` (masked Adam steps, on-device
batching from a keyed permutation, periodic evaluation) on synthetic data of the network's input
shape. It reports:

* model-steps/s: R · iterations / wall seconds of the second call (the first one compiles);
* examples/s: model-steps/s · batch size;
* GFLOP/s: XLA's own flop count of one train step (``compiled.cost_analysis()``) · model-steps/s,
  next to the rate of a 2048×2048 float32 matmul measured in the same script (an upper bound for
  dense training on this machine);
* the share of the time spent in evaluation (same run with evaluation every iteration budget vs. the
  paper's every 100 iterations);
* compile seconds and peak memory (host RSS; device peak on GPUs).

Runs as-is on CPU and GPU; on a GPU it adds VGG-19 at batch 64.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CPU_SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false"


def cases(platform_hint: str, ncpu: int):
    """(name, env XLA_FLAGS, model, batch, runs-scale, batching, eval_every or 0 = once at the end)."""
    many = f"--xla_force_host_platform_device_count={ncpu} {CPU_SINGLE_THREAD}"
    out = [
        ("lenet/1dev/vmap", "", "lenet300_100", 60, "vmap", 100),
        ("lenet/1dev/map", "", "lenet300_100", 60, "map", 100),
        (f"lenet/{ncpu}dev/map (default)", many, "lenet300_100", 60, "map", 100),
        (f"lenet/{ncpu}dev/map train-only", many, "lenet300_100", 60, "map", 0),
        # Conv-2's evaluation passes (~1 s per 1,000 examples here) would dwarf a short budget:
        # train-only, with one small evaluation at the end.
        (f"conv2/{ncpu}dev/map train-only", many, "conv2", 60, "map", 0),
    ]
    if platform_hint == "gpu":
        out = [
            ("lenet/gpu/vmap", "", "lenet300_100", 60, "vmap", 100),
            ("lenet/gpu/vmap train-only", "", "lenet300_100", 60, "vmap", 0),
            ("conv2/gpu/vmap", "", "conv2", 60, "vmap", 100),
            ("vgg19/gpu/vmap", "", "vgg19", 64, "vmap", 100),
        ]
    return out


def child(spec: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lth_jax import config as config_lib
    from lth_jax import lottery, masks

    c = config_lib.base_config()
    c.model.name = spec["model"]
    c.dataset.name = c.dataset.source = "synthetic"
    c.dataset.image_shape = (28, 28, 1) if spec["model"] == "lenet300_100" else (32, 32, 3)
    c.dataset.train_size = 55_000 if spec["model"] == "lenet300_100" else 50_000
    lenet = spec["model"] == "lenet300_100"
    # The paper's 5K validation + 10K test for LeNet; a token 500 + 500 for the train-only conv cases.
    c.dataset.test_size = 10_000 if lenet or spec["eval_every"] else 500
    c.dataset.validation_size = 5_000 if lenet or spec["eval_every"] else 500
    c.dataset.augment = "on" if spec["model"] == "vgg19" else "off"
    c.train.iterations = spec["iterations"]
    c.train.batch_size = spec["batch"]
    c.train.eval_every = spec["eval_every"] or spec["iterations"]
    c.train.eval_batch_size = 2500 if spec["model"] == "lenet300_100" else 500
    c.prune.levels = 0
    exp = lottery.setup(c)
    runner = lottery.Runner(exp, 0, spec["batching"])
    runs = spec["runs"]
    keys = jnp.stack([lottery.trial_key(0, t, lottery.INIT) for t in range(runs)])
    variables = jax.jit(jax.vmap(exp.init_variables))(keys)
    mask = jax.vmap(masks.ones_like)(variables["params"])

    def once():
        t0 = time.perf_counter()
        runner(variables["params"], variables["batch_stats"], mask, keys, keys, start=0, capture=-1)
        return time.perf_counter() - t0

    first = once()
    second = min(once() for _ in range(spec["repeats"]))
    # XLA's flop count of one masked train step of one run.
    p0 = jax.tree.map(lambda x: x[0], variables)
    m0 = jax.tree.map(lambda x: x[0], mask)
    state = exp.trainer.init_state(p0["params"], p0["batch_stats"])
    x = jnp.zeros((spec["batch"],) + tuple(c.dataset.image_shape), jnp.float32)
    y = jnp.zeros((spec["batch"],), jnp.int32)
    compiled = jax.jit(exp.trainer.step).lower(state, m0, x, y, jnp.int32(0),
                                                jax.random.key(0)).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    step_flops = float(cost.get("flops", 0.0))

    a = jax.random.normal(jax.random.key(0), (2048, 2048), jnp.float32)
    dot = jax.jit(lambda a: a @ a)
    dot(a).block_until_ready()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        dot(a).block_until_ready()
        times.append(time.perf_counter() - t0)
    matmul_gflops = 2 * 2048 ** 3 / float(np.median(times)) / 1e9

    device = jax.devices()[0]
    peak = None
    try:
        stats = device.memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
    except Exception:  # CPU devices have no memory stats
        pass
    steps_per_s = runs * spec["iterations"] / second
    return {
        "devices": len(runner.devices), "platform": device.platform, "device_kind": device.device_kind,
        "model_steps_per_s": steps_per_s, "examples_per_s": steps_per_s * spec["batch"],
        "step_gflop": step_flops / 1e9, "achieved_gflops": steps_per_s * step_flops / 1e9,
        "matmul_gflops": matmul_gflops, "compile_s": max(first - second, 0.0), "seconds": second,
        "host_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device_peak_mb": peak / 2 ** 20 if peak else None,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="", help="comma-separated name prefixes (default: all)")
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--conv_iterations", type=int, default=0,
                        help="iterations of the conv cases (default: 30 on a CPU, 200 on a GPU)")
    parser.add_argument("--runs", type=int, default=4, help="runs per level (trials × variants)")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls after the compiling one")
    parser.add_argument("--json", default="", help="also write the rows to this JSON file")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(json.loads(args.child))), flush=True)
        return

    probe = subprocess.run([sys.executable, "-c", "import jax; print(jax.devices()[0].platform)"],
                           capture_output=True, text=True)
    platform = probe.stdout.strip().splitlines()[-1] if probe.stdout.strip() else "cpu"
    ncpu = os.cpu_count() or 1
    wanted = [w for w in args.cases.split(",") if w]
    rows = []
    print(f"{'case':<32} {'runs':>4} {'model-steps/s':>13} {'examples/s':>11} {'GFLOP/s':>8} "
          f"{'matmul GFLOP/s':>14} {'compile s':>9} {'peak MB':>8}")
    for name, xla_flags, model, batch, batching, eval_every in cases(platform, ncpu):
        if wanted and not any(name.startswith(w) for w in wanted):
            continue
        # The conv nets are ~200x LeNet's work per step: a short budget and one run per device.
        iterations = args.iterations if model == "lenet300_100" else (
            args.conv_iterations or (30 if platform == "cpu" else 200))
        runs = args.runs if model == "lenet300_100" else (ncpu if platform == "cpu" else 1)
        spec = dict(model=model, batch=batch, batching=batching, eval_every=eval_every,
                    iterations=iterations, runs=runs,
                    repeats=args.repeats if model == "lenet300_100" else 1)
        env = dict(os.environ)
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + xla_flags).strip()
        out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env,
                             capture_output=True, text=True)
        lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
        if out.returncode or not lines:
            print(f"{name:<32} FAILED: {out.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(lines[-1][7:]) | {"case": name, "runs": runs, "iterations": iterations}
        rows.append(r)
        peak = r["device_peak_mb"] or r["host_peak_rss_mb"]
        print(f"{name:<32} {runs:>4} {r['model_steps_per_s']:>13,.0f} {r['examples_per_s']:>11,.0f} "
              f"{r['achieved_gflops']:>8.1f} {r['matmul_gflops']:>14.1f} {r['compile_s']:>9.1f} "
              f"{peak:>8.0f}", flush=True)
    by_case = {r["case"].split(" ")[0] + (" train-only" if "train-only" in r["case"] else ""): r
               for r in rows}
    full = [r for r in rows if r["case"].startswith("lenet") and "(default)" in r["case"]]
    bare = [r for r in rows if r["case"].startswith("lenet") and "train-only" in r["case"]]
    if full and bare:
        share = 1 - full[0]["model_steps_per_s"] / bare[0]["model_steps_per_s"]
        print(f"\nLeNet: evaluation every 100 iterations (5K validation + 10K test examples) takes "
              f"{100 * share:.0f}% of the time.")
    if full:
        r = full[0]
        print(f"LeNet: one train step is {r['step_gflop'] * 1e3:.1f} MFLOP (XLA's count); "
              f"{r['achieved_gflops']:.0f} GFLOP/s achieved = {100 * r['achieved_gflops'] / r['matmul_gflops']:.0f}% "
              f"of the measured matmul rate.")
    del by_case
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
