"""Stamps and float seconds, both ways: the one place for it.

A stamp is anything with `sec` and `nanosec` (builtin_interfaces/Time from rclpy, the same type
deserialized by rosbags); node/stamps.py builds the rclpy message from `split_seconds`.
"""
from __future__ import annotations

import math
from typing import Tuple

NS_PER_S = 1_000_000_000


def to_seconds(stamp) -> float:
    """Seconds of a `builtin_interfaces/Time` (or anything with `sec` and `nanosec`)."""
    return stamp.sec + stamp.nanosec * 1e-9


def split_seconds(seconds: float) -> Tuple[int, int]:
    """(sec, nanosec) of float seconds, nanosec in [0, 1e9): what a Time message holds."""
    whole = int(math.floor(seconds))
    nanosec = int(round((seconds - whole) * 1e9))
    if nanosec == NS_PER_S:  # x.9999999996 rounds up to the next whole second, not down to x.0
        whole, nanosec = whole + 1, 0
    return whole, nanosec
