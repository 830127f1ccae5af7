"""The README's Python code blocks run as written (in a temporary working directory), and its API
table lists every public function of the library modules."""

import functools
import inspect
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lth_jax import masks, pruning, tickets

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S)


def run_block(code: str, name: str) -> dict:
    namespace = {"__name__": f"readme_{name}"}
    exec(compile(code, f"README.md:{name}", "exec"), namespace)  # noqa: S102 -- our own README
    return namespace


def test_readme_has_the_two_library_examples_and_a_branch():
    blocks = python_blocks()
    assert len(blocks) == 3
    assert "flax.linen" in blocks[0] and "from flax import nnx" in blocks[1]
    assert "RECORD_KEY" in blocks[2]
    # "your own model in 30 lines"
    assert len([line for line in blocks[0].splitlines() if line.strip()]) <= 30


def expected_alive(rates, params, rounds):
    """Alive kernel weights per prunable leaf after `rounds` layerwise rounds (numpy reference)."""
    out = []
    for rate, p in zip(jax.tree.leaves(rates), jax.tree.leaves(params)):
        if rate > 0:
            alive = int(np.size(p))
            for _ in range(rounds):
                alive -= int(np.round(np.float32(rate) * np.float32(alive)))
            out.append(alive)
    return out


#: The linen example's jax.jit compiles with XLA's default optimisation (tests/conftest.py turns it
#: off for the suite): its training loop of flax convolutions takes ~30 s optimised, ~6 min not.
OPTIMIZED = {"xla_backend_optimization_level": 2}


def test_readme_linen_example(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(jax, "jit", functools.partial(jax.jit, compiler_options=OPTIMIZED))
    ns = run_block(python_blocks()[0], "linen")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("%")[0].strip() for line in lines] == ["100.0", "88.6", "78.7", "70.0"]
    losses = [float(line.rsplit(" ", 1)[1]) for line in lines]
    assert all(np.isfinite(losses)) and losses[0] < 0.1  # it trains
    mask, theta0, rates = ns["mask"], ns["theta0"], ns["rates"]
    kernels = [int(np.sum(m)) for m, r in zip(jax.tree.leaves(mask), jax.tree.leaves(rates)) if r > 0]
    assert kernels == expected_alive(rates, theta0, 4)
    # saved, and loads back equal
    saved = masks.load(tmp_path / "ticket.npz")
    assert jax.tree.structure(saved) == jax.tree.structure(mask)
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(mask)):
        np.testing.assert_array_equal(a, b)
    # a ticket trained by the README's loop has its pruned weights at exactly 0 (adamw's decay included)
    trained = ns["train"](tickets.rewind(theta0, mask), mask)
    for w, m in zip(jax.tree.leaves(trained), jax.tree.leaves(mask)):
        assert np.all(np.asarray(w)[~np.asarray(m)] == 0.0)
        assert np.all(np.asarray(w)[np.asarray(m)] != 0.0)
    # "jax.vmap(train) trains several tickets at once"
    pair = jax.tree.map(lambda *xs: jnp.stack(xs), masks.ones_like(theta0), mask)
    both = jax.vmap(ns["train"])(jax.vmap(tickets.rewind, in_axes=(None, 0))(theta0, pair), pair)
    for w, m in zip(jax.tree.leaves(both), jax.tree.leaves(pair)):
        assert np.all(np.asarray(w)[~np.asarray(m)] == 0.0)
    for a, b in zip(jax.tree.leaves(jax.tree.map(lambda w: w[1], both)), jax.tree.leaves(trained)):
        np.testing.assert_allclose(a, b, rtol=1e-2, atol=2e-3)  # batched convs round differently


def test_readme_nnx_example(tmp_path, monkeypatch, capsys):
    from flax import nnx

    monkeypatch.chdir(tmp_path)
    ns = run_block(python_blocks()[1], "nnx")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("%")[0].strip() for line in lines] == ["100.0", "81.3", "66.3", "54.1"]
    model, mask, theta0, rates = ns["model"], ns["mask"], ns["theta0"], ns["rates"]
    saved = masks.load(tmp_path / "nnx_ticket.npz")
    assert type(saved) is nnx.State and jax.tree.structure(saved) == jax.tree.structure(mask)
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(mask)):
        np.testing.assert_array_equal(a, b)
    # The model holds the last ticket trained (3 rounds pruned): exactly its pruned weights are 0,
    # though Adam and nnx.Optimizer ran 200 steps on it.
    state = nnx.state(model, nnx.Param)
    kernels = [w for w, r in zip(jax.tree.leaves(state), jax.tree.leaves(rates)) if r > 0]
    assert [int(np.sum(np.asarray(w) != 0)) for w in kernels] == expected_alive(rates, theta0, 3)
    # the final mask (one more round) keeps only weights that are alive in the model
    for w, m in zip(jax.tree.leaves(state), jax.tree.leaves(mask)):
        assert np.all(np.asarray(w)[np.asarray(m)] != 0)
    # θ₀ is intact
    fresh = nnx.state(type(model)(nnx.Rngs(0)), nnx.Param)
    for a, b in zip(jax.tree.leaves(theta0), jax.tree.leaves(fresh)):
        np.testing.assert_array_equal(a, b)


def test_api_table_lists_every_public_function():
    text = README.read_text(encoding="utf-8")
    table = text[text.index("### The API"):]
    for module in (masks, pruning, tickets):
        name = module.__name__.rsplit(".", 1)[1]
        for fn_name, fn in vars(module).items():
            if fn_name.startswith("_") or not inspect.isfunction(fn) or fn.__module__ != module.__name__:
                continue
            if fn_name in ("check_bool",):  # an internal check, documented by check_matches
                continue
            assert f"`{name}.{fn_name}(" in table, f"{name}.{fn_name} is missing from the README's API table"


def test_readme_branch_of_your_own_runs_as_a_branch(tmp_path, monkeypatch):
    """The README's mask_overlap.py, saved as a file: --branch=mask_overlap.py's config comes from
    it, the trunk's levels are trained first, its records and report are written, and a rerun
    keeps them (nothing recomputed)."""
    from helpers import tiny_config
    from lth_jax import config as config_lib
    from lth_jax import workdir
    from lth_jax.branches import base

    source = tmp_path / "mask_overlap.py"
    source.write_text(python_blocks()[2])
    monkeypatch.syspath_prepend(str(tmp_path))
    branch_config = config_lib.load_file(str(source))
    folder = base.run(branch_config, tiny_config(), str(tmp_path / "run"), log=lambda _: None)
    records = workdir.read_records(folder, key=("level", "trial_a", "trial_b"))
    assert [(r["level"], r["trial_a"], r["trial_b"]) for r in records] == [(1, 0, 1), (2, 0, 1)]
    assert all(0.5 < r["overlap"] <= 1.0 for r in records)  # tickets of two trials, 80% and 64%
    (report,) = base.write_report(folder)
    assert open(report).read().startswith("level 1, trials 0 and 1: ")
    again = base.run(branch_config, tiny_config(), str(tmp_path / "run"), log=lambda _: None)
    assert workdir.read_records(again, key=("level", "trial_a", "trial_b")) == records
