"""The node's long-term memory over real rclpy: ~/recall, ~/ask about the past, poses, summaries,
restarts, and a broken store that must not stop the descriptions.

Sensor time is the synthetic bags' day (START_NS); everything waits on events or counts.
"""

import sqlite3
from contextlib import closing

import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from nav_msgs.msg import Odometry

from svlm_ros.config import MemoryConfig
from svlm_ros.engine.segments import Kind
from svlm_ros.memory.records import Entry
from svlm_ros.memory.store import MemoryStore
from svlm_ros.memory.summaries import Summary, SummaryStore
from svlm_ros.memory.vectors import Embedder
from svlm_ros.srv import Ask, Recall

from test_node import RAW, Gate, harness, settled, stamp, wait_for  # noqa: F401 - the fixture is used by name

T0 = 1_763_740_800.0  # 2025-11-21, the synthetic bags' start


def memory(tmp_path, **more):
    values = {"memory.enabled": True, "memory.path": str(tmp_path / "memory.sqlite"), "memory.summary_minutes": 0.0,
              "ask_timeout_s": 300.0}  # a loaded machine may take long to start the embedding process
    values.update({f"memory.{k}": v for k, v in more.items()})
    return values


def flushed(h):
    # Waits on the writer's event, however long the first embedding takes on a loaded machine
    # (pytest-timeout is the backstop for a real hang).
    assert h.node.memory.writer.flush()


def recall(h, **fields):
    request = Recall.Request()
    for key, value in fields.items():
        setattr(request, key, value)
    return h.call(Recall, "/svlm/recall", request, timeout=300)


def test_recall_returns_what_the_node_described_with_the_robots_pose(harness, tmp_path):
    h = harness(**memory(tmp_path, pose_topic="/odom"), max_queued_windows=8)
    h.start()
    odom = h.peer.create_publisher(Odometry, "/odom", 100)
    poses = h.node.memory.poses

    def probed():  # discovery is done on both sides once the node has heard a probe
        if poses.received:
            return True
        probe = Odometry()
        probe.header.stamp = stamp(T0 - 100)
        odom.publish(probe)
        return False

    wait_for(probed, interval=0.05)
    for i in range(12):  # the robot drives along x at 1 m/s
        msg = Odometry()
        msg.header.stamp, msg.header.frame_id = stamp(T0 + i * 0.5), "map"
        msg.pose.pose.position.x = i * 0.5
        odom.publish(msg)
    wait_for(lambda: all(poses.at(T0 + i * 0.5, 0.01) is not None for i in range(12)))
    h.stream(RAW, T0, 4.2)
    stats = settled(h, RAW, 42)
    flushed(h)
    response = recall(h, since=stamp(T0), until=stamp(T0 + 10), limit=50)
    assert response.success, response.message
    described = stats.processed_windows
    assert described >= 3
    windows = sum(round((e.end.sec + e.end.nanosec * 1e-9) - (e.start.sec + e.start.nanosec * 1e-9))
                  for e in response.entries)
    silent = recall(h, since=stamp(T0), limit=50)
    assert windows <= described and len(silent.entries) >= 1
    for entry in response.entries:
        end = entry.end.sec + entry.end.nanosec * 1e-9
        assert entry.has_pose and entry.frame_id == "map" and entry.kind == "entry"
        assert entry.position.x == pytest.approx(min(end - T0, 5.5), abs=0.5)  # the pose nearest the window's end
    assert h.node.memory.status_values()["memory_written"] == described


@pytest.mark.parametrize("fields, problem", [
    ({}, "give a query, a time range, a camera or a place"),
    ({"since": stamp(T0 + 10), "until": stamp(T0)}, "reversed"),
    ({"query": "x" * 2000}, "at most 1000"),
    ({"use_place": True, "x": 1.0, "y": 2.0, "radius": 0.0}, "radius must be > 0"),
    ({"use_place": True, "x": float("nan"), "y": 2.0, "radius": 3.0}, "must be finite numbers"),
    ({"use_place": True, "x": 1.0, "y": 2.0, "radius": 3.0}, "no pose source"),
])
def test_bad_recall_requests_are_answered_with_the_reason(harness, tmp_path, fields, problem):
    h = harness(**memory(tmp_path))
    h.start()
    h.node.memory.store.add([Entry(RAW, T0, T0 + 1, "a red cart", False)])
    response = recall(h, **fields)
    assert not response.success and problem in response.message


def test_keyword_syntax_in_a_recall_is_searched_as_words(harness, tmp_path):
    h = harness(**memory(tmp_path))
    h.start()
    h.node.memory.store.add([Entry(RAW, T0, T0 + 1, "a red cart near the dock", False)])
    response = recall(h, query='"red AND (cart* OR NEAR(', limit=5)
    assert response.success and [e.text for e in response.entries] == ["a red cart near the dock"]


def test_ask_about_the_past_puts_remembered_entries_in_the_question_and_returns_their_stamps(harness, tmp_path):
    path = tmp_path / "memory.sqlite"
    earlier = MemoryStore(path, MemoryConfig(), Embedder())
    earlier.add([Entry(RAW, T0 - 3600, T0 - 3596, "a red cart passes the loading dock", False),
                 Entry(RAW, T0 - 7 * 3600, T0 - 7 * 3600 + 2, "a red cart is parked by the door", False)])
    earlier.close()
    h = harness(**memory(tmp_path))
    h.start()
    h.stream(RAW, T0, 2.2)
    settled(h, RAW, 22)
    request = Ask.Request(question="Where was the red cart an hour ago?", camera=RAW)
    response = h.call(Ask, "/svlm/ask", request, timeout=300)
    assert response.success, response.message
    assert [(s.start.sec, s.end.sec, s.kind) for s in response.sources] == [(T0 - 3600, T0 - 3596, "entry")]
    assert response.sources[0].text == "a red cart passes the loading dock"
    # What the model read: the remembered line, in the question turn, before the question.
    session = h.node.scheduler.cameras[RAW].session
    recalled = [s for s in session.table.segments if s.kind is Kind.RECALLED]
    assert len(recalled) == 1
    text = session.prompt.decode(recalled[0].tokens)
    assert "a red cart passes the loading dock" in text and "parked by the door" not in text
    # The live stamp keeps its meaning: the latest window the answer is based on.
    assert response.stamp.sec >= T0 + 1


def test_ask_without_memory_answers_from_the_live_stream(harness, tmp_path):
    h = harness(**memory(tmp_path, ask_entries=0))
    h.start()
    h.stream(RAW, T0, 1.2)
    settled(h, RAW, 12)
    response = h.call(Ask, "/svlm/ask", Ask.Request(question="What is there?"), timeout=300)
    assert response.success and list(response.sources) == []
    assert not any(s.kind is Kind.RECALLED for s in h.node.scheduler.cameras[RAW].session.table.segments)


def test_summaries_wait_for_an_idle_model(harness, tmp_path):
    h = harness(**memory(tmp_path), max_queued_windows=8)
    h.start()
    stream = h.node.scheduler.cameras[RAW]
    gate = Gate(stream.session)
    h.stream(RAW, T0, 3.2)
    assert gate.entered.wait(60)
    wait_for(lambda: stream.stats.frames >= 32 and len(stream.queue) >= 1)
    seen = {}

    def job():
        seen["queued"] = sum(len(s.queue) for s in h.node.scheduler.cameras.values())
        seen["described"] = stream.stats.processed_windows
        return "done"

    future = h.node.scheduler.when_idle(job)
    gate.open()
    assert future.result(timeout=300) == "done"
    assert seen["queued"] == 0 and seen["described"] == 3


def test_a_restarted_node_sees_its_history_and_resumes_from_its_summaries(harness, tmp_path):
    # A summary every 3 s of sensor time (0.05 minutes), written when the camera leaves the model idle.
    first = harness(**memory(tmp_path, summary_minutes=0.05), max_queued_windows=8)
    first.start()
    first.stream(RAW, T0, 7.2)
    settled(first, RAW, 72)
    node_memory = first.node.memory
    wait_for(lambda: node_memory.summarizer.done + node_memory.summarizer.empty >= 1 and
             not node_memory.recorder.summaries_waiting, timeout=300)
    written_summaries = node_memory.summaries.count()
    assert written_summaries >= 1
    first.close()  # the first node stops: its worker, then its memory (every window committed)

    summaries = SummaryStore(tmp_path / "memory.sqlite")
    summaries.add(Summary(RAW, "hour", T0, T0 + 3600, "the dock was busy with red carts"))
    summaries.close()
    second = harness(**memory(tmp_path, resume_context=True))
    second.start()
    session = second.node.scheduler.cameras[RAW].session
    assert "the dock was busy with red carts" in session.config.prompt.context
    second.stream(RAW, T0 + 100, 1.2)
    settled(second, RAW, 12)
    head = "".join(session.prompt.decode(s.tokens) for s in session.table.segments if s.kind is Kind.PREV_TEXT)
    assert "the dock was busy with red carts" in head
    history = recall(second, since=stamp(T0), until=stamp(T0 + 10), limit=50)
    assert history.success and len(history.entries) >= 1  # the first node's windows


def test_a_corrupt_memory_file_at_start_is_moved_aside_and_a_new_store_started(harness, tmp_path):
    path = tmp_path / "memory.sqlite"
    garbage = b"this is not a database" * 100
    path.write_bytes(garbage)
    h = harness(**memory(tmp_path))
    h.start()
    [moved] = list(tmp_path.glob("memory.sqlite.corrupt-*"))
    assert moved.read_bytes() == garbage and h.node.memory.moved_aside == moved
    h.stream(RAW, T0, 2.2)
    settled(h, RAW, 22)
    flushed(h)
    response = recall(h, since=stamp(T0), until=stamp(T0 + 10), limit=50)
    assert response.success and response.entries
    wait_for(lambda: memory_status(h) is not None)
    status = memory_status(h)
    values = {v.key: v.value for v in status.values}
    assert values["memory_moved_aside"] == str(moved)
    assert status.level == DiagnosticStatus.WARN and str(moved) in status.message


def test_an_unusable_memory_file_is_an_error_and_descriptions_keep_flowing(harness, tmp_path):
    path = tmp_path / "memory.sqlite"
    MemoryStore(path, MemoryConfig(), Embedder()).close()
    newer = sqlite3.connect(path)
    newer.execute("PRAGMA user_version=99")  # written by a newer svlm_ros: refused, never moved
    newer.close()
    h = harness(**memory(tmp_path))
    h.start()
    h.stream(RAW, T0, 2.2)
    settled(h, RAW, 22)
    wait_for(lambda: len(h.descriptions) >= 2)
    response = recall(h, query="cart")
    assert not response.success and str(path) in response.message and "move the file aside" in response.message
    wait_for(lambda: memory_status(h) is not None)
    status = memory_status(h)
    assert status.level == DiagnosticStatus.ERROR
    assert str(path) in status.message
    ask = h.call(Ask, "/svlm/ask", Ask.Request(question="what happened an hour ago?"), timeout=300)
    assert ask.success and "memory is unavailable" in ask.message


def memory_status(h):
    """The newest memory status in the node's /diagnostics, or None before the first."""
    for array in reversed(list(h.diagnostics)):
        for status in array.status:
            if status.name.endswith(": memory"):
                return status
    return None


def test_a_locked_memory_file_is_reported_and_its_entries_are_written_once_released(harness, tmp_path):
    path = tmp_path / "memory.sqlite"
    MemoryStore(path, MemoryConfig(), Embedder()).close()  # the store of an earlier run, summaries and all
    SummaryStore(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        h = harness(**memory(tmp_path), max_queued_windows=8)
        h.start()
        h.stream(RAW, T0, 2.2)
        stats = settled(h, RAW, 22)
        wait_for(lambda: len(h.descriptions) >= 2)  # descriptions flow while the store is locked
        wait_for(lambda: (s := memory_status(h)) is not None and s.level == DiagnosticStatus.ERROR
                 and "is locked by another connection" in s.message, timeout=120)
        assert str(path) in memory_status(h).message
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    flushed(h)
    assert h.node.memory.writer.written == stats.processed_windows and h.node.memory.writer.dropped == 0
    response = recall(h, since=stamp(T0), until=stamp(T0 + 10), limit=50)
    assert response.success and response.entries
    wait_for(lambda: memory_status(h).level == DiagnosticStatus.OK, timeout=120)


class StandInTfBuffer:
    """What the node uses of `tf2_ros.Buffer` (tf2_ros is not on PyPI, so the real one cannot run
    here): the robot drives along x at 1 m/s in `map` until T0 + 3 s, then tf has no transform."""
    lookups = []

    def lookup_transform(self, target_frame, source_frame, time):
        from geometry_msgs.msg import TransformStamped

        seconds = time.nanoseconds * 1e-9
        self.lookups.append((target_frame, source_frame, seconds))
        if seconds > T0 + 3.0:
            raise LookupError("extrapolation into the future")  # tf2 raises its own kinds; the node catches all
        transform = TransformStamped()
        transform.transform.translation.x = seconds - T0
        return transform


def test_pose_from_tf_when_tf2_ros_imports(harness, tmp_path, monkeypatch):
    import types

    tf2_ros = types.ModuleType("tf2_ros")
    tf2_ros.Buffer = StandInTfBuffer
    tf2_ros.TransformListener = lambda buffer, node: ("listening", buffer, node)
    monkeypatch.setitem(__import__("sys").modules, "tf2_ros", tf2_ros)
    StandInTfBuffer.lookups = []
    h = harness(**memory(tmp_path, base_frame="base_link", map_frame="odom", pose_topic="/odom_unused"),
                max_queued_windows=8)
    h.start()
    assert h.node.memory.pose_source == "tf odom <- base_link"  # tf is preferred to the pose topic
    h.stream(RAW, T0, 4.2)
    stats = settled(h, RAW, 42)
    flushed(h)
    assert stats.processed_windows >= 3
    assert {(target, source) for target, source, _ in StandInTfBuffer.lookups} == {("odom", "base_link")}
    ends = [seconds for _, _, seconds in StandInTfBuffer.lookups]
    assert ends == sorted(ends) and all(float(e - T0).is_integer() for e in ends)  # one lookup per window end
    late = sum(1 for seconds in ends if seconds > T0 + 3.0)
    assert late >= 1 and h.node.memory.windows_without_pose == late
    response = recall(h, since=stamp(T0), until=stamp(T0 + 10), limit=50)
    assert response.success, response.message
    for entry in response.entries:  # a row has the pose of its first window's end, or none when tf had none
        start = entry.start.sec + entry.start.nanosec * 1e-9
        if start + 1.0 <= T0 + 3.0:
            assert entry.has_pose and entry.frame_id == "odom"
            assert entry.position.x == pytest.approx(start + 1.0 - T0, abs=1e-6)
        else:
            assert not entry.has_pose
    # Every row, silent ones too, whatever the random-weight model said: windows with a pose are 1 m
    # apart, so each is a row of its own; a window without one (tf had none) either starts a row
    # without a pose or repeats the text before it and extends that row, keeping its pose.
    with closing(sqlite3.connect(tmp_path / "memory.sqlite")) as db:
        rows = db.execute("SELECT start, windows, x FROM entries ORDER BY start").fetchall()
    assert sum(windows for _, windows, _ in rows) == stats.processed_windows
    assert [x is not None for _, _, x in rows] == [start + 1.0 <= T0 + 3.0 for start, _, _ in rows]
    posed = [(start, windows) for start, windows, x in rows if x is not None]
    assert [start for start, _ in posed] == pytest.approx([end - 1.0 for end in ends if end <= T0 + 3.0])
    assert all(windows == 1 for _, windows in posed[:-1])
    assert posed[-1][1] - 1 + sum(windows for _, windows, x in rows if x is None) == late
