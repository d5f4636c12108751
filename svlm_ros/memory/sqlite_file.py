"""One connection to a memory file, as the entries (`store.MemoryStore`) and the summaries
(`summaries.SummaryStore`) both hold it: `transaction`, the one way anything is written (commit
at the end, rollback on any error), and `SQLiteFile`, their shared base: the connection under a
lock, every sqlite3 or OS error turned into the StoreError that says what to do (`failing`),
the file's writer lock taken at the first write, and closing.
"""
from __future__ import annotations

import logging
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from .errors import failure
from .lock import WriterLock

log = logging.getLogger(__name__)


def rollback(db: sqlite3.Connection) -> None:
    """Roll back what is open; a broken or closed connection has nothing left to roll back."""
    try:
        if db.in_transaction:
            db.rollback()
    except sqlite3.Error:
        pass


@contextmanager
def transaction(db: sqlite3.Connection, immediate: bool = False) -> Iterator[sqlite3.Connection]:
    """Everything written inside is committed together at the end, or rolled back on any error.
    `immediate` takes the file's write lock first (BEGIN IMMEDIATE), so what is read inside is
    what the lock's holder sees and no other connection writes in between."""
    if immediate:
        db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.commit()
    except BaseException:
        rollback(db)
        raise


def use_wal(db: sqlite3.Connection) -> None:
    """WAL mode (readers beside the writer), every commit durable (`synchronous=FULL`)."""
    if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":  # setting it takes the write lock: only once
        db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")


class SQLiteFile:
    """A connection (`db`, opened by the subclass) to the memory file at `path`, used under
    `_lock`. Writing takes the file's writer lock (`WriterLock`: the process that holds it, the
    node, or this connection alone), released at `close`."""

    def __init__(self, path: Path, lock):
        self.path = Path(path)
        self._lock = lock
        self._writer_lock: Optional[WriterLock] = None  # taken at the first write
        self.db: Optional[sqlite3.Connection] = None

    def close(self) -> None:
        with self._lock:
            if self.db is not None:
                try:
                    self.db.close()
                except sqlite3.Error as error:  # a broken file: the connection is gone all the same
                    log.debug("memory store %s: closing: %s", self.path, error)
            if self._writer_lock is not None:
                self._writer_lock.release()
                self._writer_lock = None

    def _claim(self) -> None:
        """Writing needs the writer lock: the process that holds it (the node), or this connection alone."""
        if self._writer_lock is None:
            self._writer_lock = WriterLock(self.path)

    @contextmanager
    def _failing(self, doing: str) -> Iterator[None]:
        """sqlite3 and OS errors out as the StoreError that says what to do; an open transaction is rolled back."""
        try:
            yield
        except (sqlite3.Error, OSError) as error:
            self._rollback()
            raise failure(self.path, error, doing) from error

    def _rollback(self) -> None:
        if self.db is not None:
            rollback(self.db)

    @contextmanager
    def _writing(self, doing: str, immediate: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock, with the writer lock claimed (`transaction`);
        what fails comes out as the StoreError for `doing`."""
        with self._lock, self._failing(doing):
            self._claim()
            with transaction(self.db, immediate):
                yield self.db
