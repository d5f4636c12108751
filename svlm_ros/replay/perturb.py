"""`svlm perturb-bag`: a copy of a bag whose camera frames are altered in one known way.

A model that reads its answers from the pixels must lose the matching part of its score on the
copy; one that does not (a video-blind model, or a pipeline that drops or reorders the frames
somewhere between the bag and the model) keeps it. This is the check random weights can never
give: a channel-order or frame-order bug anywhere on the path shows up as a score that does not
move.

- `--swap-red-blue`: every frame's red and blue channels exchanged (a red circle looks blue, a
  blue one red; green and yellow's hue moves less): colour accuracy must fall.
- `--delay SECONDS`: every frame shows what its camera saw SECONDS earlier (the first SECONDS
  repeat the first frame); stamps are unchanged, so the truth is still what happened when, and
  the descriptions come SECONDS late: event F1 and the per-second accuracies must fall.

Every other message and every stamp (log time and header) is copied as it is, and so are the
sidecars (reference, labels, truth). The copy is a rosbag2 MCAP directory (a ROS 1 bag's copy is
a ROS 1 bag, written with its own message definitions); raw images keep their encoding when it is
rgb8 or bgr8 (others are written rgb8), compressed ones stay PNG or become JPEG. A frame that
cannot be decoded is copied unchanged and counted.
"""
from __future__ import annotations

import argparse
import collections
import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Deque, Dict, Tuple

import cv2
import numpy as np
from rosbags.rosbag1 import Writer as Ros1Writer
from rosbags.rosbag2 import StoragePlugin, Writer

from ..progress import progress
from ..sources.bags import IMAGE_TYPES, SIDECARS, TRUTH_SIDECAR, find_sidecar, open_bag, sidecar
from ..sources.images import BadImage, to_rgb

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Perturbation:
    swap_red_blue: bool = False
    delay_seconds: float = 0.0

    def validate(self) -> "Perturbation":
        if self.delay_seconds < 0:
            raise ValueError(f"--delay must be >= 0 seconds, got {self.delay_seconds:g}")
        if not self.swap_red_blue and not self.delay_seconds:
            raise ValueError("nothing to perturb: give --swap-red-blue, --delay SECONDS or both")
        return self


class _DelayLine:
    """Per camera: the latest frame at least `delay_ns` older than the one arriving (or the first)."""

    def __init__(self, delay_ns: int):
        self.delay_ns = delay_ns
        self.frames: Deque[Tuple[int, np.ndarray]] = collections.deque()

    def push(self, time_ns: int, image: np.ndarray) -> np.ndarray:
        self.frames.append((time_ns, image))
        while len(self.frames) >= 2 and self.frames[1][0] <= time_ns - self.delay_ns:
            self.frames.popleft()
        return self.frames[0][1]


def perturb_bag(src: Path, out: Path, perturbation: Perturbation) -> Dict[str, int]:
    """Write the perturbed copy of `src` to `out` and its sidecars beside it; returns counts
    (`frames` perturbed, `undecodable` copied as they were, `other` messages copied)."""
    perturbation.validate()
    src, out = Path(src), Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; remove it or choose another path")
    counts = {"frames": 0, "undecodable": 0, "other": 0}
    reader = open_bag(src)
    try:
        # The bag's own message definitions (a ROS 1 Header has a seq) read and write its messages.
        store, ros1 = reader.typestore, not reader.is2
        deserialize = store.deserialize_ros1 if ros1 else store.deserialize_cdr
        serialize = store.serialize_ros1 if ros1 else store.serialize_cdr
        delay_ns = int(round(perturbation.delay_seconds * 1e9))
        lines: Dict[str, _DelayLine] = {}
        writer = Ros1Writer(out) if ros1 else Writer(out, version=9, storage_plugin=StoragePlugin.MCAP)
        try:
            with writer:
                targets = {}
                for conn in reader.connections:
                    if conn.topic not in targets:
                        targets[conn.topic] = writer.add_connection(conn.topic, conn.msgtype, typestore=store)
                total = sum(c.msgcount for c in reader.connections)
                for conn, time_ns, raw in progress(reader.messages(), total=total, desc="perturb-bag", unit="msg"):
                    if conn.msgtype in IMAGE_TYPES:
                        msg = deserialize(raw, conn.msgtype)
                        changed = _perturbed(msg, time_ns, perturbation, lines.setdefault(conn.topic, _DelayLine(delay_ns)))
                        if changed is None:
                            counts["undecodable"] += 1
                        else:
                            raw = bytes(serialize(changed, conn.msgtype))
                            counts["frames"] += 1
                    else:
                        counts["other"] += 1
                    writer.write(targets[conn.topic], time_ns, raw)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
            raise
    finally:
        reader.close()
    for suffix in SIDECARS + (TRUTH_SIDECAR,):
        found = sidecar(src, suffix)
        if found.is_file():
            shutil.copyfile(found, sidecar(out, suffix))
    if counts["undecodable"]:
        log.warning("%d frame(s) of %s could not be decoded and were copied unperturbed", counts["undecodable"], src)
    return counts


def _perturbed(msg, time_ns: int, perturbation: Perturbation, line: _DelayLine):
    """The message with its pixels perturbed, every other field as it was; None if undecodable."""
    try:
        image = to_rgb(msg)
    except BadImage:
        return None
    if perturbation.swap_red_blue:
        image = np.ascontiguousarray(image[:, :, ::-1])
    if perturbation.delay_seconds:
        image = line.push(time_ns, image)
    if hasattr(msg, "format"):  # CompressedImage: PNG stays PNG, anything else becomes JPEG
        png = "png" in msg.format.lower()
        _, data = cv2.imencode(".png" if png else ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        return replace(msg, format=msg.format if png else "jpeg", data=np.frombuffer(data.tobytes(), np.uint8))
    encoding = msg.encoding if msg.encoding in ("rgb8", "bgr8") else "rgb8"
    pixels = image if encoding == "rgb8" else image[:, :, ::-1]
    return replace(msg, encoding=encoding, is_bigendian=0, step=image.shape[1] * 3,
                   height=image.shape[0], width=image.shape[1], data=np.ascontiguousarray(pixels).reshape(-1))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", help="the bag to copy (rosbag2 mcap/sqlite3, or a ROS 1 .bag)")
    parser.add_argument("out", help="the perturbed copy to write (a rosbag2 MCAP directory; a .bag for a ROS 1 bag)")
    parser.add_argument("--swap-red-blue", action="store_true",
                        help="exchange every frame's red and blue channels (colour accuracy must fall)")
    parser.add_argument("--delay", type=float, default=0.0, metavar="SECONDS",
                        help="every frame shows what the camera saw SECONDS earlier, stamps unchanged "
                             "(timing must fall)")


def run(args: argparse.Namespace) -> int:
    perturbation = Perturbation(args.swap_red_blue, args.delay)
    counts = perturb_bag(Path(args.bag), Path(args.out), perturbation)  # svlm's main reports its errors
    changes = (["red and blue swapped"] if perturbation.swap_red_blue else []) + \
        ([f"{perturbation.delay_seconds:g} s late"] if perturbation.delay_seconds else [])
    undecodable = f", {counts['undecodable']} undecodable frame(s) copied as they were" if counts["undecodable"] else ""
    reference = find_sidecar(Path(args.out))
    sidecars = f"; its sidecars beside it ({reference.name}, ...)" if reference else ""
    print(f"wrote {args.out}: {counts['frames']} frame(s) {' and '.join(changes)}, {counts['other']} other "
          f"message(s) copied{undecodable}{sidecars}")
    return 0
