"""Store faults under a running node, over real rclpy (Hardening II): no store error ends the node
or the descriptions; the memory reports ERROR with the file and what to do, and resumes."""
import math
import os
import subprocess
import sys

from diagnostic_msgs.msg import DiagnosticStatus

from svlm_ros.config import MemoryConfig
from svlm_ros.memory.records import Entry, Pose
from svlm_ros.memory.store import MemoryStore
from svlm_ros.srv import Ask

from test_memory_faults import HOLDER, overwrite_pages
from test_memory_node import T0, flushed, memory, memory_status, recall
from test_node import RAW, harness, settled, stamp, wait_for  # noqa: F401 - the fixture is used by name


def error_status(h, words):
    """Waits for a memory ERROR in /diagnostics holding `words`."""
    wait_for(lambda: (s := memory_status(h)) is not None and s.level == DiagnosticStatus.ERROR and words in s.message,
             timeout=120)
    return memory_status(h)


def test_random_bytes_over_the_live_store_are_answered_reported_and_a_new_store_started(harness, tmp_path):
    path = tmp_path / "memory.sqlite"
    h = harness(**memory(tmp_path), max_queued_windows=8)
    h.start()
    h.stream(RAW, T0, 3.2)
    settled(h, RAW, 32)
    flushed(h)
    overwrite_pages(path)  # dd if=/dev/urandom of=DB bs=4096 seek=1 count=30 conv=notrunc
    response = recall(h, since=stamp(T0), until=stamp(T0 + 10), limit=50)
    assert not response.success and str(path) in response.message and "corrupt" in response.message
    assert "move it aside" in response.message
    ask = h.call(Ask, "/svlm/ask", Ask.Request(question="what happened an hour ago?"), timeout=300)
    assert ask.success  # the executor is alive: answered from the live stream
    writer = h.node.memory.writer
    wait_for(lambda: writer.generation == 1, timeout=120)  # the writer moved the file aside
    status = error_status(h, "moved it aside")
    assert str(path) in status.message and writer.moved_aside.exists()
    described = len(h.descriptions)
    h.stream(RAW, T0 + 10, 2.2)
    settled(h, RAW, 54)
    wait_for(lambda: len(h.descriptions) >= described + 2)  # the descriptions go on
    flushed(h)
    response = recall(h, since=stamp(T0 + 10), until=stamp(T0 + 20), limit=50)
    assert response.success and response.entries  # remembered again, in the new file


def test_a_store_truncated_under_the_node_is_reported_and_memory_resumes(harness, tmp_path):
    path = tmp_path / "memory.sqlite"
    h = harness(**memory(tmp_path), max_queued_windows=8)
    h.start()
    h.stream(RAW, T0, 2.2)
    settled(h, RAW, 22)
    flushed(h)
    os.truncate(path, 0)  # truncate -s 0 DB
    h.stream(RAW, T0 + 10, 2.2)
    settled(h, RAW, 44)
    flushed(h)
    status = error_status(h, "truncated")
    assert str(path) in status.message and "a new store started" in status.message
    response = recall(h, since=stamp(T0 + 10), until=stamp(T0 + 20), limit=50)
    assert response.success and response.entries
    assert h.node.memory.writer.lost == 0


def test_a_second_node_on_the_same_file_is_refused_with_the_holder_and_describes_on(harness, tmp_path):
    path = tmp_path / "memory.sqlite"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # another node writes this file
        h = harness(**memory(tmp_path))
        h.start()
        problem = h.node.memory.problem()
        assert f"pid {holder.pid}: svlm node /robot1/svlm" in problem and "set memory.path" in problem
        h.stream(RAW, T0, 2.2)
        settled(h, RAW, 22)
        wait_for(lambda: len(h.descriptions) >= 2)
        response = recall(h, query="cart")
        assert not response.success and f"pid {holder.pid}" in response.message
    finally:
        holder.kill()
        holder.wait()


def test_a_node_store_is_per_node_by_default(harness, tmp_path, monkeypatch):
    monkeypatch.setenv("ROS_HOME", str(tmp_path))
    h = harness(**{k: v for k, v in memory(tmp_path).items() if k != "memory.path"})
    h.start()
    assert h.node.memory.path == tmp_path / "svlm" / h.node.get_fully_qualified_name().strip("/") / "memory.sqlite"


def test_a_place_with_nan_is_refused(harness, tmp_path):
    path = tmp_path / "memory.sqlite"
    store = MemoryStore(path, MemoryConfig())
    store.add([Entry(RAW, T0, T0 + 1, "a red cart", False, Pose(1.0, 2.0))])
    store.close()
    h = harness(**memory(tmp_path))
    h.start()
    for x, radius in ((math.nan, 1.0), (1.0, math.inf)):
        response = recall(h, use_place=True, x=x, y=2.0, radius=radius)
        assert not response.success and "finite" in response.message


def test_an_unwritable_store_is_one_complete_error_with_advice_that_fits(harness, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the store's folder should be")
    values = memory(tmp_path)
    values["memory.path"] = str(blocker / "memory.sqlite")
    h = harness(**values)
    h.start()
    status = error_status(h, "cannot be written")
    assert str(blocker) in status.message and status.message.endswith("set memory.path to a writable place")
    assert status.message == h.node.memory.problem()


def test_close_stops_the_embedding_child_and_counts_what_it_could_not_write(harness, tmp_path):
    h = harness(**memory(tmp_path), max_queued_windows=8)
    h.start()
    h.stream(RAW, T0, 2.2)
    settled(h, RAW, 22)
    flushed(h)  # the embedding child has started and embedded
    node_memory = h.node.memory
    child = node_memory._embedder._process
    assert child is not None and child.is_alive()
    assert node_memory.close(30.0) == 0
    assert not child.is_alive() and node_memory.writer is None
    assert node_memory.close() == 0  # closing again is harmless
