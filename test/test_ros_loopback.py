"""Real DDS over loopback: a Matches message (and an image) published by one node and received by
another, in one process. Discovery is waited for explicitly: it can take a few seconds."""
from __future__ import annotations

import time

import numpy as np
import pytest

pytestmark = pytest.mark.ros

DISCOVERY_TIMEOUT_S = 15.0
RECEIVE_TIMEOUT_S = 10.0


def _spin_until(executor, condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        executor.spin_once(timeout_sec=0.05)
    return condition()


def test_matches_and_image_loopback(ros_context):
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from mambaglue_ros.msg import Matches
    from mambaglue_ros.ros.convert import (build_matches_msg, image_to_numpy, matches_msg_to_numpy,
                                           ns_to_stamp, numpy_to_image, stamp_to_ns)
    from mambaglue_ros.types import MatchResult

    rng = np.random.default_rng(1)
    keypoints0 = rng.uniform(0, 640, (500, 2)).astype(np.float32)
    keypoints1 = rng.uniform(0, 640, (450, 2)).astype(np.float32)
    matches = np.stack([rng.permutation(500)[:300], rng.permutation(450)[:300]], axis=1)
    scores = rng.uniform(0, 1, 300).astype(np.float32)
    result = MatchResult(keypoints0, keypoints1, matches, scores, stop_layer=5, num_layers=9)
    header = Header(frame_id="camera_optical", stamp=ns_to_stamp(1_700_000_000_500_000_000))
    sent = build_matches_msg(result, header, stamp0=1_700_000_000_400_000_000, stamp1=header.stamp,
                             frame_id0="camera_optical", frame_id1="camera_optical",
                             pair_kind=Matches.PAIR_TEMPORAL, image_size0=(640, 480),
                             image_size1=(640, 480), features="xfeat", alpha=0.93, latency_ms=21.5)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)

    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    talker = Node("loopback_talker", context=ros_context)
    listener = Node("loopback_listener", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    try:
        received: dict[str, object] = {}
        listener.create_subscription(Matches, "matches", lambda m: received.setdefault("matches", m), qos)
        listener.create_subscription(Image, "image", lambda m: received.setdefault("image", m), qos)
        matches_pub = talker.create_publisher(Matches, "matches", qos)
        image_pub = talker.create_publisher(Image, "image", qos)
        executor.add_node(talker)
        executor.add_node(listener)

        discovered = _spin_until(executor, lambda: matches_pub.get_subscription_count() > 0
                                 and image_pub.get_subscription_count() > 0, DISCOVERY_TIMEOUT_S)
        assert discovered, "subscriber not discovered within 15 s"
        matches_pub.publish(sent)
        image_pub.publish(numpy_to_image(image, "bgr8", header))
        assert _spin_until(executor, lambda: len(received) == 2, RECEIVE_TIMEOUT_S), received.keys()
    finally:
        executor.shutdown()
        talker.destroy_node()
        listener.destroy_node()

    got = received["matches"]
    assert got is not sent
    assert got.header.frame_id == "camera_optical"
    assert stamp_to_ns(got.header.stamp) == 1_700_000_000_500_000_000
    assert stamp_to_ns(got.stamp0) == 1_700_000_000_400_000_000
    assert stamp_to_ns(got.stamp1) == 1_700_000_000_500_000_000
    assert got.pair_kind == Matches.PAIR_TEMPORAL
    assert (got.frame_id0, got.frame_id1) == ("camera_optical", "camera_optical")
    assert (got.width0, got.height0, got.width1, got.height1) == (640, 480, 640, 480)
    assert (got.num_keypoints0, got.num_keypoints1) == (500, 450)
    assert (got.features, got.stop_layer, got.num_layers) == ("xfeat", 5, 9)
    assert got.alpha == pytest.approx(0.93) and got.latency_ms == pytest.approx(21.5)
    arrays = matches_msg_to_numpy(got)
    np.testing.assert_array_equal(arrays["points0"], result.points0)
    np.testing.assert_array_equal(arrays["points1"], result.points1)
    np.testing.assert_array_equal(arrays["indices0"], matches[:, 0])
    np.testing.assert_array_equal(arrays["indices1"], matches[:, 1])
    np.testing.assert_array_equal(arrays["scores"], scores)

    got_image = received["image"]
    assert (got_image.encoding, got_image.width, got_image.height) == ("bgr8", 64, 48)
    # published as bgr8 from an array we call BGR: converting back gives it channel-reversed (RGB)
    np.testing.assert_array_equal(image_to_numpy(got_image, use_cv_bridge=False), image[..., ::-1])
