"""One frame intake for every path: the node's cameras, replays, the dataset builder, the labeller.

A camera's image messages come in one at a time with their stamps; `FrameIntake` checks each
stamp (zero, repeated, late, a jump in time that is believed only once it goes on), converts only
the frames the sampler keeps (at 2 fps from a 30-Hz camera, one in fifteen, so a corrupt JPEG is
noticed on sampled frames only), assembles them into the engine's windows, counts everything in
`CameraStats` and returns the warnings to log. A bag is thus seen the same way by the node, a
replay and the training data. What happens to a finished window is the user's: the scheduler
queues it for the model, the dataset builder cuts samples from it (override `_window_ready`).
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, List, Optional

import numpy as np

from ..config import FrameConfig
from ..engine.windows import Window, WindowAssembler
from .images import BadImage, to_rgb


@dataclass
class CameraStats:
    frames: int = 0
    late_frames: int = 0  # dropped: late, out of order, or a jump in time that did not go on
    bad_frames: int = 0
    skipped_windows: int = 0
    empty_windows: int = 0
    restarts: int = 0
    forward_jumps: int = 0
    processed_windows: int = 0
    failed_windows: int = 0
    unconverted_frames: int = 0  # not needed by the sampler, so never decoded
    zero_stamps: int = 0
    repeated_stamps: int = 0
    resolution_changes: int = 0
    resolution: str = ""
    stamp_problem: str = ""  # set while the camera's stamps are unusable, for a WARN in diagnostics
    last_frame_wall: Optional[float] = None
    latencies: Deque[float] = field(default_factory=lambda: collections.deque(maxlen=120))
    last_cache_tokens: int = 0
    bad_frames_by_cause: Dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, object]:
        """Counters for reports (the rolling latencies and wall times stay out)."""
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in vars(self).items()
                if k not in ("latencies", "last_frame_wall", "stamp_problem", "resolution")}


class FrameWarning(str):
    """A warning to log, with its kind, so a node can throttle per (camera, kind); `bad_frame`: an
    unusable image (its kind is BadImage's cause)."""

    def __new__(cls, text: str, kind: str, bad_frame: bool = False):
        warning = super().__new__(cls, text)
        warning.kind = kind
        warning.bad_frame = bad_frame
        return warning


# Repeated stamps are only worth a warning when they persist; one duplicate is harmless.
REPEATED_STAMPS_WARN = 3


class FrameIntake:
    def __init__(self, frames: FrameConfig, restart_after_s: float, jump_confirm_s: float):
        self.assembler = WindowAssembler(frames.window_seconds, frames.frames_per_window, restart_after_s,
                                         jump_confirm_s)
        self.stats = CameraStats()
        self.lock = threading.Lock()
        self.windows: List[Window] = []  # finished windows, for users that do not override _window_ready
        self._last_stamp: Optional[float] = None
        self._repeats = 0

    def _window_ready(self, window: Window) -> None:
        self.windows.append(window)

    def _restarted(self) -> None:
        """Sensor time jumped back and went on: windows from here on belong to a fresh stream."""

    def feed(self, stamp_s: float, msg) -> List[str]:
        """One image message (rclpy or rosbags): check, convert if the sampler needs it, and add it.

        The node's image callback, replays and the training data all come through here, so a bag
        is seen exactly as the camera would be. Only frames the sampler keeps are converted
        (at 2 fps from a 30-Hz camera, one in fifteen), so a defect that only decoding reveals
        (a corrupt JPEG) is noticed on sampled frames only. Returns warnings to log (already
        counted)."""
        return self.feed_lazy(stamp_s, lambda: msg)

    def feed_lazy(self, stamp_s: float, load: Callable[[], object],
                  convert: Callable[[object], np.ndarray] = to_rgb) -> List[str]:
        """`feed` for a message that is costly to get (deserialized on demand): `load()` returns it,
        `convert` makes it an RGB frame (a video's frames are already).

        A frame is counted in `stats.frames` once it is handled, its window (if it closed one)
        queued: whoever waits for a count of frames then finds every window they closed."""
        try:
            return self._feed(stamp_s, load, convert)
        finally:
            with self.lock:
                self.stats.frames += 1

    def _feed(self, stamp_s: float, load: Callable[[], object], convert: Callable[[object], np.ndarray]) -> List[str]:
        with self.lock:
            self.stats.last_frame_wall = time.monotonic()
            warnings = self._check_stamp(stamp_s)
            if warnings is not None:
                return warnings
            if not self.assembler.wants(stamp_s):
                self.stats.unconverted_frames += 1
                return self._add(stamp_s, None)
        # Converting outside the lock keeps the worker's `take` from waiting on a decode;
        # one camera's callbacks run one at a time (the node gives each camera its own group).
        try:
            frame = convert(load())
        except BadImage as error:
            with self.lock:
                self.stats.bad_frames += 1
                self.stats.bad_frames_by_cause[error.cause] = self.stats.bad_frames_by_cause.get(error.cause, 0) + 1
            return [FrameWarning(f"{error}; frame dropped", error.cause, bad_frame=True)]
        with self.lock:
            warnings = self._check_resolution(frame)
            return warnings + self._add(stamp_s, frame)

    def _check_stamp(self, stamp_s: float) -> Optional[List[str]]:
        if stamp_s == 0.0:
            self.stats.zero_stamps += 1
            self.stats.stamp_problem = "frames have a zero header.stamp"
            return [FrameWarning(
                "frame has header.stamp = 0: the camera driver sets no stamp, and windows are cut by "
                "sensor time; stamp each frame with its capture time (or the receive time) in the driver; "
                "frame dropped", "zero_stamp")]
        if stamp_s == self._last_stamp:
            self._repeats += 1
            self.stats.repeated_stamps += 1
            if self._repeats >= REPEATED_STAMPS_WARN:
                self.stats.stamp_problem = f"{self._repeats + 1} frames in a row share header.stamp {stamp_s:.3f}"
                return [FrameWarning(
                    f"{self._repeats + 1} frames in a row carry the same header.stamp ({stamp_s:.3f} s): "
                    "the camera driver does not stamp each frame, and windows are cut by sensor time; "
                    "stamp each frame with its capture time; repeated frames dropped", "repeated_stamp")]
            return []
        self._last_stamp, self._repeats = stamp_s, 0
        self.stats.stamp_problem = ""
        return None

    def _check_resolution(self, frame: np.ndarray) -> List[str]:
        size = f"{frame.shape[1]}x{frame.shape[0]}"
        previous, self.stats.resolution = self.stats.resolution, size
        if previous and previous != size:
            self.stats.resolution_changes += 1
            return [FrameWarning(f"resolution changed from {previous} to {size}; frames are resized to the "
                                 "model's grid, so the stream goes on", "resolution")]
        return []

    def flush(self) -> None:
        """The input ended (a bag, a file): the open window, which no later frame will close, is ready."""
        with self.lock:
            window = self.assembler.flush()
            if window is not None:
                self._window_ready(window)

    def _add(self, stamp_s: float, frame: Optional[np.ndarray]) -> List[str]:
        warnings = []
        added = self.assembler.add(stamp_s, frame)
        if added.late:
            self.stats.late_frames += 1
            warnings.append(FrameWarning(f"dropped a late or out-of-order frame (stamp {stamp_s:.3f} s, "
                                         f"open window starts at {self.assembler.window_start:.3f} s)", "late"))
        if added.dropped_jump:
            self.stats.late_frames += added.dropped_jump
            warnings.append(FrameWarning(
                f"dropped {added.dropped_jump} frame(s) whose stamps jumped away from the stream's time and "
                f"did not go on for jump_confirm_s={self.assembler.confirm_s} s (a clock glitch); the stream "
                "keeps its context", "late"))
        if added.held and self.assembler.pending_jump.frames == 1:
            jump = self.assembler.pending_jump
            warnings.append(FrameWarning(
                f"sensor time jumped {'back' if jump.backward else 'forward'} to {stamp_s:.3f} s; believed if it "
                f"goes on for jump_confirm_s={self.assembler.confirm_s} s", "jump"))
        if added.ended is not None:
            self._window_ready(added.ended)
        if added.restarted:
            self.stats.restarts += 1
            self._restarted()
            warnings.append(FrameWarning(f"sensor time jumped back to {self.assembler.anchor:.3f} s and went on: "
                                         "starting a fresh stream", "restart"))
        if added.jumped_forward:
            self.stats.forward_jumps += 1
            warnings.append(FrameWarning(f"sensor time jumped forward to {stamp_s:.3f} s and went on: the stream "
                                         "continues after the gap", "jump"))
        self.stats.empty_windows += added.skipped_empty
        for window in added.windows:
            self._window_ready(window)
        return warnings

