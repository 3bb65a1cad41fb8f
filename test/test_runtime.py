"""The diagnostics' level and reason from the node's counters (runtime.RuntimeStats, runtime.diagnostic_level), and the
stamp policy (runtime.StampGate)."""
from __future__ import annotations

import time

import pytest

from mambaglue_ros.runtime import RuntimeStats, diagnostic_level


def running_stats() -> RuntimeStats:
    stats = RuntimeStats()
    for _ in range(12):
        stats.input()
    return stats


def test_frames_that_never_start_tracking_are_a_warning():
    # a stereo pair without depths (e.g. raw images): every frame is a first frame, so no pose failure is counted
    stats = running_stats()
    for _ in range(12):
        stats.processed(100.0, keypoints=500, matches=None, stop_layer=None, pose_ok=None, inlier_ratio=0.0,
                        failure="too few stereo points to start (0 < 30)")
    level, reason = diagnostic_level(stats.snapshot(), 0.0, has_camera_info=True)
    assert level == 1 and "tracking does not start" in reason and "too few stereo points" in reason  # before: ok
    # once frames are posed against a reference the warning goes
    for _ in range(100):
        stats.processed(100.0, keypoints=500, matches=200, stop_layer=4, pose_ok=True, inlier_ratio=0.8)
    assert diagnostic_level(stats.snapshot(), 0.0, has_camera_info=True) == (0, "ok")


def test_an_input_problem_is_a_warning_while_it_lasts():
    stats = running_stats()
    for _ in range(12):
        stats.processed(100.0, keypoints=500, matches=200, stop_layer=4, pose_ok=True, inlier_ratio=0.8)
    stats.problem("left/right matches are a median 13.0 px apart in rows")
    assert diagnostic_level(stats.snapshot(), 0.0, has_camera_info=True) == (
        1, "left/right matches are a median 13.0 px apart in rows")
    stats.last_problem_time = time.monotonic() - 6.0  # not seen for longer than the diagnostics' memory
    assert diagnostic_level(stats.snapshot(), 0.0, has_camera_info=True) == (0, "ok")
    stats.error("boom")  # an error still outranks it
    stats.problem("again")
    assert diagnostic_level(stats.snapshot(), 0.0, has_camera_info=True)[0] == 2


def test_input_without_output_says_what_may_explain_it():
    stats = running_stats()
    stats.first_input_time = time.monotonic() - 6.0  # images for 6 s, none processed, none counted as skipped
    level, reason = diagnostic_level(stats.snapshot(), 0.0, has_camera_info=True)
    assert level == 1 and reason.startswith("input arrives but no frame was processed for 6 s")
    assert not reason.endswith(")")  # mono: no guess (before: "stereo pairs not forming?" in mono too)
    hint = "newest right image stamped +1.0 ms from the newest left one, sync_slop 0 ms"
    assert diagnostic_level(stats.snapshot(), 0.0, has_camera_info=True, idle_hint=hint)[1].endswith(f"({hint})")
    snapshot = dict(stats.snapshot(), sync_dropped=80)  # the stereo node adds its synchroniser's drops: both shown
    assert diagnostic_level(snapshot, 0.0, has_camera_info=True, idle_hint=hint)[1].endswith(
        f"(sync_dropped=80; {hint})")
    snapshot = dict(stats.snapshot(), sync_duplicates=98)  # images that repeat stamps (a driver not stamping)
    assert diagnostic_level(snapshot, 0.0, has_camera_info=True)[1].endswith("(sync_duplicates=98)")


def test_stamp_gate_drops_late_frames_resets_on_a_jump_back_and_reports_long_gaps():
    from mambaglue_ros.runtime import NS, StampGate

    gate = StampGate(backward_reset_s=1.0, long_gap_s=5.0)
    assert gate.order(10 * NS) == ("new", 0.0) and gate.accept(10 * NS) is None  # the first frame: no gap
    assert gate.order(10 * NS) == ("late", 0.0)  # a duplicate
    assert gate.order(10 * NS - NS // 2) == ("late", 0.5)  # out of order, less than 1 s back
    assert gate.last_ns == 10 * NS  # neither moved the last stamp
    assert gate.order(11 * NS) == ("new", 0.0) and gate.accept(11 * NS) is None
    assert gate.accept(16 * NS + 1) == pytest.approx(5.0 + 1e-9)  # longer than 5 s: a gap
    assert gate.accept(21 * NS + 1) is None  # exactly 5 s: not
    assert gate.order(20 * NS + 1) == ("jumped_back", 1.0)  # 1 s back: a bag loop, the last stamp is forgotten
    assert gate.last_ns is None and gate.order(3 * NS) == ("new", 0.0) and gate.accept(3 * NS) is None
