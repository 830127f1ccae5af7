"""Dense Conv-2 on Fashion-MNIST with a printed validation curve: where does early stopping fall?

Run from the repository root (`python experiments/conv2_fashion_mnist/probe/dense_probe.py`); it
trains trial 0's dense network of ../config.py (same θ₀, data order and step as the experiment's
level 0) for up to 20,000 iterations, printing the training loss and the validation loss and
accuracy every 100 iterations; stop it when the curve has turned.

* dense_probe_subset10k.log chose the experiment's budget: the config as it is (10K training
  examples), 2026-12-02, one core of the 2-core AMD EPYC (`taskset -c 1`), stopped at 1,600
  iterations; lowest validation loss 0.306 at 1,300.
* dense_probe.log is the run on all 55K training examples (2026-11-25, shared 2-core CPU, stopped
  at 3,600 iterations, validation loss still falling: 0.207 at 3,400): the budget a full-data
  experiment would need, too long for this CPU (README.md).

An optional argument sets Adam's learning rate (default: the config's, the paper's 2e-4), e.g.
`python experiments/conv2_fashion_mnist/probe/dense_probe.py 1e-3`.
"""
import sys, time, importlib.util, jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, ".")
from lth_jax import lottery, masks, data as data_lib
spec = importlib.util.spec_from_file_location("cfg", "experiments/conv2_fashion_mnist/config.py")
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
c = m.get_config(); c.trials = 1; c.prune.levels = 0; c.train.iterations = 20000
if len(sys.argv) > 1: c.train.learning_rate = float(sys.argv[1])
print('learning rate', c.train.learning_rate, flush=True)
exp = lottery.setup(c)
tr = exp.trainer
v = exp.init_variables(lottery.trial_key(0, 0, lottery.INIT))
mask = masks.ones_like(v["params"])
state = tr.init_state(v["params"], v["batch_stats"])
dk = lottery.trial_key(0, 0, lottery.DATA); nk = lottery.trial_key(0, 0, lottery.NOISE)
n = exp.data.train_labels.shape[0]
def period(state, first):
    def one(state, t):
        idx = data_lib.batch_indices(dk, t, n, tr.batch_size)
        state, loss = tr.step(state, mask, exp.data.train_images[idx], exp.data.train_labels[idx], t, jax.random.fold_in(nk, 2*t))
        return state, loss
    state, losses = jax.lax.scan(one, state, first + jnp.arange(100))
    vl, va = tr.evaluate(state.params, state.batch_stats, mask, exp.data.validation)
    return state, jnp.mean(losses), vl, va
period = jax.jit(period)
best = (1e9, 0); t0 = time.time()
for p in range(200):
    state, tl, vl, va = period(state, jnp.int32(p * 100))
    it = (p + 1) * 100
    if float(vl) < best[0]: best = (float(vl), it)
    print(f"it {it} train {float(tl):.4f} val_loss {float(vl):.4f} val_acc {float(va):.4f} best {best} {time.time()-t0:.0f}s", flush=True)
