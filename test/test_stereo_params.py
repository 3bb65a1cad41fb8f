"""Window options of the trackers as node parameters: the stereo window bundle adjustment and PnP
re-admission, the mono window refinement."""
from __future__ import annotations

import types

import numpy as np
import pytest

from mambaglue_ros.geometry import PNP_RANSAC_MODES
from mambaglue_ros.ros import params
from mambaglue_ros.tracking import DEFAULT_TRACKING_CONFIG, MonoTracker, StereoTracker, validate_tracking_config


def test_defaults_are_the_trackers():
    d = params.defaults()
    assert (d["ba_window"], d["pnp_readmit"], d["mono_window"]) == (0, False, 0)
    assert d["mono_window"] == DEFAULT_TRACKING_CONFIG["mono_window"]
    assert d["ba_window"] == DEFAULT_TRACKING_CONFIG["ba_window"]
    assert d["pnp_readmit"] == DEFAULT_TRACKING_CONFIG["pnp_readmit"]
    assert d["pnp_ransac"] == DEFAULT_TRACKING_CONFIG["pnp_ransac"] == "auto"
    assert params.SPECS["pnp_ransac"].choices == PNP_RANSAC_MODES
    assert params.validate_changes(d, {"pnp_ransac": "pixel"}) == []  # the tracker reads it per frame
    # the window and its thread are made when the tracker starts: not changeable at runtime
    assert params.SPECS["ba_window"].read_only and params.SPECS["pnp_readmit"].read_only
    assert params.validate_changes(d, {"ba_window": 5}) == [
        "ba_window cannot be changed at runtime (read-only; restart the node)"]


def test_valid_values():
    for value in (0, 2, 5, 50):
        assert params.validate("ba_window", value) is None
    assert params.validate("pnp_readmit", True) is None
    for value in ("auto", "pixel", "covariance"):
        assert params.validate("pnp_ransac", value) is None
    assert "pnp_ransac" in params.validate("pnp_ransac", "chi2")
    with pytest.raises(ValueError, match="pnp_ransac must be one of"):
        validate_tracking_config({"pnp_ransac": "chi2"})
    for value in (0, 3, 20):
        assert params.validate("mono_window", value) is None
    with pytest.raises(ValueError, match="ba_window must be 0"):
        validate_tracking_config({"ba_window": 1})


def test_descriptor_says_the_gap():
    pytest.importorskip("rcl_interfaces.msg")
    d = params.descriptor(params.SPECS["ba_window"])
    assert (d.integer_range[0].from_value, d.integer_range[0].to_value) == (0, 50)
    assert d.additional_constraints == "0 or 2..50"
    assert params.descriptor(params.SPECS["mono_window"]).additional_constraints == "0 or 3..20"


def test_node_passes_them_to_the_stereo_tracker():
    pytest.importorskip("rclpy")
    from mambaglue_ros.ros.node import MatcherNode

    p = params.defaults()
    p.update(mode="stereo", ba_window=4, pnp_readmit=True, pnp_ransac="covariance")
    config = MatcherNode._tracking_config(types.SimpleNamespace(p=p))
    assert (config["ba_window"], config["pnp_readmit"], config["pnp_ransac"]) == (4, True, "covariance")
    K = np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])
    T_lr = np.eye(4)
    T_lr[0, 3] = 0.1
    tracker = StereoTracker(types.SimpleNamespace(features="orb"), K, K, T_lr, config)
    try:
        assert tracker._ba_enabled() and tracker.config["pnp_readmit"] is True
    finally:
        tracker.close()
    off = MatcherNode._tracking_config(types.SimpleNamespace(p=params.defaults()))
    assert not StereoTracker(types.SimpleNamespace(features="orb"), K, K, T_lr, off)._ba_enabled()
    p.update(mode="mono", mono_window=4)
    mono_config = MatcherNode._tracking_config(types.SimpleNamespace(p=p))
    mono = MonoTracker(types.SimpleNamespace(features="orb"), K, mono_config)
    assert mono.config["mono_window"] == 4


def test_rescued_poses_are_counted_for_the_diagnostics():
    """``pose_rescued`` counts frames with a pose that needed the covariance gate (published in /diagnostics with
    the other counters); a frame without a pose is a failure, not a rescue."""
    from mambaglue_ros.runtime import RuntimeStats

    stats = RuntimeStats()
    stats.processed(100.0, 512, 200, 4, pose_ok=True, inlier_ratio=0.5)
    stats.processed(100.0, 512, 200, 4, pose_ok=True, inlier_ratio=0.3, rescued=True)
    stats.processed(100.0, 512, 90, 4, pose_ok=False, inlier_ratio=None, failure="too few PnP inliers", rescued=True)
    snap = stats.snapshot()
    assert (snap["pose_rescued"], snap["pose_failures"], snap["frames_processed"]) == (1, 1, 3)
    # pose_sharpness: the failures the sharpness gate took part in (max_sharpness_ratio), a subset of pose_failures
    assert snap["pose_sharpness"] == 0
    stats.processed(100.0, 512, 90, 4, pose_ok=False, inlier_ratio=None, failure="image sharpness 0.2x", sharpness=True)
    stats.processed(100.0, 512, 200, 4, pose_ok=True, inlier_ratio=0.5, sharpness=True)  # posed: no failure
    snap = stats.snapshot()
    assert (snap["pose_sharpness"], snap["pose_failures"]) == (1, 2)
