#!/usr/bin/env python3
"""The memory store at scale: 7 days of 4 cameras at one window a second (2,419,200 windows).

Builds a store through MemoryStore.add in batches of 64 (as the writer thread does), from injected
descriptions of a warehouse robot's cameras (see `make_windows`), then measures recall latency
for each kind of query and a retention pass that has to bring the store back within its bounds.
The distinct texts are embedded once with the real MiniLM before the inserts (cached in --out,
keyed by the texts), so the insert rate is the store's own; the embed time is reported apart.

Usage: .venv/bin/python scripts/bench_memory.py [--quick] [--windows N] [--queries 200] [--torch-threads 1] [--out DIR]
Results: docs/benchmarks.md ("Memory store at 2.4 million windows").
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from svlm_ros.config import MemoryConfig  # noqa: E402
from svlm_ros.memory import ranking  # noqa: E402
from svlm_ros.memory.records import Entry, Pose  # noqa: E402
from svlm_ros.memory.store import MemoryStore  # noqa: E402
from svlm_ros.memory.vectors import Embedder, kmeans, nearest_cells, quantize  # noqa: E402

DAY0 = 1_763_683_200.0  # 2025-11-21 00:00 UTC
START_OF_DAY = 6 * 3600  # the first window is at 06:00, when the robot leaves its charger
T0 = DAY0 + START_OF_DAY
CAMERAS = ["/front/image_raw", "/rear/image_raw", "/left/image_raw", "/right/image_raw"]

OBJECTS = [
    ("forklift", "forklifts"), ("pallet jack", "pallet jacks"), ("hand cart", "hand carts"),
    ("pallet", "pallets"), ("cardboard box", "cardboard boxes"), ("plastic crate", "plastic crates"),
    ("barrel", "barrels"), ("ladder", "ladders"), ("traffic cone", "traffic cones"), ("tool box", "tool boxes"),
    ("delivery van", "delivery vans"), ("truck", "trucks"), ("bicycle", "bicycles"), ("scooter", "scooters"),
    ("drone", "drones"), ("mobile robot", "mobile robots"), ("conveyor belt", "conveyor belts"),
    ("shopping bag", "shopping bags"), ("backpack", "backpacks"), ("fire extinguisher", "fire extinguishers"),
    ("mop bucket", "mop buckets"), ("trash bin", "trash bins"), ("rolling cage", "rolling cages"),
    ("stack of tyres", "stacks of tyres"), ("coil of cable", "coils of cable"), ("garden hose", "garden hoses"),
    ("wooden plank", "wooden planks"), ("metal pipe", "metal pipes"), ("shrink-wrapped load", "shrink-wrapped loads"),
    ("laptop", "laptops"), ("tablet", "tablets"), ("clipboard", "clipboards"), ("helmet", "helmets"),
    ("safety vest", "safety vests"), ("pair of gloves", "pairs of gloves"), ("water bottle", "water bottles"),
    ("coffee cup", "coffee cups"), ("umbrella", "umbrellas"), ("suitcase", "suitcases"), ("dog", "dogs"),
    ("cat", "cats"), ("bird", "birds"), ("puddle", "puddles"), ("broken pallet", "broken pallets"),
    ("sack of flour", "sacks of flour"), ("gas cylinder", "gas cylinders"), ("step stool", "step stools"),
    ("signboard", "signboards"), ("folding table", "folding tables"), ("office chair", "office chairs"),
]
PEOPLE = ["a person", "a worker", "a technician", "a security guard", "a visitor", "a driver", "a cleaner",
          "a supervisor", "two workers", "a group of people", "a child", "a delivery courier"]
WEARING = ["vest", "helmet", "jacket", "hoodie", "uniform", "cap", "coat", "apron"]
COLOURS = ["red", "blue", "green", "yellow", "orange", "white", "black", "grey", "brown", "purple", "silver", "pink"]
OBJECT_ACTIONS = [
    "is parked by", "moves past", "is being loaded at", "stands next to", "is stacked near", "rolls toward",
    "blocks the path to", "is left unattended at", "is lifted onto a shelf near", "passes in front of",
    "waits at", "turns toward", "is carried away from", "is pushed toward", "has fallen over near",
    "is unloaded at", "leans against the wall by", "is wrapped in plastic at", "is checked by a scanner at",
    "sits on the floor at",
]
PEOPLE_ACTIONS = [
    "walks past", "stands at", "talks on the phone near", "carries a box toward", "scans a label at",
    "pushes a cart to", "sweeps the floor at", "checks a clipboard by", "waves at the robot near",
    "kneels to inspect a pallet at", "climbs a ladder at", "opens the door at", "closes the door at",
    "drives a forklift past", "takes a photo of", "eats lunch near", "runs toward", "points at a shelf near",
]
SCENERY = [
    "{Place} is empty.", "Nothing moves at {place}.", "The lights are off at {place}.",
    "The door at {place} is open.", "The door at {place} is closed.", "A spill covers the floor at {place}.",
    "Sunlight falls across {place}.", "The camera view of {place} is partly blocked.",
    "Smoke or dust hangs in the air at {place}.", "An alarm light flashes above {place}.",
]
ZONES = {  # name -> (x, y) centre in the map frame (metres) and its places
    "dock": ((5.0, 5.0), ["the loading bay", "dock door {n}", "the truck ramp", "the returns area"]),
    "aisles_west": ((25.0, 10.0), ["aisle {n}", "rack A{n}", "rack B{n}", "the end of aisle {n}"]),
    "aisles_east": ((55.0, 10.0), ["aisle {m}", "rack C{n}", "rack D{n}", "the end of aisle {m}"]),
    "packing": ((70.0, 30.0), ["packing table {n}", "the label printer", "the shrink-wrap machine",
                               "outbound lane {n}"]),
    "cold": ((50.0, 35.0), ["the cold storage door", "freezer room {n}", "the chiller corridor"]),
    "office": ((20.0, 35.0), ["the office corridor", "the break room door", "the main entrance", "meeting room {n}"]),
    "yard": ((-10.0, 20.0), ["the yard gate", "parking spot {n}", "the bike shelter", "the smoking area"]),
    "charging": ((2.0, 38.0), ["the charging station", "the maintenance bench", "the fire exit"]),
}
ZONE_NAMES = list(ZONES)


def plural_verb(action: str) -> str:
    first, rest = action.split(" ", 1)
    if first.endswith("ies"):
        first = first[:-3] + "y"
    elif first.endswith(("ches", "shes", "sses")):
        first = first[:-2]
    else:
        first = first[:-1]
    return f"{first} {rest}"


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def zipf_weights(n: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()


@dataclass
class Windows:
    """Every window of the run: the order is time, then camera (as the node's writer sees them)."""
    texts: List[str]  # distinct texts; index 0 is silence ("")
    text_index: np.ndarray  # (seconds, cameras) int32
    pose: np.ndarray  # (seconds, 2) float64: the robot's x, y (all cameras ride on it)
    count: int  # windows (the last second may have fewer than all cameras)

    def entries(self, start: int, stop: int) -> List[Entry]:
        """Windows start..stop-1 (in time, then camera order) as the writer hands them to the store."""
        cameras = self.text_index.shape[1]
        out = []
        for k in range(start, stop):
            t, c = divmod(k, cameras)
            index = int(self.text_index[t, c])
            x, y = self.pose[t]
            out.append(Entry(CAMERAS[c], T0 + t, T0 + t + 1, self.texts[index], index == 0,
                             Pose(float(x), float(y))))
        return out


class SentenceMaker:
    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.w_obj = zipf_weights(len(OBJECTS), 1.1)
        self.w_col = zipf_weights(len(COLOURS), 0.9)
        self.w_oact = zipf_weights(len(OBJECT_ACTIONS), 0.7)
        self.w_pact = zipf_weights(len(PEOPLE_ACTIONS), 0.7)
        self.w_people = zipf_weights(len(PEOPLE), 0.8)
        self.w_n = zipf_weights(12, 1.0)

    def place(self, zone: str) -> str:
        template = ZONES[zone][1][self.rng.integers(len(ZONES[zone][1]))]
        n = int(self.rng.choice(12, p=self.w_n)) + 1
        return template.format(n=n, m=n + 12)

    def sentence(self, zone: str) -> str:
        r = self.rng.random()
        place = self.place(zone)
        if r < 0.45:
            obj = OBJECTS[self.rng.choice(len(OBJECTS), p=self.w_obj)]
            colour = COLOURS[self.rng.choice(len(COLOURS), p=self.w_col)]
            action = OBJECT_ACTIONS[self.rng.choice(len(OBJECT_ACTIONS), p=self.w_oact)]
            if self.rng.random() < 0.15:
                count = ["Two", "Three", "Several", "A few"][self.rng.integers(4)]
                verb = action.replace("is ", "are ", 1).replace("has ", "have ", 1)
                if verb == action:  # a present-tense verb: drop its s
                    verb = plural_verb(action)
                return f"{count} {colour} {obj[1]} {verb} {place}."
            return f"{article(colour).title()} {colour} {obj[0]} {action} {place}."
        if r < 0.85:
            who = PEOPLE[self.rng.choice(len(PEOPLE), p=self.w_people)]
            colour = COLOURS[self.rng.choice(len(COLOURS), p=self.w_col)]
            wear = WEARING[self.rng.integers(len(WEARING))]
            action = PEOPLE_ACTIONS[self.rng.choice(len(PEOPLE_ACTIONS), p=self.w_pact)]
            if who.startswith("two") or who.startswith("a group"):
                action = plural_verb(action)
            clothes = f" in {article(colour)} {colour} {wear}" if self.rng.random() < 0.7 else ""
            sentence = f"{who}{clothes} {action} {place}."
            return sentence[0].upper() + sentence[1:]
        return SCENERY[self.rng.integers(len(SCENERY))].format(place=place, Place=place[0].upper() + place[1:])


def robot_path(seconds: int, rng: np.random.Generator):
    """The robot's pose and zone each second: patrols between zones by day (0.6 m/s, dwelling at
    each stop), parked at the charging station from 22:00 to 06:00."""
    pose = np.zeros((seconds, 2))
    zone = np.zeros(seconds, dtype=np.int32)
    parked = np.zeros(seconds, dtype=bool)
    charging = ZONE_NAMES.index("charging")
    x, y = ZONES["charging"][0]
    here = charging
    t = 0
    while t < seconds:
        hour = ((t + START_OF_DAY) % 86400) / 3600
        if hour >= 22 or hour < 6:  # night: parked, charging
            until = min(seconds, t + int(((6 - hour) % 24) * 3600) + 1)
            cx, cy = ZONES["charging"][0]
            pose[t:until] = (cx, cy)
            zone[t:until], parked[t:until] = charging, True
            x, y, here, t = cx, cy, charging, until
            continue
        target = int(rng.integers(len(ZONE_NAMES)))
        (tx, ty) = ZONES[ZONE_NAMES[target]][0]
        tx, ty = tx + rng.uniform(-6, 6), ty + rng.uniform(-4, 4)
        distance = math.hypot(tx - x, ty - y)
        steps = max(1, int(distance / 0.6))
        end = min(seconds, t + steps)
        for k in range(end - t):
            f = (k + 1) / steps
            pose[t + k] = (x + (tx - x) * f, y + (ty - y) * f)
            zone[t + k] = here if f < 0.5 else target
        t = end
        x, y, here = tx, ty, target
        dwell = int(rng.integers(20, 300))
        end = min(seconds, t + dwell)
        pose[t:end] = (x, y)
        zone[t:end], parked[t:end] = here, True
        t = end
    return pose, zone, parked


def make_windows(count: int, cameras: int = 4, seed: int = 0) -> Windows:
    """`count` windows (one per camera per second): injected descriptions as a stream gives them.
    Each camera repeats its last text while the scene holds (often when parked, less when moving),
    goes silent for a while now and then (mostly at night), and otherwise says something new about
    the zone the robot is in; some sentences come back again and again (Zipf-weighted parts)."""
    rng = np.random.default_rng(seed)
    seconds = -(-count // cameras)
    pose, zone, parked = robot_path(seconds, rng)
    maker = SentenceMaker(rng)
    index = {"": 0}
    texts = [""]
    out = np.zeros((seconds, cameras), dtype=np.int32)
    u = rng.random((seconds, cameras))
    v = rng.random((seconds, cameras))
    back = rng.random((seconds, cameras))
    pick = rng.integers(0, 8, (seconds, cameras))
    for c in range(cameras):
        current = 0
        recent = [0] * 8  # the scene flickers back to what this camera said a moment ago
        for t in range(seconds):
            night = not 6 * 3600 <= (t + START_OF_DAY) % 86400 < 22 * 3600
            keep = (0.995 if night else 0.95) if current == 0 else (0.8 if parked[t] else 0.5)
            if u[t, c] < keep:
                out[t, c] = current
                continue
            silent = 0.9 if night else 0.1
            if v[t, c] < silent:
                current = 0
            elif back[t, c] < 0.35 and recent[pick[t, c]]:
                current = recent[pick[t, c]]
            else:
                text = maker.sentence(ZONE_NAMES[zone[t]])
                current = index.get(text)
                if current is None:
                    current = index[text] = len(texts)
                    texts.append(text)
                recent[t % 8] = current
            out[t, c] = current
    return Windows(texts, out, pose[:seconds], count)


# ----- queries ---------------------------------------------------------------------------------
# Meaning queries: synonyms that share no word with any stored text (checked against the texts'
# vocabulary), and the word a good answer's text contains.
OBJECT_SYNONYMS = [("canine", "dog"), ("hound", "dog"), ("kitten", "cat"), ("feline", "cat"),
                   ("pushbike", "bicycle"), ("carton", "box"), ("drum", "barrel"), ("pylon", "cone"),
                   ("toolkit", "tool box"), ("minibus", "van"), ("lorry", "truck"), ("quadcopter", "drone"),
                   ("rucksack", "backpack"), ("wastebasket", "trash bin"), ("tires", "tyres"),
                   ("notebook computer", "laptop"), ("hard hat", "helmet"), ("mittens", "gloves"),
                   ("parasol", "umbrella"), ("luggage", "suitcase"), ("pigeon", "bird"), ("sparrow", "bird"),
                   ("moped", "scooter"), ("placard", "signboard"), ("lumber", "plank"), ("tube", "pipe"),
                   ("fork lift", "forklift"), ("stepladder", "ladder"), ("trolley", "cart")]
COLOUR_SYNONYMS = ["crimson", "scarlet", "navy", "azure", "emerald", "lime", "golden", "amber", "ivory",
                   "ebony", "charcoal", "violet", "chrome", "magenta"]
PLACE_WORDS = ["loading bay", "dock door", "aisle", "rack", "packing table", "cold storage", "office corridor",
               "yard gate", "charging station", "fire exit", "main entrance", "freezer room"]


def keyword_queries(rng: np.random.Generator, n: int) -> List[str]:
    out = []
    for _ in range(n):
        kind = rng.integers(5)
        obj = OBJECTS[rng.integers(len(OBJECTS))][0]
        colour = COLOURS[rng.integers(len(COLOURS))]
        if kind == 0:
            out.append(f"{colour} {obj}")
        elif kind == 1:
            out.append(obj)
        elif kind == 2:
            out.append(f"{obj} {PLACE_WORDS[rng.integers(len(PLACE_WORDS))]}")
        elif kind == 3:
            out.append(f"a person in a {colour} {WEARING[rng.integers(len(WEARING))]} near the door")
        else:
            out.append(f"{PEOPLE_ACTIONS[rng.integers(len(PEOPLE_ACTIONS))].split(' ')[0]} {obj}")
    return out


def meaning_queries(rng: np.random.Generator, n: int, vocabulary: set) -> List[tuple]:
    out = []
    for _ in range(n):
        synonym, target = OBJECT_SYNONYMS[rng.integers(len(OBJECT_SYNONYMS))]
        query = f"{COLOUR_SYNONYMS[rng.integers(len(COLOUR_SYNONYMS))]} {synonym}" if rng.random() < 0.5 else synonym
        shared = set(re.findall(r"\w+", query.lower())) & vocabulary
        assert not shared, f"meaning query {query!r} shares {shared} with the stored texts"
        out.append((query, target))
    return out


# ----- the run -----------------------------------------------------------------------------------
class CachedEmbedder:
    """Vectors of the distinct texts, computed once; anything else (the queries) goes to MiniLM."""

    def __init__(self, real: Embedder, texts: Sequence[str], vectors: np.ndarray):
        self.real = real
        self.row = {text: k for k, text in enumerate(texts)}
        self.vectors = vectors
        self.query_seconds: List[float] = []

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        rows = [self.row.get(text) for text in texts]
        if all(r is not None for r in rows):
            return self.vectors[rows]
        started = time.perf_counter()
        out = self.real(texts)
        self.query_seconds.append(time.perf_counter() - started)
        return out


def embed_texts(texts: List[str], out: Path, batch: int = 1024) -> tuple:
    from tqdm import tqdm

    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    cache = out / f"embeddings-{key}.npy"
    if cache.exists():  # the time it took when the cache was made
        note = out / f"embeddings-{key}.json"
        return np.load(cache), json.loads(note.read_text())["seconds"] if note.exists() else None
    real = Embedder()
    real(["warm up"])
    spoken = texts[1:]  # texts[0] is silence
    vectors = np.zeros((len(texts), 384), dtype=np.float32)
    started = time.perf_counter()
    for start in tqdm(range(0, len(spoken), batch), desc="embedding distinct texts", unit="batch"):
        vectors[1 + start:1 + start + batch] = real(spoken[start:start + batch])
    seconds = time.perf_counter() - started
    np.save(cache, vectors)
    (out / f"embeddings-{key}.json").write_text(json.dumps({"seconds": seconds, "texts": len(spoken),
                                                            "load_average": os.getloadavg()}))
    return vectors, seconds


def percentiles(samples: List[float]) -> tuple:
    values = np.array(samples) * 1000
    return float(np.percentile(values, 50)), float(np.percentile(values, 95)), float(values.max())


def timed(fn: Callable, args_list: List[tuple]) -> tuple:
    seconds, counts = [], []
    for args, kwargs in args_list:
        started = time.perf_counter()
        hits = fn(*args, **kwargs)
        seconds.append(time.perf_counter() - started)
        counts.append(len(hits))
    return seconds, counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=7 * 4 * 86400,
                        help="windows to store (default: 7 days x 4 cameras)")
    parser.add_argument("--quick", action="store_true", help="a small run: 50,000 windows, 100 queries of each kind")
    parser.add_argument("--queries", type=int, default=200, help="queries of each kind")
    parser.add_argument("--batch", type=int, default=64, help="windows per MemoryStore.add (the writer's batch)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench-out-memory"), help="the store and the embedding cache")
    parser.add_argument("--scale-vectors", type=int, default=500_000,
                        help="also time the meaning scan over this many texts (real vectors, perturbed); 0: skip")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch threads for MiniLM (1: as the node's embedding process and `svlm recall`)")
    parser.add_argument("--ivf-min", type=int, default=MemoryStore.IVF_MIN,
                        help="texts before meaning search uses the inverted file (the store's default; --quick: 2000)")
    args = parser.parse_args()
    if args.quick:
        args.windows, args.queries, args.scale_vectors = 50_000, 100, min(args.scale_vectors, 100_000)
        args.ivf_min = min(args.ivf_min, 2000)
    MemoryStore.IVF_MIN = args.ivf_min
    import torch
    from tqdm import tqdm

    # torch's default (a thread per core) made text queries wait on its threads whenever anything
    # else ran on the CPU (p95 478 ms with 2 threads against 17 ms with 1, same load).
    torch.set_num_threads(args.torch_threads)

    logging.basicConfig(level=logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    results: Dict[str, object] = {"windows": args.windows, "cameras": len(CAMERAS), "batch": args.batch,
                                  "torch_threads": args.torch_threads,
                                  "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                                             f"Python {platform.python_version()}"}
    rows: List[tuple] = []  # (what, figure, note)

    started = time.perf_counter()
    windows = make_windows(args.windows, len(CAMERAS), args.seed)
    results["generate_s"] = time.perf_counter() - started
    results["distinct_texts"] = len(windows.texts) - 1
    print(f"{args.windows:,} windows, {len(windows.texts) - 1:,} distinct texts "
          f"({results['generate_s']:.1f} s to generate)", flush=True)

    vectors, embed_seconds = embed_texts(windows.texts, args.out)
    results["embed_s"] = embed_seconds
    real = Embedder()
    embedder = CachedEmbedder(real, windows.texts, vectors)

    path = args.out / "memory.sqlite"
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if p.exists():
            p.unlink()
    store = MemoryStore(path, MemoryConfig(), embedder)
    train_seconds: List[float] = []
    train = store._train

    def timed_train(*a, **k):
        t0 = time.perf_counter()
        train(*a, **k)
        train_seconds.append(time.perf_counter() - t0)

    store._train = timed_train
    started = time.perf_counter()
    with tqdm(total=args.windows, desc="MemoryStore.add", unit="window", unit_scale=True, mininterval=2) as bar:
        for start in range(0, args.windows, args.batch):
            stop = min(args.windows, start + args.batch)
            store.add(windows.entries(start, stop))
            bar.update(stop - start)
    insert_seconds = time.perf_counter() - started
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    results.update(insert_s=insert_seconds, insert_rate=args.windows / insert_seconds, ivf_train_s=train_seconds,
                   rows=store.count(), file_bytes=store.size_bytes(),
                   texts_in_store=store.db.execute("SELECT COUNT(*) FROM texts").fetchone()[0] - 1)
    last_second = T0 + windows.text_index.shape[0]

    # ----- queries: reopen, as `svlm recall` or the node's service would find the file ----------
    store.close()
    store = MemoryStore(path, MemoryConfig(), embedder)
    rng = np.random.default_rng(args.seed + 1)
    vocabulary = set()
    for text in windows.texts:
        vocabulary.update(re.findall(r"\w+", text.lower()))
    n = args.queries
    days = windows.text_index.shape[0] / 86400

    def hour_range():
        start = T0 + rng.uniform(0, max(1.0, windows.text_index.shape[0] - 3600))
        return start, start + 3600

    real(["load MiniLM before the clock starts"])
    started = time.perf_counter()
    store.recall("warm up the meaning index", limit=10)
    results["first_query_s"] = time.perf_counter() - started  # loads the vectors from the file
    embedder.query_seconds.clear()
    kinds = []
    keyword = keyword_queries(rng, n)
    kinds.append(("keyword", [((q,), dict(limit=10)) for q in keyword]))
    meaning = meaning_queries(rng, n, vocabulary)
    kinds.append(("meaning (synonyms, no shared word)", [((q,), dict(limit=10)) for q, _ in meaning]))
    ranges = [hour_range() for _ in range(n)]
    kinds.append(("keyword + 1 h time range", [((q,), dict(since=a, until=b, limit=10))
                                               for q, (a, b) in zip(keyword_queries(rng, n), ranges)]))
    kinds.append(("1 h time range only (newest first)", [((), dict(since=a, until=b, limit=10))
                                                         for a, b in [hour_range() for _ in range(n)]]))
    places = windows.pose[rng.integers(0, len(windows.pose), n)]
    kinds.append(("place only, 3 m (newest first)", [((), dict(near=(float(x), float(y), 3.0), limit=10))
                                                     for x, y in places]))
    places = windows.pose[rng.integers(0, len(windows.pose), n)]
    kinds.append(("keyword + place, 3 m", [((q,), dict(near=(float(x), float(y), 3.0), limit=10))
                                           for q, (x, y) in zip(keyword_queries(rng, n), places)]))
    kinds.append(("keyword + camera", [((q,), dict(camera=CAMERAS[rng.integers(len(CAMERAS))], limit=10))
                                       for q in keyword_queries(rng, n)]))
    latency = {}
    results["load_average_before_queries"] = os.getloadavg()
    for name, calls in tqdm(kinds, desc="queries", unit="kind"):
        seconds, counts = timed(store.recall, calls)
        latency[name] = dict(zip(("p50_ms", "p95_ms", "max_ms"), percentiles(seconds)), queries=len(calls),
                             mean_hits=float(np.mean(counts)))
        if name.startswith("meaning"):
            hits = [store.recall(q, limit=10) for q, _ in meaning]
            latency[name]["top1_names_it"] = float(np.mean([bool(h) and t in h[0].text.lower()
                                                            for h, (_, t) in zip(hits, meaning)]))
            latency[name]["top10_names_it"] = float(np.mean([any(t in x.text.lower() for x in h)
                                                             for h, (_, t) in zip(hits, meaning)]))
    results["latency"] = latency
    results["load_average_after_queries"] = os.getloadavg()
    results["query_embed_p50_ms"] = percentiles(embedder.query_seconds)[0] if embedder.query_seconds else None

    # ----- the inverted file vs an exact scan -----------------------------------------------------
    index = store._index
    results["ivf_cells"] = None if index.centroids is None else len(index.centroids)
    if index.centroids is not None:
        recall_at_10, exact_s, ivf_s = [], [], []
        for q, _ in meaning[:100]:
            qv = quantize(real([q])[0]).astype(np.float32)
            t0 = time.perf_counter()
            exact = ranking.top(index.similarity(qv), 10)
            exact_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            found = index.search(qv, 10, store.NPROBE)
            ivf_s.append(time.perf_counter() - t0)
            recall_at_10.append(len(set(exact.tolist()) & set(found.tolist())) / 10)
        results["ivf"] = dict(nprobe=store.NPROBE, recall_at_10=float(np.mean(recall_at_10)),
                              exact_p50_ms=percentiles(exact_s)[0], ivf_p50_ms=percentiles(ivf_s)[0], texts=index.n)
    if args.scale_vectors:
        results["scale"] = scale_vectors(vectors[1:], args.scale_vectors, [q for q, _ in meaning[:50]], real,
                                         store.NPROBE)

    # ----- retention: bounds the 7 days exceed ----------------------------------------------------
    # The writer applies retention when it opens the store and then every hour. Here: the age
    # bound (5 of the 7 days), the next hour's pass, then the size bound (60% of the file).
    store.close()
    before = {"bytes": os.path.getsize(path), "rows": results["rows"]}
    keep_days = round(days * 5 / 7, 3)
    passes = []

    def retention_pass(name, config, now):
        store = MemoryStore(path, config, embedder)
        started = time.perf_counter()
        removed = store.apply_retention(now=now)
        seconds = time.perf_counter() - started
        oldest = store.db.execute("SELECT MIN(start) FROM entries").fetchone()[0]
        passes.append(dict(name=name, seconds=seconds, removed=removed, bytes=store.size_bytes(), rows=store.count(),
                           oldest_age_days=None if oldest is None else (now - oldest) / 86400,
                           retention_days=config.retention_days, max_bytes=config.max_bytes))
        return store

    retention_pass(f"age: retention_days={keep_days:g}", MemoryConfig(retention_days=keep_days), last_second).close()
    retention_pass("the next hour's pass (age)", MemoryConfig(retention_days=keep_days), last_second + 3600).close()
    size_bound = int(before["bytes"] * 0.6)
    store = retention_pass(f"size: max_bytes={size_bound / 2**20:.0f} MiB (60% of the 7 days)",
                           MemoryConfig(retention_days=keep_days, max_bytes=size_bound), last_second + 3600)
    seconds, _ = timed(store.recall, [((q,), dict(limit=10)) for q in keyword[:50]])
    results["retention"] = dict(before=before, passes=passes, keyword_p50_ms_after=percentiles(seconds[1:])[0],
                                keyword_p95_ms_after=percentiles(seconds[1:])[1], first_query_after_s=seconds[0],
                                load_average=os.getloadavg())
    store.close()

    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print()
    print(report(results))
    return 0


def scale_vectors(real_vectors: np.ndarray, total: int, queries: List[str], real: Embedder, nprobe: int) -> dict:
    """The meaning scan over `total` texts: the real vectors plus perturbed copies (unit length),
    exact int8 scan vs the inverted file (trained as the store trains it)."""
    rng = np.random.default_rng(7)
    picks = rng.integers(0, len(real_vectors), total)
    synthetic = real_vectors[picks] + rng.normal(0, 0.25 / math.sqrt(384), (total, 384)).astype(np.float32)
    synthetic /= np.linalg.norm(synthetic, axis=1, keepdims=True)
    index = ranking.TextIndex()
    cells_n = int(min(4096, max(16, round(math.sqrt(total)))))
    t0 = time.perf_counter()
    sample = synthetic[rng.choice(total, size=min(total, 64 * cells_n), replace=False)]
    centroids = kmeans(sample, cells_n)
    q8 = quantize(synthetic)
    cells = nearest_cells(q8, centroids)
    train_s = time.perf_counter() - t0
    index.append(np.arange(total, dtype=np.int64), q8, cells, [""] * total)
    query_vectors = quantize(real(queries)).astype(np.float32)
    exact_s, ivf_s, hit = [], [], []
    for qv in query_vectors:
        t = time.perf_counter()
        exact = ranking.top(index.similarity(qv), 10)
        exact_s.append(time.perf_counter() - t)
        index.centroids = centroids
        t = time.perf_counter()
        found = index.search(qv, 10, nprobe)
        ivf_s.append(time.perf_counter() - t)
        index.centroids = None
        hit.append(len(set(exact.tolist()) & set(found.tolist())) / 10)
    return dict(texts=total, cells=cells_n, nprobe=nprobe, train_s=train_s, exact_p50_ms=percentiles(exact_s)[0],
                exact_p95_ms=percentiles(exact_s)[1], ivf_p50_ms=percentiles(ivf_s)[0],
                ivf_p95_ms=percentiles(ivf_s)[1], recall_at_10=float(np.mean(hit)))


def report(r: dict) -> str:
    mib = lambda b: f"{b / 2**20:,.0f} MiB"  # noqa: E731
    lines = ["| what | figure |", "|---|---|"]
    lines.append(f"| windows stored (4 cameras, 1 per second) | {r['windows']:,} |")
    lines.append(f"| torch threads (MiniLM) | {r.get('torch_threads', 'default')} |")
    lines.append(f"| distinct texts (embedded) | {r['distinct_texts']:,} |")
    if r.get("embed_s"):
        lines.append(f"| embedding them once (MiniLM, CPU) | {r['embed_s']:.0f} s "
                     f"({r['distinct_texts'] / r['embed_s']:,.0f} texts/s) |")
    else:
        lines.append("| embedding them once (MiniLM, CPU) | cached from an earlier run |")
    lines.append(f"| rows after merging repeats | {r['rows']:,} |")
    lines.append(f"| insert rate through MemoryStore.add, batches of {r['batch']} | {r['insert_rate']:,.0f} windows/s "
                 f"({r['insert_s']:.0f} s; meaning-index training {sum(r['ivf_train_s']):.1f} s of it, "
                 f"{len(r['ivf_train_s'])} times) |")
    lines.append(f"| file size (checkpointed) | {mib(r['file_bytes'])} "
                 f"({r['file_bytes'] / r['windows']:.0f} B per window) |")
    lines.append(f"| load average (1, 5, 15 min) before / after the queries | "
                 f"{', '.join(f'{x:.1f}' for x in r['load_average_before_queries'])} / "
                 f"{', '.join(f'{x:.1f}' for x in r['load_average_after_queries'])} |")
    lines.append(f"| first query after opening (loads the vectors) | {r['first_query_s'] * 1000:.0f} ms |")
    if r.get("query_embed_p50_ms"):
        lines.append("| embedding one query (MiniLM), p50, part of every text query below | "
                     f"{r['query_embed_p50_ms']:.1f} ms |")
    lines.append("")
    lines.append("| query (limit 10) | p50 ms | p95 ms | max ms | mean hits |")
    lines.append("|---|---|---|---|---|")
    for name, q in r["latency"].items():
        extra = ""
        if "top1_names_it" in q:
            extra = f" (top hit names the object: {q['top1_names_it']:.0%}; in the top 10: {q['top10_names_it']:.0%})"
        lines.append(f"| {name}{extra} | {q['p50_ms']:.1f} | {q['p95_ms']:.1f} | {q['max_ms']:.1f} | "
                     f"{q['mean_hits']:.1f} |")
    lines.append("")
    if r.get("ivf"):
        i = r["ivf"]
        lines.append(f"Meaning index: {r['ivf_cells']} cells over {i['texts']:,} texts, nprobe {i['nprobe']}: "
                     f"recall@10 vs the exact scan {i['recall_at_10']:.2f}; scan {i['ivf_p50_ms']:.1f} ms vs exact "
                     f"{i['exact_p50_ms']:.1f} ms (p50).")
    if r.get("scale"):
        s = r["scale"]
        lines.append(f"At {s['texts']:,} texts (perturbed copies of the real vectors): exact int8 scan p50 "
                     f"{s['exact_p50_ms']:.1f} ms / p95 {s['exact_p95_ms']:.1f} ms; inverted file ({s['cells']} cells, "
                     f"nprobe {s['nprobe']}) p50 {s['ivf_p50_ms']:.1f} ms / p95 {s['ivf_p95_ms']:.1f} ms, recall@10 "
                     f"{s['recall_at_10']:.2f}; training {s['train_s']:.0f} s.")
    t = r["retention"]
    lines.append("")
    lines.append(f"Retention (the 7-day store held {mib(t['before']['bytes'])}, {t['before']['rows']:,} rows):")
    lines.append("")
    lines.append("| retention pass | time | entries deleted | file after (with WAL) | rows after | oldest entry |")
    lines.append("|---|---|---|---|---|---|")
    for p in t["passes"]:
        age = "-" if p["oldest_age_days"] is None else f"{p['oldest_age_days']:.2f} days"
        lines.append(f"| {p['name']} | {p['seconds']:.2f} s | {p['removed']:,} | {mib(p['bytes'])} | "
                     f"{p['rows']:,} | {age} |")
    lines.append("")
    lines.append("After retention: the first keyword query (reloads the texts) "
                 f"{t['first_query_after_s'] * 1000:.0f} ms, "
                 f"then p50 {t['keyword_p50_ms_after']:.1f} ms, p95 {t['keyword_p95_ms_after']:.1f} ms (load average "
                 f"{', '.join(f'{x:.1f}' for x in t['load_average'])}).")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
