"""`svlm synth-bag`: rosbags of coloured shapes with known per-second text.

Each camera watches its own scripted scene: shapes appear, move, stop and leave, and the text of
each second says what changed in it ("A red circle appears."), as a narrator would; a second in
which nothing changes has no text (the model should answer its silence marker). The script is
drawn from a seed, so a bag and its reference are reproducible. Beside the bag go the reference
as JSONL (segments with start, end, text and camera, in seconds since the bag's first frame) and
as WebVTT, one file per camera, and the truth (`BAG.truth.jsonl`: every camera-second's event
as action, colour, shape and side, or null; its format and the grounded score that reads it are
`grounded.py`'s). The tests and the training pipeline use these bags as real data.

Held-out scenes: `--only-pairs red:circle,...` draws every object from those colour-shape pairs,
`--exclude-pairs ...` from all the others, so a held-out bag can show objects no training bag
contains. Without either the script is the one the seed has always drawn (same bag, same text).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import cv2
import numpy as np
from rosbags.rosbag1 import Writer as Ros1Writer
from rosbags.rosbag2 import StoragePlugin, Writer

from ..progress import progress
from ..sources.bags import REFERENCE_SIDECAR, REFERENCE_VTT_SIDECAR, TRUTH_SIDECAR, sidecar
from ..sources.messages import typestore
from ..sources.timed_text import vtt_time
from . import grounded
from .grounded import Event, narrate

log = logging.getLogger(__name__)

START_NS = 1_763_740_800 * 1_000_000_000  # 2025-11-21 16:00 UTC: sensor stamps look like a robot's
# The names are the narrator's (grounded.py); their order is the script's draw order.
COLORS = dict(zip(grounded.COLORS, ((220, 40, 40), (40, 190, 70), (50, 90, 230), (235, 210, 40))))
SHAPES = grounded.SHAPES
MAX_OBJECTS = 3
SPEEDS = (0.04, 0.09)  # a moving shape's speed is drawn from this range (fractions of the width a second)
Pair = Tuple[str, str]  # (colour, shape)
ALL_PAIRS: Tuple[Pair, ...] = tuple((c, k) for c in COLORS for k in SHAPES)


@dataclass
class Shape:
    color: str
    kind: str
    x: float  # centre, as a fraction of the width
    y: float
    speed: float  # fraction of the width per second; 0 when stopped

    @property
    def name(self) -> str:
        return f"{self.color} {self.kind}"


class Scene:
    """One camera's scripted scene: the shapes at any time, and what changed in each second."""

    def __init__(self, seconds: int, seed: int, pairs: Optional[Iterable[Pair]] = None,
                 max_objects: int = MAX_OBJECTS, shape_size: Optional[int] = None, speed_scale: float = 1.0):
        """`pairs`: the colour-shape pairs objects are drawn from (None: all of them); `max_objects`:
        how many can be in view at once; `shape_size`: their size in pixels (None: a seventh of the
        frame's shorter side); `speed_scale`: their speeds times this (the same script, faster)."""
        if not 1 <= max_objects <= len(ALL_PAIRS):
            raise ValueError(f"--max-objects must be 1 to {len(ALL_PAIRS)}, got {max_objects}")
        if shape_size is not None and shape_size < 4:
            raise ValueError(f"--shape-size must be at least 4 pixels, got {shape_size}")
        if not 0 < speed_scale <= 10:
            raise ValueError(f"--speed-scale must be above 0 and at most 10, got {speed_scale}")
        self.shape_size = shape_size
        rng = np.random.default_rng(seed)
        allowed = frozenset(ALL_PAIRS if pairs is None else (tuple(p) for p in pairs))
        # A change is visible in the second whose text names it: a shape that appears is there
        # for the whole second, one that leaves is gone, one that stops stands still.
        self.keyframes: List[List[Shape]] = []  # the shapes of each second, at its start
        self.events: List[Optional[Event]] = []  # what changed in each second (None for nothing)
        self.texts: List[str] = []  # its sentence ("" for nothing)
        shapes: List[Shape] = []
        for _ in range(seconds):
            event = self._event(rng, shapes, allowed, max_objects, speed_scale)
            self.events.append(event)
            self.texts.append(narrate(event) if event else "")
            self.keyframes.append([Shape(**vars(s)) for s in shapes])
            for shape in shapes:  # motion over the second, bouncing off the edges
                shape.x += shape.speed
                if not 0.1 <= shape.x <= 0.9:
                    shape.speed = -shape.speed
                    shape.x = min(max(shape.x, 0.1), 0.9)

    @staticmethod
    def _event(rng, shapes: List[Shape], allowed: frozenset = frozenset(ALL_PAIRS),
               max_objects: int = MAX_OBJECTS, speed_scale: float = 1.0) -> Optional[Event]:
        # The draws (their number and order) are those of every bag written so far: with all
        # pairs allowed `free` is never empty, so a seed's bag and text do not change.
        if rng.random() < 0.45:
            return None  # a quiet second
        names = {s.name for s in shapes}
        free = [(c, k) for c in COLORS for k in SHAPES if (c, k) in allowed and f"{c} {k}" not in names]
        choice = rng.random()
        if (not shapes or choice < 0.35) and len(shapes) < max_objects and free:
            color, kind = free[rng.integers(len(free))]
            side = rng.integers(2)
            shape = Shape(color, kind, 0.15 if side == 0 else 0.85, rng.uniform(0.25, 0.75),
                          (1 if side == 0 else -1) * rng.uniform(*SPEEDS) * speed_scale)
            shapes.append(shape)
            return Event("appears", color, kind, "left" if side == 0 else "right")
        if not shapes:
            return None
        shape = shapes[rng.integers(len(shapes))]
        if choice < 0.55:
            shapes.remove(shape)
            return Event("leaves", shape.color, shape.kind)
        if shape.speed == 0:
            shape.speed = rng.choice([-1, 1]) * rng.uniform(*SPEEDS) * speed_scale
            return Event("starts_moving", shape.color, shape.kind, "right" if shape.speed > 0 else "left")
        if choice < 0.8:
            shape.speed = 0.0
            return Event("stops", shape.color, shape.kind)
        shape.speed = -shape.speed
        return Event("turns", shape.color, shape.kind, "right" if shape.speed > 0 else "left")

    def frame(self, t: float, height: int, width: int,
              palette: Optional[Dict[str, Tuple[int, int, int]]] = None) -> np.ndarray:
        """The RGB frame at t seconds: each second's shapes, moved by their speed within it.
        `palette` draws the named colours in other RGB values (the narrator's vision stage shows
        shapes in hues no sentence names)."""
        second = min(int(t), len(self.keyframes) - 1)
        fraction = t - second
        image = background(height, width)
        size = self.shape_size or max(6, min(height, width) // 7)
        for shape in self.keyframes[second]:
            cx = int(np.clip(shape.x + shape.speed * fraction, 0.05, 0.95) * width)
            cy = int(shape.y * height)
            color = (palette or {}).get(shape.color, COLORS[shape.color])
            if shape.kind == "circle":
                cv2.circle(image, (cx, cy), size // 2, color, -1)
            elif shape.kind == "square":
                cv2.rectangle(image, (cx - size // 2, cy - size // 2), (cx + size // 2, cy + size // 2), color, -1)
            else:
                points = np.array([[cx, cy - size // 2], [cx - size // 2, cy + size // 2],
                                   [cx + size // 2, cy + size // 2]], dtype=np.int32)
                cv2.fillPoly(image, [points], color)
        return image


def background(height: int, width: int) -> np.ndarray:
    """The scenes' empty frame (RGB): dark grey, bluer to the right."""
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = (35, 38, 45)
    image[:, :, 2] = np.linspace(45, 110, width, dtype=np.uint8)[None, :]
    return image


def camera_topics(cameras: int, compressed: bool) -> List[str]:
    suffix = "image_raw/compressed" if compressed else "image_raw"
    return [f"/cam{k}/{suffix}" for k in range(cameras)]


def reference_paths(bag: Path) -> Tuple[Path, Path]:
    """Where the reference of a synthetic bag goes: `BAG.reference.jsonl` and `.vtt` beside it."""
    return sidecar(bag, REFERENCE_SIDECAR), sidecar(bag, REFERENCE_VTT_SIDECAR)


def truth_path(bag: Path) -> Path:
    """Where the truth of a synthetic bag goes: `BAG.truth.jsonl` beside it."""
    return sidecar(bag, TRUTH_SIDECAR)


def parse_pairs(spec: str, option: str = "--only-pairs") -> Tuple[Pair, ...]:
    """`red:circle,blue:square` -> (("red", "circle"), ("blue", "square")); ValueError naming the bad one."""
    pairs = []
    for item in (part.strip() for part in spec.split(",")):
        color, sep, kind = (word.strip().lower() for word in item.partition(":"))
        if not sep or color not in COLORS or kind not in SHAPES:
            raise ValueError(f"{option}: {item!r} is not COLOUR:SHAPE (colours: {', '.join(COLORS)}; shapes: "
                             f"{', '.join(SHAPES)}); e.g. {option} red:circle,blue:square")
        pairs.append((color, kind))
    return tuple(dict.fromkeys(pairs))


def allowed_pairs(only: Optional[Iterable[Pair]] = None,
                  exclude: Optional[Iterable[Pair]] = None) -> Optional[Tuple[Pair, ...]]:
    """The pairs a scene draws from (None: all, the script of every seed so far)."""
    if only is not None and exclude is not None:
        raise ValueError("give --only-pairs or --exclude-pairs, not both (a held-out bag takes --only-pairs with "
                         "the pairs its training bags were written with --exclude-pairs)")
    if only is None and exclude is None:
        return None
    named = set(only if only is not None else exclude)
    unknown = sorted(named - set(ALL_PAIRS))
    if unknown:
        raise ValueError(f"unknown colour-shape pairs {unknown}; the colours are {', '.join(COLORS)}, "
                         f"the shapes {', '.join(SHAPES)}")
    pairs = tuple(p for p in ALL_PAIRS if (p in named) == (only is not None))
    if not pairs:
        raise ValueError("--exclude-pairs leaves no colour-shape pair to draw objects from; exclude fewer"
                         if exclude is not None else "--only-pairs names no pair; name at least one")
    return pairs


def write_synthetic_bag(out: Path, seconds: int, storage: str = "mcap", compressed: bool = False,
                        cameras: int = 1, fps: float = 10.0, height: int = 240, width: int = 320,
                        seed: int = 0, encoding: str = "rgb8", only_pairs: Optional[Iterable[Pair]] = None,
                        exclude_pairs: Optional[Iterable[Pair]] = None, max_objects: int = MAX_OBJECTS,
                        shape_size: Optional[int] = None, speed_scale: float = 1.0) -> Dict[str, Scene]:
    """Write the bag, its reference and its truth; returns each camera topic's scene.

    `only_pairs` / `exclude_pairs`: draw objects only from / from all but these colour-shape pairs;
    `max_objects`, `shape_size`, `speed_scale`: as in Scene."""
    pairs = allowed_pairs(only_pairs, exclude_pairs)
    if seconds < 1 or cameras < 1 or fps <= 0:
        raise ValueError(f"need --seconds >= 1, --cameras >= 1 and --fps > 0 (got {seconds}, {cameras}, {fps})")
    if storage not in ("mcap", "sqlite3", "ros1"):
        raise ValueError(f"--storage must be mcap, sqlite3 or ros1, got {storage!r}")
    if encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"--encoding must be rgb8 or bgr8, got {encoding!r}")
    if out.exists():
        raise FileExistsError(f"{out} already exists; remove it or choose another path")
    store = typestore()
    topics = camera_topics(cameras, compressed)
    scenes = {topic: Scene(seconds, seed * 1000 + k, pairs, max_objects, shape_size, speed_scale)
              for k, topic in enumerate(topics)}
    msgtype = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    if storage == "ros1":
        writer = Ros1Writer(out)
    else:
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        writer = Writer(out, version=9, storage_plugin=plugin)
    frame_count = int(round(seconds * fps))
    try:
        with writer:
            connections = {t: writer.add_connection(t, msgtype, typestore=store) for t in topics}
            for n in progress(range(frame_count), total=frame_count, desc="synth-bag", unit="frame"):
                stamp_ns = START_NS + int(round(n * 1e9 / fps))
                for k, topic in enumerate(topics):
                    image = scenes[topic].frame(n / fps, height, width)
                    msg = image_message(store, image, stamp_ns, f"cam{k}_optical_frame", compressed, encoding)
                    data = (store.serialize_ros1(msg, msgtype) if storage == "ros1"
                            else store.serialize_cdr(msg, msgtype))
                    writer.write(connections[topic], stamp_ns, data)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
        raise
    write_reference(out, scenes)
    grounded.write_truth(truth_path(out), {topic: scene.events for topic, scene in scenes.items()})
    return scenes


def image_message(store, image: np.ndarray, stamp_ns: int, frame_id: str, compressed: bool,
                  encoding: str = "rgb8"):
    Header = store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]
    header = Header(stamp=Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000), frame_id=frame_id)
    if compressed:
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        return store.types["sensor_msgs/msg/CompressedImage"](header=header, format="jpeg",
                                                              data=np.frombuffer(jpeg.tobytes(), np.uint8))
    pixels = image if encoding == "rgb8" else image[:, :, ::-1]
    return store.types["sensor_msgs/msg/Image"](
        header=header, height=image.shape[0], width=image.shape[1], encoding=encoding, is_bigendian=0,
        step=image.shape[1] * 3, data=np.ascontiguousarray(pixels).reshape(-1))


def write_reference(bag: Path, scenes: Dict[str, Scene]) -> Tuple[Path, Path]:
    jsonl, vtt = reference_paths(bag)
    with jsonl.open("w") as lines:
        for topic, scene in scenes.items():
            for second, text in enumerate(scene.texts):
                if text:
                    lines.write(json.dumps({"start": float(second), "end": float(second + 1), "text": text,
                                            "camera": topic}) + "\n")
    # WebVTT has no camera field: one file per camera when there are several.
    for k, (topic, scene) in enumerate(scenes.items()):
        path = vtt if len(scenes) == 1 else vtt.with_name(vtt.name.replace(".reference.", f".reference.cam{k}."))
        cues = ["WEBVTT", ""]
        for second, text in enumerate(scene.texts):
            if text:
                cues += [f"{vtt_time(second)} --> {vtt_time(second + 1)}", text, ""]
        path.write_text("\n".join(cues))
    return jsonl, vtt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="the bag to write (a directory for rosbag2, a .bag file with --storage ros1)")
    parser.add_argument("--seconds", type=int, default=120)
    parser.add_argument("--storage", default="mcap", choices=["mcap", "sqlite3", "ros1"])
    parser.add_argument("--compressed", action="store_true", help="sensor_msgs/CompressedImage (JPEG) topics")
    parser.add_argument("--cameras", type=int, default=1)
    parser.add_argument("--fps", type=float, default=10.0, help="camera frame rate")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--encoding", default="rgb8", choices=["rgb8", "bgr8"], help="raw image encoding")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-objects", type=int, default=MAX_OBJECTS,
                        help="at most this many shapes in view at once (1: the easiest scenes)")
    parser.add_argument("--shape-size", type=int, default=None, metavar="PX",
                        help="the shapes' size in pixels (default: a seventh of the shorter side)")
    parser.add_argument("--speed-scale", type=float, default=1.0, metavar="X",
                        help="the shapes move X times as fast (the same events; default 1: "
                             f"{SPEEDS[0] * 100:g}-{SPEEDS[1] * 100:g}%% of the width a second)")
    pairs = parser.add_mutually_exclusive_group()
    pairs.add_argument("--only-pairs", default=None, metavar="COLOUR:SHAPE,...",
                       help="draw every object from these colour-shape pairs (a held-out bag), "
                            "e.g. red:circle,blue:square")
    pairs.add_argument("--exclude-pairs", default=None, metavar="COLOUR:SHAPE,...",
                       help="never draw these colour-shape pairs (training bags that a held-out bag's pairs "
                            "are kept out of)")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    only = parse_pairs(args.only_pairs, "--only-pairs") if args.only_pairs is not None else None
    exclude = parse_pairs(args.exclude_pairs, "--exclude-pairs") if args.exclude_pairs is not None else None
    write_synthetic_bag(out, args.seconds, args.storage, args.compressed, args.cameras, args.fps,
                        args.height, args.width, args.seed, args.encoding, only, exclude, args.max_objects,
                        args.shape_size, args.speed_scale)
    jsonl, vtt = reference_paths(out)
    print(f"wrote {out} ({args.storage}, {args.cameras} camera(s), {args.seconds} s at {args.fps:g} fps), "
          f"its reference {jsonl}, {vtt.parent / (vtt.stem.split('.reference')[0] + '.reference*.vtt')} "
          f"and its truth {truth_path(out)}")
    return 0

