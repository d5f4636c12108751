"""A recall's filters as SQL (`Filters`: time range, camera, place, silence) and the entries
found inside narrow filters (`Inside`), which the store ranks instead of every text. Also how a
row of the entries becomes a `Hit` (`HIT_COLUMNS`, `hit`)."""
from __future__ import annotations

import math
from typing import List, Tuple

import numpy as np

from .records import Hit, Pose

HIT_COLUMNS = "e.id, e.camera, e.start, e.end, t.text, e.silent, e.x, e.y, e.z, e.frame"


def hit(row: Tuple, score: float) -> Hit:
    """A row of HIT_COLUMNS as a Hit with this score."""
    pose = Pose(row[6], row[7], row[8] or 0.0, row[9] or "map") if row[6] is not None else None
    return Hit(row[0], row[1], row[2], row[3], row[4], bool(row[5]), pose, score)


class Inside:
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


class Filters:
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
