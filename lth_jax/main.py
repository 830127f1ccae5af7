r"""Run a lottery-ticket experiment.

    python -m lth_jax.main --config=configs/lenet300_100.py --workdir=runs/lenet \
        --config.trials=5 --config.prune.levels=16

Running the same command again on the same workdir resumes where it stopped.
"""

import os
import re
import signal
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for config.json, results.jsonl, "
                               "checkpoints/ and the report.")
_REPORT = flags.DEFINE_bool("report", True, "Write report.md and plots at the end.")
flags.mark_flags_as_required(["config", "workdir"])


def cpu_device_flags() -> None:
    """One XLA host device per core, each single-threaded, unless XLA_FLAGS already says otherwise.

    The runs of a level are then spread over the cores (one device each) instead of splitting every
    small matmul across threads, which is faster for these networks (see BUILD_NOTES.md). Must run
    before jax is imported; it does not affect GPU/TPU devices.
    """
    flags_env = os.environ.get("XLA_FLAGS", "")
    extra = []
    if "xla_force_host_platform_device_count" not in flags_env:
        extra.append(f"--xla_force_host_platform_device_count={os.cpu_count() or 1}")
        if "xla_cpu_multi_thread_eigen" not in flags_env:
            extra.append("--xla_cpu_multi_thread_eigen=false")
    os.environ["XLA_FLAGS"] = " ".join([flags_env] + extra).strip()


class Stop(BaseException):
    """Raised by the SIGTERM handler so that a kill by the scheduler ends like Ctrl-C.

    A BaseException, like KeyboardInterrupt, so that no library's ``except Exception`` swallows it.
    """


def _on_sigterm(signum, frame):
    raise Stop()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # Imported here so that --help and flag errors are fast.
    from lth_jax import config as config_lib
    from lth_jax import data as data_lib
    from lth_jax import lottery

    # Our progress lines go to stdout; library INFO logs (orbax, XLA) would drown them.
    logging.set_verbosity(logging.WARNING)
    signal.signal(signal.SIGTERM, _on_sigterm)
    workdir = _WORKDIR.value
    config = _CONFIG.value
    if config.runtime.distributed:
        import jax
        # Multi-host: coordinator address, process count and id come from the environment
        # (e.g. on Cloud TPU or SLURM); every host runs the same command.
        jax.distributed.initialize()
    try:
        lottery.run(config, workdir, log=lambda line: print(line, flush=True))
    except (config_lib.ConfigError, data_lib.DatasetError, lottery.ExperimentError) as e:
        print(f"lth_jax: error: {e}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, Stop):
        print(f"\nlth_jax: interrupted. Finished levels are saved in {workdir}; run the same command "
              "again to resume.", file=sys.stderr)
        sys.exit(130)
    if _REPORT.value:
        from lth_jax import report
        path = report.write_report(workdir)
        with open(path) as f:
            print(f.read())
        print(f"report: {path}")


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a one-line error (exit 2) naming the field for a bad override.

    ml_collections raises AttributeError/KeyError/TypeError for a mistyped or ill-typed
    ``--config.*`` field; absl would show a traceback or the whole usage text.
    """
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001 -- any parse failure becomes the one-line error
        message = " ".join(str(e).replace("\\n", " ").split()).strip("'\"")
        names = [a.split("=", 1)[0].lstrip("-") for a in argv[1:]]
        names = [n for n in names if n.startswith("config.")]
        # The failing override is named in the message (before any "Did you mean" suggestion).
        named = str(e).split("Did you mean")[0]
        culprit = next((n for n in names if f"--{n}=" in named), None) or next(
            (n for n in names if re.search(rf"\b{re.escape(n.rsplit('.', 1)[-1])}\b", named)), "config")
        if isinstance(e, AttributeError):
            hint = message[message.find("Did you mean"):] if "Did you mean" in message else ""
            message = "unknown field" + (f" ({hint})" if hint else "")
        print(f"lth_jax: error: {culprit}: {message}", file=sys.stderr)
        sys.exit(2)


def run():
    cpu_device_flags()
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
