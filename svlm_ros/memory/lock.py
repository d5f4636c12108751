"""The right to write one memory file: `WriterLock`, an flock on `<file>.lock` held by one process.

The entries and the summaries of a file are written under it; readers never take it.
"""
from __future__ import annotations

import fcntl
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Dict, List, Optional

from .errors import StoreInUse, failure

log = logging.getLogger(__name__)


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
