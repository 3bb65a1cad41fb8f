"""Tests for mambaglue_ros.pipeline: the node's two-stage pipeline, without ROS and without a network.

Synchronisation is by events and the stage's own condition, never by sleeps.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from mambaglue_ros.pipeline import (ExtractionStage, PrefetchingMatcher, RateGate, StereoPlacement, controlled_time_ms,
                                    pipeline_enabled, quiet_openmp, torch_threads)
from mambaglue_ros.runtime import FrameSlot

WAIT = 10.0  # generous: only a broken pipeline waits this long


class FakeMatcher:
    """The ``Matcher`` interface with counted calls; ``extract`` can be held on an event."""

    features = "fake"

    def __init__(self) -> None:
        self.alpha = 0.95
        self.max_keypoints = 1024
        self.extract_calls = 0
        self.match_calls = 0
        self.hold: threading.Event | None = None
        self.entered = threading.Event()
        self.fail_on: object | None = None

    def extract(self, image):
        self.extract_calls += 1
        self.entered.set()
        if self.hold is not None:
            assert self.hold.wait(WAIT)
        if image is self.fail_on:
            raise RuntimeError("bad image")
        return ("feats", int(image.sum()), self.max_keypoints)

    def match_features(self, f0, f1):
        self.match_calls += 1
        return ("match", f0, f1)


def image(value: int) -> np.ndarray:
    return np.full((4, 4), value, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------- PrefetchingMatcher
def test_prefetched_features_are_used_once_for_that_very_image():
    inner = FakeMatcher()
    m = PrefetchingMatcher(inner)
    a, a_copy = image(1), image(1)
    m.prefetch([a])
    assert inner.extract_calls == 1
    assert m.extract(a) == ("feats", 16, 1024) and inner.extract_calls == 1  # computed ahead, not again
    assert m.extract(a) == ("feats", 16, 1024) and inner.extract_calls == 2  # used once: then computed
    m.prefetch([a])
    m.extract(a_copy)  # equal content, another object: not the prefetched result
    assert inner.extract_calls == 4


def test_stereo_match_is_prefetched_for_exactly_the_prefetched_features():
    inner = FakeMatcher()
    m = PrefetchingMatcher(inner)
    left, right = image(1), image(2)
    m.prefetch([left, right], stereo=True)
    assert inner.match_calls == 1
    fl, fr = m.extract(left), m.extract(right)
    assert m.match_features(fl, fr) == ("match", fl, fr) and inner.match_calls == 1
    m.match_features(fl, fr)  # used once
    assert inner.match_calls == 2
    m.match_features(fr, fl)  # another pair is never served from the cache
    assert inner.match_calls == 3


def test_work_done_ahead_is_reported_once_with_its_own_time(monkeypatch):
    # the tracker times a prefetched extract() / match_features() at ~0 ms; take_ahead_ms() gives the node the
    # time the work took in stage 1, for the frame that used it, once
    import mambaglue_ros.pipeline as P

    clock = iter(range(0, 1000, 5))  # each perf_counter() call: 5 s later, so every kept result took 5000 ms
    monkeypatch.setattr(P.time, "perf_counter", lambda: float(next(clock)))
    m = PrefetchingMatcher(FakeMatcher())
    left, right, other = image(1), image(2), image(3)
    m.prefetch([left, right], stereo=True)
    m.prefetch([other])
    assert m.take_ahead_ms() == {}  # computed, not yet used
    fl, fr = m.extract(left), m.extract(right)
    m.match_features(fl, fr)
    assert m.take_ahead_ms() == {"extract": 10000.0, "stereo": 5000.0}
    assert m.take_ahead_ms() == {}
    m.extract(image(4))  # computed now, by the caller, who timed it itself
    assert m.take_ahead_ms() == {}
    m.forget()
    m.extract(other)  # forgotten: computed again, nothing was done ahead
    assert m.take_ahead_ms() == {}


def test_prefetch_errors_surface_on_the_frame_they_belong_to():
    inner = FakeMatcher()
    m = PrefetchingMatcher(inner)
    bad, good = image(3), image(4)
    inner.fail_on = bad
    m.prefetch([bad, good], stereo=True)  # never raises on the stage-1 thread
    assert inner.match_calls == 0  # no stereo match of a failed extraction
    with pytest.raises(RuntimeError, match="bad image"):
        m.extract(bad)
    assert m.extract(good)[0] == "feats"


def test_attributes_pass_through_and_cache_is_bounded():
    inner = FakeMatcher()
    m = PrefetchingMatcher(inner)
    m.alpha = 0.9
    assert inner.alpha == 0.9 and m.alpha == 0.9 and m.features == "fake" and m.inner is inner
    images = [image(i) for i in range(3 * PrefetchingMatcher.MAX_KEPT)]
    for im in images:
        m.prefetch([im])
    assert len(m._kept) == PrefetchingMatcher.MAX_KEPT
    m.forget()
    assert not m._kept


def test_keypoint_budget_waits_for_the_extraction_in_flight():
    inner = FakeMatcher()
    inner.hold = threading.Event()
    m = PrefetchingMatcher(inner)
    t = threading.Thread(target=m.prefetch, args=([image(1)],))
    t.start()
    assert inner.entered.wait(WAIT)
    m.max_keypoints = 256  # the worker does not block on the extraction in flight ...
    assert inner.max_keypoints == 1024 and m.max_keypoints == 256  # ... and reads what it asked for
    inner.hold.set()
    t.join(WAIT)
    assert m.extract(image(2))[2] == 256  # applied before the next extraction
    m.max_keypoints = 512  # nothing in flight: applied at once
    assert inner.max_keypoints == 512
    with pytest.raises(ValueError):
        m.max_keypoints = 0


def test_resolution_change_waits_for_the_frame_in_flight_and_keeps_a_stereo_pair_alike():
    class ScaledMatcher(FakeMatcher):
        image_scale = 1.0

        def __init__(self) -> None:
            super().__init__()
            self.scales: list[float] = []  # the scale each extraction ran at

        def extract(self, image):
            self.scales.append(self.image_scale)
            return super().extract(image)

    inner = ScaledMatcher()
    inner.hold = threading.Event()
    m = PrefetchingMatcher(inner)
    t = threading.Thread(target=m.prefetch, args=([image(1), image(2)], True))  # a stereo frame: left, right
    t.start()
    assert inner.entered.wait(WAIT)  # the left image is being extracted
    m.image_scale = 0.5  # the rate controller, from the worker: does not block, not applied to the right image
    assert m.image_scale == 0.5 and inner.image_scale == 1.0
    inner.hold.set()
    t.join(WAIT)
    assert inner.scales == [1.0, 1.0]
    m.prefetch([image(3), image(4)], stereo=True)  # the next frame's pair: both at the new scale
    assert inner.scales[2:] == [0.5, 0.5] and inner.image_scale == 0.5
    m.image_scale = 0.75  # nothing in flight: applied at once
    assert inner.image_scale == 0.75
    with pytest.raises(ValueError, match="image_scale"):
        m.image_scale = 0.0


# ---------------------------------------------------------------------------------------------- ExtractionStage
class Frame:
    def __init__(self, stamp_ns: int) -> None:
        self.stamp_ns = stamp_ns


def test_stage_extracts_ahead_newest_frame_first_and_drops_nothing_it_extracted():
    slot = FrameSlot(1)
    extracted: list[int] = []
    held = threading.Event()
    release = threading.Event()

    def prefetch(frame: Frame) -> None:
        extracted.append(frame.stamp_ns)
        if frame.stamp_ns == 1:
            held.set()
            assert release.wait(WAIT)

    stage = ExtractionStage(slot, prefetch, stamp_ns=lambda f: f.stamp_ns)
    try:
        assert len(stage) == 0
        slot.put(Frame(1))
        assert held.wait(WAIT)
        assert len(stage) == 1  # a frame in flight outside the slot: the node is not idle
        for stamp in (2, 3, 4):  # arrive while frame 1 is being extracted: only the newest waits
            slot.put(Frame(stamp))
        assert slot.dropped == 2
        release.set()
        first = stage.get(timeout=WAIT)
        assert first.stamp_ns == 1 and stage.timing.extract_ms is not None
        second = stage.get(timeout=WAIT)  # extracted while the worker held frame 1
        assert second.stamp_ns == 4
        assert extracted == [1, 4]
        latency_ms, cycle_ms, worker_ms = stage.finish()
        assert latency_ms >= cycle_ms >= stage.timing.extract_ms >= 0 and cycle_ms >= worker_ms >= 0
    finally:
        stage.close()
        slot.close()
    assert stage._thread is not None and not stage._thread.is_alive()


def test_stage_holds_at_most_one_extracted_frame():
    slot = FrameSlot(1)
    count = {"n": 0}
    done = threading.Condition()

    def prefetch(frame: Frame) -> None:
        with done:
            count["n"] += 1
            done.notify_all()

    stage = ExtractionStage(slot, prefetch)
    try:
        slot.put(Frame(1))
        with done:
            assert done.wait_for(lambda: count["n"] == 1, WAIT)
        slot.put(Frame(2))  # the hand-off is full (the worker has not taken frame 1): frame 2 waits in the slot
        with stage._cond:
            assert stage._cond.wait_for(lambda: stage._ready is not None, WAIT)
        assert count["n"] == 1 and len(slot) == 1
        assert stage.get(timeout=WAIT).stamp_ns == 1
        assert stage.get(timeout=WAIT).stamp_ns == 2
    finally:
        stage.close()
        slot.close()


def test_just_in_time_start_leaves_the_margin_of_an_extraction():
    stage = ExtractionStage(FrameSlot(1), lambda f: None, enabled=False)
    assert stage._start_at() is None  # idle worker: start now
    stage._busy_since = 100.0
    assert stage._start_at() is None  # no timing yet: start now
    stage.process_time.update(120.0)
    stage.extract_time.update(40.0)
    # the worker needs 120 ms, an extraction 40 ms (+25 %): start 70 ms after the worker took its frame
    assert stage._start_at() == pytest.approx(100.0 + 0.070)
    stage.extract_time = type(stage.extract_time)()
    stage.extract_time.update(200.0)  # extraction is the slower stage: never wait
    assert stage._start_at() < 100.0


def test_slot_knows_when_the_next_frame_is_due(monkeypatch):
    import types

    from mambaglue_ros import runtime

    clock = [10.0]
    monkeypatch.setattr(runtime, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    slot = FrameSlot(1)
    for t in (10.0, 10.05, 10.10):
        clock[0] = t
        slot.put(Frame(int(t * 100)))
        assert slot.next_due() is None  # fewer than three intervals: no estimate yet
    clock[0] = 10.15
    slot.put(Frame(1015))
    assert slot.next_due() == pytest.approx(10.20)  # last arrival + the mean interval (50 ms)
    assert slot.received == 4 and slot.dropped == 3
    assert not slot.wait_for_put(4, timeout=0.0) and slot.wait_for_put(3, timeout=0.0)


class DueSlot(FrameSlot):
    """A latest-frame slot whose next frame is due when the test says, and that tells when someone waits for it."""

    def __init__(self) -> None:
        super().__init__(1)
        self.due: float | None = None
        self.waiting = threading.Event()

    def next_due(self) -> float | None:
        return self.due

    def wait_for_put(self, received: int, timeout: float) -> bool:
        self.waiting.set()
        return super().wait_for_put(received, timeout)


def test_fresh_wait_only_for_a_frame_due_before_the_latest_useful_start():
    slot = DueSlot()
    stage = ExtractionStage(slot, lambda f: None, enabled=False)
    slot.put(Frame(1))
    slot.due = 100.030
    assert stage._fresh_wait_s(slot, now=100.0) == 0.0  # idle worker: it would wait for the extraction
    stage._busy_since = 100.0
    stage.process_time.update(120.0)
    stage.extract_time.update(40.0)
    # the worker is done at 100.120; an extraction started by 100.080 is ready in time
    assert stage._fresh_wait_s(slot, now=100.0) == pytest.approx(0.080)  # frame due at 100.030: wait for it
    slot.due = 100.090
    assert stage._fresh_wait_s(slot, now=100.0) == 0.0  # due too late: take the frame in the slot now
    slot.due = 99.990
    assert stage._fresh_wait_s(slot, now=100.0) == 0.0  # overdue: nothing to wait for
    slot.due = 100.030
    assert stage._fresh_wait_s(FrameSlot(2), now=100.0) == 0.0  # a queue keeps its frames in order
    slot.get(timeout=0)
    assert stage._fresh_wait_s(slot, now=100.0) == 0.0  # empty slot: get waits for the next frame anyway


def test_stage_waits_for_a_camera_frame_that_is_about_to_arrive():
    slot = DueSlot()
    extracted: list[int] = []
    stage = ExtractionStage(slot, lambda f: extracted.append(f.stamp_ns))
    try:
        slot.put(Frame(1))
        with stage._cond:
            assert stage._cond.wait_for(lambda: stage._ready is not None, WAIT)
        slot.put(Frame(2))  # waits in the slot: the hand-off holds frame 1
        with stage._cond:  # the worker takes 50 s, an extraction 40 s: start at once, by 10 s at the latest
            stage.process_time.value, stage.extract_time.value = 50_000.0, 40_000.0
        import time

        slot.due = time.perf_counter() + 1.0  # the camera's next frame is due in 1 s, well before that
        assert stage.get(timeout=WAIT).stamp_ns == 1  # the worker is busy with frame 1 now
        assert slot.waiting.wait(WAIT)  # stage 1 waits for the frame that is about to arrive ...
        slot.put(Frame(3))
        slot.due = None
        assert stage.get(timeout=WAIT).stamp_ns == 3  # ... and extracts it instead of the older frame 2
        assert extracted == [1, 3] and stage.fresher == 1 and slot.dropped == 1
        assert stage.diagnostics()["frames_fresher"] == 1
    finally:
        stage.close()
        slot.close()


def test_disabled_stage_is_the_slot_itself():
    slot = FrameSlot(1)
    stage = ExtractionStage(slot, lambda f: pytest.fail("no prefetch without the pipeline"), enabled=False)
    assert stage._thread is None
    slot.put(Frame(5))
    assert stage.get(timeout=WAIT).stamp_ns == 5
    latency_ms, cycle_ms, worker_ms = stage.finish()
    assert latency_ms == cycle_ms == worker_ms >= 0
    assert stage.get(timeout=0.01) is None
    assert stage.diagnostics()["pipeline"] is False and stage.diagnostics()["worker_ms"] >= 0


def test_stage_survives_a_prefetch_error_and_a_replaced_slot():
    slots = [FrameSlot(1)]

    def prefetch(frame: Frame) -> None:
        raise ValueError("front end failed")

    stage = ExtractionStage(lambda: slots[-1], prefetch)
    try:
        slots[-1].put(Frame(1))
        assert stage.get(timeout=WAIT).stamp_ns == 1  # the worker still gets it and meets the error itself
        assert stage.errors == 1 and "front end failed" in stage.last_error
        slots[-1].close()  # node deactivated: a new slot replaces the old one
        slots.append(FrameSlot(1))
        slots[-1].put(Frame(2))
        assert stage.get(timeout=WAIT).stamp_ns == 2
    finally:
        stage.close()


def test_rate_gate_in_the_stage_skips_frames_by_stamp():
    slot = FrameSlot(1)
    skipped = []
    stage = ExtractionStage(slot, lambda f: None, enabled=False, stamp_ns=lambda f: f.stamp_ns,
                            on_skip=lambda: skipped.append(1))
    stage.set_rate(10.0)
    taken = []
    for i in range(10):  # 20 Hz input
        slot.put(Frame(i * 50_000_000))
        frame = stage.get(timeout=0.01)
        if frame is not None:
            taken.append(frame.stamp_ns // 50_000_000)
    assert taken == [0, 2, 4, 6, 8] and stage.skipped == 5 and len(skipped) == 5  # counted as dropped


# ---------------------------------------------------------------------------------------------- RateGate
@pytest.mark.parametrize("input_hz, expected_hz", [(20.0, 10.0), (25.0, 10.0), (30.0, 10.0), (8.0, 8.0)])
def test_rate_gate_holds_the_target_on_average(input_hz, expected_hz):
    gate = RateGate(10.0)
    period = 1e9 / input_hz
    stamps = [int(1.7e18 + i * period) for i in range(int(20 * input_hz))]  # 20 s
    passed = [s for s in stamps if gate.admit(s)]
    rate = (len(passed) - 1) / ((passed[-1] - passed[0]) / 1e9)
    assert rate == pytest.approx(expected_hz, rel=0.03)


def test_rate_gate_keeps_its_schedule_when_a_frame_is_taken_late():
    # 2 Hz gate on a 20 Hz camera; the frame due at 500 ms is first seen at 600 ms (stage 1 was busy). The next
    # frame is due at 1000 ms, not 1100 ms: a 400 ms gap, so the mean rate stays 2 Hz (the node test checks
    # the mean gap for this reason).
    gate, ms = RateGate(2.0), 1_000_000
    assert gate.admit(0) and gate.admit(600 * ms)
    assert not gate.admit(900 * ms) and gate.admit(1000 * ms)
    assert not gate.admit(1450 * ms) and gate.admit(1500 * ms)


def test_rate_gate_restarts_after_a_jump_and_off_passes_everything():
    gate = RateGate(10.0)
    assert gate.admit(0) and not gate.admit(50_000_000) and gate.admit(100_000_000)
    assert gate.admit(10_000_000_000)  # 10 s later (gap): restart, no burst of "late" frames
    assert not gate.admit(10_050_000_000)
    assert gate.admit(5_000_000_000)  # back in time (bag loop): restart
    gate.set_rate(0.0)
    assert all(gate.admit(s) for s in range(0, 10_000_000, 1_000_000))


# ---------------------------------------------------------------------------------------------- threads, OpenMP
def test_pipeline_auto_is_on_on_the_cpu_and_on_cuda_with_stereo_or_a_target_rate():
    assert pipeline_enabled("auto", 0.0) and pipeline_enabled("auto", 10.0)  # CPU: a core per stage
    assert pipeline_enabled("auto", 10.0, cuda=True) and not pipeline_enabled("auto", 0.0, cuda=True)
    assert pipeline_enabled("auto", 0.0, stereo=True, cuda=True) and not pipeline_enabled("off", 0.0, stereo=True)
    assert pipeline_enabled("on", 0.0) and not pipeline_enabled("off", 10.0)
    with pytest.raises(ValueError):
        pipeline_enabled("yes", 0.0)


def test_controller_holds_the_stage_its_knobs_act_on():
    # mono: stage 1 is the front end alone (no knob speeds it up): the worker's time, even when extraction is
    # the busier stage; stereo: stage 1 also matches left/right, so the busier stage's time
    assert controlled_time_ms(stereo=False, cycle_ms=120.0, worker_ms=80.0) == 80.0
    assert controlled_time_ms(stereo=True, cycle_ms=120.0, worker_ms=80.0) == 120.0


def test_stereo_match_joins_the_stage_that_is_otherwise_less_busy():
    placement = StereoPlacement(weight=1.0)  # the last frame's times, to read the rule directly
    assert placement.ahead()  # nothing measured yet: stage 1, as without a placement
    # stage 1 extracts in 120 ms, the worker needs 90 ms besides a 60 ms left/right match run ahead:
    # ahead the cycle is max(120 + 60, 90) = 180 ms, in the worker max(120, 90 + 60) = 150 ms
    placement.update(extract_ms=120.0, stereo_ms=60.0, worker_ms=90.0, stereo_ahead=True)
    assert not placement.ahead()
    assert placement.diagnostics() == {"stereo_match_in": "worker"}
    # run in the worker, the match is part of the worker's time and is taken out of its own share
    placement.update(extract_ms=120.0, stereo_ms=60.0, worker_ms=150.0, stereo_ahead=False)
    assert placement.worker_time.value == 90.0 and not placement.ahead()
    # a slower worker (more keypoints): 130 ms besides the match; ahead max(180, 130) beats max(120, 190)
    placement.update(extract_ms=120.0, stereo_ms=60.0, worker_ms=190.0, stereo_ahead=False)
    assert placement.ahead()


def test_worker_computes_the_stereo_match_that_stage_1_left_out():
    inner = FakeMatcher()
    pm = PrefetchingMatcher(inner)
    left, right = np.zeros((4, 4)), np.ones((4, 4))
    pm.prefetch([left, right], stereo=False)
    assert inner.extract_calls == 2 and inner.match_calls == 0
    f0, f1 = pm.extract(left), pm.extract(right)
    assert pm.match_features(f0, f1) == ("match", f0, f1) and inner.match_calls == 1
    assert inner.extract_calls == 2  # the extractions were stage 1's
    assert sorted(pm.take_ahead_ms()) == ["extract"]  # the match was the worker's own work


def test_torch_threads_one_per_stage():
    assert torch_threads(0, 2, pipelined=True) == 1 and torch_threads(0, 8, pipelined=True) == 4
    assert torch_threads(0, 1, pipelined=True) == 1
    assert torch_threads(0, 2) == 1 and torch_threads(0, 8) == 7  # without the pipeline: all cores but one
    assert torch_threads(3, 2, pipelined=True) == 3  # an explicit value is the user's call


def test_openmp_is_told_not_to_spin_before_torch_loads():
    env = {}
    quiet_openmp(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    quiet_openmp(env)
    assert env["OMP_WAIT_POLICY"] == "ACTIVE"  # the user's choice stays
    # The node's package sets it on import, before its modules import torch.
    code = ("import os, sys; import mambaglue_ros.ros; "
            "print('torch' in sys.modules, os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.split() == ["False", "PASSIVE"], out.stderr


@pytest.mark.parametrize("user_value", [None, "0"])
def test_package_asks_for_huge_pages_before_torch_loads(user_value):
    """``import mambaglue_ros`` sets PyTorch's THP_MEM_ALLOC_ENABLE (large CPU tensors on huge pages) without
    importing torch, so torch reads it when it loads; a value the user set is kept."""
    code = "import os, sys; import mambaglue_ros; print('torch' in sys.modules, os.environ.get('THP_MEM_ALLOC_ENABLE'))"
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if user_value is not None:
        env["THP_MEM_ALLOC_ENABLE"] = user_value
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.split() == ["False", user_value or "1"], out.stderr


# ---------------------------------------------------------------------------------------------- process end
HANGS = """
import sys, threading
from mambaglue_ros.runtime import bound_teardown, dump_stacks_on_signals
dump_stacks_on_signals()
{arm}
print("ready", flush=True)
threading.Event().wait()  # the stand-in for a teardown that never returns
"""


def test_bound_teardown_ends_a_hung_process_with_status_1_and_its_stacks():
    code = HANGS.format(arm="bound_teardown(1.0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == "ready\n"
    assert "Timeout (0:00:01)!" in proc.stderr and "threading.py" in proc.stderr  # where it hung


def test_a_crash_prints_every_threads_stack():
    code = HANGS.format(arm="import ctypes; threading.Thread(target=threading.Event().wait, daemon=True).start(); "
                            "ctypes.string_at(0)")  # a segfault, as in a native library
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -11 and "Fatal Python error: Segmentation fault" in proc.stderr
    assert proc.stderr.count("Thread 0x") + proc.stderr.count("Current thread 0x") >= 2  # every thread's stack


def test_sigusr1_prints_every_threads_stack_and_the_process_goes_on():
    import signal

    proc = subprocess.Popen([sys.executable, "-c", HANGS.format(arm="")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"  # the handler is registered before this line
        proc.send_signal(signal.SIGUSR1)
        first = proc.stderr.readline()
        assert first.startswith("Thread 0x") or first.startswith("Current thread 0x")
        assert proc.poll() is None  # a dump, not an end
    finally:
        proc.kill()
        proc.communicate()


class PreparingMatcher(FakeMatcher):
    """A FakeMatcher with ``prepare`` (``Matcher.prepare``: the matcher's first self block of one image)."""

    def __init__(self) -> None:
        super().__init__()
        self.prepared: list = []
        self.fail_prepare = False

    def prepare(self, feats) -> None:
        self.prepared.append(feats)
        if self.fail_prepare:
            raise RuntimeError("prepare failed")


def test_prefetch_prepares_each_extracted_image_and_reports_its_time(monkeypatch):
    # stage 1 also runs the matcher's first self block of every image it extracted; the worker's match is then
    # shorter, and the node gets that work's time as 'prepare', once, with the frame that used it
    import mambaglue_ros.pipeline as P

    clock = iter(range(0, 1000, 5))  # each perf_counter() call: 5 s later, so every kept result took 5000 ms
    monkeypatch.setattr(P.time, "perf_counter", lambda: float(next(clock)))
    inner = PreparingMatcher()
    m = PrefetchingMatcher(inner)
    left, right = image(1), image(2)
    m.prefetch([left, right], stereo=True)
    fl, fr = m.extract(left), m.extract(right)
    assert len(inner.prepared) == 2 and inner.prepared[0] is fl and inner.prepared[1] is fr
    assert m.match_features(fl, fr) == ("match", fl, fr) and inner.match_calls == 1  # the stereo match, ahead
    assert m.take_ahead_ms() == {"extract": 10000.0, "prepare": 10000.0, "stereo": 5000.0}
    assert m.take_ahead_ms() == {}


def test_prefetch_prepares_only_the_images_the_network_will_see():
    # stereo with the left/right matches searched along the rows: the right image never meets the network, so
    # stage 1 runs no first self block for it (prepare=1: only the first image)
    inner = PreparingMatcher()
    m = PrefetchingMatcher(inner)
    left, right = image(1), image(2)
    m.prefetch([left, right], prepare=1)
    fl, fr = m.extract(left), m.extract(right)
    assert len(inner.prepared) == 1 and inner.prepared[0] is fl
    assert inner.match_calls == 0


def test_a_failed_prepare_leaves_the_match_to_the_matcher():
    inner = PreparingMatcher()
    inner.fail_prepare = True
    m = PrefetchingMatcher(inner)
    a, b = image(1), image(2)
    m.prefetch([a])  # never raises on the stage-1 thread
    m.prefetch([b])
    fa, fb = m.extract(a), m.extract(b)
    assert m.match_features(fa, fb) == ("match", fa, fb)  # computed by the matcher, which prepares itself
    assert inner.match_calls == 1 and len(inner.prepared) == 2
