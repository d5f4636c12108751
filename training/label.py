"""`svlm label BAG --endpoint URL --model NAME`: a teacher model writes the timed text of a bag.

What it owns: asking any OpenAI-compatible vision endpoint (a large VLM served by vLLM, say)
about each second of a bag or video file, and writing its answers as the JSONL sidecar
`BAG.labels.jsonl` that `svlm build-dataset` reads (`svlm_ros/sources/bags.py`, SIDECARS): one line
per second, `{"start", "end", "text", "camera"}`, in seconds since the camera's first frame, in
time order. A second the teacher calls silent (it answers the engine's silence marker) is written
with `"text": ""`, so it is known to be done and gives the dataset no words.

- **Frames** come from the dataset builder's own reading path (`DatasetBuilder._add_bag` /
  `_add_video`, with each camera's `StreamCutter` replaced by a callback): the engine's
  `WindowAssembler` picks each second's frames from the camera's stamps at `frames.fps`, and
  `engine.frames` resizes them, with the node's parameter file (`--params`, `--set`) as for
  build-dataset. So the teacher sees exactly the pixels a training sample of that second holds,
  and nothing here handles frames itself.
- **One request per second**, each second's frames as base64 JPEG data URLs in one user message
  (`{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,..."}}`), after the last
  `previous_frames` frames of the second before, so the teacher can tell what is new. The prompt
  texts are `LabelConfig` (training/config.py, training/configs/label.yaml); temperature 0.
- **Seconds are independent.** The previous second's *answer* is not in the prompt: with it,
  second k could not be asked before second k-1 had been answered, so a camera's seconds would
  go one at a time (a 72B model at ~2 s a request labels an hour of video in two hours instead of
  a quarter of an hour with 8 in flight), one failed second would change every later prompt,
  and a cached answer would be reusable only while every earlier answer stayed the same. The
  picture of the second before gives the "what changed" context without the chain.
- **Concurrency**: a thread pool of `concurrency` requests in flight; a reader thread decodes and
  encodes ahead, at most 2 x `concurrency` seconds, so memory does not grow with the bag.
- **Retries** are `svlm_ros/chat.py`'s policy (openai-python's), shared with `svlm judge`: 429,
  408, 409, 425 and 5xx, time-outs and dropped connections are retried `retries` times with
  exponential backoff (`backoff_s`, doubling, up to 25% jitter), waiting at least the server's
  Retry-After (seconds or an HTTP date), at most `max_backoff_s`; a stopped run ends the wait at
  once. Other client errors (400, 413, 422) are not retried: asking again cannot help.
- **Errors**: a second that still fails is logged (second, camera, status, the server's
  message), written to `BAG.labels.errors.jsonl` (this run's failures only) and skipped; the
  rest goes on, and the exit status is 1 with a summary line. Errors that would fail every
  second stop the run with a message saying what to check (exit 2, `EndpointError`): the
  endpoint cannot be reached or does not answer chat-completions JSON before any second has
  succeeded, it answers 401, 403 or 404 (a wrong key, path or model name), or it refuses the
  first 3 seconds asked with a client error and has accepted none (a text-only model, or a
  server that takes fewer images per prompt).
- **Cache**: every answer is appended to `BAG.labels.cache.jsonl` (`--cache`) under the SHA-256
  of the request body (model, messages with the frames' bytes, max_tokens, temperature; not the
  endpoint's address): `svlm_ros/chat.py`'s AnswerCache, the one `svlm judge` keeps. The same
  question is never asked twice, whichever server answers it. A file rather than a directory:
  `svlm build-dataset bags/*` would take a directory beside the bags for a source and refuse it,
  while it skips `*.jsonl` files.
- **Resume**: a second already in the output is not asked again, and lines are appended and
  flushed one at a time, so a killed run keeps what it wrote (a line torn by the kill is dropped
  and asked again; `chat.repair_tail`). Answers arriving out of order wait for the seconds before them; at the end,
  if filling a gap left the file out of order (a second that failed before and succeeds now),
  it is rewritten in order and renamed into place. A completed run's file is the same whether it
  took one run or several. Delete the output (not the cache) to write it again with new
  settings; delete the cache too to ask again.
"""
from __future__ import annotations

import argparse
import base64
import json
import logging
import math
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from svlm_ros.chat import AnswerCache, ChatClient, EndpointError, Outcome, repair_tail, request_key
from svlm_ros.params import load_node_configs
from svlm_ros.progress import progress
from svlm_ros.sources import bags
from svlm_ros.sources.bags import BAG_SUFFIXES, LABELS_SIDECAR, sidecar
from svlm_ros.sources.videos import VIDEO_SUFFIXES

from . import command
from .config import LabelConfig, from_dict
from .dataset import DatasetBuilder, Report, Source

log = logging.getLogger(__name__)

REFUSED_BEFORE_SUCCESS = 3  # this many seconds refused (400, 413, 422) before any success: the requests are wrong
VIDEO_CAMERA = "video"  # the camera name of a video file (as build-dataset names it)


# ----- paths -------------------------------------------------------------------------------------
def default_output(video: Path) -> Path:
    """BAG.labels.jsonl beside the bag (the sidecar name build-dataset looks for)."""
    return sidecar(video, LABELS_SIDECAR)


def _beside(out: Path, suffix: str) -> Path:
    """OUT.labels.jsonl -> OUT.labels<suffix>."""
    name = out.name[:-len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(name + suffix)


# ----- config ------------------------------------------------------------------------------------
def load_label_config(path: Optional[str]) -> LabelConfig:
    if not path:
        return LabelConfig().validate()
    import yaml

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"label config {path} does not exist; training/configs/label.yaml has the defaults")
    try:
        values = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"label config {path} is not valid YAML: {error}") from None
    return from_dict(LabelConfig, values, f"{path}: ").validate()


# ----- one second, and its request -----------------------------------------------------------------
@dataclass
class Job:
    seq: int  # the order the reader produced it in: the order of the output
    camera: str
    index: int  # engine window (second) since the camera's first frame
    start_s: float
    end_s: float
    frames: List[str]  # base64 JPEG
    context: List[str]  # base64 JPEG: the end of the second before (empty for the first, or after a gap)

    @property
    def key(self) -> Tuple[str, int]:
        return self.camera, self.index

    @property
    def where(self) -> str:
        return f"second {self.start_s:g}-{self.end_s:g} s of {self.camera}"


def _image(data: str) -> Dict:
    return {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{data}"}}


def _fill(text: str, job: Job, marker: str) -> str:
    # Plain replacement, not str.format: a prompt may contain other braces.
    for name, value in (("{start}", f"{job.start_s:.1f}"), ("{end}", f"{job.end_s:.1f}"),
                        ("{count}", str(len(job.frames))), ("{marker}", marker.strip())):
        text = text.replace(name, value)
    return text


def request_body(config: LabelConfig, model: str, job: Job, marker: str) -> Dict:
    """The chat-completions request for one second (its SHA-256 is the cache key)."""
    content: List[Dict] = []
    if job.context:
        content.append({"type": "text", "text": _fill(config.context_text, job, marker)})
        content += [_image(data) for data in job.context]
    content.append({"type": "text", "text": _fill(config.frames_text, job, marker)})
    content += [_image(data) for data in job.frames]
    content.append({"type": "text", "text": _fill(config.instruction, job, marker)})
    return {"model": model,
            "messages": [{"role": "system", "content": _fill(config.system, job, marker)},
                         {"role": "user", "content": content}],
            "max_tokens": config.max_tokens, "temperature": config.temperature}


def normalise_answer(answer: str, marker: str) -> str:
    """The teacher's answer as the second's text: one line, quotes and the marker removed; ""
    when it is the silence marker (or nothing)."""
    text = " ".join(str(answer).split())
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    bare = marker.strip()
    if text in ("", bare, "\u2026"):
        return ""
    if bare and text.endswith(bare):
        text = text[:-len(bare)].rstrip()  # "A cup appears. ..." -> "A cup appears."
    return text


# ----- reading seconds with the dataset's own code -------------------------------------------------
class _Stopped(Exception):
    """Unwinds the reader when the run stops early."""


class _SecondSink:
    """Stands in for the builder's StreamCutter of one camera: each finished second goes to `emit`."""

    def __init__(self, source: str, camera: str, emit: Optional[Callable]):
        self.source, self.camera, self.emit = source, camera, emit

    def add(self, second) -> None:
        if self.emit is not None:
            self.emit(self.camera, second)

    def finish(self) -> None:
        pass


class _SecondReader(DatasetBuilder):
    """The dataset builder's reading path (bags or video files, cameras, the engine's frame
    sampling and resizing, bad frames and time jumps reported) with its cutters replaced by
    `_SecondSink`s. DatasetBuilder.__init__ is not called: no dataset directory, shards or tokenizer."""

    def __init__(self, engine, node, wanted: Callable[[str], bool], emit: Callable):  # noqa: D107
        self.engine, self.node, self.report = engine.validate(), node, Report()
        self.wanted, self.emit = wanted, emit

    def _cutter(self, source, camera, words, origin_absolute):
        return _SecondSink(source.name, camera, self.emit if self.wanted(camera) else None)

    def read(self, video: Path) -> None:
        source = Source(video, None)
        if source.is_bag:
            self._add_bag(source, [])
        else:
            self._add_video(source, [])


def _images_per_request(config: LabelConfig, engine) -> int:
    per_second = engine.frames.frames_per_window
    return per_second + min(config.previous_frames, per_second)


def encode_jpeg(frame: np.ndarray, quality: int) -> str:
    import cv2

    ok, data = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"OpenCV could not encode a {frame.shape} frame as JPEG")
    return base64.b64encode(data.tobytes()).decode("ascii")


def cameras_of(video: Path, camera: Optional[str]) -> Tuple[List[str], Optional[int]]:
    """The cameras to label and an estimate of the seconds to read (for the progress bar)."""
    if Source(video, None).is_bag:
        reader = bags.open_bag(video)
        try:
            topics = list(bags.image_topics(reader, [camera] if camera else []))
            length = (reader.end_time - reader.start_time) / 1e9
        finally:
            reader.close()
        return topics, len(topics) * (math.floor(length) + 1)
    if camera not in (None, VIDEO_CAMERA):
        raise ValueError(f"--camera {camera}: {video} is a video file; its only camera is {VIDEO_CAMERA!r}")
    import cv2

    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise ValueError(f"OpenCV cannot open {video} as a video")
    frames, rate = capture.get(cv2.CAP_PROP_FRAME_COUNT), capture.get(cv2.CAP_PROP_FPS) or 30.0
    capture.release()
    return [VIDEO_CAMERA], (math.ceil(frames / rate) if frames > 0 else None)


class _Producer(threading.Thread):
    """Reads the video (dataset code), JPEG-encodes each second and hands it to the main loop,
    at most `ahead` seconds ahead of the answers (a semaphore the main loop releases)."""

    def __init__(self, video: Path, engine, node, cameras: List[str], config: LabelConfig,
                 events: "queue.Queue", ahead: int, stop: threading.Event):
        super().__init__(name="svlm-label-reader", daemon=True)
        self.video, self.config, self.events, self.stop = video, config, events, stop
        self.slots = threading.Semaphore(ahead)
        self.previous: Dict[str, Tuple[int, List[str]]] = {}
        self.count = 0
        self.reader = _SecondReader(engine, node, lambda name: name in cameras, self._emit)
        self.unit = engine.frames.window_seconds

    def _emit(self, camera: str, second) -> None:
        while not self.slots.acquire(timeout=0.5):
            if self.stop.is_set():
                raise _Stopped()
        if self.stop.is_set():
            raise _Stopped()
        frames = [encode_jpeg(frame, self.config.jpeg_quality) for frame in second.frames]
        before = self.previous.get(camera)
        keep = self.config.previous_frames
        context = before[1][-keep:] if keep and before is not None and before[0] == second.index - 1 else []
        self.previous[camera] = (second.index, frames)
        job = Job(self.count, camera, second.index, second.index * self.unit, (second.index + 1) * self.unit,
                  frames, list(context))
        self.count += 1
        self.events.put(("second", job))

    def run(self) -> None:
        error = None
        try:
            self.reader.read(self.video)
        except _Stopped:
            return
        except Exception as exc:  # a bag that breaks halfway: what was read is still labelled
            error = exc
        self.events.put(("end", (self.count, error)))


# ----- the output files --------------------------------------------------------------------------------
class LabelFile:
    """BAG.labels.jsonl: the lines already there (resume), appended one at a time, flushed."""

    def __init__(self, path: Path, unit: float):
        self.path, self.unit = path, unit
        self.lines: Dict[Tuple[str, int], str] = {}  # in file order
        repair_tail(path)
        if path.is_file():
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                    key = (str(item.get("camera") or ""), round(float(item["start"]) / unit))
                    str(item["text"]), float(item["end"])
                except (ValueError, KeyError, TypeError) as error:
                    raise ValueError(f"{path}:{number} is not a label line ({error}); move the file away or "
                                     "pass another --out") from None
                self.lines.setdefault(key, line)
        self.existing = len(self.lines)
        self._handle = None

    def has(self, key: Tuple[str, int]) -> bool:
        return key in self.lines

    def append(self, job: Job, text: str) -> None:
        line = json.dumps({"start": job.start_s, "end": job.end_s, "text": text, "camera": job.camera},
                          ensure_ascii=False)
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("a", encoding="utf-8")
        self._handle.write(line + "\n")
        self._handle.flush()  # a killed run keeps every line written
        self.lines[job.key] = line

    def close(self, order: Optional[List[Tuple[str, int]]] = None) -> bool:
        """Close; with `order` (the reader's, complete), put the lines in it when they are not.
        Lines of seconds this run did not read (another camera) stay after them. True if rewritten."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if order is None or not self.lines:
            return False
        position = {key: n for n, key in enumerate(order)}
        wanted = sorted(self.lines, key=lambda k: position.get(k, len(order)))  # stable: the others keep theirs
        if wanted == list(self.lines):
            return False
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(self.lines[k] + "\n" for k in wanted), encoding="utf-8")
        os.replace(tmp, self.path)
        self.lines = {k: self.lines[k] for k in wanted}
        return True


class ErrorFile:
    """BAG.labels.errors.jsonl: this run's failed seconds (a stale report is removed at the start)."""

    def __init__(self, path: Path):
        self.path, self.count, self._handle = path, 0, None
        path.unlink(missing_ok=True)

    def add(self, job: Job, outcome: Outcome) -> None:
        if self._handle is None:
            self._handle = self.path.open("a", encoding="utf-8")
        self._handle.write(json.dumps({"start": job.start_s, "end": job.end_s, "camera": job.camera,
                                       "status": outcome.status, "error": outcome.error,
                                       "attempts": outcome.attempts}, ensure_ascii=False) + "\n")
        self._handle.flush()
        self.count += 1

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


# ----- the run ---------------------------------------------------------------------------------------------
@dataclass
class LabelTally:
    """What a labelling run did, second by second (printed at the end, returned by label_video)."""
    seconds: int = 0  # read from the video
    skipped: int = 0  # of those, already in the output: not asked again
    asked: int = 0  # answered by the server now
    cached: int = 0  # answered from the cache
    silent: int = 0  # of those written now, the silence marker
    failed: int = 0
    requests: int = 0  # HTTP requests sent, retries included
    rewritten: bool = False
    cameras: List[str] = field(default_factory=list)


def label_video(video: Path, out: Path, config: LabelConfig, engine, node, endpoint: str, model: str,
                api_key: str = "", camera: Optional[str] = None, cache_path: Optional[Path] = None,
                errors_path: Optional[Path] = None) -> LabelTally:
    """Label every second of `video` (see the module docstring); raises EndpointError when the
    endpoint cannot serve any second, after writing what was answered."""
    config.validate()
    marker = engine.generation.silence_marker
    cameras, estimate = cameras_of(video, camera)
    output = LabelFile(out, engine.frames.window_seconds)
    cache_path = cache_path or _beside(out, ".cache.jsonl")
    cache = AnswerCache(cache_path)  # repairs a last line torn by a killed run
    errors = ErrorFile(errors_path or _beside(out, ".errors.jsonl"))
    stop = threading.Event()
    client = ChatClient(endpoint, api_key, timeout_s=config.timeout_s, retries=config.retries,
                        backoff_s=config.backoff_s, max_backoff_s=config.max_backoff_s, stop=stop,
                        key_hint="--api-key (or OPENAI_API_KEY)")
    summary = LabelTally(cameras=cameras)
    if output.existing:
        log.info("%s already has %d seconds; they are kept and not asked again (delete it to start over)",
                 out, output.existing)
    log.info("labelling %s (%s) with %s at %s, %d requests in flight", video, ", ".join(cameras), model,
             client.url, config.concurrency)
    events: "queue.Queue" = queue.Queue()
    producer = _Producer(video, engine, node, cameras, config, events, 2 * config.concurrency, stop)
    pool = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="svlm-label")

    def work(job: Job, body: Dict, key: str) -> None:
        try:
            outcome = client.ask(body)
        except Exception as error:  # never leave the main loop waiting for an answer
            outcome = Outcome(error=f"{type(error).__name__}: {error}", attempts=1)
        events.put(("answer", (job, key, outcome)))

    ready: Dict[int, Tuple[Job, Optional[str], Optional[Outcome]]] = {}  # seq -> (job, text, failure)
    order: List[Tuple[str, int]] = []
    total: Optional[int] = None
    read_error: Optional[BaseException] = None
    written = 0
    refused = 0  # seconds refused with a client error while none has succeeded
    bar = progress(total=estimate, desc="label", unit="s")
    finished = False
    producer.start()
    try:
        while total is None or written < total:
            kind, payload = events.get()
            if kind == "end":
                total, read_error = payload
            elif kind == "second":
                job = payload
                order.append(job.key)
                summary.seconds += 1
                if output.has(job.key):
                    summary.skipped += 1
                    ready[job.seq] = (job, None, None)
                    producer.slots.release()
                else:
                    body = request_body(config, model, job, marker)
                    key = request_key(body)
                    answer = cache.get(key)
                    if answer is not None:
                        summary.cached += 1
                        ready[job.seq] = (job, normalise_answer(answer, marker), None)
                        producer.slots.release()
                    else:
                        pool.submit(work, job, body, key)
                job.frames = job.context = []  # the body holds them while it is asked
            else:
                job, key, outcome = payload
                producer.slots.release()
                if outcome.fatal:
                    raise EndpointError(outcome.error)
                if outcome.answer is not None:
                    cache.put(key, outcome.answer)
                    summary.asked += 1
                    ready[job.seq] = (job, normalise_answer(outcome.answer, marker), None)
                else:
                    ready[job.seq] = (job, None, outcome)
                    refused += outcome.status is not None and 400 <= outcome.status < 500
                    if refused >= REFUSED_BEFORE_SUCCESS and not client.answered:
                        raise EndpointError(
                            f"{client.url} refused the first {refused} seconds asked (HTTP {outcome.status}: "
                            f"{outcome.error}) and accepted none. Check that --model {model!r} takes images and "
                            f"that the server accepts {_images_per_request(config, engine)} images "
                            "per request (vLLM: --limit-mm-per-prompt); lower frames.fps or previous_frames if not")
            while written in ready:  # in the reader's order: time order per camera
                job, text, failure = ready.pop(written)
                if failure is not None:
                    summary.failed += 1
                    errors.add(job, failure)
                    log.error("%s failed after %d attempt(s): %s%s", job.where, failure.attempts,
                              "" if failure.status is None else f"HTTP {failure.status}: ", failure.error)
                elif text is not None:
                    output.append(job, text)
                    summary.silent += text == ""
                written += 1
                bar.update(1)
        finished = True
    except KeyboardInterrupt:
        log.warning("interrupted: %d seconds are in %s and every answer is cached in %s; run the same command "
                    "again to resume", len(output.lines), out, cache_path)
        raise
    finally:
        stop.set()
        bar.close()
        pool.shutdown(wait=finished, cancel_futures=True)
        summary.rewritten = output.close(order if finished and read_error is None else None)
        errors.close()
        summary.requests = client.requests_sent
    if summary.rewritten:
        log.info("%s: put in time order after filling seconds that were missing", out)
    if read_error is not None:
        raise ValueError(f"{video}: reading stopped after {summary.seconds} seconds: {read_error}; the seconds "
                         f"before it are in {out}") from read_error
    for reason, count in sorted(producer.reader.report.counts.items()):
        log.warning("%s: %s: %d (e.g. %s)", video, reason, count, producer.reader.report.examples[reason][0])
    if summary.seconds == 0:
        raise ValueError(f"{video}: no second with frames was read from {', '.join(cameras)}")
    return summary


# ----- command line ------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", metavar="BAG", help="a rosbag2 (directory or .mcap/.db3), ROS 1 .bag, or video file")
    parser.add_argument("--endpoint", required=True,
                        help="OpenAI-compatible API base URL, such as http://HOST:8000/v1 (or its /chat/completions)")
    parser.add_argument("--model", required=True, help="the teacher model's name at the endpoint")
    parser.add_argument("--api-key", default=None,
                        help="API key sent as a Bearer token (default: $OPENAI_API_KEY; none when empty)")
    parser.add_argument("--camera", help="the image topic to label (default: every image topic of the bag)")
    parser.add_argument("--config", help="a LabelConfig YAML: prompts, concurrency, retries, ... "
                                         "(default values: training/configs/label.yaml)")
    parser.add_argument("--out", help="the labels to write (default: BAG.labels.jsonl beside the bag)")
    parser.add_argument("--cache", help="the answer cache (default: OUT with .cache.jsonl for .jsonl)")
    parser.add_argument("--params", help="the node's parameter file (config/svlm.yaml): frames per second, "
                                         "pixel limits, silence marker")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a node parameter (e.g. frames.max_pixels=1003520); repeatable")
    parser.add_argument("--concurrency", type=int, help="requests in flight (overrides the config)")
    parser.add_argument("--retries", type=int, help="retries per second (overrides the config)")
    parser.add_argument("--timeout", type=float, help="seconds per request (overrides the config)")
    parser.add_argument("--backoff", type=float, help="first retry delay in seconds, doubling (overrides the config)")


def run(args: argparse.Namespace) -> int:
    video = Path(args.video)
    if not video.exists():
        raise FileNotFoundError(f"{video} does not exist (a rosbag2 directory, a .mcap/.db3/.bag file or a video file)")
    if video.is_file() and video.suffix not in BAG_SUFFIXES + VIDEO_SUFFIXES:
        raise ValueError(f"{video}: not a bag or video file ({', '.join(BAG_SUFFIXES + VIDEO_SUFFIXES)})")
    config = load_label_config(args.config)
    for flag, name in (("concurrency", "concurrency"), ("retries", "retries"), ("timeout", "timeout_s"),
                       ("backoff", "backoff_s")):
        if getattr(args, flag, None) is not None:
            setattr(config, name, getattr(args, flag))
    config.validate()
    _, engine, node = load_node_configs(args.params, args.set)
    out = Path(args.out) if args.out else default_output(video)
    cache = Path(args.cache) if args.cache else (Path(config.cache) if config.cache else None)
    api_key = os.environ.get("OPENAI_API_KEY", "") if args.api_key is None else args.api_key
    errors_path = _beside(out, ".errors.jsonl")
    started = time.monotonic()
    summary = label_video(video, out, config, engine, node, args.endpoint, args.model, api_key, args.camera,
                          cache, errors_path)
    labelled = summary.asked + summary.cached
    line = (f"labelled {labelled} s of {video} ({summary.asked} asked, {summary.cached} from the cache, "
            f"{summary.silent} silent), {summary.skipped} already in {out}; "
            f"{summary.requests} requests in {time.monotonic() - started:.1f} s")
    if summary.failed:
        print(f"{line}; {summary.failed} s FAILED (see {errors_path}; run the same command again to retry them)")
        return 1
    print(f"{line}; wrote {out}")
    return 0


def main(argv=None) -> int:
    return command.main("training.label", __doc__.splitlines()[0], add_arguments, run, argv,
                        expected=command.EXPECTED + (RuntimeError,), name="label")


if __name__ == "__main__":
    raise SystemExit(main())
