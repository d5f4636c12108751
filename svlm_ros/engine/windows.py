"""Cutting a timestamped frame stream into windows, with frames sampled at the engine's fps.

Windows are anchored at the first frame's stamp (sensor time) and follow each other without
gaps. For each window only the frame nearest each sampling instant is kept, so memory is
bounded whatever the camera's rate.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np


@dataclass
class Window:
    index: int  # windows since the stream's anchor
    start_s: float
    end_s: float
    frames: List[np.ndarray]
    frame_stamps: List[float]


@dataclass
class AddResult:
    windows: List[Window] = field(default_factory=list)  # completed, oldest first
    late: bool = False  # the frame was older than the open window and dropped
    restarted: bool = False  # time jumped back: a new stream was started at this frame
    skipped_empty: int = 0  # windows that passed with no frame at all


class WindowAssembler:
    def __init__(self, window_seconds: float, frames_per_window: int, restart_after_s: float = 2.0):
        self.window_seconds = window_seconds
        self.frames_per_window = frames_per_window
        self.restart_after_s = restart_after_s  # a jump back in time larger than this restarts
        self.reset()

    def reset(self) -> None:
        self.anchor: Optional[float] = None
        self.index = 0
        self._best: List[Optional[Tuple[float, float, np.ndarray]]] = []

    @property
    def window_start(self) -> float:
        return self.anchor + self.index * self.window_seconds

    def _open(self, index: int) -> None:
        self.index = index
        self._best = [None] * self.frames_per_window

    def add(self, stamp_s: float, frame: np.ndarray) -> AddResult:
        result = AddResult()
        if self.anchor is None:
            self.anchor = stamp_s
            self._open(0)
        elif stamp_s < self.window_start:
            if self.window_start - stamp_s > self.restart_after_s:
                result.restarted = True
                self.anchor = stamp_s
                self._open(0)
            else:
                result.late = True
                return result
        target_index = int((stamp_s - self.anchor) // self.window_seconds)
        if target_index > self.index:
            done = self._close()
            if done is not None:
                result.windows.append(done)
            result.skipped_empty = target_index - self.index - 1 + (done is None)
            self._open(target_index)
        self._offer(stamp_s, frame)
        return result

    def _offer(self, stamp_s: float, frame: np.ndarray) -> None:
        step = self.window_seconds / self.frames_per_window
        for slot in range(self.frames_per_window):
            instant = self.window_start + slot * step
            distance = abs(stamp_s - instant)
            best = self._best[slot]
            if best is None or distance < best[0]:
                self._best[slot] = (distance, stamp_s, frame)

    def _close(self) -> Optional[Window]:
        chosen = [b for b in self._best if b is not None]
        if not chosen:
            return None
        start = self.window_start
        return Window(self.index, start, start + self.window_seconds,
                      [frame for _, _, frame in chosen], [stamp for _, stamp, _ in chosen])

    def flush(self) -> Optional[Window]:
        """Close the open window (end of a file or bag)."""
        if self.anchor is None:
            return None
        window = self._close()
        self._best = [None] * self.frames_per_window
        return window
