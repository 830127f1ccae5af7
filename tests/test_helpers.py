"""The test helpers' own promises that other tests rely on."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from helpers import REPO

#: A parent that ignores SIGINT, as a suite started in the background by a non-interactive shell
#: does (``nohup python -m pytest -q &``), starts a Python child the way the tests start theirs and
#: prints what the child finds at its start: Python installs its KeyboardInterrupt handler only
#: where SIGINT is at its default action, and keeps an inherited SIG_IGN.
PARENT = textwrap.dedent("""
    import signal, subprocess, sys
    sys.path.insert(0, "tests")
    import helpers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = ("import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler, "
             "signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)")
    for start in (helpers.popen, subprocess.Popen):
        proc = start([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
        print(proc.communicate()[0].strip())
""")


def test_children_start_with_default_signal_handling_even_when_the_suite_ignores_sigint():
    done = subprocess.run([sys.executable, "-c", PARENT], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    with_popen, plain = done.stdout.splitlines()
    assert with_popen == "True True"  # helpers.popen: a SIGINT or SIGTERM a test sends counts
    assert plain == "False False"  # (what a plain Popen would give: the signals lost)
