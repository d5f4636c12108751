"""Writing memory off the real-time path: a bounded queue drained by one writer thread.

`offer()` never blocks (replays may ask it to): when the queue is full (the disk stalled, the store is locked) the entry
is dropped and counted, so a window's latency never depends on the disk. The thread commits in
batches (whatever is queued, at most `batch` entries per transaction); a store error is logged
and counted and the thread goes on with the next batch. It also applies the retention policy,
when the store opens and then every `retention_every_s` of wall time, relative to the newest
entry's stamp (so a replayed bag ages by its own clock).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, List, Optional

from .store import Entry, MemoryError, MemoryStore

log = logging.getLogger(__name__)


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
        self._thread = threading.Thread(target=self._run, name="svlm-memory", daemon=True)
        self._ready = threading.Event()
        self._thread.start()

    def offer(self, entry: Entry, block: bool = False) -> bool:
        """Queue an entry; when the queue is full it is dropped and counted (the node), or waited for (`block`: replays)."""
        try:
            self._queue.put(entry, block=block)
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything offered so far is committed (tests, shutdown); False if `timeout` ran out."""
        done = threading.Event()
        try:
            self._queue.put(_Marker(done), timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            store = self._open_store()
        except MemoryError as error:
            self.last_error = str(error)
            log.error("%s; descriptions go on, but nothing is remembered", error)
            while self._queue.get() is not None:  # keep the node's offers from piling up
                self.dropped += 1
            return
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
                    try:
                        store.add(pending)
                        self.written += len(pending)
                        self._newest_end = max(self._newest_end, max(entry.end for entry in pending))
                    except MemoryError as error:
                        self.errors += 1
                        self.last_error = str(error)
                        log.error("%s; %d entries lost", error, len(pending))
                if self._newest_end and (last_retention is None or
                                         time.monotonic() - last_retention >= self._retention_every_s):
                    self._retain(store)
                    last_retention = time.monotonic()
                for marker in markers:
                    marker.done.set()
                if stop:
                    return
        finally:
            store.close()


    def _retain(self, store: MemoryStore) -> None:
        try:
            self.retained_away += store.apply_retention(self._newest_end)
        except MemoryError as error:
            self.errors += 1
            self.last_error = str(error)
            log.error("%s; the retention policy was not applied", error)


class _Marker:
    def __init__(self, done: threading.Event):
        self.done = done
