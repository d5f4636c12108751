"""What can go wrong with a memory file, said once: the `StoreError` family, `failure` (an sqlite3
or OS error turned into the StoreError that names the file and what to do), and `quarantine`
(moving a corrupt file aside). Every connection to the file (entries, summaries, the writer lock)
raises only these, so callers catch one family and never a raw sqlite3 error.

The base is `StoreError`, not `MemoryError`: that name is Python's out-of-memory error, which a
store error must never shadow (k-means over the texts can run out of memory, and that is caught
as what it is).
"""
from __future__ import annotations

import errno
import os
import sqlite3
import time
from pathlib import Path


class StoreError(RuntimeError):
    """The store cannot be used (corrupt, locked, full, not writable), with which file and what to do."""


class StoreLocked(StoreError):
    """Another connection held the file's write lock past the busy timeout; trying again may work."""


class StoreFull(StoreError):
    """The file system holding the store is full; trying again once there is room works."""


class StoreUnwritable(StoreError):
    """The file or its folder cannot be created or written: permissions, a missing or read-only place."""


class StoreCorrupt(StoreError):
    """The file is damaged, or was truncated, replaced or removed under the store: it cannot be
    trusted again. The holder of the writer lock moves it aside (`quarantine`) and starts a new one."""


class StoreInUse(StoreError):
    """Another process holds the file's writer lock."""


CORRUPT_ADVICE = "move it aside and a new store starts (the node does this itself)"


def failure(path: Path, error: BaseException, doing: str) -> StoreError:
    """The StoreError for an sqlite3 or OS error met while `doing` something with the store at
    `path`: what is wrong, which file, what to do."""
    if isinstance(error, StoreError):
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
    return StoreError(f"memory store {path}: {doing} failed ({text}); if it goes on, move the file aside (a new "
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
