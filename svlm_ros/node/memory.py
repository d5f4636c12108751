"""The node's long-term memory: the ROS side of svlm_ros/memory/.

Owns, for one configure-cleanup cycle: the writer thread (every described window, never waited
on), a reading connection for `~/recall` and `~/ask`, the summaries (planned per window, run by
the scheduler only when the cameras leave the model idle), and the robot's pose (a pose topic, or
tf when tf2_ros imports and `memory.base_frame` is set). The node holds the file's writer lock
(a second writer, another node or a replay, is refused with who holds it); the default file is
per node (`default_path` of its fully qualified name). At configure the file is checked whole and
a corrupt one moved aside; a file that breaks later is moved aside by the writer, and the reading
connections here reopen on the new one. A store that cannot be used is an ERROR in diagnostics
(`problem`: what, which file, what to do) and an answer to every recall; no store error ever
reaches the executor, and the descriptions go on.
"""
from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from geometry_msgs.msg import Point
from rclpy.qos import HistoryPolicy, QoSProfile, qos_profile_sensor_data

from svlm_ros.msg import MemoryEntry

from ..config import EngineConfig, MemoryConfig
from ..memory.embedding_process import ProcessEmbedder
from ..memory.pose import PoseHistory
from ..memory.questions import Recollection, Source, recollect
from ..memory.store import Entry, MemoryError, MemoryStore, Pose, StoreCorrupt, WriterLock, default_path, failure
from ..memory.summaries import SummaryJob, SummaryModel, SummaryPlanner, SummaryStore, Summarizer, seed_text
from ..memory.writer import MemoryWriter
from .stamps import to_seconds, to_time_msg

log = logging.getLogger(__name__)
CLOSE_TIMEOUT_S = 5.0  # close() without a deadline: what the writer gets to commit its queue
# Best effort hears both kinds of publisher; a deeper history than sensor data's 5 keeps a burst
# of 50-Hz odometry that arrives while the executor is busy.
POSE_QOS = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST, reliability=qos_profile_sensor_data.reliability,
                      durability=qos_profile_sensor_data.durability)


def pose_message_type(pose_type: str):
    if pose_type == "odometry":
        from nav_msgs.msg import Odometry
        return Odometry
    if pose_type == "pose_stamped":
        from geometry_msgs.msg import PoseStamped
        return PoseStamped
    from geometry_msgs.msg import PoseWithCovarianceStamped
    return PoseWithCovarianceStamped


def pose_of(msg) -> Tuple[float, Pose]:
    """(stamp, position) of an Odometry, PoseStamped or PoseWithCovarianceStamped."""
    pose = msg.pose.pose if hasattr(msg.pose, "pose") else msg.pose
    stamp = to_seconds(msg.header.stamp)
    return stamp, Pose(pose.position.x, pose.position.y, pose.position.z, msg.header.frame_id or "map")


class NodeMemory:
    def __init__(self, node, config: MemoryConfig, loaded, engine_config: EngineConfig, scheduler):
        self.node = node
        self.config = config
        name = node.get_fully_qualified_name()
        self.path = Path(config.path).expanduser() if config.path else default_path(name)
        self.scheduler = scheduler
        self.summary_model = SummaryModel(loaded, engine_config)
        self.error: Optional[str] = None
        self.store: Optional[MemoryStore] = None
        self.summaries: Optional[SummaryStore] = None
        self.writer: Optional[MemoryWriter] = None
        self.moved_aside: Optional[Path] = None
        self.poses = PoseHistory()
        self.windows_without_pose = 0
        self.summaries_behind = 0
        self._pending: Dict[Tuple[str, str], SummaryJob] = {}
        self._pending_lock = threading.Lock()
        self._pose_subscription = None
        self._tf_buffer = self._tf_listener = None
        self.pose_source = "none"
        self.planner = SummaryPlanner(config)
        # New texts and queries are embedded in a child process: in this one, the embedding model's
        # Python would hold the interpreter lock the inference worker needs (docs/benchmarks.md).
        self._embedder = embedder = ProcessEmbedder()
        self._readers_lock = threading.Lock()
        self._generation = 0  # the writer's file generation the reading connections are open on
        self._read_error: Optional[str] = None
        self._writer_lock: Optional[WriterLock] = None
        self.summarizer: Optional[Summarizer] = None
        if not config.path:
            _point_to_the_old_default(self.path)
        try:
            self._writer_lock = WriterLock(self.path, f"svlm node {name}")
            self.store = MemoryStore(self.path, config, embedder, check=True)  # a corrupt file is moved aside
            self.summaries = SummaryStore(self.path)
            entries = self.store.count()
        except MemoryError as error:
            self.error = str(error)
            log.error("%s; descriptions go on, but nothing is remembered and ~/recall answers with this error",
                      error)
            self._close_readers()
            if self._writer_lock is not None:
                self._writer_lock.release()
            return
        self.moved_aside = self.store.moved_aside
        self.writer = MemoryWriter(lambda: MemoryStore(self.path, config, embedder), config.queue_size,
                                   close_readers=self._close_readers)
        self.summarizer = Summarizer(self.store, self.summaries, config, self.count_tokens, self.summary_model)
        self._start_pose_source()
        log.info("memory: %s (%d entries)", self.path, entries)

    def update_config(self, config: MemoryConfig) -> None:
        """Runtime parameters (ask and summary settings); the rest apply at the next configure."""
        self.config = config
        if self.available:
            self.summarizer.config = config

    @property
    def available(self) -> bool:
        return self.error is None

    def count_tokens(self, text: str) -> int:
        return self.summary_model.count_tokens(text)

    # ----- pose -------------------------------------------------------------------------------
    def _start_pose_source(self) -> None:
        config = self.config
        if config.base_frame:
            try:
                import tf2_ros  # an apt ROS install has it; the PyPI wheels do not
            except ImportError:
                log.warning("memory.base_frame is %r but tf2_ros is not importable (install ros-jazzy-tf2-ros); "
                            "%s", config.base_frame,
                            "using memory.pose_topic instead" if config.pose_topic else "no pose is stored")
            else:
                self._tf_buffer = tf2_ros.Buffer()
                self._tf_listener = tf2_ros.TransformListener(self._tf_buffer, self.node)
                self.pose_source = f"tf {config.map_frame} <- {config.base_frame}"
                return
        if config.pose_topic:
            self._pose_subscription = self.node.create_subscription(
                pose_message_type(config.pose_type), config.pose_topic, self._on_pose, POSE_QOS)
            self.pose_source = f"{config.pose_topic} ({config.pose_type})"

    def _on_pose(self, msg) -> None:
        stamp, pose = pose_of(msg)
        self.poses.add(stamp, pose)

    def pose_at(self, stamp_s: float) -> Optional[Pose]:
        if self._tf_buffer is not None:
            import rclpy.time
            try:
                transform = self._tf_buffer.lookup_transform(self.config.map_frame, self.config.base_frame,
                                                             rclpy.time.Time(seconds=stamp_s))
            except Exception:  # noqa: BLE001 - tf2 raises several kinds; no transform means no pose
                return None
            t = transform.transform.translation
            return Pose(t.x, t.y, t.z, self.config.map_frame)
        return self.poses.at(stamp_s, self.config.pose_tolerance_s)

    # ----- writing ----------------------------------------------------------------------------
    def record(self, camera: str, start_s: float, end_s: float, text: str, silent: bool) -> None:
        """A described window (on the worker thread, after publishing): queued, never waited on."""
        if self.writer is None:
            return
        pose = self.pose_at(end_s)
        if pose is None and self.pose_source != "none":
            self.windows_without_pose += 1
        self.writer.offer(Entry(camera, start_s, end_s, text, silent, pose))
        for job in self.planner.observe(camera, end_s):
            self._plan(job)

    def _plan(self, job: SummaryJob) -> None:
        key = (job.camera, job.tier)
        with self._pending_lock:
            if key in self._pending:
                self.summaries_behind += 1  # the previous period's summary still waits for an idle model
            self._pending[key] = job
        self.scheduler.when_idle(lambda: self._summarize(job))

    def _summarize(self, job: SummaryJob):
        generation = -1
        try:
            self.writer.flush(timeout=30, embedded=False)  # the period's last windows must be in the store
            generation = self._readers()[2]
            return self.summarizer.run(job)
        except (MemoryError, sqlite3.Error, OSError) as error:
            error = self._read_failed(error, generation, "summarizing")
            log.error("memory: the %s summary of %s was not written: %s", job.tier, job.camera, error)
            return None
        finally:
            with self._pending_lock:
                if self._pending.get((job.camera, job.tier)) is job:
                    del self._pending[(job.camera, job.tier)]

    def seed(self, camera: str) -> str:
        if self.summaries is None:
            return ""
        try:
            return seed_text(self.summaries, camera)
        except (MemoryError, sqlite3.Error, OSError) as error:
            log.error("memory: %s; %s starts without previous text", self._read_failed(error, 0, "resuming"), camera)
            return ""

    # ----- the reading connections ------------------------------------------------------------
    def _readers(self) -> Tuple[MemoryStore, SummaryStore, int]:
        """The reading connections, reopened when the writer has replaced a broken file."""
        writer = self.writer
        with self._readers_lock:
            if writer is not None and writer.replacing:
                raise MemoryError(f"memory store {self.path} is being replaced; ask again in a moment")
            if writer is not None and (writer.generation != self._generation or self.store is None):
                self._close_readers_locked()
                generation = writer.generation
                try:
                    self.store = MemoryStore(self.path, self.config, self._embedder)
                    self.summaries = SummaryStore(self.path)
                except MemoryError:
                    self._close_readers_locked()
                    raise
                self._generation = generation
                self.summarizer.store, self.summarizer.summaries = self.store, self.summaries
            if self.store is None:
                raise MemoryError(f"memory store {self.path} is being replaced; ask again in a moment")
            return self.store, self.summaries, self._generation

    def _close_readers(self) -> None:
        """Before the writer moves a broken file aside (and at close): no connection of ours stays on it."""
        with self._readers_lock:
            self._close_readers_locked()

    def _close_readers_locked(self) -> None:
        for closable in (self.store, self.summaries):
            if closable is not None:
                closable.close()  # waits for a query in flight on it
        self.store = self.summaries = None

    def _read_failed(self, error: BaseException, generation: int, doing: str) -> MemoryError:
        """The MemoryError for a failed read; a corrupt file is handed to the writer to replace."""
        error = failure(self.path, error, doing)
        self._read_error = str(error)
        if isinstance(error, StoreCorrupt) and self.writer is not None:
            self.writer.report_broken(error, generation)
        return error

    # ----- reading ----------------------------------------------------------------------------
    def recall(self, request) -> Tuple[bool, str, List[MemoryEntry]]:
        if not self.available:
            return False, f"the memory is unavailable: {self.error}", []
        since = _seconds(request.since)
        until = _seconds(request.until)
        near = (request.x, request.y, request.radius) if request.use_place else None
        if near is not None and not all(math.isfinite(value) for value in near):
            return False, f"x, y and radius must be finite numbers, got {near[0]}, {near[1]}, {near[2]}", []
        generation = -1
        try:
            store, _, generation = self._readers()
            hits = store.recall(request.query, since, until, request.camera, near, request.limit or 10)
        except ValueError as error:
            message = str(error)
            if near is not None and self.pose_source == "none" and "pose" in message:
                message += " (this node has no pose source: set memory.pose_topic, or memory.base_frame with tf)"
            return False, message, []
        except (MemoryError, sqlite3.Error, OSError) as error:
            return False, str(self._read_failed(error, generation, "searching")), []
        self._read_error = None
        entries = [to_entry_msg(Source("entry", h.camera, h.start, h.end, h.text, h.pose, h.score), h.silent)
                   for h in hits]
        return True, (f"{len(entries)} entries" if entries else "no entry matches the query and filters"), entries

    def recollect(self, question: str, now_s: float) -> Tuple[Optional[Recollection], str]:
        """Sources for a question, or (None, why not); a failure here never stops the answer."""
        if not self.available:
            return None, f"answered from the live stream only: the memory is unavailable ({self.error})"
        generation = -1
        try:
            store, summaries, generation = self._readers()
            found = recollect(question, now_s, store, summaries, self.config, self.count_tokens)
        except ValueError as error:
            return None, f"answered from the live stream only: {error}"
        except (MemoryError, sqlite3.Error, OSError) as error:
            return None, f"answered from the live stream only: {self._read_failed(error, generation, 'recollecting')}"
        self._read_error = None
        return found, ""

    # ----- lifecycle --------------------------------------------------------------------------
    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> int:
        """Stop within `timeout` seconds in all: the embedding child is stopped at once (nothing is
        started, loaded or waited for: its texts are embedded by the next run), and the writer
        commits what it can of its queue. Returns how many queued entries were not committed
        (the writer logs them)."""
        deadline = time.monotonic() + timeout
        if self._pose_subscription is not None:
            self.node.destroy_subscription(self._pose_subscription)
            self._pose_subscription = None
        writer, unwritten = self.writer, 0
        if writer is not None:
            writer.stop_embedding()
        self._embedder.close(timeout=min(1.0, timeout / 4))
        if writer is not None:
            unwritten = writer.close(max(0.0, deadline - time.monotonic()))
        self._close_readers()
        if self._writer_lock is not None and (writer is None or not writer._thread.is_alive()):
            self._writer_lock.release()  # a writer still busy past the deadline keeps it until the process ends
        self._writer_lock = None
        self.writer = None
        return unwritten

    def status_values(self) -> Dict[str, object]:
        writer = self.writer
        return {
            "memory_path": str(self.path), "memory_written": writer.written if writer else 0,
            "memory_dropped": writer.dropped if writer else 0, "memory_write_errors": writer.errors if writer else 0,
            "memory_lost": writer.lost if writer else 0,
            "memory_awaiting_embedding": writer.awaiting_embedding if writer else 0,
            "memory_embedding_errors": writer.embedding_errors if writer else 0,
            "summaries_done": self.summarizer.done if self.available else 0,
            "summaries_waiting": len(self._pending), "summaries_behind": self.summaries_behind,
            "pose_source": self.pose_source, "poses_received": self.poses.received,
            "windows_without_pose": self.windows_without_pose,
            "memory_moved_aside": str((writer.moved_aside if writer and writer.moved_aside else self.moved_aside) or ""),
        }

    def problem(self) -> Optional[str]:
        """What is wrong with the memory now, as one complete message (what, which file, what to
        do), or None."""
        if self.error:
            return self.error
        if self.writer is not None and self.writer.last_error:
            return self.writer.last_error
        return self._read_error


def _point_to_the_old_default(path: Path) -> None:
    """Before stores were per node, every node used $ROS_HOME/svlm/memory.sqlite: say where it is."""
    old = default_path("/svlm").parent.parent / "memory.sqlite"
    if old.exists() and not path.exists():
        log.warning("memory: %s (one store for every node, from an earlier svlm_ros) is not used any more: this node "
                    "keeps its own at %s; to go on with the old one, set memory.path to it", old, path)


def _seconds(stamp) -> Optional[float]:
    value = to_seconds(stamp)
    return value if value > 0 else None


def to_entry_msg(source: Source, silent: bool = False) -> MemoryEntry:
    msg = MemoryEntry(camera=source.camera, text=source.text, silent=silent, kind=source.kind,
                      score=float(source.score))
    msg.start = to_time_msg(source.start)
    msg.end = to_time_msg(source.end)
    if source.pose is not None:
        msg.has_pose = True
        msg.position = Point(x=float(source.pose.x), y=float(source.pose.y), z=float(source.pose.z))
        msg.frame_id = source.pose.frame
    return msg
