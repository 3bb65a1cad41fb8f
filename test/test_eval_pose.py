"""eval-pose: pose AUC by hand, the ground-truth convention on synthetic points (pinhole, and EuRoC's
distorted cameras against the stereo rectification), a short run on the shared EuRoC / KITTI clips."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from mambaglue_ros.bags.convert import euroc_rectification, read_euroc_sensor_yaml
from mambaglue_ros.cli import main as cli_main
from mambaglue_ros.evaluation.pose import (FAILED_DEG, PosePair, evaluate_pair, euroc_stereo_dataset,
                                           kitti_datasets, parse_methods, pose_auc, pose_errors)
from mambaglue_ros.geometry import invert, make_transform, so3_exp
from mambaglue_ros.paths import data_root

EUROC = data_root() / "euroc_v101_micro"
KITTI = data_root() / "kitti_seq1"
needs_euroc = pytest.mark.skipif(not EUROC.is_dir(), reason=f"shared EuRoC clip not present ({EUROC})")
needs_kitti = pytest.mark.skipif(not KITTI.is_dir(), reason=f"shared KITTI clip not present ({KITTI})")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_pose_auc_by_hand():
    # sorted errors 1, 2, 50, inf: recall 1/4 at 1 deg, 1/2 at 2 deg (linear from 0 to 1/4, 1/4 to 1/2), then flat
    # up to the threshold. Area up to 2 deg: 0.125 + 0.375 = 0.5; beyond: 0.5 per degree.
    a5, a10, a20 = pose_auc([50.0, 1.0, float("inf"), 2.0])
    assert a5 == pytest.approx((0.5 + 3 * 0.5) / 5)  # 0.4
    assert a10 == pytest.approx((0.5 + 8 * 0.5) / 10)  # 0.45
    assert a20 == pytest.approx((0.5 + 18 * 0.5) / 20)  # 0.475
    assert pose_auc([0.0, 0.0]) == [1.0, 1.0, 1.0]
    assert pose_auc([FAILED_DEG] * 2) == [0.0, 0.0, 0.0]


def project(K: np.ndarray, X: np.ndarray) -> np.ndarray:
    x = X @ K.T
    return x[:, :2] / x[:, 2:]


def scene(T_0_1: np.ndarray, K0: np.ndarray, K1: np.ndarray, n: int = 300, seed: int = 0):
    """Random points in front of camera 0, projected into both cameras (camera 1 at ``T_0_1``)."""
    rng = np.random.default_rng(seed)
    X0 = np.c_[rng.uniform(-4, 4, n), rng.uniform(-3, 3, n), rng.uniform(4, 15, n)]
    X1 = (X0 - T_0_1[:3, 3]) @ T_0_1[:3, :3]  # X_1 = R^T (X_0 - t)
    return project(K0, X0), project(K1, X1)


def test_ground_truth_convention_on_synthetic_points():
    K0 = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    K1 = np.array([[520.0, 0, 330], [0, 515, 235], [0, 0, 1]])
    T_0_1 = make_transform(so3_exp(np.radians([2.0, -5.0, 1.0])), [0.3, -0.05, 1.0])  # camera 1: ahead, right
    p0, p1 = scene(T_0_1, K0, K1)
    row = evaluate_pair(p0, p1, PosePair("synthetic", "a", "b", K0, K1, T_0_1), ransac_px=1.0)
    assert row["reason"] == "ok" and not row["failed"]
    assert row["err_deg"] < 0.01 and row["inliers"] == len(p0)
    # the inverse pose is the other convention: it must score badly
    wrong = evaluate_pair(p0, p1, PosePair("inverse", "a", "b", K0, K1, invert(T_0_1)), ransac_px=1.0)
    assert wrong["err_deg"] > 90
    # no estimate: the largest error
    assert pose_errors(T_0_1, None) == (FAILED_DEG, FAILED_DEG)
    few = evaluate_pair(p0[:3], p1[:3], PosePair("few", "a", "b", K0, K1, T_0_1))
    assert few["failed"] and few["err_deg"] == FAILED_DEG


@needs_euroc
def test_euroc_ground_truth_matches_the_stereo_rectification():
    """Points projected through the distorted EuRoC cameras, undistorted into the K of the dataset: ~0 error.
    The extrinsic also agrees with ``euroc_rectification`` (rectified right camera: +baseline along x)."""
    ds = euroc_stereo_dataset(EUROC, stride=1000)
    pair = ds.pairs[0]
    cams = [read_euroc_sensor_yaml(EUROC / "mav0" / c / "sensor.yaml") for c in ("cam0", "cam1")]
    rect = euroc_rectification(*cams)
    T_rect = make_transform(rect["R1"].T, np.zeros(3)) @ make_transform(np.eye(3), [rect["baseline_m"], 0, 0]) \
        @ make_transform(rect["R2"], np.zeros(3))  # T_C0_rectL @ T_rectL_rectR @ T_rectR_C1
    assert np.allclose(T_rect, pair.T_0_1, atol=1e-6)

    rng = np.random.default_rng(1)
    X0 = np.c_[rng.uniform(-1.5, 1.5, 300), rng.uniform(-1, 1, 300), rng.uniform(2, 6, 300)]
    X1 = (X0 - pair.T_0_1[:3, 3]) @ pair.T_0_1[:3, :3]
    raw = [cv2.projectPoints(X, np.zeros(3), np.zeros(3), c["K"], c["D"])[0] for X, c in zip((X0, X1), cams)]
    p0, p1 = (cv2.undistortPoints(r, c["K"], c["D"], P=K).reshape(-1, 2)
              for r, c, K in zip(raw, cams, (pair.K0, pair.K1)))
    row = evaluate_pair(p0, p1, pair, ransac_px=1.0)
    assert row["err_deg"] < 0.05, row
    assert ds.load(pair.image0).shape == (480, 752)


@needs_kitti
def test_kitti_pairs():
    k1, k3 = kitti_datasets(KITTI, steps=(1, 3))
    assert (len(k1.pairs), len(k3.pairs)) == (50, 48)
    assert k3.pairs[0].name == "000000-000003"
    assert 3.0 < np.linalg.norm(k3.pairs[0].T_0_1[:3, 3]) < 4.0  # ~1.2 m per frame
    assert k1.pairs[0].K0[0, 0] == pytest.approx(707.0912)


def test_bad_options_and_folders(tmp_path, capsys, monkeypatch):
    with pytest.raises(ValueError):
        parse_methods("mambaglue,orb,orb")
    with pytest.raises(ValueError):
        parse_methods("sift")
    assert cli_main(["eval-pose", "--euroc", str(tmp_path / "missing"), "--datasets", "euroc"]) == 2
    assert "not found" in capsys.readouterr().err
    assert cli_main(["eval-pose", "--kitti", str(tmp_path), "--datasets", "kitti"]) == 2
    assert "not a KITTI" in capsys.readouterr().err
    # default folders absent: both datasets skipped with a reason, then a clear error
    import mambaglue_ros.evaluation.pose as pose

    monkeypatch.setattr(pose, "default_folder", lambda name: tmp_path / name)
    assert cli_main(["eval-pose"]) == 2
    out = capsys.readouterr()
    assert "euroc: skipped" in out.out and "kitti: skipped" in out.out and "no dataset to evaluate" in out.err


@needs_euroc
@needs_kitti
def test_short_run_on_real_data(tmp_path):
    out = tmp_path / "pose.json"
    rc = cli_main(["eval-pose", "--features", "xfeat", "--methods", "mambaglue,lightglue,orb", "--stride", "10",
                   "--max-pairs", "3", "--kitti-steps", "1", "--max-keypoints", "512", "--no-progress",
                   "--euroc", str(EUROC), "--kitti", str(KITTI), "--json", str(out), "--plots", str(tmp_path)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert set(result["datasets"]) == {"euroc_stereo", "kitti_k1"}
    for name, d in result["datasets"].items():
        assert set(d["methods"]) == {"mambaglue", "lightglue", "orb"}
        for m, s in d["methods"].items():
            assert s["pairs"] == 3 and s["failures"] == 0
            assert 0.0 <= s["auc@5"] <= s["auc@10"] <= s["auc@20"] <= 1.0
            assert s["matches"] > 100 and s["ms_per_pair"] > 0
            layers = (1, 6) if m != "orb" else (0, 0)  # XFeat's networks have 6 layers; ORB has none
            assert layers[0] <= s["mean_stop_layer"] <= layers[1], (name, m, s)
    for m in ("mambaglue", "lightglue"):
        # KITTI, 1.2 m forward per frame: the learned matchers get the pose to about a degree (0.5-1.2
        # measured), AUC@20 0.96-0.97
        kitti = result["datasets"]["kitti_k1"]["methods"][m]
        assert kitti["median_err_deg"] < 2.5 and kitti["auc@20"] > 0.85, (m, kitti)
        # EuRoC stereo, 0.11 m baseline: the translation direction is weakly constrained (7-17 deg measured);
        # a wrong ground-truth convention would give ~180, ORB on these pairs gives ~86
        assert result["datasets"]["euroc_stereo"]["methods"][m]["median_err_deg"] < 25.0
    assert (tmp_path / "pose_auc_xfeat.png").is_file()
    # `mambaglue compare` reads this file's per-pair rows, per dataset: its A and B are the run's own numbers
    assert cli_main(["compare", str(out), "--methods", "mambaglue,orb", "--samples", "200", "--block", "2",
                     "--json", str(tmp_path / "compare.json")]) == 0
    sets = json.loads((tmp_path / "compare.json").read_text())["sets"]
    assert set(sets) == {"euroc_stereo", "kitti_k1"}
    assert all(s["groups"] == 2 for s in sets.values())
    for name, s in sets.items():
        own = result["datasets"][name]["methods"]
        for k in ("auc@5", "auc@10", "auc@20"):
            assert s["methods"]["mambaglue"][k]["a"] == pytest.approx(own["mambaglue"][k], abs=1e-5)
            assert s["methods"]["mambaglue"][k]["b"] == pytest.approx(own["orb"][k], abs=1e-5)
