"""What goes into the memory and what comes out: a described window (`Entry`), a found one
(`Hit`), and where the robot was (`Pose`). Plain data, shared by the store, the writer, the
pose history and the questions."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class Pose:
    x: float
    y: float
    z: float = 0.0
    frame: str = "map"


@dataclass
class Entry:
    camera: str
    start: float
    end: float
    text: str
    silent: bool
    pose: Optional[Pose] = None


@dataclass
class Hit:
    id: int
    camera: str
    start: float
    end: float
    text: str
    silent: bool
    pose: Optional[Pose]
    score: float
