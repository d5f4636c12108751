#!/usr/bin/env python3
"""Per-frame cost of turning a camera frame into vision patches, by camera size.

Prints milliseconds per frame for the engine's antialiased resize alone and for the whole
preprocessing (resize, normalize, patchify), plus OpenCV's non-antialiased cubic resize for
scale. Usage: .venv/bin/python scripts/bench_frames.py [--repeats N] [--threads N]
"""
from __future__ import annotations

import argparse
import platform
import time

import cv2
import numpy as np
import torch

from svlm_ros.config import FrameConfig
from svlm_ros.engine.frames import preprocess_frames, resize_frames, target_size

SIZES = [(480, 640), (720, 1280), (1080, 1920)]


def per_frame_ms(function, frames: int, repeats: int) -> float:
    function()  # first call pays one-time costs
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - started) / repeats / frames * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the node's image path uses 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = FrameConfig()
    rng = np.random.default_rng(0)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), "
          f"{config.frames_per_window} frames per window")
    print(f"{'camera':>10} {'grid':>9} {'resize ms':>10} {'preprocess ms':>14} {'cv2 cubic ms':>13}")
    for height, width in SIZES:
        frames = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(config.frames_per_window)]
        grid_h, grid_w = target_size(height, width, config.min_pixels, config.max_pixels)
        count = len(frames)
        resize = per_frame_ms(lambda: resize_frames(frames, grid_h, grid_w), count, args.repeats)
        full = per_frame_ms(lambda: preprocess_frames(frames, config.min_pixels, config.max_pixels), count,
                            args.repeats)
        opencv = per_frame_ms(lambda: [cv2.resize(f, (grid_w, grid_h), interpolation=cv2.INTER_CUBIC)
                                       for f in frames], count, args.repeats)
        print(f"{width:>5}x{height:<4} {grid_w:>4}x{grid_h:<4} {resize:>10.2f} {full:>14.2f} {opencv:>13.2f}")


if __name__ == "__main__":
    main()
