"""Plain-Python run-time pieces of the node: the latest-frame slot and the statistics behind diagnostics.

Kept free of ROS so tests (and the replay tool) use them directly.
"""
from __future__ import annotations

import collections
import faulthandler
import math
import signal
import threading
import time
from typing import Any, Deque

import numpy as np


# How long a node process may take to tear down (node, DDS participant, interpreter exit) once it has decided to
# end. Normally well under a second; a failed start was once seen still alive after 180 s in CI (test_reliability).
TEARDOWN_TIMEOUT_S = 20.0


def dump_stacks_on_signals() -> None:
    """``kill -USR1 <pid>`` prints every thread's Python stack to stderr: a process that hangs can say where. A
    crash (SIGSEGV, SIGFPE, SIGABRT, SIGBUS, SIGILL: e.g. in a native library such as the DDS stack) prints them
    too before the process dies, instead of ending with no output."""
    faulthandler.enable(all_threads=True)
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)


def bound_teardown(timeout_s: float = TEARDOWN_TIMEOUT_S) -> None:
    """From now on the process ends within ``timeout_s``: if it is still alive then (a hang in the DDS teardown,
    an interpreter-exit finaliser), faulthandler prints "Timeout (...)!" and every thread's stack to stderr and
    exits with status 1. Its watchdog is a C thread, so it fires even while the hang holds the GIL. For a
    process's entry point only (``main``): it ends the whole process."""
    faulthandler.dump_traceback_later(timeout_s, exit=True)


class MeanTime:
    """Exponential moving average of a duration [ms] (None before the first sample)."""

    def __init__(self, weight: float = 0.2) -> None:
        self.weight = float(weight)
        self.value: float | None = None

    def update(self, ms: float) -> float:
        if math.isfinite(ms) and ms >= 0:
            self.value = ms if self.value is None else (1 - self.weight) * self.value + self.weight * ms
        return self.value if self.value is not None else ms


NS = 1_000_000_000
BACKWARD_RESET_S = 1.0  # a stamp this far back is a bag loop / clock reset, not a late frame
# A forward stamp gap longer than this (dropped frames, paused bag, camera restart): the frame is still matched against
# the reference (the relative pose does not depend on time, and a failed match is reported as a pose failure), but the
# average motion over the gap is no velocity, so ~/odom gets an unknown twist for that step.
LONG_GAP_S = 5.0


class StampGate:
    """The node's policy for frame stamps, in the images' own time base (a bag's, a camera's clock).

    ``order(stamp)`` before a frame is tracked: ``("new", 0)``; ``("late", s)`` for a duplicate (s = 0) or a frame
    less than ``backward_reset_s`` older than the last one (drop it); ``("jumped_back", s)`` for one further back (a bag
    loop or clock reset: the last stamp is forgotten and the caller restarts tracking). ``accept(stamp)`` once the
    frame is tracked: it becomes the last stamp, and the return is the gap to the one before in seconds when that is
    longer than ``long_gap_s`` (no velocity over it), else None.
    """

    def __init__(self, backward_reset_s: float = BACKWARD_RESET_S, long_gap_s: float = LONG_GAP_S) -> None:
        self.backward_reset_s = float(backward_reset_s)
        self.long_gap_s = float(long_gap_s)
        self.last_ns: int | None = None

    def order(self, stamp_ns: int) -> tuple[str, float]:
        if self.last_ns is None or stamp_ns > self.last_ns:
            return "new", 0.0
        back_s = (self.last_ns - stamp_ns) / NS
        if back_s < self.backward_reset_s:
            return "late", back_s
        self.last_ns = None
        return "jumped_back", back_s

    def accept(self, stamp_ns: int) -> float | None:
        gap_s = None if self.last_ns is None else (stamp_ns - self.last_ns) / NS
        self.last_ns = stamp_ns
        return gap_s if gap_s is not None and gap_s > self.long_gap_s else None


class FrameSlot:
    """Bounded hand-off from the ROS callbacks to the inference worker: newest frames win.

    ``put`` never blocks; when the slot is full the *oldest* waiting frame is dropped and counted,
    so the worker always processes the most recent input and latency stays bounded under overload.
    """

    # Arrivals are timed (perf_counter) so that a consumer can tell when the next frame is due: the mean
    # interval over the last puts (MeanTime), known after MIN_INTERVALS of them.
    MIN_INTERVALS = 3

    def __init__(self, capacity: int = 1) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._items: Deque[Any] = collections.deque()
        self._capacity = int(capacity)
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0
        self.received = 0
        self._last_put: float | None = None
        self._interval = MeanTime()  # ms between puts
        self._intervals = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    def put(self, item: Any) -> bool:
        """Add a frame; returns True when an older frame had to be dropped for it."""
        with self._cond:
            self.received += 1
            now = time.perf_counter()
            if self._last_put is not None:
                self._interval.update((now - self._last_put) * 1e3)
                self._intervals += 1
            self._last_put = now
            dropped = False
            while len(self._items) >= self._capacity:
                self._items.popleft()
                self.dropped += 1
                dropped = True
            self._items.append(item)
            self._cond.notify_all()  # a consumer in get, or one waiting for a fresher frame (wait_for_put)
            return dropped

    def get(self, timeout: float | None = None) -> Any | None:
        """The oldest waiting frame, or None on timeout / after ``close``."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout=timeout):
                return None
            if self._closed:
                return None
            return self._items.popleft()

    def next_due(self) -> float | None:
        """perf_counter time at which the next frame is expected (last arrival + mean interval); None until
        MIN_INTERVALS intervals have been seen."""
        with self._cond:
            if self._intervals < self.MIN_INTERVALS or self._last_put is None or self._interval.value is None:
                return None
            return self._last_put + self._interval.value / 1e3

    def wait_for_put(self, received: int, timeout: float) -> bool:
        """Wait until more than ``received`` frames have arrived (True), or ``timeout`` s / ``close`` (False)."""
        with self._cond:
            return bool(self._cond.wait_for(lambda: self.received > received or self._closed, timeout=timeout)
                        and not self._closed)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed


class RateMeter:
    """Event rate over a sliding time window (Hz)."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = float(window_s)
        self._times: Deque[float] = collections.deque()
        self._lock = threading.Lock()

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._times.append(now)
            self._trim(now)

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._trim(now)
            if len(self._times) < 2:
                return 0.0
            span = max(now - self._times[0], self._times[-1] - self._times[0])
            return (len(self._times) - 1) / span if span > 0 else 0.0

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()


class RuntimeStats:
    """Counters and sliding windows for the diagnostics: rates, latency percentiles, match quality.

    Thread-safe: callbacks count inputs, the worker records processed frames, the timer reads.
    """

    COUNTERS = ("frames_in", "frames_processed", "frames_dropped", "bad_input", "out_of_order", "resets",
                "pose_failures", "pose_rescued", "pose_sharpness", "errors", "no_camera_info", "oversized",
                "bad_camera_info", "size_mismatch", "gaps", "stereo_not_rectified", "no_extrinsics")
    # counters of frames refused before processing (named in the "nothing processed" warning)
    SKIP_COUNTERS = ("bad_input", "oversized", "size_mismatch", "out_of_order", "no_camera_info", "no_extrinsics",
                     "errors", "sync_dropped", "sync_duplicates")

    def __init__(self, window: int = 100, window_s: float = 5.0) -> None:
        self.counters = {name: 0 for name in self.COUNTERS}
        self.input_rate = RateMeter(window_s)
        self.processed_rate = RateMeter(window_s)
        self._latency: Deque[float] = collections.deque(maxlen=window)
        self._keypoints: Deque[int] = collections.deque(maxlen=window)
        self._matches: Deque[int] = collections.deque(maxlen=window)
        self._inlier_ratio: Deque[float] = collections.deque(maxlen=window)
        self._stop_layer: Deque[int] = collections.deque(maxlen=window)
        self._pose_ok: Deque[bool] = collections.deque(maxlen=window)
        self._unstarted: Deque[bool] = collections.deque(maxlen=window)  # processed without a reference to pose against
        self.last_failure = ""
        self.last_start_failure = ""  # why the last frame without a reference could not become one
        self.last_problem = ""  # a condition the node found in its input (e.g. a stereo pair that is not rectified)
        self.last_problem_time = -1e9
        self.last_error = ""
        self.last_error_time = -1e9
        self.last_input_time = -1e9
        self.first_input_time: float | None = None
        self.last_processed_time = -1e9
        self._lock = threading.Lock()

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    def input(self) -> None:
        self.count("frames_in")
        self.input_rate.tick()
        self.last_input_time = time.monotonic()
        if self.first_input_time is None:
            self.first_input_time = self.last_input_time

    def problem(self, message: str) -> None:
        """An input condition that makes the outputs wrong or missing (the diagnostics say WARN with it for 5 s)."""
        with self._lock:
            self.last_problem = message
            self.last_problem_time = time.monotonic()

    def error(self, message: str) -> None:
        with self._lock:
            self.counters["errors"] += 1
            self.last_error = message
            self.last_error_time = time.monotonic()

    def processed(self, latency_ms: float, keypoints: int, matches: int | None, stop_layer: int | None,
                  pose_ok: bool | None, inlier_ratio: float | None, failure: str = "", rescued: bool = False,
                  sharpness: bool = False) -> None:
        """One processed frame. ``rescued``: its pose needed the fallback of a pose estimator (stereo: the covariance
        gate of ``pnp_ransac: auto``, frames too far apart for the pixel gate), counted in ``pose_rescued``;
        ``sharpness``: it has no pose and its reason names the sharpness gate (``max_sharpness_ratio``: the attempt
        against the reference was refused, or in stereo held to the pixel gate), counted in ``pose_sharpness`` (a
        subset of ``pose_failures``)."""
        self.processed_rate.tick()
        with self._lock:
            self.counters["frames_processed"] += 1
            self.last_processed_time = time.monotonic()
            self._latency.append(float(latency_ms))
            self._keypoints.append(int(keypoints))
            if matches is not None:
                self._matches.append(int(matches))
            if stop_layer is not None:
                self._stop_layer.append(int(stop_layer))
            self._unstarted.append(matches is None)
            if matches is None and failure:
                self.last_start_failure = failure
            if pose_ok is not None:
                self._pose_ok.append(bool(pose_ok))
                if pose_ok and inlier_ratio is not None:
                    self._inlier_ratio.append(float(inlier_ratio))
                if pose_ok and rescued:
                    self.counters["pose_rescued"] += 1
                if not pose_ok:
                    self.counters["pose_failures"] += 1
                    self.counters["pose_sharpness"] += int(sharpness)
                    self.last_failure = failure

    def snapshot(self) -> dict[str, Any]:
        """Everything the diagnostics report, as plain numbers (NaN-free: 0 when there is no data)."""
        with self._lock:
            lat = np.array(self._latency) if self._latency else np.zeros(1)

            def mean(values) -> float:
                return float(np.mean(values)) if values else 0.0

            now = time.monotonic()
            # time since a frame was last processed, counted from the first input (0 before any input)
            without_output = (0.0 if self.first_input_time is None
                              else now - max(self.last_processed_time, self.first_input_time))

            return {
                **self.counters,
                "input_rate_hz": self.input_rate.rate(),
                "processed_rate_hz": self.processed_rate.rate(),
                "latency_p50_ms": float(np.percentile(lat, 50)),
                "latency_p95_ms": float(np.percentile(lat, 95)),
                "keypoints": mean(self._keypoints),
                "matches": mean(self._matches),
                "inlier_ratio": mean(self._inlier_ratio),
                "mean_stop_layer": mean(self._stop_layer),
                "pose_success_ratio": mean(self._pose_ok) if self._pose_ok else 0.0,
                "unstarted_ratio": mean(self._unstarted),
                "last_failure": self.last_failure,
                "last_start_failure": self.last_start_failure,
                "last_problem": self.last_problem,
                "seconds_since_problem": now - self.last_problem_time,
                "last_error": self.last_error,
                "seconds_since_error": now - self.last_error_time,
                "seconds_since_input": now - self.last_input_time,
                "seconds_without_output": without_output,
            }


# the reason diagnostic_level gives while images arrive and none is processed (the node also logs it)
NO_OUTPUT = "input arrives but no frame was processed"


def diagnostic_level(snapshot: dict[str, Any], target_rate_hz: float, has_camera_info: bool,
                     idle_hint: str = "") -> tuple[int, str]:
    """(level, reason): 0 OK, 1 WARN, 2 ERROR (diagnostic_msgs/DiagnosticStatus levels).

    idle_hint: what may explain input that arrives without any frame processed, after the skip counters (stereo:
    the synchroniser's ``pairing_hint``)."""
    if snapshot["seconds_since_error"] < 5.0:
        return 2, f"processing error: {snapshot['last_error']}"
    if snapshot["frames_in"] == 0:
        return 1, "no input images yet"
    if not has_camera_info:
        return 1, "waiting for camera_info: frames are skipped"
    if snapshot["seconds_since_input"] > 5.0:
        return 1, f"no input for {snapshot['seconds_since_input']:.0f} s"
    if snapshot.get("seconds_without_output", 0.0) > 5.0:  # input flows, yet every frame is refused
        skipped = ", ".join(f"{k}={snapshot[k]}" for k in RuntimeStats.SKIP_COUNTERS if snapshot.get(k))
        return 1, (f"{NO_OUTPUT} for {snapshot['seconds_without_output']:.0f} s"
                   + (f" ({'; '.join(t for t in (skipped, idle_hint) if t)})" if skipped or idle_hint else ""))
    if snapshot.get("seconds_since_problem", math.inf) < 5.0:
        return 1, snapshot["last_problem"]
    if snapshot["frames_processed"] >= 10 and snapshot.get("unstarted_ratio", 0.0) > 0.5:
        # every such frame is a first frame: nothing to pose against, so no pose failure is counted for it
        return 1, f"tracking does not start on most frames ({snapshot.get('last_start_failure', '')})"
    if target_rate_hz > 0 and snapshot["processed_rate_hz"] < 0.8 * min(target_rate_hz, snapshot["input_rate_hz"]):
        return 1, (f"processing {snapshot['processed_rate_hz']:.1f} Hz, below the target "
                   f"{target_rate_hz:.1f} Hz")
    if snapshot["frames_processed"] >= 10 and snapshot["pose_success_ratio"] < 0.5:
        return 1, f"pose failing on most frames ({snapshot['last_failure']})"
    return 0, "ok"
