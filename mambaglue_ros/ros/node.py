"""``matcher_node``: camera topics -> /matches, relative pose, odometry, debug image, diagnostics.

Thin glue. The callbacks only convert and enqueue (latest frame wins, drops counted); one worker
thread runs the pipeline (``tracking`` -> ``Matcher`` -> ``geometry``) off the executor, then
publishes. Everything it calls is plain Python tested without ROS.

Topics (relative names, so namespaces and remaps work):
  in   mono:   image (sensor_msgs/Image) or image/compressed (transport:=compressed), camera_info
       stereo: left/image_rect, right/image_rect (or .../compressed), left/camera_info, right/camera_info
  out  matches (mambaglue_ros/Matches): temporal pairs, and stereo pairs in stereo mode
       ~/relative_pose (PoseWithCovarianceStamped): current camera in the reference camera's optical frame
       ~/odom (nav_msgs/Odometry): odom_frame -> base_frame (REP-105), twist in base_frame
       ~/debug_image (Image): reference | current with matches, built only while someone subscribes
       /diagnostics (DiagnosticArray) every diagnostics_period_s
Frames without a pose (too few matches/inliers): no relative pose and no odometry is published for
them, the reason goes to diagnostics, and tracking continues from the next frame.
"""
from __future__ import annotations

import os
import re
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header
from geometry_msgs.msg import PoseWithCovarianceStamped

from .. import geometry as G
from ..pipeline import ExtractionStage, PrefetchingMatcher, torch_threads
from ..rate_control import AlphaController
from ..runtime import FrameSlot, RuntimeStats, diagnostic_level
from ..tracking import MonoTracker, StereoTracker
from . import convert as C
from . import params as P
from .sync import StereoSynchronizer

NS = 1_000_000_000
BACKWARD_RESET_S = 1.0  # a stamp this far back is a bag loop / clock reset, not a late frame
# A forward stamp gap longer than this (dropped frames, paused bag, camera restart): the frame is
# still matched against the reference (the relative pose does not depend on time, and a failed
# match is reported as a pose failure), but the average motion over the gap is no velocity, so
# ~/odom gets an unknown twist for that step. Counted in `gaps`.
LONG_GAP_S = 5.0
WARN_PERIOD_S = 5.0  # the same kind of warning is logged at most once per period


@dataclass
class Frame:
    """One unit of work for the worker: decoded image(s) with their stamp and frame ids."""

    stamp_ns: int
    header: Header
    image: np.ndarray
    right: np.ndarray | None = None
    right_header: Header | None = None


def pose_params_to_matrix(values: list[float]) -> np.ndarray:
    """camera_to_base [x, y, z, qx, qy, qz, qw] -> T_base_camera (4, 4)."""
    x, y, z, qx, qy, qz, qw = (float(v) for v in values)
    T = np.eye(4)
    T[:3, :3] = G.quaternion_to_matrix(np.array([qx, qy, qz, qw]))
    T[:3, 3] = (x, y, z)
    return T


def build_matcher(p: dict[str, Any], features: str):
    """The matcher the parameters ask for (MambaGlue, LightGlue on the same front end, or ORB)."""
    if p["matcher"] == "orb":
        from ..baselines import OrbMatcher

        return OrbMatcher(max_keypoints=p["max_keypoints"])
    from ..matcher import Matcher

    options: dict[str, Any] = {"filter_threshold": p["filter_threshold"]}
    weights = p["weights"] or None
    if p["matcher"] == "lightglue":  # LightGlue = our network with the attention mixer and its own head
        options.update(mixer="attention", regressor="linear")
        weights = "lightglue"
    return Matcher(features=features, weights=weights, device=p["device"], max_keypoints=p["max_keypoints"],
                   detection_threshold=p["detection_threshold"] or None, resize_max=p["resize_max"] or None,
                   alpha=p["alpha"] if p["early_exit"] else None,
                   extractor_weights=p["extractor_weights"] or None, precision=p["precision"], **options)


def _rule_value(text: str) -> Any:
    """A ``-p name:=value`` value typed as rcl types it (``1e-3`` is a double, ``0x10`` an int, ``on`` true)."""
    import yaml

    t = text.strip()
    for parse in (lambda v: int(v, 0), float):
        try:
            return parse(t)
        except ValueError:
            pass
    if t.lower() in ("true", "yes", "on", "false", "no", "off"):
        return t.lower() in ("true", "yes", "on")
    try:
        return yaml.safe_load(t)
    except yaml.YAMLError:
        return t


def unapplied_parameter_rules(argv: list[str], values: dict[str, Any], node_name: str) -> list[str]:
    """Reasons for ``-p name:=value`` command-line rules whose value the node did not get.

    rcl silently keeps a params-file value when a ``-p`` rule for the same name has another type
    (``-p max_keypoints:=lots`` over ``max_keypoints: 1024`` in the file): the node would run with a
    value the user did not ask for. Rules for other nodes (``other:name:=v``) are ignored.
    """
    rules, in_ros_args, i = [], False, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--ros-args":
            in_ros_args = True
        elif arg == "--":
            in_ros_args = False
        elif in_ros_args and arg in ("-p", "--param") and i + 1 < len(argv):
            rules.append(argv[i + 1])
            i += 1
        i += 1
    reasons = []
    for rule in rules:
        target, sep, text = rule.partition(":=")
        node, _, name = target.rpartition(":")
        if not sep or name not in values or (node and node.lstrip("/") not in (node_name, "**")):
            continue
        wanted = _rule_value(text)
        if wanted != values[name]:
            reason = P.validate(name, wanted) or f"{name} is {values[name]!r}"
            reasons.append(f"-p {rule} was not applied (rcl keeps the params-file value {values[name]!r} when the "
                           f"types differ): {reason}")
    return reasons


def resolve_features(features: str, device: str) -> str:
    """'auto' -> XFeat on CPU (real time on small CPUs), ALIKED on CUDA (more accurate, GPU-fast)."""
    if features != "auto":
        return features
    import torch

    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return "aliked" if on_gpu else "xfeat"


class MatcherNode(Node):
    def __init__(self, command_line: list[str] | None = None, **kwargs: Any) -> None:
        """command_line: the process arguments (``main`` passes them) to check that every ``-p`` rule
        took effect; kwargs go to rclpy's Node."""
        super().__init__("mambaglue_matcher", **kwargs)
        self.p = P.declare_parameters(self)  # raises with every reason on a bad configuration
        unapplied = unapplied_parameter_rules(command_line or [], self.p, self.get_name())
        if unapplied:
            raise ValueError("invalid parameters:\n  " + "\n  ".join(unapplied))
        self.stats = RuntimeStats()
        self._lock = threading.Lock()
        self._pending: dict[str, Any] = {}
        self._warned: dict[str, float] = {}
        self.mode = self.p["mode"]
        from ..features import MIN_IMAGE_SIDE

        self.min_image_side = MIN_IMAGE_SIDE

        import torch

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = torch_threads(self.p["num_threads"], cores, pipelined=self.p["pipeline"])
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        self.features = resolve_features(self.p["features"], self.p["device"])
        # stage 1 of the pipeline computes ahead what the tracker asks this matcher for (pipeline.py)
        self.matcher = PrefetchingMatcher(build_matcher(self.p, self.features))
        if self.p["matcher"] == "orb":
            self.features = "orb"
        self.controller = AlphaController(self._rate_config())
        self.T_base_cam = pose_params_to_matrix(self.p["camera_to_base"])
        self.tracker: MonoTracker | StereoTracker | None = None
        self.camera: dict[str, C.CameraModel] = {}
        self.last_stamp_ns: int | None = None
        self.T_odom_base = np.eye(4)
        self.odom_cov = np.zeros((6, 6))
        # pose and covariance of the tracker's reference frame (keyframe): relative poses are to it
        self.T_odom_base_ref = np.eye(4)
        self.odom_cov_ref = np.zeros((6, 6))
        self.images: dict[int, np.ndarray] = {}  # recent images by stamp, for the debug image
        self._tf = self._make_tf_broadcaster()

        reliability = (ReliabilityPolicy.RELIABLE if self.p["qos_reliability"] == "reliable"
                       else ReliabilityPolicy.BEST_EFFORT)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=self.p["qos_depth"], reliability=reliability,
                         durability=qos_profile_sensor_data.durability)
        from ..msg import Matches

        self.Matches = Matches
        self.pub_matches = self.create_publisher(Matches, "matches", 10)
        self.pub_pose = self.create_publisher(PoseWithCovarianceStamped, "~/relative_pose", 10)
        self.pub_odom = self.create_publisher(Odometry, "~/odom", 10)
        self.pub_debug = self.create_publisher(Image, "~/debug_image", 2)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        image_type = CompressedImage if self.p["transport"] == "compressed" else Image
        suffix = "/compressed" if self.p["transport"] == "compressed" else ""
        guard = self._guarded
        if self.mode == "mono":
            self.create_subscription(image_type, "image" + suffix, guard(self._on_mono_image), qos)
            self.create_subscription(CameraInfo, "camera_info", guard(lambda m: self._on_camera_info("left", m)),
                                     qos)
        else:
            self.sync = StereoSynchronizer(self._on_stereo_pair, slop_s=self.p["sync_slop"], queue_size=10)
            self.create_subscription(image_type, "left/image_rect" + suffix, guard(self._on_left), qos)
            self.create_subscription(image_type, "right/image_rect" + suffix, guard(self._on_right), qos)
            self.create_subscription(CameraInfo, "left/camera_info",
                                     guard(lambda m: self._on_camera_info("left", m)), qos)
            self.create_subscription(CameraInfo, "right/camera_info",
                                     guard(lambda m: self._on_camera_info("right", m)), qos)

        self.slot = FrameSlot(self.p["queue_size"])
        self.stage = ExtractionStage(lambda: self.slot, lambda f: self.matcher.prefetch(
            [f.image] if f.right is None else [f.image, f.right], stereo=f.right is not None),
            enabled=self.p["pipeline"], stamp_ns=lambda f: f.stamp_ns)
        self.stage.set_rate(self.p["target_rate_hz"])
        self._observers: list[Callable[..., None]] = []
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.create_timer(self.p["diagnostics_period_s"], guard(self._publish_diagnostics))
        self._running = True
        self.worker = threading.Thread(target=self._work, name="mambaglue-worker", daemon=True)
        self.worker.start()
        self.get_logger().info(
            f"mode={self.mode} features={self.features} weights={self.matcher.weights_source} "
            f"device={self.matcher.device} max_keypoints={self.matcher.max_keypoints} "
            f"alpha={self.matcher.alpha} target_rate_hz={self.p['target_rate_hz']}")

    # ------------------------------------------------------------------ parameters
    def _rate_config(self) -> dict[str, Any]:
        return {"target_rate_hz": self.p["target_rate_hz"], "alpha_min": self.p["alpha_min"],
                "alpha_max": self.p["alpha_max"], "alpha_init": self.p["alpha"],
                "adapt_keypoints": self.p["adapt_keypoints"], "min_keypoints": self.p["min_keypoints"],
                "max_keypoints": self.p["max_keypoints"]}

    def _tracking_config(self) -> dict[str, Any]:
        return {"policy": self.p["keyframe_policy"], "keyframe_min_matches": self.p["keyframe_min_matches"],
                "keyframe_max_parallax_px": self.p["keyframe_max_parallax_px"],
                "min_matches": self.p["min_matches"], "min_inliers": self.p["min_inliers"],
                "ransac_px": self.p["ransac_px"], "pose_hypotheses": self.p["pose_hypotheses"]}

    def _on_set_parameters(self, params) -> SetParametersResult:
        changes = {p.name: p.value for p in params}
        reasons = P.validate_changes(self.p, changes)
        if reasons:
            return SetParametersResult(successful=False, reason="; ".join(reasons))
        with self._lock:  # applied by the worker between frames
            self._pending.update(changes)
        return SetParametersResult(successful=True)

    def _apply_pending(self) -> None:
        with self._lock:
            changes, self._pending = self._pending, {}
        if not changes:
            return
        self.p.update(changes)
        if changes.keys() & {"target_rate_hz", "alpha", "alpha_min", "alpha_max", "adapt_keypoints",
                             "min_keypoints", "max_keypoints"}:
            self.controller = AlphaController(self._rate_config())
            self.stage.set_rate(self.p["target_rate_hz"])
        if "max_keypoints" in changes:
            self.matcher.max_keypoints = self.p["max_keypoints"]
        if changes.keys() & {"alpha", "early_exit"}:
            self.matcher.alpha = self.p["alpha"] if self.p["early_exit"] else None
        if "filter_threshold" in changes and hasattr(self.matcher, "net"):
            self.matcher.net.conf["filter_threshold"] = self.p["filter_threshold"]
        if "detection_threshold" in changes and hasattr(self.matcher, "extractor"):
            self.matcher.extractor.detection_threshold = self.p["detection_threshold"] or None
        if self.tracker is not None and changes.keys() & {"keyframe_policy", "keyframe_min_matches",
                                                          "keyframe_max_parallax_px", "min_matches",
                                                          "min_inliers", "ransac_px", "pose_hypotheses"}:
            self.tracker.config.update(self._tracking_config())
        self.get_logger().info(f"parameters changed: {changes}")

    # ------------------------------------------------------------------ logging and fault containment
    def _warn(self, kind: str, text: str, error: bool = False, details: str = "") -> None:
        """Log a warning (or error) at most once per WARN_PERIOD_S per kind of problem.

        The kind is ``kind`` plus the text with its numbers blanked, so a stream of bad frames does
        not flood the log, yet every different problem is reported (rclpy's throttling is per call
        site: one bad encoding would hide a later size error for the same period).
        """
        key = kind + ":" + re.sub(r"\d+(\.\d+)?", "#", text)[:200]
        now = time.monotonic()
        with self._lock:
            last = self._warned.get(key)
            if last is not None and now - last < WARN_PERIOD_S:
                return
            if len(self._warned) > 256:  # bounded: forget what is past its period
                self._warned = {k: t for k, t in self._warned.items() if now - t < WARN_PERIOD_S}
            self._warned[key] = now
        logger = self.get_logger()
        (logger.error if error else logger.warning)(text + details)

    def _guarded(self, callback):
        """Wrap an executor callback: an unexpected exception is counted in ``errors`` and logged
        instead of propagating out of ``spin`` (which would stop the node)."""
        def run(*args):
            try:
                return callback(*args)
            except Exception as e:  # noqa: BLE001 - the node must outlive any one message
                if not self.context.ok():
                    return None  # shutting down
                self.stats.error(f"{type(e).__name__}: {e}")
                self._warn("errors", f"callback failed: {type(e).__name__}: {e}", error=True,
                           details="\n" + traceback.format_exc(limit=3))
                return None
        return run

    # ------------------------------------------------------------------ input callbacks (executor thread)
    def _decode(self, msg) -> np.ndarray | None:
        max_pixels = self.p["max_image_pixels"]
        try:
            if isinstance(msg, CompressedImage):  # the size is read from the header before decoding
                image = C.compressed_to_numpy(msg, max_pixels=max_pixels)
            else:
                if msg.width * msg.height > max_pixels:  # refused before any conversion
                    raise C.OversizedImageError(msg.width, msg.height, max_pixels)
                image = C.image_to_numpy(msg)
        except C.OversizedImageError as e:
            self.stats.count("oversized")
            self._warn("oversized", f"skipping image: {e} (raise max_image_pixels, and set resize_max to "
                                    "process large images)")
            return None
        except C.ImageConversionError as e:
            self.stats.count("bad_input")
            self._warn("bad_input", f"skipping image: {e}")
            return None
        if min(image.shape[:2]) < self.min_image_side:
            self.stats.count("bad_input")
            self._warn("bad_input", f"skipping image: {image.shape[1]}x{image.shape[0]} is too small (less than "
                                    f"{self.min_image_side} px a side: no features can be detected)")
            return None
        return image

    def _on_camera_info(self, side: str, msg: CameraInfo) -> None:
        try:
            model = C.CameraModel.from_msg(msg)
        except (C.CameraInfoError, ValueError) as e:
            self.stats.count("bad_camera_info")
            self._warn("bad_camera_info", f"ignoring {side} camera_info: {e}"
                       + (" (keeping the previous one)" if side in self.camera else ""))
            return
        with self._lock:
            old = self.camera.get(side)
            self.camera[side] = model
        if old is not None and not (np.allclose(old.K, model.K) and np.allclose(old.P, model.P)
                                    and old.image_size == model.image_size):
            self._warn("camera_info_changed", f"{side} camera_info changed: using the new calibration "
                                              f"(fx {old.K[0, 0]:.1f} -> {model.K[0, 0]:.1f}, size "
                                              f"{old.image_size} -> {model.image_size})")

    def _enqueue(self, frame: Frame) -> None:
        if self.slot.put(frame):
            self.stats.count("frames_dropped")

    def _on_mono_image(self, msg) -> None:
        self.stats.input()
        image = self._decode(msg)
        if image is not None:
            self._enqueue(Frame(C.stamp_to_ns(msg.header.stamp), msg.header, image))

    def _on_left(self, msg) -> None:
        self.stats.input()
        self.sync.add_left(msg)

    def _on_right(self, msg) -> None:
        self.sync.add_right(msg)

    def _on_stereo_pair(self, left_msg, right_msg) -> None:
        left, right = self._decode(left_msg), self._decode(right_msg)
        if left is None or right is None:
            return
        if left.shape[:2] != right.shape[:2]:
            self.stats.count("bad_input")
            self._warn("bad_input", f"skipping stereo pair: left {left.shape[1]}x{left.shape[0]} and right "
                                    f"{right.shape[1]}x{right.shape[0]} differ")
            return
        self._enqueue(Frame(C.stamp_to_ns(left_msg.header.stamp), left_msg.header, left, right,
                            right_msg.header))

    # ------------------------------------------------------------------ in-process observers
    def add_observer(self, observer: Callable[..., None]) -> None:
        """Call ``observer(event, frame, result=None, latency_ms=None)`` on the worker thread.

        Events: ``"start"`` when the worker takes a frame, ``"result"`` after its outputs are published
        (with the ``FrameResult`` and the tracker latency), ``"end"`` when it is done with the frame
        (also for frames it skipped). For in-process tools such as bag replay and tests; observers must
        be quick, and an observer that raises is logged and removed, never stops the node.
        """
        self._observers.append(observer)

    def _notify(self, event: str, frame: Frame, result: Any = None, latency_ms: float | None = None) -> None:
        for observer in list(self._observers):
            try:
                observer(event, frame, result, latency_ms)
            except Exception as e:  # a tool's bug must not take the node down
                self._observers.remove(observer)
                self.get_logger().error(f"observer {observer!r} raised {type(e).__name__}: {e}; removed")

    # ------------------------------------------------------------------ worker thread
    def _work(self) -> None:
        while self._running:
            frame = self.stage.get(timeout=0.2)
            try:
                # also while no frame comes: a change (e.g. max_image_pixels) may be what lets frames in
                self._apply_pending()
                if frame is not None:
                    self._notify("start", frame)
                    try:
                        self._process(frame)
                    finally:
                        self._notify("end", frame)
            except Exception as e:  # never let one frame kill the node
                if not self._running or not self.context.ok():
                    break  # shutdown (SIGINT/SIGTERM) raced with this frame: publishers are gone
                self.stats.error(f"{type(e).__name__}: {e}")
                where = f"frame {frame.stamp_ns}" if frame is not None else "parameter update"
                self._warn("errors", f"{where} failed: {type(e).__name__}: {e}", error=True,
                           details="\n" + traceback.format_exc(limit=3))
                if type(e).__name__ == "OutOfMemoryError":
                    try:
                        self._shrink_budget()
                    except Exception as e2:  # noqa: BLE001
                        self.get_logger().error(f"could not reduce the keypoint budget: {e2}")

    def _shrink_budget(self) -> None:
        """CUDA out of memory: halve the keypoint budget (not below 64) and carry on."""
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        old = self.matcher.max_keypoints
        new = max(64, old // 2)
        if new == old:
            self.get_logger().error(f"out of memory at the smallest keypoint budget ({old}): frame skipped")
            return
        self.get_logger().warning(f"out of memory: frame skipped, reducing max_keypoints {old} -> {new}")
        self.matcher.max_keypoints = new
        self.p["max_keypoints"] = new
        self.p["min_keypoints"] = min(self.p["min_keypoints"], new)  # the controller needs min <= max
        self.controller = AlphaController(self._rate_config())

    def _ensure_tracker(self, frame: Frame) -> bool:
        with self._lock:
            left, right = self.camera.get("left"), self.camera.get("right")
        if left is None or (self.mode == "stereo" and right is None):
            self.stats.count("no_camera_info")
            self._warn("no_camera_info", "no camera_info yet: skipping frame")
            return False
        size = (frame.image.shape[1], frame.image.shape[0])
        if tuple(left.image_size) != size:  # the intrinsics are for another resolution: poses would be wrong
            self.stats.count("size_mismatch")
            self._warn("size_mismatch", f"skipping frame: image is {size[0]}x{size[1]} but camera_info is for "
                                        f"{left.image_size[0]}x{left.image_size[1]} (binning/ROI are not "
                                        "supported: publish camera_info for the image size)")
            return False
        if self.mode == "mono":
            if self.tracker is None:
                self.tracker = MonoTracker(self.matcher, left.K, self._tracking_config())
            self.tracker.K = left.K
        else:
            baseline = right.baseline_m
            if not baseline > 0:
                self.stats.count("bad_camera_info")
                self._warn("bad_camera_info", "right camera_info has no positive baseline (P[0,3] = -fx*B): "
                                              "skipping frame")
                return False
            T_lr = np.eye(4)
            T_lr[0, 3] = baseline
            if self.tracker is None:
                self.tracker = StereoTracker(self.matcher, left.K_rect, right.K_rect, T_lr,
                                             self._tracking_config())
            self.tracker.K_left, self.tracker.K_right, self.tracker.T_left_right = left.K_rect, right.K_rect, T_lr
        return True

    def _process(self, frame: Frame) -> None:
        if self.last_stamp_ns is not None and frame.stamp_ns <= self.last_stamp_ns:
            back_s = (self.last_stamp_ns - frame.stamp_ns) / NS
            if back_s < BACKWARD_RESET_S:
                self.stats.count("out_of_order")
                self._warn("out_of_order", "dropping frame: stamp not newer than the last one ("
                           + ("duplicate stamp" if back_s == 0 else f"{back_s * 1e3:.1f} ms back, out of order") + ")")
                return
            self.get_logger().warning(f"stamp jumped back {back_s:.1f} s (bag loop?): resetting tracking")
            self.stats.count("resets")
            self._reset()
        if not self._ensure_tracker(frame):
            return
        if self.last_stamp_ns is not None and frame.stamp_ns - self.last_stamp_ns > LONG_GAP_S * NS:
            self.stats.count("gaps")
            self._warn("gaps", f"{(frame.stamp_ns - self.last_stamp_ns) / NS:.1f} s since the last frame: matching "
                               "against the old reference; no velocity is published for this step")
        self.last_stamp_ns = frame.stamp_ns
        if self.mode == "mono":
            result = self.tracker.process(frame.image, frame.stamp_ns)
        else:
            result = self.tracker.process(frame.image, frame.right, frame.stamp_ns)
        latency_ms, cycle_ms = self.stage.finish()  # latency since extraction began; cycle: the busier stage
        self._publish(frame, result, latency_ms)
        self._notify("result", frame, result, latency_ms)
        alpha, max_kp = self.controller.update(cycle_ms)
        if not self.controller.fixed:
            if self.p["early_exit"]:
                self.matcher.alpha = alpha
            if max_kp != self.matcher.max_keypoints:
                self.matcher.max_keypoints = max_kp
        match = result.temporal
        self.stats.processed(latency_ms, keypoints=len(match.keypoints1) if match is not None else 0,
                             matches=len(match) if match is not None else None,
                             stop_layer=match.stop_layer if match is not None else None,
                             pose_ok=None if match is None else result.pose is not None,
                             inlier_ratio=result.inlier_ratio, failure=result.reason)

    def _reset(self) -> None:
        if self.tracker is not None:
            self.tracker.reset()
        self.T_odom_base = np.eye(4)
        self.odom_cov = np.zeros((6, 6))
        # pose and covariance of the tracker's reference frame (keyframe): relative poses are to it
        self.T_odom_base_ref = np.eye(4)
        self.odom_cov_ref = np.zeros((6, 6))
        self.images.clear()
        self.last_stamp_ns = None

    # ------------------------------------------------------------------ outputs
    def _frame_id(self, header: Header, side: str = "left") -> str:
        if self.p["camera_frame"]:
            return self.p["camera_frame"]
        return header.frame_id or (self.camera[side].frame_id if side in self.camera else "camera_optical_frame")

    def _publish(self, frame: Frame, result, latency_ms: float) -> None:
        alpha = self.matcher.alpha if self.matcher.alpha is not None else -1.0
        size = (frame.image.shape[1], frame.image.shape[0])
        cam_frame = self._frame_id(frame.header)
        header = Header(stamp=frame.header.stamp, frame_id=cam_frame)
        if result.temporal is not None and result.reference_stamp_ns is not None:
            ref_image = self.images.get(result.reference_stamp_ns)
            ref_size = size if ref_image is None else (ref_image.shape[1], ref_image.shape[0])
            self.pub_matches.publish(C.build_matches_msg(
                result.temporal, header, result.reference_stamp_ns, frame.stamp_ns, cam_frame, cam_frame,
                self.Matches.PAIR_TEMPORAL, ref_size, size, self.features, alpha,
                result.timings_ms.get("match", 0.0) + result.timings_ms.get("extract", 0.0)))
            if ref_image is not None and self.pub_debug.get_subscription_count() > 0:
                self._publish_debug(ref_image, frame.image, result.temporal, header)
        if result.stereo is not None:
            right_frame = self._frame_id(frame.right_header, "right") if not self.p["camera_frame"] else cam_frame
            self.pub_matches.publish(C.build_matches_msg(
                result.stereo, header, frame.stamp_ns, frame.stamp_ns, cam_frame, right_frame,
                self.Matches.PAIR_STEREO, size, size, self.features, alpha, result.timings_ms.get("stereo", 0.0)))
        if result.pose is not None:
            self.pub_pose.publish(C.pose_with_covariance_msg(result.pose.as_matrix(), result.pose.covariance,
                                                             Header(stamp=frame.header.stamp, frame_id=cam_frame)))
            self._publish_odometry(frame, result)
        if result.is_keyframe:  # this frame is the next reference: its odometry pose anchors the next steps
            self.T_odom_base_ref, self.odom_cov_ref = self.T_odom_base.copy(), self.odom_cov.copy()
        # keep the reference image (and this one, which may become the next reference)
        keep = {frame.stamp_ns: frame.image}
        if result.reference_stamp_ns in self.images and not result.is_keyframe:
            keep[result.reference_stamp_ns] = self.images[result.reference_stamp_ns]
        self.images = keep

    def _publish_odometry(self, frame: Frame, result) -> None:
        rel = G.relative_pose_in_base(result.pose, self.T_base_cam)
        T_rel = rel.as_matrix()
        # The pose is relative to the tracker's reference (the previous frame, or the keyframe), so it
        # composes with the reference's odometry pose, not with the last frame's. First-order
        # propagation: the step covariance, rotated into the odom frame, adds to the reference's.
        R = self.T_odom_base_ref[:3, :3]
        A = np.zeros((6, 6))
        A[:3, :3] = R
        A[3:, 3:] = R
        odom_cov = self.odom_cov_ref + A @ rel.covariance @ A.T
        T_odom_base = self.T_odom_base_ref @ T_rel
        if not (np.isfinite(odom_cov).all() and np.isfinite(T_odom_base).all()):
            raise ValueError("non-finite odometry step: not accumulated, not published")
        self.odom_cov, self.T_odom_base = odom_cov, T_odom_base
        dt = (frame.stamp_ns - result.reference_stamp_ns) / NS if result.reference_stamp_ns else 0.0
        header = Header(stamp=frame.header.stamp, frame_id=self.p["odom_frame"])
        twist = twist_cov = None
        if 0 < dt <= LONG_GAP_S:  # over a long gap the mean motion is no velocity: twist stays unknown
            twist = np.concatenate([T_rel[:3, 3] / dt, G.so3_log(T_rel[:3, :3]) / dt])
            twist_cov = rel.covariance / dt**2
        self.pub_odom.publish(C.odometry_msg(self.T_odom_base, self.odom_cov, header, self.p["base_frame"],
                                             twist=twist, twist_cov=twist_cov))
        if self.p["publish_tf"] and self._tf is not None:
            self._broadcast_tf(header)

    def _make_tf_broadcaster(self):
        try:
            from tf2_ros import TransformBroadcaster
        except ImportError:
            if self.p["publish_tf"]:
                self.get_logger().warning("publish_tf is set but tf2_ros is not installed: no TF is broadcast")
            return None
        return TransformBroadcaster(self)

    def _broadcast_tf(self, header: Header) -> None:
        from geometry_msgs.msg import TransformStamped

        t = TransformStamped()
        t.header = header
        t.child_frame_id = self.p["base_frame"]
        t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = (
            float(v) for v in self.T_odom_base[:3, 3])
        q = G.matrix_to_quaternion(self.T_odom_base[:3, :3])
        t.transform.rotation.x, t.transform.rotation.y, t.transform.rotation.z, t.transform.rotation.w = (
            float(v) for v in q)
        self._tf.sendTransform(t)

    def _publish_debug(self, image0: np.ndarray, image1: np.ndarray, match, header: Header) -> None:
        from ..visualization import draw_matches

        canvas = draw_matches(image0, image1, match.points0, match.points1, match.scores)
        self.pub_debug.publish(C.numpy_to_image(canvas, "rgb8", header))

    def _publish_diagnostics(self) -> None:
        snap = self.stats.snapshot()
        if self.mode == "stereo":
            snap["frames_dropped"] += self.sync.dropped  # unpaired / late stereo halves
            snap.update(sync_dropped=self.sync.dropped, sync_duplicates=self.sync.duplicates,
                        sync_resets=self.sync.resets, sync_pairs=self.sync.emitted)
        with self._lock:
            has_info = "left" in self.camera and (self.mode == "mono" or "right" in self.camera)
        level, reason = diagnostic_level(snap, self.p["target_rate_hz"], has_info)
        status = DiagnosticStatus(level=bytes([level]), name=f"{self.get_fully_qualified_name()}: matcher",
                                  message=reason, hardware_id=str(self.matcher.device))
        values = {**{k: v for k, v in snap.items() if k not in ("seconds_since_error",)},
                  "alpha": self.matcher.alpha if self.matcher.alpha is not None else -1.0,
                  "max_keypoints": self.matcher.max_keypoints, "device": str(self.matcher.device),
                  "features": self.features, "weights": self.matcher.weights_source, "mode": self.mode,
                  "num_layers": self.matcher.num_layers, "target_rate_hz": self.p["target_rate_hz"],
                  **self.controller.diagnostics(), **self.stage.diagnostics()}
        status.values = [KeyValue(key=k, value=f"{v:.3f}" if isinstance(v, float) else str(v))
                         for k, v in values.items()]
        self.pub_diag.publish(DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()),
                                              status=[status]))

    def destroy_node(self) -> None:
        self._running = False
        self.slot.close()
        self.stage.close()
        if self.worker.is_alive():
            self.worker.join(timeout=5.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    try:
        rclpy.init(args=args)
    except Exception as e:  # a malformed --ros-args rule (e.g. `-p name:=` with no value)
        print(f"[matcher_node] error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    node = None
    try:
        node = MatcherNode(command_line=sys.argv if args is None else args)
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as e:  # startup errors (weights, parameters): one clear line, non-zero exit
        print(f"[matcher_node] error: {e}", file=sys.stderr)
        return 1
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
