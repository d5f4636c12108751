"""svlm_ros/sources: headers peeked from serialized bytes, stamps, the names around a recording,
process memory, `--set`, and the import graph (sources below everything; training above no replay
or node code)."""
import io
import subprocess
import sys
from pathlib import Path

import pytest

from svlm_ros import process
from svlm_ros.params import parse_assignments
from svlm_ros.replay.evaluate import bag_name_of
from svlm_ros.replay.synth import write_synthetic_bag
from svlm_ros.sources import bags
from svlm_ros.sources.images import BadImage
from svlm_ros.sources.stamps import split_seconds, to_seconds


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    made = {"raw": root / "raw", "compressed": root / "compressed", "ros1": root / "shapes.bag"}
    write_synthetic_bag(made["raw"], 2, "mcap", height=24, width=32, fps=5, seed=1)
    write_synthetic_bag(made["compressed"], 2, "sqlite3", compressed=True, cameras=2, height=24, width=32, fps=5)
    write_synthetic_bag(made["ros1"], 2, "ros1", compressed=True, height=24, width=32, fps=5)
    return made


@pytest.mark.parametrize("kind", ["raw", "compressed", "ros1"])
def test_the_peeked_header_is_the_deserialized_one(recorded, kind):
    reader = bags.open_bag(recorded[kind])
    try:
        messages = list(bags.read_lazily(reader, bags.image_topics(reader, [])))
        assert len(messages) == 10 * (2 if kind == "compressed" else 1)
        for message in messages:
            msg = message.load()
            assert message.header() == (to_seconds(msg.header.stamp), msg.header.frame_id)
            assert message.header()[1].endswith("_optical_frame")
    finally:
        reader.close()


def test_a_ros1_bag_recorded_with_ros1_headers_is_peeked_past_their_seq(tmp_path):
    """ROS 1's std_msgs/Header starts with uint32 seq (synth-bag's ROS 1 bags, from ROS 2 types, have none)."""
    import numpy as np
    from rosbags.rosbag1 import Writer
    from rosbags.typesys import Stores, get_typestore

    store, kind = get_typestore(Stores.ROS1_NOETIC), "sensor_msgs/msg/CompressedImage"
    types = store.types
    with Writer(tmp_path / "noetic.bag") as writer:
        connection = writer.add_connection("/cam/image/compressed", kind, typestore=store)
        for n in range(3):
            header = types["std_msgs/msg/Header"](seq=n + 5, frame_id="cam_link", stamp=types[
                "builtin_interfaces/msg/Time"](sec=1_000 + n, nanosec=250_000_000))
            msg = types[kind](header=header, format="jpeg", data=np.zeros(3, np.uint8))
            writer.write(connection, (1_000 + n) * 10**9, store.serialize_ros1(msg, kind))
    reader = bags.open_bag(tmp_path / "noetic.bag")
    try:
        peeked = [m.header() for m in bags.read_lazily(reader, bags.image_topics(reader, []))]
    finally:
        reader.close()
    assert peeked == [(1_000.25, "cam_link"), (1_001.25, "cam_link"), (1_002.25, "cam_link")]


def test_bytes_that_hold_no_message_are_bad_frames_with_a_cause(recorded):
    with pytest.raises(BadImage, match="too short to hold a header") as short:
        bags.peek_header(b"\x00\x01\x00\x00" + b"\x00" * 8)
    assert short.value.cause == "malformed_raw"
    with pytest.raises(BadImage, match="too short"):
        bags.peek_ros1_header(b"\x00" * 15, with_seq=True)
    reader = bags.open_bag(recorded["raw"])
    try:
        message = next(bags.read_lazily(reader, bags.image_topics(reader, [])))
        message.raw = message.raw[:40]  # the header survives, the pixels do not
        assert message.header()[1] == "cam0_optical_frame"
        with pytest.raises(BadImage, match="cannot deserialize the sensor_msgs/msg/Image message") as torn:
            message.load()
        assert torn.value.cause == "malformed_raw"
    finally:
        reader.close()


def test_stamps_split_into_whole_seconds_and_nanoseconds():
    assert split_seconds(1.5) == (1, 500_000_000)
    assert split_seconds(-0.25) == (-1, 750_000_000)
    assert split_seconds(1_763_740_800.0) == (1_763_740_800, 0)
    # a fraction that rounds to a whole second carries into sec instead of dropping a second
    assert split_seconds(5.9999999999) == (6, 0)
    sec, nanosec = split_seconds(1_763_740_800.123456)
    assert sec == 1_763_740_800 and abs(nanosec - 123_456_000) < 1_000


def test_the_names_around_a_recording(tmp_path):
    bag_dir, bag_file, ros1, video = (tmp_path / name for name in ("shapes", "day.mcap", "old.bag", "a.mp4"))
    assert [bags.run_name(p) for p in (bag_dir, bag_file, ros1, video)] == ["shapes", "day", "old", "a"]
    assert bags.sidecar(bag_dir, bags.REFERENCE_SIDECAR) == tmp_path / "shapes.reference.jsonl"
    assert bags.sidecar(bag_file, bags.LABELS_SIDECAR) == tmp_path / "day.labels.jsonl"
    assert bags.sidecar(video, ".srt") == tmp_path / "a.srt"
    assert bags.find_sidecar(bag_file) is None
    (tmp_path / "day.vtt").write_text("WEBVTT\n")
    assert bags.find_sidecar(bag_file) == tmp_path / "day.vtt"
    (tmp_path / "day.labels.jsonl").write_text("")
    assert bags.find_sidecar(bag_file) == tmp_path / "day.labels.jsonl"  # SIDECARS' order
    assert bags.is_sidecar(tmp_path / "day.labels.jsonl") and not bags.is_sidecar(bag_file)
    # A run's bag name comes from its path alone: the same for a run whose bag has since moved.
    for bag in (bag_dir, bag_file, ros1):
        run = tmp_path / f"run_{bag.name}"
        run.mkdir()
        (run / "run.json").write_text(f'{{"bag": "{bag}"}}')
        assert bag_name_of(run) == bags.run_name(bag)


def test_open_bag_names_what_is_wrong(tmp_path):
    with pytest.raises(bags.BagError, match="does not exist"):
        bags.open_bag(tmp_path / "missing")
    broken = tmp_path / "broken.bag"
    broken.write_text("not a bag")
    with pytest.raises(bags.BagError, match="cannot open .*broken.bag as a rosbag2"):
        bags.open_bag(broken)


def test_rss_counts_pages_of_the_kernels_size(monkeypatch):
    assert process.rss_bytes() > 0
    monkeypatch.setattr(process, "open", lambda path: io.StringIO("9000 25 10 1 0 200 0\n"), raising=False)
    monkeypatch.setattr(process.os, "sysconf", lambda name: 65536 if name == "SC_PAGE_SIZE" else 0)
    assert process.rss_bytes() == 25 * 65536  # a 64K-page ARM kernel: not 25 * 4096


def test_set_assignments_are_parsed_in_one_place():
    assert parse_assignments(["a.b=12", "c=true", "d=[x, y]", "e= text ", "f="]) == \
        {"a.b": 12, "c": True, "d": ["x", "y"], "e": "text", "f": ""}
    assert parse_assignments(["max_steps="], empty=None) == {"max_steps": None}
    for bad in ("novalue", "=3"):
        with pytest.raises(ValueError, match=r"--set expects NAME=VALUE \(e.g. max_steps=10\)"):
            parse_assignments([bad], example="max_steps=10")


def test_imports_run_one_way():
    """sources imports nothing above it (nor ROS); training imports neither replay nor the node; replay,
    the cameras' core and the memory import no part of the node and no rclpy."""
    script = """
import pkgutil, sys
import svlm_ros.sources
for module in pkgutil.iter_modules(svlm_ros.sources.__path__):
    __import__(f"svlm_ros.sources.{module.name}")
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("rclpy", "builtin_interfaces", "training")
             or m.startswith(("svlm_ros.replay", "svlm_ros.node", "svlm_ros.memory")))
assert not bad, f"sources imported {bad}"
import training.build_dataset, training.dataset, training.label, training.samples, training.train
bad = sorted(m for m in sys.modules if m.split(".")[0] == "rclpy" or m.startswith(("svlm_ros.replay", "svlm_ros.node")))
assert not bad, f"training imported {bad}"
import svlm_ros.cameras, svlm_ros.memory, svlm_ros.replay
for package in (svlm_ros.cameras, svlm_ros.memory, svlm_ros.replay):
    for module in pkgutil.iter_modules(package.__path__):
        __import__(f"{package.__name__}.{module.name}")
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("rclpy", "rcl_interfaces") or m.startswith("svlm_ros.node"))
assert not bad, f"replay, cameras or memory imported {bad}"
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr


def test_a_frame_is_counted_once_its_window_is_ready():
    """Counting a frame before its conversion let a waiter on the count find the window it closed not
    yet queued (test_node's `settled` saw 3 windows of 4 on a loaded machine): the count comes last."""
    import threading

    import numpy as np

    from svlm_ros.config import FrameConfig
    from svlm_ros.sources.intake import FrameIntake

    frames = FrameConfig()
    intake = FrameIntake(frames, restart_after_s=5.0, jump_confirm_s=1.0)
    step = 1.0 / frames.fps
    for k in range(frames.frames_per_window):  # the first window, every frame converted
        intake.feed_lazy(100.0 + k * step, lambda: None, convert=lambda _: np.zeros((8, 8, 3), np.uint8))
    assert intake.stats.frames == frames.frames_per_window and intake.windows == []
    converting, finish = threading.Event(), threading.Event()

    def slow_convert(_):
        converting.set()
        assert finish.wait(30)
        return np.zeros((8, 8, 3), np.uint8)

    closing = threading.Thread(target=intake.feed_lazy,
                               args=(100.0 + frames.window_seconds, lambda: None, slow_convert))
    closing.start()
    try:
        assert converting.wait(30)
        assert intake.stats.frames == frames.frames_per_window  # in hand, not yet counted
    finally:
        finish.set()
        closing.join(30)
    assert intake.stats.frames == frames.frames_per_window + 1 and len(intake.windows) == 1
