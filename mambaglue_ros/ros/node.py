"""``matcher_node``: camera topics -> /matches, tracks, tracking status, relative poses, odometry, diagnostics.

Thin glue. The callbacks only convert and enqueue (latest frame wins, drops counted); one worker
thread runs the pipeline (``tracking`` -> ``Matcher`` -> ``geometry``; ``tracks``,
``tracking_state`` and ``odometry`` for the back-end outputs) off the executor, then publishes.
Everything it calls is plain Python tested without ROS.

Topics (relative names, so namespaces and remaps work):
  in   mono:   image (sensor_msgs/Image) or image/compressed (transport:=compressed), camera_info
       stereo: left/image_rect, right/image_rect (or .../compressed), left/camera_info, right/camera_info
  out  matches (mambaglue_ros/Matches): temporal pairs, and stereo pairs in stereo mode
       ~/tracks (mambaglue_ros/Tracks): every keypoint of each processed frame with a persistent track id
       ~/tracks_cloud (sensor_msgs/PointCloud, publish_tracks_cloud): the same in the VINS feature layout
       ~/status (mambaglue_ros/TrackingStatus): OK / LOST / INITIALIZING / RESET per frame and at resets
         (with the alpha / keypoint budget / resolution the frame was matched with and the controller state)
       ~/relative_pose_ref (mambaglue_ros/RelativePose): T_ref_cur with both stamps and the keyframe id
       ~/relative_pose (PoseWithCovarianceStamped): the same pose without the reference (compatibility)
       ~/odom (nav_msgs/Odometry): odom_frame -> base_frame (REP-105), twist in base_frame
       ~/debug_image (Image): reference | current with matches, built only while someone subscribes
       /diagnostics (DiagnosticArray) every diagnostics_period_s (steady clock)
  srv  ~/reset (std_srvs/Trigger): odometry back to initial_pose; ~/set_pose (mambaglue_ros/SetPose)
Frames without a pose (too few matches/inliers): no relative pose and no odometry is published for
them (a null odometry with publish_null_when_lost), ~/status says LOST and why, and tracking
continues from the next frame.

``matcher_node --lifecycle`` runs ``LifecycleMatcherNode`` (configure / activate / deactivate /
cleanup, for Nav2-style bring-up).
"""
from __future__ import annotations

import argparse
import copy
import math
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
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.publisher import Publisher
from rclpy.qos import HistoryPolicy, QoSPolicyKind, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.service import Service
from rclpy.subscription import Subscription
from rclpy.timer import Timer
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud
from std_msgs.msg import Header
from std_srvs.srv import Trigger
from geometry_msgs.msg import PoseWithCovarianceStamped

from .. import geometry as G
from ..camera_model import ImageRectifier, PointUndistorter, pose_in_camera_frame, stereo_row_offset_px
from ..mono_scale import FramePeriod
from ..odometry import OdometryIntegrator
from ..pipeline import (ExtractionStage, PrefetchingMatcher, StereoPlacement, controlled_time_ms, pipeline_enabled,
                        torch_threads)
from ..rate_control import AlphaController
from ..runtime import (NO_OUTPUT, FrameSlot, RuntimeStats, StampGate, bound_teardown, diagnostic_level,
                       dump_stacks_on_signals)
from ..tracking import SHARPNESS_MISMATCH, MonoTracker, StereoTracker
from ..tracking_state import KeyframeIds, TrackingState, TrackingStateMachine
from ..tracks import TrackManager
from . import convert as C
from . import params as P
from .params import pose_params_to_matrix, unapplied_parameter_rules
from .sync import StereoSynchronizer

NODE_NAME = "mambaglue_matcher"
REFLECT_PERIOD_S = 1.0  # values the node changes itself (rate controller) show as parameters at most this often
# median row distance of left/right matches above which a stereo pair is called not rectified: rectified pairs show
# ~0.5 px of detection noise
STEREO_ROW_OFFSET_PX = 2.0
WARN_PERIOD_S = 5.0  # the same kind of warning is logged at most once per period
WORKER_JOIN_S = 5.0  # how long deactivate / activate / cleanup wait for the worker to finish the frame it is on


@dataclass
class Frame:
    """One unit of work for the worker: image(s) with their stamp and frame ids. Compressed images arrive as their
    messages (``compressed``) and are decoded by the stage that takes the frame (``MatcherNode._decode_frame``)."""

    stamp_ns: int
    header: Header
    image: np.ndarray | None = None
    right: np.ndarray | None = None
    right_header: Header | None = None
    raw: tuple[np.ndarray, np.ndarray] | None = None  # stereo_rectify: the images as received, once rectified
    rectified_by: Any = None  # ... and the rectifiers that made image and right of them
    compressed: tuple[Any, ...] | None = None  # CompressedImage messages (left[, right]) not decoded yet
    undecodable: bool = False  # their decoding failed (counted and warned once)


def build_matcher(p: dict[str, Any], features: str):
    """The matcher the parameters ask for (MambaGlue, LightGlue on the same front end, or ORB)."""
    if p["matcher"] == "orb":
        from ..baselines import OrbMatcher

        return OrbMatcher(max_keypoints=p["max_keypoints"])
    from ..matcher import Matcher

    options: dict[str, Any] = {"filter_threshold": p["filter_threshold"], "mamba_ffn_rank": p["mamba_ffn_rank"]}
    weights = p["weights"] or None
    if p["matcher"] == "lightglue":  # LightGlue = our network with the attention mixer and its own head
        options.update(mixer="attention", regressor="linear")
        weights = "lightglue"
    return Matcher(features=features, weights=weights, device=p["device"], max_keypoints=p["max_keypoints"],
                   detection_threshold=p["detection_threshold"] or None, resize_max=p["resize_max"] or None,
                   alpha=p["alpha"] if p["early_exit"] else None,
                   extractor_weights=p["extractor_weights"] or None, precision=p["precision"], **options)


def resolve_features(features: str, device: str) -> str:
    """'auto' -> XFeat on CPU (real time on small CPUs), ALIKED on CUDA (more accurate, GPU-fast)."""
    if features != "auto":
        return features
    import torch

    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return "aliked" if on_gpu else "xfeat"


class MatcherNode(Node):
    LIFECYCLE = False  # the managed node reads its startup parameters at configure (LifecycleMatcherNode)

    def __init__(self, command_line: list[str] | None = None,
                 matcher_factory: Callable[[dict[str, Any], str], Any] | None = None, **kwargs: Any) -> None:
        """command_line: the process arguments (``main`` passes them) to check that every ``-p`` rule
        took effect; matcher_factory(parameters, features): the matcher to use instead of building one (the
        multi-camera node hands every camera a client of one shared matcher); kwargs go to rclpy's Node."""
        self._matcher_factory = matcher_factory or build_matcher
        super().__init__(NODE_NAME, **kwargs)
        try:
            self._init_parameters(command_line)
            self._configure()
        except BaseException:
            self._destroy_half_built()
            raise
        self._activate()

    def _destroy_half_built(self) -> None:
        """Destroy the rcl node when construction failed (a bad parameter, missing weights), before the error
        propagates: otherwise rclpy finalises it at interpreter exit, after ``rclpy.shutdown``, and the process
        can crash there instead of exiting 1 (rc -11 was seen once in CI after a bad parameter). Our
        ``destroy_node`` expects a built node; this one stops only what may exist."""
        if getattr(self, "stage", None) is not None:
            self.stage.close()
        super(MatcherNode, self).destroy_node()

    # ------------------------------------------------------------------ set-up in steps (lifecycle: one per transition)
    def _init_parameters(self, command_line: list[str] | None) -> None:
        """Declare and check the parameters; state that lives as long as the node."""
        self.p = P.declare_parameters(self, self.LIFECYCLE)  # raises with every reason on a bad configuration
        self._configured = False  # between _configure and _cleanup (a lifecycle node's startup parameters are fixed)
        # rclpy has no public accessor for the overrides (-p rules, params files): a misspelt name is kept there
        # unused, and only this warning tells the user their value is not in force
        self.parameter_warnings = P.unknown_parameter_warnings(getattr(self, "_parameter_overrides", {}),
                                                               self.list_parameters([], 0).names)
        for warning in self.parameter_warnings:
            self.get_logger().warning(warning)
        # The keypoint ceiling: the user's max_keypoints (or the OOM cut). The rate controller's current budget
        # is shown in the max_keypoints parameter too, but must not become the ceiling of the next controller.
        self._keypoint_ceiling = int(self.p["max_keypoints"])
        unapplied = unapplied_parameter_rules(command_line or [], self.p, self.get_name())
        if unapplied:
            raise ValueError("invalid parameters:\n  " + "\n  ".join(unapplied))
        self.stats = RuntimeStats()
        self._lock = threading.Lock()
        self._pending: dict[str, Any] = {}
        self._warned: dict[str, float] = {}
        self._internal = threading.local()  # set while the node writes its own parameters
        self._reflect_pending: dict[str, Any] = {}  # values the node changed itself, to show as parameters
        self._observers: list[Callable[..., None]] = []
        self._running = False
        self._active = False
        self.worker: threading.Thread | None = None
        # made by _configure; None until then, so that a cleanup after a configure that failed early (or a shutdown
        # of a node never configured) has nothing to close
        self.tracker: MonoTracker | StereoTracker | None = None
        self.matcher: Any = None
        self._entities: list[Any] = []  # publishers, subscriptions, services, timers made by _configure
        self.mode = self.p["mode"]
        # What a back end keys its state on must not repeat within the node's life, also across lifecycle
        # configurations: the reference's keyframe id (0 = none yet), the count of resets in ~/status and the
        # track ids.
        self.keyframes = KeyframeIds()
        self.tracks = TrackManager()
        self.tracking_state = TrackingStateMachine()
        self._configurations = 0
        from ..features import MIN_IMAGE_SIDE

        self.min_image_side = MIN_IMAGE_SIDE
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def _configure(self) -> None:
        """Load the matcher, create the tracking state, publishers, services and subscriptions."""
        import torch

        with self._lock:
            self._configured = True
            self.mode = self.p["mode"]  # a lifecycle node may have been given another while unconfigured

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        from ..matcher import resolve_device

        cuda = self.p["matcher"] != "orb" and resolve_device(self.p["device"]).type == "cuda"
        self.pipelined = pipeline_enabled(self.p["pipeline"], self.p["target_rate_hz"], self.p["mode"] == "stereo",
                                          cuda=cuda)
        threads = torch_threads(self.p["num_threads"], cores, pipelined=self.pipelined)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        self.features = resolve_features(self.p["features"], self.p["device"])
        # stage 1 of the pipeline computes ahead what the tracker asks this matcher for (pipeline.py)
        self.matcher = PrefetchingMatcher(self._matcher_factory(self.p, self.features))
        if self.p["matcher"] == "orb":
            self.features = "orb"
        if self.p["cuda_graph"]:  # captured now, before the worker and stage threads use the GPU
            if not cuda:
                self.get_logger().warning("cuda_graph needs the matcher on CUDA; ignored on the CPU")
            elif self.matcher.cuda_graph_active:  # multi-camera: the shared matcher, captured by the first camera
                self.get_logger().info("matcher already runs as a CUDA graph (shared)")
            elif self.matcher.use_cuda_graph(True):
                self.get_logger().info(f"matcher captured as a CUDA graph ({self.matcher.max_keypoints} keypoints)")
            if cuda and self._graphed_extraction():
                self.get_logger().info("XFeat extraction: one CUDA graph per image size, captured at its first image")
        self.controller = AlphaController(self._rate_config())
        self._set_image_scale(self.controller.image_scale)  # multi-camera: not another camera's resolution
        self.T_base_cam = pose_params_to_matrix(self.p["camera_to_base"])
        # camera_to_base_from_tf: T_base_camera per camera frame id, from TF once it is there (_ensure_extrinsics)
        self._tf_buffer = self._make_tf_buffer() if self.p["camera_to_base_from_tf"] else None
        self._extrinsics: dict[str, np.ndarray] = {}
        self.tracker = None
        self.camera: dict[str, C.CameraModel] = {}
        # stereo_rectify: each camera's remap tables, built when its camera_info first comes or changes (both stages
        # read them; a frame remembers which made its images)
        self._rectifiers: dict[str, ImageRectifier] = {}
        # camera_info changes: a count, so a change that arrives while a frame is being set up is not lost
        self._calibration_changes = self._calibration_changes_applied = 0
        self.stamps = StampGate()  # the last frame's stamp; late, duplicate, jumped-back stamps and long gaps
        self.odometry = OdometryIntegrator(max_twist_dt_s=self.stamps.long_gap_s)
        self.odometry.reset(pose_params_to_matrix(self.p["initial_pose"]))
        self.tracks.reset()
        # configured again (lifecycle cleanup -> configure): tracking and the odometry start over, so the first
        # frame taken publishes RESET (keyframe ids and the reset count go on from the node's earlier configuration;
        # counted at the end of a configuration that succeeded)
        self._reset_at_first_frame = self._configurations > 0
        self._origin_pending = True  # the first reference's ~/odom (where the odometry starts) is still to come
        self.keyframes.clear()  # no frame is a reference yet (the ids go on from an earlier configuration)
        self._reset_requests: list[tuple[np.ndarray, np.ndarray, str, threading.Event]] = []
        self.images: dict[int, np.ndarray] = {}  # recent images by stamp, for the debug image
        self._tf = self._make_tf_broadcaster()

        reliability = (ReliabilityPolicy.RELIABLE if self.p["qos_reliability"] == "reliable"
                       else ReliabilityPolicy.BEST_EFFORT)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=self.p["qos_depth"], reliability=reliability,
                         durability=qos_profile_sensor_data.durability)
        from ..msg import Matches, RelativePose, TrackingStatus, Tracks
        from ..srv import SetPose

        self.Matches = Matches
        keep = self._entities.append
        self.pub_matches = self.create_publisher(Matches, "matches", 10)
        self.pub_pose = self.create_publisher(PoseWithCovarianceStamped, "~/relative_pose", 10)
        self.pub_relative = self.create_publisher(RelativePose, "~/relative_pose_ref", 10)
        self.pub_odom = self.create_publisher(Odometry, "~/odom", 10)
        self.pub_tracks = self.create_publisher(Tracks, "~/tracks", 10)
        self.pub_tracks_cloud = self.create_publisher(PointCloud, "~/tracks_cloud", 10)
        self.pub_status = self.create_publisher(TrackingStatus, "~/status", 10)
        self.pub_debug = self.create_publisher(Image, "~/debug_image", 2)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        for pub in (self.pub_matches, self.pub_pose, self.pub_relative, self.pub_odom, self.pub_tracks,
                    self.pub_tracks_cloud, self.pub_status, self.pub_debug, self.pub_diag):
            keep(pub)
        guard = self._guarded
        keep(self.create_service(Trigger, "~/reset", self._guarded_service(self._on_reset_service)))
        keep(self.create_service(SetPose, "~/set_pose", self._guarded_service(self._on_set_pose_service)))

        image_type = CompressedImage if self.p["transport"] == "compressed" else Image
        suffix = "/compressed" if self.p["transport"] == "compressed" else ""
        # `qos_overrides.<topic>.subscription.<policy>` parameters (params file) override `qos`
        overrides = QoSOverridingOptions.with_default_policies()
        # camera_info also takes durability: a calibration published once and latched (transient_local, as static
        # camera_info publishers do) reaches only a transient_local subscription, which a volatile publisher
        # (camera drivers) cannot serve, so the default stays volatile and the params file can ask for the other
        info_overrides = QoSOverridingOptions(policy_kinds=(*overrides.policy_kinds, QoSPolicyKind.DURABILITY))

        def subscribe(msg_type, topic: str, callback) -> None:
            # a copy each: rclpy applies a topic's overrides to the profile object it is given, so one shared
            # profile would carry one topic's override (e.g. reliable images) into the other subscriptions
            keep(self.create_subscription(msg_type, topic, guard(callback), copy.copy(qos),
                                          qos_overriding_options=info_overrides if msg_type is CameraInfo
                                          else overrides))

        for text in self._input_topic_warnings():
            self.get_logger().warning(text)
        if self.mode == "mono":
            subscribe(image_type, "image" + suffix, self._on_mono_image)
            subscribe(CameraInfo, "camera_info", lambda m: self._on_camera_info("left", m))
        else:
            self.sync = StereoSynchronizer(self._on_stereo_pair, slop_s=self.p["sync_slop"], queue_size=10)
            subscribe(image_type, "left/image_rect" + suffix, self._on_left)
            subscribe(image_type, "right/image_rect" + suffix, self._on_right)
            subscribe(CameraInfo, "left/camera_info", lambda m: self._on_camera_info("left", m))
            subscribe(CameraInfo, "right/camera_info", lambda m: self._on_camera_info("right", m))

        self.slot = FrameSlot(self.p["queue_size"])
        # the camera's frame period from every received image (mono) or stereo pair: the trackers count a step's time
        # in periods (mono step lengths; stereo: where pnp_ransac auto may take the covariance gate)
        self.input_period = FramePeriod()
        self.stereo_placement = StereoPlacement()  # the stage that runs the left/right match (balances the two)
        self.stage = ExtractionStage(lambda: self.slot, self._prefetch, enabled=self.pipelined,
                                     stamp_ns=lambda f: f.stamp_ns,  # frames left out to hold target_rate_hz:
                                     on_skip=lambda: self.stats.count("frames_dropped"))
        self.stage.set_rate(self.p["target_rate_hz"])
        # a steady clock: under use_sim_time a paused /clock (bag paused or ended) must not stop
        # the diagnostics that would tell why nothing comes out
        keep(self.create_timer(self.p["diagnostics_period_s"], guard(self._publish_diagnostics),
                               clock=Clock(clock_type=ClockType.STEADY_TIME)))
        self.get_logger().info(
            f"mode={self.mode} features={self.features} weights={self.matcher.weights_source} "
            f"device={self.matcher.device} max_keypoints={self.matcher.max_keypoints} "
            f"alpha={self.matcher.alpha} target_rate_hz={self.p['target_rate_hz']} "
            f"precision={getattr(self.matcher, 'precision', 'fp32')} "
            f"extractor_precision={getattr(getattr(self.matcher, 'extractor', None), 'precision', 'fp32')}")
        if self.p["matcher"] == "mambaglue" and str(self.matcher.device).startswith("cpu"):
            from ..models.ssm_cpu import cpu_scan_status  # the scan kernel in use, or why the slower torch scan
            self.get_logger().info(f"CPU selective scan: {cpu_scan_status()}")
        self._configurations += 1

    def _join_worker(self) -> bool:
        """Wait (up to WORKER_JOIN_S) for a stopped worker to finish the frame it is on; True when none is left. A
        worker still busy is kept: a second one, or a cleanup under it, would share or destroy its tracker."""
        if self.worker is not None:
            self.worker.join(timeout=WORKER_JOIN_S)
            if self.worker.is_alive():
                return False
            self.worker = None
        return True

    def _activate(self) -> None:
        """Start the worker; frames are accepted from now on. Raises RuntimeError while the worker of an earlier
        activation is still finishing its frame."""
        if not self._join_worker():
            raise RuntimeError(f"the previous worker is still processing a frame after {WORKER_JOIN_S:.0f} s")
        self._running = True
        self.worker = threading.Thread(target=self._work, name="mambaglue-worker", daemon=True)
        self.worker.start()
        self._active = True

    def _deactivate(self) -> None:
        """Refuse new frames and stop the worker (what it holds is kept for a later activation)."""
        self._active = False
        self._running = False
        if getattr(self, "slot", None) is not None:
            self.slot.close()
        if not self._join_worker():
            self.get_logger().warning(f"the worker is still processing a frame after {WORKER_JOIN_S:.0f} s; "
                                      "it stops after that frame")
        if getattr(self, "slot", None) is not None:
            self.slot = FrameSlot(self.p["queue_size"])

    def _cleanup(self) -> None:
        """Destroy what ``_configure`` made (after ``_deactivate``)."""
        for entity in reversed(self._entities):
            destroy = {Publisher: self.destroy_publisher, Subscription: self.destroy_subscription,
                       Service: self.destroy_service, Timer: self.destroy_timer}
            for kind, fn in destroy.items():
                if isinstance(entity, kind):
                    fn(entity)
        self._entities.clear()
        if getattr(self, "stage", None) is not None:
            self.stage.close()
        if hasattr(getattr(self, "tracker", None), "close"):  # the stereo tracker's bundle-adjustment thread
            self.tracker.close()
        if hasattr(getattr(self, "_tf_listener", None), "unregister"):  # its /tf and /tf_static subscriptions
            self._tf_listener.unregister()
        self._tf_listener = None
        self.tracker = None
        self.matcher = None
        with self._lock:
            self._configured = False
            self._fold_pending({})  # changes the worker had not applied: the next configure reads them

    # ------------------------------------------------------------------ parameters
    def _rate_config(self) -> dict[str, Any]:
        return {"target_rate_hz": self.p["target_rate_hz"], "alpha_min": self.p["alpha_min"],
                "alpha_max": self.p["alpha_max"], "alpha_init": self.p["alpha"],
                "adapt_keypoints": self.p["adapt_keypoints"], "min_keypoints": self.p["min_keypoints"],
                "max_keypoints": self._keypoint_ceiling, "max_pose_hypotheses": self.p["pose_hypotheses"],
                "adapt_resolution": self.p["min_image_scale"] < 1.0 and self.pipelined and not self._graphed_extraction(),
                "min_image_scale": self.p["min_image_scale"]}

    def _graphed_extraction(self) -> bool:
        """XFeat extraction replays CUDA graphs, one capture per image size: the resolution knob stays off (every
        32 px step would be a capture, and on a GPU the front end takes milliseconds)."""
        return bool(getattr(getattr(self.matcher, "extractor", None), "cuda_graph_active", False))

    def _tracking_config(self) -> dict[str, Any]:
        return {"policy": self.p["keyframe_policy"], "keyframe_min_matches": self.p["keyframe_min_matches"],
                "keyframe_max_parallax_px": self.p["keyframe_max_parallax_px"],
                "min_matches": self.p["min_matches"], "min_inliers": self.p["min_inliers"],
                # mono: the essential-matrix (Sampson) threshold; stereo: the PnP reprojection threshold
                "ransac_px": self.p["ransac_px"], "pnp_ransac_px": self.p["ransac_px"],
                "pose_hypotheses": self.p["pose_hypotheses"], "mono_window": self.p["mono_window"],
                "mono_scale": self.p["mono_scale"], "max_sharpness_ratio": self.p["max_sharpness_ratio"],
                # stereo only (the mono tracker ignores them)
                "ba_window": self.p["ba_window"], "pnp_readmit": self.p["pnp_readmit"],
                "pnp_ransac": self.p["pnp_ransac"],
                "stereo_matching": self.p["stereo_matching"], "max_lost_frames": self.p["max_lost_frames"]}

    def _unappliable_changes(self, current: dict[str, Any], changes: dict[str, Any], unconfigured: bool) -> list[str]:
        """Changes this node could take by the rules but cannot carry out (refused rather than silently dropped)."""
        changed = {name for name, value in changes.items() if value != current.get(name)}
        reasons = []
        if unconfigured and self._configurations > 0:
            # rclpy declared the subscriptions' qos_overrides.* parameters (read-only) at the first configure, and on
            # each later one re-applies those values over the profile made from qos_reliability / qos_depth
            reasons += [f"{name} cannot be changed after the node's first configure (the subscriptions keep their "
                        "QoS: rclpy's qos_overrides parameters are fixed then); restart the node"
                        for name in sorted(changed & {"qos_reliability", "qos_depth"})]
        no_broadcaster = getattr(self, "_tf", None) is None
        if "publish_tf" in changed and changes["publish_tf"] and not unconfigured and no_broadcaster:
            reasons.append("publish_tf: tf2_ros is not installed, so no TF can be broadcast (install ros-<distro>-"
                           "tf2-ros; ~/odom carries the same pose)")
        return reasons

    def _on_set_parameters(self, params) -> SetParametersResult:
        if getattr(self._internal, "writing", False):  # the node showing a value it already applied
            return SetParametersResult(successful=True)
        asked = {p.name: p.value for p in params}
        with self._lock:  # applied by the worker between frames
            # the rate controller's alpha moves into new alpha bounds rather than refusing them
            changes = P.clamp_controlled_alpha({**self.p, **self._pending}, asked)
            # validated against the changes still waiting for the worker too: alpha:=0.85 then
            # alpha_min:=0.9 must not both pass because each is fine against the values in effect
            unconfigured = self.LIFECYCLE and not self._configured
            reasons = P.validate_changes({**self.p, **self._pending}, changes, self.LIFECYCLE, unconfigured)
            reasons += self._unappliable_changes({**self.p, **self._pending}, changes, unconfigured)
            shared = getattr(self._matcher_factory, "shared_parameters", ())  # multi-camera: one network for all
            reasons += [f"{name} is shared by every camera of the multi-camera node: set it at start for all"
                        for name in changes if name in shared and changes[name] != self.p.get(name)]
            refuse = getattr(self._matcher_factory, "refuse_change", None)  # multi-camera: one TF broadcaster
            if refuse is not None and not reasons:  # (it takes note of what it lets through)
                reason = refuse({**self.p, **self._pending}, changes)
                if reason:
                    reasons.append(reason)
            if reasons:
                return SetParametersResult(successful=False, reason="; ".join(reasons))
            if unconfigured:  # no worker to apply it: configure reads the values
                self._fold_pending({k: v for k, v in changes.items() if k in P.SPECS})
            else:
                self._pending.update({k: v for k, v in changes.items() if k in P.SPECS})
        if changes.keys() - asked.keys():  # the clamped alpha: the parameter shows it once applied
            self._show_as_parameters({k: changes[k] for k in changes.keys() - asked.keys()})
        return SetParametersResult(successful=True)

    def _fold_pending(self, changes: dict[str, Any]) -> None:
        """No worker will apply them (unconfigured): the waiting changes, then ``changes``, go into the values
        configure reads. The keypoint ceiling moves only with a user's max_keypoints (the value shown there may be
        the rate controller's budget). Caller holds the lock."""
        changes, self._pending = {**self._pending, **changes}, {}
        self.p.update(changes)
        if "max_keypoints" in changes:
            self._keypoint_ceiling = int(self.p["max_keypoints"])

    def _show_as_parameters(self, values: dict[str, Any]) -> None:
        """Queue values the node changed itself (OOM keypoint cut, rate controller) to be written to
        its ROS parameters, so ``ros2 param get`` shows what is in effect (executor thread does it)."""
        with self._lock:
            self._reflect_pending.update(values)

    def _write_shown_parameters(self) -> None:
        """Write queued own values to the ROS parameters (executor thread; parameter services run in
        the same callback group, so this never interleaves with a user's change)."""
        with self._lock:
            values, self._reflect_pending = self._reflect_pending, {}
        if not values:
            return
        self._internal.writing = True
        try:  # values changed at one time (alpha and the keypoint budget): one callback, one parameter event
            result = self.set_parameters_atomically([Parameter(k, value=v) for k, v in values.items()])
        finally:
            self._internal.writing = False
        if not result.successful:  # all or nothing: say so rather than show neither silently
            self.get_logger().warning(f"could not show {values} as parameters: {result.reason}")

    def _apply_pending(self) -> None:
        with self._lock:  # p and pending change together: a concurrent change is validated against both
            changes, self._pending = self._pending, {}
            self.p.update(changes)
        if not changes:
            return
        if "max_keypoints" in changes:  # a user's change (the node's own values bypass the pending queue)
            self._keypoint_ceiling = int(self.p["max_keypoints"])
        if changes.keys() & {"target_rate_hz", "alpha", "alpha_min", "alpha_max", "adapt_keypoints",
                             "min_keypoints", "max_keypoints", "pose_hypotheses", "min_image_scale"}:
            self.controller = AlphaController(self._rate_config())
            self._set_image_scale(self.controller.image_scale)  # a new controller starts at full resolution
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
                                                          "min_inliers", "ransac_px", "pose_hypotheses",
                                                          "pnp_ransac", "max_lost_frames",
                                                          "max_sharpness_ratio"}:
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
                self._callback_failed(e)
                return None
        return run

    def _guarded_service(self, callback):
        """``_guarded`` for a service whose response has ``success`` and ``message``: the caller is answered
        (success false, the error) rather than left waiting; rclpy sends whatever the callback returns, and
        a ``None`` raises out of ``spin``."""
        def run(request, response):
            try:
                return callback(request, response)
            except Exception as e:  # noqa: BLE001 - the node must outlive any one request
                self._callback_failed(e)
                response.success, response.message = False, f"failed: {type(e).__name__}: {e}"
                return response
        return run

    def _callback_failed(self, error: Exception) -> None:
        if not self.context.ok():
            return  # shutting down
        self.stats.error(f"{type(error).__name__}: {error}")
        self._warn("errors", f"callback failed: {type(error).__name__}: {error}", error=True,
                   details="\n" + traceback.format_exc(limit=3))

    # ------------------------------------------------------------------ input callbacks (executor thread)
    def _decode(self, msg) -> np.ndarray | None:
        max_pixels = self.p["max_image_pixels"]
        try:
            if isinstance(msg, CompressedImage):  # the size is read from the header before decoding
                image = C.compressed_to_numpy(msg, max_pixels=max_pixels, mono16_shift=self.p["mono16_shift"])
            else:
                if msg.width * msg.height > max_pixels:  # refused before any conversion
                    raise C.OversizedImageError(msg.width, msg.height, max_pixels)
                image = C.image_to_numpy(msg, mono16_shift=self.p["mono16_shift"])
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
        rectify = self.mode == "stereo" and self.p["stereo_rectify"]
        rectifier = None
        try:
            model = C.CameraModel.from_msg(msg)
            if self.mode == "mono" and not self.p["rectified_input"]:
                PointUndistorter(model.K, model.D, model.distortion_model)  # a model we can undo?
            old = self.camera.get(side)
            if rectify and (old is None or side not in self._rectifiers or not self._same_calibration(old, model)):
                rectifier = ImageRectifier(model.K, model.D, model.distortion_model, model.R, model.P,
                                           model.image_size)
        except (C.CameraInfoError, ValueError) as e:
            self.stats.count("bad_camera_info")
            self._warn("bad_camera_info", f"ignoring {side} camera_info: {e}"
                       + (" (keeping the previous one)" if side in self.camera else ""))
            return
        with self._lock:
            old = self.camera.get(side)
            changed = old is not None and not self._same_calibration(old, model)
            self.camera[side] = model
            if rectifier is not None:
                self._rectifiers[side] = rectifier
            self._calibration_changes += int(changed)
        if changed:
            self._warn("camera_info_changed", f"{side} camera_info changed: using the new calibration, tracking "
                                              "restarts from the next frame "
                                              f"(fx {old.K[0, 0]:.1f} -> {model.K[0, 0]:.1f}, size "
                                              f"{old.image_size} -> {model.image_size})")

    def _enqueue(self, frame: Frame) -> None:
        if self.slot.put(frame):
            self.stats.count("frames_dropped")

    def _on_mono_image(self, msg) -> None:
        if not self._active:  # lifecycle node while inactive
            return
        self.stats.input()
        stamp_ns = C.stamp_to_ns(msg.header.stamp)
        self.input_period.observe(stamp_ns)
        if isinstance(msg, CompressedImage) and self._decode_later((msg,)):  # a frame the slot drops: no decode
            self._enqueue(Frame(stamp_ns, msg.header, compressed=(msg,)))
            return
        image = self._decode(msg)
        if image is not None:
            self._enqueue(Frame(stamp_ns, msg.header, image))

    def _on_left(self, msg) -> None:
        if not self._active:
            return
        self.stats.input()
        self.sync.add_left(msg)

    def _on_right(self, msg) -> None:
        if not self._active:
            return
        self.sync.add_right(msg)

    def _on_stereo_pair(self, left_msg, right_msg) -> None:
        stamp_ns = C.stamp_to_ns(left_msg.header.stamp)
        self.input_period.observe(stamp_ns)
        if isinstance(left_msg, CompressedImage) and self._decode_later((left_msg, right_msg)):  # (_decode_frame)
            self._enqueue(Frame(stamp_ns, left_msg.header, right_header=right_msg.header,
                                compressed=(left_msg, right_msg)))
            return
        left, right = self._decode(left_msg), self._decode(right_msg)
        if left is not None and right is not None and self._same_size(left, right):
            self._enqueue(Frame(stamp_ns, left_msg.header, left, right, right_msg.header))

    def _same_size(self, left: np.ndarray, right: np.ndarray) -> bool:
        if left.shape[:2] == right.shape[:2]:
            return True
        self.stats.count("bad_input")
        self._warn("bad_input", f"skipping stereo pair: left {left.shape[1]}x{left.shape[0]} and right "
                                f"{right.shape[1]}x{right.shape[0]} differ")
        return False

    def _decode_frame(self, frame: Frame) -> bool:
        """Decode a frame's compressed images (the extraction stage, else the worker, on the frame it takes; the
        callbacks only queue the messages, so the frames the slot drops, latest wins, cost no decode). False for a
        frame that does not decode (counted and warned once, as in the callbacks)."""
        if frame.compressed is not None:
            images = [self._decode(msg) for msg in frame.compressed]  # (an exception: the worker meets it again)
            if any(image is None for image in images) or (len(images) == 2 and not self._same_size(*images)):
                frame.undecodable = True
            else:
                frame.image, frame.right = images[0], images[1] if len(images) == 2 else None
            frame.compressed = None
        return not frame.undecodable

    def _decode_later(self, messages: tuple[Any, ...]) -> bool:
        """Compressed messages whose headers pass the cheap checks (PNG / JPEG size readable and within
        max_image_pixels, not compressedDepth, a stereo pair of one size) are queued undecoded; the others are
        decoded at once, as raw images are, so that junk never takes a good frame's place in the slot."""
        sizes = []
        for msg in messages:
            try:
                size = C.compressed_header_size(msg, max_pixels=self.p["max_image_pixels"])
            except C.ImageConversionError:  # (OversizedImageError too): decoded now, counted and warned there
                return False
            if size is None or min(size) < self.min_image_side:
                return False
            sizes.append(size)
        return len(set(sizes)) == 1

    # ------------------------------------------------------------------ in-process observers
    def add_observer(self, observer: Callable[..., None]) -> None:
        """Call ``observer(event, frame, result=None, latency_ms=None)`` on the worker thread.

        Events: ``"start"`` when the worker takes a frame, ``"result"`` after its outputs are published
        (with the ``FrameResult`` and the tracker latency), ``"end"`` when it is done with the frame
        (also for frames it skipped). For in-process tools such as bag replay and tests; observers must
        be quick, and an observer that raises is logged and removed, never stops the node. The result is the
        tracker's: with rectified stereo input its pose is the rectified camera's (the published poses are turned
        back by camera_info R), and ``frame.image`` / ``frame.right`` are the rectified images. At ``"start"`` a
        compressed frame that no extraction stage decoded yet (``pipeline`` off) has ``image`` None.
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
                self._apply_reset_requests()
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
        # a reset requested while the last frame was processed (the service saw this worker alive and queued it)
        try:
            self._apply_reset_requests()
        except Exception as e:  # noqa: BLE001 - shutdown may have taken the publishers
            if self.context.ok():
                self.get_logger().error(f"reset after the last frame failed: {type(e).__name__}: {e}")

    def _show_controller_values(self) -> None:
        """The rate controller's alpha / max_keypoints become the parameters' values (at most once per
        REFLECT_PERIOD_S), so the parameters show what is in effect and later changes are validated
        against it."""
        now = time.monotonic()
        if now - getattr(self, "_last_reflect", -REFLECT_PERIOD_S) < REFLECT_PERIOD_S:
            return
        values = {}
        if self.p["early_exit"] and self.matcher.alpha is not None:
            values["alpha"] = float(self.matcher.alpha)
        if self.p["adapt_keypoints"]:
            values["max_keypoints"] = int(self.matcher.max_keypoints)
        values = {k: v for k, v in values.items() if v != self.p[k]}
        if values:
            self._last_reflect = now
            with self._lock:
                self.p.update(values)
            self._show_as_parameters(values)

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
        with self._lock:
            self.p["max_keypoints"] = self._keypoint_ceiling = new
            self.p["min_keypoints"] = min(self.p["min_keypoints"], new)  # the controller needs min <= max
        scale = self.controller.image_scale
        self.controller = AlphaController(self._rate_config())
        self.controller.image_scale = scale  # out of memory: not back to larger images
        self._show_as_parameters({"max_keypoints": new, "min_keypoints": self.p["min_keypoints"]})

    def _input_topic_warnings(self) -> list[str]:
        """What the image topics' names, as remapped (``image_raw`` / ``image_rect*``), say against the rectification
        parameters (``params.topic_warnings``). Only remapped names are judged: the node's own ``left/image_rect``
        says nothing about what a publisher sends there (``mambaglue replay`` sends raw pairs to it)."""
        suffix = "/compressed" if self.p["transport"] == "compressed" else ""
        names = {"image": "image"} if self.mode == "mono" else {"left": "left/image_rect", "right": "right/image_rect"}
        resolved = {role: self.resolve_topic_name(name + suffix) for role, name in names.items()}
        remapped = {role: topic for role, topic in resolved.items()
                    if topic != self.resolve_topic_name(names[role] + suffix, only_expand=True)}
        warnings = P.topic_warnings(self.mode, self.p["rectified_input"], self.p["stereo_rectify"], remapped)
        if suffix:  # rcl remaps exact names: `image:=/cam/image_raw` does not move `image/compressed` with it
            for role, name in names.items():
                raw = self.resolve_topic_name(name)
                if role not in remapped and raw != self.resolve_topic_name(name, only_expand=True):
                    warnings.append(f"{name} is remapped to {raw}, but with transport compressed the node subscribes "
                                    f"to {resolved[role]}: remap {name}/compressed:={raw}/compressed instead")
        if self.mode == "mono" and self.p["publish_tf"]:
            warnings.append("publish_tf in mono: the odom -> base TF carries mono odometry, whose unit is not metres "
                            f"(mono_scale {self.p['mono_scale']}); consumers of {self.p['odom_frame']} expect metres "
                            "(REP-105)")
        return warnings

    @staticmethod
    def _same_calibration(old: C.CameraModel, new: C.CameraModel) -> bool:
        return (np.allclose(old.K, new.K) and np.allclose(old.P, new.P) and np.allclose(old.R, new.R)
                and old.image_size == new.image_size and old.D.shape == new.D.shape and np.allclose(old.D, new.D)
                and old.distortion_model == new.distortion_model)

    def _rectify(self, frame: Frame, rectifiers: tuple[Any, Any] | None = None) -> None:
        """stereo_rectify: ``frame``'s images become their rectified images, remapped with ``rectifiers`` (left, right;
        None: those of the calibration now known), from the received images (again when the frame was remapped with
        others). Nothing without both, or for an image of another size than its calibration (the worker skips such
        frames with a warning). The extraction stage calls it ahead, the worker with the calibration it tracks with."""
        if frame.right is None or not self.p["stereo_rectify"]:
            return
        if rectifiers is None:
            with self._lock:
                rectifiers = (self._rectifiers.get("left"), self._rectifiers.get("right"))
        if None in rectifiers or rectifiers == frame.rectified_by:
            return
        raw = frame.raw or (frame.image, frame.right)
        if any((im.shape[1], im.shape[0]) != r.size for im, r in zip(raw, rectifiers)):
            return
        frame.raw = raw
        frame.image, frame.right = rectifiers[0](raw[0]), rectifiers[1](raw[1])
        frame.rectified_by = rectifiers

    def _prefetch(self, frame: Frame) -> None:
        """The extraction stage's work on ``frame``: its features (stereo: and the left/right match) ahead."""
        if not self._decode_frame(frame):
            return
        self._rectify(frame)
        network_stereo = self.p["stereo_matching"] == "network"  # else the right image never meets the network
        self.matcher.prefetch([frame.image] if frame.right is None else [frame.image, frame.right],
                              stereo=frame.right is not None and network_stereo and self.stereo_placement.ahead(),
                              prepare=None if network_stereo else 1)

    def _ensure_tracker(self, frame: Frame) -> bool:
        with self._lock:  # one calibration: the models, their remap tables and the change count read together
            left, right = self.camera.get("left"), self.camera.get("right")
            rectifiers = (self._rectifiers.get("left"), self._rectifiers.get("right"))
            changes = self._calibration_changes  # applied below once a frame is taken with this calibration
        if left is None or (self.mode == "stereo" and right is None):
            self.stats.count("no_camera_info")
            self._warn("no_camera_info", "no camera_info yet: skipping frame")
            return False
        for side, model, image in (("", left, frame.image), ("right ", right, frame.right)):
            if image is None or model is None:
                continue
            size = (image.shape[1], image.shape[0])
            if tuple(model.image_size) != size:  # the intrinsics are for another resolution: poses would be wrong
                self.stats.count("size_mismatch")
                self._warn("size_mismatch", f"skipping frame: {side}image is {size[0]}x{size[1]} but {side}camera_info "
                                            f"is for {model.image_size[0]}x{model.image_size[1]} (binning/ROI are not "
                                            "supported: publish camera_info for the image size)")
                return False
        if self.mode == "stereo" and self.p["stereo_rectify"]:
            # remapped with this calibration's tables (again, if the extraction stage used an older one's): the tracker
            # gets the same calibration's pinholes, baseline and R below
            self._rectify(frame, rectifiers)
            if frame.rectified_by != rectifiers:  # (the checks above leave no way here; never track raw images)
                self.stats.count("errors")
                self._warn("errors", "skipping frame: its stereo pair could not be rectified", error=True)
                return False
        if self.mode == "mono":
            # raw input: matched points are undistorted with K and D; rectified input: the pinhole is P, and what is
            # measured in it is turned back into the camera's frame by R (one camera of a rectified pair)
            self.undistort_left = PointUndistorter(left.K, left.D, left.distortion_model, left.P,
                                                   rectified=self.p["rectified_input"], R=left.R)
            if self.tracker is None:
                self.tracker = MonoTracker(self.matcher, self.undistort_left.K_pinhole, self._tracking_config(),
                                           frame_period=self.input_period)
            self.tracker.K = self.undistort_left.K_pinhole
            self.tracker.undistort = self.undistort_left.pixels if self.undistort_left.distorted else None
        else:
            try:  # both Tx: the left one is not always 0
                baseline = C.stereo_baseline_m(left, right)
            except C.CameraInfoError as e:
                self.stats.count("bad_camera_info")
                self._warn("bad_camera_info", f"right camera_info has no positive baseline (P[0,3] = -fx*B): "
                                              f"skipping frame ({e})")
                return False
            T_lr = np.eye(4)
            T_lr[0, 3] = baseline
            # the tracker works in the rectified cameras; what it measures is turned back into the cameras' frames
            self.undistort_left = PointUndistorter(left.K, None, P=left.P, rectified=True, R=left.R)
            self.undistort_right = PointUndistorter(right.K, None, P=right.P, rectified=True, R=right.R)
            if self.tracker is None:
                self.tracker = StereoTracker(self.matcher, left.K_rect, right.K_rect, T_lr,
                                             self._tracking_config(), frame_period=self.input_period)
            self.tracker.K_left, self.tracker.K_right, self.tracker.T_left_right = left.K_rect, right.K_rect, T_lr
        if changes != self._calibration_changes_applied:
            self._calibration_changes_applied = changes  # (one that came after the read above: the next frame)
            if self.tracker.reference is not None:
                # the reference's features (and stereo points) belong to the old calibration
                self._reset(frame.stamp_ns, "camera_info changed: tracking restarts from this frame")
        return True

    def _check_rectified(self, result: Any) -> None:
        """Warn when the left/right matches are not on the same rows: the pair is not rectified, and stereo depths
        (and so every stereo pose) would be wrong or missing. The network's matches are not bound to the rows, so
        they show it; the row search (stereo_matching: epipolar) only looks along them."""
        stereo = result.stereo
        if stereo is None or len(stereo) < 20 or self.p["stereo_matching"] != "network":
            return
        offset = stereo_row_offset_px(stereo.points0, stereo.points1)
        if offset > STEREO_ROW_OFFSET_PX:
            text = (f"left/right matches are a median {offset:.1f} px apart in rows: the stereo pair does not look "
                    "rectified, so depths are wrong or missing ") + (
                "(raw image_raw input? set stereo_rectify: true)" if not self.p["stereo_rectify"] else
                "(check that each camera_info's R and P belong to its images)")
            self.stats.count("stereo_not_rectified")
            self.stats.problem(text)
            self._warn("stereo_not_rectified", text)

    def _process(self, frame: Frame) -> None:
        if not self._decode_frame(frame):  # (the extraction stage decoded it already, when there is one)
            return
        order, back_s = self.stamps.order(frame.stamp_ns)
        if order == "late":
            self.stats.count("out_of_order")
            self._warn("out_of_order", "dropping frame: stamp not newer than the last one ("
                       + ("duplicate stamp" if back_s == 0 else f"{back_s * 1e3:.1f} ms back, out of order") + ")")
            return
        if order == "jumped_back":
            self.get_logger().warning(f"stamp jumped back {back_s:.1f} s (bag loop?): resetting tracking; "
                                      "~/odom continues from its last pose, ~/status says RESET")
            self._reset(frame.stamp_ns, f"stamp jumped back {back_s:.1f} s (bag loop?)")
        if not self._ensure_tracker(frame) or not self._ensure_extrinsics(frame):
            return
        if self._reset_at_first_frame:  # (cleared by any reset: a ~/reset before this frame already said RESET)
            self._reset(frame.stamp_ns, "configured again: tracking and the odometry start over from initial_pose",
                        odometry_reset=True)  # (the configuration put the odometry at initial_pose)
        gap_s = self.stamps.accept(frame.stamp_ns)
        if gap_s is not None:
            self.stats.count("gaps")
            self._warn("gaps", f"{gap_s:.1f} s since the last frame: matching against the old reference; no velocity "
                               "is published for this step")
        if self.mode == "mono":
            result = self.tracker.process(frame.image, frame.stamp_ns)
        else:
            result = self.tracker.process(frame.image, frame.right, frame.stamp_ns)
            self._check_rectified(result)
        # stage 1 did this frame's extraction (stereo: and the left/right match) ahead; the tracker saw those
        # calls take ~0 ms. Its timings (Matches.latency_ms, the benchmarks) report the work itself
        ahead = self.matcher.take_ahead_ms()
        for kind, ms in ahead.items():
            result.timings_ms[kind] = result.timings_ms.get(kind, 0.0) + ms
        latency_ms, cycle_ms, worker_ms = self.stage.finish()  # since extraction began; the busier stage; worker
        if self.mode == "stereo" and self.pipelined and "extract" in ahead and result.temporal is not None:
            stage1_ms = ahead["extract"] + ahead.get("prepare", 0.0)  # the images' first self blocks ran there too
            self.stereo_placement.update(stage1_ms, result.timings_ms.get("stereo", 0.0), worker_ms,
                                         stereo_ahead="stereo" in ahead)
        controlled_ms = controlled_time_ms(self.mode == "stereo", cycle_ms, worker_ms)
        # the resolution knob's clock: the extraction stage's own time for this frame (both images in stereo)
        stage1_ms = (ahead.get("extract", math.nan) + ahead.get("prepare", 0.0) if self.pipelined
                     else result.timings_ms.get("extract", math.nan))
        self._publish(frame, result, latency_ms)
        self._notify("result", frame, result, latency_ms)
        # only matched frames tell the controller what a frame costs (a first frame only extracts); a frame that was
        # also tried against the fallback references tells it without those attempts (a failure's extra matches are
        # not what its knobs cost; the extraction stage, the resolution loop's clock, never does them)
        matched = result.temporal is not None
        if matched and "fallback" in result.timings_ms:
            controlled_ms -= result.timings_ms["fallback"]
            controlled_ms = controlled_ms if controlled_ms > 0 else math.nan
        alpha, max_kp = self.controller.update(controlled_ms if matched else math.nan,
                                               stage1_ms if matched else math.nan)
        if not self.controller.fixed:
            self._set_image_scale(self.controller.image_scale)
            if self.p["early_exit"]:
                self.matcher.alpha = alpha
            if max_kp != self.matcher.max_keypoints:
                self.matcher.max_keypoints = max_kp
            if self.tracker is not None:  # the controller's last knob (pose time does not shrink with keypoints)
                self.tracker.config["pose_hypotheses"] = self.controller.pose_hypotheses
            self._show_controller_values()
        match = result.temporal
        self.stats.processed(latency_ms, keypoints=len(match.keypoints1) if match is not None else 0,
                             matches=len(match) if match is not None else None,
                             stop_layer=match.stop_layer if match is not None else None,
                             pose_ok=None if match is None else result.pose is not None,
                             inlier_ratio=result.inlier_ratio, failure=result.reason,
                             rescued=(result.reason or "").startswith(G.PNP_RESCUED),
                             sharpness=SHARPNESS_MISMATCH in (result.reason or ""))

    def _reset(self, stamp_ns: int, reason: str, T_odom_base: np.ndarray | None = None,
               covariance: np.ndarray | None = None, odometry_reset: bool | None = None) -> None:
        """Restart tracking from the next frame (worker thread) and publish RESET.

        Without ``T_odom_base`` the odometry keeps its pose and covariance (a stamp jump, a new
        calibration: a jump of ~/odom would look like motion to a consumer); with it, it starts there.
        ``odometry_reset`` (TrackingStatus): whether ~/odom starts again from a new pose (default: a pose given).
        """
        self.stats.count("resets")  # (/diagnostics: every reset, as TrackingStatus.resets counts them)
        self._reset_at_first_frame = False
        self._origin_pending = True
        if self.tracker is not None:  # ~/odom going on from its last pose goes on in the same unit too (mono)
            self.tracker.reset(keep_scale=T_odom_base is None)
        self.tracks.reset()
        if T_odom_base is None:
            self.odometry.reset(self.odometry.T_odom_base, self.odometry.covariance)
        else:
            self.odometry.reset(T_odom_base, covariance)
        self.images.clear()
        self.keyframes.clear()
        report = self.tracking_state.reset(stamp_ns, reason,
                                           T_odom_base is not None if odometry_reset is None else odometry_reset)
        header = Header(stamp=C.ns_to_stamp(stamp_ns), frame_id=self.p["odom_frame"])
        self.pub_status.publish(C.status_msg(report, header, self.keyframes.last, 0, 0, 0, self._controls()))

    def _request_reset(self, T_odom_base: np.ndarray, covariance: np.ndarray, reason: str,
                       timeout_s: float = 10.0) -> bool:
        """From a service: reset on the worker between frames and wait for it (True when done)."""
        done = threading.Event()
        with self._lock:
            self._reset_requests.append((T_odom_base, covariance, reason, done))
        if self.worker is None or not self.worker.is_alive():  # inactive lifecycle node: no race
            self._apply_reset_requests()
        return done.wait(timeout_s)

    def _apply_reset_requests(self) -> None:
        with self._lock:
            requests, self._reset_requests = self._reset_requests, []
        for T, cov, reason, done in requests:
            # stamped in the images' time base (a bag's, a camera's own clock), where the next frames will be: the
            # last frame's stamp, or the node's clock before any frame
            stamp = self.stamps.last_ns if self.stamps.last_ns is not None else self.get_clock().now().nanoseconds
            self._reset(stamp, reason, T, cov)
            done.set()

    def _on_reset_service(self, request, response):
        """~/reset (std_srvs/Trigger): odometry back to ``initial_pose``, tracking restarts."""
        T = pose_params_to_matrix(self.p["initial_pose"])
        # accepted either way: a reset still queued is applied before the next frame, so a caller told "failed"
        # would retry and reset twice
        done = self._request_reset(T, np.zeros((6, 6)), "reset service")
        response.success = True
        response.message = ("odometry reset to initial_pose" if done
                            else "reset queued: the worker is busy, it applies it before the next frame")
        return response

    def _on_set_pose_service(self, request, response):
        """~/set_pose (mambaglue_ros/SetPose): odometry to the given pose, tracking restarts."""
        msg = request.pose
        frame = msg.header.frame_id.lstrip("/")
        cov = np.asarray(msg.pose.covariance, dtype=np.float64).reshape(6, 6)
        try:
            if frame and frame != self.p["odom_frame"]:
                raise ValueError(f"pose is in frame '{frame}', the odometry frame is '{self.p['odom_frame']}'")
            T = C.pose_msg_to_matrix(msg.pose.pose)
            if not (np.isfinite(cov).all() and np.allclose(cov, cov.T) and np.all(np.linalg.eigvalsh(cov) > -1e-12)):
                raise ValueError("covariance must be finite, symmetric and positive semi-definite")
        except ValueError as e:
            response.success, response.message = False, f"set_pose refused: {e}"
            self._warn("set_pose", response.message)
            return response
        response.success = True  # accepted (as ~/reset: a queued one is applied before the next frame)
        response.message = ("odometry set" if self._request_reset(T, cov, "set_pose")
                            else "set_pose queued: the worker is busy, it applies it before the next frame")
        return response

    # ------------------------------------------------------------------ outputs
    def _frame_id(self, header: Header, side: str = "left") -> str:
        """The optical frame of camera ``side``: its parameter (``camera_frame``, ``right_camera_frame``), else the
        image's header, else its camera_info's, else "camera_optical_frame" / "right_camera_optical_frame" with a
        warning (a right camera is never given the left one's frame: a back end looking up the stereo extrinsics in
        TF would get a zero baseline). A leading "/" (ROS 1 style, refused by tf2) is dropped with a warning."""
        configured = self.p["right_camera_frame"] if side == "right" else self.p["camera_frame"]
        if configured:
            return configured
        info = self.camera.get(side)
        frame_id = header.frame_id or (info.frame_id if info is not None else "")
        if frame_id.startswith("/"):
            self._warn("frame_id", f"the {side} camera's frame_id '{frame_id}' starts with '/', which tf2 refuses: "
                       f"publishing in '{frame_id.lstrip('/')}'")
            frame_id = frame_id.lstrip("/")
        if not frame_id:
            frame_id = ("right_" if side == "right" else "") + "camera_optical_frame"
            self._warn("frame_id", f"the {side} image and its camera_info have no frame_id: publishing in "
                       f"'{frame_id}'; set the {'right_' if side == 'right' else ''}camera_frame parameter")
        return frame_id

    def _publish(self, frame: Frame, result, latency_ms: float) -> None:
        # Bookkeeping first: a message that cannot be built (non-finite values raise) must not leave
        # the odometry, the track ids or the tracking state out of step with the tracker.
        rel = step = None
        # rectified input: the tracker's rectified (left) camera turned back into the camera's frame (camera_info R)
        pose = None if result.pose is None else pose_in_camera_frame(result.pose, self.undistort_left.R_rect)
        if pose is not None:
            rel = G.relative_pose_in_base(pose, self.T_base_cam)
            try:
                odom_rel = G.scaled_translation(rel, result.step_scale)  # mono: the tracker's step length
                step = self.odometry.step(frame.stamp_ns, result.reference_stamp_ns, odom_rel.as_matrix(),
                                          odom_rel.covariance)
            except ValueError as e:
                self.stats.error(f"ValueError: {e}")
                self._warn("errors", f"frame {frame.stamp_ns}: {e}: no odometry for this frame", error=True)
        keyframe_id = self.keyframes.matched(result.reference_stamp_ns, result.pose is not None)  # its reference's
        report = self.tracking_state.frame(frame.stamp_ns, result.pose is not None, result.reason)
        tracks = self._update_tracks(frame, result)
        if result.is_keyframe:  # this frame is the next reference: its odometry pose anchors the next steps
            self.odometry.set_reference(frame.stamp_ns)
            self.keyframes.new(frame.stamp_ns)
        # what the tracker may still pose against: the odometry pose, keyframe id and image of each such frame
        live = set(result.live_references)
        self.odometry.keep_anchors(frame.stamp_ns, result.live_references)
        self.keyframes.keep(live | {self.odometry.reference_stamp_ns})
        ref_image = self.images.get(result.reference_stamp_ns) if result.reference_stamp_ns is not None else None
        self.images = {s: im for s, im in self.images.items() if s in live}
        self.images[frame.stamp_ns] = frame.image  # (it may become a reference)

        alpha = self.matcher.alpha if self.matcher.alpha is not None else -1.0
        size = (frame.image.shape[1], frame.image.shape[0])
        cam_frame = self._frame_id(frame.header)
        header = Header(stamp=frame.header.stamp, frame_id=cam_frame)
        odom_header = Header(stamp=frame.header.stamp, frame_id=self.p["odom_frame"])
        if result.temporal is not None and result.reference_stamp_ns is not None:
            ref_size = size if ref_image is None else (ref_image.shape[1], ref_image.shape[0])
            self.pub_matches.publish(C.build_matches_msg(
                result.temporal, header, result.reference_stamp_ns, frame.stamp_ns, cam_frame, cam_frame,
                self.Matches.PAIR_TEMPORAL, ref_size, size, self.features, alpha,
                result.timings_ms.get("match", 0.0) + result.timings_ms.get("extract", 0.0),
                inliers=result.temporal_inliers))
            if ref_image is not None and self.pub_debug.get_subscription_count() > 0:
                self._publish_debug(ref_image, frame.image, result.temporal, header, result.temporal_inliers)
        if result.stereo is not None:
            right_frame = self._frame_id(frame.right_header, "right")
            self.pub_matches.publish(C.build_matches_msg(
                result.stereo, header, frame.stamp_ns, frame.stamp_ns, cam_frame, right_frame,
                self.Matches.PAIR_STEREO, size, size, self.features, alpha, result.timings_ms.get("stereo", 0.0)))
        if pose is not None:
            self.pub_pose.publish(C.pose_with_covariance_msg(pose.as_matrix(), pose.covariance, header))
            self.pub_relative.publish(C.relative_pose_msg(
                pose.as_matrix(), pose.covariance, rel.as_matrix(), rel.covariance, header,
                result.reference_stamp_ns, keyframe_id, cam_frame, self.p["base_frame"], pose.metric,
                pose.num_inliers, pose.num_matches))
        if step is not None:
            self._publish_odometry(step, odom_header)
        elif self._origin_pending and result.is_keyframe and report.state == TrackingState.INITIALIZING:
            self._publish_origin(odom_header)
        elif report.state == TrackingState.LOST and self.p["publish_null_when_lost"]:
            self.pub_odom.publish(C.null_odometry_msg(odom_header, self.p["base_frame"]))
        self._publish_tracks(frame, tracks, header)
        self.pub_status.publish(C.status_msg(
            report, odom_header, self.keyframes.last, int(np.sum(tracks.camera == 0)),
            len(result.temporal) if result.temporal is not None else 0, result.num_inliers, self._controls(result)))

    def _set_image_scale(self, scale: float) -> None:
        """The front end's resolution (rate controller); matchers without the knob (a shared matcher service)
        keep theirs."""
        if self.matcher is not None and getattr(self.matcher, "image_scale", None) not in (None, scale):
            self.matcher.image_scale = scale

    def _controls(self, result: Any = None) -> dict[str, Any]:
        """The rate controller's knobs as they are now (for ~/status: what the frame just published used); the
        front end's resolution is the one ``result``'s image was extracted at (1 without a result)."""
        mono_tracker = self.tracker is not None and self.mode == "mono"
        return {"alpha": self.matcher.alpha, "max_keypoints": self.matcher.max_keypoints,
                "pose_hypotheses": self.tracker.config["pose_hypotheses"] if mono_tracker else 0,
                "image_scale": float(getattr(result, "image_scale", 1.0)),
                "rate_control": self.controller.state}

    def _publish_odometry(self, step, header: Header) -> None:
        """``step`` (odometry.OdometryStep): the relative pose composed with its reference's odometry
        pose, covariance propagated with the lever arm (see ``odometry``); the twist is the body
        velocity in base_frame since the previous frame with a pose (None over long gaps)."""
        self.pub_odom.publish(C.odometry_msg(step.T_odom_base, step.covariance, header, self.p["base_frame"],
                                             twist=step.twist, twist_cov=step.twist_covariance))
        if self.p["publish_tf"] and self._tf is not None:
            self._broadcast_tf(header)

    def _publish_origin(self, header: Header) -> None:
        """The first reference after the start or a reset: its place is where the odometry (re)starts
        (``initial_pose``, the reset's or set_pose's pose), so ~/odom and the TF are there from this frame on, with
        the reset's covariance and an unknown twist; a back end sees the reset's pose itself (rtabmap takes an
        identity ~/odom as an odometry reset)."""
        self._origin_pending = False  # once per start or reset: a later reference without a pose has no known place
        T, cov = self.odometry.T_odom_ref, self.odometry.cov_ref
        self.pub_odom.publish(C.odometry_msg(T, cov, header, self.p["base_frame"]))
        if self.p["publish_tf"] and self._tf is not None:
            self._broadcast_tf(header, T)

    def _update_tracks(self, frame: Frame, result):
        """Track ids for this frame's keypoints (left; and right observations with a stereo match). A track continues
        only through a temporal match the pose explains (``FrameResult.track_links``): not through an outlier, nor
        through any match of a frame without a pose."""
        kp = result.keypoints if result.keypoints is not None else np.zeros((0, 2), np.float32)
        stereo = result.stereo
        right_kp = right_norm = None
        if stereo is not None:
            right_kp = np.asarray(stereo.keypoints1, dtype=np.float64).reshape(-1, 2)
            right_norm = self.undistort_right.normalized(right_kp)
        return self.tracks.update(
            frame.stamp_ns, kp, self.undistort_left.normalized(kp), result.track_links(), result.reference_stamp_ns,
            result.is_keyframe, None if stereo is None else stereo.matches, right_kp, right_norm,
            live_references=tuple(result.live_references))

    def _publish_tracks(self, frame: Frame, tracks, header: Header) -> None:
        cams = 2 if self.mode == "stereo" else 1
        right_frame = ""
        if self.mode == "stereo":
            right_frame = self._frame_id(frame.right_header, "right")
        self.pub_tracks.publish(C.tracks_msg(tracks, header, right_frame, cams))
        if self.p["publish_tracks_cloud"]:
            self.pub_tracks_cloud.publish(C.tracks_cloud_msg(tracks, header, cams, self.p["tracks_cloud_layout"]))

    def _make_tf_buffer(self):
        """A tf2 buffer filled by a listener, for camera_to_base_from_tf; a clear error without tf2_ros."""
        try:
            from tf2_ros import Buffer, TransformListener
        except ImportError as e:
            raise ValueError("camera_to_base_from_tf needs tf2_ros (a ROS 2 install; it is not on PyPI): set "
                             "camera_to_base instead") from e
        buffer = Buffer()
        self._tf_listener = TransformListener(buffer, self)  # kept: the listener fills the buffer while it lives
        return buffer

    def _ensure_extrinsics(self, frame: Frame) -> bool:
        """camera_to_base_from_tf: T_base_camera of this frame's camera from TF (looked up once per camera frame id:
        a static transform); False, with the frame counted and a warning, while TF does not have it yet."""
        if self._tf_buffer is None:
            return True
        camera = self._frame_id(frame.header)
        if camera not in self._extrinsics:
            import rclpy.time

            try:  # lookup_transform(target, source): the camera's pose in base_frame, i.e. T_base_camera
                t = self._tf_buffer.lookup_transform(self.p["base_frame"], camera, rclpy.time.Time())
            except Exception as e:  # tf2's Lookup / Connectivity / Extrapolation exceptions: not there yet
                self.stats.count("no_extrinsics")
                self._warn("no_extrinsics", f"no TF {self.p['base_frame']} <- {camera} yet "
                                            f"(camera_to_base_from_tf): skipping frame ({type(e).__name__})")
                return False
            tr, q = t.transform.translation, t.transform.rotation
            self._extrinsics[camera] = pose_params_to_matrix([tr.x, tr.y, tr.z, q.x, q.y, q.z, q.w])
            self.get_logger().info(f"camera_to_base from TF {self.p['base_frame']} <- {camera}: "
                                   f"{np.round(self._extrinsics[camera][:3, 3], 4).tolist()} m")
        self.T_base_cam = self._extrinsics[camera]
        return True

    def _make_tf_broadcaster(self):
        try:
            from tf2_ros import TransformBroadcaster
        except ImportError:
            if self.p["publish_tf"]:
                self.get_logger().warning("publish_tf is set but tf2_ros is not installed: no TF is broadcast")
            return None
        broadcaster = TransformBroadcaster(self)
        if getattr(broadcaster, "pub_tf", None) is not None:  # its /tf publisher goes with the others at cleanup
            self._entities.append(broadcaster.pub_tf)
        return broadcaster

    def _broadcast_tf(self, header: Header, T_odom_base: np.ndarray | None = None) -> None:
        """odom -> base at ``T_odom_base`` (the odometry's last pose)."""
        from geometry_msgs.msg import TransformStamped

        T = self.odometry.T_odom_base if T_odom_base is None else T_odom_base
        t = TransformStamped()
        t.header = header
        t.child_frame_id = self.p["base_frame"]
        t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = (
            float(v) for v in T[:3, 3])
        q = G.matrix_to_quaternion(T[:3, :3])
        t.transform.rotation.x, t.transform.rotation.y, t.transform.rotation.z, t.transform.rotation.w = (
            float(v) for v in q)
        self._tf.sendTransform(t)

    def _publish_debug(self, image0: np.ndarray, image1: np.ndarray, match, header: Header,
                       inliers: np.ndarray | None = None) -> None:
        from ..visualization import draw_matches

        canvas = draw_matches(image0, image1, match.points0, match.points1, match.scores, inliers=inliers)
        self.pub_debug.publish(C.numpy_to_image(canvas, "rgb8", header))

    def _publish_diagnostics(self) -> None:
        self._write_shown_parameters()
        snap = self.stats.snapshot()
        if self.mode == "stereo":
            snap["frames_dropped"] += self.sync.dropped  # unpaired / late stereo halves
            snap.update(sync_dropped=self.sync.dropped, sync_duplicates=self.sync.duplicates,
                        sync_resets=self.sync.resets, sync_pairs=self.sync.emitted)
        with self._lock:
            has_info = "left" in self.camera and (self.mode == "mono" or "right" in self.camera)
        level, reason = diagnostic_level(snap, self.p["target_rate_hz"], has_info,
                                         idle_hint=self.sync.pairing_hint() if self.mode == "stereo" else "")
        if reason.startswith(NO_OUTPUT):  # a node that outputs nothing says why in its log too, not only here
            self._warn("no_output", reason)
        snap["tracking_state"] = self.tracking_state.state.name
        status = DiagnosticStatus(level=bytes([level]), name=f"{self.get_fully_qualified_name().lstrip('/')}: matcher",
                                  message=reason, hardware_id=str(self.matcher.device))
        values = {**{k: v for k, v in snap.items() if k not in ("seconds_since_error",)},
                  "alpha": self.matcher.alpha if self.matcher.alpha is not None else -1.0,
                  "max_keypoints": self.matcher.max_keypoints, "device": str(self.matcher.device),
                  "features": self.features, "weights": self.matcher.weights_source, "mode": self.mode,
                  "num_layers": self.matcher.num_layers, "target_rate_hz": self.p["target_rate_hz"],
                  **self.controller.diagnostics(), **self.stage.diagnostics()}
        if self.mode == "stereo" and self.pipelined:
            values.update(self.stereo_placement.diagnostics())
        status.values = [KeyValue(key=k, value=f"{v:.3f}" if isinstance(v, float) else str(v))
                         for k, v in values.items()]
        self.pub_diag.publish(DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()),
                                              status=[status]))

    def destroy_node(self) -> None:
        self._deactivate()
        if getattr(self, "stage", None) is not None:
            self.stage.close()
        if hasattr(getattr(self, "tracker", None), "close"):  # the stereo tracker's bundle-adjustment thread
            self.tracker.close()
        super().destroy_node()


class LifecycleMatcherNode(MatcherNode, LifecycleNode):
    """The matcher as a managed (lifecycle) node: parameters are declared at construction; configure
    loads the matcher and creates publishers, services and subscriptions; activate starts the worker
    (frames are ignored while inactive); deactivate stops it; cleanup destroys what configure made.
    The startup parameters (mode, features, device, ...) change while it is unconfigured, as a Nav2 node's do."""

    LIFECYCLE = True

    def __init__(self, command_line: list[str] | None = None,
                 matcher_factory: Callable[[dict[str, Any], str], Any] | None = None, **kwargs: Any) -> None:
        self._matcher_factory = matcher_factory or build_matcher
        LifecycleNode.__init__(self, NODE_NAME, **kwargs)
        try:
            self._init_parameters(command_line)
        except BaseException:
            self._destroy_half_built()
            raise

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure()
        except Exception as e:  # weights missing, bad device, ...: stay unconfigured, say why
            self.get_logger().error(f"configure failed: {type(e).__name__}: {e}")
            self._cleanup()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._activate()
        except RuntimeError as e:
            self.get_logger().error(f"activate failed: {e}")
            return TransitionCallbackReturn.FAILURE
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        if not self._join_worker():  # it still uses what cleanup would destroy; the node stays inactive
            self.get_logger().error(f"cleanup refused: the worker is still processing a frame after "
                                    f"{WORKER_JOIN_S:.0f} s")
            return TransitionCallbackReturn.FAILURE
        self._cleanup()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        self._cleanup()
        return TransitionCallbackReturn.SUCCESS

    @property
    def active(self) -> bool:
        return self._active


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """The non-ROS arguments (``rclpy.utilities.remove_ros_args`` first), as ``multi_camera_node`` parses its own:
    ``--help`` prints the usage, and an unknown (e.g. misspelt) argument is an error instead of being ignored."""
    ap = argparse.ArgumentParser(prog="matcher_node", description=__doc__.split("\n\n")[0],
                                 epilog="ROS arguments follow --ros-args, e.g. matcher_node --ros-args "
                                        "-p features:=xfeat --params-file config/matcher.yaml")
    ap.add_argument("--lifecycle", action="store_true",
                    help="run the managed (lifecycle) node: configure / activate / deactivate / cleanup")
    return ap.parse_args(argv)


def main(args: list[str] | None = None) -> int:
    argv = sys.argv if args is None else args
    dump_stacks_on_signals()
    try:
        rclpy.init(args=argv)
        options = parse_arguments(rclpy.utilities.remove_ros_args(argv)[1:])
    except SystemExit as e:  # --help, or an argument argparse refused (it printed why)
        rclpy.try_shutdown()
        return int(e.code or 0)
    except Exception as e:  # a malformed --ros-args rule (e.g. `-p name:=` with no value)
        print(f"[matcher_node] error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    node = None
    node_class = LifecycleMatcherNode if options.lifecycle else MatcherNode
    try:
        node = node_class(command_line=argv)
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as e:  # startup errors (weights, parameters): one clear line, non-zero exit
        if node is not None and not rclpy.ok():
            # SIGINT/SIGTERM shut the context down while spin was building its wait set ("the given
            # context is not valid"): that is the requested shutdown, not an error
            return 0
        print(f"[matcher_node] error: {e}", file=sys.stderr)
        return 1
    finally:
        bound_teardown()  # whatever ends the process (error, signal), its teardown cannot hang it
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
