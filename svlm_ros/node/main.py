"""Entry point: `ros2 run svlm_ros svlm_node` and `svlm node --ros-args ...`.

SIGINT (Ctrl-C, `ros2 launch`) and SIGTERM (launch's next step, 5 s later) are handled here, not
by rclpy: its handler shuts the ROS context down at once, after which no log line reaches
/rosout ("publisher's context is invalid") and nothing can be published. Here the signal only
starts `shut_down`, which stops everything in order within SHUTDOWN_DEADLINE_S while the context
is still valid, writes the last log line, and shuts rclpy down last.

Only the standard library is imported at module level: `python -m svlm_ros.node.main` runs these
lines before torch is imported, and a Ctrl-C during that import must end the process quietly.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

# ros2 launch sends SIGTERM 5 s after SIGINT and SIGKILL 5 s later; the goal is out within 3 s.
SHUTDOWN_DEADLINE_S = 2.5
# An orderly shutdown that itself hangs (a DDS call, a bug) still ends before launch's SIGTERM.
HARD_EXIT_S = 4.5
POLL_S = 0.05


class StopSignal:
    """Records the first SIGINT or SIGTERM; later ones are ignored (a terminal and `ros2 launch` both
    send SIGINT). The handler runs on the main thread between two bytecodes, maybe while that thread
    holds a lock, so it takes none: it only stores the signal, which the main thread polls."""

    def __init__(self):
        self.name = None
        self.at = 0.0

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._received)

    def _received(self, signum, frame) -> None:
        if self.name is None:
            self.at = time.monotonic()
            self.name = signal.Signals(signum).name


def main(argv=None) -> int:
    args = sys.argv if argv is None else ["svlm_node", *argv]
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    stop = StopSignal()
    try:
        import rclpy
        from rclpy.exceptions import InvalidParameterValueException
        from rclpy.executors import MultiThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        from .svlm_node import SvlmNode  # torch and transformers: seconds
        stop.install()
    except KeyboardInterrupt:  # Ctrl-C while importing: nothing started yet
        return 0
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = SvlmNode()
    except (ValueError, InvalidParameterValueException) as error:  # a bad value in the params file or command line
        print(f"svlm_node: invalid parameters: {error}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    spinner = threading.Thread(target=spin, args=(node, executor), name="svlm-executor", daemon=True)
    spinner.start()
    if node.node_config.autostart:
        # Off the executor's threads: loading a model can take minutes, and parameter and
        # lifecycle services must answer meanwhile.
        threading.Thread(target=autostart, args=(node,), name="svlm-autostart", daemon=True).start()
    else:
        node.get_logger().info("unconfigured; autostart is off: configure and activate with `ros2 lifecycle set`")
    while stop.name is None:
        time.sleep(POLL_S)
    return shut_down(node, executor, spinner, stop)


def spin(node, executor) -> None:
    """The executor's loop. Every callback of the node catches its own errors; this is the last guard,
    for rclpy's own callbacks and anything missed: an exception must not leave the process without
    its executor."""
    while True:
        try:
            executor.spin()
            return
        except Exception as error:  # noqa: BLE001
            if node.shutting_down:
                return
            node.get_logger().error(f"a callback raised {type(error).__name__}: {error}; the node goes on "
                                    "(this is a bug: please report it with this log)")


def shut_down(node, executor, spinner, stop: StopSignal) -> int:
    import rclpy

    from .svlm_node import MEMORY_CLOSE_RESERVE_S

    deadline = stop.at + SHUTDOWN_DEADLINE_S
    watchdog = threading.Timer(max(0.0, stop.at + HARD_EXIT_S - time.monotonic()), _hard_exit)
    watchdog.daemon = True
    watchdog.start()
    node.abort_startup()
    node.get_logger().info(f"{stop.name}: shutting down")
    # A configure stops at its next step; a warm-up window or the memory being opened is worth
    # waiting for (within the deadline, keeping the memory's share), a model load is not: it cannot
    # be cut short, and may take minutes.
    while node.configuring and not node.loading_model and time.monotonic() < deadline - MEMORY_CLOSE_RESERVE_S:
        time.sleep(POLL_S)
    report = node.shut_down(deadline)
    seconds = time.monotonic() - stop.at
    if report.abandoned:
        node.get_logger().info(f"shut down in {seconds:.1f} s without waiting for {', '.join(report.abandoned)}; "
                               f"memory: {report.memory}")
    else:
        node.get_logger().info(f"shut down cleanly in {seconds:.1f} s; memory: {report.memory}")
    executor.shutdown(timeout_sec=0)
    spinner.join(max(0.1, deadline - time.monotonic()))
    node.destroy_node()
    rclpy.try_shutdown()
    if report.abandoned:
        # A thread still inside torch when the interpreter finalizes aborts the process
        # (`terminate called without an active exception`), and a service call still waiting
        # keeps it from finalizing at all. Everything that matters is done: the memory is closed
        # and the last line written.
        _exit_now(0)
    return 0


def _hard_exit() -> None:
    print(f"svlm_node: the shutdown did not finish within {HARD_EXIT_S} s; exiting now", file=sys.stderr)
    _exit_now(1)


def _exit_now(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed pipe must not stop the exit
            pass
    os._exit(code)


def autostart(node) -> None:
    from rclpy.lifecycle import TransitionCallbackReturn

    try:
        if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            if not node.shutting_down:
                node.get_logger().error("autostart: configure failed; the node stays unconfigured (see diagnostics)")
            return
        if node.shutting_down:
            return
        if node.trigger_activate() != TransitionCallbackReturn.SUCCESS and not node.shutting_down:
            node.get_logger().error("autostart: activate failed")
    except Exception as error:  # noqa: BLE001 - the shutdown destroyed the node mid-transition
        if not node.shutting_down:
            node.get_logger().error(f"autostart failed: {type(error).__name__}: {error}")


if __name__ == "__main__":
    sys.exit(main())
