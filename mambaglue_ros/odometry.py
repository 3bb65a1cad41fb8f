"""Odometry of the robot body from relative poses, with first-order covariance propagation (no ROS).

The node turns each relative pose of the camera into a relative pose of the body
(``geometry.relative_pose_in_base``) and hands it here. This module composes it with the pose of
the frame it is relative to (the tracker's reference: the previous frame or the keyframe),
propagates the covariance, and derives the body twist that ``nav_msgs/Odometry`` carries.

Conventions (those of ``geometry``): a pose ``T_a_b`` (4, 4) is frame b in frame a; covariances
are (6, 6) over (x, y, z, rx, ry, rz), metres and radians, with the perturbation applied on the
left in the parent frame: ``R = exp([d_theta]_x) R_hat``, ``t = t_hat + d_t``.

Composition ``T_a_c = T_a_b T_b_c`` of two independent estimates::

    Sigma_ac = J_ab Sigma_ab J_ab^T + J_bc Sigma_bc J_bc^T
    J_ab = [[I, -[R_ab t_bc]_x], [0, I]]      (rotation error of a-b swings the b-c step: lever arm)
    J_bc = [[R_ab, 0], [0, R_ab]]             (the b-c errors rotated into frame a)

The lever-arm block is what makes heading uncertainty grow into position uncertainty: a yaw
standard deviation of 0.1 rad before a 1 m step adds 0.01 m^2 across the step.

Twist: ``nav_msgs/Odometry`` wants the body velocity expressed in ``child_frame_id`` (the body at
the current stamp). It is the motion from the previous frame that had a pose to this one, divided
by the time between them, so it is an instantaneous estimate also under the keyframe policy
(where the relative pose spans everything since the keyframe).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry import invert, make_transform, skew, so3_exp, so3_log

NS_PER_S = 1_000_000_000
# A frame without a pose further than this from the last measured motion keeps the last pose: over longer spans a
# velocity says little about where the camera is (ConstantVelocity).
MAX_PREDICTION_S = 2.0
# ... and one further than this many times the measured step's own duration: a step over a very short time (stamps
# a millisecond apart) would multiply its noise (and, with a bundle adjustment, the window's correction) by the ratio.
MAX_PREDICTION_RATIO = 10.0


def compose_covariance(T_a_b: np.ndarray, cov_a_b: np.ndarray, T_b_c: np.ndarray,
                       cov_b_c: np.ndarray) -> np.ndarray:
    """(6, 6) covariance of ``T_a_c = T_a_b @ T_b_c`` for independent ``T_a_b`` and ``T_b_c``.

    cov_a_b is expressed in frame a, cov_b_c in frame b; the result is in frame a (see the module
    docstring for the Jacobians).
    """
    R_ab = np.asarray(T_a_b, dtype=np.float64)[:3, :3]
    lever = R_ab @ np.asarray(T_b_c, dtype=np.float64)[:3, 3]
    J_ab = np.eye(6)
    J_ab[:3, 3:] = -skew(lever)
    J_bc = np.zeros((6, 6))
    J_bc[:3, :3] = R_ab
    J_bc[3:, 3:] = R_ab
    cov = J_ab @ cov_a_b @ J_ab.T + J_bc @ cov_b_c @ J_bc.T
    return 0.5 * (cov + cov.T)


def between_covariance(T_r_a: np.ndarray, cov_r_a: np.ndarray, T_r_b: np.ndarray,
                       cov_r_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``T_a_b = T_r_a^-1 T_r_b`` and its (6, 6) covariance (in frame a), treating the two
    estimates against the common frame r as independent.

    Two poses measured against the same keyframe share its features, so their errors are
    positively correlated and the true covariance of the difference is smaller: the sum taken
    here is conservative.
    """
    T_r_a = np.asarray(T_r_a, dtype=np.float64)
    T_r_b = np.asarray(T_r_b, dtype=np.float64)
    Rt = T_r_a[:3, :3].T
    delta = T_r_b[:3, 3] - T_r_a[:3, 3]
    J_a = np.zeros((6, 6))
    J_a[:3, :3] = -Rt
    J_a[:3, 3:] = Rt @ skew(delta)
    J_a[3:, 3:] = -Rt
    J_b = np.zeros((6, 6))
    J_b[:3, :3] = Rt
    J_b[3:, 3:] = Rt
    cov = J_a @ cov_r_a @ J_a.T + J_b @ cov_r_b @ J_b.T
    return invert(T_r_a) @ T_r_b, 0.5 * (cov + cov.T)


def _so3_left_jacobian(phi: np.ndarray) -> np.ndarray:
    theta = float(np.linalg.norm(phi))
    W = skew(phi)
    if theta < 1e-6:
        return np.eye(3) + 0.5 * W + W @ W / 6.0
    return np.eye(3) + (1.0 - np.cos(theta)) / theta**2 * W + (theta - np.sin(theta)) / theta**3 * W @ W


def se3_power(T: np.ndarray, r: float) -> np.ndarray:
    """``T^r`` for a (4, 4) rigid motion: the same screw motion (constant twist) continued for ``r`` times as long
    (``exp(r log T)``: r = 2 gives ``T @ T``, r = 0.5 a motion that twice applied gives T, r = 0 the identity)."""
    T = np.asarray(T, dtype=np.float64)
    phi = so3_log(T[:3, :3])
    rho = _so3_left_jacobian_inverse(phi) @ T[:3, 3]
    return make_transform(so3_exp(r * phi), _so3_left_jacobian(r * phi) @ (r * rho))


def _so3_left_jacobian_inverse(phi: np.ndarray) -> np.ndarray:
    theta = float(np.linalg.norm(phi))
    W = skew(phi)
    if theta < 1e-6:
        return np.eye(3) - 0.5 * W + W @ W / 12.0
    coef = 1.0 / theta**2 - (1.0 + np.cos(theta)) / (2.0 * theta * np.sin(theta))
    return np.eye(3) - 0.5 * W + coef * W @ W


def body_twist(T_prev_cur: np.ndarray, cov_prev_cur: np.ndarray, dt_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean body twist over a step, expressed in the body frame at the *end* of the step.

    T_prev_cur: (4, 4) pose of the body now in the body frame at the previous stamp;
    cov_prev_cur: its (6, 6) covariance (in the previous frame); dt_s: seconds, > 0.
    Returns (twist (6,) = [vx, vy, vz, wx, wy, wz] in m/s and rad/s, covariance (6, 6)).
    """
    if not dt_s > 0:
        raise ValueError(f"dt must be > 0, got {dt_s}")
    R, t = T_prev_cur[:3, :3], T_prev_cur[:3, 3]
    phi = so3_log(R)  # the rotation axis is the same vector in both frames
    twist = np.concatenate([R.T @ t, phi]) / dt_s
    # v = R^T t: d(R^T t) = R^T (d_t + [t]_x d_theta); w = log(R): d_w = J_l^-1(phi) d_theta
    J = np.zeros((6, 6))
    J[:3, :3] = R.T
    J[:3, 3:] = R.T @ skew(t)
    J[3:, 3:] = _so3_left_jacobian_inverse(phi)
    cov = J @ cov_prev_cur @ J.T / dt_s**2
    return twist, 0.5 * (cov + cov.T)


class ConstantVelocity:
    """Where a frame without a pose probably is: the last measured motion, continued at the same twist.

    A frame the tracker cannot pose (blurred, covered) has no measured place, yet the next frames may be posed
    against it (``tracking`` module docstring: the last frame without a pose as a fallback reference, or the current
    frame once ``max_lost_frames`` have failed). Its place used to be the last pose, i.e. the camera stood still
    while it was lost, and the odometry lost the motion over those frames (a car at 12 m/s: 1.2 m a frame). The
    constant-velocity model of visual-odometry front ends (ORB-SLAM's tracking, DSO) puts it where the last measured
    motion leads instead: the step of the last frame with a pose (relative to its reference, over the time between
    the two) continued to the lost frame's stamp (``se3_power``). Nothing is predicted without a measured step,
    more than ``max_span_s`` after the last pose or more than ``MAX_PREDICTION_RATIO`` times the step's duration
    after it, or for a step that spans longer than ``max_span_s``. The step is the last pose's against its reference:
    with the keyframe policy the mean motion since the keyframe (up to ``max_span_s``).

    ``predict`` gives the motion *from the last pose*: the caller composes it with the last pose it holds (the
    tracker's ``T_odom_cam``, the integrator's ``T_odom_base``), so a correction of the odometry (a bundle
    adjustment) moves the prediction with it.
    """

    def __init__(self, max_span_s: float = MAX_PREDICTION_S) -> None:
        self.max_span_s = float(max_span_s)
        self.reset()

    def reset(self) -> None:
        """Forget the motion (a reset of the odometry)."""
        # the last frame with a pose: its stamp, and its step (relative pose, seconds, covariance) or None
        self._last: tuple[int, tuple[np.ndarray, float, np.ndarray | None] | None] | None = None

    def observe(self, stamp_ns: int, reference_stamp_ns: int | None, T_ref_cur: np.ndarray,
                covariance: np.ndarray | None = None) -> None:
        """A frame with a pose: the motion ``T_ref_cur`` it measured since the frame at ``reference_stamp_ns`` (with
        its (6, 6) ``covariance`` where known)."""
        dt = None if reference_stamp_ns is None else (int(stamp_ns) - int(reference_stamp_ns)) / NS_PER_S
        step = None
        if dt is not None and 0 < dt <= self.max_span_s and np.isfinite(T_ref_cur).all():
            cov = None if covariance is None else np.asarray(covariance, dtype=np.float64).copy()
            step = (np.asarray(T_ref_cur, dtype=np.float64).copy(), dt, cov)
        self._last = (int(stamp_ns), step)

    def predict(self, stamp_ns: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(motion, covariance) from the last pose to ``stamp_ns`` (a later frame without a pose), or None: nothing to
        predict from. motion: (4, 4), the last pose's frame to the predicted one; covariance: (6, 6) in the last
        pose's frame, ``prediction_covariance`` of the motion plus the measured step's own covariance times the
        ratio squared (first order; turned into the last pose's frame), which stays where the motion is nothing
        (a still camera)."""
        if self._last is None or self._last[1] is None:
            return None
        last_stamp, (T_step, dt, cov_step) = self._last
        span = (int(stamp_ns) - last_stamp) / NS_PER_S
        if not 0 < span <= self.max_span_s or span / dt > MAX_PREDICTION_RATIO:
            return None
        r = span / dt
        motion = se3_power(T_step, r)
        cov = prediction_covariance(motion)
        if cov_step is not None:
            R = np.kron(np.eye(2), T_step[:3, :3].T)  # both blocks from the step's start frame into its end frame
            cov = cov + r * r * (R @ cov_step @ R.T)
        return motion, 0.5 * (cov + cov.T)


def prediction_covariance(T_delta: np.ndarray) -> np.ndarray:
    """(6, 6) covariance of a predicted motion ``T_delta`` (``ConstantVelocity``): a standard deviation as large as
    the motion itself, in translation and in rotation, on every axis, so that both "it stood still" and "it moved
    twice as far" are one sigma away (``ConstantVelocity.predict`` adds the measured step's own)."""
    T_delta = np.asarray(T_delta, dtype=np.float64)
    return np.diag([float(T_delta[:3, 3] @ T_delta[:3, 3])] * 3 + [float(np.sum(so3_log(T_delta[:3, :3]) ** 2))] * 3)


@dataclass
class OdometryStep:
    """What ``OdometryIntegrator.step`` produced for one frame.

    T_odom_base: (4, 4) body pose in the odometry frame; covariance: (6, 6) in the odometry frame.
    twist, twist_covariance: (6,) and (6, 6) in the body frame, or None when unknown (first pose
    after a reset or a gap longer than ``max_twist_dt_s``).
    """

    stamp_ns: int
    T_odom_base: np.ndarray
    covariance: np.ndarray
    twist: np.ndarray | None
    twist_covariance: np.ndarray | None


class OdometryIntegrator:
    """Accumulates body poses from relative poses to a reference frame (previous frame or keyframe).

    Call ``step`` for each frame with a pose and ``set_reference`` when a frame becomes the
    tracker's reference (after ``step`` for that frame, or without a pose after a failure). The
    reference's pose anchors every later relative pose until the next reference. Where the tracker
    may also pose a frame against an earlier frame (``tracking.FrameResult.live_references``: the
    reference before, or the last frame without a pose), call ``keep_anchors`` after each frame: the
    pose (and covariance) each live frame left is kept, and a step relative to one of them composes
    with it. A frame without a pose leaves the pose the last measured motion leads to (``ConstantVelocity``),
    its covariance grown by the prediction's (``ConstantVelocity.predict``); without a measured motion, the last pose.

    max_twist_dt_s: over a longer interval the mean motion is no velocity: the twist is unknown.
    """

    def __init__(self, max_twist_dt_s: float = 5.0) -> None:
        self.max_twist_dt_s = float(max_twist_dt_s)
        self.reset()

    def reset(self, T_odom_base: np.ndarray | None = None, covariance: np.ndarray | None = None) -> None:
        """Restart at ``T_odom_base`` (identity) with ``covariance`` (zero); forget the reference."""
        T = np.eye(4) if T_odom_base is None else np.asarray(T_odom_base, dtype=np.float64).copy()
        cov = np.zeros((6, 6)) if covariance is None else np.asarray(covariance, dtype=np.float64).copy()
        if T.shape != (4, 4) or cov.shape != (6, 6) or not (np.isfinite(T).all() and np.isfinite(cov).all()):
            raise ValueError("odometry pose must be a finite (4, 4) matrix and covariance a finite (6, 6) one")
        self.T_odom_base, self.covariance = T, 0.5 * (cov + cov.T)
        self.T_odom_ref, self.cov_ref = T.copy(), self.covariance.copy()
        self.reference_stamp_ns: int | None = None
        # the last frame with a pose, relative to the reference it was posed against (for the twist): stamp, T, cov,
        # reference stamp
        self._last: tuple[int, np.ndarray, np.ndarray, int | None] | None = None
        # the pose and covariance of each frame a later one may still be posed against, by stamp (keep_anchors)
        self._anchors: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._live: set[int] = set()  # the stamps of the last keep_anchors call
        self._velocity = ConstantVelocity()

    def place(self, stamp_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """(pose, covariance) of the frame at ``stamp_ns`` in the odometry: the last pose if it was the last frame given
        to ``step``; for a later frame without a pose, the last measured motion continued to its stamp
        (``ConstantVelocity``, covariance grown by the prediction's), else the last pose."""
        predicted = None if self._last is not None and self._last[0] == int(stamp_ns) else \
            self._velocity.predict(stamp_ns)
        if predicted is None:
            return self.T_odom_base.copy(), self.covariance.copy()
        motion, cov_motion = predicted
        return self.T_odom_base @ motion, compose_covariance(self.T_odom_base, self.covariance, motion, cov_motion)

    def set_reference(self, stamp_ns: int) -> None:
        """The frame at ``stamp_ns`` (the last one given to ``step``, or one without a pose) is now
        the reference: later relative poses compose with its place (``place``)."""
        self.T_odom_ref, self.cov_ref = self.place(stamp_ns)
        self.reference_stamp_ns = int(stamp_ns)
        # the reference it replaces stays an anchor only if the tracker said it may still be posed against
        self._anchors = {s: a for s, a in self._anchors.items() if s in self._live}
        self._anchors[int(stamp_ns)] = (self.T_odom_ref.copy(), self.cov_ref.copy())

    def keep_anchors(self, stamp_ns: int, live: tuple[int, ...] | list[int]) -> None:
        """After the frame at ``stamp_ns`` (with or without a pose): keep its place (``place``) as its anchor if it is
        in ``live`` (the stamps later frames may be posed against), and forget the anchors that are not."""
        live_set = self._live = {int(s) for s in live}
        if int(stamp_ns) in live_set and int(stamp_ns) not in self._anchors:
            self._anchors[int(stamp_ns)] = self.place(stamp_ns)
        self._anchors = {s: a for s, a in self._anchors.items() if s in live_set or s == self.reference_stamp_ns}

    def step(self, stamp_ns: int, reference_stamp_ns: int, T_ref_base: np.ndarray,
             cov_ref_base: np.ndarray) -> OdometryStep:
        """Compose a body pose relative to the reference (stamp ``reference_stamp_ns``).

        T_ref_base, cov_ref_base: (4, 4) and (6, 6), the body now in the body frame at the reference.
        Raises ValueError on non-finite input or a reference that is neither the one set nor a kept anchor
        (``keep_anchors``; nothing changes).
        """
        T_rel = np.asarray(T_ref_base, dtype=np.float64)
        cov_rel = np.asarray(cov_ref_base, dtype=np.float64)
        if not (np.isfinite(T_rel).all() and np.isfinite(cov_rel).all()):
            raise ValueError("non-finite odometry step: not accumulated")
        T_odom_ref, cov_ref = self.T_odom_ref, self.cov_ref
        if self.reference_stamp_ns is not None and int(reference_stamp_ns) != self.reference_stamp_ns:
            if int(reference_stamp_ns) not in self._anchors:
                raise ValueError(f"relative pose to reference {reference_stamp_ns}, but the reference is "
                                 f"{self.reference_stamp_ns}")
            T_odom_ref, cov_ref = self._anchors[int(reference_stamp_ns)]
        ref_stamp = None if reference_stamp_ns is None else int(reference_stamp_ns)
        T = T_odom_ref @ T_rel
        cov = compose_covariance(T_odom_ref, cov_ref, T_rel, cov_rel)
        twist = twist_cov = None
        # The twist is the mean motion since the last frame with a pose, from two poses relative to one frame: the
        # last one's reference (also when this frame was posed against an earlier reference than the last one,
        # which the last one was posed against), or the last frame itself (it became the reference). Relative to
        # a frame without a pose (tracking failed there) the motion up to it is unknown: no twist.
        if self._last is not None:
            last_stamp, T_ref_last, cov_ref_last, last_ref = self._last
            if ref_stamp == last_stamp:
                T_ref_last, cov_ref_last = np.eye(4), np.zeros((6, 6))
            dt = (int(stamp_ns) - last_stamp) / NS_PER_S
            if ref_stamp in (last_ref, last_stamp) and 0 < dt <= self.max_twist_dt_s:
                T_step, cov_step = between_covariance(T_ref_last, cov_ref_last, T_rel, cov_rel)
                twist, twist_cov = body_twist(T_step, cov_step, dt)
        self.T_odom_base, self.covariance = T, cov
        self._last = (int(stamp_ns), T_rel.copy(), cov_rel.copy(), ref_stamp)
        self._velocity.observe(stamp_ns, ref_stamp, T_rel, cov_rel)
        return OdometryStep(int(stamp_ns), T.copy(), cov.copy(), twist, twist_cov)
