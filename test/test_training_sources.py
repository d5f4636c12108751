"""svlm build-dataset's sources: how they are named on the command line, the model they are cut
for, and bags damaged on disk (real bags written by rosbags, damaged for real)."""
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # training/ is a top-level folder beside svlm_ros/
    sys.path.insert(0, str(ROOT))

from test_training import HEIGHT, WIDTH, build  # noqa: E402

from svlm_ros.replay.synth import write_synthetic_bag  # noqa: E402
from training.dataset import parse_sources  # noqa: E402


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("bags") / "shapes"
    write_synthetic_bag(path, 30, height=HEIGHT, width=WIDTH, seed=3)
    return path


def test_an_absent_model_path_is_named_not_a_traceback(bag, tmp_path, capsys):
    from svlm_ros.cli import main as svlm

    code = svlm(["build-dataset", str(bag), "--out", str(tmp_path / "ds"), "--model", str(tmp_path / "StreamingVLM")])
    assert code == 2
    assert f"model path '{tmp_path / 'StreamingVLM'}' does not exist" in capsys.readouterr().err


def test_an_absolute_text_path_is_a_file_not_a_topic(bag, tmp_path, tiny_model):
    labels = tmp_path / "elsewhere" / "x.labels.jsonl"
    labels.parent.mkdir()
    labels.write_text(Path(f"{bag}.reference.jsonl").read_text())
    (source,) = parse_sources([f"{bag}={labels.resolve()}"])
    assert source.text == str(labels.resolve())
    data, report = build(tmp_path / "ds", [source], tiny_model.tokenizer)
    assert len(data) == 2 and not report["skipped"].get("text could not be read")
    # A topic is still a topic, and a text file that is not there is named at once.
    assert parse_sources([f"{bag}=/narration"])[0].text == f"{bag}:/narration"
    with pytest.raises(FileNotFoundError, match="the text file /abs/x.labels.jsonl does not exist"):
        parse_sources([f"{bag}=/abs/x.labels.jsonl"])


# ----- bags damaged on disk ----------------------------------------------------------------------
def mcap_records(data, start=8):
    """(opcode, body offset, body length) of the MCAP records from `start`, up to the footer."""
    import struct

    at = start
    while at < len(data) - 8:
        op, length = data[at], struct.unpack_from("<Q", data, at + 1)[0]
        yield op, at + 9, length
        if op == 0x02:
            return
        at += 9 + length


def chunk_records(data, body):
    """Where an uncompressed chunk's records start in the file, and their length."""
    import struct

    size = struct.unpack_from("<Q", data, body + 16)[0]
    (compression,) = struct.unpack_from("<I", data, body + 28)
    assert compression == 0, "rosbags writes uncompressed chunks unless asked"
    return body + 32 + 8, size


def add_chunk_checksums(mcap):
    """The chunk CRCs `ros2 bag record` writes (the MCAP library's default); rosbags' writer leaves them 0."""
    import struct
    from binascii import crc32

    data = bytearray(mcap.read_bytes())
    for op, body, _ in list(mcap_records(data)):
        if op == 0x06:
            start, size = chunk_records(data, body)
            struct.pack_into("<I", data, body + 24, crc32(data[start:start + size]))
    mcap.write_bytes(bytes(data))


def damaged_copy(bag, tmp_path, name, damage):
    import shutil

    copy = tmp_path / name
    shutil.copytree(bag, copy)
    shutil.copy(f"{bag}.reference.jsonl", f"{copy}.reference.jsonl")
    (mcap,) = copy.glob("*.mcap")
    data = bytearray(mcap.read_bytes())
    damage(mcap, data)
    return copy


def overwrite(data, at, size=4096):
    data[at:at + size] = np.random.default_rng(0).bytes(size)


def test_a_bag_with_checksums_damaged_mid_file_is_read_up_to_the_damage_and_reported(bag, tmp_path, tiny_model):
    def damage(mcap, data):
        add_chunk_checksums(mcap)
        data[:] = mcap.read_bytes()
        overwrite(data, len(data) // 2)
        mcap.write_bytes(bytes(data))

    damaged = damaged_copy(bag, tmp_path, "checked", damage)
    data, report = build(tmp_path / "ds", parse_sources([str(damaged)]), tiny_model.tokenizer)
    (example,) = report["skipped"]["bags damaged on disk (read up to the damage)"]["examples"]
    assert "ReaderError: Chunk checksum mismatch" in example and "mcap recover" in example
    stopped = float(example.split("reading stopped ")[1].split(" s")[0])
    assert 0 < stopped < 30 and len(data) >= 1
    assert all(m["end_s"] <= stopped + 1 for m in data.all_metadata())  # nothing cut from past the damage


def test_a_bag_without_checksums_damaged_inside_a_chunk_reports_the_lost_messages(bag, tmp_path, tiny_model):
    def damage(mcap, data):
        chunks = [body for op, body, _ in mcap_records(data) if op == 0x06]
        start, size = chunk_records(data, chunks[len(chunks) // 2])
        messages = [start + offset for op, offset, _ in mcap_records(data[start:start + size], 0) if op == 0x05]
        overwrite(data, messages[len(messages) // 2])  # from a message record's header on
        mcap.write_bytes(bytes(data))

    damaged = damaged_copy(bag, tmp_path, "unchecked", damage)
    _, report = build(tmp_path / "ds", parse_sources([str(damaged)]), tiny_model.tokenizer)
    lost = report["skipped"]["camera messages the bag's index lists but its chunks no longer hold"]
    assert lost["count"] > 0 and "/cam0/image_raw" in lost["examples"][0]


def test_a_truncated_mcap_is_refused_with_how_to_repair_it(bag, tmp_path, tiny_model):
    def damage(mcap, data):
        mcap.write_bytes(bytes(data[:len(data) * 2 // 3]))

    damaged = damaged_copy(bag, tmp_path, "cut", damage)
    data, report = build(tmp_path / "ds", parse_sources([str(damaged)]), tiny_model.tokenizer)
    (example,) = report["skipped"]["source could not be opened"]["examples"]
    assert len(data) == 0 and "is cut short (no MCAP footer" in example and "mcap recover FILE -o FIXED.mcap" in example
