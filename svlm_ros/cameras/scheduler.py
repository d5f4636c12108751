"""ROS-free core of the node and of svlm replay: per-camera streams sharing one model on one worker thread.

Image callbacks only check stamps and hand frames to `CameraStream.feed` (cheap; only sampled
frames are converted); completed windows wait in a bounded per-camera queue that keeps the newest,
so a slow model skips whole windows instead of describing stale video. The worker answers
questions first, then describes the ready windows of several cameras in one batched step
(engine/batch.py): it waits at most `batch_wait_s` after the oldest ready window for the other
live cameras' windows, takes at most `max_batch` cameras, and lets the cameras that waited longest
go first, so no camera starves.
"""
from __future__ import annotations

import collections
import concurrent.futures
import copy
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, List, Optional, Sequence, Tuple

from ..config import EngineConfig, NodeConfig
from ..engine.batch import StreamBatch, StreamFailed, StreamWindow
from ..engine.models import LoadedModel
from ..engine.session import Answer, StreamSession, WindowResult
from ..engine.windows import Window
from ..sources.intake import FrameIntake

log = logging.getLogger(__name__)


@dataclass
class Described:
    camera: str
    window: Window
    result: WindowResult
    latency_s: float
    frame_id: str = ""  # the camera's frame when the window was described: publishing needs no scheduler


# Offline (a replay read as fast as it goes), a camera this many windows ahead of a camera that
# sent none is described without it: the other lags far behind in the bag, or has stopped.
OFFLINE_LEAD = 4


@dataclass
class BatchStats:
    """What the batched steps cost, for diagnostics: steps by batch size, their stage seconds."""
    steps: Dict[int, int] = field(default_factory=dict)  # cameras in a step -> steps
    stage_s: Dict[int, List[float]] = field(default_factory=dict)  # cameras -> summed vision, prefill, decode
    last_size: int = 0
    last_stage_s: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    failed_steps: int = 0

    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # the worker writes, diagnostics read

    def record(self, size: int, stage_s: Tuple[float, float, float]) -> None:
        with self.lock:
            self.steps[size] = self.steps.get(size, 0) + 1
            summed = self.stage_s.setdefault(size, [0.0, 0.0, 0.0])
            for stage, seconds in enumerate(stage_s):
                summed[stage] += seconds
            self.last_size, self.last_stage_s = size, stage_s

    def failed(self) -> None:
        with self.lock:
            self.failed_steps += 1

    def values(self) -> Dict[str, str]:
        """Diagnostics key-values: `2:140 3:12` (steps by size), mean seconds per step by size."""
        with self.lock:
            return self._values()

    def _values(self) -> Dict[str, str]:
        sizes = sorted(self.steps)

        def mean(stage: Optional[int]) -> str:
            def seconds(size: int) -> float:
                summed = self.stage_s[size]
                return (sum(summed) if stage is None else summed[stage]) / self.steps[size]
            return " ".join(f"{size}:{seconds(size):.3f}" for size in sizes)

        vision, prefill, decode = self.last_stage_s
        return {"batch_steps_by_size": " ".join(f"{size}:{self.steps[size]}" for size in sizes),
                "batch_step_s_mean_by_size": mean(None), "batch_vision_s_mean_by_size": mean(0),
                "batch_prefill_s_mean_by_size": mean(1), "batch_decode_s_mean_by_size": mean(2),
                "last_batch_size": str(self.last_size), "last_batch_vision_s": f"{vision:.3f}",
                "last_batch_prefill_s": f"{prefill:.3f}", "last_batch_decode_s": f"{decode:.3f}",
                "failed_batch_steps": str(self.failed_steps)}


class CameraStream(FrameIntake):
    """A camera of the node: its frame intake, its queue of windows for the model, its stream."""

    def __init__(self, name: str, session: StreamSession, node: NodeConfig, row: int = 0,
                 queue_size: Optional[int] = None):
        """`session`: this camera's stream (its row `row` of the scheduler's StreamBatch).
        `queue_size`: windows kept waiting (node.max_queued_windows; None: all, for replays)."""
        super().__init__(session.config.frames, node.restart_after_s, node.jump_confirm_s)
        self.name = name
        self.session = session
        self.row = row
        self.queue: Deque[tuple] = collections.deque(maxlen=queue_size)
        # A new stream (time jumped back, ~/reset) bumps the generation; the
        # worker resets the session when it reaches the first window of a newer generation, so
        # windows of the old stream still queued are described first, not lost.
        self.generation = 0
        self.session_generation = 0
        self.pending_instruction: Optional[str] = None  # set by ROS threads, applied by the worker
        self.frame_id = ""  # the camera's frame, from its latest image
        self.last_result: Optional[WindowResult] = None
        self.on_skip: Optional[Callable[[Window], None]] = None  # told of each window the queue drops
        self.last_step = 0  # the scheduler's step this camera was last in (fairness: who sat out goes first)

    def _restarted(self) -> None:
        self.generation += 1

    def _window_ready(self, window: Window) -> None:
        if len(self.queue) == self.queue.maxlen:  # the oldest queued window is dropped: skipped
            self.stats.skipped_windows += 1
            if self.on_skip is not None:
                self.on_skip(self.queue[0][0])
        self.queue.append((window, time.monotonic(), self.generation))

    def take(self):
        with self.lock:
            return self.queue.popleft() if self.queue else None

    def ready_since(self) -> Optional[float]:
        """When the oldest queued window became ready (monotonic), None if none waits."""
        with self.lock:
            return self.queue[0][1] if self.queue else None



class Scheduler:
    """Owns the worker thread; the ROS node supplies `publish` and reads stats."""

    def __init__(self, loaded: LoadedModel, engine: EngineConfig, node: NodeConfig,
                 publish: Callable[[Described], None], cameras: List[str], offline: bool = False):
        """One stream per camera, side by side in one StreamBatch. `offline` (a replay that is not
        paced): queues keep every window, and `drain(due_only=True)` batches them as they come."""
        self.node_config = node
        self.publish = publish
        # Each camera gets its own copy: set_instruction changes a session's config in place.
        self.batch = StreamBatch(loaded, [copy.deepcopy(engine) for _ in cameras])
        queue_size = None if offline else max(1, node.max_queued_windows)
        self.cameras: Dict[str, CameraStream] = {
            name: CameraStream(name, self.batch.streams[row], node, row, queue_size)
            for row, name in enumerate(cameras)}
        self._order = list(self.cameras)
        self.batches = BatchStats()
        self._steps = 0  # batched steps taken, for CameraStream.last_step
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

    def drain(self, due_only: bool = False) -> None:
        """Describe queued windows now, in batches, on the caller's thread (replays: nothing is skipped).

        `due_only` (while a bag is read): only the batches that are due, that is once every camera
        that has sent frames has a window waiting, or one camera is OFFLINE_LEAD windows ahead (the
        others lag or have stopped), so a multi-camera bag is described in batches as the node does;
        the background jobs run when no window waits. Otherwise everything queued, then the jobs."""
        take = self._due_batch if due_only else (lambda: self._next_batch(wait=False))
        while True:
            while work := take():
                self._describe(work)
            if not self._idle_jobs or any(stream.queue for stream in self.cameras.values()):
                return
            self._run_idle_job(*self._idle_jobs.popleft())  # a job may queue nothing, but look again

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

    def warm_up(self) -> float:
        """One blank window for every camera in one batched step, then fresh streams (StreamBatch.warm_up);
        returns the seconds it took."""
        return self.batch.warm_up()

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
            with stream.lock:
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
                    work = self._next_batch(wait=True)
                    if work:
                        self.busy_with = f"a batch of {', '.join(stream.name for stream, _ in work)}"
                        self._describe(work)
                        continue
                    if self._questions or self._stop.is_set():  # came while a batch waited: they go first
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

    def _ready(self) -> List[Tuple[float, CameraStream]]:
        """(ready since, camera) for the cameras with a window waiting: those that sat out the most
        recent steps first, then the longest waiting (so a backlog on one camera starves no other)."""
        waiting = [(stream.last_step, since, stream.row, stream) for stream in self.cameras.values()
                   if (since := stream.ready_since()) is not None]
        return [(since, stream) for _, since, _, stream in sorted(waiting, key=lambda item: item[:3])]

    def _live_cameras(self) -> int:
        """Cameras that sent a frame within camera_timeout_s: the ones a batch may wait for."""
        now, timeout = time.monotonic(), self.node_config.camera_timeout_s
        return sum(1 for stream in self.cameras.values()
                   if stream.stats.last_frame_wall is not None and now - stream.stats.last_frame_wall <= timeout)

    def _next_batch(self, wait: bool) -> List[tuple]:
        """Take the next batch: (camera, queued item) for up to max_batch cameras, longest waiting first.

        With `wait`, a batch smaller than the live cameras waits up to batch_wait_s after its oldest
        window became ready for the others' windows; a question or a stop ends the wait with no batch."""
        ready = self._ready()
        if not ready:
            return []
        if wait:
            # node_config is read each turn: a runtime change of batch_wait_s or max_batch (which
            # notifies) applies to the wait in progress.
            while len(ready) < min(max(1, self.node_config.max_batch), self._live_cameras()):
                left = min(since for since, _ in ready) + self.node_config.batch_wait_s - time.monotonic()
                if left <= 0 or self._stop.is_set() or self._questions:
                    break
                self._wake.wait(left)
                self._wake.clear()
                ready = self._ready()
            if self._stop.is_set() or self._questions:
                return []
        return self._take([stream for _, stream in ready[:max(1, self.node_config.max_batch)]])

    def _due_batch(self) -> List[tuple]:
        queued = {stream: len(stream.queue) for stream in self.cameras.values() if stream.stats.frames}
        if not any(queued.values()):
            return []
        if all(queued.values()) or max(queued.values()) >= OFFLINE_LEAD:
            return self._take([stream for _, stream in self._ready()[:max(1, self.node_config.max_batch)]])
        return []

    @staticmethod
    def _take(streams: Sequence[CameraStream]) -> List[tuple]:
        return [(stream, item) for stream in streams if (item := stream.take()) is not None]

    def _prepare(self, stream: CameraStream, generation: int) -> None:
        if generation != stream.session_generation:
            stream.session.reset()
            stream.session_generation = generation
        with stream.lock:  # set_instruction writes it from a ROS thread
            text, stream.pending_instruction = stream.pending_instruction, None
        if text is not None:
            stream.session.set_instruction(text)

    def _describe(self, work: List[tuple]) -> None:
        """One batched step over the taken windows, then each camera's result published on its own."""
        self._steps += 1
        windows: List[Optional[StreamWindow]] = [None] * len(self.batch)
        for stream, (window, _, generation) in work:
            stream.last_step = self._steps
            self._prepare(stream, generation)
            windows[stream.row] = StreamWindow(window.frames, window.start_s, window.end_s)
        try:
            outcomes = self.batch.step(windows)
        except Exception as error:  # a failed step must not stop the node
            self.batches.failed()
            names = ", ".join(stream.name for stream, _ in work)
            self.last_error = f"{names}: {error}"
            log.exception("a step over the windows of %s failed; restarting their streams", names)
            for stream, _ in work:
                stream.stats.failed_windows += 1
                stream.session.reset()  # its cache may be half-updated: the next window starts a new stream
            return
        described = [outcome for outcome in outcomes if isinstance(outcome, WindowResult)]
        if described:
            first = described[0]  # every result of a step carries the whole step's stage seconds
            self.batches.record(len(described), (first.vision_s, first.prefill_s, first.decode_s))
        for stream, (window, ready_at, _) in work:
            outcome = outcomes[stream.row]
            if isinstance(outcome, StreamFailed):
                stream.stats.failed_windows += 1
                self.last_error = f"{stream.name}: {outcome}"
                log.error("window %.1f-%.1f s of %s failed (%s); its stream was restarted, the others went on",
                          window.start_s, window.end_s, stream.name, outcome)
                continue
            if isinstance(outcome, Exception):  # refused before the step: that stream is as it was
                stream.stats.failed_windows += 1
                self.last_error = f"{stream.name}: {outcome}"
                log.error("window %.1f-%.1f s of %s was refused (%s); its stream goes on", window.start_s,
                          window.end_s, stream.name, outcome)
                continue
            self._publish(stream, window, outcome, time.monotonic() - ready_at)

    def _publish(self, stream: CameraStream, window: Window, result: WindowResult, latency: float) -> None:
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
            with stream.lock:  # the stream the next window belongs to: after ~/reset, a fresh one
                generation = stream.queue[0][2] if stream.queue else stream.generation
            self._prepare(stream, generation)
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
