"""Per-window latency with the memory store on and off, measured in one run (issue 13).

The worker's path per window is the engine's step, then what the node's `record` does with the
memory on (new texts embedded by the node's embedding process, or `--embed-in-process`): offer the entry to the writer thread (never waited on) and plan summaries. The
writer thread commits and embeds new texts on the side, competing for the same cores, which is
the cost this measures. Blocks of windows alternate off/on (ABAB...), so drift in the machine's
speed falls on both equally.

Windows come at `--rate` a second, as a node's cameras deliver them (4: four cameras, one window
a second each), or back to back with `--rate 0`: a worker that never idles, the worst case, where
the embedding's compute can only take cores from the model.

    .venv/bin/python scripts/bench_memory_latency.py --windows 400 --block 20 --rate 4
    .venv/bin/python scripts/bench_memory_latency.py --windows 400 --block 20 --rate 0
"""
from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from svlm_ros.config import EngineConfig, GenerationConfig, MemoryConfig, ModelConfig
from svlm_ros.engine.models import load_model
from svlm_ros.engine.session import StreamSession
from svlm_ros.memory.embedding_process import ProcessEmbedder
from svlm_ros.memory.records import Entry
from svlm_ros.memory.store import MemoryStore
from svlm_ros.memory.vectors import Embedder
from svlm_ros.memory.summaries import SummaryPlanner
from svlm_ros.memory.writer import MemoryWriter
from svlm_ros.synthetic import moving_shapes


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--windows", type=int, default=400)
    parser.add_argument("--block", type=int, default=20, help="windows per off/on block")
    parser.add_argument("--rate", type=float, default=4.0,
                        help="windows a second, as cameras deliver them (0: back to back, never idle)")
    parser.add_argument("--embed-in-process", action="store_true",
                        help="embed in this process (store.Embedder) instead of the node's embedding process")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    loaded = load_model(ModelConfig(model=args.model, device="cpu", dtype="float32"))
    config = EngineConfig(generation=GenerationConfig(max_new_tokens=12))
    config.frames.min_pixels = config.frames.max_pixels = 224 * 224
    session = StreamSession(loaded, config)
    session.warm_up()
    with tempfile.TemporaryDirectory() as folder:
        memory_config = MemoryConfig()
        embedder = Embedder() if args.embed_in_process else ProcessEmbedder()
        embedder(["warm the embedding model up"])  # loaded once, as the node's writer does on its first text
        writer = MemoryWriter(lambda: MemoryStore(Path(folder) / "memory.sqlite", memory_config, embedder))
        planner = SummaryPlanner(memory_config)
        latencies = {"off": [], "on": []}
        off_by_pair = {0: [], 1: []}  # off blocks of even and odd pairs: the run's own noise (an A/A ratio)
        t0 = 1_763_740_800.0
        clock_start = time.perf_counter()
        for index in range(args.windows):
            if args.rate > 0:  # the next window closes when its camera's second is over
                time.sleep(max(0.0, clock_start + index / args.rate - time.perf_counter()))
            mode = "on" if (index // args.block) % 2 else "off"
            frames = [moving_shapes(index + k / 2, 224, 224) for k in range(2)]
            started = time.perf_counter()
            result = session.step(frames, t0 + index, t0 + index + 1)
            if mode == "on":
                writer.offer(Entry("/camera", t0 + index, t0 + index + 1, result.text, result.silent))
                planner.observe("/camera", t0 + index + 1)
            latencies[mode].append(time.perf_counter() - started)
            if mode == "off":
                off_by_pair[(index // (2 * args.block)) % 2].append(latencies[mode][-1])
        writer.flush(timeout=120)
        writer.close()
        if isinstance(embedder, ProcessEmbedder):
            embedder.close()
        where = "in this process" if args.embed_in_process else "in the embedding process"
        print(f"memory latency: {args.model}, embedding {where}, {args.windows} windows in blocks of {args.block}, "
              f"{'back to back' if args.rate <= 0 else f'{args.rate:g} a second'}, "
              f"{writer.written} entries written, {writer.dropped} dropped")
        print("| memory | windows | p50 ms | p95 ms | mean ms |")
        print("|---|---|---|---|---|")
        for mode in ("off", "on"):
            values = latencies[mode]
            print(f"| {mode} | {len(values)} | {1000 * percentile(values, 0.5):.1f} | "
                  f"{1000 * percentile(values, 0.95):.1f} | {1000 * statistics.mean(values):.1f} |")
        ratio = percentile(latencies["on"], 0.5) / percentile(latencies["off"], 0.5)
        noise = percentile(off_by_pair[1], 0.5) / percentile(off_by_pair[0], 0.5)
        print(f"p50 on/off: {ratio:.3f}   noise (p50 of alternate off blocks, A/A): {noise:.3f}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
