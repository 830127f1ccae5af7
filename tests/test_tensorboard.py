"""Tests for lth_jax.tensorboard: event files written without TensorFlow, read back (by this
module's reader, and by TensorBoard's own where it is installed), resumed without duplicated or
lost points, and tolerant of a file cut short by a crash."""

from __future__ import annotations

import math
import os
import struct

import numpy as np
import pytest

from lth_jax import tensorboard as tb

NAN = float("nan")


def _f32(x: float) -> float:
    return float(np.float32(x))  # TensorBoard stores scalars as float32


def test_run_name():
    assert tb.run_name(3, "ticket", 0) == "level_03/ticket/trial_0"
    assert tb.run_name(12, "random_reinit", 4, branch="lr_0.1") == "level_12/random_reinit-lr_0.1/trial_4"
    for bad in [dict(level=-1), dict(trial=-1), dict(variant=""), dict(variant="a/b"),
                dict(variant="..x"), dict(branch="x/y"), dict(level=True)]:
        args = {"level": 1, "variant": "ticket", "trial": 0, **bad}
        with pytest.raises(ValueError):
            tb.run_name(**args)


def test_crc32c_known_values():
    assert tb._crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert tb._crc32c(b"") == 0
    assert tb._crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720, B.4: 32 bytes of zeros


def test_write_and_read_back(tmp_path):
    run = tb.run_name(3, "ticket", 0)
    steps = np.arange(0, 500, 100)  # 0, 100, ..., 400
    with tb.TensorBoardWriter(tmp_path) as writer:
        taken = writer.add_curves(
            run, steps,
            {"loss/train": np.array([2.3, 1.1, 0.7, NAN, 0.0], np.float32),
             "accuracy/validation": [0.1, 0.5, NAN, NAN, 9.9]},
            upto=300,  # the 400 entries are not computed yet, whatever they hold
        )
        assert taken == 5  # 3 + 2: NaNs and steps after 300 skipped
        assert writer.add_scalar(run, "density", 0, 0.512)
        assert writer.add_scalars(tb.run_name(3, "ticket", 1), 7, {"speed/model_steps_per_s": 1234.5})
        assert writer.last_step(run, "loss/train") == 200
        assert writer.last_step(run, "accuracy/validation") == 100
        assert writer.last_step(run, "accuracy/test") is None
    scalars = tb.read_scalars(tmp_path)
    assert scalars == {
        "level_03/ticket/trial_0": {
            "loss/train": [(0, _f32(2.3)), (100, _f32(1.1)), (200, _f32(0.7))],
            "accuracy/validation": [(0, _f32(0.1)), (100, _f32(0.5))],
            "density": [(0, _f32(0.512))],
        },
        "level_03/ticket/trial_1": {"speed/model_steps_per_s": [(7, 1234.5)]},
    }
    (path,) = (tmp_path / "level_03" / "ticket" / "trial_0").iterdir()
    assert path.name.startswith("events.out.tfevents.")
    # The first record is the file-version event TensorBoard needs; one event per step follows.
    events = list(_raw_events(path))
    assert b"brain.Event:2" in events[0]
    assert len(events) == 1 + 3


def _raw_events(path):
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        yield data[pos + 12 : pos + 12 + length]
        pos += 16 + length


def test_resume_neither_duplicates_nor_loses_points(tmp_path):
    run = tb.run_name(1, "ticket", 0)
    steps = list(range(0, 1000, 100))
    loss = [1.0 / (1 + i) for i in range(10)]
    acc = [0.1 * i for i in range(10)]

    def so_far(upto):  # curves as a level's training holds them: NaN where not measured yet
        return {"loss/train": [v if s <= upto else NAN for s, v in zip(steps, loss)],
                "accuracy/validation": [v if s <= upto else NAN for s, v in zip(steps, acc)]}

    first = tb.TensorBoardWriter(tmp_path)
    for upto in (200, 400):  # two chunks, each flushed
        first.add_curves(run, steps, so_far(upto), upto=upto)
        first.flush()
    first.add_curves(run, steps, so_far(600), upto=600)  # a third chunk, lost in a crash
    del first  # never flushed

    # The resumed run restarts from its checkpoint at 300 and sends its curves again each chunk.
    second = tb.TensorBoardWriter(tmp_path)
    assert second.last_step(run, "loss/train") == 400  # read back from the files
    for upto in (300, 500, 900):
        second.add_curves(run, steps, so_far(upto), upto=upto)
        second.flush()
    second.close()
    got = tb.read_scalars(tmp_path)[run]
    assert got["loss/train"] == [(s, _f32(v)) for s, v in zip(steps, loss)]
    assert got["accuracy/validation"] == [(s, _f32(v)) for s, v in zip(steps, acc)]
    assert len(list((tmp_path / "level_01" / "ticket" / "trial_0").iterdir())) == 2  # one per writer

    # Nothing new: a third writer adds nothing, not even a file.
    with tb.TensorBoardWriter(tmp_path) as third:
        assert third.add_curves(run, steps, {"loss/train": [5.0] * 10}) == 0
    assert len(list((tmp_path / "level_01" / "ticket" / "trial_0").iterdir())) == 2


def test_file_cut_short_by_a_crash(tmp_path):
    run = "level_00/dense/trial_0"
    with tb.TensorBoardWriter(tmp_path) as writer:
        writer.add_curves(run, [0, 10, 20], {"loss/train": [3.0, 2.0, 1.0]})
    (path,) = (tmp_path / "level_00" / "dense" / "trial_0").iterdir()
    whole = path.read_bytes()
    last_record = len(list(_raw_events(path))[-1]) + 16
    path.write_bytes(whole[: len(whole) - last_record // 2])  # the step-20 record half written
    assert tb.read_scalars(tmp_path)[run] == {"loss/train": [(0, 3.0), (10, 2.0)]}
    with tb.TensorBoardWriter(tmp_path) as writer:
        assert writer.last_step(run, "loss/train") == 10
        assert writer.add_curves(run, [0, 10, 20, 30], {"loss/train": [3.0, 2.0, 1.0, 0.5]}) == 2
    assert tb.read_scalars(tmp_path)[run] == {"loss/train": [(0, 3.0), (10, 2.0), (20, 1.0), (30, 0.5)]}
    # A damaged payload (CRC mismatch) also ends the reading of its file.
    damaged = bytearray(whole)
    damaged[-6] ^= 0xFF
    path.write_bytes(bytes(damaged))
    assert list(tb.read_events(path))[-1][1] == 10


def test_disabled_writer_writes_nothing(tmp_path):
    writer = tb.TensorBoardWriter(tmp_path / "tb", enabled=False)
    assert writer.add_curves("r", [0, 1], {"loss/train": [1.0, 2.0]}) == 0
    assert not writer.add_scalar("r", "density", 0, 1.0)
    writer.close()
    assert not (tmp_path / "tb").exists()


def test_bad_input(tmp_path):
    writer = tb.TensorBoardWriter(tmp_path)
    with pytest.raises(ValueError, match="curve 'loss/train' of run 'r' has 1 values for 2 steps"):
        writer.add_curves("r", [0, 1], {"loss/train": [1.0]})
    with pytest.raises(ValueError, match="step must be an int >= 0"):
        writer.add_scalar("r", "x", -1, 1.0)
    with pytest.raises(ValueError, match="step must be an int >= 0"):
        writer.add_scalar("r", "x", 1.5, 1.0)
    with pytest.raises(ValueError, match="relative folder path"):
        writer.add_scalar("../out", "x", 1, 1.0)
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.add_scalar("r", "x", 1, 1.0)


def test_values_kept_as_float32_and_infinities_written(tmp_path):
    with tb.TensorBoardWriter(tmp_path) as writer:
        writer.add_curves("r", [1, 2, 3], {"t": [math.pi, math.inf, 1e-3]})
    assert tb.read_scalars(tmp_path) == {"r": {"t": [(1, _f32(math.pi)), (2, math.inf), (3, _f32(1e-3))]}}


def test_tensorboard_reads_them(tmp_path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    run = tb.run_name(2, "ticket", 0)
    with tb.TensorBoardWriter(tmp_path) as writer:
        writer.add_curves(run, [0, 50, 100], {"loss/train": [2.0, 1.5, NAN],
                                              "accuracy/validation": [0.2, 0.6, 0.7]})
    with tb.TensorBoardWriter(tmp_path) as writer:  # a resumed run: a second file
        writer.add_curves(run, [0, 50, 100, 150], {"loss/train": [2.0, 1.5, 1.2, 1.0]})
    acc = accumulator.EventAccumulator(str(tmp_path / "level_02" / "ticket" / "trial_0"))
    acc.Reload()
    ours = tb.read_scalars(tmp_path)[run]
    assert sorted(acc.Tags()["scalars"]) == sorted(ours)
    for tag, points in ours.items():
        assert [(e.step, e.value) for e in acc.Scalars(tag)] == points


# ----------------------------------------------------------------------------- live, in a run

def test_a_run_writes_its_curves_live_and_a_resume_neither_duplicates_nor_loses_points(tmp_path):
    """The lottery (and every branch, through the same chunked training) writes each run's
    curves under WORKDIR/tensorboard as chunks finish: stopped mid-level and resumed, every
    run's points are its record's curves, each step once."""
    import signal

    import pytest

    from helpers import tiny_config
    from lth_jax import lottery

    cfg = tiny_config(runtime__chunk_seconds=1e-6, runtime__checkpoint_minutes=1e-9)
    workdir = str(tmp_path / "run")
    seen = []
    stop = lambda: signal.SIGINT if any(l.startswith("level  1  iteration 50/") for l in seen) else 0
    with pytest.raises(lottery.Stopped):
        lottery.run(cfg, workdir, log=seen.append, stop=stop)
    partial = tb.read_scalars(os.path.join(workdir, "tensorboard"))
    assert len(partial["level_01/ticket/trial_0"]["loss/validation"]) >= 2  # live, mid-level
    records = lottery.run(cfg, workdir, log=lambda _: None)
    scalars = tb.read_scalars(os.path.join(workdir, "tensorboard"))
    assert sorted(scalars) == sorted(tb.run_name(r["level"], r["variant"], r["trial"])
                                     for r in records)
    for r in records:
        run = scalars[tb.run_name(r["level"], r["variant"], r["trial"])]
        for key in ("val_loss", "val_accuracy", "train_loss"):
            points = run[tb.TAGS[key]]
            assert [s for s, _ in points] == r["eval_iterations"]  # each step once, none lost
            np.testing.assert_allclose([v for _, v in points], r[key], rtol=1e-7)
        assert [s for s, _ in run["accuracy/test"]] == r["test_iterations"]
        assert run["density"] == [(r["eval_iterations"][0], pytest.approx(r["density"]))]
        assert all(v > 0 for _, v in run["speed/model_steps_per_s"])
    off = str(tmp_path / "off")
    lottery.run(tiny_config(runtime__tensorboard=False, prune__levels=0), off, log=lambda _: None)
    assert not os.path.exists(os.path.join(off, "tensorboard"))
