"""SIGINT under `ros2 launch`, in every state (issue "Hardening II", items 5-7).

The node runs in a process of its own (as `ros2 launch` starts it); this process is the robot
around it: a camera, a listener of descriptions, an ~/ask client, a diagnostics reader. Each test
drives the node into a state, known by an event (a log line, a diagnostics value), sends SIGINT
and asserts: exit code 0, no ERROR line, no traceback, nothing logged after the ROS context
went away, and a last line that counts the memory's entries, which match the memory file.

How fast the node exits is measured by scripts/bench_shutdown.py (which drives it with the
helpers here), not asserted: the waits below only fail a node that never gets there."""
import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import Image

from svlm_ros.msg import Description
from svlm_ros.srv import Ask

TOPIC = "/shutdown_test/image_raw"
GUARD_S = 120.0  # only fails a run that never reaches the event: never the measure
FINAL = re.compile(r"shut down (cleanly )?in [0-9.]+ s.*; memory: (.*)$")
COUNTS = re.compile(r"(\d+) entries committed, (\d+) queued entries not written")


def node_arguments(memory_path, *extra):
    return ["--ros-args", "-p", "model:=tiny-random", "-p", "device:=cpu", "-p", "frames.min_pixels:=3136",
            "-p", "generation.max_new_tokens:=2", "-p", f"image_topics:=['{TOPIC}']",
            "-p", f"memory.path:={memory_path}", "-p", "memory.summary_minutes:=0.0", *extra]


class NodeProcess:
    def __init__(self, arguments, env=None):
        env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1", RCUTILS_LOGGING_BUFFERED_STREAM="0")
        self.process = subprocess.Popen([sys.executable, "-m", "svlm_ros.node.main", *arguments],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.output = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for_line(self, text, timeout=GUARD_S):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r}; output:\n{''.join(self.output)}")

    def wait(self, timeout):
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
        self.reader.join(30)


class Robot:
    """What surrounds the node: a camera publishing 10 frames per second of sensor time, a listener of
    its descriptions, an ~/ask client and a diagnostics reader, spun in this process."""

    def __init__(self):
        self.context = rclpy.context.Context()
        rclpy.init(context=self.context)
        self.node = Node("shutdown_test_robot", context=self.context)
        self.camera = self.node.create_publisher(Image, TOPIC, 10)
        self.descriptions, self.diagnostics = [], {}
        self.node.create_subscription(Description, "/svlm/description", self.descriptions.append, 100)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.ask_client = self.node.create_client(Ask, "/svlm/ask")
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.context)
        self.executor.add_node(self.node)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinner.start()
        self._stop_camera = threading.Event()
        self._camera_thread = None

    def _on_diagnostics(self, array):
        for status in array.status:
            self.diagnostics[status.name] = {v.key: v.value for v in status.values}

    def value(self, key):
        return next((values[key] for values in list(self.diagnostics.values()) if key in values), None)

    def start_camera(self, seconds=None, start=1000.0):
        """Frames at 10 Hz of sensor time, paced at 10 Hz; for `seconds` of sensor time, or until closed."""
        def run():
            frame = bytes(range(256)) * (48 * 64 * 3 // 256)
            i = 0
            while not self._stop_camera.is_set() and (seconds is None or i <= seconds * 10):
                t = start + i / 10
                msg = Image(height=48, width=64, encoding="rgb8", step=64 * 3, data=frame)
                msg.header.stamp.sec, msg.header.stamp.nanosec = int(t), int(round((t % 1) * 1e9))
                msg.header.frame_id = "camera"
                self.camera.publish(msg)
                i += 1
                self._stop_camera.wait(0.1)

        self._camera_thread = threading.Thread(target=run, daemon=True)
        self._camera_thread.start()

    def ask(self, question):
        assert self.ask_client.wait_for_service(timeout_sec=GUARD_S)
        return self.ask_client.call_async(Ask.Request(question=question))

    def close(self):
        self._stop_camera.set()
        if self._camera_thread is not None:
            self._camera_thread.join(30)
        self.executor.shutdown()
        self.spinner.join(30)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def wait_until(condition, what, timeout=GUARD_S):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def hung_model_directory(parent: Path) -> Path:
    """A model directory whose config.json is a FIFO no one writes: reading it blocks, as a model on a
    hung network mount does. Its load never ends, so a SIGINT surely lands inside it."""
    directory = parent / "hung-model"
    directory.mkdir()
    os.mkfifo(directory / "config.json")
    return directory


# state: (extra node arguments, how to reach it). Each `reach` gets the node process, the robot and
# a scratch directory, and returns once the node is in that state.
def _reach_line(text):
    return lambda node, robot: node.wait_for_line(text)


def _reach_active(node, robot):
    node.wait_for_line("describing")
    robot.start_camera()
    wait_until(lambda: len(robot.descriptions) >= 2, "two descriptions")


def _reach_question(node, robot):
    _reach_active(node, robot)
    robot.ask("What is on the table?")
    node.wait_for_line("~/ask about")


def _reach_summary(node, robot):
    node.wait_for_line("describing")
    # Four summary periods of 3 s: a period whose windows were all skipped (a loaded machine) or
    # silent has nothing to summarize, so one period alone may never show a summary running. Each
    # summary runs when the worker is idle: between windows, and once the camera stops.
    robot.start_camera(seconds=12.0)
    wait_until(lambda: robot.value("worker_busy_with") == "a background job (summary)", "a summary running")


STATES = {
    "unconfigured": (["-p", "autostart:=false"], _reach_line("autostart is off")),
    "model-load-hung": (["-p", "model:={hung}"], _reach_line("loading model")),
    "model-load": ([], _reach_line("loading model")),
    "warm-up": ([], _reach_line("warming up")),
    "active-camera": ([], _reach_active),
    # Answers and summaries of exactly 1024 / 4096 tokens (ignore_end_of_turn): the worker is inside
    # them at SIGINT (or just done with a question), and a summary runs long enough to be seen.
    "question": (["-p", "generation.answer_max_new_tokens:=1024", "-p", "generation.ignore_end_of_turn:=true"],
                 _reach_question),
    "summary": (["-p", "memory.summary_minutes:=0.05", "-p", "memory.summary_max_tokens:=4096",
                 "-p", "generation.ignore_end_of_turn:=true"], _reach_summary),
}


def run_state(state, scratch: Path, signals=((0.0, signal.SIGINT),), env=None):
    """Start the node, reach `state`, send `signals` (seconds after the first, signal), and return
    (return code or None, output, seconds from the first signal to the exit, descriptions received)."""
    extra, reach = STATES[state]
    if any("{hung}" in a for a in extra):
        hung = str(hung_model_directory(scratch))
        extra = [a.replace("{hung}", hung) for a in extra]
    robot = Robot()
    node = NodeProcess(node_arguments(scratch / "memory.sqlite", *extra), env)
    try:
        reach(node, robot)
        sent = time.monotonic()
        rc = None
        for at, signum in signals:
            rc = node.wait(max(0.0, sent + at - time.monotonic()))
            if rc is not None:
                break
            node.process.send_signal(signum)
        if rc is None:
            rc = node.wait(GUARD_S)
        seconds = time.monotonic() - sent
        node.reader.join(30)  # every line the process wrote is read before anyone looks
        return rc, "".join(node.output), seconds, list(robot.descriptions)
    finally:
        node.kill()
        robot.close()


def check_clean_exit(rc, output, described, memory_path: Path):
    assert rc == 0, f"exit {rc}:\n{output}"
    for sign in ("Failed to publish log message to rosout", "[ERROR]", "Traceback", "terminate called"):
        assert sign not in output, f"{sign!r} in the output:\n{output}"
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    final = FINAL.search(lines[-1]) if lines else None
    assert final, f"the last line is not the shutdown's:\n{output}"
    counts = COUNTS.search(final.group(2))
    if counts is None:
        assert final.group(2) in ("not open", "off"), final.group(2)
        assert not described
        return
    committed, not_written = int(counts.group(1)), int(counts.group(2))
    # Every window described reached the memory (the worker stops before the memory closes) ...
    assert committed + not_written >= len(described), (committed, not_written, len(described))
    # ... and every entry counted as committed is in the file (merged repeats count their windows).
    with sqlite3.connect(memory_path) as connection:
        stored = connection.execute("SELECT COALESCE(SUM(windows), 0) FROM entries").fetchone()[0]
    assert stored == committed, (stored, committed, output)


@pytest.mark.parametrize("state", list(STATES))
def test_sigint_is_clean_in_every_state(state):
    with tempfile.TemporaryDirectory(prefix="svlm-shutdown-") as scratch:
        rc, output, _, described = run_state(state, Path(scratch))
        check_clean_exit(rc, output, described, Path(scratch) / "memory.sqlite")


def test_a_second_sigint_and_a_sigterm_do_not_disturb_the_shutdown():
    """A terminal and `ros2 launch` both send SIGINT, and launch may follow with SIGTERM."""
    with tempfile.TemporaryDirectory(prefix="svlm-shutdown-") as scratch:
        rc, output, _, described = run_state("active-camera", Path(scratch), signals=(
            (0.0, signal.SIGINT), (0.0, signal.SIGINT), (0.0, signal.SIGTERM)))
        check_clean_exit(rc, output, described, Path(scratch) / "memory.sqlite")
