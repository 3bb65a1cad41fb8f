"""Replay a bag through the real matcher node, record its outputs, evaluate against ground truth.

``replay(ReplayConfig(...))`` runs ``MatcherNode`` in this process with its own rclpy Context
(the same class ``matcher_node`` runs; its parameters come from a params file plus overrides),
plus one helper node that plays the bag's camera topics on the node's input topic names and
records the node's outputs. Everything goes over DDS on loopback, as between processes.

Topics. The bag's camera topics (``convert.STEREO_TOPICS`` / ``MONO_TOPICS``, or given) are
published as ``image`` + ``camera_info`` (mono) or ``left/image_rect``, ``right/image_rect``,
``left/camera_info``, ``right/camera_info`` (stereo): the node's own names, i.e. a remap.
``/clock`` carries the bag time and the node runs with ``use_sim_time``.

Pacing.
* ``lossless=True`` (evaluation): publish one frame, wait until the node has processed it, then
  the next; nothing is dropped and the result does not depend on the machine's speed. The
  node's image subscriptions are switched to ``reliable`` for this.
* ``rate=R``: publish at R x the recorded rate, never waiting (R=1 is real time). The node
  drops what it cannot keep up with (queue_size=1: latest frame wins), as on a robot; the report
  shows frames_in vs frames_processed.

Per-frame data (latency, matches, inliers, reasons) comes from a probe on the in-process node
(``NodeProbe``): it registers with the node's ``add_observer`` hook to see each
``FrameResult``. The recorded bag has what any subscriber sees: ``matches``,
``~/relative_pose``, ``~/odom``, ``/diagnostics`` (raw CDR from ``raw=True`` subscriptions,
written unchanged) and a copy of the input's ground truth.

Trajectory: the node's ``~/odom`` (``T_odom_base``) is turned into camera poses
(``metrics.odom_to_camera`` with the node's ``camera_to_base``) and compared with the bag's
ground truth (camera poses; ``/ground_truth/pose`` or ``gt_topic``): se3 alignment for stereo, sim3 for mono. The first
processed frame (the odometry origin) is added as the identity pose. ATE and RPE are over the frames the method
found a pose for (the table's ``poses``; a failed frame holds no new pose): methods that fail on different frames are
scored on different frames, so read them beside ``poses``. Drift uses the same segment lengths for every method.

Network hygiene: ``ensure_ros_env`` sets ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, a
ROS_DOMAIN_ID of its own (when unset) and a temporary ROS_LOG_DIR (when unset) before rclpy
starts.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import convert as BC
from . import metrics as M

NS = 1_000_000_000
NODE_NAME = "mambaglue_matcher"
METHODS = ("mambaglue", "lightglue", "orb")
OUTPUT_TOPICS = {  # recorded topic -> message type
    "/matches": "mambaglue_ros/msg/Matches",
    f"/{NODE_NAME}/relative_pose": "geometry_msgs/msg/PoseWithCovarianceStamped",
    f"/{NODE_NAME}/odom": "nav_msgs/msg/Odometry",
    "/diagnostics": "diagnostic_msgs/msg/DiagnosticArray",
}
Log = Callable[[str], None]


def ensure_ros_env() -> None:
    """Loopback-only discovery, an own domain id and a temporary log dir, before rclpy.init."""
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.pop("ROS_LOCALHOST_ONLY", None)  # deprecated; conflicts with the discovery range
    if not os.environ.get("ROS_DOMAIN_ID"):
        os.environ["ROS_DOMAIN_ID"] = str(150 + os.getpid() % 80)
    if not os.environ.get("ROS_LOG_DIR"):
        log_dir = tempfile.mkdtemp(prefix="mambaglue_replay_log_")
        os.environ["ROS_LOG_DIR"] = log_dir
        atexit.register(shutil.rmtree, log_dir, ignore_errors=True)


@dataclass
class ReplayConfig:
    """What to replay and how.

    bag: input bag; out: output folder (report.json, plots, output_bag/, TUM files).
    params: ROS params file for the node (None = the node's defaults); overrides: more parameters.
    method: 'mambaglue' | 'lightglue' | 'orb' (the node's ``matcher`` parameter).
    mode / features: override the params file when set. lossless / rate: see the module docstring.
    max_frames / start: a subset of the bag's frames. frame_timeout_s: lossless wait per frame.
    left_topic / right_topic: camera topics when the bag does not use our layout.
    calib: ROS camera calibration YAML file(s), left (and right for stereo), used instead of the bag's camera_info
        (a bag recorded without it, or a better calibration).
    gt_topic: the ground-truth topic (camera poses; ``convert.read_ground_truth`` lists the types); must be in the bag.
        None: ``/ground_truth/pose`` where the bag has it (else no RPE / ATE).
    """

    bag: str | Path
    out: str | Path
    params: str | Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    method: str = "mambaglue"
    mode: str | None = None
    features: str | None = None
    lossless: bool = True
    rate: float = 1.0
    max_frames: int | None = None
    start: int = 0
    frame_timeout_s: float = 120.0
    left_topic: str | None = None
    right_topic: str | None = None
    calib: tuple[str | Path, ...] = ()
    gt_topic: str | None = None
    force: bool = False
    plots: bool = True


# --------------------------------------------------------------------------------------------
# Bag -> frames
# --------------------------------------------------------------------------------------------
@dataclass
class BagFrame:
    """One camera frame to publish: its stamp, bag log time and (node topic, raw CDR) messages
    (camera infos first, then images)."""

    stamp_ns: int
    log_ns: int
    messages: list[tuple[str, bytes]]


IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


def _info_topic(image_topic: str) -> str:
    """The camera_info beside an image topic: image_transport's ``/compressed`` sub-topic is the image's."""
    base = image_topic[: -len("/compressed")] if image_topic.endswith("/compressed") else image_topic
    return base.rsplit("/", 1)[0] + "/camera_info"


def camera_topics(bag: str | Path, left: str | None = None, right: str | None = None,
                  calibrated: bool = False) -> dict[str, Any]:
    """{'left_image', 'left_info', 'right_image' (or None), 'right_info', 'compressed'} of a bag: given topics,
    our layouts, or the only camera image topic(s) (a 'left'/'right' pair for stereo). A camera image topic is an
    Image or CompressedImage topic with a camera_info beside it (any, with ``calibrated``: the calibration comes
    from files, and the info topics are None) and no "depth" in its name; where a raw topic and its
    ``/compressed`` twin are both recorded, the raw one. ``compressed``: the images are CompressedImage (the node
    then runs with ``transport: compressed``)."""
    topics = BC.bag_topics(bag)
    cameras = [t for t, (ty, _) in topics.items() if ty in IMAGE_TYPES and "depth" not in t.lower()
               and not (t.endswith("/compressed") and t[: -len("/compressed")] in topics)]
    images = sorted(t for t in cameras if _info_topic(t) in topics)
    if calibrated and not images:  # the calibration comes from files: any image topic can be a camera
        images = sorted(cameras)
    if left is None:
        for layout in (BC.STEREO_TOPICS, BC.MONO_TOPICS):
            if layout["left_image"] in topics:
                left, right = layout["left_image"], right or layout.get("right_image")
                break
        else:
            lefts = [t for t in images if "left" in t]
            if len(images) == 1:
                left = images[0]
            elif len(lefts) == 1:
                left = lefts[0]
                rights = [t for t in images if "right" in t]
                right = right or (rights[0] if len(rights) == 1 else None)
            elif not images and calibrated:
                raise ValueError(f"{bag}: no image topic (sensor_msgs/msg/Image or CompressedImage) in "
                                 f"{sorted(topics)}")
            elif not images:
                bare = sorted(t for t, (ty, _) in topics.items() if ty in IMAGE_TYPES)
                raise ValueError(f"{bag}: no image topic has a camera_info beside it (image topics: {bare}); the node "
                                 "needs each camera's calibration: give it as ROS calibration YAML (--calib LEFT "
                                 "[RIGHT]), or record camera_info with the images (a EuRoC dataset folder: "
                                 "`mambaglue bag-from-euroc` writes it from sensor.yaml)")
            else:
                raise ValueError(f"{bag}: cannot tell the camera topics apart among {images}: "
                                 "give --left-topic (and --right-topic)")
    out = {"left_image": left, "left_info": None if calibrated else _info_topic(left), "right_image": right,
           "right_info": _info_topic(right) if right and not calibrated else None}
    for key in ("left_image", "left_info") + (("right_image", "right_info") if right else ()):
        if out[key] is not None and out[key] not in topics:
            raise ValueError(f"{bag}: topic {out[key]} not found (topics: {sorted(topics)})")
    kinds = {topics[out[k]][0] for k in ("left_image", "right_image") if out[k]}
    if not kinds <= set(IMAGE_TYPES) or len(kinds) != 1:
        raise ValueError(f"{bag}: the camera topics must both be sensor_msgs/msg/Image or both CompressedImage, "
                         f"got {sorted(kinds)}")
    out["compressed"] = kinds == {IMAGE_TYPES[1]}
    return out


def calibration_infos(files: tuple[str | Path, ...] | list[str | Path], mode: str) -> dict[str, bytes]:
    """ROS camera calibration YAML file(s) -> {'left_info': CDR, 'right_info': CDR} sensor_msgs/CameraInfo for
    ``load_frames`` (stamp 0 and no frame_id: the node takes the image's). Stereo needs two files, the right one's
    projection matrix with the baseline (P[0, 3] = -fx * baseline), as ``camera_calibration`` writes it."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CameraInfo

    from ..camera_model import PointUndistorter
    from ..ros import convert as C

    stereo = mode == "stereo"
    if len(files) != (2 if stereo else 1):
        raise ValueError(f"--calib: {mode} needs {'two files, left and right' if stereo else 'one file'}, "
                         f"got {len(files)}" + (" (--mode stereo for a stereo pair)" if not stereo else ""))
    ts = BC.typestore()
    header = ts.types["std_msgs/msg/Header"](stamp=ts.types["builtin_interfaces/msg/Time"](sec=0, nanosec=0),
                                             frame_id="")
    out, models = {}, []
    for role, path in zip(("left_info", "right_info"), files):
        c = BC.read_camera_calibration(path)
        msg = BC.camera_info_msg(ts, header, c["size"], c["K"], c["P"], c["D"], c["R"], c["distortion_model"])
        out[role] = bytes(ts.serialize_cdr(msg, msg.__msgtype__))
        try:  # what the node checks when the camera_info comes: refused here, naming the file, not after the run
            model = C.CameraModel.from_msg(deserialize_message(out[role], CameraInfo))
            PointUndistorter(model.K, model.D, model.distortion_model)
        except (C.CameraInfoError, ValueError) as e:
            raise ValueError(f"--calib {path}: {e}") from None
        models.append(model)
    if stereo:
        try:
            C.stereo_baseline_m(*models)  # as the node reads it (raises for none)
        except ValueError as e:
            raise ValueError(f"--calib {files[0]} {files[1]}: {e}") from None
    return out


def check_calibration_size(frames: list[BagFrame], files: tuple[str | Path, ...] | list[str | Path]) -> None:
    """The first frame's images against the calibration files' image size (ValueError naming the file): a node given
    another size skips every frame."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image

    from ..ros import convert as C

    # a frame's messages: its camera infos left first, then its images left last (``load_frames``)
    infos = [deserialize_message(raw, CameraInfo) for topic, raw in frames[0].messages if topic.endswith("camera_info")]
    images = [(topic, raw) for topic, raw in frames[0].messages if not topic.endswith("camera_info")]
    for info, (topic, raw), path in zip(infos, reversed(images), files):
        if topic.endswith("/compressed"):
            try:
                size = C.compressed_header_size(deserialize_message(raw, CompressedImage))
            except C.ImageConversionError:  # a bad first image: the node counts it as such
                size = None
        else:
            image = deserialize_message(raw, Image)
            size = (image.width, image.height)
        if size is not None and tuple(size) != (info.width, info.height):
            raise ValueError(f"--calib {path}: image size {info.width}x{info.height}, the bag's images are "
                             f"{size[0]}x{size[1]}")


# Reading stops this many frames past ``start + max_frames``: a frame recorded that much later than one stamped after
# it would be missed (bags are recorded in arrival order, which is stamp order up to a few frames)
READ_AHEAD_FRAMES = 20


def load_frames(bag: str | Path, mode: str, topics: dict[str, Any], max_frames: int | None = None,
                start: int = 0, sync_slop_s: float = 0.0, calib_infos: dict[str, bytes] | None = None,
                check_first: Callable[[BagFrame], None] | None = None) -> list[BagFrame]:
    """The bag's frames for ``mode``, as raw CDR on the node's topic names, in stamp order.

    A frame is a left image (stereo: with its right image, paired as the node pairs them: the same header stamp,
    or with ``sync_slop_s`` > 0 the mutually nearest stamps at most that far apart) with the latest camera info(s)
    seen up to it. Stereo frames without both halves, and frames before the first camera_info, are skipped.
    ``calib_infos`` ({'left_info': CDR, 'right_info': CDR}, from ``calibration_infos``): every frame's camera_info,
    in place of the bag's. With ``max_frames`` the bag is read only up to ``READ_AHEAD_FRAMES`` past the frames
    asked for, so that a few frames of a long bag do not read all of it. Raises ValueError where stereo images form
    no pair, saying why. ``check_first(frame)`` sees the first frame made, before the rest of the bag is read (its
    error, e.g. ``check_calibration_size``'s, comes out at once).
    """
    from ..ros.sync import StereoSynchronizer

    stereo = mode == "stereo"
    if stereo and not topics.get("right_image"):
        raise ValueError(f"{bag}: mode 'stereo' needs a right camera; this bag has only {topics['left_image']} "
                         "(use --mode mono)")
    roles = {topics["left_image"]: "left_image"}
    if stereo:
        roles[topics["right_image"]] = "right_image"
    if calib_infos is None:
        roles.update({topics["left_info"]: "left_info"} | ({topics["right_info"]: "right_info"} if stereo else {}))
    suffix = "/compressed" if topics.get("compressed") else ""  # the node's subscriptions with transport compressed
    node_topic = {"left_image": ("left/image_rect" if stereo else "image") + suffix,
                  "left_info": "left/camera_info" if stereo else "camera_info",
                  "right_image": "right/image_rect" + suffix, "right_info": "right/camera_info"}
    enough = None if not max_frames else start + max_frames + READ_AHEAD_FRAMES
    ts = BC.typestore()
    latest_info: dict[str, bytes] = dict(calib_infos or {})
    frames: list[BagFrame] = []
    unposed = 0  # images before any camera_info (the reason where no frame is left)

    def add_frame(left: dict[str, Any], right: dict[str, Any] | None = None) -> None:
        nonlocal unposed
        infos = [("left_info", left["info"])] + ([("right_info", right["info"])] if right is not None else [])
        if any(raw_info is None for _, raw_info in infos):
            unposed += 1
            return  # no calibration yet: the node would skip it anyway
        msgs = [(node_topic[r], b) for r, b in infos]
        if right is not None:
            msgs.append((node_topic["right_image"], right["raw"]))  # right first, left last
        msgs.append((node_topic["left_image"], left["raw"]))
        frames.append(BagFrame(left["stamp"], left["log"], msgs))
        if check_first is not None and len(frames) == 1:
            check_first(frames[0])

    sync = StereoSynchronizer(add_frame, slop_s=sync_slop_s, queue_size=10, stamp_fn=lambda m: m["stamp"],
                              max_backward_jump_s=None) if stereo else None
    with BC.open_reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic in roles]
        for conn, t, raw in reader.messages(connections=conns):
            role = roles[conn.topic]
            raw = bytes(raw)
            if role.endswith("_info"):
                latest_info[role] = raw
                continue
            item = {"stamp": BC.stamp_ns(ts.deserialize_cdr(raw, conn.msgtype).header), "log": int(t), "raw": raw,
                    "info": latest_info.get(role.replace("image", "info"))}
            if sync is None:
                add_frame(item)
            else:
                sync.add(0 if role == "left_image" else 1, item)
            if enough is not None and len(frames) >= enough:
                break
    if not frames and unposed:
        raise ValueError(f"{bag}: {unposed} {mode} image(s) but none after a camera_info on "
                         f"{topics['left_info']}" + (f" / {topics['right_info']}" if stereo else "")
                         + ": the node needs the calibration before an image")
    if stereo and not frames and sync is not None and sync.emitted == 0:
        hint = sync.pairing_hint()
        raise ValueError(f"{bag}: no left/right image pair" + (f": {hint}" if hint else "")
                         + (" (--set sync_slop=SECONDS)" if "sync_slop" in hint else ""))
    frames.sort(key=lambda f: f.stamp_ns)
    frames = frames[start:]
    return frames[:max_frames] if max_frames else frames


# --------------------------------------------------------------------------------------------
# Node probe and recorder
# --------------------------------------------------------------------------------------------
class NodeProbe:
    """Per-frame results of an in-process ``MatcherNode``, through its ``add_observer`` hook: start / end
    time of every frame the worker takes, and its FrameResult.

    ``records[stamp_ns]``: dict with t_start, t_end (perf_counter s), processed (bool: the tracker
    ran), latency_ms (the node's own tracker latency), matches, stereo_matches, inliers,
    inlier_ratio, pose (bool), reason, reference_stamp_ns, keyframe, stop_layer.
    """

    def __init__(self, node: Any) -> None:
        self.node = node
        self.records: dict[int, dict[str, Any]] = {}
        self.cond = threading.Condition()
        self.busy = 0
        node.add_observer(self._observe)

    def _observe(self, event: str, frame: Any, result: Any = None, latency_ms: float | None = None) -> None:
        with self.cond:
            rec = self.records.setdefault(frame.stamp_ns, {})
            if event == "start":
                self.busy += 1
                rec["t_start"] = time.perf_counter()
            elif event == "result":
                temporal, stereo = result.temporal, result.stereo
                rec.update(
                    processed=True, latency_ms=float(latency_ms),
                    matches=None if temporal is None else len(temporal),
                    stereo_matches=None if stereo is None else len(stereo),
                    inliers=int(result.num_inliers), inlier_ratio=float(result.inlier_ratio),
                    pose=result.pose is not None, reason=result.reason,
                    reference_stamp_ns=result.reference_stamp_ns, keyframe=bool(result.is_keyframe),
                    stop_layer=None if temporal is None else int(temporal.stop_layer))
            elif event == "end":
                rec["t_end"] = time.perf_counter()
                rec.setdefault("processed", False)
                self.busy -= 1
                self.cond.notify_all()

    def wait_done(self, stamp_ns: int, timeout: float, also: Callable[[], bool] = lambda: False) -> bool:
        """Until the worker has finished the frame ``stamp_ns`` (or ``also()``), at most ``timeout`` s."""
        with self.cond:
            return self.cond.wait_for(lambda: "t_end" in self.records.get(stamp_ns, {}) or also(), timeout)

    def wait_idle(self, timeout: float, settle_s: float = 0.5) -> bool:
        """Until nothing is queued or running for ``settle_s``."""
        deadline = time.monotonic() + timeout
        quiet_since = None
        while time.monotonic() < deadline:
            with self.cond:
                # frames wait in the slot, in the pipeline's first stage, or run in the worker
                idle = self.busy == 0 and len(self.node.slot) == 0 and len(self.node.stage) == 0
            if idle:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= settle_s:
                    return True
            else:
                quiet_since = None
            time.sleep(0.05)
        return False

    def expected_outputs(self) -> dict[str, int]:
        """The /matches and ~/odom messages the processed frames make: ~/odom for every frame with a pose, and once
        for the first reference of the run (no pose yet), where the odometry starts."""
        with self.cond:
            recs = [self.records[s] for s in sorted(self.records) if self.records[s].get("processed")]
        first_pose = next((i for i, r in enumerate(recs) if r.get("pose")), len(recs))
        origin = any(r.get("keyframe") for r in recs[:first_pose])
        return {"matches": sum((r.get("matches") is not None) + (r.get("stereo_matches") is not None) for r in recs),
                "odom": sum(bool(r.get("pose")) for r in recs) + int(origin)}


class Recorder:
    """Raw (CDR) subscriptions to the node's outputs; keeps (topic, msgtype, bytes, receive time)."""

    def __init__(self, node: Any) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseWithCovarianceStamped
        from nav_msgs.msg import Odometry
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

        from mambaglue_ros.msg import Matches

        types = {"/matches": Matches, f"/{NODE_NAME}/relative_pose": PoseWithCovarianceStamped,
                 f"/{NODE_NAME}/odom": Odometry, "/diagnostics": DiagnosticArray}
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=200, reliability=ReliabilityPolicy.RELIABLE)
        self.lock = threading.Lock()
        self.messages: list[tuple[str, str, bytes, float]] = []
        self.last_receive = time.monotonic()
        self.subscriptions = [node.create_subscription(msg_type, topic, self._keep(topic), qos, raw=True)
                              for topic, msg_type in types.items()]

    def _keep(self, topic: str) -> Callable[[bytes], None]:
        def callback(raw: bytes) -> None:
            with self.lock:
                self.messages.append((topic, OUTPUT_TOPICS[topic], bytes(raw), time.perf_counter()))
                self.last_receive = time.monotonic()
        return callback

    def count(self, topic: str) -> int:
        with self.lock:
            return sum(1 for m in self.messages if m[0] == topic)

    def connected(self) -> bool:
        return all(s.get_publisher_count() > 0 for s in self.subscriptions[:3])


def _wait(predicate: Callable[[], bool], timeout: float, period: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period)
    return predicate()


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------
def node_parameters(cfg: ReplayConfig) -> dict[str, Any]:
    """Params file + overrides + --mode/--features/--matcher, sim time, and (lossless) reliable QoS."""
    from ..ros import params as P

    values: dict[str, Any] = {}
    if cfg.params:
        values.update(P.load_params_yaml(cfg.params, NODE_NAME))
    values.update(cfg.overrides)
    if cfg.mode:
        values["mode"] = cfg.mode
    if cfg.features:
        values["features"] = cfg.features
    if cfg.method not in METHODS:
        raise ValueError(f"matcher must be one of {METHODS}, got {cfg.method!r}")
    values["matcher"] = cfg.method
    values["use_sim_time"] = True
    if cfg.lossless:
        values["qos_reliability"] = "reliable"
    reasons = P.validate_all({k: v for k, v in values.items() if k != "use_sim_time"})
    if reasons:
        raise ValueError("invalid node parameters:\n  " + "\n  ".join(reasons))
    return values


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
# What a run writes into its folder besides output_bag/ (and its plots): removed with it on --force, so that no
# file of an earlier run (e.g. an aligned trajectory this run has no ground truth for) stays beside the new ones
RUN_FILES = ("report.json", "frames.csv", "table.txt", "estimate_tum.txt", "estimate_aligned_tum.txt",
             "groundtruth_tum.txt", "trajectory.png", "rpe.png", "matches.png", "latency.png", "rate.png")


def _check_out(out: Path, force: bool) -> None:
    """FileExistsError where ``out`` holds an earlier run that may not be replaced; changes nothing."""
    bag = out / "output_bag"
    if bag.exists():
        if not force:
            raise FileExistsError(f"{bag} exists: choose another --out or pass --force")
        if not (bag / "metadata.yaml").is_file() and any(bag.iterdir()):
            raise FileExistsError(f"{bag} exists and is not a bag: not removing it")


def _prepare_out(out: Path, force: bool) -> None:
    """Clear an earlier run from ``out`` (``_check_out`` first) and create the folder."""
    _check_out(out, force)
    bag = out / "output_bag"
    if bag.exists():
        shutil.rmtree(bag)
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def run_node(cfg: ReplayConfig, frames: list[BagFrame], params: dict[str, Any], log: Log = print
             ) -> dict[str, Any]:
    """Start the node and the player/recorder in a fresh Context, play ``frames``, return the raw
    material: probe records, recorded messages, publish times, node stats and settings."""
    ensure_ros_env()
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image

    from ..ros import convert as RC
    from ..ros.node import MatcherNode

    context = rclpy.Context()
    rclpy.init(context=context)
    node = io = executor = None
    try:
        t_start = time.perf_counter()
        node = MatcherNode(context=context,
                           parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        startup_s = time.perf_counter() - t_start
        probe = NodeProbe(node)
        io = rclpy.create_node("mambaglue_replay", context=context)
        recorder = Recorder(io)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
        names = sorted({topic for f in frames[:1] for topic, _ in f.messages})
        pubs = {t: io.create_publisher(CameraInfo if t.endswith("camera_info")
                                       else CompressedImage if t.endswith("/compressed") else Image, t, qos)
                for t in names}
        clock = io.create_publisher(Clock, "/clock", 10)
        # one executor thread, as the node's own main (rclpy.spin): rclpy's MultiThreadedExecutor (9.1.x) spins
        # holding the GIL while a callback waits in its pool (ros2/rclpy#1452) and starves the node's threads
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        executor.add_node(io)
        spin = threading.Thread(target=executor.spin, name="replay-executor", daemon=True)
        spin.start()
        # matched on both sides: each player topic's publisher sees the node's subscription and the node's subscription
        # sees the publisher (before: a 0.3 s sleep for the second half)
        inputs = [s for s in node.subscriptions if s.topic_name.lstrip("/") in {t.lstrip("/") for t in names}]
        if not _wait(lambda: all(p.get_subscription_count() > 0 for p in pubs.values()) and recorder.connected()
                     and len(inputs) == len(pubs) and all(s.get_publisher_count() > 0 for s in inputs), 30.0):
            raise RuntimeError("the node's topics were not discovered within 30 s (DDS discovery on loopback)")
        # prime the calibration: camera_info and image travel on different topics, so an image can
        # overtake its camera_info; the node would skip that frame ("no camera_info yet")
        sides = {"left"} | ({"right"} if node.mode == "stereo" else set())
        for _ in range(3):
            for topic, raw in frames[0].messages:
                if topic.endswith("camera_info"):
                    pubs[topic].publish(raw)
            if _wait(lambda: sides <= set(node.camera), 5.0):
                break
        else:
            raise RuntimeError("the node did not receive the camera_info" + (" (from the --calib files)"
                                                                             if cfg.calib else " of the bag"))
        publish_times: dict[int, float] = {}
        bad_counters = ("bad_input", "oversized", "no_camera_info", "out_of_order")
        lost = 0
        t0_wall, t0_bag = time.perf_counter(), frames[0].log_ns
        for k, frame in enumerate(frames):
            if not cfg.lossless:
                target = t0_wall + (frame.log_ns - t0_bag) / NS / cfg.rate
                delay = target - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            clock.publish(Clock(clock=RC.ns_to_stamp(frame.stamp_ns)))
            before = {c: node.stats.counters[c] for c in bad_counters}
            for topic, raw in frame.messages:
                pubs[topic].publish(raw)
            publish_times[frame.stamp_ns] = time.perf_counter()
            if cfg.lossless:
                rejected = lambda: any(node.stats.counters[c] > before[c] for c in bad_counters)  # noqa: E731
                if not probe.wait_done(frame.stamp_ns, cfg.frame_timeout_s, rejected):
                    lost += 1
                    log(f"  frame {k} ({frame.stamp_ns}): no result within {cfg.frame_timeout_s:.0f} s")
            if (k + 1) % 10 == 0 or k + 1 == len(frames):
                rec = probe.records.get(frame.stamp_ns, {})
                log(f"  [{cfg.method}] {k + 1}/{len(frames)} frames"
                    + (f", matches {rec.get('matches')}, inliers {rec.get('inliers')}, "
                       f"{rec.get('latency_ms', float('nan')):.0f} ms" if rec.get("processed") else ""))
        t_play_end = time.perf_counter()
        probe.wait_idle(timeout=max(60.0, cfg.frame_timeout_s))
        expected = probe.expected_outputs()
        _wait(lambda: recorder.count("/matches") >= expected["matches"]
              and recorder.count(f"/{NODE_NAME}/odom") >= expected["odom"]
              and time.monotonic() - recorder.last_receive > 0.3, 15.0)
        stats = node.stats.snapshot()
        if node.mode == "stereo":
            stats["frames_dropped"] += node.sync.dropped
        return {"records": dict(probe.records), "messages": list(recorder.messages), "publish_times": publish_times,
                "stats": stats, "startup_s": startup_s, "t_play": (t0_wall, t_play_end), "lost": lost,
                "T_base_cam": node.T_base_cam.copy(), "mode": node.mode, "features": node.features,
                "weights": node.matcher.weights_source, "device": str(node.matcher.device),
                "params": dict(node.p)}
    finally:
        if executor is not None:
            executor.shutdown()
        for n in (node, io):
            if n is not None:
                n.destroy_node()
        context.try_shutdown()


def _deserialize(messages: list[tuple[str, str, bytes, float]]) -> dict[str, list[Any]]:
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from nav_msgs.msg import Odometry
    from rclpy.serialization import deserialize_message

    from mambaglue_ros.msg import Matches

    types = {"/matches": Matches, f"/{NODE_NAME}/relative_pose": PoseWithCovarianceStamped,
             f"/{NODE_NAME}/odom": Odometry, "/diagnostics": DiagnosticArray}
    out: dict[str, list[Any]] = {t: [] for t in types}
    for topic, _, raw, t_recv in messages:
        out[topic].append((deserialize_message(raw, types[topic]), t_recv, raw))
    return out


def write_output_bag(path: Path, decoded: dict[str, list[Any]], gt_raw: list[tuple[int, str, bytes]]
                     ) -> dict[str, int]:
    """The recorded outputs (raw CDR, unchanged; log time = header stamp) plus the ground truth ((log time, type,
    raw CDR) as the input bag had it, on ``/ground_truth/pose`` whichever topic it came from: the report's
    ``ground_truth_topic`` names that)."""
    rows = []
    for topic, items in decoded.items():
        for msg, _, raw in items:
            rows.append((BC.stamp_ns(msg.header), topic, OUTPUT_TOPICS[topic], raw))
    rows += [(t, BC.GT_TOPIC, msgtype, raw) for t, msgtype, raw in gt_raw]
    rows.sort(key=lambda r: r[0])
    with BC.BagWriter(path, "mcap") as bag:
        for t, topic, msgtype, raw in rows:
            bag.write_raw(topic, msgtype, t, raw)
        return dict(bag.counts)


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def evaluate_run(cfg: ReplayConfig, frames: list[BagFrame], raw: dict[str, Any], gt: M.Trajectory | None
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(report dict, series for the plots) of one run."""
    decoded = _deserialize(raw["messages"])
    records, pub_t = raw["records"], raw["publish_times"]
    frame_rows = []
    for k, f in enumerate(frames):
        rec = records.get(f.stamp_ns, {})
        row = {"index": k, "stamp_ns": f.stamp_ns, "processed": bool(rec.get("processed")),
               "t_pub": pub_t.get(f.stamp_ns), "t_start": rec.get("t_start"), "t_end": rec.get("t_end")}
        for key in ("latency_ms", "matches", "stereo_matches", "inliers", "inlier_ratio", "pose", "reason",
                    "stop_layer", "keyframe", "reference_stamp_ns"):
            row[key] = rec.get(key)
        row["e2e_ms"] = ((row["t_end"] - row["t_pub"]) * 1e3 if row["t_end"] is not None and row["t_pub"] is not None
                         else None)
        frame_rows.append(row)
    processed = [r for r in frame_rows if r["processed"]]
    latencies = [r["latency_ms"] for r in processed if r["latency_ms"] is not None]
    e2e = [r["e2e_ms"] for r in processed if r["e2e_ms"] is not None]
    matches = [r["matches"] for r in processed if r["matches"] is not None]
    ratios = [r["inlier_ratio"] for r in processed if r["pose"]]
    t_pub = [r["t_pub"] for r in frame_rows if r["t_pub"] is not None]
    t_end = [r["t_end"] for r in processed if r["t_end"] is not None]
    input_rate = (len(t_pub) - 1) / (t_pub[-1] - t_pub[0]) if len(t_pub) > 1 and t_pub[-1] > t_pub[0] else None
    proc_rate = (len(t_end) - 1) / (t_end[-1] - t_end[0]) if len(t_end) > 1 and t_end[-1] > t_end[0] else None
    bag_span = (frames[-1].log_ns - frames[0].log_ns) / NS if len(frames) > 1 else 0.0

    # trajectory: odometry -> camera poses, origin = first reference frame (identity)
    odom = decoded[f"/{NODE_NAME}/odom"]
    origin = next((r["reference_stamp_ns"] for r in processed if r["pose"] and r["reference_stamp_ns"]), None)
    # the frames with a pose and the reference of the first one: the node's origin message is of the first
    # reference, which a later one replaces where the first frames found no pose (it is not where they were)
    posed = {r["stamp_ns"] for r in processed if r["pose"]} | {origin}
    kept = [m for m, _, _ in odom if BC.stamp_ns(m.header) in posed]
    stamps = [BC.stamp_ns(m.header) for m in kept]
    poses = [BC.pose_msg_to_matrix(m.pose.pose) for m in kept]
    if origin is not None and origin not in stamps:
        stamps.insert(0, origin)
        poses.insert(0, np.eye(4))
    order = np.argsort(stamps, kind="stable")
    base_traj = M.Trajectory(np.array(stamps, dtype=np.int64)[order], np.array(poses).reshape(-1, 4, 4)[order])
    metric = raw["mode"] == "stereo"
    cam_traj = M.Trajectory(base_traj.stamps_ns, M.odom_to_camera(base_traj.poses, raw["T_base_cam"], metric))
    evaluation = None
    summary_metrics: dict[str, Any] = {}
    if gt is not None and len(cam_traj) > 0:
        # drift over the same segment lengths for every method on this bag: from the ground truth over the frames
        # played, not over the frames this method found a pose for
        # (the ground truth at the played frames' stamps: a motion-capture rate path, jitter and all, is longer)
        _, at_frames = M.associate(np.array([f.stamp_ns for f in frames], dtype=np.int64), gt.stamps_ns)
        lengths = M.drift_lengths(M.path_length(gt.positions[at_frames])) if len(at_frames) >= 2 else None
        evaluation = M.evaluate(cam_traj, gt, "se3" if metric else "sim3", drift_lengths_m=lengths)
        summary_metrics = evaluation["summary"]
    stats = raw["stats"]
    report = {
        "method": cfg.method, "bag": str(cfg.bag), "mode": raw["mode"], "features": raw["features"],
        "weights": raw["weights"], "device": raw["device"],
        "pacing": "lossless" if cfg.lossless else f"rate x{cfg.rate:g}",
        "frames_in": len(frames), "frames_processed": len(processed),
        "frames_dropped": len(frames) - len(processed), "frames_lost_timeout": raw["lost"],
        "node_frames_dropped": int(stats.get("frames_dropped", 0)),
        "poses": sum(1 for r in processed if r["pose"]), "pose_failures": sum(1 for r in processed if r["matches"] is not None and not r["pose"]),
        "rpe_trans_m": summary_metrics.get("rpe_trans_m"), "rpe_rot_deg": summary_metrics.get("rpe_rot_deg"),
        "ate_m": summary_metrics.get("ate_m"),
        "rpe_trans_per_m": summary_metrics.get("rpe_trans_per_m"),
        "rpe_rot_deg_per_m": summary_metrics.get("rpe_rot_deg_per_m"),
        "drift_pct": summary_metrics.get("drift_pct"), "drift_deg_per_100m": summary_metrics.get("drift_deg_per_100m"),
        "drift_lengths_m": summary_metrics.get("drift_lengths_m"),
        "step_ratio_median": summary_metrics.get("step_ratio_median"),
        "alignment": summary_metrics.get("alignment"), "scale": summary_metrics.get("scale"),
        "associated": summary_metrics.get("associated", 0), "gt_path_m": summary_metrics.get("gt_path_m"),
        "est_path_m": summary_metrics.get("est_path_m"), "has_ground_truth": gt is not None,
        "ground_truth_topic": (cfg.gt_topic or BC.GT_TOPIC) if gt is not None else None,
        "calibration": [str(path) for path in cfg.calib] or None,  # (None: the bag's camera_info)
        "mean_matches": _mean(matches), "mean_stereo_matches": _mean(
            [r["stereo_matches"] for r in processed if r["stereo_matches"] is not None]),
        "mean_inliers": _mean([r["inliers"] for r in processed if r["pose"]]),
        "mean_inlier_ratio": _mean(ratios),
        "mean_stop_layer": _mean([r["stop_layer"] for r in processed if r["stop_layer"] is not None]),
        "latency_ms_p50": _percentile(latencies, 50), "latency_ms_p95": _percentile(latencies, 95),
        "latency_ms_mean": _mean(latencies),
        "e2e_latency_ms_p50": _percentile(e2e, 50), "e2e_latency_ms_p95": _percentile(e2e, 95),
        "input_rate_hz": input_rate, "processed_rate_hz": proc_rate,
        "bag_rate_hz": (len(frames) - 1) / bag_span if bag_span > 0 else None,
        "wall_s": raw["t_play"][1] - raw["t_play"][0], "node_startup_s": raw["startup_s"],
        "outputs": {t.rsplit("/", 1)[-1]: len(v) for t, v in decoded.items()},
        "node_params": {k: raw["params"][k] for k in ("mode", "features", "matcher", "max_keypoints", "alpha",
                                                      "early_exit", "keyframe_policy", "min_matches", "min_inliers",
                                                      "ransac_px", "queue_size", "qos_reliability")
                        if k in raw["params"]},
    }
    series = {"name": cfg.method, "frames": frame_rows, "camera_trajectory": cam_traj, "evaluation": evaluation,
              "decoded": decoded, "report": report}
    return report, series


def write_run_files(out: Path, report: dict[str, Any], series: dict[str, Any], gt_raw: list[tuple[int, str, bytes]]
                    ) -> None:
    """output_bag/, report.json, frames.csv, TUM files."""
    import csv

    report["output_bag_counts"] = write_output_bag(out / "output_bag", series["decoded"], gt_raw)
    M.write_tum(out / "estimate_tum.txt", series["camera_trajectory"],
                header="camera (optical frame) poses in the first camera's frame, from ~/odom: t tx ty tz qx qy qz qw")
    ev = series["evaluation"]
    if ev is not None and ev["aligned"] is not None:
        M.write_tum(out / "estimate_aligned_tum.txt", ev["aligned"],
                    header=f"estimate aligned to the ground truth ({ev['summary']['alignment']})")
        M.write_tum(out / "groundtruth_tum.txt", ev["gt_assoc"], header="ground truth at the associated stamps")
    keys = ["index", "stamp_ns", "processed", "latency_ms", "e2e_ms", "matches", "stereo_matches", "inliers",
            "inlier_ratio", "pose", "stop_layer", "keyframe", "reason"]
    with open(out / "frames.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys)
        for row in series["frames"]:
            w.writerow(["" if row.get(k) is None else (f"{row[k]:.3f}" if isinstance(row[k], float) else row[k])
                        for k in keys])
    (out / "report.json").write_text(json.dumps(report, indent=1, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def replay(cfg: ReplayConfig, log: Log = print) -> tuple[dict[str, Any], dict[str, Any]]:
    """One method over one bag: run the node, write ``cfg.out`` (report.json, frames.csv,
    output_bag/, TUM files, plots). Returns (report, series)."""
    from . import report as R

    from ..ros import params as P

    out = Path(cfg.out)
    _check_out(out, cfg.force)  # refused before reading anything; nothing is removed before the run has its results
    out.mkdir(parents=True, exist_ok=True)  # an --out that cannot be a folder, or written, fails now, not after the run
    if not os.access(out, os.W_OK):
        raise PermissionError(f"{out}: cannot write there (--out)")
    params = node_parameters(cfg)
    mode = params.get("mode", "mono")
    topics = camera_topics(cfg.bag, cfg.left_topic, cfg.right_topic, calibrated=bool(cfg.calib))
    if mode == "mono" and topics.get("right_image"):
        log(f"the bag has a right camera ({topics['right_image']}): replaying mono, the left camera only, with "
            "scale-free (sim3) alignment; --mode stereo (or --params config/stereo.yaml) for metric stereo")
    transport = "compressed" if topics["compressed"] else "raw"
    if params.get("transport", transport) != transport:  # the bag decides what replay publishes (params files say raw)
        log(f"the bag's camera topics are {'CompressedImage' if topics['compressed'] else 'Image'}: "
            f"the node runs with transport={transport} (the parameters said {params['transport']})")
    params["transport"] = transport
    slop = float(params.get("sync_slop", P.defaults()["sync_slop"]))
    calib_infos = calibration_infos(cfg.calib, mode) if cfg.calib else None
    gt = read_run_ground_truth(cfg, log)  # (before reading the frames: a mistyped topic is said at once)
    frames = load_frames(cfg.bag, mode, topics, cfg.max_frames, cfg.start, sync_slop_s=slop, calib_infos=calib_infos,
                         check_first=None if calib_infos is None else lambda f: check_calibration_size([f], cfg.calib))
    if len(frames) < 2:
        raise ValueError(f"{cfg.bag}: {len(frames)} usable {mode} frame(s); need at least 2")
    gt_raw = [(t, msgtype, raw) for _, msgtype, t, raw in BC.read_bag(cfg.bag, [cfg.gt_topic or BC.GT_TOPIC],
                                                                       deserialize=False)]
    log(f"replay {cfg.bag} -> {out}: {len(frames)} {mode} frames, matcher={cfg.method}, "
        f"{'lossless' if cfg.lossless else f'rate x{cfg.rate:g}'}, ground truth: {len(gt) if gt else 'none'}")
    raw = run_node(cfg, frames, params, log)
    report, series = evaluate_run(cfg, frames, raw, gt)
    _prepare_out(out, cfg.force)  # here: an interrupted or failed run leaves an earlier one in ``out`` as it was
    write_run_files(out, report, series, gt_raw)
    if cfg.plots:
        report["plots"] = R.write_plots(out, [series], gt)
        (out / "report.json").write_text(json.dumps(report, indent=1, default=_json_default))
    for text in run_warnings(report):
        log(f"warning: {text}")
    if report["frames_processed"] == 0:  # a table of "-" and exit 0 would read as a run that worked
        raise RuntimeError(f"{cfg.bag}: the node ({cfg.method}) processed none of its {report['frames_in']} frames; "
                           f"its log above says why (an image encoding it cannot read, images of another size than "
                           f"their camera_info, ...); the run's files are in {out}")
    return report, series


def read_run_ground_truth(cfg: ReplayConfig, log: Log = print) -> BC.Trajectory | None:
    """The bag's ground truth on ``cfg.gt_topic``, which must be in the bag (a ValueError naming the bag's topics of
    a ground-truth type: a typo must not read as "no ground truth"); without one, on ``/ground_truth/pose`` where the
    bag has it (else None, and the other topics of a ground-truth type are named)."""
    topics = BC.bag_topics(cfg.bag)
    topic = cfg.gt_topic or BC.GT_TOPIC
    if topic not in topics:
        candidates = ", ".join(sorted(t for t, (ty, *_) in topics.items() if ty in BC.GT_TYPES)) or "none"
        if cfg.gt_topic is not None:
            raise ValueError(f"{cfg.bag}: ground-truth topic {topic} not found (topics of a ground-truth type: "
                             f"{candidates})")
        if candidates != "none":
            log(f"no ground truth on {topic} (no RPE / ATE); topics of a ground-truth type: {candidates} "
                "(--gt-topic, if one is the camera's pose)")
        return None
    return BC.read_ground_truth(cfg.bag, topic)


def run_warnings(report: dict[str, Any]) -> list[str]:
    """What a replay's report says went partly wrong, for the user to see beside the table."""
    out = []
    if report["frames_lost_timeout"]:
        out.append(f"{report['frames_lost_timeout']} frame(s) got no result within the frame timeout "
                   "(--frame-timeout; a node far slower than the bag's rate?)")
    if report["has_ground_truth"] and report["frames_processed"] > 0 and report["associated"] < 2:
        out.append("the bag has ground truth, but fewer than 2 of its poses are close in time to a processed frame: "
                   "no RPE / ATE (are the ground truth and the images stamped on one clock?)")
    return out


def replay_methods(cfg: ReplayConfig, methods: list[str], log: Log = print) -> dict[str, Any]:
    """Several methods over the same bag: ``cfg.out/<method>/`` each, and in ``cfg.out``:
    report.json (the first method's numbers at the top level, all under ``methods``), the table
    (table.txt) and comparison plots. With one method everything goes to ``cfg.out`` directly."""
    import dataclasses

    from . import report as R

    if len(methods) == 1:
        report, _ = replay(dataclasses.replace(cfg, method=methods[0]), log)
        table = R.format_table({methods[0]: report})
        (Path(cfg.out) / "table.txt").write_text(table + "\n")
        log(table)
        return report
    out = Path(cfg.out)
    for method in methods:  # every method's folder before the first run (not after it has run for an hour)
        _check_out(out / method, cfg.force)
    out.mkdir(parents=True, exist_ok=True)
    reports, all_series = {}, []
    for method in methods:
        report, series = replay(dataclasses.replace(cfg, method=method, out=out / method), log)
        reports[method] = report
        all_series.append(series)
    gt = read_run_ground_truth(cfg, lambda _: None)
    combined = {**reports[methods[0]], "methods": reports, "primary": methods[0]}
    if cfg.plots:
        combined["plots"] = R.write_plots(out, all_series, gt)
    (out / "report.json").write_text(json.dumps(combined, indent=1, default=_json_default))
    table = R.format_table(reports)
    (out / "table.txt").write_text(table + "\n")
    log(table)
    return combined


# --------------------------------------------------------------------------------------------
# The embedded demo
# --------------------------------------------------------------------------------------------
def run_demo(out: str | Path = "out/demo", n_frames: int = 40, methods: tuple[str, ...] = ("mambaglue", "lightglue", "orb"),
             features: str = "xfeat", width: int = 640, height: int = 480, device: str = "auto",
             max_keypoints: int = 1024, log: Log = print) -> dict[str, Any]:
    """Build the synthetic stereo demo bag (forward loop in the textured room), replay it through
    the node (lossless) for each method, print the table, write report.json and plots to ``out``."""
    out = Path(out)
    bag = out / "demo_bag"
    if bag.exists():  # ours from an earlier run: rebuild (settings may differ)
        if not (bag / "metadata.yaml").is_file():
            raise FileExistsError(f"{bag} exists and is not a bag: not removing it")
        shutil.rmtree(bag)
    t0 = time.perf_counter()
    log(f"rendering the demo bag ({n_frames} stereo frames, {width}x{height}, forward loop)...")
    summary = BC.write_demo_bag(bag, n_frames=n_frames, width=width, height=height, trajectory="forward", log=log)
    log(BC.describe(summary) + f" ({time.perf_counter() - t0:.0f} s)")
    # force: an earlier demo's output bags in ``out`` are replaced
    cfg = ReplayConfig(bag=bag, out=out, mode="stereo", features=features, lossless=True, force=True,
                       overrides={"device": device, "max_keypoints": max_keypoints})
    combined = replay_methods(cfg, list(methods), log)
    log(f"demo done in {time.perf_counter() - t0:.0f} s: {out}/report.json, table.txt and plots "
        f"({', '.join(Path(p).name for p in combined.get('plots', []))})")
    return combined
