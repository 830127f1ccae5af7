"""The sharded code paths on a CPU with two forced host devices (in a subprocess: the device count
is fixed when JAX starts), whole and in chunks."""

import json
import subprocess
import sys
import textwrap

from helpers import FUSION_EMITTERS, cli_env

SCRIPT = f"FUSION_EMITTERS = {FUSION_EMITTERS!r}\n" + textwrap.dedent("""
    import functools, json, sys
    import jax, jax.numpy as jnp, numpy as np
    from lth_jax import config as config_lib, lottery, masks
    assert jax.device_count() == 2, jax.devices()

    c = config_lib.base_config()
    c.dataset.name = c.dataset.source = "synthetic"
    c.dataset.image_shape = (8, 8, 1)
    c.dataset.train_size, c.dataset.test_size, c.dataset.validation_size = 700, 200, 100
    c.train.iterations, c.train.eval_every, c.train.batch_size = 100, 50, 50
    c.train.eval_batch_size = 128
    exp = lottery.setup(c)
    runs = 3  # odd: padded to 4 over two devices
    keys = jnp.stack([lottery.trial_key(0, t, lottery.INIT) for t in range(runs)])
    v = jax.jit(jax.vmap(exp.init_variables))(keys)
    rng = np.random.default_rng(0)
    mask = jax.tree.map(lambda p: jnp.asarray(rng.random(p.shape) < 0.6), v["params"])
    params = jax.vmap(masks.apply)(v["params"], mask)
    out, jit = {}, jax.jit
    for name, runner in {
        "one_device": lambda: lottery.Runner(exp, 1, "map"),
        "runs_over_two": lambda: lottery.Runner(exp, 2, "map"),
        "vmap_over_two": lambda: lottery.Runner(exp, 2, "vmap"),
        "data_parallel": lambda: lottery.Runner(exp, 2, "map", data_parallel=True),
    }.items():
        # The two compared bit for bit compile with XLA's fusion emitters (helpers).
        jax.jit = (functools.partial(jit, compiler_options=FUSION_EMITTERS)
                   if name in ("one_device", "runs_over_two") else jit)
        runner = runner()
        r = runner(params, v["batch_stats"], mask, keys, keys, start=0, capture=-1)
        zero = all(bool(np.all(np.asarray(p)[~np.asarray(m)] == 0))
                   for p, m in zip(jax.tree.leaves(r.params), jax.tree.leaves(mask)))
        out[name] = {"val_loss": np.asarray(r.val_loss).tolist(), "pruned_zero": zero,
                     "kernel": np.asarray(r.params["Dense_0"]["kernel"]).ravel()[:50].tolist()}
        if name == "runs_over_two":  # the same program in two chunks, sharded state in between
            t = runner.begin(params, v["batch_stats"], mask, keys, keys, start=0, capture=-1)
            while not t.done:  # chunks of 3 slices of 10 steps: cut inside the periods
                t.advance(3)
            chunked = t.result()
            out["chunks_equal"] = all(bool(np.array_equal(a, b)) for a, b in
                                      zip(jax.tree.leaves(r), jax.tree.leaves(chunked)))
    print("RESULT " + json.dumps(out))
""")


def test_runs_sharded_and_data_parallel_on_two_cpu_devices():
    env = cli_env("--xla_force_host_platform_device_count=2 --xla_cpu_multi_thread_eigen=false")
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                          timeout=600)
    lines = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out.pop("chunks_equal")
    one = out["one_device"]
    assert all(o["pruned_zero"] for o in out.values())
    # Runs spread over devices, each device running its runs one after another: bitwise equal.
    assert out["runs_over_two"]["val_loss"] == one["val_loss"]
    assert out["runs_over_two"]["kernel"] == one["kernel"]
    # vmap and data parallelism change the order of float reductions: equal to tolerance.
    for name in ("vmap_over_two", "data_parallel"):
        for a, b in zip(out[name]["val_loss"], one["val_loss"]):
            assert max(abs(x - y) for x, y in zip(a, b)) < 1e-3, name
