"""One frame intake (issue 23): a quirky bag is seen the same way by the node, a replay and the
dataset builder. The bag has zero stamps, repeated stamps, a one-frame clock glitch back, corrupt
JPEGs, a resolution change and a jump back in time that goes on; each path's counters and windows
must be the others'."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # training/ is a top-level folder beside svlm_ros/
    sys.path.insert(0, str(ROOT))

from test_node import harness, settled, wait_for  # noqa: E402,F401 - the fixture is used by name

from svlm_ros.cli import main as svlm  # noqa: E402
from svlm_ros.config import EngineConfig, NodeConfig  # noqa: E402
from svlm_ros.cameras.scheduler import Scheduler  # noqa: E402
from svlm_ros.replay.synth import START_NS, image_message  # noqa: E402
from svlm_ros.sources.messages import typestore  # noqa: E402
from svlm_ros.synthetic import moving_shapes  # noqa: E402
from training.config import DatasetConfig  # noqa: E402
from training.dataset import DatasetBuilder, parse_sources  # noqa: E402

TOPIC = "/quirky/image_raw/compressed"
COUNTERS = ("frames", "late_frames", "bad_frames", "bad_frames_by_cause", "restarts", "forward_jumps",
            "unconverted_frames", "zero_stamps", "repeated_stamps", "resolution_changes", "empty_windows")
MIN_PIXELS = 3136


def quirky_frames():
    """(log time s, header stamp s, frame or b"corrupt") at 10 Hz of log time, with every quirk."""
    frames, log = [], 0.0
    base = START_NS / 1e9

    def add(stamp, size=(48, 64), corrupt=False):
        nonlocal log
        frames.append((log, stamp, b"corrupt" if corrupt else moving_shapes(stamp - base, *size)))
        log += 0.1

    for k in range(15):  # 0.0-1.4 s: normal
        add(base + k / 10)
    add(0.0)  # the driver forgot the stamp, twice
    add(0.0)
    for k in range(15, 20):
        add(base + k / 10)
    for _ in range(4):  # 1.9 s four more times: a driver that does not stamp each frame
        add(base + 1.9)
    add(base - 100.0)  # one frame from a glitched clock: dropped, the stream keeps its context
    for k in range(20, 30):
        add(base + k / 10, corrupt=k in (24, 25, 26))  # corrupt JPEGs around 2.5 s, some sampled
    for k in range(30, 50):  # 3.0-4.9 s: the camera's resolution changes
        add(base + k / 10, size=(64, 96))
    for k in range(30):  # back to 1.0 s and on for 3 s: a looping bag, a fresh stream
        add(base + 1.0 + k / 10, size=(64, 96))
    return frames


def write_quirky_bag(path: Path) -> None:
    store = typestore()
    msgtype = "sensor_msgs/msg/CompressedImage"
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection(TOPIC, msgtype, typestore=store)
        for log_s, stamp, frame in quirky_frames():
            stamp_ns = int(round(stamp * 1e9))
            if isinstance(frame, bytes):
                msg = image_message(store, np.zeros((48, 64, 3), np.uint8), stamp_ns, "cam", True)
                msg.data = np.frombuffer(frame, np.uint8)
            else:
                msg = image_message(store, frame, stamp_ns, "cam", True)
            writer.write(connection, START_NS + int(round(log_s * 1e9)), store.serialize_cdr(msg, msgtype))
    (path.parent / f"{path.name}.reference.jsonl").write_text("".join(
        json.dumps({"start": float(s), "end": float(s + 1), "text": f"second {s}"}) + "\n" for s in range(8)))


def counters(stats) -> dict:
    values = stats.as_dict() if hasattr(stats, "as_dict") else stats
    return {name: values[name] for name in COUNTERS}


@pytest.fixture(scope="module")
def quirky_bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("quirky") / "quirky"
    write_quirky_bag(path)
    return path


def replay(quirky_bag, out, monkeypatch):
    """The replay's counters (its scheduler's cameras) and the windows it described."""
    made = []
    original = Scheduler.__init__

    def keep(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(Scheduler, "__init__", keep)
    assert svlm(["replay", str(quirky_bag), "--out", str(out), "--model", "tiny-random", "--device", "cpu",
                 "--set", f"frames.min_pixels={MIN_PIXELS}", "--set", "generation.max_new_tokens=2",
                 "--set", "warm_up=false"]) == 0
    records = [json.loads(line) for line in (out / "descriptions.jsonl").read_text().splitlines()]
    return counters(made[0].cameras[TOPIC].stats), [(r["index"], round(r["start"], 3)) for r in records]


def build(quirky_bag, out, tokenizer):
    """The builder's counters (report.json) and the seconds of the stream before the jump back."""
    engine = EngineConfig()
    engine.frames.min_pixels = MIN_PIXELS
    sources = parse_sources([str(quirky_bag)])
    builder = DatasetBuilder(out, DatasetConfig(window_seconds=2, stride_seconds=1, min_window_seconds=1,
                                                keep_silent_windows=True, max_missing_fraction=0.9),
                             engine, NodeConfig(), tokenizer)
    for source in sources:
        builder.add(source)
    builder.finish(sources)
    report = json.loads((out / "report.json").read_text())
    return counters(report["sources"][str(quirky_bag)]["cameras"][TOPIC]), report


def test_a_quirky_bag_is_seen_the_same_way_by_the_node_a_replay_and_the_dataset_builder(
        quirky_bag, tmp_path, monkeypatch, harness, tiny_model):
    replayed, windows = replay(quirky_bag, tmp_path / "run", monkeypatch)
    # Every quirk happened (so the comparison below compares something).
    assert replayed["zero_stamps"] == 2 and replayed["repeated_stamps"] == 4 and replayed["restarts"] == 1
    assert replayed["late_frames"] == 1 and replayed["resolution_changes"] == 1
    assert replayed["bad_frames"] >= 1 and set(replayed["bad_frames_by_cause"]) == {"corrupt_compressed"}
    assert replayed["unconverted_frames"] > 0
    base = START_NS / 1e9
    assert [index for index, _ in windows] == [0, 1, 2, 3, 4, 0, 1, 2]  # a fresh stream after the jump back
    assert [round(start - base, 3) for _, start in windows] == [0.0, 1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0]

    built, report = build(quirky_bag, tmp_path / "dataset", tiny_model.tokenizer)
    assert built == replayed
    assert report["skipped"]["frames with header.stamp = 0 (the driver sets no stamp; dropped)"]["count"] == 2
    assert report["skipped"]["seconds after a jump back in time"]["count"] == 1
    assert report["skipped"]["unreadable frames"]["count"] == replayed["bad_frames"]

    from svlm_ros.sources.bags import open_bag, read_lazily

    h = harness(image_topics=[TOPIC], reliable_qos=True, max_queued_windows=16,
                **{"frames.min_pixels": MIN_PIXELS, "generation.max_new_tokens": 2})
    h.start()
    h.publisher(TOPIC, reliable=True)
    probes = counters(h.stats(TOPIC))  # the harness's zero-stamp probe frames, counted before the bag
    reader = open_bag(quirky_bag)
    sent = 0
    for message in read_lazily(reader, [TOPIC]):
        h.publishers[TOPIC].publish(bytes(message.raw))  # the bag's own bytes, as a camera driver sends them
        sent += 1
        if sent % 8 == 0:  # within the publisher's history (10): no reliable frame is lost
            wait_for(lambda: h.stats(TOPIC).frames >= probes["frames"] + sent)
    reader.close()
    settled(h, TOPIC, probes["frames"] + sent)
    live = counters(h.stats(TOPIC))
    live["frames"] -= probes["frames"]
    live["zero_stamps"] -= probes["zero_stamps"]
    # The node never flushes its open window (a camera does not end), so the last window is not
    # described; everything else is the replay's.
    assert live == replayed
    wait_for(lambda: len(h.descriptions) == len(windows) - 1)
    described = [(m.index, round(m.window_start.sec + m.window_start.nanosec * 1e-9 - base, 3))
                 for m in h.descriptions]
    assert described == [(index, round(start - base, 3)) for index, start in windows[:-1]]
