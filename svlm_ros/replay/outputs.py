"""What a replay writes as it goes: descriptions.jsonl, WebVTT per camera, an output bag.

Every writer leaves a complete, valid file after each window it writes (lines are flushed, the
bag is closed by the context manager even on Ctrl-C), so an interrupted replay keeps everything
it described.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from rosbags.rosbag2 import StoragePlugin, Writer

from ..sources.messages import DESCRIPTION, IMAGE_ANNOTATIONS, typestore
from ..sources.stamps import split_seconds
from ..sources.timed_text import vtt_time

DESCRIPTION_TOPIC = "/svlm/description"
log = logging.getLogger(__name__)


def jsonl_lines(path: Path) -> Iterator[Tuple[int, Dict]]:
    """(line number, object) of a JSONL file a replay wrote; a line torn by a crash is skipped."""
    with path.open() as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d: not JSON (cut short by an interrupted write?), ignored", path, number)


def read_jsonl(path: Path) -> List[Dict]:
    """Every object of a JSONL file, [] when it does not exist."""
    return [item for _, item in jsonl_lines(path)] if path.exists() else []


@dataclass
class WindowRecord:
    """One line of descriptions.jsonl: a described (or skipped) window of one camera."""

    bag: str
    camera: str
    index: int  # windows since the camera's stream started
    start: float  # sensor time (header stamps), seconds
    end: float
    stream_start: float  # seconds since the camera's first frame in this bag
    stream_end: float
    text: str
    silent: bool
    skipped: bool  # realtime mode: the model was busy and the window was skipped, as on the robot
    vision_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    latency_s: float = 0.0  # from the window's last frame to its description (queueing included)
    generated_tokens: int = 0
    cache_tokens: int = 0


class DescriptionsFile:
    def __init__(self, path: Path):
        self.path = path
        self._file = path.open("w")

    def write(self, record: WindowRecord) -> None:
        self._file.write(json.dumps(asdict(record)) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class SubtitleFiles:
    """A WebVTT file per camera, cues in stream seconds so they line up with the camera's video."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._files: Dict[str, object] = {}

    @staticmethod
    def file_name(camera: str) -> str:
        return (re.sub(r"[^A-Za-z0-9]+", "_", camera).strip("_") or "camera") + ".vtt"

    def write(self, record: WindowRecord) -> None:
        if record.silent or record.skipped or not record.text:
            return
        handle = self._files.get(record.camera)
        if handle is None:
            handle = (self.directory / self.file_name(record.camera)).open("w")
            handle.write("WEBVTT\n\n")
            self._files[record.camera] = handle
        handle.write(f"{vtt_time(record.stream_start)} --> {vtt_time(record.stream_end)}\n{record.text}\n\n")
        handle.flush()

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()


def annotation_topic(camera: str) -> str:
    """Foxglove's Image panel lists annotation topics; this one sits beside the camera's."""
    return camera.removesuffix("/compressed") + "/svlm_annotations"


def _stamp(store, seconds: float):
    sec, nanosec = split_seconds(seconds)
    return store.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)


class OutputBag:
    """Descriptions and Foxglove annotations (and, with copy_images, the cameras) in a rosbag2.

    Messages are logged when the robot would publish them: at the end of their window."""

    def __init__(self, path: Path, storage: str = "mcap", image_topics: Optional[Dict[str, str]] = None):
        self.store = typestore()
        plugin = StoragePlugin.SQLITE3 if storage == "sqlite3" else StoragePlugin.MCAP
        self.writer = Writer(path, version=9, storage_plugin=plugin)
        self.writer.open()
        self._descriptions = self.writer.add_connection(DESCRIPTION_TOPIC, DESCRIPTION, typestore=self.store)
        self._annotations: Dict[str, object] = {}
        self._images = {topic: self.writer.add_connection(topic, msgtype, typestore=self.store)
                        for topic, msgtype in (image_topics or {}).items()}
        self._last_ns = 0

    def _log_time(self, seconds: float) -> int:
        # rosbag2 players replay in log-time order; keep it monotonic across topics.
        self._last_ns = max(self._last_ns, int(round(seconds * 1e9)))
        return self._last_ns

    def write_image(self, topic: str, log_time_ns: int, rawdata: bytes) -> None:
        self._last_ns = max(self._last_ns, log_time_ns)
        self.writer.write(self._images[topic], self._last_ns, rawdata)

    def write(self, record: WindowRecord, frame_id: str) -> None:
        if record.skipped:
            return
        store, types = self.store, self.store.types
        end = _stamp(store, record.end)
        msg = types[DESCRIPTION](
            header=types["std_msgs/msg/Header"](stamp=end, frame_id=frame_id),
            window_start=_stamp(store, record.start), window_end=end, camera=record.camera, text=record.text,
            silent=record.silent, index=record.index, latency=float(record.latency_s),
            generated_tokens=record.generated_tokens, cache_tokens=record.cache_tokens)
        log_time = self._log_time(record.end)
        self.writer.write(self._descriptions, log_time, store.serialize_cdr(msg, DESCRIPTION))
        connection = self._annotations.get(record.camera)
        if connection is None:
            connection = self.writer.add_connection(annotation_topic(record.camera), IMAGE_ANNOTATIONS,
                                                    typestore=store)
            self._annotations[record.camera] = connection
        white, shade = types["foxglove_msgs/msg/Color"](r=1.0, g=1.0, b=1.0, a=1.0), \
            types["foxglove_msgs/msg/Color"](r=0.0, g=0.0, b=0.0, a=0.6)
        start = _stamp(store, record.start)
        text = types["foxglove_msgs/msg/TextAnnotation"](
            timestamp=start, position=types["foxglove_msgs/msg/Point2"](x=8.0, y=24.0),
            text=("(silent)" if record.silent else record.text), font_size=18.0, text_color=white,
            background_color=shade, metadata=[])
        pair = types["foxglove_msgs/msg/KeyValuePair"]
        metadata = [pair(key="window", value=str(record.index)),
                    pair(key="silent", value="true" if record.silent else "false")]
        annotations = types[IMAGE_ANNOTATIONS](timestamp=start, circles=[], points=[], texts=[text],
                                               metadata=metadata)
        self.writer.write(connection, log_time, store.serialize_cdr(annotations, IMAGE_ANNOTATIONS))

    def close(self) -> None:
        self.writer.close()
