"""The command-line tools as a user runs them: `svlm --help`, describe-video, bench."""
import json
import subprocess
import sys
from pathlib import Path

import cv2

from svlm_ros.synthetic import moving_shapes

SVLM = [sys.executable, "-m", "svlm_ros.cli"]


def run(*args, timeout=600):
    return subprocess.run([*SVLM, *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_the_tools():
    completed = run("--help")
    assert completed.returncode == 0
    for tool in ("describe-video", "bench", "node"):
        assert tool in completed.stdout


def write_video(path: Path, seconds: float, fps: int = 10, size=(96, 64)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for i in range(int(seconds * fps)):
        writer.write(cv2.cvtColor(moving_shapes(i / fps, size[1], size[0]), cv2.COLOR_RGB2BGR))
    writer.release()


def test_describe_video_prints_one_line_per_second(tmp_path):
    video = tmp_path / "clip.avi"
    write_video(video, 3.0)
    completed = run("describe-video", str(video), "--model", "tiny-random", "--max-new-tokens", "3")
    assert completed.returncode == 0, completed.stderr[-2000:]
    lines = completed.stdout.splitlines()
    assert len(lines) == 3, completed.stdout
    for second, line in enumerate(lines):
        assert line.startswith(f"[{second:7.1f}-{second + 1:7.1f}s]")
        assert "prefill" in line and "decode" in line and "cache" in line
    assert "random weights" in completed.stderr  # the warning goes to stderr, not stdout


def test_describe_a_folder_of_frames(tmp_path):
    for i in range(5):  # 2.5 s at the default 2 frames per second
        cv2.imwrite(str(tmp_path / f"frame_{i:03d}.png"), moving_shapes(i / 2, 64, 64))
    (tmp_path / "notes.txt").write_text("not a frame")
    completed = run("describe-video", str(tmp_path), "--max-new-tokens", "2")
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert len(completed.stdout.splitlines()) == 3  # two whole seconds and the last half second


def test_describe_video_missing_path_is_a_clear_error(tmp_path):
    completed = run("describe-video", str(tmp_path / "nope.mp4"))
    assert completed.returncode == 2 and "does not exist" in completed.stderr and not completed.stdout


def test_bench_writes_json_and_plot(tmp_path):
    completed = run("bench", "--model", "tiny-random", "--seconds", "4", "--baseline-seconds", "3",
                    "--width", "64", "--height", "64", "--tokens", "3", "--out", str(tmp_path))
    assert completed.returncode == 0, completed.stderr[-2000:]
    data = json.loads((tmp_path / "bench.json").read_text())
    assert set(data["strategies"]) == {"streaming", "rerotate", "recompute", "full"}
    streaming = data["strategies"]["streaming"]
    for key in ("latency_s", "vision_s", "prefill_s", "decode_s", "cache_tokens"):
        assert len(streaming[key]) == 4
    assert streaming["peak_memory_bytes"] > 0
    assert len(data["strategies"]["recompute"]["latency_s"]) == 3
    assert all(t == 3 for t in [data["config"]["tokens_per_second"]])
    assert (tmp_path / "bench.png").stat().st_size > 1000
    assert "streaming" in completed.stdout and "ms/token" in completed.stdout


def test_bench_decode_mode_and_full_memory_limit(tmp_path):
    completed = run("bench", "--model", "tiny-random", "--seconds", "2", "--baseline-seconds", "5",
                    "--width", "64", "--height", "64", "--tokens", "3", "--strategies", "streaming", "rerotate",
                    "full", "--decode", "static", "--full-memory-limit-mib", "1", "--out", str(tmp_path))
    assert completed.returncode == 0, completed.stderr[-2000:]
    strategies = json.loads((tmp_path / "bench.json").read_text())["strategies"]
    assert strategies["streaming"]["decode_mode"] == "static"
    assert strategies["rerotate"]["decode_mode"] == "dynamic"  # its rotation lives in the per-token forward
    assert strategies["full"]["stop_reason"] == "memory limit after 1 s"
    assert strategies["full"]["seconds_run"] == 1


def test_gpu_bench_script_refuses_clearly_without_a_gpu():
    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_bench.sh"
    unknown = subprocess.run([str(script), "fastest"], capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and "unknown stage fastest" in unknown.stderr
    import torch

    if not torch.cuda.is_available():
        no_gpu = subprocess.run([str(script), "check"], capture_output=True, text=True, timeout=120,
                                env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
        assert no_gpu.returncode == 1 and "no CUDA device visible to torch" in no_gpu.stderr
