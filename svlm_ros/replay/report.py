"""A replay's figures and pictures: metrics.json, plots, a contact sheet, report.md and report.html.

Everything is computed from the files the replay wrote (descriptions.jsonl, samples.jsonl,
thumbnails/), so a report can be rebuilt for an interrupted run, and memory does not grow with
the bag. report.html is one file with every picture inline: it opens offline in any browser.
After `svlm eval`, the report shows quality.json's figures: those against the reference text
and, for a bag with a truth (synth-bag's), the grounded ones (`grounded.py`).
"""
from __future__ import annotations

import base64
import html
import io
import json
import re
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import cv2
import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..sources.timed_text import EPS, is_absolute, second_of, words_in_time_order  # noqa: E402
from .grounded import METRICS as GROUNDED_METRICS  # noqa: E402
from .outputs import read_jsonl  # noqa: E402

THUMB_WIDTH = 240
PERCENTILES = (50, 95, 99)


# ----- written while replaying -------------------------------------------------------------------
def append_sample(handle, record, memory: Dict[str, int]) -> None:
    """One line of samples.jsonl: cache and memory after a described window."""
    handle.write(json.dumps({"camera": record.camera, "stream_start": record.stream_start,
                             "cache_tokens": record.cache_tokens, **memory}) + "\n")
    handle.flush()


def save_thumbnail(out: Path, record, frame: np.ndarray) -> None:
    height = max(1, round(frame.shape[0] * THUMB_WIDTH / frame.shape[1]))
    small = cv2.resize(frame, (THUMB_WIDTH, height), interpolation=cv2.INTER_AREA)
    name = f"{_safe(record.camera)}_{record.index:06d}.jpg"
    cv2.imwrite(str(out / "thumbnails" / name), cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
    with (out / "thumbnails" / "index.jsonl").open("a") as index:
        index.write(json.dumps({"camera": record.camera, "file": name, "stream_start": record.stream_start,
                                "stream_end": record.stream_end, "text": record.text,
                                "silent": record.silent}) + "\n")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") or "camera"


def stream_origins(out: Path) -> Dict[str, float]:
    """Each camera's stream time zero in sensor time, from the run's descriptions."""
    origins: Dict[str, float] = {}
    for row in read_jsonl(out / "descriptions.jsonl"):
        origins.setdefault(row["camera"], row["start"] - row["stream_start"])
    return origins


def reference_by_second(segments, origins: Dict[str, float]) -> Dict:
    """(camera, stream second) -> reference text, for captions: each word in the second it ends
    in, by the rule the metrics use (sources/timed_text.py), so a caption shows the words that
    were scored against that second's description.

    A reference in sensor time (absolute stamps) is moved to each camera's stream seconds."""
    absolute = is_absolute(segments)
    words: Dict = {}
    for end, word, camera in words_in_time_order(segments):
        cameras = [camera] if not absolute else ([camera] if camera else list(origins))
        for name in cameras:
            end_s = end - (origins.get(name, 0.0) if absolute else 0.0)
            if end_s < -EPS:
                continue  # said before the camera's stream began
            words.setdefault((name, second_of(end_s)), []).append(word)
    return {key: " ".join(text) for key, text in words.items()}


def lookup(reference: Dict, camera: str, stream_start: float) -> Optional[str]:
    """The reference text of a camera's second; a reference without cameras applies to all."""
    second = int(stream_start)
    return reference.get((camera, second)) or reference.get((None, second))


# ----- metrics -----------------------------------------------------------------------------------
def _distribution(values: Sequence[float]) -> Dict[str, Optional[float]]:
    if not len(values):
        return {f"p{p}": None for p in PERCENTILES} | {"max": None, "mean": None}
    array = np.asarray(values, dtype=float)
    return {f"p{p}": float(np.percentile(array, p)) for p in PERCENTILES} | {
        "max": float(array.max()), "mean": float(array.mean())}


def compute_metrics(rows: List[Dict], samples: List[Dict], stats: Dict[str, Dict], wall_s: float,
                    peak_rss: int, peak_accelerator: int, interrupted: bool, window_s: float) -> Dict:
    cameras = {}
    for camera in sorted({r["camera"] for r in rows} | set(stats)):
        mine = [r for r in rows if r["camera"] == camera]
        described = [r for r in mine if not r["skipped"]]
        compute = [r["vision_s"] + r["prefill_s"] + r["decode_s"] for r in described]
        per_token = [r["decode_s"] / r["generated_tokens"] for r in described if r["generated_tokens"]]
        caches = [r["cache_tokens"] for r in described]
        counters = stats.get(camera, {})
        cameras[camera] = {
            "windows": len(mine), "described": len(described), "skipped": len(mine) - len(described),
            "silent": sum(r["silent"] for r in described),
            "latency_s": _distribution([r["latency_s"] for r in described]),
            "compute_s": _distribution(compute),
            "vision_s": _distribution([r["vision_s"] for r in described]),
            "prefill_s": _distribution([r["prefill_s"] for r in described]),
            "decode_s": _distribution([r["decode_s"] for r in described]),
            "per_token_s": _distribution(per_token),
            "real_time_factor": (window_s / float(np.median(compute))) if compute else None,
            "cache_tokens": {"max": max(caches, default=0), "last": caches[-1] if caches else 0},
            "frames": counters.get("frames", 0),
            "bad_frames": counters.get("bad_frames", 0),
            "bad_frames_by_cause": counters.get("bad_frames_by_cause", {}),
            "late_frames": counters.get("late_frames", 0),
            "stream_restarts": counters.get("restarts", 0),
            "resolution_changes": counters.get("resolution_changes", 0),
            "empty_windows": counters.get("empty_windows", 0),
            "failed_windows": counters.get("failed_windows", 0),
        }
    streamed = sum(r["end"] - r["start"] for r in rows if not r["skipped"])
    return {
        "interrupted": interrupted,
        "wall_s": wall_s,
        "stream_seconds_described": streamed,
        "replay_speed": streamed / wall_s if wall_s > 0 else None,  # seconds of video per wall second
        "peak_rss_bytes": peak_rss,
        "peak_accelerator_bytes": peak_accelerator,
        "rss_first_last_bytes": [samples[0]["rss_bytes"], samples[-1]["rss_bytes"]] if samples else None,
        "cameras": cameras,
    }


# ----- plots -------------------------------------------------------------------------------------
def _figure_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # model text in any script; a missing glyph draws as a box
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def plot_latency(rows: List[Dict]) -> bytes:
    cameras = sorted({r["camera"] for r in rows})
    figure, axes = plt.subplots(len(cameras) or 1, 1, figsize=(10, 2.8 * max(1, len(cameras))), squeeze=False,
                                layout="constrained")
    for axis, camera in zip(axes[:, 0], cameras):
        mine = [r for r in rows if r["camera"] == camera and not r["skipped"]]
        t = [r["stream_start"] for r in mine]
        parts = [[r[k] for r in mine] for k in ("vision_s", "prefill_s", "decode_s")]
        axis.stackplot(t, *parts, labels=["vision", "prefill", "decode"], alpha=0.8)
        axis.plot(t, [r["latency_s"] for r in mine], color="black", linewidth=0.7, label="end to end")
        skipped = [r["stream_start"] for r in rows if r["camera"] == camera and r["skipped"]]
        if skipped:
            axis.plot(skipped, [0] * len(skipped), "rx", label="skipped")
        axis.set_title(f"{camera}: latency per window")
        axis.set_xlabel("stream time (s)")
        axis.set_ylabel("seconds")
        axis.legend(loc="upper right", fontsize=8)
    return _figure_bytes(figure)


def plot_memory(samples: List[Dict]) -> bytes:
    figure, (cache_axis, memory_axis) = plt.subplots(1, 2, figsize=(10, 3), layout="constrained")
    for camera in sorted({s["camera"] for s in samples}):
        mine = [s for s in samples if s["camera"] == camera]
        cache_axis.plot([s["stream_start"] for s in mine], [s["cache_tokens"] for s in mine], label=camera)
    cache_axis.set_title("KV cache size")
    cache_axis.set_xlabel("stream time (s)")
    cache_axis.set_ylabel("tokens")
    cache_axis.legend(fontsize=8)
    times = [s["stream_start"] for s in samples]
    memory_axis.plot(times, [s["rss_bytes"] / 2**20 for s in samples], label="process RSS")
    if any(s["accelerator_bytes"] for s in samples):
        memory_axis.plot(times, [s["accelerator_bytes"] / 2**20 for s in samples], label="accelerator")
    memory_axis.set_title("memory")
    memory_axis.set_xlabel("stream time (s)")
    memory_axis.set_ylabel("MiB")
    peak = max([s["rss_bytes"] for s in samples] + [s["accelerator_bytes"] for s in samples] + [1]) / 2**20
    memory_axis.set_ylim(0, peak * 1.15)  # from zero, so a flat line reads as flat
    memory_axis.legend(fontsize=8)
    return _figure_bytes(figure)


def plot_contact_sheet(out: Path, thumbs: List[Dict], reference: Dict, columns: int = 4,
                       limit: int = 24) -> Optional[bytes]:
    """Thumbnails in a grid, each with its description (and the reference text), as one PNG."""
    if not thumbs:
        return None
    thumbs = thumbs[:: max(1, len(thumbs) // limit)][:limit]
    rows = (len(thumbs) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, thumb in zip(axes.ravel(), thumbs):
        image = cv2.imread(str(out / "thumbnails" / thumb["file"]))
        if image is not None:
            axis.imshow(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        caption = f"{thumb['stream_start']:.0f} s: " + ("(silent)" if thumb["silent"] else thumb["text"])
        ref = lookup(reference, thumb["camera"], thumb["stream_start"])
        if ref:
            caption += f"\nref: {ref}"
        axis.set_title(_wrap(caption, 38), fontsize=7, loc="left")
    return _figure_bytes(figure)


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(" "), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "\n".join(lines[:5])


# ----- documents ---------------------------------------------------------------------------------
def write_report(out: Path, stats: Dict[str, Dict], wall_s: float, memory, interrupted: bool,
                 window_s: float, reference: Optional[Dict] = None) -> Dict:
    """metrics.json, the plots, report.md and report.html, from the run's files."""
    rows = read_jsonl(out / "descriptions.jsonl")
    samples = read_jsonl(out / "samples.jsonl")
    metrics = compute_metrics(rows, samples, stats, wall_s, memory.peak_rss, memory.peak_accelerator,
                              interrupted, window_s)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    render(out, metrics, reference or {})
    return metrics


def render(out: Path, metrics: Dict, reference: Dict) -> None:
    rows = read_jsonl(out / "descriptions.jsonl")
    samples = read_jsonl(out / "samples.jsonl")
    thumbs = read_jsonl(out / "thumbnails" / "index.jsonl")
    quality = json.loads((out / "quality.json").read_text()) if (out / "quality.json").exists() else None
    pictures = {"latency.png": plot_latency(rows), "memory.png": plot_memory(samples)}
    sheet = plot_contact_sheet(out, thumbs, reference)
    if sheet:
        pictures["contact_sheet.png"] = sheet
    for name, data in pictures.items():
        (out / name).write_bytes(data)
    run = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
    (out / "report.md").write_text(_markdown(run, metrics, quality, list(pictures)))
    (out / "report.html").write_text(_html(out, run, metrics, quality, pictures, thumbs, reference))


def render_with_reference(out: Path, segments) -> None:
    """Rebuild a finished run's report with its quality table and reference captions."""
    metrics = json.loads((out / "metrics.json").read_text())
    render(out, metrics, reference_by_second(segments, stream_origins(out)))


def _fmt(value, digits=3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _camera_table(metrics: Dict) -> List[List[str]]:
    header = ["camera", "windows", "described", "skipped", "silent", "latency p50/p95/p99/max (s)",
              "per token p50/p95 (s)", "real-time factor", "cache tokens max", "bad frames", "late frames",
              "restarts", "resolution changes"]
    table = [header]
    for camera, m in metrics["cameras"].items():
        lat, tok = m["latency_s"], m["per_token_s"]
        causes = ", ".join(f"{k}: {v}" for k, v in m["bad_frames_by_cause"].items())
        table.append([camera, str(m["windows"]), str(m["described"]), str(m["skipped"]), str(m["silent"]),
                      "/".join(_fmt(lat[k]) for k in ("p50", "p95", "p99", "max")),
                      "/".join(_fmt(tok[k], 4) for k in ("p50", "p95")), _fmt(m["real_time_factor"], 2),
                      str(m["cache_tokens"]["max"]), f"{m['bad_frames']}" + (f" ({causes})" if causes else ""),
                      str(m["late_frames"]), str(m["stream_restarts"]), str(m["resolution_changes"])])
    return table


def _quality_rows(quality: Optional[Dict]) -> List[List[str]]:
    if not quality:
        return []
    overall = quality.get("overall", quality)
    return [["metric", "value"]] + [[k, _fmt(v) if isinstance(v, float) else str(v)]
                                    for k, v in overall.items() if not isinstance(v, (dict, list))]


def _grounded_rows(quality: Optional[Dict]) -> List[List[str]]:
    """The grounded figures per camera (and overall when there are several), from quality.json."""
    scored = (quality or {}).get("grounded")
    if not scored:
        return []
    cameras = scored.get("cameras", {})
    rows = [("all cameras", scored["overall"])] + list(cameras.items()) if len(cameras) > 1 \
        else [("overall", scored["overall"])]
    metrics = list(GROUNDED_METRICS)
    table = [["grounded", "seconds", "event seconds"] + metrics]
    for name, values in rows:
        counts = values.get("counts", {})
        table.append([name, str(counts.get("seconds", "-")), str(counts.get("event_seconds", "-"))]
                     + [_fmt(values.get(m)) for m in metrics])
    return table


def _markdown(run: Dict, metrics: Dict, quality: Optional[Dict], pictures: List[str]) -> str:
    lines = [f"# Replay of {run.get('bag', '?')}", ""]
    if run.get("random_weights"):
        lines += ["> The model has random weights: its words are meaningless; the figures show the machinery.", ""]
    if metrics["interrupted"]:
        lines += ["> Interrupted: the figures cover the part replayed before Ctrl-C.", ""]
    lines += [f"Model `{run.get('model', '?')}`, seed {run.get('seed')}, "
              f"{'realtime at rate ' + str(run.get('rate')) if run.get('realtime') else 'every window described'}. "
              f"{_fmt(metrics['stream_seconds_described'], 1)} s of video in {_fmt(metrics['wall_s'], 1)} s "
              f"(replay speed {_fmt(metrics['replay_speed'], 2)}x); peak RSS "
              f"{metrics['peak_rss_bytes'] / 2**20:.0f} MiB, accelerator "
              f"{metrics['peak_accelerator_bytes'] / 2**20:.0f} MiB.", ""]
    for table in (_camera_table(metrics), _quality_rows(quality), _grounded_rows(quality)):
        if table and table[0][0] == "grounded":
            lines += [f"Grounded score against the scene's truth `{quality['grounded'].get('truth', '?')}`: does "
                      "the description name the object that changed (colour, shape) and how (action, side), in "
                      "its second (svlm_ros/replay/grounded.py).", ""]
        if table:
            lines += ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
            lines += ["| " + " | ".join(row) + " |" for row in table[1:]] + [""]
    lines += [f"![{name}]({name})" for name in pictures]
    return "\n".join(lines) + "\n"


def _html(out: Path, run: Dict, metrics: Dict, quality: Optional[Dict], pictures: Dict[str, bytes],
          thumbs: List[Dict], reference: Dict) -> str:
    def table(rows: List[List[str]]) -> str:
        if not rows:
            return ""
        head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:])
        return f"<table><tr>{head}</tr>{body}</table>"

    def inline(data: bytes, kind: str) -> str:
        return f"data:image/{kind};base64," + base64.b64encode(data).decode()

    summary = _markdown(run, metrics, None, [])
    notes = "".join(f"<p class='note'>{html.escape(line[2:])}</p>" for line in summary.splitlines()
                    if line.startswith("> "))
    cards = []
    for thumb in thumbs:
        path = out / "thumbnails" / thumb["file"]
        if not path.exists():
            continue
        ref = lookup(reference, thumb["camera"], thumb["stream_start"])
        text = "(silent)" if thumb["silent"] else thumb["text"]
        cards.append(f"<figure><img src='{inline(path.read_bytes(), 'jpeg')}'><figcaption><b>"
                     f"{html.escape(thumb['camera'])} {thumb['stream_start']:.0f} s</b> {html.escape(text)}"
                     + (f"<br><i>reference: {html.escape(ref)}</i>" if ref else "") + "</figcaption></figure>")
    plots = "".join(f"<img class='plot' src='{inline(data, 'png')}' alt='{name}'>"
                    for name, data in pictures.items() if name != "contact_sheet.png")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}.note{background:#fff3cd;"
             "padding:8px}.sheet{display:flex;flex-wrap:wrap;gap:10px}figure{width:250px;margin:0;font-size:12px}"
             "figure img{width:240px}.plot{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>svlm replay report</title>"
            f"<style>{style}</style></head><body><h1>Replay of {html.escape(str(run.get('bag', '?')))}</h1>"
            f"{notes}<p>{html.escape(summary.splitlines()[2] if len(summary.splitlines()) > 2 else '')}</p>"
            f"<h2>Timeline</h2><div class='sheet'>{''.join(cards)}</div>"
            f"<h2>Latency, cache and memory</h2>{plots}<h2>Per camera</h2>{table(_camera_table(metrics))}"
            + (f"<h2>Quality against the reference</h2>{table(_quality_rows(quality))}" if quality else "")
            + (f"<h2>Grounded score against the scene's truth</h2>"
               f"<p>{html.escape(quality['grounded'].get('truth', ''))}: colour, shape, action and side of the "
               f"object that changed, per second (svlm_ros/replay/grounded.py)</p>{table(_grounded_rows(quality))}"
               if quality and quality.get("grounded") else "")
            + "</body></html>")


# ----- several bags ------------------------------------------------------------------------------
def summary_row(metrics: Dict) -> Dict:
    cameras = metrics["cameras"].values()
    latencies = [c["latency_s"]["p50"] for c in cameras if c["latency_s"]["p50"] is not None]
    return {"windows": sum(c["windows"] for c in cameras), "described": sum(c["described"] for c in cameras),
            "skipped": sum(c["skipped"] for c in cameras), "bad_frames": sum(c["bad_frames"] for c in cameras),
            "latency_p50_s": float(np.median(latencies)) if latencies else None,
            "replay_speed": metrics["replay_speed"], "peak_rss_bytes": metrics["peak_rss_bytes"],
            "interrupted": metrics["interrupted"]}


def one_line(metrics: Dict) -> str:
    row = summary_row(metrics)
    return (f"{row['described']} windows described, {row['skipped']} skipped, {row['bad_frames']} bad frames, "
            f"latency p50 {_fmt(row['latency_p50_s'])} s, {_fmt(row['replay_speed'], 2)}x real time")


def write_summary(out: Path, rows: List[Dict], shard: Optional[str]) -> None:
    name = "summary" if not shard else "summary-shard-{}-of-{}".format(*shard.split("/"))
    (out / f"{name}.json").write_text(json.dumps({"shard": shard, "bags": rows}, indent=2))
    header = ["bag", "windows", "described", "skipped", "bad_frames", "latency_p50_s", "replay_speed"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(row.get(k)) for k in header) + " |" for row in rows]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
