#!/usr/bin/env python3
"""Ground-truth retrieval: does recall find a planted sentence by its words and by its meaning?

Builds memory stores of a warehouse robot's descriptions (bench_memory.py's `make_windows`: four
cameras, repeats, silences, Zipf-weighted sentences; plus the synthetic narrator's shape sentences)
at two sizes, about a 2-hour store and one of about 20,000 distinct texts, then plants 30 sentences
(`PLANTED`, one entry each, at spread-out times). Each planted sentence is queried two ways, both
written by hand: a paraphrase that shares no content word with it (checked), and a keyword query
(its rare words, names, numbers). Nonsense and off-topic queries (`NO_MATCH`) should find nothing.

For each query kind it reports hit@1, hit@5 and MRR@5 of the planted text for:
- keyword only: BM25 over the distinct texts (TextIndex.bm25), texts with no query word left out;
- meaning only: the exact cosine scan over every text's int8 vector;
- rrf: reciprocal rank fusion of those two lists (the store's fusion before issue 12), over texts;
- recall: `MemoryStore.recall` itself (what `svlm recall` and the node answer), its entries' texts in order.
and how many no-match queries `recall` answers with nothing.

Usage: .venv/bin/python scripts/bench_retrieval.py [--sizes 28800,350000] [--out bench-out-retrieval]
Results: docs/benchmarks.md ("Retrieval quality: planted sentences").
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_memory import CAMERAS, T0, CachedEmbedder, embed_texts, make_windows  # noqa: E402
from svlm_ros.config import MemoryConfig  # noqa: E402
from svlm_ros.memory.ranking import tokens
from svlm_ros.memory.records import Entry  # noqa: E402
from svlm_ros.memory.store import MemoryStore  # noqa: E402
from svlm_ros.memory.vectors import Embedder, quantize  # noqa: E402

RANK_CAP = 5  # MRR@5: a rank past this counts as a miss (what a caller asking for 5 entries sees)
RRF_K = 60  # the fusion the store used before issue 12, for the "rrf" column

# (planted sentence, paraphrase sharing no content word with it, keyword query)
PLANTED = [
    ("A golden retriever sleeps under packing table 4.",
     "a dog napping beneath the bench where parcels get boxed", "golden retriever"),
    ("A man in a wheelchair waits at the main entrance.",
     "someone seated in a mobility chair lingers by the front doorway", "wheelchair"),
    ("Water drips from a leaking pipe above rack B7.",
     "liquid trickles out of a broken tube over a storage shelf", "leaking pipe rack B7"),
    ("A pizza delivery scooter is parked at the yard gate.",
     "a moped bringing takeaway food stands near the outdoor entry", "pizza scooter"),
    ("Someone left a violin case on the conveyor belt.",
     "a musical instrument box was abandoned on the moving transport strip", "violin"),
    ("A yellow kayak leans against the office corridor wall.",
     "a small canoe is propped up in the hallway by the desks", "kayak"),
    ("Forklift number 17 has a flat tyre.",
     "lift truck seventeen is running on a deflated wheel", "forklift 17 flat tyre"),
    ("A courier named Omar signs for three parcels at dock door 2.",
     "a delivery man puts his signature down for some packages near the loading gate", "Omar"),
    ("The sprinkler above freezer room 3 is spraying water.",
     "a fire suppression nozzle over the chilled chamber is showering everything", "sprinkler freezer room 3"),
    ("A raccoon digs through the trash bin by the smoking area.",
     "a masked wild animal rummages in a garbage can where people go for cigarettes", "raccoon"),
    ("Two nurses push a hospital bed past aisle 9.",
     "a pair of medical staff roll a patient cot along a corridor between shelves", "hospital bed"),
    ("A pallet of bananas is unloaded at the truck ramp.",
     "a skid of tropical fruit comes off a lorry at the incline", "bananas"),
    ("The emergency shower at the chiller corridor is running.",
     "the safety eyewash fixture in the cold hallway is turned on", "emergency shower"),
    ("A hot air balloon is visible through the skylight.",
     "a floating craft lifted by heated gas can be seen through a roof window", "balloon skylight"),
    ("A technician replaces a fluorescent tube in the break room.",
     "a repair worker swaps out a ceiling lamp in the staff lounge", "fluorescent"),
    ("A stray goat wanders near the bike shelter.",
     "a lost farm animal with horns roams by the bicycle shed", "goat"),
    ("The label printer jammed and shows error code E42.",
     "the sticker machine is stuck and displays fault number forty-two", "E42"),
    ("A woman in a wedding dress walks through the loading bay.",
     "a bride in her gown strolls across the area where trucks get filled", "wedding dress"),
    ("A chess board sits on the maintenance bench.",
     "a game of kings and queens lies on the repair workbench", "chess"),
    ("Snow is piling up outside dock door 6.",
     "flakes of winter precipitation collect beyond the loading gate", "snow dock door 6"),
    ("A pigeon's nest sits on top of rack A3.",
     "a bird has built its home high on a storage shelf", "nest rack A3"),
    ("A security guard named Priya checks badges at the main entrance.",
     "a watchwoman inspects identity cards by the front doors", "Priya"),
    ("A vending machine in the break room is giving out free snacks.",
     "the automatic dispenser in the staff lounge hands out complimentary treats", "vending machine"),
    ("An ambulance waits with flashing lights at the yard gate.",
     "an emergency medical vehicle idles with beacons blinking by the outdoor entry", "ambulance"),
    ("A crate of live chickens is stacked near packing table 8.",
     "a box holding clucking hens is piled close to the parcel wrapping desk", "chickens"),
    ("The roller door at dock door 1 is stuck halfway.",
     "the shutter of the first loading gate got jammed midway", "roller door stuck halfway"),
    ("A man juggles three oranges near the fire exit.",
     "a guy tosses citrus fruits in the air by the emergency way out", "juggles oranges"),
    ("Pallet 3391 is missing its shipping label.",
     "the skid numbered thirty-three ninety-one lacks its dispatch sticker", "3391"),
    ("A flock of seagulls lands on the truck ramp.",
     "a group of coastal birds settles down on the lorry incline", "seagulls"),
    ("A robot vacuum cleaner bumps into a stack of tyres.",
     "an automated floor sweeper collides with a heap of rubber wheels", "robot vacuum"),
]
NO_MATCH = [
    "zqxv plorf wibble", "quarterly tax return deadline", "chocolate cake recipe with butter",
    "the stock market closed higher today", "who won the football world cup", "quantum entanglement of photons",
    "how to knit a wool scarf", "lorem ipsum dolor sit amet", "medieval castle siege with catapults",
    "a volcano erupts molten lava", "jazz saxophone solo", "the derivative of sine is cosine",
    "translate this sentence into french", "asdf jkl qwerty", "photosynthesis in green algae",
]
# Words a paraphrase may share with its planted sentence: they carry no content.
FUNCTION_WORDS = set("""a an the is are was were be been of in on at by to for from with into onto over under
above near past through across and or its his her their it this that some s up down out off""".split())
NARRATOR = [f"{start} {colour} {shape} {end}" for colour in ("red", "green", "blue", "yellow")
            for shape in ("circle", "square", "triangle")
            for start, end in (("A", "appears on the left."), ("A", "appears on the right."), ("The", "leaves."),
                               ("The", "starts moving right."), ("The", "starts moving left."), ("The", "stops."),
                               ("The", "turns left."), ("The", "turns right."))]


def check_queries() -> None:
    for text, paraphrase, keyword in PLANTED:
        shared = (set(tokens(text)) & set(tokens(paraphrase))) - FUNCTION_WORDS
        assert not shared, f"the paraphrase of {text!r} shares {shared}"
        assert set(tokens(keyword)) <= set(tokens(text)), f"the keyword query {keyword!r} is not in {text!r}"


def build(path: Path, windows_count: int, out: Path, seed: int = 0):
    """A store of `windows_count` windows with the planted sentences (and the narrator's) among them."""
    windows = make_windows(windows_count, len(CAMERAS), seed)
    extra = [t for t, _, _ in PLANTED] + NARRATOR
    assert not set(extra) & set(windows.texts), "a planted sentence is already a distractor"
    vectors, _ = embed_texts(windows.texts + extra, out)
    embedder = CachedEmbedder(Embedder(), windows.texts + extra, vectors)
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if p.exists():
            p.unlink()
    store = MemoryStore(path, MemoryConfig(), embedder)
    for start in range(0, windows_count, 64):
        store.add(windows.entries(start, min(windows_count, start + 64)))
    seconds = windows.text_index.shape[0]
    rng = np.random.default_rng(seed + 5)
    # Planted and narrator sentences: one window each, on a camera, at a time inside the run (a
    # camera's own windows there are left alone: the store merges by camera, so use a camera of its own).
    at = np.sort(rng.uniform(0, seconds - 1, len(extra)))
    store.add([Entry("/planted/image_raw", T0 + float(t), T0 + float(t) + 1, text, False)
               for t, text in zip(at, extra)])
    distinct = store.db.execute("SELECT COUNT(*) FROM texts WHERE text != ''").fetchone()[0]
    return store, distinct


def ranks_of(order: np.ndarray, target_row: int) -> int:
    found = np.flatnonzero(order == target_row)
    return int(found[0]) + 1 if len(found) else 10**9


def method_ranks(store: MemoryStore, query: str, target: str, query_vector: np.ndarray, max_probes: int) -> Dict:
    index = store._index
    row = int(index.rows_of(np.array([store.db.execute("SELECT id FROM texts WHERE text=?", (target,))
                                      .fetchone()[0]]))[0])
    keyword = index.bm25(query)
    matched = np.flatnonzero(keyword > 0)
    keyword_order = matched[np.argsort(-keyword[matched], kind="stable")]
    cosine = index.similarity(query_vector)
    meaning_order = np.argsort(-cosine, kind="stable")
    rrf: Dict[int, float] = {}
    for order in (keyword_order[:max_probes], meaning_order[:max_probes]):
        for rank, r in enumerate(order.tolist()):
            rrf[r] = rrf.get(r, 0.0) + 1.0 / (RRF_K + rank + 1)
    rrf_order = np.array(sorted(rrf, key=lambda r: (-rrf[r], r)), dtype=np.int64)
    # By distinct text, as the other columns (with limit 5 each text gives one entry first).
    texts = list(dict.fromkeys(h.text for h in store.recall(query, limit=RANK_CAP)))
    recall_rank = texts.index(target) + 1 if target in texts else 10**9
    return {"keyword": ranks_of(keyword_order, row), "meaning": ranks_of(meaning_order, row),
            "rrf": ranks_of(rrf_order, row), "recall": recall_rank}


def summarize(ranks: List[int]) -> Dict[str, float]:
    r = np.array(ranks)
    return {"hit@1": int((r <= 1).sum()), "hit@5": int((r <= 5).sum()),
            "mrr": float(np.where(r <= RANK_CAP, 1.0 / r, 0.0).mean())}


def run_size(windows_count: int, out: Path, real: Embedder) -> Dict:
    started = time.perf_counter()
    store, distinct = build(out / f"retrieval-{windows_count}.sqlite", windows_count, out)
    build_s = time.perf_counter() - started
    store.recall("warm up", limit=1)  # loads the index
    from svlm_ros.memory import store as store_module

    max_probes = store_module.MAX_PROBES
    result = {"windows": windows_count, "distinct_texts": distinct, "build_s": build_s}
    for kind, column in (("paraphrase", 1), ("keyword", 2)):
        queries = [p[column] for p in PLANTED]
        vectors = quantize(real(queries)).astype(np.float32)
        per = [method_ranks(store, q, p[0], v, max_probes) for q, p, v in zip(queries, PLANTED, vectors)]
        result[kind] = {m: summarize([r[m] for r in per]) for m in ("keyword", "meaning", "rrf", "recall")}
        result[kind]["ranks"] = per
    index = store._index
    empty = [q for q in NO_MATCH if not store.recall(q, limit=10)]
    result["no_match"] = {"queries": len(NO_MATCH), "recall_empty": len(empty),
                          "keyword_empty": sum(not (index.bm25(q) > 0).any() for q in NO_MATCH),
                          "answered": [q for q in NO_MATCH if q not in empty]}
    seconds = []
    for q in [p[1] for p in PLANTED] + [p[2] for p in PLANTED]:
        t0 = time.perf_counter()
        store.recall(q, limit=10)
        seconds.append(time.perf_counter() - t0)
    result["recall_ms_p50"] = float(np.percentile(seconds, 50) * 1000)
    store.close()
    return result


def report(results: List[Dict]) -> str:
    lines = ["| store | query kind | keyword only | meaning only | rrf (before) | recall |",
             "|---|---|---|---|---|---|"]
    for r in results:
        name = f"{r['windows']:,} windows, {r['distinct_texts']:,} texts"
        for kind in ("paraphrase", "keyword"):
            cells = [f"{s['hit@1']}/{s['hit@5']}/{s['mrr']:.2f}" for s in
                     (r[kind][m] for m in ("keyword", "meaning", "rrf", "recall"))]
            lines.append(f"| {name} | {kind} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Cells: hit@1 / hit@5 (of 30) / MRR@5. No-match queries answered with nothing by recall:")
    for r in results:
        lines.append(f"- {r['windows']:,} windows: {r['no_match']['recall_empty']}/{r['no_match']['queries']} "
                     f"(keyword only finds no word for {r['no_match']['keyword_empty']}); answered: "
                     f"{r['no_match']['answered']}; recall p50 {r['recall_ms_p50']:.1f} ms")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="28800,350000",
                        help="windows per store, comma-separated (28,800: 2 hours of 4 cameras)")
    parser.add_argument("--out", type=Path, default=Path("bench-out-retrieval"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # as the node's embedding process and `svlm recall` run it
    logging.basicConfig(level=logging.WARNING)
    check_queries()
    args.out.mkdir(parents=True, exist_ok=True)
    real = Embedder()
    results = [run_size(int(n), args.out, real) for n in args.sizes.split(",")]
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "load_average": os.getloadavg()}
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(report(results))
    print(f"load average {meta['load_average']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
