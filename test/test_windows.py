"""Windows by sensor time: anchoring, sampling at fps, late frames, jumps back, gaps."""
import numpy as np

from svlm_ros.engine.windows import WindowAssembler


def frame(value):
    return np.full((4, 4, 3), value, np.uint8)


def feed(assembler, stamps):
    windows, results = [], []
    for stamp in stamps:
        result = assembler.add(stamp, frame(int(stamp * 10) % 256))
        results.append(result)
        windows += result.windows
    return windows, results


def test_windows_follow_sensor_time_and_sample_at_fps():
    assembler = WindowAssembler(1.0, 2)
    windows, _ = feed(assembler, [10.0 + i / 30 for i in range(95)])  # 30 Hz for ~3.2 s
    assert [(w.start_s, w.end_s) for w in windows] == [(10.0, 11.0), (11.0, 12.0), (12.0, 13.0)]
    for w in windows:
        assert len(w.frames) == 2
        assert np.allclose(w.frame_stamps, [w.start_s, w.start_s + 0.5], atol=1 / 60)


def test_late_frame_is_dropped_and_jump_back_restarts():
    assembler = WindowAssembler(1.0, 2, restart_after_s=2.0)
    feed(assembler, [0.0, 0.5, 1.0, 1.5])
    late = assembler.add(0.7, frame(0))
    assert late.late and not late.windows
    jump = assembler.add(0.0 - 10, frame(0))
    assert jump.restarted and assembler.anchor == -10


def test_gap_in_the_camera_skips_empty_windows():
    assembler = WindowAssembler(1.0, 2)
    windows, results = feed(assembler, [0.0, 0.5, 5.2, 5.7, 6.1])
    assert [w.start_s for w in windows] == [0.0, 5.0]
    assert sum(r.skipped_empty for r in results) == 4
