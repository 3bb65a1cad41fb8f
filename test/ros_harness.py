"""Shared helpers for tests that run the real node over loopback DDS (imported by test_node*.py,
test_reliability.py, test_soak.py).

Synchronisation rules (a flaky test is a defect): before provoking an event, wait until the DDS
endpoints that will carry it are *matched* (``wait_for_subscribers`` for the node's inputs,
``Collector.wait_matched`` for its outputs), or observe the node in-process (``LogRecorder`` for its
log lines, ``MatcherNode.add_observer`` for frames). Never sleep to let something arrive.

Executors: tests spin the node on one ``SingleThreadedExecutor`` thread, as its ``main`` does
(``rclpy.spin``). rclpy 9.1's ``MultiThreadedExecutor`` re-yields callbacks still queued in its pool and
loops holding the GIL meanwhile (ros2/rclpy#1452): it starved the node's worker threads for seconds.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable

import numpy as np

NS = 1_000_000_000
# each input frame the node counts lands in exactly one of these (processed, or refused on the way)
FRAME_FATES = ("frames_processed", "frames_dropped", "bad_input", "oversized", "size_mismatch", "out_of_order",
               "no_camera_info", "errors")


def camera_info_msg(K: np.ndarray, width: int, height: int, frame_id: str, baseline_m: float = 0.0):
    """Rectified-camera CameraInfo; the right camera of a pair gets P[0, 3] = -fx * baseline."""
    from sensor_msgs.msg import CameraInfo

    msg = CameraInfo(width=width, height=height, distortion_model="plumb_bob")
    msg.header.frame_id = frame_id
    msg.k = [float(v) for v in K.ravel()]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    P = np.zeros((3, 4))
    P[:, :3] = K
    P[0, 3] = -K[0, 0] * baseline_m
    msg.p = [float(v) for v in P.ravel()]
    msg.d = [0.0] * 5
    return msg


class Collector:
    """Subscribes to the node's outputs from a separate test node and keeps what arrives."""

    def __init__(self, node, namespace: str = "") -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseWithCovarianceStamped
        from nav_msgs.msg import Odometry

        from mambaglue_ros.msg import Matches

        self.lock = threading.Lock()
        self.data: dict[str, list[Any]] = {"matches": [], "pose": [], "odom": [], "diag": [], "debug": []}
        ns = namespace.rstrip("/")
        self.subscriptions = [
            node.create_subscription(Matches, f"{ns}/matches", self._keep("matches"), 50),
            node.create_subscription(PoseWithCovarianceStamped, f"{ns}/mambaglue_matcher/relative_pose",
                                     self._keep("pose"), 50),
            node.create_subscription(Odometry, f"{ns}/mambaglue_matcher/odom", self._keep("odom"), 50),
            node.create_subscription(DiagnosticArray, "/diagnostics", self._keep("diag"), 50),
        ]

    def wait_matched(self, timeout: float = 15.0) -> None:
        """Until every output subscription is matched with the node's publisher: messages published
        before the match (volatile durability) would never arrive."""
        ok = wait_for(lambda: all(s.get_publisher_count() > 0 for s in self.subscriptions), timeout)
        assert ok, f"the node's outputs were not matched in time: {[s.topic_name for s in self.subscriptions]}"

    def _keep(self, key: str) -> Callable[[Any], None]:
        def callback(msg: Any) -> None:
            with self.lock:
                self.data[key].append(msg)
        return callback

    def count(self, key: str) -> int:
        with self.lock:
            return len(self.data[key])

    def get(self, key: str) -> list[Any]:
        with self.lock:
            return list(self.data[key])

    def latest_diagnostics(self) -> dict[str, str]:
        diag = self.get("diag")
        if not diag:
            return {}
        status = diag[-1].status[0]
        return {"level": int.from_bytes(status.level, "little") if isinstance(status.level, bytes) else status.level,
                "message": status.message, **{kv.key: kv.value for kv in status.values}}


class LogRecorder:
    """Keeps every line a node logs, in-process: replaces the node's ``get_logger()`` with this
    wrapper, which forwards each call to the real rclpy logger (console, /rosout) and records the
    lines it actually emitted. Deterministic, unlike waiting for /rosout delivery."""

    LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40, "fatal": 50}

    def __init__(self, node) -> None:
        from rclpy.impl import rcutils_logger

        # rclpy keys each log call site by the first caller outside rclpy: skip this file as well, so
        # the node's call sites (and their throttling) stay what they are without the wrapper
        here = os.path.realpath(__file__)
        if here not in rcutils_logger._internal_callers:
            rcutils_logger._internal_callers.append(here)
        self._logger = node.get_logger()
        self._lock = threading.Lock()
        self.lines: list[tuple[int, str]] = []
        node.get_logger = lambda: self  # the instance attribute shadows Node.get_logger

    def __getattr__(self, name: str) -> Any:
        if name in self.LEVELS:
            def log(message: str, **kwargs: Any) -> bool:
                emitted = getattr(self._logger, name)(message, **kwargs)
                if emitted is not False:  # rclpy returns False for a throttled / skipped line
                    with self._lock:
                        self.lines.append((self.LEVELS[name], message))
                return emitted
            return log
        return getattr(self._logger, name)

    def get(self) -> list[tuple[int, str]]:
        with self._lock:
            return list(self.lines)

    def logged(self, text: str, level: int = 30) -> bool:
        """A line of at least ``level`` (30 = WARN) containing ``text`` was logged."""
        return any(lv >= level and text in m for lv, m in self.get())


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, period: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period)
    return predicate()


def wait_for_subscribers(*publishers, timeout: float = 15.0) -> None:
    """Fast DDS discovery can take a few seconds: publish only once the node has subscribed."""
    ok = wait_for(lambda: all(p.get_subscription_count() > 0 for p in publishers), timeout)
    assert ok, "the node's subscriptions were not discovered in time"


def stamp_ns(stamp) -> int:
    return stamp.sec * NS + stamp.nanosec


def wait_for_odom_at(out: Collector, stamp_ns: int):
    """The position of the ~/odom message stamped ``stamp_ns`` (e.g. the last frame's), once it has come: the
    frame before's may still be the newest message when the frame counts as processed (a wait for a number of
    messages took the frame before's, 3/4 of the way, in 2 of 8 runs under load)."""
    def at_stamp():
        return [o for o in out.get("odom") if o.header.stamp.sec * 10**9 + o.header.stamp.nanosec == stamp_ns]

    assert wait_for(lambda: bool(at_stamp()), timeout=10), [o.header.stamp for o in out.get("odom")]
    return at_stamp()[-1].pose.pose.position


def check_outputs(out: Collector) -> dict[str, int]:
    """Every output is well-formed: finite numbers, indices in range, sizes consistent, stamps increasing."""
    counts = {}
    matches = out.get("matches")
    last = {}
    for m in matches:
        n = len(m.scores)
        k0 = np.asarray(m.keypoints0, np.float64).reshape(-1, 2)
        k1 = np.asarray(m.keypoints1, np.float64).reshape(-1, 2)
        i0, i1 = np.asarray(m.indices0), np.asarray(m.indices1)
        assert len(k0) == len(k1) == len(i0) == len(i1) == n
        assert np.all(np.isfinite(k0)) and np.all(np.isfinite(k1)) and np.all(np.isfinite(m.scores))
        assert np.all((np.asarray(m.scores) >= 0) & (np.asarray(m.scores) <= 1))
        if n:
            assert i0.max() < m.num_keypoints0 and i1.max() < m.num_keypoints1
            assert len(set(i0.tolist())) == n and len(set(i1.tolist())) == n  # one-to-one
        for k, (w, h) in ((k0, (m.width0, m.height0)), (k1, (m.width1, m.height1))):
            assert np.all(k >= -1.0) and np.all(k[:, 0] <= w) and np.all(k[:, 1] <= h), (w, h)
        # stop_layer 0: no keypoints, or no network pass (stereo pairs found along the rows have num_layers 0)
        ran = m.num_keypoints0 > 0 and m.num_keypoints1 > 0 and m.num_layers > 0
        assert (1 if ran else 0) <= m.stop_layer <= m.num_layers and np.isfinite(m.latency_ms) and np.isfinite(m.alpha)
        t0, t1 = stamp_ns(m.stamp0), stamp_ns(m.stamp1)
        assert stamp_ns(m.header.stamp) == t1
        if m.pair_kind == m.PAIR_TEMPORAL:
            assert t0 < t1
            if "t" in last:  # the node resets on a backward jump: then a new stamp run starts
                assert t1 > last["t"] or t1 < last["t"] - NS
            last["t"] = t1
    counts["matches"] = len(matches)
    for p in out.get("pose"):
        q = p.pose.pose.orientation
        pos = p.pose.pose.position
        values = np.array([q.x, q.y, q.z, q.w, pos.x, pos.y, pos.z, *p.pose.covariance])
        assert np.all(np.isfinite(values)) and abs(np.linalg.norm(values[:4]) - 1) < 1e-6
        cov = np.asarray(p.pose.covariance).reshape(6, 6)
        assert np.allclose(cov, cov.T) and np.all(np.diag(cov) >= 0)
    counts["pose"] = out.count("pose")
    for o in out.get("odom"):
        tw = o.twist.twist
        values = np.array([o.pose.pose.position.x, o.pose.pose.position.y, o.pose.pose.position.z,
                           o.pose.pose.orientation.w, tw.linear.x, tw.linear.y, tw.linear.z,
                           tw.angular.x, tw.angular.y, tw.angular.z, *o.pose.covariance, *o.twist.covariance])
        assert np.all(np.isfinite(values))
    counts["odom"] = out.count("odom")
    for d in out.get("diag"):
        for kv in d.status[0].values:
            assert kv.value.lower() not in ("nan", "inf", "-inf"), (kv.key, kv.value)
    return counts
