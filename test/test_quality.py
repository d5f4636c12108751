"""Quality metrics against hand-computed values, the bootstrap comparison, and svlm eval's files.

The fixture is built so that every value is exact by construction: window 0's hypothesis is
its reference word for word, window 1's hypothesis has the same word lengths as its reference
but no character in common. So per window BLEU, chrF = 100 and 0, ROUGE-L = 1 and 0; corpus
BLEU = 50 (every n-gram precision is (matches of window 0) / (twice that) = 1/2, brevity
penalty 1), corpus chrF = 50 (every character n-gram precision and recall is 1/2).
"""
import json
from pathlib import Path

import pytest

from svlm_ros import cli
from svlm_ros.replay import compare, quality
from svlm_ros.replay.evaluate import evaluate_run
from svlm_ros.sources.timed_text import RefSegment

CAMERA = "/cam0/image_raw"
T0 = 1_763_740_800.0
SAME = "a red cone turns left"
DISJOINT = "i big whip zippy kiwi"  # no character of SAME; word lengths 1, 3, 4, 5, 4 as in SAME


def record(k, text="", silent=None, skipped=False, camera=CAMERA, offset=T0):
    silent = (not text and not skipped) if silent is None else silent
    return {"bag": "bag", "camera": camera, "index": k, "start": offset + k, "end": offset + k + 1,
            "stream_start": float(k), "stream_end": float(k + 1), "text": text, "silent": silent,
            "skipped": skipped, "vision_s": 0.1, "prefill_s": 0.1, "decode_s": 0.1, "latency_s": 0.3,
            "generated_tokens": 3, "cache_tokens": 100}


def fixture_records(seconds=20):
    # second 2: the reference's words; second 15: disjoint words one second after the reference
    # (which ends at 15.0, so it belongs to second 14); second 18 skipped, everything else silent.
    texts = {2: SAME, 15: DISJOINT}
    return [record(k, texts.get(k, ""), skipped=(k == 18)) for k in range(seconds)]


def fixture_reference(offset=0.0):
    return [RefSegment(offset + 2.0, offset + 3.0, SAME), RefSegment(offset + 14.0, offset + 15.0, SAME)]


def write_run(run_dir: Path, records, bag=None):
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "descriptions.jsonl").open("w") as handle:
        for r in records:
            handle.write(json.dumps(r) + "\n")
    if bag is not None:
        (run_dir / "run.json").write_text(json.dumps({"bag": str(bag), "bags": [str(bag)], "cameras": [CAMERA]}))


def write_reference(path: Path, segments):
    with path.open("w") as handle:
        for s in segments:
            handle.write(json.dumps({"start": s.start, "end": s.end, "text": s.text,
                                     **({"camera": s.camera} if s.camera else {})}) + "\n")
    return path


@pytest.mark.parametrize("offset", [0.0, T0], ids=["stream-seconds", "absolute"])
def test_metrics_equal_hand_computed_values(offset):
    overall, cameras, windows = quality.evaluate(fixture_records(), fixture_reference(offset), 10.0, semantic=False)
    assert [w.reference for w in windows] == [SAME, SAME]
    assert [w.hypothesis for w in windows] == [SAME, DISJOINT]
    w0, w1 = (w.metrics for w in windows)
    assert w0["bleu"] == pytest.approx(100.0) and w1["bleu"] == 0.0
    assert w0["chrf"] == pytest.approx(100.0) and w1["chrf"] == 0.0
    assert w0["rouge_l"] == 1.0 and w1["rouge_l"] == 0.0
    assert w0["semantic_similarity"] is None  # not requested
    # window 0: ten seconds agree (spoken at 2, silent elsewhere); window 1: the reference
    # speaks in second 14 (its words end at 15.0), the run in second 15: two disagreements.
    assert w0["silence_agreement"] == 1.0 and w1["silence_agreement"] == 0.8
    assert overall["bleu"] == pytest.approx(50.0)
    assert overall["chrf"] == pytest.approx(50.0)
    assert overall["rouge_l"] == 0.5
    assert overall["silence_agreement"] == 18 / 20
    assert overall["silence"] == {"seconds": 20, "both_silent": 17, "both_spoken": 1,
                                  "run_silent_ref_spoken": 1, "run_spoken_ref_silent": 1}
    assert cameras[CAMERA] == overall
    assert windows[1].start == offset + 10 and windows[1].stream_start == 10.0


def test_window_without_reference_counts_for_silence_only():
    records = fixture_records(25)
    records[22] = record(22, "a blue ball")  # talking where the reference is silent
    overall, _, windows = quality.evaluate(records, fixture_reference(), 10.0, semantic=False)
    last = windows[2]
    assert last.reference == "" and last.hypothesis == "a blue ball"
    assert all(last.metrics[m] is None for m in quality.TEXT_METRICS)
    assert last.metrics["silence_agreement"] == 4 / 5
    assert overall["windows"] == 3 and overall["windows_with_reference"] == 2
    assert overall["rouge_l"] == 0.5 and overall["silence_agreement"] == 22 / 25


def test_words_are_assigned_to_the_second_they_end_in():
    # a 4-s, 4-word segment: its words end at 1, 2, 3, 4 -> seconds 0, 1, 2, 3
    records = [record(k) for k in range(4)]
    windows = quality.align(records, [RefSegment(0.0, 4.0, "one two three four")], window_s=2)
    assert [w.reference for w in windows] == ["one two", "three four"]
    assert sum(w.run_silent_ref_spoken for w in windows) == 4
    # an empty reference: everything is silent in it
    windows = quality.align(records, [], window_s=2)
    assert sum(w.both_silent for w in windows) == 4


@pytest.mark.parametrize("offset", [0.0, T0], ids=["stream-seconds", "absolute"])
def test_a_cue_over_several_seconds_has_its_words_in_the_same_second_for_metrics_captions_and_training(offset):
    """Issue 23: the report's captions put a 3-s cue on its last second while the metrics (and the
    training dataset) spread its words over the cue; all three now use sources.timed_text's rule."""
    from svlm_ros.config import EngineConfig
    from svlm_ros.replay.report import reference_by_second
    from svlm_ros.sources.timed_text import words_in_time_order
    from training.config import DatasetConfig
    from training.dataset import Report, StreamCutter

    segments = [RefSegment(offset + 4.0, offset + 7.0, "one two three four five six", CAMERA)]
    truth = ["", "", "", "", "one two", "three four", "five six", ""]
    metrics = [w.reference for w in quality.align([record(k) for k in range(8)], segments, window_s=1)]
    captions = reference_by_second(segments, {CAMERA: offset})
    words = [(end - offset, word) for end, word, _ in words_in_time_order(segments)]
    cutter = StreamCutter("bag", CAMERA, words, EngineConfig(), DatasetConfig(), lambda text: [], None, Report())
    assert metrics == truth
    assert [captions.get((CAMERA, k), "") for k in range(8)] == truth
    assert [cutter.answer_text(k) for k in range(8)] == truth


def test_reference_cameras_and_bad_arguments():
    records = [record(k, "x" if k == 1 else "", camera=c) for c in ("/a/image", "/b/image") for k in range(3)]
    segments = [RefSegment(1.0, 2.0, "x", "/a/image")]
    windows = quality.align(records, segments, 10)
    assert [w.camera for w in windows] == ["/a/image"]  # /b has no reference: not evaluated
    with pytest.raises(ValueError, match="whole number of seconds"):
        quality.align(records, segments, 2.5)
    with pytest.raises(ValueError, match="camera /c/image is not in the run"):
        quality.align(records, segments, 10, camera="/c/image")


def test_semantic_similarity_of_identical_text_is_one():
    _, _, windows = quality.evaluate(fixture_records(), fixture_reference(), 10.0, semantic=True)
    assert windows[0].metrics["semantic_similarity"] == pytest.approx(1.0, abs=1e-5)
    assert windows[1].metrics["semantic_similarity"] < 0.9


def scored(records, segments):
    windows = quality.align(records, segments, 10)
    quality.score_windows(windows, semantic=False)
    return windows


def five_windows():
    """Reference text in each of 5 windows; B says it at the right second, A says disjoint words."""
    segments = [RefSegment(10.0 * w + 3, 10.0 * w + 4, SAME) for w in range(5)]
    good = [record(k, SAME if k % 10 == 3 else "") for k in range(50)]
    bad = [record(k, DISJOINT if k % 10 == 6 else "") for k in range(50)]
    return segments, good, bad


def test_bootstrap_equal_runs_show_no_clear_difference():
    segments, good, _ = five_windows()
    result = compare.compare_windows(scored(good, segments), scored(good, segments), samples=200)
    assert set(result["metrics"]) == {"bleu", "chrf", "rouge_l", "silence_agreement"}
    for m in result["metrics"].values():
        assert m["delta"] == 0 and m["ci95"][0] <= 0 <= m["ci95"][1]
        assert m["verdict"] == "no clear difference"


def test_bootstrap_strictly_better_run_is_better():
    segments, good, bad = five_windows()
    result = compare.compare_windows(scored(bad, segments), scored(good, segments), samples=200, seed=3)
    for name, m in result["metrics"].items():
        assert m["delta"] > 0 and m["ci95"][0] > 0, name
        assert m["verdict"] == "B better"
    assert result["metrics"]["bleu"]["b"] == pytest.approx(100.0) and result["metrics"]["bleu"]["a"] == 0.0
    reverse = compare.compare_windows(scored(good, segments), scored(bad, segments), samples=200)
    assert {m["verdict"] for m in reverse["metrics"].values()} == {"A better"}
    again = compare.compare_windows(scored(bad, segments), scored(good, segments), samples=200, seed=3)
    assert again == result  # the seed makes it reproducible


def test_evaluate_run_writes_quality_files(tmp_path):
    run = tmp_path / "run"
    write_run(run, fixture_records())
    reference = write_reference(tmp_path / "ref.jsonl", fixture_reference())
    overall = evaluate_run(run, str(reference), semantic=False)
    assert overall["bleu"] == pytest.approx(50.0)
    document = json.loads((run / "quality.json").read_text())
    assert document["overall"] == overall and set(document["cameras"]) == {CAMERA}
    assert document["time_base"] == "stream"
    lines = [json.loads(line) for line in (run / "quality_windows.jsonl").read_text().splitlines()]
    assert [(w["camera"], w["start"], w["end"], w["reference"], w["hypothesis"], w["rouge_l"]) for w in lines] == \
        [(CAMERA, 0.0, 10.0, SAME, SAME, 1.0), (CAMERA, 10.0, 20.0, SAME, DISJOINT, 0.0)]


def test_eval_cli_one_run_and_comparison(tmp_path, capsys):
    segments, good, bad = five_windows()
    write_run(tmp_path / "a", bad)
    write_run(tmp_path / "b", good)
    reference = write_reference(tmp_path / "ref.jsonl", segments)
    assert cli.main(["eval", str(tmp_path / "b"), "--reference", str(reference), "--no-semantic"]) == 0
    assert json.loads((tmp_path / "b" / "quality.json").read_text())["overall"]["bleu"] == pytest.approx(100.0)
    assert cli.main(["eval", str(tmp_path / "a"), str(tmp_path / "b"), "--reference", str(reference),
                     "--no-semantic", "--bootstrap", "100", "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "B better" in out and "delta = B - A" in out
    assert json.loads((tmp_path / "cmp" / "comparison.json").read_text())["metrics"]["bleu"]["verdict"] == "B better"
    # clear one-line errors, no traceback
    assert cli.main(["eval", str(tmp_path / "missing"), "--reference", str(reference)]) == 2
    assert cli.main(["eval", str(tmp_path / "a"), "--reference", str(tmp_path / "none.jsonl")]) == 2
    assert cli.main(["eval", str(tmp_path / "a"), "--no-semantic"]) == 2  # no reference, no run.json
    err = capsys.readouterr().err
    assert "is not a directory" in err and "does not exist" in err and "no --reference given" in err
    assert "Traceback" not in err


def make_fleet(tmp_path, shards=2):
    """A sharded replay of three bags, each with its reference beside the bag (as synth-bag does)."""
    fleet, bags = tmp_path / "fleet", tmp_path / "bags"
    bags.mkdir()
    names = ["alpha", "bravo", "charlie"]
    for n, name in enumerate(names):
        bag = bags / name
        bag.mkdir()
        write_reference(bags / f"{name}.reference.jsonl", fixture_reference())
        records = fixture_records()
        if n == 2:
            records[15] = record(15)  # charlie says nothing in window 1
        write_run(fleet / name, records, bag)
    for shard in range(shards):
        rows = [{"bag": name, "windows": 20, "described": 19, "skipped": 1, "latency_p50_s": 0.3}
                for name in sorted(names)[shard::shards]]
        (fleet / f"summary-shard-{shard}-of-{shards}.json").write_text(json.dumps({"shard": f"{shard}/{shards}",
                                                                                    "bags": rows}))
    return fleet, bags


def test_eval_merges_shards_and_scores_every_bag(tmp_path, capsys):
    fleet, _ = make_fleet(tmp_path)
    assert cli.main(["eval", str(fleet), "--no-semantic"]) == 0
    summary = json.loads((fleet / "summary.json").read_text())
    assert summary["merged_from"] == ["summary-shard-0-of-2.json", "summary-shard-1-of-2.json"]
    rows = {row["bag"]: row for row in summary["bags"]}
    assert set(rows) == {"alpha", "bravo", "charlie"}
    assert rows["alpha"]["described"] == 19 and rows["alpha"]["latency_p50_s"] == 0.3
    assert rows["alpha"]["bleu"] == pytest.approx(50.0) and rows["alpha"]["silence_agreement"] == 0.9
    assert rows["charlie"]["silence_agreement"] == 0.95  # second 15 now agrees
    # pooled: window 0 of every bag identical, window 1 disjoint (alpha, bravo) or empty (charlie)
    assert summary["quality"]["windows_with_reference"] == 6 and summary["quality"]["rouge_l"] == 0.5
    assert (fleet / "alpha" / "quality.json").exists()
    table = (fleet / "summary.md").read_text()
    assert "| charlie |" in table and "all bags (pooled)" in table and "silence_agreement" in table


def test_eval_reference_directory_and_missing_shard(tmp_path, capsys):
    fleet, bags = make_fleet(tmp_path, shards=3)
    refs = tmp_path / "refs"
    refs.mkdir()
    for name in ("alpha", "bravo", "charlie"):
        write_reference(refs / f"{name}.jsonl", [RefSegment(2.0, 3.0, SAME)])  # no window-1 text
    assert cli.main(["eval", str(fleet), "--reference", str(refs), "--no-semantic"]) == 0
    rows = {row["bag"]: row for row in json.loads((fleet / "summary.json").read_text())["bags"]}
    assert rows["alpha"]["bleu"] == pytest.approx(100.0)
    (fleet / "summary-shard-1-of-3.json").unlink()
    assert cli.main(["eval", str(fleet), "--no-semantic"]) == 2
    err = capsys.readouterr().err
    assert "shards 1 of 3 are missing (summary-shard-1-of-3.json)" in err and "--shard I/3" in err
    (refs / "bravo.jsonl").unlink()
    (fleet / "summary-shard-0-of-3.json").unlink()
    (fleet / "summary-shard-2-of-3.json").unlink()
    assert cli.main(["eval", str(fleet), "--reference", str(refs), "--no-semantic"]) == 2
    assert "has no reference for bag bravo" in capsys.readouterr().err


def test_unsharded_fleet_summary_gains_quality_and_bad_runs_are_refused(tmp_path, capsys):
    fleet, _ = make_fleet(tmp_path, shards=1)
    (fleet / "summary-shard-0-of-1.json").rename(fleet / "summary.json")  # what a replay of several bags writes
    (fleet / "delta").mkdir()
    (fleet / "delta" / "descriptions.jsonl").write_text("")  # interrupted before its first window
    assert cli.main(["eval", str(fleet), "--no-semantic"]) == 0
    rows = {row["bag"]: row for row in json.loads((fleet / "summary.json").read_text())["bags"]}
    assert rows["bravo"]["described"] == 19 and rows["bravo"]["rouge_l"] == 0.5
    assert "rouge_l" not in rows["delta"]
    (fleet / "alpha" / "descriptions.jsonl").write_text(json.dumps({"camera": CAMERA, "text": "x"}) + "\n")
    assert cli.main(["eval", str(fleet / "alpha"), "--no-semantic"]) == 2
    assert "descriptions.jsonl:1: a window needs camera, start, end, stream_start, stream_end; missing start" \
        in capsys.readouterr().err
