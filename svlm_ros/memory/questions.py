"""What a question about the past is given from memory: retrieved entries and summaries as timed lines.

The question's time words ("an hour ago", "between 10:00 and 10:15") become a time range
(timewords.py); the rest of the question is searched by keyword and meaning within that range;
summaries overlapping the range are added. The best sources that fit `ask_context_tokens` become
lines in time order, `[10:03:12-10:03:20 /front at (3.2, 1.0)] a red cart passes`, which the
engine places in the question turn (PromptBuilder.recalled). The sources go back to the caller,
whose answer reports their stamps.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, List, Optional

from ..config import MemoryConfig
from .records import Pose
from .store import MemoryStore
from .summaries import SummaryStore
from .timewords import TimeRange, parse

log = logging.getLogger(__name__)


@dataclass
class Recalled:
    """One remembered stretch a question's answer draws on (an entry or a summary), as ~/ask lists it."""
    kind: str  # "entry" or "summary"
    camera: str
    start: float
    end: float
    text: str
    pose: Optional[Pose] = None
    score: float = 0.0

    def line(self, now_s: float) -> str:
        same_day = datetime.fromtimestamp(self.start).date() == datetime.fromtimestamp(now_s).date()
        start = datetime.fromtimestamp(self.start).strftime("%H:%M:%S" if same_day else "%b %d %H:%M:%S")
        end = datetime.fromtimestamp(self.end).strftime("%H:%M:%S")
        where = f" at ({self.pose.x:.1f}, {self.pose.y:.1f})" if self.pose is not None else ""
        label = " summary" if self.kind == "summary" else ""
        return f"[{start}-{end} {self.camera}{label}{where}] {self.text}"


@dataclass
class Recollection:
    lines: List[str]
    sources: List[Recalled]
    time_range: Optional[TimeRange]
    query: str


def recollect(question: str, now_s: float, store: MemoryStore, summaries: Optional[SummaryStore],
              config: MemoryConfig, count_tokens: Callable[[str], int]) -> Recollection:
    """Sources for `question` asked at sensor time `now_s`, within the token budget."""
    time_range, query = parse(question, now_s)
    since = time_range.since if time_range else None
    until = time_range.until if time_range else None
    candidates: List[Recalled] = []
    if config.ask_entries > 0:
        if query.strip() or time_range is not None:
            hits = store.recall(query=query, since=since, until=until, limit=config.ask_entries)
            if not hits and query.strip() and time_range is not None:
                # No entry matches the words ("was there a giraffe an hour ago?"): what was seen
                # in the range, newest first, is still what the answer needs.
                hits = store.recall(since=since, until=until, limit=config.ask_entries)
            candidates += [Recalled("entry", h.camera, h.start, h.end, h.text, h.pose, h.score) for h in hits]
        if summaries is not None and time_range is not None:
            tier = "hour" if since is None or until is None or until - since >= 3 * 3600 else "minutes"
            for summary in summaries.between(tier, since, until, limit=3):
                candidates.append(Recalled("summary", summary.camera, summary.start, summary.end, summary.text))
    chosen: List[Recalled] = []
    used = 0
    # Summaries first (a few cover a long range), then entries by rank, while the budget lasts.
    for source in sorted(candidates, key=lambda s: s.kind != "summary"):
        cost = count_tokens(source.line(now_s)) + 1
        if used + cost > config.ask_context_tokens:
            continue
        chosen.append(source)
        used += cost
    chosen.sort(key=lambda s: (s.start, s.end))
    return Recollection([s.line(now_s) for s in chosen], chosen, time_range, query)
