"""A workdir guards its results: one writer at a time (the lock, readers need none), one
experiment (the identity in config.json, every record and every checkpoint), and damaged or lost
files are named in one line and refused, repaired or computed again; nothing else is touched.

``tiny_reference`` (tests/conftest.py) is an uninterrupted run of the tiny experiment without
controls; every test works on a copy of its workdir.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest

from helpers import TINY, quiet, strip_timing, tiny_no_controls
from lth_jax import lottery
from lth_jax import workdir as workdir_lib

LEVELS = TINY["prune.levels"]


def test_workdir_of_another_experiment_is_refused_untouched(tiny_reference, tmp_path):
    """(The CLI prints ExperimentError like the ConfigError above: ``lth_jax: error: ...``.)"""
    workdir = str(tmp_path / "run")
    shutil.copytree(tiny_reference[0], workdir)
    with open(os.path.join(workdir, lottery.RESULTS), "rb") as f:
        before = f.read()
    with pytest.raises(lottery.ExperimentError, match="different experiment") as info:
        lottery.run(tiny_no_controls(train__learning_rate=0.01), workdir, log=quiet)
    assert "train.learning_rate: workdir has 0.0012, config has 0.01" in str(info.value)
    assert "\n" not in str(info.value)
    with open(os.path.join(workdir, lottery.RESULTS), "rb") as f:
        assert f.read() == before


@pytest.mark.parametrize("garbage, message", [
    ('{"trial": 0, "lev\n', "line 2 is not valid JSON"),
    ('[1, 2]\n', "line 2 is a JSON list, not a record object"),
    ('{"trial": 0, "variant": "ticket"}\n', "line 2 lacks required field(s) level")])
def test_a_damaged_results_file_is_refused_untouched(tiny_reference, tmp_path, garbage, message):
    """A damaged results.jsonl (not just a partial last line) stops the run with one line naming
    the file and line; nothing is rewritten."""
    workdir = str(tmp_path / "run")
    shutil.copytree(tiny_reference[0], workdir)
    path = os.path.join(workdir, lottery.RESULTS)
    with open(path) as f:
        lines = f.readlines()
    with open(path, "w") as f:
        f.writelines(lines[:1] + [garbage] + lines[1:])
    with open(path, "rb") as f:
        before = f.read()
    with pytest.raises(lottery.ExperimentError) as info:
        lottery.run(tiny_no_controls(), workdir, log=quiet)
    assert str(info.value).startswith(f"{path}: {message}") and "\n" not in str(info.value)
    with open(path, "rb") as f:
        assert f.read() == before


@pytest.mark.parametrize("content", ['{"seed": 0, ', "[]"])
def test_a_damaged_config_json_is_rewritten_when_the_results_are_this_experiments(
        tiny_reference, tmp_path, content):
    """config.json holding invalid JSON or `[]`: the identity in the records and checkpoints says
    whose results these are; for this config's, the file is written again and nothing recomputed.
    For another config's, the run is refused (and nobody is told to delete the workdir)."""
    workdir = str(tmp_path / "run")
    shutil.copytree(tiny_reference[0], workdir)
    with open(os.path.join(workdir, lottery.CONFIG), "w") as f:
        f.write(content)
    with pytest.raises(lottery.ExperimentError) as info:
        lottery.run(tiny_no_controls(train__learning_rate=0.01), workdir, log=quiet)
    assert "holds results of another experiment" in str(info.value)
    assert "config.json is unreadable" in str(info.value) and "delete" not in str(info.value)
    logs = []
    records = lottery.run(tiny_no_controls(), workdir, log=logs.append)
    assert any("config.json" in line and "rewritten from this config" in line for line in logs)
    assert strip_timing(records) == strip_timing(tiny_reference[1])
    assert not any(line.startswith("level ") for line in logs)  # nothing trained again
    assert workdir_lib.read_config(workdir) == lottery.config_to_json(tiny_no_controls())


def test_another_experiment_is_refused_even_without_config_json(tiny_reference, tmp_path):
    """The identity stored in every record and checkpoint guards the workdir when config.json is
    gone: a rerun at another learning rate is refused, and nothing is written."""
    workdir = str(tmp_path / "run")
    shutil.copytree(tiny_reference[0], workdir)
    os.remove(os.path.join(workdir, lottery.CONFIG))
    with pytest.raises(lottery.ExperimentError) as info:
        lottery.run(tiny_no_controls(train__learning_rate=0.01), workdir, log=quiet)
    message = str(info.value)
    assert "holds results of another experiment" in message and "config.json is missing" in message
    assert not os.path.exists(os.path.join(workdir, lottery.CONFIG))
    # a checkpoint of another experiment copied in is refused the same way
    shutil.copytree(tiny_reference[0], str(tmp_path / "again"))
    other = lottery.run(tiny_no_controls(prune__levels=0, seed=1), str(tmp_path / "other"),
                        log=quiet)
    assert other
    target = workdir_lib.checkpoint_path(str(tmp_path / "again"), "level_000")
    shutil.rmtree(target)
    shutil.copytree(workdir_lib.checkpoint_path(str(tmp_path / "other"), "level_000"), target)
    with pytest.raises(lottery.ExperimentError, match="checkpoints/level_000 has another experiment"):
        lottery.run(tiny_no_controls(), str(tmp_path / "again"), log=quiet)


def _flip_bytes(path, count=64):
    files = sorted((os.path.join(root, f) for root, _, names in os.walk(path) for f in names
                    if f != workdir_lib.META), key=os.path.getsize)
    with open(files[-1], "r+b") as f:
        f.seek(os.path.getsize(files[-1]) // 2)
        chunk = f.read(count)
        f.seek(-len(chunk), 1)
        f.write(bytes(b ^ 0x5A for b in chunk))


@pytest.mark.parametrize("damage", ["flip", "truncate", "incomplete"])
def test_a_damaged_level_checkpoint_is_recomputed(tiny_reference, tmp_path, damage):
    """64 bytes flipped in level 1's checkpoint (which loads without error in orbax), a truncated
    data file, or no digest (cut short): one line names the level, which is trained again from
    level 0's checkpoint; the results equal the reference's, and later levels are kept."""
    ref_dir, ref_records, _ = tiny_reference
    workdir = str(tmp_path / "run")
    shutil.copytree(ref_dir, workdir)
    path = workdir_lib.checkpoint_path(workdir, "level_001")
    if damage == "flip":
        _flip_bytes(path)
    elif damage == "truncate":
        biggest = max((os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs),
                      key=os.path.getsize)
        with open(biggest, "r+b") as f:
            f.truncate(100)
    else:
        os.remove(os.path.join(path, workdir_lib.META))
    logs = []
    records = lottery.run(tiny_no_controls(), workdir, log=logs.append)
    said = [line for line in logs if "level_001" in line]
    assert len(said) == 1 and said[0].startswith("lth_jax: checkpoint level_001 is ")
    assert said[0].endswith("; level 1 is computed again")
    assert any(line.startswith("level  1/2") for line in logs)
    assert not any(line.startswith("level  2/2") for line in logs)  # level 2 was kept
    assert strip_timing(records) == strip_timing(ref_records)
    for x, y in zip(jax.tree.leaves(lottery.load_checkpoint(workdir, "level_001")),
                    jax.tree.leaves(lottery.load_checkpoint(ref_dir, "level_001")), strict=True):
        np.testing.assert_array_equal(x, y)


def test_a_lost_init_is_rebuilt_from_the_seed_and_checked(tiny_reference, tmp_path):
    ref_dir, ref_records, _ = tiny_reference
    workdir = str(tmp_path / "run")
    shutil.copytree(ref_dir, workdir)
    shutil.rmtree(workdir_lib.checkpoint_path(workdir, "init"))
    # keep the last level unfinished so that the resume needs θ_rewind
    shutil.rmtree(workdir_lib.checkpoint_path(workdir, "level_002"))
    logs = []
    records = lottery.run(tiny_no_controls(), workdir, log=logs.append)
    assert strip_timing(records) == strip_timing(ref_records)
    for x, y in zip(jax.tree.leaves(lottery.load_checkpoint(workdir, "init")),
                    jax.tree.leaves(lottery.load_checkpoint(ref_dir, "init")), strict=True):
        np.testing.assert_array_equal(x, y)
    # θ₀ rebuilt differently (here: the digest the levels recorded is changed): refused, saying
    # exactly what to do
    _flip_bytes(workdir_lib.checkpoint_path(workdir, "init"))
    for level in range(LEVELS + 1):
        meta_path = os.path.join(workdir_lib.checkpoint_path(workdir, f"level_{level:03d}"),
                                 workdir_lib.META)
        with open(meta_path) as f:
            meta = json.load(f)
        meta["init_digest"] = "0" * 64
        with open(meta_path, "w") as f:
            json.dump(meta, f)
    shutil.rmtree(workdir_lib.checkpoint_path(workdir, "level_002"))
    logs = []
    with pytest.raises(lottery.ExperimentError) as info:
        lottery.run(tiny_no_controls(), workdir, log=logs.append)
    assert any(line.startswith("lth_jax: checkpoint init is damaged") for line in logs)
    assert "restore checkpoints/init from a backup, or start over in a new --workdir" in str(info.value)


def test_lost_records_are_restored_and_duplicates_removed(tiny_reference, tmp_path):
    """results.jsonl deleted: the records of the finished levels come back from their
    checkpoints, with no training. Duplicated lines (from a version without the lock): removed,
    by the same rule as the report's and load_experiment's (the later line wins)."""
    ref_dir, ref_records, _ = tiny_reference
    workdir = str(tmp_path / "run")
    shutil.copytree(ref_dir, workdir)
    os.remove(os.path.join(workdir, lottery.RESULTS))
    logs = []
    records = lottery.run(tiny_no_controls(), workdir, log=logs.append)
    assert strip_timing(records) == strip_timing(ref_records)
    assert sum("restored from its checkpoint" in line for line in logs) == LEVELS + 1
    assert not any(line.startswith("level ") for line in logs)
    path = os.path.join(workdir, lottery.RESULTS)
    with open(path) as f:
        lines = f.readlines()
    with open(path, "w") as f:
        f.writelines(lines + lines[:3])
    assert len(lottery.load_experiment(workdir)["records"]) == len(ref_records)
    logs = []
    lottery.run(tiny_no_controls(), workdir, log=logs.append)
    assert sum("duplicate record" in line for line in logs) == 3
    with open(path) as f:
        assert f.readlines() == lines


def test_the_lock_refuses_a_second_writer_but_not_readers(tiny_reference, tmp_path):
    from lth_jax import report

    workdir = str(tmp_path / "run")
    shutil.copytree(tiny_reference[0], workdir)
    held = workdir_lib.Lock(workdir).acquire()
    try:
        with pytest.raises(lottery.ExperimentError, match=f"in use by process {os.getpid()} on "):
            lottery.run(tiny_no_controls(), workdir, log=quiet)
        assert len(lottery.load_experiment(workdir)["levels"]) == LEVELS + 1  # readers: no lock
        assert os.path.exists(report.write_report(workdir, plots=False))
    finally:
        held.release()
    logs = []
    lottery.run(tiny_no_controls(), workdir, log=logs.append)  # free again
    assert not any("took over the lock" in line for line in logs)  # (it was this process's)
