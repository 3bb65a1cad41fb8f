"""Frames without a pose (a blurred, covered or glitched frame; a bad reference frame): the trackers keep their
reference and fall back to earlier frames (``tracking`` module docstring), and the odometry and track ids follow.

Exact correspondences (``fake_matcher``): a bad frame is a view whose point ids are shuffled (as many keypoints
as a good frame, every match wrong), a bad reference a view that sees only part of the scene plus points of its
own (an occluder); the trajectories are known, so the odometry is checked against the truth.
"""
from __future__ import annotations

import numpy as np
import pytest

from mambaglue_ros import geometry as G
from mambaglue_ros.odometry import OdometryIntegrator, body_twist
from mambaglue_ros.tracking import MonoTracker, StereoTracker, validate_tracking_config
from mambaglue_ros.tracks import TrackManager

from fake_matcher import FakeMatcher, FakeView, view, world_points

K = np.array([[400.0, 0.0, 320.0], [0.0, 400.0, 240.0], [0.0, 0.0, 1.0]])
NS = 100_000_000  # 10 Hz
T_LR = G.make_transform(np.eye(3), [0.2, 0.0, 0.0])
CONFIG = {"min_matches": 20, "min_inliers": 15}


def trajectory(n: int, step_m: float = 0.15) -> list[np.ndarray]:
    return [G.make_transform(G.so3_exp([0.0, 0.01 * i, 0.0]), [step_m * i, 0.0, 0.05 * i]) for i in range(n)]


def glitched(v: FakeView, seed: int) -> FakeView:
    """``v`` with its scene points relabelled by a seeded permutation: as many keypoints, and, with the same seed
    for both images of a stereo pair, as many stereo points, but every match to another frame wrong."""
    return FakeView(v.pixels, np.random.default_rng(seed).permutation(1000)[v.ids], v.size)


def covered(v: FakeView, keep: np.ndarray) -> FakeView:
    """Only the scene points in ``keep`` visible, plus as many points of an occluder seen by no other frame."""
    seen = np.isin(v.ids, keep)
    occluder = np.random.default_rng(1).uniform([0, 0], v.size, (int((~seen).sum()), 2))
    return FakeView(np.r_[v.pixels[seen], occluder], np.r_[v.ids[seen], 100_000 + np.arange(len(occluder))], v.size)


def stereo_frames(pts: np.ndarray, Ts: list[np.ndarray]) -> list[tuple[FakeView, FakeView]]:
    return [(view(pts, T, K), view(pts, T @ T_LR, K)) for T in Ts]


def run_stereo(frames, config=None):
    tracker = StereoTracker(FakeMatcher(), K, K, T_LR, {**CONFIG, **(config or {})})
    return tracker, [tracker.process(left, right, k * NS) for k, (left, right) in enumerate(frames)]


def position_errors(results, Ts) -> np.ndarray:
    """|odometry - truth| of each frame's camera position (the first frame is the odometry's origin)."""
    T0 = np.linalg.inv(Ts[0])
    return np.array([np.linalg.norm(r.T_odom_cam[:3, 3] - (T0 @ T)[:3, 3]) for r, T in zip(results, Ts)])


def test_a_frame_without_a_pose_keeps_the_reference_and_no_motion_is_lost():
    pts, Ts = world_points(400, seed=3), trajectory(8)
    frames = stereo_frames(pts, Ts)
    frames[3] = (glitched(frames[3][0], 0), glitched(frames[3][1], 0))
    tracker, res = run_stereo(frames)
    assert res[3].pose is None and not res[3].is_keyframe
    np.testing.assert_array_equal(res[3].T_odom_cam, res[2].T_odom_cam)  # no place for it: the last pose
    assert res[4].pose is not None and res[4].reference_stamp_ns == 2 * NS  # across the bad frame
    assert res[3].live_references == (2 * NS, 1 * NS, 3 * NS)  # reference, the one before, the frame without a pose
    # the extra attempts' time is reported apart (a rate controller must not read it as what its knobs cost)
    assert res[3].timings_ms["fallback"] > 0 and "fallback" not in res[2].timings_ms | res[4].timings_ms
    assert np.all(position_errors(res, Ts)[4:] < 1e-6)  # the motion of frames 2 -> 4 is all there
    # before 2026-12-05 (max_lost_frames 0) the bad frame became the reference, and frame 4 failed against it; frame
    # 4 became the reference in turn, at the place the last measured motion leads to (before 2026-12-06: at the last
    # pose, and the motion 2 -> 4 was lost). This trajectory turns, so constant velocity is close, not exact
    _, old = run_stereo(frames, {"max_lost_frames": 0})
    assert old[3].is_keyframe and old[4].reference_stamp_ns == 3 * NS and old[3].live_references == (3 * NS,)
    assert old[4].pose is None and old[4].is_keyframe and old[5].reference_stamp_ns == 4 * NS
    errors = position_errors(old, Ts)
    assert errors[4] > 0.3 and np.all((errors[5:] > 1e-4) & (errors[5:] < 0.01))


def test_a_bad_reference_falls_back_to_the_one_before():
    # frame 3 sees half the scene and an occluder: it poses (against frame 2) and becomes the reference, but
    # frame 4 sees nothing of what frame 3 saw of the scene: frame 4 is posed against frame 2 instead
    pts, Ts = world_points(400, seed=4), trajectory(7)
    frames = stereo_frames(pts, Ts)
    half = frames[3][0].ids[::2]
    frames[3] = (covered(frames[3][0], half), covered(frames[3][1], half))
    rest = np.setdiff1d(frames[4][0].ids, half)
    frames[4] = tuple(FakeView(v.pixels[np.isin(v.ids, rest)], v.ids[np.isin(v.ids, rest)], v.size)
                      for v in frames[4])
    tracker, res = run_stereo(frames)
    assert res[3].pose is not None and res[3].is_keyframe
    assert res[4].pose is not None and res[4].reference_stamp_ns == 2 * NS
    assert "against the reference before" in res[4].reason and "too few matches" in res[4].reason
    assert np.all(position_errors(res, Ts) < 1e-6)


def test_when_every_reference_fails_the_last_frame_without_a_pose_takes_over():
    # frames 3-5 see the scene under ids no earlier frame has (they match each other, nothing before them): frame 4
    # fails against frames 2 and 1 and is posed against frame 3, the frame the reference would have become before
    # 2026-12-05; tracking goes on from there, frame 3 where the motion 1 -> 2 leads (constant velocity)
    pts, Ts = world_points(400, seed=5), trajectory(8)
    frames = stereo_frames(pts, Ts)
    perm = np.random.default_rng(7).permutation(400) + 50_000  # scene ids -> ids no other frame has
    relabel = [FakeView(v.pixels, perm[v.ids], v.size) for v in (frames[3][0], frames[3][1], frames[4][0],
                                                                 frames[4][1], frames[5][0], frames[5][1])]
    frames[3], frames[4], frames[5] = (relabel[0], relabel[1]), (relabel[2], relabel[3]), (relabel[4], relabel[5])
    tracker, res = run_stereo(frames)
    assert res[3].pose is None and res[4].pose is not None and res[4].reference_stamp_ns == 3 * NS
    assert "the last frame without a pose" in res[4].reason
    assert res[4].is_keyframe and res[5].pose is not None and res[5].reference_stamp_ns == 4 * NS
    # relative poses are exact, and frame 3's place is the prediction: the odometry keeps the motion 2 -> 3 but for
    # the prediction's error (this trajectory turns); with frame 3 at the last pose (before 2026-12-06) it lost that
    # step, 0.16 m
    errors = position_errors(res, Ts)
    np.testing.assert_array_equal(res[3].T_odom_cam, res[2].T_odom_cam)  # (what a frame without a pose reports)
    assert res[6].pose is None  # (back to the scene's own ids: it matches none of frames 3-5; frame 7 poses again)
    assert np.all((errors[[4, 5, 7]] > 1e-4) & (errors[[4, 5, 7]] < 0.01))
    # the same with max_lost_frames 0: frame 3 becomes the reference at the predicted place
    _, old = run_stereo(frames, {"max_lost_frames": 0})
    for new_r, old_r in zip(res[4:], old[4:]):
        np.testing.assert_allclose(new_r.T_odom_cam, old_r.T_odom_cam, atol=1e-9)


def test_max_lost_frames_gives_the_reference_up():
    pts, Ts = world_points(400, seed=6), trajectory(10)
    frames = stereo_frames(pts, Ts)
    for k in range(2, 9):  # seven glitched frames in a row, each its own shuffle (they match nothing)
        frames[k] = (glitched(frames[k][0], k), glitched(frames[k][1], k))
    _, res = run_stereo(frames, {"max_lost_frames": 3})
    assert [r.is_keyframe for r in res[2:9]] == [False, False, False, True, False, False, False]
    assert res[5].reference_stamp_ns == 1 * NS and res[6].reference_stamp_ns == 5 * NS
    assert all(r.pose is None for r in res[2:9]) and res[9].pose is not None
    with pytest.raises(ValueError, match="max_lost_frames"):
        validate_tracking_config({"max_lost_frames": -1})


def test_mono_tracker_crosses_a_glitched_frame():
    pts, Ts = world_points(400, seed=8), trajectory(7)
    frames = [view(pts, T, K) for T in Ts]
    frames[3] = glitched(frames[3], 0)
    tracker = MonoTracker(FakeMatcher(), K, {**CONFIG, "mono_scale": "unit"})
    res = [tracker.process(v, k * NS) for k, v in enumerate(frames)]
    assert res[3].pose is None and res[4].pose is not None and res[4].reference_stamp_ns == 2 * NS
    T_true = np.linalg.inv(Ts[2]) @ Ts[4]
    assert G.translation_direction_error_deg(res[4].pose.t, T_true[:3, 3]) < 0.1
    assert G.rotation_angle_deg(res[4].pose.R, T_true[:3, :3]) < 0.01


def test_odometry_composes_with_a_kept_anchor():
    odom = OdometryIntegrator()
    step = G.make_transform(G.so3_exp([0.0, 0.0, 0.1]), [1.0, 0.0, 0.0])
    cov = np.diag([1e-4] * 3 + [1e-6] * 3)
    odom.step(0, 0, np.eye(4), np.zeros((6, 6)))
    odom.set_reference(0)
    odom.keep_anchors(0, (0,))
    first = odom.step(NS, 0, step, cov)
    odom.set_reference(NS)
    odom.keep_anchors(NS, (NS, 0))  # frame 1 is the reference, frame 0 the one before it
    second = odom.step(2 * NS, 0, step @ step, cov)  # posed against frame 0, not the reference
    np.testing.assert_allclose(second.T_odom_base, step @ step, atol=1e-12)
    # the twist since frame 1 (posed against frame 0 too): the motion between the two estimates
    expected_twist, _ = body_twist(step, np.zeros((6, 6)), NS / 1e9)
    np.testing.assert_allclose(second.twist, expected_twist, atol=1e-12)
    _, single = body_twist(step, cov, NS / 1e9)
    assert np.all(np.diag(second.twist_covariance) > 1.5 * np.diag(single))  # two estimates: about twice one
    # composed with frame 0's pose and (zero) covariance, not with frame 1's
    np.testing.assert_allclose(second.covariance, cov, atol=1e-15)
    assert np.trace(first.covariance) > 0
    odom.keep_anchors(2 * NS, (NS,))  # frame 0 no longer live
    with pytest.raises(ValueError, match="reference"):
        odom.step(3 * NS, 0, step, cov)
    odom.keep_anchors(3 * NS, (NS, 3 * NS))  # frame 3 had no pose: a fallback placed where the motion leads
    after_lost = odom.step(4 * NS, 3 * NS, step, cov)
    assert after_lost.twist is None  # the motion up to frame 3 is unknown, so is the velocity since frame 2
    # without keep_anchors (callers of before): only the current reference
    plain = OdometryIntegrator()
    plain.set_reference(0)
    plain.step(NS, 0, step, cov)
    plain.set_reference(NS)
    with pytest.raises(ValueError, match="reference"):
        plain.step(2 * NS, 0, step, cov)


def test_track_ids_come_from_the_reference_used():
    pts, Ts = world_points(400, seed=3), trajectory(6)
    frames = stereo_frames(pts, Ts)
    frames[3] = (glitched(frames[3][0], 0), glitched(frames[3][1], 0))
    tracker = StereoTracker(FakeMatcher(), K, K, T_LR, CONFIG)
    tracks = TrackManager()
    ids_of_world = {}
    for k, (left, right) in enumerate(frames):
        r = tracker.process(left, right, k * NS)
        f = tracks.update(k * NS, r.keypoints, r.keypoints, None if r.temporal is None else r.temporal.matches,
                          r.reference_stamp_ns, r.is_keyframe, live_references=r.live_references)
        if k != 3:
            for wid, tid in zip(left.ids, f.ids[f.camera == 0]):
                ids_of_world.setdefault(int(wid), set()).add(int(tid))
    seen_throughout = set.intersection(*[set(frames[k][0].ids.tolist()) for k in (0, 1, 2, 4, 5)])
    assert len(seen_throughout) > 100
    # frame 4 was posed against frame 2 and inherited its ids: one id per scene point over frames 0-2 and 4-5
    assert all(len(ids_of_world[w]) == 1 for w in seen_throughout)


def test_auto_uses_the_covariance_gate_only_across_skipped_frames():
    """pnp_ransac auto: the covariance gate across camera frames the tracker was not given (the node skipped them: the
    camera may have moved far) or posed against the same keyframe, the pixel gate against the camera's previous frame
    or across frames the tracker processed and could not pose (a failing pixel gate there means a bad frame, on which
    the covariance gate accepts wrong poses; the fallbacks and the constant-velocity place lose little)."""
    from mambaglue_ros.mono_scale import FramePeriod

    camera = FramePeriod()
    tracker = StereoTracker(FakeMatcher(), K, K, T_LR, CONFIG, frame_period=camera)
    pts, Ts = world_points(400, seed=3), trajectory(2)
    left, right = stereo_frames(pts, Ts)[0]
    tracker.process(left, right, 0)
    ref = tracker.reference
    assert tracker._pnp_ransac_mode(ref, NS) == "auto"  # no period known yet: as without one
    for k in range(8):
        camera.observe(k * NS)
    assert tracker._pnp_ransac_mode(ref, NS) == "pixel"  # the camera's next frame
    assert tracker._pnp_ransac_mode(ref, NS + NS // 10) == "pixel"  # the same, with stamp jitter
    assert tracker._pnp_ransac_mode(ref, 2 * NS) == "auto" and tracker._pnp_ransac_mode(ref, 5 * NS) == "auto"
    frames = stereo_frames(pts, trajectory(4))
    for k in (1, 2):  # two frames processed without a pose (every match wrong): the reference stays
        assert tracker.process(glitched(frames[k][0], k), glitched(frames[k][1], k), k * NS).pose is None
    assert tracker.reference is ref and tracker.frames_failed - ref.failed == 2
    assert tracker._pnp_ransac_mode(ref, 3 * NS) == "pixel"  # frames 1 and 2 were processed: none skipped
    assert tracker._pnp_ransac_mode(ref, 4 * NS) == "auto"  # frame 3 skipped
    assert tracker._pnp_ransac_mode(tracker.candidate, 3 * NS) == "pixel"  # (frame 2, the last without a pose)
    assert tracker._pnp_ransac_mode(tracker.candidate, 5 * NS) == "auto"
    # with the keyframe policy, frames posed against the keyframe count as frames back (the step grows with them)
    keyframes = StereoTracker(FakeMatcher(), K, K, T_LR, {**CONFIG, "policy": "keyframe",
                                                            "keyframe_max_parallax_px": 1e3}, frame_period=camera)
    good = stereo_frames(pts, trajectory(3))
    for k in range(3):
        result = keyframes.process(*good[k], k * NS)
    assert result.pose is not None and keyframes.reference.stamp_ns == 0
    assert keyframes._pnp_ransac_mode(keyframes.reference, 3 * NS) == "auto"
    tracker.config["pnp_ransac"] = "covariance"
    assert tracker._pnp_ransac_mode(ref, NS) == "covariance"  # only auto is narrowed
    plain = StereoTracker(FakeMatcher(), K, K, T_LR, CONFIG)  # offline callers without the camera's period
    plain.process(left, right, 0)
    assert plain._pnp_ransac_mode(plain.reference, NS) == "auto"


def test_the_last_frame_without_a_pose_is_tried_also_without_a_reference_before():
    # right after the start there is no reference before the reference: the frame without a pose is still tried
    pts, Ts = world_points(400, seed=5), trajectory(4)
    frames = stereo_frames(pts, Ts)
    perm = np.random.default_rng(7).permutation(400) + 50_000
    for k in (1, 2):
        frames[k] = tuple(FakeView(v.pixels, perm[v.ids], v.size) for v in frames[k])
    tracker, res = run_stereo(frames)
    assert res[1].pose is None and res[1].live_references == (0, NS)  # the reference and the frame without a pose
    assert res[2].pose is not None and res[2].reference_stamp_ns == 1 * NS


@pytest.mark.parametrize("policy", ["previous", "keyframe"])
def test_a_frame_posed_against_a_fallback_becomes_the_reference(policy):
    # with the keyframe policy a frame close to its fallback would not be a keyframe by parallax; kept as the
    # reference, the old one would fail the next frame again (and every other frame would go without a pose)
    pts, Ts = world_points(400, seed=5), trajectory(9)
    frames = stereo_frames(pts, Ts)
    perm = np.random.default_rng(7).permutation(400) + 50_000
    for k in range(3, 9):
        frames[k] = tuple(FakeView(v.pixels, perm[v.ids], v.size) for v in frames[k])
    _, res = run_stereo(frames, {"policy": policy, "keyframe_max_parallax_px": 1000.0, "keyframe_min_matches": 1})
    assert res[3].pose is None and res[4].pose is not None and res[4].is_keyframe
    assert all(r.pose is not None for r in res[5:])


def test_live_references_always_name_the_reference_used():
    # bad frames, bursts and max_lost_frames switched at run time: every pose is relative to a frame the result
    # before it named as live (what the node keeps odometry anchors, keyframe ids and track ids for)
    pts, Ts = world_points(400, seed=9), trajectory(30, step_m=0.05)
    frames = stereo_frames(pts, Ts)
    rng = np.random.default_rng(0)
    for k in rng.choice(np.arange(2, 30), 10, replace=False):
        frames[k] = (glitched(frames[k][0], int(k)), glitched(frames[k][1], int(k)))
    tracker = StereoTracker(FakeMatcher(), K, K, T_LR, CONFIG)
    live, used = (), 0
    for k, (left, right) in enumerate(frames):
        if k in (8, 17):
            tracker.config["max_lost_frames"] = 0
        if k in (12, 22):
            tracker.config["max_lost_frames"] = 2
        r = tracker.process(left, right, k * NS)
        if r.pose is not None and k > 0:
            assert r.reference_stamp_ns in live, (k, r.reference_stamp_ns, live)
            used += r.reference_stamp_ns != (k - 1) * NS
        live = r.live_references
        refs = [tracker.reference, tracker.previous_reference, tracker.candidate]
        assert set(live) == {x.stamp_ns for x in refs if x is not None}
    assert used > 0  # some poses were against an older frame
