"""The multi-camera node: two cameras' MatcherNodes in one process share one network (``SharedMatcher``),
each in its own namespace, each with its own outputs; cameras that disagree on the network are refused."""
from __future__ import annotations

import threading
import types

import pytest

from mambaglue_ros.synthetic import make_sequence

from ros_harness import Collector, camera_info_msg, wait_for, wait_for_subscribers
from test_node import image_msg

pytestmark = pytest.mark.ros

N_FRAMES = 4
CAMERAS = ("front", "rear")


def test_two_cameras_one_network_each_its_own_outputs(ros_context):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import CameraInfo, Image

    from mambaglue_ros.ros.multi_camera import SharedMatcher
    from mambaglue_ros.ros.node import MatcherNode

    sequences = {cam: [s.frame(i) for i in range(N_FRAMES)] for cam, s in zip(CAMERAS, (
        make_sequence(n_frames=N_FRAMES, rate_hz=5.0, stereo=False, trajectory="orbit", seed=1, speed_mps=1.0),
        make_sequence(n_frames=N_FRAMES, rate_hz=5.0, stereo=False, trajectory="figure8", seed=2, speed_mps=1.0)))}
    shared = SharedMatcher(max_batch=4, max_wait_ms=5.0)
    params = [Parameter("features", value="xfeat"), Parameter("qos_reliability", value="reliable"),
              Parameter("max_keypoints", value=384)]
    nodes = {cam: MatcherNode(context=ros_context, namespace=cam, matcher_factory=shared, parameter_overrides=params)
             for cam in CAMERAS}
    io = rclpy.create_node("test_io", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    for n in (*nodes.values(), io):
        executor.add_node(n)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        assert shared.batcher is not None and all(n.matcher.inner is not nodes[CAMERAS[0]].matcher.inner
                                                  for n in list(nodes.values())[1:])  # one client per camera ...
        assert len({id(n.matcher.inner._batcher) for n in nodes.values()}) == 1  # ... of one network
        outs = {cam: Collector(io, namespace=f"/{cam}") for cam in CAMERAS}
        for out in outs.values():
            out.wait_matched()
        pubs = {cam: (io.create_publisher(Image, f"/{cam}/image", 10),
                      io.create_publisher(CameraInfo, f"/{cam}/camera_info", 10)) for cam in CAMERAS}
        wait_for_subscribers(*[p for pair in pubs.values() for p in pair])
        for cam, (_, info) in pubs.items():
            info.publish(camera_info_msg(sequences[cam][0].K, 640, 480, f"{cam}_optical"))
            assert wait_for(lambda cam=cam: "left" in nodes[cam].camera, timeout=10)
        for i in range(N_FRAMES):
            for cam, (image, _) in pubs.items():  # both cameras' frames at once: they may share a batch
                f = sequences[cam][i]
                image.publish(image_msg(f.left, f.stamp_ns, f"{cam}_optical"))
            for cam in CAMERAS:  # lossless: each node keeps only its newest frame
                assert wait_for(lambda cam=cam: nodes[cam].stats.counters["frames_processed"] > i, timeout=60), \
                    f"{cam}: frame {i} not processed"
        for cam in CAMERAS:
            assert wait_for(lambda cam=cam: outs[cam].count("matches") >= N_FRAMES - 1, timeout=10)
            matches = outs[cam].get("matches")
            assert len(matches) == N_FRAMES - 1  # only this camera's pairs on this camera's topic
            assert [m.header.frame_id for m in matches] == [f"{cam}_optical"] * (N_FRAMES - 1)
            assert min(len(m.scores) for m in matches) > 50, [len(m.scores) for m in matches]  # 86-104 measured
        assert shared.batcher.pairs == 2 * (N_FRAMES - 1)  # every pair of both cameras went through the one network
        # the network's parameters are shared: one camera may not change them at run time
        result = nodes["front"].set_parameters([Parameter("filter_threshold", value=0.5)])[0]
        assert not result.successful and "shared by every camera" in result.reason
        # one TF broadcaster of odom -> base_link: the first camera may start, the second is refused with the reason
        for cam in CAMERAS:  # as with tf2_ros installed (without it, publish_tf is refused for that first)
            nodes[cam]._tf = types.SimpleNamespace(sendTransform=lambda transform: None)
        assert nodes[CAMERAS[0]].set_parameters([Parameter("publish_tf", value=True)])[0].successful
        result = nodes[CAMERAS[1]].set_parameters([Parameter("publish_tf", value=True)])[0]
        assert not result.successful and "broadcasts the TF odom -> base_link" in result.reason
    finally:
        executor.shutdown()
        for n in (*nodes.values(), io):
            n.destroy_node()
        shared.close()


def test_cameras_must_agree_on_the_network():
    from mambaglue_ros.ros.multi_camera import SharedMatcher, parse_arguments
    from mambaglue_ros.ros.params import defaults

    shared = SharedMatcher()
    try:
        p = defaults()
        p.update(features="xfeat", max_keypoints=300)
        first = shared(p, "xfeat")
        assert first.max_keypoints == 300
        with pytest.raises(ValueError, match="precision='bf16'"):
            shared({**p, "precision": "bf16"}, "xfeat")
        with pytest.raises(ValueError, match="features='aliked'"):
            shared(p, "aliked")
        with pytest.raises(ValueError, match="not orb"):
            shared({**p, "matcher": "orb"}, "xfeat")
        second = shared({**p, "max_keypoints": 200, "alpha": 0.9, "publish_tf": True}, "xfeat")  # per camera
        assert (second.max_keypoints, second.alpha, first.max_keypoints) == (200, 0.9, 300)
        with pytest.raises(ValueError, match="broadcast the TF"):  # a second camera with the same TF frames
            shared({**p, "publish_tf": True}, "xfeat")
        shared({**p, "publish_tf": True, "base_frame": "rear_link"}, "xfeat")  # its own frames: fine
        # at run time too (`ros2 param set /rear/mambaglue_matcher publish_tf true`): before, only checked at start
        broadcasting = {**p, "publish_tf": True}  # camera A, a broadcaster since start (odom -> base_link)
        rear = {**p, "publish_tf": True, "base_frame": "rear_link"}  # camera B, its own frames since start
        assert shared.refuse_change(broadcasting, {"alpha": 0.8}) is None  # its own frames: not "another camera"
        assert "broadcasts the TF odom -> base_link" in shared.refuse_change(p, {"publish_tf": True})  # camera C
        assert "broadcasts the TF odom -> base_link" in shared.refuse_change(rear, {"base_frame": "base_link"})
        assert shared.refuse_change(broadcasting, {"base_frame": "a_link"}) is None  # A moves: odom -> base_link free
        assert shared.refuse_change(p, {"publish_tf": True}) is None  # so C may take it
        assert "broadcasts the TF odom -> a_link" in shared.refuse_change(rear, {"base_frame": "a_link"})
        assert shared.refuse_change({**broadcasting, "base_frame": "a_link"}, {"publish_tf": False}) is None
        assert shared.refuse_change(rear, {"base_frame": "a_link"}) is None  # A stopped: its frames are free
        assert "broadcasts the TF" in shared.refuse_change(p, {"publish_tf": True})  # C broadcasts since its change
    finally:
        shared.close()
    assert parse_arguments(["--cameras", "a", "b"]).cameras == ["a", "b"]
    with pytest.raises(SystemExit):
        parse_arguments(["--cameras", "a", "a"])


def test_a_global_namespace_remap_is_refused_by_name(tmp_path, monkeypatch):
    """`-r __ns:=/robot` (what launch_ros's Node(namespace=...) passes) overrides every camera node's namespace: all
    would be /robot/mambaglue_matcher on /robot/image. The multi-camera node refuses that with what to do instead."""
    import rclpy

    from mambaglue_ros.ros.multi_camera import check_distinct_names

    monkeypatch.setenv("ROS_LOG_DIR", str(tmp_path))
    context = rclpy.Context()
    rclpy.init(args=["multi_camera_node", "--ros-args", "-r", "__ns:=/robot"], context=context)
    try:
        nodes = [rclpy.create_node("mambaglue_matcher", namespace=ns, context=context) for ns in ("front", "rear")]
        with pytest.raises(ValueError, match="put the common namespace into --cameras"):
            check_distinct_names(nodes)
        for n in nodes:
            n.destroy_node()
        nodes = [rclpy.create_node("mambaglue_matcher", namespace=ns, context=context, use_global_arguments=False)
                 for ns in ("/robot/front", "/robot/rear")]
        check_distinct_names(nodes)  # the namespaces given per camera: distinct
        for n in nodes:
            n.destroy_node()
    finally:
        context.try_shutdown()
