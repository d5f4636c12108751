#!/usr/bin/env python3
"""Windows described on wall time vs with use_sim_time and a 40-Hz /clock (as `ros2 bag play --clock`).

A camera process publishes 320x240 rgb8 at 10 Hz of bag time (stamps from 1000 s) and, in `sim`
mode, /clock at 40 Hz; the node (tiny-random on CPU) runs as `svlm node`; a listener counts
/svlm/description messages. Usage: .venv/bin/python scripts/bench_sim_time.py wall|sim SECONDS [CAMERAS]
(give each run its own ROS_DOMAIN_ID; CAMERAS topics /cam0/image_raw ..., default 1).
Results: docs/benchmarks.md."""
import os, subprocess, sys, tempfile, time, textwrap
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_HOME", tempfile.mkdtemp(prefix="bench-sim-time-"))  # the node's memory file
SECONDS = int(sys.argv[2]); SIM = sys.argv[1] == "sim"; PY = sys.executable
# wall-odom: wall time, but the camera process also sends 40-Hz odometry that the node subscribes
# to (memory.pose_topic): any 40-Hz subscription, not sim time itself, is what this mode tests.
ODOM = sys.argv[1] == "wall-odom"
CAMERAS = int(sys.argv[3]) if len(sys.argv) > 3 else 1
TOPICS = ["/cam/image_raw"] if CAMERAS == 1 else [f"/cam{i}/image_raw" for i in range(CAMERAS)]
CAMERA = textwrap.dedent(f"""
    import time, numpy as np, rclpy
    from sensor_msgs.msg import Image
    from rosgraph_msgs.msg import Clock
    from nav_msgs.msg import Odometry
    from rclpy.qos import qos_profile_sensor_data
    rclpy.init(); node = rclpy.create_node("camera")
    pubs = [node.create_publisher(Image, topic, 10) for topic in {TOPICS!r}]
    clock = node.create_publisher(Clock, "/clock", 10)
    odom = node.create_publisher(Odometry, "/odom", 10)
    frame = np.random.default_rng(0).integers(0, 256, 240*320*3, dtype=np.uint8).tobytes()
    while any(pub.get_subscription_count() < 1 for pub in pubs): time.sleep(0.1)
    time.sleep(3)
    t0 = time.monotonic(); sim0 = 1000.0; k = 0; c = 0
    while time.monotonic() - t0 < {SECONDS}:
        now = time.monotonic() - t0
        while c / 40 <= now:  # /clock at 40 Hz, bag time
            if {SIM}:
                m = Clock(); s = sim0 + c / 40; m.clock.sec = int(s); m.clock.nanosec = int((s % 1) * 1e9); clock.publish(m)
            if {ODOM}:
                m = Odometry(); s = sim0 + c / 40; m.header.stamp.sec = int(s); m.header.stamp.nanosec = int((s % 1) * 1e9); odom.publish(m)
            c += 1
        if k / 10 <= now:
            m = Image(height=240, width=320, encoding="rgb8", step=960, data=frame)
            s = sim0 + k / 10; m.header.stamp.sec = int(s); m.header.stamp.nanosec = int((s % 1) * 1e9)
            for pub in pubs: pub.publish(m)
            k += 1
        time.sleep(0.002)
    print(k, flush=True)
""")
LISTEN = textwrap.dedent(f"""
    import time, rclpy
    from svlm_ros.msg import Description
    from diagnostic_msgs.msg import DiagnosticArray
    rclpy.init(); node = rclpy.create_node("listen"); n = [0]; last = {{}}
    node.create_subscription(Description, "/svlm/description", lambda m: n.__setitem__(0, n[0] + 1), 100)
    def diagnostics(array):
        for status in array.status:
            if ": camera " in status.name:
                last[status.name] = {{kv.key: kv.value for kv in status.values}}
    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics, 10)
    end = time.monotonic() + {SECONDS} + 40
    while time.monotonic() < end: rclpy.spin_once(node, timeout_sec=0.1)
    keys = ("frames", "processed_windows", "skipped_windows", "empty_windows", "late_frames", "bad_frames")
    totals = {{k: sum(int(v.get(k, 0)) for v in last.values()) for k in keys}}
    print(n[0], " ".join(f"{{k}}={{v}}" for k, v in totals.items()), flush=True)
""")
svlm = subprocess.Popen([PY, "-m", "svlm_ros.cli", "node", "--ros-args", "-p", "model:=tiny-random", "-p", "device:=cpu",
                         "-p", f"image_topics:={TOPICS!r}", "-p", "reliable_qos:=true", "-p", "warm_up:=true",
                         "-p", f"use_sim_time:={'true' if SIM else 'false'}"]
                        + (["-p", "memory.pose_topic:=/odom"] if ODOM else []), stderr=subprocess.PIPE, text=True)
for line in svlm.stderr:
    if "describing" in line: break
listen = subprocess.Popen([PY, "-c", LISTEN], stdout=subprocess.PIPE, text=True)
camera = subprocess.Popen([PY, "-c", CAMERA], stdout=subprocess.PIPE, text=True)
sent = int(camera.communicate()[0])
time.sleep(5)
svlm.send_signal(2); svlm.wait(timeout=60)
print(f"{sys.argv[1]}, {CAMERAS} camera(s): frames sent per camera {sent}, windows described {listen.communicate()[0].strip()}", flush=True)
listen.kill()
