"""`svlm recall DB "query"`: search a memory store from the command line."""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Optional, Tuple

from ..config import MemoryConfig
from .store import MemoryStore, default_path


def parse_time(text: Optional[str]) -> Optional[float]:
    """Seconds since the epoch, or an ISO date-time (local time unless it names a zone)."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(f"cannot read the time {text!r}: give epoch seconds or an ISO time such as "
                         "2026-11-21T10:00") from None


def parse_near(text: Optional[str]) -> Optional[Tuple[float, float, float]]:
    if text is None:
        return None
    try:
        x, y, radius = (float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--near expects x,y,radius in the map frame (metres), got {text!r}") from None
    return x, y, radius


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("db", nargs="?", default=None, help=f"the memory store (default {default_path()})")
    parser.add_argument("query", nargs="?", default="", help="words or a sentence; empty: newest first under the filters (give at least one)")
    parser.add_argument("--since", default=None, help="epoch seconds or ISO time")
    parser.add_argument("--until", default=None, help="epoch seconds or ISO time")
    parser.add_argument("--camera", default="", help="only this camera topic")
    parser.add_argument("--near", default=None, metavar="X,Y,R", help="within R metres of (X, Y) in the map frame")
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--silent", action="store_true", help="include silent stretches")


def run(args: argparse.Namespace) -> int:
    path = Path(args.db) if args.db else default_path()
    if not path.exists():
        raise FileNotFoundError(f"no memory store at {path}; fill one with `svlm replay BAG --out DIR --memory {path}` "
                                "or run the node with memory on")
    if args.query.strip():
        import torch

        # One thread, as the node's embedding process: with torch's default (a thread per core) a
        # query waits 300-400 ms whenever another process holds a core (docs/benchmarks.md).
        torch.set_num_threads(1)
    store = MemoryStore(path, MemoryConfig())
    hits = store.recall(args.query, parse_time(args.since), parse_time(args.until), args.camera,
                        parse_near(args.near), args.limit, args.silent)
    waiting = store.awaiting_embedding() if args.query.strip() else 0
    if waiting:
        print(f"warning: {waiting} of the texts in {path} are not embedded yet (the node stopped before embedding "
              "them): they are found by time, camera and place, but not by words until a node with memory on "
              "opens this file", file=sys.stderr)
    for hit in hits:
        when = dt.datetime.fromtimestamp(hit.start).isoformat(sep=" ", timespec="seconds")
        span = f"{hit.end - hit.start:.0f} s"
        where = f" at ({hit.pose.x:.1f}, {hit.pose.y:.1f})" if hit.pose else ""
        text = "(silent)" if hit.silent else hit.text
        print(f"{when} [{span}] {hit.camera}{where}: {text}  (score {hit.score:.3f})")
    if not hits:  # a query no text matches gets no entry (not the `limit` least unrelated ones)
        filtered = args.since or args.until or args.camera or args.near
        query = f" {args.query.strip()!r}" if args.query.strip() else ""
        print(f"no entry matches{query}{' under these filters' if filtered else ''}")
    store.close()
    return 0
