"""Node parameters (table, validation, params files) and the launch file's logic."""
from __future__ import annotations

import ast
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from mambaglue_ros.geometry import quaternion_to_matrix
from mambaglue_ros.ros import launch_config, params
from mambaglue_ros.ros.launch_config import node_arguments

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"mono": ROOT / "config" / "matcher.yaml", "stereo": ROOT / "config" / "stereo.yaml"}
LAUNCH_FILE = ROOT / "launch" / "matcher.launch.py"


# --------------------------------------------------------------------------------------------
# table and validation
# --------------------------------------------------------------------------------------------
def test_defaults_are_valid_and_as_specified():
    d = params.defaults()
    assert params.validate_all(d) == []
    assert all(params.validate(name, value) is None for name, value in d.items())
    assert (d["mode"], d["features"], d["device"], d["transport"]) == ("mono", "auto", "auto", "raw")
    assert (d["max_keypoints"], d["alpha"], d["queue_size"], d["qos_depth"]) == (512, 0.95, 1, 5)
    assert d["max_image_pixels"] == 4096 * 4096
    assert len(params.PARAMETERS) == len(params.SPECS) == 59
    assert d["mamba_ffn_rank"] == 0  # the network's own default: as trained
    assert d["camera_to_base_from_tf"] is False  # the camera_to_base parameter unless asked
    assert d["cuda_graph"] is False  # unmeasured in the node: opt-in
    assert (d["precision"], d["stereo_matching"]) == ("auto", "network")


def test_the_mamba_ffn_rank_parameter_reaches_the_network():
    from mambaglue_ros.ros.node import build_matcher

    p = {**params.defaults(), "mamba_ffn_rank": 8}
    assert build_matcher(p, "xfeat").net.transformers[0].self_attn.ffn_rank == 8
    assert build_matcher(params.defaults(), "xfeat").net.transformers[0].self_attn.ffn_rank == 0  # as trained
    assert params.validate("mamba_ffn_rank", -2) is not None


def test_default_camera_to_base_is_rep103_optical_to_body():
    x, y, z, *q = params.defaults()["camera_to_base"]
    assert (x, y, z) == (0.0, 0.0, 0.0)
    R = quaternion_to_matrix(np.array(q))
    # camera z (forward) -> base x, camera x (right) -> base -y, camera y (down) -> base -z
    np.testing.assert_allclose(R @ [0, 0, 1], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(R @ [1, 0, 0], [0, -1, 0], atol=1e-12)
    np.testing.assert_allclose(R @ [0, 1, 0], [0, 0, -1], atol=1e-12)


def test_runtime_changeable_parameters():
    runtime = {s.name for s in params.PARAMETERS if not s.read_only}
    assert {"max_keypoints", "alpha", "target_rate_hz"} <= runtime
    assert not {"mode", "features", "weights", "device", "transport", "qos_reliability",
                "qos_depth", "sync_slop", "queue_size", "camera_to_base"} & runtime


@pytest.mark.parametrize("name, value, reason", [
    ("mode", "triple", "mode must be one of mono, stereo; got 'triple'"),
    ("features", "sift", "features must be one of auto, xfeat, aliked, disk, superpoint; got 'sift'"),
    ("device", "gpu", "device must be auto, cpu, cuda or cuda:N; got 'gpu'"),
    ("device", 0, "device must be a string, got 0"),
    ("max_keypoints", 32, "max_keypoints must be >= 64, got 32"),
    ("max_keypoints", 10000, "max_keypoints must be <= 8192, got 10000"),
    ("max_keypoints", 512.0, "max_keypoints must be an integer, got 512.0"),
    ("max_keypoints", True, "max_keypoints must be an integer, got True"),
    ("detection_threshold", -0.01, "detection_threshold must be >= 0.0, got -0.01"),
    ("resize_max", 32, "resize_max must be 0 (no downscale) or 64..8192 px, got 32"),
    ("resize_max", 9000, "resize_max must be <= 8192, got 9000"),
    ("early_exit", "yes", "early_exit must be true or false, got 'yes'"),
    ("alpha", 0.4, "alpha must be >= 0.5, got 0.4"),
    ("alpha", 1.5, "alpha must be <= 1.0, got 1.5"),
    ("alpha", 1, "alpha must be a floating-point number, got 1 (write 1.0: ROS parameters are typed)"),
    ("alpha", float("nan"), "alpha must be finite, got nan"),
    ("target_rate_hz", -1.0, "target_rate_hz must be >= 0.0, got -1.0"),
    ("target_rate_hz", 2000.0, "target_rate_hz must be <= 1000.0, got 2000.0"),
    ("alpha_min", 0.3, "alpha_min must be >= 0.5, got 0.3"),
    ("alpha_max", 1.1, "alpha_max must be <= 1.0, got 1.1"),
    ("min_keypoints", 10, "min_keypoints must be >= 64, got 10"),
    ("filter_threshold", 1.5, "filter_threshold must be <= 1.0, got 1.5"),
    ("transport", "theora", "transport must be one of raw, compressed; got 'theora'"),
    ("qos_reliability", "reliable_ish", "qos_reliability must be one of best_effort, reliable"),
    ("qos_depth", 0, "qos_depth must be >= 1, got 0"),
    ("sync_slop", -0.001, "sync_slop must be >= 0.0, got -0.001"),
    ("keyframe_policy", "every", "keyframe_policy must be one of previous, keyframe; got 'every'"),
    ("keyframe_max_parallax_px", -1.0, "keyframe_max_parallax_px must be >= 0.0"),
    ("min_matches", 4, "min_matches must be >= 5, got 4"),
    ("min_inliers", 2, "min_inliers must be >= 5, got 2"),
    ("ransac_px", 0.0, "ransac_px must be >= 0.01, got 0.0"),
    ("odom_frame", "", "odom_frame must be a non-empty frame id"),
    ("base_frame", "/base_link", "base_frame must be a non-empty frame id without leading '/'"),
    ("camera_frame", "my camera", "camera_frame must be empty or a frame id"),
    ("right_camera_frame", "/right", "right_camera_frame must be empty or a frame id"),
    ("camera_to_base", [0.0] * 6, "camera_to_base needs 7 numbers (x y z qx qy qz qw), got 6"),
    ("camera_to_base", [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0], "quaternion (qx qy qz qw) must have unit norm, has 2.0000"),
    ("camera_to_base", [0, 0, 0, 0, 0, 0, 1], "camera_to_base must be a list of floating-point numbers"),
    ("camera_to_base", [0.0, float("inf"), 0.0, 0.0, 0.0, 0.0, 1.0], "camera_to_base must be finite"),
    ("publish_tf", 1, "publish_tf must be true or false, got 1"),
    ("max_image_pixels", 100, "max_image_pixels must be >= 4096, got 100"),
    ("diagnostics_period_s", 0.0, "diagnostics_period_s must be >= 0.1, got 0.0"),
    ("queue_size", 0, "queue_size must be >= 1, got 0"),
    ("queue_size", 101, "queue_size must be <= 100, got 101"),
    ("no_such_param", 1, "unknown parameter 'no_such_param'"),
    ("ba_window", 1, "ba_window must be 0 (off) or 2..50 keyframes"),
    ("ba_window", -1, "ba_window must be >= 0, got -1"),
    ("ba_window", 51, "ba_window must be <= 50, got 51"),
    ("ba_window", 5.0, "ba_window must be an integer, got 5.0"),
    ("pnp_readmit", 1, "pnp_readmit must be true or false, got 1"),
    ("mono_window", 2, "mono_window must be 0 (off) or 3..20 keyframes"),
    ("mono_window", 21, "mono_window must be <= 20, got 21"),
    ("max_sharpness_ratio", 1.0, "max_sharpness_ratio must be 0 (off) or > 1 (a factor), got 1.0"),
    ("max_sharpness_ratio", -2.0, "max_sharpness_ratio must be >= 0.0, got -2.0"),
])
def test_invalid_values_are_rejected_with_a_reason(name, value, reason):
    got = params.validate(name, value)
    assert got is not None and reason in got, got
    assert any(reason in r for r in params.validate_all({name: value}))


def test_valid_edge_values():
    for name, value in [("resize_max", 0), ("resize_max", 64), ("alpha", 0.5), ("alpha", 1.0),
                        ("device", "cuda:1"), ("camera_frame", ""), ("camera_frame", "cam/optical"),
                        ("detection_threshold", 5.0), ("use_sim_time", True),
                        ("qos_overrides./parameter_events.publisher.depth", 1000)]:
        assert params.validate(name, value) is None, (name, value)
    assert params.validate("use_sim_time", "true") == "use_sim_time must be true or false, got 'true'"


@pytest.mark.parametrize("values, reason", [
    ({"alpha": 0.7}, "need alpha_min <= alpha <= alpha_max, got 0.8 <= 0.7 <= 1.0"),
    ({"alpha_max": 0.9}, "need alpha_min <= alpha <= alpha_max, got 0.8 <= 0.95 <= 0.9"),
    ({"min_keypoints": 2048}, "need min_keypoints <= max_keypoints, got 2048 > 512"),
    ({"max_keypoints": 128}, "need min_keypoints <= max_keypoints, got 256 > 128"),
    ({"min_inliers": 40}, "need min_inliers <= min_matches, got 40 > 30"),
    ({"features": "superpoint"},
     "features 'superpoint' needs extractor_weights (no SuperPoint weights are packaged)"),
])
def test_cross_parameter_checks(values, reason):
    assert params.validate_all(values) == [reason]


def test_cross_checks_pass_when_consistent():
    assert params.validate_all({"alpha": 0.7, "alpha_min": 0.6, "features": "superpoint",
                                "extractor_weights": "/w/superpoint.pth"}) == []


def test_validate_changes_for_the_on_set_callback():
    current = params.defaults()
    assert params.validate_changes(current, {"alpha": 0.9, "max_keypoints": 2048}) == []
    assert params.validate_changes(current, {"mode": "stereo"}) == [
        "mode cannot be changed at runtime (read-only; restart the node)"]
    assert params.validate_changes(current, {"mode": "mono"}) == []  # unchanged value: fine
    assert params.validate_changes(current, {"alpha": 0.75}) == [
        "need alpha_min <= alpha <= alpha_max, got 0.8 <= 0.75 <= 1.0"]
    # both ends at once, as `ros2 param load` would do
    assert params.validate_changes(current, {"alpha": 0.75, "alpha_min": 0.7}) == []
    # a lifecycle node: startup parameters change while unconfigured, and the refusal says how otherwise
    assert params.validate_changes(current, {"mode": "stereo"}, lifecycle=True, unconfigured=True) == []
    assert params.validate_changes(current, {"mode": "stereo"}, lifecycle=True) == [
        "mode cannot be changed at runtime (set it while the node is unconfigured: cleanup, set, configure)"]
    assert params.validate_changes(current, {"features": "sift"}, lifecycle=True, unconfigured=True) != []


def test_rate_controlled_alpha_moves_into_new_bounds():
    """Under rate control alpha is the controller's: new bounds clamp it instead of being refused; without rate
    control, or with alpha in the change, or bounds that cross, nothing is added and validate_changes decides."""
    controlled = {**params.defaults(), "target_rate_hz": 10.0, "alpha": 0.83}
    assert params.clamp_controlled_alpha(controlled, {"alpha_min": 0.85}) == {"alpha_min": 0.85, "alpha": 0.85}
    assert params.clamp_controlled_alpha(controlled, {"alpha_max": 0.81}) == {"alpha_max": 0.81, "alpha": 0.81}
    assert params.clamp_controlled_alpha(controlled, {"alpha_min": 0.82}) == {"alpha_min": 0.82}  # inside: as is
    assert params.validate_changes(controlled, params.clamp_controlled_alpha(controlled, {"alpha_min": 0.85})) == []
    for current, change in (({**controlled, "target_rate_hz": 0.0}, {"alpha_min": 0.85}),  # the user's alpha
                            ({**controlled, "early_exit": False}, {"alpha_min": 0.85}),
                            (controlled, {"alpha_min": 0.85, "alpha": 0.9}),
                            (controlled, {"alpha_min": 0.9, "alpha_max": 0.85}),  # crossed: refused below
                            (controlled, {"alpha_min": "high"})):
        assert params.clamp_controlled_alpha(current, change) == change, (current, change)
    assert params.validate_changes({**controlled, "target_rate_hz": 0.0}, {"alpha_min": 0.85}) == [
        "need alpha_min <= alpha <= alpha_max, got 0.85 <= 0.83 <= 1.0"]


def test_descriptors():
    pytest.importorskip("rcl_interfaces.msg")
    d = params.descriptor(params.SPECS["alpha"])
    assert not d.read_only and d.name == "alpha"
    assert (d.floating_point_range[0].from_value, d.floating_point_range[0].to_value) == (0.5, 1.0)
    assert len(d.integer_range) == 0
    d = params.descriptor(params.SPECS["max_keypoints"])
    assert (d.integer_range[0].from_value, d.integer_range[0].to_value, d.integer_range[0].step) == (64, 8192, 1)
    d = params.descriptor(params.SPECS["mode"])
    assert d.read_only and d.additional_constraints == "one of: mono, stereo"
    d = params.descriptor(params.SPECS["detection_threshold"])
    assert len(d.floating_point_range) == 0 and d.additional_constraints == ">= 0.0"
    assert params.descriptor(params.SPECS["resize_max"]).additional_constraints == "0 or 64..8192"


def test_unknown_overrides_warn_with_the_closest_name():
    ours = list(params.SPECS) + ["use_sim_time", "start_type_description_service"]  # what the node declares
    given = ["max_keypoint", "alpha", "use_sim_time", "qos_overrides./image.subscription.depth", "zzz_nothing_like"]
    assert params.unknown_parameter_warnings(given, ours) == [
        "unknown parameter 'max_keypoint' ignored (this node does not declare it); did you mean 'max_keypoints'?",
        "unknown parameter 'zzz_nothing_like' ignored (this node does not declare it)"]
    # a params file's keys are overrides too
    assert params.unknown_parameter_warnings({"min_inlier": 20, "use_sim_time": True}, ours) == [
        "unknown parameter 'min_inlier' ignored (this node does not declare it); did you mean 'min_inliers'?"]
    assert params.unknown_parameter_warnings(params.defaults(), ours) == []


@pytest.mark.ros
def test_declare_parameters_on_a_node(ros_context):
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    node = Node("params_test", context=ros_context,
                parameter_overrides=[Parameter("alpha", value=0.9), Parameter("mode", value="stereo")])
    try:
        values = params.declare_parameters(node)
        assert values["alpha"] == 0.9 and values["mode"] == "stereo"
        assert values["camera_to_base"] == [0.0, 0.0, 0.0, -0.5, 0.5, -0.5, 0.5]
        # rclpy enforces the descriptor: range and read-only
        assert not node.set_parameters([Parameter("alpha", value=1.5)])[0].successful
        assert not node.set_parameters([Parameter("mode", value="mono")])[0].successful
        assert node.set_parameters([Parameter("max_keypoints", value=2048)])[0].successful
    finally:
        node.destroy_node()

    bad = Node("params_test_bad", context=ros_context,
               parameter_overrides=[Parameter("features", value="superpoint")])
    try:
        with pytest.raises(ValueError, match="features 'superpoint' needs extractor_weights"):
            params.declare_parameters(bad)
    finally:
        bad.destroy_node()


# --------------------------------------------------------------------------------------------
# params files
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["mono", "stereo"])
def test_config_files_load_and_validate(mode):
    loaded = params.load_params_yaml(CONFIGS[mode])
    assert set(loaded) == set(params.SPECS)  # every parameter is written out
    assert params.validate_all(loaded) == []
    assert params.check_params_file(CONFIGS[mode]) == []
    assert loaded["mode"] == mode
    expected = params.defaults()
    expected["mode"] = mode
    if mode == "stereo":  # metric stereo poses: matching against a keyframe removes accumulation at standstill
        expected["keyframe_policy"] = "keyframe"
        expected["ransac_px"] = 2.0  # the PnP threshold the stereo results were measured with
        # a car's matches move ~16 px per frame: at 40 px the keyframe was 5 frames (6 m) back (KITTI 6.0 -> 1.5 %/m)
        expected["keyframe_max_parallax_px"] = 3.0
    assert loaded == expected  # the files document the defaults (and the one deliberate stereo choice)


def test_config_files_comment_every_parameter():
    for path in CONFIGS.values():
        lines = path.read_text().splitlines()
        for name in params.SPECS:
            i = next(i for i, line in enumerate(lines) if line.strip().startswith(name + ":"))
            assert "#" in lines[i] or lines[i - 1].strip().startswith("#"), (path.name, name)


def test_load_params_yaml_sections(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(
        "/**:\n  ros__parameters:\n    alpha: 0.9\n    max_keypoints: 512\n"
        "/robot/matcher_node:\n  ros__parameters:\n    alpha: 0.85\n    qos_overrides:\n"
        "      image:\n        depth: 3\n"
        "other_node:\n  ros__parameters:\n    alpha: 0.6\n")
    mine = params.load_params_yaml(f, node_name="matcher_node")
    assert mine == {"alpha": 0.85, "max_keypoints": 512, "qos_overrides.image.depth": 3}
    assert params.validate_all(mine) == []
    assert params.load_params_yaml(f, node_name="/other_node")["alpha"] == 0.6
    assert params.load_params_yaml(f, node_name="nobody") == {"alpha": 0.9, "max_keypoints": 512}
    assert params.load_params_yaml(f)["alpha"] == 0.6  # all sections, in file order


def test_load_params_yaml_errors(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("alpha: 0.9\n")
    with pytest.raises(ValueError, match="section 'alpha' has no 'ros__parameters' key"):
        params.load_params_yaml(f)
    f.write_text("")
    with pytest.raises(ValueError, match="maps node names"):
        params.load_params_yaml(f)
    f.write_text("/**:\n  ros__parameters:\n    alpha: 1\n    mode: dual\n")
    assert params.check_params_file(f) == [
        f"{f}: alpha must be a floating-point number, got 1 (write 1.0: ROS parameters are typed)",
        f"{f}: mode must be one of mono, stereo; got 'dual'"]


# --------------------------------------------------------------------------------------------
# launch
# --------------------------------------------------------------------------------------------
NO_REMAPS = {name: "" for name in ("image", "camera_info", "left_image", "right_image",
                                   "left_camera_info", "right_camera_info")}


def test_node_arguments_mono_defaults():
    kw = node_arguments("mono", "", "", "false", NO_REMAPS, "/opt/share/mambaglue_ros")
    assert kw == {
        "parameters": ["/opt/share/mambaglue_ros/config/matcher.yaml", {"mode": "mono", "use_sim_time": False}],
        "remappings": [],
        "namespace": "",
        "arguments": ["--ros-args", "--log-level", "info"],
    }


def test_node_arguments_stereo_with_remaps():
    remaps = dict(NO_REMAPS, left_image="/stereo/left/image_rect_color", right_image="/stereo/right/image",
                  left_camera_info="/stereo/left/camera_info", right_camera_info="")
    kw = node_arguments(" Stereo ", "", "robot1", "True", remaps, "/share", log_level="DEBUG")
    assert kw["parameters"] == ["/share/config/stereo.yaml", {"mode": "stereo", "use_sim_time": True}]
    assert kw["remappings"] == [
        ("left/image_rect", "/stereo/left/image_rect_color"),
        ("left/image_rect/compressed", "/stereo/left/image_rect_color/compressed"),
        ("right/image_rect", "/stereo/right/image"),
        ("right/image_rect/compressed", "/stereo/right/image/compressed"),
        ("left/camera_info", "/stereo/left/camera_info"),
    ]
    assert kw["namespace"] == "robot1"
    assert kw["arguments"] == ["--ros-args", "--log-level", "debug"]


def test_node_arguments_mono_remaps_and_explicit_params_file(tmp_path):
    remaps = dict(NO_REMAPS, image="cam/image_raw", camera_info="cam/camera_info")
    mine = tmp_path / "params.yaml"
    mine.write_text("/**:\n  ros__parameters:\n    alpha: 0.9\n")
    kw = node_arguments("mono", str(mine), "", True, remaps, "/share")
    assert kw["parameters"][0] == str(mine)
    assert kw["remappings"] == [("image", "cam/image_raw"), ("image/compressed", "cam/image_raw/compressed"),
                                ("camera_info", "cam/camera_info")]


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "triple"}, "mode must be mono or stereo, got 'triple'"),
    ({"remaps": dict(NO_REMAPS, image="/cam")}, r"remap 'image:=/cam' applies to mode mono only \(mode is stereo\)"),
    ({"remaps": {"depth": "/d"}}, "remap 'depth:=/d' is not a topic argument"),
    ({"log_level": "verbose"}, "log_level must be one of debug, info, warn, error, fatal"),
    ({"use_sim_time": "maybe"}, "expected true or false, got 'maybe'"),
])
def test_node_arguments_errors(kwargs, match):
    args = dict(mode="stereo", params_file="", namespace="", use_sim_time="false", remaps=NO_REMAPS,
                share_dir="/share")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        node_arguments(**args)


def _calls(tree: ast.AST, func_name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, "id", getattr(n.func, "attr", None)) == func_name]


def test_launch_file_structure():
    tree = ast.parse(LAUNCH_FILE.read_text())
    declared = {}
    for call in _calls(tree, "DeclareLaunchArgument"):
        name = call.args[0].value
        default = next(k.value.value for k in call.keywords if k.arg == "default_value")
        declared[name] = default
    assert declared == launch_config.LAUNCH_ARGUMENTS
    assert _calls(tree, "OpaqueFunction")
    assert _calls(tree, "node_arguments") and _calls(tree, "get_package_share_directory")
    (node,) = _calls(tree, "Node")
    kw = {k.arg: k.value for k in node.keywords}
    assert kw["package"].value == "mambaglue_ros" and kw["executable"].value == "matcher_node"
    (managed,) = _calls(tree, "LifecycleNode")
    kw = {k.arg: k.value for k in managed.keywords}
    assert kw["executable"].value == "matcher_node" and kw["name"].attr == "NODE_NAME"
    imports = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {"launch", "launch.actions", "launch.events", "launch_ros.actions", "launch_ros.event_handlers",
            "launch_ros.events.lifecycle", "lifecycle_msgs.msg", "mambaglue_ros.ros"} <= imports
    (fn,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description"]
    # it returns one LaunchDescription that holds the declared arguments and the OpaqueFunction
    (ret,) = [n for n in ast.walk(fn) if isinstance(n, ast.Return)]
    assert isinstance(ret.value, ast.Call) and ret.value.func.id == "LaunchDescription"
    held = {c.func.id for c in ret.value.args[0].elts if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)}
    assert held == {"DeclareLaunchArgument", "OpaqueFunction"}, held


def test_launch_file_runs_against_stub_launch_modules(monkeypatch):
    """Execute the launch file with minimal stand-ins for launch / launch_ros / ament_index and
    check the Node it would start (the real packages are not installable from PyPI)."""
    created = {}

    class Recorder:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs

    class LaunchConfiguration:
        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return context[self.name]

    class Node(Recorder):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            created["node"] = kwargs

    class LifecycleNode(Recorder):
        pass

    stubs = {
        "launch": types.SimpleNamespace(LaunchDescription=lambda entities: entities),
        "launch.actions": types.SimpleNamespace(DeclareLaunchArgument=Recorder, OpaqueFunction=Recorder,
                                                EmitEvent=Recorder, RegisterEventHandler=Recorder),
        "launch.events": types.SimpleNamespace(matches_action=lambda action: ("matches", action)),
        "launch.substitutions": types.SimpleNamespace(LaunchConfiguration=LaunchConfiguration),
        "launch_ros": types.SimpleNamespace(),
        "launch_ros.actions": types.SimpleNamespace(Node=Node, LifecycleNode=LifecycleNode),
        "launch_ros.event_handlers": types.SimpleNamespace(OnStateTransition=Recorder),
        "launch_ros.events": types.SimpleNamespace(),
        "launch_ros.events.lifecycle": types.SimpleNamespace(ChangeState=Recorder),
        "ament_index_python": types.SimpleNamespace(),
        "ament_index_python.packages": types.SimpleNamespace(
            get_package_share_directory=lambda pkg: f"/install/share/{pkg}"),
    }
    for name, module in stubs.items():
        monkeypatch.setitem(sys.modules, name, module)
    namespace: dict = {}
    exec(compile(LAUNCH_FILE.read_text(), str(LAUNCH_FILE), "exec"), namespace)
    entities = namespace["generate_launch_description"]()
    declared = {e.args[0]: e.kwargs["default_value"] for e in entities[:-1]}
    assert declared == launch_config.LAUNCH_ARGUMENTS
    opaque = entities[-1]
    context = dict(launch_config.LAUNCH_ARGUMENTS, mode="stereo", namespace="r1",
                   left_image="/cam/left", right_image="/cam/right")
    (node,) = opaque.kwargs["function"](context)
    assert created["node"]["package"] == "mambaglue_ros"
    assert created["node"]["executable"] == "matcher_node"
    assert created["node"]["parameters"] == [
        "/install/share/mambaglue_ros/config/stereo.yaml", {"mode": "stereo"}]  # use_sim_time: the file's
    assert created["node"]["namespace"] == "r1"
    assert ("left/image_rect", "/cam/left") in created["node"]["remappings"]

    # lifecycle:=true: the managed node, named, configured at launch and activated once configured (autostart)
    from lifecycle_msgs.msg import Transition

    node, on_inactive, configure = opaque.kwargs["function"](dict(context, lifecycle="true"))
    assert isinstance(node, LifecycleNode) and node.kwargs["name"] == "mambaglue_matcher"
    assert node.kwargs["arguments"][0] == "--lifecycle" and node.kwargs["namespace"] == "r1"
    handler = on_inactive.args[0]
    assert handler.kwargs["target_lifecycle_node"] is node and handler.kwargs["goal_state"] == "inactive"
    # only the configure's arrival there: a deactivate also ends in "inactive" and must not re-activate the node
    assert handler.kwargs["start_state"] == "configuring"
    (activate,) = handler.kwargs["entities"]
    for emit, transition_id in ((configure, Transition.TRANSITION_CONFIGURE), (activate, Transition.TRANSITION_ACTIVATE)):
        event = emit.kwargs["event"]
        assert event.kwargs == {"lifecycle_node_matcher": ("matches", node), "transition_id": transition_id}
    # autostart:=false: left unconfigured for a lifecycle manager
    (node,) = opaque.kwargs["function"](dict(context, lifecycle="true", autostart="false"))
    assert isinstance(node, LifecycleNode)


def test_topic_names_that_contradict_the_rectification_settings_are_named():
    # image_pipeline's names: image_raw, image_rect, image_rect_color, RealSense's image_rect_raw (rectified)
    warn = params.topic_warnings
    assert warn("mono", False, False, {"image": "/cam/image_raw"}) == []
    assert warn("mono", False, False, {"image": "/cam/image"}) == []  # says neither: not judged
    assert "set rectified_input: true" in warn("mono", False, False, {"image": "/cam/image_rect_color"})[0]
    assert "set rectified_input: true" in warn("mono", False, False, {"image": "/cam/infra1/image_rect_raw"})[0]
    assert "set rectified_input: false" in warn("mono", True, False, {"image": "/cam/image_raw/compressed"})[0]
    stereo = {"left": "/cam0/image_raw", "right": "/cam1/image_raw"}
    assert [w.split()[0] for w in warn("stereo", False, False, stereo)] == ["left", "right"]
    assert all("set stereo_rectify: true" in w for w in warn("stereo", False, False, stereo))
    assert warn("stereo", False, True, stereo) == []
    assert warn("stereo", False, False, {"left": "/left/image_rect", "right": "/right/image_rect"}) == []
    assert "rectified twice" in warn("stereo", False, True, {"left": "/a/image_rect", "right": "/b/image_raw"})[0]
