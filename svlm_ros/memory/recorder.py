"""One memory recorder for every path that fills a memory file: the node (svlm_ros/node/memory.py)
and a replay with `--memory` (svlm_ros/replay/run.py) record windows and summaries the same way.

`MemoryRecorder` holds the file's writer lock and owns, for one file:
- the writer (`writer.MemoryWriter`): every described window, committed off the caller's thread;
- the summary planner (`summaries.SummaryPlanner`): which periods a window has closed;
- the summarizer (`summaries.Summarizer`): the model writes a closed period's summary, queued
  through the caller's `when_idle` (the scheduler's: it runs when no window and no question
  waits). A summary still waiting when the next period of its tier ends has fallen behind and is
  counted (`summaries_behind`);
- the reading connections (`readers`), which the summarizer and any other reader (the node's
  ~/recall and ~/ask) use, reopened when the writer has replaced a broken file.
ROS-free: the caller gives the scheduler's `when_idle` and the model.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

from ..config import MemoryConfig
from .errors import StoreCorrupt, StoreError, failure
from .lock import WriterLock
from .records import Entry
from .store import MemoryStore
from .summaries import Summary, SummaryJob, SummaryPlanner, SummaryStore, Summarizer
from .writer import MemoryWriter

log = logging.getLogger(__name__)
CLOSE_TIMEOUT_S = 10.0  # what the writer gets to commit its queue at close, unless told otherwise


class MemoryRecorder:
    def __init__(self, path: Path, config: MemoryConfig, when_idle: Callable[[Callable[[], object]], object],
                 model=None, *, owner: str = "", embedder=None, check: bool = False, block: bool = False,
                 flush_timeout_s: Optional[float] = None):
        """Takes the file's writer lock (`owner` names this process to a refused second writer)
        and opens the readers; a file that cannot be used raises its StoreError, with the lock let
        go. `model` writes the summaries (`summaries.SummaryModel`, or any callable of (notes,
        instruction, max_new_tokens) with a `count_tokens`); None: no summaries. `embedder`: what
        the connections embed texts and queries with (None: MiniLM in this process). `check`: the
        file is checked whole first and a corrupt one moved aside (`moved_aside`), as the node does
        at configure. `block`: `record` waits for room in the writer's queue (a replay drops no
        window) instead of dropping the entry (the node's real-time path never waits).
        `flush_timeout_s`: how long a summary waits for its period's last windows to be committed."""
        self.path = Path(path)
        self.config = config
        self._when_idle = when_idle
        self._embedder = embedder
        self._block = block
        self._flush_timeout_s = flush_timeout_s
        self.summaries_behind = 0
        self._pending: Dict[Tuple[str, str], SummaryJob] = {}
        self._pending_lock = threading.Lock()
        self._readers_lock = threading.Lock()
        self._generation = 0  # the writer's file generation the reading connections are open on
        self._closed = False
        self.read_error: Optional[str] = None  # the last failed read, until a read goes through
        self.store: Optional[MemoryStore] = None
        self.summaries: Optional[SummaryStore] = None
        self.writer: Optional[MemoryWriter] = None
        self._writer_lock: Optional[WriterLock] = WriterLock(self.path, owner)
        try:
            self.store = MemoryStore(self.path, config, embedder, check=check)
            self.summaries = SummaryStore(self.path)
            self.entries_at_start = self.store.count()
        except BaseException:
            self.close_readers()
            self._writer_lock.release()
            self._writer_lock = None
            raise
        self.moved_aside: Optional[Path] = self.store.moved_aside
        # The writer's own connection is opened on its thread, which owns it.
        self.writer = MemoryWriter(lambda: MemoryStore(self.path, config, embedder), config.queue_size,
                                   close_readers=self.close_readers)
        self.planner = SummaryPlanner(config)
        self.summarizer: Optional[Summarizer] = None
        if model is not None:
            self.summarizer = Summarizer(self.store, self.summaries, config, model.count_tokens, model)

    def update_config(self, config: MemoryConfig) -> None:
        """The summary settings apply to the next summary; the rest when a recorder is made again."""
        self.config = config
        if self.summarizer is not None:
            self.summarizer.config = config

    @property
    def summaries_waiting(self) -> int:
        return len(self._pending)

    @property
    def summaries_written(self) -> int:
        """Summaries stored, empty ones (a period with nothing described) included."""
        return self.summarizer.done + self.summarizer.empty if self.summarizer is not None else 0

    # ----- writing ----------------------------------------------------------------------------
    def record(self, entry: Entry) -> None:
        """A described window: queued for the writer (never waited on unless `block`), and each
        period it closes planned for a summary."""
        writer = self.writer
        if writer is None:
            return
        writer.offer(entry, block=self._block)
        if self.summarizer is not None:
            for job in self.planner.observe(entry.camera, entry.end):
                self._plan(job)

    def close_periods(self) -> None:
        """The log ended (a replay's bag): the periods still open are summarized too."""
        if self.summarizer is not None:
            for job in self.planner.close():
                self._plan(job)

    def _plan(self, job: SummaryJob) -> None:
        key = (job.camera, job.tier)
        with self._pending_lock:
            if key in self._pending:
                self.summaries_behind += 1  # the previous period's summary still waits for an idle model
            self._pending[key] = job
        self._when_idle(lambda: self._summarize(job))

    def _summarize(self, job: SummaryJob) -> Optional[Summary]:
        generation = -1
        try:
            writer = self.writer
            if writer is not None:  # the period's last windows must be in the store before it is read
                writer.flush(timeout=self._flush_timeout_s, embedded=False)
            generation = self.readers()[2]
            summary = self.summarizer.run(job)
        except (StoreError, sqlite3.Error, OSError) as error:
            error = self.read_failed(error, generation, "summarizing")
            log.error("memory: the %s summary of %s was not written: %s", job.tier, job.camera, error)
            return None
        finally:
            with self._pending_lock:
                if self._pending.get((job.camera, job.tier)) is job:
                    del self._pending[(job.camera, job.tier)]
        log.debug("summary %s %s %.0f-%.0f: %s", job.camera, job.tier, job.start, job.end, summary.text)
        return summary

    def flush(self, timeout: Optional[float] = None, embedded: bool = True) -> bool:
        """Wait until everything recorded so far is committed (and `embedded`, searchable by words
        and meaning); False if it was not within `timeout` (`MemoryWriter.flush`)."""
        writer = self.writer
        return writer is not None and writer.flush(timeout, embedded)

    # ----- the reading connections ------------------------------------------------------------
    def readers(self) -> Tuple[MemoryStore, SummaryStore, int]:
        """The reading connections and the file generation they are open on, reopened when the
        writer has replaced a broken file (StoreError while it is replacing it)."""
        writer = self.writer
        with self._readers_lock:
            if self._closed:
                raise StoreError(f"memory store {self.path} is closed (the memory is shutting down)")
            if writer is not None and writer.replacing:
                raise StoreError(f"memory store {self.path} is being replaced; ask again in a moment")
            if writer is not None and (writer.generation != self._generation or self.store is None):
                self._close_readers_locked()
                generation = writer.generation
                try:
                    self.store = MemoryStore(self.path, self.config, self._embedder)
                    self.summaries = SummaryStore(self.path)
                except StoreError:
                    self._close_readers_locked()
                    raise
                self._generation = generation
                if self.summarizer is not None:
                    self.summarizer.store, self.summarizer.summaries = self.store, self.summaries
            if self.store is None:
                raise StoreError(f"memory store {self.path} is being replaced; ask again in a moment")
            return self.store, self.summaries, self._generation

    def read_failed(self, error: BaseException, generation: int, doing: str) -> StoreError:
        """The StoreError for a failed read (kept as `read_error`); a corrupt file is handed to
        the writer to replace."""
        error = failure(self.path, error, doing)
        self.read_error = str(error)
        if isinstance(error, StoreCorrupt) and self.writer is not None:
            self.writer.report_broken(error, generation)
        return error

    def close_readers(self) -> None:
        """Before the writer moves a broken file aside (and at close): no reading connection stays on it."""
        with self._readers_lock:
            self._close_readers_locked()

    def _close_readers_locked(self) -> None:
        for closable in (self.store, self.summaries):
            if closable is not None:
                closable.close()  # waits for a query in flight on it
        self.store = self.summaries = None

    # ----- closing ----------------------------------------------------------------------------
    def stop_embedding(self) -> None:
        """The writer's embedding stops at its next step (before the caller stops its embedder)."""
        if self.writer is not None:
            self.writer.stop_embedding()

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> int:
        """Commit what is queued within `timeout`, close every connection and let go of the writer
        lock (a writer still busy past the timeout keeps it until the process ends). Returns how
        many queued entries were not committed (the writer logs them); closing again returns 0."""
        writer, unwritten = self.writer, 0
        if writer is not None:
            unwritten = writer.close(timeout)
        with self._readers_lock:
            self._closed = True
            self._close_readers_locked()
        if self._writer_lock is not None and (writer is None or writer.stopped):
            self._writer_lock.release()
        self._writer_lock = None
        self.writer = None
        return unwritten
