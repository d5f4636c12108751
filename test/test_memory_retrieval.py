"""Retrieval quality against ground truth (issue 12, Hardening II): planted sentences among
distractors, found by a paraphrase sharing no content word and by their keywords; a query that
matches nothing gets nothing. The small version of scripts/bench_retrieval.py (other sentences)."""
import itertools

import numpy as np
import pytest

from svlm_ros.config import MemoryConfig
from svlm_ros.memory.questions import recollect
from svlm_ros.memory.ranking import TextIndex
from svlm_ros.memory.ranking import tokens
from svlm_ros.memory.records import Entry
from svlm_ros.memory.store import MemoryStore
from svlm_ros.memory.vectors import Embedder, quantize

DAY0 = 1_763_683_200.0  # 2025-11-21 00:00 UTC
FUNCTION_WORDS = set("a an the is are was were of in on at by to for from with and its".split())
# (planted sentence, paraphrase sharing no content word with it, keyword query)
PLANTED = [
    ("A tortoise crawls slowly across aisle 5.", "a turtle creeps along between the shelving rows", "tortoise"),
    ("An electrician repairs the broken ceiling fan in the canteen.",
     "a wiring specialist fixes the faulty overhead blower where staff eat lunch", "ceiling fan"),
    ("A red fire truck is parked outside gate 9.", "an emergency engine sits stopped beyond entrance nine",
     "fire truck gate 9"),
    ("Keys were dropped beside the photocopier.",
     "someone lost a bunch of door openers next to the document duplicating machine", "photocopier"),
    ("A swarm of bees circles the loading dock lamp.", "lots of buzzing insects fly around a light by the delivery bay",
     "bees"),
    ("Sergeant Lopez inspects the fire alarm panel.", "a police officer checks the smoke warning control box", "Lopez"),
    ("Container MSCU 448812 arrives on a flatbed trailer.",
     "a shipping box numbered four four eight eight one two comes in on an open lorry", "448812"),
    ("A toddler rides a tricycle through the warehouse.", "a small kid pedals a three-wheeler around the storage building",
     "tricycle"),
    ("Rainwater leaks through a crack in the roof above bay 14.", "drops from a storm come in via a split overhead",
     "crack roof bay 14"),
    ("A mechanic changes the oil of the yellow tractor.", "a repairman replaces the lubricant in the farm vehicle",
     "tractor"),
]
# Off-topic: no stored text is about these. (Letter salad such as "asdf jkl qwerty" lands near the
# meaning floor: MiniLM puts unknown word pieces close to everything; see docs/benchmarks.md.)
NOTHING = ["quarterly tax return deadline", "chocolate cake recipe with butter", "who won the football world cup"]


def distractors(count=1200, seed=0):
    """What a warehouse robot's cameras say all day: objects and people, colours, actions, places."""
    objects = ["forklift", "pallet", "cardboard box", "hand cart", "ladder", "plastic crate", "barrel", "delivery van",
               "trolley", "drone", "traffic cone", "tool box"]
    colours = ["red", "blue", "green", "yellow", "white", "black", "orange", "grey"]
    actions = ["is parked by", "moves past", "stands next to", "is stacked near", "waits at", "rolls toward",
               "is loaded at", "blocks the path to"]
    people = ["A worker", "A person", "A driver", "A visitor", "Two workers", "A security guard"]
    doings = ["walks past", "stands at", "carries a box to", "scans a label at", "talks on the phone near"]
    places = [f"aisle {n}" for n in range(1, 13)] + [f"dock door {n}" for n in range(1, 7)] + [
        "the loading bay", "the office corridor", "the main entrance", "the break room", "packing table 3"]
    texts = [f"A {c} {o} {a} {p}." for o, c, a, p in itertools.product(objects, colours, actions, places)]
    texts += [f"{who} in a {c} vest {d} {p}." for who, c, d, p in itertools.product(people, colours, doings, places)]
    rng = np.random.default_rng(seed)
    return [texts[k] for k in rng.choice(len(texts), size=count, replace=False)]


@pytest.fixture(scope="module")
def embedder():
    return Embedder()  # MiniLM, loaded once for the module


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory, embedder):
    """A store of distractors with the planted sentences among them (one entry each, spread in time),
    and a TextIndex of the same texts for the keyword-only and meaning-only baselines."""
    texts = distractors()
    slots = np.linspace(0, len(texts), len(PLANTED), endpoint=False).astype(int)
    for offset, (planted, _, _) in enumerate(PLANTED):
        texts.insert(int(slots[offset]) + offset, planted)
    store = MemoryStore(tmp_path_factory.mktemp("retrieval") / "memory.sqlite", MemoryConfig(), embedder)
    for start in range(0, len(texts), 256):
        store.add([Entry("/cam", DAY0 + 10 * k, DAY0 + 10 * k + 5, texts[k], False)
                   for k in range(start, min(len(texts), start + 256))])
    baseline = TextIndex()
    baseline.append(np.arange(len(texts), dtype=np.int64), quantize(embedder(texts)),
                    np.full(len(texts), -1, dtype=np.int32), texts)
    yield store, baseline, texts
    store.close()


def rank_of(order, target):
    found = np.flatnonzero(np.asarray(order) == target)
    return int(found[0]) + 1 if len(found) else 10**9


def test_the_queries_are_what_they_claim():
    for text, paraphrase, keyword in PLANTED:
        assert not (set(tokens(text)) & set(tokens(paraphrase))) - FUNCTION_WORDS, paraphrase
        assert set(tokens(keyword)) <= set(tokens(text)), keyword


@pytest.mark.parametrize("kind", ["paraphrase", "keyword"])
def test_fused_recall_finds_planted_sentences_at_least_as_well_as_either_ranking_alone(planted_store, embedder,
                                                                                        kind):
    store, baseline, texts = planted_store
    queries = [p[1] if kind == "paraphrase" else p[2] for p in PLANTED]
    vectors = quantize(embedder(queries)).astype(np.float32)
    ranks = {"keyword": [], "meaning": [], "fused": []}
    for query, vector, (planted, _, _) in zip(queries, vectors, PLANTED):
        target = texts.index(planted)
        keyword = baseline.bm25(query)
        matched = np.flatnonzero(keyword > 0)
        ranks["keyword"].append(rank_of(matched[np.argsort(-keyword[matched], kind="stable")], target))
        ranks["meaning"].append(rank_of(np.argsort(-baseline.similarity(vector), kind="stable"), target))
        found = list(dict.fromkeys(hit.text for hit in store.recall(query, limit=5)))
        ranks["fused"].append(found.index(planted) + 1 if planted in found else 10**9)
    for k in (1, 5):
        hits = {name: sum(r <= k for r in found) for name, found in ranks.items()}
        assert hits["fused"] >= max(hits["keyword"], hits["meaning"]), (k, hits, ranks)
    if kind == "keyword":
        assert all(r == 1 for r in ranks["fused"]), ranks  # a rare word, a name, a number: first
    else:
        assert sum(r <= 5 for r in ranks["meaning"]) >= 5, ranks  # the test has something to lose


def test_a_query_that_matches_nothing_gets_no_entry(planted_store):
    store, _, _ = planted_store
    for query in NOTHING:
        assert store.recall(query, limit=10) == [], query
    assert store.recall("the derivative of sine", since=DAY0, until=DAY0 + 3600, limit=10) == []  # narrow filters
    assert store.recall("tortoise", limit=10)[0].text == PLANTED[0][0]


def test_a_question_whose_words_match_nothing_still_gets_its_time_range(planted_store):
    store, _, texts = planted_store
    now = DAY0 + 10 * len(texts)
    recollection = recollect("was there a tax return in the last 10 minutes?", now, store, None, MemoryConfig(),
                             lambda line: len(line.split()))
    assert recollection.sources and all(s.end >= now - 600 for s in recollection.sources)


def test_svlm_recall_says_nothing_matches_warns_of_unembedded_texts_and_embeds_on_one_thread(tmp_path, capsys):
    import torch

    from svlm_ros.cli import main as svlm

    path = tmp_path / "memory.sqlite"
    store = MemoryStore(path, MemoryConfig(), Embedder())
    store.add([Entry("/cam", DAY0, DAY0 + 1, "A red cart is parked by the door.", False)])
    store.add([Entry("/cam", DAY0 + 2 + k, DAY0 + 3 + k, f"pallet {k} is wrapped", False) for k in range(3)],
              embed=False)  # as a node killed before its embedding thread caught up leaves them
    store.close()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        capsys.readouterr()
        assert svlm(["recall", str(path), "quarterly tax return deadline"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    out, err = capsys.readouterr()
    assert out.strip() == "no entry matches 'quarterly tax return deadline'"
    [warning] = [line for line in err.splitlines() if line.startswith("warning:")]  # one line
    assert warning.startswith("warning: 3 of the texts in") and "not embedded yet" in warning
    assert svlm(["recall", str(path), "red cart"]) == 0
    out, _ = capsys.readouterr()
    assert "A red cart is parked by the door." in out
