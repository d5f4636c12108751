"""Cutting a timestamped frame stream into windows, with frames sampled at the engine's fps.

Windows are anchored at the first frame's stamp (sensor time) and follow each other without
gaps. For each window only the frame nearest each sampling instant is kept, so memory is
bounded whatever the camera's rate.

Sensor time is not trusted frame by frame. A frame stamped slightly before the open window is
late and dropped. A jump (back by more than `jump_s`, or forward by more than `jump_s` past the
newest frame) is only believed once the new timeline has gone on for `confirm_s` of its own
time with no frame of the old timeline in between: a looping bag or a clock reset starts a
fresh stream (back) or leaves a gap (forward), while one glitched stamp is dropped and counted
and the stream keeps its context. Until then the new timeline's frames are held in a shadow
assembler (sampled frames only, so bounded), and nothing is lost when the jump is confirmed.
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
    windows: List[Window] = field(default_factory=list)  # completed, oldest first (of the current stream)
    late: bool = False  # the frame was older than the open window and dropped
    held: bool = False  # the frame starts or continues an unconfirmed jump; kept aside for now
    dropped_jump: int = 0  # frames of an unconfirmed jump dropped now that the old timeline went on
    restarted: bool = False  # a sustained jump back: a new stream was started
    jumped_forward: bool = False  # a sustained jump forward: the stream goes on after a gap
    ended: Optional[Window] = None  # on a restart: the old stream's last, open window, closed
    skipped_empty: int = 0  # windows that passed with no frame at all


@dataclass
class _Jump:
    """An unconfirmed new timeline: frames held in a shadow assembler until it is believed."""

    backward: bool
    first_s: float
    last_s: float
    frames: int
    shadow: "WindowAssembler"
    collected: AddResult = field(default_factory=AddResult)  # what the shadow completed meanwhile


class WindowAssembler:
    def __init__(self, window_seconds: float, frames_per_window: int, restart_after_s: float = 2.0,
                 confirm_s: float = 1.0):
        self.window_seconds = window_seconds
        self.frames_per_window = frames_per_window
        self.jump_s = restart_after_s  # a jump larger than this is not believed at once
        self.confirm_s = confirm_s  # ... but once the new timeline has gone on this long
        self.reset()

    def reset(self) -> None:
        self.anchor: Optional[float] = None
        self.index = 0
        self.newest: Optional[float] = None  # the newest stamp accepted on this timeline
        self.interval: Optional[float] = None  # the camera's latest frame interval, to predict its next frame
        self._best: List[Optional[Tuple[float, float, Optional[np.ndarray]]]] = []
        self._jump: Optional[_Jump] = None

    @property
    def window_start(self) -> float:
        return self.anchor + self.index * self.window_seconds

    @property
    def pending_jump(self) -> Optional[_Jump]:
        return self._jump

    def _open(self, index: int) -> None:
        self.index = index
        self._best = [None] * self.frames_per_window

    def _classify(self, stamp_s: float) -> str:
        if self.anchor is None:
            return "first"
        if stamp_s < self.window_start:
            if self._jump is not None and self._jump.backward and stamp_s >= self._jump.last_s:
                return "back"  # a jump back's new timeline going on, though it nears the old one again
            return "back" if self.window_start - stamp_s > self.jump_s else "late"
        if self.newest is not None and stamp_s - self.newest > self.jump_s:
            return "forward"
        return "main"

    def _joins_jump(self, stamp_s: float) -> bool:
        return self._jump is not None and stamp_s >= self._jump.last_s

    # ----- the cheap question, asked before a frame is converted ---------------------------------
    def wants(self, stamp_s: float) -> bool:
        """Whether `add` would keep this frame's pixels; False means it may be added as `None`."""
        kind = self._classify(stamp_s)
        if kind == "first":
            return True
        if kind == "late":
            return False
        if kind == "main":
            return self._improves(stamp_s)
        if self._joins_jump(stamp_s):
            return self._jump.shadow.wants(stamp_s)
        return True  # the start of a new candidate timeline

    def _improves(self, stamp_s: float) -> bool:
        if int((stamp_s - self.anchor) // self.window_seconds) > self.index:
            return True  # opens a new window, whose slots are all empty
        # A frame that is nearer an instant than that slot's best may still lose to the next frame:
        # when the camera's last interval predicts a nearer next frame in this window, it is not
        # worth converting (at 10 Hz and 2 fps, two frames in ten are converted instead of six).
        # If that frame never comes, the following one still improves the slot, by one interval at most.
        step = self.window_seconds / self.frames_per_window
        predicted = None if not self.interval else stamp_s + self.interval
        window_end = self.window_start + self.window_seconds
        for slot, (best, distance) in enumerate(zip(self._best, self._distances(stamp_s))):
            if best is not None and distance >= best[0]:
                continue
            instant = self.window_start + slot * step
            if (best is not None and predicted is not None and predicted < window_end
                    and abs(predicted - instant) < distance):
                continue
            return True
        return False

    def _distances(self, stamp_s: float) -> List[float]:
        step = self.window_seconds / self.frames_per_window
        start = self.window_start
        return [abs(stamp_s - (start + slot * step)) for slot in range(self.frames_per_window)]

    # ----- adding frames ------------------------------------------------------------------------
    def add(self, stamp_s: float, frame: Optional[np.ndarray]) -> AddResult:
        """Add one frame. `frame` may be None when `wants(stamp_s)` was False (only its time counts)."""
        result = AddResult()
        kind = self._classify(stamp_s)
        if kind == "first":
            self.anchor = stamp_s
            self.newest = stamp_s
            self._open(0)
            self._offer(stamp_s, frame)
            return result
        if kind == "late":
            result.late = True
            return result
        if kind == "main":
            if self._jump is not None:  # the old timeline went on: the jump was a glitch
                result.dropped_jump = self._jump.frames
                self._jump = None
            self._place(stamp_s, frame, result)
            return result
        if self._joins_jump(stamp_s):
            jump = self._jump
            jump.last_s, jump.frames = stamp_s, jump.frames + 1
            jump.shadow._place(stamp_s, frame, jump.collected)
        else:  # a new candidate; an older one that did not go on is dropped
            if self._jump is not None:
                result.dropped_jump = self._jump.frames
            self._jump = self._start_jump(stamp_s, frame, backward=(kind == "back"))
        if self._jump.last_s - self._jump.first_s >= self.confirm_s:
            self._confirm(result)
        else:
            result.held = True
        return result

    def _start_jump(self, stamp_s: float, frame, backward: bool) -> _Jump:
        shadow = WindowAssembler(self.window_seconds, self.frames_per_window, self.jump_s, self.confirm_s)
        # Forward: the same grid, so the stream goes on after a gap; back: a fresh anchor.
        shadow.anchor = stamp_s if backward else self.anchor
        shadow.newest = stamp_s
        shadow._open(int((stamp_s - shadow.anchor) // self.window_seconds))
        shadow._offer(stamp_s, frame)
        return _Jump(backward, stamp_s, stamp_s, 1, shadow)

    def _confirm(self, result: AddResult) -> None:
        jump, self._jump = self._jump, None
        shadow = jump.shadow
        done = self._close()
        if jump.backward:
            result.restarted = True
            result.ended = done
        else:
            result.jumped_forward = True
            first_index = int((jump.first_s - self.anchor) // self.window_seconds)
            if done is not None:
                result.windows.append(done)
            result.skipped_empty += first_index - self.index - 1 + (done is None)
        result.windows.extend(jump.collected.windows)
        result.skipped_empty += jump.collected.skipped_empty
        self.anchor, self.index, self.newest, self._best = shadow.anchor, shadow.index, shadow.newest, shadow._best
        self.interval = shadow.interval

    def _place(self, stamp_s: float, frame, result: AddResult) -> None:
        """Add a frame of this timeline (no jump checks): close windows it passes, then offer it."""
        target_index = int((stamp_s - self.anchor) // self.window_seconds)
        if target_index > self.index:
            done = self._close()
            if done is not None:
                result.windows.append(done)
            result.skipped_empty += target_index - self.index - 1 + (done is None)
            self._open(target_index)
        if self.newest is not None and stamp_s > self.newest:
            self.interval = stamp_s - self.newest
        self.newest = stamp_s if self.newest is None else max(self.newest, stamp_s)
        self._offer(stamp_s, frame)

    def _offer(self, stamp_s: float, frame: Optional[np.ndarray]) -> None:
        if frame is None:
            return
        for slot, distance in enumerate(self._distances(stamp_s)):
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
