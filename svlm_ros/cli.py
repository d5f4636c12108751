"""The `svlm` command: describe-video, node, bench, replay, synth-bag, perturb-bag, eval, judge, recall, and the
training commands."""
from __future__ import annotations

import argparse
import logging
import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["node"]:  # ROS arguments (--ros-args ...) go to rclpy untouched
        from .node.main import main as node_main

        return node_main(argv[1:])
    parser = argparse.ArgumentParser(prog="svlm", description="StreamingVLM for ROS 2: command-line tools")
    parser.add_argument("--log-level", default="INFO")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from . import bench, describe

    describe.add_arguments(commands.add_parser(
        "describe-video", help="print one description per second of a video file or folder of frames"))
    bench.add_arguments(commands.add_parser(
        "bench", help="per-second latency and memory of streaming vs recompute, full and rerotate"))
    commands.add_parser("node", help="run the ROS 2 node (takes --ros-args ...)")
    from .replay import perturb, run as replay, synth

    replay.add_arguments(commands.add_parser(
        "replay", help="describe rosbags through the node's code path; write descriptions, a bag and a report"))
    synth.add_arguments(commands.add_parser(
        "synth-bag", help="write a rosbag of moving shapes with known per-second reference text"))
    perturb.add_arguments(commands.add_parser(
        "perturb-bag", help="copy a bag with its frames' red and blue swapped or delayed (does the score see them?)"))
    from .replay import evaluate

    evaluate.add_eval_arguments(commands.add_parser(
        "eval", help="score runs against reference text (one run, a fleet with shards merged, or A vs B)"))
    evaluate.add_judge_arguments(commands.add_parser(
        "judge", help="pairwise LLM judge of runs A and B per time window (Inf-Streams-Eval)"))
    from .memory import cli as recall

    recall.add_arguments(commands.add_parser(
        "recall", help="search a memory store by words, meaning, time, camera and place"))
    from training import build_dataset, label, train

    build_dataset.add_arguments(commands.add_parser(
        "build-dataset", help="cut bags and timed text into overlapping training windows (sharded)"))
    label.add_arguments(commands.add_parser(
        "label", help="a teacher VLM at an OpenAI-compatible endpoint writes each second's text (BAG.labels.jsonl)"))
    train.add_arguments(commands.add_parser(
        "train", help="fine-tune on a built dataset (overlapped-chunk SFT; see training/README.md)"))
    runners = {"build-dataset": build_dataset.run, "label": label.run, "train": train.run, "describe-video": describe.run, "bench": bench.run, "replay": replay.run, "synth-bag": synth.run,
               "perturb-bag": perturb.run,
               "eval": evaluate.run_eval, "judge": evaluate.run_judge, "recall": recall.run}
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return runners[args.command](args)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as error:
        print(f"svlm {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"svlm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
