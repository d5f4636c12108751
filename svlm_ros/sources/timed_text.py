"""Timed text: its formats, the timing of its words, and the second each word belongs to.

Timed text is a list of `RefSegment(start, end, text, camera)`: a sentence, a subtitle cue or a
single word with its times. It is a replay's reference, a training sample's answers and a
teacher's labels. Formats (the spec string picks one):

- `path.jsonl` (or `.json`): one object per line, either a segment `{"start", "end", "text"}` or
  a word `{"word", "start", "end"}` (`"text"` is accepted for a word too: a word is a one-word
  segment), each with an optional `"camera"` (the image topic it describes; without it the line
  applies to every camera). `svlm synth-bag` and `svlm label` write this format.
- `path.vtt` (WebVTT) and `path.srt` (SubRip): cues, tags such as `<i>` or `<v Name>` removed.
  They carry no camera.
- `BAG_PATH:/topic`: a text topic in a bag. `std_msgs/msg/String` messages become zero-length
  segments at their receive (log) time; `svlm_ros/msg/Description` messages become
  `[window_start, window_end]` with their text and camera (silent ones are skipped), so one
  run's output bag can be another run's reference.

Time base: a time >= 1e8 s (after 1973) is absolute sensor/epoch time, a smaller one counts
seconds since the camera stream's first frame. Timed text must use one base throughout.

Words and seconds (the one rule, used by the quality metrics, the report's captions and the
training dataset, so a model is trained and scored on the same second for each word): a
segment's words end evenly over its span (word i of n ends at start + (i+1)*(end-start)/n; a
zero-length segment's words all end at its end), and a word ending at t belongs to the second
whose end is at or after t: second ceil(t) - 1 (t = 3.0 -> second 2, t = 3.2 -> second 3), in
units of the engine's window when it is not 1 s.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

from .bags import BagError, messages, open_bag, topic_type
from .messages import DESCRIPTION
from .stamps import to_seconds

ABSOLUTE_THRESHOLD_S = 1e8
FILE_FORMATS = (".jsonl", ".json", ".vtt", ".srt")
TEXT_TOPIC_TYPES = ("std_msgs/msg/String", DESCRIPTION)
EPS = 1e-6  # stamps are nanosecond integers turned into floats: a boundary is a boundary


@dataclass(frozen=True)
class RefSegment:
    start: float
    end: float
    text: str
    camera: Optional[str] = None


# ----- words and seconds -------------------------------------------------------------------------
def second_of(end_s: float, unit_s: float = 1.0) -> int:
    """The second (engine window of `unit_s`) a word ending at `end_s` belongs to: the first whose
    end is at or after it (3.0 -> 2, 3.2 -> 3); never before the first."""
    return max(0, math.ceil(end_s / unit_s - EPS) - 1)


def word_end_times(segments: Sequence[RefSegment]) -> List[Tuple[float, str, Optional[str]]]:
    """(end time, word, camera) of every word, in the segments' order (the module docstring's rule)."""
    words = []
    for segment in segments:
        parts = segment.text.split()
        span = segment.end - segment.start
        for i, word in enumerate(parts):
            end = segment.start + (i + 1) * span / len(parts) if span > 0 else segment.end
            words.append((end, word, segment.camera))
    return words


def words_in_time_order(segments: Sequence[RefSegment]) -> List[Tuple[float, str, Optional[str]]]:
    """`word_end_times`, sorted by end time (words ending together keep their order)."""
    return sorted(word_end_times(segments), key=lambda w: w[0])


def same_camera(a: Optional[str], b: Optional[str]) -> bool:
    """Whether two camera names are the same camera (a `/compressed` suffix is not a camera)."""
    return (a or "").removesuffix("/compressed") == (b or "").removesuffix("/compressed")


def is_absolute(segments: Sequence[RefSegment]) -> bool:
    """True when the segments are in sensor/epoch time, False for stream seconds."""
    flags = {s.end >= ABSOLUTE_THRESHOLD_S for s in segments}
    if len(flags) > 1:
        raise ValueError("the reference mixes absolute times (>= 1e8 s) with stream seconds; use one time base")
    return flags == {True}


# ----- reading -----------------------------------------------------------------------------------
def load_timed_text(spec: str) -> List[RefSegment]:
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


def json_lines(path: Path) -> Iterator[Tuple[int, str]]:
    """(line number, line) of every line of a JSON Lines file that is not blank."""
    with Path(path).open() as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                yield number, line


def _load_jsonl(path: Path) -> List[RefSegment]:
    segments = []
    for number, line in json_lines(path):
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
    if not bag.exists():
        raise FileNotFoundError(f"reference bag {bag} does not exist (spec {bag}:{topic})")
    reader = open_bag(bag)
    try:
        try:
            msgtype = topic_type(reader, topic, TEXT_TOPIC_TYPES)
        except BagError as error:
            raise ValueError(f"reference bag {error}") from None
        segments = []
        for connection, log_ns, rawdata in messages(reader, [topic]):
            msg = reader.deserialize(rawdata, connection.msgtype)
            if msgtype == DESCRIPTION:
                if msg.silent or not msg.text.strip():
                    continue
                segments.append(RefSegment(to_seconds(msg.window_start), to_seconds(msg.window_end),
                                           msg.text.strip(), msg.camera or None))
            elif msg.data.strip():
                segments.append(RefSegment(log_ns / 1e9, log_ns / 1e9, msg.data.strip()))
        return segments
    finally:
        reader.close()


# ----- writing -----------------------------------------------------------------------------------
def vtt_time(seconds: float) -> str:
    """A WebVTT cue time, HH:MM:SS.mmm."""
    millis = int(round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}.{rest % 1000:03d}"
