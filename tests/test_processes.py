"""lth_jax.processes in one process (identities, the watchdog's rule with a fake coordination
service) and the accelerator-only paths of the Runner forced on this CPU: matmul precision,
buffer donation, vmap batching and the device-memory check. (Two real processes:
test_cli_processes.py.)"""

from __future__ import annotations

import threading
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lth_jax import lottery, masks, processes


def test_one_process_is_the_identity():
    assert processes.count() == 1 and processes.is_primary() and not processes.initialized()
    assert processes.agree_max([3, -2, 0]) == [3, -2, 0]
    processes.barrier("nothing to wait for")
    mesh = Mesh(np.array(jax.devices()[:1]), ("runs",))
    tree = {"x": np.arange(6.0).reshape(3, 2), "key": jax.random.split(jax.random.key(1), 3)}
    placed = processes.to_global(tree, NamedSharding(mesh, PartitionSpec("runs")))
    host = processes.to_host({"x": placed["x"]})
    assert isinstance(host["x"], np.ndarray) and np.array_equal(host["x"], tree["x"])
    assert np.array_equal(jax.random.key_data(placed["key"]), jax.random.key_data(tree["key"]))


class FakeService:
    """The coordination service's key-value store, as the watchdog uses it."""

    def __init__(self):
        self.values, self.lock, self.down = {}, threading.Lock(), False

    def key_value_set(self, key, value, allow_overwrite=False):
        if self.down:
            raise RuntimeError("UNAVAILABLE")
        with self.lock:
            self.values[key] = value

    def key_value_dir_get(self, directory):
        if self.down:
            raise RuntimeError("UNAVAILABLE")
        with self.lock:
            return [(k, v) for k, v in self.values.items() if k.startswith(directory)]


def _watch(service, *, me=0, n=2, timeout=0.5):
    said = []
    dog = processes.Watchdog(timeout, period=0.02, exit_fn=lambda m, s: said.append((m, s)),
                             client=service, me=me, n=n)
    return dog, said


def test_watchdog_waits_for_a_live_peer_and_stops_for_a_silent_one():
    service = FakeService()
    dog, said = _watch(service)
    stop_beating = threading.Event()

    def peer():  # process 1 beats every 0.05 s until told to stop (it "dies")
        beat = 0
        while not stop_beating.wait(0.05):
            beat += 1
            service.key_value_set("lth_jax/alive/1", str(beat))
    threading.Thread(target=peer, daemon=True).start()
    dog.start()
    dog.join(1.5)  # three timeouts: a live peer is never declared lost
    assert dog.is_alive() and said == []
    stop_beating.set()
    dog.join(3)
    assert not dog.is_alive()
    assert said == [("lth_jax: error: process 1 of 2 stopped responding (no sign of life for 0.5 s: "
                     "it died or its host is down); stopping this one too. Run the same command "
                     "again on every host to resume from the saved progress.",
                     processes.EXIT_PEER_LOST)]
    assert service.values["lth_jax/alive/0"] != "0"  # it beat too


def test_watchdog_relays_a_peers_error_line():
    service = FakeService()
    service.key_value_set("lth_jax/failed/2", "lth_jax: error: config.x: bad (process 2)")
    dog, said = _watch(service, me=1, n=3, timeout=10)
    dog.start()
    dog.join(3)
    assert said == [("lth_jax: error: process 2 of 3 stopped: config.x: bad (process 2)",
                     processes.EXIT_PEER_LOST)]


def test_watchdog_stops_when_the_coordinator_is_gone():
    service = FakeService()
    service.down = True
    dog, said = _watch(service, me=1, timeout=0.3)
    dog.start()
    dog.join(3)
    assert len(said) == 1 and said[0][0].startswith(
        "lth_jax: error: the coordinator (process 0 of 2) cannot be reached (RuntimeError)")


def test_a_stopped_watchdog_lets_the_others_leave_silently():
    """After ``shutdown`` stops it, peers that go quiet and a coordinator that goes away (the
    processes leaving together) end the watchdog without a word, at once."""
    service = FakeService()
    dog, said = _watch(service, timeout=0.1)
    dog.start()
    dog.stopped.set()
    service.down = True
    dog.join(1)
    assert not dog.is_alive() and said == []


# ----------------------------------------------------------------------------- accelerator paths

@pytest.fixture(scope="module")
def small():
    from helpers import tiny_config
    exp = lottery.setup(tiny_config(train__iterations=100))
    keys = jnp.stack([lottery.trial_key(0, t, lottery.INIT) for t in range(2)])
    v = jax.jit(jax.vmap(exp.init_variables))(keys)
    return exp, keys, v, jax.vmap(masks.ones_like)(v["params"])


def _compiled_text(runner) -> str:
    return "\n".join(c.as_text() for c in runner._compiled.values())


def test_matmul_precision_auto_is_highest_on_cpu_and_reaches_the_program(small):
    exp, keys, v, mask = small
    texts = {}
    for precision in ("auto", "default"):
        runner = lottery.Runner(exp, 1, "map", matmul_precision=precision)
        runner.begin(v["params"], v["batch_stats"], mask, keys, keys, start=0, capture=-1)
        texts[runner.matmul_precision] = _compiled_text(runner)
    assert set(texts) == {"highest", "default"}  # auto = highest on a CPU
    # The dots of the training program carry the precision it was compiled with.
    assert "operand_precision={highest,highest}" in texts["highest"]
    assert "operand_precision={highest" not in texts["default"]


def test_state_buffers_are_donated_chunk_to_chunk_on_cpu_too(small):
    exp, keys, v, mask = small
    for batching in ("map", "vmap"):  # vmap: what GPUs and TPUs use, forced here
        training = lottery.Runner(exp, 1, batching).begin(
            v["params"], v["batch_stats"], mask, keys, keys, start=0, capture=-1)
        before = jax.tree.leaves(training._state)
        training.advance(1)
        assert all(x.is_deleted() for x in before), batching  # reused in place, not copied
        assert not any(x.is_deleted() for x in jax.tree.leaves(training._state))


def test_device_memory_check_of_accelerators_uses_their_free_bytes():
    gpu = types.SimpleNamespace(platform="gpu", memory_stats=lambda: {
        "bytes_limit": 16 * 2**30, "bytes_in_use": 4 * 2**30})
    lottery.Runner._check_memory(12 * 2**30 - 1, [gpu], "XLA's estimate")  # fits in 12 GiB free
    with pytest.raises(lottery.ExperimentError, match=r"needs ~12\.5 GiB per device \(XLA's "
                       r"estimate\), 12\.0 GiB are free per gpu device"):
        lottery.Runner._check_memory(12 * 2**30 + 2**29, [gpu], "XLA's estimate")
    silent = types.SimpleNamespace(platform="tpu", memory_stats=lambda: None)
    lottery.Runner._check_memory(2**60, [silent], "XLA's estimate")  # no figures: not checked


@pytest.mark.parametrize("field,value,message", [
    ("runtime.coordinator_address", "localhost", "must be 'host:port', got 'localhost'"),
    ("runtime.num_processes", -1, "must be >= 0, got -1"),
    ("runtime.process_id", 2, "2 must be < runtime.num_processes=2"),
    ("runtime.process_timeout_seconds", 0.0, "must be > 0, got 0.0"),
    ("runtime.matmul_precision", "bf16", "bf16"),
])
def test_process_fields_are_validated(field, value, message):
    from helpers import set_field, tiny_config
    from lth_jax import config as config_lib
    c = tiny_config(runtime__distributed=True, runtime__num_processes=2)
    set_field(c, field, value)
    with pytest.raises(config_lib.ConfigError, match=f"config.{field}: .*" + message.replace(
            "(", r"\(").replace(")", r"\)")):
        config_lib.validate(c)


def test_process_fields_need_distributed():
    from helpers import tiny_config
    from lth_jax import config as config_lib
    with pytest.raises(config_lib.ConfigError, match="config.runtime.distributed: must be True"):
        config_lib.validate(tiny_config(runtime__coordinator_address="localhost:1234"))
    config_lib.validate(tiny_config(runtime__distributed=True,
                                    runtime__coordinator_address="10.0.0.1:1234",
                                    runtime__num_processes=4, runtime__process_id=3))
