"""Windows by sensor time: anchoring, sampling at fps, late frames, jumps in time, gaps."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from svlm_ros.engine.windows import WindowAssembler


def frame(value):
    return np.full((4, 4, 3), value, np.uint8)


def feed(assembler, stamps):
    windows, results = [], []
    for stamp in stamps:
        result = assembler.add(stamp, frame(int(stamp * 10) % 256))
        results.append(result)
        if result.ended is not None:
            windows.append(result.ended)
        windows += result.windows
    return windows, results


def test_windows_follow_sensor_time_and_sample_at_fps():
    assembler = WindowAssembler(1.0, 2)
    windows, _ = feed(assembler, [10.0 + i / 30 for i in range(95)])  # 30 Hz for ~3.2 s
    assert [(w.start_s, w.end_s) for w in windows] == [(10.0, 11.0), (11.0, 12.0), (12.0, 13.0)]
    for w in windows:
        assert len(w.frames) == 2
        assert np.allclose(w.frame_stamps, [w.start_s, w.start_s + 0.5], atol=1 / 60)


def test_late_frame_is_dropped():
    assembler = WindowAssembler(1.0, 2, restart_after_s=2.0)
    feed(assembler, [0.0, 0.5, 1.0, 1.5])
    late = assembler.add(0.7, frame(0))
    assert late.late and not late.windows


def test_one_frame_far_in_the_past_is_dropped_and_the_stream_keeps_its_context():
    assembler = WindowAssembler(1.0, 2, restart_after_s=2.0, confirm_s=1.0)
    windows, _ = feed(assembler, [100.0 + i / 10 for i in range(15)])
    glitch = assembler.add(3.0, frame(0))  # a clock step for one frame
    assert glitch.held and not glitch.restarted
    windows2, results = feed(assembler, [101.5 + i / 10 for i in range(11)])
    assert not any(r.restarted for r in results) and sum(r.dropped_jump for r in results) == 1
    assert assembler.anchor == 100.0
    assert [w.index for w in windows + windows2] == [0, 1]  # the window index went on, not back to 0


def test_a_sustained_jump_back_starts_a_fresh_stream_with_no_frame_lost():
    assembler = WindowAssembler(1.0, 2, restart_after_s=2.0, confirm_s=1.0)
    feed(assembler, [100.0 + i / 10 for i in range(15)])  # window 100 done, 101 open
    windows, results = feed(assembler, [20.0 + i / 10 for i in range(25)])  # the bag loops
    assert sum(r.restarted for r in results) == 1
    restart = next(r for r in results if r.restarted)
    assert restart.ended.start_s == 101.0  # the old stream's open window is described, not lost
    new = [w for w in windows if w.start_s < 100]
    assert [(w.index, w.start_s) for w in new] == [(0, 20.0), (1, 21.0)]
    assert np.allclose(new[0].frame_stamps, [20.0, 20.5])  # the frames held before the restart are used


def test_a_jump_back_of_a_few_seconds_that_goes_on_starts_a_fresh_stream():
    """A loop back by 3 s (more than restart_after_s, less than it plus jump_confirm_s): the new
    timeline's frames come within restart_after_s of the old open window before the jump is
    confirmed; they still belong to the jump, not 'late' (found by the quirky-bag intake test)."""
    assembler = WindowAssembler(1.0, 2, restart_after_s=2.0, confirm_s=1.0)
    feed(assembler, [1.0 + i / 10 for i in range(40)])  # windows 1..3 done, 4 open
    windows, results = feed(assembler, [1.0 + i / 10 for i in range(25)])  # back to 1.0, on for 2.4 s
    assert sum(r.restarted for r in results) == 1 and not any(r.late for r in results)
    assert [(w.index, w.start_s) for w in windows] == [(3, 4.0), (0, 1.0), (1, 2.0)]


def test_one_frame_far_in_the_future_does_not_make_later_frames_late():
    assembler = WindowAssembler(1.0, 2, restart_after_s=2.0, confirm_s=1.0)
    feed(assembler, [0.0 + i / 10 for i in range(12)])
    assert assembler.add(5000.0, frame(0)).held
    windows, results = feed(assembler, [1.2 + i / 10 for i in range(20)])
    assert not any(r.late for r in results) and sum(r.dropped_jump for r in results) == 1
    assert [w.start_s for w in windows] == [1.0, 2.0]


def test_gap_in_the_camera_skips_empty_windows_once_the_camera_goes_on():
    assembler = WindowAssembler(1.0, 2, restart_after_s=2.0, confirm_s=1.0)
    windows, results = feed(assembler, [0.0, 0.5, 5.2, 5.7, 6.1, 6.3])
    assert [r.held for r in results] == [False, False, True, True, True, False]
    assert results[-1].jumped_forward
    assert [w.start_s for w in windows] == [0.0, 5.0]
    assert sum(r.skipped_empty for r in results) == 4


def test_wants_says_which_frames_the_sampler_keeps():
    assembler = WindowAssembler(1.0, 2)
    stamps = [10.0 + i / 10 for i in range(40)]
    wanted = []
    for stamp in stamps:
        wanted.append(assembler.wants(stamp))
        assembler.add(stamp, frame(1) if wanted[-1] else None)
    # Two frames per window (the ones at x.0 and x.5), and the second frame (no interval known yet).
    assert sum(wanted) == 2 * 4 + 1
    assert assembler.wants(12.9) is False  # late: before the open window, not far enough to be a jump


@given(st.lists(st.floats(min_value=0, max_value=30, allow_nan=False), min_size=1, max_size=80),
       st.lists(st.integers(min_value=0, max_value=79), max_size=4),
       st.sampled_from([0.0, 0.5, 1.0]))
def test_single_outliers_never_restart_or_stall_an_increasing_stream(base, outlier_at, confirm_s):
    """A strictly increasing 10-Hz stream with a few isolated outliers (far past or far future):
    no restart, every outlier dropped, and the windows are exactly those of the clean stream."""
    stamps = [100.0 + i / 10 for i in range(80)]
    clean, _ = feed(WindowAssembler(1.0, 2, 2.0, confirm_s), stamps)
    noisy_stamps = list(stamps)
    for k, position in enumerate(sorted(set(outlier_at), reverse=True)):
        noisy_stamps.insert(position + 1, base[k % len(base)] + (0 if k % 2 else 10_000))
    if confirm_s == 0.0:
        return  # with no confirmation every jump is believed at once: nothing to check here
    assembler = WindowAssembler(1.0, 2, 2.0, confirm_s)
    noisy, results = feed(assembler, noisy_stamps)
    assert not any(r.restarted for r in results)
    assert sum(r.dropped_jump + r.late for r in results) + (1 if assembler.pending_jump else 0) == len(set(outlier_at))
    assert [(w.index, w.start_s) for w in noisy] == [(w.index, w.start_s) for w in clean]


@given(st.lists(st.floats(min_value=-5, max_value=5, allow_nan=False), min_size=1, max_size=200))
def test_wants_false_frames_never_change_the_windows(jitter):
    """Skipping the conversion of every frame `wants` declines gives the same windows as converting all."""
    stamps, t = [], 50.0
    for j in jitter:
        t += 0.05 + abs(j) / 50 if j > -4 else -3.0  # mostly forward, a few jumps back
        stamps.append(round(t, 3))
    full, lazy = WindowAssembler(1.0, 2, 2.0, 0.5), WindowAssembler(1.0, 2, 2.0, 0.5)
    full_out, lazy_out = [], []
    for stamp in stamps:
        a = full.add(stamp, frame(1))
        b = lazy.add(stamp, frame(1) if lazy.wants(stamp) else None)
        full_out += [(w.index, w.start_s, tuple(w.frame_stamps)) for w in ([a.ended] if a.ended else []) + a.windows]
        lazy_out += [(w.index, w.start_s, tuple(w.frame_stamps)) for w in ([b.ended] if b.ended else []) + b.windows]
    # The same windows with the same number of frames; each lazily chosen frame is at most one
    # frame interval farther from its sampling instant than the nearest one.
    assert [o[:2] + (len(o[2]),) for o in lazy_out] == [o[:2] + (len(o[2]),) for o in full_out]
    gap = max((b - a for a, b in zip(stamps, stamps[1:]) if b > a), default=0)
    for (index, start, chosen), (_, _, nearest) in zip(lazy_out, full_out):
        instants = [start + k * 0.5 for k in range(2)]
        for a, b, instant in zip(chosen, nearest, instants):
            assert abs(a - instant) <= abs(b - instant) + gap + 1e-9
