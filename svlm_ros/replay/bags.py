"""Opening bags with `rosbags` and finding their cameras, with errors a user can act on.

rosbag2 (mcap or sqlite3; a bag directory or its single storage file) and ROS 1 bags are read
through `AnyReader`, one message at a time in log-time order.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from rosbags.highlevel import AnyReader

from .messages import typestore

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
BAG_SUFFIXES = (".mcap", ".db3", ".bag")
MCAP_MAGIC = b"\x89MCAP0\r\n"  # at both ends of a complete MCAP file


class BagError(ValueError):
    """A bag that cannot be replayed, with the reason and what the bag has."""


def expand(paths: Sequence[str]) -> List[Path]:
    """Bags named on the command line; a folder that is not itself a bag stands for the bags in it."""
    found: List[Path] = []
    for name in paths:
        path = Path(name)
        if not path.exists():
            raise BagError(f"{path} does not exist")
        if path.is_dir() and not is_bag_directory(path):
            inner = sorted(p for p in path.iterdir() if is_bag_directory(p) or
                           (p.is_file() and p.suffix in BAG_SUFFIXES))
            if not inner:
                raise BagError(f"{path} is neither a bag (no metadata.yaml, .mcap or .db3) nor a folder of bags")
            found += inner
        else:
            found.append(path)
    return found


def is_bag_directory(path: Path) -> bool:
    return path.is_dir() and ((path / "metadata.yaml").exists() or
                              any(p.suffix in (".mcap", ".db3") for p in path.iterdir()))


def open_bag(path: Path) -> AnyReader:
    reader = AnyReader([path], default_typestore=typestore())
    try:
        reader.open()
    except Exception as error:  # rosbags raises several types for unreadable bags
        cut = truncated_mcaps(path)
        hint = f" {mcap_repair_hint(cut)}" if cut else ""
        raise BagError(f"cannot open {path} as a rosbag2 (mcap, sqlite3) or ROS 1 bag: {str(error).rstrip('.')}.{hint}") from error
    return reader


def truncated_mcaps(path: Path) -> List[Path]:
    """The MCAP files of a bag that were cut short (no closing magic): a recording that never
    closed its file, a copy that did not finish."""
    files = sorted(path.glob("*.mcap")) if path.is_dir() else [path] if path.suffix == ".mcap" else []
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


def topic_list(reader: AnyReader) -> str:
    return ", ".join(f"{c.topic} ({c.msgtype}, {c.msgcount} msgs)" for c in reader.connections) or "no topics"


def image_topics(reader: AnyReader, requested: Sequence[str]) -> Dict[str, str]:
    """topic -> message type of the cameras to replay: those requested, or every image topic."""
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


def check(path: Path, requested: Sequence[str]) -> Dict[str, str]:
    """Open the bag and find its cameras, or raise BagError; the bag is closed again."""
    reader = open_bag(path)
    try:
        return image_topics(reader, requested)
    finally:
        reader.close()


def time_range(reader: AnyReader, start_s: Optional[float], end_s: Optional[float]) -> Tuple[int, int]:
    """[start, stop) in log-time nanoseconds, from seconds relative to the bag's start."""
    first, last = reader.start_time, reader.end_time
    start = first if start_s is None else first + int(start_s * 1e9)
    stop = last if end_s is None else first + int(end_s * 1e9)
    if start_s is not None and start_s < 0 or end_s is not None and end_s <= (start_s or 0):
        raise BagError(f"--start {start_s} / --end {end_s}: need 0 <= start < end (seconds from the bag's start)")
    if start >= last:
        raise BagError(f"--start {start_s} s is past the end of the bag ({(last - first) / 1e9:.1f} s long)")
    return start, stop


def messages(reader: AnyReader, topics: Dict[str, str], start_ns: int, stop_ns: int) -> Iterator:
    """(connection, log time ns, raw bytes) of the cameras' messages, in log-time order."""
    connections = [c for c in reader.connections if c.topic in topics]
    # AnyReader's stop is exclusive; the bag's own end time is its last message, which belongs in.
    return reader.messages(connections=connections, start=start_ns, stop=stop_ns + 1)


def storage_of(path: Path) -> str:
    """The output bag keeps the input's rosbag2 storage; ROS 1 bags give mcap."""
    if path.suffix == ".db3" or (path.is_dir() and any(p.suffix == ".db3" for p in path.iterdir())):
        return "sqlite3"
    return "mcap"


def run_name(path: Path) -> str:
    return path.stem if path.is_file() else path.name


def _bag_name(reader: AnyReader) -> str:
    return ", ".join(str(p) for p in reader.paths)
