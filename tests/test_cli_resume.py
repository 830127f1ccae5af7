"""The command line killed and stopped at several points of an experiment, then resumed: its records
and checkpoints equal an uninterrupted in-process run's, bit for bit. (Slow: several CLI processes;
in a file of its own so that xdist can balance it.)

The CLI runs with its default device setup (one XLA host device per core); the reference run is
in-process (one device). The experiment is ``helpers.TINY`` without controls, trained in chunks of
one evaluation period with an intra-level checkpoint after each.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from helpers import (NO_CONTROLS, Cli, assert_same_experiment, check_results_file, cli_flags, crashed,
                     error_line, partial_checkpoints, results_text, stopped_while_writing, strip_timing,
                     tiny_config)
from lth_jax import lottery
from lth_jax import workdir as workdir_lib


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted in-process run (one device, chunks of the default length)."""
    workdir = str(tmp_path_factory.mktemp("reference") / "run")
    records = lottery.run(tiny_config(**NO_CONTROLS), workdir, log=lambda _: None)
    return workdir, records


@pytest.mark.slow
def test_killed_stopped_and_resumed_cli_equals_uninterrupted(reference, tmp_path):
    """One workdir, the same CLI command four times:

    1. SIGKILL while a checkpoint is being written (frozen with SIGSTOP when its staging folder
       appears): the debris stays, nothing else;
    2. SIGTERM after the progress line of level 1 at iteration 50: exit 143 with one line on
       stderr, within a few seconds (one chunk, then the progress is saved);
    3. SIGINT (Ctrl-C) while it starts up, after a half-written line was appended to
       results.jsonl: exit 130 with one line;
    4. it runs to the end, resuming level 1 at iteration 50.

    After every step the records are whole, unique and a prefix of the reference's; at the end
    they equal it (timing aside) and so do θ0, θ_rewind and every level's masks and trained
    params, bit for bit (the CLI has 2 host devices, the reference 1).
    """
    ref_dir, ref_records = reference
    workdir = str(tmp_path / "run")
    # Chunks of one slice; an intra-level checkpoint every 0.6 s (after every chunk: ~3 s more
    # per run, spent writing checkpoints nobody reads).
    flags = cli_flags(**NO_CONTROLS, runtime__chunk_seconds=1e-6,
                      runtime__checkpoint_minutes=0.01)

    # 1. SIGKILL in the middle of writing a checkpoint: its debris is left behind
    cli = Cli(workdir, *flags, tag="kill")
    name = stopped_while_writing(cli, workdir)
    cli.signal(signal.SIGKILL)
    assert cli.wait() == -signal.SIGKILL
    assert any(n.startswith(name + ".") for n in partial_checkpoints(workdir))
    check_results_file(results_text(workdir), ref_records)

    # 2. SIGTERM in level 1: the chunk ends, the progress is saved, one line, exit 143
    cli = Cli(workdir, *flags, tag="term")
    cli.until(lambda: "level  1  iteration 50/" in cli.stdout, "level 1 at iteration 50")
    cli.signal(signal.SIGTERM)
    sent = time.monotonic()
    assert cli.wait() == 143, cli.stderr[-3000:]
    took = time.monotonic() - sent
    assert took < 10, f"the stop took {took:.1f} s"
    line = error_line(cli.stderr)
    assert line.startswith("lth_jax: stopped in level 1 at iteration ") and "by SIGTERM" in line
    assert "run the same command again to resume" in line and not crashed(cli.stderr)
    assert partial_checkpoints(workdir) == []
    assert "progress_001" in workdir_lib.checkpoint_names(workdir)
    records = check_results_file(results_text(workdir), ref_records)
    assert {r["level"] for r in records} == {0}
    saved_at = int(line.split("progress saved at iteration ")[1].split(")")[0])
    assert saved_at >= 50

    # 3. Ctrl-C while starting up, with a partial line at the end of results.jsonl
    with open(os.path.join(workdir, lottery.RESULTS), "a") as f:
        f.write('{"trial": 0, "level": 1, "variant": "tic')
    cli = Cli(workdir, *flags, tag="int")
    cli.until(lambda: "resuming: levels 0 already finished" in cli.stdout, "the CLI to resume")
    cli.signal(signal.SIGINT)
    assert cli.wait() == 130, cli.stderr[-3000:]
    line = error_line(cli.stderr)
    assert "by SIGINT" in line and not crashed(cli.stderr)

    # 4. the same command finishes the experiment
    cli = Cli(workdir, *flags, tag="finish")
    assert cli.wait() == 0, cli.stderr[-3000:]
    assert f"level 1: resuming at iteration {saved_at} from its intra-level checkpoint" in cli.stdout
    check_results_file(results_text(workdir), ref_records)
    assert strip_timing(lottery.read_records(workdir)) == strip_timing(ref_records)
    assert_same_experiment(workdir, ref_dir)


@pytest.mark.slow
def test_a_stop_gives_up_a_long_chunk_and_exits_at_once(tmp_path):
    """SIGTERM while one chunk trains for minutes: the CLI waits ``runtime.stop_wait_seconds``
    (here 1 s; 8 by default) for it, then gives it up and ends at once (``os._exit``: the
    interpreter would wait for the chunk), exit 143 with one line, nothing half-written, the lock
    released."""
    workdir = str(tmp_path / "run")
    # After the first slice (5 steps) the chunk length follows chunk_seconds=1e4: the rest of a
    # 2M-iteration level in one chunk.
    cli = Cli(workdir, *cli_flags(train__iterations=2_000_000, prune__levels=0,
                                  runtime__chunk_seconds=1e4, runtime__stop_wait_seconds=1.0))
    cli.until(lambda: "level  0  iteration 5/" in cli.stdout, "the first chunk's progress line")
    time.sleep(0.5)  # past the checks between chunks: the long chunk is running
    t0 = time.monotonic()
    cli.signal(signal.SIGTERM)
    rc = cli.wait(120)
    waited = time.monotonic() - t0
    assert rc == 143, cli.stderr[-3000:]
    assert error_line(cli.stderr).startswith(
        "lth_jax: stopped in level 0 at iteration 5 without waiting for the chunk in flight "
        "(no progress saved) by SIGTERM")
    assert 1.0 <= waited < 60  # the chunk itself would run for minutes
    assert partial_checkpoints(workdir) == []
    assert workdir_lib.Lock(workdir).holder() is None
