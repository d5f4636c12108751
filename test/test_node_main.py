"""`svlm node` as a process (node/main.py): autostart, and Ctrl-C in every lifecycle state.

Each test waits for the log line that says the state was reached, then sends SIGINT: the
process must exit 0 with no traceback and no abort (`terminate called ...`)."""
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

ARGS = ["--ros-args", "-p", "model:=tiny-random", "-p", "device:=cpu", "-p", "frames.min_pixels:=3136",
        "-p", "generation.max_new_tokens:=2", "-p", "image_topics:=['/main_test/image_raw']"]


class NodeProcess:
    def __init__(self, *extra):
        env = dict(os.environ, PYTHONUNBUFFERED="1", RCUTILS_LOGGING_BUFFERED_STREAM="0")
        self.process = subprocess.Popen([sys.executable, "-m", "svlm_ros.node.main", *ARGS, *extra],
                                        stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.output = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for_line(self, text, timeout=120):
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

    def interrupt(self, timeout=120):
        self.process.send_signal(signal.SIGINT)
        try:
            rc = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        self.reader.join(30)  # every line the process wrote is read before the test looks
        return rc


@pytest.mark.parametrize("state,line,extra", [
    ("unconfigured", "autostart is off", ["-p", "autostart:=false"]),
    ("loading the model", "loading model", []),
    ("warming up", "warming up", []),
    ("active", "describing", []),
], ids=["unconfigured", "model-load", "warm-up", "active"])
def test_ctrl_c_is_clean_in_every_state(state, line, extra):
    node = NodeProcess(*extra)
    try:
        node.wait_for_line(line)
        rc = node.interrupt()
    finally:
        if node.process.poll() is None:
            node.process.kill()
    output = "".join(node.output)
    assert rc == 0, f"exit {rc} after SIGINT while {state}:\n{output}"
    assert "Traceback" not in output and "terminate called" not in output, output


def test_autostart_reaches_active_and_two_sigints_are_clean():
    """A terminal and `ros2 launch` both send SIGINT: the second lands during cleanup."""
    node = NodeProcess()
    try:
        node.wait_for_line("describing")
        node.process.send_signal(signal.SIGINT)
        node.process.send_signal(signal.SIGINT)
        rc = node.process.wait(120)
        node.reader.join(30)
    finally:
        if node.process.poll() is None:
            node.process.kill()
    output = "".join(node.output)
    assert rc == 0 and "Traceback" not in output and "terminate called" not in output, output
