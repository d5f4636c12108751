"""Synthetic camera frames: moving shapes, cheap to draw, different every frame."""
from __future__ import annotations

import cv2
import numpy as np


def moving_shapes(t: float, height: int = 480, width: int = 640) -> np.ndarray:
    """An RGB uint8 frame at time t seconds: a circle, a square and a bar moving across."""
    frame = np.full((height, width, 3), 40, dtype=np.uint8)
    frame[:, :, 2] = np.linspace(40, 120, width, dtype=np.uint8)[None, :]
    cx = int((0.5 + 0.4 * np.sin(t * 0.9)) * width)
    cy = int((0.5 + 0.3 * np.cos(t * 0.7)) * height)
    cv2.circle(frame, (cx, cy), max(4, min(height, width) // 8), (230, 60, 40), -1)
    sx = int((t * 0.15 % 1.0) * width)
    side = max(4, min(height, width) // 6)
    cv2.rectangle(frame, (sx, height // 5), (sx + side, height // 5 + side), (40, 200, 80), -1)
    bar_y = int((0.5 + 0.45 * np.sin(t * 0.3)) * (height - 10))
    frame[bar_y:bar_y + 8, :, :] = (250, 250, 90)
    return frame
