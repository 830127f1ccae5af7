"""Kept only for tests/test_branches.py, which still imports from here: the helpers of the
command-line tests are in helpers.py (and the fixture that kills leftover CLIs in conftest.py).
Remove this file once test_branches.py imports them from helpers."""

from conftest import _no_cli_left_running  # noqa: F401
from helpers import (Cli, assert_same_experiment, cli_env, crashed, error_line,  # noqa: F401
                     partial_checkpoints, run_cli, strip_timing)
