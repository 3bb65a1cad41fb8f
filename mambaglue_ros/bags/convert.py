"""Datasets -> rosbag2 (mcap or sqlite3) with ``rosbags``: no ROS install, no rclpy needed.

Every bag written here has the same layout (what ``replay`` expects):

  stereo  /stereo/left/image_rect   sensor_msgs/Image (mono8), rectified
          /stereo/left/camera_info  sensor_msgs/CameraInfo of the rectified image
          /stereo/right/image_rect, /stereo/right/camera_info   (right P[0,3] = -fx' * baseline)
  mono    /camera/image_rect, /camera/camera_info
  both    /ground_truth/pose        geometry_msgs/PoseStamped: the (left) camera's optical frame
                                    in the ground-truth ``world`` frame, at the dataset's GT stamps
          /tf_static                tf2_msgs/TFMessage (transient local): base/body -> cameras

The CameraInfo of a rectified image describes that image as an ideal pinhole camera:
K = P[:, :3], D = 0, R = I, P = the rectified projection. (A driver's camera_info for the raw
image carries the raw K, D and the rectifying R instead; we publish the rectified images, so
their own model is the one that fits; the node reads K (mono) or P (stereo), both consistent.)

EuRoC images are distorted: ``convert_euroc`` rectifies the pair with OpenCV (``stereoRectify``
from the Kalibr extrinsics, ``alpha=0``: only valid pixels, same 752x480 size, then ``remap``).
The rectified left camera is rotated by R1 from cam0, so the ground truth is of the rectified
left camera: ``T_W_left = T_W_B T_B_C0 R1^T``. ``rectify=False`` writes the raw images on
``.../image_raw`` with the raw K, D, R1, P1 (for other consumers; the node needs rectified
stereo).

Bag log times are the header stamps (sensor time), so a bag plays back in sensor time.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np

from .metrics import Trajectory, read_tum

NS = 1_000_000_000

STEREO_TOPICS = {
    "left_image": "/stereo/left/image_rect", "left_info": "/stereo/left/camera_info",
    "right_image": "/stereo/right/image_rect", "right_info": "/stereo/right/camera_info",
}
MONO_TOPICS = {"left_image": "/camera/image_rect", "left_info": "/camera/camera_info"}
GT_TOPIC = "/ground_truth/pose"
TF_STATIC_TOPIC = "/tf_static"
STORAGES = ("mcap", "sqlite3")

# REP-103: optical (x right, y down, z forward) -> body (x forward, y left, z up).
R_BODY_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# --------------------------------------------------------------------------------------------
# Typestore and writer
# --------------------------------------------------------------------------------------------
def matches_msg_path() -> Path | None:
    """Our Matches.msg: the source tree's msg/ or the installed share/mambaglue_ros/msg/."""
    import sys

    here = Path(__file__).resolve().parents[2] / "msg" / "Matches.msg"
    for candidate in (here, Path(sys.prefix) / "share" / "mambaglue_ros" / "msg" / "Matches.msg"):
        if candidate.is_file():
            return candidate
    return None


def typestore():
    """rosbags typestore for ROS 2 Kilted, with ``mambaglue_ros/msg/Matches`` registered."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    path = matches_msg_path()
    if path is not None:
        ts.register(get_types_from_msg(path.read_text(), "mambaglue_ros/msg/Matches"))
    return ts


def _qos(transient_local: bool = False, reliable: bool = True):
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    zero = QosTime(0, 0)
    return Qos(history=QosHistory.KEEP_LAST, depth=1 if transient_local else 10,
               reliability=QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
               durability=QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
               deadline=zero, lifespan=zero, liveliness=QosLiveliness.AUTOMATIC,
               liveliness_lease_duration=zero, avoid_ros_namespace_conventions=False)


def quaternion(R: np.ndarray) -> np.ndarray:
    from ..geometry import matrix_to_quaternion

    return matrix_to_quaternion(np.asarray(R, dtype=np.float64))


class BagWriter:
    """Thin wrapper over ``rosbags.rosbag2.Writer``: typed helpers for the messages we write.

    ``path`` must not exist (rosbag2 refuses to overwrite). Use as a context manager.
    """

    def __init__(self, path: str | Path, storage: str = "mcap") -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"{self.path} exists already (rosbag2 does not overwrite): remove it or "
                                  "choose another output path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self.ts = typestore()
        self.writer = Writer(self.path, version=9, storage_plugin=plugin)
        self.connections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        T = self.ts.types
        self.Header, self.Time = T["std_msgs/msg/Header"], T["builtin_interfaces/msg/Time"]

    def __enter__(self) -> "BagWriter":
        self.writer.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.writer.close()

    # ------------------------------------------------------------------ low level
    def connection(self, topic: str, msgtype: str, transient_local: bool = False):
        if topic not in self.connections:
            self.connections[topic] = self.writer.add_connection(
                topic, msgtype, typestore=self.ts, offered_qos_profiles=[_qos(transient_local)])
        return self.connections[topic]

    def write_raw(self, topic: str, msgtype: str, t_ns: int, raw: bytes, transient_local: bool = False) -> None:
        self.writer.write(self.connection(topic, msgtype, transient_local), int(t_ns), raw)
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def write(self, topic: str, msg: Any, t_ns: int, transient_local: bool = False) -> None:
        msgtype = msg.__msgtype__
        self.write_raw(topic, msgtype, t_ns, bytes(self.ts.serialize_cdr(msg, msgtype)), transient_local)

    def header(self, stamp_ns: int, frame_id: str):
        sec, nsec = divmod(int(stamp_ns), NS)
        return self.Header(stamp=self.Time(sec=sec, nanosec=nsec), frame_id=frame_id)

    # ------------------------------------------------------------------ typed helpers
    def image(self, topic: str, stamp_ns: int, frame_id: str, image: np.ndarray) -> None:
        """(H, W) uint8 -> mono8, (H, W, 3) uint8 RGB -> rgb8."""
        img = np.ascontiguousarray(image)
        if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
            raise ValueError(f"expected (H, W) or (H, W, 3) uint8, got {img.shape} {img.dtype}")
        encoding, channels = ("mono8", 1) if img.ndim == 2 else ("rgb8", 3)
        msg = self.ts.types["sensor_msgs/msg/Image"](
            header=self.header(stamp_ns, frame_id), height=img.shape[0], width=img.shape[1],
            encoding=encoding, is_bigendian=0, step=img.shape[1] * channels, data=img.reshape(-1))
        self.write(topic, msg, stamp_ns)

    def camera_info(self, topic: str, stamp_ns: int, frame_id: str, size: tuple[int, int], K: np.ndarray,
                    P: np.ndarray, D: np.ndarray | None = None, R: np.ndarray | None = None,
                    distortion_model: str = "plumb_bob") -> None:
        msg = camera_info_msg(self.ts, self.header(stamp_ns, frame_id), size, K, P, D, R, distortion_model)
        self.write(topic, msg, stamp_ns)

    def _pose(self, T: np.ndarray):
        Ty = self.ts.types
        q = quaternion(T[:3, :3])
        return Ty["geometry_msgs/msg/Pose"](
            position=Ty["geometry_msgs/msg/Point"](x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
            orientation=Ty["geometry_msgs/msg/Quaternion"](x=float(q[0]), y=float(q[1]), z=float(q[2]),
                                                           w=float(q[3])))

    def pose(self, topic: str, stamp_ns: int, frame_id: str, T: np.ndarray) -> None:
        msg = self.ts.types["geometry_msgs/msg/PoseStamped"](header=self.header(stamp_ns, frame_id),
                                                              pose=self._pose(T))
        self.write(topic, msg, stamp_ns)

    def tf_static(self, stamp_ns: int, transforms: list[tuple[str, str, np.ndarray]]) -> None:
        """[(parent, child, T_parent_child)] as one tf2_msgs/TFMessage on /tf_static."""
        Ty = self.ts.types
        items = []
        for parent, child, T in transforms:
            q = quaternion(T[:3, :3])
            tr = Ty["geometry_msgs/msg/Transform"](
                translation=Ty["geometry_msgs/msg/Vector3"](x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
                rotation=Ty["geometry_msgs/msg/Quaternion"](x=float(q[0]), y=float(q[1]), z=float(q[2]),
                                                            w=float(q[3])))
            items.append(Ty["geometry_msgs/msg/TransformStamped"](header=self.header(stamp_ns, parent),
                                                                   child_frame_id=child, transform=tr))
        self.write(TF_STATIC_TOPIC, Ty["tf2_msgs/msg/TFMessage"](transforms=items), stamp_ns, transient_local=True)


def camera_info_msg(ts: Any, header: Any, size: tuple[int, int], K: np.ndarray, P: np.ndarray,
                    D: np.ndarray | None = None, R: np.ndarray | None = None, distortion_model: str = "plumb_bob"):
    """A rosbags sensor_msgs/CameraInfo (typestore ``ts``); size is (width, height)."""
    T = ts.types
    roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return T["sensor_msgs/msg/CameraInfo"](
        header=header, height=int(size[1]), width=int(size[0]), distortion_model=distortion_model,
        d=np.asarray(D if D is not None else np.zeros(5), dtype=np.float64).reshape(-1),
        k=np.asarray(K, dtype=np.float64).reshape(9),
        r=np.asarray(R if R is not None else np.eye(3), dtype=np.float64).reshape(9),
        p=np.asarray(P, dtype=np.float64).reshape(12), binning_x=0, binning_y=0, roi=roi)


def read_camera_calibration(path: str | Path) -> dict[str, Any]:
    """A ROS camera calibration YAML (what ``camera_calibration`` writes and ``camera_info_manager`` reads:
    image_width, image_height, camera_matrix, distortion_model, distortion_coefficients, rectification_matrix,
    projection_matrix) -> {size (w, h), K, D, R, P, distortion_model}. R defaults to identity and P to [K | 0]
    (a monocular file may leave them out). Raises ValueError naming the field that is missing or malformed."""
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a camera calibration YAML (expected a mapping with camera_matrix, ...)")

    def matrix(key: str, shape: tuple[int, int] | None, default: np.ndarray | None = None) -> np.ndarray:
        entry = doc.get(key)
        if entry is None:
            if default is None:
                raise ValueError(f"{path}: {key} missing")
            return default
        data = entry.get("data") if isinstance(entry, dict) else entry
        if data is None:
            raise ValueError(f"{path}: {key} has no data")
        try:
            values = np.asarray(data, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {key} is not a list of numbers: {e}") from None
        if isinstance(entry, dict) and {"rows", "cols"} <= entry.keys():  # as camera_calibration_parsers reads it
            declared = int(entry["rows"]) * int(entry["cols"])
            if values.size != declared:
                raise ValueError(f"{path}: {key} has {values.size} values, its rows x cols say {declared}")
        if shape is not None and values.size != shape[0] * shape[1]:
            raise ValueError(f"{path}: {key} has {values.size} values, expected {shape[0]}x{shape[1]}")
        if not np.isfinite(values).all():
            raise ValueError(f"{path}: {key} has non-finite values")
        return values.reshape(shape) if shape is not None else values

    try:
        size = (int(doc["image_width"]), int(doc["image_height"]))
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{path}: image_width and image_height must be integers") from None
    K = matrix("camera_matrix", (3, 3))
    model = str(doc.get("distortion_model") or "plumb_bob")  # (empty: plumb_bob, as camera_calibration_parsers)
    no_distortion = np.zeros(4 if model in ("equidistant", "fisheye") else 5)
    return {"size": size, "K": K, "D": matrix("distortion_coefficients", None, no_distortion),
            "R": matrix("rectification_matrix", (3, 3), np.eye(3)),
            "P": matrix("projection_matrix", (3, 4), np.hstack([K, np.zeros((3, 1))])),
            "distortion_model": model}


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def open_reader(path: str | Path) -> Any:
    """A rosbags rosbag2 Reader of ``path`` (a bag folder, or one .mcap / .db3 file), not yet opened. A ROS 1
    ``.bag`` gets a ValueError that says how to convert it (rosbags-convert comes with rosbags)."""
    from rosbags.rosbag2 import Reader

    p = Path(path)
    if p.suffix == ".bag" and p.is_file():
        raise ValueError(f"{p} is a ROS 1 bag; convert it to a ROS 2 bag first: rosbags-convert --src {p} "
                         f"--dst {p.with_suffix('')}_ros2 --dst-typestore ros2_kilted")
    return Reader(p)


def read_bag(path: str | Path, topics: list[str] | None = None, deserialize: bool = True
             ) -> Iterator[tuple[str, str, int, Any]]:
    """(topic, msgtype, log time ns, message or raw bytes) in log-time order."""
    ts = typestore()
    with open_reader(path) as reader:
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        for conn, t, raw in reader.messages(connections=conns):
            yield conn.topic, conn.msgtype, int(t), (ts.deserialize_cdr(raw, conn.msgtype) if deserialize
                                                     else bytes(raw))


def bag_topics(path: str | Path) -> dict[str, tuple[str, int]]:
    """{topic: (msgtype, message count)}."""
    with open_reader(path) as reader:
        return {topic: (info.msgtype, int(info.msgcount)) for topic, info in reader.topics.items()}


def stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * NS + int(header.stamp.nanosec)


# ground-truth message type -> its pose (Pose or Transform); TransformStamped: e.g. a motion-capture system's, if of
# the camera
GT_POSE_OF = {
    "geometry_msgs/msg/PoseStamped": lambda msg: msg.pose,
    "geometry_msgs/msg/PoseWithCovarianceStamped": lambda msg: msg.pose.pose,
    "nav_msgs/msg/Odometry": lambda msg: msg.pose.pose,
    "geometry_msgs/msg/TransformStamped": lambda msg: msg.transform,
}
GT_TYPES = tuple(GT_POSE_OF)


def pose_msg_to_matrix(pose: Any) -> np.ndarray:
    """geometry_msgs Pose (position, orientation) or Transform (translation, rotation) -> 4x4."""
    from .metrics import make_pose, quat_to_rot

    if hasattr(pose, "translation"):
        o, p = pose.rotation, pose.translation
    else:
        o, p = pose.orientation, pose.position
    return make_pose(quat_to_rot(np.array([o.x, o.y, o.z, o.w])), np.array([p.x, p.y, p.z]))


def read_ground_truth(path: str | Path, topic: str = GT_TOPIC) -> Trajectory | None:
    """The bag's ground truth on ``topic`` as a Trajectory, or None without one: PoseStamped (what our bag
    writers record), PoseWithCovarianceStamped or Odometry (its pose), TransformStamped (parent <- child). Another
    type is a ValueError. The poses are the camera's (its optical frame) in a fixed world frame, as our writers
    record them: a body or marker pose differs from the camera's by an extrinsic that alignment does not remove."""
    stamps, poses = [], []
    topics = bag_topics(path)
    if topic not in topics:
        return None
    msgtype = topics[topic][0]
    if msgtype not in GT_TYPES:
        raise ValueError(f"{path}: ground truth on {topic} is {msgtype}; it must be one of {', '.join(GT_TYPES)}")
    for _, _, _, msg in read_bag(path, [topic]):
        stamps.append(stamp_ns(msg.header))
        poses.append(pose_msg_to_matrix(GT_POSE_OF[msgtype](msg)))
    order = np.argsort(stamps, kind="stable")
    return Trajectory(np.array(stamps, dtype=np.int64)[order], np.array(poses).reshape(-1, 4, 4)[order])


# --------------------------------------------------------------------------------------------
# EuRoC / ASL
# --------------------------------------------------------------------------------------------
def read_euroc_sensor_yaml(path: str | Path) -> dict[str, Any]:
    """Kalibr/EuRoC camera ``sensor.yaml`` -> {K, D, T_BS, size, distortion_model}.

    The files start with OpenCV's ``%YAML:1.0`` directive, which is not valid YAML: it is skipped.
    """
    import yaml

    text = "\n".join(line for line in Path(path).read_text().splitlines() if not line.startswith("%YAML"))
    doc = yaml.safe_load(text)
    fx, fy, cx, cy = (float(v) for v in doc["intrinsics"])
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    T = doc["T_BS"]
    T_BS = np.asarray(T["data"] if isinstance(T, dict) else T, dtype=np.float64).reshape(4, 4)
    model = doc.get("distortion_model", "radial-tangential")
    if model not in ("radial-tangential", "radtan", "plumb_bob"):
        raise ValueError(f"{path}: distortion model {model!r} is not supported (radial-tangential only)")
    D = np.zeros(5)
    coeffs = np.asarray(doc.get("distortion_coefficients", []), dtype=np.float64)
    D[:len(coeffs)] = coeffs[:5]
    return {"K": K, "D": D, "T_BS": T_BS, "size": tuple(int(v) for v in doc["resolution"]),
            "distortion_model": "plumb_bob"}


def read_euroc_csv(path: str | Path) -> list[tuple[int, str]]:
    """EuRoC camera ``data.csv`` -> [(stamp_ns, file name)]."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if not row or row[0].lstrip().startswith("#"):
                continue
            rows.append((int(row[0].strip()), row[1].strip()))
    return rows


def read_euroc_ground_truth(mav0: Path, gt_path: str | Path | None = None) -> Trajectory | None:
    """Body (IMU) poses ``T_W_B``: ``gt_path`` (TUM), else ``mav0/state_groundtruth_estimate0/data.csv``
    (EuRoC: ts, p xyz, q wxyz, ...), else ``<mav0>/../groundtruth_tum.txt``; None if none exists."""
    from .metrics import make_pose, quat_to_rot

    if gt_path is not None:
        return read_tum(gt_path)
    asl = mav0 / "state_groundtruth_estimate0" / "data.csv"
    if asl.is_file():
        stamps, poses = [], []
        with open(asl, newline="") as f:
            for row in csv.reader(f):
                if not row or row[0].lstrip().startswith("#"):
                    continue
                v = [float(x) for x in row[1:8]]
                stamps.append(int(row[0]))
                poses.append(make_pose(quat_to_rot(np.array([v[4], v[5], v[6], v[3]])), np.array(v[:3])))
        return Trajectory(np.array(stamps), np.array(poses).reshape(-1, 4, 4))
    tum = mav0.parent / "groundtruth_tum.txt"
    if tum.is_file():
        return read_tum(tum)
    return None


def euroc_rectification(cam0: dict[str, Any], cam1: dict[str, Any]) -> dict[str, Any]:
    """OpenCV stereo rectification of EuRoC cam0/cam1 (``alpha=0``, zero disparity at infinity).

    Returns R1, R2 (rectifying rotations: ``x_rect = R x_raw``), P1, P2 (3x4; P2[0,3] = -fx' B),
    the remap tables and the baseline (m).
    """
    size = cam0["size"]
    T_C1_C0 = np.linalg.inv(cam1["T_BS"]) @ cam0["T_BS"]  # x_c1 = R x_c0 + t
    R1, R2, P1, P2, _, _, _ = cv2.stereoRectify(cam0["K"], cam0["D"], cam1["K"], cam1["D"], size,
                                                T_C1_C0[:3, :3], T_C1_C0[:3, 3],
                                                flags=cv2.CALIB_ZERO_DISPARITY, alpha=0.0)
    maps = [cv2.initUndistortRectifyMap(cam["K"], cam["D"], R, P, size, cv2.CV_32FC1)
            for cam, R, P in ((cam0, R1, P1), (cam1, R2, P2))]
    return {"R1": R1, "R2": R2, "P1": P1, "P2": P2, "maps": maps, "size": size,
            "baseline_m": float(-P2[0, 3] / P2[0, 0])}


def convert_euroc(mav0_dir: str | Path, out: str | Path, storage: str = "mcap", gt_path: str | Path | None = None,
                  max_frames: int | None = None, rectify: bool = True, log: Log = _quiet) -> dict[str, Any]:
    """EuRoC/ASL ``mav0`` folder -> stereo bag (see the module docstring). Returns a summary."""
    mav0 = Path(mav0_dir)
    if (mav0 / "mav0").is_dir():  # the sequence folder was given
        mav0 = mav0 / "mav0"
    for cam in ("cam0", "cam1"):
        for name in ("data.csv", "sensor.yaml"):
            if not (mav0 / cam / name).is_file():
                raise FileNotFoundError(f"{mav0 / cam / name} not found: not an EuRoC mav0 folder")
    cam0, cam1 = (read_euroc_sensor_yaml(mav0 / c / "sensor.yaml") for c in ("cam0", "cam1"))
    rows1 = dict(read_euroc_csv(mav0 / "cam1" / "data.csv"))
    pairs = [(t, f, rows1[t]) for t, f in read_euroc_csv(mav0 / "cam0" / "data.csv") if t in rows1]
    if max_frames:
        pairs = pairs[:max_frames]
    if not pairs:
        raise ValueError(f"{mav0}: no cam0/cam1 images with matching timestamps")
    rect = euroc_rectification(cam0, cam1)
    w, h = rect["size"]
    gt_body = read_euroc_ground_truth(mav0, gt_path)
    if rectify:
        topics = STEREO_TOPICS
        frames = ("left_rect_optical", "right_rect_optical")
        infos = [dict(K=P[:, :3], P=P) for P in (rect["P1"], rect["P2"])]
        T_C0_left = np.eye(4)
        T_C0_left[:3, :3] = rect["R1"].T  # x_c0 = R1^T x_rect
    else:
        topics = {k: v.replace("image_rect", "image_raw") for k, v in STEREO_TOPICS.items()}
        frames = ("cam0_optical", "cam1_optical")
        infos = [dict(K=c["K"], D=c["D"], R=R, P=P) for c, R, P in ((cam0, rect["R1"], rect["P1"]),
                                                                  (cam1, rect["R2"], rect["P2"]))]
        T_C0_left = np.eye(4)
    T_C1_right = np.eye(4)
    if rectify:
        T_C1_right[:3, :3] = rect["R2"].T
    first, last = pairs[0][0], pairs[-1][0]
    with BagWriter(out, storage) as bag:
        bag.tf_static(first, [("body", "cam0", cam0["T_BS"]), ("body", "cam1", cam1["T_BS"]),
                              ("cam0", frames[0], T_C0_left), ("cam1", frames[1], T_C1_right)])
        gt_count = 0
        if gt_body is not None:
            keep = (gt_body.stamps_ns >= first - NS // 2) & (gt_body.stamps_ns <= last + NS // 2)
            for t, T_WB in zip(gt_body.stamps_ns[keep], gt_body.poses[keep]):
                bag.pose(GT_TOPIC, int(t), "world", T_WB @ cam0["T_BS"] @ T_C0_left)
                gt_count += 1
        else:
            log("warning: no ground truth found (state_groundtruth_estimate0/data.csv or ../groundtruth_tum.txt)")
        for k, (t, f0, f1) in enumerate(pairs):
            for side, cam, name, maps, frame, info in (("left", "cam0", f0, rect["maps"][0], frames[0], infos[0]),
                                                       ("right", "cam1", f1, rect["maps"][1], frames[1], infos[1])):
                image = cv2.imread(str(mav0 / cam / "data" / name), cv2.IMREAD_GRAYSCALE)
                if image is None:
                    raise FileNotFoundError(f"cannot read {mav0 / cam / 'data' / name}")
                if rectify:
                    image = cv2.remap(image, maps[0], maps[1], cv2.INTER_LINEAR)
                bag.camera_info(topics[f"{side}_info"], t, frame, (w, h), **info)
                bag.image(topics[f"{side}_image"], t, frame, image)
            if (k + 1) % 20 == 0 or k + 1 == len(pairs):
                log(f"  {k + 1}/{len(pairs)} stereo pairs")
    return {"bag": str(out), "frames": len(pairs), "stereo": True, "rectified": rectify, "ground_truth": gt_count,
            "baseline_m": rect["baseline_m"], "K_left": infos[0]["K"].tolist(), "duration_s": (last - first) / NS,
            "topics": dict(topics, ground_truth=GT_TOPIC)}


# --------------------------------------------------------------------------------------------
# KITTI odometry
# --------------------------------------------------------------------------------------------
def read_kitti_calib(path: str | Path) -> dict[str, np.ndarray]:
    """KITTI ``calib.txt`` -> {"P0": (3, 4), "P1": ...}. Lines may carry labels (``P0: ...``) or
    not (then they are P0, P1, ... in order)."""
    out: dict[str, np.ndarray] = {}
    for k, line in enumerate(l for l in Path(path).read_text().splitlines() if l.strip()):
        label, _, rest = line.partition(":")
        name, values = (label.strip(), rest) if rest else (f"P{k}", line)
        numbers = [float(v) for v in values.split()]
        if len(numbers) == 12:
            out[name] = np.array(numbers).reshape(3, 4)
    if "P0" not in out:
        raise ValueError(f"{path}: no P0 projection matrix")
    return out


def read_kitti_poses(path: str | Path) -> np.ndarray:
    """KITTI ``poses.txt`` (12 numbers per row, ``T_0_i`` row-major 3x4) -> (N, 4, 4)."""
    rows = [[float(v) for v in line.split()] for line in Path(path).read_text().splitlines() if line.strip()]
    poses = np.tile(np.eye(4), (len(rows), 1, 1))
    for i, r in enumerate(rows):
        if len(r) != 12:
            raise ValueError(f"{path}:{i + 1}: a KITTI pose row has 12 numbers, got {len(r)}")
        poses[i, :3, :] = np.array(r).reshape(3, 4)
    return poses


def _image_dir(seq: Path, names: tuple[str, ...]) -> Path | None:
    return next((seq / n for n in names if (seq / n).is_dir()), None)


def convert_kitti(seq_dir: str | Path, out: str | Path, storage: str = "mcap", rate_hz: float = 10.0,
                  max_frames: int | None = None, start_ns: int | None = None, stereo: bool | None = None,
                  log: Log = _quiet) -> dict[str, Any]:
    """KITTI odometry sequence folder -> bag. Left images from ``image_0``/``image_l``; with a right
    folder (``image_1``/``image_r``) and P1 a stereo bag (unless ``stereo=False``), else mono.
    Stamps from ``times.txt`` when present, else ``rate_hz`` from ``start_ns`` (a fixed non-zero
    epoch). Ground truth from ``poses.txt`` (or ``../../poses/<seq>.txt``) when present."""
    from ..synthetic import DEFAULT_START_NS

    seq = Path(seq_dir)
    left_dir = _image_dir(seq, ("image_0", "image_l"))
    if left_dir is None:
        raise FileNotFoundError(f"{seq}: no image_0/ or image_l/ folder")
    right_dir = _image_dir(seq, ("image_1", "image_r"))
    calib = read_kitti_calib(seq / "calib.txt")
    use_stereo = right_dir is not None and "P1" in calib if stereo is None else bool(stereo)
    if use_stereo and (right_dir is None or "P1" not in calib):
        raise ValueError(f"{seq}: stereo needs a right image folder and P1 in calib.txt")
    files = sorted(p.name for p in left_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise FileNotFoundError(f"{left_dir}: no images")
    start = DEFAULT_START_NS if start_ns is None else int(start_ns)
    if (seq / "times.txt").is_file():
        secs = [float(v) for v in (seq / "times.txt").read_text().split()]
        stamps = [start + int(round(s * NS)) for s in secs]
    else:
        stamps = [start + int(round(i * NS / rate_hz)) for i in range(len(files))]
    if len(stamps) < len(files):
        raise ValueError(f"{seq}: {len(files)} images but {len(stamps)} times")
    poses = None
    for cand in (seq / "poses.txt", seq.parent.parent / "poses" / f"{seq.name}.txt"):
        if cand.is_file():
            poses = read_kitti_poses(cand)
            break
    n = len(files) if not max_frames else min(len(files), max_frames)
    topics = STEREO_TOPICS if use_stereo else MONO_TOPICS
    P0 = calib["P0"]
    left_frame, right_frame = "left_rect_optical", "right_rect_optical"
    T_body_cam = np.eye(4)
    T_body_cam[:3, :3] = R_BODY_OPTICAL
    with BagWriter(out, storage) as bag:
        tf = [("base_link", left_frame, T_body_cam)]
        if use_stereo:
            P1 = calib["P1"]  # grey cameras: P0 has no translation, P1[0, 3] = -fx * baseline
            T_lr = np.eye(4)
            T_lr[0, 3] = -P1[0, 3] / P1[0, 0]
            tf.append((left_frame, right_frame, T_lr))
        bag.tf_static(stamps[0], tf)
        gt_count = 0
        if poses is not None:
            # P0 of the left grey camera has no translation; T_0_i is the left camera itself
            for i in range(min(n, len(poses))):
                bag.pose(GT_TOPIC, stamps[i], "world", poses[i])
                gt_count += 1
        for i in range(n):
            image = cv2.imread(str(left_dir / files[i]), cv2.IMREAD_GRAYSCALE)
            if image is None:
                raise FileNotFoundError(f"cannot read {left_dir / files[i]}")
            size = (image.shape[1], image.shape[0])
            P_left = P0.copy()
            P_left[:, 3] = 0.0
            bag.camera_info(topics["left_info"], stamps[i], left_frame, size, K=P0[:, :3], P=P_left)
            bag.image(topics["left_image"], stamps[i], left_frame, image)
            if use_stereo:
                right = cv2.imread(str(right_dir / files[i]), cv2.IMREAD_GRAYSCALE)
                if right is None:
                    raise FileNotFoundError(f"cannot read {right_dir / files[i]}")
                bag.camera_info(topics["right_info"], stamps[i], right_frame, size, K=P1[:, :3], P=P1)
                bag.image(topics["right_image"], stamps[i], right_frame, right)
            if (i + 1) % 20 == 0 or i + 1 == n:
                log(f"  {i + 1}/{n} frames")
    return {"bag": str(out), "frames": n, "stereo": use_stereo, "rectified": True, "ground_truth": gt_count,
            "duration_s": (stamps[n - 1] - stamps[0]) / NS, "topics": dict(topics, ground_truth=GT_TOPIC)}


# --------------------------------------------------------------------------------------------
# Synthetic demo
# --------------------------------------------------------------------------------------------
def write_demo_bag(out: str | Path, n_frames: int = 40, width: int = 640, height: int = 480,
                   rate_hz: float = 10.0, trajectory: str = "forward", seed: int = 0, baseline_m: float = 0.11,
                   speed_mps: float = 0.5, noise_std: float = 0.0, storage: str = "mcap", color: bool = False,
                   log: Log = _quiet) -> dict[str, Any]:
    """A rendered stereo sequence (``synthetic.make_sequence``: textured box room, exact ground
    truth) as a stereo bag; mono8 images unless ``color``."""
    from ..synthetic import make_sequence

    seq = make_sequence(n_frames=n_frames, rate_hz=rate_hz, width=width, height=height, stereo=True,
                        trajectory=trajectory, seed=seed, baseline_m=baseline_m, speed_mps=speed_mps,
                        noise_std=noise_std)
    K = seq.rig.K
    P_left = np.hstack([K, np.zeros((3, 1))])
    P_right = P_left.copy()
    P_right[0, 3] = -K[0, 0] * baseline_m
    T_base_left = np.eye(4)
    T_base_left[:3, :3] = R_BODY_OPTICAL
    gray = (lambda im: im) if color else (lambda im: cv2.cvtColor(im, cv2.COLOR_RGB2GRAY))
    with BagWriter(out, storage) as bag:
        bag.tf_static(int(seq.stamps_ns[0]), [("base_link", "left_optical", T_base_left),
                                              ("left_optical", "right_optical", seq.rig.T_left_right)])
        for k, frame in enumerate(seq):
            t = frame.stamp_ns
            bag.pose(GT_TOPIC, t, "world", frame.T_world_left)
            bag.camera_info(STEREO_TOPICS["left_info"], t, "left_optical", (width, height), K=K, P=P_left)
            bag.image(STEREO_TOPICS["left_image"], t, "left_optical", gray(frame.left))
            bag.camera_info(STEREO_TOPICS["right_info"], t, "right_optical", (width, height), K=K, P=P_right)
            bag.image(STEREO_TOPICS["right_image"], t, "right_optical", gray(frame.right))
            if (k + 1) % 10 == 0 or k + 1 == n_frames:
                log(f"  rendered {k + 1}/{n_frames} stereo frames")
    gt = seq.poses_world_left[:, :3, 3]
    return {"bag": str(out), "frames": n_frames, "stereo": True, "rectified": True, "ground_truth": n_frames,
            "baseline_m": baseline_m, "trajectory": trajectory, "size": [width, height],
            "gt_path_m": float(np.sum(np.linalg.norm(np.diff(gt, axis=0), axis=1))),
            "duration_s": (int(seq.stamps_ns[-1]) - int(seq.stamps_ns[0])) / NS,
            "topics": dict(STEREO_TOPICS, ground_truth=GT_TOPIC)}


def describe(summary: dict[str, Any]) -> str:
    """One line for the CLI."""
    kind = "stereo" if summary.get("stereo") else "mono"
    dur = summary.get("duration_s", float("nan"))
    return (f"wrote {summary['bag']}: {summary['frames']} {kind} frames over {dur:.1f} s, "
            f"{summary.get('ground_truth', 0)} ground-truth poses"
            + (f", baseline {summary['baseline_m']:.4f} m" if summary.get("baseline_m") and kind == "stereo" else ""))


__all__ = ["BagWriter", "GT_TOPIC", "MONO_TOPICS", "STEREO_TOPICS", "TF_STATIC_TOPIC", "bag_topics", "convert_euroc",
           "camera_info_msg", "convert_kitti", "describe", "euroc_rectification", "read_bag", "read_euroc_csv",
           "read_euroc_sensor_yaml", "read_camera_calibration", "read_ground_truth", "read_kitti_calib",
           "read_kitti_poses", "typestore", "write_demo_bag"]

