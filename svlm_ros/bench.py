"""`svlm bench`: per-second cost of the streaming cache against the alternatives.

Strategies, run one after another in this process on the same synthetic video:
  streaming  this engine: evict, close position gaps by rotating moved keys once, decode.
  rerotate   the same engine, plus a rotation of every cached key of every layer before every
             forward, as the reference does when it applies RoPE to its pre-RoPE cache (rotation
             by zero angles computed per token: the same work, unchanged outputs).
  recompute  the same retained tokens, but the KV cache is rebuilt from scratch every second
             (sliding window with recompute, the paper's baseline: the window's video goes through
             the vision tower again; --recompute-reuses-vision keeps the features, so only the
             LLM redoes work). The summary reports LLM prefill alone as well as vision + prefill.
  full       no eviction at all, until --baseline-seconds, --full-token-limit, --full-memory-limit-mib
             or out of memory.
Decoding is forced to exactly --tokens tokens per second so every strategy does the same work.

--cameras N [N ...] measures something else instead: N cameras through one model, batched
(engine/batch.py: one vision call, per-stream prefill, batched decode) against the same N
streams stepped one after another (round-robin), per second of video, stages split.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from .config import DECODE_MODES, CachePolicy, EngineConfig, ModelConfig
from .engine.batch import StreamBatch, StreamWindow
from .engine.kv_cache import rotate_keys
from .engine.models import load_model
from .engine.segments import Kind
from .engine.session import StreamSession, WindowResult
from .process import rss_bytes
from .synthetic import moving_shapes

log = logging.getLogger("svlm.bench")
STRATEGIES = ("streaming", "rerotate", "recompute", "full")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="small-random")
    parser.add_argument("--config", default=None, help="JSON Qwen2.5-VL config for random weights at real size")
    parser.add_argument("--seconds", type=int, default=600, help="length of the streaming run")
    parser.add_argument("--baseline-seconds", type=int, default=60, help="length of the other strategies' runs")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--out", default="bench-out")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=float, default=2.0)
    parser.add_argument("--tokens", type=int, default=20, help="decoded tokens per second, forced")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--attn", default="auto")
    parser.add_argument("--decode", default="auto", choices=DECODE_MODES,
                        help="decode mode (auto: cuda_graph on CUDA with sdpa attention, else dynamic); "
                             "rerotate always decodes dynamic, since its rotation runs in the per-token forward")
    parser.add_argument("--recompute-reuses-vision", action="store_true",
                        help="recompute keeps each window's vision features instead of re-encoding its frames")
    parser.add_argument("--full-token-limit", type=int, default=200_000, help="stop `full` past this cache size")
    parser.add_argument("--full-memory-limit-mib", type=float, default=None,
                        help="stop `full` once its peak memory (CUDA max allocated, or process RSS on CPU) passes this")
    parser.add_argument("--time-limit-s", type=float, default=900.0, help="stop a baseline after this long")
    parser.add_argument("--cameras", type=int, nargs="+", default=None, metavar="N",
                        help="instead of the strategies: N cameras batched against N round-robin, for each N")
    parser.add_argument("--camera-seconds", type=int, default=20, help="seconds of video per camera run")


class RerotatingSession(StreamSession):
    """Rotates the whole cache before every forward, as the reference's per-step RoPE does."""

    def _forward(self, embeds, positions):
        for layer in self.cache.layers:
            if layer.is_initialized and layer.length:
                zero = torch.zeros(layer.length, device=self.device)
                layer.keys.copy_(rotate_keys(layer.keys, zero, self._inv_freq))
        return super()._forward(embeds, positions)


class RecomputingSession(StreamSession):
    """Keeps the same tokens as streaming but rebuilds their KV cache from scratch every window."""

    def __init__(self, *args, reencode_vision=True, **kwargs):
        self.reencode_vision = reencode_vision
        self._windows = {}  # VISION segment uid -> (vision input, vision features)
        self._latest = None  # the window being added: (vision input, vision features)
        self.last_reencode_s = 0.0  # vision work inside the re-prefill, reported as vision
        super().__init__(*args, **kwargs)

    def _vision_features(self, vision_input):
        features = super()._vision_features(vision_input)
        self._latest = (vision_input, features)
        return features

    def _append_turn(self, *args, **kwargs):
        super()._append_turn(*args, **kwargs)
        newest = list(self.table.of_kind(Kind.VISION))[-1]
        self._windows[newest.uid_start] = self._latest

    def _evict(self, window):
        super()._evict(window)
        vision = list(self.table.of_kind(Kind.VISION))
        self._windows = {s.uid_start: self._windows[s.uid_start] for s in vision}
        self.last_reencode_s = 0.0
        if not self.table.segments:
            return
        for layer in self.cache.layers:  # throw the cache away and prefill every retained token again
            layer.reset()
        if self.reencode_vision:  # the window's video goes through the vision tower again
            started = time.perf_counter()
            features = [StreamSession._vision_features(self, self._windows[s.uid_start][0]) for s in vision]
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.last_reencode_s = time.perf_counter() - started
        else:
            features = [self._windows[s.uid_start][1] for s in vision]
        self._forward_new(torch.cat(features) if features else None)


def run_strategy(name, loaded, args, seconds):
    config = EngineConfig()
    config.frames.fps = args.fps
    config.generation.max_new_tokens = args.tokens
    config.generation.ignore_end_of_turn = True
    config.generation.seed = 0
    config.generation.decode_mode = "dynamic" if name == "rerotate" else args.decode
    if name == "full":
        config.cache = CachePolicy.unlimited()
    if name == "recompute":
        session = RecomputingSession(loaded, config, reencode_vision=not args.recompute_reuses_vision)
    elif name == "rerotate":
        session = RerotatingSession(loaded, config)
    else:
        session = StreamSession(loaded, config)
    cuda = loaded.device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    record = {key: [] for key in ("latency_s", "vision_s", "prefill_s", "decode_s", "cache_tokens", "rss_bytes")}
    frames_per_window = config.frames.frames_per_window
    started = time.perf_counter()
    stop_reason = "completed"
    for second in range(seconds):
        frames = [moving_shapes(second + i / frames_per_window, args.height, args.width)
                  for i in range(frames_per_window)]
        try:
            result = session.step(frames, float(second), float(second + 1))
        except torch.OutOfMemoryError:
            stop_reason = f"out of memory at second {second}"
            break
        reencode_s = getattr(session, "last_reencode_s", 0.0)
        record["latency_s"].append(result.latency_s)
        record["vision_s"].append(result.vision_s + reencode_s)
        record["prefill_s"].append(result.prefill_s - reencode_s)
        record["decode_s"].append(result.decode_s)
        record["cache_tokens"].append(result.cache_tokens)
        record["rss_bytes"].append(rss_bytes())
        if name != "streaming" and time.perf_counter() - started > args.time_limit_s:
            stop_reason = f"time limit after {second + 1} s"
            break
        if name == "full" and result.cache_tokens > args.full_token_limit:
            stop_reason = f"token limit after {second + 1} s"
            break
        if name == "full" and args.full_memory_limit_mib is not None:
            used = torch.cuda.max_memory_allocated() if cuda else record["rss_bytes"][-1]
            if used > args.full_memory_limit_mib * 2**20:
                stop_reason = f"memory limit after {second + 1} s"
                break
        if (second + 1) % 60 == 0:
            log.info("%s: %d s streamed, last latency %.3f s, cache %d tokens",
                     name, second + 1, result.latency_s, result.cache_tokens)
    record["time_per_token_s"] = [d / args.tokens for d in record["decode_s"]]
    record["peak_memory_bytes"] = (torch.cuda.max_memory_allocated() if cuda else max(record["rss_bytes"], default=0))
    record["memory_kind"] = "cuda_max_allocated" if cuda else "process_rss"
    record["stop_reason"] = stop_reason
    record["seconds_run"] = len(record["latency_s"])
    record["decode_mode"] = session.decode_mode
    record["window_s"] = config.frames.window_seconds
    del session
    return record


def steady(values, fraction=0.25):
    """Median of the last `fraction` of a run (its steady state)."""
    if not values:
        return float("nan")
    tail = values[max(0, int(len(values) * (1 - fraction))):]
    return statistics.median(tail)


def summarize(results, args):
    rows = []
    for name, r in results.items():
        rows.append({
            "strategy": name, "seconds": r["seconds_run"], "decode_mode": r["decode_mode"],
            "latency_s": steady(r["latency_s"]),
            "vision_prefill_s": steady([v + p for v, p in zip(r["vision_s"], r["prefill_s"])]),
            "prefill_s": steady(r["prefill_s"]),
            "decode_s": steady(r["decode_s"]),
            "per_token_ms": 1000 * steady(r["time_per_token_s"]),
            "cache_tokens": r["cache_tokens"][-1] if r["cache_tokens"] else 0,
            "peak_memory_mib": r["peak_memory_bytes"] / 2**20,
            "realtime_x": r["window_s"] / steady(r["latency_s"]),  # > 1: keeps up with the camera
        })
    ratios = {}
    if "streaming" in results:
        base = next(row for row in rows if row["strategy"] == "streaming")
        for row in rows:
            if row["strategy"] == "streaming":
                continue
            ratios[row["strategy"]] = {
                "vision_prefill_x": row["vision_prefill_s"] / base["vision_prefill_s"],
                "prefill_x": row["prefill_s"] / base["prefill_s"],
                "latency_x": row["latency_s"] / base["latency_s"],
                "per_token_x": row["per_token_ms"] / base["per_token_ms"],
            }
        lat = results["streaming"]["latency_s"]
        if len(lat) >= 200:
            early = statistics.median(lat[60:120])
            late = statistics.median(lat[int(len(lat) * 0.9):])
            ratios["streaming_flatness"] = {"median_60_120_s": early, "median_last_10pct_s": late,
                                            "late_over_early": late / early}
    return rows, ratios


def print_table(rows, ratios):
    header = (f"{'strategy':<10} {'decode':<10} {'seconds':>7} {'latency s':>10} {'vis+pre s':>10} "
              f"{'decode s':>9} {'ms/token':>9} {'cache tok':>10} {'peak MiB':>9} {'realtime':>8}")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['strategy']:<10} {row['decode_mode']:<10} {row['seconds']:>7} {row['latency_s']:>10.3f} "
              f"{row['vision_prefill_s']:>10.3f} {row['decode_s']:>9.3f} {row['per_token_ms']:>9.2f} "
              f"{row['cache_tokens']:>10} {row['peak_memory_mib']:>9.0f} {row['realtime_x']:>7.2f}x")
    for name, ratio in ratios.items():
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in ratio.items()))


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (latency_axis, token_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, r in results.items():
        seconds = np.arange(1, len(r["latency_s"]) + 1)
        latency_axis.plot(seconds, r["latency_s"], label=name, linewidth=1)
        token_axis.plot(seconds, np.array(r["time_per_token_s"]) * 1000, label=name, linewidth=1)
    latency_axis.set(xlabel="stream time (s)", ylabel="latency per second of video (s)", yscale="log",
                     title="per-second latency (vision + prefill + decode)")
    token_axis.set(xlabel="stream time (s)", ylabel="ms per generated token", title="decode time per token")
    for axis in (latency_axis, token_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


CAMERA_STAGES = ("vision_s", "prefill_s", "decode_s")


def camera_config(args) -> EngineConfig:
    config = EngineConfig()
    config.frames.fps = args.fps
    config.generation.max_new_tokens = args.tokens
    config.generation.ignore_end_of_turn = True
    config.generation.seed = 0
    config.generation.decode_mode = args.decode
    return config


def camera_frames(camera: int, second: int, args, frames_per_window: int):
    """Camera `camera`'s frames for one second: the same scene, each camera 17 s apart in it."""
    return [moving_shapes(17 * camera + second + i / frames_per_window, args.height, args.width)
            for i in range(frames_per_window)]


def run_cameras(loaded, args, cameras: int) -> dict:
    """Per-second stage costs of `cameras` streams, batched and round-robin (summed over cameras).

    The two run second by second in turns (the order alternating), so that a machine whose load
    changes during the run weighs on both alike."""
    configs = [camera_config(args) for _ in range(cameras)]
    frames_per_window = configs[0].frames.frames_per_window
    batch = StreamBatch(loaded, configs)
    sessions = [StreamSession(loaded, config) for config in configs]
    record = {mode: {stage: [] for stage in CAMERA_STAGES} for mode in ("round-robin", "batched")}
    for second in range(args.camera_seconds):
        windows = [StreamWindow(camera_frames(c, second, args, frames_per_window), float(second), second + 1.0)
                   for c in range(cameras)]
        for mode in (("batched", "round-robin") if second % 2 else ("round-robin", "batched")):
            if mode == "batched":
                results = batch.step(windows)
                failed = [r for r in results if not isinstance(r, WindowResult)]
                if failed:
                    raise RuntimeError(f"a camera's window failed in the benchmark: {failed[0]!r}")
                costs = {stage: getattr(results[0], stage) for stage in CAMERA_STAGES}  # the whole step's
            else:
                results = [s.step(w.frames, w.start_s, w.end_s) for s, w in zip(sessions, windows)]
                costs = {stage: sum(getattr(r, stage) for r in results) for stage in CAMERA_STAGES}
            for stage in CAMERA_STAGES:
                record[mode][stage].append(costs[stage])
    return record


def run_camera_comparison(loaded, args, out: Path) -> int:
    rows = []
    for cameras in args.cameras:
        log.info("%d camera(s), batched and round-robin, %d s", cameras, args.camera_seconds)
        records = run_cameras(loaded, args, cameras)
        for mode, record in records.items():
            row = {"cameras": cameras, "mode": mode}
            row.update({stage: steady(record[stage], fraction=0.5) for stage in CAMERA_STAGES})
            row["total_s"] = sum(row[stage] for stage in CAMERA_STAGES)
            rows.append(row)
    header = (f"{'cameras':>7} {'mode':<12} {'vision s':>9} {'prefill s':>9} {'decode s':>9} {'total s':>8} "
              f"{'batched/rr':>10}")
    print(header)
    print("-" * len(header))
    for row in rows:
        other = next(r for r in rows if r["cameras"] == row["cameras"] and r["mode"] == "round-robin")
        ratio = row["total_s"] / other["total_s"]
        row["over_round_robin"] = ratio
        print(f"{row['cameras']:>7} {row['mode']:<12} {row['vision_s']:>9.3f} {row['prefill_s']:>9.3f} "
              f"{row['decode_s']:>9.3f} {row['total_s']:>8.3f} {ratio:>9.2f}x")
    config = {"model": args.config or args.model, "width": args.width, "height": args.height, "fps": args.fps,
              "tokens_per_second": args.tokens, "camera_seconds": args.camera_seconds,
              "torch_threads": torch.get_num_threads(), "dtype": str(loaded.dtype),
              "device": str(loaded.device), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "torch": torch.__version__}
    (out / "bench-cameras.json").write_text(json.dumps({"rows": rows, "config": config}, indent=1))
    log.info("wrote %s", out / "bench-cameras.json")
    return 0


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_model(ModelConfig(model=args.model, random_config=args.config, device=args.device,
                                    dtype=args.dtype, attn_implementation=args.attn))
    if args.cameras:
        return run_camera_comparison(loaded, args, out)
    results = {}
    for name in args.strategies:
        seconds = args.seconds if name == "streaming" else args.baseline_seconds
        log.info("running %s for up to %d s", name, seconds)
        results[name] = run_strategy(name, loaded, args, seconds)
    rows, ratios = summarize(results, args)
    print_table(rows, ratios)
    device = loaded.device
    config = {
        "recompute_reencodes_vision": not args.recompute_reuses_vision,
        "model": args.config or args.model, "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(), "dtype": str(loaded.dtype),
        "attention": loaded.model.config._attn_implementation, "width": args.width, "height": args.height,
        "fps": args.fps, "tokens_per_second": args.tokens, "seconds": args.seconds,
        "baseline_seconds": args.baseline_seconds, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }
    (out / "bench.json").write_text(json.dumps(
        {"strategies": results, "summary": rows, "ratios": ratios, "config": config}, indent=1))
    plot(results, out / "bench.png")
    log.info("wrote %s and %s", out / "bench.json", out / "bench.png")
    return 0
