"""Entry point: `ros2 run svlm_ros svlm_node` and `svlm node --ros-args ...`."""
from __future__ import annotations

import logging
import signal
import sys
import threading

import rclpy
from rclpy.exceptions import InvalidParameterValueException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn

from .svlm_node import SvlmNode


def main(argv=None) -> int:
    args = sys.argv if argv is None else ["svlm_node", *argv]
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    rclpy.init(args=args)
    try:
        node = SvlmNode()
    except (ValueError, InvalidParameterValueException) as error:  # a bad value in the params file or command line
        print(f"svlm_node: invalid parameters: {error}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    except KeyboardInterrupt:  # Ctrl-C before the node existed: nothing to release
        rclpy.try_shutdown()
        return 0
    executor = starter = None
    # From here on a Ctrl-C may land on any line (even inside a log call), so everything after the
    # node exists is inside the try whose finally shuts down in order.
    try:
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(node)
        if node.node_config.autostart:
            # Off the executor's threads: loading a model can take minutes, and parameter and
            # lifecycle services must answer meanwhile.
            starter = threading.Thread(target=autostart, args=(node,), name="svlm-autostart", daemon=True)
            starter.start()
        else:
            node.get_logger().info("unconfigured; autostart is off: configure and activate with `ros2 lifecycle set`")
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        shut_down(node, executor, starter)
    return 0


def shut_down(node: SvlmNode, executor, starter) -> None:
    """Ctrl-C, in any lifecycle state: stop what runs, in order, and only then let Python exit.

    A thread still inside torch when the interpreter finalizes aborts the process (`terminate
    called without an active exception`), so the autostart thread (model load, warm-up) and the
    worker are waited for; a second SIGINT (a terminal and `ros2 launch` both send one) must not
    interrupt that with a KeyboardInterrupt traceback. The context is already shut down, so no
    lifecycle transition can be published; the node releases the worker and model directly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    node.abort_startup()
    if starter is not None and starter.is_alive():
        node.get_logger().info("shutting down: waiting for the model load / warm-up in progress to end")
        starter.join()
    node.release()
    if executor is not None:
        executor.shutdown()
    node.get_logger().info("shut down cleanly")
    node.destroy_node()
    rclpy.try_shutdown()


def autostart(node: SvlmNode) -> None:
    try:
        if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            node.get_logger().error("autostart: configure failed; the node stays unconfigured (see diagnostics)")
            return
        if not rclpy.ok(context=node.context):
            return
        if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            node.get_logger().error("autostart: activate failed")
    except Exception as error:  # noqa: BLE001 - Ctrl-C shut the context down mid-transition
        if rclpy.ok(context=node.context):
            node.get_logger().error(f"autostart failed: {type(error).__name__}: {error}")


if __name__ == "__main__":
    sys.exit(main())
