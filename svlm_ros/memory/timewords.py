"""Time words in an operator's question, as a range of sensor time.

"this morning", "an hour ago", "in the last 10 minutes", "between 10:00 and 10:15", "since 9:30",
"yesterday afternoon" ... become (since, until) in seconds, relative to `now` (the stamp of the
stream's latest window, so a replayed bag is asked about in its own time) and read on the robot's
local clock. What is left of the question after the time words is what memory searches for.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Optional, Tuple

UNITS = {"second": 1, "sec": 1, "minute": 60, "min": 60, "hour": 3600, "hr": 3600, "day": 86400}
NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
           "eight": 8, "nine": 9, "ten": 10, "fifteen": 15, "twenty": 20, "thirty": 30, "forty-five": 45,
           "a few": 3, "few": 3, "a couple of": 2, "couple of": 2}
# Parts of the day, as hours on the local clock [from, to).
PARTS = {"morning": (5, 12), "afternoon": (12, 17), "evening": (17, 22)}
_NUMBER = r"(\d+(?:\.\d+)?|a few|a couple of|couple of|few|an|a|one|two|three|four|five|six|seven|eight|nine|ten|" \
          r"fifteen|twenty|thirty|forty-five)"
_UNIT = r"(second|sec|minute|min|hour|hr|day)s?"
_CLOCK = r"(\d{1,2})(?::(\d{2}))?(?::(\d{2}))?\s*(am|pm|a\.m\.|p\.m\.)?"


@dataclass
class TimeRange:
    since: Optional[float]  # seconds (sensor time); None: open
    until: Optional[float]
    words: str  # the time words found, as written

    def describe(self, tz: Optional[tzinfo] = None) -> str:
        def show(value):
            return "..." if value is None else datetime.fromtimestamp(value, tz).strftime("%Y-%m-%d %H:%M:%S")
        return f"{show(self.since)} to {show(self.until)}"


def _amount(text: str) -> float:
    text = text.lower()
    return float(NUMBERS[text]) if text in NUMBERS else float(text)


def _clock(now: datetime, hour: str, minute: Optional[str], second: Optional[str], meridiem: Optional[str]) -> datetime:
    h, m, s = int(hour), int(minute or 0), int(second or 0)
    if meridiem:
        meridiem = meridiem.replace(".", "").lower()
        if not 1 <= h <= 12:
            raise ValueError(f"{hour}{meridiem} is not a clock time")
        h = h % 12 + (12 if meridiem == "pm" else 0)
    if h > 23 or m > 59 or s > 59:
        raise ValueError(f"{hour}:{minute or '00'} is not a clock time")
    moment = now.replace(hour=h, minute=m, second=s, microsecond=0)
    # A time of day still ahead today means the last time it was that time: yesterday.
    return moment - timedelta(days=1) if moment > now + timedelta(minutes=1) else moment


def _day_start(now: datetime, days_back: int = 0) -> datetime:
    return (now - timedelta(days=days_back)).replace(hour=0, minute=0, second=0, microsecond=0)


def parse(question: str, now_s: float, tz: Optional[tzinfo] = None) -> Tuple[Optional[TimeRange], str]:
    """(the range the question's time words name, or None; the question without them).

    Raises ValueError for a range that is reversed or a clock time that does not exist."""
    now = datetime.fromtimestamp(now_s, tz)
    text = question
    lowered = question.lower()

    def found(match, since: Optional[datetime], until: Optional[datetime]):
        if since is not None and until is not None and since > until:
            raise ValueError(f"the time range in {match.group(0)!r} is reversed ({since:%H:%M} is after {until:%H:%M})")
        rest = (text[:match.start()] + text[match.end():]).strip()
        rest = re.sub(r"\s{2,}", " ", rest)
        return (TimeRange(since.timestamp() if since else None, until.timestamp() if until else None,
                          match.group(0).strip()), rest)

    patterns = [
        (rf"\b(?:between|from)\s+{_CLOCK}\s+(?:and|to|until|till|-)\s+{_CLOCK}", "between"),
        (rf"\b(?:in|during|over|within)\s+the\s+(?:last|past)\s+{_NUMBER}\s+{_UNIT}\b", "last_n"),
        (rf"\b(?:in\s+|during\s+|over\s+)?the\s+(?:last|past)\s+{_UNIT}\b", "last_unit"),
        (rf"\b{_NUMBER}\s+{_UNIT}\s+ago\b", "ago"),
        (rf"\b(?:since|after)\s+{_CLOCK}", "since"),
        (rf"\bbefore\s+{_CLOCK}", "before"),
        (rf"\b(?:at|around|about)\s+{_CLOCK}(?=\s|\?|$|\.|,)", "at"),
        (r"\b(yesterday|today|this)\s+(morning|afternoon|evening)\b", "part"),
        (r"\blast\s+night\b", "night"),
        (r"\byesterday\b", "yesterday"),
        (r"\btoday\b", "today"),
    ]
    for pattern, kind in patterns:
        match = re.search(pattern, lowered)
        if match is None:
            continue
        g = match.groups()
        if kind == "at" and g[1] is None and g[3] is None:
            continue  # "at 3" is not a clock time without minutes or am/pm ("at 3 places")
        if kind == "between":
            since = _clock(now, *g[0:4])
            until = _clock(now, *g[4:8])
            if until < since and since - until > timedelta(hours=12):
                since -= timedelta(days=1)  # "between 23:00 and 01:00"
            return found(match, since, until)
        if kind == "last_n":
            return found(match, now - timedelta(seconds=_amount(g[0]) * UNITS[g[1]]), now)
        if kind == "last_unit":
            return found(match, now - timedelta(seconds=UNITS[g[0]]), now)
        if kind == "ago":
            seconds = _amount(g[0]) * UNITS[g[1]]
            half = UNITS[g[1]] / 2  # "an hour ago": from 1.5 to 0.5 hours ago
            return found(match, now - timedelta(seconds=seconds + half), now - timedelta(seconds=max(seconds - half, 0)))
        if kind == "since":
            return found(match, _clock(now, *g[0:4]), now)
        if kind == "before":
            return found(match, None, _clock(now, *g[0:4]))
        if kind == "at":
            moment = _clock(now, *g[0:4])
            return found(match, moment - timedelta(minutes=5), moment + timedelta(minutes=5))
        if kind == "part":
            day = _day_start(now, 1 if g[0] == "yesterday" else 0)
            start, end = PARTS[g[1]]
            return found(match, day + timedelta(hours=start), min(day + timedelta(hours=end), now))
        if kind == "night":
            evening = _day_start(now, 1) + timedelta(hours=20)  # yesterday 20:00 to this morning 07:00
            return found(match, evening, min(_day_start(now) + timedelta(hours=7), now))
        if kind == "yesterday":
            return found(match, _day_start(now, 1), _day_start(now))
        if kind == "today":
            return found(match, _day_start(now), now)
    return None, question.strip()
