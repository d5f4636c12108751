"""`svlm describe-video`: stream a video file or a folder of frames through the engine.

stdout gets one line per window and nothing else; logs go to stderr.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .config import EngineConfig, ModelConfig
from .engine.models import RANDOM_MODELS, load_model
from .engine.session import StreamSession
from .engine.windows import WindowAssembler
from .sources.videos import read_frames

log = logging.getLogger("svlm.describe")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="a video file OpenCV reads, or a folder of image frames")
    parser.add_argument("--model", default=ModelConfig.model, help="local HF dir, cached hub id, tiny-random, small-random")
    parser.add_argument("--device", default=ModelConfig.device)
    parser.add_argument("--dtype", default=ModelConfig.dtype)
    parser.add_argument("--fps", type=float, default=EngineConfig().frames.fps, help="frames sampled per second")
    parser.add_argument("--folder-fps", type=float, default=2.0, help="frame rate of a folder of frames")
    parser.add_argument("--instruction", default=None, help="the standing instruction")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    parser.add_argument("--seed", type=int, default=0)


def format_line(result) -> str:
    text = "(silent)" if result.silent else result.text.replace("\n", " ")
    return (f"[{result.start_s:7.1f}-{result.end_s:7.1f}s] {text} | vision {result.vision_s:.3f}s "
            f"prefill {result.prefill_s:.3f}s decode {result.decode_s:.3f}s tokens {result.generated_tokens} "
            f"cache {result.cache_tokens}")


def run(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if not path.exists():
        print(f"svlm describe-video: {path} does not exist", file=sys.stderr)
        return 2
    config = EngineConfig()
    config.frames.fps = args.fps
    config.generation.seed = args.seed
    config.generation.do_sample = not args.greedy
    if args.max_new_tokens:
        config.generation.max_new_tokens = args.max_new_tokens
    if args.instruction:
        config.prompt.instruction = args.instruction
    loaded = load_model(ModelConfig(model=args.model, device=args.device, dtype=args.dtype))
    if args.model in RANDOM_MODELS:
        log.warning("%s has random weights: its words are meaningless (the machinery runs, not the model)",
                    args.model)
    session = StreamSession(loaded, config.validate())
    assembler = WindowAssembler(config.frames.window_seconds, config.frames.frames_per_window)
    for stamp, frame in read_frames(path, args.folder_fps):
        for window in assembler.add(stamp, frame).windows:
            print(format_line(session.step(window.frames, window.start_s, window.end_s)), flush=True)
    last = assembler.flush()
    if last is not None:
        print(format_line(session.step(last.frames, last.start_s, last.end_s)), flush=True)
    return 0
