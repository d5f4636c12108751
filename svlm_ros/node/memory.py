"""The node's long-term memory: the ROS side of svlm_ros/memory/.

Owns, for one configure-cleanup cycle: the recorder (`memory.recorder.MemoryRecorder`, as a
replay uses it: the writer thread, every described window, never waited on; the summaries,
planned per window and run by the scheduler only when the cameras leave the model idle; the
reading connections for `~/recall` and `~/ask`), the embedding child process, and the robot's
pose (a pose topic, or tf when tf2_ros imports and `memory.base_frame` is set). The recorder
holds the file's writer lock (a second writer, another node or a replay, is refused with who
holds it); the default file is per node (`default_path` of its fully qualified name). At
configure the file is checked whole and a corrupt one moved aside; a file that breaks later is
moved aside by the writer, and the reading connections reopen on the new one. A store that cannot
be used is an ERROR in diagnostics (`problem`: what, which file, what to do) and an answer to
every recall; no store error ever reaches the executor, and the descriptions go on.
"""
from __future__ import annotations

import logging
import math
import sqlite3
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from geometry_msgs.msg import Point
from rclpy.qos import HistoryPolicy, QoSProfile, qos_profile_sensor_data

from svlm_ros.msg import MemoryEntry

from ..config import EngineConfig, MemoryConfig
from ..memory.embedding_process import ProcessEmbedder
from ..memory.errors import StoreError
from ..memory.pose import PoseHistory
from ..memory.questions import Recalled, Recollection, recollect
from ..memory.recorder import MemoryRecorder
from ..memory.records import Entry, Pose
from ..memory.store import MemoryStore, default_path
from ..memory.summaries import SummaryModel, SummaryStore, Summarizer, seed_text
from ..memory.writer import MemoryWriter
from .stamps import to_seconds, to_time_msg

log = logging.getLogger(__name__)
CLOSE_TIMEOUT_S = 5.0  # close() without a deadline: what the writer gets to commit its queue
# A summary runs on the inference worker: a stalled disk may hold it (and the windows behind it)
# this long for the period's last windows to be committed, then it reads what is there.
SUMMARY_FLUSH_S = 30.0
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
        self.recorder: Optional[MemoryRecorder] = None
        self.poses = PoseHistory()
        self.windows_without_pose = 0
        self._pose_subscription = None
        self._tf_buffer = self._tf_listener = None
        self.pose_source = "none"
        # New texts and queries are embedded in a child process: in this one, the embedding model's
        # Python would hold the interpreter lock the inference worker needs (docs/benchmarks.md).
        self._embedder = ProcessEmbedder()
        if not config.path:
            _point_to_the_old_default(self.path)
        try:
            self.recorder = MemoryRecorder(self.path, config, scheduler.when_idle, self.summary_model,
                                           owner=f"svlm node {name}", embedder=self._embedder,
                                           check=True,  # a corrupt file is moved aside
                                           flush_timeout_s=SUMMARY_FLUSH_S)
        except StoreError as error:
            self.error = str(error)
            log.error("%s; descriptions go on, but nothing is remembered and ~/recall answers with this error",
                      error)
            return
        self._start_pose_source()
        log.info("memory: %s (%d entries)", self.path, self.recorder.entries_at_start)

    def update_config(self, config: MemoryConfig) -> None:
        """Runtime parameters (ask and summary settings); the rest apply at the next configure."""
        self.config = config
        if self.recorder is not None:
            self.recorder.update_config(config)

    @property
    def available(self) -> bool:
        return self.error is None

    # What the recorder holds, for diagnostics and tests; None once closed or when unavailable.
    @property
    def writer(self) -> Optional[MemoryWriter]:
        return self.recorder.writer if self.recorder is not None else None

    @property
    def store(self) -> Optional[MemoryStore]:
        return self.recorder.store if self.recorder is not None else None

    @property
    def summaries(self) -> Optional[SummaryStore]:
        return self.recorder.summaries if self.recorder is not None else None

    @property
    def summarizer(self) -> Optional[Summarizer]:
        return self.recorder.summarizer if self.recorder is not None else None

    @property
    def moved_aside(self) -> Optional[Path]:
        return self.recorder.moved_aside if self.recorder is not None else None

    @property
    def summaries_behind(self) -> int:
        return self.recorder.summaries_behind if self.recorder is not None else 0

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
        recorder = self.recorder
        if recorder is None or recorder.writer is None:
            return
        pose = self.pose_at(end_s)
        if pose is None and self.pose_source != "none":
            self.windows_without_pose += 1
        recorder.record(Entry(camera, start_s, end_s, text, silent, pose))

    def seed(self, camera: str) -> str:
        summaries = self.summaries
        if summaries is None:
            return ""
        try:
            return seed_text(summaries, camera)
        except (StoreError, sqlite3.Error, OSError) as error:
            log.error("memory: %s; %s starts without previous text", self.recorder.read_failed(error, 0, "resuming"),
                      camera)
            return ""

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
            store, _, generation = self.recorder.readers()
            hits = store.recall(request.query, since, until, request.camera, near, request.limit or 10)
        except ValueError as error:
            message = str(error)
            if near is not None and self.pose_source == "none" and "pose" in message:
                message += " (this node has no pose source: set memory.pose_topic, or memory.base_frame with tf)"
            return False, message, []
        except (StoreError, sqlite3.Error, OSError) as error:
            return False, str(self.recorder.read_failed(error, generation, "searching")), []
        self.recorder.read_error = None
        entries = [to_entry_msg(Recalled("entry", h.camera, h.start, h.end, h.text, h.pose, h.score), h.silent)
                   for h in hits]
        return True, (f"{len(entries)} entries" if entries else "no entry matches the query and filters"), entries

    def recollect(self, question: str, now_s: float) -> Tuple[Optional[Recollection], str]:
        """Sources for a question, or (None, why not); a failure here never stops the answer."""
        if not self.available:
            return None, f"answered from the live stream only: the memory is unavailable ({self.error})"
        generation = -1
        try:
            store, summaries, generation = self.recorder.readers()
            found = recollect(question, now_s, store, summaries, self.config, self.count_tokens)
        except ValueError as error:
            return None, f"answered from the live stream only: {error}"
        except (StoreError, sqlite3.Error, OSError) as error:
            failed = self.recorder.read_failed(error, generation, "recollecting")
            return None, f"answered from the live stream only: {failed}"
        self.recorder.read_error = None
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
        recorder, unwritten = self.recorder, 0
        if recorder is not None:
            recorder.stop_embedding()
        self._embedder.close(timeout=min(1.0, timeout / 4))
        if recorder is not None:
            unwritten = recorder.close(max(0.0, deadline - time.monotonic()))
        return unwritten

    def status_values(self) -> Dict[str, object]:
        writer = self.writer
        return {
            "memory_path": str(self.path), "memory_written": writer.written if writer else 0,
            "memory_dropped": writer.dropped if writer else 0, "memory_write_errors": writer.errors if writer else 0,
            "memory_lost": writer.lost if writer else 0,
            "memory_awaiting_embedding": writer.awaiting_embedding if writer else 0,
            "memory_embedding_errors": writer.embedding_errors if writer else 0,
            "summaries_done": self.summarizer.done if self.summarizer is not None else 0,
            "summaries_waiting": self.recorder.summaries_waiting if self.recorder is not None else 0,
            "summaries_behind": self.summaries_behind,
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
        return self.recorder.read_error if self.recorder is not None else None


def _point_to_the_old_default(path: Path) -> None:
    """Before stores were per node, every node used $ROS_HOME/svlm/memory.sqlite: say where it is."""
    old = default_path("/svlm").parent.parent / "memory.sqlite"
    if old.exists() and not path.exists():
        log.warning("memory: %s (one store for every node, from an earlier svlm_ros) is not used any more: this node "
                    "keeps its own at %s; to go on with the old one, set memory.path to it", old, path)


def _seconds(stamp) -> Optional[float]:
    value = to_seconds(stamp)
    return value if value > 0 else None


def to_entry_msg(source: Recalled, silent: bool = False) -> MemoryEntry:
    msg = MemoryEntry(camera=source.camera, text=source.text, silent=silent, kind=source.kind,
                      score=float(source.score))
    msg.start = to_time_msg(source.start)
    msg.end = to_time_msg(source.end)
    if source.pose is not None:
        msg.has_pose = True
        msg.position = Point(x=float(source.pose.x), y=float(source.pose.y), z=float(source.pose.z))
        msg.frame_id = source.pose.frame
    return msg
