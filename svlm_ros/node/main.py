"""Entry point: `ros2 run svlm_ros svlm_node` and `svlm node --ros-args ...`."""
from __future__ import annotations

import logging
import sys
import threading

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn

from .svlm_node import SvlmNode


def main(argv=None) -> int:
    args = sys.argv if argv is None else ["svlm_node", *argv]
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    rclpy.init(args=args)
    try:
        node = SvlmNode()
    except ValueError as error:  # a bad value in the params file or on the command line
        print(f"svlm_node: invalid parameters: {error}", file=sys.stderr)
        rclpy.shutdown()
        return 2
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    if node.node_config.autostart:
        # Off the executor's threads: loading a model can take minutes, and parameter and
        # lifecycle services must answer meanwhile.
        threading.Thread(target=autostart, args=(node,), name="svlm-autostart", daemon=True).start()
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # Ctrl-C has already shut the context down, so no lifecycle transition can be
        # published any more; release the worker and the model directly.
        node.release()
        executor.shutdown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


def autostart(node: SvlmNode) -> None:
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        node.get_logger().error("autostart: configure failed; the node stays unconfigured (see diagnostics)")
        return
    if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
        node.get_logger().error("autostart: activate failed")
