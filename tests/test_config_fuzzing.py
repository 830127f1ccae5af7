"""Config fuzzing: any config (a dict with any values, as a config file may build) either
validates or raises one ``ConfigError`` line naming a changed field."""

from __future__ import annotations

import copy
import math

import hypothesis
import hypothesis.strategies as st
import ml_collections

from helpers import tiny_no_controls
from lth_jax import config as config_lib


BASE = tiny_no_controls().to_dict()
FIELDS = sorted([f"{g}.{k}" for g, group in BASE.items() if isinstance(group, dict) for k in group]
                + [g for g, v in BASE.items() if not isinstance(v, dict)])
GROUPS = sorted(g for g, v in BASE.items() if isinstance(v, dict))

ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.integers(-10**6, 10**6),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 1),
    st.text(max_size=6),
    st.sampled_from(["adam", "sgd", "momentum", "paper", "global", "layerwise", "files", "tfds",
                     "synthetic", "mnist", "cifar10", "lenet300_100", "conv2", "on", "off", "auto",
                     "[", "(.*)kernel"]),
    st.lists(st.integers(-5, 400), max_size=3).map(tuple),
    st.tuples(st.text(max_size=4), st.one_of(st.floats(-1, 2), st.text(max_size=3), st.none())),
    st.lists(st.tuples(st.sampled_from([".*kernel", "(", ".*"]),
                       st.one_of(st.floats(-1, 2), st.just(math.nan), st.text(max_size=2))),
             max_size=2).map(tuple),
    st.dictionaries(st.text("abcxyz", min_size=1, max_size=3), st.integers(), max_size=2),
)

MUTATION = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(FIELDS), ANY_VALUE),
    st.tuples(st.just("delete"), st.sampled_from(FIELDS + GROUPS), st.none()),
    st.tuples(st.just("set"), st.sampled_from(GROUPS), ANY_VALUE),  # a group replaced by a value
    st.tuples(st.just("add"), st.sampled_from([f"{g}.extra" for g in GROUPS] + ["extra"]), ANY_VALUE),
)


@hypothesis.settings(max_examples=30, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.too_slow])
@hypothesis.given(mutations=st.lists(MUTATION, min_size=1, max_size=3))
def test_validate_passes_or_names_the_field(mutations):
    """Any config (a dict with any values, as a config file may build) either validates or raises
    ConfigError 'config.FIELD: ...' naming a changed field."""
    d = copy.deepcopy(BASE)
    changed = []
    for action, field, value in mutations:
        *parents, leaf = field.split(".")
        node = d
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        if action == "delete":
            node.pop(leaf, None)
        else:
            node[leaf] = value
        changed.append(field)
    hypothesis.assume(changed)
    cfg = ml_collections.ConfigDict(d)
    try:
        config_lib.validate(cfg)
    except config_lib.ConfigError as e:
        message = str(e)
        assert message.startswith("config.") and "\n" not in message, message
        named = message.split(":")[0][len("config."):]

        def blames(f):
            return (named == f or named.startswith(f + ".") or f.startswith(named + ".")
                    or f in message  # e.g. "config.train.iterations: ... train.eval_every=7"
                    # e.g. "config.dataset.name: unknown dataset 'x' for source 'files'"
                    or named.split(".")[0] == f.split(".")[0] and f.split(".")[-1] in message)

        assert any(blames(f) for f in changed), (changed, message)
