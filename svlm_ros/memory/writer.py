"""Writing memory off the real-time path: a bounded queue drained by one writer thread.

`offer()` never blocks (replays may ask it to): when the queue is full (the disk stalled, the store is locked) the entry
is dropped and counted, so a window's latency never depends on the disk. The thread commits in
batches (whatever is queued, at most `batch` entries per transaction). No exception ends it:
- a store that is locked, full or not writable is waited out: the batch is tried again (for up to
  `RETRY_FOR_S`) while new offers fill the queue and, once it is full, are dropped and counted;
  the first commit that goes through clears the error;
- a store that is corrupt, or whose file was truncated, replaced or removed under it (checked
  after every commit: a stat and a 16-byte read), is moved aside (`errors.quarantine`) and a new
  one opened at the same path; the batch goes into the new file, the owner's readers reopen
  (`generation`), and `problem` says where the old file went for `REPLACED_NOTICE_S`;
- any other store error loses that batch, logged and counted (`lost`).
Retention runs when the store opens and then every `retention_every_s` of wall time, relative to
the newest entry's stamp (so a replayed bag ages by its own clock); the size bound (`max_bytes`,
the WAL included) is kept after every commit.

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
from pathlib import Path
from typing import Callable, Dict, List, Optional

from .errors import (CORRUPT_ADVICE, StoreCorrupt, StoreError, StoreFull, StoreInUse, StoreLocked, StoreUnwritable,
                     quarantine)
from .records import Entry
from .store import MemoryStore

log = logging.getLogger(__name__)
# Texts per embedding call: small, so a recall query sharing the embedding model waits little.
EMBED_CHUNK = 16
RETRY_FOR_S = 300.0  # a locked, full or unwritable store is tried again this long before a batch is lost
RETRY_PAUSE_S = 1.0  # between tries of a full or unwritable store (a locked one waits its busy timeout)
REPLACED_NOTICE_S = 300.0  # how long `problem` reports that a broken file was moved aside
ERROR_ORDER = ("open", "write", "retention", "embed")  # which of several errors `last_error` names


class MemoryWriter:
    def __init__(self, open_store: Callable[[], MemoryStore], queue_size: int = 1000, batch: int = 64,
                 retention_every_s: float = 3600.0, close_readers: Callable[[], None] = lambda: None):
        self._open_store = open_store  # the store is opened on the writer thread, which owns it
        # Before a broken file is moved aside, the owner closes its own connections to it: a
        # connection left open would delete the new file's WAL by name when it closes.
        self._close_readers = close_readers
        self._queue: "queue.Queue[object]" = queue.Queue(maxsize=queue_size)
        self._batch = batch
        self._retention_every_s = retention_every_s
        self._newest_end = 0.0
        self.retained_away = 0  # entries deleted by the retention policy
        self.accepted = 0  # offers queued
        self.dropped = 0  # offers refused by a full queue, or discarded without a store to write to
        self.written = 0
        self.lost = 0  # queued, then not committed: a store error, or given up after RETRY_FOR_S
        self.errors = 0
        self.embedding_errors = 0
        self.awaiting_embedding = 0  # texts committed, not embedded yet: after the last commit or embedding step
        self.generation = 0  # the file was replaced this many times: readers of an older one reopen
        self.replacing = False  # a broken file is being moved aside: readers wait for the new one
        self.moved_aside: Optional[Path] = None  # where the last broken file went
        self._errors: Dict[str, str] = {}  # what is wrong now, by source (ERROR_ORDER)
        self._notice: Optional[tuple] = None  # (monotonic time, message) of the last replacement
        self._store: Optional[MemoryStore] = None
        self._store_lock = threading.Lock()
        self._texts_added = threading.Event()  # the embedding thread's wake-up
        self._embedded = threading.Condition()  # notified after each embedding step
        self._embedded_through = 0  # every text id up to this one is embedded (or deleted)
        self._closing = False
        self._deadline: Optional[float] = None  # set by close: retries stop here
        self._thread = threading.Thread(target=self._run, name="svlm-memory", daemon=True)
        self._embed_thread = threading.Thread(target=self._embed, name="svlm-memory-embed", daemon=True)
        self._thread.start()

    @property
    def last_error(self) -> Optional[str]:
        """What is wrong now (one message: what, which file, what to do), or None."""
        for source in ERROR_ORDER:
            if source in self._errors:
                return self._errors[source]
        if self._notice is not None and time.monotonic() - self._notice[0] < REPLACED_NOTICE_S:
            return self._notice[1]
        return None

    @property
    def stopped(self) -> bool:
        """The writer thread has ended (closed, or no store to write): nothing writes the file any more."""
        return not self._thread.is_alive()

    def _failed(self, source: str, message: str) -> None:
        self._errors[source] = message

    def _recovered(self, *sources: str) -> None:
        for source in sources:
            self._errors.pop(source, None)

    def offer(self, entry: Entry, block: bool = False) -> bool:
        """Queue an entry; when the queue is full it is dropped and counted (the node), or waited for (`block`: replays)."""
        try:
            self._queue.put(entry, block=block)
        except queue.Full:
            self.dropped += 1
            return False
        self.accepted += 1
        return True

    def report_broken(self, error: StoreError, generation: int) -> None:
        """A reader found the file of `generation` corrupt: the writer thread replaces it (once)."""
        try:
            self._queue.put_nowait(_Broken(error, generation))
        except queue.Full:  # the writer is busy with a full queue: its next commit meets the damage itself
            pass

    def unwritten(self) -> int:
        """Entries queued and not committed (lost to errors, or still waiting)."""
        return self.accepted - self.written

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

    def close(self, timeout: float = 10.0) -> int:
        """Commit what is queued within `timeout` (embedding stops at once: the texts wait for the
        next run), then return how many queued entries were not committed."""
        self._deadline = time.monotonic() + timeout
        self.stop_embedding()
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:  # the thread is still draining; it stops at the deadline
            pass
        self._thread.join(max(0.0, self._deadline - time.monotonic()))
        unwritten = self.unwritten()
        if unwritten:
            log.error("memory: %d queued entries were not written (%s)", unwritten,
                      "the writer is still busy at the end of the shutdown" if self._thread.is_alive()
                      else self.last_error or "see the errors above")
        return unwritten

    def stop_embedding(self) -> None:
        """The embedding thread stops at its next step, quietly: called before the embedding
        process is stopped for shutdown, whose failing calls are then not news."""
        with self._embedded:
            self._closing = True
            self._embedded.notify_all()
        self._texts_added.set()

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _run(self) -> None:
        try:
            store = self._open_store()
        except Exception as error:  # noqa: BLE001 - reported; the descriptions go on
            self._failed("open", str(error))
            log.error("%s; descriptions go on, but nothing is remembered", error)
            self._discard()
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
                broken: Optional[_Broken] = None
                stop = False
                while True:
                    if item is None:
                        stop = True
                    elif isinstance(item, _Marker):
                        markers.append(item)
                    elif isinstance(item, _Broken):
                        broken = item
                    else:
                        pending.append(item)
                    if stop or len(pending) >= self._batch:
                        break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                if pending:
                    store = self._commit(store, pending)
                if store is not None and broken is not None and broken.generation == self.generation:
                    store = self._replace(store, broken.error)
                if store is not None and self._newest_end:
                    if last_retention is None or time.monotonic() - last_retention >= self._retention_every_s:
                        self._retain(store, store.apply_retention, self._newest_end)
                        last_retention = time.monotonic()
                    elif pending:
                        self._retain(store, store.enforce_size)
                newest_text = self._newest_text(store) if markers and store is not None else 0
                for marker in markers:
                    marker.ok, marker.newest_text = store is not None, newest_text
                    marker.done.set()
                if store is None:  # no file to write to: keep the node's offers from piling up
                    self._discard()
                    return
                if stop or (self._closing and (self._past_deadline() or self._queue.empty())):
                    return
        except Exception as error:  # noqa: BLE001 - last resort: the node's descriptions must go on
            self.errors += 1
            self._failed("write", f"memory writer stopped: {error}")
            log.exception("memory writer stopped")
            self._discard()
        finally:
            with self._embedded:
                self._closing = True
                self._embedded.notify_all()
            self._texts_added.set()
            if self._embed_thread.is_alive():  # an embedding step in flight ends with the child's stop
                self._embed_thread.join(None if self._deadline is None else
                                        max(0.0, self._deadline - time.monotonic()))
            with self._store_lock:
                store, self._store = self._store, None
            if store is not None:
                store.close()

    def _discard(self) -> None:
        """Without a store: answer flushes and count what is offered, until close."""
        while (item := self._queue.get()) is not None:
            if isinstance(item, _Marker):
                item.ok = False
                item.done.set()
            elif isinstance(item, Entry):
                self.dropped += 1

    def _commit(self, store: MemoryStore, entries: List[Entry]) -> Optional[MemoryStore]:
        """Commit a batch; returns the store to go on with (a new one after a broken file was
        replaced), or None when there is none."""
        first_failure: Optional[float] = None
        while True:
            try:
                store.add(entries, embed=False)
                store.verify_file()  # a commit into a truncated or replaced file is not one
            except (StoreLocked, StoreFull, StoreUnwritable) as error:
                self.errors += 1
                self._failed("write", str(error))
                now = time.monotonic()
                if first_failure is None:
                    first_failure = now
                    log.warning("%s", error)
                if now - first_failure >= RETRY_FOR_S or self._past_deadline():
                    self.lost += len(entries)
                    log.error("%s; not written after %.0f s: %d entries lost", error, now - first_failure, len(entries))
                    return store
                if not isinstance(error, StoreLocked):  # a locked store already waited out its busy timeout
                    time.sleep(RETRY_PAUSE_S)
                continue
            except StoreCorrupt as error:
                self.errors += 1
                store = self._replace(store, error)
                if store is None:
                    self.lost += len(entries)
                    return None
                continue  # the batch goes into the new file: the broken one may not hold it
            except StoreError as error:
                self.errors += 1
                self._failed("write", str(error))
                self.lost += len(entries)
                log.error("%s; %d entries lost", error, len(entries))
                return None if isinstance(error, StoreInUse) else store
            self._recovered("write", "retention")  # any commit that goes through clears the error
            self.written += len(entries)
            self._newest_end = max(self._newest_end, max(entry.end for entry in entries))
            if first_failure is not None:
                log.info("memory store %s writable again: %d waiting entries written", store.path, len(entries))
            self._count_awaiting(store)
            self._texts_added.set()
            return store

    def _replace(self, store: MemoryStore, error: StoreError) -> Optional[MemoryStore]:
        """Move a broken file aside and open a new one at its path (a robot left alone keeps
        remembering; the old file is kept for `sqlite3 OLD .recover`)."""
        path = store.path
        log.error("%s", error)
        with self._store_lock:
            self._store = None
        self.replacing = True
        store.close()  # waits for an embedding step in flight, which then finds no store
        try:
            self._close_readers()
            moved = quarantine(path)
            new = self._open_store()
        except Exception as failure:  # noqa: BLE001 - reported; the descriptions go on
            self._failed("open", f"{error}; starting a new store failed: {failure}")
            log.error("%s", self._errors["open"])
            return None
        finally:
            self.replacing = False
        self.generation += 1
        self.moved_aside = moved
        with self._embedded:
            self._embedded_through = 0  # the new file's text ids start again
        message = str(error).replace(CORRUPT_ADVICE, f"moved it aside to {moved.name}; a new store started")
        self._notice = (time.monotonic(), message)
        log.error("memory: %s (old entries: %s)", message, moved)
        with self._store_lock:
            self._store = new
        self._texts_added.set()
        return new

    def _count_awaiting(self, store: MemoryStore) -> None:
        # Counted and set under the embedding lock, by both threads: the last one set is the newest count.
        try:
            with self._embedded:
                self.awaiting_embedding = store.awaiting_embedding()
        except StoreError:
            pass  # a count for diagnostics; the next commit or embedding step counts again

    def _embed(self) -> None:
        while not self._closing:
            self._texts_added.wait()
            self._texts_added.clear()
            while not self._closing:
                with self._store_lock:
                    store = self._store
                if store is None:
                    break
                try:
                    done = store.embed_pending(EMBED_CHUNK)
                    through = store.embedded_through()
                    with self._embedded:
                        self._embedded_through = through
                        self.awaiting_embedding = store.awaiting_embedding()
                        self._embedded.notify_all()
                except Exception as error:  # noqa: BLE001 - the entries are stored; their texts wait for the next pass
                    with self._embedded:
                        self.embedding_errors += 1
                        self._embedded.notify_all()
                    if self._closing or self._store is not store:
                        break  # the embedding child was stopped for shutdown, or the file replaced: not news
                    self._failed("embed", f"embedding new texts failed: {error}")
                    log.error("memory: %s; they stay searchable by time, camera and place, and are embedded "
                              "with the next texts", self._errors["embed"])
                    break
                self._recovered("embed")
                if not done:
                    break

    def _newest_text(self, store: MemoryStore) -> int:
        try:
            return store.newest_text_id()
        except Exception:  # noqa: BLE001 - a flush then waits for nothing more than the commit
            return 0

    def _retain(self, store: MemoryStore, apply, *args) -> None:
        try:
            self.retained_away += apply(*args)
        except StoreError as error:
            self.errors += 1
            self._failed("retention", str(error))
            log.error("%s; the retention policy was not applied", error)
        else:
            self._recovered("retention")


class _Marker:
    """A flush's place in the queue: set when everything before it is committed."""

    def __init__(self):
        self.done = threading.Event()
        self.ok = True  # False: the store never opened, nothing was committed
        self.newest_text = 0  # the newest text id when it was reached; its embedding is what a flush waits for


class _Broken:
    """A reader's report that the file of `generation` is corrupt."""

    def __init__(self, error: StoreError, generation: int):
        self.error, self.generation = error, generation
