"""The layout of a memory file: its tables and indexes (`SCHEMA`, the summaries' `SUMMARIES_SCHEMA`),
the layout's number (`PRAGMA user_version`), and `open_layout`, which creates the layout in a new
file, turns incremental vacuum on, and refuses a file of another layout with what to do.

There is no migration: layout 1 (a keyword index over every entry, no place index) is refused,
as is a layout newer than this code reads; both leave the file untouched.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import List

from .errors import StoreError
from .sqlite_file import transaction

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
# The summaries' table, in the same file: created by the first SummaryStore to open it, beside
# the entries or before them (`open_layout` then still turns incremental vacuum on).
SUMMARIES_SCHEMA = """
CREATE TABLE IF NOT EXISTS summaries (
    id INTEGER PRIMARY KEY, camera TEXT NOT NULL, tier TEXT NOT NULL, start REAL NOT NULL, end REAL NOT NULL,
    text TEXT NOT NULL, created REAL NOT NULL, UNIQUE(camera, tier, start));
CREATE INDEX IF NOT EXISTS summaries_time ON summaries(tier, end);
"""


def statements(script: str) -> List[str]:
    """The statements of a script, one by one (executescript would commit what is open)."""
    found, current = [], ""
    for line in script.strip().splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            found.append(current.strip())
            current = ""
    return found


def open_layout(db: sqlite3.Connection, path: Path) -> None:
    """Create the layout in a new file (one of two processes opening it at once does), or check
    that the file holds this one; StoreError with what to do otherwise."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        if not db.execute("SELECT 1 FROM sqlite_master").fetchone():
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only possible before the first table
        with transaction(db, immediate=True):  # two processes opening a new file: one creates the layout
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0 and not db.execute(
                    "SELECT 1 FROM sqlite_master WHERE type='table' AND name='entries'").fetchone():
                for statement in statements(SCHEMA):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                version = SCHEMA_VERSION
        if version == SCHEMA_VERSION and db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            # Another table (the summaries) came first: turn incremental vacuum on while the file is small.
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            db.execute("VACUUM")
    if version == 0:
        raise StoreError(
            f"memory store {path} has the layout of an older svlm_ros (layout 1: keyword index over "
            f"every entry, no place index); this version reads layout {SCHEMA_VERSION}. Move the file aside "
            "(or delete it) and a new store starts; to search the old one, use the svlm_ros version that wrote it")
    if version != SCHEMA_VERSION:
        raise StoreError(f"memory store {path} has layout {version}, written by a newer svlm_ros; this "
                         f"version reads layout {SCHEMA_VERSION}. Update svlm_ros, or move the file aside and "
                         "a new store starts")
