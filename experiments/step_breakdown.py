"""Where the time of one LeNet-300-100 training step goes (batch 60, one device, 1,000 steps in a scan).

    python experiments/step_breakdown.py

Prints steps/s for: forward+backward only, plain SGD, plain Adam (optax.adam), lth_jax's masked
Adam step (Trainer.step), and the time of one evaluation pass over 15,000 examples (the 5K
validation + 10K test sets evaluated every 100 iterations). GFLOP/s use 68 MFLOP per step
(forward 2·266,200·60 plus the backward pass without the first layer's input gradient).
"""
import time
import jax, jax.numpy as jnp, ml_collections, optax
from lth_jax import models, train as T, masks
model = models.create("lenet300_100")
p = models.init(model, jax.random.key(0), (28,28,1))['params']
m = masks.ones_like(p)
N=1000
x = jax.random.normal(jax.random.key(1), (N, 60, 28, 28, 1)); y = jnp.zeros((N,60), jnp.int32)
def timeit(name, f, *a, flops=68e6):
    jax.block_until_ready(f(*a))
    ts=[]
    for _ in range(3):
        t=time.perf_counter(); jax.block_until_ready(f(*a)); ts.append(time.perf_counter()-t)
    dt=min(ts); print(f"{name}: {N/dt:.0f} steps/s  ({N*flops/dt/1e9:.0f} GFLOP/s)")
lf = lambda p, xb, yb: jnp.mean(T.cross_entropy(model.apply({'params':p}, xb), yb))
def fb(p):
    def body(c, xs):
        g = jax.grad(lf)(p, *xs); return c + g['Dense_0']['kernel'][0,0], 0
    return jax.lax.scan(body, 0.0, (x,y))[0]
timeit("fwd+bwd only", jax.jit(fb), p)
def sgd(p):
    def body(p, xs):
        g = jax.grad(lf)(p, *xs); return jax.tree.map(lambda a,b: a-0.01*b, p, g), 0
    return jax.lax.scan(body, p, (x,y))[0]
timeit("sgd", jax.jit(sgd), p)
tx=optax.adam(1e-3)
def adam(p):
    def body(c, xs):
        p,o=c; g = jax.grad(lf)(p, *xs); u,o=tx.update(g,o,p); return (optax.apply_updates(p,u),o), 0
    return jax.lax.scan(body, (p,tx.init(p)), (x,y))[0]
timeit("adam", jax.jit(adam), p)
tr = T.Trainer(model, T.make_direction(ml_collections.ConfigDict({'weight_decay': 0.0, 'optimizer': 'adam', 'momentum': 0.9})), lambda s: 1e-3, 1,1,60,1,False)
def masked(p):
    def body(st, xs):
        st,l = tr.step(st, m, xs[0], xs[1], 0, jax.random.key(0)); return st, l
    return jax.lax.scan(body, tr.init_state(p,{}), (x,y))[0]
timeit("masked trainer.step", jax.jit(masked), p)
fwd = lambda p, xb: model.apply({'params':p}, xb)
xe = jax.random.normal(jax.random.key(1), (6, 2500, 28, 28, 1))
ev = jax.jit(lambda p: jax.lax.map(lambda xb: fwd(p, xb).sum(), xe))
jax.block_until_ready(ev(p)); t=time.perf_counter(); jax.block_until_ready(ev(p)); dt=time.perf_counter()-t
print(f"eval 15000: {dt*1e3:.1f} ms ({15000*2*266200/dt/1e9:.0f} GFLOP/s)")
