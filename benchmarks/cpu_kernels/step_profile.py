"""Where the time of a paper network's training step goes, op by op, on one single-threaded XLA:CPU
device inside ``lax.scan`` (as a level runs): lth_jax's masked step (the config's optimizer and
batch, synthetic data of the dataset's shape) under ``jax.profiler``, each XLA thunk's time per
step, with the jaxpr op it came from (from the optimised HLO's metadata).

    taskset -c 0 python benchmarks/cpu_kernels/step_profile.py conv2 [steps] [rows] [conv]   # conv4, vgg19...

``conv`` is ``model.conv`` (default ``auto``: ``winograd`` on a CPU).

It prints the step's thunk time by kind and by part (forward or backward; convolutions, batch
norm, dense layers, the element-wise work between them, the optimizer), then the longest thunks.
``ynn_fusion`` thunks run in YNNPACK (XLA:CPU's library for canonical convolutions and dots),
``conv_general_dilated``/``dot`` ones in Eigen, ``*_fusion`` ones are XLA's own loops (copies,
element-wise work). The per-op figures of docs/performance.md ("The input gradient as a forward
convolution; dy transposed once") came from this.
"""

import collections
import glob
import os
import re
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1 "
                                   "--xla_cpu_multi_thread_eigen=false")
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax._src.lib import _profile_data  # noqa: E402

from lth_jax import config as config_lib  # noqa: E402
from lth_jax import lottery, masks  # noqa: E402


def op_names(hlo: str) -> tuple[dict[str, str], dict[str, str]]:
    """HLO instruction name -> 'shape  jaxpr-scope/op', and -> its part of the step (see
    :func:`part`), from the optimised HLO's metadata."""
    names, parts = {}, {}
    for line in hlo.splitlines():
        m = re.match(r'\s*(?:ROOT )?%([\w.\-]+) = (\S+) .*?op_name="([^"]+)"', line)
        if m:
            names[m.group(1)] = f"{m.group(2)}  {'/'.join(m.group(3).split('/')[-2:])}"
            parts[m.group(1)] = part(m.group(3))
    return names, parts


def part(op_name: str) -> str:
    """The part of a step an op belongs to: forward or backward ("transpose(jvp" in its jaxpr
    scope) and the kind of the innermost Flax module it sits in (conv, batch norm, dense), or
    "element-wise" inside a network but outside those modules (ReLU, residual sums, pools),
    "optimizer / loss" outside the network."""
    direction = "backward" if "transpose(jvp" in op_name else "forward"
    scopes = op_name.split("/")
    for scope in reversed(scopes):
        for prefix, kind in (("shortcut_conv", "1x1 shortcut conv"), ("shortcut_bn", "batch norm"),
                             ("Conv_", "conv"), ("BatchNorm_", "batch norm"), ("Dense_", "dense")):
            if scope.startswith(prefix):
                return f"{direction} {kind}"
    if any(s.startswith("jvp(") or s.startswith("transpose(jvp(") for s in scopes):
        return f"{direction} element-wise"
    return "optimizer / loss"


def main(name: str = "conv2", steps: str = "4", rows: str = "30", conv: str = "auto") -> None:
    c = config_lib.load_file(os.path.join(ROOT, "configs", f"{name}.py"))
    if "conv" in c.model:
        c.model.conv = conv
    c.dataset.source = "synthetic"
    c.dataset.train_size, c.dataset.validation_size, c.dataset.test_size = 2000, 256, 256
    c.train.warmup_iterations, c.train.lr_drops = 0, ()
    exp = lottery.setup(c)
    variables = exp.init_variables(lottery.trial_key(0, 0, lottery.INIT))
    mask = masks.ones_like(variables["params"])
    state = exp.trainer.init_state(variables["params"], variables["batch_stats"])
    batch, count, key = int(c.train.batch_size), int(steps), jax.random.key(0)
    x, y = exp.data.train_images[:batch], exp.data.train_labels[:batch]

    def one(s, t):  # each step's images differ, so XLA cannot hoist work out of the loop
        return exp.trainer.step(s, mask, x + t * 1e-6, y, t, key)

    run = jax.jit(lambda s: jax.lax.scan(one, s, jnp.arange(count)))
    jax.block_until_ready(run(state))
    with tempfile.TemporaryDirectory() as trace:
        jax.profiler.start_trace(trace)
        jax.block_until_ready(run(state))
        jax.profiler.stop_trace()
        (path,) = glob.glob(os.path.join(trace, "**", "*.xplane.pb"), recursive=True)
        profile = _profile_data.ProfileData.from_file(path)
    per_thunk = collections.Counter()
    for plane in profile.planes:
        for line in plane.lines:
            # The device's thunks run on its Eigen worker or on the client's own thread
            # (which one depends on the jaxlib and the machine): both are read.
            if not line.name.startswith(("tf_XLAEigen", "tf_XLAPjRtCpuClient")):
                continue
            for event in line.events:
                if not event.name.startswith(("ThunkExecutor", "while", "end:", "Threadpool")):
                    per_thunk[event.name] += event.duration_ns / count / 1e6
    names, parts = op_names(run.lower(state).compile().as_text())
    kinds, by_part = collections.Counter(), collections.Counter()
    for thunk, ms in per_thunk.items():
        kinds[re.sub(r"\.\d+$", "", thunk)] += ms
        by_part[parts.get(thunk, "unnamed (copies)")] += ms
    print(f"{name}, batch {batch}, jax {jax.__version__}, one core: "
          f"{sum(per_thunk.values()):.1f} ms of thunks a step")
    print("by kind: " + ", ".join(f"{k} {v:.1f}" for k, v in kinds.most_common(8)))
    print("by part: " + ", ".join(f"{k} {v:.1f}" for k, v in by_part.most_common()))
    for thunk, ms in per_thunk.most_common(int(rows)):
        print(f"{ms:8.2f} ms  {thunk:28s} {parts.get(thunk, ''):22s} {names.get(thunk, '')}")


if __name__ == "__main__":
    main(*sys.argv[1:])
