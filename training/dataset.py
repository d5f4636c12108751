"""The training dataset: sources (bags, videos, timed text) cut into windows and written as shards.

What it owns:
- finding each source's per-second text (a sidecar file, a topic in the bag, or a teacher's
  labels) and assigning each word to the engine window (second) in which it ends (the rule,
  the formats and the sidecar names are svlm_ros/sources', shared with svlm eval);
- sampling and resizing frames exactly as the engine does (WindowAssembler picks the frames of
  each second, engine.frames resizes them), streaming, so an hours-long bag needs memory for one
  window of frames only;
- cutting overlapping windows (24 s, stride 12 s by default), each with the text before it as
  its previous text, trimmed to its first and last tokens as the engine's cache trims it;
- writing numbered shards of a fixed number of samples plus a manifest, and reading them back
  (`ShardedDataset`), with a report of everything skipped and why.

Layout of a dataset directory (training/README.md explains why):
  manifest.json            format, settings, tokenizer, shards (name, samples, bytes), totals
  report.json              what was skipped and why, per reason, with examples
  shard-000000.npz         one member per sample, "000017.npy": uint8 (seconds, frames, H, W, 3)
  shard-000000.jsonl       one line per sample: source, camera, times, per-second text, previous ids
"""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from svlm_ros.config import EngineConfig, NodeConfig
from svlm_ros.engine.frames import TEMPORAL_PATCH, resize_frames, target_size
from svlm_ros.engine.segments import previous_text_kept
from svlm_ros.engine.windows import Window
from svlm_ros.sources.bags import (BAG_SUFFIXES, SIDECARS, find_sidecar, image_topics, is_bag, is_sidecar,
                                   mcap_repair_hint, open_bag, read_lazily, run_name, truncated_mcaps)
from svlm_ros.sources.images import BadImage, to_rgb
from svlm_ros.sources.intake import FrameIntake
from svlm_ros.sources.timed_text import EPS, FILE_FORMATS, is_absolute, load_timed_text, same_camera, second_of
from svlm_ros.sources.timed_text import words_in_time_order
from svlm_ros.sources.videos import VIDEO_SUFFIXES, is_video_file, read_frames

log = logging.getLogger(__name__)

FORMAT = "svlm-sft-shards/1"
EXAMPLES_PER_REASON = 20


# ----- sources ---------------------------------------------------------------------------------
@dataclass
class Source:
    """One video (a bag or a video file) and where its text comes from."""

    video: Path
    text: Optional[str] = None  # a reference spec: file, or BAG:/topic; None: not found

    @property
    def name(self) -> str:
        return str(self.video)

    @property
    def is_bag(self) -> bool:
        return self.video.is_dir() or self.video.suffix in BAG_SUFFIXES


def _is_video(path: Path) -> bool:
    return is_bag(path) or is_video_file(path)


def parse_sources(specs: Sequence[str], text_topic: Optional[str] = None) -> List[Source]:
    """`PATH` (a bag, a video file, or a folder of them; text from a sidecar or `text_topic`),
    or `PATH=TEXT` (TEXT: a .jsonl/.vtt/.srt file, or `/topic` in that bag)."""
    sources: List[Source] = []
    for spec in specs:
        path_text, sep, text = spec.partition("=")
        path = Path(path_text)
        if not sep and path.is_file() and is_sidecar(path):
            log.info("%s is a text sidecar, not a video; it is read with its bag or video", path)
            continue  # a shell glob such as bags/* names the sidecars too
        if not path.exists():
            raise FileNotFoundError(f"source {path} does not exist (a bag, a video file, or a folder of them)")
        if path.is_dir() and not _is_video(path):
            inner = sorted(p for p in path.iterdir() if _is_video(p))
            if not inner:
                raise FileNotFoundError(f"{path} is neither a bag nor a folder with bags or video files "
                                        f"({', '.join(BAG_SUFFIXES + VIDEO_SUFFIXES)})")
            if sep:
                raise ValueError(f"source {spec}: `=TEXT` names the text of one bag or video, not of a folder")
            sources += [_source(p, None, text_topic) for p in inner]
        else:
            sources.append(_source(path, text if sep else None, text_topic))
    return sources


def _source(video: Path, text: Optional[str], text_topic: Optional[str]) -> Source:
    if text:
        if Path(text).suffix.lower() in FILE_FORMATS or Path(text).is_file():
            if not Path(text).is_file():
                raise FileNotFoundError(f"source {video}={text}: the text file {text} does not exist")
            return Source(video, text)  # an absolute path starts with "/" as a topic does
        if not text.startswith("/"):
            raise ValueError(f"source {video}={text}: TEXT is a .jsonl/.vtt/.srt file or a /topic in the bag")
        return Source(video, f"{video}:{text}")
    sidecar = find_sidecar(video)
    if sidecar is not None:
        return Source(video, str(sidecar))
    if text_topic and (video.is_dir() or video.suffix in BAG_SUFFIXES):
        return Source(video, f"{video}:{text_topic}")
    return Source(video, None)


# ----- the report ------------------------------------------------------------------------------
@dataclass
class Report:
    """What was skipped and why; nothing a source does wrong stops the build."""

    counts: Dict[str, int] = field(default_factory=dict)
    examples: Dict[str, List[str]] = field(default_factory=dict)
    sources: Dict[str, Dict] = field(default_factory=dict)

    def skip(self, reason: str, detail: str, count: int = 1) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + count
        examples = self.examples.setdefault(reason, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append(detail)

    def as_dict(self) -> Dict:
        return {"skipped": {reason: {"count": count, "examples": self.examples.get(reason, [])}
                            for reason, count in sorted(self.counts.items())},
                "sources": self.sources}


# Reasons, as they appear in report.json.
SOURCE_UNREADABLE = "source could not be opened"
SOURCE_NO_TEXT = "source without text"
TEXT_UNREADABLE = "text could not be read"
BAD_FRAME = "unreadable frames"
MISSING_SECONDS = "seconds without frames"
TEXT_OUTSIDE = "words outside the video"
TEXT_IN_GAP = "words in seconds without frames"
WINDOW_SILENT = "windows without any text"
WINDOW_GAPS = "windows missing too many seconds"
WINDOW_RESOLUTION = "windows with a resolution change"
TIME_BACK = "seconds after a jump back in time"
# The frame intake's counters (sources/intake.py), as the node's diagnostics count them.
FRAME_COUNTERS = {"zero_stamps": "frames with header.stamp = 0 (the driver sets no stamp; dropped)",
                  "repeated_stamps": "frames repeating the previous frame's header.stamp (dropped)",
                  "late_frames": "late, out-of-order or clock-glitch frames (dropped)"}
BAG_DAMAGED = "bags damaged on disk (read up to the damage)"
MESSAGES_LOST = "camera messages the bag's index lists but its chunks no longer hold"


# ----- cutting one camera's stream into samples --------------------------------------------------
@dataclass
class Second:
    index: int
    frames: np.ndarray  # (count, H, W, 3) uint8, padded to the temporal patch, resized as the engine does


class StreamCutter:
    """One camera's seconds in, overlapping windows out (as sample dicts for the writer)."""

    def __init__(self, source: str, camera: str, words: List[Tuple[float, str]], engine: EngineConfig,
                 config, encode: Callable[[str], List[int]], emit, report: Report):
        self.source, self.camera, self.engine, self.config = source, camera, engine, config
        self.encode, self.emit, self.report = encode, emit, report
        self.unit = engine.frames.window_seconds
        self.length = max(1, round(config.window_seconds / self.unit))
        self.stride = max(1, round(config.stride_seconds / self.unit))
        self.min_length = max(1, round(config.min_window_seconds / self.unit))
        self.words = words  # (end time in stream seconds, word), sorted
        self.text: Dict[int, List[str]] = {}
        for end, word in words:
            if end >= -EPS:
                self.text.setdefault(second_of(end, self.unit), []).append(word)
            else:
                report.skip(TEXT_OUTSIDE, f"{source} {camera}: {word!r} ends at {end:.2f} s, before the first frame")
        self.buffer: Dict[int, Second] = {}
        self.seen: set = set()
        self.next_start = 0
        self.last_end = 0
        self.newest = -1
        # Previous text: context, then each second's answer words, as the engine moves them; cut
        # by the engine's own rule with the robot's cache settings (segments.previous_text_kept).
        self.prev_ids: List[int] = list(encode(engine.prompt.context))
        self.prev_upto = 0  # seconds already added to the previous text
        self.samples = 0

    def answer_text(self, index: int) -> str:
        return " ".join(self.text.get(index, []))

    def add(self, second: Second) -> None:
        self.buffer[second.index] = second
        self.seen.add(second.index)
        self.newest = max(self.newest, second.index)
        while self.next_start + self.length <= second.index:  # every second of that window is final
            self._cut(self.next_start, self.next_start + self.length)
            self.next_start += self.stride

    def finish(self) -> None:
        total = self.newest + 1
        while self.next_start < total:
            end = min(self.next_start + self.length, total)
            if end > self.last_end and end - self.next_start >= self.min_length:
                self._cut(self.next_start, end)
            self.next_start += self.stride
        missing = [k for k in range(total) if k not in self.seen]
        if missing:
            self.report.skip(MISSING_SECONDS, f"{self.source} {self.camera}: {len(missing)} s, first at "
                                              f"{missing[0] * self.unit:.0f} s", len(missing))
        gap_words = sum(len(self.text[k]) for k in missing if k in self.text)
        if gap_words:
            self.report.skip(TEXT_IN_GAP, f"{self.source} {self.camera}: {gap_words} words", gap_words)
        outside = sum(len(words) for k, words in self.text.items() if k >= total)
        if outside:
            first = min(k for k in self.text if k >= total)
            self.report.skip(TEXT_OUTSIDE, f"{self.source} {self.camera}: {outside} words after the video ends "
                                           f"({total * self.unit:.0f} s), first at {first * self.unit:.0f} s", outside)

    def _previous_ids(self, start: int) -> List[int]:
        for index in range(self.prev_upto, start):
            text = self.answer_text(index)
            if text:
                self.prev_ids.extend(self.encode(" " + text))
        self.prev_upto = max(self.prev_upto, start)
        kept = previous_text_kept(len(self.prev_ids), self.engine.cache)
        if len(kept) > 1:  # what is cut never comes back: drop it, so a long stream stays small
            (_, sink), (tail, _) = kept
            self.prev_ids[sink:tail] = []
        return list(self.prev_ids)

    def _cut(self, start: int, end: int) -> None:
        self.last_end = end
        where = f"{self.source} {self.camera} {start * self.unit:.0f}-{end * self.unit:.0f} s"
        previous = self._previous_ids(start)
        present = [self.buffer[k] for k in range(start, end) if k in self.buffer]
        for k in [k for k in self.buffer if k < self.next_start + self.stride]:
            del self.buffer[k]  # no later window starts before next_start + stride
        if len(present) < (1 - self.config.max_missing_fraction) * (end - start) or not present:
            self.report.skip(WINDOW_GAPS, f"{where}: frames for {len(present)} of {end - start} s")
            return
        texts = [self.answer_text(s.index) for s in present]
        if not any(texts) and not self.config.keep_silent_windows:
            self.report.skip(WINDOW_SILENT, where)
            return
        shapes = {s.frames.shape[1:] for s in present}
        if len(shapes) > 1:
            self.report.skip(WINDOW_RESOLUTION, f"{where}: {sorted(shapes)}")
            return
        width = max(len(s.frames) for s in present)
        frames = np.zeros((len(present), width) + present[0].frames.shape[1:], dtype=np.uint8)
        for row, second in enumerate(present):
            frames[row, :len(second.frames)] = second.frames
        meta = {
            "source": self.source, "camera": self.camera,
            "start_s": start * self.unit, "end_s": end * self.unit,
            "stream_start": start == 0,  # the standing instruction goes in its first turn
            "seconds": [{"index": s.index, "start_s": s.index * self.unit, "end_s": (s.index + 1) * self.unit,
                         "frames": int(len(s.frames)), "text": t} for s, t in zip(present, texts)],
            "previous_ids": previous,
        }
        self.samples += 1
        self.emit(meta, frames)


def prepare_second(window: Window, engine: EngineConfig) -> Second:
    """The frames of one engine window, padded and resized exactly as preprocess_frames does,
    so the trainer's preprocess_frames of them is the engine's of the original frames."""
    frames = list(window.frames)
    if len(frames) % TEMPORAL_PATCH:
        frames += [frames[-1]] * (TEMPORAL_PATCH - len(frames) % TEMPORAL_PATCH)
    height, width = target_size(frames[0].shape[0], frames[0].shape[1], engine.frames.min_pixels,
                                engine.frames.max_pixels)
    return Second(window.index, resize_frames(frames, height, width))


# ----- reading frames from sources ---------------------------------------------------------------
class _Camera(FrameIntake):
    """A camera's frames into seconds for the cutter, through the node's own frame intake (the
    same stamp checks, sampling, conversion, window assembly and counters as the node and replay).

    At a jump back in time that goes on, the node starts a fresh stream; here the camera's
    samples end (a new stream would restart the prompt's clock, and relative reference times would
    no longer match). Its frames are still counted, so report.json's counters are the node's."""

    def __init__(self, engine: EngineConfig, node: NodeConfig, cutter: StreamCutter, report: Report, name: str):
        super().__init__(engine.frames, node.restart_after_s, node.jump_confirm_s)
        self.engine, self.cutter, self.report, self.name = engine, cutter, report, name
        self.origin: Optional[float] = None
        self.stopped_at: Optional[float] = None

    def _window_ready(self, window: Window) -> None:
        if self.stopped_at is None:
            self.cutter.add(prepare_second(window, self.engine))

    def _restarted(self) -> None:
        self.stopped_at = self.assembler.anchor

    def feed_frame(self, stamp_s: float, load: Callable[[], object], convert: Callable[[object], np.ndarray]) -> None:
        if self.origin is None:
            self.origin = stamp_s
        was_stopped = self.stopped_at is not None
        for warning in self.feed_lazy(stamp_s, load, convert):
            if warning.bad_frame:
                self.report.skip(BAD_FRAME, f"{self.cutter.source} {self.name} at {stamp_s - self.origin:.2f} s: "
                                            f"{warning}")
        if self.stopped_at is not None and not was_stopped:
            self.report.skip(TIME_BACK, f"{self.cutter.source} {self.name}: sensor time jumped back after "
                                        f"{stamp_s - self.origin:.1f} s; the rest of this camera is not used")

    def finish(self) -> None:
        self.flush()
        self.cutter.finish()
        where = f"{self.cutter.source} {self.name}"
        for counter, reason in FRAME_COUNTERS.items():
            count = getattr(self.stats, counter)
            if count:
                self.report.skip(reason, f"{where}: {count} frames", count)
        info = self.report.sources.setdefault(self.cutter.source, {})
        info.setdefault("cameras", {})[self.name] = self.stats.as_dict()


def _bag_messages(path: Path) -> Iterator:
    """The cameras' messages, still serialized (sources.bags.read_lazily). The bag is opened now,
    so a bag that cannot be read fails here, before its first message; it closes at the end."""
    reader = open_bag(path)
    try:
        topics = image_topics(reader, [])
    except BaseException:
        reader.close()
        raise

    def iterate():
        try:
            yield from read_lazily(reader, topics)
        finally:
            reader.close()

    return iterate()


class DatasetBuilder:
    def __init__(self, out: Path, config, engine: EngineConfig, node: NodeConfig, tokenizer, overwrite=False):
        self.out, self.config, self.engine, self.node = out, config.validate(), engine.validate(), node
        self.tokenizer = tokenizer
        self.report = Report()
        if out.exists() and any(out.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
            for old in out.iterdir():
                if old.name.startswith("shard-") or old.name in ("manifest.json", "report.json"):
                    old.unlink()
        out.mkdir(parents=True, exist_ok=True)
        self.writer = ShardWriter(out, config.samples_per_shard, config.compress)

    def encode(self, text: str) -> List[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def add(self, source: Source) -> int:
        """Every sample of one source; a source that fails is reported, never fatal."""
        before = self.writer.total
        info = self.report.sources.setdefault(source.name, {"text": source.text, "samples": 0})
        if source.text is None:
            self.report.skip(SOURCE_NO_TEXT, f"{source.name}: no sidecar ({', '.join(SIDECARS)}) beside it, no "
                                             "--text-topic, and no SOURCE=TEXT")
            info["error"] = "no text"
            return 0
        try:
            segments = load_timed_text(source.text)
        except (OSError, ValueError) as error:
            self.report.skip(TEXT_UNREADABLE, f"{source.name}: {error}")
            info["error"] = str(error)
            return 0
        try:
            if source.is_bag:
                self._add_bag(source, segments)
            else:
                self._add_video(source, segments)
        except (OSError, ValueError) as error:
            cut = truncated_mcaps(source.video) if source.is_bag else []
            detail = f"{str(error).rstrip('.')}. {mcap_repair_hint(cut)}" if cut else str(error)
            self.report.skip(SOURCE_UNREADABLE, f"{source.name}: {detail}")
            info["error"] = detail
        info["samples"] = self.writer.total - before
        return info["samples"]

    def _cutter(self, source: Source, camera: str, words, origin_absolute: Optional[float]) -> StreamCutter:
        mine = [(end - (origin_absolute or 0.0), word) for end, word, cam in words
                if cam is None or same_camera(cam, camera)]
        return StreamCutter(source.name, camera, mine, self.engine, self.config, self.encode,
                            lambda meta, frames: self.writer.add(meta, frames), self.report)

    def _add_bag(self, source: Source, segments) -> None:
        messages = _bag_messages(source.video)
        words = words_in_time_order(segments)
        absolute = is_absolute(list(segments))
        cameras: Dict[str, _Camera] = {}
        read: Dict[str, int] = {}
        expected: Dict[str, int] = {}
        first_ns = last_ns = None
        while True:
            try:
                message = next(messages)
            except StopIteration:
                break
            except Exception as error:  # rosbags: ReaderError (chunk checksum), struct.error, ... on damage
                reached = 0.0 if first_ns is None else (last_ns - first_ns) / 1e9
                reason = f"{type(error).__name__}: {str(error).rstrip('.')}"
                self.report.skip(BAG_DAMAGED, f"{source.name}: reading stopped {reached:.1f} s into the cameras' "
                                              f"messages: {reason}; the windows before it are kept. `mcap recover "
                                              "FILE -o FIXED.mcap` (github.com/foxglove/mcap) copies the readable "
                                              "chunks of an MCAP file")
                messages.close()
                expected = {}  # the messages past the damage are reported just above, not again
                break
            topic = message.topic
            first_ns = message.log_ns if first_ns is None else first_ns
            last_ns = message.log_ns
            read[topic] = read.get(topic, 0) + 1
            expected.setdefault(topic, message.connection.msgcount)
            try:
                stamp, _ = message.header()
            except BadImage as error:
                self.report.skip(BAD_FRAME, f"{source.name} {topic} at log time {message.log_ns / 1e9:.3f} s: {error}")
                continue
            camera = cameras.get(topic)
            if camera is None:
                cutter = self._cutter(source, topic, words, stamp if absolute else None)
                camera = cameras[topic] = _Camera(self.engine, self.node, cutter, self.report, topic)
            camera.feed_frame(stamp, message.load, to_rgb)
        for camera in cameras.values():
            camera.finish()
        # A bag without chunk checksums (rosbags writes none) damaged inside a chunk: the reader
        # skips the rest of that chunk without a word, so only the index's counts tell.
        for topic, count in expected.items():
            if read[topic] < count:
                self.report.skip(MESSAGES_LOST, f"{source.name} {topic}: {read[topic]} of the {count} messages the "
                                                "bag lists could be read (the file is damaged inside a chunk)",
                                 count - read[topic])

    def _add_video(self, source: Source, segments) -> None:
        words = words_in_time_order(segments)
        camera = _Camera(self.engine, self.node, self._cutter(source, "video", words, None), self.report, "video")
        for seconds, frame in read_frames(source.video, folder_fps=self.engine.frames.fps):
            camera.feed_frame(seconds, lambda frame=frame: frame, np.asarray)
        camera.finish()

    def finish(self, sources: Sequence[Source]) -> Dict:
        self.writer.close()
        manifest = {
            "format": FORMAT,
            "dataset": _asdict(self.config),
            "engine": {"frames": _asdict(self.engine.frames), "prompt": _asdict(self.engine.prompt),
                       "silence_marker": self.engine.generation.marker_text},
            "tokenizer": tokenizer_identity(self.tokenizer),
            "sources": [s.name for s in sources],
            "samples": self.writer.total,
            "seconds": self.writer.seconds,
            "bytes": self.writer.bytes,
            "shards": self.writer.shards,
        }
        _write_json(self.out / "manifest.json", manifest)
        report = self.report.as_dict()
        report["samples"] = self.writer.total
        _write_json(self.out / "report.json", report)
        return manifest


def tokenizer_identity(tokenizer) -> Dict:
    """Enough to refuse a dataset whose stored previous-text ids came from another vocabulary."""
    probe = tokenizer.encode(" A red circle appears on the left. ...", add_special_tokens=False)
    return {"vocab_size": len(tokenizer), "probe": list(map(int, probe)),
            "name": getattr(tokenizer, "name_or_path", "")}


def _asdict(config) -> Dict:
    return dataclasses.asdict(config)


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


# ----- shards ----------------------------------------------------------------------------------
class ShardWriter:
    """Numbered shards of a fixed number of samples; a shard appears (renamed into place) only
    when complete, so a reader never sees half a shard and an interrupted build loses one at most."""

    def __init__(self, out: Path, per_shard: int, compress: bool):
        self.out, self.per_shard = out, per_shard
        self.compression = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        self.shards: List[Dict] = []
        self.total = self.seconds = self.bytes = 0
        self._zip: Optional[zipfile.ZipFile] = None
        self._lines: List[str] = []

    def _name(self) -> str:
        return f"shard-{len(self.shards):06d}"

    def add(self, meta: Dict, frames: np.ndarray) -> None:
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.out / f"{self._name()}.npz.tmp", "w", self.compression, allowZip64=True)
        member = f"{len(self._lines):06d}"
        # Written member by member: a shard of hundreds of 720p windows never sits in memory.
        with self._zip.open(member + ".npy", "w", force_zip64=True) as handle:
            np.lib.format.write_array(handle, np.ascontiguousarray(frames), allow_pickle=False)
        self._lines.append(json.dumps(dict(meta, member=member)))
        self.total += 1
        self.seconds += len(meta["seconds"])
        if len(self._lines) == self.per_shard:
            self._close_shard()

    def _close_shard(self) -> None:
        if self._zip is None:
            return
        name = self._name()
        self._zip.close()
        self._zip = None
        (self.out / f"{name}.jsonl").write_text("\n".join(self._lines) + "\n")
        os.replace(self.out / f"{name}.npz.tmp", self.out / f"{name}.npz")
        size = (self.out / f"{name}.npz").stat().st_size
        self.bytes += size
        self.shards.append({"name": name, "samples": len(self._lines), "bytes": size})
        self._lines = []

    def close(self) -> None:
        self._close_shard()


@dataclass
class Sample:
    meta: Dict
    frames: np.ndarray  # (seconds, frames, H, W, 3) uint8; second k's frames are frames[k, :counts[k]]

    @property
    def counts(self) -> List[int]:
        return [s["frames"] for s in self.meta["seconds"]]

    def second_frames(self, k: int) -> List[np.ndarray]:
        return list(self.frames[k, :self.counts[k]])


class ShardedDataset:
    """Random access to a dataset directory's samples; each worker process opens shards itself."""

    def __init__(self, directory, indices: Optional[Sequence[int]] = None):
        self.directory = Path(directory)
        path = self.directory / "manifest.json"
        if not path.is_file():
            raise FileNotFoundError(f"{self.directory} has no manifest.json; build it with `svlm build-dataset "
                                    "SOURCES... --out DIR`")
        self.manifest = json.loads(path.read_text())
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{path}: format {self.manifest.get('format')!r}, this code reads {FORMAT}; "
                             "rebuild the dataset")
        self._offsets = np.cumsum([0] + [s["samples"] for s in self.manifest["shards"]])
        self._meta: Dict[int, List[Dict]] = {}
        self._open: Dict[int, zipfile.ZipFile] = {}
        self._pid = os.getpid()
        self.indices = list(range(int(self._offsets[-1]))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def subset(self, indices: Sequence[int]) -> "ShardedDataset":
        return ShardedDataset(self.directory, [self.indices[i] for i in indices])

    def locate(self, index: int) -> Tuple[int, int]:
        shard = int(np.searchsorted(self._offsets, index, side="right") - 1)
        return shard, index - int(self._offsets[shard])

    def metadata(self, shard: int) -> List[Dict]:
        if shard not in self._meta:
            name = self.manifest["shards"][shard]["name"]
            lines = (self.directory / f"{name}.jsonl").read_text().splitlines()
            self._meta[shard] = [json.loads(line) for line in lines if line.strip()]
        return self._meta[shard]

    def all_metadata(self) -> List[Dict]:
        return [self.metadata(self.locate(i)[0])[self.locate(i)[1]] for i in self.indices]

    def _zip(self, shard: int) -> zipfile.ZipFile:
        if os.getpid() != self._pid:  # a forked worker must not share the parent's file offsets
            self._open, self._pid = {}, os.getpid()
        if shard not in self._open:
            name = self.manifest["shards"][shard]["name"]
            self._open[shard] = zipfile.ZipFile(self.directory / f"{name}.npz")
        return self._open[shard]

    def __getitem__(self, i: int) -> Sample:
        shard, row = self.locate(self.indices[i])
        meta = self.metadata(shard)[row]
        with self._zip(shard).open(meta["member"] + ".npy") as handle:
            frames = np.lib.format.read_array(handle, allow_pickle=False)
        return Sample(meta, frames)


def source_names(source: str) -> Tuple[str, str, str]:
    """What an `eval_sources` entry may match: the whole path, the file or folder name, the name
    without its bag or video suffix."""
    return source, Path(source).name, run_name(Path(source))


def split_sources(sources: Sequence[str], eval_fraction: float, eval_sources: Sequence[str]) -> set:
    """Held-out sources: those named (a source's name, or a glob of it, not any part of its path:
    `ls` must not hold out every bag under /home/ls), else a stable hash-chosen fraction (at least
    one when > 0)."""
    if eval_sources:
        held = set()
        for pattern in eval_sources:
            matched = {s for s in sources if any(fnmatch.fnmatchcase(n, pattern) for n in source_names(s))}
            if not matched:
                examples = ", ".join(source_names(s)[2] for s in list(sources)[:5])
                raise ValueError(f"eval_sources: {pattern!r} names none of the dataset's {len(sources)} sources "
                                 f"(a source's name or a glob of it, e.g. {examples})")
            held |= matched
        return held
    if eval_fraction <= 0 or len(sources) < 2:
        return set()
    ranked = sorted(sources, key=lambda s: hashlib.sha1(s.encode()).hexdigest())
    return set(ranked[:max(1, round(eval_fraction * len(sources)))])
