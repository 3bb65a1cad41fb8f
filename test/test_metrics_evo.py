"""bags/metrics.py against evo (the field's evo_ape / evo_rpe) on the same TUM files; KITTI drift
against closed-form cases."""
from __future__ import annotations

import numpy as np
import pytest

from mambaglue_ros.bags import metrics as M
from mambaglue_ros.geometry import so3_exp

evo_core = pytest.importorskip("evo.core", reason="evo is pinned in requirements.txt")


def _trajectories(n: int = 80, seed: int = 0) -> tuple[M.Trajectory, M.Trajectory]:
    """A curving ground truth and a noisy, drifting estimate in another world frame."""
    rng = np.random.default_rng(seed)
    stamps = 1_700_000_000 * M.NS + np.arange(n, dtype=np.int64) * 100_000_000
    gt, est = [np.eye(4)], [np.eye(4)]
    for _ in range(n - 1):
        step = np.eye(4)
        step[:3, :3] = so3_exp([0.0, 0.02, 0.003])
        step[:3, 3] = [0.05, 0.0, 1.2]
        noisy = step.copy()
        noisy[:3, :3] = so3_exp(rng.normal(0, 2e-3, 3)) @ step[:3, :3]
        noisy[:3, 3] = step[:3, 3] * 1.01 + rng.normal(0, 0.02, 3)
        gt.append(gt[-1] @ step)
        est.append(est[-1] @ noisy)
    world = np.eye(4)
    world[:3, :3] = so3_exp([0.3, -0.2, 1.0])
    world[:3, 3] = [5.0, -2.0, 1.0]
    est_world = np.einsum("ij,njk->nik", world, np.array(est))
    return M.Trajectory(stamps, np.array(gt)), M.Trajectory(stamps + 3_000_000, est_world)  # 3 ms stamp offset


def test_ate_rpe_match_evo_on_the_same_tum_files(tmp_path):
    from evo.core import metrics, sync
    from evo.tools import file_interface

    gt, est = _trajectories()
    M.write_tum(tmp_path / "gt.txt", gt)
    M.write_tum(tmp_path / "est.txt", est)
    ours = M.evaluate(M.read_tum(tmp_path / "est.txt"), M.read_tum(tmp_path / "gt.txt"), "se3")

    ref = file_interface.read_tum_trajectory_file(str(tmp_path / "gt.txt"))
    e = file_interface.read_tum_trajectory_file(str(tmp_path / "est.txt"))
    ref, e = sync.associate_trajectories(ref, e, max_diff=0.01)
    e.align(ref, correct_scale=False)
    ape = metrics.APE(metrics.PoseRelation.translation_part)
    ape.process_data((ref, e))
    assert ours["summary"]["ate_m"] == pytest.approx(ape.get_statistic(metrics.StatisticsType.rmse), rel=1e-6)

    for relation, key in ((metrics.PoseRelation.translation_part, "rpe_trans_m"),
                          (metrics.PoseRelation.rotation_angle_deg, "rpe_rot_deg")):
        rpe = metrics.RPE(relation, delta=1, delta_unit=metrics.Unit.frames, all_pairs=False)
        rpe.process_data((ref, e))
        assert ours["summary"][key] == pytest.approx(rpe.get_statistic(metrics.StatisticsType.rmse), rel=1e-6)

    # sim3 (monocular) alignment: evo's correct_scale
    ours_sim3 = M.evaluate(M.read_tum(tmp_path / "est.txt"), M.read_tum(tmp_path / "gt.txt"), "sim3")
    e2 = file_interface.read_tum_trajectory_file(str(tmp_path / "est.txt"))
    ref2 = file_interface.read_tum_trajectory_file(str(tmp_path / "gt.txt"))
    ref2, e2 = sync.associate_trajectories(ref2, e2, max_diff=0.01)
    e2.align(ref2, correct_scale=True)
    ape2 = metrics.APE(metrics.PoseRelation.translation_part)
    ape2.process_data((ref2, e2))
    assert ours_sim3["summary"]["ate_m"] == pytest.approx(ape2.get_statistic(metrics.StatisticsType.rmse), rel=1e-6)


def test_drift_closed_form():
    """A straight drive whose every step is 2 % long drifts 2 %; a constant extra yaw of r deg per
    1 m step drifts r deg/m in rotation."""
    n = 70
    stamps = np.arange(n, dtype=np.int64) * 100_000_000
    gt, long, turn = [np.eye(4)], [np.eye(4)], [np.eye(4)]
    step = np.eye(4)
    step[2, 3] = 1.0
    step_long = step.copy()
    step_long[2, 3] = 1.02
    step_turn = step.copy()
    step_turn[:3, :3] = so3_exp([0.0, np.radians(0.01), 0.0])
    for _ in range(n - 1):
        gt.append(gt[-1] @ step)
        long.append(long[-1] @ step_long)
        turn.append(turn[-1] @ step_turn)
    G = M.Trajectory(stamps, np.array(gt))
    d = M.drift(M.Trajectory(stamps, np.array(long)), G)
    assert d["lengths_m"] == [10.0, 20.0, 30.0, 40.0, 50.0]  # a 69 m clip: the short lengths
    assert d["trans_pct"] == pytest.approx(2.0, rel=1e-6)
    assert d["rot_deg_per_100m"] == pytest.approx(0.0, abs=1e-9)
    assert d["per_length"][50.0]["segments"] == n - 50
    d = M.drift(M.Trajectory(stamps, np.array(turn)), G)
    assert d["rot_deg_per_100m"] == pytest.approx(1.0, rel=1e-6)  # 0.01 deg per metre
    assert M.drift(M.Trajectory(stamps[:5], np.array(long[:5])), M.Trajectory(stamps[:5], np.array(gt[:5])))[
        "segments"] == 0  # 4 m: no segment fits
    # a method that lost the clip's last frames is measured over the run's lengths when given (replay gives them)
    short = M.Trajectory(stamps[:35], np.array(long[:35]))
    assert M.evaluate(short, G)["summary"]["drift_lengths_m"] == [10.0, 20.0, 30.0]  # its own 34 m
    shared = M.evaluate(short, G, drift_lengths_m=M.drift_lengths(M.path_length(G.positions)))["summary"]
    assert shared["drift_lengths_m"] == [10.0, 20.0, 30.0, 40.0, 50.0] and shared["drift_pct"] == pytest.approx(2.0)
