"""The node as a SLAM / VIO front end (issue 14): inputs it must honour, outputs a back end reads.

Most checks call the node's own methods on a node built in-process (no DDS needed to see what the
worker would do with a frame); the DDS loopback tests wait for discovery before publishing and
feed frames one at a time where every frame must be processed (the node keeps only the newest).
"""
from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from mambaglue_ros import geometry as G
from mambaglue_ros.ros import convert as C

from ros_harness import camera_info_msg, wait_for, wait_for_subscribers

pytestmark = pytest.mark.ros

K = np.array([[400.0, 0.0, 320.0], [0.0, 400.0, 240.0], [0.0, 0.0, 1.0]])


def make_node(ros_context, overrides: dict, lifecycle: bool = False):
    from rclpy.parameter import Parameter

    from mambaglue_ros.ros.node import LifecycleMatcherNode, MatcherNode

    cls = LifecycleMatcherNode if lifecycle else MatcherNode
    # ORB: these checks are about the node's plumbing, not the learned matcher (fast to build)
    params = {"matcher": "orb", "features": "xfeat", **overrides}
    return cls(context=ros_context, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])


def spin(ros_context, *nodes):
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=ros_context)  # as the node's main (rclpy.spin); see ros_harness
    for n in nodes:
        executor.add_node(n)
    threading.Thread(target=executor.spin, daemon=True).start()
    return executor


def capture(node, *topics: str) -> list[list]:
    """Replace the node's publishers ``pub_<topic>`` by lists that collect what it publishes (seen in-process, no
    DDS); one list per topic, in order."""
    lists = []
    for topic in topics:
        published: list = []
        setattr(node, f"pub_{topic}", SimpleNamespace(publish=published.append))
        lists.append(published)
    return lists


def frame(image: np.ndarray, stamp_ns: int, right: np.ndarray | None = None):
    from std_msgs.msg import Header

    from mambaglue_ros.ros.node import Frame

    header = Header(stamp=C.ns_to_stamp(stamp_ns), frame_id="cam")
    return Frame(stamp_ns, header, image, right, None if right is None else Header(stamp=header.stamp, frame_id="r"))


def image_msg(image: np.ndarray, stamp_ns: int, frame_id: str):
    msg = C.numpy_to_image(image, "rgb8")
    msg.header.stamp = C.ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    return msg


def info(K_: np.ndarray, D=None, P=None, frame_id: str = "cam", size=(640, 480)):
    msg = camera_info_msg(K_, size[0], size[1], frame_id)
    if D is not None:
        msg.d = [float(v) for v in D]
    if P is not None:
        msg.p = [float(v) for v in np.asarray(P).ravel()]
    return msg


# ------------------------------------------------------------------------------------------------
# 7: distortion
# ------------------------------------------------------------------------------------------------
def test_mono_undistorts_matched_points_with_camera_info_D(ros_context):
    D = [-0.3, 0.1, 0.0, 0.0, 0.0]
    node = make_node(ros_context, {})
    try:
        node._on_camera_info("left", info(K, D))
        assert node._ensure_tracker(frame(np.zeros((480, 640), np.uint8), 1))
        assert node.tracker.undistort is not None  # before: K only, D ignored
        corner = np.array([[5.0, 5.0]])
        moved = node.tracker.undistort(corner)
        assert np.linalg.norm(moved - corner) > 20  # barrel distortion pulled the corner in by tens of px
    finally:
        node.destroy_node()
    # rectified input: P is the pinhole, D is not applied again
    P = np.c_[K * [[0.9], [0.9], [1.0]], np.zeros(3)]
    node = make_node(ros_context, {"rectified_input": True})
    try:
        node._on_camera_info("left", info(K, D, P))
        assert node._ensure_tracker(frame(np.zeros((480, 640), np.uint8), 1))
        assert node.tracker.undistort is None and np.allclose(node.tracker.K, P[:, :3])
        assert node.undistort_left.R_rect is None or np.allclose(node.undistort_left.R_rect, np.eye(3))
    finally:
        node.destroy_node()
    # one camera of a rectified stereo pair (camera_info R, REP-104): measured in the rectified camera, published in
    # the camera's own frame (its rays; its poses: pose_in_camera_frame with undistort_left.R_rect)
    R = G.so3_exp([0.01, 0.03, -0.02])
    for rectified in (True, False):
        node = make_node(ros_context, {"rectified_input": rectified})
        try:
            msg = info(K, D, P)
            msg.r = [float(v) for v in R.ravel()]
            node._on_camera_info("left", msg)
            assert node._ensure_tracker(frame(np.zeros((480, 640), np.uint8), 1))
            if not rectified:  # a raw image is the camera's own: nothing to turn back
                assert node.undistort_left.R_rect is None
                continue
            np.testing.assert_allclose(node.undistort_left.R_rect, R)
            X = np.array([[0.4, -0.1, 3.0], [-0.6, 0.3, 5.0]])  # camera frame
            x = (X @ R.T) @ P[:, :3].T
            np.testing.assert_allclose(node.undistort_left.normalized(x[:, :2] / x[:, 2:]), X[:, :2] / X[:, 2:],
                                       atol=1e-9)
        finally:
            node.destroy_node()


# ------------------------------------------------------------------------------------------------
# 8: calibration changes, stereo baseline
# ------------------------------------------------------------------------------------------------
def test_new_calibration_resets_the_reference(ros_context):
    from mambaglue_ros.tracking_state import TrackingState

    node = make_node(ros_context, {})
    statuses, = capture(node, "status")
    try:
        node._on_camera_info("left", info(K))
        img = np.zeros((480, 640), np.uint8)
        assert node._ensure_tracker(frame(img, 1))
        node.tracker.reference = object()  # stands for the features of a processed frame
        node._on_camera_info("left", info(K))  # the same calibration again: nothing happens
        assert node._ensure_tracker(frame(img, 2)) and node.tracker.reference is not None
        K2 = K.copy()
        K2[0, 0] = K2[1, 1] = 380.0
        node._on_camera_info("left", info(K2))
        assert node._ensure_tracker(frame(img, 3))
        assert node.tracker.reference is None and np.allclose(node.tracker.K, K2)
        assert [s.state for s in statuses] == [TrackingState.RESET]
        assert "camera_info changed" in statuses[0].reason
        assert not statuses[0].odometry_reset  # ~/odom goes on from its last pose
        assert node.stats.counters["resets"] == 1  # /diagnostics counts every reset, as TrackingStatus.resets does
    finally:
        node.destroy_node()


def test_stereo_rectify_in_the_extraction_stage_and_the_worker(ros_context):
    """stereo_rectify: the extraction stage rectifies a frame before its features are computed ahead, and the worker
    tracks those very images; when the calibration changed in between, the worker remaps the received images with
    the maps of the calibration it tracks with (never the stage's older ones)."""
    D = [-0.1, 0.02, 0.0, 0.0, 0.0]

    def raw_info(R, frame_id, baseline=0.0):
        msg = info(K, D, np.c_[K, [-K[0, 0] * baseline, 0.0, 0.0]], frame_id)
        msg.r = [float(v) for v in R.ravel()]
        return msg

    node = make_node(ros_context, {"mode": "stereo", "stereo_rectify": True})
    try:
        R = G.so3_exp([0.0, 0.02, 0.0])
        node._on_camera_info("left", raw_info(R, "l"))
        node._on_camera_info("right", raw_info(R, "r", 0.1))
        rng = np.random.default_rng(0)
        raw_l, raw_r = (rng.integers(0, 255, (480, 640), dtype=np.uint8) for _ in range(2))
        f = frame(raw_l, 1, raw_r)
        seen = []
        # what the stage extracts ahead (set on the PrefetchingMatcher itself: its setattr goes to the inner matcher)
        object.__setattr__(node.matcher, "prefetch", lambda images, **kw: seen.extend(images))
        node._prefetch(f)
        assert seen[0] is f.image and seen[1] is f.right and f.raw[0] is raw_l and f.raw[1] is raw_r
        np.testing.assert_array_equal(f.image, node._rectifiers["left"](raw_l))
        assert not np.array_equal(f.image, raw_l)
        assert node._ensure_tracker(f) and f.image is seen[0] and f.right is seen[1]  # the features ahead are used
        # a new calibration after the stage's work: the worker remaps the received images with the new maps
        R2 = G.so3_exp([0.0, -0.03, 0.01])
        node._on_camera_info("left", raw_info(R2, "l"))
        node._on_camera_info("right", raw_info(R2, "r", 0.1))
        assert node._ensure_tracker(f) and f.image is not seen[0]
        np.testing.assert_array_equal(f.image, node._rectifiers["left"](raw_l))
        np.testing.assert_array_equal(f.right, node._rectifiers["right"](raw_r))
        np.testing.assert_allclose(node.undistort_left.R_rect, R2)
    finally:
        node.destroy_node()


def test_image_topic_names_against_the_rectification_settings(ros_context):
    """A raw stereo pair remapped onto the node without stereo_rectify (or a mono image_rect without
    rectified_input) is named at startup, from the topics as remapped."""
    from rclpy.parameter import Parameter

    from mambaglue_ros.ros.node import MatcherNode

    remaps = ["--ros-args", "-r", "left/image_rect:=/cam0/image_raw", "-r", "right/image_rect:=/cam1/image_raw"]
    for rectify, expected in ((False, ["left", "right"]), (True, [])):
        node = MatcherNode(context=ros_context, cli_args=remaps, parameter_overrides=[
            Parameter(k, value=v) for k, v in {"matcher": "orb", "mode": "stereo", "stereo_rectify": rectify}.items()])
        try:
            warnings = node._input_topic_warnings()
            assert [w.split()[0] for w in warnings] == expected, warnings
            assert all("/cam" in w and "set stereo_rectify: true" in w for w in warnings)
        finally:
            node.destroy_node()
    node = MatcherNode(context=ros_context, cli_args=["--ros-args", "-r", "image:=/cam/image_rect"],
                       parameter_overrides=[Parameter("matcher", value="orb")])
    try:
        assert "set rectified_input: true" in node._input_topic_warnings()[0]
    finally:
        node.destroy_node()
    # the node's own names are not judged (mambaglue replay publishes raw pairs on left/image_rect)
    node = MatcherNode(context=ros_context, parameter_overrides=[
        Parameter(k, value=v) for k, v in {"matcher": "orb", "mode": "stereo", "stereo_rectify": True}.items()])
    try:
        assert node._input_topic_warnings() == []
    finally:
        node.destroy_node()
    # transport compressed with the raw name remapped (`ros2 run ... -r image:=/cam/image_raw`): rcl does not move
    # image/compressed with it, so the node would listen on /image/compressed and get nothing
    node = MatcherNode(context=ros_context, cli_args=["--ros-args", "-r", "image:=/cam/image_rect"],
                       parameter_overrides=[Parameter(k, value=v) for k, v in {"matcher": "orb",
                                                                               "transport": "compressed"}.items()])
    try:
        (warning,) = node._input_topic_warnings()
        assert "remap image/compressed:=/cam/image_rect/compressed instead" in warning
    finally:
        node.destroy_node()
    node = MatcherNode(context=ros_context, parameter_overrides=[
        Parameter(k, value=v) for k, v in {"matcher": "orb", "publish_tf": True}.items()])
    try:
        (warning,) = node._input_topic_warnings()  # mono odometry is not metric: a TF in it is named
        assert warning.startswith("publish_tf in mono") and "REP-105" in warning
    finally:
        node.destroy_node()
    node = MatcherNode(context=ros_context, parameter_overrides=[Parameter("matcher", value="orb")])
    try:  # publish_tf turned on at runtime where no broadcaster could be made: refused, not silently nothing
        node._tf = None  # (as without tf2_ros)
        result = node.set_parameters([Parameter("publish_tf", value=True)])[0]
        assert not result.successful and "tf2_ros is not installed" in result.reason
        node._tf = object()  # a broadcaster: the change is taken
        assert node.set_parameters([Parameter("publish_tf", value=True)])[0].successful
        node._tf = None
    finally:
        node.destroy_node()


def test_a_latched_camera_info_reaches_a_transient_local_subscription(ros_context):
    """A calibration published once, before the node starts, on a transient_local (latched) publisher reaches the
    node when its params ask for camera_info durability transient_local (qos_overrides); the default stays volatile,
    which camera drivers' volatile publishers need."""
    import rclpy
    from rclpy.parameter import Parameter
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo

    from mambaglue_ros.ros.node import MatcherNode

    io = rclpy.create_node("latched_info", context=ros_context)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    pub = io.create_publisher(CameraInfo, "camera_info", latched)
    pub.publish(info(K))  # before any subscription exists
    node = MatcherNode(context=ros_context, parameter_overrides=[
        Parameter("matcher", value="orb"),
        Parameter("qos_overrides./camera_info.subscription.durability", value="transient_local"),
        Parameter("qos_overrides./camera_info.subscription.reliability", value="reliable")])
    default = make_node(ros_context, {})
    executor = spin(ros_context, io, node)
    try:
        assert wait_for(lambda: "left" in node.camera, timeout=20)  # the latched sample, delivered on matching
        info_sub = next(s for s in default.subscriptions if s.topic_name == "/camera_info")
        assert info_sub.qos_profile.durability == DurabilityPolicy.VOLATILE
    finally:
        executor.shutdown()
        for n in (node, default, io):
            n.destroy_node()


def test_stereo_baseline_uses_both_Tx(ros_context):
    node = make_node(ros_context, {"mode": "stereo"})
    try:
        P_left = np.c_[K, [-400.0 * 0.05, 0.0, 0.0]]   # a rig referenced 5 cm left of the left camera
        P_right = np.c_[K, [-400.0 * 0.25, 0.0, 0.0]]
        node._on_camera_info("left", info(K, P=P_left))
        node._on_camera_info("right", info(K, P=P_right, frame_id="r"))
        img = np.zeros((480, 640), np.uint8)
        assert node._ensure_tracker(frame(img, 1, img))
        assert node.tracker.T_left_right[0, 3] == pytest.approx(0.20)  # before: 0.25 (right Tx only)
    finally:
        node.destroy_node()


# ------------------------------------------------------------------------------------------------
# 9: parameters
# ------------------------------------------------------------------------------------------------
def stop_worker(node) -> None:
    """Stop the node's worker thread, so a test drives ``_process`` / ``_apply_pending`` itself, in-process."""
    node._running = False
    node.slot.close()
    node.worker.join(timeout=10)


def test_compressed_frames_are_decoded_only_once_taken(ros_context, monkeypatch):
    """transport compressed: the callbacks queue messages whose headers pass the cheap checks; the stage that takes a
    frame decodes it, so frames the slot drops (latest wins) are never decoded. Junk (no readable header) and a stereo
    pair of two sizes are decoded, refused and counted in the callback, as before, and never take a frame's place; a
    frame with a good header whose data does not decode is counted and warned once when taken."""
    import cv2
    from sensor_msgs.msg import CompressedImage

    from mambaglue_ros.runtime import FrameSlot

    def compressed(width: int, height: int, stamp_ns: int, kind: str = "jpeg") -> CompressedImage:
        ext = ".png" if kind == "truncated png" else ".jpg"
        pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
        data = cv2.imencode(ext, pixels)[1].tobytes()
        data = {"jpeg": data, "junk": b"junk", "truncated png": data[:len(data) // 2]}[kind]
        msg = CompressedImage(format="rgb8; jpeg compressed bgr8", data=data)
        msg.header.stamp = C.ns_to_stamp(stamp_ns)
        return msg

    decoded = []
    real = C.compressed_to_numpy
    monkeypatch.setattr(C, "compressed_to_numpy", lambda msg, **kw: decoded.append(msg) or real(msg, **kw))
    for mode in ("mono", "stereo"):
        node = make_node(ros_context, {"transport": "compressed", "mode": mode})

        def send(stamp_ns: int, kind: str = "jpeg", right_width: int = 320) -> None:
            if mode == "mono":
                node._on_mono_image(compressed(320, 240, stamp_ns, kind))
            else:
                node._on_stereo_pair(compressed(320, 240, stamp_ns, kind), compressed(right_width, 240, stamp_ns, kind))

        try:
            stop_worker(node)
            node.stage.close()  # (the extraction stage's thread reads node.slot)
            node.slot = FrameSlot(1)  # nothing takes frames from it: this test does
            for i in range(3):
                send((i + 1) * 10**8)
            assert decoded == [] and node.stats.counters["frames_dropped"] == 2
            taken = node.slot.get(timeout=1)
            halves = 1 if mode == "mono" else 2
            assert node._decode_frame(taken) and taken.image.shape == (240, 320, 3) and len(decoded) == halves
            assert (taken.right is None) == (mode == "mono") and taken.compressed is None
            assert node._decode_frame(taken) and len(decoded) == halves  # once
            # junk, or halves of two sizes: refused in the callback, nothing queued
            send(9 * 10**8, "junk") if mode == "mono" else send(9 * 10**8, right_width=160)
            assert node.stats.counters["bad_input"] == 1 and len(node.slot) == 0
            # a good header over data that does not decode: queued, then bad input once it is taken
            send(10 * 10**8, "truncated png")
            taken = node.slot.get(timeout=1)
            assert taken is not None and taken.compressed is not None
            assert not node._decode_frame(taken) and not node._decode_frame(taken)
            assert node.stats.counters["bad_input"] == 1 + halves and taken.image is None  # (each half, as before)
            decoded.clear()
        finally:
            node.destroy_node()


def test_a_reset_still_queued_is_answered_as_accepted(ros_context, monkeypatch):
    """The worker applies resets between frames. A service that timed out waiting for it answers success with
    "queued" (the reset comes before the next frame): a caller told it failed would retry and reset twice."""
    from std_srvs.srv import Trigger

    from mambaglue_ros.srv import SetPose

    node = make_node(ros_context, {})
    try:
        for done, text in ((True, "odometry reset"), (False, "reset queued")):
            monkeypatch.setattr(node, "_request_reset", lambda *args, done=done, **kwargs: done)
            answer = node._on_reset_service(Trigger.Request(), Trigger.Response())
            assert answer.success and answer.message.startswith(text), answer
        request = SetPose.Request()
        request.pose.pose.pose.orientation.w = 1.0
        answer = node._on_set_pose_service(request, SetPose.Response())
        assert answer.success and answer.message.startswith("set_pose queued"), answer
        request.pose.header.frame_id = "map"  # refused: not the odometry frame
        answer = node._on_set_pose_service(request, SetPose.Response())
        assert not answer.success and "the odometry frame is 'odom'" in answer.message, answer
    finally:
        node.destroy_node()


def test_changes_are_validated_against_pending_ones(ros_context):
    from rclpy.parameter import Parameter

    node = make_node(ros_context, {})
    try:
        stop_worker(node)  # keep the worker from applying the first change in between
        assert node.set_parameters([Parameter("alpha", value=0.85)])[0].successful
        result = node.set_parameters([Parameter("alpha_min", value=0.9)])[0]
        assert not result.successful and "alpha_min <= alpha" in result.reason
        node._apply_pending()
        assert node.p["alpha"] == 0.85 and node.p["alpha_min"] == 0.8
    finally:
        node.destroy_node()


def test_values_the_node_changes_itself_show_as_parameters(ros_context):
    node = make_node(ros_context, {"max_keypoints": 512, "min_keypoints": 512, "diagnostics_period_s": 0.1})
    executor = spin(ros_context, node)
    try:
        node._shrink_budget()  # what an out-of-memory error does
        assert node.matcher.max_keypoints == 256
        # both, in one wait: the executor thread writes them, and a reader may come between two parameters
        assert wait_for(lambda: (node.get_parameter("max_keypoints").value,
                                 node.get_parameter("min_keypoints").value) == (256, 256), timeout=10)
        # and they are what later changes are checked against
        from rclpy.parameter import Parameter

        assert not node.set_parameters([Parameter("min_keypoints", value=300)])[0].successful
    finally:
        executor.shutdown()
        node.destroy_node()


def test_rate_controller_values_show_as_parameters(ros_context):
    from rclpy.parameter import Parameter

    node = make_node(ros_context, {"target_rate_hz": 5.0, "diagnostics_period_s": 0.1, "max_keypoints": 1024})
    executor = spin(ros_context, node)
    try:
        # what the worker does after the controller moved alpha and the keypoint budget
        node.matcher.alpha, node.matcher.max_keypoints = 0.83, 512
        node._show_controller_values()
        # both, in one wait (a fresh clone's CI once read max_keypoints between the two writes)
        assert wait_for(lambda: (node.get_parameter("alpha").value,
                                 node.get_parameter("max_keypoints").value) == (0.83, 512), timeout=10)
        assert node.p["alpha"] == 0.83
        # the controller's alpha is not the user's: bounds narrowed past it move it to the nearest new bound
        assert node.set_parameters([Parameter("alpha_min", value=0.85)])[0].successful
        node._apply_pending()  # what the worker does between frames
        assert node.p["alpha"] == node.matcher.alpha == node.controller.config["alpha_init"] == 0.85
        assert wait_for(lambda: node.get_parameter("alpha").value == 0.85, timeout=10)
        # bounds that cross are still refused, and nothing moves
        result = node.set_parameters([Parameter("alpha_max", value=0.8)])[0]
        assert not result.successful and "alpha_min <= alpha <= alpha_max" in result.reason
        assert node.p["alpha"] == 0.85 and "alpha" not in node._pending
        # the shown budget is not the ceiling: a controller rebuilt by another change can grow back to 1024
        assert node.set_parameters([Parameter("target_rate_hz", value=4.0)])[0].successful
        node._apply_pending()  # what the worker does between frames
        assert node.controller.config["max_keypoints"] == 1024
    finally:
        executor.shutdown()
        node.destroy_node()


# ------------------------------------------------------------------------------------------------
# 10: encodings
# ------------------------------------------------------------------------------------------------
def test_mono16_shift_parameter_and_bayer_input(ros_context):
    from sensor_msgs.msg import Image

    node = make_node(ros_context, {"mono16_shift": 4})
    try:
        twelve_bit = (np.arange(64 * 80, dtype=np.uint16).reshape(64, 80) % 4096)
        msg = Image(height=64, width=80, encoding="mono16", step=160, data=twelve_bit.astype("<u2").tobytes())
        out = node._decode(msg)
        np.testing.assert_array_equal(out, np.minimum(twelve_bit >> 4, 255))  # before: >> 8, nearly black
        y, x = np.mgrid[0:64, 0:80]
        rgb = np.stack([x * 3, y * 3, 255 - x * 2], -1).astype(np.uint8)
        mosaic = rgb[..., 1].copy()
        mosaic[0::2, 0::2] = rgb[0::2, 0::2, 0]
        mosaic[1::2, 1::2] = rgb[1::2, 1::2, 2]
        out = node._decode(Image(height=64, width=80, encoding="bayer_rggb8", step=80, data=mosaic.tobytes()))
        assert out is not None and out.shape == (64, 80, 3)  # before: refused
        np.testing.assert_array_equal(out[2:-2, 2:-2], rgb[2:-2, 2:-2])
        import cv2

        for encoding, code in (("yuv422", cv2.COLOR_RGB2YUV_UYVY), ("yuv422_yuy2", cv2.COLOR_RGB2YUV_YUY2)):
            packed = cv2.cvtColor(rgb, code)  # (H, W, 2)
            out = node._decode(Image(height=64, width=80, encoding=encoding, step=160, data=packed.tobytes()))
            assert out is not None and np.abs(out.astype(int) - rgb).max() <= 4, encoding  # 4:2:2 chroma rounding
    finally:
        node.destroy_node()


# ------------------------------------------------------------------------------------------------
# 11: stereo RANSAC threshold, stamps jumping back, diagnostics under a paused /clock
# ------------------------------------------------------------------------------------------------
def test_stereo_pnp_threshold_follows_ransac_px(ros_context):
    from rclpy.parameter import Parameter

    node = make_node(ros_context, {"mode": "stereo", "ransac_px": 3.0})
    try:
        node._on_camera_info("left", info(K))
        node._on_camera_info("right", info(K, P=np.c_[K, [-40.0, 0.0, 0.0]], frame_id="r"))
        img = np.zeros((480, 640), np.uint8)
        assert node._ensure_tracker(frame(img, 1, img))
        assert node.tracker.config["pnp_ransac_px"] == 3.0  # before: always 2.0
        node.set_parameters([Parameter("ransac_px", value=1.5)])
        node._apply_pending()
        assert node.tracker.config["pnp_ransac_px"] == 1.5
    finally:
        node.destroy_node()


def test_diagnostics_keep_coming_while_sim_time_is_paused(ros_context):
    from diagnostic_msgs.msg import DiagnosticArray
    import rclpy

    # use_sim_time with no /clock at all: ROS time stays at 0, as with a paused bag
    node = make_node(ros_context, {"use_sim_time": True, "diagnostics_period_s": 0.2})
    io = rclpy.create_node("diag_listener", context=ros_context)
    got = []
    sub = io.create_subscription(DiagnosticArray, "/diagnostics", got.append, 10)
    executor = spin(ros_context, node, io)
    try:
        assert wait_for(lambda: sub.get_publisher_count() > 0, timeout=15)
        assert wait_for(lambda: len(got) >= 2, timeout=10)  # before: a ROS-time timer never fired
        # the name as diagnostic_updater writes it (no leading slash), so aggregator rules on the node name match
        assert got[0].status[0].name == "mambaglue_matcher: matcher"
    finally:
        executor.shutdown()
        node.destroy_node()
        io.destroy_node()


# ------------------------------------------------------------------------------------------------
# 12: QoS overrides
# ------------------------------------------------------------------------------------------------
def test_misspelt_parameter_is_reported_and_the_node_runs(ros_context):
    node = make_node(ros_context, {"max_keypoint": 1024, "qos_overrides./image.subscription.depth": 3})
    try:
        assert node.parameter_warnings == [
            "unknown parameter 'max_keypoint' ignored (this node does not declare it); did you mean 'max_keypoints'?"]
        assert node.get_parameter("max_keypoints").value == 512 and node.worker.is_alive()
    finally:
        node.destroy_node()


def test_qos_overrides_apply_to_the_image_subscription(ros_context):
    from rclpy.qos import ReliabilityPolicy

    node = make_node(ros_context, {"qos_reliability": "best_effort",
                                   "qos_overrides./image.subscription.reliability": "reliable",
                                   "qos_overrides./image.subscription.depth": 7})
    try:
        sub = next(s for s in node.subscriptions if s.topic_name == "/image")
        assert sub.qos_profile.reliability == ReliabilityPolicy.RELIABLE  # before: ignored
        assert sub.qos_profile.depth == 7
        assert node.get_parameter("qos_overrides./image.subscription.reliability").value == "reliable"
        # and only to it: camera_info keeps the node's profile (before: the override leaked into every subscription,
        # and a best-effort camera_info publisher no longer matched)
        info = next(s for s in node.subscriptions if s.topic_name == "/camera_info")
        assert info.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT and info.qos_profile.depth != 7
    finally:
        node.destroy_node()


# ------------------------------------------------------------------------------------------------
# the done-when loopback: tracks, status, reset, set_pose, no NaN, covariance vs Monte Carlo
# ------------------------------------------------------------------------------------------------
W, H = 320, 240
N_BEFORE, N_GAP, N_AFTER = 11, 3, 3  # frames before the occlusion, black frames, frames after it
INITIAL_POSE = [1.0, 2.0, 0.0, 0.0, 0.0, 0.38268343236508984, 0.9238795325112867]  # 45 deg yaw


@pytest.fixture(scope="module")
def stereo_frames():
    from mambaglue_ros.synthetic import make_sequence

    n = N_BEFORE + N_GAP + N_AFTER + 4
    seq = make_sequence(n_frames=n, rate_hz=10.0, width=W, height=H, stereo=True, trajectory="forward", seed=2,
                        baseline_m=0.2, speed_mps=0.5)
    return seq, [seq.frame(i) for i in range(n)]


def _so3_exp_batch(w: np.ndarray) -> np.ndarray:
    theta = np.linalg.norm(w, axis=1)[:, None, None]
    Wx = np.zeros((len(w), 3, 3))
    Wx[:, 0, 1], Wx[:, 0, 2], Wx[:, 1, 2] = -w[:, 2], w[:, 1], -w[:, 0]
    Wx -= Wx.transpose(0, 2, 1)
    safe = np.where(theta < 1e-12, 1.0, theta)
    a = np.where(theta < 1e-12, 1.0, np.sin(safe) / safe)
    b = np.where(theta < 1e-12, 0.5, (1 - np.cos(safe)) / safe**2)
    return np.eye(3) + a * Wx + b * Wx @ Wx


def _perturb_batch(T: np.ndarray, d: np.ndarray) -> np.ndarray:
    out = np.tile(np.eye(4), (len(d), 1, 1))
    out[:, :3, :3] = _so3_exp_batch(d[:, 3:]) @ T[:3, :3]
    out[:, :3, 3] = T[:3, 3] + d[:, :3]
    return out


def _error_batch(S: np.ndarray, T: np.ndarray) -> np.ndarray:
    dR = S[:, :3, :3] @ T[:3, :3].T
    rot = np.array([G.so3_log(R) for R in dR])
    return np.c_[S[:, :3, 3] - T[:3, 3], rot]


def pose_of(msg_pose) -> np.ndarray:
    q, t = msg_pose.orientation, msg_pose.position
    return G.make_transform(G.quaternion_to_matrix(np.array([q.x, q.y, q.z, q.w])), [t.x, t.y, t.z])


def monte_carlo_odometry(relative, T0, n=4000, seed=0):
    """Compose the published relative poses (body frame) by sampling: {stamp: (nominal T, sampled cov)}.

    relative: [(stamp, reference_stamp, T_ref_cur, cov)] in order. A reference without a pose of its
    own (tracking failed there) sits where the odometry was: the last sampled pose.
    """
    rng = np.random.default_rng(seed)
    samples, nominal, out = {}, {}, {}
    current_S, current_T = np.tile(T0, (n, 1, 1)), T0
    for stamp, ref, T, cov in relative:
        base_S, base_T = samples.get(ref, current_S), nominal.get(ref, current_T)
        d = rng.multivariate_normal(np.zeros(6), cov, size=n)
        S = base_S @ _perturb_batch(T, d)
        Tn = base_T @ T
        samples[stamp], nominal[stamp] = S, Tn
        current_S, current_T = S, Tn
        out[stamp] = (Tn, np.cov(_error_batch(S, Tn).T))
    return out


class BackendOutputs:
    """Everything a back end would read from the node, kept as it arrives."""

    def __init__(self, io, ns: str = "/mambaglue_matcher") -> None:
        from nav_msgs.msg import Odometry
        from sensor_msgs.msg import PointCloud

        from mambaglue_ros.msg import RelativePose, TrackingStatus, Tracks

        self.lock = threading.Lock()
        self.data: dict[str, list] = {k: [] for k in ("tracks", "cloud", "status", "relative", "odom")}
        kinds = {"tracks": (Tracks, "tracks"), "cloud": (PointCloud, "tracks_cloud"),
                 "status": (TrackingStatus, "status"), "relative": (RelativePose, "relative_pose_ref"),
                 "odom": (Odometry, "odom")}
        self.subs = [io.create_subscription(t, f"{ns}/{topic}", self._keep(key), 100)
                     for key, (t, topic) in kinds.items()]

    def _keep(self, key):
        def cb(msg):
            with self.lock:
                self.data[key].append(msg)
        return cb

    def get(self, key):
        with self.lock:
            return list(self.data[key])

    def count(self, key):
        with self.lock:
            return len(self.data[key])


def finite_everywhere(out: BackendOutputs) -> None:
    for t in out.get("tracks"):
        for field in (t.pixels, t.normalized, t.velocity, t.normalized_velocity):
            assert np.all(np.isfinite(np.asarray(field)))
        n = len(t.ids)
        assert len(t.camera) == len(t.age) == n and len(t.pixels) == len(t.normalized) == 2 * n
    for c in out.get("cloud"):
        assert all(np.isfinite([p.x, p.y, p.z]).all() for p in c.points)
        assert [ch.name for ch in c.channels] == ["id", "u", "v", "velocity_x", "velocity_y"]
        assert all(len(ch.values) == len(c.points) and np.all(np.isfinite(ch.values)) for ch in c.channels)
    for r in out.get("relative"):
        for pose in (r.pose, r.pose_base):
            values = [pose.pose.position.x, pose.pose.position.y, pose.pose.position.z, pose.pose.orientation.w,
                      *pose.covariance]
            assert np.all(np.isfinite(values))
    for o in out.get("odom"):
        tw = o.twist.twist
        values = [o.pose.pose.position.x, o.pose.pose.position.y, o.pose.pose.position.z, o.pose.pose.orientation.x,
                  o.pose.pose.orientation.w, tw.linear.x, tw.linear.y, tw.angular.z, *o.pose.covariance,
                  *o.twist.covariance]
        assert np.all(np.isfinite(values))


def test_backend_loopback_occlusion_reset_and_set_pose(ros_context, stereo_frames):
    import rclpy
    from sensor_msgs.msg import CameraInfo, Image
    from std_srvs.srv import Trigger

    from mambaglue_ros.msg import TrackingStatus as TS
    from mambaglue_ros.srv import SetPose

    seq, frames = stereo_frames
    node = make_node(ros_context, {"matcher": "mambaglue", "mode": "stereo", "qos_reliability": "reliable",
                                   "max_keypoints": 512, "publish_tracks_cloud": True,
                                   "publish_null_when_lost": True, "initial_pose": INITIAL_POSE,
                                   "camera_to_base": [0.1, 0.0, 0.2, -0.5, 0.5, -0.5, 0.5]})
    io = rclpy.create_node("backend_io", context=ros_context)
    out = BackendOutputs(io)
    left = io.create_publisher(Image, "left/image_rect", 10)
    right = io.create_publisher(Image, "right/image_rect", 10)
    linfo = io.create_publisher(CameraInfo, "left/camera_info", 10)
    rinfo = io.create_publisher(CameraInfo, "right/camera_info", 10)
    reset = io.create_client(Trigger, "/mambaglue_matcher/reset")
    set_pose = io.create_client(SetPose, "/mambaglue_matcher/set_pose")
    executor = spin(ros_context, node, io)
    K_ = frames[0].K
    black = np.zeros((H, W, 3), np.uint8)
    sent = [0]

    def send(f, dark: bool = False) -> None:
        """One stereo frame; returns once the node processed it and its status arrived."""
        i = sent[0]
        linfo.publish(info(K_, frame_id="left_optical", size=(W, H)))
        rinfo.publish(info(K_, P=np.c_[K_, [-K_[0, 0] * seq.rig.baseline_m, 0, 0]], frame_id="right_optical",
                           size=(W, H)))
        left.publish(image_msg(black if dark else f.left, f.stamp_ns, "left_optical"))
        right.publish(image_msg(black if dark else f.right, f.stamp_ns, "right_optical"))
        assert wait_for(lambda: node.stats.counters["frames_processed"] > i, timeout=60), f"frame {i}"
        sent[0] += 1
        assert wait_for(lambda: sum(s.state != TS.RESET for s in out.get("status")) >= sent[0], timeout=10)

    def call(client, request):
        future = client.call_async(request)
        assert wait_for(future.done, timeout=30)
        return future.result()

    try:
        wait_for_subscribers(left, right, linfo, rinfo)
        assert wait_for(lambda: all(s.get_publisher_count() > 0 for s in out.subs), timeout=15)
        assert reset.wait_for_service(timeout_sec=15) and set_pose.wait_for_service(timeout_sec=15)
        linfo.publish(info(K_, frame_id="left_optical", size=(W, H)))
        rinfo.publish(info(K_, P=np.c_[K_, [-K_[0, 0] * seq.rig.baseline_m, 0, 0]], frame_id="right_optical",
                           size=(W, H)))
        assert wait_for(lambda: {"left", "right"} <= set(node.camera), timeout=10)

        k = 0
        for _ in range(N_BEFORE):
            send(frames[k]); k += 1
        for _ in range(N_GAP):  # occlusion: the camera moves on, the images are black
            send(frames[k], dark=True); k += 1
        for _ in range(N_AFTER):
            send(frames[k]); k += 1
        before_reset = list(out.get("status"))
        states = [s.state for s in before_reset]
        why = [(s.state, s.reason) for s in before_reset]
        assert states[0] == TS.INITIALIZING and set(states[1:N_BEFORE]) == {TS.OK}, why
        assert states[N_BEFORE:N_BEFORE + N_GAP] == [TS.LOST] * N_GAP, why
        assert TS.OK in states[N_BEFORE + N_GAP:], why  # tracking came back
        # no target rate: the knobs the frames were matched with are the parameters (stereo: no hypotheses)
        knobs = {(round(s.alpha, 6), s.max_keypoints, s.pose_hypotheses, s.rate_control) for s in before_reset}
        assert knobs == {(round(float(np.float32(node.p["alpha"])), 6), 512, 0, "fixed")}, knobs
        lost = before_reset[N_BEFORE + N_GAP - 1]
        assert lost.frames_since_last_pose == N_GAP and "too few" in lost.reason
        assert C.stamp_to_ns(lost.last_pose_stamp) == frames[N_BEFORE - 1].stamp_ns

        # --- tracks: one message per frame, a static scene point keeps its id over 5 frames (forward motion at
        # 320x240: points leave the view, and a track ends at a match the pose does not explain; 15 of 512 did)
        tracks = out.get("tracks")
        assert wait_for(lambda: out.count("tracks") >= sent[0], timeout=10)
        tracks = out.get("tracks")[:N_BEFORE]
        first = tracks[0]
        persistent = set(np.asarray(first.ids)[np.asarray(first.camera) == 0].tolist())
        for t in tracks[1:5]:
            persistent &= set(np.asarray(t.ids)[np.asarray(t.camera) == 0].tolist())
        assert len(persistent) >= 5, len(persistent)
        f0 = frames[0]
        for tid in sorted(persistent)[:20]:  # the same scene point: back-project once, re-project everywhere
            i0 = list(first.ids).index(tid)
            u0 = np.asarray(first.pixels).reshape(-1, 2)[i0]
            z = f0.depth[int(round(u0[1])), int(round(u0[0]))]
            X_world = f0.T_world_left @ np.r_[np.linalg.inv(K_) @ np.r_[u0, 1.0] * z, 1.0]
            for j, t in enumerate(tracks[1:5], start=1):
                X = G.invert(frames[j].T_world_left) @ X_world
                u = (K_ @ X[:3])[:2] / X[2]
                ij = list(t.ids).index(tid)
                # re-detected keypoints wander by a pixel or two; another scene point would be far off
                assert np.linalg.norm(np.asarray(t.pixels).reshape(-1, 2)[ij] - u) < 5.0, (tid, j)
                assert t.age[ij] == j + 1
        right_ids = set(np.asarray(tracks[5].ids)[np.asarray(tracks[5].camera) == 1].tolist())
        assert len(right_ids) > 20 and right_ids <= set(np.asarray(tracks[5].ids).tolist())
        assert out.count("cloud") >= N_BEFORE

        # --- odometry covariance against Monte Carlo over the segment before the reset
        assert wait_for(lambda: out.count("relative") >= N_BEFORE - 1, timeout=10)
        relative = [(C.stamp_to_ns(r.header.stamp), C.stamp_to_ns(r.reference_stamp), pose_of(r.pose_base.pose),
                     np.asarray(r.pose_base.covariance).reshape(6, 6)) for r in out.get("relative")]
        T0 = C.pose_msg_to_matrix(SimpleNamespace(position=SimpleNamespace(x=1.0, y=2.0, z=0.0),
                                                  orientation=SimpleNamespace(x=0.0, y=0.0, z=INITIAL_POSE[5],
                                                                              w=INITIAL_POSE[6])))
        predicted = monte_carlo_odometry(relative, T0)
        odoms = {C.stamp_to_ns(o.header.stamp): o for o in out.get("odom") if o.pose.pose.orientation.w != 0}
        traces = []
        for stamp, (Tn, cov_mc) in predicted.items():
            o = odoms[stamp]
            np.testing.assert_allclose(pose_of(o.pose.pose), Tn, atol=1e-6)
            cov = np.asarray(o.pose.covariance).reshape(6, 6)
            scale = np.sqrt(np.outer(np.diag(cov_mc), np.diag(cov_mc)))
            assert np.all(np.abs(cov - cov_mc) <= 0.1 * scale + 1e-15), (stamp, cov, cov_mc)
            traces.append(np.trace(cov[:3, :3]))
        assert len(traces) >= N_BEFORE - 1 + N_AFTER - 1
        assert all(b > a for a, b in zip(traces, traces[1:])), traces  # uncertainty only grows
        # while lost: rtabmap's null odometry, nothing else
        null = [o for o in out.get("odom") if o.pose.pose.orientation.w == 0]
        assert len(null) == N_GAP and all(o.pose.covariance[0] >= 1e6 for o in null)

        # --- ~/reset: RESET, then the odometry starts again at initial_pose
        response = call(reset, Trigger.Request())
        assert response.success, response.message
        assert wait_for(lambda: out.get("status")[-1].state == TS.RESET, timeout=10)
        assert out.get("status")[-1].reason == "reset service"
        assert out.get("status")[-1].odometry_reset  # ~/odom starts again at initial_pose
        n_odom = len(odoms)
        send(frames[k]); k += 1
        send(frames[k]); k += 1
        assert [s.state for s in out.get("status")[-2:]] == [TS.INITIALIZING, TS.OK]
        real_odom = lambda: [o for o in out.get("odom") if o.pose.pose.orientation.w != 0]  # noqa: E731
        assert wait_for(lambda: len(real_odom()) > n_odom, timeout=10)
        after = out.get("odom")[-1]
        moved = G.invert(T0) @ pose_of(after.pose.pose)
        assert np.linalg.norm(moved[:3, 3]) < 0.15  # one frame (5 cm) from initial_pose, not from before
        assert after.pose.covariance[0] < 1e-3
        assert out.get("tracks")[-2].reference_stamp.sec == 0  # every track new after the reset

        # --- ~/set_pose: RESET, the odometry continues from the given pose with its covariance
        request = SetPose.Request()
        request.pose.header.frame_id = "odom"
        request.pose.pose.pose.position.x = -3.0
        request.pose.pose.pose.orientation.w = 1.0
        request.pose.pose.covariance = (np.eye(6) * 0.01).ravel()
        assert call(set_pose, request).success
        assert out.get("status")[-1].reason == "set_pose" or wait_for(
            lambda: out.get("status")[-1].reason == "set_pose", timeout=10)
        assert out.get("status")[-1].odometry_reset
        bad = SetPose.Request()
        bad.pose.header.frame_id = "map"
        bad.pose.pose.pose.orientation.w = 1.0
        answer = call(set_pose, bad)
        assert not answer.success and "odometry frame is 'odom'" in answer.message
        send(frames[k]); k += 1
        send(frames[k]); k += 1
        assert wait_for(lambda: out.get("odom")[-1].pose.pose.position.x < -2.5, timeout=10)
        last = out.get("odom")[-1]
        assert abs(last.pose.pose.position.x + 3.0) < 0.15 and last.pose.covariance[0] >= 0.01
        finite_everywhere(out)
        assert node.worker.is_alive()
    finally:
        executor.shutdown()
        node.destroy_node()
        io.destroy_node()


def test_stamp_jump_back_says_reset_and_keeps_the_odometry_pose(ros_context):
    from mambaglue_ros.synthetic import make_sequence
    from mambaglue_ros.tracking_state import TrackingState

    seq = make_sequence(n_frames=4, rate_hz=5.0, stereo=False, trajectory="orbit", seed=1, speed_mps=1.0)
    f = [seq.frame(i) for i in range(4)]
    node = make_node(ros_context, {})
    odom, status = capture(node, "odom", "status")
    try:
        stop_worker(node)
        node._on_camera_info("left", info(f[0].K))
        node._process(frame(f[0].left, f[0].stamp_ns))
        # the first frame is where the odometry starts (initial_pose): ~/odom there, twist unknown
        assert len(odom) == 1 and np.allclose(pose_of(odom[0].pose.pose), np.eye(4))
        assert odom[0].twist.covariance[0] >= 1e6 and C.stamp_to_ns(odom[0].header.stamp) == f[0].stamp_ns
        node._process(frame(f[1].left, f[1].stamp_ns))
        assert len(odom) == 2
        before = pose_of(odom[-1].pose.pose)
        back = f[1].stamp_ns - 5 * 10**9  # a bag loop
        node._process(frame(f[2].left, back))
        resets = [s for s in status if s.state == TrackingState.RESET]
        assert len(resets) == 1 and "stamp jumped back 5.0 s" in resets[0].reason  # before: only a log line
        assert not resets[0].odometry_reset  # the odometry goes on (below): a back end must not read a jump
        assert len(odom) == 3 and np.allclose(pose_of(odom[2].pose.pose), before)  # the new origin: the kept pose
        node._process(frame(f[3].left, back + 400_000_000))  # a frame was lost upstream: two periods
        assert len(odom) == 4, [s.reason for s in status]
        after = pose_of(odom[-1].pose.pose)
        # continues from the last pose, not from identity, and in the same unit: the speed before the jump (one unit
        # per period) over two periods; before, the reset made this step the new unit (1.0), halving every later one
        assert np.linalg.norm(after[:3, 3] - before[:3, 3]) == pytest.approx(2.0, abs=1e-6)
        assert np.linalg.norm(after[:3, 3]) > 1.2
    finally:
        node.destroy_node()


def test_the_first_frame_after_set_pose_publishes_that_pose(ros_context):
    """~/set_pose (and ~/reset): the next frame is the new origin, so ~/odom says the set pose and covariance at
    that frame (before, nothing until a second frame: a back end saw identity plus a step, never the reset)."""
    from scipy.spatial.transform import Rotation

    from mambaglue_ros.synthetic import make_sequence

    seq = make_sequence(n_frames=4, rate_hz=5.0, stereo=False, trajectory="orbit", seed=1, speed_mps=1.0)
    f = [seq.frame(i) for i in range(4)]
    node = make_node(ros_context, {})
    odom, = capture(node, "odom")
    T_set = np.eye(4)
    T_set[:3, :3], T_set[:3, 3] = Rotation.from_euler("z", 30, degrees=True).as_matrix(), (4.0, -2.0, 0.5)
    cov_set = np.diag([0.1, 0.1, 0.2, 0.01, 0.01, 0.03])
    try:
        stop_worker(node)
        node._on_camera_info("left", info(f[0].K))
        for fr in f[:2]:
            node._process(frame(fr.left, fr.stamp_ns))
        assert node._request_reset(T_set, cov_set, "set_pose")
        node._process(frame(f[2].left, f[2].stamp_ns))
        assert len(odom) == 3 and C.stamp_to_ns(odom[2].header.stamp) == f[2].stamp_ns
        assert np.allclose(pose_of(odom[2].pose.pose), T_set) and np.allclose(np.reshape(odom[2].pose.covariance,
                                                                                         (6, 6)), cov_set)
        node._process(frame(f[3].left, f[3].stamp_ns))
        assert len(odom) == 4 and np.linalg.norm(pose_of(odom[3].pose.pose)[:3, 3] - T_set[:3, 3]) == \
            pytest.approx(1.0, abs=1e-6)  # one unit-length mono step from the set pose
    finally:
        node.destroy_node()


def test_the_origin_is_published_once_per_reset(ros_context):
    """Frames that find no pose before the first one (here: unrelated scenes, each made the reference at once by
    max_lost_frames 0) stay INITIALIZING; ~/odom gets the origin once, at the first reference, not again at each
    later reference without a pose (their place is not known)."""
    from mambaglue_ros.synthetic import make_sequence
    from mambaglue_ros.tracking_state import TrackingState

    scenes = [make_sequence(n_frames=2, rate_hz=5.0, stereo=False, trajectory="orbit", seed=s).frame(0)
              for s in (1, 2, 3)]
    seq = make_sequence(n_frames=2, rate_hz=5.0, stereo=False, trajectory="orbit", seed=4, speed_mps=1.0)
    node = make_node(ros_context, {"max_lost_frames": 0})
    odom, status = capture(node, "odom", "status")
    try:
        stop_worker(node)
        node._on_camera_info("left", info(scenes[0].K))
        for i, fr in enumerate(scenes):
            node._process(frame(fr.left, fr.stamp_ns + i * 200_000_000))
        assert [s.state for s in status] == [TrackingState.INITIALIZING] * 3, [s.reason for s in status]
        assert len(odom) == 1 and C.stamp_to_ns(odom[0].header.stamp) == scenes[0].stamp_ns
        assert node._request_reset(np.eye(4), np.zeros((6, 6)), "reset service")  # a reset: an origin again
        node._process(frame(seq.frame(0).left, scenes[0].stamp_ns + 10**9))
        assert len(odom) == 2
    finally:
        node.destroy_node()


@pytest.mark.parametrize("policy", ["previous", "keyframe"])
def test_mono_tracks_from_the_node_keep_their_ids(ros_context, policy):
    """The node's glue: ids persist with either policy, normalised coordinates are K^-1 (u, v, 1)."""
    from mambaglue_ros.synthetic import make_sequence

    seq = make_sequence(n_frames=6, rate_hz=10.0, stereo=False, trajectory="orbit", seed=1, speed_mps=0.3)
    f = [seq.frame(i) for i in range(len(seq))]
    node = make_node(ros_context, {"keyframe_policy": policy, "min_inliers": 15})
    tracks, rel = capture(node, "tracks", "relative")
    try:
        stop_worker(node)
        node._on_camera_info("left", info(f[0].K))
        for fr in f:
            node._process(frame(fr.left, fr.stamp_ns))
        assert len(tracks) == len(f) and len(rel) == len(f) - 1
        refs = {C.stamp_to_ns(r.reference_stamp) for r in rel}
        assert (len(refs) < len(rel)) == (policy == "keyframe")  # a keyframe served several frames
        assert len({r.keyframe_id for r in rel}) == len(refs)
        common = set(tracks[0].ids)
        for t in tracks[1:]:
            common &= set(t.ids)
        assert len(common) > 20, len(common)
        for t in tracks:
            px = np.asarray(t.pixels).reshape(-1, 2)
            norm = np.asarray(t.normalized).reshape(-1, 2)
            np.testing.assert_allclose(norm, (px - f[0].K[:2, 2]) / np.diag(f[0].K)[:2], atol=1e-5)
        ages = {i: a for i, a in zip(tracks[-1].ids, tracks[-1].age)}
        assert all(ages[i] == len(f) for i in common)
    finally:
        node.destroy_node()


def test_a_frame_that_cannot_be_published_leaves_the_state_in_step(ros_context):
    """Non-finite matcher output makes the frame fail (nothing of it published), but the odometry,
    track ids and status continue with the next frame: the bookkeeping happened before publishing."""
    from mambaglue_ros.synthetic import make_sequence
    from mambaglue_ros.tracking_state import TrackingState

    seq = make_sequence(n_frames=4, rate_hz=10.0, stereo=False, trajectory="orbit", seed=1, speed_mps=0.5)
    f = [seq.frame(i) for i in range(4)]
    node = make_node(ros_context, {})
    odom, status, tracks = capture(node, "odom", "status", "tracks")
    inner = getattr(node.matcher, "inner", node.matcher)
    real = inner.match_features

    def poisoned(*args, **kw):
        result = real(*args, **kw)
        result.keypoints1 = result.keypoints1.copy()
        result.keypoints1[result.matches[:, 1]] = np.nan
        return result
    try:
        stop_worker(node)
        node._on_camera_info("left", info(f[0].K))
        node._process(frame(f[0].left, f[0].stamp_ns))
        node._process(frame(f[1].left, f[1].stamp_ns))
        inner.match_features = poisoned
        with pytest.raises(ValueError, match="non-finite"):
            node._process(frame(f[2].left, f[2].stamp_ns))
        inner.match_features = real
        node._process(frame(f[3].left, f[3].stamp_ns))
        assert len(odom) == 3 and status[-1].state == TrackingState.OK, [s.reason for s in status]  # f0 (origin), f1
        assert [C.stamp_to_ns(o.header.stamp) for o in odom] == [f[0].stamp_ns, f[1].stamp_ns, f[3].stamp_ns]
        assert all(np.all(np.isfinite(np.asarray(t.velocity))) for t in tracks)
    finally:
        node.destroy_node()


def test_cuda_graph_on_a_cpu_node_is_ignored_and_the_node_matches(ros_context):
    node = make_node(ros_context, {"matcher": "mambaglue", "device": "cpu", "cuda_graph": True,
                                   "max_keypoints": 128, "min_keypoints": 128})
    try:
        assert not node.matcher.cuda_graph_active  # warned, not captured
        image = (np.random.default_rng(0).random((240, 320, 3)) * 255).astype(np.uint8)
        feats = node.matcher.extract(image)
        assert node.matcher.match_features(feats, feats).stop_layer >= 1
    finally:
        node.destroy_node()


@pytest.mark.parametrize("max_lost_frames", [5, 0])
def test_a_frame_without_a_pose_costs_the_node_odometry_nothing(ros_context, max_lost_frames):
    """A corrupted stereo frame (another scene's images): the next frame is posed against the frame before it, and
    ~/odom, ~/relative_pose_ref and ~/tracks follow (tracking.py's reference fallback through the node's glue).
    max_lost_frames 0 (before 2026-12-05): the corrupted frame became the reference, frame 4 failed against it and
    became the reference in turn, placed where the motion of frame 2 leads (odometry.ConstantVelocity; before
    2026-12-06 at frame 2's pose, and the motion 2 -> 4 was lost), its covariance grown by that motion."""
    from mambaglue_ros.synthetic import make_sequence

    seq = make_sequence(n_frames=6, width=W, height=H, rate_hz=10.0, stereo=True, trajectory="forward", seed=1,
                        speed_mps=1.0)
    other = make_sequence(n_frames=1, width=W, height=H, stereo=True, trajectory="orbit", seed=7).frame(0)
    f = [seq.frame(i) for i in range(len(seq))]
    node = make_node(ros_context, {"mode": "stereo", "matcher": "mambaglue", "max_keypoints": 512,
                                   "max_lost_frames": max_lost_frames})
    odom, rel, tracks = {}, {}, {}
    node.pub_odom = SimpleNamespace(publish=lambda m: odom.__setitem__(C.stamp_to_ns(m.header.stamp), m))
    node.pub_relative = SimpleNamespace(publish=lambda m: rel.__setitem__(C.stamp_to_ns(m.header.stamp), m))
    node.pub_tracks = SimpleNamespace(publish=lambda m: tracks.__setitem__(C.stamp_to_ns(m.header.stamp), m))
    try:
        stop_worker(node)
        K_ = f[0].K
        node._on_camera_info("left", info(K_, size=(W, H)))
        node._on_camera_info("right", info(K_, P=np.c_[K_, [-K_[0, 0] * seq.rig.baseline_m, 0, 0]], size=(W, H)))
        for i, fr in enumerate(f):
            left, right = (other.left, other.right) if i == 3 else (fr.left, fr.right)
            node._process(frame(left, fr.stamp_ns, right))
        s = [fr.stamp_ns for fr in f]
        assert s[3] not in rel and s[3] not in odom  # the corrupted frame: no pose
        T_base_cam = node.T_base_cam
        truth = T_base_cam @ G.invert(f[0].T_world_left) @ f[5].T_world_left @ G.invert(T_base_cam)
        error = np.linalg.norm(pose_of(odom[s[5]].pose.pose)[:3, 3] - truth[:3, 3])
        step = np.linalg.norm((G.invert(f[2].T_world_left) @ f[3].T_world_left)[:3, 3])  # 0.1 m
        if max_lost_frames:
            assert C.stamp_to_ns(rel[s[4]].reference_stamp) == s[2]  # across the corrupted frame
            assert rel[s[4]].keyframe_id == rel[s[2]].keyframe_id + 1  # frame 2's id as a reference
            assert len(set(tracks[s[4]].ids) & set(tracks[s[2]].ids)) > 50  # frame 4's tracks continue frame 2's
            assert error < 0.2 * step, (error, step)
        else:
            assert s[4] not in rel and C.stamp_to_ns(rel[s[5]].reference_stamp) == s[4]
            assert error < 0.2 * step, (error, step)  # frames 2 -> 4 predicted (at frame 2's pose: 2 steps off)
            cov2, cov5 = (np.asarray(odom[s[k]].pose.covariance).reshape(6, 6) for k in (2, 5))
            assert np.trace(cov5[:3, :3]) - np.trace(cov2[:3, :3]) > 3 * (2 * step) ** 2 * 0.9  # one sigma: 2 steps
    finally:
        node.destroy_node()


@pytest.mark.parametrize("max_sharpness_ratio", [2.0, 0.0])
def test_a_motion_blurred_mono_frame_gets_no_pose_and_the_next_is_posed_across_it(ros_context, max_sharpness_ratio):
    """A mono frame blurred over 41 px between sharp ones: with the sharpness gate (the default) it gets no pose, and
    the next frame is posed against the frame before it; the runtime parameter reaches the tracker. Without the
    gate the essential matrix poses the blurred frame."""
    import cv2
    from rclpy.parameter import Parameter

    from mambaglue_ros.synthetic import make_sequence

    seq = make_sequence(n_frames=5, width=W, height=H, rate_hz=10.0, stereo=False, trajectory="forward", seed=1,
                        speed_mps=1.0)
    f = [seq.frame(i) for i in range(len(seq))]
    node = make_node(ros_context, {"matcher": "mambaglue", "max_keypoints": 512})
    rel = {}
    node.pub_relative = SimpleNamespace(publish=lambda m: rel.__setitem__(C.stamp_to_ns(m.header.stamp), m))
    try:
        stop_worker(node)
        node._on_camera_info("left", info(f[0].K, size=(W, H)))
        assert node._ensure_tracker(frame(f[0].left, f[0].stamp_ns))
        assert node.tracker.config["max_sharpness_ratio"] == 2.0  # the default
        node.set_parameters([Parameter("max_sharpness_ratio", value=max_sharpness_ratio)])
        node._apply_pending()
        assert node.tracker.config["max_sharpness_ratio"] == max_sharpness_ratio
        for i, fr in enumerate(f):
            node._process(frame(cv2.blur(fr.left, (41, 1)) if i == 3 else fr.left, fr.stamp_ns))
        s = [fr.stamp_ns for fr in f]
        assert all(s[i] in rel for i in (1, 2, 4))
        snap = node.stats.snapshot()  # /diagnostics: the failure counted, with the gate's reason
        if max_sharpness_ratio:
            assert s[3] not in rel and C.stamp_to_ns(rel[s[4]].reference_stamp) == s[2]
            assert snap["pose_sharpness"] == snap["pose_failures"] == 1 and "image sharpness" in snap["last_failure"]
        else:
            assert s[3] in rel and C.stamp_to_ns(rel[s[4]].reference_stamp) == s[3]
            assert snap["pose_sharpness"] == snap["pose_failures"] == 0
    finally:
        node.destroy_node()


def test_a_new_calibration_during_a_skipped_frame_still_resets(ros_context):
    """The calibration changes while a frame of the old size waits: that frame is skipped (size mismatch), and the
    change must still restart tracking with RESET at the first frame taken (before: the flag was cleared by the
    skipped frame and no RESET came)."""
    from mambaglue_ros.tracking_state import TrackingState

    node = make_node(ros_context, {})
    statuses, = capture(node, "status")
    try:
        node._on_camera_info("left", info(K))
        assert node._ensure_tracker(frame(np.zeros((480, 640), np.uint8), 1))
        node.tracker.reference = object()  # stands for the features of a processed frame
        node._on_camera_info("left", info(K / 2.0 + np.diag([0, 0, 0.5]), size=(320, 240)))  # binned driver
        assert not node._ensure_tracker(frame(np.zeros((480, 640), np.uint8), 2))  # the old size: skipped
        assert statuses == []
        assert node._ensure_tracker(frame(np.zeros((240, 320), np.uint8), 3))
        assert [s.state for s in statuses] == [TrackingState.RESET] and node.tracker.reference is None
    finally:
        node.destroy_node()


def test_camera_to_base_from_tf(ros_context, monkeypatch):
    """camera_to_base_from_tf: frames wait (skipped, counted, warned) until TF has base_frame <- the camera's frame,
    then the base-frame outputs use that transform instead of the camera_to_base parameter; without tf2_ros the
    parameter is a clear configuration error."""
    import sys
    from types import SimpleNamespace

    from mambaglue_ros.ros.params import pose_params_to_matrix
    from mambaglue_ros.synthetic import make_sequence

    T_true = [0.3, -0.1, 0.5, -0.5, 0.5, -0.5, 0.5]  # a camera 0.3 m ahead, 0.5 m up, optical axes (REP-103)
    lookups = []

    class FakeBuffer:  # tf2_ros is not on PyPI: a buffer that has the transform once `known` is set
        known = None

        def lookup_transform(self, target, source, time):
            lookups.append((target, source))
            if self.known is None:
                raise LookupError(f"{source} does not exist")  # stands for tf2_ros.LookupException
            x, y, z, qx, qy, qz, qw = self.known
            return SimpleNamespace(transform=SimpleNamespace(translation=SimpleNamespace(x=x, y=y, z=z),
                                                             rotation=SimpleNamespace(x=qx, y=qy, z=qz, w=qw)))

    buffers = []

    def make_buffer():
        buffers.append(FakeBuffer())
        return buffers[-1]

    monkeypatch.setitem(sys.modules, "tf2_ros", SimpleNamespace(Buffer=make_buffer,
                                                                TransformListener=lambda buffer, node: None))
    seq = make_sequence(n_frames=4, width=W, height=H, rate_hz=10.0, stereo=False, trajectory="forward", seed=1,
                        speed_mps=3.0)
    f = [seq.frame(i) for i in range(len(seq))]
    node = make_node(ros_context, {"camera_to_base_from_tf": True, "camera_to_base": [0.0] * 6 + [1.0]})
    try:
        relative, = capture(node, "relative")
        stop_worker(node)
        node._on_camera_info("left", info(f[0].K, size=(W, H)))
        node._process(frame(f[0].left, f[0].stamp_ns))
        assert node.stats.counters["no_extrinsics"] == 1 and node.stats.counters["frames_processed"] == 0
        assert lookups[-1] == ("base_link", "cam")  # base_frame <- the image's frame id
        buffers[0].known = T_true
        for fr in f[1:]:
            node._process(frame(fr.left, fr.stamp_ns))
        assert node.stats.counters["no_extrinsics"] == 1 and len(lookups) == 2  # looked up once, then kept
        np.testing.assert_allclose(node.T_base_cam, pose_params_to_matrix(T_true))
        # the base-frame relative pose is the camera's motion seen through that transform (not the parameter's)
        (rel, *_) = [r for r in relative if r.pose_base.pose.position.x != 0.0] or [None]
        assert rel is not None
        cam = np.asarray([rel.pose.pose.position.x, rel.pose.pose.position.y, rel.pose.pose.position.z])
        base = np.asarray([rel.pose_base.pose.position.x, rel.pose_base.pose.position.y,
                           rel.pose_base.pose.position.z])
        R = pose_params_to_matrix(T_true)[:3, :3]
        assert np.linalg.norm(cam) > 0 and np.allclose(np.linalg.norm(base), np.linalg.norm(cam), rtol=0.2)
        assert abs(base @ (R @ cam)) / (np.linalg.norm(base) * np.linalg.norm(cam)) > 0.9  # same direction in base
    finally:
        node.destroy_node()
    monkeypatch.setitem(sys.modules, "tf2_ros", None)  # `import tf2_ros` fails, as on a pip-only install
    with pytest.raises(ValueError, match="camera_to_base_from_tf needs tf2_ros"):
        make_node(ros_context, {"camera_to_base_from_tf": True})


def test_configured_again_ids_go_on_and_the_first_frame_says_reset(ros_context, monkeypatch):
    """Lifecycle cleanup -> configure -> activate: tracking restarts, so the first frame publishes RESET (stamped
    with that frame), the reset count goes on, keyframe ids are not reused (a graph keyed by them would attach new
    factors to old nodes), nor are track ids (VINS keeps features by id across its window), a service reset is
    stamped in the images' time base, and the /tf publisher of a configuration goes with it at cleanup."""
    import sys

    from rclpy.lifecycle import TransitionCallbackReturn

    from mambaglue_ros.synthetic import make_sequence
    from mambaglue_ros.tracking_state import TrackingState

    ok = TransitionCallbackReturn.SUCCESS

    class FakeBroadcaster:  # tf2_ros is not on PyPI: its TransformBroadcaster makes one /tf publisher
        def __init__(self, node):
            from std_msgs.msg import String  # (tf2_msgs is not installed either; the type does not matter here)
            self.pub_tf = node.create_publisher(String, "tf", 10)

    monkeypatch.setitem(sys.modules, "tf2_ros", SimpleNamespace(TransformBroadcaster=FakeBroadcaster))
    seq = make_sequence(n_frames=6, width=W, height=H, rate_hz=10.0, stereo=False, trajectory="forward", seed=1)
    f = [seq.frame(i) for i in range(len(seq))]
    node = make_node(ros_context, {}, lifecycle=True)
    track_ids: list[set] = []

    def run(frames) -> tuple[list, list]:
        statuses, relative = capture(node, "status", "relative")
        track_ids.append(set())
        node.pub_tracks = SimpleNamespace(publish=lambda m: track_ids[-1].update(m.ids))
        stop_worker(node)
        node._on_camera_info("left", info(f[0].K, size=(W, H)))
        for fr in frames:
            node._process(frame(fr.left, fr.stamp_ns))
        return statuses, relative

    try:
        assert node.trigger_configure() == ok and node.trigger_activate() == ok
        assert "/tf" in {p.topic_name for p in node.publishers}
        first, rel_first = run(f[:3])
        assert [s.state for s in first] == [TrackingState.INITIALIZING, TrackingState.OK, TrackingState.OK]
        assert node._request_reset(np.eye(4), np.zeros((6, 6)), "reset service")
        service_reset = first[-1]
        assert service_reset.state == TrackingState.RESET and C.stamp_to_ns(service_reset.header.stamp) == f[2].stamp_ns
        assert service_reset.odometry_reset
        assert node.trigger_deactivate() == ok and node.trigger_cleanup() == ok
        assert "/tf" not in {p.topic_name for p in node.publishers}
        assert node.trigger_configure() == ok and node.trigger_activate() == ok
        second, rel_second = run(f[3:])
        assert [s.state for s in second[:3]] == [TrackingState.RESET, TrackingState.INITIALIZING, TrackingState.OK]
        assert C.stamp_to_ns(second[0].header.stamp) == f[3].stamp_ns and "configured again" in second[0].reason
        assert second[0].odometry_reset  # back at initial_pose
        assert second[0].resets == service_reset.resets + 1
        assert min(r.keyframe_id for r in rel_second) > max(r.keyframe_id for r in rel_first)
        assert track_ids[0] and track_ids[1] and min(track_ids[1]) > max(track_ids[0])
        # a ~/reset between the new configuration and its first frame: that is the one RESET, not two
        assert node.trigger_deactivate() == ok and node.trigger_cleanup() == ok
        assert node.trigger_configure() == ok and node.trigger_activate() == ok
        statuses, = capture(node, "status")
        stop_worker(node)  # (the reset is then applied at once, in this thread)
        assert node._request_reset(np.eye(4), np.zeros((6, 6)), "reset service")
        third, _ = run(f[:2])
        assert [s.state for s in statuses + third] == [TrackingState.RESET, TrackingState.INITIALIZING,
                                                       TrackingState.OK]
    finally:
        node.destroy_node()


def test_camera_frame_names_the_left_camera_only(ros_context):
    """camera_frame set in stereo: the right camera keeps its own frame (its image's header, or right_camera_frame);
    before, Matches.frame_id1 and Tracks.right_frame_id named the left frame: a zero baseline in TF."""
    from std_msgs.msg import Header

    node = make_node(ros_context, {"mode": "stereo", "camera_frame": "cam_left"})
    try:
        assert node._frame_id(Header(frame_id="left_hdr")) == "cam_left"
        assert node._frame_id(Header(frame_id="right_hdr"), "right") == "right_hdr"
    finally:
        node.destroy_node()
    node = make_node(ros_context, {"mode": "stereo", "camera_frame": "cam_left", "right_camera_frame": "cam_right"})
    try:
        assert node._frame_id(Header(frame_id="right_hdr"), "right") == "cam_right"
        assert node._frame_id(Header(frame_id=""), "left") == "cam_left"
    finally:
        node.destroy_node()


def test_frame_ids_missing_or_with_a_leading_slash(ros_context):
    """An image and camera_info without frame_id get the default optical frame with a warning (before: "" was
    published, the same for left and right, and a TF lookup of "" never succeeds); a ROS 1 style "/cam" loses its
    slash, which tf2 refuses."""
    from std_msgs.msg import Header

    node = make_node(ros_context, {"mode": "stereo"})
    warned = []
    node._warn = lambda kind, text, **_: warned.append((kind, text))
    try:
        node._on_camera_info("left", info(K, frame_id="", size=(W, H)))
        node._on_camera_info("right", info(K, P=np.c_[K, [-K[0, 0] * 0.1, 0, 0]], frame_id="", size=(W, H)))
        assert node._frame_id(Header(frame_id="")) == "camera_optical_frame"
        assert node._frame_id(Header(frame_id=""), "right") == "right_camera_optical_frame"
        assert [k for k, _ in warned] == ["frame_id", "frame_id"] and "set the right_camera_frame" in warned[1][1]
        assert node._frame_id(Header(frame_id="/left_cam")) == "left_cam"
        assert "starts with '/'" in warned[-1][1]
        node._on_camera_info("left", info(K, frame_id="info_left", size=(W, H)))
        assert node._frame_id(Header(frame_id="")) == "info_left"  # the camera_info's, as before
    finally:
        node.destroy_node()


def test_a_frame_tried_against_the_fallbacks_tells_the_rate_controller_its_time_without_them(ros_context):
    """A frame that fails against its reference is tried against the fallback references too: up to three matches.
    That time is the failure's, not what alpha or the keypoint budget cost: the controller gets the frame's time
    without those attempts (not nothing: in a long spell of failures it would freeze)."""
    from mambaglue_ros.synthetic import make_sequence

    seq = make_sequence(n_frames=6, width=W, height=H, rate_hz=10.0, stereo=True, trajectory="forward", seed=1,
                        speed_mps=1.0)
    other = make_sequence(n_frames=1, width=W, height=H, stereo=True, trajectory="orbit", seed=7).frame(0)
    f = [seq.frame(i) for i in range(len(seq))]
    node = make_node(ros_context, {"mode": "stereo", "target_rate_hz": 10.0, "pipeline": "off"})
    try:
        stop_worker(node)
        K_ = f[0].K
        node._on_camera_info("left", info(K_, size=(W, H)))
        node._on_camera_info("right", info(K_, P=np.c_[K_, [-K_[0, 0] * seq.rig.baseline_m, 0, 0]], size=(W, H)))
        seen = []
        node.add_observer(lambda event, frame, result, latency: seen.append(result) if event == "result" else None)
        frame_ms = iter(range(5000, 6000, 10))  # what each frame took, as the stage clocks say (no stage here)
        node.stage.finish = lambda: (float(next(frame_ms)),) * 3
        ema = []
        for i, fr in enumerate(f):
            left, right = (other.left, other.right) if i == 3 else (fr.left, fr.right)
            node._process(frame(left, fr.stamp_ns, right))
            ema.append(node.controller.latency_ema_ms)
        assert seen[3].pose is None and seen[3].timings_ms["fallback"] > 0
        s = node.controller.config["smoothing"]
        sample = 5030.0 - seen[3].timings_ms["fallback"]  # frame 3's time without the fallback attempts
        assert ema[3] == pytest.approx((1 - s) * ema[2] + s * sample, rel=1e-9)
        assert "fallback" not in seen[4].timings_ms
        assert ema[4] == pytest.approx((1 - s) * ema[3] + s * 5040.0, rel=1e-9)  # the next frame: all of it
    finally:
        node.destroy_node()
