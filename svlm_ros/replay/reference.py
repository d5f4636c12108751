"""Reference timed text for quality evaluation: loading it from files and bags.

A reference is a list of `RefSegment(start, end, text, camera)`: a sentence, a subtitle cue or a
single word with its times. Sources (the spec string picks one):

- `path.jsonl` (or `.json`): one object per line, either a segment `{"start", "end", "text"}` or
  a word `{"word", "start", "end"}` (`"text"` is accepted for a word too: a word is a one-word
  segment), each with an optional `"camera"` (the image topic it describes; without it the line
  applies to every camera). `svlm synth-bag` writes this format beside its bags.
- `path.vtt` (WebVTT) and `path.srt` (SubRip): cues, tags such as `<i>` or `<v Name>` removed.
  They carry no camera.
- `BAG_PATH:/topic`: a topic in a rosbag (anything `rosbags.highlevel.AnyReader` opens).
  `std_msgs/msg/String` messages become zero-length segments at their receive (log) time;
  `svlm_ros/msg/Description` messages become `[window_start, window_end]` with their text and
  camera (silent ones are skipped), so one run's output bag can be another run's reference.

Time base: a time >= 1e8 s (after 1973) is absolute sensor/epoch time, a smaller one counts
seconds since the camera stream's first frame. A reference must use one base throughout.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

ABSOLUTE_THRESHOLD_S = 1e8
FILE_FORMATS = (".jsonl", ".json", ".vtt", ".srt")


@dataclass(frozen=True)
class RefSegment:
    start: float
    end: float
    text: str
    camera: Optional[str] = None


def load_reference(spec: str) -> List[RefSegment]:
    """The segments named by `spec` (see the module docstring), sorted by end time."""
    spec = str(spec)
    path = Path(spec)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".json"):
            segments = _load_jsonl(path)
        elif suffix == ".vtt":
            segments = _load_cues(path, vtt=True)
        elif suffix == ".srt":
            segments = _load_cues(path, vtt=False)
        else:
            raise ValueError(f"reference {path}: unknown format {suffix!r}; use .jsonl, .vtt, .srt or BAG:/topic")
    else:
        split = spec.rfind(":/")
        if split > 0 and not path.exists():
            segments = _load_bag_topic(Path(spec[:split]), spec[split + 1:])
        elif path.is_dir():
            raise ValueError(f"reference {path} is a directory; name a .jsonl/.vtt/.srt file or BAG:/topic")
        else:
            raise FileNotFoundError(f"reference {spec} does not exist (expected a .jsonl, .vtt or .srt file, "
                                    "or BAG_PATH:/topic)")
    is_absolute(segments)  # refuses mixed time bases early, with the file's name
    return sorted(segments, key=lambda s: (s.end, s.start))


def is_absolute(segments: List[RefSegment]) -> bool:
    """True when the segments are in sensor/epoch time, False for stream seconds."""
    flags = {s.end >= ABSOLUTE_THRESHOLD_S for s in segments}
    if len(flags) > 1:
        raise ValueError("the reference mixes absolute times (>= 1e8 s) with stream seconds; use one time base")
    return flags == {True}


def word_end_times(segments: Sequence[RefSegment]) -> List[Tuple[float, str, Optional[str]]]:
    """(end time, word, camera) of every word, in the segments' order.

    A segment's words end evenly over its span, and a word belongs to the second it ends in:
    the quality metrics and the training dataset both use this, so a model is trained and
    scored on the same second for each word."""
    words = []
    for segment in segments:
        parts = segment.text.split()
        span = segment.end - segment.start
        for i, word in enumerate(parts):
            end = segment.start + (i + 1) * span / len(parts) if span > 0 else segment.end
            words.append((end, word, segment.camera))
    return words


def _load_jsonl(path: Path) -> List[RefSegment]:
    segments = []
    with path.open() as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                text = item["word"] if "word" in item else item["text"]
                start, end = float(item["start"]), float(item["end"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise ValueError(f"reference {path}:{number}: expected an object with start, end and text (or word); "
                                 f"{type(error).__name__}: {error}") from None
            if end < start:
                raise ValueError(f"reference {path}:{number}: end {end} is before start {start}")
            camera = item.get("camera")
            segments.append(RefSegment(start, end, str(text).strip(), str(camera) if camera else None))
    return segments


_CUE_TIME = re.compile(r"^\s*((?:\d+:)?\d{1,2}:\d{2}[.,]\d{1,3})\s*-->\s*((?:\d+:)?\d{1,2}:\d{2}[.,]\d{1,3})")
_TAG = re.compile(r"<[^>]*>")


def _cue_seconds(text: str) -> float:
    parts = text.replace(",", ".").split(":")
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + float(part)
    return seconds


def _load_cues(path: Path, vtt: bool) -> List[RefSegment]:
    """WebVTT or SRT: a timing line, then text lines up to a blank line. Identifiers, NOTE/STYLE
    blocks and (SRT) index lines carry no timing line and are skipped as whole blocks."""
    content = path.read_text(encoding="utf-8-sig")
    if vtt and not content.lstrip().startswith("WEBVTT"):
        raise ValueError(f"reference {path}: a WebVTT file must start with 'WEBVTT'")
    segments = []
    for block in re.split(r"\n\s*\n", content.replace("\r\n", "\n")):
        lines = block.strip("\n").split("\n")
        for k, line in enumerate(lines):
            match = _CUE_TIME.match(line)
            if match:
                text = " ".join(_TAG.sub("", t).strip() for t in lines[k + 1:])
                text = " ".join(text.split())
                if text:
                    segments.append(RefSegment(_cue_seconds(match[1]), _cue_seconds(match[2]), text))
                break
    if not segments and content.strip() and not content.strip() == "WEBVTT":
        raise ValueError(f"reference {path}: no cue with a 'start --> end' line found")
    return segments


def _load_bag_topic(bag: Path, topic: str) -> List[RefSegment]:
    from rosbags.highlevel import AnyReader

    from .messages import DESCRIPTION, typestore_with_svlm_types

    if not bag.exists():
        raise FileNotFoundError(f"reference bag {bag} does not exist (spec {bag}:{topic})")
    try:
        reader = AnyReader([bag], default_typestore=typestore_with_svlm_types())
        reader.open()
    except Exception as error:  # rosbags raises several unrelated types for unreadable bags
        raise ValueError(f"reference bag {bag} cannot be opened: {error}") from None
    try:
        connections = [c for c in reader.connections if c.topic == topic]
        if not connections:
            have = ", ".join(sorted(f"{c.topic} ({c.msgtype})" for c in reader.connections)) or "none"
            raise ValueError(f"reference bag {bag} has no topic {topic}; its topics: {have}")
        msgtype = connections[0].msgtype
        if msgtype not in ("std_msgs/msg/String", DESCRIPTION):
            raise ValueError(f"reference topic {topic} in {bag} is {msgtype}; "
                             f"use a std_msgs/msg/String or {DESCRIPTION} topic")
        segments = []
        for connection, log_ns, rawdata in reader.messages(connections=connections):
            msg = reader.deserialize(rawdata, connection.msgtype)
            if msgtype == DESCRIPTION:
                if msg.silent or not msg.text.strip():
                    continue
                segments.append(RefSegment(_stamp(msg.window_start), _stamp(msg.window_end), msg.text.strip(),
                                           msg.camera or None))
            elif msg.data.strip():
                segments.append(RefSegment(log_ns / 1e9, log_ns / 1e9, msg.data.strip()))
        return segments
    finally:
        reader.close()


def _stamp(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9
