"""Bad input through the command line: one line on stderr, exit status 2, nothing written.
(Each case is a CLI process: a file of its own, so that xdist can balance it.)"""

from __future__ import annotations

import os

from helpers import cli_flags, error_line, run_cli


def test_cli_bad_value_exits_2_with_one_line(tmp_path):
    """(The values above all end the same way in the CLI: one of them is enough here.)"""
    workdir = str(tmp_path / "run")
    rc, _, stderr = run_cli(workdir, *cli_flags(), "--config.train.iterations=55")
    assert rc == 2, stderr
    assert error_line(stderr).startswith("lth_jax: error: config.train.iterations: 55 is not a "
                                         "multiple of train.eval_every=25")
    assert not os.path.exists(workdir)


def test_cli_mistyped_field_exits_2_with_one_line(tmp_path):
    workdir = str(tmp_path / "run")
    rc, _, stderr = run_cli(workdir, *cli_flags(), "--config.train.iteratons=5")
    assert not os.path.exists(workdir)
    assert "iteratons" in stderr
    assert rc == 2
    assert error_line(stderr).startswith("lth_jax: error: config.train.iteratons")



def test_cli_missing_config_file_exits_2_with_one_line(tmp_path):
    workdir = str(tmp_path / "run")
    rc, _, stderr = run_cli(workdir, "--config=configs/no_such.py")
    assert rc == 2
    assert error_line(stderr) == ("lth_jax: error: --config: [Errno 2] No such file or directory: "
                                  "'configs/no_such.py'")
    assert not os.path.exists(workdir)


def test_cli_seed_and_devices_out_of_range_exit_2_with_one_line(tmp_path):
    workdir = str(tmp_path / "run")
    rc, _, stderr = run_cli(workdir, *cli_flags(), f"--config.seed={10**30}",
                            "--config.runtime.devices=99")
    assert rc == 2
    assert error_line(stderr).startswith("lth_jax: error: config.seed: must be < 2**32")
    rc, _, stderr = run_cli(workdir, *cli_flags(), "--config.runtime.devices=99")
    assert rc == 2
    assert error_line(stderr) == ("lth_jax: error: config.runtime.devices: 99 devices asked for, "
                                  f"but there are {os.cpu_count()} cpu device(s) here")
    assert not os.path.exists(workdir)


def test_cli_workdir_that_is_a_file_exits_2_with_one_line(tmp_path):
    workdir = str(tmp_path / "run")
    open(workdir, "w").close()
    rc, _, stderr = run_cli(workdir, *cli_flags())
    assert rc == 2
    assert error_line(stderr) == f"lth_jax: error: --workdir {workdir} is a file, not a directory"


def test_cli_second_process_on_a_workdir_is_refused_at_once(tmp_path):
    """The first holds the workdir's lock (here this test process, as a running CLI would); the
    second CLI exits 2 with one line naming it, before loading any data."""
    import socket

    from lth_jax import workdir as workdir_lib

    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    held = workdir_lib.Lock(workdir).acquire()
    try:
        rc, stdout, stderr = run_cli(workdir, *cli_flags())
    finally:
        held.release()
    assert rc == 2
    line = error_line(stderr)
    assert line.startswith(f"lth_jax: error: workdir {workdir} is in use by process {os.getpid()} "
                           f"on host {socket.gethostname()}, started ")
    assert stdout == ""
