"""Mono odometry step lengths (mambaglue_ros.mono_scale, MonoTracker's mono_scale): exact correspondences of a
synthetic point cloud (test/fake_matcher.py), so every number below is known."""
from __future__ import annotations

import math

import numpy as np
import pytest
from fake_matcher import FakeMatcher, FakeView, view

from mambaglue_ros import geometry as G
from mambaglue_ros.mono_scale import FramePeriod, MonoScale, ReferenceDepths, triangulate_depths
from mambaglue_ros.mono_scale import ScaleMeasurement


def measurement(log_length: float, variance: float) -> ScaleMeasurement:
    return ScaleMeasurement(log_length, variance, 100)
from mambaglue_ros.tracking import MonoTracker, validate_tracking_config

K = np.array([[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]])
DT_NS = 100_000_000  # 10 Hz


def cloud(n: int = 1500, seed: int = 0) -> np.ndarray:
    """Points 4-30 m ahead of a camera that drives along +z (optical frame), spread sideways and up/down."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(4.0, 30.0, n)
    return np.c_[rng.uniform(-1.0, 1.0, n) * (0.3 * z + 2.0), rng.uniform(-0.6, 0.6, n) * (0.3 * z + 1.0), z]


def path(distances: np.ndarray) -> list[np.ndarray]:
    """T_world_cam of a camera driving forward with a slight sideways drift and yaw, at the given distances."""
    poses = []
    for s in distances:
        T = G.make_transform(G.so3_exp(np.array([0.0, 0.004 * s, 0.0])), np.array([0.05 * s, 0.0, s]))
        poses.append(T)
    return poses


def noisy(v: FakeView, sigma_px: float, rng: np.random.Generator) -> FakeView:
    return FakeView(v.pixels + rng.normal(0.0, sigma_px, v.pixels.shape), v.ids, v.size)


def run(mode: str, distances: np.ndarray, stamps_ns: list[int], sigma_px: float = 0.0, seed: int = 0,
        policy: str = "previous") -> tuple[np.ndarray, list]:
    """Odometry positions (N, 3) and the results of a MonoTracker over the path."""
    points, rng = cloud(seed=seed), np.random.default_rng(seed + 1)
    tracker = MonoTracker(FakeMatcher(), K, {"mono_scale": mode, "policy": policy})
    results = [tracker.process(noisy(view(points, T, K), sigma_px, rng), stamp)
               for T, stamp in zip(path(distances), stamps_ns)]
    return np.array([r.T_odom_cam[:3, 3] for r in results]), results


def scale_consistency(est: np.ndarray, distances: np.ndarray) -> float:
    """Largest relative deviation of |position| / true distance from its median (0 = one consistent scale)."""
    true = np.linalg.norm(np.array([T[:3, 3] for T in path(distances)]), axis=1)
    ratio = np.linalg.norm(est[1:], axis=1) / true[1:]
    return float(np.max(np.abs(ratio / np.median(ratio) - 1.0)))


def test_triangulate_depths_are_exact_for_exact_rays():
    rng = np.random.default_rng(0)
    X_ref = np.c_[rng.uniform(-3, 3, 50), rng.uniform(-2, 2, 50), rng.uniform(4, 20, 50)]
    R, t = G.so3_exp(np.array([0.01, -0.03, 0.02])), np.array([0.3, -0.1, 1.2])
    X_cur = (X_ref - t) @ R  # X_ref = R X_cur + t
    z_ref, z_cur, angle = triangulate_depths(X_ref / X_ref[:, 2:], X_cur / X_cur[:, 2:], R, t)
    np.testing.assert_allclose(z_ref, X_ref[:, 2], rtol=1e-9)
    np.testing.assert_allclose(z_cur, X_cur[:, 2], rtol=1e-9)
    assert np.all(angle > 0)
    # a translation twice as long: every depth twice as large (what the scale measurement relies on)
    np.testing.assert_allclose(triangulate_depths(X_ref / X_ref[:, 2:], X_cur / X_cur[:, 2:], R, 2 * t)[0],
                               2 * X_ref[:, 2], rtol=1e-9)
    # parallel rays (no translation) have no depth
    assert np.isnan(triangulate_depths(X_ref / X_ref[:, 2:], X_ref / X_ref[:, 2:], np.eye(3), t * 0)[0]).all()


def test_time_mode_keeps_one_scale_when_frames_are_dropped():
    frames = np.array([0, 1, 2, 4, 5, 8, 9, 10, 13, 14, 15, 16, 19])  # a node taking the latest of a 10 Hz camera
    distances, stamps = 1.2 * frames, [int(i) * DT_NS for i in frames]  # constant speed, 12 m/s
    est_time, res = run("time", distances, stamps)
    est_unit, _ = run("unit", distances, stamps)
    assert all(r.pose is not None for r in res[1:])
    assert scale_consistency(est_time, distances) < 1e-3
    assert scale_consistency(est_unit, distances) > 0.3  # unit steps: a three-frame gap counts as one frame
    lengths = [r.step_scale for r in res[1:]]
    np.testing.assert_allclose(lengths, np.diff(frames), rtol=1e-9)  # the first step is the unit


def test_stamp_jitter_does_not_become_step_length_noise():
    frames = np.array([0, 1, 2, 4, 5, 8, 9, 10, 13, 14, 15, 16, 19])
    distances = 1.2 * frames
    jitter = np.random.default_rng(3).uniform(-0.008, 0.008, len(frames))  # stamps off by up to 8 % of a period
    stamps = [int((i * 0.1 + j) * 1e9) for i, j in zip(frames, jitter)]
    est, res = run("time", distances, stamps)
    # once the period is known (after the first single-frame difference), every step counts whole frames
    np.testing.assert_allclose([r.step_scale for r in res[2:]], np.diff(frames)[1:], rtol=1e-9)
    assert scale_consistency(est, distances) < 0.02


def test_node_feed_of_every_input_stamp_counts_long_skips():
    """A node far slower than its camera (30 Hz) processes every 5th-7th frame; the stamps of all input frames
    (FramePeriod fed from the image callback) give the camera's period, so each step counts its frames."""
    frames = np.array([0, 5, 11, 18, 23, 29, 36, 41, 47, 54])
    camera = FramePeriod()
    points = cloud()
    tracker = MonoTracker(FakeMatcher(), K, {"mono_scale": "time"}, frame_period=camera)
    jitter = np.random.default_rng(5).uniform(-0.002, 0.002, frames[-1] + 1)
    stamp = [int((i / 30 + jitter[i]) * 1e9) for i in range(frames[-1] + 1)]
    results, poses = [], path(0.2 * frames)
    for k, i in enumerate(frames):
        for j in range(frames[k - 1] + 1 if k else 0, i + 1):
            camera.observe(stamp[j])  # every frame the camera delivered
        results.append(tracker.process(view(points, poses[k], K), stamp[i]))
    assert camera.period_s == pytest.approx(1 / 30, rel=0.05)
    np.testing.assert_allclose([r.step_scale for r in results[1:]], np.diff(frames) / frames[1], rtol=1e-9)
    # the processed stamps alone: 5, 6 and 7 frames apart make one cluster, and the steps are not the frame counts
    alone = MonoTracker(FakeMatcher(), K, {"mono_scale": "time"})
    lengths = [alone.process(view(points, poses[k], K), stamp[i]).step_scale for k, i in enumerate(frames)][1:]
    assert not np.allclose(lengths, np.diff(frames) / frames[1], rtol=0.05)


def test_speed_per_second_survives_a_new_period_estimate_after_a_measurement():
    scale = MonoScale(500.0)
    for t in (0.0, 0.2, 0.4):  # a node taking every 2nd frame of a 10 Hz camera: the estimate is 0.2 s
        scale.observe(int(t * 1e9))
    assert scale.step_length(0.2, None) == (1.0, 0.0)
    measured = measurement(math.log(1.5), 1e-4)  # a measured step: the speed is no longer the first step's
    length, var = scale.step_length(0.2, measured)
    scale.commit(length, var, 0.2)
    scale.observe(int(0.5 * 1e9))  # it caught up once: the period is 0.1 s
    assert scale.frames.period_s == pytest.approx(0.1)
    assert scale.step_length(0.1, None)[0] == pytest.approx(length / 2, rel=1e-9)  # half the time, half the step


def test_frame_period_from_skipped_and_jittered_stamps():
    period = FramePeriod()
    for stamp in (0, 300, 500, 600, 701, 799, 1100):  # ms: 3, 2, 1, 1, 1 and 3 frames of 100 ms
        period.observe(stamp * 1_000_000)
    assert period.period_s == pytest.approx(0.1, abs=0.002)
    assert period.count(0.104) == 1.0 and period.count(0.296) == 3.0 and period.count(0.15) == pytest.approx(1.5,
                                                                                                         rel=0.03)
    period.observe(1_100_000_000)  # the same stamp again: ignored
    assert period.period_s == pytest.approx(0.1, abs=0.002)
    period.observe(0)  # a bag loop (over 1 s back): the estimate starts again
    assert period.period_s is None
    period.observe(50_000_000)
    assert period.period_s == pytest.approx(0.05)
    slow = FramePeriod()  # a node that only ever takes every 2nd or 3rd frame
    for stamp in (0, 200, 500, 700, 1000, 1200):
        slow.observe(stamp * 1_000_000)
    assert slow.period_s == pytest.approx(0.2) and slow.count(0.3) == pytest.approx(1.5)


def test_depth_mode_follows_a_change_of_speed_that_the_stamps_do_not_show():
    steps = np.r_[np.full(8, 0.5), np.full(8, 1.25)]  # the camera speeds up 2.5x between two frames
    distances = np.r_[0.0, np.cumsum(steps)]
    stamps = [i * DT_NS for i in range(len(distances))]
    est_depth, res = run("depth", distances, stamps)
    est_time, _ = run("time", distances, stamps)
    assert all(r.pose is not None for r in res[1:])
    np.testing.assert_allclose([r.step_scale for r in res[1:]], steps / steps[0], rtol=0.01)
    assert scale_consistency(est_depth, distances) < 0.01
    assert scale_consistency(est_time, distances) > 0.2


def test_depth_mode_with_pixel_noise_keeps_the_scale_within_a_few_percent():
    distances = np.arange(20) * 1.0
    stamps = [i * DT_NS for i in range(20)]
    est, res = run("depth", distances, stamps, sigma_px=0.5)
    assert all(r.pose is not None for r in res[1:])
    lengths = np.array([r.step_scale for r in res[1:]])
    assert np.max(np.abs(lengths - 1.0)) < 0.08, lengths
    assert scale_consistency(est, distances) < 0.08


def test_keyframe_policy_step_grows_with_the_time_since_the_keyframe():
    distances = np.arange(8) * 0.5
    stamps = [i * DT_NS for i in range(8)]
    _, res = run("time", distances, stamps, policy="keyframe")
    for r in res[1:]:
        span = (r.stamp_ns - r.reference_stamp_ns) / DT_NS
        first_span = (res[1].stamp_ns - res[1].reference_stamp_ns) / DT_NS
        assert r.step_scale == pytest.approx(span / first_span, rel=1e-9)


def test_rotation_only_step_has_no_length_and_the_speed_carries_over():
    points, matcher = cloud(), FakeMatcher()
    tracker = MonoTracker(matcher, K, {"mono_scale": "depth"})
    turn = G.make_transform(G.so3_exp(np.array([0.0, 0.05, 0.0])), np.zeros(3))
    poses = path(np.array([0.0, 1.0, 2.0]))
    poses += [poses[-1] @ turn]                       # turning on the spot: no parallax
    poses += [poses[-1] @ G.make_transform(np.eye(3), np.array([0.0, 0.0, 2.0]))]  # driving on, 2 m in one frame
    res = [tracker.process(view(points, T, K), i * DT_NS) for i, T in enumerate(poses)]
    assert "rotation only" in res[3].reason and res[3].step_scale == 0.0
    np.testing.assert_allclose(res[3].T_odom_cam[:3, 3], res[2].T_odom_cam[:3, 3], atol=1e-9)
    # the reference's depths were carried through the rotation: the next step is measured, 2 m = 2 units (the
    # constant-speed prediction alone would say 1)
    assert res[4].pose is not None and res[4].step_scale == pytest.approx(2.0, rel=0.01)


def test_lost_frames_keep_the_speed():
    points, matcher = cloud(), FakeMatcher()
    tracker = MonoTracker(matcher, K, {"mono_scale": "depth"})
    poses = path(np.arange(6) * 1.0)
    empty = FakeView(np.zeros((0, 2)), np.zeros(0, dtype=np.int64))
    res = [tracker.process(view(points, poses[i], K), i * DT_NS) for i in range(3)]
    res.append(tracker.process(empty, 3 * DT_NS))  # no keypoints: no pose, the reference stays
    res.append(tracker.process(view(points, poses[4], K), 4 * DT_NS))
    assert res[3].pose is None
    assert res[4].pose is not None and res[4].step_scale == pytest.approx(2.0, rel=0.01)  # two frames spanned


def test_reset_defines_the_unit_again():
    points = cloud()
    tracker = MonoTracker(FakeMatcher(), K, {"mono_scale": "time"})
    poses = path(np.arange(4) * 1.0)
    for i in range(3):
        tracker.process(view(points, poses[i], K), (i + 10) * DT_NS)
    tracker.reset()
    first = tracker.process(view(points, poses[0], K), 0)
    second = tracker.process(view(points, poses[2], K), 5 * DT_NS)
    assert first.pose is None and second.step_scale == 1.0


def test_scale_options_are_checked():
    with pytest.raises(ValueError, match="mono_scale"):
        validate_tracking_config({"mono_scale": "metric"})
    with pytest.raises(ValueError, match="unknown"):
        MonoScale(500.0, {"speed": 1.0})
    with pytest.raises(ValueError, match="focal"):
        MonoScale(0.0)
    with pytest.raises(ValueError, match="speed_noise"):
        MonoScale(500.0, {"speed_noise": 0.0})


def test_measure_needs_enough_shared_depths():
    scale = MonoScale(500.0, {"min_points": 5})
    rays = np.c_[np.zeros((3, 2)), np.ones(3)]
    matches = np.array([[0, 0], [1, 1], [2, 2]])
    depths = ReferenceDepths(np.array([5.0, 6.0, 7.0]), np.zeros(3))
    assert scale.measure(depths, rays, rays, matches, np.eye(3), np.array([0.0, 0.0, 1.0])) is None
    assert scale.measure(ReferenceDepths.unknown(3), rays, rays, matches, np.eye(3), np.array([0, 0, 1.0])) is None
    # the step length without a measurement: the unit first, then the speed times the time spanned
    assert scale.step_length(0.1, None) == (1.0, 0.0)
    scale.commit(2.0, 0.0, 0.1)
    assert scale.step_length(0.3, None)[0] == pytest.approx(6.0)
    assert scale.step_length(30.0, None)[0] == pytest.approx(20.0)  # a long gap counts as max_gap_s (1 s)


def test_scaled_translation_moves_the_covariance():
    cov = np.diag([1.0, 2.0, 3.0, 0.1, 0.2, 0.3])
    cov[0, 3] = cov[3, 0] = 0.05
    pose = G.RelativePose(np.eye(3), np.array([0.0, 0.0, 1.0]), cov, 50, 60, False)
    scaled = G.scaled_translation(pose, 2.0)
    np.testing.assert_allclose(scaled.t, [0.0, 0.0, 2.0])
    np.testing.assert_allclose(np.diag(scaled.covariance), [4.0, 8.0, 12.0, 0.1, 0.2, 0.3])
    assert scaled.covariance[0, 3] == pytest.approx(0.1)
    assert G.scaled_translation(pose, 1.0) is pose and G.scaled_translation(pose, 0.0) is pose
    with pytest.raises(ValueError):
        G.scaled_translation(pose, -1.0)
    with pytest.raises(ValueError):
        G.scaled_translation(pose, math.nan)
