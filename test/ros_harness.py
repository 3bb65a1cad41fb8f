"""Shared helpers for tests that run the real node over loopback DDS (imported by test_node*.py)."""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

import numpy as np


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
        node.create_subscription(Matches, f"{ns}/matches", self._keep("matches"), 50)
        node.create_subscription(PoseWithCovarianceStamped, f"{ns}/mambaglue_matcher/relative_pose",
                                 self._keep("pose"), 50)
        node.create_subscription(Odometry, f"{ns}/mambaglue_matcher/odom", self._keep("odom"), 50)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._keep("diag"), 50)

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
