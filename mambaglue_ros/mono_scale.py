"""One consistent scale for monocular odometry: each step's length (no ROS).

A monocular relative pose knows its translation up to scale only: ``geometry.estimate_pose_mono`` returns a
unit direction. Composing unit steps gives every processed frame the same step length, so the path's shape
depends on which frames were processed: where the node drops frames (a slow CPU: KITTI mono live at 1024
keypoints, 20–27 %/m RPE, docs/results.md) or the frame rate varies, the path stretches and shrinks.

``MonoScale`` keeps one arbitrary but consistent scale instead; the first step is the unit. Two ways
(``MonoTracker``'s ``mono_scale``):

* ``time``: constant speed. A step's length is proportional to the time it spans, at the speed of the first
  step (``step_length`` without a measurement). Frames dropped do not bend the path; changes of speed are not
  seen (as with unit steps). A time span near a whole number of camera frame periods is taken as exactly that
  (``FramePeriod``), so jitter in the stamps (a driver stamping on arrival) does not become noise in the step
  lengths.
* ``depth``: that prediction fused with a measurement (Nistér et al. 2004; Scaramuzza & Fraundorfer 2011,
  "relative scale"). When a frame becomes the tracker's reference, its matched keypoints are triangulated from
  the edge that led to it, at the odometry's scale (``reference_depths``; a point seen again is fused with its
  earlier depth, a small depth filter); the next edge triangulates the same keypoints again with a unit
  translation, and the ratio of the two depths is the new edge's length (``measure``: a weighted median in log
  space, each point weighted by the inverse variance of its two depths, which grows as its triangulation angle
  shrinks). The fusion is a 1-D Kalman filter on the log speed (odometry units per second, ``speed_noise``), so
  a frame with too few or too flat shared points still gets a step proportional to the time it spans. It follows
  changes of speed, and drifts in scale as monocular odometry without a map does (benchmarks/mono_scale.py).

Conventions (``geometry``): normalised image points are rays (x, y, 1); a pose ``T_ref_cur`` = (R, t) maps
current-camera coordinates to reference-camera ones, X_ref = R X_cur + t.
"""
from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from .geometry import ray_depths

DEFAULT_SCALE_CONFIG: dict[str, Any] = {
    "min_points": 12,            # shared points with depths in both edges for a measurement
    "min_angle_deg": 0.25,       # triangulation angle below which a depth is not used
    "gate_px": 3.0,              # reprojection gate of a triangulated point (pixels)
    "pixel_sigma_px": 1.0,       # keypoint noise behind each depth's variance
    "speed_noise": 0.5,          # random walk of the log speed, per sqrt(second): how fast speed may change
    "min_sigma": 0.01,           # floor of a measurement's log-length standard deviation
    "max_gap_s": 1.0,            # a step spanning longer is predicted as if it spanned this long: over a long gap
                                 # (camera restart, paused bag) the speed is unknown, and a stop would be
                                 # stretched into a jump
}


def triangulate_depths(x_ref: np.ndarray, x_cur: np.ndarray, R: np.ndarray, t: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Depths of matched rays: the depths of the two rays' points of closest approach (``geometry.ray_depths``).

    x_ref, x_cur: (n, 3) normalised rays (z = 1) of the same points in the reference and current camera;
    R, t: ``T_ref_cur``. Returns (z_ref, z_cur, angle): depths (n,) in each camera (nan where the rays are
    parallel) and the angle (n,) between the two rays in radians (the triangulation angle).
    """
    a = np.asarray(x_ref, dtype=np.float64)
    b = np.asarray(x_cur, dtype=np.float64)
    R, t = np.asarray(R, dtype=np.float64), np.asarray(t, dtype=np.float64)
    z_a, z_b, det = ray_depths(a, b, R, t)  # both rays have z = 1 (R keeps b's length): these are the depths
    aa, bb = (a * a).sum(1), (b * b).sum(1)
    cos = np.clip((a * (b @ R.T)).sum(1) / np.sqrt(aa * bb), -1.0, 1.0)
    bad = ~(np.abs(det) > 1e-12 * aa * bb)
    z_a[bad], z_b[bad] = np.nan, np.nan
    return z_a, z_b, np.arccos(cos)


def _transfer(x_ref: np.ndarray, x_cur: np.ndarray, R: np.ndarray, t: np.ndarray, z_ref: np.ndarray,
              gate: float) -> tuple[np.ndarray, np.ndarray]:
    """The point at depth z_ref on each reference ray, seen from the current camera: (its depth there, ok), (n,)
    each; ok where it projects within ``gate`` (normalised units) of the current observation and lies in front
    of both cameras."""
    X_cur = (x_ref * z_ref[:, None] - t) @ R  # R^T (X_ref - t)
    with np.errstate(divide="ignore", invalid="ignore"):
        err = np.linalg.norm(X_cur[:, :2] / X_cur[:, 2:3] - x_cur[:, :2], axis=1)
    return X_cur[:, 2], (z_ref > 0) & (X_cur[:, 2] > 0) & (err < gate)


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The value at half the total weight (values (n,), weights (n,) > 0)."""
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, 0.5 * cum[-1])])


class FramePeriod:
    """The camera's frame period from frame stamps: time spans counted in periods, without the stamps' jitter.

    Fed with the stamp of every frame the camera delivered (the node does this from its image callback,
    ``MonoTracker(frame_period=...)``), the stamp differences are single periods, each off by the stamps' jitter (a
    driver that stamps on arrival). Fed only with the frames that were processed (``MonoTracker`` on its own), they
    are whole numbers of periods when frames were skipped. The estimate is the median of the recent differences
    within half a period of the shortest cluster's median (the cluster: within 1.25x the shortest). ``count`` gives a span in periods: the whole number where the
    span is within a quarter period of one, else the exact ratio. (Processed frames alone that only ever skip four
    or more frames, 5 and 6 periods apart, make a cluster of both: the node's input feed avoids that.)
    Thread-safe: the node observes from its callback thread while the tracker counts on its worker thread.
    """

    HISTORY = 32
    RESET_BACK_S = 1.0  # a stamp this far before the last one is a new clock (a bag loop): start again

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._diffs: deque[float] = deque(maxlen=self.HISTORY)
            self._last_ns: int | None = None
            self.period_s: float | None = None

    def observe(self, stamp_ns: int) -> None:
        """A frame's stamp. One not after the last is ignored (a duplicate, or a processed frame already seen as
        an input), unless it is over ``RESET_BACK_S`` earlier: the clock restarted, the estimate starts again."""
        stamp_ns = int(stamp_ns)
        with self._lock:
            if self._last_ns is not None and stamp_ns < self._last_ns - self.RESET_BACK_S * 1e9:
                self._diffs.clear()
                self._last_ns = self.period_s = None
            if self._last_ns is not None and stamp_ns > self._last_ns:
                self._diffs.append((stamp_ns - self._last_ns) / 1e9)
                diffs = np.asarray(self._diffs)
                rough = np.median(diffs[diffs <= 1.25 * diffs.min()])  # the shortest cluster: single periods
                # then every difference within half a period of it: the shortest alone would bias it low under jitter
                self.period_s = float(np.median(diffs[np.abs(diffs - rough) <= 0.5 * rough]))
            if self._last_ns is None or stamp_ns > self._last_ns:
                self._last_ns = stamp_ns

    def count(self, dt_s: float) -> float:
        """``dt_s`` (> 0) in periods: a whole number where it is within a quarter period of one, else the ratio.
        Before any period is known, in seconds."""
        period = self.period_s
        if period is None:
            return dt_s
        periods = dt_s / period
        whole = round(periods)
        return float(whole) if whole >= 1 and abs(periods - whole) <= 0.25 else periods


@dataclass
class ScaleMeasurement:
    """An edge's log length measured from the reference's depths: mean, variance, and points used."""

    log_length: float
    variance: float
    num_points: int


@dataclass
class ReferenceDepths:
    """Depths of a reference frame's keypoints at the odometry's scale.

    depth: (N,) per keypoint, nan where unknown; log_var: (N,) variance of log depth (inf where unknown).
    """

    depth: np.ndarray
    log_var: np.ndarray

    @classmethod
    def unknown(cls, n: int) -> "ReferenceDepths":
        return cls(np.full(n, np.nan), np.full(n, np.inf))


class MonoScale:
    """The step lengths of a monocular tracker in one consistent (non-metric) scale.

    Per edge reference -> current: ``measure`` (optional: None without enough shared depths), then
    ``step_length`` (the length to compose the unit direction with), and when the current frame becomes the
    next reference ``commit`` (the speed state) and ``reference_depths`` (its keypoints' depths).

    Args:
        focal: focal length in pixels (turns the pixel gates and noise into normalised units).
        config: options overriding ``DEFAULT_SCALE_CONFIG``.
        frames: a ``FramePeriod`` the caller feeds with every input frame's stamp (kept across ``reset``); None:
            its own, fed by ``observe`` with the processed frames.
    """

    def __init__(self, focal: float, config: dict[str, Any] | None = None, frames: FramePeriod | None = None
                 ) -> None:
        cfg = dict(DEFAULT_SCALE_CONFIG)
        unknown = set(config or {}) - set(cfg)
        if unknown:
            raise ValueError(f"unknown mono scale option(s): {sorted(unknown)}")
        cfg.update(config or {})
        if not float(focal) > 0:
            raise ValueError(f"focal length must be > 0, got {focal}")
        for key in ("gate_px", "pixel_sigma_px", "speed_noise", "min_sigma", "max_gap_s"):
            if not float(cfg[key]) > 0:
                raise ValueError(f"{key} must be > 0, got {cfg[key]}")
        if int(cfg["min_points"]) < 1 or not float(cfg["min_angle_deg"]) >= 0:
            raise ValueError("min_points must be >= 1 and min_angle_deg >= 0")
        self.config, self.focal = cfg, float(focal)
        self._shared_frames = frames is not None
        self.frames = frames if frames is not None else FramePeriod()
        self.reset()

    def reset(self) -> None:
        """Forget the speed (and an own frame period): the next step defines the unit again (length 1)."""
        self.log_speed: float | None = None  # log(odometry units per frame period of ``_speed_period_s``)
        self._speed_period_s: float | None = None
        self.variance = 0.0
        if not self._shared_frames:
            self.frames.reset()
        self._first_dt_s: float | None = None  # the span of the step that defined the unit
        self._speed_from_first = False  # the speed is still the first step's (no measurement has moved it)

    def observe(self, stamp_ns: int) -> None:
        """Every processed frame's stamp, for the frame period (``FramePeriod``; a stamp the caller's input feed
        gave already is ignored there)."""
        self.frames.observe(stamp_ns)

    def _current_speed(self) -> float | None:
        """log speed per current frame period. Until a measurement moves it, the speed is the first step's: one
        unit per the periods that step spanned, counted again as the estimate settles (a first step over a skipped
        frame spanned two periods, which a later difference shows). After that the speed per second is kept
        when the estimate changes."""
        if self.log_speed is None:
            return None
        if self._speed_from_first and self._first_dt_s is not None:
            self.log_speed = -math.log(self._periods(self._first_dt_s)[0])
        elif self.frames.period_s and self._speed_period_s and self.frames.period_s != self._speed_period_s:
            self.log_speed += math.log(self.frames.period_s / self._speed_period_s)
        self._speed_period_s = self.frames.period_s
        return self.log_speed

    def _periods(self, dt_s: float) -> tuple[float, float]:
        """(periods, seconds) a step of ``dt_s`` seconds counts for (``FramePeriod.count``), at most ``max_gap_s``."""
        period = self.frames.period_s or 1.0
        periods = min(self.frames.count(dt_s), self.config["max_gap_s"] / period)
        return periods, periods * period

    def _log_depth_variance(self, angle: np.ndarray) -> np.ndarray:
        """Variance of log depth for a triangulation angle: relative depth error ~ pixel noise / (f angle)."""
        sigma = self.config["pixel_sigma_px"] / self.focal
        with np.errstate(divide="ignore"):
            return (sigma / np.maximum(angle, 1e-12)) ** 2

    def measure(self, ref: ReferenceDepths, x_ref: np.ndarray, x_cur: np.ndarray, matches: np.ndarray,
                R: np.ndarray, t_unit: np.ndarray) -> ScaleMeasurement | None:
        """The edge's log length from the reference's depths, or None with fewer than ``min_points`` usable.

        ref: the reference's depths; x_ref (N, 3), x_cur (K, 3): normalised rays of all keypoints;
        matches: (M, 2) indices (reference, current); R, t_unit: ``T_ref_cur`` with a unit translation.
        """
        t_unit = np.asarray(t_unit, dtype=np.float64)
        if len(matches) == 0 or not np.linalg.norm(t_unit) > 0:
            return None
        i0, i1 = matches[:, 0], matches[:, 1]
        known = np.isfinite(ref.depth[i0])
        if int(known.sum()) < self.config["min_points"]:
            return None
        i0, i1 = i0[known], i1[known]
        a, b = x_ref[i0], x_cur[i1]
        z_unit, _, angle = triangulate_depths(a, b, R, t_unit)
        ok = np.isfinite(z_unit) & (angle >= math.radians(self.config["min_angle_deg"]))
        ok &= _transfer(a, b, R, t_unit, np.where(ok, z_unit, -1.0), self.config["gate_px"] / self.focal)[1]
        if int(ok.sum()) < self.config["min_points"]:
            return None
        ratio = np.log(ref.depth[i0][ok]) - np.log(z_unit[ok])  # log(depth at odometry scale / depth at unit t)
        var = ref.log_var[i0][ok] + self._log_depth_variance(angle[ok])
        w = 1.0 / var
        center = weighted_median(ratio, w)
        # the spread of the ratios, not only their modelled noise: outliers and model error widen it
        spread = 1.4826 * weighted_median(np.abs(ratio - center), w)
        n = int(ok.sum())
        variance = max(1.0 / float(w.sum()), spread**2 / n, self.config["min_sigma"] ** 2)
        return ScaleMeasurement(center, variance, n)

    def step_length(self, dt_s: float, measurement: ScaleMeasurement | None) -> tuple[float, float]:
        """(length, log variance) of an edge spanning ``dt_s`` seconds: the measurement fused with the
        constant-speed prediction (the speed times the time spanned, ``_periods``). The first edge after a reset (no
        speed yet) is the unit: length 1, and its speed is the speed from then on, also for the frames matched
        against the same reference before the next one is committed. Without a time span (``dt_s`` <= 0): the
        measurement, else 1."""
        if not dt_s > 0:
            return (math.exp(measurement.log_length), measurement.variance) if measurement is not None else (1.0, 0.0)
        periods, seconds = self._periods(dt_s)
        speed = self._current_speed()
        if speed is None:
            self.log_speed, self.variance = -math.log(periods), 0.0
            self._first_dt_s, self._speed_from_first = dt_s, True
            self._speed_period_s = self.frames.period_s
            return 1.0, 0.0
        prior = speed + math.log(periods)
        prior_var = self.variance + self.config["speed_noise"] ** 2 * seconds
        if measurement is None:
            return math.exp(prior), prior_var
        self._speed_from_first = False
        gain = prior_var / (prior_var + measurement.variance)
        return math.exp(prior + gain * (measurement.log_length - prior)), (1.0 - gain) * prior_var

    def commit(self, length: float, log_variance: float, dt_s: float) -> None:
        """The edge just composed ended at the new reference: its speed is the state from now on. A zero-length
        (rotation-only) edge or one without a time span leaves the speed as it was."""
        if length > 0 and dt_s > 0:
            log_speed = math.log(length) - math.log(self._periods(dt_s)[0])
            if self._speed_from_first and abs(log_speed - (self._current_speed() or 0.0)) > 1e-9:
                self._speed_from_first = False  # a length other than the prediction: the first step's speed is gone
            self.log_speed, self.variance = log_speed, float(log_variance)
            self._speed_period_s = self.frames.period_s

    def reference_depths(self, ref: ReferenceDepths, x_ref: np.ndarray, x_cur: np.ndarray, matches: np.ndarray,
                         R: np.ndarray, t: np.ndarray, num_current: int) -> ReferenceDepths:
        """Depths of the current frame's keypoints (it becomes the next reference) at the odometry's scale.

        R, t: ``T_ref_cur`` with the translation at the odometry's scale (length times the unit direction; zero
        for a rotation-only edge). A keypoint triangulated at a usable angle takes that depth; one matched to a
        reference keypoint with a depth otherwise takes it through the pose (the variance carried over);
        the rest stay unknown.
        """
        out = ReferenceDepths.unknown(num_current)
        if len(matches) == 0:
            return out
        R, t = np.asarray(R, dtype=np.float64), np.asarray(t, dtype=np.float64)
        i0, i1 = matches[:, 0], matches[:, 1]
        a, b = x_ref[i0], x_cur[i1]
        gate = self.config["gate_px"] / self.focal
        carried = np.isfinite(ref.depth[i0])
        if carried.any():  # through the pose
            z_carried, keep = _transfer(a[carried], b[carried], R, t, ref.depth[i0][carried], gate)
            idx = i1[carried][keep]
            out.depth[idx], out.log_var[idx] = z_carried[keep], ref.log_var[i0][carried][keep]
        if np.linalg.norm(t) > 0:
            z_ref, z_cur, angle = triangulate_depths(a, b, R, t)
            ok = np.isfinite(z_cur) & (angle >= math.radians(self.config["min_angle_deg"]))
            ok &= _transfer(a, b, R, t, np.where(ok, z_ref, -1.0), gate)[1]
            idx, log_new, var_new = i1[ok], np.log(z_cur[ok]), self._log_depth_variance(angle[ok])
            # a depth filter: where a carried depth exists, fuse the two in log space by inverse variance
            have = np.isfinite(out.depth[idx])
            old_log, old_var = np.log(out.depth[idx[have]]), out.log_var[idx[have]]
            fused_var = 1.0 / (1.0 / old_var + 1.0 / var_new[have])
            log_new[have] = fused_var * (old_log / old_var + log_new[have] / var_new[have])
            var_new[have] = fused_var
            out.depth[idx], out.log_var[idx] = np.exp(log_new), var_new
        return out
