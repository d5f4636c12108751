"""Bags: opening them, their topics, the names around a recording, and reading cameras lazily.

rosbag2 (mcap or sqlite3; a bag directory or its single storage file) and ROS 1 bags are read
through `rosbags.highlevel.AnyReader`, one message at a time in log-time order, with errors a
user can act on (the topics a bag does have, how to recover a truncated MCAP).

Names. A recording is a bag (`BAG_SUFFIXES`, or a rosbag2 directory) or a video file
(`videos.VIDEO_SUFFIXES`). Its *stem* is its path without that suffix, and the files beside it
are the stem plus a sidecar suffix (`SIDECARS`: `shapes.reference.jsonl` for the bag `shapes/`
or `shapes.mcap`). A run of it (a replay's output folder, a fleet summary's row) is named by the
stem's last part, worked out from the name alone, so a run still finds its reference after
the bag has moved.

Lazy reading. `read_lazily` yields each camera message still serialized: `header()` peeks
header.stamp and frame_id from the bytes (CDR for rosbag2; for a ROS 1 bag, the layout of the
Header its own message definitions give, with or without `seq`), and `load()` deserializes it,
so a path that samples 2 frames a second from a 30-Hz camera deserializes one message in
fifteen, as the node does with its raw subscriptions.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from rosbags.highlevel import AnyReader

from .images import BadImage
from .messages import typestore
from .videos import VIDEO_SUFFIXES

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
MCAP_SUFFIX, SQLITE_SUFFIX, ROS1_SUFFIX = ".mcap", ".db3", ".bag"
STORAGE_SUFFIXES = (MCAP_SUFFIX, SQLITE_SUFFIX)  # rosbag2 storage files: they make a directory a bag
BAG_SUFFIXES = STORAGE_SUFFIXES + (ROS1_SUFFIX,)
MCAP_MAGIC = b"\x89MCAP0\r\n"  # at both ends of a complete MCAP file

# The files beside a recording. SIDECARS is the order a recording's text is looked for.
REFERENCE_SIDECAR = ".reference.jsonl"  # what `svlm synth-bag` writes, and `svlm eval` reads by default
REFERENCE_VTT_SIDECAR = ".reference.vtt"
LABELS_SIDECAR = ".labels.jsonl"  # what `svlm label` writes
# synth-bag's per-second truth (replay/grounded.py), read by `svlm eval`: not text, so not in
# SIDECARS; its name ends in .jsonl, so is_sidecar() still tells it from a bag
TRUTH_SIDECAR = ".truth.jsonl"
SIDECARS = (REFERENCE_SIDECAR, LABELS_SIDECAR, ".jsonl", REFERENCE_VTT_SIDECAR, ".vtt", ".srt")


class BagError(ValueError):
    """A bag that cannot be read, with the reason and what the bag has."""


# ----- names -------------------------------------------------------------------------------------
def is_bag_directory(path: Path) -> bool:
    return path.is_dir() and ((path / "metadata.yaml").exists() or
                              any(p.suffix in STORAGE_SUFFIXES for p in path.iterdir()))


def is_bag(path: Path) -> bool:
    """A rosbag2 directory or a bag file (by its suffix)."""
    return is_bag_directory(path) or (path.is_file() and path.suffix in BAG_SUFFIXES)


def recording_stem(path: Path) -> Path:
    """The recording's path without its bag or video suffix: what its sidecars are named after."""
    path = Path(path)
    return path.with_suffix("") if path.suffix in BAG_SUFFIXES + VIDEO_SUFFIXES else path


def sidecar(path: Path, suffix: str) -> Path:
    """The file `suffix` (one of SIDECARS) beside the recording at `path`."""
    return Path(f"{recording_stem(path)}{suffix}")


def find_sidecar(path: Path) -> Optional[Path]:
    """The first of SIDECARS that exists beside the recording, or None."""
    for suffix in SIDECARS:
        candidate = sidecar(path, suffix)
        if candidate.is_file():
            return candidate
    return None


def is_sidecar(path: Path) -> bool:
    return Path(path).name.endswith(SIDECARS)


def run_name(path: Path) -> str:
    """A recording's name in run folders and summaries: its stem's last part (`shapes` for
    `bags/shapes.mcap` and `bags/shapes/`), from the path alone, so it is the same before and
    after the bag has moved."""
    return recording_stem(Path(path)).name


# ----- opening -----------------------------------------------------------------------------------
def open_bag(path: Path) -> AnyReader:
    """An open reader of the bag, or BagError saying why not (and how to repair a truncated MCAP)."""
    path = Path(path)
    if not path.exists():
        raise BagError(f"{path} does not exist")
    reader = AnyReader([path], default_typestore=typestore())
    try:
        reader.open()
    except Exception as error:  # rosbags raises several types for unreadable bags
        cut = truncated_mcaps(path)
        hint = f" {mcap_repair_hint(cut)}" if cut else ""
        raise BagError(f"cannot open {path} as a rosbag2 (mcap, sqlite3) or ROS 1 bag: "
                       f"{str(error).rstrip('.')}.{hint}") from error
    return reader


def truncated_mcaps(path: Path) -> List[Path]:
    """The MCAP files of a bag that were cut short (no closing magic): a recording that never
    closed its file, a copy that did not finish."""
    files = sorted(path.glob(f"*{MCAP_SUFFIX}")) if path.is_dir() else [path] if path.suffix == MCAP_SUFFIX else []
    cut = []
    for file in files:
        with file.open("rb") as handle:
            head = handle.read(8)
            handle.seek(max(0, file.stat().st_size - 8))
            if head == MCAP_MAGIC and handle.read(8) != MCAP_MAGIC:
                cut.append(file)
    return cut


def mcap_repair_hint(files: Sequence[Path]) -> str:
    names = ", ".join(str(f) for f in files)
    return (f"{names} is cut short (no MCAP footer: the recording or copy stopped before the file was closed), and "
            "rosbags reads only complete files. `mcap recover FILE -o FIXED.mcap` (the mcap command-line tool, "
            "github.com/foxglove/mcap) keeps every complete chunk; put FIXED.mcap in its place (same name) and "
            "run the command again")


# ----- topics ------------------------------------------------------------------------------------
def topic_list(reader: AnyReader) -> str:
    return ", ".join(f"{c.topic} ({c.msgtype}, {c.msgcount} msgs)" for c in reader.connections) or "no topics"


def image_topics(reader: AnyReader, requested: Sequence[str]) -> Dict[str, str]:
    """topic -> message type of the cameras to read: those requested, or every image topic."""
    available = {c.topic: c.msgtype for c in reader.connections}
    if requested:
        missing = [t for t in requested if t not in available]
        if missing:
            raise BagError(f"topic(s) {missing} not in {_bag_name(reader)}; it has: {topic_list(reader)}")
        wrong = [t for t in requested if available[t] not in IMAGE_TYPES]
        if wrong:
            raise BagError(f"topic(s) {wrong} are not sensor_msgs/Image or CompressedImage; the bag has: "
                           f"{topic_list(reader)}")
        return {t: available[t] for t in requested}
    found = {t: m for t, m in available.items() if m in IMAGE_TYPES}
    if not found:
        raise BagError(f"{_bag_name(reader)} has no sensor_msgs/Image or CompressedImage topic; it has: "
                       f"{topic_list(reader)}")
    return dict(sorted(found.items()))


def topic_type(reader: AnyReader, topic: str, types: Sequence[str]) -> str:
    """The message type of `topic`, refused with the bag's topics when it is absent or not one of `types`."""
    found = [c.msgtype for c in reader.connections if c.topic == topic]
    if not found:
        have = ", ".join(sorted(f"{c.topic} ({c.msgtype})" for c in reader.connections)) or "none"
        raise BagError(f"{_bag_name(reader)} has no topic {topic}; its topics: {have}")
    if found[0] not in types:
        raise BagError(f"topic {topic} in {_bag_name(reader)} is {found[0]}; use a {' or '.join(types)} topic")
    return found[0]


def _bag_name(reader: AnyReader) -> str:
    return ", ".join(str(p) for p in reader.paths)


# ----- reading -----------------------------------------------------------------------------------
def messages(reader: AnyReader, topics: Sequence[str], start_ns: Optional[int] = None,
             stop_ns: Optional[int] = None) -> Iterator:
    """(connection, log time ns, raw bytes) of the topics' messages in log-time order, from
    start_ns through stop_ns (both included; None: the bag's first and last message)."""
    connections = [c for c in reader.connections if c.topic in topics]
    # AnyReader's stop is exclusive; the bag's own end time is its last message, which belongs in.
    stop = reader.end_time if stop_ns is None else stop_ns
    return reader.messages(connections=connections, start=start_ns, stop=stop + 1)


@dataclass
class BagMessage:
    """One message as the bag holds it: peek its header, deserialize it only when wanted."""

    reader: AnyReader
    connection: object  # rosbags Connection: topic, msgtype, msgcount
    log_ns: int
    raw: bytes
    peek: Callable[[bytes], Tuple[float, str]]  # the header layout of this bag's messages

    @property
    def topic(self) -> str:
        return self.connection.topic

    @property
    def msgtype(self) -> str:
        return self.connection.msgtype

    def header(self) -> Tuple[float, str]:
        """(header.stamp in seconds, frame_id), read from the serialized bytes; BadImage if too short."""
        return self.peek(self.raw)

    def load(self):
        """The deserialized message; BadImage (cause malformed_raw) when the bytes do not hold one."""
        try:
            return self.reader.deserialize(self.raw, self.msgtype)
        except Exception as error:  # noqa: BLE001 - rosbags raises several types on malformed data
            raise BadImage(f"cannot deserialize the {self.msgtype} message: {type(error).__name__}: {error}",
                           "malformed_raw") from error


def read_lazily(reader: AnyReader, topics: Sequence[str], start_ns: Optional[int] = None,
                stop_ns: Optional[int] = None) -> Iterator[BagMessage]:
    """`messages`, each still serialized (see the module docstring)."""
    peek = header_peeker(reader)
    for connection, log_ns, raw in messages(reader, topics, start_ns, stop_ns):
        yield BagMessage(reader, connection, log_ns, raw, peek)


def header_peeker(reader: AnyReader) -> Callable[[bytes], Tuple[float, str]]:
    """The function that reads (stamp, frame_id) from this bag's serialized image messages."""
    if reader.is2:
        return peek_header
    # A ROS 1 bag carries its own definitions: std_msgs/Header starts with `uint32 seq` in ROS 1,
    # while bags written from ROS 2 types (rosbags' converters, `svlm synth-bag --storage ros1`) have none.
    definition = reader.typestore.fielddefs.get("std_msgs/msg/Header")
    with_seq = definition is None or [name for name, _ in definition[1]][:1] == ["seq"]
    return lambda data: peek_ros1_header(data, with_seq)


_CDR_HEADER = struct.Struct("<iII"), struct.Struct(">iII")  # sec, nanosec, frame_id length
_ROS1_HEADER = struct.Struct("<III")  # sec, nsec, frame_id length (after a uint32 seq where there is one)


def peek_header(data: bytes) -> Tuple[float, str]:
    """header.stamp (seconds) and frame_id of a CDR-serialized (ROS 2) Image/CompressedImage,
    without deserializing it.

    Both messages start with std_msgs/Header, right after the 4-byte CDR encapsulation header
    (whose second byte says the byte order): int32 sec, uint32 nanosec, then frame_id as a
    length-prefixed, NUL-terminated string."""
    if len(data) < 16:
        raise BadImage(f"serialized message of {len(data)} bytes is too short to hold a header", "malformed_raw")
    sec, nanosec, length = _CDR_HEADER[0 if data[1] == 1 else 1].unpack_from(data, 4)
    frame_id = bytes(data[16:16 + max(0, length - 1)]).decode("utf-8", "replace") if 16 + length <= len(data) else ""
    return sec + nanosec * 1e-9, frame_id


def peek_ros1_header(data: bytes, with_seq: bool = True) -> Tuple[float, str]:
    """`peek_header` for a ROS 1 message: little-endian (uint32 seq,) uint32 sec, uint32 nsec, then
    frame_id as a length-prefixed string without a terminator."""
    offset = 4 if with_seq else 0
    if len(data) < offset + 12:
        raise BadImage(f"serialized message of {len(data)} bytes is too short to hold a header", "malformed_raw")
    sec, nanosec, length = _ROS1_HEADER.unpack_from(data, offset)
    begin = offset + 12
    frame_id = bytes(data[begin:begin + length]).decode("utf-8", "replace") if begin + length <= len(data) else ""
    return sec + nanosec * 1e-9, frame_id
