"""`svlm node` as a process (node/main.py): autostart, and Ctrl-C in every lifecycle state.

Each test waits for the log line that says the state was reached, then sends SIGINT: the
process must exit 0 with no traceback and no abort (`terminate called ...`)."""
import signal
import subprocess

import pytest

import test_node_shutdown

ARGS = ["--ros-args", "-p", "model:=tiny-random", "-p", "device:=cpu", "-p", "frames.min_pixels:=3136",
        "-p", "generation.max_new_tokens:=2", "-p", "image_topics:=['/main_test/image_raw']"]


class NodeProcess(test_node_shutdown.NodeProcess):
    def __init__(self, *extra):
        super().__init__([*ARGS, *extra])

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
