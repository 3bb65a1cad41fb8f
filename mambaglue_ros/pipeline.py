"""Two-stage frame pipeline for the node: the front end runs on frame t+1 while the matcher works on frame t.

Plain Python (threads, no ROS, no torch import), so the node, the replay tool and the tests share it.

Why two stages. On a small CPU the matcher network is a long chain of small operations that one core runs
about as fast as two (OpenMP's fork/join costs as much as it saves at ~1000 keypoints, and spinning OpenMP
threads starve the ROS callbacks). The front end is one independent convolution network per image. So one
thread per stage, one intra-op torch thread each, uses two cores without OpenMP: frame t+1 is extracted on
core 1 while frame t is matched on core 2, and the processed rate is set by the slower stage instead of by
the sum of both.

Semantics kept from the single-thread worker:

* Latest frame only. Stage 1 takes a frame from the ``FrameSlot`` (newest wins) and hands it to stage 2
  through a one-place hand-off; it takes no new frame while the hand-off is full, so no extracted frame is
  ever thrown away and at most one frame is in flight per stage.
* Bounded latency. Stage 1 starts the next extraction *just in time*: when the matcher is expected to be
  done with its frame (the matcher's running mean time minus the front end's, with a margin), not as soon as
  the matcher starts. Starting early would take an older frame and make it wait in the hand-off for the
  difference: latency (extraction start -> outputs) would be two matcher times instead of one matcher plus
  one front end time.
* Fresh frames. At that start the newest frame in the slot can be almost one camera period old. When the
  camera's next frame is due before the latest moment the extraction can start without making the worker
  wait (the worker's expected finish minus one extraction), stage 1 waits for it and takes it instead: the
  frame it processes is up to one period younger, at no cost in rate (``frames_fresher`` counts these).
  Only with the latest-frame slot (``queue_size`` 1); a longer queue keeps every frame in order.
* Clocks for the rate controller. ``finish()`` returns the frame's latency (from the start of its
  extraction), its *cycle time*, the busier stage's time for that frame (with two stages in flight the
  cycle time, not the latency, sets the processed rate), and the worker's own time. The node holds the
  cycle time under the controller's budget in stereo, where stage 1 also runs the left/right match; in mono
  stage 1 is the front end alone, which none of the matcher knobs speeds up, so it holds the worker's time. The
  front end's resolution (``image_scale``) is a loop of its own on stage 1's time (``rate_control``).

``PrefetchingMatcher`` is the seam: the tracker calls ``extract(image)`` (and, for stereo, the left/right
``match_features``) as before and gets what stage 1 already computed for that very image object.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .runtime import FrameSlot, MeanTime

__all__ = ["PrefetchingMatcher", "ExtractionStage", "RateGate", "StereoPlacement", "torch_threads", "quiet_openmp",
           "pipeline_enabled", "controlled_time_ms", "MeanTime"]


def quiet_openmp(environ: dict[str, str] | os._Environ = os.environ) -> None:
    """OpenMP threads sleep instead of spinning while they wait for work (``OMP_WAIT_POLICY=PASSIVE``).

    A spinning OpenMP worker keeps a core busy between parallel regions, which starves the ROS callbacks and
    the other pipeline stage on a small CPU. The OpenMP runtime reads the variable once, when it is loaded
    (with torch), so this must run before ``import torch``: ``mambaglue_ros.ros`` calls it on import. A value
    the user set is kept.
    """
    environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pipeline_enabled(setting: str, target_rate_hz: float, stereo: bool = False, cuda: bool = False) -> bool:
    """The node's ``pipeline`` parameter: 'on', 'off', or 'auto' = on when the network runs on the CPU (each
    stage gets a core: measured +37 % processed rate at 1024 keypoints and +59 % at 512 for mono XFeat on 2
    vCPUs, docs/results.md, Real time); on CUDA, on in stereo (stage 1 also does the left/right match) or when a
    target rate is set, and off for mono at a fixed rate (not measured on a GPU yet)."""
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"pipeline must be auto, on or off, got {setting!r}")
    return setting == "on" or (setting == "auto" and (not cuda or stereo or target_rate_hz > 0))


def controlled_time_ms(stereo: bool, cycle_ms: float, worker_ms: float) -> float:
    """The per-frame time the rate controller holds under its budget (``ExtractionStage.finish``'s clocks):
    the time of the stage its knobs (alpha, keypoints, pose hypotheses) act on. Stereo: the busier stage's,
    since stage 1 also runs the left/right match. Mono: the worker's, since stage 1 is the front end alone,
    which none of those knobs speeds up (holding it under the budget drove alpha and keypoints to their floors
    for nothing; the resolution loop holds stage 1 itself). Without the pipeline the two are the same."""
    return float(cycle_ms if stereo else worker_ms)


def torch_threads(requested: int, available: int, pipelined: bool = False) -> int:
    """Intra-op torch threads: ``requested`` if > 0; else, pipelined, one per stage on half of the cores
    (at least 1: two stages on two cores), and without the pipeline all cores but one (the ROS callbacks need
    one). torch's thread count is per process, so both stages get the same number."""
    if requested > 0:
        return int(requested)
    return max(1, int(available) // 2) if pipelined else max(1, int(available) - 1)


class StereoPlacement:
    """Which stage runs a stereo frame's left/right match: stage 1 (after extracting both images) or the worker.

    With two stages in flight the processed rate is set by the busier one. Stage 1 extracts both images (E),
    the worker matches over time and estimates the pose (W); the left/right match (S) can run in either,
    since the worker computes it itself when stage 1 has not. With S in stage 1 the busier stage takes
    max(E + S, W), in the worker max(E, W + S); the smaller of the two is the one where S joins the stage
    that is otherwise less busy. So S runs ahead while E <= W (also before anything is measured). On a
    2-core CPU with XFeat at 512 keypoints E (two extractions) is larger than W, and S in the worker makes
    the cycle max(E, W + S) instead of E + S (docs/results.md, Real time).
    """

    def __init__(self, weight: float = 0.2) -> None:
        self.extract_time = MeanTime(weight)  # stage 1's extraction of both images [ms]
        self.worker_time = MeanTime(weight)  # the worker's time without the left/right match [ms]

    def ahead(self) -> bool:
        """True: stage 1 runs the left/right match of the next frame; False: the worker does."""
        extract, worker = self.extract_time.value, self.worker_time.value
        return extract is None or worker is None or extract <= worker

    def update(self, extract_ms: float, stereo_ms: float, worker_ms: float, stereo_ahead: bool) -> None:
        """One matched frame's times [ms]: extraction of both images, the left/right match, the worker's time
        for the frame (which includes the left/right match unless ``stereo_ahead``)."""
        self.extract_time.update(extract_ms)
        self.worker_time.update(worker_ms - (0.0 if stereo_ahead else stereo_ms))

    def diagnostics(self) -> dict[str, Any]:
        return {"stereo_match_in": "stage 1" if self.ahead() else "worker"}


class PrefetchingMatcher:
    """A matcher whose ``extract`` (and left/right ``match_features``) can be computed ahead, on another thread.

    Wraps any matcher with the ``Matcher`` interface; every other attribute (``alpha``, ``device``, ``net``,
    ...) is the wrapped matcher's, read and written through. ``prefetch(images, stereo)`` extracts the
    images (and matches the first two when ``stereo``) and keeps the results keyed by the *identity* of the
    image arrays; ``extract(image)`` returns the kept features of that very array once (and computes them
    when there are none), so a tracker that calls ``extract`` gets the work stage 1 did. An exception raised
    while prefetching is kept and raised by the call that would have computed the result, so it surfaces on
    the frame it belongs to, in the worker's error handling.

    Where the wrapped matcher has ``prepare`` (``Matcher.prepare``), ``prefetch`` also runs the part of the
    matcher that depends on each image alone (its first self block), so the worker's match starts at the first
    cross block; ``take_ahead_ms`` reports that time as 'prepare'.

    Keypoint budget and resolution changes (``max_keypoints = k``, ``image_scale = s``, from the rate controller)
    are applied by the thread that extracts, before its next extraction (a stereo frame's two images: before the
    pair): the front end is never reconfigured halfway through an image or between a left and a right image, and
    the worker never waits for an extraction to finish.
    """

    MAX_KEPT = 12  # results of at most two frames in flight (stage 1 and the hand-off); stereo: 2 images, each
    # with its extraction and first self block, and the left/right match

    def __init__(self, matcher: Any) -> None:
        object.__setattr__(self, "_inner", matcher)
        object.__setattr__(self, "_kept", {})  # id(obj) -> (obj, result or exception)
        object.__setattr__(self, "_kept_lock", threading.Lock())
        object.__setattr__(self, "_extract_lock", threading.Lock())
        object.__setattr__(self, "_budget", None)  # keypoint budget waiting to be applied
        object.__setattr__(self, "_scale", None)  # image_scale waiting to be applied
        object.__setattr__(self, "_ahead_ms", {})  # kind -> ms of work done ahead and since taken (take_ahead_ms)

    # ------------------------------------------------------------------ pass-through
    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "max_keypoints":
            self._set_budget(value)
        elif name == "image_scale":
            self._set_scale(value)
        else:
            setattr(self._inner, name, value)

    @property
    def inner(self) -> Any:
        """The wrapped matcher."""
        return self._inner

    @property
    def max_keypoints(self) -> int:
        budget = self._budget
        return int(budget) if budget is not None else int(self._inner.max_keypoints)

    @property
    def image_scale(self) -> float:
        scale = self._scale
        return float(scale) if scale is not None else float(getattr(self._inner, "image_scale", 1.0))

    def _set_scale(self, value: float) -> None:
        from .types import check_image_scale  # here: this module loads before torch (quiet_openmp)

        self._set_between_extractions("_scale", "image_scale", check_image_scale(value))

    def _set_budget(self, value: int) -> None:
        if int(value) < 1:
            raise ValueError(f"max_keypoints must be >= 1, got {value}")
        self._set_between_extractions("_budget", "max_keypoints", int(value))

    # the settings stage 1 applies between extractions: pending attribute here -> attribute of the wrapped matcher
    _BETWEEN_EXTRACTIONS = (("_budget", "max_keypoints"), ("_scale", "image_scale"))

    def _set_between_extractions(self, pending: str, name: str, value: Any) -> None:
        """``inner.name = value`` now when no extraction is in flight, else kept in ``pending`` for the next one."""
        if self._extract_lock.acquire(blocking=False):  # no extraction in flight: apply now
            try:
                setattr(self._inner, name, value)
                object.__setattr__(self, pending, None)
            finally:
                self._extract_lock.release()
        else:
            object.__setattr__(self, pending, value)

    def _apply_pending(self) -> None:
        """Budget and resolution changes that came while an extraction ran (caller holds the extract lock)."""
        for pending, name in self._BETWEEN_EXTRACTIONS:
            value = getattr(self, pending)
            if value is not None:
                setattr(self._inner, name, value)
                object.__setattr__(self, pending, None)

    # ------------------------------------------------------------------ computing ahead
    def _extract_now(self, image: Any) -> Any:
        with self._extract_lock:
            self._apply_pending()
            return self._inner.extract(image)

    def _keep(self, owners: tuple[Any, ...], compute: Callable[[], Any], kind: str) -> Any:
        """Compute now and keep the result (or its exception) under the identity of ``owners``, with the
        wall time it took (``kind``: 'extract' or 'stereo')."""
        started = time.perf_counter()
        try:
            result: Any = compute()
        except Exception as e:  # kept, raised on the frame it belongs to
            result = e
        ms = (time.perf_counter() - started) * 1e3
        with self._kept_lock:
            kept = self._kept
            kept[tuple(map(id, owners))] = (owners, result, kind, ms)
            while len(kept) > self.MAX_KEPT:  # a frame dropped after stage 1 (reset, shutdown): forget it
                kept.pop(next(iter(kept)))
        return result

    def _take(self, owners: tuple[Any, ...]) -> tuple[bool, Any]:
        """(True, result) kept for exactly these objects (removed: each result is used once), else (False, None)."""
        with self._kept_lock:
            key = tuple(map(id, owners))
            entry = self._kept.get(key)
            if entry is None or any(a is not b for a, b in zip(entry[0], owners)):
                return False, None
            del self._kept[key]
            kind, ms = entry[2], entry[3]
            self._ahead_ms[kind] = self._ahead_ms.get(kind, 0.0) + ms
        if isinstance(entry[1], Exception):
            raise entry[1]
        return True, entry[1]

    def prefetch(self, images: Sequence[Any], stereo: bool = False, prepare: int | None = None) -> None:
        """Extract ``images`` (and match images[0] with images[1] when ``stereo``) for later ``extract`` /
        ``match_features`` calls on the same objects; run the matcher's first self block (``Matcher.prepare``) of
        the first ``prepare`` of them (None: all; a right image that only the epipolar stereo search sees needs
        none). Never raises: errors are kept (see the class)."""
        with self._extract_lock:  # one setting for all of the frame's images (stereo: left and right alike)
            self._apply_pending()
            feats = [self._keep((image,), lambda image=image: self._inner.extract(image), "extract") for image in images]
        prepare_block = getattr(self._inner, "prepare", None)  # Matcher.prepare: the first self block of an image
        if prepare_block is not None:
            for f in feats[:prepare]:
                if not isinstance(f, Exception):
                    self._keep((f,), lambda f=f: prepare_block(f), "prepare")
        if stereo and len(feats) >= 2 and not any(isinstance(f, Exception) for f in feats[:2]):
            f0, f1 = feats[0], feats[1]
            self._keep((f0, f1), lambda: self._inner.match_features(f0, f1), "stereo")

    def extract(self, image: Any) -> Any:
        """Features of ``image``: the prefetched ones for this very object, else computed now."""
        found, feats = self._take((image,))
        return feats if found else self._extract_now(image)

    def match_features(self, feats0: Any, feats1: Any) -> Any:
        """A prefetched match of exactly these two feature objects, else computed now."""
        for feats in (feats0, feats1):  # their first self blocks, prepared ahead: only their time is taken here
            try:
                self._take((feats,))
            except Exception:  # noqa: BLE001 - the matcher prepares the image itself and meets the error there
                pass
        found, result = self._take((feats0, feats1))
        return result if found else self._inner.match_features(feats0, feats1)

    def take_ahead_ms(self) -> dict[str, float]:
        """Wall time [ms] by kind ('extract', 'prepare', 'stereo') of the results computed ahead that ``extract`` /
        ``match_features`` handed out since the last call; cleared. The caller timed those calls at ~0 ms:
        this is the work they stand for (the node adds it to the frame's timings)."""
        with self._kept_lock:
            ahead = dict(self._ahead_ms)
            self._ahead_ms.clear()
        return ahead

    def forget(self) -> None:
        """Drop everything computed ahead."""
        with self._kept_lock:
            self._kept.clear()
            self._ahead_ms.clear()


class RateGate:
    """Lets frames through at most at ``rate_hz`` by their stamps (0 = every frame).

    A frame passes when its stamp reaches the next due time; the due time then advances by one period, so
    a 20 Hz camera gated at 10 Hz gives every other frame and a 25 Hz one gives 10 Hz on average (not the
    8.3 Hz that "one period after the last frame taken" gives). A stamp far from the schedule (start, a gap,
    a bag loop) restarts it.
    """

    def __init__(self, rate_hz: float = 0.0) -> None:
        self.rate_hz = float(rate_hz)
        self._due_ns: int | None = None
        self.skipped = 0

    def set_rate(self, rate_hz: float) -> None:
        """New rate (0 = every frame); the schedule restarts at the next frame."""
        self.rate_hz, self._due_ns = float(rate_hz), None

    def admit(self, stamp_ns: int) -> bool:
        if self.rate_hz <= 0:
            return True
        period = int(1e9 / self.rate_hz)
        due = self._due_ns
        if due is None or stamp_ns < due - 2 * period or stamp_ns > due + 2 * period:
            self._due_ns = stamp_ns + period
            return True
        if stamp_ns < due - period // 20:  # 5 % tolerance: stamps jitter around a nominal camera period
            self.skipped += 1
            return False
        self._due_ns = due + period
        return True


@dataclass
class FrameTiming:
    """When stage 1 started a frame and how long its extraction took (None: the worker extracts itself)."""

    started: float
    extract_ms: float | None


class ExtractionStage:
    """Stage 1: runs ``prefetch(frame)`` on the newest frame of ``source``, one frame ahead of the worker.

    Args:
        source: the callbacks' frame slot (newest frame wins), or a function returning the slot in use (the
            node makes a new one when it is deactivated and activated again).
        prefetch: does the front-end work for one frame (e.g. ``PrefetchingMatcher.prefetch`` on its images);
            its exceptions are counted in ``errors`` and the frame goes on (the worker meets the error again).
        enabled: False = no thread; ``get`` reads ``source`` directly (the worker does all the work).
        stamp_ns: the frame's stamp, for the rate gate.
        margin: the just-in-time start leaves this fraction of the extraction time as slack.
        on_skip: called for each frame the rate gate leaves out (the node counts it as dropped).

    The worker (stage 2) calls ``get`` for its next frame and ``finish`` when the frame's outputs are out.
    """

    def __init__(self, source: FrameSlot | Callable[[], FrameSlot], prefetch: Callable[[Any], None],
                 enabled: bool = True,
                 stamp_ns: Callable[[Any], int] | None = None, margin: float = 0.25,
                 name: str = "mambaglue-extract", on_skip: Callable[[], None] | None = None) -> None:
        self._source = source if callable(source) else (lambda: source)
        self.prefetch, self.enabled = prefetch, bool(enabled)
        self.stamp_ns, self.margin, self.on_skip = stamp_ns, float(margin), on_skip
        self.gate = RateGate(0.0)
        self.extract_time = MeanTime()
        self.process_time = MeanTime()
        self.errors = 0
        self.last_error = ""
        self.fresher = 0  # frames taken after waiting for a camera frame that was about to arrive
        self.timing: FrameTiming | None = None  # of the frame the worker holds
        self._cond = threading.Condition()
        self._ready: tuple[Any, FrameTiming] | None = None
        self._busy_since: float | None = None  # when the worker took its frame (None: idle)
        self._extracting = False  # stage 1 holds a frame it took from the slot
        self._closed = False
        self._thread: threading.Thread | None = None
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ stage 1 (own thread)
    def _start_at(self) -> float | None:
        """perf_counter time to start the next extraction (None = now). Caller holds the lock."""
        busy, process, extract = self._busy_since, self.process_time.value, self.extract_time.value
        if busy is None or process is None or extract is None:
            return None
        return busy + (process - (1.0 + self.margin) * extract) / 1e3

    def _fresh_wait_s(self, source: FrameSlot, now: float | None = None) -> float:
        """How long to wait for the camera's next frame before taking the one in the slot (0: take it now).

        Waiting pays when that frame is due before the latest start that keeps the worker busy (its expected
        finish minus one extraction): the extraction then starts on a frame up to one period younger and ends
        no later than the worker needs it. Never with an idle worker (it would wait) or a queue (frames in order).
        """
        if source.capacity != 1 or len(source) == 0:
            return 0.0
        due = source.next_due()
        with self._cond:
            busy, process, extract = self._busy_since, self.process_time.value, self.extract_time.value
        if due is None or busy is None or process is None or extract is None:
            return 0.0
        now = time.perf_counter() if now is None else now
        latest_start = busy + (process - extract) / 1e3
        return latest_start - now if now < due <= latest_start else 0.0

    def _take_frame(self) -> Any | None:
        """The next frame to extract, past the rate gate; None on timeout or close."""
        source = self._source()
        if source.closed:  # the node is shutting down or inactive: wait instead of spinning on a closed slot
            with self._cond:
                self._cond.wait(timeout=0.2)
            return None
        received = source.received
        wait_s = self._fresh_wait_s(source)
        if wait_s > 0 and source.wait_for_put(received, timeout=wait_s):
            self.fresher += 1  # the slot now holds the newer frame (latest wins)
        frame = source.get(timeout=0.2)
        if frame is not None and not self._admit(frame):
            return None
        if frame is not None:
            with self._cond:
                self._extracting = True
        return frame

    def _admit(self, frame: Any) -> bool:
        if self.stamp_ns is None or self.gate.admit(self.stamp_ns(frame)):
            return True
        if self.on_skip is not None:
            self.on_skip()
        return False

    def __len__(self) -> int:
        """Frames stage 1 holds: being extracted, or extracted and waiting for the worker (0..2). With the
        slot's length and the worker's state this says whether the node is idle (bag replay waits for it)."""
        with self._cond:
            return int(self._extracting) + int(self._ready is not None)

    def _run(self) -> None:
        while True:
            with self._cond:
                # the hand-off must be free, then wait until the worker is about done with its frame
                while not self._closed:
                    if self._ready is None:
                        start_at = self._start_at()
                        now = time.perf_counter()
                        if start_at is None or now >= start_at:
                            break
                        self._cond.wait(timeout=start_at - now)  # woken early when the worker goes idle
                    else:
                        self._cond.wait(timeout=0.5)
                if self._closed:
                    return
            frame = self._take_frame()
            if frame is None:
                continue
            started = time.perf_counter()
            try:
                self.prefetch(frame)
            except Exception as e:  # the worker meets it again on this frame, in its error handling
                self.errors += 1
                self.last_error = f"{type(e).__name__}: {e}"
            extract_ms = (time.perf_counter() - started) * 1e3
            with self._cond:
                self.extract_time.update(extract_ms)
                self._ready = (frame, FrameTiming(started, extract_ms))
                self._extracting = False
                self._cond.notify_all()

    # ------------------------------------------------------------------ stage 2 (the worker)
    def get(self, timeout: float | None = None) -> Any | None:
        """The next frame for the worker (features prefetched), or None on timeout / after ``close``.

        Calling it means the worker is done with its previous frame.
        """
        if not self.enabled:
            if self.timing is not None:  # the worker is done with its previous frame
                self.process_time.update((time.perf_counter() - self.timing.started) * 1e3)
                self.timing = None
            frame = self._source().get(timeout=timeout)
            if frame is not None and not self._admit(frame):
                frame = None
            self.timing = None if frame is None else FrameTiming(time.perf_counter(), None)
            return frame
        with self._cond:
            self._idle()
            if not self._cond.wait_for(lambda: self._ready is not None or self._closed, timeout=timeout):
                return None
            if self._closed:
                return None
            frame, self.timing = self._ready
            self._ready = None
            self._busy_since = time.perf_counter()
            self._cond.notify_all()
            return frame

    def _idle(self) -> None:
        if self._busy_since is not None:
            self.process_time.update((time.perf_counter() - self._busy_since) * 1e3)
            self._busy_since = None
            self._cond.notify_all()

    def finish(self) -> tuple[float, float, float]:
        """(latency_ms, cycle_ms, worker_ms) of the worker's current frame, now that its outputs are out.

        latency_ms: since the start of its extraction. worker_ms: the worker's time since it took the frame.
        cycle_ms: the busier stage's time for it (worker_ms, or the extraction's if that was longer), which
        sets the processed rate. Without the pipeline all three are the same.
        """
        now = time.perf_counter()
        timing = self.timing or FrameTiming(now, None)
        latency_ms = (now - timing.started) * 1e3
        if not self.enabled or timing.extract_ms is None or self._busy_since is None:
            return latency_ms, latency_ms, latency_ms
        worker_ms = (now - self._busy_since) * 1e3
        return latency_ms, max(timing.extract_ms, worker_ms), worker_ms

    def set_rate(self, rate_hz: float) -> None:
        """Take frames at most at ``rate_hz`` (by stamp; 0 = all): the target rate of the rate controller."""
        if rate_hz != self.gate.rate_hz:
            self.gate.set_rate(rate_hz)

    @property
    def skipped(self) -> int:
        """Frames left out by the rate gate."""
        return self.gate.skipped

    def diagnostics(self) -> dict[str, Any]:
        """Pipeline state for /diagnostics: on/off, mean stage times [ms] (0 before the first frame; the
        extraction is part of the worker's time without the pipeline), frames the rate gate left out."""
        return {"pipeline": self.enabled, "extract_ms": self.extract_time.value or 0.0,
                "worker_ms": self.process_time.value or 0.0, "frames_rate_skipped": self.skipped,
                "frames_fresher": self.fresher, "extract_errors": self.errors}

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._ready = None
            self._extracting = False
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
