"""The robot's pose over time, matched to each described window by its stamp.

ROS-free: the node feeds it from a pose topic (Odometry, PoseStamped, PoseWithCovarianceStamped)
or from tf; a window takes the pose nearest its end, if one lies within the tolerance.
"""
from __future__ import annotations

import bisect
import threading
from collections import deque
from typing import Deque, Optional, Tuple

from .records import Pose


class PoseHistory:
    """The last `capacity` poses, in stamp order (out-of-order poses are dropped)."""

    def __init__(self, capacity: int = 2000):
        self._stamps: Deque[float] = deque(maxlen=capacity)
        self._poses: Deque[Pose] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self.received = 0
        self.out_of_order = 0

    def add(self, stamp_s: float, pose: Pose) -> None:
        with self._lock:
            self.received += 1
            if self._stamps and stamp_s < self._stamps[-1]:
                self.out_of_order += 1
                return
            self._stamps.append(stamp_s)
            self._poses.append(pose)

    def at(self, stamp_s: float, tolerance_s: float) -> Optional[Pose]:
        """The pose nearest `stamp_s`, or None when none lies within `tolerance_s`."""
        with self._lock:
            if not self._stamps:
                return None
            stamps = list(self._stamps)  # deques are slow to bisect; at most `capacity` floats
            index = bisect.bisect_left(stamps, stamp_s)
            best: Optional[Tuple[float, int]] = None
            for candidate in (index - 1, index):
                if 0 <= candidate < len(stamps):
                    gap = abs(stamps[candidate] - stamp_s)
                    if best is None or gap < best[0]:
                        best = (gap, candidate)
            if best is None or best[0] > tolerance_s:
                return None
            return self._poses[best[1]]

    @property
    def latest_stamp(self) -> Optional[float]:
        with self._lock:
            return self._stamps[-1] if self._stamps else None
