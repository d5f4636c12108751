"""The replay's Foxglove annotations, read back by the official readers (`mcap` with `mcap_ros2`'s decoder).

`mcap_ros2` decodes each message through the definition embedded in the bag, as Foxglove does, so
a serialization that disagreed with its embedded definition would fail or misread here. The
embedded definitions must be the current foxglove_msgs (3.4.3, as in foxglove/foxglove-sdk
ros/src/foxglove_msgs/ros2/): the fields below are that interface, in order.
"""
import json
import re
from pathlib import Path

import pytest
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory

from svlm_ros.cli import main as svlm
from svlm_ros.replay.outputs import annotation_topic
from svlm_ros.replay.synth import write_synthetic_bag

FAST = ["--model", "tiny-random", "--device", "cpu", "--set", "frames.min_pixels=3136",
        "--set", "generation.max_new_tokens=4", "--set", "warm_up=false"]

FOXGLOVE_MSGS_3_4 = {
    "foxglove_msgs/ImageAnnotations": [
        ("builtin_interfaces/Time", "timestamp"), ("foxglove_msgs/CircleAnnotation[]", "circles"),
        ("foxglove_msgs/PointsAnnotation[]", "points"), ("foxglove_msgs/TextAnnotation[]", "texts"),
        ("foxglove_msgs/KeyValuePair[]", "metadata")],
    "foxglove_msgs/TextAnnotation": [
        ("builtin_interfaces/Time", "timestamp"), ("foxglove_msgs/Point2", "position"), ("string", "text"),
        ("float64", "font_size"), ("foxglove_msgs/Color", "text_color"),
        ("foxglove_msgs/Color", "background_color"), ("foxglove_msgs/KeyValuePair[]", "metadata")],
    "foxglove_msgs/PointsAnnotation": [
        ("builtin_interfaces/Time", "timestamp"), ("uint8", "type"), ("foxglove_msgs/Point2[]", "points"),
        ("foxglove_msgs/Color", "outline_color"), ("foxglove_msgs/Color[]", "outline_colors"),
        ("foxglove_msgs/Color", "fill_color"), ("float64", "thickness"),
        ("foxglove_msgs/KeyValuePair[]", "metadata")],
    "foxglove_msgs/CircleAnnotation": [
        ("builtin_interfaces/Time", "timestamp"), ("foxglove_msgs/Point2", "position"), ("float64", "diameter"),
        ("float64", "thickness"), ("foxglove_msgs/Color", "fill_color"), ("foxglove_msgs/Color", "outline_color"),
        ("foxglove_msgs/KeyValuePair[]", "metadata")],
    "foxglove_msgs/Point2": [("float64", "x"), ("float64", "y")],
    "foxglove_msgs/Color": [("float64", "r"), ("float64", "g"), ("float64", "b"), ("float64", "a")],
    "foxglove_msgs/KeyValuePair": [("string", "key"), ("string", "value")],
}
POINTS_ANNOTATION_TYPES = {"UNKNOWN": 0, "POINTS": 1, "LINE_LOOP": 2, "LINE_STRIP": 3, "LINE_LIST": 4}


def embedded_definitions(schema_text: str, root: str) -> dict:
    """Each type's (type, name) fields from a ros2msg schema: the root, then `MSG: type` sections."""
    definitions = {}
    for index, section in enumerate(re.split(r"^=+\s*$", schema_text, flags=re.MULTILINE)):
        lines = [line.split("#")[0].strip() for line in section.splitlines()]
        lines = [line for line in lines if line]
        name = root
        if index:
            name = lines.pop(0).removeprefix("MSG: ")
        definitions[name.replace("/msg/", "/")] = [
            tuple(line.split()[:2]) for line in lines if "=" not in line]
    return definitions


def read_annotations(bag: Path):
    """(schema, message, decoded) per annotation message, decoded by the embedded definition."""
    with bag.open("rb") as stream:
        reader = make_reader(stream, decoder_factories=[DecoderFactory()])
        return [(schema, message, decoded) for schema, _, message, decoded
                in reader.iter_decoded_messages(topics=[annotation_topic("/cam0/image_raw")])]


def seconds(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    root = tmp_path_factory.mktemp("foxglove")
    write_synthetic_bag(root / "shapes", 3, "mcap", height=48, width=64, fps=4, seed=1)
    out = root / "run"
    assert svlm(["replay", str(root / "shapes"), "--out", str(out), *FAST]) == 0
    described = [json.loads(line) for line in (out / "descriptions.jsonl").read_text().splitlines()]
    (bag,) = (out / "descriptions_bag").glob("*.mcap")
    return bag, described


def test_embedded_annotation_definitions_are_the_current_foxglove_schema(replayed):
    bag, _ = replayed
    (schema, _, _), *_ = read_annotations(bag)
    assert schema.name == "foxglove_msgs/msg/ImageAnnotations" and schema.encoding == "ros2msg"
    schema_text = schema.data.decode()
    definitions = embedded_definitions(schema_text, "foxglove_msgs/ImageAnnotations")
    for name, fields in FOXGLOVE_MSGS_3_4.items():
        assert definitions.get(name) == fields, name
    for constant, value in POINTS_ANNOTATION_TYPES.items():
        assert re.search(rf"^uint8 {constant}\s*=\s*{value}\s*$", schema_text, flags=re.MULTILINE), constant


def test_annotations_decode_with_the_current_fields(replayed):
    bag, described = replayed
    messages = read_annotations(bag)
    assert len(messages) == len(described) == 3
    for (_, message, annotations), row in zip(messages, described, strict=True):
        assert seconds(annotations.timestamp) == pytest.approx(row["start"], abs=1e-6)
        assert message.log_time == pytest.approx(row["end"] * 1e9, abs=1e3)
        assert {pair.key: pair.value for pair in annotations.metadata} == {
            "window": str(row["index"]), "silent": str(row["silent"]).lower()}
        assert annotations.circles == [] and annotations.points == []
        (text,) = annotations.texts
        assert text.text == ("(silent)" if row["silent"] else row["text"])
        assert seconds(text.timestamp) == pytest.approx(row["start"], abs=1e-6)
        assert text.metadata == []
        assert (text.position.x, text.position.y, text.font_size) == (8.0, 24.0, 18.0)
        assert (text.text_color.r, text.text_color.a, text.background_color.a) == (1.0, 1.0, 0.6)
