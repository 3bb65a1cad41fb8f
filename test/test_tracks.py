"""Persistent track ids and the tracking state machine, with the real trackers on exact matches."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from mambaglue_ros import geometry as G
from mambaglue_ros.tracking import MonoTracker, StereoTracker
from mambaglue_ros.tracking_state import KeyframeIds, TrackingState, TrackingStateMachine
from mambaglue_ros.tracks import TrackManager

from fake_matcher import FakeMatcher, FakeView, view, world_points

K = np.array([[400.0, 0.0, 320.0], [0.0, 400.0, 240.0], [0.0, 0.0, 1.0]])
NS = 100_000_000  # 10 Hz


def normalized(px: np.ndarray) -> np.ndarray:
    return (px - K[:2, 2]) / np.diag(K)[:2]


def poses(n: int, step_m: float = 0.05) -> list[np.ndarray]:
    return [G.make_transform(G.so3_exp([0.0, 0.01 * i, 0.0]), [step_m * i, 0.0, 0.02 * i]) for i in range(n)]


def run_mono(policy: str, frames: list, config=None):
    tracker = MonoTracker(FakeMatcher(), K, {"policy": policy, "min_matches": 20, "min_inliers": 15,
                                             "keyframe_max_parallax_px": 25.0, **(config or {})})
    tracks = TrackManager()
    out = []
    for k, v in enumerate(frames):
        r = tracker.process(v, k * NS)
        f = tracks.update(k * NS, r.keypoints, normalized(r.keypoints), r.track_links(), r.reference_stamp_ns,
                          r.is_keyframe)  # (as the node: only the matches the pose explains continue a track)
        out.append((r, f, v))
    return out


def id_of_world_point(frame, v, world_id: int) -> int | None:
    """Track id the manager gave the keypoint of ``world_id`` (fake keypoints are in view order)."""
    where = np.flatnonzero(v.ids == world_id)
    return None if len(where) == 0 else int(frame.ids[where[0]])


@pytest.mark.parametrize("policy", ["previous", "keyframe"])
def test_ids_persist_with_both_policies(policy):
    pts = world_points(300, seed=2)
    frames = [view(pts, T, K) for T in poses(15)]
    out = run_mono(policy, frames)
    visible = set(frames[0].ids.tolist()).intersection(*[set(v.ids.tolist()) for v in frames])
    assert len(visible) > 100
    keyframes = sum(r.is_keyframe for r, _, _ in out)
    if policy == "keyframe":
        assert 1 < keyframes < 15  # the reference changed, and not every frame
    for wid in list(visible)[:50]:
        ids = {id_of_world_point(f, v, wid) for _, f, v in out}
        assert len(ids) == 1, (wid, ids)  # one id over all 15 frames
    r, f, v = out[-1]
    assert np.all(f.age[np.isin(v.ids, list(visible))] == 15)
    # pixel velocity: the displacement since the previous frame over 0.1 s
    prev_v = out[-2][2]
    wid = next(iter(visible))
    i, j = np.flatnonzero(v.ids == wid)[0], np.flatnonzero(prev_v.ids == wid)[0]
    np.testing.assert_allclose(f.velocity_px[i], (v.pixels[i] - prev_v.pixels[j]) / 0.1, rtol=1e-5)
    np.testing.assert_allclose(f.velocity_normalized[i], f.velocity_px[i] / 400.0, rtol=1e-5)
    assert len(set(f.ids.tolist())) == len(f)  # unique within a frame


def test_new_points_get_new_ids_and_ids_are_never_reused():
    pts = world_points(200, seed=3)
    frames = [view(pts[:150], np.eye(4), K), view(pts, poses(2)[1], K)]
    out = run_mono("previous", frames)
    f0, f1 = out[0][1], out[1][1]
    new = ~np.isin(f1.ids, f0.ids)
    assert new.sum() == np.sum(frames[1].ids >= 150) and np.all(f1.age[new] == 1)
    assert np.all(f1.velocity_px[new] == 0) and f1.ids[new].min() > f0.ids.max()


def test_ids_survive_an_occlusion_gap():
    """Black frames (no keypoints) do not replace the reference: ids continue after the gap."""
    pts = world_points(300, seed=4)
    T = poses(8, step_m=0.02)
    black = FakeView(np.zeros((0, 2)), np.zeros(0, dtype=np.int64))
    frames = [view(pts, T[0], K), view(pts, T[1], K), black, black, black, view(pts, T[5], K), view(pts, T[6], K)]
    out = run_mono("previous", frames)
    states = TrackingStateMachine()
    seen = [states.frame(k * NS, r.pose is not None, r.reason).state for k, (r, _, _) in enumerate(out)]
    assert seen == [TrackingState.INITIALIZING, TrackingState.OK, TrackingState.LOST, TrackingState.LOST,
                    TrackingState.LOST, TrackingState.OK, TrackingState.OK]
    wid = int(frames[0].ids[0])
    assert id_of_world_point(out[0][1], frames[0], wid) == id_of_world_point(out[6][1], frames[6], wid)
    # velocity over the gap: since the last observation, 0.4 s before
    f5, v5, v1 = out[5][1], frames[5], frames[1]
    i, j = np.flatnonzero(v5.ids == wid)[0], np.flatnonzero(v1.ids == wid)[0]
    np.testing.assert_allclose(f5.velocity_px[i], (v5.pixels[i] - v1.pixels[j]) / 0.4, rtol=1e-5)


def test_stereo_right_observations_share_the_left_id():
    pts = world_points(300, seed=5)
    baseline = 0.2
    T_lr = G.make_transform(np.eye(3), [baseline, 0.0, 0.0])
    tracker = StereoTracker(FakeMatcher(), K, K, T_lr, {"min_matches": 20, "min_inliers": 15})
    tracks = TrackManager()
    out = []
    for k, T in enumerate(poses(6)):
        left, right = view(pts, T, K), view(pts, T @ T_lr, K)
        r = tracker.process(left, right, k * NS)
        rk = r.stereo.keypoints1
        f = tracks.update(k * NS, r.keypoints, normalized(r.keypoints),
                          None if r.temporal is None else r.temporal.matches, r.reference_stamp_ns,
                          r.is_keyframe, r.stereo.matches, rk, normalized(rk))
        out.append((f, left, right))
        assert k == 0 or r.pose is not None
    f, left, right = out[-1]
    assert f.of_camera(1).sum() > 100
    def world_ids(v, pixels):
        """world id of each observation, found by its pixel in the fake view"""
        d = np.linalg.norm(v.pixels[None] - pixels[:, None], axis=2)
        assert np.all(d.min(axis=1) < 1e-3)
        return v.ids[d.argmin(axis=1)]

    left_world = dict(zip(f.ids[f.of_camera(0)].tolist(), world_ids(left, f.pixels[f.of_camera(0)]).tolist()))
    right_world = world_ids(right, f.pixels[f.of_camera(1)])
    # a right observation's id is that of the left keypoint of the same scene point
    assert all(left_world[t] == w for t, w in zip(f.ids[f.of_camera(1)].tolist(), right_world.tolist()))
    # every right observation has a left observation with the same id
    assert set(f.ids[f.of_camera(1)].tolist()) <= set(f.ids[f.of_camera(0)].tolist())
    first = out[0][0]
    common = np.intersect1d(first.ids[first.of_camera(1)], f.ids[f.of_camera(1)])
    assert len(common) > 50  # right-camera tracks persist too
    assert np.all(f.age[f.of_camera(1)][np.isin(f.ids[f.of_camera(1)], common)] == 6)


def test_reset_and_states():
    sm = TrackingStateMachine()
    assert sm.frame(1, False, "no reference frame yet").state == TrackingState.INITIALIZING
    ok = sm.frame(2, True, "")
    assert (ok.state, ok.reason, ok.last_pose_stamp_ns) == (TrackingState.OK, "ok", 2)
    lost = sm.frame(3, False, "too few matches (3 < 30)")
    assert (lost.state, lost.frames_since_last_pose, lost.last_pose_stamp_ns) == (TrackingState.LOST, 1, 2)
    assert sm.frame(4, False, "too few matches").frames_since_last_pose == 2
    reset = sm.reset(5, "reset service")
    assert (reset.state, reset.reason, reset.resets) == (TrackingState.RESET, "reset service", 1)
    assert reset.odometry_reset  # (the default: a reset service, set_pose)
    assert sm.frame(6, False, "no reference frame yet").state == TrackingState.INITIALIZING
    assert not sm.reset(7, "stamp jumped back", odometry_reset=False).odometry_reset  # ~/odom goes on
    tm = TrackManager()
    f = tm.update(0, np.zeros((3, 2)), np.zeros((3, 2)), None, None, True)
    tm.reset()  # every track is new, and the ids go on: a back end may still hold tracks 0..2 in its window
    assert tm.update(1, np.zeros((2, 2)), np.zeros((2, 2)), np.array([[0, 0]]), 0, True).ids.tolist() == [3, 4]
    assert f.ids.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="normalised"):
        tm.update(2, np.zeros((2, 2)), np.zeros((3, 2)), None, None, True)


def test_keyframe_ids_count_up_never_repeat_and_follow_the_live_references():
    ids = KeyframeIds()
    assert ids.matched(None, posed=False) == 0 and ids.last == 0  # nothing yet
    assert ids.new(100) == 1 and ids.matched(100, posed=True) == 1 and ids.matched(100, posed=False) == 1
    assert ids.new(200) == 2
    assert ids.matched(100, posed=True) == 1  # an earlier reference keeps its id
    # a posed match against a frame that never was a keyframe (the last frame without a pose): it becomes one
    assert ids.matched(150, posed=True) == 3 and ids.matched(150, posed=True) == 3
    assert ids.matched(160, posed=False) == 3  # no pose: no new reference, the newest id is reported
    ids.keep({150, 200})  # the tracker can no longer pose against frame 100
    assert ids.matched(100, posed=False) == 3 and ids.matched(100, posed=True) == 4  # (a new id if it ever were)
    ids.clear()  # a reset: no references, the count goes on
    assert ids.matched(200, posed=False) == 4 and ids.new(300) == 5


def test_non_finite_keypoints_get_no_id_and_do_not_poison_later_frames():
    tm = TrackManager()
    kp = np.array([[10.0, 10.0], [20.0, 20.0], [30.0, 30.0]])
    f0 = tm.update(0, kp, normalized(kp), None, None, True)
    bad = kp.copy()
    bad[1] = np.nan  # e.g. a matcher bug
    f1 = tm.update(NS, bad, normalized(bad), np.array([[0, 0], [1, 1], [2, 2]]), 0, True)
    assert f1.ids.tolist() == [f0.ids[0], f0.ids[2]] and np.all(np.isfinite(f1.velocity_px))
    f2 = tm.update(2 * NS, kp + 1, normalized(kp + 1), np.array([[0, 0], [1, 1], [2, 2]]), NS, True)
    assert f2.ids[0] == f0.ids[0] and f2.ids[2] == f0.ids[2] and f2.ids[1] not in f0.ids  # new track
    assert np.all(np.isfinite(f2.velocity_px)) and np.all(np.isfinite(f2.velocity_normalized))


def _per_observation_update(state: dict, stamp_ns: int, ids_all, cam, px, nrm, keep_ids):
    """The definition the vectorised bookkeeping implements, one observation at a time: velocity and age from
    the track's previous observation in the same camera (if older than this frame); afterwards the manager
    remembers this frame's observations and those earlier ones whose id the reference frame holds."""
    vel_px, vel_n, age = np.zeros_like(px), np.zeros_like(nrm), np.ones(len(ids_all), dtype=np.int64)
    now = {}
    for k, key in enumerate(zip(ids_all.tolist(), cam.tolist())):
        prev = state.get(key)
        if prev is not None and prev[0] < stamp_ns:
            dt = (stamp_ns - prev[0]) / 1e9
            vel_px[k], vel_n[k], age[k] = (px[k] - prev[1]) / dt, (nrm[k] - prev[2]) / dt, prev[3] + 1
        now[key] = (stamp_ns, px[k], nrm[k], int(age[k]))
    keep = set(keep_ids.tolist())
    state = {key: v for key, v in state.items() if key[0] in keep}
    state.update(now)
    return state, vel_px, vel_n, age


def test_velocities_and_ages_follow_each_tracks_previous_observation():
    # random frames: matches to the reference (some out of range), non-finite keypoints, stereo observations,
    # repeated stamps, references that change or not: the manager's velocities and ages against the definition
    rng = np.random.default_rng(3)
    tracks, state = TrackManager(), {}
    prev_n, ref_stamp, stamp, continued = 0, None, 0, 0
    for frame in range(60):
        stamp += int(rng.choice([0, NS, 2 * NS]))  # 0: the same stamp again (no velocity from it)
        n = int(rng.integers(5, 40))
        kp = rng.uniform(0, 600, (n, 2))
        kp[rng.random(n) < 0.05] = np.nan
        m = min(n, prev_n)
        matches = np.stack([rng.permutation(prev_n + 3)[:m], rng.permutation(n)[:m]], 1) if m else None
        stereo = np.stack([rng.permutation(n)[: n // 2], rng.permutation(n)[: n // 2]], 1)
        rk = kp + rng.normal(0, 1, kp.shape)
        is_ref = bool(rng.random() < 0.6)
        f = tracks.update(stamp, kp, normalized(kp), matches, ref_stamp, is_ref, stereo, rk, normalized(rk))
        state, vel_px, vel_n, age = _per_observation_update(state, stamp, f.ids, f.camera, f.pixels, f.normalized,
                                                             np.asarray(tracks._ids_of.get(tracks.reference_stamp_ns, []), dtype=np.int64))
        np.testing.assert_array_equal(f.velocity_px, vel_px)
        np.testing.assert_array_equal(f.velocity_normalized, vel_n)
        np.testing.assert_array_equal(f.age, age)
        continued += int((age > 1).sum())
        assert len(tracks._last_key) == len(state)  # what it remembers: no more (a bounded memory), no less
        if is_ref:
            ref_stamp, prev_n = stamp, n
    assert tracks.next_id > 100 and continued > 100  # many tracks were continued, not only started


def swapping_matcher(fraction: float, seed: int = 0, stereo: bool = False):
    """Exact temporal matches with a seeded ``fraction`` of them paired with another match's keypoint (a real
    matcher's outliers): ``benchmarks/track_gate.py``'s wrapper around the exact fake matcher."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from track_gate import SwappedTemporal

    return SwappedTemporal(FakeMatcher(), fraction, stereo, seed)


@pytest.mark.parametrize("mode", ["mono", "stereo"])
def test_only_matches_the_pose_explains_continue_a_track(mode):
    """A wrong match (an outlier the pose does not explain) must not hand its reference keypoint's id to another
    scene point: a VINS-style back end would fuse two points into one track."""
    pts, Ts = world_points(400, seed=11), poses(6, step_m=0.15)
    T_LR = G.make_transform(np.eye(3), [0.2, 0.0, 0.0])
    matcher = swapping_matcher(0.2, seed=3, stereo=mode == "stereo")
    cfg = {"min_matches": 20, "min_inliers": 15}
    tracker = (MonoTracker(matcher, K, cfg) if mode == "mono" else StereoTracker(matcher, K, K, T_LR, cfg))
    tracks, id_of_world, flagged, wrong_total = TrackManager(), {}, 0, 0
    reference_ids = np.zeros(0, dtype=np.int64)  # the world ids of the reference frame's keypoints
    for k, T in enumerate(Ts):
        left = view(pts, T, K)
        r = tracker.process(left, k * NS) if mode == "mono" else tracker.process(left, view(pts, T @ T_LR, K), k * NS)
        f = tracks.update(k * NS, r.keypoints, normalized(r.keypoints), r.track_links(), r.reference_stamp_ns,
                          r.is_keyframe)
        if k == 0:
            assert r.temporal_inliers is None and r.track_links() is None
        else:
            assert r.pose is not None
            m = r.temporal.matches
            wrong = left.ids[m[:, 1]] != np.asarray(reference_ids)[m[:, 0]]
            assert wrong.sum() >= 0.15 * len(m)
            assert r.temporal_inliers[~wrong].all()  # every right match is kept
            flagged += int((~r.temporal_inliers[wrong]).sum())
            wrong_total += int(wrong.sum())
        left_ids = f.ids[f.camera == 0]
        for world, tid in zip(left.ids, left_ids):
            id_of_world.setdefault(int(tid), set()).add(int(world))
        if r.is_keyframe:
            reference_ids = left.ids
    assert flagged >= 0.9 * wrong_total  # (a wrong match along its epipolar line passes, as with any F-RANSAC)
    fused = sum(len(worlds) > 1 for worlds in id_of_world.values())
    assert fused <= 0.05 * wrong_total  # without the gate every wrong match fuses two scene points (~65 %)


def test_a_frame_without_a_pose_continues_no_track():
    pts, Ts = world_points(400, seed=12), poses(4)
    frames = [view(pts, T, K) for T in Ts]
    frames[2] = FakeView(frames[2].pixels[:25], frames[2].ids[:25], frames[2].size)  # 25 matches < min_matches 30
    out = run_mono("previous", frames, {"min_matches": 30})
    r, f, _ = out[2]
    assert r.pose is None and r.temporal is not None and len(r.temporal) == 25
    assert r.track_links() is None
    assert not np.isin(f.ids, out[1][1].ids).any()  # all new: its matches were never verified
    assert np.isin(out[3][1].ids, out[1][1].ids).mean() > 0.9  # the next frame, posed against frame 1, continues them


def test_a_still_stereo_camera_tests_matches_as_a_rotation():
    """Standing still, a metric pose's translation is millimetres in a random direction: epipolar lines drawn with
    it would pass wrong matches lying along them; its covariance says it is zero, so the matches without a stereo
    depth (no PnP verdict) are tested as under a rotation."""
    from mambaglue_ros.geometry import translation_significant

    assert not translation_significant(np.array([1e-3, 0.0, 0.0]), np.eye(3) * 1e-4)
    assert translation_significant(np.array([0.1, 0.0, 0.0]), np.eye(3) * 1e-4)
    pts = world_points(600, seed=13)
    T_LR = G.make_transform(np.eye(3), [0.2, 0.0, 0.0])
    tracker = StereoTracker(swapping_matcher(0.2, seed=5, stereo=True), K, K, T_LR, {"min_matches": 20,
                                                                                    "min_inliers": 15})
    noise = np.random.default_rng(0)

    def noisy(v: FakeView, keep=None) -> FakeView:  # 0.5 px detection noise: the estimate is not exactly zero
        sel = np.ones(len(v.ids), bool) if keep is None else np.isin(v.ids, keep)
        return FakeView(v.pixels[sel] + noise.normal(0.0, 0.5, (int(sel.sum()), 2)), v.ids[sel], v.size)

    seen_right = np.arange(0, 600, 2)  # the right camera sees half the points: the others have no depth
    wrong_total = wrong_kept = 0
    for k in range(6):
        left = noisy(view(pts, np.eye(4), K))
        r = tracker.process(left, noisy(view(pts, T_LR, K), seen_right), k * NS)
        if k:
            assert r.pose is not None and np.linalg.norm(r.pose.t) > 1e-6
            m = r.temporal.matches
            no_depth = ~np.isin(left.ids[m[:, 0]], seen_right)  # (the reference frame saw the same points)
            wrong = left.ids[m[:, 1]] != left.ids[m[:, 0]]
            assert r.temporal_inliers[~wrong & no_depth].all()
            wrong_total += int((wrong & no_depth).sum())
            wrong_kept += int(r.temporal_inliers[wrong & no_depth].sum())
    assert wrong_total > 200 and wrong_kept <= 0.005 * wrong_total, (wrong_kept, wrong_total)


def test_stereo_rejects_a_wrong_match_along_its_epipolar_line():
    """A wrong temporal match whose current keypoint lies on the reference keypoint's epipolar line (another scene
    point on the same reference ray) passes any 2D test; PnP, which knows the reference point's depth, rejects it
    (such matches are common where a car's epipolar lines run along the road's repeated markings)."""
    from mambaglue_ros.geometry import pose_consistent

    pts = world_points(400, seed=21)
    T_LR = G.make_transform(np.eye(3), [0.2, 0.0, 0.0])
    T1 = G.make_transform(G.so3_exp([0.0, 0.01, 0.0]), [0.2, 0.0, 0.6])
    along = np.arange(0, 400, 10)  # for these, frame 1 sees a point 2.5x farther on the same reference ray
    seen1 = pts.copy()
    seen1[along] *= 2.5  # (the reference camera is at the origin)
    tracker = StereoTracker(FakeMatcher(), K, K, T_LR, {"min_matches": 20, "min_inliers": 15})
    tracker.process(view(pts, np.eye(4), K), view(pts, T_LR, K), 0)
    left = view(seen1, T1, K)
    r = tracker.process(left, view(seen1, T1 @ T_LR, K), NS)
    assert r.pose is not None
    m = r.temporal.matches
    wrong = np.isin(left.ids[m[:, 1]], along)
    assert wrong.sum() >= 25
    x0 = np.c_[r.temporal.points0, np.ones(len(m))] @ np.linalg.inv(K).T
    x1 = np.c_[r.temporal.points1, np.ones(len(m))] @ np.linalg.inv(K).T
    assert pose_consistent(x0, x1, r.pose.R, r.pose.t, 3.0 / K[0, 0])[wrong].all()  # invisible to a 2D test
    assert not r.temporal_inliers[wrong].any()  # PnP's verdict
    assert r.temporal_inliers[~wrong].mean() > 0.95
