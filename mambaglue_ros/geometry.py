"""Relative pose from matches: monocular (essential matrix), stereo (PnP), homography, frame helpers.

Conventions
-----------
* Camera frames are **optical** frames (REP-103 "_optical"): x right, y down, z forward.
* Pixels are (x, y) = (column, row); intrinsics ``K`` are 3x3 pinhole matrices, no distortion
  (undistort/rectify before matching).
* A transform ``T_a_b`` (4x4) maps point coordinates from frame b to frame a:
  ``X_a = T_a_b @ X_b``; equivalently it is the pose of frame b expressed in frame a.
  ``compose(T_a_b, T_b_c) == T_a_c``.
* A relative pose between two frames of one camera is ``T_0_1``: it maps points from camera-1
  (the newer frame) coordinates to camera-0 (the older/reference frame) coordinates, i.e. it is
  the pose of camera 1 in camera 0's frame. Odometry accumulates as ``T_odom_1 = T_odom_0 @ T_0_1``.
  (OpenCV's ``recoverPose`` / ``solvePnP`` return the inverse, ``T_1_0``; we convert.)
* Covariances are 6x6 in the ROS ``PoseWithCovariance`` order (x, y, z, rx, ry, rz): translation
  first, then rotation about x, y, z in radians. Both parts are expressed in the reference frame
  (camera 0): the perturbed pose is ``R = exp([d_theta]_x) R_hat``, ``t = t_hat + d_t``.
* Monocular translation has no scale: ``t`` is unit norm (``metric=False``). Its covariance gets
  ``scale_variance`` (default 1e6, i.e. a standard deviation of 1000 "units") along the
  translation direction, so a filter fusing it effectively ignores the magnitude but still uses
  the direction, whose covariance (and the rotation's) comes from the inlier Sampson residuals.
* Pure rotation / too little parallax (median rotation-compensated disparity below
  ``min_parallax_px``): the translation direction is unobservable, so ``estimate_pose_mono``
  returns a rotation-only pose: ``t = 0`` and an isotropic translation covariance of
  ``scale_variance``. The rotation comes from a robust Kabsch fit on bearing vectors.

* Small field of view and forward motion make the essential matrix ill-conditioned: a rotation
  error of a degree or two trades against a translation-direction error of 20-40 degrees with
  almost the same number of inliers (the bas-relief ambiguity). One RANSAC run lands in that wrong
  basin now and then. ``estimate_pose_mono`` therefore runs MAGSAC with several random seeds (a few
  ms each), polishes each distinct model on its inliers and keeps the one with the lowest truncated
  (MSAC) Sampson cost over all matches: the basin that explains the data best, not the first one
  sampled.

Residual variance is floored at ``(sigma_floor_px)^2`` (0.1 px) so exact synthetic data or a lucky
inlier set cannot produce a zero (singular) covariance.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

import cv2
import numpy as np

# REP-103: body x forward, y left, z up; optical z forward, x right, y down.
# R_BODY_OPTICAL maps optical-frame coordinates to body-frame coordinates (columns = optical axes
# expressed in the body frame). Its quaternion (x, y, z, w) is the familiar (-0.5, 0.5, -0.5, 0.5).
R_BODY_OPTICAL = np.array([[0.0, 0.0, 1.0],
                           [-1.0, 0.0, 0.0],
                           [0.0, -1.0, 0.0]])
R_OPTICAL_BODY = R_BODY_OPTICAL.T.copy()
T_BODY_OPTICAL = np.eye(4)
T_BODY_OPTICAL[:3, :3] = R_BODY_OPTICAL
T_OPTICAL_BODY = np.eye(4)
T_OPTICAL_BODY[:3, :3] = R_OPTICAL_BODY

DEFAULT_SCALE_VARIANCE = 1e6
DEFAULT_POSE_HYPOTHESES = 6  # seeded MAGSAC runs per mono pose (at most)
DEFAULT_POSE_SETTLE = 2  # ... stopped early once this many runs in a row do not lower the best cost
POSE_SETTLE_GAIN = 0.01  # by more than this fraction (seeds of one basin differ by less: noise in the sample)
MAX_POSE_HYPOTHESES = 32
SIGMA_FLOOR_PX = 0.1


@dataclass
class RelativePose:
    """Relative pose ``T_0_1`` of camera 1 (newer) in camera 0 (reference) coordinates.

    R:           (3, 3) rotation, maps camera-1 vectors to camera-0 vectors.
    t:           (3,) position of camera 1 in camera 0 (metric units of the calibration when
                 ``metric``, else unit norm, or zero for a rotation-only estimate).
    covariance:  (6, 6) over (x, y, z, rx, ry, rz), see the module docstring.
    num_inliers: correspondences supporting the pose.
    num_matches: correspondences given to the estimator (finite ones).
    metric:      True for stereo/PnP (metric translation), False for monocular.
    inliers:     (N,) bool over the correspondences given to the estimator, in their order (non-finite ones
                 False): those its model explains (mono: the essential matrix's inliers; for a rotation-only
                 pose also the rotation's, so more than ``num_inliers``; PnP: the final inliers); None where
                 not known.
    """

    R: np.ndarray
    t: np.ndarray
    covariance: np.ndarray
    num_inliers: int
    num_matches: int
    metric: bool
    inliers: np.ndarray | None = None

    def as_matrix(self) -> np.ndarray:
        """(4, 4) homogeneous ``T_0_1``."""
        return make_transform(self.R, self.t)

    @property
    def inlier_ratio(self) -> float:
        return self.num_inliers / max(self.num_matches, 1)


# ---------------------------------------------------------------------------------------------
# Small SE(3) / SO(3) helpers
# ---------------------------------------------------------------------------------------------
def make_transform(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(3, 3) rotation + (3,) translation -> (4, 4) homogeneous transform."""
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.asarray(t, dtype=np.float64).reshape(3)
    return T


def compose(T_a_b: np.ndarray, T_b_c: np.ndarray) -> np.ndarray:
    """``T_a_c = T_a_b @ T_b_c`` (4x4 each)."""
    return np.asarray(T_a_b, dtype=np.float64) @ np.asarray(T_b_c, dtype=np.float64)


def invert(T_a_b: np.ndarray) -> np.ndarray:
    """``T_b_a`` from ``T_a_b`` using the rigid-body structure (no general matrix inverse)."""
    R, t = T_a_b[:3, :3], T_a_b[:3, 3]
    return make_transform(R.T, -R.T @ t)


def skew(v: np.ndarray) -> np.ndarray:
    """(3,) -> (3, 3) cross-product matrix, ``skew(a) @ b == cross(a, b)``."""
    x, y, z = v
    return np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])


def so3_exp(w: np.ndarray) -> np.ndarray:
    """Rotation vector (3,) [rad] -> (3, 3) rotation (Rodrigues)."""
    w = np.asarray(w, dtype=np.float64)
    theta = float(np.linalg.norm(w))
    W = skew(w)
    if theta < 1e-8:  # second-order Taylor expansion keeps it exact to float precision
        return np.eye(3) + W + 0.5 * W @ W
    return np.eye(3) + np.sin(theta) / theta * W + (1.0 - np.cos(theta)) / theta**2 * W @ W


def so3_log(R: np.ndarray) -> np.ndarray:
    """(3, 3) rotation -> rotation vector (3,) [rad] (via the quaternion: stable near 0 and pi)."""
    x, y, z, w = matrix_to_quaternion(R)
    v = np.array([x, y, z])
    s = float(np.linalg.norm(v))
    if s < 1e-12:
        return 2.0 * v  # small angle: q ~ (w/2, 1)
    return 2.0 * np.arctan2(s, w) * v / s


def rotation_angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:
    """Angle [deg] of the rotation taking R_a to R_b (geodesic distance on SO(3))."""
    return float(np.degrees(np.linalg.norm(so3_log(np.asarray(R_a).T @ np.asarray(R_b)))))


def translation_direction_error_deg(t_a: np.ndarray, t_b: np.ndarray) -> float:
    """Angle [deg] between two translation directions (sign matters, range [0, 180]).

    Returns nan when either vector has (near) zero length: there is no direction to compare.
    """
    a, b = np.asarray(t_a, dtype=np.float64).ravel(), np.asarray(t_b, dtype=np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na < 1e-12 or nb < 1e-12:
        return float("nan")
    # atan2 of |cross| and dot is accurate for tiny angles, unlike arccos of the dot product.
    return float(np.degrees(np.arctan2(np.linalg.norm(np.cross(a, b)), float(a @ b))))


def matrix_to_quaternion(R: np.ndarray) -> np.ndarray:
    """(3, 3) rotation -> unit quaternion (x, y, z, w), w >= 0 (ROS/Eigen component order).

    Shepperd's method: pick the largest of (w, x, y, z) to divide by, so it is stable everywhere
    (including 180 deg rotations where w -> 0).
    """
    R = np.asarray(R, dtype=np.float64)
    tr = R[0, 0] + R[1, 1] + R[2, 2]
    diag = np.array([tr, R[0, 0], R[1, 1], R[2, 2]])
    k = int(np.argmax(diag))
    if k == 0:
        s = 2.0 * np.sqrt(max(1.0 + tr, 0.0))  # s = 4w
        q = np.array([(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s])
    elif k == 1:
        s = 2.0 * np.sqrt(max(1.0 + R[0, 0] - R[1, 1] - R[2, 2], 0.0))  # s = 4x
        q = np.array([0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s, (R[2, 1] - R[1, 2]) / s])
    elif k == 2:
        s = 2.0 * np.sqrt(max(1.0 - R[0, 0] + R[1, 1] - R[2, 2], 0.0))  # s = 4y
        q = np.array([(R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s, (R[0, 2] - R[2, 0]) / s])
    else:
        s = 2.0 * np.sqrt(max(1.0 - R[0, 0] - R[1, 1] + R[2, 2], 0.0))  # s = 4z
        q = np.array([(R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s, (R[1, 0] - R[0, 1]) / s])
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """Quaternion (x, y, z, w) (normalised here) -> (3, 3) rotation."""
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def pose_covariance_adjoint(T_a_c: np.ndarray, R_b_c_rel: np.ndarray, lever_arm: bool = True) -> np.ndarray:
    """(6, 6) Jacobian that moves a relative-pose covariance from camera frame c to frame a.

    For ``T_a0_a1 = T_ac T_c0_c1 T_ac^-1`` with our left-perturbation convention
    (``d_theta_a = R_ac d_theta``, ``d_t_a = R_ac d_t + [R_a t_ac]_x d_theta_a`` where ``R_a`` is
    the rotation of ``T_a0_a1``). ``R_b_c_rel`` is that relative rotation in frame a.
    ``lever_arm=False`` drops the translation/rotation coupling (scale-free monocular poses).
    """
    R_ac, t_ac = T_a_c[:3, :3], T_a_c[:3, 3]
    A = np.zeros((6, 6))
    A[:3, :3] = R_ac
    A[3:, 3:] = R_ac
    if lever_arm:
        A[:3, 3:] = skew(R_b_c_rel @ t_ac) @ R_ac
    return A


def relative_pose_in_base(pose: RelativePose, T_base_camera: np.ndarray) -> RelativePose:
    """Express an optical-frame relative pose ``T_c0_c1`` as ``T_b0_b1`` of the rigidly attached base.

    ``T_b0_b1 = T_bc T_c0_c1 T_bc^-1`` and the covariance is moved with the adjoint-like Jacobian
    ``A Sigma A^T`` (see ``pose_covariance_adjoint``).

    Monocular poses (``metric=False``) have no scale, so the metric lever arm ``t_bc`` cannot be
    combined with them: only the rotation part of ``T_base_camera`` is applied (the result stays a
    unit/zero-norm direction and ``metric`` stays False).
    """
    T_bc = np.asarray(T_base_camera, dtype=np.float64).copy()
    if not pose.metric:
        T_bc[:3, 3] = 0.0
    T_b = T_bc @ pose.as_matrix() @ invert(T_bc)
    A = pose_covariance_adjoint(T_bc, T_b[:3, :3], lever_arm=pose.metric)
    cov = A @ pose.covariance @ A.T
    return RelativePose(T_b[:3, :3], T_b[:3, 3].copy(), 0.5 * (cov + cov.T), pose.num_inliers,
                        pose.num_matches, pose.metric, pose.inliers)


def scaled_translation(pose: RelativePose, scale: float) -> RelativePose:
    """``pose`` with its translation times ``scale`` >= 0 and the covariance moved with it (translation block
    times scale^2, cross blocks times scale): a monocular unit direction at a step length. ``pose`` itself for
    ``scale`` 1, and for 0 (a rotation-only pose: zero translation, its covariance stays)."""
    if scale == 1.0 or scale == 0.0:
        return pose
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"translation scale must be finite and >= 0, got {scale}")
    S = np.diag([scale] * 3 + [1.0] * 3)
    return RelativePose(pose.R, pose.t * scale, S @ pose.covariance @ S, pose.num_inliers, pose.num_matches,
                        pose.metric, pose.inliers)


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------
def _as_points(pts: np.ndarray, name: str) -> tuple[np.ndarray | None, str]:
    try:
        p = np.asarray(pts, dtype=np.float64)
    except (TypeError, ValueError):
        return None, f"{name} is not numeric"
    if p.ndim == 3 and p.shape[1:] == (1, 2):  # OpenCV's point layout (cv2.goodFeaturesToTrack, projectPoints)
        p = p.reshape(-1, 2)
    if p.ndim != 2 or p.shape[1] != 2:
        if p.size == 0:
            return np.zeros((0, 2)), ""
        return None, f"{name} must be (N, 2) or (N, 1, 2), got shape {p.shape}"
    return p, ""


def _check_K(K: np.ndarray, name: str) -> tuple[np.ndarray | None, str]:
    try:
        K = np.asarray(K, dtype=np.float64)
    except (TypeError, ValueError):
        return None, f"{name} is not numeric"
    if K.shape != (3, 3) or not np.all(np.isfinite(K)):
        return None, f"{name} must be a finite 3x3 matrix"
    if K[0, 0] <= 0 or K[1, 1] <= 0 or abs(np.linalg.det(K)) < 1e-12:
        return None, f"{name} is not a valid intrinsic matrix"
    return K, ""


def _check_transform(T: np.ndarray, name: str) -> tuple[np.ndarray | None, str]:
    try:
        T = np.asarray(T, dtype=np.float64)
    except (TypeError, ValueError):
        return None, f"{name} is not numeric"
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        return None, f"{name} must be a finite 4x4 matrix"
    R = T[:3, :3]
    if np.abs(R.T @ R - np.eye(3)).max() > 1e-5 or np.linalg.det(R) < 0:
        return None, f"{name} rotation is not a proper rotation"
    return T, ""


def _finite_rows(*arrays: np.ndarray) -> np.ndarray:
    ok = np.ones(len(arrays[0]), dtype=bool)
    for a in arrays:
        ok &= np.all(np.isfinite(a), axis=1)
    return ok


def _num_distinct(pts: np.ndarray, tol: float = 1e-6) -> int:
    if len(pts) == 0:
        return 0
    return int(len(np.unique(np.round(pts / tol).astype(np.int64), axis=0)))


def _valid_covariance(cov: np.ndarray) -> bool:
    if cov.shape != (6, 6) or not np.all(np.isfinite(cov)):
        return False
    try:
        np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        return False
    return True


def normalise_pixels(pts: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(N, 2) pixels -> (N, 3) homogeneous normalised image coordinates (z = 1)."""
    h = np.concatenate([pts, np.ones((len(pts), 1))], axis=1)
    return h @ np.linalg.inv(K).T


def _numeric_jacobian(fn: Callable[[np.ndarray], np.ndarray], dim: int, eps: float = 1e-6) -> np.ndarray:
    """Central-difference Jacobian (M, dim) of ``fn`` (dim,) -> (M,) at 0."""
    cols = []
    for i in range(dim):
        d = np.zeros(dim)
        d[i] = eps
        cols.append((fn(d) - fn(-d)) / (2 * eps))
    return np.stack(cols, axis=1)


def _never_raise(fn: Callable[..., tuple[RelativePose | None, str]]) -> Callable[..., tuple[RelativePose | None, str]]:
    """Safety net for the node: a numerical corner case nobody foresaw becomes a reason, not a crash."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> tuple[RelativePose | None, str]:
        try:
            return fn(*args, **kwargs)
        except (ValueError, TypeError, IndexError, np.linalg.LinAlgError, cv2.error, FloatingPointError) as e:
            return None, f"pose estimation failed ({type(e).__name__}: {e})"
    return wrapper


def _covariance_from_jacobian(J: np.ndarray, sigma2: float) -> np.ndarray | None:
    """``(J^T J)^-1 sigma^2`` or None when J^T J is (numerically) singular."""
    JtJ = J.T @ J
    if not np.all(np.isfinite(JtJ)):
        return None
    w = np.linalg.eigvalsh(JtJ)
    if w[0] <= 1e-12 * max(w[-1], 1e-300):
        return None
    cov = np.linalg.inv(JtJ) * sigma2
    return 0.5 * (cov + cov.T)


# ---------------------------------------------------------------------------------------------
# Monocular: essential matrix
# ---------------------------------------------------------------------------------------------
def _sampson(R: np.ndarray, t: np.ndarray, x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    """Sampson distances (N,) [normalised units] for ``x0^T E x1 = 0`` with ``E = [t]_x R`` (T_0_1)."""
    E = skew(t) @ R
    Ex1 = x1 @ E.T
    Etx0 = x0 @ E
    num = np.sum(x0 * Ex1, axis=1)
    den = np.sqrt(Ex1[:, 0] ** 2 + Ex1[:, 1] ** 2 + Etx0[:, 0] ** 2 + Etx0[:, 1] ** 2)
    return num / np.maximum(den, 1e-15)


def pose_consistent(x0: np.ndarray, x1: np.ndarray, R: np.ndarray, t: np.ndarray, gate: float) -> np.ndarray:
    """(N,) bool: the correspondences ``x0`` <-> ``x1`` ((N, 3) normalised points, z = 1) that the relative pose
    ``T_0_1 = (R, t)`` explains within ``gate`` [normalised units]: the Sampson distance under ``E = [t]_x R``, or,
    for a rotation-only pose (t = 0), the distance of ``x0`` to ``x1`` rotated into camera 0. The scale of ``t``
    does not matter (mono or metric). Like an F-matrix RANSAC, it cannot reject a wrong match along its epipolar
    line."""
    x0 = np.asarray(x0, dtype=np.float64).reshape(-1, 3)
    x1 = np.asarray(x1, dtype=np.float64).reshape(-1, 3)
    t = np.asarray(t, dtype=np.float64).reshape(3)
    if np.linalg.norm(t) > 1e-12:
        d = np.abs(_sampson(R, t / np.linalg.norm(t), x0, x1))
    else:
        d = np.linalg.norm(_rotation_residuals(np.asarray(R, dtype=np.float64), x0, x1), axis=1)
    return np.isfinite(d) & (d <= float(gate))


def translation_significant(t: np.ndarray, cov_t: np.ndarray, chi2: float = 11.34) -> bool:
    """Whether a metric translation ``t`` (3,) stands out of its covariance ``cov_t`` (3, 3): Mahalanobis distance
    squared above ``chi2`` (default: 3 dof at 99 %). A still camera's estimate is a few millimetres in a random
    direction, not a direction to draw epipolar lines with."""
    try:
        return float(t @ np.linalg.solve(np.asarray(cov_t, dtype=np.float64), t)) > chi2
    except np.linalg.LinAlgError:
        return True


_SO3_GENERATORS = tuple(skew(e) for e in np.eye(3))  # d/dw_k of [w]_x, built once


def _tangent_basis(t: np.ndarray) -> np.ndarray:
    """(3, 2) orthonormal basis of the plane orthogonal to unit vector t."""
    a = np.array([1.0, 0.0, 0.0]) if abs(t[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    b1 = skew(t) @ a  # t x a (np.cross's generic axis handling costs more than the LM step it serves)
    b1 /= np.linalg.norm(b1)
    return np.stack([b1, skew(t) @ b1], axis=1)


def _perturb_mono(R: np.ndarray, t: np.ndarray, B: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """5-dof perturbation: d[:3] rotation (left, frame 0), d[3:] direction along the basis B."""
    t_new = t + B @ d[3:]
    return so3_exp(d[:3]) @ R, t_new / np.linalg.norm(t_new)


def _sampson_pose_jacobian(R: np.ndarray, t: np.ndarray, B: np.ndarray, x0: np.ndarray,
                           x1: np.ndarray, d_num: np.ndarray | None = None) -> np.ndarray:
    """(N, 5) analytic derivatives of ``_sampson`` at d = 0 of ``_perturb_mono(R, t, B, d)``.

    The chain rule through E = [t]_x R: d E / d rot_k = [t]_x [e_k]_x R (left perturbation) and
    d E / d dir_j = [B_j]_x R (the normalisation of t + B d is flat at d = 0 because B is orthogonal
    to the unit t). Ten numeric Sampson evaluations per LM iteration cost more than the rest of the
    mono pose together.
    """
    tx = skew(t)
    dE = [tx @ g @ R for g in _SO3_GENERATORS] + [skew(B[:, j]) @ R for j in range(2)]
    return _sampson_E_jacobian(tx @ R, x0, x1, d_num) @ np.stack([d.reshape(9) for d in dE], axis=1)


# The mono polish stops once an accepted LM step lowers the cost by less than this fraction (Ceres' default
# function_tolerance). It was 1e-10, i.e. never before the iteration cap: ~9 Jacobians per polish, most of them moving
# the pose by far less than the noise (the polish was ~60 % of the pose time on pairs four frames apart).
LM_FUNCTION_TOLERANCE = 1e-6


def _refine_essential(R: np.ndarray, t: np.ndarray, x0: np.ndarray, x1: np.ndarray,
                      iters: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Levenberg-Marquardt on the inlier Sampson distances over the 5-dof (R, unit t)."""
    lam = 1e-3
    r = _sampson(R, t, x0, x1)
    cost = float(r @ r)
    d_num = _outer_rows(x0, x1)  # the same at every iteration
    for _ in range(iters):
        B = _tangent_basis(t)
        J = _sampson_pose_jacobian(R, t, B, x0, x1, d_num)
        JtJ, g = J.T @ J, J.T @ r
        improved = False
        for _ in range(5):
            try:
                step = -np.linalg.solve(JtJ + lam * np.diag(np.diag(JtJ) + 1e-12), g)
            except np.linalg.LinAlgError:
                break
            R_new, t_new = _perturb_mono(R, t, B, step)
            r_new = _sampson(R_new, t_new, x0, x1)
            new_cost = float(r_new @ r_new)
            if np.isfinite(new_cost) and new_cost < cost:
                R, t, r, improved = R_new, t_new, r_new, True
                converged = cost - new_cost < LM_FUNCTION_TOLERANCE * cost
                cost, lam = new_cost, lam * 0.3
                break
            lam *= 10.0
        if not improved or converged:
            break
    return R, t


def ray_depths(x0: np.ndarray, x1: np.ndarray, R: np.ndarray, t: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where the rays of each match come closest: (l0, l1, det), (N,) each, with ``l0 x0 ~ l1 R x1 + t``.

    x0, x1: (N, 3) rays in camera 0 and camera 1; R, t: camera 1 in camera 0. Least squares for (l0, l1) in
    [a, -b] [l0, l1]^T = t (a = x0, b = R x1) via the 2x2 normal equations; ``det`` is their determinant (0 for
    parallel rays, where l0 and l1 mean nothing). For rays with z = 1, l0 and l1 are the depths.
    """
    a, b = x0, x1 @ R.T
    aa, bb, ab = np.sum(a * a, 1), np.sum(b * b, 1), np.sum(a * b, 1)
    at, bt = a @ t, b @ t
    det = aa * bb - ab * ab
    safe = np.where(np.abs(det) < 1e-15, 1e-15, det)
    return (bb * at - ab * bt) / safe, (ab * at - aa * bt) / safe, det


def _cheirality(R: np.ndarray, t: np.ndarray, x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    """(N,) bool: the two rays of each match meet in front of both cameras (``l0 x0 = l1 R x1 + t``)."""
    l0, l1, det = ray_depths(x0, x1, R, t)
    return (np.abs(det) > 1e-15) & (l0 > 0) & (l1 > 0)


def _kabsch(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotation R minimising sum ||a_i - R b_i||^2 for (N, 3) unit vectors."""
    U, _, Vt = np.linalg.svd(a.T @ b)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return U @ D @ Vt


def _rotation_residuals(R: np.ndarray, x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    """(N, 2) difference in normalised coordinates between x0 and x1 rotated into frame 0."""
    p = x1 @ R.T
    z = np.where(np.abs(p[:, 2]) < 1e-9, 1e-9, p[:, 2])
    return x0[:, :2] - p[:, :2] / z[:, None]


def _fit_rotation_only(x0: np.ndarray, x1: np.ndarray, init: np.ndarray,
                       thr: float) -> tuple[np.ndarray, np.ndarray]:
    """Robust Kabsch: fit on ``init`` rows, then re-select rows within ``thr`` and refit."""
    b0 = x0 / np.linalg.norm(x0, axis=1, keepdims=True)
    b1 = x1 / np.linalg.norm(x1, axis=1, keepdims=True)
    sel = init.copy()
    R = _kabsch(b0[sel], b1[sel])
    for _ in range(3):
        err = np.linalg.norm(_rotation_residuals(R, x0, x1), axis=1)
        new_sel = err < thr
        if new_sel.sum() < 3:
            break
        sel = new_sel
        R = _kabsch(b0[sel], b1[sel])
    return R, sel


def _magsac_params(thr: float, confidence: float, max_iters: int, seed: int) -> cv2.UsacParams:
    """OpenCV's USAC_MAGSAC preset with our threshold and an explicit random seed."""
    p = cv2.UsacParams()
    p.threshold, p.confidence, p.maxIterations, p.randomGeneratorState = thr, confidence, int(max_iters), int(seed)
    p.sampler, p.score = cv2.SAMPLING_UNIFORM, cv2.SCORE_METHOD_MAGSAC
    p.loMethod, p.loIterations, p.loSampleSize = cv2.LOCAL_OPTIM_SIGMA, 10, 50
    p.final_polisher, p.final_polisher_iterations = cv2.MAGSAC, 10
    return p


Hypothesis = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # R, unit t, cheirality / RANSAC inliers


def _essential_hypotheses(x0: np.ndarray, x1: np.ndarray, thr: float, confidence: float, max_iters: int,
                          seeds: range, known: list[Hypothesis] | None = None) -> tuple[list[Hypothesis], str]:
    """Distinct (R, unit t, cheirality inliers, RANSAC inliers) candidates for ``T_0_1``, one MAGSAC run
    (a few ms) per random seed, in seed order.

    Candidates in the same basin as an earlier one or one of ``known`` (rotation within 0.1 deg,
    direction within 1 deg) are dropped.
    """
    out: list[Hypothesis] = []
    why = "essential matrix estimation failed (no model)"
    eye, no_dist = np.eye(3), np.zeros((1, 5))
    for seed in seeds:
        try:
            # OpenCV's points1/points2 are our 0/1; its E satisfies x1^T E x0 = 0.
            E, mask = cv2.findEssentialMat(x0[:, :2], x1[:, :2], eye, eye, no_dist, no_dist,
                                           _magsac_params(thr, confidence, max_iters, seed))
        except cv2.error as e:
            why = f"essential matrix estimation failed ({str(e).strip().splitlines()[-1]})"
            continue
        if E is None or mask is None or E.shape[1:] != (3,) or not np.all(np.isfinite(E)):
            continue
        E = E[:3]  # a degenerate sample may give up to three stacked solutions: the first is best-scored
        try:
            _, R_10, t_10, chir = cv2.recoverPose(E, x0[:, :2], x1[:, :2], eye, mask=mask.copy())
        except cv2.error as e:
            why = f"pose recovery failed ({str(e).strip().splitlines()[-1]})"
            continue
        # OpenCV: X1 = R_10 X0 + t_10. Ours: T_0_1 = inverse.
        R, t = R_10.T, -R_10.T @ t_10.ravel()
        if not np.all(np.isfinite(t)) or np.linalg.norm(t) < 1e-9:
            why = "degenerate translation"
            continue
        t = t / np.linalg.norm(t)
        if any(rotation_angle_deg(R, Rb) < 0.1 and translation_direction_error_deg(t, tb) < 1.0
               for Rb, tb, _, _ in (known or []) + out):
            continue  # the same basin again: polishing it twice would only cost time
        inl = chir.ravel().astype(bool) if chir is not None else np.zeros(len(x0), dtype=bool)
        out.append((R, t, inl, mask.ravel().astype(bool)))
    return out, why


def _polish_essential(R: np.ndarray, t: np.ndarray, inl: np.ndarray, x0: np.ndarray, x1: np.ndarray, thr: float,
                      min_inliers: int, rounds: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Refine on the inliers, re-select inliers with the better model (a consistent set), repeat."""
    for _ in range(rounds):
        if inl.sum() < min_inliers:
            break
        R, t = _refine_essential(R, t, x0[inl], x1[inl])
        new_inl = (np.abs(_sampson(R, t, x0, x1)) < 2.0 * thr) & _cheirality(R, t, x0, x1)
        if new_inl.sum() < min_inliers or np.array_equal(new_inl, inl):
            break
        inl = new_inl
    return R, t, inl


def _msac_cost(R: np.ndarray, t: np.ndarray, x0: np.ndarray, x1: np.ndarray, thr: float) -> float:
    """Truncated squared Sampson cost over all matches; points behind a camera cost the maximum."""
    r2 = np.minimum(_sampson(R, t, x0, x1) ** 2, thr * thr)
    return float(np.sum(np.where(_cheirality(R, t, x0, x1), r2, thr * thr)))


@_never_raise
def estimate_pose_mono(pts0: np.ndarray, pts1: np.ndarray, K0: np.ndarray, K1: np.ndarray,
                       ransac_px: float = 1.0, confidence: float = 0.999, min_matches: int = 30,
                       min_inliers: int = 20, min_parallax_px: float = 2.0,
                       scale_variance: float = DEFAULT_SCALE_VARIANCE, max_iters: int = 10000,
                       refine: bool = True, hypotheses: int = DEFAULT_POSE_HYPOTHESES,
                       settle: int = DEFAULT_POSE_SETTLE) -> tuple[RelativePose | None, str]:
    """Relative pose ``T_0_1`` (unit translation) from 2D-2D matches of a monocular camera.

    Args:
        pts0, pts1: (N, 2) matched pixels in image 0 (reference, older) and image 1 (newer).
            Rows with non-finite values are dropped.
        K0, K1: (3, 3) intrinsics of the two images.
        ransac_px: MAGSAC threshold in pixels (converted to normalised units by the mean focal).
        min_matches: finite matches required; min_inliers: inliers passing the cheirality check.
        min_parallax_px: below this median rotation-compensated disparity, a rotation-only pose
            (t = 0) is returned (see module docstring).
        scale_variance: translation variance along the (unknown-scale) translation direction.
        refine: Levenberg-Marquardt on the inlier Sampson distances after RANSAC.
        hypotheses: MAGSAC runs with different random seeds, at most; the polished model with the lowest
            MSAC cost over all matches wins (1 = a single MAGSAC run).
        settle: stop seeding once this many runs in a row have not lowered the best MSAC cost by more than
            ``POSE_SETTLE_GAIN`` (0 = always run ``hypotheses``). Where the data pin the model down (most
            frames of a moving camera) every seed finds it again: further runs cost time and change nothing.

    Returns:
        (pose, reason): pose is None on failure and ``reason`` says why; on success reason is
        "ok" or describes the rotation-only fallback.
    """
    p0, why = _as_points(pts0, "pts0")
    if p0 is None:
        return None, why
    p1, why = _as_points(pts1, "pts1")
    if p1 is None:
        return None, why
    if len(p0) != len(p1):
        return None, f"pts0 and pts1 differ in length ({len(p0)} != {len(p1)})"
    K0, why = _check_K(K0, "K0")
    if K0 is None:
        return None, why
    K1, why = _check_K(K1, "K1")
    if K1 is None:
        return None, why
    ok = _finite_rows(p0, p1)
    p0, p1 = p0[ok], p1[ok]
    n = len(p0)
    need = max(int(min_matches), 5)
    if n < need:
        return None, f"too few matches ({n} < {need})"
    if min(_num_distinct(p0), _num_distinct(p1)) < 5:
        return None, "degenerate matches (fewer than 5 distinct points)"

    focal = float(np.mean([K0[0, 0], K0[1, 1], K1[0, 0], K1[1, 1]]))
    thr = float(ransac_px) / focal
    x0, x1 = normalise_pixels(p0, K0), normalise_pixels(p1, K1)
    hyps, why = _essential_hypotheses(x0, x1, thr, confidence, max_iters, range(1))
    if not hyps:
        return None, why
    ransac_inl = hyps[0][3]  # the first (MAGSAC) model's inliers: the parallax test below
    if ransac_inl.sum() < min_inliers:
        return None, f"too few RANSAC inliers ({int(ransac_inl.sum())} < {min_inliers})"

    # Parallax test: how well does a pure rotation explain the inliers? If the median
    # rotation-compensated disparity is tiny, the translation direction is noise.
    R_rot, rot_inl = _fit_rotation_only(x0, x1, ransac_inl, 3.0 * thr)
    parallax_px = float(np.median(np.linalg.norm(_rotation_residuals(R_rot, x0[ransac_inl], x1[ransac_inl]),
                                                 axis=1))) * focal
    if parallax_px < min_parallax_px:
        # (the matches it verifies: the rotation's inliers and the essential matrix's, which keep the near points
        # whose parallax the rotation leaves; at exact standstill or pure rotation E is degenerate)
        return _rotation_only_pose(R_rot, x0[rot_inl], x1[rot_inl], n, focal, scale_variance,
                                   min_inliers, parallax_px, min_parallax_px, _input_mask(ok, ransac_inl | rot_inl))

    # More seeds only once there is parallax (a rotation-only frame does not need them). RANSAC's model is
    # only as good as its best minimal sample: polish every hypothesis briefly, keep the one that explains all
    # matches best, then polish that one to convergence. Seeding stops early (RANSAC's adaptive termination,
    # one level up) once `settle` runs in a row have not lowered the best cost: where the data pin the model
    # down, every seed finds it again and more runs change nothing.
    def polished(hyp: Hypothesis) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        R, t, inl, _ = hyp
        if refine:
            R, t, inl = _polish_essential(R, t, inl, x0, x1, thr, min_inliers, rounds=1)
        return _msac_cost(R, t, x0, x1, 2.0 * thr), R, t, inl

    scored = [polished(hyps[0])]
    best, repeats = scored[0][0], 0
    for seed in range(1, max(int(hypotheses), 1)):
        if 0 < int(settle) <= repeats:
            break
        new, _ = _essential_hypotheses(x0, x1, thr, confidence, max_iters, range(seed, seed + 1), hyps)
        if new:  # else no model, or the same model as an earlier seed
            hyps += new
            scored.append(polished(new[0]))
            if scored[-1][0] < (1.0 - POSE_SETTLE_GAIN) * best:
                best, repeats = scored[-1][0], 0
                continue
        repeats += 1
    _, R, t, inl = min(scored, key=lambda c: c[0])
    if refine:
        R, t, inl = _polish_essential(R, t, inl, x0, x1, thr, min_inliers, rounds=3)
    if int(inl.sum()) < min_inliers:
        return None, f"too few inliers passing the cheirality check ({int(inl.sum())} < {min_inliers})"

    r = _sampson(R, t, x0[inl], x1[inl])
    dof = max(len(r) - 5, 1)
    sigma2 = max(float(r @ r) / dof, (SIGMA_FLOOR_PX / focal) ** 2)
    B = _tangent_basis(t)
    J = _sampson_pose_jacobian(R, t, B, x0[inl], x1[inl])
    cov5 = _covariance_from_jacobian(J, sigma2)
    if cov5 is None:
        return None, "degenerate geometry (singular information matrix)"
    # 5-dof (rotation, direction) -> 6x6 (x, y, z, rx, ry, rz), plus the unknown scale.
    M = np.zeros((6, 5))
    M[:3, 3:] = B
    M[3:, :3] = np.eye(3)
    cov = M @ cov5 @ M.T
    cov[:3, :3] += float(scale_variance) * np.outer(t, t)
    cov = 0.5 * (cov + cov.T)
    if not (np.all(np.isfinite(R)) and np.all(np.isfinite(t)) and _valid_covariance(cov)):
        return None, "invalid pose or covariance (non-finite or not positive definite)"
    return RelativePose(R, t, cov, int(inl.sum()), n, metric=False, inliers=_input_mask(ok, inl)), "ok"


def _input_mask(finite: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A mask over the finite rows an estimator kept -> the same mask over all its input rows."""
    out = np.zeros(len(finite), dtype=bool)
    out[np.flatnonzero(finite)] = np.asarray(mask, dtype=bool)
    return out



def _rotation_only_pose(R: np.ndarray, x0: np.ndarray, x1: np.ndarray, n: int, focal: float,
                        scale_variance: float, min_inliers: int, parallax_px: float,
                        min_parallax_px: float, inliers: np.ndarray | None = None) -> tuple[RelativePose | None, str]:
    """Rotation-only result for (near) zero parallax: t = 0, isotropic translation variance; ``inliers``: the
    input mask the pose reports (``RelativePose.inliers``)."""
    if len(x0) < min_inliers:
        return None, f"too few inliers for a rotation-only pose ({len(x0)} < {min_inliers})"
    r = _rotation_residuals(R, x0, x1).ravel()
    sigma2 = max(float(r @ r) / max(len(r) - 3, 1), (SIGMA_FLOOR_PX / focal) ** 2)
    J = _numeric_jacobian(lambda d: _rotation_residuals(so3_exp(d) @ R, x0, x1).ravel(), 3)
    cov_rot = _covariance_from_jacobian(J, sigma2)
    if cov_rot is None:
        return None, "degenerate geometry (singular information matrix)"
    cov = np.zeros((6, 6))
    cov[:3, :3] = float(scale_variance) * np.eye(3)
    cov[3:, 3:] = cov_rot
    if not (np.all(np.isfinite(R)) and _valid_covariance(cov)):
        return None, "invalid pose or covariance (non-finite or not positive definite)"
    pose = RelativePose(R, np.zeros(3), cov, len(x0), n, metric=False, inliers=inliers)
    return pose, (f"low parallax (median {parallax_px:.2f} px < {min_parallax_px:.2f} px): "
                  "rotation only")


def _sampson_E(E: np.ndarray, x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    """Sampson distances (N,) [normalised units] of ``x0^T E x1 = 0``."""
    Ex1, Etx0 = x1 @ E.T, x0 @ E
    num = np.sum(x0 * Ex1, axis=1)
    return num / np.maximum(np.sqrt(Ex1[:, 0] ** 2 + Ex1[:, 1] ** 2 + Etx0[:, 0] ** 2 + Etx0[:, 1] ** 2), 1e-15)


def _outer_rows(x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    """(N, 9) row-major x0_a x1_b per match: d(x0^T E x1)/dE_ab, which does not depend on E."""
    return (x0[:, :, None] * x1[:, None, :]).reshape(-1, 9)


def _sampson_E_jacobian(E: np.ndarray, x0: np.ndarray, x1: np.ndarray,
                        d_num: np.ndarray | None = None) -> np.ndarray:
    """(N, 9) derivatives of ``_sampson_E`` with respect to the row-major entries of E (``d_num``:
    ``_outer_rows(x0, x1)`` where the caller has it)."""
    Ex1, Etx0 = x1 @ E.T, x0 @ E
    num = np.sum(x0 * Ex1, axis=1)
    den2 = np.maximum(Ex1[:, 0] ** 2 + Ex1[:, 1] ** 2 + Etx0[:, 0] ** 2 + Etx0[:, 1] ** 2, 1e-30)
    den = np.sqrt(den2)
    if d_num is None:
        d_num = _outer_rows(x0, x1)
    # d(den2)/dE_ab = 2 (E x1)_a x1_b [a < 2] + 2 (E^T x0)_b x0_a [b < 2]
    row = np.zeros_like(Ex1)
    row[:, :2] = Ex1[:, :2]
    col = np.zeros_like(Etx0)
    col[:, :2] = Etx0[:, :2]
    d_den2 = 2 * (row[:, :, None] * x1[:, None, :] + x0[:, :, None] * col[:, None, :]).reshape(-1, 9)
    return d_num / den[:, None] - (num / (2 * den2 * den))[:, None] * d_den2


@dataclass
class MonoWindowResult:
    """``refine_mono_window`` output for W edges (W + 1 keyframes).

    R: (W, 3, 3) refined ``R_k_k+1``; t: (W, 3) refined unit-norm directions (the scale of each edge
    stays unknown); scale_ratios: (W,) step lengths relative to the first edge, as the three-view
    tracks see them (a by-product, not a metric scale); pairs / residuals: keyframe pairs and
    correspondences used; cost_before / cost_after: robust cost [px^2] at the start and the end.
    """

    R: np.ndarray
    t: np.ndarray
    scale_ratios: np.ndarray
    pairs: int
    residuals: int
    cost_before: float
    cost_after: float


def _chain_links(links: list[np.ndarray], sizes: list[int], i: int, j: int) -> np.ndarray:
    """(M, 2) keypoint index pairs (keyframe i, keyframe j) along the chain of consecutive links."""
    idx = np.arange(sizes[i])
    for k in range(i, j):
        nxt = np.full(sizes[k], -1, dtype=np.int64)
        nxt[links[k][:, 0]] = links[k][:, 1]
        ok = idx >= 0
        idx = np.where(ok, nxt[np.where(ok, idx, 0)], -1)
    start = np.nonzero(idx >= 0)[0]
    return np.stack([start, idx[start]], axis=1)


def refine_mono_window(x: list[np.ndarray], links: list[np.ndarray], R: np.ndarray, t: np.ndarray,
                       focal: float, max_gap: int = 2, huber_px: float = 1.0, gate_px: float = 3.0,
                       max_iterations: int = 10) -> MonoWindowResult | None:
    """Jointly refine the rotations and translation directions of a chain of monocular keyframes.

    Each edge ``k`` is ``T_k_k+1`` (see the module conventions) with unit-norm ``t[k]``. Pairs of
    keyframes up to ``max_gap`` apart contribute Sampson residuals [px] of the correspondences the
    links chain between them; pairs more than one edge apart see the composed pose, so the
    three-view tracks couple the edges (the pairwise estimates cannot use them). The composition needs
    the steps' relative lengths: one log scale ratio per edge after the first is a free variable
    (the first edge's length is the gauge). Scale stays unknown: the returned directions are unit
    norm and the ratios are only relative. Robust: correspondences whose Sampson distance under the
    initial poses exceeds ``gate_px`` are dropped, the rest get a Huber loss (``huber_px``),
    minimised by Levenberg-Marquardt (``max_iterations``) with a numeric Jacobian built pair by pair
    (a pair sees at most ``max_gap`` edges; scipy's least_squares took 2.5 s per 4-edge window here, this
    0.2 s, both on the shared 2-core CPU).

    Args:
        x: W + 1 arrays (N_k, 3) of homogeneous normalised image points (z = 1), all keypoints of
            each keyframe. links: W arrays (M_k, 2) of keypoint indices (keyframe k, keyframe k + 1).
        R, t: (W, 3, 3), (W, 3) initial edges, e.g. the pairwise ``estimate_pose_mono`` poses
            (translations must be non-zero: rotation-only edges have no direction to refine).
        focal: pixels per normalised unit (residuals and thresholds are in pixels).

    Returns:
        MonoWindowResult, or None with fewer than 2 edges or a zero translation.
    """
    W = len(links)
    R0 = np.asarray(R, dtype=np.float64).reshape(W, 3, 3)
    t0 = np.asarray(t, dtype=np.float64).reshape(W, 3)
    if W < 2 or len(x) != W + 1 or np.any(np.linalg.norm(t0, axis=1) < 1e-9):
        return None
    t0 = t0 / np.linalg.norm(t0, axis=1, keepdims=True)
    bases = [_tangent_basis(tk) for tk in t0]
    sizes = [len(p) for p in x]
    links = [np.asarray(lk, dtype=np.int64).reshape(-1, 2) for lk in links]

    def edge(p: np.ndarray, k: int) -> np.ndarray:
        """T_k_k+1 at parameters p; the scale of edge 0 is the gauge (1)."""
        Rk, tk = _perturb_mono(R0[k], t0[k], bases[k], p[5 * k:5 * k + 5])
        return make_transform(Rk, (np.exp(p[5 * W + k - 1]) if k else 1.0) * tk)

    def pair_essential(edges: list[np.ndarray], i: int, j: int) -> np.ndarray:
        """E = [t]_x R of T_i_j (t normalised: each pair's Sampson residual is scale free)."""
        T = edges[i]
        for k in range(i + 1, j):
            T = T @ edges[k]
        return skew(T[:3, 3] / max(np.linalg.norm(T[:3, 3]), 1e-12)) @ T[:3, :3]

    def pair_residuals(p: np.ndarray, i: int, j: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return _sampson_E(pair_essential([edge(p, k) for k in range(W)], i, j), a, b) * focal

    def local(i: int, j: int) -> list[int]:
        """Parameters a pair sees: its edges' 5 dof, and their scales when it spans several edges."""
        idx = [5 * k + d for k in range(i, j) for d in range(5)]
        return idx + ([5 * W + k - 1 for k in range(i, j) if k] if j - i > 1 else [])

    # correspondences per pair, gated under the initial poses (the pairwise inliers and the
    # three-view tracks consistent with them)
    n_params = 6 * W - 1
    p = np.zeros(n_params)
    pairs = []
    for gap in range(1, max(int(max_gap), 1) + 1):
        for i in range(0, W + 1 - gap):
            ij = _chain_links(links, sizes, i, i + gap)
            if len(ij) == 0:
                continue
            a, b = x[i][ij[:, 0]], x[i + gap][ij[:, 1]]
            keep = np.abs(pair_residuals(p, i, i + gap, a, b)) < gate_px
            if keep.sum() >= 5:
                pairs.append((i, i + gap, a[keep], b[keep], local(i, i + gap)))
    if not any(j - i == 1 for i, j, *_ in pairs) or not any(j - i > 1 for i, j, *_ in pairs):
        return None

    def residuals(p: np.ndarray) -> np.ndarray:
        edges = [edge(p, k) for k in range(W)]
        return np.concatenate([_sampson_E(pair_essential(edges, i, j), a, b) * focal for i, j, a, b, _ in pairs])

    def robust_cost(r: np.ndarray) -> float:
        a = np.abs(r)
        return float(np.sum(np.where(a <= huber_px, a * a, 2 * huber_px * a - huber_px ** 2)))

    def jacobian(p: np.ndarray, eps: float = 1e-7) -> np.ndarray:
        """Per pair: analytic d(Sampson)/dE (N, 9) times central-difference dE/dparameters (9, k)."""
        edges = [edge(p, k) for k in range(W)]
        moved = []  # per parameter: the edge it moves, that edge at p + eps and p - eps
        for c in range(n_params):
            k = c // 5 if c < 5 * W else c - 5 * W + 1
            d = np.zeros(n_params)
            d[c] = eps
            moved.append((k, edge(p + d, k), edge(p - d, k)))
        blocks = []
        for i, j, a, b, idx in pairs:
            dE = np.zeros((9, len(idx)))
            for c_local, c in enumerate(idx):
                k, Tp, Tm = moved[c]
                plus, minus = list(edges), list(edges)
                plus[k], minus[k] = Tp, Tm
                dE[:, c_local] = (pair_essential(plus, i, j) - pair_essential(minus, i, j)).ravel() / (2 * eps)
            Jp = np.zeros((len(a), n_params))
            Jp[:, idx] = _sampson_E_jacobian(pair_essential(edges, i, j), a, b) @ dE * focal
            blocks.append(Jp)
        return np.concatenate(blocks)

    # Levenberg-Marquardt on the Huber cost (iteratively reweighted least squares)
    r = residuals(p)
    cost = cost_before = robust_cost(r)
    lam = 1e-3
    for _ in range(int(max_iterations)):
        w = np.where(np.abs(r) <= huber_px, 1.0, huber_px / np.maximum(np.abs(r), 1e-12))
        J = jacobian(p)
        JtWJ, g = J.T @ (J * w[:, None]), J.T @ (w * r)
        improved = converged = False
        for _ in range(6):
            try:
                step = -np.linalg.solve(JtWJ + lam * np.diag(np.diag(JtWJ) + 1e-12), g)
            except np.linalg.LinAlgError:
                break
            r_new = residuals(p + step)
            new_cost = robust_cost(r_new)
            if np.isfinite(new_cost) and new_cost < cost:
                converged = cost - new_cost < 1e-6 * cost
                p, r, cost, lam, improved = p + step, r_new, new_cost, lam * 0.3, True
                break
            lam *= 10.0
        if not improved or converged:
            break
    Rs, ts = [], []
    for k in range(W):
        Rk, tk = _perturb_mono(R0[k], t0[k], bases[k], p[5 * k:5 * k + 5])
        Rs.append(Rk)
        ts.append(tk)
    return MonoWindowResult(np.array(Rs), np.array(ts), np.exp(np.concatenate([[0.0], p[5 * W:]])), len(pairs),
                            len(r), cost_before, cost)


# ---------------------------------------------------------------------------------------------
# Stereo: triangulation + PnP
# ---------------------------------------------------------------------------------------------
def _gray_float(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 3:
        img = cv2.cvtColor(img[..., :3].astype(np.uint8) if img.dtype != np.uint8 else img[..., :3],
                           cv2.COLOR_RGB2GRAY)
    return img.astype(np.float32)


def match_rectified_stereo(kpts_left: np.ndarray, desc_left: Any, kpts_right: np.ndarray, desc_right: Any,
                           max_row_px: float = 2.0, min_disparity_px: float = -1.0,
                           max_disparity_px: float | None = None, ratio: float = 0.9
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Left/right matches of a rectified stereo pair by descriptor search along the epipolar line (the row).

    The classic stereo-VO search (ORB-SLAM2's stereo matching, LIBVISO2): a right candidate of a left keypoint lies
    on its row (|y_r - y_l| <= ``max_row_px``) at a disparity x_l - x_r in [``min_disparity_px``,
    ``max_disparity_px``] (slightly negative allowed for points at infinity and detection noise). Among those, the
    most similar descriptor (L2-normalised descriptors: cosine similarity) wins if the two are each other's best,
    and the best is clearly better than the second (distance ratio < ``ratio``, distances sqrt(2 - 2 cos)).
    Computed with torch (the caller's thread settings; numpy's BLAS would start threads of its own beside the
    node's stages): one (N, M) product and a few masks, ~1-3 ms at 512 x 512 keypoints against ~40 ms for a
    network pass.

    kpts_*: (N, 2) / (M, 2) pixels; desc_*: (N, D) / (M, D) L2-normalised, numpy or torch. Returns matches (K, 2)
    int64 (left index, right index) and scores (K,) float32 (the cosine similarity, clipped to [0, 1]).
    """
    import torch

    kl = torch.as_tensor(np.asarray(kpts_left, np.float32)).reshape(-1, 2)
    kr = torch.as_tensor(np.asarray(kpts_right, np.float32)).reshape(-1, 2)
    if len(kl) == 0 or len(kr) == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    dl = torch.as_tensor(np.asarray(desc_left) if not torch.is_tensor(desc_left) else desc_left)
    dr = torch.as_tensor(np.asarray(desc_right) if not torch.is_tensor(desc_right) else desc_right)
    dl, dr = dl.detach().float().cpu().reshape(len(kl), -1), dr.detach().float().cpu().reshape(len(kr), -1)
    with torch.inference_mode():
        disparity = kl[:, None, 0] - kr[None, :, 0]
        allowed = ((kl[:, None, 1] - kr[None, :, 1]).abs() <= max_row_px) & (disparity >= min_disparity_px)
        if max_disparity_px is not None:
            allowed &= disparity <= max_disparity_px
        sim = (dl @ dr.T).masked_fill_(~allowed, -float("inf"))
        top = sim.topk(min(2, sim.shape[1]), dim=1)
        best_sim, best = top.values[:, 0], top.indices[:, 0]
        second_sim = top.values[:, 1] if sim.shape[1] > 1 else torch.full_like(best_sim, -float("inf"))
        rows = torch.arange(len(kl))
        mutual = sim.argmax(dim=0)[best] == rows

        def distance(c: torch.Tensor) -> torch.Tensor:
            return (2.0 - 2.0 * c).clamp_min(0.0).sqrt()  # -inf (no candidate) -> inf

        # no second candidate on the row: infinite distance, the ratio test passes
        keep = torch.isfinite(best_sim) & mutual & (distance(best_sim) < ratio * distance(second_sim))
    matches = torch.stack([rows[keep], best[keep]], dim=1).numpy().astype(np.int64)
    return matches, best_sim[keep].clamp(0.0, 1.0).numpy().astype(np.float32)


def refine_stereo_matches(image_left: np.ndarray, image_right: np.ndarray, pts_left: np.ndarray,
                          pts_right: np.ndarray, K_left: np.ndarray, K_right: np.ndarray, half_window: int = 5,
                          search_px: int = 2, min_zncc: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel right pixels of rectified stereo matches: ZNCC block matching along the row.

    Learned keypoints sit on a pixel grid (XFeat: integer positions in its 32-aligned image) and are
    detected independently in both images, so the disparity of a match carries two detection
    errors: about 1.5 px spread (median absolute deviation) on KITTI, against the ground-truth motion
    (``benchmarks/stereo_diagnosis.py``). Depth error grows with the square of the depth, so this noise
    is what limits stereo odometry. Classic stereo VO (LIBVISO2, ORB-SLAM2's stereo matching) fixes
    it the same way: a window around the left pixel, correlated along the rectified row around the
    matched right pixel, with a parabola through the best score and its neighbours.

    Args:
        image_left, image_right: rectified images (HxW gray or HxWx3 RGB).
        pts_left, pts_right: (N, 2) matched pixels.
        K_left, K_right: (3, 3) rectified intrinsics (the right row follows from the left one).
        half_window: the window is (2 h + 1)^2 px. search_px: +- search around the matched right x.
        min_zncc: matches whose best zero-mean normalised correlation is below this keep no depth.

    Returns:
        right: (N, 2) refined right pixels (on the left pixel's rectified row), valid: (N,) bool. A
        match is invalid when its best score is weak or lies on the search border (the matched
        right keypoint is more than ``search_px`` off: a wrong match or an occlusion).
    """
    pl = np.asarray(pts_left, dtype=np.float64).reshape(-1, 2)
    pr = np.asarray(pts_right, dtype=np.float64).reshape(-1, 2)
    n = len(pl)
    out, valid = pr.copy(), np.zeros(n, dtype=bool)
    if n == 0:
        return out, valid
    L, R = _gray_float(image_left), _gray_float(image_right)
    h, w = L.shape[:2]
    Kl, Kr = np.asarray(K_left, dtype=np.float64), np.asarray(K_right, dtype=np.float64)
    rows = Kr[1, 1] * (pl[:, 1] - Kl[1, 2]) / Kl[1, 1] + Kr[1, 2]
    size = 2 * half_window + 1
    margin = half_window + search_px + 2
    for i in range(n):
        xl, yl, xr, yr = pl[i, 0], pl[i, 1], pr[i, 0], rows[i]
        if not (np.isfinite(xr) and margin <= xl < w - margin and margin <= yl < h - margin
                and margin <= xr < w - margin and margin <= yr < h - margin):
            continue
        patch = cv2.getRectSubPix(L, (size, size), (float(xl), float(yl)))
        if float(patch.std()) < 1.0:  # texture-less: correlation is meaningless
            continue
        xc = float(np.round(xr))
        strip = cv2.getRectSubPix(R, (size + 2 * search_px, size), (xc, float(yr)))
        score = cv2.matchTemplate(strip, patch, cv2.TM_CCOEFF_NORMED).ravel()  # 2 search + 1 offsets
        k = int(np.argmax(score))
        if score[k] < min_zncc or k == 0 or k == len(score) - 1:
            continue
        a, b, c = score[k - 1], score[k], score[k + 1]
        denom = a - 2 * b + c
        delta = 0.5 * (a - c) / denom if denom < -1e-9 else 0.0
        out[i] = (xc + (k - search_px) + float(np.clip(delta, -0.5, 0.5)), yr)
        valid[i] = True
    return out, valid


def triangulate_stereo(pts_left: np.ndarray, pts_right: np.ndarray, K_left: np.ndarray,
                       K_right: np.ndarray, T_left_right: np.ndarray, max_reproj_px: float = 1.0,
                       min_depth: float = 0.1, max_depth: float = 100.0) -> tuple[np.ndarray, np.ndarray]:
    """Triangulate stereo matches into the left camera frame.

    Args:
        pts_left, pts_right: (N, 2) matched pixels in the left/right images (same instant).
        K_left, K_right: (3, 3) intrinsics. T_left_right: (4, 4) pose of the right camera in the
            left camera frame (maps right-camera points to left-camera points), metric.
        max_reproj_px: keep points whose reprojection error is below this in both images.
        min_depth, max_depth: accepted depth range [calibration units] in both cameras. The upper
            bound drops far points whose tiny disparity makes their depth unreliable.

    Returns:
        points: (N, 3) float64 in the left camera frame (rows that are not valid are zero). Each
            point lies exactly on the ray of its left pixel, at the triangulated depth: the left
            image is the reference of the temporal PnP, and a point that does not reproject onto its
            own left pixel (DLT splits a vertical rectification residual between both images) shows
            up as motion, every frame: at standstill it accumulated into vertical drift on EuRoC.
        valid: (N,) bool.
    """
    pl, _ = _as_points(pts_left, "pts_left")
    pr, _ = _as_points(pts_right, "pts_right")
    n = len(pl) if pl is not None else 0
    empty = np.zeros((n, 3)), np.zeros(n, dtype=bool)
    Kl, _ = _check_K(K_left, "K_left")
    Kr, _ = _check_K(K_right, "K_right")
    T_lr, _ = _check_transform(T_left_right, "T_left_right")
    if pl is None or pr is None or Kl is None or Kr is None or T_lr is None or len(pr) != n or n == 0:
        return empty
    finite = _finite_rows(pl, pr)
    T_rl = invert(T_lr)
    P_l = Kl @ np.eye(3, 4)
    P_r = Kr @ T_rl[:3, :]
    # Non-finite rows would poison the SVD of their own row only, but keep cv2 away from them.
    pl_s, pr_s = np.where(finite[:, None], pl, 0.0), np.where(finite[:, None], pr, 0.0)
    try:
        Xh = cv2.triangulatePoints(P_l, P_r, pl_s.T.copy(), pr_s.T.copy())
    except cv2.error:
        return empty
    w = Xh[3]
    ok = finite & (np.abs(w) > 1e-12)
    X = np.zeros((n, 3))
    X[ok] = (Xh[:3, ok] / w[ok]).T
    Xr = X @ T_rl[:3, :3].T + T_rl[:3, 3]
    ok &= (X[:, 2] > min_depth) & (X[:, 2] < max_depth) & (Xr[:, 2] > min_depth) & (Xr[:, 2] < max_depth)

    def reproj(P: np.ndarray, pts: np.ndarray) -> np.ndarray:
        h = np.concatenate([X, np.ones((n, 1))], axis=1) @ P.T
        z = np.where(np.abs(h[:, 2]) < 1e-12, 1e-12, h[:, 2])
        return np.linalg.norm(h[:, :2] / z[:, None] - pts, axis=1)

    with np.errstate(invalid="ignore", over="ignore"):
        ok &= (reproj(P_l, pl_s) < max_reproj_px) & (reproj(P_r, pr_s) < max_reproj_px)
    ok &= np.all(np.isfinite(X), axis=1)
    rays = np.concatenate([pl_s, np.ones((n, 1))], axis=1) @ np.linalg.inv(Kl).T  # z = 1
    X = np.where(ok[:, None], rays * X[:, 2:3], 0.0)
    return X, ok


def _solve_pnp_ransac(obj: np.ndarray, img: np.ndarray, K: np.ndarray, ransac_px: float,
                      confidence: float, max_iters: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """USAC-MAGSAC PnP when this OpenCV has it, else classic RANSAC with SQPnP. -> rvec, tvec, inliers."""
    try:
        params = cv2.UsacParams()
        params.threshold = float(ransac_px)
        params.confidence = float(confidence)
        params.maxIterations = int(max_iters)
        params.score = cv2.SCORE_METHOD_MAGSAC
        params.sampler = cv2.SAMPLING_UNIFORM
        params.loMethod = cv2.LOCAL_OPTIM_SIGMA
        params.loIterations = 10
        params.loSampleSize = 14
        params.final_polisher = cv2.MAGSAC
        params.final_polisher_iterations = 10
        ok, _, rvec, tvec, inliers = cv2.solvePnPRansac(obj, img, K.copy(), None, params=params)
        if ok and inliers is not None and len(inliers) > 0:
            return rvec, tvec, inliers.ravel()
    except (cv2.error, AttributeError, TypeError):
        pass
    try:
        ok, rvec, tvec, inliers = cv2.solvePnPRansac(obj, img, K, None, iterationsCount=int(max_iters),
                                                     reprojectionError=float(ransac_px),
                                                     confidence=float(confidence),
                                                     flags=cv2.SOLVEPNP_SQPNP)
    except cv2.error:
        return None
    if not ok or inliers is None:
        return None
    return rvec, tvec, inliers.ravel()


PNP_RANSAC_MODES = ("auto", "pixel", "covariance")
PNP_RESCUED = "ok (covariance gate"  # how the reason of a pose that ransac="auto" took from the covariance gate starts
CHI2_2DOF_99 = 9.21  # chi-square quantile, 2 dof, 0.99: inlier gate on a whitened reprojection residual


def stereo_point_covariance(points: np.ndarray, K: np.ndarray, baseline: float, pixel_sigma_px: float,
                            disparity_sigma_px: float) -> np.ndarray:
    """(N, 3, 3) covariance of rectified-stereo points from their pixel and disparity noise.

    A point is ``X = b (u - cx) / d, Y = b fx (v - cy) / (fy d), Z = fx b / d`` for left pixel (u, v)
    and disparity d. First order: ``Sigma = sigma_px^2 (a a^T + c c^T) + sigma_d^2 X X^T / d^2`` with
    ``a = dX/du``, ``c = dX/dv``: the lateral part grows with depth, the depth part with its square
    (the inverse-depth noise of a disparity), so far points constrain rotation, not translation.
    """
    X = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    fx, fy = float(K[0, 0]), float(K[1, 1])
    Z = np.maximum(X[:, 2], 1e-9)
    d = fx * baseline / Z
    cov = np.zeros((len(X), 3, 3))
    a = baseline / d  # dX/du = (b/d, 0, 0), dY/dv = (0, b fx / (fy d), 0)
    cov[:, 0, 0] += pixel_sigma_px**2 * a**2
    cov[:, 1, 1] += pixel_sigma_px**2 * (a * fx / fy) ** 2
    cov += (disparity_sigma_px**2 / d**2)[:, None, None] * np.einsum("ni,nj->nij", X, X)
    return cov


def whitened_reprojection_chi2(R_10: np.ndarray, t_10: np.ndarray, X0: np.ndarray, cov_X0: np.ndarray,
                               p1: np.ndarray, K1: np.ndarray, pixel_sigma_px: float) -> np.ndarray:
    """(H, N) squared Mahalanobis reprojection errors of points X0 (N, 3) with covariances cov_X0 (N, 3, 3)
    under H poses ``T_1_0 = (R_10 (H, 3, 3), t_10 (H, 3))``, against pixels p1 (N, 2): the point's covariance is
    carried into image 1 as in ``refine_pose_weighted`` (``C = sigma_px^2 I + Jp cov Jp^T``, ``Jp = d pixel / d X0``).
    Points behind camera 1 get +inf."""
    X1 = np.einsum("hij,nj->hni", R_10, X0) + t_10[:, None, :]
    Z = X1[..., 2]
    front = Z > 1e-6
    iz = 1.0 / np.where(front, Z, 1.0)  # behind the camera: any finite value, replaced by inf below
    x, y = X1[..., 0] * iz, X1[..., 1] * iz
    r0 = K1[0, 0] * x + K1[0, 2] - p1[:, 0]
    r1 = K1[1, 1] * y + K1[1, 2] - p1[:, 1]
    # rows of d pixel / d X1 are (fx, 0, -fx x) / Z and (0, fy, -fy y) / Z; chained with R_10 to d / d X0
    fx, fy = K1[0, 0] * iz, K1[1, 1] * iz
    g = [fx * (R_10[:, None, 0, k] - x * R_10[:, None, 2, k]) for k in range(3)]  # row 0 of Jp, (H, N) each
    h = [fy * (R_10[:, None, 1, k] - y * R_10[:, None, 2, k]) for k in range(3)]  # row 1
    S = cov_X0

    def form(u: list[np.ndarray], v: list[np.ndarray]) -> np.ndarray:  # u^T S v, S symmetric, elementwise
        return (u[0] * v[0] * S[:, 0, 0] + u[1] * v[1] * S[:, 1, 1] + u[2] * v[2] * S[:, 2, 2]
                + (u[0] * v[1] + u[1] * v[0]) * S[:, 0, 1] + (u[0] * v[2] + u[2] * v[0]) * S[:, 0, 2]
                + (u[1] * v[2] + u[2] * v[1]) * S[:, 1, 2])

    a = pixel_sigma_px**2 + form(g, g)
    b = form(g, h)
    d = pixel_sigma_px**2 + form(h, h)
    chi2 = (d * r0**2 - 2 * b * r0 * r1 + a * r1**2) / (a * d - b * b)
    return np.where(front & np.isfinite(chi2), chi2, np.inf)


def pnp_ransac_covariance(X0: np.ndarray, cov_X0: np.ndarray, p1: np.ndarray, K1: np.ndarray,
                          pixel_sigma_px: float, gate_chi2: float = CHI2_2DOF_99, confidence: float = 0.999,
                          max_iters: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """PnP RANSAC whose inlier test is the chi-square gate on covariance-whitened reprojection errors
    (``whitened_reprojection_chi2``) instead of a fixed pixel threshold.

    A stereo point's depth error moves its reprojection by an amount that grows with the motion and with the
    point's depth, so under a fixed threshold a correct match of a far or a poorly triangulated point fails
    once the camera has moved a few metres (the KITTI clip, 512 XFeat keypoints, frames 3 apart: 3-23 of 35-65
    matched points within 2 px of their reprojection by the ground-truth motion, 29-59 within the gate; docs/results.md,
    *Stereo tracking across skipped frames*). Hypotheses from minimal samples of 3 (P3P, every solution), MSAC cost
    ``sum(min(chi2, gate))``, adaptive stopping at ``confidence``; seeded, so deterministic.

    Returns (T_0_1 of the best hypothesis, (N,) inlier mask under it), or None.
    """
    n = len(X0)
    if n < 4:
        return None
    rng = np.random.default_rng(seed)
    best_cost, best_T, best_inl = np.inf, None, None
    needed, done, chunk = max_iters, 0, 32
    while done < min(needed, max_iters):
        Rs, ts = [], []
        for _ in range(chunk):
            s = rng.choice(n, 3, replace=False)
            try:
                k, rvecs, tvecs = cv2.solveP3P(X0[s], p1[s], K1, None, flags=cv2.SOLVEPNP_AP3P)
            except cv2.error:
                continue
            for rv, tv in zip(rvecs[:k], tvecs[:k]):
                if np.all(np.isfinite(rv)) and np.all(np.isfinite(tv)):
                    Rs.append(cv2.Rodrigues(rv)[0])
                    ts.append(tv.ravel())
        done += chunk
        if not Rs:
            continue
        R, t = np.array(Rs), np.array(ts)
        chi2 = whitened_reprojection_chi2(R, t, X0, cov_X0, p1, K1, pixel_sigma_px)
        cost = np.minimum(chi2, gate_chi2).sum(1)
        h = int(np.argmin(cost))
        if cost[h] < best_cost:
            best_cost, best_inl = float(cost[h]), chi2[h] < gate_chi2
            best_T = invert(make_transform(R[h], t[h]))
            w = best_inl.mean()
            if w >= 1.0:
                needed = 0
            elif w > 0:
                needed = math.log(1.0 - confidence) / math.log(max(1.0 - w**3, 1e-12))
    if best_T is None:
        return None
    return best_T, best_inl


def _projection_jacobian(X: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(N, 2, 3) d pixel / d point (camera frame) of the pinhole projection."""
    Z = np.where(np.abs(X[:, 2]) < 1e-9, 1e-9, X[:, 2])
    J = np.zeros((len(X), 2, 3))
    J[:, 0, 0] = K[0, 0] / Z
    J[:, 0, 2] = -K[0, 0] * X[:, 0] / Z**2
    J[:, 1, 1] = K[1, 1] / Z
    J[:, 1, 2] = -K[1, 1] * X[:, 1] / Z**2
    return J


def _project(X: np.ndarray, K: np.ndarray) -> np.ndarray:
    Z = np.where(np.abs(X[:, 2]) < 1e-9, 1e-9, X[:, 2])
    return np.stack([K[0, 0] * X[:, 0] / Z + K[0, 2], K[1, 1] * X[:, 1] / Z + K[1, 2]], axis=1)


def refine_pose_weighted(T_01: np.ndarray, X0: np.ndarray, cov_X0: np.ndarray, p1: np.ndarray, K1: np.ndarray,
                         pixel_sigma_px: float, gate_chi2: float = CHI2_2DOF_99, iterations: int = 10,
                         huber: float = 2.0, candidates: np.ndarray | None = None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Gauss-Newton on whitened reprojection residuals: each 3D point's covariance is carried into
    image 1 (``Sigma_r = sigma_px^2 I + J R Sigma_X R^T J^T``), so a far point whose depth is
    uncertain cannot pull the translation; inliers by a chi-square gate on the whitened residual
    (every iteration, over the candidates), Huber weights inside it.

    Args:
        T_01: (4, 4) initial pose of camera 1 in camera 0. X0: (N, 3) points in camera 0 with
            covariances cov_X0 (N, 3, 3). p1: (N, 2) pixels in image 1. K1: (3, 3).
        pixel_sigma_px: keypoint noise in image 1 [px].
        candidates: (N,) bool, the points the gate may accept (default: all).

    Returns:
        (T_01 refined, (N,) inlier mask, (6, 6) covariance in this module's convention or None when
        the information matrix is singular). The covariance is ``(J^T J)^-1`` of the whitened
        residuals, scaled by their variance factor (chi2 / dof) when that exceeds 1.
    """
    T = np.asarray(T_01, dtype=np.float64).copy()
    X0 = np.asarray(X0, dtype=np.float64)
    p1 = np.asarray(p1, dtype=np.float64)

    def whitening(T: np.ndarray) -> np.ndarray:
        T10 = invert(T)
        R10 = T10[:3, :3]
        X1 = X0 @ R10.T + T10[:3, 3]
        Jp = _projection_jacobian(X1, K1) @ R10  # (N, 2, 3) d pixel / d X0
        C = pixel_sigma_px**2 * np.eye(2) + Jp @ cov_X0 @ np.swapaxes(Jp, 1, 2)
        Cinv = np.linalg.inv(C)
        return np.linalg.cholesky(Cinv)  # L L^T = C^-1, whitened e = L^T r

    def residuals(T: np.ndarray, d: np.ndarray, L: np.ndarray, rows: np.ndarray) -> np.ndarray:
        Tp = make_transform(so3_exp(d[3:]) @ T[:3, :3], T[:3, 3] + d[:3])
        T10 = invert(Tp)
        X1 = X0[rows] @ T10[:3, :3].T + T10[:3, 3]
        r = _project(X1, K1) - p1[rows]
        return np.einsum("nji,nj->ni", L[rows], r).ravel()  # L^T r

    def jacobian(T: np.ndarray, L: np.ndarray, rows: np.ndarray) -> np.ndarray:
        # X1 = R^T exp(-d_theta) (X0 - t - d_t) for T_01 = (R, t): dX1/dd_t = -R^T,
        # dX1/dd_theta = R^T [X0 - t]_x (first order), chained with the projection and L^T
        R, t = T[:3, :3], T[:3, 3]
        V = X0[rows] - t
        X1 = V @ R
        Jp = _projection_jacobian(X1, K1) @ R.T  # (n, 2, 3): d pixel / d (world-frame vector)
        Vx = np.zeros((len(rows), 3, 3))
        Vx[:, 0, 1], Vx[:, 0, 2], Vx[:, 1, 2] = -V[:, 2], V[:, 1], -V[:, 0]
        Vx[:, 1, 0], Vx[:, 2, 0], Vx[:, 2, 1] = V[:, 2], -V[:, 1], V[:, 0]
        J = np.concatenate([-Jp, Jp @ Vx], axis=2)  # (n, 2, 6)
        return np.einsum("nji,njk->nik", L[rows], J).reshape(-1, 6)

    all_rows = np.arange(len(X0))
    allowed = np.ones(len(X0), dtype=bool) if candidates is None else np.asarray(candidates, dtype=bool)
    inl = np.zeros(len(X0), dtype=bool)
    for _ in range(iterations):
        L = whitening(T)
        e = residuals(T, np.zeros(6), L, all_rows).reshape(-1, 2)
        T10 = invert(T)
        front = (X0 @ T10[2, :3] + T10[2, 3]) > 1e-6
        chi2 = np.sum(e * e, axis=1)
        inl = front & (chi2 < gate_chi2) & allowed
        if inl.sum() < 6:
            return T, inl, None
        rows = np.nonzero(inl)[0]
        e_in = e[rows].ravel()
        J = jacobian(T, L, rows)
        norm = np.sqrt(chi2[rows])
        w = np.repeat(np.where(norm <= huber, 1.0, huber / np.maximum(norm, 1e-12)), 2)
        H = J.T @ (w[:, None] * J)
        g = J.T @ (w * e_in)
        try:
            dx = -np.linalg.solve(H, g)
        except np.linalg.LinAlgError:
            return T, inl, None
        T = make_transform(so3_exp(dx[3:]) @ T[:3, :3], T[:3, 3] + dx[:3])
        if np.linalg.norm(dx[:3]) < 1e-6 * max(np.linalg.norm(T[:3, 3]), 1e-3) and np.linalg.norm(dx[3:]) < 1e-7:
            break
    L = whitening(T)
    e = residuals(T, np.zeros(6), L, all_rows).reshape(-1, 2)
    T10 = invert(T)
    front = (X0 @ T10[2, :3] + T10[2, 3]) > 1e-6
    inl = front & (np.sum(e * e, axis=1) < gate_chi2) & allowed
    rows = np.nonzero(inl)[0]
    if len(rows) < 6:
        return T, inl, None
    J = jacobian(T, L, rows)
    factor = max(float(np.sum(e[rows] ** 2)) / max(2 * len(rows) - 6, 1), 1.0)
    cov = _covariance_from_jacobian(J, factor)
    return T, inl, cov


@_never_raise
def estimate_pose_pnp(points3d_0: np.ndarray, pts1: np.ndarray, K1: np.ndarray, ransac_px: float = 2.0,
                      confidence: float = 0.999, min_matches: int = 20, min_inliers: int = 15,
                      max_iters: int = 1000, baseline: float | None = None, pixel_sigma_px: float = 1.0,
                      disparity_sigma_px: float | None = None, readmit: bool = False, ransac: str = "pixel"
                      ) -> tuple[RelativePose | None, str]:
    """Metric ``T_0_1`` from 3D points in camera 0 and their pixels in camera 1.

    Args:
        points3d_0: (N, 3) points in the camera-0 frame (e.g. from ``triangulate_stereo``).
        pts1: (N, 2) their observed pixels in image 1. Rows with non-finite values are dropped.
        K1: (3, 3) intrinsics of image 1.
        ransac_px: reprojection threshold [px] of the RANSAC stage.
        baseline: stereo baseline [calibration units] of the points (rectified stereo with ``K1``).
            Given, the pose is refined with per-point covariances (``stereo_point_covariance``,
            ``refine_pose_weighted``): inliers by a chi-square gate on whitened residuals instead of
            the fixed pixel threshold, and the covariance includes the depth uncertainty.
        pixel_sigma_px: keypoint noise [px] (raised to the robust scale of the RANSAC inliers' residuals
            when those are larger); disparity_sigma_px: disparity noise [px] (default sqrt(2) times
            the keypoint noise: two independent detections).
        readmit: the weighted gate may re-admit points outside the RANSAC consensus (default: it only
            removes). Measured: KITTI step ratio 1.008 -> 0.998, but the synthetic demo's ATE 0.011 ->
            0.019 m, since a point with a large covariance can hide a wrong match.
        ransac: the RANSAC stage's inlier test. ``"pixel"``: ``ransac_px`` on the reprojection error (OpenCV's
            USAC). ``"covariance"`` (with ``baseline``): ``pnp_ransac_covariance``, the chi-square gate of the
            weighted refinement, so each point's depth uncertainty is allowed for from the start: what keeps
            the correct matches of far or poorly triangulated points once the camera has moved metres between
            frames, but also admits more wrong stereo matches (their depth looks uncertain, not wrong).
            ``"auto"``: the pixel gate, and the covariance gate only where that finds too few inliers. Without
            ``baseline`` (no point covariances) every mode is the pixel gate.

    Covariance: ``(J^T J)^-1 sigma^2`` with J the inlier reprojection Jacobian (from
    ``cv2.projectPoints``, chained to our 6-dof parametrisation) and sigma^2 the inlier residual
    variance per coordinate (``sum r^2 / (2 n - 6)``, floored at (0.1 px)^2).
    """
    try:
        X = np.asarray(points3d_0, dtype=np.float64)
    except (TypeError, ValueError):
        return None, "points3d_0 is not numeric"
    if X.size == 0:
        X = np.zeros((0, 3))
    if X.ndim != 2 or X.shape[1] != 3:
        return None, f"points3d_0 must be (N, 3), got shape {X.shape}"
    p1, why = _as_points(pts1, "pts1")
    if p1 is None:
        return None, why
    if len(X) != len(p1):
        return None, f"points3d_0 and pts1 differ in length ({len(X)} != {len(p1)})"
    K1, why = _check_K(K1, "K1")
    if K1 is None:
        return None, why
    ok = _finite_rows(X, p1)
    X, p1 = X[ok], p1[ok]
    n = len(X)
    need = max(int(min_matches), 6)
    if n < need:
        return None, f"too few 3D-2D matches ({n} < {need})"
    if min(_num_distinct(X), _num_distinct(p1)) < 4:
        return None, "degenerate matches (fewer than 4 distinct points)"

    if ransac not in PNP_RANSAC_MODES:
        return None, f"ransac must be one of {PNP_RANSAC_MODES}, got {ransac!r}"
    weighted = baseline is not None and baseline > 0
    plain = _solve_pnp_ransac(X, p1, K1, ransac_px, confidence, max_iters)  # the pixel-threshold consensus
    if ransac == "covariance" and weighted:
        pose, why = _pnp_covariance_gate(X, p1, K1, plain, confidence, min_inliers, max_iters, float(baseline),
                                         pixel_sigma_px, disparity_sigma_px, readmit)
        return _inliers_over_input(pose, ok), why
    pose, why = _pnp_pixel_gate(X, p1, K1, plain, ransac_px, min_inliers, baseline, pixel_sigma_px,
                                disparity_sigma_px, readmit)
    if pose is None and ransac == "auto" and weighted and (why.startswith("too few PnP inliers")
                                                           or why == "PnP RANSAC found no model"):
        rescued, why_cov = _pnp_covariance_gate(X, p1, K1, plain, confidence, min_inliers, max_iters,
                                                float(baseline), pixel_sigma_px, disparity_sigma_px, readmit)
        if rescued is None:
            return None, f"{why}; with the covariance gate: {why_cov}"
        return _inliers_over_input(rescued, ok), f"{PNP_RESCUED}; the {ransac_px:g} px consensus: {why})"
    return _inliers_over_input(pose, ok), why


def _inliers_over_input(pose: RelativePose | None, finite: np.ndarray) -> RelativePose | None:
    """``pose`` with its inlier mask (over the finite rows) spread over all input rows."""
    if pose is not None and pose.inliers is not None:
        pose.inliers = _input_mask(finite, pose.inliers)
    return pose


def _pnp_covariance_gate(X: np.ndarray, p1: np.ndarray, K1: np.ndarray, plain: tuple | None, confidence: float,
                         min_inliers: int, max_iters: int, baseline: float, pixel_sigma_px: float,
                         disparity_sigma_px: float | None, readmit: bool) -> tuple[RelativePose | None, str]:
    """``estimate_pose_pnp`` with ``pnp_ransac_covariance`` as its RANSAC stage, then the weighted refinement.
    ``plain``: the pixel-threshold RANSAC's (rvec, tvec, inlier indices) or None."""
    n = len(X)
    # keypoint noise: the configured one, or more where the residuals of the pixel-threshold consensus say so
    # (blur, a weaker front end; as in the pixel-gate path); that consensus may be too small at large motions
    sigma_px = float(pixel_sigma_px)
    if plain is not None and len(plain[2]) >= 6:
        idx = plain[2][(plain[2] >= 0) & (plain[2] < n)]
        proj = cv2.projectPoints(X[idx], plain[0], plain[1], K1, None)[0].reshape(-1, 2)
        sigma_px = max(sigma_px, 1.4826 * float(np.median(np.abs(proj - p1[idx]))))
    sigma_d = float(disparity_sigma_px) if disparity_sigma_px else np.sqrt(2.0) * sigma_px
    cov_X = stereo_point_covariance(X, K1, baseline, sigma_px, sigma_d)
    found = pnp_ransac_covariance(X, cov_X, p1, K1, sigma_px, confidence=confidence, max_iters=max_iters)
    if found is None:
        return None, "PnP RANSAC found no model"
    T0, inl = found
    if inl.sum() < min_inliers:
        return None, f"too few PnP inliers ({int(inl.sum())} < {min_inliers})"
    T_w, inl_w, cov_w = refine_pose_weighted(T0, X, cov_X, p1, K1, sigma_px, candidates=None if readmit else inl)
    if not readmit and cov_w is not None:
        # local optimisation (as USAC's after a new best model): the consensus of a minimal-sample pose misses
        # points the refined pose puts inside the same gate; take them and refine once more
        T_10 = invert(T_w)
        regated = whitened_reprojection_chi2(T_10[None, :3, :3], T_10[None, :3, 3], X, cov_X, p1, K1, sigma_px)[0]
        regated = regated < CHI2_2DOF_99
        if regated.sum() > inl_w.sum():
            T_w, inl_w, cov_w = refine_pose_weighted(T_w, X, cov_X, p1, K1, sigma_px, candidates=regated)
    if inl_w.sum() < min_inliers:
        return None, f"too few PnP inliers after refinement ({int(inl_w.sum())} < {min_inliers})"
    if cov_w is None or not _valid_covariance(cov_w) or not np.all(np.isfinite(T_w)):
        return None, "degenerate geometry (singular information matrix)"
    return RelativePose(T_w[:3, :3], T_w[:3, 3].copy(), cov_w, int(inl_w.sum()), n, metric=True,
                        inliers=np.asarray(inl_w, dtype=bool)), "ok"


def _pnp_pixel_gate(X: np.ndarray, p1: np.ndarray, K1: np.ndarray, sol: tuple | None, ransac_px: float,
                    min_inliers: int, baseline: float | None, pixel_sigma_px: float,
                    disparity_sigma_px: float | None, readmit: bool) -> tuple[RelativePose | None, str]:
    """``estimate_pose_pnp`` after a fixed-pixel-threshold RANSAC (OpenCV; ``sol``: its rvec, tvec, inlier
    indices, or None), then (with ``baseline``) the weighted refinement, else the equal-weight one."""
    n = len(X)
    if sol is None:
        return None, "PnP RANSAC found no model"
    rvec, tvec, inl_idx = sol
    inl = np.zeros(n, dtype=bool)
    inl[inl_idx[(inl_idx >= 0) & (inl_idx < n)]] = True
    if inl.sum() < min_inliers:
        return None, f"too few PnP inliers ({int(inl.sum())} < {min_inliers})"
    try:
        # Polish on the RANSAC inliers, re-select inliers with the polished pose, polish again.
        for _ in range(2):
            rvec, tvec = cv2.solvePnPRefineLM(X[inl], p1[inl], K1, None, rvec.copy(), tvec.copy())
            proj = cv2.projectPoints(X, rvec, tvec, K1, None)[0].reshape(-1, 2)
            new_inl = np.linalg.norm(proj - p1, axis=1) < ransac_px
            if new_inl.sum() < min_inliers or np.array_equal(new_inl, inl):
                break
            inl = new_inl
        Xi, pi = X[inl], p1[inl]
        proj, J_cv = cv2.projectPoints(Xi, rvec, tvec, K1, None)
    except cv2.error as e:
        return None, f"PnP refinement failed ({str(e).strip().splitlines()[-1]})"
    if not (np.all(np.isfinite(rvec)) and np.all(np.isfinite(tvec))):
        return None, "PnP produced a non-finite pose"
    r = (proj.reshape(-1, 2) - pi).ravel()
    # Cheirality: a valid solution has (nearly) all inliers in front of camera 1.
    R_10 = cv2.Rodrigues(rvec)[0]
    depth1 = Xi @ R_10[2] + tvec.ravel()[2]
    if np.mean(depth1 > 0) < 0.5:
        return None, "PnP solution puts the points behind the camera"
    sigma2 = max(float(r @ r) / max(len(r) - 6, 1), SIGMA_FLOOR_PX ** 2)

    T_10 = make_transform(R_10, tvec.ravel())
    T_01 = invert(T_10)
    weighted_note = ""
    if baseline is not None and baseline > 0:
        # keypoint noise: the configured one, or more where the inlier residuals say so (blur, a weaker
        # front end); robust scale of the equal-weight inliers (truncated by ransac_px, so a lower bound)
        sigma_px = max(float(pixel_sigma_px), 1.4826 * float(np.median(np.abs(r))) if len(r) else 0.0)
        sigma_d = float(disparity_sigma_px) if disparity_sigma_px else np.sqrt(2.0) * sigma_px
        cov_X = stereo_point_covariance(X, K1, float(baseline), sigma_px, sigma_d)
        T_w, inl_w, cov_w = refine_pose_weighted(T_01, X, cov_X, p1, K1, sigma_px,
                                                 candidates=None if readmit else inl)
        if cov_w is not None and inl_w.sum() >= min_inliers and _valid_covariance(cov_w) \
                and np.all(np.isfinite(T_w)):
            return RelativePose(T_w[:3, :3], T_w[:3, 3].copy(), cov_w, int(inl_w.sum()), n, metric=True,
                                inliers=np.asarray(inl_w, dtype=bool)), "ok"
        # keep the equal-weight pose rather than lose the frame
        weighted_note = f" (equal weights: the weighted refinement kept {int(inl_w.sum())} inliers)"

    def cv_params(d: np.ndarray) -> np.ndarray:
        # our perturbation (d_t, d_theta in frame 0) -> OpenCV (rvec, tvec) of T_1_0
        T = make_transform(so3_exp(d[3:]) @ T_01[:3, :3], T_01[:3, 3] + d[:3])
        Ti = invert(T)
        # so3_log, not cv2.Rodrigues: OpenCV returns a zero vector below sin(angle) = 1e-5, which zeroes
        # the rotation columns of this Jacobian at (exact) standstill
        return np.concatenate([so3_log(Ti[:3, :3]), Ti[:3, 3]])

    G = _numeric_jacobian(cv_params, 6)
    J = J_cv[:, :6] @ G  # columns of projectPoints' jacobian: rvec (3), tvec (3), then intrinsics
    cov = _covariance_from_jacobian(J, sigma2)
    if cov is None or not _valid_covariance(cov):
        return None, "degenerate geometry (singular information matrix)"
    return (RelativePose(T_01[:3, :3], T_01[:3, 3].copy(), cov, int(inl.sum()), n, metric=True, inliers=inl.copy()),
            "ok" + weighted_note)



def estimate_pose_stereo(stereo_left0: np.ndarray, stereo_right0: np.ndarray, temporal_idx: np.ndarray,
                         left1: np.ndarray, K_left: np.ndarray, K_right: np.ndarray,
                         T_left_right: np.ndarray, ransac_px: float = 2.0, confidence: float = 0.999,
                         min_matches: int = 20, min_inliers: int = 15, max_reproj_px: float = 1.0,
                         min_depth: float = 0.1, max_depth: float = 100.0
                         ) -> tuple[RelativePose | None, str]:
    """Metric ``T_0_1`` of the left camera from stereo matches at t-1 and temporal matches t-1 -> t.

    Args:
        stereo_left0, stereo_right0: (S, 2) stereo matches at time t-1 (row-aligned pixels).
        temporal_idx: (M,) int, for each temporal match the row of the stereo match it starts from
            (see ``join_stereo_temporal`` to build it from two MatchResults).
        left1: (M, 2) pixels in the left image at time t of the temporal matches.
        K_left, K_right, T_left_right: calibration, see ``triangulate_stereo``.
        The rest: see ``triangulate_stereo`` and ``estimate_pose_pnp``.
    """
    X, valid = triangulate_stereo(stereo_left0, stereo_right0, K_left, K_right, T_left_right,
                                  max_reproj_px=max_reproj_px, min_depth=min_depth, max_depth=max_depth)
    try:
        idx = np.asarray(temporal_idx, dtype=np.int64).ravel()
    except (TypeError, ValueError):
        return None, "temporal_idx is not an integer array"
    p1, why = _as_points(left1, "left1")
    if p1 is None:
        return None, why
    if len(idx) != len(p1):
        return None, f"temporal_idx and left1 differ in length ({len(idx)} != {len(p1)})"
    in_range = (idx >= 0) & (idx < len(X))
    keep = np.zeros(len(idx), dtype=bool)
    keep[in_range] = valid[idx[in_range]]
    if int(valid.sum()) == 0:
        return None, "no valid stereo points (triangulation failed or all out of range)"
    pose, why = estimate_pose_pnp(X[idx[keep]], p1[keep], K_left, ransac_px=ransac_px, confidence=confidence,
                                  min_matches=min_matches, min_inliers=min_inliers)
    return _inliers_over_input(pose, keep), why  # (over the temporal matches given, those without a depth False)


def join_stereo_temporal(stereo_matches: np.ndarray, temporal_matches: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Link temporal matches to stereo matches through their shared left(t-1) keypoint index.

    Args:
        stereo_matches: (S, 2) index pairs (left0 keypoint, right0 keypoint).
        temporal_matches: (M, 2) index pairs (left0 keypoint, left1 keypoint), same left0 set.

    Returns:
        temporal_idx: (K,) rows of ``stereo_matches`` and rows: (K,) rows of ``temporal_matches``,
        for the temporal matches whose left0 keypoint also has a stereo match.
    """
    s = np.asarray(stereo_matches, dtype=np.int64).reshape(-1, 2)
    m = np.asarray(temporal_matches, dtype=np.int64).reshape(-1, 2)
    if len(s) == 0 or len(m) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    lut = np.full(max(int(s[:, 0].max()), int(m[:, 0].max())) + 1, -1, dtype=np.int64)
    lut[s[:, 0]] = np.arange(len(s))
    row = lut[m[:, 0]]
    has = row >= 0
    return row[has], np.nonzero(has)[0]


# ---------------------------------------------------------------------------------------------
# Homography (evaluation)
# ---------------------------------------------------------------------------------------------
def _collinear(p: np.ndarray, rel_tol: float = 1e-6) -> bool:
    """Whether (N, 2) points lie on one line (their centred spread has rank < 2, relative to its largest axis)."""
    s = np.linalg.svd(p - p.mean(0), compute_uv=False)
    return bool(s[0] == 0 or s[1] <= rel_tol * s[0])


def estimate_homography(pts0: np.ndarray, pts1: np.ndarray, ransac_px: float = 3.0,
                        method: Literal["magsac", "dlt"] = "magsac", confidence: float = 0.999,
                        max_iters: int = 10000) -> tuple[np.ndarray | None, np.ndarray]:
    """Homography H (3x3, ``p1 ~ H p0``) from (N, 2) (or OpenCV's (N, 1, 2)) pixel matches.

    method: "magsac" (robust, USAC-MAGSAC with ``ransac_px``) or "dlt" (least squares on all
    points: the inlier mask is then all rows used).

    Returns (H or None, (N,) bool inlier mask). Non-finite rows are never inliers. None where fewer than 4
    distinct finite points remain on a side or all of them lie on one line (no homography is determined).
    Raises ValueError for an unknown method, points of another shape, or two sets of different lengths.
    """
    if method not in ("magsac", "dlt"):
        raise ValueError(f"unknown homography method {method!r} (use 'magsac' or 'dlt')")
    p0, why0 = _as_points(pts0, "pts0")
    p1, why1 = _as_points(pts1, "pts1")
    if p0 is None or p1 is None:
        raise ValueError(why0 or why1)
    if len(p0) != len(p1):
        raise ValueError(f"pts0 and pts1 must have the same length, got {len(p0)} and {len(p1)}")
    n = len(p0)
    mask = np.zeros(n, dtype=bool)
    ok = _finite_rows(p0, p1)
    if ok.sum() < 4 or min(_num_distinct(p0[ok]), _num_distinct(p1[ok])) < 4:
        return None, mask
    if _collinear(p0[ok]) or _collinear(p1[ok]):
        return None, mask
    try:
        if method == "magsac":
            H, m = cv2.findHomography(p0[ok], p1[ok], cv2.USAC_MAGSAC, float(ransac_px),
                                      maxIters=int(max_iters), confidence=float(confidence))
        else:
            H, m = cv2.findHomography(p0[ok], p1[ok], 0)
    except cv2.error:
        return None, mask
    if H is None or H.shape != (3, 3) or not np.all(np.isfinite(H)) or abs(H[2, 2]) < 1e-12:
        return None, mask
    mask[np.nonzero(ok)[0]] = m.ravel().astype(bool) if m is not None else True
    return H / H[2, 2], mask
