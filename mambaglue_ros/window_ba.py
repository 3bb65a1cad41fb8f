"""Sliding-window stereo bundle adjustment over the last keyframes (GTSAM), and a thread that runs it.

No ROS here: the tracker (``tracking.StereoTracker``) feeds keyframes, the node only sees better poses.

Model (the stereo local BA of ORB-SLAM2 / VINS-style back ends):

* Variables: the poses ``T_world_cam`` of the last ``window`` keyframes (the oldest is held fixed: it
  is the gauge and the part of the trajectory already published) and one 3D point per feature track.
* Tracks: a keyframe's temporal matches to the keyframe before it link keypoint indices, so a
  feature seen in several keyframes is one landmark (union over the chain of links).
* Factors: ``GenericStereoFactor3D`` on (u_left, u_right, v) for keypoints with a stereo match,
  ``GenericProjectionFactorCal3_S2`` on (u, v) for the others, each with ``pixel_sigma_px`` noise
  and a Huber loss. The stereo factor measures the disparity in pixels, so a far point's depth is as
  uncertain as its disparity says (the inverse-depth noise), with no depth threshold.
* Two passes: optimise, drop observations whose whitened error exceeds the chi-square gate
  (``chi2_gate``, 3 dof stereo / 2 dof mono), optimise again (Levenberg-Marquardt both times).
* Covariance: GTSAM's ``Marginals`` of the newest keyframe pose, relative to the fixed oldest one,
  returned in the convention of ``geometry`` (translation first, perturbations in the world frame).

Why GTSAM (4.3.0, PyPI wheel, ~110 MB installed) over pyceres (2.6, ~13 MB): the stereo factor, the
robust noise models and the marginal covariances are in the library, in C++; pyceres would need the
stereo residual written as a Python cost function (a Python call per residual per iteration) and
its covariance class wired by hand. Cost: 0.5-2 s per 5-keyframe window of ~1,000-2,000 observations
on the shared 2-core CPU (both passes and the marginals; KITTI, measured under load), hence the thread.

Measured on KITTI (``benchmarks/stereo_diagnosis.py --set ba_window=5 ba_background=false``): it makes
the odometry worse (1.86 %/m against 1.37 %/m), because started from the ground truth it converges to
a 1-2 % longer trajectory: the disparities carry an offset it trusts. On synthetic data it removes
91-98 % of the drift. So ``ba_window`` defaults to 0 (off).

``BackgroundBA`` runs ``SlidingWindowBA.optimize`` on its own thread with a one-place mailbox: the
tracker never waits for it, a newer window replaces one not yet started, and the tracker picks the
latest finished result up on a later frame.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

CHI2_3DOF_99 = 11.34  # 0.99 quantile, 3 dof (stereo observation)
CHI2_2DOF_99 = 9.21   # 0.99 quantile, 2 dof (mono observation)


@dataclass
class Keyframe:
    """One keyframe of the window.

    stamp_ns:  its stamp (the key of the pose in the results).
    T_world_cam: (4, 4) initial pose estimate (the odometry), camera optical frame.
    keypoints: (N, 2) left-image pixels.
    right_x:   (N,) right-image x of each keypoint's stereo match, nan without one (rectified pair:
               the right row is the left row).
    links:     (M, 2) int keypoint index pairs (previous keyframe, this keyframe); empty for the first.
    """

    stamp_ns: int
    T_world_cam: np.ndarray
    keypoints: np.ndarray
    right_x: np.ndarray
    links: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))


@dataclass
class WindowResult:
    """Refined poses of one window.

    stamps_ns: (W,) keyframe stamps; poses: (W, 4, 4) refined ``T_world_cam`` (the first is the fixed one);
    initial: (W, 4, 4) the poses the window started from; covariance: (6, 6) of the newest pose
    relative to the oldest (None if the marginals failed); landmarks / observations / outliers: counts;
    error_before / error_after: the graph error (0.5 sum of squared whitened residuals, robust);
    time_ms: optimisation wall time.
    """

    stamps_ns: np.ndarray
    poses: np.ndarray
    initial: np.ndarray
    covariance: np.ndarray | None
    landmarks: int
    observations: int
    outliers: int
    error_before: float
    error_after: float
    time_ms: float

    @property
    def correction(self) -> np.ndarray:
        """(4, 4) ``C`` with ``refined_newest = C @ initial_newest``: left-multiply every pose chained
        from the newest keyframe's initial estimate to move it onto the refined trajectory."""
        return self.poses[-1] @ np.linalg.inv(self.initial[-1])


def _tracks(frames: list[Keyframe]) -> list[np.ndarray]:
    """Landmark id per keypoint of each keyframe (-1: no landmark yet), along the chain of links."""
    ids, next_id = [], 0
    for k, f in enumerate(frames):
        lm = np.full(len(f.keypoints), -1, dtype=np.int64)
        if k > 0 and len(f.links):
            prev = ids[k - 1]
            a, b = f.links[:, 0], f.links[:, 1]
            ok = (a >= 0) & (a < len(prev)) & (b >= 0) & (b < len(lm))
            a, b = a[ok], b[ok]
            has = prev[a] >= 0
            lm[b[has]] = prev[a[has]]
            new = b[~has]
            # a link from an untracked keypoint starts a track in both keyframes
            prev[a[~has]] = np.arange(next_id, next_id + len(new))
            lm[new] = np.arange(next_id, next_id + len(new))
            next_id += len(new)
        ids.append(lm)
    return ids


def se3_covariance_to_geometry(cov_gtsam: np.ndarray, R_world_cam: np.ndarray) -> np.ndarray:
    """GTSAM Pose3 marginal (rotation, translation; right perturbation in the body frame) -> (6, 6)
    in ``geometry``'s convention (translation, rotation; ``R = exp(d_theta) R_hat``, ``t = t_hat + d_t``
    in the world frame): ``d_theta = R w_body``, ``d_t = R v_body`` to first order."""
    J = np.zeros((6, 6))
    J[:3, 3:] = R_world_cam
    J[3:, :3] = R_world_cam
    cov = J @ cov_gtsam @ J.T
    return 0.5 * (cov + cov.T)


class SlidingWindowBA:
    """Stereo bundle adjustment over the last ``window`` keyframes (see the module docstring).

    Args:
        K: (3, 3) rectified left intrinsics (the right camera shares them). baseline: metres.
        window: keyframes kept. pixel_sigma_px: keypoint noise [px]. huber: Huber threshold in
        whitened units. max_iterations: Levenberg-Marquardt iterations per pass.
    """

    def __init__(self, K: np.ndarray, baseline: float, window: int = 6, pixel_sigma_px: float = 1.0,
                 huber: float = 1.345, max_iterations: int = 15) -> None:
        if window < 2:
            raise ValueError(f"window must be >= 2 keyframes, got {window}")
        if not baseline > 0:
            raise ValueError(f"baseline must be > 0, got {baseline}")
        self.K = np.asarray(K, dtype=np.float64)
        self.baseline = float(baseline)
        self.window = int(window)
        self.pixel_sigma_px = float(pixel_sigma_px)
        self.huber = float(huber)
        self.max_iterations = int(max_iterations)
        self.mono_factors = True
        self.frames: list[Keyframe] = []

    def add(self, frame: Keyframe) -> None:
        """Append a keyframe (its ``links`` refer to the previous one), dropping the oldest beyond the window."""
        self.frames.append(frame)
        del self.frames[:-self.window]

    def reset(self) -> None:
        self.frames = []

    def snapshot(self) -> list[Keyframe]:
        """The current window (a shallow copy: keyframes are not modified after ``add``)."""
        return list(self.frames)

    def apply_correction(self, result: WindowResult) -> None:
        """Move the window onto a finished result: its keyframes take the refined poses, later ones
        are left-multiplied by the result's correction."""
        refined = {int(s): T for s, T in zip(result.stamps_ns, result.poses)}
        C = result.correction
        newest = int(result.stamps_ns[-1])
        # new Keyframe objects: a snapshot the optimiser thread is reading keeps its own
        for k, f in enumerate(self.frames):
            if int(f.stamp_ns) in refined:
                self.frames[k] = replace(f, T_world_cam=refined[int(f.stamp_ns)].copy())
            elif int(f.stamp_ns) > newest:
                self.frames[k] = replace(f, T_world_cam=C @ f.T_world_cam)

    def optimize(self, frames: list[Keyframe] | None = None) -> WindowResult | None:
        """Bundle-adjust ``frames`` (default: the current window). None with fewer than 2 keyframes
        or no landmark seen twice."""
        import gtsam
        from gtsam.symbol_shorthand import L, X

        frames = self.frames if frames is None else frames
        if len(frames) < 2:
            return None
        t0 = time.perf_counter()
        K, b, s = self.K, self.baseline, self.pixel_sigma_px
        cal_stereo = gtsam.Cal3_S2Stereo(K[0, 0], K[1, 1], 0.0, K[0, 2], K[1, 2], b)
        cal_mono = gtsam.Cal3_S2(K[0, 0], K[1, 1], 0.0, K[0, 2], K[1, 2])
        huber = gtsam.noiseModel.mEstimator.Huber.Create(self.huber)
        noise3 = gtsam.noiseModel.Robust.Create(huber, gtsam.noiseModel.Isotropic.Sigma(3, s))
        noise2 = gtsam.noiseModel.Robust.Create(huber, gtsam.noiseModel.Isotropic.Sigma(2, s))
        ids = _tracks(frames)

        # observations: (frame k, keypoint i, landmark id, stereo?)
        obs = []
        for k, (f, lm) in enumerate(zip(frames, ids)):
            for i in np.nonzero(lm >= 0)[0]:
                stereo = bool(np.isfinite(f.right_x[i]))
                if stereo or self.mono_factors:
                    obs.append((k, int(i), int(lm[i]), stereo))
        if not obs:
            return None
        counts: dict[int, int] = {}
        first_stereo: dict[int, tuple[int, int]] = {}
        for k, i, j, st in obs:
            counts[j] = counts.get(j, 0) + 1
            if st and j not in first_stereo:
                first_stereo[j] = (k, i)
        keep = {j for j, c in counts.items() if c >= 2 and j in first_stereo}
        obs = [o for o in obs if o[2] in keep]
        if not keep:
            return None

        values = gtsam.Values()
        for k, f in enumerate(frames):
            values.insert(X(k), gtsam.Pose3(np.asarray(f.T_world_cam, dtype=np.float64)))
        for j in keep:
            k, i = first_stereo[j]
            f = frames[k]
            u, v = f.keypoints[i]
            d = max(float(u - f.right_x[i]), 1e-3)
            Z = K[0, 0] * b / d
            Xc = np.array([(u - K[0, 2]) * Z / K[0, 0], (v - K[1, 2]) * Z / K[1, 1], Z])
            T = np.asarray(f.T_world_cam)
            values.insert(L(j), T[:3, :3] @ Xc + T[:3, 3])

        def build(active: list[tuple[int, int, int, bool]]) -> gtsam.NonlinearFactorGraph:
            graph = gtsam.NonlinearFactorGraph()
            graph.add(gtsam.NonlinearEqualityPose3(X(0), values.atPose3(X(0))))
            for k, i, j, st in active:
                u, v = frames[k].keypoints[i]
                if st:
                    graph.add(gtsam.GenericStereoFactor3D(
                        gtsam.StereoPoint2(float(u), float(frames[k].right_x[i]), float(v)), noise3, X(k), L(j),
                        cal_stereo))
                else:
                    graph.add(gtsam.GenericProjectionFactorCal3_S2(
                        np.array([u, v], dtype=np.float64), noise2, X(k), L(j), cal_mono))
            return graph

        params = gtsam.LevenbergMarquardtParams()
        params.setMaxIterations(self.max_iterations)
        graph = build(obs)
        error_before = float(graph.error(values))
        try:
            estimate = gtsam.LevenbergMarquardtOptimizer(graph, values, params).optimize()
        except RuntimeError:
            return None
        # second pass without the observations the first pass could not explain
        inliers, outliers = [], 0
        for o in obs:
            k, i, j, st = o
            pose = estimate.atPose3(X(k))
            p_cam = pose.transformTo(estimate.atPoint3(L(j)))
            if p_cam[2] <= 1e-6:
                outliers += 1
                continue
            u, v = frames[k].keypoints[i]
            pu = K[0, 0] * p_cam[0] / p_cam[2] + K[0, 2]
            pv = K[1, 1] * p_cam[1] / p_cam[2] + K[1, 2]
            r = [pu - u, pv - v]
            if st:
                r.append(pu - K[0, 0] * b / p_cam[2] - frames[k].right_x[i])
            chi2 = float(np.sum(np.square(r))) / s**2
            if chi2 <= (CHI2_3DOF_99 if st else CHI2_2DOF_99):
                inliers.append(o)
            else:
                outliers += 1
        seen: dict[int, int] = {}
        for _, _, j, _ in inliers:
            seen[j] = seen.get(j, 0) + 1
        inliers = [o for o in inliers if seen[o[2]] >= 2]
        kept = {o[2] for o in inliers}
        covered = {o[0] for o in inliers}
        if len(covered) < len(frames):  # a keyframe without observations: the graph is underdetermined
            return None
        values2 = gtsam.Values()
        for k in range(len(frames)):
            values2.insert(X(k), estimate.atPose3(X(k)))
        for j in kept:
            values2.insert(L(j), estimate.atPoint3(L(j)))
        graph = build(inliers)
        try:
            estimate = gtsam.LevenbergMarquardtOptimizer(graph, values2, params).optimize()
        except RuntimeError:
            return None
        poses = np.array([estimate.atPose3(X(k)).matrix() for k in range(len(frames))])
        covariance = None
        try:
            marginals = gtsam.Marginals(graph, estimate)
            covariance = se3_covariance_to_geometry(marginals.marginalCovariance(X(len(frames) - 1)),
                                                    poses[-1][:3, :3])
        except RuntimeError:
            pass
        return WindowResult(
            stamps_ns=np.array([f.stamp_ns for f in frames], dtype=np.int64), poses=poses,
            initial=np.array([np.asarray(f.T_world_cam, dtype=np.float64) for f in frames]),
            covariance=covariance, landmarks=len(kept), observations=len(inliers), outliers=outliers,
            error_before=error_before, error_after=float(graph.error(estimate)),
            time_ms=(time.perf_counter() - t0) * 1e3)


class BackgroundBA:
    """``SlidingWindowBA.optimize`` on a daemon thread; ``submit`` and ``poll`` never block on it.

    ``submit(frames)`` puts a window snapshot in a one-place mailbox (a newer one replaces a waiting
    one); ``poll()`` returns the newest finished result once (None otherwise). ``close()`` stops the
    thread. ``wait_idle(timeout)`` is for tests and offline tools (the node never calls it).
    """

    def __init__(self, ba: SlidingWindowBA) -> None:
        self.ba = ba
        self._cond = threading.Condition()
        self._pending: list[Keyframe] | None = None
        self._result: WindowResult | None = None
        self._busy = False
        self._closed = False
        self.errors = 0
        self.solved = 0
        self._thread = threading.Thread(target=self._run, name="window-ba", daemon=True)
        self._thread.start()

    def submit(self, frames: list[Keyframe]) -> None:
        with self._cond:
            self._pending = list(frames)
            self._cond.notify_all()

    def poll(self) -> WindowResult | None:
        with self._cond:
            result, self._result = self._result, None
            return result

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closed)
                if self._closed:
                    return
                frames, self._pending = self._pending, None
                self._busy = True
            result: Any = None
            try:
                result = self.ba.optimize(frames)
            except Exception:  # noqa: BLE001 - a numerical failure must not kill the thread; counted
                self.errors += 1
            with self._cond:
                self._busy = False
                if result is not None:
                    self._result = result
                    self.solved += 1
                self._cond.notify_all()
