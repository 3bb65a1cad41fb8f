"""Trajectory metrics against hand-computed cases: association, Umeyama, ATE, RPE, TUM, odom -> camera."""
from __future__ import annotations

import numpy as np
import pytest

from mambaglue_ros import geometry as G
from mambaglue_ros.bags import metrics as M

S = 1_000_000_000


def rot_z(deg: float) -> np.ndarray:
    a = np.radians(deg)
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


def line(n: int, step: float = 1.0, yaw_deg_per_step: float = 0.0) -> M.Trajectory:
    """Poses along x with ``step`` m spacing (in the local heading), optional yaw per step."""
    poses, T = [], np.eye(4)
    for _ in range(n):
        poses.append(T.copy())
        T = T @ M.make_pose(rot_z(yaw_deg_per_step), np.array([step, 0.0, 0.0]))
    return M.Trajectory(np.arange(n) * S // 10, np.array(poses))


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    return M.quat_to_rot(q / np.linalg.norm(q))


def test_associate_nearest_one_to_one_within_tolerance():
    a = np.array([0, 100, 200, 300, 400]) * 1_000_000
    b = np.array([1, 99, 150, 205, 1000]) * 1_000_000  # 150 is 50 ms from both 100 and 200
    ia, ib = M.associate(a, b, max_diff_ns=10_000_000)
    assert ia.tolist() == [0, 1, 2] and ib.tolist() == [0, 1, 3]
    # one-to-one: two stamps near the same partner, only the closer one gets it
    ia, ib = M.associate(np.array([100, 103]), np.array([102]), max_diff_ns=5)
    assert ia.tolist() == [1] and ib.tolist() == [0]
    assert len(M.associate(np.array([], dtype=np.int64), b)[0]) == 0


@pytest.mark.parametrize("with_scale", [False, True])
def test_umeyama_recovers_a_known_similarity(with_scale):
    rng = np.random.default_rng(3)
    src = rng.normal(size=(50, 3)) * [3.0, 1.0, 0.5]
    R, t, s = random_rotation(rng), rng.normal(size=3) * 5, (2.5 if with_scale else 1.0)
    dst = s * src @ R.T + t
    R_est, t_est, s_est = M.umeyama(src, dst, with_scale=with_scale)
    assert np.allclose(R_est, R, atol=1e-9) and np.allclose(t_est, t, atol=1e-9)
    assert s_est == pytest.approx(s, rel=1e-9)
    # with noise the estimate stays close and the rotation stays proper (det +1)
    noisy = dst + rng.normal(scale=0.01, size=dst.shape)
    R_n, _, s_n = M.umeyama(src, noisy, with_scale=with_scale)
    assert np.linalg.det(R_n) == pytest.approx(1.0) and np.degrees(np.arccos((np.trace(R_n.T @ R) - 1) / 2)) < 0.5
    assert s_n == pytest.approx(s, rel=1e-2)


def test_umeyama_reflection_is_not_returned():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(20, 3))
    dst = src * [1.0, 1.0, -1.0]  # a mirror image: the best proper rotation, never a reflection
    R, _, _ = M.umeyama(src, dst)
    assert np.linalg.det(R) == pytest.approx(1.0)


def test_ate_constant_offset_without_and_with_alignment():
    gt = line(6)
    est = M.Trajectory(gt.stamps_ns, gt.poses.copy())
    est.poses[:, :3, 3] += [0.0, 0.3, 0.4]  # 0.5 m off everywhere
    aligned, info = M.align(est, gt, "none")
    assert M.ate(aligned, gt)["rmse"] == pytest.approx(0.5)
    aligned, info = M.align(est, gt, "se3")
    assert M.ate(aligned, gt)["rmse"] == pytest.approx(0.0, abs=1e-9)
    assert np.allclose(info["t"], [0.0, -0.3, -0.4]) and info["scale"] == 1.0


def test_ate_hand_computed_after_se3_alignment():
    # GT on the x axis; the estimate has the middle point 0.3 m off in y. The best rigid fit
    # (Umeyama) of (0,0),(1,0.3),(2,0) onto (0,0),(1,0),(2,0): translation -0.1 in y, no rotation
    # by symmetry -> residuals 0.1, 0.2, 0.1 -> RMSE sqrt((0.01 + 0.04 + 0.01) / 3) = sqrt(0.02)
    gt = line(3)
    est = M.Trajectory(gt.stamps_ns, gt.poses.copy())
    est.poses[1, 1, 3] = 0.3
    aligned, info = M.align(est, gt, "se3")
    assert np.allclose(info["R"], np.eye(3), atol=1e-9) and np.allclose(info["t"], [0, -0.1, 0])
    assert M.ate(aligned, gt)["rmse"] == pytest.approx(np.sqrt(0.02))


def test_sim3_alignment_recovers_the_monocular_scale():
    rng = np.random.default_rng(1)
    gt = line(8, step=1.2, yaw_deg_per_step=3.0)
    R, t, s = random_rotation(rng), np.array([4.0, -2.0, 1.0]), 0.4  # unit-ish monocular scale
    est = M.Trajectory(gt.stamps_ns, M.apply_similarity(gt.poses, R, t, s))
    aligned, info = M.align(est, gt, "sim3")
    assert info["scale"] == pytest.approx(1 / s) and M.ate(aligned, gt)["rmse"] == pytest.approx(0, abs=1e-9)
    # se3 cannot undo the scale
    aligned_se3, _ = M.align(est, gt, "se3")
    assert M.ate(aligned_se3, gt)["rmse"] > 0.5


def test_rpe_per_frame_and_per_metre_hand_computed():
    gt = line(5, step=1.0)
    est = line(5, step=1.1)  # 10 cm too long per step
    r = M.rpe(est, gt, 1, "frames")
    assert r["trans"]["rmse"] == pytest.approx(0.1) and r["trans"]["n"] == 4
    assert r["rot"]["rmse"] == pytest.approx(0.0, abs=1e-9)
    r2 = M.rpe(est, gt, 2.0, "m")  # pairs (0,2), (1,3), (2,4): 0.2 m error over 2 m
    assert r2["pairs"] == [(0, 2), (1, 3), (2, 4)]
    assert r2["trans_per_m"]["mean"] == pytest.approx(0.1)
    # rotation: 1 deg extra yaw per step -> 1 deg RPE per frame, 0.5 deg/m over 2 m
    est_rot = line(5, step=1.0, yaw_deg_per_step=1.0)
    r3 = M.rpe(est_rot, line(5), 1, "frames")
    assert r3["rot"]["rmse"] == pytest.approx(1.0)
    assert M.rpe(est_rot, line(5), 2.0, "m")["rot_per_m"]["mean"] == pytest.approx(1.0)
    # the RPE ignores a global offset (relative motion only)
    shifted = M.Trajectory(est.stamps_ns, M.apply_similarity(est.poses, rot_z(30), np.array([5.0, 1, 0]), 1.0))
    assert M.rpe(shifted, gt, 1)["trans"]["rmse"] == pytest.approx(0.1)


def test_evaluate_end_to_end_with_association_and_missing_frames():
    gt = line(20, step=0.05, yaw_deg_per_step=2.0)  # 10 Hz, 5 cm steps
    keep = np.array([i for i in range(20) if i not in (5, 6)])  # two frames without a pose
    est = M.Trajectory(gt.stamps_ns[keep] + 2_000_000,  # 2 ms stamp jitter
                       M.apply_similarity(gt.poses[keep], rot_z(40), np.array([1.0, 2.0, 3.0]), 1.0))
    ev = M.evaluate(est, gt, "se3", max_diff_ns=5_000_000, delta_m=0.2)
    s = ev["summary"]
    assert s["associated"] == 18 and s["ate_m"] == pytest.approx(0, abs=1e-9)
    assert s["rpe_trans_m"] == pytest.approx(0, abs=1e-9) and s["rpe_rot_deg"] == pytest.approx(0, abs=1e-6)
    # path over the associated poses: 16 steps of 5 cm plus the chord over the 3-step gap
    assert s["gt_path_m"] == pytest.approx(0.05 * 19, rel=1e-3)
    assert M.evaluate(est, gt, "se3", max_diff_ns=1_000_000)["summary"]["ate_m"] is None  # nothing associates


def test_tum_round_trip_keeps_exact_nanoseconds(tmp_path):
    rng = np.random.default_rng(2)
    poses = np.array([M.make_pose(random_rotation(rng), rng.normal(size=3)) for _ in range(4)])
    traj = M.Trajectory(np.array([1403715273262142976, 1403715273312143104, 1, 999_999_999]), poses)
    M.write_tum(tmp_path / "t.txt", traj)
    back = M.read_tum(tmp_path / "t.txt")
    assert back.stamps_ns.tolist() == traj.stamps_ns.tolist()
    assert np.allclose(back.poses, traj.poses, atol=1e-8)
    (tmp_path / "bad.txt").write_text("1.0 2 3\n")
    with pytest.raises(ValueError, match="8 numbers"):
        M.read_tum(tmp_path / "bad.txt")


@pytest.mark.parametrize("metric", [True, False])
def test_odom_to_camera_inverts_what_the_node_publishes(metric):
    """The node accumulates ``relative_pose_in_base`` steps into T_odom_base; odom_to_camera must
    give back the camera chain (with the default REP-103 mount plus a lever arm)."""
    rng = np.random.default_rng(5)
    T_bc = M.make_pose(G.R_BODY_OPTICAL, np.array([0.2, -0.05, 0.3]))
    T_cam, T_odom = np.eye(4), np.eye(4)
    cams, odoms = [T_cam.copy()], [T_odom.copy()]
    for _ in range(6):
        R = G.so3_exp(rng.normal(scale=0.05, size=3))
        t = rng.normal(size=3)
        if not metric:
            t /= np.linalg.norm(t)
        step = G.RelativePose(R, t, np.eye(6) * 1e-4, 100, 120, metric)
        T_cam = T_cam @ step.as_matrix()
        T_odom = T_odom @ G.relative_pose_in_base(step, T_bc).as_matrix()
        cams.append(T_cam.copy())
        odoms.append(T_odom.copy())
    back = M.odom_to_camera(np.array(odoms), T_bc, metric=metric)
    assert np.allclose(back, np.array(cams), atol=1e-9)
