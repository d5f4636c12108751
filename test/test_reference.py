"""Timed text (sources/timed_text.py, a replay's reference): JSONL segments and words, WebVTT, SRT,
and text topics in a rosbag."""
import json

import pytest
from rosbags.rosbag2 import StoragePlugin, Writer

from svlm_ros.sources.messages import DESCRIPTION, typestore
from svlm_ros.sources.stamps import split_seconds
from svlm_ros.sources.timed_text import RefSegment, is_absolute
from svlm_ros.sources.timed_text import load_timed_text as load_reference


def test_jsonl_segments_and_words(tmp_path):
    path = tmp_path / "ref.jsonl"
    path.write_text("\n".join([
        json.dumps({"start": 1.0, "end": 2.0, "text": " A red circle appears. ", "camera": "/cam0/image_raw"}),
        "",
        json.dumps({"word": "hello", "start": 0.2, "end": 0.5}),
        json.dumps({"text": "world", "start": 0.5, "end": 0.9}),
    ]) + "\n")
    assert load_reference(str(path)) == [
        RefSegment(0.2, 0.5, "hello"), RefSegment(0.5, 0.9, "world"),
        RefSegment(1.0, 2.0, "A red circle appears.", "/cam0/image_raw")]
    assert not is_absolute(load_reference(str(path)))


def test_jsonl_errors_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"start": 0, "end": 1, "text": "ok"}) + "\n" + json.dumps({"start": 0}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected an object with start, end and text"):
        load_reference(str(path))
    path.write_text(json.dumps({"start": 2, "end": 1, "text": "x"}) + "\n")
    with pytest.raises(ValueError, match="end 1.0 is before start 2.0"):
        load_reference(str(path))
    path.write_text(json.dumps({"start": 1, "end": 2, "text": "x"}) + "\n"
                    + json.dumps({"start": 1.7e9, "end": 1.7e9 + 1, "text": "y"}) + "\n")
    with pytest.raises(ValueError, match="mixes absolute times"):
        load_reference(str(path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_reference(str(tmp_path / "nothing.jsonl"))
    (tmp_path / "ref.txt").write_text("hi")
    with pytest.raises(ValueError, match="unknown format"):
        load_reference(str(tmp_path / "ref.txt"))


def test_webvtt(tmp_path):
    path = tmp_path / "ref.vtt"
    path.write_text("WEBVTT\n\nNOTE a comment\n\ncue-1\n00:00:01.000 --> 00:00:02.500 align:start\n"
                    "<v Narrator>A <i>red</i> circle</v>\nappears.\n\n01:02.000 --> 01:03.250\nIt leaves.\n\n"
                    "00:00:04.000 --> 00:00:05.000\n\n")
    assert load_reference(str(path)) == [RefSegment(1.0, 2.5, "A red circle appears."),
                                         RefSegment(62.0, 63.25, "It leaves.")]
    bad = tmp_path / "bad.vtt"
    bad.write_text("1\n00:00:01,000 --> 00:00:02,000\nx\n")
    with pytest.raises(ValueError, match="must start with 'WEBVTT'"):
        load_reference(str(bad))


def test_srt(tmp_path):
    path = tmp_path / "ref.srt"
    path.write_text("1\r\n00:00:01,000 --> 00:00:02,000\r\n<i>A red</i> circle\r\n\r\n"
                    "2\r\n01:00:00,500 --> 01:00:01,000\r\nIt stops.\r\n")
    assert load_reference(str(path)) == [RefSegment(1.0, 2.0, "A red circle"), RefSegment(3600.5, 3601.0, "It stops.")]


T0 = 1_763_740_800


def _time(store, seconds):
    sec, nanosec = split_seconds(seconds)
    return store.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)


def write_bag(path):
    store = typestore()
    types = store.types
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        text = writer.add_connection("/speech", "std_msgs/msg/String", typestore=store)
        described = writer.add_connection("/svlm/description", DESCRIPTION, typestore=store)
        for k, words in enumerate(["a red circle", "", "it leaves"]):
            writer.write(text, int((T0 + k + 0.5) * 1e9),
                         store.serialize_cdr(types["std_msgs/msg/String"](data=words), "std_msgs/msg/String"))
            msg = types[DESCRIPTION](
                header=types["std_msgs/msg/Header"](stamp=_time(store, T0 + k + 1), frame_id="cam"),
                window_start=_time(store, T0 + k), window_end=_time(store, T0 + k + 1), camera="/cam0/image_raw",
                text=words, silent=not words, index=k, latency=0.1, generated_tokens=3, cache_tokens=10)
            writer.write(described, int((T0 + k + 1) * 1e9), store.serialize_cdr(msg, DESCRIPTION))


def test_bag_topics(tmp_path):
    bag = tmp_path / "ref_bag"
    write_bag(bag)
    speech = load_reference(f"{bag}:/speech")
    assert speech == [RefSegment(T0 + 0.5, T0 + 0.5, "a red circle"), RefSegment(T0 + 2.5, T0 + 2.5, "it leaves")]
    assert is_absolute(speech)
    described = load_reference(f"{bag}:/svlm/description")
    assert described == [RefSegment(T0, T0 + 1, "a red circle", "/cam0/image_raw"),
                         RefSegment(T0 + 2, T0 + 3, "it leaves", "/cam0/image_raw")]
    with pytest.raises(ValueError, match=r"has no topic /nope; its topics: /speech \(std_msgs/msg/String\), "
                                         r"/svlm/description \(svlm_ros/msg/Description\)"):
        load_reference(f"{bag}:/nope")
    with pytest.raises(FileNotFoundError, match="reference bag .* does not exist"):
        load_reference(f"{tmp_path / 'missing'}:/speech")
    with pytest.raises(ValueError, match="is a directory"):
        load_reference(str(bag))
    broken = tmp_path / "broken.mcap"  # opened by sources.bags.open_bag, as replay and training open bags
    broken.write_bytes(b"\x89MCAP0\r\n cut short")
    with pytest.raises(ValueError, match=r"cannot open .*broken.mcap as a rosbag2 .* is cut short"):
        load_reference(f"{broken}:/speech")
