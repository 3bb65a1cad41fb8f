"""Bags without ROS: write -> read round trip, EuRoC / KITTI converters on tiny generated folders,
the synthetic demo bag, and how replay splits a bag into frames."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from mambaglue_ros.bags import convert as BC
from mambaglue_ros.bags import metrics as M
from mambaglue_ros.bags.replay import camera_topics, load_frames
from mambaglue_ros.paths import data_root

S = 1_000_000_000
EUROC = data_root() / "euroc_v101_micro" / "mav0"


def messages(bag, topic):
    return [m for _, _, _, m in BC.read_bag(bag, [topic])]


def image_array(msg) -> np.ndarray:
    channels = {"mono8": 1, "rgb8": 3}[msg.encoding]
    data = np.asarray(msg.data, dtype=np.uint8).reshape(msg.height, msg.width, channels)
    return data[..., 0] if channels == 1 else data


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_write_read_round_trip(tmp_path, storage):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 255, (48, 64), dtype=np.uint8)
    rgb = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    K = np.array([[50.0, 0, 31.5], [0, 50.0, 23.5], [0, 0, 1]])
    P = np.hstack([K, [[-5.0], [0], [0]]])
    T = M.make_pose(M.quat_to_rot(np.array([0.1, -0.2, 0.3, 0.9])), np.array([1.0, 2.0, 3.0]))
    t0 = 1_700_000_000 * S + 5
    with BC.BagWriter(tmp_path / "bag", storage) as bag:
        bag.tf_static(t0, [("base_link", "cam", T)])
        bag.camera_info("/cam/camera_info", t0, "cam", (64, 48), K=K, P=P, D=np.array([0.1, 0, 0, 0, 0]))
        bag.image("/cam/image_rect", t0, "cam", gray)
        bag.image("/cam/image_color", t0 + 1, "cam", rgb)
        bag.pose(BC.GT_TOPIC, t0, "world", T)
    with pytest.raises(FileExistsError):
        BC.BagWriter(tmp_path / "bag", storage)
    topics = BC.bag_topics(tmp_path / "bag")
    assert topics == {"/tf_static": ("tf2_msgs/msg/TFMessage", 1), "/cam/camera_info": ("sensor_msgs/msg/CameraInfo", 1),
                      "/cam/image_rect": ("sensor_msgs/msg/Image", 1), "/cam/image_color": ("sensor_msgs/msg/Image", 1),
                      BC.GT_TOPIC: ("geometry_msgs/msg/PoseStamped", 1)}
    img = messages(tmp_path / "bag", "/cam/image_rect")[0]
    assert img.encoding == "mono8" and img.step == 64 and np.array_equal(image_array(img), gray)
    assert BC.stamp_ns(img.header) == t0 and img.header.frame_id == "cam"
    assert np.array_equal(image_array(messages(tmp_path / "bag", "/cam/image_color")[0]), rgb)
    info = messages(tmp_path / "bag", "/cam/camera_info")[0]
    assert np.allclose(info.k, K.ravel()) and np.allclose(info.p, P.ravel()) and np.allclose(info.r, np.eye(3).ravel())
    assert (info.width, info.height) == (64, 48) and info.d[0] == pytest.approx(0.1)
    tf = messages(tmp_path / "bag", "/tf_static")[0].transforms
    assert len(tf) == 1 and tf[0].header.frame_id == "base_link" and tf[0].child_frame_id == "cam"
    r = tf[0].transform.rotation
    assert np.allclose(M.quat_to_rot(np.array([r.x, r.y, r.z, r.w])), T[:3, :3])
    gt = BC.read_ground_truth(tmp_path / "bag")
    assert gt.stamps_ns.tolist() == [t0] and np.allclose(gt.poses[0], T)
    # /tf_static is offered transient local, as tf2 expects
    meta = (tmp_path / "bag" / "metadata.yaml").read_text()
    assert "transient_local" in meta.lower() or "durability: 1" in meta


def test_bag_bytes_are_ros_cdr(tmp_path):
    """What rosbags writes is what rclpy publishes (replay sends the bag bytes unchanged)."""
    pytest.importorskip("rclpy")
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CameraInfo, Image

    K = np.array([[50.0, 0, 31.5], [0, 50.0, 23.5], [0, 0, 1]])
    with BC.BagWriter(tmp_path / "bag") as bag:
        bag.image("/i", 7, "cam", np.full((4, 6), 9, np.uint8))
        bag.camera_info("/c", 7, "cam", (6, 4), K=K, P=np.hstack([K, np.zeros((3, 1))]))
    raw = {t: b for t, _, _, b in BC.read_bag(tmp_path / "bag", deserialize=False)}
    img = deserialize_message(raw["/i"], Image)
    assert (img.width, img.height, img.encoding, bytes(img.data)) == (6, 4, "mono8", bytes([9] * 24))
    assert np.allclose(deserialize_message(raw["/c"], CameraInfo).k, K.ravel())


# --------------------------------------------------------------------------------------------
# EuRoC
# --------------------------------------------------------------------------------------------
EUROC_T_BS0 = [0.0148655429818, -0.999880929698, 0.00414029679422, -0.0216401454975,
               0.999557249008, 0.0149672133247, 0.025715529948, -0.064676986768,
               -0.0257744366974, 0.00375618835797, 0.999660727178, 0.00981073058949, 0.0, 0.0, 0.0, 1.0]
EUROC_T_BS1 = [0.0125552670891, -0.999755099723, 0.0182237714554, -0.0198435579556,
               0.999598781151, 0.0130119051815, 0.0251588363115, 0.0453689425024,
               -0.0253898008918, 0.0179005838253, 0.999517347078, 0.00786212447038, 0.0, 0.0, 0.0, 1.0]


def fake_euroc(root: Path, n: int = 3, asl_gt: bool = False) -> tuple[Path, list[int], np.ndarray]:
    """A 3-frame EuRoC folder (188x120 images: the real calibration divided by 4)."""
    mav0 = root / "mav0"
    stamps = [1403715273262142976 + i * 50_000_000 for i in range(n)]
    rng = np.random.default_rng(0)
    for cam, T, intr, dist in (("cam0", EUROC_T_BS0, [114.66, 114.32, 91.80, 62.09],
                                [-0.28340811, 0.07395907, 0.00019359, 1.76187114e-05]),
                               ("cam1", EUROC_T_BS1, [114.40, 114.03, 95.00, 63.81],
                                [-0.28368365, 0.07451284, -0.00010473, -3.55590700e-05])):
        (mav0 / cam / "data").mkdir(parents=True)
        (mav0 / cam / "sensor.yaml").write_text(
            "%YAML:1.0\nsensor_type: camera\nT_BS:\n  cols: 4\n  rows: 4\n"
            f"  data: {T}\nrate_hz: 20\nresolution: [188, 120]\ncamera_model: pinhole\n"
            f"intrinsics: {intr}\ndistortion_model: radial-tangential\ndistortion_coefficients: {dist}\n")
        rows = ["#timestamp [ns],filename"] + [f"{t},{t}.png" for t in stamps]
        (mav0 / cam / "data.csv").write_text("\n".join(rows) + "\n")
        for t in stamps:
            cv2.imwrite(str(mav0 / cam / "data" / f"{t}.png"), rng.integers(0, 255, (120, 188), dtype=np.uint8))
    # body ground truth: moving along x, 1 cm per frame, identity orientation
    T_WB = np.tile(np.eye(4), (n, 1, 1))
    T_WB[:, 0, 3] = 0.01 * np.arange(n)
    if asl_gt:
        (mav0 / "state_groundtruth_estimate0").mkdir()
        lines = ["#timestamp, p_RS_R_x [m], p_RS_R_y [m], p_RS_R_z [m], q_RS_w [], q_RS_x [], q_RS_y [], q_RS_z []"]
        lines += [f"{t},{T[0, 3]},{T[1, 3]},{T[2, 3]},1,0,0,0" for t, T in zip(stamps, T_WB)]
        (mav0 / "state_groundtruth_estimate0" / "data.csv").write_text("\n".join(lines) + "\n")
    else:
        M.write_tum(root / "groundtruth_tum.txt", M.Trajectory(np.array(stamps), T_WB))
    return mav0, stamps, T_WB


@pytest.mark.parametrize("asl_gt", [False, True])
def test_euroc_converter(tmp_path, asl_gt):
    mav0, stamps, T_WB = fake_euroc(tmp_path / "V1", asl_gt=asl_gt)
    summary = BC.convert_euroc(mav0, tmp_path / "bag")
    assert summary["frames"] == 3 and summary["ground_truth"] == 3 and summary["rectified"]
    assert summary["baseline_m"] == pytest.approx(0.1101, abs=2e-4)
    topics = BC.bag_topics(tmp_path / "bag")
    for topic in BC.STEREO_TOPICS.values():
        assert topics[topic][1] == 3
    left = messages(tmp_path / "bag", BC.STEREO_TOPICS["left_info"])
    right = messages(tmp_path / "bag", BC.STEREO_TOPICS["right_info"])
    P1, P2 = np.reshape(left[0].p, (3, 4)), np.reshape(right[0].p, (3, 4))
    # rectified images are ideal pinhole cameras: K = P[:, :3], no distortion, the right Tx = -fx' B
    assert np.allclose(np.reshape(left[0].k, (3, 3)), P1[:, :3]) and not np.any(left[0].d)
    assert np.allclose(P1[:, :3], P2[:, :3]) and P1[0, 3] == 0
    assert -P2[0, 3] / P2[0, 0] == pytest.approx(summary["baseline_m"])
    images = messages(tmp_path / "bag", BC.STEREO_TOPICS["left_image"])
    assert [BC.stamp_ns(m.header) for m in images] == stamps
    assert images[0].encoding == "mono8" and (images[0].width, images[0].height) == (188, 120)
    # ground truth: the rectified left camera, T_W_B T_B_C0 R1^T (R1 moves no position)
    gt = BC.read_ground_truth(tmp_path / "bag")
    T_BC0 = np.reshape(EUROC_T_BS0, (4, 4))
    cam0 = BC.read_euroc_sensor_yaml(mav0 / "cam0" / "sensor.yaml")
    cam1 = BC.read_euroc_sensor_yaml(mav0 / "cam1" / "sensor.yaml")
    R1 = BC.euroc_rectification(cam0, cam1)["R1"]
    for k in range(3):
        expected = T_WB[k] @ T_BC0 @ M.make_pose(R1.T, np.zeros(3))
        assert np.allclose(gt.poses[k], expected, atol=1e-6)
    tf = {t.child_frame_id: t for t in messages(tmp_path / "bag", "/tf_static")[0].transforms}
    assert set(tf) == {"cam0", "cam1", "left_rect_optical", "right_rect_optical"}
    assert tf["cam0"].header.frame_id == "body" and tf["cam0"].transform.translation.x == pytest.approx(T_BC0[0, 3])


def test_euroc_converter_raw_and_errors(tmp_path):
    mav0, _, _ = fake_euroc(tmp_path / "V1")
    summary = BC.convert_euroc(mav0.parent, tmp_path / "raw", rectify=False, max_frames=2, storage="sqlite3")
    assert summary["frames"] == 2 and "/stereo/left/image_raw" in BC.bag_topics(tmp_path / "raw")
    info = messages(tmp_path / "raw", "/stereo/left/camera_info")[0]
    assert info.d[0] == pytest.approx(-0.28340811) and info.k[0] == pytest.approx(114.66)
    with pytest.raises(FileNotFoundError, match="not an EuRoC"):
        BC.convert_euroc(tmp_path, tmp_path / "x")
    with pytest.raises(FileExistsError):
        BC.convert_euroc(mav0, tmp_path / "raw")


@pytest.mark.skipif(not EUROC.is_dir(), reason="shared EuRoC clip not present")
def test_euroc_rectification_aligns_rows_on_real_images(tmp_path):
    """On the real clip: ORB matches between the rectified left and right images lie on the same rows."""
    BC.convert_euroc(EUROC, tmp_path / "bag", max_frames=1)
    left = image_array(messages(tmp_path / "bag", BC.STEREO_TOPICS["left_image"])[0])
    right = image_array(messages(tmp_path / "bag", BC.STEREO_TOPICS["right_image"])[0])
    orb = cv2.ORB_create(2000)
    k0, d0 = orb.detectAndCompute(left, None)
    k1, d1 = orb.detectAndCompute(right, None)
    matches = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(d0, d1)
    dy = np.array([k0[m.queryIdx].pt[1] - k1[m.trainIdx].pt[1] for m in matches])
    dx = np.array([k0[m.queryIdx].pt[0] - k1[m.trainIdx].pt[0] for m in matches])
    good = np.abs(dy) < 1.0
    assert good.mean() > 0.6, f"only {good.mean():.0%} of matches on the same row"
    assert np.median(dx[good]) > 0  # positive disparity: the right camera is to the right


# --------------------------------------------------------------------------------------------
# KITTI
# --------------------------------------------------------------------------------------------
P0 = [707.0912, 0, 601.8873, 0, 0, 707.0912, 183.1104, 0, 0, 0, 1, 0]
P1 = [707.0912, 0, 601.8873, -379.8145, 0, 707.0912, 183.1104, 0, 0, 0, 1, 0]


def fake_kitti(root: Path, n: int = 3, right: bool = False, labels: bool = False) -> np.ndarray:
    (root / "image_l").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        cv2.imwrite(str(root / "image_l" / f"{i:06d}.png"), rng.integers(0, 255, (37, 122), dtype=np.uint8))
    if right:
        (root / "image_1").mkdir()
        for i in range(n):
            cv2.imwrite(str(root / "image_1" / f"{i:06d}.png"), rng.integers(0, 255, (37, 122), dtype=np.uint8))
    fmt = lambda name, p: (f"{name}: " if labels else "") + " ".join(f"{v:.12e}" for v in p)  # noqa: E731
    (root / "calib.txt").write_text(fmt("P0", P0) + "\n" + fmt("P1", P1))  # no trailing newline
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, 2, 3] = 1.2 * np.arange(n)
    poses[1, :3, :3] = M.quat_to_rot(np.array([0.0, 0.01, 0.0, 1.0]))
    (root / "poses.txt").write_text("\n".join(" ".join(f"{v:.9e}" for v in T[:3].ravel()) for T in poses))
    return poses


def test_kitti_converter_mono(tmp_path):
    from mambaglue_ros.synthetic import DEFAULT_START_NS

    poses = fake_kitti(tmp_path / "seq")
    summary = BC.convert_kitti(tmp_path / "seq", tmp_path / "bag")
    assert summary["frames"] == 3 and not summary["stereo"] and summary["ground_truth"] == 3
    topics = BC.bag_topics(tmp_path / "bag")
    assert topics[BC.MONO_TOPICS["left_image"]][1] == 3 and "/stereo/right/image_rect" not in topics
    images = messages(tmp_path / "bag", BC.MONO_TOPICS["left_image"])
    assert [BC.stamp_ns(m.header) for m in images] == [DEFAULT_START_NS + i * S // 10 for i in range(3)]
    info = messages(tmp_path / "bag", BC.MONO_TOPICS["left_info"])[0]
    assert np.allclose(np.reshape(info.k, (3, 3)), np.reshape(P0, (3, 4))[:, :3]) and (info.width, info.height) == (122, 37)
    gt = BC.read_ground_truth(tmp_path / "bag")
    assert np.allclose(gt.poses, poses, atol=1e-8) and gt.stamps_ns.tolist() == [BC.stamp_ns(m.header) for m in images]
    tf = messages(tmp_path / "bag", "/tf_static")[0].transforms
    assert tf[0].header.frame_id == "base_link" and tf[0].child_frame_id == "left_rect_optical"


def test_kitti_converter_stereo_times_and_labels(tmp_path):
    fake_kitti(tmp_path / "seq", right=True, labels=True)
    (tmp_path / "seq" / "times.txt").write_text("0.0\n0.103\n0.2071\n")
    summary = BC.convert_kitti(tmp_path / "seq", tmp_path / "bag", start_ns=10 * S, max_frames=2)
    assert summary["stereo"] and summary["frames"] == 2
    right = messages(tmp_path / "bag", BC.STEREO_TOPICS["right_info"])
    assert -right[0].p[3] / right[0].p[0] == pytest.approx(0.5372, abs=1e-4)
    stamps = [BC.stamp_ns(m.header) for m in messages(tmp_path / "bag", BC.STEREO_TOPICS["left_image"])]
    assert stamps == [10 * S, 10 * S + 103_000_000]
    mono = BC.convert_kitti(tmp_path / "seq", tmp_path / "mono", stereo=False)
    assert not mono["stereo"]


# --------------------------------------------------------------------------------------------
# Demo bag and replay's frame split
# --------------------------------------------------------------------------------------------
def test_demo_bag_and_frames_for_replay(tmp_path):
    from mambaglue_ros.synthetic import make_sequence

    summary = BC.write_demo_bag(tmp_path / "demo", n_frames=3, width=160, height=120)
    assert summary["frames"] == 3 and summary["stereo"]
    seq = make_sequence(n_frames=3, width=160, height=120, trajectory="forward")
    gt = BC.read_ground_truth(tmp_path / "demo")
    assert np.allclose(gt.poses, seq.poses_world_left) and gt.stamps_ns.tolist() == seq.stamps_ns.tolist()
    right = messages(tmp_path / "demo", BC.STEREO_TOPICS["right_info"])[0]
    assert -right.p[3] / right.p[0] == pytest.approx(0.11)

    topics = camera_topics(tmp_path / "demo")
    assert topics["left_image"] == BC.STEREO_TOPICS["left_image"] and topics["right_info"] == BC.STEREO_TOPICS["right_info"]
    frames = load_frames(tmp_path / "demo", "stereo", topics)
    assert [f.stamp_ns for f in frames] == seq.stamps_ns.tolist()
    assert [t for t, _ in frames[0].messages] == ["left/camera_info", "right/camera_info", "right/image_rect",
                                                  "left/image_rect"]
    mono = load_frames(tmp_path / "demo", "mono", topics, max_frames=2, start=1)
    assert [t for t, _ in mono[0].messages] == ["camera_info", "image"]
    assert [f.stamp_ns for f in mono] == seq.stamps_ns[1:3].tolist()
    kitti = tmp_path / "kitti"
    fake_kitti(kitti)
    BC.convert_kitti(kitti, tmp_path / "kbag")
    with pytest.raises(ValueError, match="needs a right camera"):
        load_frames(tmp_path / "kbag", "stereo", camera_topics(tmp_path / "kbag"))


def test_replay_set_types_values_like_the_parameter():
    from mambaglue_ros.bags import parse_set

    values = parse_set(["target_rate_hz=10", "max_keypoints=256", "alpha=0.9", "stereo_rectify=true",
                        "camera_to_base=[0, 0, 1, 0, 0, 0, 1]", "features=aliked", "unknown_name=3"])
    assert values["target_rate_hz"] == 10.0 and type(values["target_rate_hz"]) is float  # before: int 10, refused
    assert values["max_keypoints"] == 256 and type(values["max_keypoints"]) is int
    assert values["alpha"] == 0.9 and values["stereo_rectify"] is True and values["features"] == "aliked"
    assert values["camera_to_base"] == [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert all(type(v) is float for v in values["camera_to_base"])
    assert values["unknown_name"] == 3  # left to the node, which names it
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_set(["target_rate_hz"])


# --------------------------------------------------------------------------------------------
# bags a user brings: other stamps, compressed images, other types
# --------------------------------------------------------------------------------------------
K_SMALL = np.array([[50.0, 0, 31.5], [0, 50.0, 23.5], [0, 0, 1]])


def user_stereo_bag(path: Path, n: int = 4, right_offset_ns: int = 0, garbage_after: int | None = None) -> list[int]:
    """A stereo bag with its own topic names; the right images stamped ``right_offset_ns`` after the left; images
    from index ``garbage_after`` on are bytes no reader can decode (a reader that gets there fails)."""
    stamps = [1_700_000_000 * S + k * 100_000_000 for k in range(n)]
    with BC.BagWriter(path) as bag:
        for side, P in (("left", np.hstack([K_SMALL, np.zeros((3, 1))])), ("right", np.hstack([K_SMALL, [[-5.0], [0], [0]]]))):
            bag.camera_info(f"/rig/{side}/camera_info", stamps[0] - 1, side, (64, 48), K=K_SMALL, P=P)
        for k, t in enumerate(stamps):
            for side, offset in (("left", 0), ("right", right_offset_ns)):
                if garbage_after is not None and k >= garbage_after:
                    bag.write_raw(f"/rig/{side}/image_rect", "sensor_msgs/msg/Image", t + offset, b"\x00\x01")
                else:
                    bag.image(f"/rig/{side}/image_rect", t + offset, side, np.full((48, 64), 10 * k, np.uint8))
    return stamps


def test_stereo_pairs_within_the_nodes_sync_slop(tmp_path):
    """Cameras not stamped together (right 2 ms after left) pair as the node pairs them, with its sync_slop (before:
    only identical stamps, so 0 frames and "need at least 2" with no word of stamps)."""
    stamps = user_stereo_bag(tmp_path / "bag", right_offset_ns=2_000_000)
    topics = camera_topics(tmp_path / "bag")
    assert topics["right_image"] == "/rig/right/image_rect" and not topics["compressed"]
    with pytest.raises(ValueError, match=r"no left/right image pair: the nearest left and right stamps are \+2.0 ms "
                                         r"apart.*--set sync_slop=SECONDS"):
        load_frames(tmp_path / "bag", "stereo", topics)
    frames = load_frames(tmp_path / "bag", "stereo", topics, sync_slop_s=0.005)
    assert [f.stamp_ns for f in frames[:3]] == stamps[:3]  # (the last pair waits for a later image to be final)


def test_a_few_frames_of_a_long_bag_do_not_read_all_of_it(tmp_path, monkeypatch):
    import mambaglue_ros.bags.replay as RP

    monkeypatch.setattr(RP, "READ_AHEAD_FRAMES", 2)
    stamps = user_stereo_bag(tmp_path / "bag", n=12, garbage_after=8)
    topics = camera_topics(tmp_path / "bag")
    frames = load_frames(tmp_path / "bag", "stereo", topics, max_frames=3, start=1)
    assert [f.stamp_ns for f in frames] == stamps[1:4]
    from rosbags.serde import SerdeError

    with pytest.raises(SerdeError):  # all of it: the reader meets the undecodable images
        load_frames(tmp_path / "bag", "stereo", topics)


def test_compressed_images_replay_on_the_nodes_compressed_topics(tmp_path):
    """image_transport's layout: /cam/image_raw/compressed beside /cam/camera_info (before: no image topic found, or
    the camera_info looked for at /cam/image_raw/camera_info)."""
    ok, png = cv2.imencode(".png", np.full((48, 64), 7, np.uint8))
    with BC.BagWriter(tmp_path / "bag") as bag:
        bag.camera_info("/cam/camera_info", 1, "cam", (64, 48), K=K_SMALL, P=np.hstack([K_SMALL, np.zeros((3, 1))]))
        for k in range(3):
            msg = bag.ts.types["sensor_msgs/msg/CompressedImage"](header=bag.header(10 + k, "cam"), format="mono8; png compressed ",
                                                                  data=np.frombuffer(png.tobytes(), np.uint8))
            bag.write("/cam/image_raw/compressed", msg, 10 + k)
        bag.image("/cam/depth/image_rect", 10, "cam", np.zeros((48, 64), np.uint8))  # a raw depth topic beside it
        bag.camera_info("/cam/depth/camera_info", 1, "cam", (64, 48), K=K_SMALL, P=np.hstack([K_SMALL, np.zeros((3, 1))]))
        bag.image("/viz/overlay", 10, "cam", np.zeros((48, 64), np.uint8))  # and an image with no camera_info
    topics = camera_topics(tmp_path / "bag")  # the camera, not the only raw Image topics
    assert topics["left_image"] == "/cam/image_raw/compressed" and topics["left_info"] == "/cam/camera_info"
    assert topics["compressed"]
    frames = load_frames(tmp_path / "bag", "mono", topics)
    assert len(frames) == 3 and [t for t, _ in frames[0].messages] == ["camera_info", "image/compressed"]


def test_images_before_any_camera_info_are_named(tmp_path):
    with BC.BagWriter(tmp_path / "bag") as bag:
        for k in range(3):
            bag.image("/cam/image_rect", 10 + k, "cam", np.zeros((48, 64), np.uint8))
        bag.camera_info("/cam/camera_info", 20, "cam", (64, 48), K=K_SMALL, P=np.hstack([K_SMALL, np.zeros((3, 1))]))
    with pytest.raises(ValueError, match=r"3 mono image\(s\) but none after a camera_info on /cam/camera_info"):
        load_frames(tmp_path / "bag", "mono", camera_topics(tmp_path / "bag"))


def write_calibration_yaml(path: Path, K: np.ndarray, P: np.ndarray, size=(64, 48), with_r_p: bool = True) -> Path:
    """camera_calibration's file layout (as camera_info_manager reads it)."""
    doc = {"image_width": size[0], "image_height": size[1], "camera_name": path.stem,
           "camera_matrix": {"rows": 3, "cols": 3, "data": K.reshape(-1).tolist()},
           "distortion_model": "plumb_bob",
           "distortion_coefficients": {"rows": 1, "cols": 5, "data": [0.1, -0.01, 0.0, 0.0, 0.0]}}
    if with_r_p:
        doc["rectification_matrix"] = {"rows": 3, "cols": 3, "data": np.eye(3).reshape(-1).tolist()}
        doc["projection_matrix"] = {"rows": 3, "cols": 4, "data": P.reshape(-1).tolist()}
    path.write_text(yaml.safe_dump(doc))
    return path


def test_calibration_files_stand_in_for_the_bags_camera_info(tmp_path):
    """A bag recorded without camera_info replays with ROS calibration YAML (--calib LEFT [RIGHT]): every frame
    carries the files' calibration, and a file set that cannot be right is refused before the run."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CameraInfo

    from mambaglue_ros.bags.replay import calibration_infos, check_calibration_size

    stamps = [1_700_000_000 * S + k * 100_000_000 for k in range(3)]
    with BC.BagWriter(tmp_path / "bag") as bag:
        for t in stamps:
            for side in ("left", "right"):
                bag.image(f"/rig/{side}/image_rect", t, side, np.full((48, 64), 9, np.uint8))
    with pytest.raises(ValueError, match=r"no image topic has a camera_info beside it.*--calib LEFT \[RIGHT\]"):
        camera_topics(tmp_path / "bag")
    topics = camera_topics(tmp_path / "bag", calibrated=True)
    assert topics["left_image"] == "/rig/left/image_rect" and topics["right_image"] == "/rig/right/image_rect"
    assert topics["left_info"] is None and topics["right_info"] is None
    P_left = np.hstack([K_SMALL, np.zeros((3, 1))])
    P_right = np.hstack([K_SMALL, [[-K_SMALL[0, 0] * 0.12], [0], [0]]])
    left = write_calibration_yaml(tmp_path / "left.yaml", K_SMALL, P_left)
    right = write_calibration_yaml(tmp_path / "right.yaml", K_SMALL, P_right)
    infos = calibration_infos([left, right], "stereo")
    frames = load_frames(tmp_path / "bag", "stereo", topics, calib_infos=infos)
    assert [f.stamp_ns for f in frames] == stamps
    assert [t for t, _ in frames[0].messages] == ["left/camera_info", "right/camera_info", "right/image_rect",
                                                  "left/image_rect"]
    check_calibration_size(frames, (left, right))  # 64x48, as the images
    small = calibration_infos([write_calibration_yaml(tmp_path / "l80.yaml", K_SMALL, P_left, size=(80, 60)),
                               write_calibration_yaml(tmp_path / "r80.yaml", K_SMALL, P_right, size=(80, 60))],
                              "stereo")
    with pytest.raises(ValueError, match=r"--calib .*l80.yaml: image size 80x60, the bag's images are 64x48"):
        check_calibration_size(load_frames(tmp_path / "bag", "stereo", topics, calib_infos=small),
                               (tmp_path / "l80.yaml", tmp_path / "r80.yaml"))
    # as replay checks it: at the first frame made, before the rest of the bag is read
    seen = []

    def check_first(frame):
        seen.append(frame.stamp_ns)
        check_calibration_size([frame], (tmp_path / "l80.yaml", tmp_path / "r80.yaml"))

    with pytest.raises(ValueError, match=r"l80.yaml: image size 80x60"):
        load_frames(tmp_path / "bag", "stereo", topics, calib_infos=small, check_first=check_first)
    assert seen == stamps[:1]
    right_info = deserialize_message(frames[-1].messages[1][1], CameraInfo)
    assert (right_info.width, right_info.height) == (64, 48) and right_info.distortion_model == "plumb_bob"
    np.testing.assert_allclose(np.reshape(right_info.p, (3, 4)), P_right)
    np.testing.assert_allclose(right_info.d, [0.1, -0.01, 0.0, 0.0, 0.0])
    mono = BC.read_camera_calibration(write_calibration_yaml(tmp_path / "mono.yaml", K_SMALL, P_left, with_r_p=False))
    np.testing.assert_allclose(mono["P"], P_left)  # a monocular file without R and P: identity and [K | 0]
    np.testing.assert_allclose(mono["R"], np.eye(3))
    with pytest.raises(ValueError, match="stereo needs two files, left and right, got 1"):
        calibration_infos([left], "stereo")
    with pytest.raises(ValueError, match=r"--calib .*right.yaml .*left.yaml: stereo baseline .* not positive.*swapped"):
        calibration_infos([right, left], "stereo")
    # a rig referenced to the right camera (left Tx > 0, right Tx = 0) has its baseline as the node reads it
    right_ref = write_calibration_yaml(tmp_path / "left_rref.yaml", K_SMALL, np.hstack([K_SMALL, [[6.0], [0], [0]]]))
    assert set(calibration_infos([right_ref, left], "stereo")) == {"left_info", "right_info"}
    with pytest.raises(ValueError, match=r"mono needs one file, got 2 \(--mode stereo for a stereo pair\)"):
        calibration_infos([left, right], "mono")
    K_bad = K_SMALL.copy()
    K_bad[0, 0] = 0.0  # what the node refuses is refused here, naming the file, before any frame is played
    with pytest.raises(ValueError, match=r"--calib .*zero.yaml: .*focal length"):
        calibration_infos([write_calibration_yaml(tmp_path / "zero.yaml", K_bad, P_left)], "mono")
    odd = write_calibration_yaml(tmp_path / "odd.yaml", K_SMALL, P_left)
    odd.write_text(odd.read_text().replace("plumb_bob", "kannala_brandt_9"))
    with pytest.raises(ValueError, match=r"--calib .*odd.yaml: .*kannala_brandt_9"):
        calibration_infos([odd], "mono")
    odd.write_text("image_width: 64\nimage_height: 48\ndistortion_model:\n"
                   "camera_matrix: {rows: 3, cols: 3, data: [50, 0, 31.5, 0, 50, 23.5, 0, 0, 1, 0]}\n")
    with pytest.raises(ValueError, match=r"camera_matrix has 10 values, its rows x cols say 9"):
        BC.read_camera_calibration(odd)
    odd.write_text("image_width: 64\nimage_height: 48\ndistortion_model:\n"
                   "camera_matrix: [50, 0, 31.5, 0, 50, 23.5, 0, 0, 1]\n")
    assert BC.read_camera_calibration(odd)["distortion_model"] == "plumb_bob"  # empty: plumb_bob, as ROS reads it
    odd.write_text(odd.read_text().replace("distortion_model:", "distortion_model: equidistant"))
    assert BC.read_camera_calibration(odd)["D"].tolist() == [0.0] * 4
    (tmp_path / "bad.yaml").write_text("a: [1\n")
    with pytest.raises(ValueError, match=r"bad.yaml: not valid YAML \(while parsing a flow sequence\)"):
        BC.read_camera_calibration(tmp_path / "bad.yaml")
    (tmp_path / "bad.yaml").write_text("image_width: 64\nimage_height: 48\ncamera_matrix: {data: [1, 2, 3]}\n")
    with pytest.raises(ValueError, match="camera_matrix has 3 values, expected 3x3"):
        BC.read_camera_calibration(tmp_path / "bad.yaml")


def test_topic_mistakes_and_ground_truth_types_are_named(tmp_path):
    user_stereo_bag(tmp_path / "bag")
    with pytest.raises(ValueError, match="topic /rig/rihgt/image_rect not found"):  # before: dropped, "use --mode mono"
        camera_topics(tmp_path / "bag", "/rig/left/image_rect", "/rig/rihgt/image_rect")
    T = M.make_pose(np.eye(3), np.array([1.0, 2.0, 3.0]))
    with BC.BagWriter(tmp_path / "gt") as bag:  # ground truth as PoseWithCovarianceStamped (a filter's output)
        Ty = bag.ts.types
        cov = Ty["geometry_msgs/msg/PoseWithCovariance"](pose=bag._pose(T), covariance=np.zeros(36))
        bag.write(BC.GT_TOPIC, Ty["geometry_msgs/msg/PoseWithCovarianceStamped"](header=bag.header(5, "world"),
                                                                                   pose=cov), 5)
    gt = BC.read_ground_truth(tmp_path / "gt")  # before: AttributeError 'PoseWithCovariance' has no 'orientation'
    assert gt.stamps_ns.tolist() == [5] and np.allclose(gt.poses[0], T)
    c, s_ = np.cos(0.7), np.sin(0.7)
    T = M.make_pose(np.array([[c, -s_, 0.0], [s_, c, 0.0], [0.0, 0.0, 1.0]]) @ np.array(
        [[1.0, 0.0, 0.0], [0.0, c, -s_], [0.0, s_, c]]), np.array([1.0, 2.0, 3.0]))  # a rotation about two axes
    with BC.BagWriter(tmp_path / "mocap") as bag:  # motion capture as TransformStamped, on a topic of its own
        Ty = bag.ts.types
        q = BC.quaternion(T[:3, :3])
        tr = Ty["geometry_msgs/msg/Transform"](
            translation=Ty["geometry_msgs/msg/Vector3"](x=1.0, y=2.0, z=3.0),
            rotation=Ty["geometry_msgs/msg/Quaternion"](x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])))
        bag.write("/vicon/cam", Ty["geometry_msgs/msg/TransformStamped"](header=bag.header(7, "world"),
                                                                          child_frame_id="cam", transform=tr), 7)
    assert BC.read_ground_truth(tmp_path / "mocap") is None  # not on the default topic
    gt = BC.read_ground_truth(tmp_path / "mocap", "/vicon/cam")
    assert gt.stamps_ns.tolist() == [7] and np.allclose(gt.poses[0], T)
    from mambaglue_ros.bags.replay import ReplayConfig, read_run_ground_truth

    assert read_run_ground_truth(ReplayConfig(tmp_path / "mocap", tmp_path / "o", gt_topic="/vicon/cam")) is not None
    said = []  # without --gt-topic: /ground_truth/pose where the bag has it, else none, naming the candidates
    assert read_run_ground_truth(ReplayConfig(tmp_path / "mocap", tmp_path / "o"), said.append) is None
    assert "no ground truth on /ground_truth/pose" in said[0] and "/vicon/cam (--gt-topic" in said[0]
    with pytest.raises(ValueError, match="ground-truth topic /ground_truth/pose not found"):  # named: must exist
        read_run_ground_truth(ReplayConfig(tmp_path / "mocap", tmp_path / "o", gt_topic=BC.GT_TOPIC))
    with pytest.raises(ValueError, match=r"ground-truth topic /vicon/kam not found \(topics of a ground-truth type: "
                                         r"/vicon/cam\)"):  # a topic the user names must exist (not "no GT")
        read_run_ground_truth(ReplayConfig(tmp_path / "mocap", tmp_path / "o", gt_topic="/vicon/kam"))
    with BC.BagWriter(tmp_path / "gt_bad") as bag:
        bag.image(BC.GT_TOPIC, 5, "world", np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="ground truth on /ground_truth/pose is sensor_msgs/msg/Image"):
        BC.read_ground_truth(tmp_path / "gt_bad")
    ros1 = tmp_path / "run.bag"
    ros1.write_bytes(b"#ROSBAG V2.0\n")
    with pytest.raises(ValueError, match="is a ROS 1 bag; convert it to a ROS 2 bag first: rosbags-convert"):
        camera_topics(ros1)


def test_replay_names_what_went_partly_wrong():
    from mambaglue_ros.bags.replay import run_warnings

    ok = {"frames_lost_timeout": 0, "has_ground_truth": True, "frames_processed": 10, "associated": 10}
    assert run_warnings(ok) == []
    assert "2 frame(s) got no result within the frame timeout" in run_warnings({**ok, "frames_lost_timeout": 2})[0]
    assert "no RPE / ATE" in run_warnings({**ok, "associated": 1})[0]
    assert run_warnings({**ok, "associated": 0, "has_ground_truth": False}) == []


def test_a_bag_without_camera_info_says_so(tmp_path):
    with BC.BagWriter(tmp_path / "bag") as bag:  # a ROS 1 EuRoC bag, converted: images and no calibration
        for k in range(3):
            bag.image("/cam0/image_raw", 10 + k, "cam0", np.zeros((48, 64), np.uint8))
    with pytest.raises(ValueError, match=r"no image topic has a camera_info beside it \(image topics: "
                                         r"\['/cam0/image_raw'\]\).*bag-from-euroc"):
        camera_topics(tmp_path / "bag")
