"""The grounded score: a run's descriptions against the synthetic scene's truth, second by second.

chrF over the narrator's templates measures vocabulary; this score says whether a model *saw*:
which object changed (colour, shape), how (action, side) and when. This module owns the
narrator's grammar (the vocabulary, `Event`, `narrate`: the sentences `svlm synth-bag` writes,
and `parse`, which reads them back out of any text), the truth sidecar's format, and the score.
Pure Python and numpy: no model.

Truth (`BAG.truth.jsonl`, `sources.bags.TRUTH_SIDECAR`, written by synth-bag beside the bag):
one line per camera and second, `{"camera", "second", "event"}`, `event` null for a quiet second
or `{"action", "color", "shape", "side"}`; second k is [k, k+1) in seconds since the camera's
first frame (stream time); `side` is null for the actions without one (`leaves`, `stops`).

Grammar (the narrator says one sentence per event):
  appears        "A {color} {shape} appears on the {left|right}."   side: where it appears
  leaves         "The {color} {shape} leaves."
  starts_moving  "The {color} {shape} starts moving {left|right}."  side: its direction
  stops          "The {color} {shape} stops."
  turns          "The {color} {shape} turns {left|right}."          side: its new direction

Parsing (`parse`). Case, punctuation and extra words do not matter. A text is cut into
sentences at . ! ? ; and line breaks; each sentence that names a colour, a shape or an action is
one *claim*: its first colour word, its first shape word (a plural counts: "circles"), its first
action word and its first side word ("left"/"right"), each None when absent. Action words, first
one wins: appear* -> appears, leav* / disappear* -> leaves, start* / moving / moves / move / moved ->
starts_moving, stop* -> stops, turn* -> turns (so "stops moving" is stops). "left" is always a
side, never the past of "leave". A sentence that names none of these is no claim.

Alignment with a run (the rule of quality.py, in stream seconds): a window of descriptions.jsonl
covers the seconds floor(stream_start) .. ceil(stream_end) - 1 and its text belongs to its last
second. A covered second is *spoken* when a text that is neither `silent` nor `skipped` belongs
to it (several are joined in order), *silent* otherwise; seconds no window covers, or the truth
does not have, are not scored (`uncovered_seconds` counts the truth's seconds left out).

Per scored second (what counts):
- claims: the parsed claims of its text; a spoken second whose text names nothing of the grammar
  has one empty claim (it said something happened, and named nothing right); a silent second
  has none. Its *answer* is its first claim.
- in a second where the truth has an event: `color_right` when the answer's colour is the
  event's, likewise `shape_right`, `action_right`; `object_right` when colour and shape are both
  right; for an action with a side (appears, starts_moving, turns) `side_right` when the answer's
  side is the event's. A silent second is wrong on all of them. A description right on colour
  but wrong on shape counts for colour accuracy only, and is not a matching event.
- a claim *matches* the event when action, colour and shape are all the event's, and the side
  too where the action has one. tp = 1 when one of the second's claims matches, fn = 1 - tp;
  fp = the second's claims minus tp (every claim in a quiet second, every claim but the matching
  one in an event second; a wrong claim in an event second is both an fp and an fn).
- silence agrees when the second is spoken exactly when the truth has an event.

Overall (any set of seconds: a camera, a run, several bags, a bootstrap draw) from the summed
counts: `<x>_accuracy` = x_right / event_seconds (side: / sided_seconds); `event_precision` =
tp / (tp + fp), `event_recall` = tp / (tp + fn), `event_f1` = 2 tp / (2 tp + fp + fn);
`silence_agreement` = agreeing seconds / seconds. A ratio with nothing to count is None.
`by_action` gives the same figures over the event seconds of each of the truth's actions (with
`spoken`, the share of them in which the run said anything): appearances and motion apart.
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..sources.timed_text import EPS, json_lines, same_camera, second_of

log = logging.getLogger(__name__)

COLORS = ("red", "green", "blue", "yellow")  # synth.py draws them in this order
SHAPES = ("circle", "square", "triangle")
SIDES = ("left", "right")
ACTIONS = ("appears", "leaves", "starts_moving", "stops", "turns")
SIDED_ACTIONS = ("appears", "starts_moving", "turns")

COUNTS = ("seconds", "event_seconds", "quiet_seconds", "claims", "color_right", "shape_right", "object_right",
          "action_right", "sided_seconds", "side_right", "tp", "fp", "fn", "agree", "both_silent",
          "both_spoken", "run_silent_truth_event", "run_spoken_truth_quiet")


@dataclass(frozen=True)
class Event:
    """What changed in a second (the truth), or what a sentence says changed (a claim: any field
    may be None)."""

    action: Optional[str]
    color: Optional[str]
    shape: Optional[str]
    side: Optional[str] = None

    def as_dict(self) -> Dict[str, Optional[str]]:
        return {"action": self.action, "color": self.color, "shape": self.shape, "side": self.side}

    def matches(self, truth: "Event") -> bool:
        """Whether this claim is the event `truth`: action, colour, shape, and side where it has one."""
        return (self.action == truth.action and self.color == truth.color and self.shape == truth.shape
                and (truth.action not in SIDED_ACTIONS or self.side == truth.side))


# ----- the grammar -------------------------------------------------------------------------------
def narrate(event: Event) -> str:
    """The narrator's sentence for a (complete) event: the text of synth-bag's reference."""
    name = f"{event.color} {event.shape}"
    if event.action == "appears":
        return f"A {name} appears on the {event.side}."
    if event.action == "leaves":
        return f"The {name} leaves."
    if event.action == "starts_moving":
        return f"The {name} starts moving {event.side}."
    if event.action == "stops":
        return f"The {name} stops."
    if event.action == "turns":
        return f"The {name} turns {event.side}."
    raise ValueError(f"no sentence for the action {event.action!r}; the actions are {', '.join(ACTIONS)}")


SENTENCE_END = re.compile(r"[.!?;\n]+")
WORD = re.compile(r"[a-z]+")
MOVING_WORDS = ("moving", "moves", "move", "moved")


def _action_of(word: str) -> Optional[str]:
    if word.startswith("appear"):
        return "appears"
    if word.startswith(("leav", "disappear")):
        return "leaves"
    if word.startswith("start") or word in MOVING_WORDS:
        return "starts_moving"
    if word.startswith("stop"):
        return "stops"
    if word.startswith("turn"):
        return "turns"
    return None


def _shape_of(word: str) -> Optional[str]:
    if word in SHAPES:
        return word
    return word[:-1] if word.endswith("s") and word[:-1] in SHAPES else None


def parse_sentence(sentence: str) -> Optional[Event]:
    """The claim of one sentence (see the module docstring), or None when it names nothing."""
    color = shape = action = side = None
    for word in WORD.findall(sentence.lower()):
        if color is None and word in COLORS:
            color = word
        elif shape is None and _shape_of(word):
            shape = _shape_of(word)
        elif side is None and word in SIDES:
            side = word
        elif action is None and _action_of(word):
            action = _action_of(word)
    if color is None and shape is None and action is None:
        return None
    return Event(action, color, shape, side)


def parse(text: str) -> List[Event]:
    """Every claim of a description, in order; [] when it names nothing of the grammar."""
    claims = (parse_sentence(sentence) for sentence in SENTENCE_END.split(text or ""))
    return [claim for claim in claims if claim is not None]


# ----- the truth sidecar -------------------------------------------------------------------------
Truth = Dict[str, Dict[int, Optional[Event]]]  # camera -> second -> event (None: a quiet second)


def write_truth(path: Path, events: Mapping[str, Sequence[Optional[Event]]]) -> Path:
    """`path` with one line per camera and second (the module docstring's format)."""
    with Path(path).open("w") as lines:
        for camera, per_second in events.items():
            for second, event in enumerate(per_second):
                lines.write(json.dumps({"camera": camera, "second": second,
                                        "event": event.as_dict() if event else None}) + "\n")
    return Path(path)


def load_truth(path: Path) -> Truth:
    """The truth sidecar at `path`; ValueError naming the line that is not a truth line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"truth file {path} does not exist; svlm synth-bag writes BAG.truth.jsonl "
                                "beside each bag it writes")
    truth: Truth = {}
    for number, line in json_lines(path):
        try:
            item = json.loads(line)
            camera, second, event = item["camera"], item["second"], item["event"]
            if not isinstance(second, int) or second < 0:
                raise ValueError(f"second must be an integer >= 0, got {second!r}")
            truth.setdefault(camera, {})[second] = None if event is None else _truth_event(event)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path}:{number}: not a truth line ({error}); a line is "
                             '{"camera": TOPIC, "second": N, "event": null or {"action", "color", "shape", '
                             '"side"}}, as svlm synth-bag writes it') from None
    return truth


def _truth_event(item: Dict) -> Event:
    event = Event(item["action"], item["color"], item["shape"], item.get("side"))
    for value, allowed, name in ((event.action, ACTIONS, "action"), (event.color, COLORS, "color"),
                                 (event.shape, SHAPES, "shape")):
        if value not in allowed:
            raise ValueError(f"{name} {value!r} is not one of {', '.join(allowed)}")
    if event.action in SIDED_ACTIONS and event.side not in SIDES:
        raise ValueError(f"the action {event.action} needs a side, left or right; got {event.side!r}")
    return event


# ----- one run against the truth -----------------------------------------------------------------
@dataclass
class Second:
    """One scored second of one camera: the truth, what the run said, and its counts."""

    bag: str
    camera: str
    second: int
    truth: Optional[Event]
    text: str
    spoken: bool
    claims: List[Event] = field(default_factory=list)

    def counts(self) -> Dict[str, int]:
        answer = self.claims[0] if self.claims else None
        event = self.truth
        tp = int(event is not None and any(claim.matches(event) for claim in self.claims))

        def right(name: str) -> int:
            return int(event is not None and answer is not None and getattr(answer, name) == getattr(event, name))

        sided = int(event is not None and event.action in SIDED_ACTIONS)
        return {"seconds": 1, "event_seconds": int(event is not None), "quiet_seconds": int(event is None),
                "claims": len(self.claims), "color_right": right("color"), "shape_right": right("shape"),
                "object_right": right("color") * right("shape"), "action_right": right("action"),
                "sided_seconds": sided, "side_right": right("side") * sided,
                "tp": tp, "fp": len(self.claims) - tp, "fn": int(event is not None) - tp,
                "agree": int(self.spoken == (event is not None)),
                "both_silent": int(not self.spoken and event is None),
                "both_spoken": int(self.spoken and event is not None),
                "run_silent_truth_event": int(not self.spoken and event is not None),
                "run_spoken_truth_quiet": int(self.spoken and event is None)}

    def as_dict(self) -> Dict:
        return {"bag": self.bag, "camera": self.camera, "second": self.second,
                "truth": self.truth.as_dict() if self.truth else None, "text": self.text, "spoken": self.spoken,
                "claims": [claim.as_dict() for claim in self.claims], "counts": self.counts()}


def run_seconds(records: Iterable[Dict]) -> Dict[str, Dict[int, List[str]]]:
    """camera -> covered second -> the texts that belong to it (quality.py's rule, stream time)."""
    covered: Dict[str, Dict[int, List[str]]] = {}
    for r in records:
        seconds = covered.setdefault(r["camera"], {})
        first = max(0, math.floor(r["stream_start"] + EPS))
        last = max(first, second_of(r["stream_end"]))
        for k in range(first, last + 1):
            seconds.setdefault(k, [])
        text = "" if r.get("silent") or r.get("skipped") else (r.get("text") or "").strip()
        if text:
            seconds[last].append(text)
    return covered


def score_run(records: Sequence[Dict], truth: Truth, bag: str = "", camera: Optional[str] = None) -> List[Second]:
    """The scored seconds of every camera of a run (or only `camera`) that the truth has."""
    scored: List[Second] = []
    for name, seconds in sorted(run_seconds(records).items()):
        if camera is not None and not same_camera(camera, name):
            continue
        mine = next((events for topic, events in truth.items() if same_camera(topic, name)), None)
        if mine is None:
            log.warning("the truth has no camera %s (it has %s); %s has no grounded score",
                        name, ", ".join(sorted(truth)) or "none", name)
            continue
        for k in sorted(seconds):
            if k not in mine:
                continue  # past the truth's end
            text = " ".join(seconds[k])
            claims = (parse(text) or [Event(None, None, None)]) if text else []
            scored.append(Second(bag, name, k, mine[k], text, bool(text), claims))
    return scored


def uncovered(records: Sequence[Dict], truth: Truth, camera: Optional[str] = None) -> int:
    """The truth's seconds of the run's cameras that no window covers."""
    covered = run_seconds(records)
    missing = 0
    for name, seconds in covered.items():
        if camera is not None and not same_camera(camera, name):
            continue
        mine = next((events for topic, events in truth.items() if same_camera(topic, name)), {})
        missing += sum(1 for k in mine if k not in seconds)
    return missing


# ----- figures -----------------------------------------------------------------------------------
# Each figure is a ratio of two sums of counts: (numerator, denominator) as {count: weight}.
RATIOS: Dict[str, Tuple[Dict[str, int], Dict[str, int]]] = {
    "color_accuracy": ({"color_right": 1}, {"event_seconds": 1}),
    "shape_accuracy": ({"shape_right": 1}, {"event_seconds": 1}),
    "object_accuracy": ({"object_right": 1}, {"event_seconds": 1}),
    "action_accuracy": ({"action_right": 1}, {"event_seconds": 1}),
    "side_accuracy": ({"side_right": 1}, {"sided_seconds": 1}),
    "event_precision": ({"tp": 1}, {"tp": 1, "fp": 1}),
    "event_recall": ({"tp": 1}, {"tp": 1, "fn": 1}),
    "event_f1": ({"tp": 2}, {"tp": 2, "fp": 1, "fn": 1}),
    "silence_agreement": ({"agree": 1}, {"seconds": 1}),
}
METRICS = tuple(RATIOS)


def count_matrix(seconds: Sequence[Second]) -> np.ndarray:
    """One row of COUNTS per second: any draw of rows, summed, gives that draw's figures."""
    return np.array([[s.counts()[name] for name in COUNTS] for s in seconds], dtype=float).reshape(-1, len(COUNTS))


def ratios(sums: np.ndarray) -> Dict[str, np.ndarray]:
    """Every figure of summed counts (last axis: COUNTS), NaN where there is nothing to count;
    one call scores a whole stack of bootstrap draws."""
    sums = np.asarray(sums, dtype=float)

    def combine(weights: Dict[str, int]) -> np.ndarray:
        return sum(weight * sums[..., COUNTS.index(name)] for name, weight in weights.items())

    figures = {}
    for name, (numerator, denominator) in RATIOS.items():
        num, den = combine(numerator), combine(denominator)
        with np.errstate(divide="ignore", invalid="ignore"):
            figures[name] = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
    return figures


def metrics_from_counts(total: Mapping[str, float]) -> Dict[str, Optional[float]]:
    """The figures of summed counts (the module docstring's definitions); None for nothing to count."""
    values = ratios(np.array([total[name] for name in COUNTS], dtype=float))
    return {name: None if np.isnan(value) else float(value) for name, value in values.items()}


def aggregate(seconds: Sequence[Second]) -> Dict:
    """The figures of a set of seconds, with the counts they come from."""
    sums = count_matrix(seconds).sum(0)
    total = {name: int(value) for name, value in zip(COUNTS, sums)}
    return {**metrics_from_counts(total), "counts": total}


def by_action(seconds: Sequence[Second]) -> Dict[str, Dict]:
    """The figures of the event seconds of each action of the truth, in ACTIONS order (those it has):
    where a narrator fails. `spoken` is the share of those seconds in which the run said anything."""
    figures = {}
    for action in ACTIONS:
        mine = [s for s in seconds if s.truth is not None and s.truth.action == action]
        if mine:
            figures[action] = aggregate(mine)
            figures[action]["spoken"] = figures[action]["counts"]["both_spoken"] / len(mine)
    return figures


def evaluate(records: Sequence[Dict], truth: Truth, bag: str = "",
             camera: Optional[str] = None) -> Tuple[Dict, Dict[str, Dict], List[Second]]:
    """(overall, per camera, seconds) of one run against its truth."""
    seconds = score_run(records, truth, bag, camera)
    overall = {**aggregate(seconds), "uncovered_seconds": uncovered(records, truth, camera),
               "by_action": by_action(seconds)}
    cameras = {name: aggregate([s for s in seconds if s.camera == name])
               for name in sorted({s.camera for s in seconds})}
    return overall, cameras, seconds
