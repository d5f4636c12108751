"""ROS-free core of the node: per-camera streams sharing one model on one worker thread.

Image callbacks only decode and hand frames to `CameraStream.add_frame` (cheap); completed
windows wait in a bounded per-camera queue that keeps the newest, so a slow model skips whole
windows instead of describing stale video. The worker serves cameras round-robin and questions
first.
"""
from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, List, Optional, Sequence

import numpy as np

from ..config import EngineConfig, NodeConfig
from ..engine.models import LoadedModel
from ..engine.session import Answer, StreamSession, WindowResult
from ..engine.windows import Window, WindowAssembler
from .images import BadImage, to_rgb

log = logging.getLogger(__name__)


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
    """A warning to log, with its kind, so a node can throttle per (camera, kind)."""

    def __new__(cls, text: str, kind: str):
        warning = super().__new__(cls, text)
        warning.kind = kind
        return warning


@dataclass
class Described:
    camera: str
    window: Window
    result: WindowResult
    latency_s: float
    frame_id: str = ""  # the camera's frame when the window was described: publishing needs no scheduler


# Repeated stamps are only worth a warning when they persist; one duplicate is harmless.
REPEATED_STAMPS_WARN = 3


class CameraStream:
    def __init__(self, name: str, loaded: LoadedModel, engine: EngineConfig, node: NodeConfig):
        self.name = name
        self.session = StreamSession(loaded, engine)
        frames = engine.frames
        self.assembler = WindowAssembler(frames.window_seconds, frames.frames_per_window, node.restart_after_s,
                                         node.jump_confirm_s)
        self.queue: Deque[tuple] = collections.deque(maxlen=max(1, node.max_queued_windows))
        self.stats = CameraStats()
        # A new stream (time jumped back, ~/reset) bumps the generation; the
        # worker resets the session when it reaches the first window of a newer generation, so
        # windows of the old stream still queued are described first, not lost.
        self.generation = 0
        self.session_generation = 0
        self.pending_instruction: Optional[str] = None  # set by ROS threads, applied by the worker
        self.frame_id = ""  # the camera's frame, from its latest image
        self.last_result: Optional[WindowResult] = None
        self.on_skip: Optional[Callable[[Window], None]] = None  # told of each window the queue drops
        self.lock = threading.Lock()
        self._last_stamp: Optional[float] = None
        self._repeats = 0

    def feed(self, stamp_s: float, msg) -> List[str]:
        """One image message (rclpy or rosbags): check, convert if the sampler needs it, and add it.

        The node's image callback and the replay tool both come through here, so a bag is
        described exactly as the camera would be. Only frames the sampler keeps are converted
        (at 2 fps from a 30-Hz camera, one in fifteen), so a defect that only decoding reveals
        (a corrupt JPEG) is noticed on sampled frames only. Returns warnings to log (already
        counted)."""
        return self.feed_lazy(stamp_s, lambda: msg)

    def feed_lazy(self, stamp_s: float, load: Callable[[], object]) -> List[str]:
        """`feed` for a message that is costly to get (deserialized on demand): `load()` returns it."""
        with self.lock:
            self.stats.frames += 1
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
            msg = load()
            frame = to_rgb(msg)
        except BadImage as error:
            with self.lock:
                self.stats.bad_frames += 1
                self.stats.bad_frames_by_cause[error.cause] = self.stats.bad_frames_by_cause.get(error.cause, 0) + 1
            return [FrameWarning(f"{error}; frame dropped", error.cause)]
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
        """The input ended (a bag, a file): queue the open window, which no later frame will close."""
        with self.lock:
            window = self.assembler.flush()
            if window is not None:
                self._enqueue(window)

    def add_frame(self, stamp_s: float, frame: np.ndarray) -> List[str]:
        """A converted frame; returns warnings to log (already counted)."""
        with self.lock:
            self.stats.frames += 1
            self.stats.last_frame_wall = time.monotonic()
            return self._add(stamp_s, frame)

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
            self._enqueue(added.ended)
        if added.restarted:
            self.stats.restarts += 1
            self.generation += 1
            warnings.append(FrameWarning(f"sensor time jumped back to {self.assembler.anchor:.3f} s and went on: "
                                         "starting a fresh stream", "restart"))
        if added.jumped_forward:
            self.stats.forward_jumps += 1
            warnings.append(FrameWarning(f"sensor time jumped forward to {stamp_s:.3f} s and went on: the stream "
                                         "continues after the gap", "jump"))
        self.stats.empty_windows += added.skipped_empty
        for window in added.windows:
            self._enqueue(window)
        return warnings

    def _enqueue(self, window: Window) -> None:
        if len(self.queue) == self.queue.maxlen:  # the oldest queued window is dropped: skipped
            self.stats.skipped_windows += 1
            if self.on_skip is not None:
                self.on_skip(self.queue[0][0])
        self.queue.append((window, time.monotonic(), self.generation))

    def take(self):
        with self.lock:
            return self.queue.popleft() if self.queue else None


class Scheduler:
    """Owns the worker thread; the ROS node supplies `publish` and reads stats."""

    def __init__(self, loaded: LoadedModel, engine: EngineConfig, node: NodeConfig,
                 publish: Callable[[Described], None], cameras: List[str]):
        self.node_config = node
        self.publish = publish
        self.cameras: Dict[str, CameraStream] = {name: CameraStream(name, loaded, engine, node) for name in cameras}
        self._order = list(self.cameras)
        self._next = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._questions: Deque = collections.deque()
        self._questions_lock = threading.Lock()  # ask() and stop() against each other: no question is left unanswered
        self._idle_jobs: Deque = collections.deque()
        self._thread: Optional[threading.Thread] = None
        self.busy_since: Optional[float] = None
        self.busy_with = ""  # what the worker is doing, for diagnostics and the shutdown's last log line
        self.last_error: Optional[str] = None
        self._idle = threading.Event()  # set after each piece of work, for wait_idle
        self.worker_restarts = 0
        self.publish_errors = 0

    def start(self, wait_s: float = 0.0) -> None:
        """Start the worker; waits up to `wait_s` for an earlier worker still finishing its window, then
        refuses (two workers would share one session's cache)."""
        if self._thread is not None:
            self._thread.join(wait_s)
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("the inference worker of the previous activation is still running (a window "
                               "is taking longer than the stop timeout); try again when it has finished")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="svlm-inference", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> bool:
        """Ask the worker to stop and wait; False if it is still busy after `timeout` (it stops after the
        window, question or job in hand, which still publishes). Questions still waiting are answered
        with an error at once: no worker would take them."""
        with self._questions_lock:
            self._stop.set()
            waiting = list(self._questions)
            self._questions.clear()
        for _, _, _, future in waiting:
            if future.set_running_or_notify_cancel():
                future.set_exception(RuntimeError("the inference worker stopped (the node is deactivated or "
                                                  "shutting down) before it reached this question"))
        self._wake.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        self._thread = None
        return True

    @property
    def running(self) -> bool:
        """The worker should be running (started and not asked to stop)."""
        return self._thread is not None and not self._stop.is_set()

    def worker_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def ensure_worker(self) -> bool:
        """Restart the worker if it died while it should run; True if it had to."""
        if not self.running or self._thread.is_alive():
            return False
        self.worker_restarts += 1
        log.error("the inference worker died (%s); restarting it", self.last_error or "no error recorded")
        self._thread = threading.Thread(target=self._run, name="svlm-inference", daemon=True)
        self._thread.start()
        return True

    def notify(self) -> None:
        self._wake.set()

    def drain(self) -> None:
        """Describe every queued window now, then run the background jobs that waited for an idle
        model, on the caller's thread (replays: nothing is skipped)."""
        while (work := self._next_window()) is not None:
            self._describe(*work)
        while self._idle_jobs:
            self._run_idle_job(*self._idle_jobs.popleft())
            while (work := self._next_window()) is not None:  # a job may have queued nothing, but be sure
                self._describe(*work)

    def wait_idle(self, timeout: Optional[float] = None) -> bool:
        """Wait until the worker has described every queued window and run every background job
        (the end of a replay)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while any(stream.queue for stream in self.cameras.values()) or self._idle_jobs or \
                self.busy_since is not None:
            if self._thread is None or not self._thread.is_alive():
                return False
            if deadline is not None and time.monotonic() > deadline:
                return False
            self._idle.wait(0.05)
            self._idle.clear()
        return True

    def ask(self, camera: str, question: str, recalled: Sequence[str] = ()) -> "concurrent.futures.Future[Answer]":
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._questions_lock:
            if self._stop.is_set():
                future.set_exception(RuntimeError("the inference worker is stopped (the node is deactivated or "
                                                  "shutting down)"))
                return future
            self._questions.append((camera, question, tuple(recalled), future))
        self._wake.set()
        return future

    def when_idle(self, job: Callable[[], object]) -> "concurrent.futures.Future":
        """Run `job` on the worker when no window and no question waits (summaries): live video first."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._idle_jobs.append((job, future))
        self._wake.set()
        return future

    @property
    def idle_jobs_waiting(self) -> int:
        return len(self._idle_jobs)

    def reset(self) -> None:
        """~/reset: queued windows are dropped and every camera starts a new stream."""
        for stream in self.cameras.values():
            with stream.lock:
                stream.queue.clear()
                stream.assembler.reset()
                stream.generation += 1
        self._wake.set()

    def set_instruction(self, text: str) -> None:
        for stream in self.cameras.values():
            stream.pending_instruction = text
        self._wake.set()

    # ----- the worker ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                with self._questions_lock:
                    question = self._questions.popleft() if self._questions else None
                if question is not None:
                    self.busy_with = f"a question about {question[0]}"
                    try:
                        self._answer(*question)
                    finally:
                        self.busy_with = ""
                    continue
                # Busy from before taking work until its results are handed on (a described window
                # may queue a summary), so wait_idle never sees empty queues and an idle worker while
                # something is in hand.
                self.busy_since = time.monotonic()
                try:
                    work = self._next_window()
                    if work is not None:
                        self.busy_with = f"a window of {work[0].name}"
                        self._describe(*work)
                        continue
                    if self._idle_jobs:
                        self.busy_with = "a background job (summary)"
                        self._run_idle_job(*self._idle_jobs.popleft())
                        continue
                finally:
                    self.busy_since = None
                    self.busy_with = ""
                    self._idle.set()
                self._wake.wait(0.1)
                self._wake.clear()
        except BaseException as error:  # noqa: BLE001 - recorded, and the node restarts the worker
            self.last_error = f"inference worker died: {type(error).__name__}: {error}"
            log.exception("the inference worker died")

    def _next_window(self):
        for offset in range(len(self._order)):
            name = self._order[(self._next + offset) % len(self._order)]
            stream = self.cameras[name]
            item = stream.take()
            if item is not None:
                self._next = (self._next + offset + 1) % len(self._order)
                return stream, item
        return None

    def _prepare(self, stream: CameraStream, generation: int) -> None:
        if generation != stream.session_generation:
            stream.session.reset()
            stream.session_generation = generation
        text, stream.pending_instruction = stream.pending_instruction, None
        if text is not None:
            stream.session.set_instruction(text)

    def _describe(self, stream: CameraStream, item) -> None:
        window, ready_at, generation = item
        self._prepare(stream, generation)
        try:
            if self.node_config.inference_delay_s:
                time.sleep(self.node_config.inference_delay_s)
            result = stream.session.step(window.frames, window.start_s, window.end_s)
        except Exception as error:  # a failed window must not stop the node
            stream.stats.failed_windows += 1
            stream.session.reset()  # the cache may be half-updated: the next window starts a new stream
            self.last_error = f"{stream.name}: {error}"
            log.exception("window %.1f-%.1f s of %s failed; restarting its stream", window.start_s,
                          window.end_s, stream.name)
            return
        latency = time.monotonic() - ready_at
        stream.stats.processed_windows += 1
        stream.stats.latencies.append(latency)
        stream.stats.last_cache_tokens = result.cache_tokens
        stream.last_result = result
        try:
            self.publish(Described(stream.name, window, result, latency, stream.frame_id))
        except Exception as error:  # the window was described; one failed publication must not stop the worker
            self.publish_errors += 1
            self.last_error = f"{stream.name}: publishing failed: {error}"
            log.exception("publishing the window %.1f-%.1f s of %s failed", window.start_s, window.end_s, stream.name)

    def _answer(self, camera: str, question: str, recalled: Sequence[str], future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            stream = self.cameras[camera]
            self._prepare(stream, stream.session_generation)
            future.set_result(stream.session.ask(question, recalled=recalled))
        except Exception as error:
            future.set_exception(error)

    def _run_idle_job(self, job: Callable[[], object], future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(job())
        except Exception as error:  # a failed summary must not stop the worker
            if self._stop.is_set():  # the shutdown closed what the job was using: expected, not a fault
                log.info("a background job (summary) was cut short by the shutdown: %s", error)
            else:
                log.exception("a background job (summary) failed")
            future.set_exception(error)
