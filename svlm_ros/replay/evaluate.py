"""`svlm eval` and `svlm judge`: the files and command lines around quality evaluation.

This module owns reading run directories, finding each run's reference, writing quality.json /
quality_windows.jsonl and the merged fleet summary, and the two commands' arguments. The metrics
live in `quality.py`, the comparison in `compare.py`, the judge in `judge.py`. It reads what
`svlm replay` writes and imports none of the replay code.

Run directories: a *run* holds descriptions.jsonl (and run.json, whose `bag`/`bags` name the bag
it replayed); a *fleet* directory holds one run per bag in DIR/<bag_name>/, with summary.json or
the shards' summary-shard-I-of-N.json (I from 0) beside them.

Which reference a run is scored against (`--reference`):
- a file or BAG:/topic: the same for every run;
- a directory: `<bag_name>.jsonl|.vtt|.srt` in it (or `<bag_name>.reference.jsonl|.vtt`, what
  synth-bag writes), `<bag_name>` being the run's bag without its .mcap/.db3/.bag suffix
  (`sources.bags.run_name`, which also names a fleet's run folders);
- nothing: the reference synth-bag wrote beside the bag, `<bag path>.reference.jsonl`.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..sources.bags import REFERENCE_SIDECAR, REFERENCE_VTT_SIDECAR, run_name, sidecar
from ..sources.timed_text import is_absolute, load_timed_text
from . import compare, quality

log = logging.getLogger(__name__)

# In a reference directory, looked for in this order after the run's bag name.
REFERENCE_NAMES = (".jsonl", ".vtt", ".srt", REFERENCE_SIDECAR, REFERENCE_VTT_SIDECAR)
SHARD_FILE = re.compile(r"^summary-shard-(\d+)-of-(\d+)\.json$")
SUMMARY_METRICS = ("bleu", "chrf", "rouge_l", "semantic_similarity", "silence_agreement")


# ----- run directories -----------------------------------------------------------------------
def is_run(path: Path) -> bool:
    return (path / "descriptions.jsonl").is_file()


def find_runs(path: Path) -> Dict[str, Path]:
    """{"": path} for one run; {bag name: run dir} for a fleet directory."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory; give a run directory written by svlm replay --out")
    if is_run(path):
        return {"": path}
    runs = {child.name: child for child in sorted(path.iterdir()) if child.is_dir() and is_run(child)}
    if not runs and not list(path.glob("summary*.json")):
        raise FileNotFoundError(f"{path} has no descriptions.jsonl and no run directories of bags; "
                                "give the --out directory of svlm replay")
    return runs


def _run_info(run_dir: Path) -> Dict:
    try:
        return json.loads((run_dir / "run.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def bag_path_of(run_dir: Path) -> Optional[Path]:
    info = _run_info(run_dir)
    bag = info.get("bag") or (info.get("bags") or [None])[0]
    if not bag:
        records = quality.read_descriptions(run_dir / "descriptions.jsonl")
        bag = records[0].get("bag") if records else None
    return Path(bag) if bag else None


def bag_name_of(run_dir: Path) -> str:
    bag = bag_path_of(run_dir)
    return run_dir.name if bag is None else run_name(bag)


def reference_for_run(run_dir: Path, spec: Optional[str]) -> str:
    """The reference spec for one run (see the module docstring); raises when there is none."""
    if spec is not None and not Path(spec).is_dir():
        return spec
    name = bag_name_of(run_dir)
    if spec is not None:
        candidates = [Path(spec) / f"{name}{suffix}" for suffix in REFERENCE_NAMES]
        for candidate in candidates:
            if candidate.is_file():
                return str(candidate)
        raise FileNotFoundError(f"reference directory {spec} has no reference for bag {name} "
                                f"(looked for {', '.join(c.name for c in candidates)})")
    bag = bag_path_of(run_dir)
    if bag is None:
        raise FileNotFoundError(f"{run_dir}: no --reference given and run.json names no bag; pass --reference")
    beside = sidecar(bag, REFERENCE_SIDECAR)
    if not beside.is_file():
        raise FileNotFoundError(f"{run_dir}: no --reference given and no reference beside its bag "
                                f"(looked for {beside}); pass --reference FILE")
    return str(beside)


def _inputs_of(run_dir: Path, spec: Optional[str]):
    """(reference spec, its segments, the run's records) of one run."""
    reference = reference_for_run(run_dir, spec)
    segments = load_timed_text(reference)
    records = quality.read_descriptions(run_dir / "descriptions.jsonl")
    if not records:
        raise ValueError(f"{run_dir / 'descriptions.jsonl'} has no windows; nothing to evaluate")
    return reference, segments, records


# ----- one run ---------------------------------------------------------------------------------
def evaluate_run(run_dir: Path, reference_spec: Optional[str], window_s: float = 10.0,
                 camera: Optional[str] = None, semantic: bool = True) -> Dict:
    """Score one run; write quality.json and quality_windows.jsonl into it; return the overall."""
    overall, _, _ = _evaluate_run(Path(run_dir), reference_spec, window_s, camera, semantic)
    return overall


def _evaluate_run(run_dir: Path, spec: Optional[str], window_s: float, camera: Optional[str],
                  semantic: bool, bag: str = "") -> Tuple[Dict, Dict, List[quality.Window]]:
    reference, segments, records = _inputs_of(run_dir, spec)
    overall, cameras, windows = quality.evaluate(records, segments, window_s, camera, semantic,
                                                 bag or bag_name_of(run_dir))
    document = {"reference": reference, "time_base": "absolute" if is_absolute(segments) else "stream",
                "window_s": window_s, "semantic_model": quality.SEMANTIC_MODEL if semantic else None,
                "definitions": "svlm_ros/replay/quality.py (module docstring)",
                "overall": overall, "cameras": cameras}
    (run_dir / "quality.json").write_text(json.dumps(document, indent=2))
    with (run_dir / "quality_windows.jsonl").open("w") as handle:
        for window in windows:
            handle.write(json.dumps(window.as_dict(), ensure_ascii=False) + "\n")
    return overall, cameras, windows


# ----- a fleet: shards merged, every bag scored -------------------------------------------------
def read_shards(directory: Path) -> Tuple[List[Dict], List[str]]:
    """The bag rows of every shard summary, refusing an incomplete set."""
    found: Dict[int, Path] = {}
    counts = set()
    for path in sorted(directory.iterdir()):
        match = SHARD_FILE.match(path.name)
        if match:
            found[int(match[1])] = path
            counts.add(int(match[2]))
    if not found:
        return [], []
    if len(counts) > 1:
        raise ValueError(f"{directory} holds shard summaries of different splits "
                         f"(of {', '.join(str(n) for n in sorted(counts))}); keep the files of one --shard I/N run")
    total = counts.pop()
    missing = [i for i in range(total) if i not in found]
    if missing:
        names = ", ".join(f"summary-shard-{i}-of-{total}.json" for i in missing)
        raise ValueError(f"{directory}: shards {', '.join(map(str, missing))} of {total} are missing ({names}); "
                         f"wait for those tasks to finish or re-run them with --shard I/{total}")
    rows: List[Dict] = []
    for index in range(total):
        try:
            rows += json.loads(found[index].read_text())["bags"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{found[index]} is not a shard summary ({error}); re-run that shard") from None
    return rows, [found[i].name for i in range(total)]


def evaluate_fleet(directory: Path, spec: Optional[str], window_s: float = 10.0, camera: Optional[str] = None,
                   semantic: bool = True) -> Dict:
    """Merge shard summaries and score every bag's run into DIR/summary.json and summary.md."""
    rows, merged_from = read_shards(directory)
    if not merged_from and (directory / "summary.json").exists():
        rows = json.loads((directory / "summary.json").read_text()).get("bags", [])
    by_name = {}
    for row in rows:
        if row["bag"] in by_name:
            log.warning("bag %s is in more than one shard summary; keeping the last", row["bag"])
        by_name[row["bag"]] = row
    runs = find_runs(directory)
    runs.pop("", None)
    pooled: List[quality.Window] = []
    for name, run_dir in runs.items():
        row = by_name.setdefault(name, {"bag": name})
        if not quality.read_descriptions(run_dir / "descriptions.jsonl"):
            log.warning("%s: no window described (interrupted before the first?); not scored", name)
            continue
        try:
            overall, _, windows = _evaluate_run(run_dir, spec, window_s, camera, semantic, bag=name)
        except FileNotFoundError as error:
            if spec is not None:
                raise
            log.warning("%s: not scored (%s)", name, error)
            continue
        pooled += windows
        row.update({metric: overall[metric] for metric in SUMMARY_METRICS})
        row["reference_windows"] = overall["windows_with_reference"]
    for name in by_name:
        if name not in runs:
            log.warning("bag %s is in the summaries but %s has no run directory for it", name, directory / name)
    summary = {"shard": None, "merged_from": merged_from, "reference": spec, "window_s": window_s,
               "bags": list(by_name.values()), "quality": quality.aggregate(pooled) if pooled else None}
    (directory / "summary.json").write_text(json.dumps(summary, indent=2))
    (directory / "summary.md").write_text(_summary_markdown(summary))
    return summary


def _summary_markdown(summary: Dict) -> str:
    columns = ["bag", "windows", "described", "skipped", "bad_frames", "latency_p50_s", "replay_speed"]
    if summary["quality"]:
        columns += list(SUMMARY_METRICS)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in summary["bags"]]
    if summary["quality"]:
        total = {"bag": "all bags (pooled)", **summary["quality"]}
        total.pop("windows", None)
        lines.append("| " + " | ".join(_fmt(total.get(c)) for c in columns) + " |")
    note = f"Merged from {', '.join(summary['merged_from'])}.\n\n" if summary["merged_from"] else ""
    return note + "\n".join(lines) + "\n"


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


# ----- two runs --------------------------------------------------------------------------------
def paired_windows(a: Path, b: Path, spec: Optional[str], window_s: float, camera: Optional[str]):
    """Both runs' windows against the same reference: one run each, or two fleets (common bags)."""
    runs_a, runs_b = find_runs(a), find_runs(b)
    if ("" in runs_a) != ("" in runs_b):
        raise ValueError(f"compare a run with a run, or a fleet directory with a fleet directory "
                         f"({a} and {b} are one of each)")
    common = [name for name in runs_a if name in runs_b]
    if not common:
        raise ValueError(f"{a} and {b} have no bag in common; compare replays of the same bags")
    windows_a, windows_b = [], []
    for name in common:
        # B is scored against A's reference, so both are measured with the same yardstick
        _, segments, records_a = _inputs_of(runs_a[name], spec)
        records_b = quality.read_descriptions(runs_b[name] / "descriptions.jsonl")
        windows_a += quality.align(records_a, segments, window_s, camera, name)
        windows_b += quality.align(records_b, segments, window_s, camera, name)
    return windows_a, windows_b


def _print_quality(overall: Dict, cameras: Dict) -> None:
    rows = [("all cameras", overall)] + list(cameras.items()) if len(cameras) > 1 else [("overall", overall)]
    columns = ["windows_with_reference", "seconds"] + list(SUMMARY_METRICS)
    print("| | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, values in rows:
        print(f"| {name} | " + " | ".join(_fmt(values.get(c)) for c in columns) + " |")


# ----- command lines ---------------------------------------------------------------------------
def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="one run (or fleet) directory to score, or two (A B) to compare")
    _common_arguments(parser)
    parser.add_argument("--no-semantic", action="store_true",
                        help="skip the sentence-embedding similarity (saves loading the model, ~10 s)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="A B: bootstrap samples for the 95%% intervals")
    parser.add_argument("--seed", type=int, default=0, help="A B: bootstrap seed")
    parser.add_argument("--out", default=None, help="A B: also write comparison.json and comparison.md here")


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference", default=None,
                        help="reference: a .jsonl/.vtt/.srt file, BAG:/topic, or a directory of <bag_name>.jsonl "
                             "files (default: the <bag>.reference.jsonl beside each replayed bag)")
    parser.add_argument("--window", type=float, default=10.0, help="evaluation window in whole seconds")
    parser.add_argument("--camera", default=None, help="score only this camera topic")


def run_eval(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.runs]
    semantic = not args.no_semantic
    if len(paths) > 2:
        raise ValueError(f"svlm eval takes one run directory, or two to compare; got {len(paths)}")
    if len(paths) == 2:
        windows_a, windows_b = paired_windows(paths[0], paths[1], args.reference, args.window, args.camera)
        quality.score_windows(windows_a, semantic)
        quality.score_windows(windows_b, semantic)
        result = compare.compare_windows(windows_a, windows_b, args.bootstrap, args.seed,
                                         (str(paths[0]), str(paths[1])))
        text = compare.markdown(result)
        print(text, end="")
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "comparison.json").write_text(json.dumps(result, indent=2))
            (out / "comparison.md").write_text(text)
        return 0
    path = paths[0]
    runs = find_runs(path)
    if "" in runs:
        overall, cameras, _ = _evaluate_run(path, args.reference, args.window, args.camera, semantic)
        _print_quality(overall, cameras)
        written = f"{path / 'quality.json'} and {path / 'quality_windows.jsonl'}"
        if (path / "metrics.json").exists():  # the run's report gains its quality table and captions
            from . import report

            report.render_with_reference(path, load_timed_text(reference_for_run(path, args.reference)))
            written += f", and updated {path / 'report.html'}"
        print(f"wrote {written}")
        return 0
    summary = evaluate_fleet(path, args.reference, args.window, args.camera, semantic)
    print((path / "summary.md").read_text(), end="")
    scored = sum(1 for row in summary["bags"] if row.get("silence_agreement") is not None)
    print(f"wrote {path / 'summary.json'} and {path / 'summary.md'} ({len(summary['bags'])} bags, {scored} scored)")
    return 0


def add_judge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs=2, metavar="RUN_DIR", help="runs A and B (or two fleet directories)")
    _common_arguments(parser)
    from .judge import add_client_arguments

    add_client_arguments(parser)
    parser.add_argument("--out", default=None, help="output directory (default: judge_<A>_vs_<B>)")
    parser.add_argument("--cache", default=None, help="answer cache (default: OUT/judge_cache.jsonl)")


def run_judge(args: argparse.Namespace) -> int:
    from .judge import config_from_args, judge_pairs, markdown

    a, b = (Path(p) for p in args.runs)
    windows_a, windows_b = paired_windows(a, b, args.reference, args.window, args.camera)
    pairs = compare.pair_windows(windows_a, windows_b)
    config = config_from_args(args)
    out = Path(args.out) if args.out else Path(f"judge_{a.resolve().name}_vs_{b.resolve().name}")
    summary = judge_pairs(pairs, config, out, Path(args.cache) if args.cache else None, (str(a), str(b)))
    print(markdown(summary), end="")
    print(f"wrote {out / 'judge.json'}, {out / 'judge.md'} and every answer in {out / 'judge_answers.jsonl'}")
    return 0
