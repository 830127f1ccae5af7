"""How long Ctrl-C takes to stop a paper config's training on this machine.

    python benchmarks/stop_latency.py                       # lenet300_100 and conv2
    python benchmarks/stop_latency.py --configs=conv6,vgg19 --tries=2 --trials=1

For each config: the CLI (the config's trials unless --trials, dense level only, synthetic data of
the dataset's shape, a progress line after every chunk) is started; after its second progress line
(training is running, the chunk length has adapted to runtime.chunk_seconds) SIGINT is sent, and
the seconds until the process has exited are measured, with its exit status and its last line.
A chunk is whole slices of runtime.slice_iterations steps (auto: 10 for LeNet, 1 for the conv
nets on a CPU); a stop waits for the chunk in flight to save its progress, but at most
runtime.stop_wait_seconds (default 8 s): a longer chunk (an evaluation of a big network, several
runs on a device) is given up, and the last checkpoint stands. Results: docs/performance.md,
"Stop latency".
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_try(config: str, extra: list[str]) -> dict:
    """Start the CLI, SIGINT it after its second progress line; the seconds until it exited."""
    with tempfile.TemporaryDirectory(prefix="lth_jax_stop_") as workdir:
        out_path = os.path.join(workdir, "out")
        with open(out_path, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "lth_jax.main", f"--config=configs/{config}.py",
                 f"--workdir={workdir}/run", "--noreport", "--config.prune.levels=0", "--config.dataset.source=synthetic",
                 "--config.runtime.progress_seconds=0", *extra],
                cwd=ROOT, stdout=out, stderr=subprocess.PIPE, text=True)
            chunk_lines = []
            while len(chunk_lines) < 2 and proc.poll() is None:
                time.sleep(0.05)
                with open(out_path) as f:
                    chunk_lines = [(time.monotonic(), line) for line in f
                                   if " iteration " in line and "level" in line]
            t0 = time.monotonic()
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=3600)
            stop = time.monotonic() - t0
    return {"stop_s": stop, "rc": proc.returncode, "said": err.strip().splitlines()[-1:],
            "at": chunk_lines[-1][1].split("best")[0].strip() if chunk_lines else "?"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="lenet300_100,conv2")
    parser.add_argument("--tries", type=int, default=3)
    parser.add_argument("--trials", type=int, default=0, help="override the config's trials")
    args = parser.parse_args()
    for config in args.configs.split(","):
        extra = (["--config.dataset.train_size=10000", "--config.dataset.validation_size=5000",
                  "--config.dataset.test_size=10000"]
                 + ([f"--config.trials={args.trials}"] if args.trials else []))
        tries = [one_try(config, extra) for _ in range(args.tries)]
        stops = [t["stop_s"] for t in tries]
        print(f"{config}: stop took {statistics.median(stops):.1f} s median "
              f"({', '.join(f'{s:.1f}' for s in stops)}); exit {sorted({t['rc'] for t in tries})}; "
              f"last progress before the signal: {tries[-1]['at']}; said: {tries[-1]['said']}",
              flush=True)


if __name__ == "__main__":
    main()
