r"""The command line of every lth_jax experiment: signals, flags, help, one-line errors, and the
multi-process failure path. ``lth_jax.main`` runs it; every branch gets it through ``--branch``.

    python -m lth_jax.main --config=CONFIG.py --workdir=DIR [--config.FIELD=VALUE ...]
                           [--branch=BRANCH.py [--branch.FIELD=VALUE ...]] [--noreport]

SIGINT (Ctrl-C) and SIGTERM are only noted, never raised as exceptions: an exception raised by a
signal handler lands wherever Python happens to be (inside orbax's event loop, an XLA callback, a
destructor that only prints it) and can be lost or abort the process. The run polls
``stop_requested`` at safe points instead: between startup steps, between chunks of training (a few
seconds each, ``runtime.chunk_seconds``) and between levels; a chunk still running
``runtime.stop_wait_seconds`` after the signal is given up. A second signal exits at once (every
write is atomic, so that loses only the progress since the last checkpoint).

Importing this module is cheap (modules the interpreter has already loaded, nothing else) and
has no effect: no flag is defined and no handler installed until ``run``, so that
``note_signals`` comes first, before the heavy imports, and a Ctrl-C from the first moment counts.
"""

from __future__ import annotations

import _signal  # the C module, already loaded: signal.py would first spend ms building enums
import os
import sys

_RECEIVED: list[int] = []
_HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull", "--help_config")
_WIDTH = 100


# ----------------------------------------------------------------------------- signals

def _note_signal(signum, frame):
    if _RECEIVED:
        os.write(2, b"lth_jax: stopped at once (second signal); run the same command to resume\n")
        os._exit(128 + signum)
    _RECEIVED.append(signum)


def note_signals() -> None:
    """Note SIGINT and SIGTERM (``stop_requested``) instead of raising them. Installed by ``run``;
    call it first in a program of your own that runs ``cli.main``."""
    for sig in (_signal.SIGINT, _signal.SIGTERM):
        _signal.signal(sig, _note_signal)


def stop_requested() -> int:
    """The first SIGINT/SIGTERM received (its number), or 0."""
    return _RECEIVED[0] if _RECEIVED else 0


def cpu_device_flags() -> None:
    """One XLA host device per core, each single-threaded, unless XLA_FLAGS already says otherwise.

    The runs of a level are then spread over the cores (one device each) instead of splitting every
    small matmul across threads, which is faster for these networks (docs/performance.md,
    "LeNet-300-100 on a CPU: one device per core"). Must
    run before jax is imported; it does not affect GPU/TPU devices.
    """
    flags_env = os.environ.get("XLA_FLAGS", "")
    extra = []
    if "xla_force_host_platform_device_count" not in flags_env:
        extra.append(f"--xla_force_host_platform_device_count={os.cpu_count() or 1}")
        if "xla_cpu_multi_thread_eigen" not in flags_env:
            extra.append("--xla_cpu_multi_thread_eigen=false")
    os.environ["XLA_FLAGS"] = " ".join([flags_env] + extra).strip()


# ----------------------------------------------------------------------------- one-line endings

def fail(message: str, status: int = 2) -> None:
    """One line on stderr, exit status 2. With several processes the others are told (they stop
    with this line) and this one exits at once (``processes.fail``)."""
    line = f"lth_jax: error: {' '.join(message.split())}"
    if "lth_jax.processes" in sys.modules:
        from lth_jax import processes
        if processes.initialized():
            processes.fail(f"{line} (process {processes.index()})", status)
    print(line, file=sys.stderr)
    sys.exit(status)


def stopped(workdir: str, signum: int, where: str, at_once: bool = False) -> None:
    """One line on stderr, exit status 128 + signal (130 for SIGINT, 143 for SIGTERM).

    ``at_once``: a chunk of training still runs on the devices (given up): the process ends
    without the interpreter's shutdown, which would wait for it."""
    import signal
    print(f"lth_jax: {where} by {signal.Signals(signum).name}; what is finished and saved is in "
          f"{workdir}: run the same command again to resume.", file=sys.stderr, flush=True)
    if at_once:
        sys.stdout.flush()
        os._exit(128 + signum)
    sys.exit(128 + signum)


def _stopped_yet(workdir: str) -> None:
    if stop_requested():
        stopped(workdir, stop_requested(), "stopped before training")


# ----------------------------------------------------------------------------- flags

def define_flags() -> dict[str, object]:
    """Define the flags (once per process) and return their holders by name."""
    from absl import flags
    from ml_collections import config_flags

    if "workdir" in flags.FLAGS:
        return _FLAG_HOLDERS
    _FLAG_HOLDERS.update(
        config=config_flags.DEFINE_config_file("config", None, "Experiment config file "
                                               "(configs/*.py).", lock_config=True),
        branch=config_flags.DEFINE_config_file("branch", None, "Branch config file "
                                               "(configs/branches/*.py): an experiment on the "
                                               "lottery in --workdir.", lock_config=True),
        workdir=flags.DEFINE_string("workdir", None, "Directory for config.json, results.jsonl, "
                                    "checkpoints/, branches/ and the report."),
        report=flags.DEFINE_bool("report", True, "Write report.md and plots at the end."))
    flags.mark_flags_as_required(["config", "workdir"])
    return _FLAG_HOLDERS


_FLAG_HOLDERS: dict[str, object] = {}


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a one-line error (exit 2) naming the field for a bad override.

    ml_collections raises AttributeError/KeyError/TypeError for a mistyped or ill-typed
    ``--config.*`` or ``--branch.*`` field; absl would show a traceback or the whole usage text.
    """
    import re

    from absl import flags

    if any(a in _HELP_FLAGS for a in argv[1:]):  # absl's --help lists no config field and exits 1
        print(help_text(argv))
        if "--helpfull" in argv[1:]:
            print("\nabsl flags:\n" + flags.FLAGS.get_help())
        sys.exit(0)
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001 -- any parse failure becomes the one-line error
        message = " ".join(str(e).replace("\\n", " ").split()).strip("'\"")
        names = [a.split("=", 1)[0].lstrip("-") for a in argv[1:]]
        names = [n for n in names if n.startswith(("config.", "branch."))]
        # The failing override is named in the message (before any "Did you mean" suggestion).
        named = str(e).split("Did you mean")[0]
        culprit = next((n for n in names if f"--{n}=" in named), None) or next(
            (n for n in names if re.search(rf"\b{re.escape(n.rsplit('.', 1)[-1])}\b", named)),
            None) or next((f for f in ("branch", "config") if f"--{f}" in named or f"'{f}'"
                           in named), "config")
        if isinstance(e, AttributeError):
            hint = message[message.find("Did you mean"):] if "Did you mean" in message else ""
            message = "unknown field" + (f" ({hint})" if hint else "")
        print(f"lth_jax: error: {culprit}: {message}", file=sys.stderr)
        sys.exit(2)


def _file_flag(argv: list[str], name: str) -> str | None:
    """The value of ``--name=VALUE`` or ``--name VALUE`` in ``argv``, or None."""
    value = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith(f"--{name}=")), None)
    if value is None and f"--{name}" in argv[1:-1]:
        value = argv[argv.index(f"--{name}") + 1]
    return value


def help_text(argv: list[str]) -> str:
    """The --help text: usage, flags, and every field with its value and meaning; at most 100
    columns. With ``--branch=FILE``, that branch's fields (and its values); else the experiment's
    (``--config=FILE``'s values, or ``base_config()``'s)."""
    from lth_jax import config as config_lib

    lines = [
        "Run a lottery-ticket experiment (Frankle & Carbin 2019): train, prune, rewind, repeat,",
        "with random-reinit and random-pruning controls, over several trials; or a branch of one.",
        "",
        "usage: python -m lth_jax.main --config=CONFIG.py --workdir=DIR [--config.FIELD=VALUE ...]",
        "           [--branch=BRANCH.py [--branch.FIELD=VALUE ...]] [--noreport]",
        "",
        "  --config=FILE    experiment config: configs/lenet300_100.py, conv2..6[_dropout], vgg19,",
        "                   resnet18, quickstart, tiny (each a get_config() over base_config())",
        "  --workdir=DIR    results.jsonl, checkpoints, report.md, plots; the same command again",
        "                   resumes an interrupted run",
        "  --branch=FILE    run a branch, an experiment on the lottery in --workdir (its trunk):",
        "                   the trunk levels it needs first, then the branch into",
        "                   DIR/branches/NAME-DIGEST/; configs/branches/*.py",
        "  --[no]report     write report.md, results.csv and the plots at the end (default: true)",
        "  --help           this text (exit 0); with --config=FILE that file's values, with",
        "                   --branch=FILE the branch's fields; --helpfull adds absl's own flags",
        "",
    ]
    branch_spec = _file_flag(argv, "branch")
    if branch_spec:
        from lth_jax import branches
        try:
            bcfg = _load(branch_spec)
            branch = branches.get(str(bcfg.name))
        except Exception as e:  # noqa: BLE001 -- help must still print
            lines.append(f"(could not load {branch_spec}: {type(e).__name__}: {e})")
            return "\n".join(lines)
        import textwrap
        summary = " ".join((branch.__doc__ or "").strip().split("\n\n")[0].split())
        lines += textwrap.wrap(f"Branch {bcfg.name}: {summary}", _WIDTH, subsequent_indent="  ")
        lines += ["", f"Branch fields (values of {branch_spec});",
                  "override any with --branch.FIELD=VALUE:"]
        lines += field_lines(bcfg, {name: text for name, _, text in branch.FIELDS})
        return "\n".join(lines)
    spec = _file_flag(argv, "config")
    source, config = "base_config() defaults", config_lib.base_config()
    if spec:
        try:
            config, source = _load(spec), f"values of {spec}"
        except Exception as e:  # noqa: BLE001 -- help must still print
            lines.append(f"(could not load {spec}: {type(e).__name__}: {e}; showing the defaults)")
    lines.append(f"Config fields ({source}); override any with --config.FIELD=VALUE:")
    lines += field_lines(config, {name: text for name, _, text in config_lib.FIELDS})
    return "\n".join(lines)


def _load(spec: str):
    from lth_jax import config as config_lib
    path, _, arg = spec.partition(":")  # --config=PATH[:ARG], as config_flags reads it
    return config_lib.load_file(path, arg or None)


def field_lines(config, meanings: dict[str, str]) -> list[str]:
    """Every field of ``config`` with its value and meaning (in ``meanings``' order), wrapped to
    100 columns."""
    import textwrap

    from lth_jax import config as config_lib

    name_width = 27
    fields = list(config_lib.flatten(config.to_dict()).items())
    order = {name: i for i, name in enumerate(meanings)}
    fields.sort(key=lambda f: (order.get(f[0], len(order)), f[0]))
    lines = []
    for name, value in fields:
        shown = repr(value)
        meaning = meanings.get(name, "(no description)")
        head = f"  {name:<{name_width}} {shown}"
        indent = " " * (2 + name_width + 1 + 14 + 1)
        if len(shown) <= 14:
            head = f"  {name:<{name_width}} {shown:<14} "
            wrapped = textwrap.wrap(meaning, _WIDTH - len(head)) or [""]
            lines.append(head + wrapped[0])
            lines += [indent + w for w in wrapped[1:]]
        else:  # a long value gets its own line(s), the meaning below it
            lines += textwrap.wrap(head, _WIDTH, subsequent_indent=" " * (2 + name_width + 1))
            lines += [indent + w for w in textwrap.wrap(meaning, _WIDTH - len(indent))]
    return lines


# ----------------------------------------------------------------------------- the program

def _loaded(holder, flag: str):
    """The ConfigDict of a ``config_flags`` flag, or the one-line error of a file that failed."""
    try:
        config = holder.value
        if config is not None:
            config.keys()  # a config file that failed to load raises only when used
        return config
    except OSError as e:  # ml_collections loads the file lazily; its message is many lines
        import re
        reason = re.search(r"\[Errno \d+\][^\n]*", str(e))
        fail(f"--{flag}: {reason.group(0) if reason else ' '.join(str(e).split())}")


def main(argv: list[str]) -> None:
    """The program: the lottery in ``--workdir`` (or, with ``--branch``, the trunk levels the branch
    needs and then the branch), then the report. Errors end in one line (exit 2), stops in one
    line (exit 130/143)."""
    from absl import logging

    holders = define_flags()
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])} (every setting is a --flag; see --help)")
    workdir = holders["workdir"].value
    config = _loaded(holders["config"], "config")
    branch_config = _loaded(holders["branch"], "branch")
    _stopped_yet(workdir)
    # Imported here so that --help and flag errors are fast.
    from lth_jax import config as config_lib
    from lth_jax import data as data_lib
    from lth_jax import download
    from lth_jax import lottery

    # Our progress lines go to stdout; library INFO logs (orbax, XLA) would drown them.
    logging.set_verbosity(logging.WARNING)
    _stopped_yet(workdir)
    distributed = bool(config.runtime.distributed)
    if distributed:
        # Several processes: every host runs this same command. The config is checked first, so
        # that a bad value stops every process at once instead of leaving the others waiting.
        from lth_jax import processes
        try:
            config_lib.validate(config)
        except config_lib.ConfigError as e:
            fail(str(e))
        processes.initialize(config.runtime)
    log = lambda line: print(line, flush=True)  # noqa: E731
    try:
        if branch_config is None:
            lottery.run(config, workdir, log=log, stop=stop_requested)
            folder = None
        else:
            from lth_jax import branches
            folder = branches.run(branch_config, config, workdir, log=log, stop=stop_requested)
    except (config_lib.ConfigError, data_lib.DatasetError, download.DownloadError,
            lottery.ExperimentError) as e:
        fail(str(e))
    except lottery.Stopped as e:
        if distributed and not e.abandoned:  # the processes stopped together
            from lth_jax import processes
            processes.shutdown()
        stopped(workdir, e.signum, str(e), at_once=e.abandoned)
    except Exception as e:  # with several processes, a crash must not leave the others waiting
        if distributed:
            import traceback

            from lth_jax import processes
            # A collective fails when another process dies: the watchdog then says which.
            processes.wait_for_watchdog()
            traceback.print_exc()
            fail(f"crashed: {type(e).__name__}: {e}", 1)
        raise
    primary = True
    if distributed:
        from lth_jax import processes
        primary = processes.is_primary()  # process 0 writes the report
        processes.shutdown()
    if stop_requested():  # the experiment is complete: only the report is left out
        stopped(workdir, stop_requested(), "stopped at the end, before the report,")
    if not primary or not holders["report"].value:
        return
    if folder is None:
        from lth_jax import report
        report.write_report(workdir)
        # A terminal-sized summary (<= 100 columns); the full tables are in report.md.
        print(report.terminal_summary(workdir))
    else:
        from lth_jax.branches import base
        for path in base.write_report(folder):
            print(f"report: {path}")


def run() -> None:
    """The entry point: signals first, CPU device flags, then absl's app with our flag parser."""
    note_signals()
    cpu_device_flags()
    from absl import app
    define_flags()
    app.run(main, flags_parser=parse_flags)
