"""Writing memory off the real-time path: a bounded queue drained by one writer thread.

`offer()` never blocks (replays may ask it to): when the queue is full (the disk stalled, the store is locked) the entry
is dropped and counted, so a window's latency never depends on the disk. The thread commits in
batches (whatever is queued, at most `batch` entries per transaction); a store error is logged
and counted and the thread goes on with the next batch. It also applies the retention policy,
when the store opens and then every `retention_every_s` of wall time, relative to the newest
entry's stamp (so a replayed bag ages by its own clock).

New texts are embedded by a second thread (`MemoryStore.embed_pending`), so a slow or starved
embedding model delays only when a text becomes searchable by words and meaning, never the
commits: the queue cannot fill because of it. (Training the meaning index, at 50,000 texts and
then each time the texts double, holds the store for a few seconds; the queue absorbs that.)
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, List, Optional

from .store import Entry, MemoryError, MemoryStore, StoreLocked

log = logging.getLogger(__name__)
# Texts per embedding call: small, so a recall query sharing the embedding model waits little.
EMBED_CHUNK = 16
LOCKED_TRIES = 60  # tries of a batch while another connection holds the write lock (5 s each)


class MemoryWriter:
    def __init__(self, open_store: Callable[[], MemoryStore], queue_size: int = 1000, batch: int = 64,
                 retention_every_s: float = 3600.0):
        self._open_store = open_store  # the store is opened on the writer thread, which owns it
        self._queue: "queue.Queue[Optional[Entry]]" = queue.Queue(maxsize=queue_size)
        self._batch = batch
        self._retention_every_s = retention_every_s
        self._newest_end = 0.0
        self.retained_away = 0  # entries deleted by the retention policy
        self.dropped = 0
        self.written = 0
        self.errors = 0
        self.last_error: Optional[str] = None
        self.embedding_errors = 0
        self.awaiting_embedding = 0  # texts committed, not embedded yet: as of the last embedding step
        self._store: Optional[MemoryStore] = None
        self._texts_added = threading.Event()  # the embedding thread's wake-up
        self._embedded = threading.Condition()  # notified after each embedding step
        self._embedded_through = 0  # every text id up to this one is embedded (or deleted)
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="svlm-memory", daemon=True)
        self._embed_thread = threading.Thread(target=self._embed, name="svlm-memory-embed", daemon=True)
        self._thread.start()

    def offer(self, entry: Entry, block: bool = False) -> bool:
        """Queue an entry; when the queue is full it is dropped and counted (the node), or waited for (`block`: replays)."""
        try:
            self._queue.put(entry, block=block)
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def flush(self, timeout: Optional[float] = None, embedded: bool = True) -> bool:
        """Wait until everything offered so far is committed and (`embedded`) its texts embedded:
        tests, shutdown, the end of a replay; a summary about to read the period's entries needs
        only the commit. False if `timeout` ran out, the store is not open, or embedding failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        marker = _Marker()
        try:
            self._queue.put(marker, timeout=timeout)
        except queue.Full:
            return False
        if not marker.done.wait(timeout) or not marker.ok:
            return False
        if not embedded:
            return True
        with self._embedded:
            errors = self.embedding_errors
            self._texts_added.set()
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._embedded.wait_for(lambda: self._embedded_through >= marker.newest_text or self._closing or
                                    self.embedding_errors > errors, remaining)
            return self._embedded_through >= marker.newest_text

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            store = self._open_store()
        except MemoryError as error:
            self.last_error = str(error)
            log.error("%s; descriptions go on, but nothing is remembered", error)
            while (item := self._queue.get()) is not None:  # keep the node's offers from piling up
                if isinstance(item, _Marker):
                    item.ok = False
                    item.done.set()
                else:
                    self.dropped += 1
            return
        self._store = store
        self._embed_thread.start()
        self._texts_added.set()  # texts a previous run committed but did not embed
        last_retention = None
        try:
            while True:
                item = self._queue.get()
                pending: List[Entry] = []
                markers: List[_Marker] = []
                stop = False
                while True:
                    if item is None:
                        stop = True
                    elif isinstance(item, _Marker):
                        markers.append(item)
                    else:
                        pending.append(item)
                    if stop or len(pending) >= self._batch:
                        break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                if pending:
                    self._commit(store, pending)
                if self._newest_end and (last_retention is None or
                                         time.monotonic() - last_retention >= self._retention_every_s):
                    self._retain(store)
                    last_retention = time.monotonic()
                if markers:
                    newest_text = self._newest_text(store)
                    for marker in markers:
                        marker.newest_text = newest_text
                        marker.done.set()
                if stop:
                    return
        finally:
            with self._embedded:
                self._closing = True
                self._embedded.notify_all()
            self._texts_added.set()
            self._embed_thread.join(30)  # an embedding pass in flight finishes; what is left waits for the next run
            self._store = None
            store.close()

    def _commit(self, store: MemoryStore, entries: List[Entry]) -> None:
        # A lock held by another process (a replay into the same file, an open sqlite3 shell) is
        # waited out, each try costing the store's busy timeout; meanwhile new offers fill the queue
        # and, once it is full, are dropped and counted, so the node never waits.
        for attempt in range(LOCKED_TRIES):
            try:
                store.add(entries, embed=False)
            except StoreLocked as error:
                self.errors += 1
                self.last_error = str(error)
                if attempt == 0:
                    log.warning("%s", error)
                continue
            except MemoryError as error:
                self.errors += 1
                self.last_error = str(error)
                log.error("%s; %d entries lost", error, len(entries))
                return
            self._texts_added.set()
            self.written += len(entries)
            self._newest_end = max(self._newest_end, max(entry.end for entry in entries))
            if attempt:
                self.last_error = None
                log.info("memory store writable again: %d waiting entries written", len(entries))
            return
        log.error("%s; still locked after %d tries: %d entries lost", self.last_error, LOCKED_TRIES, len(entries))

    def _embed(self) -> None:
        store = self._store
        while not self._closing:
            self._texts_added.wait()
            self._texts_added.clear()
            while not self._closing:
                try:
                    self.awaiting_embedding = store.awaiting_embedding()  # what a stalled model leaves waiting
                    done = store.embed_pending(EMBED_CHUNK)
                    through, awaiting = store.embedded_through(), store.awaiting_embedding()
                except Exception as error:  # noqa: BLE001 - the entries are stored; their texts wait for the next pass
                    with self._embedded:
                        self.embedding_errors += 1
                        self._embedded.notify_all()
                    self.last_error = f"embedding new texts failed: {error}"
                    log.error("memory: %s; they stay searchable by time, camera and place, and are embedded "
                              "with the next texts", self.last_error)
                    break
                with self._embedded:
                    self._embedded_through, self.awaiting_embedding = through, awaiting
                    self._embedded.notify_all()
                if not done:
                    break

    def _newest_text(self, store: MemoryStore) -> int:
        try:
            return store.newest_text_id()
        except Exception:  # noqa: BLE001 - a flush then waits for nothing more than the commit
            return 0

    def _retain(self, store: MemoryStore) -> None:
        try:
            self.retained_away += store.apply_retention(self._newest_end)
        except MemoryError as error:
            self.errors += 1
            self.last_error = str(error)
            log.error("%s; the retention policy was not applied", error)


class _Marker:
    """A flush's place in the queue: set when everything before it is committed."""

    def __init__(self):
        self.done = threading.Event()
        self.ok = True  # False: the store never opened, nothing was committed
        self.newest_text = 0  # the newest text id when it was reached; its embedding is what a flush waits for
