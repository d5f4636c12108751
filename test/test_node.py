"""The svlm node over real rclpy: images in, descriptions out, services, lifecycle, bad input."""
import threading
import time

import cv2
import numpy as np
import pytest
import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.srv import GetState
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from std_srvs.srv import Trigger

from svlm_ros.engine.session import StreamSession
from svlm_ros.msg import Description
from svlm_ros.node.svlm_node import SvlmNode
from svlm_ros.srv import Ask
from svlm_ros.synthetic import moving_shapes

RAW, COMPRESSED = "/cam_a/image_raw", "/cam_b/image_raw/compressed"


def stamp(seconds):
    return Time(sec=int(seconds), nanosec=int(round((seconds % 1) * 1e9)))


class Harness:
    def __init__(self, **parameters):
        self.context = rclpy.context.Context()
        rclpy.init(context=self.context)
        overrides = {"model": "tiny-random", "device": "cpu", "frames.min_pixels": 3136,
                     "generation.max_new_tokens": 4, "generation.answer_max_new_tokens": 6,
                     "image_topics": [RAW], "autostart": False,
                     # Tests count frames and windows, so delivery is reliable unless a test says not.
                     "reliable_qos": True, "qos_depth": 100}
        overrides.update(parameters)
        self.node = SvlmNode(context=self.context,
                             parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
        self.peer = Node("peer", context=self.context)
        self.descriptions, self.texts, self.diagnostics = [], [], []
        self.peer.create_subscription(Description, "/svlm/description", self.descriptions.append, 50)
        self.peer.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 50)
        self.publishers = {}
        self.executor = MultiThreadedExecutor(num_threads=4, context=self.context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.peer)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def start(self):
        assert self.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert self.node.trigger_activate() == TransitionCallbackReturn.SUCCESS

    def publisher(self, topic, reliable=True):
        if topic not in self.publishers:
            kind = CompressedImage if topic.endswith("/compressed") else Image
            qos = 10 if reliable else qos_profile_sensor_data
            self.publishers[topic] = self.peer.create_publisher(kind, topic, qos)
            wait_for(lambda: self.publishers[topic].get_subscription_count() > 0)
            time.sleep(0.5)  # discovery completes on the subscriber's side too, or first frames are lost
        return self.publishers[topic]

    def send(self, topic, seconds, frame=None, reliable=True, **fields):
        frame = moving_shapes(seconds, 48, 64) if frame is None else frame
        if topic.endswith("/compressed"):
            ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            msg = CompressedImage(format="jpeg", data=jpeg.tobytes())
        else:
            msg = Image(height=frame.shape[0], width=frame.shape[1], encoding="rgb8",
                        step=frame.shape[1] * 3, data=frame.tobytes())
        for key, value in fields.items():
            setattr(msg, key, value)
        msg.header.stamp = stamp(seconds)
        msg.header.frame_id = "cam"
        self.publisher(topic, reliable).publish(msg)

    def stream(self, topic, start, seconds, rate=10, pace=0.01, reliable=True):
        for i in range(int(seconds * rate)):
            self.send(topic, start + i / rate, reliable=reliable)
            time.sleep(pace)

    def call(self, service_type, name, request, timeout=30):
        client = self.peer.create_client(service_type, name)
        assert client.wait_for_service(timeout_sec=10)
        future = client.call_async(request)
        wait_for(future.done, timeout)
        return future.result()

    def stats(self, topic):
        return self.node.scheduler.cameras[topic].stats

    def close(self):
        self.node.release()
        self.executor.shutdown()
        self.node.destroy_node()
        self.peer.destroy_node()
        rclpy.shutdown(context=self.context)


def wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)
    return True


@pytest.fixture
def harness(request):
    made = []

    def make(**parameters):
        made.append(Harness(**parameters))
        return made[-1]

    yield make
    for h in made:
        h.close()


def seconds_of(t):
    return t.sec + t.nanosec * 1e-9


def test_one_description_per_second_of_sensor_time(harness):
    h = harness(reliable_qos=True, max_queued_windows=8)  # counts windows: none may be lost
    h.start()
    h.publisher(RAW, reliable=True)
    for i in range(42):  # four whole windows, and one still open
        h.send(RAW, 1000.0 + i / 10, reliable=True)
        time.sleep(0.01)
    wait_for(lambda: len(h.descriptions) >= 4)
    time.sleep(0.5)
    assert len(h.descriptions) == 4
    for index, msg in enumerate(h.descriptions):
        assert msg.index == index and msg.camera == RAW and msg.header.frame_id == "cam"
        assert seconds_of(msg.window_start) == pytest.approx(1000.0 + index, abs=1e-6)
        assert seconds_of(msg.window_end) == pytest.approx(1001.0 + index, abs=1e-6)
        assert msg.header.stamp == msg.window_end
        assert msg.latency > 0 and msg.cache_tokens > 0 and msg.generated_tokens > 0


@pytest.mark.parametrize("publisher_reliable", [False, True], ids=["best-effort-camera", "reliable-camera"])
def test_default_sensor_qos_hears_both_kinds_of_camera(harness, publisher_reliable):
    h = harness(reliable_qos=False)  # the default: sensor-data QoS, best effort
    h.start()
    h.publisher(RAW, reliable=publisher_reliable)
    h.stream(RAW, 0.0, 3.0, reliable=publisher_reliable)
    wait_for(lambda: h.descriptions)
    assert h.stats(RAW).frames >= 20


def test_compressed_and_raw_cameras_at_once(harness):
    # Reliable QoS and a deep window queue: this test counts windows, so none may be lost.
    h = harness(image_topics=[RAW, COMPRESSED], reliable_qos=True, max_queued_windows=8)
    h.start()
    h.publisher(RAW, reliable=True), h.publisher(COMPRESSED, reliable=True)
    for i in range(32):
        h.send(RAW, 10.0 + i / 10, reliable=True)
        h.send(COMPRESSED, 50.0 + i / 10, reliable=True)
        time.sleep(0.01)
    wait_for(lambda: {m.camera for m in h.descriptions} == {RAW, COMPRESSED} and len(h.descriptions) >= 6)
    by_camera = {c: [m for m in h.descriptions if m.camera == c] for c in (RAW, COMPRESSED)}
    assert [m.index for m in by_camera[RAW]] == [0, 1, 2]
    assert [seconds_of(m.window_start) for m in by_camera[COMPRESSED]] == pytest.approx([50.0, 51.0, 52.0])
    assert h.stats(COMPRESSED).bad_frames == 0


def test_slow_model_skips_windows_instead_of_lagging(harness):
    h = harness(inference_delay_s=1.8, reliable_qos=True)
    h.start()
    h.publisher(RAW, reliable=True)
    h.stream(RAW, 0.0, 8.15, pace=0.1, reliable=True)  # frames 0.0 .. 8.0 close windows 0..7  # 8 s of video in real time; inference takes ~2 s per window
    stats = h.stats(RAW)
    wait_for(lambda: len(h.descriptions) + stats.skipped_windows == 8)
    assert stats.skipped_windows >= 1
    assert seconds_of(h.descriptions[-1].window_start) == pytest.approx(7.0)  # the newest window is described


def test_services_answer_while_inference_is_busy(harness):
    h = harness(inference_delay_s=2.0)
    h.start()
    h.stream(RAW, 0.0, 2.05)
    wait_for(lambda: h.node.scheduler.busy_since is not None)
    started = time.monotonic()
    reset = h.call(Trigger, "/svlm/reset", Trigger.Request())
    assert reset.success and time.monotonic() - started < 1.5  # while a 2-s window is in the works
    wait_for(lambda: h.descriptions)
    answer = h.call(Ask, "/svlm/ask", Ask.Request(question="What do you see?"), timeout=60)
    assert answer.success and answer.answer, answer.message
    unknown = h.call(Ask, "/svlm/ask", Ask.Request(question="?", camera="/nope"))
    assert not unknown.success and "unknown camera" in unknown.message


def test_bad_inputs_keep_the_node_alive_and_are_reported(harness):
    # Reliable delivery, so that every bad message surely arrives and is counted.
    h = harness(image_topics=[RAW, COMPRESSED], reliable_qos=True, max_queued_windows=8)
    h.start()
    raw, compressed = h.publisher(RAW, reliable=True), h.publisher(COMPRESSED, reliable=True)
    h.stream(RAW, 100.0, 1.5, reliable=True)
    h.send(RAW, 101.6, frame=np.zeros((48, 64, 3), np.uint8), encoding="32FC7", reliable=True)  # unsupported
    raw.publish(Image(height=0, width=0, encoding="rgb8"))  # zero-size
    compressed.publish(CompressedImage(format="jpeg", data=b"\xff\xd8 not a jpeg"))  # corrupt
    h.send(RAW, 100.2, reliable=True)  # one late frame
    h.stream(RAW, 101.7, 1.5, reliable=True)
    for i in range(15):  # a resolution change
        h.send(RAW, 103.2 + i / 10, frame=moving_shapes(i, 96, 64), reliable=True)
        time.sleep(0.01)
    h.stream(RAW, 20.0, 2.2, reliable=True)  # the bag loops: time jumps back
    wait_for(lambda: h.stats(RAW).restarts == 1
             and any(m.index == 1 and seconds_of(m.window_start) == pytest.approx(21.0) for m in h.descriptions))
    stats_raw, stats_compressed = h.stats(RAW), h.stats(COMPRESSED)
    assert stats_raw.bad_frames == 2 and stats_compressed.bad_frames == 1 and stats_raw.late_frames == 1
    assert stats_raw.failed_windows == 0
    described = [seconds_of(m.window_start) for m in h.descriptions if m.camera == RAW]
    assert described[:4] == pytest.approx([100.0, 101.0, 102.0, 103.0])  # the resolution change went through
    wait_for(lambda: any(s.name.endswith(RAW) and any(v.key == "bad_frames" and v.value == "2" for v in s.values)
                         for a in h.diagnostics for s in a.status))


def test_lifecycle_transitions(harness):
    h = harness()
    assert h.node.scheduler is None
    h.start()
    h.stream(RAW, 0.0, 1.2)
    wait_for(lambda: h.descriptions)
    assert h.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    count = len(h.descriptions)
    h.stream(RAW, 1.2, 1.5)
    time.sleep(0.5)
    assert len(h.descriptions) == count  # inactive: nothing described
    assert h.node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    assert h.node.scheduler is None and h.node.loaded is None
    h.start()  # configure and activate again
    h.stream(RAW, 5.0, 1.2)
    wait_for(lambda: len(h.descriptions) > count)
    assert h.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert h.node.trigger_shutdown() == TransitionCallbackReturn.SUCCESS


def test_a_model_that_fails_to_load_is_an_error_state(harness, tmp_path):
    h = harness(model=str(tmp_path / "missing"))
    assert h.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "failed to load" in h.node.model_error
    wait_for(lambda: any(s.level == s.ERROR and "failed to load" in s.message
                         for a in h.diagnostics for s in a.status))
    state = h.call(GetState, "/svlm/get_state", GetState.Request()).current_state
    assert state.label == "unconfigured"  # the lifecycle state a ROS user sees


def test_configure_warms_each_camera_up_and_starts_its_stream_fresh(harness, monkeypatch):
    warmed = []
    original = StreamSession.warm_up
    monkeypatch.setattr(StreamSession, "warm_up", lambda session: warmed.append(session) or original(session))
    h = harness()
    assert h.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    session = h.node.scheduler.cameras[RAW].session
    assert warmed == [session]
    assert session.window_count == 0 and session.cache_tokens == 0 and not session.table.segments


def test_a_failed_warm_up_is_an_error_state(harness, monkeypatch):
    def fail(session):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(StreamSession, "warm_up", fail)
    h = harness()
    assert h.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "warm-up" in h.node.model_error and "out of memory" in h.node.model_error
    assert h.node.scheduler is None and h.node.loaded is None
    wait_for(lambda: any(s.level == s.ERROR and "warm-up" in s.message for a in h.diagnostics for s in a.status))


def test_parameters_are_validated(harness):
    h = harness()
    results = h.node.set_parameters([Parameter("frames.fps", value=-2.0)])
    assert not results[0].successful and "fps" in results[0].reason
    results = h.node.set_parameters([Parameter("dtype", value="int3")])
    assert not results[0].successful and "dtype" in results[0].reason
    results = h.node.set_parameters([Parameter("image_topics", value=[RAW, RAW])])
    assert not results[0].successful and "duplicates" in results[0].reason
    h.start()
    results = h.node.set_parameters([Parameter("prompt.instruction", value="Count the boxes.")])
    assert results[0].successful
    h.stream(RAW, 0.0, 1.2)
    wait_for(lambda: h.descriptions)
    session = h.node.scheduler.cameras[RAW].session
    queries = [s.tokens.tolist() for s in session.table.segments if s.kind.value == "query"]
    assert session.prompt.encode("Count the boxes.") in queries
