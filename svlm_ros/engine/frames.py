"""Camera frames to Qwen2-VL vision patches: resize to the 28-pixel grid, normalize, patchify.

Resizing is antialiased bicubic on uint8 frames, as the reference pipeline resizes video
(torchvision's `resize(..., BICUBIC, antialias=True)`, which on CPU runs this same aten uint8
kernel; PIL's bicubic, transformers' other backend, agrees within one gray level on downscales).
Downscaling 720p or 1080p without antialiasing aliases fine detail into pixels the model never
saw in training. The uint8 kernel costs about 3 ms per 1080p frame on one core (the float one 50).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH = 2
GRID_UNIT = PATCH_SIZE * MERGE_SIZE  # 28 pixels per merged vision token side
# The CLIP normalization Qwen2-VL processors use; a checkpoint's preprocessor config overrides it.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Normalization:
    mean: Tuple[float, float, float] = CLIP_MEAN
    std: Tuple[float, float, float] = CLIP_STD


@dataclass
class VisionInput:
    pixel_values: np.ndarray  # (grid_t * grid_h * grid_w, 3 * 2 * 14 * 14) float32
    grid_thw: Tuple[int, int, int]  # in patches

    @property
    def merged_grid(self) -> Tuple[int, int]:
        return self.grid_thw[1] // MERGE_SIZE, self.grid_thw[2] // MERGE_SIZE

    @property
    def token_count(self) -> int:
        grid_h, grid_w = self.merged_grid
        return self.grid_thw[0] * grid_h * grid_w


def target_size(height: int, width: int, min_pixels: int, max_pixels: int) -> Tuple[int, int]:
    """(h, w) rounded to multiples of 28 with min_pixels <= h*w <= max_pixels, aspect kept."""
    if height <= 0 or width <= 0:
        raise ValueError(f"frame has no pixels: {height}x{width}")
    new_h = max(GRID_UNIT, round(height / GRID_UNIT) * GRID_UNIT)
    new_w = max(GRID_UNIT, round(width / GRID_UNIT) * GRID_UNIT)
    if new_h * new_w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        new_h = max(GRID_UNIT, math.floor(height / scale / GRID_UNIT) * GRID_UNIT)
        new_w = max(GRID_UNIT, math.floor(width / scale / GRID_UNIT) * GRID_UNIT)
    elif new_h * new_w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        new_h = math.ceil(height * scale / GRID_UNIT) * GRID_UNIT
        new_w = math.ceil(width * scale / GRID_UNIT) * GRID_UNIT
    return new_h, new_w


def check_frame(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB frame, got shape {frame.shape} dtype {frame.dtype}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"frame has no pixels: shape {frame.shape}")
    return frame


def resize_frames(frames: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """(T, height, width, 3) uint8, antialiased bicubic (see the module docstring).

    Frames of one size are resized in one call; a window that spans a resolution change has
    frames of two sizes, each resized to the window's grid (set by its first frame)."""
    if len({f.shape for f in frames}) > 1:
        return np.concatenate([resize_frames([f], height, width) for f in frames])
    video = np.stack(frames)
    if video.shape[1:3] == (height, width):
        return video
    channels_last = torch.from_numpy(video).permute(0, 3, 1, 2)  # the uint8 kernel's fast layout
    resized = F.interpolate(channels_last, size=(height, width), mode="bicubic", align_corners=False,
                            antialias=True)
    return resized.permute(0, 2, 3, 1).contiguous().numpy()


def preprocess_frames(
    frames: Sequence[np.ndarray],
    min_pixels: int,
    max_pixels: int,
    normalization: Normalization = Normalization(),
) -> VisionInput:
    """Frames of one window (RGB uint8) to patches; an odd count repeats the last frame."""
    if not frames:
        raise ValueError("a window needs at least one frame")
    frames = [check_frame(f) for f in frames]
    if len(frames) % TEMPORAL_PATCH:
        frames = frames + [frames[-1]] * (TEMPORAL_PATCH - len(frames) % TEMPORAL_PATCH)
    height, width = target_size(frames[0].shape[0], frames[0].shape[1], min_pixels, max_pixels)
    video = resize_frames(frames, height, width).transpose(0, 3, 1, 2)  # (T, C, H, W) uint8
    grid_t = video.shape[0] // TEMPORAL_PATCH
    grid_h, grid_w = height // PATCH_SIZE, width // PATCH_SIZE
    patches = video.reshape(
        grid_t, TEMPORAL_PATCH, 3,
        grid_h // MERGE_SIZE, MERGE_SIZE, PATCH_SIZE,
        grid_w // MERGE_SIZE, MERGE_SIZE, PATCH_SIZE,
    )
    # Order patches as Qwen2-VL's processor does: merge-window-major, then (C, T, ph, pw) per patch.
    # The reordering copy runs on uint8 (a quarter of the bytes of float32); rescaling and
    # normalizing, (x / 255 - mean) / std, then is one multiply-add per value of the flat patches.
    patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = patches.reshape(grid_t * grid_h * grid_w, 3 * TEMPORAL_PATCH * PATCH_SIZE * PATCH_SIZE)
    per_channel = TEMPORAL_PATCH * PATCH_SIZE * PATCH_SIZE
    std = np.repeat(np.asarray(normalization.std, np.float32), per_channel)
    mean = np.repeat(np.asarray(normalization.mean, np.float32), per_channel)
    flat = flat * (1.0 / (255.0 * std))
    flat -= mean / std
    return VisionInput(np.ascontiguousarray(flat), (grid_t, grid_h, grid_w))
