r"""Run a lottery-ticket experiment.

    python -m lth_jax.main --config=configs/lenet300_100.py --workdir=runs/lenet \
        --config.trials=5 --config.prune.levels=16

Running the same command again on the same workdir resumes where it stopped.
"""

import _signal  # the C module, already loaded: signal.py would first spend ms building enums
import os
import sys

# SIGINT (Ctrl-C) and SIGTERM are only noted here, never raised as exceptions: an exception raised
# by a signal handler lands wherever Python happens to be (inside orbax's event loop, an XLA
# callback, a destructor that only prints it) and can be lost or abort the process. The run polls
# `_stop_requested` at safe points instead: between startup steps, between chunks of training
# (a few seconds each, runtime.chunk_seconds) and between levels; a chunk that is still running
# runtime.stop_wait_seconds (8 s) after the signal is given up. A second signal exits at once
# (every write in the workdir is atomic, so that loses only the progress since the last checkpoint).
_RECEIVED: list[int] = []


def _note_signal(signum, frame):
    if _RECEIVED:
        os.write(2, b"lth_jax: stopped at once (second signal); run the same command to resume\n")
        os._exit(128 + signum)
    _RECEIVED.append(signum)


def _stop_requested() -> int:
    """The first SIGINT/SIGTERM received (its number), or 0."""
    return _RECEIVED[0] if _RECEIVED else 0


def _note_signals() -> None:
    for sig in (_signal.SIGINT, _signal.SIGTERM):
        _signal.signal(sig, _note_signal)


if __name__ == "__main__":  # before the imports below: a Ctrl-C from the first moment counts
    _note_signals()

import re  # noqa: E402 -- this and the imports below after the signal handlers, on purpose
import signal  # noqa: E402

from absl import app  # noqa: E402
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


def _fail(message: str, status: int = 2) -> None:
    """One line on stderr, exit status 2. With several processes the others are told (they stop
    with this line) and this one exits at once (``processes.fail``)."""
    line = f"lth_jax: error: {' '.join(message.split())}"
    if "lth_jax.processes" in sys.modules:
        from lth_jax import processes
        if processes.initialized():
            processes.fail(f"{line} (process {processes.index()})", status)
    print(line, file=sys.stderr)
    sys.exit(status)


def _stopped(workdir: str, signum: int, where: str, at_once: bool = False) -> None:
    """One line on stderr, exit status 128 + signal (130 for SIGINT, 143 for SIGTERM).

    ``at_once``: a chunk of training still runs on the devices (given up): the process ends
    without the interpreter's shutdown, which would wait for it."""
    print(f"lth_jax: {where} by {signal.Signals(signum).name}; finished levels and saved progress "
          f"are in {workdir}: run the same command again to resume.", file=sys.stderr, flush=True)
    if at_once:
        sys.stdout.flush()
        os._exit(128 + signum)
    sys.exit(128 + signum)


def _stopped_yet(workdir: str) -> None:
    if _stop_requested():
        _stopped(workdir, _stop_requested(), "stopped before training")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    workdir = _WORKDIR.value
    try:
        config = _CONFIG.value
        config.keys()  # a config file that failed to load raises only when used
    except OSError as e:  # ml_collections loads the file lazily; its message is many lines
        reason = re.search(r"\[Errno \d+\][^\n]*", str(e))
        _fail(f"--config: {reason.group(0) if reason else ' '.join(str(e).split())}")
    _stopped_yet(workdir)
    # Imported here so that --help and flag errors are fast.
    from lth_jax import config as config_lib
    from lth_jax import data as data_lib
    from lth_jax import lottery

    # Our progress lines go to stdout; library INFO logs (orbax, XLA) would drown them.
    logging.set_verbosity(logging.WARNING)
    _stopped_yet(workdir)
    if config.runtime.distributed:
        # Several processes: every host runs this same command. The config is checked first, so
        # that a bad value stops every process at once instead of leaving the others waiting.
        from lth_jax import processes
        try:
            config_lib.validate(config)
        except config_lib.ConfigError as e:
            _fail(str(e))
        processes.initialize(config.runtime)
    try:
        lottery.run(config, workdir, log=lambda line: print(line, flush=True),
                    stop=_stop_requested)
    except (config_lib.ConfigError, data_lib.DatasetError, lottery.ExperimentError) as e:
        _fail(str(e))
    except lottery.Stopped as e:
        if config.runtime.distributed and not e.abandoned:  # the processes stopped together
            from lth_jax import processes
            processes.shutdown()
        _stopped(workdir, e.signum, str(e), at_once=e.abandoned)
    except Exception as e:  # with several processes, a crash must not leave the others waiting
        if config.runtime.distributed:
            import traceback
            # A collective fails when another process dies: the watchdog then says which.
            processes.wait_for_watchdog()
            traceback.print_exc()
            _fail(f"crashed: {type(e).__name__}: {e}", 1)
        raise
    primary = True
    if config.runtime.distributed:
        from lth_jax import processes
        primary = processes.is_primary()  # process 0 writes the report
        processes.shutdown()
    if _stop_requested():  # the experiment is complete: only the report is left out
        _stopped(workdir, _stop_requested(), "stopped after the last level, before the report,")
    if not primary:
        return
    if _REPORT.value:
        from lth_jax import report
        report.write_report(workdir)
        # A terminal-sized summary (<= 100 columns); the full tables are in report.md.
        print(report.terminal_summary(workdir))


# ----------------------------------------------------------------------------- --help

#: What each config field means, for --help (a test checks that every field of base_config() has one).
CONFIG_HELP: dict[str, str] = {
    "seed": "root random seed: θ₀, data order, random masks and reinit all derive from it",
    "trials": "independent repetitions, each with its own θ₀ and data order",
    "model.name": "network: lenet300_100, conv2, conv4, conv6, vgg19, resnet20 (= resnet18)",
    "model.dropout_rate": "dropout after each hidden FC layer (Conv-2/4/6 only; paper: 0.5)",
    "model.conv": "convolution implementation: auto (winograd on CPU, xla on GPU/TPU) | xla "
                  "| canonical_vjp | winograd (canonical_vjp + Winograd F(2x2,3x3) on wide 3x3 "
                  "stride-1 layers)",
    "dataset.name": "mnist | fashion_mnist | cifar10 (any name with source=synthetic)",
    "dataset.source": "tfds (a prepared TFDS dataset) | files (IDX or CIFAR-10 python batches) "
                      "| synthetic (made-up data, no files)",
    "dataset.path": "folder of the files (source=files); empty: $LTH_JAX_DATA/NAME, then "
                    "/usr/share/datasets/NAME",
    "dataset.data_dir": "TFDS data dir (source=tfds); empty: TFDS's default",
    "dataset.validation_size": "training examples held out; early stopping = minimum validation loss",
    "dataset.augment": "auto (on for 32x32 RGB data such as CIFAR-10) | on | off: random crops and flips",
    "dataset.image_shape": "synthetic: (height, width, channels); () = the named dataset's shape",
    "dataset.num_classes": "synthetic: number of classes",
    "dataset.train_size": "synthetic: training examples (validation included)",
    "dataset.test_size": "synthetic: test examples",
    "train.iterations": "training iterations of every run (each level, trial and variant)",
    "train.batch_size": "examples per training step",
    "train.optimizer": "adam | sgd | momentum",
    "train.learning_rate": "learning rate (after warmup, before drops)",
    "train.momentum": "momentum coefficient (optimizer=momentum)",
    "train.weight_decay": "L2 weight decay, added to the gradient",
    "train.lr_drops": "iterations where the learning rate is multiplied by lr_drop_factor",
    "train.lr_drop_factor": "factor applied at each of lr_drops",
    "train.warmup_iterations": "linear learning-rate warmup over this many iterations (0 = none)",
    "train.eval_every": "validation every this many iterations (divides iterations)",
    "train.test_every_evals": "test curve at every N-th evaluation (1 = all, 0 = none); the test "
                              "accuracy at early stop is exact regardless",
    "train.eval_batch_size": "batch size of the evaluation passes",
    "prune.strategy": "paper (the network's own: layerwise or global) | layerwise | global | "
                      "neuron | global_neuron (whole neurons/filters) | N:M, e.g. 2:4",
    "prune.rules": "((regex, rate), ...): per-round rate of the leaves whose whole '/'-path "
                   "matches; first match wins; () = the model's paper rules",
    "prune.global_rate": "per-round rate of global pruning; 0 = the rules' (single) rate",
    "prune.levels": "pruning levels after the dense level 0 (rate 0.2: level L keeps 0.8^L)",
    "prune.one_shot": "prune level L in one step from the dense run instead of iteratively",
    "prune.rewind_iteration": "rewind survivors to θ_k, the weights at iteration k (late "
                              "resetting); 0 = θ₀",
    "controls.reinit": "also train each ticket's mask from fresh random weights",
    "controls.random_prune": "also train a random mask with the ticket's per-layer counts",
    "runtime.devices": "devices to use (0 = all)",
    "runtime.data_parallel": "split each batch over the devices (one large run, e.g. VGG-19)",
    "runtime.distributed": "several processes (hosts): jax.distributed.initialize() first",
    "runtime.coordinator_address": "'host:port' of process 0 (runtime.distributed; '' = JAX "
                                   "detects it: Cloud TPU, SLURM, ...)",
    "runtime.num_processes": "number of processes (runtime.distributed; 0 = JAX detects it)",
    "runtime.process_id": "this process's index (runtime.distributed; -1 = JAX detects it)",
    "runtime.process_timeout_seconds": "a process silent this long (dead, host down) stops the "
                                       "others with one line",
    "runtime.matmul_precision": "auto (highest on CPU; default on GPU/TPU: TF32 / bfloat16 "
                                "passes) | default | high | highest",
    "runtime.checkpoint_minutes": "checkpoint within a level this often (0 = at level ends only)",
    "runtime.chunk_seconds": "training time between two checks for a stop (Ctrl-C, SIGTERM)",
    "runtime.stop_wait_seconds": "a stop waits this long for the chunk in flight (to save its "
                                 "progress), then gives it up",
    "runtime.slice_iterations": "a chunk is whole slices of this many steps, a divisor of "
                                "train.eval_every (0 = auto: up to 10, ~2 s on a CPU)",
    "runtime.progress_seconds": "at most one progress line per this many seconds",
}

_HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull", "--help_config")
_WIDTH = 100


def _config_fields(config, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for key, value in config.items():
        if hasattr(value, "items"):
            out += _config_fields(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def help_text(argv: list[str]) -> str:
    """The --help text: usage, flags, and every config field with its value and meaning; at most
    100 columns. With ``--config=FILE`` the values are that file's, else ``base_config()``'s."""
    import textwrap

    from lth_jax import config as config_lib

    spec = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), None)
    if spec is None and "--config" in argv[1:-1]:
        spec = argv[argv.index("--config") + 1]
    source, note = "base_config() defaults", ""
    config = config_lib.base_config()
    if spec:
        try:
            path, _, arg = spec.partition(":")  # --config=PATH[:ARG], as config_flags reads it
            config, source = config_lib.load_file(path, arg or None), f"values of {spec}"
        except Exception as e:  # noqa: BLE001 -- help must still print
            note = f"(could not load {spec}: {type(e).__name__}: {e}; showing the defaults)"
    lines = [
        "Run a lottery-ticket experiment (Frankle & Carbin 2019): train, prune, rewind, repeat,",
        "with random-reinit and random-pruning controls, over several trials.",
        "",
        "usage: python -m lth_jax.main --config=CONFIG.py --workdir=DIR [--config.FIELD=VALUE ...]",
        "                              [--noreport]",
        "",
        "  --config=FILE    experiment config: configs/lenet300_100.py, conv2..6[_dropout], vgg19,",
        "                   resnet18, quickstart, tiny (each a get_config() over base_config())",
        "  --workdir=DIR    results.jsonl, checkpoints, report.md, plots; the same command again",
        "                   resumes an interrupted run",
        "  --[no]report     write report.md, results.csv and the plots at the end (default: true)",
        "  --help           this text (exit 0); with --config=FILE it shows that file's values;",
        "                   --helpfull adds absl's own flags",
        "",
        f"Config fields ({source}); override any with --config.FIELD=VALUE:",
    ]
    if note:
        lines.append(note)
    name_width = 27
    fields = _config_fields(config)
    order = {name: i for i, name in enumerate(CONFIG_HELP)}
    fields.sort(key=lambda f: (order.get(f[0], len(order)), f[0]))
    for name, value in fields:
        shown = repr(value)
        meaning = CONFIG_HELP.get(name, "(no description)")
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
    return "\n".join(lines)


def _print_help_and_exit(argv: list[str]) -> None:
    print(help_text(argv))
    if "--helpfull" in argv[1:]:
        print("\nabsl flags:\n" + flags.FLAGS.get_help())
    sys.exit(0)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a one-line error (exit 2) naming the field for a bad override.

    ml_collections raises AttributeError/KeyError/TypeError for a mistyped or ill-typed
    ``--config.*`` field; absl would show a traceback or the whole usage text.
    """
    if any(a in _HELP_FLAGS for a in argv[1:]):  # absl's --help lists no config field and exits 1
        _print_help_and_exit(argv)
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
    _note_signals()
    cpu_device_flags()
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
