"""Which bags a replay reads, and which part of them: the command line's bags and folders of bags,
`--start`/`--end`, and the storage of the output bag.

Opening and reading a bag is svlm_ros/sources/bags.py, shared with training and labelling.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from rosbags.highlevel import AnyReader

from ..sources.bags import SQLITE_SUFFIX, BagError, image_topics, is_bag, is_bag_directory, open_bag


def expand(paths: Sequence[str]) -> List[Path]:
    """Bags named on the command line; a folder that is not itself a bag stands for the bags in it."""
    found: List[Path] = []
    for name in paths:
        path = Path(name)
        if not path.exists():
            raise BagError(f"{path} does not exist")
        if path.is_dir() and not is_bag_directory(path):
            inner = sorted(p for p in path.iterdir() if is_bag(p))
            if not inner:
                raise BagError(f"{path} is neither a bag (no metadata.yaml, .mcap or .db3) nor a folder of bags")
            found += inner
        else:
            found.append(path)
    return found


def check(path: Path, requested: Sequence[str]) -> Dict[str, str]:
    """Open the bag and find its cameras, or raise BagError; the bag is closed again."""
    reader = open_bag(path)
    try:
        return image_topics(reader, requested)
    finally:
        reader.close()


def time_range(reader: AnyReader, start_s: Optional[float], end_s: Optional[float]) -> Tuple[int, int]:
    """[start, stop] in log-time nanoseconds (both included, as `messages` reads them), from
    seconds relative to the bag's start: `--start 2 --end 5` reads [2 s, 5 s), three seconds of
    video; without `--end`, through the bag's last message."""
    first, last = reader.start_time, reader.end_time
    start = first if start_s is None else first + int(start_s * 1e9)
    stop = last if end_s is None else min(last, first + int(end_s * 1e9) - 1)
    if start_s is not None and start_s < 0 or end_s is not None and end_s <= (start_s or 0):
        raise BagError(f"--start {start_s} / --end {end_s}: need 0 <= start < end (seconds from the bag's start)")
    if start >= last:
        raise BagError(f"--start {start_s} s is past the end of the bag ({(last - first) / 1e9:.1f} s long)")
    return start, stop


def storage_of(path: Path) -> str:
    """The output bag keeps the input's rosbag2 storage; ROS 1 bags give mcap."""
    if path.suffix == SQLITE_SUFFIX or (path.is_dir() and any(p.suffix == SQLITE_SUFFIX for p in path.iterdir())):
        return "sqlite3"
    return "mcap"
