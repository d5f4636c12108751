"""Summaries in tiers: each camera's minutes, hours and days condensed by the model itself.

- `SummaryStore`: the `summaries` table, in the memory's SQLite file (its own connection; WAL lets
  it sit beside the writer thread's).
- `SummaryPlanner`: watches window stamps and says which periods just ended: every
  `summary_minutes` on the local clock, then each hour (from its minute summaries) and each day
  (from its hour summaries), so a whole day stays reachable in a few thousand tokens.
- `Summarizer`: turns one job into a summary. Its notes are the period's timed text, thinned to
  `summary_input_tokens`; `SummaryModel` has the model read them as `previous text` in a session
  of its own and answer `summary_instruction` (the streams' own caches are never touched).
The node runs jobs only when the live cameras leave the model idle; a job still waiting when the
next period of its tier ends has fallen behind and is counted. A replay (`svlm replay --memory`)
runs the same jobs, and at the end of a bag summarizes the periods still open. Both plan and
queue them through `recorder.MemoryRecorder`.
"""
from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from ..config import EngineConfig, MemoryConfig
from ..engine.models import LoadedModel
from ..engine.session import StreamSession
from .errors import failure
from .schema import SUMMARIES_SCHEMA
from .sqlite_file import SQLiteFile, use_wal
from .store import MemoryStore

log = logging.getLogger(__name__)

TIERS = ("minutes", "hour", "day")


@dataclass
class Summary:
    camera: str
    tier: str
    start: float
    end: float
    text: str


@dataclass
class SummaryJob:
    camera: str
    tier: str
    start: float
    end: float


def period_start(stamp_s: float, period_s: float) -> float:
    """The start of the period holding `stamp_s`, aligned on the local clock (10:00, 10:10, midnight)."""
    offset = datetime.fromtimestamp(stamp_s).astimezone().utcoffset().total_seconds()
    return (int((stamp_s + offset) // period_s)) * period_s - offset


def local_time(stamp_s: float, with_date: bool = False) -> str:
    return datetime.fromtimestamp(stamp_s).strftime("%b %d %H:%M:%S" if with_date else "%H:%M:%S")


class SummaryStore(SQLiteFile):
    """The summaries table of a memory file, on a connection of its own. Every sqlite3 or OS error
    comes out as a StoreError (`errors.failure`): which file, what is wrong, what to do. Writing
    takes the file's writer lock, as the entries do."""

    def __init__(self, path: Path):
        super().__init__(path, threading.Lock())
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=5.0)
            use_wal(self.db)
            self.db.executescript(SUMMARIES_SCHEMA)
            self.db.commit()
        except (sqlite3.Error, OSError) as error:
            if self.db is not None:
                self.db.close()
                self.db = None
            raise failure(self.path, error, "opening the summaries table") from error

    def add(self, summary: Summary) -> None:
        with self._writing("writing a summary"):
            self.db.execute("INSERT OR REPLACE INTO summaries(camera, tier, start, end, text, created) "
                            "VALUES (?,?,?,?,?,?)", (summary.camera, summary.tier, summary.start, summary.end,
                                                     summary.text, time.time()))

    def between(self, tier: str, since: Optional[float], until: Optional[float], camera: str = "",
                limit: int = 1000, with_empty: bool = False) -> List[Summary]:
        """Summaries of one tier overlapping [since, until], in time order (the newest `limit`)."""
        clauses, args = ["tier = ?"], [tier]
        if since is not None:
            clauses.append("end > ?")
            args.append(since)
        if until is not None:
            clauses.append("start < ?")
            args.append(until)
        if camera:
            clauses.append("camera = ?")
            args.append(camera)
        if not with_empty:
            clauses.append("text != ''")
        with self._lock, self._failing("reading summaries"):
            rows = self.db.execute(f"SELECT camera, tier, start, end, text FROM summaries WHERE "
                                   f"{' AND '.join(clauses)} ORDER BY end DESC LIMIT ?", (*args, limit)).fetchall()
        return [Summary(*row) for row in reversed(rows)]

    def latest(self, camera: str, tier: str, count: int) -> List[Summary]:
        return self.between(tier, None, None, camera, limit=count)

    def count(self) -> int:
        with self._lock, self._failing("reading summaries"):
            return self.db.execute("SELECT COUNT(*) FROM summaries").fetchone()[0]


class SummaryPlanner:
    """Which periods have just ended, per camera and tier, from the stamps of described windows."""

    def __init__(self, config: MemoryConfig):
        self.periods = {"minutes": config.summary_minutes * 60, "hour": 3600.0, "day": 86400.0}
        self._current: Dict[tuple, float] = {}  # (camera, tier) -> start of the period being filled

    def observe(self, camera: str, end_s: float) -> List[SummaryJob]:
        """Jobs for the periods that `end_s` has closed, lower tiers first (a higher tier reads them)."""
        if self.periods["minutes"] <= 0:
            return []
        jobs = []
        for tier in TIERS:
            period = self.periods[tier]
            start = period_start(end_s - 1e-6, period)  # a window ending on a boundary belongs before it
            previous = self._current.get((camera, tier))
            if previous is not None and start > previous:
                # A period with no window at all (the node was off) has nothing to summarize.
                jobs.append(SummaryJob(camera, tier, previous, previous + period))
            if previous is None or start > previous:
                self._current[(camera, tier)] = start
        return jobs

    def close(self) -> List[SummaryJob]:
        """Jobs for every period still open (the log ended), lower tiers first within each camera.
        A later summary of the same period (the next bag goes on with it) replaces this one."""
        if self.periods["minutes"] <= 0:
            return []
        cameras = list(dict.fromkeys(camera for camera, _ in self._current))
        jobs = [SummaryJob(camera, tier, self._current[(camera, tier)],
                           self._current[(camera, tier)] + self.periods[tier])
                for camera in cameras for tier in TIERS if (camera, tier) in self._current]
        self._current.clear()
        return jobs


class SummaryModel:
    """The model writing a summary: it reads the notes as `previous text` in a session of its own
    (made on first use, on the caller's thread, which must be the model's: the scheduler's worker),
    so no camera's cache is touched."""

    def __init__(self, loaded: LoadedModel, engine_config: EngineConfig):
        self.loaded = loaded
        self.engine_config = dataclasses.replace(engine_config)
        self._session: Optional[StreamSession] = None

    def __call__(self, notes: str, instruction: str, max_new_tokens: int) -> str:
        if self._session is None:
            self._session = StreamSession(self.loaded, self.engine_config)
        session = self._session
        session.set_context(notes)
        session.reset()
        try:
            return session.ask(instruction, max_new_tokens=max_new_tokens).text
        finally:
            session.reset()

    def count_tokens(self, text: str) -> int:
        return len(self.loaded.tokenizer.encode(text, add_special_tokens=False))


class Summarizer:
    """Runs one job: the period's timed text in, a summary out (stored)."""

    def __init__(self, store: MemoryStore, summaries: SummaryStore, config: MemoryConfig,
                 count_tokens: Callable[[str], int], generate: Callable[[str, str, int], str]):
        self.store = store
        self.summaries = summaries
        self.config = config
        self.count_tokens = count_tokens
        self.generate = generate  # (notes, instruction, max_new_tokens) -> text, on the model's thread
        self.done = 0
        self.empty = 0

    def notes(self, job: SummaryJob) -> List[str]:
        if job.tier == "minutes":
            hits = self.store.recall(since=job.start, until=job.end, camera=job.camera, limit=100_000)
            hits = [h for h in hits if h.start < job.end]
            hits.sort(key=lambda h: h.start)
            return [f"[{local_time(h.start)}-{local_time(h.end)}] {h.text}" for h in hits if h.text]
        lower = TIERS[TIERS.index(job.tier) - 1]
        return [f"[{local_time(s.start)}-{local_time(s.end)}] {s.text}"
                for s in self.summaries.between(lower, job.start, job.end, job.camera)
                if s.start >= job.start and s.end <= job.end]

    def fit(self, lines: Sequence[str]) -> List[str]:
        """Every line if they fit the token budget; otherwise lines spread evenly over the period."""
        budget = self.config.summary_input_tokens
        costs = [self.count_tokens(line) + 1 for line in lines]
        if sum(costs) <= budget:
            return list(lines)
        keep = len(lines)
        while keep > 1:
            keep = max(1, int(keep * 0.8))
            picked = [round(i * (len(lines) - 1) / max(keep - 1, 1)) for i in range(keep)]
            picked = sorted(set(picked))
            if sum(costs[i] for i in picked) <= budget:
                return [lines[i] for i in picked]
        return [lines[-1]][: 1 if costs[-1] <= budget else 0]

    def run(self, job: SummaryJob) -> Summary:
        lines = self.fit(self.notes(job))
        if lines:
            text = self.generate("\n".join(lines), self.config.summary_instruction, self.config.summary_max_tokens)
            self.done += 1
        else:
            text = ""  # nothing was described: stored, so the period counts as done
            self.empty += 1
        summary = Summary(job.camera, job.tier, job.start, job.end, text.strip())
        self.summaries.add(summary)
        return summary


def seed_text(summaries: SummaryStore, camera: str, minutes: int = 3) -> str:
    """What a restarted node's stream starts from: the latest day, hour and minute summaries."""
    parts: List[Summary] = []
    for tier, count in (("day", 1), ("hour", 1), ("minutes", minutes)):
        parts += summaries.latest(camera, tier, count)
    parts.sort(key=lambda s: (s.start, -s.end))
    return "\n".join(f"[{local_time(s.start, with_date=True)}-{local_time(s.end)}] {s.text}" for s in parts)
