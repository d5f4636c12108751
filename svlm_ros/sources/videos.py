"""Frames from video files (anything OpenCV opens) and from folders of images, with their times."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Tuple

import cv2
import numpy as np

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def is_video_file(path: Path) -> bool:
    return path.is_file() and path.suffix in VIDEO_SUFFIXES


def read_frames(path: Path, folder_fps: float) -> Iterator[Tuple[float, np.ndarray]]:
    """(seconds, RGB frame) pairs from a video file or a sorted folder of images."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{path} has no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        for index, file in enumerate(files):
            image = cv2.imread(str(file), cv2.IMREAD_COLOR)
            if image is None:
                log.warning("skipping %s: OpenCV cannot read it", file)
                continue
            yield index / folder_fps, cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        return
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise FileNotFoundError(f"OpenCV cannot open {path} as a video")
    rate = capture.get(cv2.CAP_PROP_FPS) or 30.0
    index = 0
    while True:
        ok, image = capture.read()
        if not ok:
            break
        yield index / rate, cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        index += 1
    capture.release()
