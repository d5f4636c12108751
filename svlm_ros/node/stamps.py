"""ROS time messages and float seconds, both ways (the node's one place for it)."""
from __future__ import annotations

import math

from builtin_interfaces.msg import Time as TimeMsg


def to_time_msg(seconds: float) -> TimeMsg:
    whole = int(math.floor(seconds))
    return TimeMsg(sec=whole, nanosec=int(round((seconds - whole) * 1e9)) % 1_000_000_000)


def to_seconds(stamp) -> float:
    """Seconds of a `builtin_interfaces/Time` (or anything with `sec` and `nanosec`)."""
    return stamp.sec + stamp.nanosec * 1e-9
