#!/usr/bin/env python3
"""Frames heard: the svlm node vs a plain best-effort subscriber, same camera, same machine.

A publisher process sends 640x480 bgr8 images at 10 Hz (sensor-data QoS); a plain subscriber
process counts what it hears; the node (tiny-random on CPU, describing) counts what it hears.
Usage: .venv/bin/python scripts/bench_frames_heard.py [--seconds 30] [--deserialize-all]
(--deserialize-all: the node deserializes every frame, as before the stamp-first path)."""
import argparse
import os
import subprocess
import sys
import textwrap
import threading
import time

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", "77")

PUBLISHER = textwrap.dedent("""
    import sys, time, numpy as np, rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    rclpy.init(); node = rclpy.create_node("camera")
    pub = node.create_publisher(Image, "/bench/image_raw", qos_profile_sensor_data)
    data = np.random.default_rng(0).integers(0, 256, 480 * 640 * 3, dtype=np.uint8).tobytes()
    while pub.get_subscription_count() < 2: time.sleep(0.1)
    time.sleep(2.0)  # benchmark only: both subscribers matched on their side too
    start = time.monotonic(); n = int(sys.argv[1]) * 10
    for i in range(n):
        msg = Image(height=480, width=640, encoding="bgr8", step=640 * 3, data=data)
        now = time.time(); msg.header.stamp.sec = int(now); msg.header.stamp.nanosec = int((now % 1) * 1e9)
        pub.publish(msg)
        time.sleep(max(0.0, start + (i + 1) / 10 - time.monotonic()))
    print(n, flush=True)
""")
LISTENER = textwrap.dedent("""
    import sys, time, rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    rclpy.init(); node = rclpy.create_node("plain"); count = [0]
    node.create_subscription(Image, "/bench/image_raw", lambda m: count.__setitem__(0, count[0] + 1),
                             qos_profile_sensor_data)
    end = time.monotonic() + float(sys.argv[1])
    while time.monotonic() < end: rclpy.spin_once(node, timeout_sec=0.1)
    print(count[0], flush=True)
""")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--deserialize-all", action="store_true")
    args = parser.parse_args()
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter

    import svlm_ros.node.svlm_node as node_module
    node_module.RAW_SUBSCRIPTIONS = not args.deserialize_all
    rclpy.init()
    node = node_module.SvlmNode(parameter_overrides=[Parameter(k, value=v) for k, v in {
        "model": "tiny-random", "device": "cpu", "image_topics": ["/bench/image_raw"], "warm_up": False,
        "generation.max_new_tokens": 8}.items()])
    node.trigger_configure(), node.trigger_activate()
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    listener = subprocess.Popen([sys.executable, "-c", LISTENER, str(args.seconds + 15)], stdout=subprocess.PIPE,
                                text=True)
    publisher = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(args.seconds)], stdout=subprocess.PIPE,
                                 text=True)
    sent = int(publisher.communicate()[0])
    time.sleep(1.0)
    stats = node.scheduler.cameras["/bench/image_raw"].stats
    heard_node = stats.frames
    heard_plain = int(listener.communicate()[0])
    print(f"mode={'deserialize every frame' if args.deserialize_all else 'stamp first'} sent={sent} "
          f"plain={heard_plain} ({heard_plain / sent:.0%}) node={heard_node} ({heard_node / sent:.0%}) "
          f"converted={heard_node - stats.unconverted_frames} windows={stats.processed_windows} "
          f"skipped={stats.skipped_windows} late={stats.late_frames}")
    node.release()
    executor.shutdown()
    node.destroy_node()
    rclpy.try_shutdown()


if __name__ == "__main__":
    main()
