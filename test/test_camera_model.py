"""Point undistortion, and the mono pose from a distorted camera (issue 14, item 7)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from mambaglue_ros import geometry as G
from mambaglue_ros.camera_model import (ImageRectifier, PointUndistorter, pose_in_camera_frame,
                                      stereo_row_offset_px)
from mambaglue_ros.synthetic import raw_camera_view
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


# --- stereo_rectify: raw stereo images remapped to the rectified pinhole, and results turned back ---------------

def rotation_deg(axis, deg: float) -> np.ndarray:
    return G.so3_exp(np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis) * np.deg2rad(deg))


@pytest.mark.parametrize("model", ["plumb_bob", "equidistant"])
def test_image_rectifier_puts_points_where_the_rectified_camera_sees_them(model):
    w, h = 640, 480
    K_rect = np.array([[400.0, 0.0, 320.0], [0.0, 400.0, 240.0], [0.0, 0.0, 1.0]])
    f = 540.0 if model == "plumb_bob" else 600.0  # narrower than the rectified view, so it sees inside (a fisheye,
    # r = f theta, sees wider at the same f)
    K_raw = np.array([[f, 0.0, 316.0], [0.0, f - 2.0, 244.0], [0.0, 0.0, 1.0]])
    D_raw = np.array([-0.12, 0.03, 0.0005, -0.0004, 0.0] if model == "plumb_bob" else [0.02, -0.01, 0.003, -0.001])
    R = rotation_deg([0.3, 1.0, 0.2], 4.0)
    # bright blobs at known rectified pixels
    blobs = np.array([[160.0, 120.0], [480.0, 130.0], [320.0, 240.0], [200.0, 360.0], [450.0, 350.0]])
    yy, xx = np.mgrid[0:h, 0:w]
    rect = np.zeros((h, w), np.float32)
    for x, y in blobs:
        rect += 200.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 3.0 ** 2))
    raw = raw_camera_view(rect.astype(np.uint8), K_rect, K_raw, D_raw, R, model)
    P = np.c_[K_rect, np.zeros(3)]
    out = ImageRectifier(K_raw, D_raw, model, R, P, (w, h))(raw)
    assert out.shape == raw.shape and out.dtype == np.uint8
    for x, y in blobs:  # each blob's centroid comes back to its rectified pixel
        x0, y0 = int(x) - 8, int(y) - 8
        patch = out[y0:y0 + 17, x0:x0 + 17].astype(np.float64)
        py, px = np.mgrid[0:17, 0:17]
        centre = np.array([(patch * px).sum(), (patch * py).sum()]) / patch.sum() + [x0, y0]
        assert np.linalg.norm(centre - [x, y]) < 0.25, (centre, (x, y))
    # without the rectification the blobs are pixels away: the test sees the remap
    assert np.abs(raw.astype(int) - rect.astype(np.uint8).astype(int)).max() > 100
    with pytest.raises(ValueError, match="is for 640x480"):
        ImageRectifier(K_raw, D_raw, model, R, P, (w, h))(raw[:240])


def test_image_rectifier_fisheye_and_refusals():
    w, h = 320, 240
    K_raw = np.array([[190.0, 0.0, 160.0], [0.0, 190.0, 120.0], [0.0, 0.0, 1.0]])
    Df = np.array([0.05, -0.01, 0.002, -0.0005])
    P = np.c_[K_raw * [[0.8], [0.8], [1.0]], np.zeros(3)]
    rect_px = np.random.default_rng(3).integers([10, 10], [w - 10, h - 10], (50, 2))  # (x, y)
    X = np.c_[rect_px, np.ones(50)] @ np.linalg.inv(P[:, :3]).T  # their rays
    raw_px, _ = cv2.fisheye.projectPoints(X.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), K_raw, Df)
    rectifier = ImageRectifier(K_raw, Df, "equidistant", None, P, (w, h))
    # the remap table says, for each rectified pixel, which raw pixel it samples: the one of the same ray
    mx, my = cv2.convertMaps(rectifier.maps[0], rectifier.maps[1], cv2.CV_32FC1)
    sampled = np.c_[mx[rect_px[:, 1], rect_px[:, 0]], my[rect_px[:, 1], rect_px[:, 0]]]
    assert np.abs(sampled - raw_px.reshape(-1, 2)).max() < 0.05  # (the table's 1/32 px steps)
    # with a rectification turn, and an equidistant lens with all-zero coefficients (still no pinhole: r = f theta)
    R = rotation_deg([0.3, 1.0, -0.4], 2.0)
    for D_f in (Df, np.zeros(4), np.zeros(5)):  # (a driver may send plumb_bob's 5 zeros with the equidistant model)
        rectifier = ImageRectifier(K_raw, D_f, "equidistant", R, P, (w, h))
        rays = (np.c_[rect_px, np.ones(50)] @ np.linalg.inv(P[:, :3]).T) @ R  # x_cam = R^T x_rect (rows: x^T R)
        raw_px, _ = cv2.fisheye.projectPoints(rays.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), K_raw, D_f[:4])
        mx, my = cv2.convertMaps(rectifier.maps[0], rectifier.maps[1], cv2.CV_32FC1)
        sampled = np.c_[mx[rect_px[:, 1], rect_px[:, 0]], my[rect_px[:, 1], rect_px[:, 0]]]
        assert np.abs(sampled - raw_px.reshape(-1, 2)).max() < 0.05
    assert PointUndistorter(K_raw, np.zeros(4), "equidistant").distorted
    with pytest.raises(ValueError, match="P is unset"):
        ImageRectifier(K_raw, Df, "equidistant", None, np.zeros((3, 4)), (w, h))
    with pytest.raises(ValueError, match="unsupported distortion model"):
        ImageRectifier(K_raw, np.ones(5) * 0.1, "kannala", None, P, (w, h))


def test_rectified_rays_turned_back_into_the_cameras_frame():
    R = rotation_deg([1.0, -0.5, 0.3], 3.0)
    P = np.c_[K * [[0.9], [0.9], [1.0]], np.zeros(3)]
    X = np.c_[np.random.default_rng(4).uniform(-0.5, 0.5, (40, 2)), np.ones(40)] * 4.0  # camera frame
    x_rect = (X @ R.T) @ P[:, :3].T
    pixels = x_rect[:, :2] / x_rect[:, 2:3]
    u = PointUndistorter(K, D, "plumb_bob", P=P, rectified=True, R=R)
    np.testing.assert_allclose(u.normalized(pixels), X[:, :2] / X[:, 2:3], atol=1e-12)
    assert not np.allclose(PointUndistorter(K, D, P=P, rectified=True).normalized(pixels), X[:, :2] / X[:, 2:3],
                           atol=1e-3)  # (the rectified camera's own rays differ)
    assert PointUndistorter(K, D, P=P, rectified=True, R=np.eye(3)).R_rect is None
    assert PointUndistorter(K, D, R=R).R_rect is None  # raw input: no rectified camera to turn back


def test_pose_in_camera_frame():
    R = rotation_deg([0.2, 1.0, -0.1], 5.0)  # x_rect = R x_cam
    T_c = G.make_transform(G.so3_exp([0.01, -0.03, 0.02]), [0.1, -0.02, 1.2])  # the camera's true motion
    C = np.eye(4)
    C[:3, :3] = R
    T_r = C @ T_c @ np.linalg.inv(C)  # the same motion seen by the rectified camera
    A = np.random.default_rng(5).normal(size=(6, 6))
    cov_r = A @ A.T * 1e-4 + np.diag([1e-4, 4e-4, 9e-4, 1e-6, 2e-6, 3e-6])  # with cross terms
    pose_r = G.RelativePose(T_r[:3, :3], T_r[:3, 3], cov_r, 90, 100, True, np.ones(100, bool))
    pose_c = pose_in_camera_frame(pose_r, R)
    np.testing.assert_allclose(pose_c.as_matrix(), T_c, atol=1e-12)
    np.testing.assert_allclose(pose_c.covariance[:3, :3], R.T @ cov_r[:3, :3] @ R, atol=1e-15)
    np.testing.assert_allclose(pose_c.covariance[3:, 3:], R.T @ cov_r[3:, 3:] @ R, atol=1e-15)
    np.testing.assert_allclose(pose_c.covariance[:3, 3:], R.T @ cov_r[:3, 3:] @ R, atol=1e-15)
    assert pose_c.num_inliers == 90 and pose_c.metric and pose_c.inliers is pose_r.inliers
    assert pose_in_camera_frame(pose_r, np.eye(3)) is pose_r and pose_in_camera_frame(pose_r, None) is pose_r


def test_stereo_row_offset():
    left = np.array([[10.0, 20.0], [30.0, 40.0], [50.0, 60.0]])
    assert stereo_row_offset_px(left, left - [5.0, 0.0]) == 0.0
    assert stereo_row_offset_px(left, left + [[-5.0, 3.0], [-5.0, -4.0], [0.0, 0.5]]) == 3.0
    assert np.isnan(stereo_row_offset_px(np.zeros((0, 2)), np.zeros((0, 2))))
