"""Tests for mambaglue_ros.geometry on synthetic correspondences with known ground truth."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mambaglue_ros.geometry import (
    R_BODY_OPTICAL,
    T_BODY_OPTICAL,
    RelativePose,
    compose,
    estimate_homography,
    estimate_pose_mono,
    estimate_pose_pnp,
    estimate_pose_stereo,
    invert,
    join_stereo_temporal,
    make_transform,
    matrix_to_quaternion,
    pose_covariance_adjoint,
    quaternion_to_matrix,
    relative_pose_in_base,
    rotation_angle_deg,
    so3_exp,
    so3_log,
    translation_direction_error_deg,
    triangulate_stereo,
)

K = np.array([[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]])
IMAGE_SIZE = (640, 480)
# Camera 1 in camera 0: 3-5 deg rotation, mostly sideways translation.
T_01 = make_transform(so3_exp(np.radians([2.0, -5.0, 3.0])), [0.5, 0.1, 0.3])
T_LEFT_RIGHT = make_transform(np.eye(3), [0.3, 0.0, 0.0])  # right camera 0.3 m to the right


def project(X: np.ndarray, T_cam_world: np.ndarray, K: np.ndarray = K) -> np.ndarray:
    """(N, 3) world points -> (N, 2) pixels of a camera whose pose inverse is T_cam_world."""
    Xc = X @ T_cam_world[:3, :3].T + T_cam_world[:3, 3]
    p = Xc @ K.T
    return p[:, :2] / p[:, 2:]


def scene(n: int = 300, depth: tuple[float, float] = (4.0, 12.0), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.uniform(*depth, n)
    # Spread over the field of view of camera 0.
    x = rng.uniform(-0.6, 0.6, n) * z
    y = rng.uniform(-0.45, 0.45, n) * z
    return np.stack([x, y, z], axis=1)


def two_views(T_01: np.ndarray = T_01, n: int = 300, noise_px: float = 0.5, outliers: float = 0.2,
              seed: int = 0, depth: tuple[float, float] = (4.0, 12.0)):
    """Points in camera 0, their noisy pixels in both views; a fraction of view-1 pixels replaced."""
    rng = np.random.default_rng(seed + 1000)
    X = scene(n, depth, seed)
    p0 = project(X, np.eye(4)) + rng.normal(0, noise_px, (n, 2))
    p1 = project(X, invert(T_01)) + rng.normal(0, noise_px, (n, 2))
    bad = rng.random(n) < outliers
    p1[bad] = rng.uniform([0, 0], IMAGE_SIZE, (int(bad.sum()), 2))
    return X, p0, p1, bad


def assert_valid_covariance(cov: np.ndarray) -> None:
    assert cov.shape == (6, 6)
    assert np.all(np.isfinite(cov))
    np.testing.assert_allclose(cov, cov.T, rtol=0, atol=1e-12 * np.abs(cov).max())
    assert np.linalg.eigvalsh(cov).min() > 0


def nees(pose: RelativePose, T_true: np.ndarray, t_true: np.ndarray) -> float:
    """Normalised estimation error squared in our (t, left rotation) parametrisation."""
    e = np.concatenate([pose.t - t_true, so3_log(pose.R @ T_true[:3, :3].T)])
    return float(e @ np.linalg.solve(pose.covariance, e))


# ------------------------------------------------------------------------------------- mono
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mono_pose_accuracy_with_noise_and_outliers(seed):
    _, p0, p1, bad = two_views(seed=seed)
    pose, reason = estimate_pose_mono(p0, p1, K, K)
    assert pose is not None, reason
    assert reason == "ok"
    assert rotation_angle_deg(pose.R, T_01[:3, :3]) < 0.5
    assert translation_direction_error_deg(pose.t, T_01[:3, 3]) < 2.0
    assert np.linalg.norm(pose.t) == pytest.approx(1.0, abs=1e-9)
    assert not pose.metric
    # Nearly all true inliers kept, few outliers accepted (20 % outliers injected).
    assert pose.num_matches == 300
    assert 0.75 * (~bad).sum() < pose.num_inliers <= (~bad).sum() + 5
    # the inlier mask over the input rows (the matches a feature track may continue through)
    assert pose.inliers.shape == (300,) and pose.inliers.sum() == pose.num_inliers
    assert (pose.inliers & bad).sum() <= 5
    assert_valid_covariance(pose.covariance)
    # The unknown scale shows up as the documented variance along the translation direction.
    t = pose.t
    assert t @ pose.covariance[:3, :3] @ t == pytest.approx(1e6, rel=1e-6)
    # Rotation standard deviations are small but not zero (0.5 px noise at f = 500).
    rot_std_deg = np.degrees(np.sqrt(np.diag(pose.covariance)[3:]))
    assert np.all((rot_std_deg > 1e-3) & (rot_std_deg < 0.2))


def test_mono_covariance_is_consistent():
    """Over seeds, the mean NEES is near the 5 observable dof (scale adds ~0)."""
    values = []
    t_unit = T_01[:3, 3] / np.linalg.norm(T_01[:3, 3])
    for seed in range(12):
        _, p0, p1, _ = two_views(seed=seed, outliers=0.0)
        pose, reason = estimate_pose_mono(p0, p1, K, K)
        assert pose is not None, reason
        values.append(nees(pose, T_01, t_unit))
    assert 2.0 < np.mean(values) < 9.0, values


def test_mono_pure_rotation_returns_rotation_only():
    T = make_transform(so3_exp(np.radians([1.0, 4.0, -2.0])), np.zeros(3))
    _, p0, p1, _ = two_views(T, seed=3)
    pose, reason = estimate_pose_mono(p0, p1, K, K)
    assert pose is not None, reason
    assert "rotation only" in reason
    assert pose.inliers.shape == (len(p0),) and pose.inliers.sum() >= pose.num_inliers  # (+ the essential inliers)
    assert rotation_angle_deg(pose.R, T[:3, :3]) < 0.2
    np.testing.assert_array_equal(pose.t, np.zeros(3))
    np.testing.assert_allclose(pose.covariance[:3, :3], 1e6 * np.eye(3))
    assert_valid_covariance(pose.covariance)


def test_mono_drops_non_finite_rows():
    _, p0, p1, _ = two_views(seed=4)
    p0[::10, 0] = np.nan
    p1[5::10, 1] = np.inf
    pose, reason = estimate_pose_mono(p0, p1, K, K)
    assert pose is not None, reason
    assert pose.num_matches == 240
    assert pose.inliers.shape == (300,) and not pose.inliers[~(np.isfinite(p0).all(1) & np.isfinite(p1).all(1))].any()
    assert rotation_angle_deg(pose.R, T_01[:3, :3]) < 0.5
    assert np.all(np.isfinite(pose.covariance))


def _degenerate_cases():
    _, p0, p1, _ = two_views(seed=5)
    same = np.tile([[100.0, 50.0]], (100, 1))
    yield "empty", np.zeros((0, 2)), np.zeros((0, 2)), K
    yield "3 points", p0[:3], p1[:3], K
    yield "7 points", p0[:7], p1[:7], K
    yield "identical points", same, same + 1.0, K
    yield "all nan", np.full((100, 2), np.nan), p1[:100], K
    yield "nan in K", p0, p1, np.where(np.eye(3) > 0, np.nan, K)
    yield "length mismatch", p0, p1[:-1], K
    yield "wrong shape", np.zeros((50, 3)), np.zeros((50, 3)), K
    yield "not numeric", "abc", p1, K


@pytest.mark.parametrize("name,p0,p1,K_", list(_degenerate_cases()), ids=[c[0] for c in _degenerate_cases()])
def test_mono_degenerate_inputs_return_none_with_reason(name, p0, p1, K_):
    pose, reason = estimate_pose_mono(p0, p1, K_, K_, min_matches=5, min_inliers=5)
    assert pose is None
    assert isinstance(reason, str) and len(reason) > 5


def test_mono_reason_names_the_counts():
    _, p0, p1, _ = two_views(seed=6)
    pose, reason = estimate_pose_mono(p0[:12], p1[:12], K, K, min_matches=30)
    assert pose is None
    assert reason == "too few matches (12 < 30)"


# ------------------------------------------------------------------------------------- stereo
def stereo_views(seed: int, noise_px: float = 0.5, outliers: float = 0.2, n: int = 300):
    rng = np.random.default_rng(seed + 2000)
    X = scene(n, (2.0, 8.0), seed)
    left0 = project(X, np.eye(4)) + rng.normal(0, noise_px, (n, 2))
    right0 = project(X, invert(T_LEFT_RIGHT)) + rng.normal(0, noise_px, (n, 2))
    left1 = project(X, invert(T_01)) + rng.normal(0, noise_px, (n, 2))
    bad = rng.random(n) < outliers
    left1[bad] = rng.uniform([0, 0], IMAGE_SIZE, (int(bad.sum()), 2))
    return X, left0, right0, left1, bad


def test_triangulate_stereo_exact_and_gated():
    X = scene(50, (1.0, 20.0), seed=7)
    X[0] = [0.0, 0.0, -3.0]          # behind the cameras
    X[1] = [0.0, 0.0, 150.0]         # beyond max_depth
    pl, pr = project(X, np.eye(4)), project(X, invert(T_LEFT_RIGHT))
    pr[2] += [0.0, 5.0]              # 5 px vertical disparity: inconsistent stereo match
    P, valid = triangulate_stereo(pl, pr, K, K, T_LEFT_RIGHT, max_reproj_px=1.0, max_depth=100.0)
    assert valid.tolist()[:3] == [False, False, False]
    assert valid[3:].all()
    np.testing.assert_allclose(P[valid], X[valid], rtol=1e-6)
    np.testing.assert_array_equal(P[~valid], 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stereo_pose_metric_accuracy(seed):
    _, left0, right0, left1, bad = stereo_views(seed)
    pose, reason = estimate_pose_stereo(left0, right0, np.arange(len(left1)), left1, K, K, T_LEFT_RIGHT)
    assert pose is not None, reason
    assert pose.metric
    t_true = T_01[:3, 3]
    assert np.linalg.norm(pose.t - t_true) / np.linalg.norm(t_true) < 0.02
    assert rotation_angle_deg(pose.R, T_01[:3, :3]) < 0.3
    assert 0.8 * (~bad).sum() < pose.num_inliers <= (~bad).sum() + 5
    assert pose.inliers.shape == (len(left1),) and pose.inliers.sum() == pose.num_inliers
    assert (pose.inliers & bad).sum() <= 5
    assert_valid_covariance(pose.covariance)
    # Metric standard deviations: millimetres to centimetres for this geometry.
    t_std = np.sqrt(np.diag(pose.covariance)[:3])
    assert np.all((t_std > 1e-4) & (t_std < 0.05))


def test_pnp_covariance_is_consistent():
    """With exact 3D points, reprojection noise is the only error: mean NEES ~ 6."""
    values = []
    for seed in range(12):
        X, _, _, left1, _ = stereo_views(seed, outliers=0.0)
        pose, reason = estimate_pose_pnp(X, left1, K)
        assert pose is not None, reason
        values.append(nees(pose, T_01, T_01[:3, 3]))
    assert 3.0 < np.mean(values) < 10.0, values


def test_stereo_with_index_bookkeeping():
    """Temporal matches reference stereo rows through temporal_idx (a subset, shuffled)."""
    _, left0, right0, left1, _ = stereo_views(8, outliers=0.0)
    rng = np.random.default_rng(0)
    rows = rng.permutation(len(left0))[:200]
    pose, reason = estimate_pose_stereo(left0, right0, rows, left1[rows], K, K, T_LEFT_RIGHT)
    assert pose is not None, reason
    assert 190 <= pose.num_matches <= 200  # a few far points fail the 1 px triangulation gate
    assert np.linalg.norm(pose.t - T_01[:3, 3]) / np.linalg.norm(T_01[:3, 3]) < 0.02


def test_join_stereo_temporal():
    stereo = np.array([[0, 5], [2, 7], [4, 1]])       # left0 kp -> right0 kp
    temporal = np.array([[4, 10], [1, 11], [0, 12], [3, 13]])  # left0 kp -> left1 kp
    stereo_rows, temporal_rows = join_stereo_temporal(stereo, temporal)
    assert stereo_rows.tolist() == [2, 0]
    assert temporal_rows.tolist() == [0, 2]
    empty = join_stereo_temporal(np.zeros((0, 2)), temporal)
    assert len(empty[0]) == 0 and len(empty[1]) == 0


@pytest.mark.parametrize("n", [0, 3, 7])
def test_pnp_too_few_points(n):
    X, _, _, left1, _ = stereo_views(9, outliers=0.0)
    pose, reason = estimate_pose_pnp(X[:n], left1[:n], K)
    assert pose is None
    assert reason.startswith("too few 3D-2D matches")


def test_pnp_degenerate_inputs():
    X, _, _, left1, _ = stereo_views(10, outliers=0.0)
    same_X = np.tile([[1.0, 2.0, 5.0]], (50, 1))
    cases = [
        (same_X, np.tile([[300.0, 200.0]], (50, 1)), K),
        (np.full_like(X, np.nan), left1, K),
        (X, left1, np.zeros((3, 3))),
        (X[:, :2], left1, K),
        (X, left1[:-3], K),
    ]
    for X_, p_, K_ in cases:
        pose, reason = estimate_pose_pnp(X_, p_, K_)
        assert pose is None
        assert len(reason) > 5


def test_stereo_without_valid_depth():
    _, left0, right0, left1, _ = stereo_views(11)
    pose, reason = estimate_pose_stereo(left0, right0 + [0.0, 30.0], np.arange(len(left1)), left1,
                                        K, K, T_LEFT_RIGHT)
    assert pose is None
    assert "stereo" in reason


# ------------------------------------------------------------------------------------- homography
def test_homography_magsac_and_dlt():
    rng = np.random.default_rng(12)
    H = np.array([[1.05, 0.02, 12.0], [-0.03, 0.98, -7.0], [1e-4, -5e-5, 1.0]])
    p0 = rng.uniform([0, 0], IMAGE_SIZE, (200, 2))
    ph = np.concatenate([p0, np.ones((200, 1))], 1) @ H.T
    p1 = ph[:, :2] / ph[:, 2:]
    clean_H, clean_mask = estimate_homography(p0, p1, method="dlt")
    np.testing.assert_allclose(clean_H, H, rtol=1e-6, atol=1e-8)
    assert clean_mask.all()
    noisy = p1 + rng.normal(0, 0.5, p1.shape)
    bad = np.zeros(200, dtype=bool)
    bad[:50] = True
    noisy[bad] = rng.uniform([0, 0], IMAGE_SIZE, (50, 2))
    H_est, mask = estimate_homography(p0, noisy, ransac_px=3.0)
    corners = np.array([[0, 0, 1], [640, 0, 1], [640, 480, 1], [0, 480, 1]], float)
    c_true, c_est = corners @ H.T, corners @ H_est.T
    err = np.linalg.norm(c_true[:, :2] / c_true[:, 2:] - c_est[:, :2] / c_est[:, 2:], axis=1)
    assert err.max() < 1.5
    assert mask[~bad].mean() > 0.95 and mask[bad].mean() < 0.1
    H_none, mask_none = estimate_homography(p0[:3], p1[:3])
    assert H_none is None and mask_none.tolist() == [False] * 3
    with pytest.raises(ValueError):
        estimate_homography(p0, p1, method="ransac")
    # OpenCV's (N, 1, 2) layout is the same points (before: (None, a length-0 mask) with no reason)
    H_cv, mask_cv = estimate_homography(p0[:, None], p1[:, None], method="dlt")
    np.testing.assert_allclose(H_cv, clean_H)
    assert mask_cv.shape == (len(p0),) and mask_cv.all()
    with pytest.raises(ValueError, match=r"pts0 must be \(N, 2\) or \(N, 1, 2\), got shape \(200, 3\)"):
        estimate_homography(np.c_[p0, p0[:, :1]], p1)
    with pytest.raises(ValueError, match="same length, got 200 and 199"):
        estimate_homography(p0, p1[:-1])
    # points on one line determine no homography (before: "dlt" returned an arbitrary H with every row an inlier)
    t = np.linspace(0, 600, 50)
    line = np.c_[t, 0.5 * t + 20]
    for method in ("dlt", "magsac"):
        H_line, mask_line = estimate_homography(line, line * 1.1 + 3, method=method)
        assert H_line is None and not mask_line.any()


# ------------------------------------------------------------------------------------- helpers
def test_quaternion_known_cases_and_round_trip():
    np.testing.assert_allclose(matrix_to_quaternion(np.eye(3)), [0, 0, 0, 1])
    s = np.sqrt(0.5)
    np.testing.assert_allclose(matrix_to_quaternion(so3_exp([0, 0, np.pi / 2])), [0, 0, s, s], atol=1e-12)
    # The standard ROS camera_link -> camera_optical quaternion.
    np.testing.assert_allclose(matrix_to_quaternion(R_BODY_OPTICAL), [-0.5, 0.5, -0.5, 0.5], atol=1e-12)
    # 180 deg about x: w = 0, the branch where naive formulas divide by zero.
    np.testing.assert_allclose(matrix_to_quaternion(np.diag([1.0, -1.0, -1.0])), [1, 0, 0, 0], atol=1e-12)
    rng = np.random.default_rng(13)
    axes = rng.normal(size=(200, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = np.concatenate([rng.uniform(0, np.pi, 190), np.pi - 10.0 ** -np.arange(1, 11)])
    for axis, angle in zip(axes, angles):
        R = so3_exp(axis * angle)
        q = matrix_to_quaternion(R)
        assert q[3] >= 0 and abs(np.linalg.norm(q) - 1) < 1e-12
        np.testing.assert_allclose(quaternion_to_matrix(q), R, atol=1e-12)
        assert rotation_angle_deg(np.eye(3), R) == pytest.approx(np.degrees(angle), abs=1e-6)


def test_angle_helpers_and_transforms():
    assert translation_direction_error_deg([1, 0, 0], [0, 2, 0]) == pytest.approx(90.0)
    assert translation_direction_error_deg([1, 0, 0], [-1, 0, 0]) == pytest.approx(180.0)
    assert translation_direction_error_deg([1, 0, 0], [1, 1e-4, 0]) == pytest.approx(np.degrees(1e-4))
    assert np.isnan(translation_direction_error_deg([0, 0, 0], [1, 0, 0]))
    assert rotation_angle_deg(so3_exp([0.1, 0, 0]), so3_exp([0.3, 0, 0])) == pytest.approx(np.degrees(0.2))
    T_a_b = make_transform(so3_exp([0.3, -0.2, 0.1]), [1.0, 2.0, 3.0])
    T_b_c = make_transform(so3_exp([-0.1, 0.5, 0.2]), [-1.0, 0.5, 0.0])
    np.testing.assert_allclose(compose(T_a_b, invert(T_a_b)), np.eye(4), atol=1e-12)
    np.testing.assert_allclose(invert(compose(T_a_b, T_b_c)), compose(invert(T_b_c), invert(T_a_b)),
                               atol=1e-12)


def _pose(T: np.ndarray, metric: bool = True, cov: np.ndarray | None = None) -> RelativePose:
    return RelativePose(T[:3, :3].copy(), T[:3, 3].copy(), np.eye(6) if cov is None else cov, 50, 60, metric)


def test_optical_to_base_known_cases():
    # Camera moves 1 m along its optical axis -> base moves 1 m forward (+x).
    forward = relative_pose_in_base(_pose(make_transform(np.eye(3), [0, 0, 1.0])), T_BODY_OPTICAL)
    np.testing.assert_allclose(forward.t, [1.0, 0, 0], atol=1e-12)
    np.testing.assert_allclose(forward.R, np.eye(3), atol=1e-12)
    # Camera moves right (+x optical) -> base moves to -y (right of forward).
    right = relative_pose_in_base(_pose(make_transform(np.eye(3), [0.5, 0, 0])), T_BODY_OPTICAL)
    np.testing.assert_allclose(right.t, [0, -0.5, 0], atol=1e-12)
    # Rotation about optical +y (turning right, z toward x) is a yaw of -angle about body z.
    turn = relative_pose_in_base(_pose(make_transform(so3_exp([0, 0.2, 0]), np.zeros(3))), T_BODY_OPTICAL)
    np.testing.assert_allclose(so3_log(turn.R), [0, 0, -0.2], atol=1e-12)
    # Covariance of x (optical) becomes the covariance of -y (body): a permutation.
    cov = np.diag([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    moved = relative_pose_in_base(_pose(np.eye(4), cov=cov), T_BODY_OPTICAL)
    np.testing.assert_allclose(np.diag(moved.covariance), [3.0, 1.0, 2.0, 6.0, 4.0, 5.0])


def test_base_frame_with_lever_arm_and_covariance_jacobian():
    T_bc = T_BODY_OPTICAL.copy()
    T_bc[:3, 3] = [0.4, -0.1, 0.8]  # camera mounted ahead of and above the base origin
    T_cam = make_transform(so3_exp([0.05, -0.3, 0.02]), [0.1, 0.0, 0.9])
    base = relative_pose_in_base(_pose(T_cam), T_bc)
    # The base motion carries the mounted camera through the same motion.
    np.testing.assert_allclose(base.as_matrix() @ T_bc, T_bc @ T_cam, atol=1e-12)
    # Finite-difference check of the covariance Jacobian (left perturbations in the 0 frames).
    A = pose_covariance_adjoint(T_bc, base.R)
    rng = np.random.default_rng(14)
    for _ in range(5):
        d = rng.normal(0, 1e-6, 6)
        T_pert = make_transform(so3_exp(d[3:]) @ T_cam[:3, :3], T_cam[:3, 3] + d[:3])
        Tb = T_bc @ T_pert @ invert(T_bc)
        d_base = np.concatenate([Tb[:3, 3] - base.t, so3_log(Tb[:3, :3] @ base.R.T)])
        np.testing.assert_allclose(d_base, A @ d, atol=1e-11)
    # Mono (scale-free): the lever arm is ignored and the direction stays unit norm.
    mono = relative_pose_in_base(_pose(make_transform(np.eye(3), [0, 0, 1.0]), metric=False), T_bc)
    np.testing.assert_allclose(mono.t, [1.0, 0, 0], atol=1e-12)
    assert not mono.metric


@pytest.mark.parametrize("case", ["exit095_k3", "full_k4"])
def test_mono_pose_escapes_the_bas_relief_basin(case):
    """Real XFeat + MambaGlue matches of two frames of the synthetic orbit sequence (20 cm steps at
    5 Hz, 60 deg FOV) on which one MAGSAC run converges to a pose 30-38 deg off in translation
    direction with 2-3 deg of rotation error: almost as many inliers, a worse fit. The hypotheses of
    several seeded MAGSAC runs, scored by the MSAC cost over all matches, find the right basin."""
    data = np.load(Path(__file__).parent / "data" / "mono_bas_relief_matches.npz")
    p0, p1 = data[f"{case}_pts0"].astype(np.float64), data[f"{case}_pts1"].astype(np.float64)
    T_true, K_ = data[f"{case}_T_0_1"], data["K"]
    pose, why = estimate_pose_mono(p0, p1, K_, K_, ransac_px=1.0)
    assert pose is not None, why
    assert rotation_angle_deg(pose.R, T_true[:3, :3]) < 1.0
    assert translation_direction_error_deg(pose.t, T_true[:3, 3]) < 5.0
    # the chosen model explains the matches at least as well as MAGSAC's alone (what was fixed)
    single, _ = estimate_pose_mono(p0, p1, K_, K_, ransac_px=1.0, hypotheses=1)
    assert single is not None and pose.num_inliers >= single.num_inliers - 5


def test_mono_pose_stops_seeding_once_the_runs_agree(monkeypatch):
    """``settle``: once two runs in a row do not improve on the best model, further seeds are not run.
    Counted through OpenCV's findEssentialMat; the pose is the one all six seeds give."""
    import mambaglue_ros.geometry as geometry

    calls = []
    find = geometry.cv2.findEssentialMat
    monkeypatch.setattr(geometry.cv2, "findEssentialMat", lambda *a, **k: calls.append(1) or find(*a, **k))
    _, p0, p1, _ = two_views(seed=3)
    every, _ = estimate_pose_mono(p0, p1, K, K, hypotheses=6, settle=0)
    assert len(calls) == 6
    calls.clear()
    settled, _ = estimate_pose_mono(p0, p1, K, K, hypotheses=6, settle=2)
    assert len(calls) == 3  # seed 0, then two runs that do not improve on its model
    assert settled is not None and every is not None
    assert rotation_angle_deg(settled.R, every.R) < 1e-6 and translation_direction_error_deg(settled.t, every.t) < 1e-6
    calls.clear()
    estimate_pose_mono(p0, p1, K, K, hypotheses=2, settle=2)  # the cap still holds
    assert len(calls) == 2
    # A run that finds a better model starts the count again: on this bas-relief pair seeds 0 and 1 land in the
    # wrong basin, seed 2 finds the right one, seeds 3 and 4 confirm it (see the test below)
    data = np.load(Path(__file__).parent / "data" / "mono_bas_relief_matches.npz")
    calls.clear()
    pose, _ = estimate_pose_mono(data["exit095_k3_pts0"].astype(np.float64), data["exit095_k3_pts1"].astype(np.float64),
                                 data["K"], data["K"], ransac_px=1.0, hypotheses=6, settle=2)
    assert len(calls) == 5
    assert translation_direction_error_deg(pose.t, data["exit095_k3_T_0_1"][:3, 3]) < 5.0


def test_stereo_points_sit_on_their_left_rays_so_standstill_gives_identity():
    """A vertical rectification residual in the right image (0.4 px here) must not become motion:
    DLT would split it between both images, every frame, and a standstill would drift (EuRoC did)."""
    rng = np.random.default_rng(4)
    X = np.c_[rng.uniform(-2, 2, 300), rng.uniform(-1.5, 1.5, 300), rng.uniform(2, 8, 300)]
    T_lr = make_transform(np.eye(3), np.array([0.11, 0.0, 0.0]))
    pl = (X / X[:, 2:]) @ K.T
    Xr = X - T_lr[:3, 3]
    pr = (Xr / Xr[:, 2:]) @ K.T
    pl, pr = pl[:, :2], pr[:, :2] + np.array([0.0, 0.4])
    P, ok = triangulate_stereo(pl, pr, K, K, T_lr)
    assert ok.mean() > 0.95
    proj = P[ok] @ K.T
    np.testing.assert_allclose(proj[:, :2] / proj[:, 2:], pl[ok], atol=1e-9)
    pose, reason = estimate_pose_pnp(P[ok], pl[ok], K)  # the same left pixels one frame later
    assert pose is not None, reason
    assert np.linalg.norm(pose.t) < 1e-6 and rotation_angle_deg(pose.R, np.eye(3)) < 1e-6


def test_pose_consistent_keeps_what_the_pose_explains():
    from mambaglue_ros.geometry import pose_consistent
    X = np.random.default_rng(0).uniform([-2, -2, 4], [2, 2, 9], (200, 3))
    for T in (T_01, make_transform(so3_exp([0.0, 0.05, 0.0]), np.zeros(3))):  # with a translation; rotation only
        x0 = X / X[:, 2:]
        X1 = (X - T[:3, 3]) @ T[:3, :3]  # camera-1 coordinates of the same points (X0 = R X1 + t)
        x1 = X1 / X1[:, 2:]
        gate = 1.0 / 500.0
        for scale in (1.0, 7.0):  # the scale of t does not matter
            assert pose_consistent(x0, x1, T[:3, :3], scale * T[:3, 3], gate).all()
        moved = x1.copy()
        moved[:, 1] += 10.0 / 500.0  # 10 px off, across the (mostly horizontal) epipolar lines
        assert not pose_consistent(x0, moved, T[:3, :3], T[:3, 3], gate).any()
        swapped = x1[np.roll(np.arange(len(x1)), 1)]
        assert pose_consistent(x0, swapped, T[:3, :3], T[:3, 3], gate).mean() < 0.1
