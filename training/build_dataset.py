"""`svlm build-dataset SOURCES... --out DIR`: bags, videos and their timed text into training shards.

The engine's settings (frames per second, pixel limits, system prompt, instruction, context)
come from the node's parameter file and `--set`, exactly as `svlm replay` reads them, so the
samples are cut from the video the robot's model will see. The dataset's own settings (window,
stride, shard size) come from the `dataset:` section of a training config and the flags here.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from svlm_ros.engine.models import RANDOM_MODELS, qwen_tokenizer_dir
from svlm_ros.params import load_node_configs
from svlm_ros.progress import progress

from . import command
from .config import DatasetConfig, from_dict
from .dataset import DatasetBuilder, parse_sources

log = logging.getLogger(__name__)


def load_tokenizer(model: str):
    """The tokenizer of the model to be trained (its previous-text ids are stored in the samples)."""
    from transformers import AutoTokenizer

    if model in RANDOM_MODELS or model.endswith(".json"):
        return AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    path = Path(model).expanduser()
    if not path.exists():
        # Found (a hub id in the local cache) or refused as `svlm train` finds and refuses models.
        from svlm_ros.engine.models import resolve_checkpoint

        path = resolve_checkpoint(model)
    if not (path / "tokenizer_config.json").exists() and not (path / "tokenizer.json").exists():
        raise FileNotFoundError(f"{path} has no tokenizer files; pass --model the checkpoint you will train")
    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)


def dataset_config(config_path, args) -> DatasetConfig:
    values = {}
    if config_path:
        import yaml

        document = yaml.safe_load(Path(config_path).read_text()) or {}
        values = dict(document.get("dataset") or {})
    for flag, key in (("window", "window_seconds"), ("stride", "stride_seconds"),
                      ("samples_per_shard", "samples_per_shard")):
        if getattr(args, flag, None) is not None:
            values[key] = getattr(args, flag)
    if getattr(args, "keep_silent", False):
        values["keep_silent_windows"] = True
    return from_dict(DatasetConfig, values, f"{config_path}: dataset." if config_path else "dataset.").validate()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="a bag, a video file, or a folder of them; text from a sidecar beside each "
                             "(BAG.reference.jsonl, .labels.jsonl, .jsonl, .vtt, .srt) or SOURCE=TEXT "
                             "(TEXT: a file, or /topic in that bag)")
    parser.add_argument("--out", required=True, help="the dataset directory to write")
    parser.add_argument("--text-topic", help="for bags without a sidecar: a std_msgs/String or "
                                             "svlm_ros/msg/Description topic in the bag")
    parser.add_argument("--params", help="the node's parameter file (config/svlm.yaml): frames, prompt")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a node parameter (e.g. frames.min_pixels=3136); repeatable")
    parser.add_argument("--model", default="tiny-random",
                        help="the model to be trained, for its tokenizer (default tiny-random: the Qwen tokenizer)")
    parser.add_argument("--config", help="a training config whose `dataset:` section sets the defaults below")
    parser.add_argument("--window", type=int, help="seconds per sample (default 24)")
    parser.add_argument("--stride", type=int, help="seconds between sample starts (default 12)")
    parser.add_argument("--samples-per-shard", type=int, dest="samples_per_shard")
    parser.add_argument("--keep-silent", action="store_true", help="keep windows in which nothing is said")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")


def run(args: argparse.Namespace) -> int:
    _, engine, node = load_node_configs(args.params, args.set)
    config = dataset_config(args.config, args)
    sources = parse_sources(args.sources, args.text_topic)
    builder = DatasetBuilder(Path(args.out), config, engine, node, load_tokenizer(args.model), args.overwrite)
    started = time.monotonic()
    for source in progress(sources, desc="build-dataset", unit="source"):
        samples = builder.add(source)
        log.info("%s: %d samples (text: %s)", source.name, samples, source.text)
    manifest = builder.finish(sources)
    report = json.loads((Path(args.out) / "report.json").read_text())
    print(f"wrote {manifest['samples']} samples ({manifest['seconds']} s of video in windows, "
          f"{manifest['bytes'] / 2**20:.1f} MiB, {len(manifest['shards'])} shards) to {args.out} "
          f"in {time.monotonic() - started:.1f} s")
    for reason, item in report["skipped"].items():
        print(f"  skipped: {reason}: {item['count']}" + (f" (e.g. {item['examples'][0]})" if item["examples"] else ""))
    return 0 if manifest["samples"] else 1


def main(argv=None) -> int:
    return command.main("training.build_dataset", __doc__.splitlines()[0], add_arguments, run, argv, name="build-dataset")


if __name__ == "__main__":
    raise SystemExit(main())
