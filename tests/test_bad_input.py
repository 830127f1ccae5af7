"""Bad input stops a run with one line naming the culprit, before anything is written: a bad or
unknown config field, a truncated dataset file, a workdir that cannot be used, not enough disk for
a level's checkpoints (and a disk that fills up half-way leaves nothing half-written), a config
that cannot fit in memory. (The CLI's side of the same errors: tests/test_cli_errors.py.)
"""

from __future__ import annotations

import os
import shutil

import ml_collections
import numpy as np
import pytest

from helpers import quiet, set_field, strip_timing, tiny_no_controls
from lth_jax import config as config_lib
from lth_jax import data as data_lib
from lth_jax import lottery
from lth_jax import workdir as workdir_lib


@pytest.mark.parametrize("field, value", [
    ("prune.rules", ((".*kernel", 1.0),)),
    ("prune.global_rate", -0.1),
    ("prune.global_rate", 1.0),
    ("prune.levels", -1),
    ("train.iterations", 310),
    ("train.optimizer", "adamw"),
    ("model.name", "lenet5"),
    ("prune.strategy", "magnitude"),
    ("dataset.source", "web"),
    ("dataset.augment", "maybe"),
    ("model.dropout_rate", 1.0),
    ("train.learning_rate", 0.0),
    ("train.learning_rate", float("inf")),
    ("train.weight_decay", float("nan")),
    ("prune.rewind_iteration", 10),
    ("trials", 0),
    ("train.batch_size", 650),  # the training set has 700 - 100 = 600 examples
    ("seed", 10**30),
    ("seed", 2**32),  # jax.random.key(2**32) would be key 0
    ("runtime.devices", 99),
    ("runtime.checkpoint_minutes", -1.0),
    ("runtime.chunk_seconds", 0.0),
    ("runtime.stop_wait_seconds", -1.0),
])
def test_bad_value_is_refused_before_anything_is_written(tmp_path, field, value):
    workdir = str(tmp_path / "run")
    cfg = tiny_no_controls()
    set_field(cfg, field, value)
    with pytest.raises(config_lib.ConfigError) as info:
        lottery.run(cfg, workdir, log=quiet)
    assert str(info.value).startswith(f"config.{field}:"), str(info.value)
    assert "\n" not in str(info.value)
    assert not os.path.exists(workdir)


def test_unknown_field_is_refused(tmp_path):
    cfg = ml_collections.ConfigDict(tiny_no_controls().to_dict())
    cfg.train.iteratons = 5
    with pytest.raises(config_lib.ConfigError, match=r"^config\.train\.iteratons: unknown field"):
        lottery.run(cfg, str(tmp_path / "run"), log=quiet)
    assert not os.path.exists(tmp_path / "run")

def _write_idx(path, array, ndim):
    header = (0x0800 | ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_truncated_dataset_file_is_refused(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    _write_idx(folder / "train-images-idx3-ubyte", rng.integers(0, 256, (50, 28, 28)), 3)
    _write_idx(folder / "train-labels-idx1-ubyte", rng.integers(0, 10, (50,)), 1)
    _write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 256, (20, 28, 28)), 3)
    _write_idx(folder / "t10k-labels-idx1-ubyte", rng.integers(0, 10, (20,)), 1)
    truncated = folder / "train-images-idx3-ubyte"
    with open(truncated, "r+b") as f:
        f.truncate(16 + 50 * 28 * 28 - 100)
    workdir = str(tmp_path / "run")
    cfg = tiny_no_controls(dataset__name="mnist", dataset__source="files",
                           dataset__path=str(folder), dataset__validation_size=10,
                           train__batch_size=10)
    with pytest.raises(data_lib.DatasetError, match="truncated") as info:
        lottery.run(cfg, workdir, log=quiet)
    assert str(truncated) in str(info.value) and "\n" not in str(info.value)
    assert not os.path.exists(workdir)


@pytest.mark.parametrize("case", ["is_a_file", "under_a_file", "read_only"])
def test_an_unusable_workdir_is_one_line(tmp_path, monkeypatch, case):
    """A file, a path under a file, a read-only filesystem (simulated: root may write anywhere,
    so opening the lock file fails with EROFS as on a read-only mount)."""
    import errno

    workdir = str(tmp_path / "run")
    if case == "is_a_file":
        open(workdir, "w").close()
    elif case == "under_a_file":
        open(workdir, "w").close()
        workdir = os.path.join(workdir, "sub")
    else:
        real_open = os.open

        def read_only(path, *args, **kwargs):
            if str(path).endswith(workdir_lib.LOCK):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(lottery.ExperimentError) as info:
        lottery.run(tiny_no_controls(), workdir, log=quiet)
    message = str(info.value)
    assert "\n" not in message and workdir in message
    assert {"is_a_file": "is a file", "under_a_file": "Not a directory",
            "read_only": "Read-only file system"}[case] in message


def test_disk_space_is_checked_before_a_level_and_a_full_disk_leaves_nothing(tiny_reference,
                                                                              tmp_path,
                                                                              monkeypatch):
    """(Simulated: shutil.disk_usage reporting 1 MiB free; a checkpoint write failing with ENOSPC
    half-way.) Refused before the level trains; a write that fails leaves nothing half-written,
    and the next run goes on as if it had not happened."""
    import collections
    import errno

    workdir = str(tmp_path / "run")
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 2**20, 2**20))
    logs = []
    with pytest.raises(lottery.ExperimentError) as info:
        lottery.run(tiny_no_controls(), workdir, log=logs.append)
    assert str(info.value).startswith(f"not enough disk space for level 0 in {workdir}: its "
                                      "checkpoints need ~")
    assert not any(line.startswith("level ") for line in logs)
    monkeypatch.undo()

    real = workdir_lib.write_checkpoint

    def full_disk(workdir_, name, tree, meta, **how):
        if name == "level_001":
            staging = workdir_lib.checkpoint_path(workdir_, name) + ".staging"
            os.makedirs(staging)  # what orbax had written so far
            try:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            finally:
                shutil.rmtree(staging)  # (write_checkpoint's own cleanup)
        return real(workdir_, name, tree, meta, **how)

    monkeypatch.setattr(workdir_lib, "write_checkpoint", full_disk)
    with pytest.raises(lottery.ExperimentError) as info:
        lottery.run(tiny_no_controls(), workdir, log=quiet)
    assert str(info.value) == (f"cannot write checkpoints/level_001 in {workdir}: No space left on "
                               "device; nothing of it was kept")
    assert sorted(workdir_lib.checkpoint_names(workdir)) == ["init", "level_000"]
    assert {r["level"] for r in lottery.read_records(workdir)} == {0}
    monkeypatch.undo()
    records = lottery.run(tiny_no_controls(), workdir, log=quiet)
    assert strip_timing(records) == strip_timing(tiny_reference[1])


def test_configs_that_cannot_fit_in_memory_are_refused_before_allocating(tmp_path, monkeypatch):
    """The issue's iterations=3e9 is refused by the config check (the iteration counter is int32);
    at 2e9 with eval_every=1e9 in slices of a whole period, a slice's batch indices alone need 200
    GB: refused at once, before compiling. Anything else is checked with XLA's own estimate of the
    compiled program (here with the free memory simulated as 1 MiB)."""
    with pytest.raises(config_lib.ConfigError, match=r"config.train.iterations: must be < 2\*\*31"):
        lottery.run(tiny_no_controls(train__iterations=3_000_000_000,
                                     train__eval_every=1_000_000_000),
                    str(tmp_path / "a"), log=quiet)
    with pytest.raises(lottery.ExperimentError) as info:
        lottery.run(tiny_no_controls(train__iterations=2_000_000_000,
                                     train__eval_every=1_000_000_000,
                                     runtime__slice_iterations=1_000_000_000),
                    str(tmp_path / "b"), log=quiet)
    assert str(info.value).startswith("this config does not fit in memory: the training program "
                                      "needs ~186.3 GiB per device (its batch indices alone)")
    assert workdir_lib.checkpoint_names(str(tmp_path / "b")) == []
    real = os.sysconf
    monkeypatch.setattr(os, "sysconf", lambda name: 256 if name == "SC_AVPHYS_PAGES" else real(name))
    with pytest.raises(lottery.ExperimentError, match=r"needs ~\d+\.\d GiB per device \(XLA's estimate\)"):
        lottery.run(tiny_no_controls(), str(tmp_path / "c"), log=quiet)
