"""Sliding-window stereo bundle adjustment (GTSAM) and its background thread."""
from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("gtsam", reason="gtsam is pinned in requirements.txt")

from mambaglue_ros.geometry import invert, make_transform, so3_exp, so3_log  # noqa: E402
from mambaglue_ros.window_ba import BackgroundBA, Keyframe, SlidingWindowBA, WindowResult, _tracks  # noqa: E402

K = np.array([[700.0, 0, 600], [0, 700.0, 180], [0, 0, 1]])
BASELINE = 0.54


def _window(seed: int, frames: int = 5, points: int = 400, sigma_px: float = 0.7, drift: float = 0.03,
            outliers: float = 0.05):
    """A car-like rig driving 1.2 m per keyframe through random points; keyframes see the points in
    front of them (stereo where the right pixel is inside the image), links by point identity; the
    initial poses are the truth chained with per-step errors (a drifting odometry)."""
    rng = np.random.default_rng(seed)
    P = np.c_[rng.uniform(-15, 15, points), rng.uniform(-3, 2, points), rng.uniform(4, 70, points)]
    truth, init = [np.eye(4)], [np.eye(4)]
    for _ in range(frames - 1):
        step = make_transform(so3_exp([0.0, 0.003, 0.0]), [0.0, 0.0, 1.2])
        noisy = make_transform(so3_exp(rng.normal(0, 1e-3, 3)) @ step[:3, :3],
                               step[:3, 3] * (1 + drift) + rng.normal(0, 0.01, 3))
        truth.append(truth[-1] @ step)
        init.append(init[-1] @ noisy)
    kfs, seen = [], []
    for k in range(frames):
        Xc = P @ invert(truth[k])[:3, :3].T + invert(truth[k])[:3, 3]
        u = K[0, 0] * Xc[:, 0] / Xc[:, 2] + K[0, 2]
        v = K[1, 1] * Xc[:, 1] / Xc[:, 2] + K[1, 2]
        ur = u - K[0, 0] * BASELINE / Xc[:, 2]
        vis = (Xc[:, 2] > 1.0) & (u > 0) & (u < 1200) & (v > 0) & (v < 360)
        ids = np.nonzero(vis)[0]
        kp = np.c_[u[ids], v[ids]] + rng.normal(0, sigma_px, (len(ids), 2))
        right = np.where(ur[ids] > 0, ur[ids] + rng.normal(0, sigma_px, len(ids)), np.nan)
        bad = rng.random(len(ids)) < outliers  # gross errors: wrong matches
        kp[bad] += rng.uniform(-20, 20, (bad.sum(), 2))
        links = np.zeros((0, 2), dtype=np.int64)
        if k:
            prev = {pid: i for i, pid in enumerate(seen[-1])}
            links = np.array([(prev[pid], i) for i, pid in enumerate(ids) if pid in prev], dtype=np.int64)
        kfs.append(Keyframe(k * 100_000_000, init[k], kp, right, links.reshape(-1, 2)))
        seen.append(ids)
    return kfs, np.array(truth)


def _relative_error(poses: np.ndarray, truth: np.ndarray) -> float:
    E = np.linalg.inv(np.linalg.inv(truth[0]) @ truth[-1]) @ (np.linalg.inv(poses[0]) @ poses[-1])
    return float(np.linalg.norm(E[:3, 3]))


def test_tracks_follow_the_chain_of_links():
    f = [Keyframe(0, np.eye(4), np.zeros((3, 2)), np.zeros(3)),
         Keyframe(1, np.eye(4), np.zeros((3, 2)), np.zeros(3), np.array([[0, 2], [1, 0]])),
         Keyframe(2, np.eye(4), np.zeros((2, 2)), np.zeros(2), np.array([[2, 1], [1, 0]]))]
    ids = _tracks(f)
    assert ids[0][0] == ids[1][2] == ids[2][1]  # keypoint 0 -> 2 -> 1 is one landmark
    assert ids[1][1] == ids[2][0] != -1          # a track starting in keyframe 1
    assert ids[0][2] == -1


def test_window_ba_removes_drift_and_reports_covariance():
    errors_init, errors_ba, nees = [], [], []
    for seed in range(4):
        kfs, truth = _window(seed)
        ba = SlidingWindowBA(K, BASELINE, window=5, pixel_sigma_px=0.7)
        for f in kfs:
            ba.add(f)
        result = ba.optimize()
        assert isinstance(result, WindowResult)
        assert np.allclose(result.poses[0], kfs[0].T_world_cam)  # the oldest keyframe is the gauge
        assert result.outliers > 0 and result.error_after < result.error_before
        errors_init.append(_relative_error(result.initial, truth))
        errors_ba.append(_relative_error(result.poses, truth))
        cov = result.covariance
        assert cov is not None and np.all(np.linalg.eigvalsh(cov) > 0)
        T, Tt = result.poses[-1], truth[-1]
        e = np.concatenate([T[:3, 3] - Tt[:3, 3], so3_log(T[:3, :3] @ Tt[:3, :3].T)])
        nees.append(float(e @ np.linalg.solve(cov, e)))
    assert np.mean(errors_ba) < 0.2 * np.mean(errors_init)  # 3 % drift over 4.8 m removed
    assert np.mean(errors_ba) < 0.02
    assert np.mean(nees) < 3 * 6  # 6 dof: the optimiser's covariance is consistent within a factor 3


def test_window_is_bounded_and_corrections_move_later_keyframes():
    kfs, _ = _window(0, frames=6)
    ba = SlidingWindowBA(K, BASELINE, window=4)
    for f in kfs[:5]:
        ba.add(f)
    assert [f.stamp_ns for f in ba.frames] == [f.stamp_ns for f in kfs[1:5]]
    result = ba.optimize()
    ba.add(kfs[5])  # arrives while the window is being optimised
    before = kfs[5].T_world_cam.copy()
    ba.apply_correction(result)
    assert np.allclose(ba.frames[-2].T_world_cam, result.poses[-1])
    assert np.allclose(ba.frames[-1].T_world_cam, result.correction @ before)
    assert np.allclose(kfs[5].T_world_cam, before)  # snapshots are not modified in place
    with pytest.raises(ValueError):
        SlidingWindowBA(K, BASELINE, window=1)


class _GatedBA:
    """Stands in for SlidingWindowBA: optimize() blocks until released, records what it solved."""

    def __init__(self) -> None:
        self.started, self.release = threading.Event(), threading.Event()
        self.solved: list[int] = []

    def optimize(self, frames):
        self.started.set()
        assert self.release.wait(10.0)
        self.solved.append(len(frames))
        return WindowResult(np.zeros(len(frames), dtype=np.int64), np.zeros((len(frames), 4, 4)),
                            np.zeros((len(frames), 4, 4)), None, 0, 0, 0, 0.0, 0.0, 0.0)


def test_background_ba_never_blocks_and_keeps_the_newest_window():
    gate = _GatedBA()
    runner = BackgroundBA(gate)
    try:
        runner.submit([1, 2])
        assert gate.started.wait(10.0)   # the thread is busy with the first window
        runner.submit([1, 2, 3])         # returns at once; waits in the mailbox
        runner.submit([1, 2, 3, 4])      # replaces the waiting one
        assert runner.poll() is None     # nothing finished yet, and poll does not wait
        gate.release.set()
        assert runner.wait_idle(10.0)
        assert gate.solved == [2, 4]
        result = runner.poll()
        assert result is not None and len(result.stamps_ns) == 4
        assert runner.poll() is None     # each result is handed out once
    finally:
        gate.release.set()
        runner.close()


@pytest.mark.parametrize("background", [False, True])
def test_stereo_tracker_with_window_ba(background):
    """The tracker folds window corrections into its odometry, and the relative poses it reports
    still compose (as the node composes them) to exactly its odometry."""
    from test_tracking import DT_NS, NUM_FRAMES, STEP, T_LEFT_RIGHT, make_scene, render
    from test_tracking import K as K_SYN

    from mambaglue_ros.baselines import OrbMatcher
    from mambaglue_ros.tracking import StereoTracker

    planes = make_scene(0)
    poses = [np.eye(4)]
    for _ in range(NUM_FRAMES - 1):
        poses.append(poses[-1] @ STEP)
    tracker = StereoTracker(OrbMatcher(), K_SYN, K_SYN, T_LEFT_RIGHT,
                            {"policy": "previous", "ba_window": 4, "ba_background": background})
    try:
        T_node, T_node_ref = np.eye(4), np.eye(4)
        for i, P in enumerate(poses):
            r = tracker.process(render(P, planes), render(P @ T_LEFT_RIGHT, planes), i * DT_NS)
            if r.pose is not None:
                T_node = T_node_ref @ r.pose.as_matrix()
                assert np.allclose(T_node, r.T_odom_cam, atol=1e-9)
            if r.is_keyframe:
                T_node_ref = T_node.copy()
            if background and tracker._ba_runner is not None:
                assert tracker._ba_runner.wait_idle(60.0)  # deterministic test; the node never waits
        assert tracker.last_ba is not None and tracker.last_ba.landmarks > 50
        path = (NUM_FRAMES - 1) * np.linalg.norm(STEP[:3, 3])
        assert np.linalg.norm(tracker.T_odom_cam[:3, 3] - poses[-1][:3, 3]) < 0.03 * path
    finally:
        tracker.close()
