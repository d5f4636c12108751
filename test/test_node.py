"""The svlm node over real rclpy: images in, descriptions out, services, lifecycle, bad input.

Tests decide by events, never by the machine's speed: a publisher is used once the node has
counted a probe frame from it (discovery done on both sides), a slow model is a worker held on
an Event the test releases, and counts are read once the node says it has processed everything.
"""
import dataclasses
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
from rcl_interfaces.srv import GetParameters
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from std_msgs.msg import String
from std_srvs.srv import Trigger

from svlm_ros.engine.batch import StreamBatch
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
                     "reliable_qos": True, "qos_depth": 100,
                     # The long-term memory is tested in test_memory_node.py, which turns it on.
                     "memory.enabled": False}
        overrides.update(parameters)
        self.node = SvlmNode(context=self.context,
                             parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
        self.peer = Node("peer", context=self.context)
        self.descriptions, self.texts, self.diagnostics = [], [], []
        self.peer.create_subscription(Description, "/svlm/description", self.descriptions.append, 50)
        self.peer.create_subscription(String, "/svlm/text", lambda m: self.texts.append(m.data), 50)
        self.peer.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 50)
        self.publishers = {}
        self.closed = False
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
            self.sync(topic)
        return self.publishers[topic]

    def sync(self, topic):
        """Discovery is done on both sides once the node has counted a frame from this publisher.

        The probe has a zero stamp, which the node counts and drops (it cannot join a window)."""
        publisher = self.publishers[topic]
        wait_for(lambda: publisher.get_subscription_count() > 0)
        stream = self.node.scheduler.cameras[topic]
        before = stream.stats.frames

        def probed():
            if stream.stats.frames > before:
                return True
            kind = CompressedImage if topic.endswith("/compressed") else Image
            publisher.publish(kind())  # header.stamp = 0
            return False

        wait_for(probed, interval=0.05)

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
        if self.closed:
            return
        self.closed = True
        self.node.release()
        self.executor.shutdown()
        self.thread.join(30)  # spin() returns once shut down; destroying the nodes under it raced it
        self.node.destroy_node()
        self.peer.destroy_node()
        rclpy.shutdown(context=self.context)


def wait_for(condition, timeout=30.0, interval=0.02):
    """Poll until `condition()`; the timeout only fails a test when something is really broken."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(interval)
    return True


class Gate:
    """Holds the worker inside a camera's next windows until the test releases it: a slow model
    whose slowness the test controls, whatever the machine's speed."""

    def __init__(self, session):
        # Held where a window enters its stream, alone or in a batched step (both check it first).
        self.entered, self.release = threading.Event(), threading.Event()
        self.session, self.original = session, session._check_window
        session._check_window = self.check

    def check(self, *args, **kwargs):
        self.entered.set()
        assert self.release.wait(60), "the test never released the worker"
        return self.original(*args, **kwargs)

    def open(self):
        self.release.set()


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


def settled(h, topic, frames):
    """The node has counted `frames` frames of `topic` and described or skipped every closed window."""
    stream = h.node.scheduler.cameras[topic]
    wait_for(lambda: stream.stats.frames >= frames)
    assert h.node.scheduler.wait_idle(timeout=60)
    return stream.stats


def test_one_description_per_second_of_sensor_time(harness):
    h = harness(reliable_qos=True, max_queued_windows=8)  # counts windows: none may be lost
    h.start()
    h.publisher(RAW, reliable=True)
    probes = h.stats(RAW).frames
    for i in range(42):  # four whole windows, and one still open
        h.send(RAW, 1000.0 + i / 10, reliable=True)
    stats = settled(h, RAW, probes + 42)
    assert stats.processed_windows == 4 and stats.late_frames == 0
    wait_for(lambda: len(h.descriptions) >= 4)
    assert len(h.descriptions) == 4
    for index, msg in enumerate(h.descriptions):
        assert msg.index == index and msg.camera == RAW and msg.header.frame_id == "cam"
        assert seconds_of(msg.window_start) == pytest.approx(1000.0 + index, abs=1e-6)
        assert seconds_of(msg.window_end) == pytest.approx(1001.0 + index, abs=1e-6)
        assert msg.header.stamp == msg.window_end
        assert msg.latency > 0 and msg.cache_tokens > 0 and msg.generated_tokens > 0


def test_each_camera_keeps_its_frames_in_order(harness):
    """Frames sent back to back, as fast as possible: none may overtake another and be dropped as late.

    With the cameras' callbacks in one reentrant group, a multi-threaded executor ran one topic's
    frames on several threads at once; one group per camera serializes them."""
    h = harness(image_topics=[RAW, COMPRESSED], reliable_qos=True, max_queued_windows=8)
    h.start()
    groups = [sub.callback_group for sub in h.node._image_subscriptions]
    assert all(isinstance(g, MutuallyExclusiveCallbackGroup) for g in groups) and groups[0] is not groups[1]
    h.publisher(RAW), h.publisher(COMPRESSED)
    before = {t: h.stats(t).frames for t in (RAW, COMPRESSED)}
    for i in range(60):
        h.send(RAW, 10.0 + i / 20)
        h.send(COMPRESSED, 10.0 + i / 20)
    for topic in (RAW, COMPRESSED):
        assert settled(h, topic, before[topic] + 60).late_frames == 0


@pytest.mark.parametrize("publisher_reliable", [False, True], ids=["best-effort-camera", "reliable-camera"])
def test_default_sensor_qos_hears_both_kinds_of_camera(harness, publisher_reliable):
    h = harness(reliable_qos=False)  # the default: sensor-data QoS, best effort
    h.start()
    h.publisher(RAW, reliable=publisher_reliable)
    h.stream(RAW, 10.0, 3.0, reliable=publisher_reliable)
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
    wait_for(lambda: {m.camera for m in h.descriptions} == {RAW, COMPRESSED} and len(h.descriptions) >= 6)
    by_camera = {c: [m for m in h.descriptions if m.camera == c] for c in (RAW, COMPRESSED)}
    assert [m.index for m in by_camera[RAW]] == [0, 1, 2]
    assert [seconds_of(m.window_start) for m in by_camera[COMPRESSED]] == pytest.approx([50.0, 51.0, 52.0])
    assert h.stats(COMPRESSED).bad_frames == 0


def test_slow_model_skips_windows_instead_of_lagging(harness):
    """Sensor time and the model's slowness are both driven by the test: the worker is held inside
    window 0 while windows 1..7 close; the queue keeps only the newest, so 1..6 are skipped."""
    h = harness(reliable_qos=True, max_queued_windows=1)
    h.start()
    gate = Gate(h.node.scheduler.cameras[RAW].session)
    h.publisher(RAW, reliable=True)
    probes = h.stats(RAW).frames
    for i in range(11):  # 10.0 .. 11.0: window 0 closes
        h.send(RAW, 10 + i / 10)
    assert gate.entered.wait(30)
    for i in range(11, 81):  # 11.1 .. 18.0: windows 1..7 close while the model is busy
        h.send(RAW, 10 + i / 10)
    wait_for(lambda: h.stats(RAW).frames == probes + 81)
    gate.open()
    stats = settled(h, RAW, probes + 81)
    assert stats.skipped_windows == 6 and stats.processed_windows == 2
    wait_for(lambda: len(h.descriptions) == 2)
    assert [seconds_of(m.window_start) for m in h.descriptions] == pytest.approx([10.0, 17.0])  # the newest


def test_services_answer_while_inference_is_busy(harness):
    h = harness()
    h.start()
    gate = Gate(h.node.scheduler.cameras[RAW].session)
    h.stream(RAW, 10.0, 1.15, pace=0)  # frames 10.0 .. 11.0: window 0 closes
    assert gate.entered.wait(30)
    reset = h.call(Trigger, "/svlm/reset", Trigger.Request())
    assert reset.success and not gate.release.is_set()  # answered while the worker was held in a window
    gate.open()
    wait_for(lambda: h.descriptions)
    answer = h.call(Ask, "/svlm/ask", Ask.Request(question="What do you see?"), timeout=60)
    assert answer.success and answer.answer, answer.message
    unknown = h.call(Ask, "/svlm/ask", Ask.Request(question="?", camera="/nope"))
    assert not unknown.success and "unknown camera" in unknown.message


def test_parameters_answer_while_a_model_loads(harness, monkeypatch):
    """`ros2 param get` during a slow `ros2 lifecycle set configure`: lifecycle and parameter
    services have groups of their own, so a get is served while the load blocks."""
    import svlm_ros.node.svlm_node as node_module

    loading, release = threading.Event(), threading.Event()
    real_load = node_module.load_model

    def slow_load(config):
        loading.set()
        assert release.wait(60)
        return real_load(config)

    monkeypatch.setattr(node_module, "load_model", slow_load)
    h = harness()
    client = h.peer.create_client(ChangeState, "/svlm/change_state")
    assert client.wait_for_service(timeout_sec=10)
    configure = client.call_async(ChangeState.Request(transition=Transition(id=Transition.TRANSITION_CONFIGURE)))
    assert loading.wait(30)
    try:
        got = h.call(GetParameters, "/svlm/get_parameters", GetParameters.Request(names=["model"]), timeout=10)
        assert got.values[0].string_value == "tiny-random" and not release.is_set()
    finally:
        release.set()
    wait_for(configure.done, 60)
    assert configure.result().success


def test_bad_inputs_keep_the_node_alive_and_are_reported(harness):
    # Reliable delivery, so that every bad message surely arrives and is counted.
    h = harness(image_topics=[RAW, COMPRESSED], reliable_qos=True, max_queued_windows=8)
    h.start()
    raw, compressed = h.publisher(RAW, reliable=True), h.publisher(COMPRESSED, reliable=True)
    probes = h.stats(RAW).frames
    h.stream(RAW, 100.0, 1.5, pace=0)
    h.send(RAW, 101.5, frame=np.zeros((48, 64, 3), np.uint8), encoding="32FC7")  # unsupported (a sampled instant)
    zero_size = Image(height=0, width=0, encoding="rgb8")
    zero_size.header.stamp = stamp(101.6)
    raw.publish(zero_size)
    corrupt = CompressedImage(format="jpeg", data=b"\xff\xd8 not a jpeg")
    corrupt.header.stamp = stamp(7.0)
    compressed.publish(corrupt)
    h.send(RAW, 100.2)  # one late frame
    h.send(RAW, 3.0)  # one frame far in the past (a clock glitch): dropped, the stream goes on
    h.stream(RAW, 101.7, 1.5, pace=0)
    for i in range(15):  # a resolution change
        h.send(RAW, 103.2 + i / 10, frame=moving_shapes(i, 96, 64))
    h.stream(RAW, 20.0, 2.2, pace=0)  # the bag loops: time jumps back and goes on
    stats_raw = settled(h, RAW, probes + 15 + 3 + 1 + 15 + 15 + 22)
    wait_for(lambda: any(m.index == 1 and seconds_of(m.window_start) == pytest.approx(21.0) for m in h.descriptions))
    stats_compressed = h.stats(COMPRESSED)
    assert stats_raw.restarts == 1 and stats_raw.resolution_changes == 2  # 64x48 -> 96x64, and back at the loop
    assert stats_raw.bad_frames == 2 and stats_compressed.bad_frames == 1 and stats_raw.late_frames == 2
    assert stats_raw.failed_windows == 0
    described = [seconds_of(m.window_start) for m in h.descriptions if m.camera == RAW]
    assert described[:5] == pytest.approx([100.0, 101.0, 102.0, 103.0, 104.0])  # context kept over the glitch
    assert [m.index for m in h.descriptions if m.camera == RAW][:5] == [0, 1, 2, 3, 4]

    def reported(name, key, value):
        return any(s.name.endswith(name) and any(v.key == key and v.value == value for v in s.values)
                   for a in h.diagnostics for s in a.status)

    wait_for(lambda: reported(RAW, "bad_frames", "2") and reported(RAW, "resolution_changes", "2"))


def test_zero_stamps_are_warned_counted_and_reported(harness):
    h = harness()
    h.start()
    h.publisher(RAW)
    for _ in range(5):
        h.send(RAW, 0.0)
    wait_for(lambda: h.stats(RAW).zero_stamps >= 6)  # the probe too
    wait_for(lambda: any(s.name.endswith(RAW) and s.level == s.WARN and "header.stamp" in s.message
                         for a in h.diagnostics for s in a.status))
    assert h.stats(RAW).processed_windows == 0


def test_text_topic_and_publish_silent_false(harness):
    h = harness(publish_silent=False, max_queued_windows=8)
    h.start()
    session = h.node.scheduler.cameras[RAW].session
    finish = session._finish_window  # where every window's result is made, alone or batched

    def every_other_window_silent(*args, **kwargs):
        result = finish(*args, **kwargs)
        return dataclasses.replace(result, silent=True, text="") if result.index % 2 else result

    session._finish_window = every_other_window_silent
    h.publisher(RAW)
    probes = h.stats(RAW).frames
    h.stream(RAW, 10.0, 4.1, pace=0)
    assert settled(h, RAW, probes + 41).processed_windows == 4
    wait_for(lambda: len(h.descriptions) == 2 and len(h.texts) == 2)
    assert [m.index for m in h.descriptions] == [0, 2] and not any(m.silent for m in h.descriptions)
    assert h.texts == [m.text for m in h.descriptions]


def test_diagnostics_run_on_wall_time_with_sim_time_and_no_clock(harness):
    """use_sim_time without /clock (or after a bag ends): the ROS clock stands still, diagnostics do not."""
    h = harness(use_sim_time=True, diagnostics_period_s=0.1)
    wait_for(lambda: len(h.diagnostics) >= 2)


def test_diagnostics_period_applies_when_changed(harness):
    h = harness()
    old_timer = h.node._diagnostics_timer
    assert h.node.set_parameters([Parameter("diagnostics_period_s", value=0.25)])[0].successful
    assert h.node._diagnostics_timer is not old_timer
    assert h.node._diagnostics_timer.timer_period_ns == 250_000_000
    assert not h.node.set_parameters([Parameter("diagnostics_period_s", value=0.0)])[0].successful


def test_parameters_are_described_with_ranges(harness):
    h = harness()
    fps = h.node.describe_parameter("frames.fps")
    assert "frames sampled per second" in fps.description and fps.floating_point_range
    depth = h.node.describe_parameter("qos_depth")
    assert depth.integer_range[0].from_value == 1
    assert not h.node.set_parameters([Parameter("qos_depth", value=0)])[0].successful


def test_lifecycle_transitions(harness):
    h = harness()
    assert h.node.scheduler is None
    h.start()
    h.stream(RAW, 10.0, 1.2)
    wait_for(lambda: h.descriptions)
    assert h.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert not h.node._image_subscriptions and not h.node.scheduler.worker_alive()
    processed = h.stats(RAW).processed_windows
    wait_for(lambda: h.publishers[RAW].get_subscription_count() == 0)
    h.stream(RAW, 11.2, 1.5, pace=0)  # nobody listens: inactive, nothing is described
    assert h.stats(RAW).processed_windows == processed
    assert h.node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    assert h.node.scheduler is None and h.node.loaded is None
    h.start()  # configure and activate again
    count = len(h.descriptions)
    h.sync(RAW)
    h.stream(RAW, 15.0, 1.2)
    wait_for(lambda: len(h.descriptions) > count)
    assert h.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert h.node.trigger_shutdown() == TransitionCallbackReturn.SUCCESS


def test_a_model_that_fails_to_load_is_an_error_state(harness, tmp_path):
    h = harness(model=str(tmp_path / "missing"))
    assert h.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "failed to load" in h.node.model_error and "does not exist" in h.node.model_error
    wait_for(lambda: any(s.level == s.ERROR and "failed to load" in s.message
                         for a in h.diagnostics for s in a.status))
    state = h.call(GetState, "/svlm/get_state", GetState.Request()).current_state
    assert state.label == "unconfigured"  # the lifecycle state a ROS user sees


def test_an_error_after_the_model_loads_is_logged_reported_and_frees_the_model(harness, monkeypatch):
    import svlm_ros.node.svlm_node as node_module

    def refuse(*args, **kwargs):
        raise ValueError("decode_mode cuda_graph needs sdpa or eager attention")

    monkeypatch.setattr(node_module, "Scheduler", refuse)
    h = harness()
    assert h.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "cuda_graph needs sdpa" in h.node.model_error
    assert h.node.loaded is None and h.node.scheduler is None
    wait_for(lambda: any(s.level == s.ERROR and "cuda_graph" in s.message for a in h.diagnostics for s in a.status))


def test_configure_warms_every_camera_up_in_one_batched_step_and_starts_their_streams_fresh(harness, monkeypatch):
    warmed, original = [], StreamBatch.step
    monkeypatch.setattr(StreamBatch, "step", lambda batch, windows: warmed.append(len(windows)) or original(batch, windows))
    h = harness(image_topics=[RAW, COMPRESSED])
    assert h.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert warmed == [2]  # one step, both cameras
    for stream in h.node.scheduler.cameras.values():
        session = stream.session
        assert session.window_count == 0 and session.cache_tokens == 0 and not session.table.segments


def test_a_failed_warm_up_is_an_error_state(harness, monkeypatch):
    def fail(batch):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(StreamBatch, "warm_up", fail)
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
    assert h.node.set_parameters([Parameter("use_sim_time", value=False)])[0].successful  # rclpy's, not ours
    h.start()
    results = h.node.set_parameters([Parameter("prompt.instruction", value="Count the boxes.")])
    assert results[0].successful
    h.stream(RAW, 10.0, 1.2)
    wait_for(lambda: h.descriptions)
    session = h.node.scheduler.cameras[RAW].session
    queries = [s.tokens.tolist() for s in session.table.segments if s.kind.value == "query"]
    assert session.prompt.encode("Count the boxes.") in queries


def test_release_lets_the_window_in_flight_reach_the_memory(harness, tmp_path):
    """Issue Hardening II, item 6: release() cleared the scheduler before the worker stopped, so the window
    in flight failed to publish (`'NoneType' object has no attribute 'cameras'`) and never reached the memory."""
    import sqlite3

    h = harness(**{"memory.enabled": True, "memory.path": str(tmp_path / "memory.sqlite"),
                   "memory.summary_minutes": 0.0})
    h.start()
    scheduler = h.node.scheduler
    gate = Gate(scheduler.cameras[RAW].session)
    h.publisher(RAW)
    h.stream(RAW, 10.0, 1.15, pace=0)  # window 10-11 s closes; the worker is held inside it
    assert gate.entered.wait(30)
    releasing = threading.Thread(target=h.node.release)
    releasing.start()
    wait_for(scheduler._stop.is_set)  # release() is waiting for the worker
    gate.open()
    releasing.join(120)
    assert not releasing.is_alive()
    assert scheduler.publish_errors == 0, scheduler.last_error
    with sqlite3.connect(tmp_path / "memory.sqlite") as connection:
        assert connection.execute("SELECT start, end FROM entries").fetchall() == [(10.0, 11.0)]


def test_no_callback_exception_ends_the_node(harness, monkeypatch):
    """Issue Hardening II, item 1: an exception out of a service, subscription or timer callback ended
    executor.spin(), and with it the process. Each is logged and the node goes on; a service answers
    success=false with the reason."""
    from svlm_ros.cameras.scheduler import CameraStream, Scheduler

    h = harness(diagnostics_period_s=0.1)
    h.start()
    h.publisher(RAW)
    faults = {"reset": 1, "frame": 1, "diagnostics": 1}
    real_reset, real_feed, real_status = Scheduler.reset, CameraStream.feed_lazy, SvlmNode._camera_status

    def once(name, real):
        def call(*args, **kwargs):
            if faults[name]:
                faults[name] -= 1
                raise RuntimeError(f"injected fault in {name}")
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(Scheduler, "reset", once("reset", real_reset))
    monkeypatch.setattr(CameraStream, "feed_lazy", once("frame", real_feed))
    monkeypatch.setattr(SvlmNode, "_camera_status", once("diagnostics", real_status))
    failed = h.call(Trigger, "/svlm/reset", Trigger.Request())
    assert not failed.success and "injected fault in reset" in failed.message
    assert h.call(Trigger, "/svlm/reset", Trigger.Request()).success  # the executor still serves
    h.stream(RAW, 10.0, 2.2)  # the first frame's callback fails; the stream goes on
    wait_for(lambda: h.descriptions)
    count = len(h.diagnostics)
    wait_for(lambda: len(h.diagnostics) > count + 1)  # the timer goes on after its failed run
    assert not any(faults.values())


@pytest.mark.parametrize("device,allowed", [("tpu", False), ("cuda:x", False), ("CPU", False), ("", False),
                                            ("cpu", True), ("cuda", True), ("cuda:1", True), ("auto", True)])
def test_device_is_validated_when_set(harness, device, allowed):
    """Issue Hardening II, item 8: `ros2 param set /svlm device tpu` was accepted and failed only at the next configure."""
    from rcl_interfaces.srv import SetParameters

    h = harness()
    request = SetParameters.Request(parameters=[Parameter("device", value=device).to_parameter_msg()])
    result = h.call(SetParameters, "/svlm/set_parameters", request).results[0]
    assert result.successful == allowed, result.reason
    if not allowed:
        assert "auto, cpu, cuda, cuda:N" in result.reason and repr(device) in result.reason


def test_every_parameter_round_trips_through_param_dump_load_and_set(harness, tmp_path):
    """Issue Hardening II, item 9: `ros2 param dump /svlm > d.yaml && ros2 param load /svlm d.yaml` crashed the
    CLI on a default that YAML reads as a mapping. ros2param dumps with yaml.dump and loads and sets with
    rclpy's own parsing (parameter_dict_from_yaml_file, get_parameter_value): the same calls here, over the
    node's real parameter services, for every parameter."""
    import yaml
    from rcl_interfaces.msg import ParameterType
    from rcl_interfaces.srv import ListParameters, SetParameters
    from rclpy.parameter import get_parameter_value, parameter_dict_from_yaml_file, parameter_value_to_python

    h = harness()
    names = h.call(ListParameters, "/svlm/list_parameters", ListParameters.Request()).result.names
    values = h.call(GetParameters, "/svlm/get_parameters", GetParameters.Request(names=names)).values
    before = {name: parameter_value_to_python(value) for name, value in zip(names, values)}
    dumped = {}
    for name, value in before.items():  # ros2param's dump nests the dotted names
        *sections, leaf = name.split(".")
        target = dumped
        for section in sections:
            target = target.setdefault(section, {})
        target[leaf] = value
    path = tmp_path / "d.yaml"
    path.write_text(yaml.dump({"/svlm": {"ros__parameters": dumped}}, default_flow_style=False))
    loaded = parameter_dict_from_yaml_file(str(path))
    assert {name: parameter_value_to_python(p.value) for name, p in loaded.items()} == before
    # `ros2 param load` sets them all; rclpy's read-only ones (start_type_description_service) refuse, as on any node
    settable = [p for p in loaded.values() if not h.node.describe_parameter(p.name).read_only]
    results = h.call(SetParameters, "/svlm/set_parameters", SetParameters.Request(parameters=settable)).results
    assert [(p.name, r.reason) for p, r in zip(settable, results) if not r.successful] == []
    assert {name: h.node.get_parameter(name).value for name in names} == before
    # `ros2 param set /svlm NAME VALUE`, VALUE as `ros2 param get` prints it
    for name, value in zip(names, values):
        if value.type == ParameterType.PARAMETER_STRING:
            typed = get_parameter_value(value.string_value)
            assert (typed.type, typed.string_value) == (ParameterType.PARAMETER_STRING, value.string_value), name


def test_three_cameras_batched_each_get_one_description_per_second_of_their_sensor_time(harness):
    """Issue 20: three cameras (30 Hz, 4 Hz, 1 Hz) share one model through batched steps, all their
    frames sent at once so they compete for the worker; each gets one description per second of its own
    sensor time and none starves. The queues hold every window, so a loaded machine skips nothing."""
    rates = {"/cam_fast/image_raw": 30, "/cam_mid/image_raw/compressed": 4, "/cam_slow/image_raw": 1}
    origins = {"/cam_fast/image_raw": 100.0, "/cam_mid/image_raw/compressed": 5000.0, "/cam_slow/image_raw": 7.5}
    seconds = 4
    h = harness(image_topics=list(rates), reliable_qos=True, max_queued_windows=seconds + 1, batch_wait_s=1.0)
    h.start()
    for topic in rates:
        h.publisher(topic, reliable=True)
    probes = {topic: h.stats(topic).frames for topic in rates}
    sent = dict.fromkeys(rates, 0)
    for second in range(seconds + 1):  # the frames of second `seconds` only close the last window
        for topic, rate in rates.items():
            for k in range(rate if second < seconds else 1):
                h.send(topic, origins[topic] + second + k / rate, reliable=True)
                sent[topic] += 1
                if sent[topic] % 8 == 0:  # within the publisher's history (10): a reliable frame is never lost
                    wait_for(lambda topic=topic: h.stats(topic).frames >= probes[topic] + sent[topic])
    for topic in rates:
        settled(h, topic, probes[topic] + sent[topic])
    wait_for(lambda: len(h.descriptions) == 3 * seconds)
    for topic in rates:
        stats = h.stats(topic)
        assert stats.processed_windows == seconds and stats.skipped_windows == 0 and stats.late_frames == 0, topic
        mine = [m for m in h.descriptions if m.camera == topic]
        assert [m.index for m in mine] == list(range(seconds))
        assert [seconds_of(m.window_start) for m in mine] == pytest.approx([origins[topic] + s for s in range(seconds)])
    batches = h.node.scheduler.batches
    assert sum(size * steps for size, steps in batches.steps.items()) == 3 * seconds
    expected = batches.values()["batch_steps_by_size"]  # e.g. "3:4" or "1:2 2:2 3:2": what the worker did

    def reported():
        return any(v.key == "batch_steps_by_size" and v.value == expected
                   for a in h.diagnostics for s in a.status if s.name.endswith(": model") for v in s.values)

    wait_for(reported)  # the node's diagnostics report the steps by batch size
