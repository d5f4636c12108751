#!/usr/bin/env python3
"""Seconds from SIGINT to exit, per state, as `ros2 launch` stops a node: SIGINT, then SIGTERM 5 s
later, then SIGKILL 5 s after that. Reports which signal ended each run and its exit code.

The node runs tiny-random on CPU, memory on, driven into each state by the helpers of
test/test_node_shutdown.py (a camera publishing, a question being answered, a summary running).
Usage: .venv/bin/python scripts/bench_shutdown.py [--runs 3] [--states active-camera question ...]"""
import argparse
import os
import platform
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", "78")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["ROS_HOME"] = tempfile.mkdtemp(prefix="svlm-bench-ros-home-")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))

from test_node_shutdown import FINAL, STATES, run_state  # noqa: E402

LAUNCH_SIGNALS = ((0.0, signal.SIGINT), (5.0, signal.SIGTERM), (10.0, signal.SIGKILL))


def ended_by(rc, seconds):
    if rc is not None and rc < 0:
        return signal.Signals(-rc).name
    sent = [signum.name for at, signum in LAUNCH_SIGNALS if at <= seconds]
    return sent[-1] if sent else "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--states", nargs="*", default=list(STATES), choices=list(STATES))
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    print("| state | runs | SIGINT to exit (s): median, max | ended by | exit codes | last line (of the last run) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for state in args.states:
        seconds, enders, codes, last = [], [], [], ""
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="svlm-bench-shutdown-") as scratch:
                rc, output, elapsed, _ = run_state(state, Path(scratch), signals=LAUNCH_SIGNALS)
            seconds.append(elapsed)
            enders.append(ended_by(rc, elapsed))
            codes.append(str(rc))
            lines = [line.strip() for line in output.splitlines() if line.strip()]
            final = next((FINAL.search(line) for line in reversed(lines) if FINAL.search(line)), None)
            last = re.sub(r"^\[\w+\] \[[0-9.]+\] \[svlm\]: ", "", final.group(0)) if final else (
                lines[-1] if lines else "")
        print(f"| {state} | {args.runs} | {statistics.median(seconds):.2f}, {max(seconds):.2f} | "
              f"{', '.join(sorted(set(enders)))} | {', '.join(codes)} | {last} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
