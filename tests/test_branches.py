"""The branch machinery, which every branch gets: the trunk levels it needs first, then its own
folder with the lottery's lock, identity, one record-reading rule, verified checkpoints, chunked
training with stops, and resume; --help per branch; several processes. (The instability branch is
the subject: it trains, checkpoints θ_k and appends records between batches.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from helpers import (REPO, Cli, assert_same_experiment, cli_env, cli_flags, crashed, error_line,
                     lock_holder, partial_checkpoints, run_cli, strip_timing, tiny_config)
from lth_jax import branches, lottery, workdir
from lth_jax.branches import base, instability

NO_CONTROLS = {"controls.reinit": False, "controls.random_prune": False, "prune.levels": 1}
FIELDS = {"ks": (0, 50), "levels": (0, 1), "points": 3}
BRANCH_FLAGS = ["--branch=configs/branches/instability.py", "--branch.ks=(0, 50)",
                "--branch.levels=(0, 1)", "--branch.points=3"]


def _branch(**fields):
    c = branches.default_config(instability)
    for k, v in {**FIELDS, **fields}.items():
        c[k] = v
    return c


def _records(folder):
    return workdir.read_records(folder, key=instability.RECORD_KEY)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted in-process run of the trunk and the branch (one device)."""
    path = str(tmp_path_factory.mktemp("reference") / "run")
    folder = base.run(_branch(), tiny_config(**NO_CONTROLS), path, log=lambda _: None)
    return path, folder, _records(folder)


def _folder(path, reference):
    return os.path.join(path, "branches", os.path.basename(reference[1]))


KILL_FLAGS = [*cli_flags(**NO_CONTROLS, runtime__chunk_seconds=1e-6,
                         runtime__checkpoint_minutes=1e-4), *BRANCH_FLAGS]


@pytest.fixture(scope="module")
def cli_reference(tmp_path_factory, reference):
    """An uninterrupted CLI run (its default two host devices) of the same command: what a
    resumed CLI run must equal bit for bit (the in-process reference runs on one device, whose
    programs may round differently in the last bit)."""
    path = str(tmp_path_factory.mktemp("cli_reference") / "run")
    rc, _, err = run_cli(path, *KILL_FLAGS)
    assert rc == 0, err[-3000:]
    folder = _folder(path, reference)
    return path, folder, _records(folder)


@pytest.mark.slow
def test_branch_killed_at_several_points_resumes_identically(reference, cli_reference, tmp_path):
    """One workdir, the same CLI command six times: SIGKILL in the trunk's level 1, in the θ_k
    trajectory, when the first records are written, and in the copies' training after an
    intra-level checkpoint; SIGTERM in the next trial's training (one line, exit 143); then it
    runs to the end. The branch's records equal the uninterrupted
    run's (timing aside), and so do the trunk's checkpoints, bit for bit."""
    ref_dir, _, ref_records = cli_reference
    path = str(tmp_path / "run")
    flags = KILL_FLAGS
    folder = _folder(path, reference)
    points = ["level  1  iteration 50/", "θ_k (warmup 0)  iteration 25/",
              "trial 0 warmup 0 level  1 ( 80.2%) k      0", "trial 0 k=50 (warmup 0)  iteration 75/"]
    for i, line in enumerate(points):
        cli = Cli(path, *flags, tag=f"kill{i}")
        cli.until(lambda: line in cli.stdout, line)
        cli.signal(signal.SIGKILL)
        assert cli.wait() == -signal.SIGKILL
        if os.path.exists(os.path.join(folder, workdir.RESULTS)):
            done = _records(folder)  # whole records, each a reference record
            assert strip_timing(done) == [r for r in strip_timing(ref_records) if r in
                                          strip_timing(done)]
    assert "progress_w0_t0_k50" in workdir.checkpoint_names(folder)  # killed after saving it
    # SIGTERM in the branch's training: the chunk ends, its progress is saved, one line, exit 143.
    cli = Cli(path, *flags, tag="term")
    cli.until(lambda: "trial 1 k=0 (warmup 0)  iteration 50/" in cli.stdout, "trial 1 at k=0")
    cli.signal(signal.SIGTERM)
    assert cli.wait() == 143, cli.stderr[-3000:]
    line = error_line(cli.stderr)
    assert line.startswith("lth_jax: stopped in trial 1 k=0 (warmup 0) at iteration ")
    assert "by SIGTERM" in line and "run the same command again to resume" in line
    assert not crashed(cli.stderr) and partial_checkpoints(folder) == []
    assert "trial 0 k=50 (warmup 0): resuming at iteration" in cli.stdout
    cli = Cli(path, *flags, tag="finish")
    assert cli.wait() == 0, cli.stderr[-3000:]
    assert "trial 1 k=0 (warmup 0): resuming at iteration" in cli.stdout
    assert strip_timing(_records(folder)) == strip_timing(ref_records)
    assert_same_experiment(path, ref_dir)
    assert partial_checkpoints(folder) == []
    assert not [n for n in workdir.checkpoint_names(folder) if n.startswith("progress_")]


def test_a_torn_last_line_and_a_duplicate_are_repaired_without_retraining(reference, tmp_path,
                                                                           monkeypatch):
    import shutil
    path = str(tmp_path / "run")
    shutil.copytree(reference[0], path)
    folder = _folder(path, reference)
    results = os.path.join(folder, workdir.RESULTS)
    text = open(results).read()
    lines = text.splitlines(keepends=True)
    with open(results, "w") as f:  # a duplicate of the first record, and a half-written line
        f.write(lines[0] + text + lines[-1][:40])

    def fail(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(lottery.Runner, "begin", fail)
    logs = []
    base.run(_branch(), tiny_config(**NO_CONTROLS), path, log=logs.append)
    assert open(results).read() == text  # repaired: the records once each, in order
    assert any("duplicate record for trial 0" in line for line in logs)
    assert any("ignoring unparseable last line" in line for line in logs)


def test_a_garbage_line_is_an_error_naming_it(reference, tmp_path):
    import shutil
    path = str(tmp_path / "run")
    shutil.copytree(reference[0], path)
    results = os.path.join(_folder(path, reference), workdir.RESULTS)
    text = open(results).read()
    with open(results, "w") as f:
        f.write("garbage\n" + text)
    with pytest.raises(lottery.ExperimentError, match=r"results.jsonl: line 1 is not valid JSON"):
        base.run(_branch(), tiny_config(**NO_CONTROLS), path, log=lambda _: None)


def test_a_second_process_on_a_branch_is_refused_and_a_clean_end_frees_the_lock(reference,
                                                                               tmp_path):
    import shutil
    path = str(tmp_path / "run")
    shutil.copytree(reference[0], path)
    folder = _folder(path, reference)
    assert open(os.path.join(folder, workdir.LOCK)).read() == ""  # released: names no holder
    holder = lock_holder(folder)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(lottery.ExperimentError, match=f"in use by process {holder.pid} "):
            base.run(_branch(), tiny_config(**NO_CONTROLS), path, log=lambda _: None)
    finally:
        holder.kill()
        holder.wait()
    logs = []
    base.run(_branch(), tiny_config(**NO_CONTROLS), path, log=logs.append)
    assert any(f"took over the lock of process {holder.pid}" in line for line in logs)
    logs.clear()
    base.run(_branch(), tiny_config(**NO_CONTROLS), path, log=logs.append)
    assert not any("took over" in line for line in logs)  # the last run ended cleanly


def test_each_setting_has_its_own_folder_and_the_trunk_is_shared(reference, tmp_path):
    import shutil
    path = str(tmp_path / "run")
    shutil.copytree(reference[0], path)
    logs = []
    other = base.run(_branch(points=4), tiny_config(**NO_CONTROLS), path, log=logs.append)
    assert other != _folder(path, reference) and os.path.isdir(_folder(path, reference))
    assert any("resuming: levels 0..1 already finished" in line for line in logs)
    assert all(len(r["error"]) == 4 for r in _records(other))


@pytest.mark.parametrize("name", sorted(branches.REGISTRY))
def test_help_lists_the_branch_fields(name):
    done = subprocess.run([sys.executable, "-m", "lth_jax.main", "--help",
                           f"--branch=configs/branches/{name}.py"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=cli_env())
    assert done.returncode == 0, done.stderr
    out = done.stdout
    module = branches.get(name)
    assert f"Branch {name}: " in out
    for field, default, meaning in module.FIELDS:
        line = next(l for l in out.splitlines() if l.split()[:1] == [field])
        assert repr(default) in line or repr(default) in out
        assert meaning.split()[0] in out
    assert "Config fields" not in out  # the experiment's fields are --help without --branch
    assert max(len(line) for line in out.splitlines()) <= 100


def test_command_line_errors_are_one_line_naming_the_field(tmp_path):
    for flags, expected in (
            (["--branch=configs/branches/instability.py", "--branch.pionts=3"],
             "lth_jax: error: branch.pionts: unknown field"),
            (["--branch=configs/branches/instability.py", "--branch.points=abc"],
             "lth_jax: error: branch.points: "),
            (["--branch=configs/branches/instability.py", "--branch.ks=()",
              "--branch.k_fractions=()"], "lth_jax: error: branch.k_fractions: "),
            (["--branch=configs/branches/nothing.py"], "lth_jax: error: --branch: "),
            (["--branch=configs/branches/instability.py", "stray"],
             "lth_jax: error: unexpected arguments: stray")):
        rc, out, err = run_cli(str(tmp_path / "w"), *flags)
        assert rc == 2, err
        assert error_line(err).startswith(expected), err
        assert not crashed(err)
    assert not os.path.exists(tmp_path / "w" / "branches")


@pytest.mark.slow
def test_a_branch_over_two_processes_equals_one(reference, cli_reference, tmp_path):
    """Two CLI processes (jax.distributed, one CPU device each) run the trunk and the branch;
    process 0 writes the records, which equal one process's with two devices (timing aside)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = str(tmp_path / "two")
    env = cli_env("--xla_force_host_platform_device_count=1 --xla_cpu_multi_thread_eigen=false")
    common = [*cli_flags(**NO_CONTROLS), *BRANCH_FLAGS, "--config.runtime.distributed=True",
              "--config.runtime.num_processes=2",
              f"--config.runtime.coordinator_address=127.0.0.1:{port}"]
    clis = [Cli(path, *common, f"--config.runtime.process_id={i}", tag=f"p{i}", env=env)
            for i in (0, 1)]
    for cli in clis:
        assert cli.wait(400) == 0, cli.stderr[-3000:]
    assert strip_timing(_records(_folder(path, reference))) == strip_timing(cli_reference[2])
    # Process 0 prints; the others only their errors (gloo's own connection lines aside).
    assert not [l for l in clis[1].stdout.splitlines() if l.strip() and not l.startswith("[Gloo]")]


def test_the_report_command_reports_the_lottery_and_every_branch(reference, tmp_path):
    import shutil
    path = str(tmp_path / "run")
    shutil.copytree(reference[0], path)
    done = subprocess.run([sys.executable, "-m", "lth_jax.report", f"--workdir={path}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=cli_env())
    assert done.returncode == 0, done.stderr
    folder = _folder(path, reference)
    for name in ("instability.md", "instability.png"):
        assert os.path.join(folder, name) in done.stdout.splitlines()
        assert os.path.getsize(os.path.join(folder, name)) > 0
    assert os.path.exists(os.path.join(path, "report.md"))
