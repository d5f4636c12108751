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
(`ranking.TextIndex`, loaded from `texts` at the first query, then kept up to date): BM25 over word
postings (numpy; SQLite's FTS5 scores every matching row one by one, about 1 us each, 50 ms for a
few common words over 100,000 texts), and the int8 vectors, scanned exactly below `IVF_MIN`
texts and above it through an inverted file (the `NPROBE` nearest of about sqrt(n) k-means cells,
trained by the writer as the texts grow; centroids in `meta`). The ranked texts are then expanded
to their newest entries under the filters through the (text, time) index. Narrow filters (a short
time range, a place: few entries inside) are answered the other way round: the entries inside are
fetched through their index and only their texts are ranked. Keyword and meaning evidence are
fused by score (`ranking.rank`): a query no text matches gets no entry. Retention deletes the
oldest entries in bounded transactions and gives the freed pages back (`auto_vacuum=INCREMENTAL`),
so the file stays under `max_bytes`.

This module owns `MemoryStore`: writing and merging entries, deferred embedding, training the
inverted file, retention, and recall (narrow or wide plan, expansion to entries). The rest lives
beside it: the errors (`errors.py`), the layout (`schema.py`), the writer lock (`lock.py`), the
connection and its one transaction (`sqlite_file.py`), the vectors and k-means (`vectors.py`),
the ranking (`ranking.py`), the filters as SQL (`filters.py`) and the records (`records.py`).
"""
from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..config import MemoryConfig
from .errors import CORRUPT_ADVICE, StoreCorrupt, failure, quarantine
from .filters import HIT_COLUMNS, Filters, Inside, hit
from .ranking import TextIndex, rank
from .records import Entry, Hit
from .schema import open_layout
from .sqlite_file import SQLiteFile, transaction, use_wal
from .vectors import DIMENSIONS, Embedder, kmeans, nearest_cells, quantize

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 1000
MAX_RUN_S = 3600.0  # a run of repeats longer than this starts a new entry (bounds the time index scans)
NARROW_MAX = 4000  # filters holding at most this many entries rank only those entries' texts ...
NARROW_PLACE_MAX = 25_000  # ... or this many with a place (a text's entries elsewhere cost the most to skip)
MAX_PROBES = 2000  # ranked texts expanded through the index, per query
RETENTION_CHUNK = 5000  # entries deleted per transaction by retention
RETENTION_FILL = 0.95  # a size-bound pass trims the store to this fraction of max_bytes
VACUUM_STEP = 4096  # free pages given back to the file system per transaction
EVERY_TEXT = 2**62  # embedded_upto of a file whose texts were all embedded as they came


def default_path(node_name: str = "/svlm") -> Path:
    """The store of the node with this fully qualified name: `/robot1/svlm` ->
    $ROS_HOME/svlm/robot1/svlm/memory.sqlite, so two nodes on one host never share a file."""
    home = Path(os.environ.get("ROS_HOME", Path.home() / ".ros"))
    parts = [part for part in node_name.split("/") if part] or ["svlm"]
    return home.joinpath("svlm", *parts, "memory.sqlite")


class MemoryStore(SQLiteFile):
    """The entries of one memory file (one connection, thread-safe): `add` and `embed_pending` for
    the writer, `recall` and the counts for everyone; every error a StoreError (`errors.py`)."""

    IVF_MIN = 50_000  # texts with a vector before meaning search uses the inverted file (exact below)
    NPROBE = 32  # cells scanned per meaning query

    def __init__(self, path: Path, config: Optional[MemoryConfig] = None, embedder: Optional[Embedder] = None,
                 check: bool = False):
        """`check` (for the holder of the writer lock, when it starts): the whole file is checked
        (PRAGMA quick_check: it reads every page, about a second per GB) and a corrupt or truncated
        one is moved aside (`quarantine`, `moved_aside` says where) and a new store started. Without
        it a broken file is refused (StoreCorrupt), never moved: readers leave the file alone."""
        super().__init__(path, threading.RLock())
        self.config = config or MemoryConfig()
        self.config.validate()
        self.embedder = embedder or Embedder()
        self._index = TextIndex()
        self._index_upto = 0  # texts.id already loaded into the index
        self._index_state: Tuple = ()  # (texts generation, inverted file version) the index was loaded at
        self._centroids: Optional[np.ndarray] = None  # the writer's copy, to give new texts their cell
        self._centroids_version = None
        self._last: Dict[str, Optional[Tuple]] = {}  # camera -> (id, start, end, text_id, x, y) of its last entry
        self._data_version = None
        self._train_held_until = 0  # no training before the texts reach this (after running out of memory)
        self.moved_aside: Optional[Path] = None
        try:
            self._open(check)
        except StoreCorrupt as error:
            if not check:
                raise
            self.moved_aside = quarantine(self.path)
            log.error("%s; moved it to %s and started a new store", error, self.moved_aside)
            self._open(False)

    def _open(self, check: bool) -> None:
        self.db = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            wal = Path(f"{self.path}-wal")
            if self.path.exists() and not self.path.stat().st_size and wal.exists() and wal.stat().st_size:
                raise StoreCorrupt(f"memory store {self.path} is empty beside a {wal.stat().st_size}-byte -wal (the "
                                   f"file was truncated): {CORRUPT_ADVICE}")
            self.db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=5.0)
            open_layout(self.db, self.path)
            use_wal(self.db)
            self.db.execute("PRAGMA cache_size=-32768")  # 32 MiB of page cache
            # A small max_bytes gets a small WAL: checkpoints come sooner and the WAL is cut back after them.
            pages = self.config.max_bytes // self.db.execute("PRAGMA page_size").fetchone()[0]
            self.db.execute(f"PRAGMA wal_autocheckpoint={max(64, min(1000, pages // 16))}")
            self.db.execute(f"PRAGMA journal_size_limit={self.config.max_bytes // 8}")
            if check:
                found = [row[0] for row in self.db.execute("PRAGMA quick_check(3)")]
                if found != ["ok"]:
                    raise StoreCorrupt(f"memory store {self.path} is corrupt (quick_check: {'; '.join(found)}): "
                                       f"{CORRUPT_ADVICE}")
            stat = self.path.stat()
            self._identity, self._known_size = (stat.st_dev, stat.st_ino), stat.st_size
        except BaseException as error:
            if self.db is not None:
                self.db.close()
            if isinstance(error, (sqlite3.Error, OSError)):
                raise failure(self.path, error, "opening") from error
            raise

    def verify_file(self) -> None:
        """StoreCorrupt when the file under the store is no longer the one it opened: removed,
        replaced, truncated (`truncate -s 0` of a live store) or without its SQLite header. A
        stat and a 16-byte read: the writer calls it after each commit."""
        try:
            stat = os.stat(self.path)
            with open(self.path, "rb") as file:
                header = file.read(16)
        except FileNotFoundError:
            what = "was removed"
        except OSError as error:
            raise failure(self.path, error, "checking the file") from error
        else:
            if (stat.st_dev, stat.st_ino) != self._identity:
                what = "was replaced by another file"
            elif stat.st_size < self._known_size:  # only retention shrinks it, and it notes the new size
                what = f"was truncated ({self._known_size} to {stat.st_size} bytes)"
            elif header != b"SQLite format 3\x00":
                what = "lost its SQLite header"
            else:
                self._known_size = stat.st_size
                return
        raise StoreCorrupt(f"memory store {self.path} {what} while in use: {CORRUPT_ADVICE}")

    # ----- small state shared by the store's connections ---------------------------------------
    def _meta(self, *keys: str) -> Dict[str, object]:
        """These keys of the store's small state (never all of it: the centroids are megabytes)."""
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
                # Immediate: what is read below (known texts, the next text id, each camera's last
                # entry) is what the write lock holder sees, so two connections never take one id.
                with self._writing("writing", immediate=True):
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
            except BaseException:
                self._last.clear()  # it may name rows that were rolled back
                raise
        if embed and ids.new:
            while self.embed_pending():
                pass
        return added

    def embed_pending(self, limit: int = 256) -> int:
        """Embed the oldest texts committed without a vector (at most `limit`) and, as the texts
        grow, train the meaning index again; returns how many texts were done (0: none waits).
        The embedding runs outside the store's lock: `add` and `recall` go on meanwhile."""
        with self._lock, self._failing("reading the texts to embed"):
            upto = self._embedded_upto(self._meta("embedded_upto"))
            rows = self.db.execute("SELECT id, text FROM texts WHERE id > ? ORDER BY id LIMIT ?",
                                   (upto, limit)).fetchall()
        if not rows:
            return 0
        spoken = [(text_id, text) for text_id, text in rows if text]
        vectors = quantize(self.embedder([text for _, text in spoken])) if spoken else None
        with self._lock:
            with self._writing("storing embeddings"):
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
            self._train_if_due()
        return len(rows)

    def _train_if_due(self) -> None:
        """Train the inverted file when the texts have grown enough (`_should_train`). A failure
        costs only the new cells (the vectors are stored): meaning search scans the old cells and
        the new texts meanwhile."""
        newest = 0
        try:
            meta = self._meta("embedded_upto", "ivf_trained_on", "ivf_upto")
            newest = self._trainable(meta)
            if self._should_train(meta, newest):
                self._train()
        except (sqlite3.Error, ValueError) as error:
            self._rollback()
            log.warning("memory store %s: training the meaning index failed (%s); meaning search scans "
                        "the old cells and the new texts", self.path, error)
        except MemoryError:  # Python's own: k-means over up to 260,000 vectors needs about a gigabyte
            self._rollback()
            self._train_held_until = newest + max(1, newest // 4)  # not again at every step: that would thrash
            log.error("memory store %s: out of memory training the meaning index over %d texts; meaning search "
                      "scans the old cells and the new texts, and training is tried again at %d texts: give this "
                      "process more memory (or lower memory.max_bytes, so the store holds fewer texts)",
                      self.path, newest, self._train_held_until)

    def awaiting_embedding(self) -> int:
        """Texts committed and not embedded yet (found by time, camera and place, not yet by words)."""
        with self._lock, self._failing("counting the texts to embed"):
            upto = self._embedded_upto(self._meta("embedded_upto"))
            return self.db.execute("SELECT COUNT(*) FROM texts WHERE id > ? AND text != ''", (upto,)).fetchone()[0]

    def newest_text_id(self) -> int:
        """The id of the newest text ever added (deleted ones included: ids are never reused)."""
        with self._lock, self._failing("reading"):
            return self._next_text_id(self._meta("next_text_id")) - 1

    def embedded_through(self) -> int:
        """Every text with an id up to this one is embedded, or was deleted."""
        with self._lock, self._failing("reading"):
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
            if pose is None:
                self.db.execute("UPDATE entries SET end=?, windows=windows+1 WHERE id=?", (entry.end, last[0]))
            else:  # a run's pose is its last window's (MemoryEntry: "at the end of the stretch")
                self.db.execute("UPDATE entries SET end=?, windows=windows+1, x=?, y=?, z=?, frame=? WHERE id=?",
                                (entry.end, pose.x, pose.y, pose.z, pose.frame, last[0]))
                self.db.execute("DELETE FROM entries_place WHERE id=?", (last[0],))
                self.db.execute("INSERT INTO entries_place VALUES (?, ?, ?, ?, ?)",
                                (last[0], pose.x, pose.x, pose.y, pose.y))
            # Same place is judged from where the run started (last[4:6]), so a run never creeps away.
            anchor = last[4:6] if last[4] is not None or pose is None else (pose.x, pose.y)
            self._last[entry.camera] = (last[0], last[1], max(last[2], entry.end), last[3]) + tuple(anchor)
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

    def _trainable(self, meta: Dict[str, object]) -> int:
        """The newest text id the inverted file could be trained over (embedded and not deleted)."""
        return min(self.db.execute("SELECT MAX(id) FROM texts").fetchone()[0] or 0, self._embedded_upto(meta))

    def _should_train(self, meta: Dict[str, object], newest: int) -> bool:
        """Train when the texts reach IVF_MIN, then again each time as many new texts have come as
        the last training saw (the cells follow what the robot sees as it changes)."""
        if newest < self._train_held_until:
            return False
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
        with transaction(self.db):  # the writer lock is held: embed_pending stored the vectors
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
        removed += self._trim()
        self._give_back_pages()
        return removed

    def enforce_size(self) -> int:
        """Keep the file and its WAL within max_bytes as writes go (the writer calls it after each
        commit: a stat or two when within). A WAL that is what is over is checkpointed and cut
        back; otherwise the oldest entries go as in `apply_retention`. Returns how many went."""
        if self.size_bytes() <= self.config.max_bytes:
            return 0
        with self._lock, self._failing("checkpointing the WAL"):
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        if self.size_bytes() <= self.config.max_bytes:
            return 0
        removed = self._trim()
        self._give_back_pages()
        return removed

    def _trim(self) -> int:
        """The oldest entries, while the pages in use exceed RETENTION_FILL of max_bytes."""
        removed, target = 0, self.config.max_bytes * RETENTION_FILL
        while True:
            with self._lock:
                if self._used_bytes() <= target:
                    return removed
                count = self._delete_oldest(None)
            removed += count
            if not count:
                return removed

    def _delete_oldest(self, before: Optional[float]) -> int:
        with self._writing("applying retention"):
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
            self._last.clear()
            self._others_wrote()
        return len(rows)

    def _used_bytes(self) -> int:
        with self._failing("measuring the store"):
            pages = self.db.execute("PRAGMA page_count").fetchone()[0]
            free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
            return (pages - free) * self.db.execute("PRAGMA page_size").fetchone()[0]

    def _give_back_pages(self) -> None:
        """Shrink the file by the free pages, VACUUM_STEP at a time, keeping the WAL small."""
        with self._failing("giving freed space back"):
            while True:
                with self._lock:
                    free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
                    if free:  # executescript: sqlite3's execute would free one page per call
                        self.db.commit()
                        self.db.executescript(f"PRAGMA incremental_vacuum({min(free, VACUUM_STEP)});")
                    self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                    if free <= VACUUM_STEP:
                        self._known_size = os.stat(self.path).st_size  # shrunk on purpose, not truncated
                        return

    def size_bytes(self) -> int:
        """The file and its WAL, as the disk holds them."""
        total = 0
        for part in (self.path, Path(f"{self.path}-wal")):
            try:
                total += part.stat().st_size
            except FileNotFoundError:
                pass
        return total

    def count(self) -> int:
        with self._lock, self._failing("reading"):
            return self.db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    # ----- searching -------------------------------------------------------------------------
    def recall(self, query: str = "", since: Optional[float] = None, until: Optional[float] = None,
               camera: str = "", near: Optional[Tuple[float, float, float]] = None, limit: int = 10,
               include_silent: bool = False) -> List[Hit]:
        """Entries matching the filters, best first: keyword and meaning fused (`ranking.rank`; [] when
        no text matches the query), or newest first without a query."""
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
        with self._lock, self._failing("searching"):
            if near is not None and not self.db.execute("SELECT 1 FROM entries_place LIMIT 1").fetchone():
                raise ValueError("no entry has a pose: set the pose topic (or tf frames) to search by place")
            # Only the keys a query needs: the centroids blob (megabytes) is read on a reload only.
            meta = self._meta("max_span", "texts_generation", "ivf_version", "embedded_upto")
            filters = Filters(since, until, camera, near, include_silent, float(meta.get("max_span") or 0.0))
            if not query:
                rows = self.db.execute(f"SELECT {HIT_COLUMNS} FROM entries e JOIN texts t ON t.id = e.text_id "
                                       f"WHERE {filters.indexed} ORDER BY e.start DESC LIMIT ?",
                                       (*filters.indexed_args, limit)).fetchall()
                return [hit(row, 0.0) for row in rows]
            self._load_index(meta)
            inside = self._inside(filters)
            index = self._index
            rows = None if inside is None else index.rows_of(inside.texts)
            if not index.n or (rows is not None and not len(rows)):
                return []
            query_vector = quantize(self.embedder([query])[0]).astype(np.float32)
            ranked, scores = rank(index, query, query_vector, rows, self.NPROBE)
            score_of = dict(zip(index.ids[ranked].tolist(), scores.tolist()))
            found = self._expand(index.ids[ranked].tolist(), filters, inside, limit, max(1, limit // 5))
            return self._hits(found, score_of)

    def _inside(self, filters: Filters) -> Optional[Inside]:
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
                return Inside(self.db.execute(f"SELECT e.id, e.text_id, e.start FROM entries e WHERE {where}",
                                              args).fetchall())
            where, args = filters.plain, filters.plain_args  # a big place: let the time or camera index lead
        rows = self.db.execute(f"SELECT e.id, e.text_id, e.start FROM entries e WHERE {where} LIMIT ?",
                               (*args, NARROW_MAX + 1)).fetchall()
        return Inside(rows) if len(rows) <= NARROW_MAX else None

    def _expand(self, texts: Iterable[int], filters: Filters, inside: Optional[Inside],
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
            centroids = self._writer_centroids()  # cached by ivf_version
            if centroids is not None:
                self._index.centroids = centroids
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

    def _hits(self, entry_ids: List[int], score_of_text: Dict[int, float]) -> List[Hit]:
        """The entries, in this order, each scored as its text."""
        rows = {}
        for start in range(0, len(entry_ids), 30000):
            part = entry_ids[start:start + 30000]
            rows.update((row[0], row) for row in self.db.execute(
                f"SELECT {HIT_COLUMNS}, e.text_id FROM entries e JOIN texts t ON t.id = e.text_id WHERE e.id IN "
                f"({','.join('?' * len(part))})", part))
        return [hit(rows[e], score_of_text[rows[e][-1]]) for e in entry_ids if e in rows]


class _TextIds(dict):
    new = 0
