"""Point undistortion, and the mono pose from a distorted camera (issue 14, item 7)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from mambaglue_ros import geometry as G
from mambaglue_ros.camera_model import PointUndistorter
from mambaglue_ros.tracking import MonoTracker

from fake_matcher import FakeMatcher, view, world_points

K = np.array([[420.0, 0.0, 318.0], [0.0, 421.0, 242.0], [0.0, 0.0, 1.0]])
D = np.array([-0.32, 0.12, 0.0008, -0.0005, -0.02])  # a wide-angle lens, ~40 px at the corners


def test_radtan_and_fisheye_round_trip():
    X = np.c_[np.random.default_rng(0).uniform(-0.7, 0.7, (300, 2)), np.ones(300)]
    pix, _ = cv2.projectPoints(X.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), K, D)
    u = PointUndistorter(K, D, "plumb_bob")
    np.testing.assert_allclose(u.normalized(pix.reshape(-1, 2)), X[:, :2], atol=1e-9)
    np.testing.assert_allclose(u.pixels(pix.reshape(-1, 2)), X[:, :2] @ K[:2, :2].T + K[:2, 2], atol=1e-6)
    Df = np.array([0.05, -0.01, 0.002, -0.0005])
    pix_f, _ = cv2.fisheye.projectPoints(X.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), K, Df)
    uf = PointUndistorter(K, Df, "equidistant")
    np.testing.assert_allclose(uf.normalized(pix_f.reshape(-1, 2)), X[:, :2], atol=1e-6)


def test_rectified_input_uses_P_and_ignores_D():
    P = np.c_[K * [[0.9], [0.9], [1.0]], np.zeros(3)]
    u = PointUndistorter(K, D, "plumb_bob", P=P, rectified=True)
    assert not u.distorted
    np.testing.assert_allclose(u.K_pinhole, P[:, :3])
    np.testing.assert_allclose(u.normalized(P[:2, 2][None]), [[0.0, 0.0]], atol=1e-12)


def test_bad_models_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="unsupported distortion model 'kannala'"):
        PointUndistorter(K, D, "kannala")
    with pytest.raises(ValueError, match="4 distortion coefficients"):
        PointUndistorter(K, D, "equidistant")
    assert not PointUndistorter(K, np.zeros(5), "whatever").distorted  # D = 0: nothing to undo


def mono_rotation_error_deg(undistort: bool) -> float:
    pts = world_points(400, seed=1)
    T0 = np.eye(4)
    T1 = G.make_transform(G.so3_exp([0.02, -0.12, 0.01]), [0.4, 0.05, 0.1])
    tracker = MonoTracker(FakeMatcher(), K, {"min_matches": 20, "min_inliers": 15})
    if undistort:
        tracker.undistort = PointUndistorter(K, D).pixels
    tracker.process(view(pts, T0, K, D), 0)
    result = tracker.process(view(pts, T1, K, D), 100_000_000)
    assert result.pose is not None, result.reason
    return G.rotation_angle_deg(result.pose.R, T1[:3, :3])


def test_mono_pose_from_a_distorted_camera_needs_undistortion():
    assert mono_rotation_error_deg(undistort=True) < 0.05
    assert mono_rotation_error_deg(undistort=False) > 0.5  # what the node did: K only, D ignored
