r"""Training speed of lth_jax on every network of the paper, against the machine and PyTorch.

    python benchmarks/benchmark.py                      # every case (~30 minutes on a 2-core CPU)
    python benchmarks/benchmark.py --cases=conv2,e2e    # a subset (comma-separated name prefixes)
    python benchmarks/benchmark.py --cases=resnet20,e2e-resnet20   # ResNet-20 steady, end to end
    python benchmarks/benchmark.py --notorch            # without the PyTorch columns
    python benchmarks/benchmark.py --cases=conv,vgg,resnet --conv=xla,canonical_vjp,winograd --notorch
                                   # on a GPU: which convolution model.conv="auto" should pick

Cases, each in a fresh process (XLA's device count and threading are fixed at start-up):

* one row per network: LeNet-300-100 (batch 60), Conv-2/4/6 (60), VGG-19 (64), ResNet-20 (128), on
  synthetic data of the network's input shape, with the paper's optimizer (the network's config in
  ``configs/``). Each trains R runs of a level with the real program of ``lottery.Runner`` (masked
  steps, on-device batching, the run axis spread over the host devices as the CLI does). LeNet's
  row evaluates as the paper does (5K validation + 10K test examples every 100 iterations), and a
  second LeNet row trains only; the conv rows train only (one evaluation of 8 + 8 examples at the end), so they
  show the steady state of training;
* ``e2e-conv2`` and ``e2e-resnet20`` (``e2e`` selects both): the CLI, ``python -m lth_jax.main
  --config=configs/conv2.py`` (``resnet18.py``) on synthetic data with 2 trials × 300 iterations,
  timed from the shell (start-up, data, compilation, evaluation of 5K + 2K examples every 100
  iterations and checkpoints included), against PyTorch doing the same training steps and the same
  number of evaluated examples in one process (start-up and its compilation included), in the
  variant that won the network's steady-state row of the same call (channels-last eager where that
  row did not run). ResNet-20's CLI run also augments its batches (flips and crops, the paper's);
  PyTorch's does not.

Columns:
* model-steps/s: R · iterations / wall seconds of the second call (the first one compiles);
* GFLOP/s: XLA's own count of one masked train step (``compiled.cost_analysis()``, with the
  kernel gradient in one piece: ``step_flop_count``) · model-steps/s; the JSON also has the count
  of the same step with XLA's own convolutions (``stock_conv_step_gflop``);
  "% matmul": that against a 2048×2048 float32 matmul measured in its own process with all cores
  (the dense-linear-algebra rate this machine reaches, the natural ceiling for training of
  direct convolutions);
* direct %: the same with the FLOPs of the step with XLA's own (direct) convolutions
  (``stock_conv_step_gflop``, the convention for "effective" rates of fast convolution
  algorithms): where Winograd's F(2x2, 3x3) computes a layer (``model.conv=winograd``, "auto" on
  CPUs) the step does ~2.25x fewer multiplies in it, so its own count (GFLOP/s, % matmul) drops
  while the rate of the work a direct convolution would have done can pass 100%;
* compile s: first call minus second; peak MB: the process's peak RSS (device peak on GPUs);
* PyTorch: the same network, batch and masked step with as many threads as cores
  (``benchmarks/torch_reference.py``), each variant in a process of its own: eager in NCHW
  ("eager"), eager in channels-last ("chan-last"), and the whole train step under
  ``torch.compile`` ("compiled", channels-last); "best" is the fastest of them, "won" names it and
  "t-comp s" is the compiled variant's compilation (its warm-up steps beyond steady ones, with an
  empty Inductor cache);
  "× best": lth_jax's model-steps/s over the best. LeNet has no convolution: no channels-last row.
"""

import argparse
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CPU_SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false"
# (case, config file, batch, iterations on CPU / on GPU, evaluate as the paper does)
NETWORKS = [
    ("lenet", "lenet300_100.py", 60, (3000, 3000), True),
    ("lenet train-only", "lenet300_100.py", 60, (3000, 3000), False),
    ("conv2", "conv2.py", 60, (30, 300), False),
    ("conv4", "conv4.py", 60, (20, 300), False),
    ("conv6", "conv6.py", 60, (16, 300), False),
    ("vgg19", "vgg19.py", 64, (6, 100), False),
    ("resnet20", "resnet18.py", 128, (12, 200), False),
]


def load_config(filename: str):
    spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, "configs", filename))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def step_flop_count(step, *args) -> float:
    """XLA's count of the FLOPs of ``step(*args, 0, key)``, with lth_jax's convolutions traced in
    one piece (``convolutions_in_one_piece``): XLA counts a loop's body once, and the kernel
    gradients and Winograd products are loops over chunks of the batch on CPUs
    (``lth_jax.models.convolution``); in one piece they do the same matmuls, transforms and
    window copies."""
    import jax
    import jax.numpy as jnp

    from lth_jax.models import convolution

    with convolution.convolutions_in_one_piece():
        compiled = jax.jit(step).lower(*args, jnp.int32(0), jax.random.key(0)).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0))


def child(spec: dict) -> dict:
    """One network row, in its own process."""
    import jax
    import jax.numpy as jnp

    from lth_jax import lottery, masks

    c = load_config(spec["config"])
    c.dataset.source = "synthetic"
    lenet = c.model.name == "lenet300_100"
    if not lenet:
        c.model.conv = spec.get("conv", "auto")
    c.dataset.train_size = 55_000 if lenet else 10_000
    # The train-only rows evaluate a token 8 + 8 examples (VGG-19's forward pass over a few hundred
    # would take as long as its timed training steps on a CPU).
    c.dataset.validation_size = 5_000 if spec["paper_eval"] else 8
    c.dataset.test_size = 10_000 if spec["paper_eval"] else 8
    c.train.iterations = spec["iterations"]
    c.train.batch_size = spec["batch"]
    c.train.eval_every = 100 if spec["paper_eval"] else spec["iterations"]
    c.train.test_every_evals = 1
    c.train.warmup_iterations = 0
    c.train.lr_drops = ()
    c.train.eval_batch_size = 2500 if spec["paper_eval"] else 8
    c.prune.levels = 0
    exp = lottery.setup(c)
    slices = spec.get("slice_iterations", 0)
    runner = lottery.Runner(exp, 0, "auto",
                            slice_iterations=c.train.eval_every if slices < 0 else slices)
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
    x = jnp.zeros((spec["batch"],) + tuple(exp.input_shape), jnp.float32)
    y = jnp.zeros((spec["batch"],), jnp.int32)
    step_flops = step_flop_count(exp.trainer.step, state, m0, x, y)
    # The same step with XLA's own convolutions: the count does not depend on how lth_jax computes
    # the gradients (its windows count the padded border's zeros, XLA's convolutions do not).
    stock_flops = None
    if getattr(exp.model, "conv", None) is not None:
        c.model.conv = "xla"
        stock_flops = step_flop_count(lottery.setup(c).trainer.step, state, m0, x, y) / 1e9
    device = jax.devices()[0]
    peak = None
    try:
        peak = (device.memory_stats() or {}).get("peak_bytes_in_use")
    except Exception:  # CPU devices have no memory stats
        pass
    steps_per_s = runs * spec["iterations"] / second
    return {
        "devices": len(runner.devices), "platform": device.platform,
        "device_kind": device.device_kind, "conv": getattr(exp.model, "conv", "-"),
        "model_steps_per_s": steps_per_s, "examples_per_s": steps_per_s * spec["batch"],
        "step_gflop": step_flops / 1e9, "achieved_gflops": steps_per_s * step_flops / 1e9,
        "stock_conv_step_gflop": stock_flops,
        "direct_equivalent_gflops": steps_per_s * (stock_flops or step_flops / 1e9),
        "compile_s": max(first - second, 0.0), "seconds": second,
        "host_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device_peak_mb": peak / 2 ** 20 if peak else None,
    }


def matmul_child() -> dict:
    """GFLOP/s of a 2048x2048 float32 matmul (median of 7), all cores on one device."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    a = jax.random.normal(jax.random.key(0), (2048, 2048), jnp.float32)
    dot = jax.jit(lambda a: a @ a)
    dot(a).block_until_ready()
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        dot(a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return {"matmul_gflops": 2 * 2048 ** 3 / float(np.median(times)) / 1e9}


def _subprocess(args, env=None, timeout=1800) -> tuple[dict | None, float, str]:
    """Run a child; (its RESULT json or None, wall seconds, the last line of stderr)."""
    t0 = time.perf_counter()
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    wall = time.perf_counter() - t0
    lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    if out.returncode or not lines:
        return None, wall, (out.stderr.strip().splitlines() or ["(no output)"])[-1]
    return json.loads(lines[-1][7:]), wall, ""


TORCH_VARIANTS = ("eager", "channels_last", "compile")


def _torch(args, timeout=1800) -> tuple[dict | None, float, str]:
    """``benchmarks/torch_reference.py args`` in a process of its own (see :func:`_subprocess`),
    with an empty Inductor cache: ``torch.compile`` compiles from scratch, as on a first run,
    rather than loading what an earlier call compiled."""
    with tempfile.TemporaryDirectory(prefix="lth_jax_inductor_") as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
        return _subprocess([sys.executable, os.path.join(HERE, "torch_reference.py"), *args],
                           env=env, timeout=timeout)


def torch_row(model: str, batch: int, steps: int, threads: int, shape,
              variants=TORCH_VARIANTS) -> dict:
    """PyTorch's steps/s for each variant (``benchmarks/torch_reference.py``, a process each):
    ``{variant: result or None}``, then ``best`` (the variant with the most steps/s, None if none
    ran) and ``best_steps_per_s``."""
    rows = {}
    for variant in variants:
        if variant == "channels_last" and model == "lenet300_100":
            continue  # no convolution: the same program as eager
        result, _, err = _torch([
            f"--model={model}", f"--batch={batch}", f"--steps={steps}", f"--threads={threads}",
            "--shape=" + ",".join(map(str, shape)), f"--variant={variant}"])
        if result is None:
            print(f"  (PyTorch {model} {variant}: {err})")
        rows[variant] = result
    ran = {v: r for v, r in rows.items() if r}
    best = max(ran, key=lambda v: ran[v]["steps_per_s"]) if ran else None
    return {"variants": rows, "best": best,
            "best_steps_per_s": ran[best]["steps_per_s"] if best else None}


#: The end-to-end rows: (case, config file, model name, batch, the CLI's extra flags). ResNet-20's
#: schedule (20K warm-up iterations, drops at 20K and 25K) does not fit 300 iterations; the
#: learning rate's schedule does not change a step's work.
END_TO_END = [("e2e-conv2", "conv2.py", "conv2", 60, ()),
              ("e2e-resnet20", "resnet18.py", "resnet20", 128,
               ("--config.train.lr_drops=()", "--config.train.warmup_iterations=0"))]


def end_to_end(config: str, model: str, batch: int, ncpu: int, torch_variant: str | None,
               flags=()) -> dict:
    """The CLI on ``config`` (2 trials x 300 iterations, ``flags`` added) against PyTorch doing the
    same work in ``torch_variant`` (None: no PyTorch)."""
    trials, iterations, eval_every, val, test = 2, 300, 100, 5000, 2000
    workdir = tempfile.mkdtemp(prefix="lth_jax_e2e_")
    try:
        args = [sys.executable, "-m", "lth_jax.main", f"--config=configs/{config}",
                f"--workdir={workdir}", "--noreport", "--config.dataset.source=synthetic",
                f"--config.train.iterations={iterations}", f"--config.trials={trials}",
                f"--config.train.eval_every={eval_every}",
                "--config.prune.levels=0", f"--config.dataset.validation_size={val}",
                f"--config.dataset.test_size={test}", *flags]
        t0 = time.perf_counter()
        out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
        cli = time.perf_counter() - t0
        if out.returncode:
            raise RuntimeError(f"the CLI failed: {out.stderr.strip().splitlines()[-1:]}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    row = {"cli_seconds": cli, "trials": trials, "iterations": iterations, "config": config}
    if torch_variant:
        # The same evaluated examples: per run, (val + test) at every evaluation, plus the test set
        # at the early-stopping point and at the end.
        evals = iterations // eval_every
        examples = trials * (evals * (val + test) + 2 * test)
        per_eval = examples // (trials * evals)
        result, wall, err = _torch(
            [f"--model={model}", f"--batch={batch}", f"--steps={trials * iterations}",
             f"--threads={ncpu}", f"--eval_examples={per_eval}", f"--eval_every={eval_every}",
             f"--variant={torch_variant}"], timeout=3600)
        row["torch_variant"] = torch_variant
        row["torch_seconds"] = wall if result else None
        if result is None:
            print(f"  (PyTorch e2e {model}: {err})")
    return row


def _torch_columns(row: dict) -> str:
    """The PyTorch part of a printed row: steps/s of each variant, the compiled variant's
    compilation seconds, the best steps/s, which variant it was, and lth_jax over it."""
    variants = row.get("torch") or {}
    rate = lambda v: f"{variants[v]['steps_per_s']:.2f}" if variants.get(v) else "-"
    compiled = variants.get("compile")
    compile_s = f"{compiled['compile_s']:.0f}" if compiled else "-"
    best = row.get("torch_steps_per_s")
    best_text = f"{best:.2f}" if best else "-"
    versus = f"{row['model_steps_per_s'] / best:.2f}" if best else "-"
    won = {"eager": "eager", "channels_last": "chan-last", "compile": "compiled"}.get(
        row.get("torch_best"), "-")
    return (f"{rate('eager'):>7} {rate('channels_last'):>9} {rate('compile'):>8} "
            f"{compile_s:>8} {best_text:>7} {won:>9} {versus:>6}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="", help="comma-separated name prefixes (default: all)")
    parser.add_argument("--iterations", type=int, default=0,
                        help="override every network row's iteration count")
    parser.add_argument("--runs", type=int, default=4, help="LeNet runs per level")
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed calls after the compiling one (LeNet; conv rows time one)")
    parser.add_argument("--notorch", action="store_true", help="skip the PyTorch columns")
    parser.add_argument("--torch_variants", default=",".join(TORCH_VARIANTS),
                        help="comma-separated PyTorch variants to time "
                        f"({', '.join(TORCH_VARIANTS)}); the best of them is the baseline")
    parser.add_argument("--json", default="", help="also write the rows to this JSON file")
    parser.add_argument("--conv", default="auto",
                        help="comma-separated model.conv values, each conv row run with each in "
                        "turn (auto, xla, canonical_vjp, winograd): on a GPU, "
                        "`--conv=xla,canonical_vjp,winograd` "
                        "measures what model.conv=auto should pick there")
    parser.add_argument("--slice_iterations", default="0",
                        help="comma-separated runtime.slice_iterations values, each row run with "
                        "each in turn (0 = auto, -1 = one slice per evaluation period)")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "matmul":
        print("RESULT " + json.dumps(matmul_child()), flush=True)
        return
    if args.child:
        print("RESULT " + json.dumps(child(json.loads(args.child))), flush=True)
        return

    probe, _, _ = _subprocess([sys.executable, "-c", "import jax, json; "
                               "print('RESULT ' + json.dumps(jax.devices()[0].platform))"])
    platform = probe or "cpu"
    ncpu = os.cpu_count() or 1
    use_torch = not args.notorch and importlib.util.find_spec("torch") is not None
    if not args.notorch and not use_torch:
        print("(PyTorch is not installed: no PyTorch columns; pip install torch)")
    wanted = [w for w in args.cases.split(",") if w]
    selected = lambda name: not wanted or any(name.startswith(w) for w in wanted)
    matmul, _, _ = _subprocess([sys.executable, __file__, "--child=matmul"])
    matmul = matmul["matmul_gflops"] if matmul else float("nan")
    print(f"platform {platform}, {ncpu} cores; 2048x2048 float32 matmul: {matmul:.1f} GFLOP/s")
    torch_variants = [v for v in args.torch_variants.split(",") if v]
    unknown = sorted(set(torch_variants) - set(TORCH_VARIANTS))
    if unknown:
        parser.error(f"unknown --torch_variants {', '.join(unknown)}")
    print(f"{'case':<26} {'runs':>4} {'iters':>5} {'model-steps/s':>13} {'GFLOP/s':>8} "
          f"{'% matmul':>8} {'direct %':>8} {'compile s':>9} {'peak MB':>8} "
          f"{'eager':>7} {'chan-last':>9} {'compiled':>8} {'t-comp s':>8} {'best':>7} "
          f"{'won':>9} {'× best':>6}")
    rows = []
    torch_best = {}  # model name -> the variant that won its steady-state row
    slicings = [int(v) for v in args.slice_iterations.split(",")]
    convs = [v for v in args.conv.split(",") if v]
    for (name, config, batch, iterations, paper_eval), slices, conv in (
            (n, s, c) for n in NETWORKS for s in slicings for c in convs):
        lenet = name.startswith("lenet")
        if not selected(name) or (lenet and conv != convs[0]):  # LeNet has no convolution
            continue
        if len(slicings) > 1:
            name = f"{name} /{'period' if slices < 0 else slices or 'auto'}"
        if not lenet and convs != ["auto"]:
            name = f"{name} [{conv}]"
        iters = args.iterations or iterations[platform != "cpu"]
        runs = args.runs if lenet else (ncpu if platform == "cpu" else 1)
        spec = dict(config=config, batch=batch, iterations=iters, runs=runs,
                    paper_eval=paper_eval, repeats=args.repeats if lenet else 1,
                    slice_iterations=slices, conv=conv)
        env = dict(os.environ)
        if platform == "cpu":  # as the CLI sets it: one single-threaded device per core
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_"
                                f"count={ncpu} {CPU_SINGLE_THREAD}").strip()
        r, _, err = _subprocess([sys.executable, __file__, "--child", json.dumps(spec)], env=env)
        if r is None:
            print(f"{name:<26} FAILED: {err}")
            continue
        r |= {"case": name, "runs": runs, "iterations": iters, "batch": batch,
              "matmul_gflops": matmul}
        if (use_torch and "train-only" not in name and slices == slicings[0]
                and conv == convs[0]):
            model = load_config(config).model.name
            shape = (28, 28, 1) if lenet else (32, 32, 3)
            # Steps after PyTorch's warm-up ones (torch_reference.WARMUP_STEPS, where the compiled
            # variant compiles): LeNet's are short, a conv row's as many as ours or 20.
            steps = 3 + max(8, min(iters, 200 if lenet else 20))
            t = torch_row(model, batch, steps, ncpu, shape, torch_variants)
            r["torch"] = t["variants"]
            r["torch_best"] = t["best"]
            r["torch_steps_per_s"] = t["best_steps_per_s"]
            if t["best"]:
                torch_best[model] = t["best"]
        rows.append(r)
        peak = r["device_peak_mb"] or r["host_peak_rss_mb"]
        print(f"{name:<26} {runs:>4} {iters:>5} {r['model_steps_per_s']:>13.2f} "
              f"{r['achieved_gflops']:>8.1f} {100 * r['achieved_gflops'] / matmul:>7.0f}% "
              f"{100 * r['direct_equivalent_gflops'] / matmul:>7.0f}% "
              f"{r['compile_s']:>9.1f} {peak:>8.0f} {_torch_columns(r)}", flush=True)
    for case, config, model, batch, flags in END_TO_END:
        if not selected(case):
            continue
        variant = torch_best.get(model, "channels_last") if use_torch else None
        e = end_to_end(config, model, batch, ncpu, variant, flags)
        rows.append({"case": case} | e)
        line = (f"\n{case}: the CLI on configs/{config}, {e['trials']} trials x {e['iterations']} "
                f"iterations (start-up, compilation and evaluation included): {e['cli_seconds']:.1f} s")
        if e.get("torch_seconds"):
            line += (f"; PyTorch ({variant}), the same steps and evaluated examples: "
                     f"{e['torch_seconds']:.1f} s; lth_jax is "
                     f"{e['torch_seconds'] / e['cli_seconds']:.2f}x as fast")
        print(line, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
