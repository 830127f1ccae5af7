"""lth_jax.timing: the median call over the steps of a scan, and the scaled copies it scans."""

import jax.numpy as jnp
import numpy as np

from lth_jax import timing


def test_per_step_ms_is_the_median_call_divided_by_the_steps(monkeypatch):
    ticks = iter([0.0, 1.0, 10.0, 13.0, 20.0, 22.0])  # three timed calls: 1 s, 3 s, 2 s
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(ticks))
    ms = timing.per_step_ms(lambda total, x: (total + jnp.sum(x), None), jnp.ones((4, 3)), calls=3)
    assert ms == 2.0 / 4 * 1e3  # the median call (2 s) over 4 steps


def test_scanned_ms_scans_scaled_copies_and_sums_the_result(monkeypatch):
    seen = {}

    def fake(body, xs, calls):
        seen.update(body=body, xs=xs, calls=calls)
        return 1.5

    monkeypatch.setattr(timing, "per_step_ms", fake)
    a, b = jnp.arange(3.0), jnp.full((2,), 2.0)
    assert timing.scanned_ms(lambda a, b: a[:2] * b, a, b, steps=4, calls=5) == 1.5
    xs = seen["xs"]
    assert seen["calls"] == 5 and [x.shape for x in xs] == [(4, 3), (4, 2)]
    for t in range(4):
        np.testing.assert_allclose(xs[0][t], a * (1 + 0.01 * t), rtol=1e-6)
        np.testing.assert_allclose(xs[1][t], b * (1 + 0.01 * t), rtol=1e-6)
    total, _ = seen["body"](1.0, (xs[0][2], xs[1][2]))
    np.testing.assert_allclose(total, 1.0 + np.sum(np.arange(2.0) * 1.02 * 2.0 * 1.02), rtol=1e-6)
