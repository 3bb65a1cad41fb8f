"""Stereo odometry pieces: sub-pixel stereo refinement, KITTI regression (keyframes of a moving car, scale)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from mambaglue_ros.geometry import refine_stereo_matches

KITTI = Path(__file__).resolve().parents[2] / "shared" / "data" / "kitti_seq1"


def _texture(h: int = 120, w: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.uniform(0, 255, (h // 4, w // 4)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_refine_stereo_matches_recovers_subpixel_disparity():
    left = _texture()
    disparity = 7.3
    shift = np.float32([[1, 0, -disparity], [0, 1, 0]])  # right(x) = left(x + d)
    right = cv2.warpAffine(left, shift, left.shape[::-1], flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    rng = np.random.default_rng(1)
    pts_left = np.c_[rng.uniform(30, 170, 40), rng.uniform(20, 100, 40)]
    true_right = pts_left - [disparity, 0.0]
    noisy_right = np.round(true_right + rng.uniform(-1.0, 1.0, true_right.shape))  # grid keypoints, 1 px noise
    K = np.array([[100.0, 0, 100], [0, 100.0, 60], [0, 0, 1]])
    refined, ok = refine_stereo_matches(left, right, pts_left, noisy_right, K, K)
    assert ok.mean() > 0.9
    before = np.abs(noisy_right[ok, 0] - true_right[ok, 0])
    after = np.abs(refined[ok, 0] - true_right[ok, 0])
    assert np.median(after) < 0.1 < np.median(before)
    assert np.allclose(refined[ok, 1], pts_left[ok, 1])  # on the rectified row
    # a match 6 px off is outside the search window: no depth rather than a wrong one
    _, ok_far = refine_stereo_matches(left, right, pts_left, true_right - [6.0, 0.0], K, K)
    assert ok_far.mean() < 0.2


def test_match_rectified_stereo_searches_along_the_row():
    """Left keypoints and their right partners (disparity 2..60 px, 0.5 px row noise, noisy descriptors, shuffled),
    plus decoys: a copy of a left descriptor on another row, one at a negative disparity, and a near twin on the
    same row. The row search finds the true partners and none of the decoys."""
    import torch

    from mambaglue_ros.geometry import match_rectified_stereo

    rng = np.random.default_rng(0)
    n = 200
    kl = np.c_[rng.uniform(100, 1100, n), rng.uniform(10, 360, n)].astype(np.float32)
    dl = torch.nn.functional.normalize(torch.randn(n, 64, generator=torch.Generator().manual_seed(0)), dim=-1)
    partner = np.c_[kl[:, 0] - rng.uniform(2, 60, n), kl[:, 1] + rng.uniform(-0.5, 0.5, n)]
    dr = torch.nn.functional.normalize(dl + 0.15 * torch.randn(n, 64, generator=torch.Generator().manual_seed(1)),
                                       dim=-1)
    decoys_k = np.array([[kl[0, 0] - 10, kl[0, 1] + 40],    # left 0's descriptor, 40 rows down
                         [kl[1, 0] + 30, kl[1, 1]],          # left 1's descriptor at disparity -30
                         [partner[2, 0] - 3, kl[2, 1]]])     # a near twin of left 2's partner on its row
    decoys_d = torch.stack([dl[0], dl[1], torch.nn.functional.normalize(dr[2] + 0.01 * torch.ones(64), dim=0)])
    kr = np.r_[partner, decoys_k].astype(np.float32)
    desc_r = torch.cat([dr, decoys_d])
    order = rng.permutation(len(kr))
    matches, scores = match_rectified_stereo(kl, dl, kr[order], desc_r[order])
    found = {int(i): int(order[j]) for i, j in matches}
    assert all(j < n for j in found.values()), "a decoy was matched"
    correct = sum(found.get(i) == i for i in range(n))
    assert correct >= 0.95 * (n - 1) and 2 not in found  # every partner but the ambiguous one (ratio test)
    assert len(found) == correct and np.all((scores > 0.0) & (scores <= 1.0))
    # nothing to match: empty, typed results
    m, sc = match_rectified_stereo(kl, dl, np.zeros((0, 2), np.float32), torch.zeros(0, 64))
    assert m.shape == (0, 2) and m.dtype == np.int64 and sc.shape == (0,)
    # without the row constraint the off-row decoy would win left 0 (the test can fail)
    m_loose, _ = match_rectified_stereo(kl, dl, kr[order], desc_r[order], max_row_px=100.0)
    assert any(int(order[j]) == n for i, j in m_loose if i == 0)


@pytest.mark.skipif(not (KITTI / "image_r").is_dir(), reason="needs ../shared/data/kitti_seq1 (not shipped)")
def test_kitti_stereo_tracker_scale_and_keyframes():
    """12 frames of KITTI through StereoTracker with the shipped matcher: metric scale within 3 %
    per step and, with the keyframe policy, a new reference every frame of a moving car."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import stereo_diagnosis as D

    data = D.load_kitti(KITTI)
    matcher = D.make_matcher("mambaglue", "xfeat", 1024)
    config = {"policy": "keyframe", "min_inliers": 15, "keyframe_max_parallax_px": 3.0}  # config/stereo.yaml
    result = D.run_tracker(data, matcher, config, frames=12)
    assert result["summary"]["poses"] == 11
    assert all(r["keyframe"] for r in result["rows"])
    assert abs(np.median(result["ratios"]) - 1.0) < 0.03
    assert result["summary"]["rpe_pct_per_m"] < 4.0


def _stereo_scene(seed: int, n: int = 300, sigma_px: float = 1.0):
    """Points 4..80 m ahead of a KITTI-like rig (f 700, b 0.54 m), a 1.2 m forward step with a small
    turn, noisy left/right/next pixels (grid-like 1 px noise) and 10 % gross outliers."""
    from mambaglue_ros.geometry import make_transform, so3_exp, triangulate_stereo

    rng = np.random.default_rng(seed)
    K = np.array([[700.0, 0, 600], [0, 700.0, 180], [0, 0, 1]])
    b = 0.54
    Z = 1.0 / rng.uniform(1 / 80, 1 / 4, n)  # uniform in inverse depth: many far points
    u, v = rng.uniform(0, 1200, n), rng.uniform(0, 360, n)
    X0 = np.c_[(u - 600) * Z / 700, (v - 180) * Z / 700, Z]
    T_01 = make_transform(so3_exp([0.0, 0.004, 0.001]), [0.02, -0.01, 1.2])
    T_10 = np.linalg.inv(T_01)
    X1 = X0 @ T_10[:3, :3].T + T_10[:3, 3]
    pl = np.c_[u, v] + rng.normal(0, sigma_px, (n, 2))
    pr = np.c_[u - 700 * b / Z, v] + rng.normal(0, sigma_px, (n, 2))
    p1 = X1[:, :2] / X1[:, 2:] * 700 + [600, 180] + rng.normal(0, sigma_px, (n, 2))
    out = rng.random(n) < 0.1
    p1[out] += rng.uniform(-30, 30, (out.sum(), 2))
    T_lr = np.eye(4)
    T_lr[0, 3] = b
    X, ok = triangulate_stereo(pl, pr, K, K, T_lr, max_reproj_px=3.0, max_depth=1e4)
    return X[ok], p1[ok], K, b, T_01


@pytest.mark.parametrize("readmit", [False, True])
def test_weighted_pnp_uses_depth_uncertainty(readmit):
    """Per-point covariances (inverse-depth noise) do better than equal pixel weights on the step
    length; re-admitting the points the 2 px consensus dropped for their depth error (``readmit``)
    does much better on this scene (no wrong stereo matches); the covariance covers the error."""
    from mambaglue_ros.geometry import estimate_pose_pnp

    err_plain, err_weighted, nees = [], [], []
    for seed in range(12):
        X, p1, K, b, T_01 = _stereo_scene(seed)
        plain, _ = estimate_pose_pnp(X, p1, K, ransac_px=2.0)
        weighted, why = estimate_pose_pnp(X, p1, K, ransac_px=2.0, baseline=b, pixel_sigma_px=1.0,
                                          readmit=readmit)
        assert weighted is not None, why
        err_plain.append(np.linalg.norm(plain.t - T_01[:3, 3]))
        e = weighted.t - T_01[:3, 3]
        err_weighted.append(np.linalg.norm(e))
        nees.append(float(e @ np.linalg.solve(weighted.covariance[:3, :3], e)))
        assert weighted.inlier_ratio < 0.95  # the gross outliers are out
    assert np.mean(err_weighted) < (0.5 if readmit else 0.97) * np.mean(err_plain)
    assert np.mean(err_weighted) < (0.01 if readmit else 0.015)  # of the 1.2 m step
    assert np.mean(nees) < 3 * 3.0  # 3 dof: consistent within a factor 3


def test_stereo_depth_limit_follows_baseline_focal_length_and_noise():
    from mambaglue_ros.tracking import StereoTracker, validate_tracking_config

    def limit(fx: float, baseline: float, **config) -> float:
        K = np.array([[fx, 0, 300], [0, fx, 200], [0, 0, 1]])
        T = np.eye(4)
        T[0, 3] = baseline
        return StereoTracker(object(), K, K, T, config).max_stereo_depth()

    # 3 sigma of the disparity (sqrt(2) px for 1 px keypoints) above zero
    assert limit(707.09, 0.537) == pytest.approx(707.09 * 0.537 / (3 * np.sqrt(2)))  # KITTI: ~90 m
    assert limit(458.65, 0.110) == pytest.approx(11.9, abs=0.1)                         # EuRoC
    assert limit(707.09, 0.537, pixel_sigma_px=0.5) == pytest.approx(2 * limit(707.09, 0.537))
    with pytest.raises(ValueError, match="min_disparity_sigmas"):
        validate_tracking_config({"min_disparity_sigmas": 0.0})


def test_weighted_pnp_adapts_to_noisier_keypoints():
    """Keypoints three times noisier than ``pixel_sigma_px`` says: the noise scale comes from the
    inlier residuals, so the chi-square gate does not throw the good matches away (``readmit``:
    92 % inliers instead of 35 % with the configured 1 px), and the default (consensus only) is no
    worse than equal weights."""
    from mambaglue_ros.geometry import estimate_pose_pnp

    for seed in range(3):
        X, p1, K, b, T_01 = _stereo_scene(seed, sigma_px=3.0)
        plain, _ = estimate_pose_pnp(X, p1, K, ransac_px=8.0)
        pose, why = estimate_pose_pnp(X, p1, K, ransac_px=8.0, baseline=b, pixel_sigma_px=1.0)
        assert pose is not None and why == "ok", why
        assert np.linalg.norm(pose.t - T_01[:3, 3]) <= 1.05 * np.linalg.norm(plain.t - T_01[:3, 3])
        pose, why = estimate_pose_pnp(X, p1, K, ransac_px=8.0, baseline=b, pixel_sigma_px=1.0, readmit=True)
        assert pose is not None and why == "ok", why
        assert pose.inlier_ratio > 0.75
        assert np.linalg.norm(pose.t - T_01[:3, 3]) < 0.05
