"""`make narrator` (training/narrator.sh) end to end at a toy size: every step runs and hands the next
what it expects (bags without the held-out pairs, the vision stage's model to both trainings, five
scored replays). About 3-4 minutes, most of it some twenty-five tool start-ups."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ("untrained", "blind", "grounded", "grounded_swapped", "grounded_late")


def run_loop(work: Path) -> str:
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PY=sys.executable, SVLM=str(bin_dir / "svlm"), TRAIN_BAGS="2", BAG_SECONDS="8",
               HELDOUT_SECONDS="6", EPOCHS="3", STAGE_SET="scenes=2 scene_seconds=8 steps=2 batch_size=4")
    done = subprocess.run(["bash", str(ROOT / "training" / "narrator.sh"), str(work)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_narrator_loop_runs_every_step(tmp_path):
    work = tmp_path / "narrator"
    out = run_loop(work)

    stage = json.loads((work / "vision" / "model" / "svlm_vision_stage.json").read_text())
    assert stage["held_out_pairs"] == ["red:triangle", "green:circle", "blue:square"]
    assert stage["vision_stage"]["steps"] == 2  # STAGE_SET reached it
    for run, blank in (("grounded", False), ("blind", True)):
        record = json.loads((work / f"train_{run}" / "model" / "svlm_training.json").read_text())
        assert record["training"]["model"]["model"] == str(work / "vision" / "model")
        assert record["training"]["blank_frames"] is blank and record["training"]["freeze_vision"] is True
    for bag in ("train1", "train2"):
        truth = (work / "bags" / f"{bag}.truth.jsonl").read_text()
        assert '"red", "shape": "triangle"' not in truth and '"green", "shape": "circle"' not in truth
    table = out[out.index("| model |"):]
    for run in RUNS:
        summary = json.loads((work / f"replay_{run}" / "summary.json").read_text())
        assert summary["grounded"]["silence_agreement"] is not None
        assert f"| {run} |" in table
