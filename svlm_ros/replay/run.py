"""`svlm replay`: rosbags through the node's own data path, into descriptions and a report.

A replay builds the node's ROS-free core (`svlm_ros.cameras.scheduler`: each camera's frame intake,
one engine stream per camera, batched steps) and feeds it the bag's image messages in log-time
order. By default every window is described, as fast as the machine goes: the caller's thread
describes the cameras' windows in batches as soon as every camera has one waiting (the same
descriptions as one camera at a time, `--set max_batch=1`). `--realtime`
instead paces the messages by the bag's clock (times `--rate`) and lets the scheduler's worker
thread run as on the robot, so windows are skipped exactly when the node would skip them.

With `--memory DB` every described window also goes into a long-term memory store, and the
model writes the same tiered summaries the node writes (`memory.summary_minutes`), including, at
the end of the bag, those of the periods still open, so a day of logs can be searched and asked
about offline.

Messages are read one at a time (`AnyReader.messages`) and, as in the node, each frame's stamp is
read from its serialized header first: only the frames the sampler keeps are deserialized and
converted. Outputs are appended as windows are described, and the report is built from the
files afterwards, so memory stays flat however long the bag. Ctrl-C stops reading; every output
is closed and valid for the part already replayed.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from ..config import EngineConfig, MemoryConfig, NodeConfig
from ..engine.models import RANDOM_MODELS, LoadedModel, load_model
from ..memory.recorder import MemoryRecorder
from ..memory.records import Entry
from ..memory.summaries import SummaryModel
from ..cameras.scheduler import Described, Scheduler
from ..params import load_node_configs
from ..process import rss_bytes
from ..progress import progress
from ..sources.bags import image_topics, open_bag, read_lazily, run_name
from ..sources.images import BadImage
from ..sources.timed_text import load_timed_text
from . import bags, report
from .outputs import DescriptionsFile, OutputBag, SubtitleFiles, WindowRecord

log = logging.getLogger(__name__)


@dataclass
class ReplayOptions:
    out: Path
    topics: List[str] = field(default_factory=list)  # empty: every image topic in the bag
    start_s: Optional[float] = None  # seconds from the bag's start
    end_s: Optional[float] = None
    realtime: bool = False
    rate: float = 1.0
    copy_images: bool = False
    thumbnails: int = 60  # contact-sheet pictures per camera, spread over the bag
    memory: Optional[Path] = None  # a memory store to fill with every described window


class StoreFiller:
    """`--memory`: every described window into the store (a replay waits for the disk rather than
    drop a window), and each closed period's summaries, run by the scheduler when no window waits:
    the node's own recorder (`memory.recorder.MemoryRecorder`)."""

    def __init__(self, path: Path, config: MemoryConfig, loaded: LoadedModel, engine_config: EngineConfig,
                 scheduler: Scheduler):
        self.path = path
        model = SummaryModel(loaded, engine_config) if config.summary_minutes > 0 else None
        # One writer a file: a node (or another replay) writing it refuses this one, with its pid and name.
        self.recorder = MemoryRecorder(path, config, scheduler.when_idle, model, owner="svlm replay", block=True)

    def record(self, record: "WindowRecord") -> None:
        self.recorder.record(Entry(record.camera, record.start, record.end, record.text, record.silent))

    def bag_ended(self) -> None:
        """Summaries of the periods still open; the caller then lets the scheduler run them."""
        self.recorder.close_periods()

    def close(self) -> None:
        recorder = self.recorder
        recorder.flush()
        written = recorder.writer.written if recorder.writer is not None else 0
        recorder.close()
        if recorder.summarizer is not None:
            log.info("memory %s: %d windows written, %d summaries", self.path, written, recorder.summaries_written)


class MemorySampler:
    """Process and accelerator memory, sampled once per described window."""

    def __init__(self):
        self.peak_rss = 0
        self.peak_accelerator = 0

    def sample(self) -> Dict[str, int]:
        rss = rss_bytes()
        accelerator = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_accelerator = max(self.peak_accelerator, accelerator)
        return {"rss_bytes": rss, "accelerator_bytes": accelerator}


class BagReplay:
    """One bag, one stream per camera, through a fresh scheduler sharing the loaded model."""

    def __init__(self, bag: Path, loaded: LoadedModel, configs, options: ReplayOptions, out: Path):
        self.bag, self.loaded, self.options, self.out = bag, loaded, options, out
        self.model_config, self.engine_config, node_config = configs
        self.reader = open_bag(bag)
        self.topics = image_topics(self.reader, options.topics)
        self.node_config = NodeConfig(**{**vars(node_config), "image_topics": list(self.topics)})
        self.origin: Dict[str, float] = {}  # each camera's first frame stamp: stream time zero
        self.frame_ids: Dict[str, str] = {}
        self.memory = MemorySampler()
        self._lock = threading.Lock()  # the worker thread writes in realtime mode
        self._last_index: Dict[str, int] = {}
        self._thumb_every = 1.0

    def run(self) -> Dict:
        out, options = self.out, self.options
        out.mkdir(parents=True, exist_ok=True)
        (out / "thumbnails").mkdir(exist_ok=True)
        (out / "thumbnails" / "index.jsonl").unlink(missing_ok=True)
        start_ns, stop_ns = bags.time_range(self.reader, options.start_s, options.end_s)
        duration_s = max((stop_ns - start_ns) / 1e9, 1e-9)
        self._thumb_every = max(1.0, duration_s / max(1, options.thumbnails))
        self._write_run_json(start_ns, stop_ns)
        # Unpaced, nothing is skipped and the cameras' windows are described in batches as they come.
        scheduler = Scheduler(self.loaded, self.engine_config, self.node_config, self._on_described,
                              list(self.topics), offline=not options.realtime)
        for name, stream in scheduler.cameras.items():
            stream.on_skip = lambda window, name=name: self._on_skipped(name, window)
        self.scheduler = scheduler
        interrupted = False
        started = time.monotonic()
        with ExitStack() as stack:
            self.descriptions = DescriptionsFile(out / "descriptions.jsonl")
            stack.callback(self.descriptions.close)
            self.subtitles = SubtitleFiles(out)
            stack.callback(self.subtitles.close)
            self.samples = (out / "samples.jsonl").open("w")
            stack.callback(self.samples.close)
            self.bag_out = OutputBag(out / "descriptions_bag", bags.storage_of(self.bag),
                                     self.topics if options.copy_images else None)
            stack.callback(self.bag_out.close)
            stack.callback(self.reader.close)
            self.store_filler = None
            if options.memory is not None:  # --params / --set memory.* (retention, merging, summaries)
                self.store_filler = StoreFiller(options.memory, self.node_config.memory, self.loaded,
                                                self.engine_config, scheduler)
                stack.callback(self.store_filler.close)
            if options.realtime:
                scheduler.start()
                stack.callback(scheduler.stop)
            bar = progress(total=int(duration_s), desc=self.bag.name, unit="s")
            stack.callback(bar.close)
            try:
                self._read(scheduler, start_ns, stop_ns, bar, started)
                self._finish(scheduler)
            except KeyboardInterrupt:
                interrupted = True
                log.warning("interrupted: every output holds the windows described so far")
        wall_s = time.monotonic() - started
        metrics = report.write_report(out, self._stats(scheduler), wall_s, self.memory, interrupted,
                                      self.engine_config.frames.window_seconds)
        if interrupted:
            raise KeyboardInterrupt
        return metrics

    def _read(self, scheduler: Scheduler, start_ns: int, stop_ns: int, bar, started: float) -> None:
        first_ns = None
        rate = self.options.rate
        for message in read_lazily(self.reader, self.topics, start_ns, stop_ns):
            log_ns = message.log_ns
            if first_ns is None:
                first_ns = log_ns
            if self.options.realtime:  # pace by the bag's clock: the worker falls behind as on the robot
                delay = (log_ns - first_ns) / 1e9 / rate - (time.monotonic() - started)
                if delay > 0:
                    time.sleep(delay)
            topic = message.topic
            stream = scheduler.cameras[topic]
            try:
                stamp, frame_id = message.header()
            except BadImage as error:  # as the node does: no stamp, no frame
                log.warning("%s: %s; frame dropped", topic, error)
                continue
            self.origin.setdefault(topic, stamp)
            self.frame_ids[topic] = frame_id
            for warning in stream.feed_lazy(stamp, message.load):
                log.warning("%s: %s", topic, warning)
            if self.options.copy_images:
                with self._lock:
                    self.bag_out.write_image(topic, log_ns, message.raw)
            if self.options.realtime:
                scheduler.notify()
            else:
                scheduler.drain(due_only=True)
            bar.n = int((log_ns - start_ns) / 1e9)
            bar.refresh() if not bar.disable else None

    def _finish(self, scheduler: Scheduler) -> None:
        """The bag ended: describe each camera's last, open window, then wait for the worker."""
        for stream in scheduler.cameras.values():
            stream.flush()
        self._let_worker_finish(scheduler)
        if self.store_filler is not None:
            self.store_filler.bag_ended()
            self._let_worker_finish(scheduler)

    def _let_worker_finish(self, scheduler: Scheduler) -> None:
        if self.options.realtime:
            scheduler.notify()
            scheduler.wait_idle()
        else:
            scheduler.drain()

    # ----- results, from the scheduler's thread in realtime mode ------------------------------
    def _stream_seconds(self, camera: str, seconds: float) -> float:
        return seconds - self.origin.get(camera, seconds)

    def _on_described(self, described: Described) -> None:
        result, window, camera = described.result, described.window, described.camera
        record = WindowRecord(
            bag=str(self.bag), camera=camera, index=window.index, start=window.start_s, end=window.end_s,
            stream_start=self._stream_seconds(camera, window.start_s),
            stream_end=self._stream_seconds(camera, window.end_s), text=result.text, silent=result.silent,
            skipped=False, vision_s=result.vision_s, prefill_s=result.prefill_s, decode_s=result.decode_s,
            latency_s=described.latency_s, generated_tokens=result.generated_tokens,
            cache_tokens=result.cache_tokens)
        memory = self.memory.sample()
        with self._lock:
            self.descriptions.write(record)
            self.subtitles.write(record)
            self.bag_out.write(record, self.frame_ids.get(camera, ""))
            if self.store_filler is not None:
                self.store_filler.record(record)
            report.append_sample(self.samples, record, memory)
            if window.frames and self._wants_thumbnail(camera, record.stream_start):
                report.save_thumbnail(self.out, record, window.frames[len(window.frames) // 2])

    def _on_skipped(self, camera: str, window) -> None:
        record = WindowRecord(
            bag=str(self.bag), camera=camera, index=window.index, start=window.start_s, end=window.end_s,
            stream_start=self._stream_seconds(camera, window.start_s),
            stream_end=self._stream_seconds(camera, window.end_s), text="", silent=False, skipped=True)
        with self._lock:
            self.descriptions.write(record)

    def _wants_thumbnail(self, camera: str, stream_start: float) -> bool:
        slot = int(stream_start // self._thumb_every)
        if self._last_index.get(camera, -1) >= slot:
            return False
        self._last_index[camera] = slot
        return True

    def _stats(self, scheduler: Scheduler) -> Dict[str, Dict]:
        return {name: stream.stats.as_dict() for name, stream in scheduler.cameras.items()}

    def _write_run_json(self, start_ns: int, stop_ns: int) -> None:
        info = {
            "bag": str(self.bag.resolve()), "bags": [str(self.bag.resolve())], "storage": bags.storage_of(self.bag),
            "cameras": list(self.topics), "image_types": self.topics, "model": self.loaded.name,
            "random_weights": self.model_config.model in RANDOM_MODELS, "seed": self.engine_config.generation.seed,
            "realtime": self.options.realtime, "rate": self.options.rate,
            "start_ns": start_ns, "stop_ns": stop_ns,
            "parameters": {"model": vars(self.model_config), "engine": _as_dict(self.engine_config),
                           "node": vars(self.node_config)},
        }
        (self.out / "run.json").write_text(json.dumps(info, indent=2, default=str))


def _as_dict(config) -> Dict:
    return {name: vars(section) for name, section in vars(config).items()}


def shard_of(bag_paths: List[Path], shard: Optional[str]) -> List[Path]:
    """The I-th of N slices of the sorted bag list (`--shard I/N`, I from 0)."""
    if not shard:
        return bag_paths
    try:
        index, count = (int(part) for part in shard.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like I/N (for example 0/4), got {shard!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {shard}: I must be in 0..N-1")
    return sorted(bag_paths)[index::count]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bags", nargs="+", help="rosbag2 directories or .mcap/.db3 files, ROS 1 .bag files, "
                                                "or folders of bags")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--topic", action="append", default=[], dest="topics",
                        help="image topic to describe (repeatable; default: every Image/CompressedImage topic)")
    parser.add_argument("--start", type=float, default=None, help="seconds from the bag's start")
    parser.add_argument("--end", type=float, default=None, help="seconds from the bag's start")
    parser.add_argument("--params", default=None, help="the node's parameter YAML (config/svlm.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override any node parameter, e.g. --set generation.max_new_tokens=12 (repeatable)")
    parser.add_argument("--model", default=None, help="override the model parameter")
    parser.add_argument("--device", default=None, help="override the device parameter")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (replays are deterministic)")
    parser.add_argument("--realtime", action="store_true",
                        help="pace by the bag's clock and skip windows as the node would when behind")
    parser.add_argument("--rate", type=float, default=1.0, help="with --realtime: playback speed")
    parser.add_argument("--copy-images", action="store_true", help="copy the image topics into the output bag")
    parser.add_argument("--reference", default=None, help="reference text (JSONL, WebVTT, SRT or BAG:/topic) "
                                                          "to score the descriptions against")
    parser.add_argument("--shard", default=None, metavar="I/N", help="replay the I-th of N slices of the bags")
    parser.add_argument("--thumbnails", type=int, default=60, help="contact-sheet pictures per camera")
    parser.add_argument("--memory", default=None, metavar="DB",
                        help="also store every described window in this memory store (search with svlm recall)")


def run(args: argparse.Namespace) -> int:
    if args.rate <= 0:
        raise ValueError(f"--rate must be > 0, got {args.rate}")
    bag_paths = shard_of(bags.expand(args.bags), args.shard)
    if not bag_paths:
        print(f"svlm replay: shard {args.shard} has no bags (fewer bags than shards)")
        return 0
    configs = load_node_configs(args.params, args.set, model=args.model, device=args.device, seed=args.seed)
    for bag in bag_paths:  # a bad bag or topic fails here, before minutes of model loading
        bags.check(bag, args.topics)
    seed_everything(args.seed)
    loaded = load_model(configs[0])
    if configs[0].model in RANDOM_MODELS:
        log.warning("%s has random weights: its descriptions are meaningless words (the replay shows the "
                    "machinery, not a model's quality)", configs[0].model)
    out = Path(args.out)
    options = ReplayOptions(out, args.topics, args.start, args.end, args.realtime, args.rate, args.copy_images,
                            args.thumbnails, Path(args.memory) if args.memory else None)
    several = len(bag_paths) > 1 or args.shard
    summaries = []
    for bag in bag_paths:
        bag_out = out / run_name(bag) if several else out
        seed_everything(args.seed)
        metrics = BagReplay(bag, loaded, configs, options, bag_out).run()
        summaries.append({"bag": run_name(bag), "path": str(bag), **report.summary_row(metrics)})
        if args.reference:
            from .evaluate import evaluate_run, reference_for_run

            evaluate_run(bag_out, args.reference)
            report.render_with_reference(bag_out, load_timed_text(reference_for_run(bag_out, args.reference)))
        print(f"{bag}: {report.one_line(metrics)} -> {bag_out}")
    if several:
        report.write_summary(out, summaries, args.shard)
    return 0
