"""The synthetic stereo sequence: its ground truth must agree with its images exactly."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from mambaglue_ros.synthetic import (
    DEFAULT_START_NS,
    PHOTO_NAMES,
    StereoRig,
    SyntheticScene,
    default_K,
    make_sequence,
    make_trajectory,
    relative_pose,
    warp_photo_pair,
)

W, H = 640, 480


@pytest.fixture(scope="module")
def scene() -> SyntheticScene:
    return SyntheticScene(seed=0)


def _backproject(K: np.ndarray, uv: np.ndarray, z: np.ndarray) -> np.ndarray:
    """(N, 2) pixels + (N,) z-depth -> (4, N) homogeneous camera-frame points."""
    x = (uv[:, 0] - K[0, 2]) / K[0, 0] * z
    y = (uv[:, 1] - K[1, 2]) / K[1, 1] * z
    return np.stack([x, y, z, np.ones_like(z)])


def _project(K: np.ndarray, Xc: np.ndarray) -> np.ndarray:
    """(4, N) camera-frame points -> (N, 2) pixels."""
    return np.stack([K[0, 0] * Xc[0] / Xc[2] + K[0, 2], K[1, 1] * Xc[1] / Xc[2] + K[1, 2]], 1)


def _sample(img: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear samples of img at (N, 2) sub-pixel locations -> (N, C) float64."""
    m = uv.astype(np.float32).reshape(-1, 1, 2)
    out = cv2.remap(img, m[..., 0], m[..., 1], cv2.INTER_LINEAR)
    return out.reshape(len(uv), -1).astype(np.float64)


def _rot_err_deg(Ra: np.ndarray, Rb: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(Ra.T @ Rb) - 1) / 2, -1, 1))))


def _transfer(K, uv0, depth0, T_w0, T_w1, img0, img1, depth1):
    """Move pixels of view 0 into view 1 with the ground truth; compare depth and colour.

    Returns (in_view mask, relative depth error, colours in view 0, colours in view 1), the
    colours as (N, 3) float64.
    """
    z0 = depth0[uv0[:, 1], uv0[:, 0]].astype(np.float64)
    X1 = relative_pose(T_w0, T_w1) @ _backproject(K, uv0.astype(np.float64), z0)
    uv1 = _project(K, X1)
    in_view = (uv1[:, 0] > 1) & (uv1[:, 0] < W - 2) & (uv1[:, 1] > 1) & (uv1[:, 1] < H - 2)
    d1 = _sample(depth1, uv1)[:, 0]
    rel = np.abs(d1 - X1[2]) / X1[2]
    return in_view, rel, img0[uv0[:, 1], uv0[:, 0]].astype(np.float64), _sample(img1, uv1)


def test_default_K_and_rig():
    K = default_K(640, 480, 70.0)
    assert K[0, 0] == pytest.approx(320.0 / np.tan(np.deg2rad(35.0)))  # 457.01 px
    assert K[0, 0] == pytest.approx(457.01, abs=0.01) and K[1, 1] == K[0, 0]
    assert (K[0, 2], K[1, 2]) == (319.5, 239.5)
    rig = StereoRig(K, 640, 480)
    assert rig.baseline_m == 0.11
    np.testing.assert_allclose(rig.T_left_right[:3, 3], [0.11, 0.0, 0.0])
    np.testing.assert_allclose(rig.T_left_right @ rig.T_right_left, np.eye(4))
    assert rig.P_right[0, 3] == pytest.approx(-K[0, 0] * 0.11)


def test_ground_truth_matches_images(scene):
    """Pixels of frame 0 moved with depth + pose land on the same colour and depth elsewhere."""
    seq = make_sequence(n_frames=3, trajectory="orbit", scene=scene)
    K = seq.rig.K
    f0, f2 = seq.frame(0), seq.frame(2)
    rng = np.random.default_rng(0)
    uv0 = np.stack([rng.integers(2, W - 2, 3000), rng.integers(2, H - 2, 3000)], 1)

    # Temporal: frame 0 -> frame 2 (10 cm, 5 deg apart).
    in_view, rel, c0, c2 = _transfer(K, uv0, f0.depth, f0.T_world_left, f2.T_world_left,
                                     f0.left, f2.left, f2.depth)
    col = np.abs(c2 - c0).mean(1)
    assert in_view.mean() > 0.7                # 0.83 measured
    visible = in_view & (rel < 0.01)          # the rest are occluded in frame 2
    assert visible.sum() / in_view.sum() > 0.97
    assert np.median(rel[in_view]) < 1e-4     # ~1e-5 measured: float32 + interpolation
    assert np.median(col[visible]) < 4.0      # ~1.7 grey levels measured
    assert np.percentile(col[visible], 75) < 10.0
    # With shuffled partners the difference is ~65: the agreement above is not trivial.
    shuffled = np.abs(c2 - c0[rng.permutation(len(c0))]).mean(1)
    assert np.median(shuffled[visible]) > 30.0

    # A pose 2 cm off already breaks the colour agreement (the test has teeth).
    T_bad = f2.T_world_left.copy()
    T_bad[:3, 3] += T_bad[:3, 0] * 0.02
    _, _, c0, c_bad = _transfer(K, uv0, f0.depth, f0.T_world_left, T_bad,
                                f0.left, f2.left, f2.depth)
    assert np.median(np.abs(c_bad - c0).mean(1)[visible]) > 3 * np.median(col[visible])

    # Stereo: the right camera is the left one moved by the baseline along x (rectified).
    T_right = seq.rig.T_world_right(f0.T_world_left)
    _, depth_r = scene.render(T_right, K, W, H)
    in_view, rel, c0, c_r = _transfer(K, uv0, f0.depth, f0.T_world_left, T_right,
                                      f0.left, f0.right, depth_r)
    col = np.abs(c_r - c0).mean(1)
    visible = in_view & (rel < 0.01)
    assert visible.sum() / in_view.sum() > 0.97
    assert np.median(col[visible]) < 3.0      # ~1.0 measured
    # ... so the disparity is fx * b / z and rows do not move.
    z0 = f0.depth[uv0[:, 1], uv0[:, 0]].astype(np.float64)
    uv_r = _project(K, seq.rig.T_right_left @ _backproject(K, uv0.astype(np.float64), z0))
    np.testing.assert_allclose(uv_r[:, 1], uv0[:, 1], atol=1e-9)
    np.testing.assert_allclose(uv0[:, 0] - uv_r[:, 0], K[0, 0] * 0.11 / z0, rtol=1e-9)


def test_orbit_has_no_holes_and_is_textured_everywhere(scene):
    seq = make_sequence(n_frames=50, trajectory="orbit", stereo=False, scene=scene)
    d_min, d_max, worst_textured = np.inf, 0.0, 1.0
    for f in seq:
        assert f.left.shape == (H, W, 3) and f.left.dtype == np.uint8
        assert f.depth.shape == (H, W) and f.depth.dtype == np.float32
        assert np.isfinite(f.depth).all()  # every ray hit a surface
        d_min, d_max = min(d_min, f.depth.min()), max(d_max, f.depth.max())
        gray = cv2.cvtColor(f.left, cv2.COLOR_RGB2GRAY).astype(np.float32)
        block_std = gray.reshape(H // 8, 8, W // 8, 8).std(axis=(1, 3))
        worst_textured = min(worst_textured, float((block_std > 5.0).mean()))
    assert 1.2 < d_min and d_max < 8.0
    assert worst_textured > 0.9


def test_orb_features_and_relative_pose(scene):
    orb = cv2.ORB_create(nfeatures=2000)
    bf = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)

    def matches(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        ka, da = orb.detectAndCompute(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), None)
        kb, db = orb.detectAndCompute(cv2.cvtColor(b, cv2.COLOR_RGB2GRAY), None)
        m = bf.match(da, db)
        pa = np.float64([ka[x.queryIdx].pt for x in m])
        pb = np.float64([kb[x.trainIdx].pt for x in m])
        return pa, pb, min(len(ka), len(kb))

    # Forward motion, consecutive frames at 10 Hz (5 cm, ~2.5 deg apart).
    seq = make_sequence(n_frames=21, trajectory="forward", stereo=False, scene=scene)
    for i in (0, 10, 19):
        pa, pb, n_kp = matches(seq.frame(i).left, seq.frame(i + 1).left)
        assert n_kp > 300 and len(pa) > 300
        K = seq.rig.K
        E, mask = cv2.findEssentialMat(pa, pb, K, cv2.RANSAC, 0.999, 1.0)
        _, R, _, _ = cv2.recoverPose(E[:3], pa, pb, K, mask=mask)
        assert _rot_err_deg(R, seq.relative_pose(i, i + 1)[:3, :3]) < 1.0

    # Orbit: the ground-truth essential matrix explains the ORB matches as well as the best
    # RANSAC model does (the estimator, not the data, limits accuracy on sideways motion).
    seq = make_sequence(n_frames=2, trajectory="orbit", stereo=False, scene=scene)
    K = seq.rig.K
    Ki = np.linalg.inv(K)
    pa, pb, _ = matches(seq.frame(0).left, seq.frame(1).left)

    def sampson_px(E: np.ndarray) -> np.ndarray:
        F = Ki.T @ E @ Ki
        xa, xb = np.c_[pa, np.ones(len(pa))].T, np.c_[pb, np.ones(len(pb))].T
        Fa, Fb = F @ xa, F.T @ xb
        return np.sqrt(np.sum(xb * Fa, 0) ** 2 / (Fa[0] ** 2 + Fa[1] ** 2 + Fb[0] ** 2 + Fb[1] ** 2))

    def essential(T: np.ndarray) -> np.ndarray:
        t = T[:3, 3] / np.linalg.norm(T[:3, 3])
        tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
        return tx @ T[:3, :3]

    err_gt = sampson_px(essential(seq.relative_pose(0, 1)))
    assert (err_gt < 1.0).mean() > 0.8        # ~0.90 measured (ORB keys are ~0.8 px noisy)
    E, _ = cv2.findEssentialMat(pa, pb, K, cv2.RANSAC, 0.999, 1.0)
    assert np.minimum(err_gt, 1.0).sum() <= 1.02 * np.minimum(sampson_px(E[:3]), 1.0).sum()
    # A wrong pose (right rotation, translation along the optical axis) does not explain them.
    wrong = seq.relative_pose(0, 1)
    wrong[:3, 3] = (0.0, 0.0, 0.05)
    assert (sampson_px(essential(wrong)) < 1.0).mean() < 0.3


def test_same_seed_same_images():
    T = make_trajectory("figure8", 3, seed=4)[0][2]
    K = default_K(320, 240)
    a, da = SyntheticScene(seed=3).render(T, K, 320, 240)
    b, db = SyntheticScene(seed=3).render(T, K, 320, 240)
    c, _ = SyntheticScene(seed=4).render(T, K, 320, 240)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(da, db)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 10  # another seed, another room
    p1, s1 = make_trajectory("orbit", 5, seed=2)
    p2, s2 = make_trajectory("orbit", 5, seed=2)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(s1, s2)


@pytest.mark.parametrize("kind", ["orbit", "forward", "figure8"])
def test_trajectories_are_smooth_and_slow(kind):
    rate = 10.0
    poses, stamps = make_trajectory(kind, n_frames=400, rate_hz=rate, seed=1)
    assert poses.shape == (400, 4, 4) and stamps.dtype == np.int64
    assert stamps[0] == DEFAULT_START_NS and np.all(np.diff(stamps) == 100_000_000)
    R = poses[:, :3, :3]
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0)
    p = poses[:, :3, 3]
    assert np.all(np.abs(p[:, 0]) < 2.5) and np.all(np.abs(p[:, 1]) < 1.3)   # inside the room
    assert np.all((p[:, 2] > 1.2) & (p[:, 2] < 1.4))
    speed = np.linalg.norm(np.diff(p, axis=0), axis=1) * rate
    assert 0.45 < speed.min() and speed.max() < 0.55                        # 0.5 m/s
    rot_rate = [_rot_err_deg(R[i], R[i + 1]) * rate for i in range(len(R) - 1)]
    assert max(rot_rate) < 30.0                                              # deg/s
    # The optical axis stays near horizontal (+-4 deg pitch): the camera looks at the walls.
    assert np.all(np.abs(poses[:, 2, 2]) < np.sin(np.deg2rad(5.0)))


def test_sequence_is_lazy_and_complete(scene):
    seq = make_sequence(n_frames=3, rate_hz=20.0, width=320, height=240, scene=scene)
    assert len(seq) == 3 and seq.rig.width == 320 and seq.rig.K[0, 2] == 159.5
    frames = iter(seq)
    f = next(frames)  # a generator: frames are rendered on demand
    assert f.left.shape == (240, 320, 3) and f.right.shape == (240, 320, 3)
    assert f.stamp_ns == DEFAULT_START_NS and f.index == 0
    np.testing.assert_array_equal(f.T_world_left, seq.poses_world_left[0])
    assert next(frames).stamp_ns == DEFAULT_START_NS + 50_000_000
    mono = make_sequence(n_frames=1, width=160, height=120, stereo=False, scene=scene)
    assert next(iter(mono)).right is None


def test_warp_photo_pair_homography_maps_img0_to_img1():
    img0, img1, Hm = warp_photo_pair("astronaut", seed=3)
    assert img0.shape == img1.shape == (480, 640, 3) and img0.dtype == np.uint8
    assert not np.allclose(Hm, np.eye(3))
    rng = np.random.default_rng(0)
    uv0 = np.stack([rng.uniform(0, W - 1, 4000), rng.uniform(0, H - 1, 4000)], 1)
    uv1 = cv2.perspectiveTransform(uv0[None], Hm)[0]
    ok = (uv1[:, 0] > 1) & (uv1[:, 0] < W - 2) & (uv1[:, 1] > 1) & (uv1[:, 1] < H - 2)
    assert ok.mean() > 0.5
    diff = np.abs(_sample(img1, uv1[ok]) - _sample(img0, uv0[ok])).mean(1)
    assert np.median(diff) < 3.0
    # A given H is used as is.
    H_shift = np.array([[1.0, 0.0, 10.0], [0.0, 1.0, 5.0], [0.0, 0.0, 1.0]])
    a, b, H_out = warp_photo_pair("coffee", H=H_shift)
    np.testing.assert_array_equal(H_out, H_shift)
    np.testing.assert_array_equal(b[5:, 10:], a[:-5, :-10])
    assert set(PHOTO_NAMES) >= {"astronaut", "coffee", "chelsea", "brick", "grass", "gravel"}
