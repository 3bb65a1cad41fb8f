"""Stereo odometry pieces: sub-pixel stereo refinement, KITTI regression (keyframes of a moving car, scale)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from mambaglue_ros.geometry import refine_stereo_matches
from mambaglue_ros.paths import data_root

KITTI = data_root() / "kitti_seq1"


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


def _stereo_scene(seed: int, n: int = 300, sigma_px: float = 1.0, step_m: float = 1.2, with_outliers: bool = False):
    """Points 4..80 m ahead of a KITTI-like rig (f 700, b 0.54 m), a forward step (1.2 m: one KITTI frame) with a
    small turn, noisy left/right/next pixels (grid-like 1 px noise) and 10 % gross outliers."""
    from mambaglue_ros.geometry import make_transform, so3_exp, triangulate_stereo

    rng = np.random.default_rng(seed)
    K = np.array([[700.0, 0, 600], [0, 700.0, 180], [0, 0, 1]])
    b = 0.54
    Z = 1.0 / rng.uniform(1 / 80, 1 / 4, n)  # uniform in inverse depth: many far points
    u, v = rng.uniform(0, 1200, n), rng.uniform(0, 360, n)
    X0 = np.c_[(u - 600) * Z / 700, (v - 180) * Z / 700, Z]
    T_01 = make_transform(so3_exp([0.0, 0.004, 0.001]), [0.02, -0.01, step_m])
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
    if with_outliers:  # also which matches are the gross outliers, and which points are in front of camera 1
        return X[ok], p1[ok], K, b, T_01, out[ok], X1[ok, 2] > 0
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


def test_covariance_gate_keeps_tracking_across_a_long_step():
    """Six metres between frames (a KITTI car at 10 m/s, a node processing every 5th-6th frame): a point's depth
    error now moves its reprojection by pixels, so a 2 px RANSAC consensus is too small to accept, while the
    chi-square gate on covariance-whitened errors (``ransac="covariance"``; ``"auto"`` falls back to it) keeps most
    correct matches and the metric step, and no gross outlier."""
    from mambaglue_ros.geometry import PNP_RESCUED, estimate_pose_pnp, so3_log

    pixel_failed, errors, errors_small_consensus = 0, [], []
    for seed in range(8):
        X, p1, K, b, T_01, outlier, in_front = _stereo_scene(seed, step_m=6.0, with_outliers=True)
        plain, why = estimate_pose_pnp(X, p1, K, ransac_px=2.0, min_inliers=20, baseline=b, ransac="pixel")
        pixel_failed += plain is None
        # what accepting the small pixel consensus would give instead
        small, _ = estimate_pose_pnp(X, p1, K, ransac_px=2.0, min_inliers=6, baseline=b, ransac="pixel")
        errors_small_consensus.append(np.linalg.norm(small.t - T_01[:3, 3]))
        pose, why = estimate_pose_pnp(X, p1, K, ransac_px=2.0, min_inliers=20, baseline=b, ransac="covariance")
        assert pose is not None, (seed, why)
        auto, why_auto = estimate_pose_pnp(X, p1, K, ransac_px=2.0, min_inliers=20, baseline=b, ransac="auto")
        assert auto is not None and why_auto.startswith("ok"), (seed, why_auto)
        assert (plain is None) == why_auto.startswith(PNP_RESCUED)  # what the node counts as pose_rescued
        if plain is None:
            assert np.array_equal(auto.t, pose.t)
        errors.append(np.linalg.norm(pose.t - T_01[:3, 3]))
        assert np.degrees(np.linalg.norm(so3_log(pose.R.T @ T_01[:3, :3]))) < 0.2
        # inliers: nearly every correct point camera 1 can see, and no more gross outliers than the gate lets
        # through at the true pose (wrong matches of far points that fall along their long reprojection ellipse)
        good = np.sum(in_front & ~outlier)
        assert pose.num_inliers > 0.9 * good, (seed, pose.num_inliers, good)
        true_pose = type(pose)(T_01[:3, :3], T_01[:3, 3], pose.covariance, 0, 0, True)
        admitted, admitted_at_truth = (np.sum(_pnp_inliers(p, X, p1, K, b) & outlier) for p in (pose, true_pose))
        assert admitted <= admitted_at_truth + 2, (seed, admitted, admitted_at_truth)
    assert pixel_failed >= 6, pixel_failed
    assert np.median(errors) < 0.04 and max(errors) < 0.08  # of the 6 m step
    assert np.mean(errors) < 0.7 * np.mean(errors_small_consensus)


def _pnp_inliers(pose, X: np.ndarray, p1: np.ndarray, K: np.ndarray, b: float) -> np.ndarray:
    """The points within the chi-square gate under ``pose`` (what the weighted refinement counts as inliers)."""
    from mambaglue_ros.geometry import CHI2_2DOF_99, stereo_point_covariance, whitened_reprojection_chi2

    T_10 = np.linalg.inv(pose.as_matrix())
    cov = stereo_point_covariance(X, K, b, 1.0, np.sqrt(2))
    return whitened_reprojection_chi2(T_10[None, :3, :3], T_10[None, :3, 3], X, cov, p1, K, 1.0)[0] < CHI2_2DOF_99


def test_auto_gate_is_the_pixel_gate_where_that_finds_enough():
    """``pnp_ransac: auto`` (the default) changes nothing where the pixel consensus is large enough: same pose."""
    from mambaglue_ros.geometry import estimate_pose_pnp

    for seed in range(3):
        X, p1, K, b, _ = _stereo_scene(seed)
        plain, why_plain = estimate_pose_pnp(X, p1, K, ransac_px=2.0, baseline=b, ransac="pixel")
        auto, why_auto = estimate_pose_pnp(X, p1, K, ransac_px=2.0, baseline=b, ransac="auto")
        assert plain is not None and why_auto == why_plain
        assert np.array_equal(auto.R, plain.R) and np.array_equal(auto.t, plain.t)
    pose, why = estimate_pose_pnp(X, p1, K, baseline=b, ransac="magic")
    assert pose is None and "ransac must be one of" in why


def test_whitened_chi2_is_chi_square_with_two_dof():
    """Under the true pose and correctly modelled noise the whitened reprojection error is chi-square(2): mean 2,
    99 % below the gate. Points behind the camera get inf."""
    from mambaglue_ros.geometry import (CHI2_2DOF_99, make_transform, so3_exp, stereo_point_covariance,
                                        whitened_reprojection_chi2)

    rng = np.random.default_rng(3)
    K = np.array([[700.0, 0, 600], [0, 700.0, 180], [0, 0, 1]])
    b, n = 0.54, 4000
    Z = 1.0 / rng.uniform(1 / 60, 1 / 4, n)
    u, v = rng.uniform(0, 1200, n), rng.uniform(0, 360, n)
    d = 700 * b / Z + rng.normal(0, np.sqrt(2), n)  # noisy disparity (two 1 px detections)
    keep = d > 1.0
    u, v, d, Z = u[keep], v[keep], d[keep], Z[keep]
    ul, vl = u + rng.normal(0, 1, len(u)), v + rng.normal(0, 1, len(u))  # noisy left pixels
    X0 = np.c_[(ul - 600) / d * b, (vl - 180) / d * b, 700 * b / d]  # the noisy triangulated points
    Xt = np.c_[(u - 600) * Z / 700, (v - 180) * Z / 700, Z]  # the true ones
    T_01 = make_transform(so3_exp([0.0, 0.01, 0.0]), [0.1, 0.0, 4.0])
    T_10 = np.linalg.inv(T_01)
    X1 = Xt @ T_10[:3, :3].T + T_10[:3, 3]
    front = X1[:, 2] > 0.5
    X0, X1 = X0[front], X1[front]
    p1 = X1[:, :2] / X1[:, 2:] * 700 + [600, 180] + rng.normal(0, 1, (len(X1), 2))
    cov = stereo_point_covariance(X0, K, b, 1.0, np.sqrt(2))
    chi2 = whitened_reprojection_chi2(T_10[None, :3, :3], T_10[None, :3, 3], X0, cov, p1, K, 1.0)[0]
    assert 1.6 < np.mean(chi2) < 2.6
    assert np.mean(chi2 < CHI2_2DOF_99) > 0.97
    behind = whitened_reprojection_chi2(np.eye(3)[None], np.array([[0.0, 0.0, -1e4]]), X0, cov, p1, K, 1.0)
    assert np.all(np.isinf(behind))
    # any pose (large rotations, several at once): r^T C^-1 r with C = I + Jp cov Jp^T, Jp = d pixel / d X0,
    # computed one point at a time with a numerical Jacobian
    Rs = np.array([so3_exp(rng.normal(0, 0.4, 3)) for _ in range(3)])
    ts = rng.normal(0, 1.0, (3, 3)) + [0, 0, 2.0]
    pts = rng.uniform(0, 1000, (40, 2))
    many = whitened_reprojection_chi2(Rs, ts, X0[:40], cov[:40], pts, K, 1.0)
    for h in range(3):
        for i in range(40):
            def pixel(X: np.ndarray) -> np.ndarray:
                Y = Rs[h] @ X + ts[h]
                return np.array([700 * Y[0] / Y[2] + 600, 700 * Y[1] / Y[2] + 180])
            if (Rs[h] @ X0[i] + ts[h])[2] <= 1e-6:
                assert np.isinf(many[h, i])
                continue
            Jp = np.stack([(pixel(X0[i] + e) - pixel(X0[i] - e)) / 2e-6 for e in np.eye(3) * 1e-6], axis=1)
            r = pixel(X0[i]) - pts[i]
            expected = r @ np.linalg.solve(np.eye(2) + Jp @ cov[i] @ Jp.T, r)
            assert many[h, i] == pytest.approx(expected, rel=1e-5)


@pytest.mark.skipif(not (KITTI / "image_r").is_dir(), reason="needs ../shared/data/kitti_seq1 (not shipped)")
def test_kitti_every_fifth_frame_keeps_tracking():
    """A node that processes every 5th frame of KITTI (6 m apart: a slow CPU at a 10 Hz camera), 512 keypoints,
    config/stereo.yaml's thresholds: with the pixel gate most frames have too few PnP inliers and the path breaks
    (ATE metres); the default (``pnp_ransac: auto``) tracks every frame."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import stereo_diagnosis as D
    from mambaglue_ros.bags import metrics as M
    from mambaglue_ros.tracking import StereoTracker

    data = D.load_kitti(KITTI)
    matcher = D.CachingMatcher(D.make_matcher("mambaglue", "xfeat", 512), None)  # matched once, for both modes
    frames = list(range(0, len(data["left"]), 5))
    images = [(D.read_gray(data["left"][k]), D.read_gray(data["right"][k])) for k in frames]
    stamps = np.array(frames, dtype=np.int64) * (D.NS // 10)
    summary = {}
    for mode in ("pixel", "auto"):
        tracker = StereoTracker(matcher, data["K"], data["K_right"], data["T_left_right"],
                                {"policy": "keyframe", "keyframe_max_parallax_px": 3.0, "min_inliers": 15,  # stereo.yaml
                                 "pnp_ransac_px": 2.0, "pnp_ransac": mode})
        poses, lost = [], 0
        for (left, right), stamp in zip(images, stamps):
            result = tracker.process(left, right, int(stamp))
            poses.append(result.T_odom_cam.copy())
            lost += result.pose is None
        ev = M.evaluate(M.Trajectory(stamps, np.array(poses)), M.Trajectory(stamps, data["poses"][frames]), "se3")
        summary[mode] = (lost - 1, ev["summary"]["ate_m"])  # the first frame has no reference
    assert summary["pixel"][0] >= 3 and summary["pixel"][1] > 2.0, summary
    assert summary["auto"][0] == 0 and summary["auto"][1] < 1.0, summary


def test_covariance_gate_rescues_no_pose_from_wrong_matches():
    """The fallback must not turn garbage into a pose: stereo points paired with random pixels (a wrong temporal
    match for every point) give no pose in any mode, near and far points alike."""
    from mambaglue_ros.geometry import estimate_pose_pnp

    for seed in range(4):
        X, p1, K, b, _ = _stereo_scene(seed)
        rng = np.random.default_rng(100 + seed)
        wrong = np.c_[rng.uniform(0, 1200, len(p1)), rng.uniform(0, 360, len(p1))]
        for mode in ("pixel", "auto", "covariance"):
            pose, why = estimate_pose_pnp(X, wrong, K, ransac_px=2.0, min_inliers=15, baseline=b, ransac=mode)
            assert pose is None, (seed, mode, why)
