"""`make demo`: a synthetic camera over real DDS, the svlm node, and its descriptions for ~20 s.

The camera publisher and the description printer live in this process; the node runs as its
own process, exactly as `svlm node --ros-args --params-file config/svlm.yaml` would. The camera
shows the synthetic narrator's scenes (`svlm synth-bag`'s, one shape at a time), and each
description is printed beside what the scene did in that second, so a trained narrator
(`MODEL=runs/narrator/train_grounded/model PARAMS=config/narrator.yaml make demo`) can be read
against the truth.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import rclpy
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from svlm_ros.msg import Description

from .engine.models import RANDOM_MODELS
from .replay.synth import Scene, background
from .sources.stamps import to_seconds

DEMO_SECONDS = float(os.environ.get("DEMO_SECONDS", "20"))
STARTUP_TIMEOUT_S = 180.0
CAMERA_HZ = 10.0
# The narrator's training bags (training/narrator.sh): 168x112, one 56-px shape at a time.
WIDTH, HEIGHT, SHAPE_SIZE = 168, 112, 56
SCENE_SECONDS = 600  # the script loops after this long
ROOT = Path(__file__).resolve().parent.parent


class DemoCamera(Node):
    """Publishes the scene and prints each description beside what the scene did in its second.

    The node cuts its windows from the first frame it receives, which the camera cannot know, so the
    scene waits for the node: the empty frame until the first description, then the script from
    the next whole window on, so that each window holds exactly one second of the script."""

    def __init__(self):
        super().__init__("demo_camera")
        self.publisher = self.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data)
        self.subscription = self.create_subscription(Description, "/svlm/description", self.on_description, 10)
        self.timer = self.create_timer(1.0 / CAMERA_HZ, self.publish_frame)
        self.scene = Scene(SCENE_SECONDS, seed=int(time.time()) % 100_000, max_objects=1, shape_size=SHAPE_SIZE)
        self.empty = background(HEIGHT, WIDTH)
        self.scene_start = None  # sensor time of the scene's second 0: a window boundary of the node
        self.received = 0

    def publish_frame(self):
        now = self.get_clock().now()
        t = now.nanoseconds * 1e-9
        if self.scene_start is None or t < self.scene_start:
            frame = self.empty
        else:
            frame = self.scene.frame((t - self.scene_start) % SCENE_SECONDS, HEIGHT, WIDTH)
        msg = Image(height=HEIGHT, width=WIDTH, encoding="rgb8", step=WIDTH * 3, data=frame.tobytes())
        msg.header.stamp = now.to_msg()
        msg.header.frame_id = "demo_camera"
        self.publisher.publish(msg)

    def on_description(self, msg: Description):
        self.received += 1
        start, end = to_seconds(msg.window_start), to_seconds(msg.window_end)
        if self.scene_start is None:  # the first whole window still to come
            now = self.get_clock().now().nanoseconds * 1e-9
            self.scene_start = end + max(1, math.ceil(now - end))
        second = int(round(start - self.scene_start))
        text = "(silent)" if msg.silent else msg.text
        if second < 0:
            truth = "(the scene has not started)"
        else:
            truth = self.scene.texts[second % SCENE_SECONDS] or "(nothing new)"
        print(f"#{msg.index:<3} [{start % 1000:8.2f}-{end % 1000:8.2f}s] latency {msg.latency:5.2f}s "
              f"cache {msg.cache_tokens:5d} | {text:<40} | truth: {truth}", flush=True)


def main() -> int:
    model = os.environ.get("MODEL", "tiny-random")
    params = [str(ROOT / "config" / "svlm.yaml")] + ([os.environ["PARAMS"]] if os.environ.get("PARAMS") else [])
    for path in params:
        if not Path(path).is_file():
            print(f"svlm demo: PARAMS={path} does not exist; give a node parameter file such as "
                  "config/narrator.yaml", file=sys.stderr)
            return 2
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")  # keep DDS on this machine
    print(f"svlm demo: a synthetic {WIDTH}x{HEIGHT} camera at {CAMERA_HZ:.0f} Hz -> svlm node (model {model}, "
          f"parameters {' + '.join(params)}) for {DEMO_SECONDS:.0f} s", flush=True)
    if model in RANDOM_MODELS:
        print("NOTE: this model has RANDOM weights, so its words are meaningless: the demo shows the "
              "machinery (topics, windows, latency, cache), not descriptions.\n"
              "      A real checkpoint: MODEL=/path/to/StreamingVLM make demo; the synthetic narrator: training/README.md",
              flush=True)
    node_command = [sys.executable, "-m", "svlm_ros.cli", "node", "--ros-args"]
    for path in params:  # later files win, as ROS applies them
        node_command += ["--params-file", path]
    node_command += ["-p", f"model:={model}", "--log-level", "svlm:=warn"]
    node_process = subprocess.Popen(node_command, start_new_session=True)
    rclpy.init()
    camera = DemoCamera()
    # The node needs a few seconds to load the model; the demo's clock starts at its first words.
    startup_deadline = time.monotonic() + STARTUP_TIMEOUT_S
    deadline = None
    try:
        while node_process.poll() is None:
            rclpy.spin_once(camera, timeout_sec=0.1)
            now = time.monotonic()
            if deadline is None and camera.received:
                deadline = now + DEMO_SECONDS
            if (deadline is not None and now > deadline) or (deadline is None and now > startup_deadline):
                break
    finally:
        camera.destroy_node()
        rclpy.shutdown()
        if node_process.poll() is None:
            node_process.send_signal(signal.SIGINT)
            try:
                node_process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                node_process.kill()
    if camera.received == 0:
        print("svlm demo: no description arrived; see the node's log above", file=sys.stderr)
        return 1
    print(f"svlm demo: {camera.received} descriptions in {DEMO_SECONDS:.0f} s; done.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
