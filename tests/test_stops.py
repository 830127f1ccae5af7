"""A stop asked for in the middle of a run (what the CLI does with SIGINT/SIGTERM), in this process:
it ends after the chunk in flight with the level's progress saved, or gives up a chunk that runs
on past ``runtime.stop_wait_seconds``; a rerun continues to the uninterrupted run's results. (The
same through the command line, with real signals: tests/test_cli_*.py.)

The experiment is the tiny one without controls (``helpers.NO_CONTROLS``); ``tiny_reference``
(tests/conftest.py) is its uninterrupted run.
"""

from __future__ import annotations

import os
import signal

import pytest

from helpers import quiet, strip_timing, tiny_no_controls
from lth_jax import lottery
from lth_jax import workdir as workdir_lib


def test_a_stop_ends_the_level_after_its_chunk_and_saves_its_progress(tiny_reference, tmp_path):
    """``stop`` (how main passes on a noted SIGINT/SIGTERM) is polled between chunks: the run ends
    there with Stopped (the signal, where it stopped), the level's progress is saved, and a rerun
    continues from it to the uninterrupted run's results."""
    workdir = str(tmp_path / "run")
    # chunks of one period; checkpoint_minutes at its default, 10
    cfg = tiny_no_controls(runtime__chunk_seconds=1e-6)
    seen = []
    stop = lambda: signal.SIGTERM if any(l.startswith("level  1  iteration 50/") for l in seen) else 0
    with pytest.raises(lottery.Stopped) as info:
        lottery.run(cfg, workdir, log=seen.append, stop=stop)
    assert info.value.signum == signal.SIGTERM
    assert str(info.value) == "stopped in level 1 at iteration 50 (progress saved at iteration 50)"
    assert workdir_lib.checkpoint_names(workdir) == ["init", "level_000", "progress_001"]
    assert {r["level"] for r in lottery.read_records(workdir)} == {0}
    logs = []
    records = lottery.run(cfg, workdir, log=logs.append)
    assert "level 1: resuming at iteration 50 from its intra-level checkpoint" in logs
    assert strip_timing(records) == strip_timing(tiny_reference[1])


def test_a_stop_gives_up_a_chunk_that_runs_on_past_the_wait(tmp_path, monkeypatch):
    """A stop noted while a long chunk runs waits ``runtime.stop_wait_seconds`` (here 0) for it,
    then gives it up: Stopped with ``abandoned`` (main then ends the process at once), the level's
    last checkpoint stands, and a rerun finishes the level as if nothing had happened."""
    workdir = str(tmp_path / "run")
    # One long chunk for the rest of level 0 after its first slice (~0.3 s of training: the stop
    # gives it up within a poll, ~10 ms).
    cfg = tiny_no_controls(runtime__chunk_seconds=1e4, train__iterations=500, prune__levels=0,
               runtime__checkpoint_minutes=1e-9,  # a checkpoint after every chunk
               runtime__stop_wait_seconds=0.0)
    calls, original = [], lottery.Training.advance

    def advance(self, count, poll=None):
        calls.append(count)
        return original(self, count, poll)

    monkeypatch.setattr(lottery.Training, "advance", advance)
    stop = lambda: signal.SIGINT if len(calls) >= 2 else 0
    with pytest.raises(lottery.Stopped) as info:
        lottery.run(cfg, workdir, log=quiet, stop=stop)
    assert info.value.abandoned and info.value.signum == signal.SIGINT
    assert str(info.value) == ("stopped in level 0 at iteration 5 without waiting for the chunk "
                               "in flight (progress saved at iteration 5)")
    assert calls[0] == 1 and calls[1] > 400  # the second chunk: (nearly) the whole level
    assert workdir_lib.checkpoint_names(workdir) == ["progress_000"]
    monkeypatch.setattr(lottery.Training, "advance", original)
    logs = []
    records = lottery.run(cfg, workdir, log=logs.append)  # the lock was released
    assert "level 0: resuming at iteration 5 from its intra-level checkpoint" in logs
    assert [(r["level"], r["status"]) for r in records] == [(0, "ok"), (0, "ok")]


def test_a_stop_before_training_leaves_nothing(tmp_path):
    workdir = str(tmp_path / "run")
    with pytest.raises(lottery.Stopped, match="stopped after loading the data"):
        lottery.run(tiny_no_controls(), workdir, log=quiet, stop=lambda: signal.SIGINT)
    assert not os.path.exists(workdir)
