"""ROS time messages from float seconds, for the node (the conversion itself: sources/stamps.py)."""
from __future__ import annotations

from builtin_interfaces.msg import Time as TimeMsg

from ..sources.stamps import split_seconds, to_seconds

__all__ = ["to_seconds", "to_time_msg"]


def to_time_msg(seconds: float) -> TimeMsg:
    sec, nanosec = split_seconds(seconds)
    return TimeMsg(sec=sec, nanosec=nanosec)
