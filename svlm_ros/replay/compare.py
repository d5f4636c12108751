"""Comparing two runs against one reference: metric deltas with paired bootstrap intervals.

Deltas are always B - A (the second run minus the first), so a positive delta means B scored
higher; every metric here is "higher is better". Windows are paired by (bag, camera, window
index): the same stretch of video described by both runs. A paired bootstrap (Koehn 2004, as
in sacrebleu's own significance test) draws windows with replacement `n` times (default 1000,
fixed seed 0 so a comparison is reproducible), recomputes each overall metric of A and of B on
the same draw exactly as `quality.aggregate` defines it (corpus BLEU/chrF from sacrebleu's
per-window sufficient statistics, means for ROUGE-L and similarity, pooled seconds for silence
agreement), and takes the 2.5th and 97.5th percentiles of B - A. Verdict: "B better" when the
whole interval is above 0, "A better" when it is below 0, "no clear difference" when it
contains 0.

The grounded figures (`grounded.py`, against the scene's truth) are compared the same way over
seconds instead of windows: seconds are paired by (bag, camera, second), a draw takes seconds
with replacement, and each figure of the draw is its ratio of summed counts, as
`grounded.aggregate` defines it. Their draws are their own (same `n` and seed), so adding them
leaves the windows' intervals as they were.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import grounded
from .quality import EvalWindow

log = logging.getLogger(__name__)

METRICS = ("bleu", "chrf", "rouge_l", "semantic_similarity", "silence_agreement")


def pair_windows(a: Sequence[EvalWindow], b: Sequence[EvalWindow]) -> List[Tuple[EvalWindow, EvalWindow]]:
    """Windows of A and B covering the same video, in A's order."""
    key = lambda w: (w.bag, w.camera, w.index)  # noqa: E731
    by_key = {key(w): w for w in b}
    pairs = [(w, by_key[key(w)]) for w in a if key(w) in by_key]
    unpaired = len(a) + len(b) - 2 * len(pairs)
    if unpaired:
        log.warning("%d windows are in only one of the runs (different cameras or lengths); they are left out",
                    unpaired)
    mismatched = sum(x.reference != y.reference for x, y in pairs)
    if mismatched:
        log.warning("%d paired windows have different reference text (the runs start at different times?)",
                    mismatched)
    if not pairs:
        raise ValueError("the two runs share no window (no common bag, camera and time); compare runs of the same bags")
    return pairs


class _Scorer:
    """One run's per-window material, scored on any multiset of window indices."""

    def __init__(self, windows: Sequence[EvalWindow]):
        from sacrebleu.metrics import BLEU, CHRF

        self.bleu, self.chrf = BLEU(), CHRF()
        self.scored = np.array([bool(w.reference) for w in windows])
        hyps = [w.hypothesis for w in windows]
        refs = [[w.reference for w in windows]]
        # sacrebleu's sufficient statistics: summing a draw's rows and scoring the sum is exactly
        # its corpus score over that draw (sacrebleu.significance does the same).
        self.bleu_stats = np.array(self.bleu._extract_corpus_statistics(hyps, refs), dtype=float)
        self.chrf_stats = np.array(self.chrf._extract_corpus_statistics(hyps, refs), dtype=float)
        self.values = {name: np.array([np.nan if w.metrics.get(name) is None else w.metrics[name] for w in windows],
                                      dtype=float) for name in ("rouge_l", "semantic_similarity")}
        self.agree = np.array([w.agree for w in windows], dtype=float)
        self.seconds = np.array([w.seconds for w in windows], dtype=float)

    def score(self, name: str, idx: np.ndarray) -> float:
        if name in ("bleu", "chrf"):
            rows = idx[self.scored[idx]]
            if not len(rows):
                return np.nan
            metric, stats = (self.bleu, self.bleu_stats) if name == "bleu" else (self.chrf, self.chrf_stats)
            return float(metric._compute_score_from_stats(stats[rows].sum(0).astype(int).tolist()).score)
        if name == "silence_agreement":
            seconds = self.seconds[idx].sum()
            return float(self.agree[idx].sum() / seconds) if seconds else np.nan
        values = self.values[name][idx]
        values = values[~np.isnan(values)]
        return float(values.mean()) if len(values) else np.nan


def compare_windows(a: Sequence[EvalWindow], b: Sequence[EvalWindow], samples: int = 1000, seed: int = 0,
                    names: Tuple[str, str] = ("A", "B")) -> Dict:
    """Deltas B - A with paired bootstrap 95% intervals and a verdict per metric."""
    if samples < 1:
        raise ValueError(f"--bootstrap must be >= 1, got {samples}")
    pairs = pair_windows(a, b)
    scorer_a, scorer_b = _Scorer([p[0] for p in pairs]), _Scorer([p[1] for p in pairs])
    everything = np.arange(len(pairs))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(pairs), size=(samples, len(pairs)))
    result: Dict = {"a": names[0], "b": names[1], "delta": "B - A", "windows": len(pairs),
                    "bootstrap_samples": samples, "seed": seed, "metrics": {}}
    for name in METRICS:
        value_a, value_b = scorer_a.score(name, everything), scorer_b.score(name, everything)
        if np.isnan(value_a) or np.isnan(value_b):
            continue  # no window with reference text, or similarity not computed
        deltas = np.array([scorer_b.score(name, d) - scorer_a.score(name, d) for d in draws])
        result["metrics"][name] = _difference(value_a, value_b, deltas)
    return result


def pair_seconds(a: Sequence[grounded.Second], b: Sequence[grounded.Second]
                 ) -> List[Tuple[grounded.Second, grounded.Second]]:
    """Scored seconds of A and B of the same camera-second, in A's order."""
    key = lambda s: (s.bag, s.camera, s.second)  # noqa: E731
    by_key = {key(s): s for s in b}
    pairs = [(s, by_key[key(s)]) for s in a if key(s) in by_key]
    unpaired = len(a) + len(b) - 2 * len(pairs)
    if unpaired:
        log.warning("%d scored seconds are in only one of the runs; the grounded comparison leaves them out", unpaired)
    return pairs


def compare_seconds(a: Sequence[grounded.Second], b: Sequence[grounded.Second], samples: int = 1000,
                    seed: int = 0) -> Dict:
    """Grounded deltas B - A with paired bootstrap 95% intervals over seconds (the module docstring)."""
    if samples < 1:
        raise ValueError(f"--bootstrap must be >= 1, got {samples}")
    pairs = pair_seconds(a, b)
    result: Dict = {"delta": "B - A", "seconds": len(pairs), "bootstrap_samples": samples, "seed": seed,
                    "definitions": "svlm_ros/replay/grounded.py (module docstring)", "metrics": {}}
    if not pairs:
        log.warning("the two runs share no scored second; no grounded comparison")
        return result
    counts_a = grounded.count_matrix([p[0] for p in pairs])
    counts_b = grounded.count_matrix([p[1] for p in pairs])
    draws = np.random.default_rng(seed).integers(0, len(pairs), size=(samples, len(pairs)))
    whole_a, whole_b = grounded.ratios(counts_a.sum(0)), grounded.ratios(counts_b.sum(0))
    drawn_a = grounded.ratios(np.stack([counts_a[d].sum(0) for d in draws]))
    drawn_b = grounded.ratios(np.stack([counts_b[d].sum(0) for d in draws]))
    for name in grounded.METRICS:
        value_a, value_b = float(whole_a[name]), float(whole_b[name])
        if np.isnan(value_a) or np.isnan(value_b):
            continue  # nothing to count (no event second, no claim)
        result["metrics"][name] = _difference(value_a, value_b, drawn_b[name] - drawn_a[name])
    return result


def _difference(value_a: float, value_b: float, deltas: np.ndarray) -> Dict:
    """A metric's B - A with the 95% interval of its bootstrap deltas (NaN draws left out) and verdict."""
    deltas = deltas[~np.isnan(deltas)]
    low, high = (float(np.percentile(deltas, 2.5)), float(np.percentile(deltas, 97.5))) if len(deltas) \
        else (np.nan, np.nan)
    return {"a": value_a, "b": value_b, "delta": value_b - value_a, "ci95": [low, high], "verdict": verdict(low, high)}


def verdict(low: float, high: float) -> str:
    """From the 95% interval of B - A; a NaN interval (nothing to resample) is no evidence."""
    if low > 0:
        return "B better"
    if high < 0:
        return "A better"
    return "no clear difference"


def markdown(result: Dict) -> str:
    lines = [f"A = {result['a']}, B = {result['b']}; {result['windows']} paired windows, "
             f"{result['bootstrap_samples']} bootstrap samples (seed {result['seed']}); delta = B - A", "",
             "| metric | A | B | delta | 95% CI | verdict |", "|---|---|---|---|---|---|"]
    lines += _rows(result["metrics"])
    if result.get("grounded"):
        g = result["grounded"]
        lines += ["", f"Grounded, against the scene's truth: {g['seconds']} paired seconds, {g['bootstrap_samples']} "
                  f"bootstrap samples over seconds (seed {g['seed']}); delta = B - A", "",
                  "| metric | A | B | delta | 95% CI | verdict |", "|---|---|---|---|---|---|"]
        lines += _rows(g["metrics"])
    return "\n".join(lines) + "\n"


def _rows(metrics: Dict) -> List[str]:
    return [f"| {name} | {_fmt(m['a'])} | {_fmt(m['b'])} | {_fmt(m['delta'], signed=True)} | "
            f"[{_fmt(m['ci95'][0], signed=True)}, {_fmt(m['ci95'][1], signed=True)}] | {m['verdict']} |"
            for name, m in metrics.items()]


def _fmt(value: Optional[float], signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"
