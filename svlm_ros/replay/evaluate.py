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

The grounded score (`grounded.py`: does the run name the object that changed, and how) needs the
scene's truth, `--truth`:
- a file: the same for every run; a directory: `<bag_name>.truth.jsonl` in it;
- nothing: the `<bag path>.truth.jsonl` synth-bag wrote beside the bag, else one beside the
  reference files of a `--reference` directory; a run with neither has no grounded score.
It goes into quality.json (`grounded`), grounded_seconds.jsonl (one line per scored second),
the fleet's summary and the A/B comparison (paired bootstrap over seconds).
"""
from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..sources.bags import REFERENCE_SIDECAR, REFERENCE_VTT_SIDECAR, TRUTH_SIDECAR, run_name, sidecar
from ..sources.timed_text import is_absolute, load_timed_text
from . import compare, grounded, quality

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


def truth_for_run(run_dir: Path, truth: Optional[str], reference: Optional[str] = None) -> Optional[Path]:
    """The truth file of one run (see the module docstring), None when it has none; raises when
    `--truth` names one that is not there."""
    name = bag_name_of(run_dir)
    if truth is not None:
        path = Path(truth) / f"{name}{TRUTH_SIDECAR}" if Path(truth).is_dir() else Path(truth)
        if not path.is_file():
            raise FileNotFoundError(f"--truth {truth}: {path} does not exist; give the {TRUTH_SIDECAR} file that "
                                    "svlm synth-bag wrote beside the bag, or a directory of <bag_name>"
                                    f"{TRUTH_SIDECAR} files")
        return path
    bag = bag_path_of(run_dir)
    candidates = [sidecar(bag, TRUTH_SIDECAR)] if bag is not None else []
    if reference is not None and Path(reference).is_dir():
        candidates.append(Path(reference) / f"{name}{TRUTH_SIDECAR}")
    return next((c for c in candidates if c.is_file()), None)


def _grounded_of(run_dir: Path, records: List[Dict], truth: Optional[str], reference: Optional[str],
                 camera: Optional[str], bag: str):
    """(truth file, overall, per camera, seconds) of one run, or None without a truth."""
    path = truth_for_run(run_dir, truth, reference)
    if path is None:
        return None
    overall, cameras, seconds = grounded.evaluate(records, grounded.load_truth(path), bag, camera)
    return path, overall, cameras, seconds


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
                 camera: Optional[str] = None, semantic: bool = True, truth: Optional[str] = None) -> Dict:
    """Score one run; write quality.json and quality_windows.jsonl (and, with a truth,
    grounded_seconds.jsonl) into it; return the overall."""
    overall, _, _, _ = _evaluate_run(Path(run_dir), reference_spec, window_s, camera, semantic, truth=truth)
    return overall


def _evaluate_run(run_dir: Path, spec: Optional[str], window_s: float, camera: Optional[str],
                  semantic: bool, bag: str = "", truth: Optional[str] = None
                  ) -> Tuple[Dict, Dict, List[quality.EvalWindow], Optional[Tuple]]:
    """(overall, per camera, windows, grounded) of one run, its files written; grounded is
    `_grounded_of`'s (None without a truth)."""
    reference, segments, records = _inputs_of(run_dir, spec)
    bag = bag or bag_name_of(run_dir)
    overall, cameras, windows = quality.evaluate(records, segments, window_s, camera, semantic, bag)
    document = {"reference": reference, "time_base": "absolute" if is_absolute(segments) else "stream",
                "window_s": window_s, "semantic_model": quality.SEMANTIC_MODEL if semantic else None,
                "definitions": "svlm_ros/replay/quality.py (module docstring)",
                "overall": overall, "cameras": cameras}
    scored = _grounded_of(run_dir, records, truth, spec, camera, bag)
    if scored is not None:
        path, grounded_overall, grounded_cameras, seconds = scored
        document["grounded"] = {"truth": str(path), "definitions": "svlm_ros/replay/grounded.py (module docstring)",
                                "overall": grounded_overall, "cameras": grounded_cameras}
        with (run_dir / "grounded_seconds.jsonl").open("w") as handle:
            for second in seconds:
                handle.write(json.dumps(second.as_dict(), ensure_ascii=False) + "\n")
    else:
        (run_dir / "grounded_seconds.jsonl").unlink(missing_ok=True)  # a stale one would contradict quality.json
    (run_dir / "quality.json").write_text(json.dumps(document, indent=2))
    with (run_dir / "quality_windows.jsonl").open("w") as handle:
        for window in windows:
            handle.write(json.dumps(window.as_dict(), ensure_ascii=False) + "\n")
    return overall, cameras, windows, scored


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
                   semantic: bool = True, truth: Optional[str] = None) -> Dict:
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
    pooled: List[quality.EvalWindow] = []
    pooled_seconds: List[grounded.Second] = []
    for name, run_dir in runs.items():
        row = by_name.setdefault(name, {"bag": name})
        if not quality.read_descriptions(run_dir / "descriptions.jsonl"):
            log.warning("%s: no window described (interrupted before the first?); not scored", name)
            continue
        try:
            overall, _, windows, scored = _evaluate_run(run_dir, spec, window_s, camera, semantic, bag=name,
                                                        truth=truth)
        except FileNotFoundError as error:
            if spec is not None or truth is not None:
                raise
            log.warning("%s: not scored (%s)", name, error)
            continue
        pooled += windows
        row.update({metric: overall[metric] for metric in SUMMARY_METRICS})
        row["reference_windows"] = overall["windows_with_reference"]
        if scored is not None:
            pooled_seconds += scored[3]
            row["grounded"] = {metric: scored[1][metric] for metric in grounded.METRICS}
            row["grounded"]["event_seconds"] = scored[1]["counts"]["event_seconds"]
    for name in by_name:
        if name not in runs:
            log.warning("bag %s is in the summaries but %s has no run directory for it", name, directory / name)
    summary = {"shard": None, "merged_from": merged_from, "reference": spec, "window_s": window_s,
               "bags": list(by_name.values()), "quality": quality.aggregate(pooled) if pooled else None}
    if pooled_seconds:
        summary["grounded"] = {**grounded.aggregate(pooled_seconds), "by_action": grounded.by_action(pooled_seconds)}
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
    return note + "\n".join(lines) + "\n" + _grounded_summary_markdown(summary)


def _grounded_summary_markdown(summary: Dict) -> str:
    """The grounded figures of the bags that have a truth, and of all of them pooled."""
    rows = [(row["bag"], row["grounded"]) for row in summary["bags"] if row.get("grounded")]
    if not rows:
        return ""
    pooled = summary["grounded"]
    rows.append(("all bags (pooled)", {**pooled, "event_seconds": pooled["counts"]["event_seconds"]}))
    columns = ["event_seconds"] + list(grounded.METRICS)
    lines = ["", "Grounded, against each bag's truth (svlm_ros/replay/grounded.py):", ""]
    lines += _table("bag", columns, rows)
    actions = [(action, {**values, "event_seconds": values["counts"]["event_seconds"]})
               for action, values in (pooled.get("by_action") or {}).items()]
    if actions:
        lines += ["", "By the truth's action (all bags pooled; the event seconds of each):", ""]
        lines += _table("action", ["event_seconds", "spoken", "color_accuracy", "shape_accuracy", "action_accuracy",
                                   "side_accuracy", "event_recall"], actions)
    return "\n".join(lines) + "\n"


def _table(first: str, columns: List[str], rows) -> List[str]:
    """A markdown table: `first` names each row, then its values of `columns`."""
    lines = [f"| {first} | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    return lines + [f"| {name} | " + " | ".join(_fmt(values.get(c)) for c in columns) + " |" for name, values in rows]


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


def paired_seconds(a: Path, b: Path, truth: Optional[str], spec: Optional[str], camera: Optional[str]
                   ) -> Tuple[List[grounded.Second], List[grounded.Second]]:
    """Both runs' scored seconds against A's truth (the common bags that have one); ([], []) when none has."""
    runs_a, runs_b = find_runs(a), find_runs(b)
    seconds_a: List[grounded.Second] = []
    seconds_b: List[grounded.Second] = []
    for name in (n for n in runs_a if n in runs_b):
        path = truth_for_run(runs_a[name], truth, spec)
        if path is None:
            continue
        events = grounded.load_truth(path)
        bag = name or bag_name_of(runs_a[name])
        for run_dir, into in ((runs_a[name], seconds_a), (runs_b[name], seconds_b)):
            into += grounded.score_run(quality.read_descriptions(run_dir / "descriptions.jsonl"), events, bag, camera)
    return seconds_a, seconds_b


def _print_grounded(overall: Dict, cameras: Dict) -> None:
    rows = [("all cameras", overall)] + list(cameras.items()) if len(cameras) > 1 else [("overall", overall)]
    columns = ["event_seconds"] + list(grounded.METRICS)
    print("| grounded | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, values in rows:
        cells = {**values, "event_seconds": values["counts"]["event_seconds"]}
        print(f"| {name} | " + " | ".join(_fmt(cells.get(c)) for c in columns) + " |")


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
    parser.add_argument("--truth", default=None,
                        help="the scene's truth for the grounded score: a .truth.jsonl file or a directory of "
                             "<bag_name>.truth.jsonl files (default: the <bag>.truth.jsonl synth-bag wrote beside "
                             "each replayed bag; none: no grounded score)")


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
        seconds_a, seconds_b = paired_seconds(paths[0], paths[1], args.truth, args.reference, args.camera)
        if seconds_a:
            result["grounded"] = compare.compare_seconds(seconds_a, seconds_b, args.bootstrap, args.seed)
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
        overall, cameras, _, scored = _evaluate_run(path, args.reference, args.window, args.camera, semantic,
                                                    truth=args.truth)
        _print_quality(overall, cameras)
        written = f"{path / 'quality.json'} and {path / 'quality_windows.jsonl'}"
        if scored is not None:
            print(f"\nagainst the truth {scored[0]}:")
            _print_grounded(scored[1], scored[2])
            written = f"{path / 'quality.json'}, {path / 'quality_windows.jsonl'} and {path / 'grounded_seconds.jsonl'}"
        if (path / "metrics.json").exists():  # the run's report gains its quality table and captions
            from . import report

            report.render_with_reference(path, load_timed_text(reference_for_run(path, args.reference)))
            written += f", and updated {path / 'report.html'}"
        print(f"wrote {written}")
        return 0
    summary = evaluate_fleet(path, args.reference, args.window, args.camera, semantic, truth=args.truth)
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
