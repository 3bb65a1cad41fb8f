"""Launch arguments a user expects (issue 14, item 12) and the lifecycle (managed) node."""
from __future__ import annotations

import numpy as np
import pytest

from mambaglue_ros.ros import launch_config
from mambaglue_ros.ros.launch_config import LAUNCH_ARGUMENTS, node_arguments

from ros_harness import wait_for

NO_REMAPS = {name: "" for name in ("image", "camera_info", "left_image", "right_image",
                                   "left_camera_info", "right_camera_info")}


def launch(**given):
    """node_arguments as the launch file calls it: every argument at its default unless given."""
    args = dict(LAUNCH_ARGUMENTS, **given)
    remaps = {k: args[k] for k in NO_REMAPS}
    return node_arguments(args["mode"], args["params_file"], args["namespace"], args["use_sim_time"], remaps,
                          "/share", log_level=args["log_level"], transport=args["transport"],
                          lifecycle=args["lifecycle"])


def test_params_file_mode_is_not_overridden_by_the_default_mode(tmp_path):
    stereo = tmp_path / "stereo.yaml"
    stereo.write_text("/**:\n  ros__parameters:\n    mode: stereo\n    transport: compressed\n")
    kw = launch(params_file=str(stereo), left_image="/cam/left")  # before: ran mono, and refused the remap
    assert kw["parameters"] == [str(stereo), {}]
    assert ("left/image_rect", "/cam/left") in kw["remappings"]
    # an explicit mode or transport still wins over the file
    kw = launch(params_file=str(stereo), mode="mono", transport="raw")
    assert kw["parameters"][1] == {"mode": "mono", "transport": "raw"}
    # without a params file: mono and its default file
    assert launch()["parameters"] == ["/share/config/matcher.yaml", {}]
    # use_sim_time: the launch argument when given, else the file's (a file with use_sim_time: true kept it)
    assert launch(use_sim_time="true")["parameters"][1] == {"use_sim_time": True}
    assert launch(use_sim_time="False")["parameters"][1] == {"use_sim_time": False}
    # a params file that is not there is an error, also with an explicit mode (launch_ros only warns and drops it,
    # and the node would run on its built-in defaults)
    for mode in ("", "stereo"):
        with pytest.raises(ValueError, match="params_file '/nonexistent/stereo.yaml' does not exist"):
            launch(params_file="/nonexistent/stereo.yaml", mode=mode)


def test_transport_and_lifecycle_are_launch_arguments():
    assert {"transport", "lifecycle", "params_file", "namespace", "use_sim_time", "log_level"} <= set(LAUNCH_ARGUMENTS)
    kw = launch(transport="compressed", image="/cam/image_raw")
    assert kw["parameters"][1]["transport"] == "compressed"
    assert ("image/compressed", "/cam/image_raw/compressed") in kw["remappings"]
    assert launch(lifecycle="true")["arguments"][:2] == ["--lifecycle", "--ros-args"]
    assert launch()["arguments"][0] == "--ros-args"
    with pytest.raises(ValueError, match="transport must be raw or compressed, got 'theora'"):
        launch(transport="theora")
    assert launch_config.NODE_NAME == "mambaglue_matcher"


@pytest.mark.ros
def test_lifecycle_node_transitions(ros_context):
    from lifecycle_msgs.msg import State
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from mambaglue_ros.ros import convert as C
    from mambaglue_ros.ros.node import LifecycleMatcherNode

    node = LifecycleMatcherNode(context=ros_context, parameter_overrides=[
        Parameter("matcher", value="orb"), Parameter("features", value="xfeat")])

    def state() -> int:
        return node._state_machine.current_state[0]

    image = C.numpy_to_image(np.zeros((480, 640), np.uint8), "mono8")
    try:
        assert state() == State.PRIMARY_STATE_UNCONFIGURED
        # the standard lifecycle services a lifecycle manager (Nav2) calls
        services = {s.srv_name for s in node.services}
        assert {"/mambaglue_matcher/change_state", "/mambaglue_matcher/get_state"} <= services
        assert node.get_parameter("max_keypoints").value == 512  # parameters exist before configure
        assert not hasattr(node, "pub_tracks") and node.worker is None
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert state() == State.PRIMARY_STATE_INACTIVE
        topics = {p.topic_name for p in node.publishers}
        assert {"/mambaglue_matcher/tracks", "/mambaglue_matcher/status", "/mambaglue_matcher/odom"} <= topics
        assert node.worker is None and not node.active
        node._on_mono_image(image)  # inactive: frames are ignored
        assert node.stats.counters["frames_in"] == 0

        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert state() == State.PRIMARY_STATE_ACTIVE and node.active and node.worker.is_alive()
        node._on_mono_image(image)  # active: taken (no camera_info yet, so the worker skips it)
        assert node.stats.counters["frames_in"] == 1
        assert wait_for(lambda: node.stats.counters["no_camera_info"] == 1, timeout=10)

        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert state() == State.PRIMARY_STATE_INACTIVE and not node.active and node.worker is None
        node._on_mono_image(image)
        assert node.stats.counters["frames_in"] == 1

        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        assert state() == State.PRIMARY_STATE_UNCONFIGURED and node.matcher is None
        assert not {p.topic_name for p in node.publishers} & topics - {"/rosout", "/parameter_events"}
        # and it can be brought up again
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert node.worker.is_alive()
    finally:
        node.destroy_node()


@pytest.mark.ros
def test_lifecycle_startup_parameters_change_while_unconfigured(ros_context):
    """As with a Nav2 node: mode, features and the other startup parameters are read at configure, so they change
    while the node is unconfigured (between cleanup and configure) and are refused, with what to do, otherwise."""
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from mambaglue_ros.ros.node import LifecycleMatcherNode

    ok = TransitionCallbackReturn.SUCCESS
    node = LifecycleMatcherNode(context=ros_context, parameter_overrides=[
        Parameter("matcher", value="orb"), Parameter("features", value="xfeat")])

    def subscribed() -> set[str]:
        return {s.topic_name for s in node.subscriptions}

    try:
        assert not node.describe_parameter("mode").read_only  # to rclpy; the node's callback decides
        assert node.set_parameters([Parameter("mode", value="stereo")])[0].successful
        assert node.set_parameters([Parameter("qos_depth", value=3)])[0].successful  # before the first configure
        assert node.trigger_configure() == ok
        assert node.get_parameter("qos_overrides./left/image_rect.subscription.depth").value == 3
        assert node.mode == "stereo" and {"/left/image_rect", "/right/image_rect"} <= subscribed()
        assert "/image" not in subscribed()
        result = node.set_parameters([Parameter("mode", value="mono")])[0]
        assert not result.successful and "set it while the node is unconfigured" in result.reason
        assert node.p["mode"] == node.mode == "stereo" and node.get_parameter("mode").value == "stereo"
        assert node.set_parameters([Parameter("alpha", value=0.9)])[0].successful  # runtime ones as before
        assert node._pending == {"alpha": 0.9}  # inactive: no worker applies it yet
        node.p["max_keypoints"] = 384  # what a rate controller's budget shown as the parameter leaves there
        assert node.trigger_cleanup() == ok
        assert node._pending == {} and node.p["alpha"] == 0.9  # what waited is what the next configure reads
        assert node.set_parameters([Parameter("alpha", value=0.85)])[0].successful
        assert node.set_parameters([Parameter("pipeline", value="off")])[0].successful
        assert node.p["alpha"] == 0.85 and node._keypoint_ceiling == 512  # the ceiling moves with max_keypoints only
        bad = node.set_parameters([Parameter("features", value="sift")])[0]  # values are still checked
        assert not bad.successful and "features" in bad.reason
        # rclpy re-applies the qos_overrides parameters it declared at the first configure: a new QoS would be dropped
        bad = node.set_parameters([Parameter("qos_reliability", value="reliable")])[0]
        assert not bad.successful and "cannot be changed after the node's first configure" in bad.reason
        assert node.set_parameters([Parameter("mode", value="mono")])[0].successful
        assert node.trigger_configure() == ok
        assert node.mode == "mono" and "/image" in subscribed() and "/left/image_rect" not in subscribed()
        assert node.p["alpha"] == 0.85 and not node.pipelined
    finally:
        node.destroy_node()


def test_lifecycle_failures_leave_a_usable_node(ros_context, monkeypatch):
    """A configure that fails early (missing weights) is a FAILURE and the node stays unconfigured; a worker that
    is still on a frame when deactivate gives up waiting is kept: activate refuses to start a second one and cleanup
    to destroy what it uses until it has stopped, and a reset queued meanwhile is applied when it stops; a node never
    configured shuts down (before: the cleanup of both failures raised AttributeError, which rclpy turned into
    ERROR / an unfinished shutdown)."""
    import threading

    from lifecycle_msgs.msg import State
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from mambaglue_ros.ros import node as node_module
    from mambaglue_ros.ros.node import LifecycleMatcherNode

    ok, failure = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE

    def make(**params):
        return LifecycleMatcherNode(context=ros_context, parameter_overrides=[
            Parameter(k, value=v) for k, v in {"features": "xfeat", **params}.items()])

    node = make(matcher="mambaglue", weights="/nonexistent/mambaglue_xfeat.pt")
    try:
        assert node.trigger_configure() == failure
        assert node._state_machine.current_state[0] == State.PRIMARY_STATE_UNCONFIGURED and node.matcher is None
    finally:
        node.destroy_node()

    node = make(matcher="orb")
    try:
        assert node.trigger_shutdown() == ok  # never configured
        assert node._state_machine.current_state[0] == State.PRIMARY_STATE_FINALIZED
    finally:
        node.destroy_node()

    monkeypatch.setattr(node_module, "WORKER_JOIN_S", 0.05)
    node = make(matcher="orb")
    release = threading.Event()
    try:
        assert node.trigger_configure() == ok and node.trigger_activate() == ok
        node._running = False
        node.worker.join(timeout=10)
        node.worker = threading.Thread(target=release.wait, daemon=True)  # a worker still on a long frame
        node.worker.start()
        assert node.trigger_deactivate() == ok
        assert node.worker is not None and node.worker.is_alive()  # kept, not forgotten
        assert node.trigger_activate() == failure and not node.active
        assert node.trigger_cleanup() == failure and node.matcher is not None  # nothing destroyed under it
        release.set()
        node.worker.join(timeout=10)
        assert node.trigger_activate() == ok and node.worker.is_alive() and node.active
        # a reset the service queued while the worker was on its last frame: applied as that worker ends
        monkeypatch.setattr(node_module, "WORKER_JOIN_S", 10.0)  # the real worker notices the stop within 0.2 s
        assert node.trigger_deactivate() == ok and node.worker is None
        done = threading.Event()
        node._reset_requests.append((np.eye(4), np.zeros((6, 6)), "reset service", done))
        node._work()  # what the stopped worker runs after its last frame (the loop does not run: not running)
        assert done.is_set()
    finally:
        release.set()
        node.destroy_node()


@pytest.mark.ros
def test_node_command_line_flags(capsys):
    """``--lifecycle`` is read after the ROS arguments are stripped; ``--help`` and a misspelt flag no longer start
    the unmanaged node (before: anything but the exact ``--lifecycle`` was ignored)."""
    from rclpy.utilities import remove_ros_args

    from mambaglue_ros.ros.node import parse_arguments

    def flags(*argv: str):
        return parse_arguments(remove_ros_args(["matcher_node", *argv])[1:])

    assert flags(*launch(lifecycle="true")["arguments"]).lifecycle
    assert not flags(*launch()["arguments"]).lifecycle
    assert not flags("--ros-args", "-p", "features:=xfeat", "-r", "__node:=lifecycle").lifecycle
    with pytest.raises(SystemExit) as refused:
        flags("--lifecyle", "--ros-args", "-p", "features:=xfeat")
    assert refused.value.code == 2 and "unrecognized arguments: --lifecyle" in capsys.readouterr().err
    with pytest.raises(SystemExit) as helped:
        flags("--help")
    assert helped.value.code == 0 and "usage: matcher_node [-h] [--lifecycle]" in capsys.readouterr().out


LAUNCH_MODULES = ("ament_index_python", "ament_index_python.packages", "launch", "launch.actions", "launch.events",
                  "launch.substitutions", "launch_ros", "launch_ros.actions", "launch_ros.event_handlers",
                  "launch_ros.events", "launch_ros.events.lifecycle", "lifecycle_msgs", "lifecycle_msgs.msg")


def test_the_launch_file_leaves_the_launch_environment_alone():
    """launch hands its own process's environment to every process it starts. Importing mambaglue_ros sets
    OMP_WAIT_POLICY and THP_MEM_ALLOC_ENABLE for the node's process (before torch loads); the launch file imports
    it for launch_config, and must not pass them on to the other nodes of a launch that includes it. Run in a fresh
    interpreter with stand-ins for the launch packages (not on PyPI)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    launch_file = Path(__file__).resolve().parents[1] / "launch" / "matcher.launch.py"
    script = f"""
import os, runpy, sys, types
for name in {LAUNCH_MODULES!r}:
    module = types.ModuleType(name)
    module.__getattr__ = lambda attribute: object  # any name the launch file imports
    sys.modules[name] = module
before = dict(os.environ)
namespace = runpy.run_path({str(launch_file)!r})
assert "mambaglue_ros.ros.launch_config" in sys.modules and callable(namespace["generate_launch_description"])
changed = {{k: (before.get(k), os.environ.get(k)) for k in set(before) | set(os.environ)
           if before.get(k) != os.environ.get(k)}}
assert not changed, changed
print("environment unchanged")
"""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "THP_MEM_ALLOC_ENABLE")}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "environment unchanged" in result.stdout, result.stdout + result.stderr
