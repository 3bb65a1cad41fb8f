"""Message <-> numpy conversions: images, camera info, Matches, poses, stamps."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

pytest.importorskip("sensor_msgs.msg")
from builtin_interfaces.msg import Time  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from mambaglue_ros.ros import convert  # noqa: E402
from mambaglue_ros.ros.convert import (  # noqa: E402
    CameraInfoError, CameraModel, ImageConversionError, build_matches_msg, camera_info_to_K,
    compressed_to_numpy, image_to_numpy, matches_msg_to_numpy, ns_to_stamp, numpy_to_image,
    odometry_msg, pose_with_covariance_msg, stamp_to_ns, stereo_baseline)
from mambaglue_ros.types import MatchResult  # noqa: E402

H, W = 6, 5
RNG = np.random.default_rng(0)
GRAY = RNG.integers(0, 256, (H, W), dtype=np.uint8)
RGB = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (H, W, 1), dtype=np.uint8)
GRAY16 = RNG.integers(0, 65536, (H, W), dtype=np.uint16)


def raw_image(pixels: np.ndarray, encoding: str, pad: int = 0, big_endian: bool = False) -> Image:
    """Image message as a driver would send it: rows of ``pad`` extra bytes, chosen byte order."""
    wire = pixels.astype(pixels.dtype.newbyteorder(">" if big_endian else "<"))
    rows = wire.reshape(pixels.shape[0], -1).view(np.uint8)
    padded = np.concatenate([rows, np.full((rows.shape[0], pad), 0xAB, np.uint8)], axis=1)
    msg = Image(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding,
                is_bigendian=int(big_endian), step=padded.shape[1])
    msg.data = padded.tobytes()
    return msg


# --------------------------------------------------------------------------------------------
# raw images
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("encoding, pixels, expected", [
    ("mono8", GRAY, GRAY),
    ("8UC1", GRAY, GRAY),
    ("rgb8", RGB, RGB),
    ("bgr8", RGB[..., ::-1], RGB),
    ("8UC3", RGB[..., ::-1], RGB),  # no colour semantics: read as bgr8, like cv_bridge
    ("rgba8", np.concatenate([RGB, ALPHA], axis=2), RGB),
    ("bgra8", np.concatenate([RGB[..., ::-1], ALPHA], axis=2), RGB),
    ("mono16", GRAY16, (GRAY16 >> 8).astype(np.uint8)),
])
def test_image_to_numpy_every_encoding(encoding, pixels, expected, pad):
    out = image_to_numpy(raw_image(np.ascontiguousarray(pixels), encoding, pad=pad), use_cv_bridge=False)
    assert out.dtype == np.uint8
    assert out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)


def test_mono16_big_endian_and_odd_padding():
    msg = raw_image(GRAY16, "mono16", pad=1, big_endian=True)  # odd step: misaligned uint16 rows
    assert msg.step == W * 2 + 1
    np.testing.assert_array_equal(image_to_numpy(msg, use_cv_bridge=False), GRAY16 >> 8)
    little = raw_image(GRAY16, "mono16", pad=1, big_endian=False)
    assert bytes(little.data) != bytes(msg.data)
    np.testing.assert_array_equal(image_to_numpy(little, use_cv_bridge=False), GRAY16 >> 8)


def test_mono16_shift_for_12_bit_sensors_saturates():
    twelve_bit = np.array([[0, 16, 4095, 100]], dtype=np.uint16)
    out = image_to_numpy(raw_image(twelve_bit, "mono16"), mono16_shift=4, use_cv_bridge=False)
    np.testing.assert_array_equal(out, [[0, 1, 255, 6]])
    out = image_to_numpy(raw_image(twelve_bit, "mono16"), mono16_shift=3, use_cv_bridge=False)
    np.testing.assert_array_equal(out, [[0, 2, 255, 12]])  # 4095 >> 3 = 511 -> saturated


def test_rgb_odd_padding_is_cut_in_bytes():
    msg = raw_image(RGB, "rgb8", pad=1)  # step = 16: not a whole number of pixels
    np.testing.assert_array_equal(image_to_numpy(msg, use_cv_bridge=False), RGB)


def test_mono8_and_rgb8_are_zero_copy_views():
    for pixels, encoding in ((GRAY, "mono8"), (RGB, "rgb8")):
        msg = raw_image(pixels, encoding, pad=2)
        out = image_to_numpy(msg, use_cv_bridge=False)
        assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8))
    out = image_to_numpy(raw_image(RGB[..., ::-1].copy(), "bgr8"), use_cv_bridge=False)
    assert out.flags.c_contiguous  # converted encodings come back contiguous (torch-friendly)


def test_numpy_to_image_round_trip_and_header():
    header = Header(frame_id="cam", stamp=Time(sec=3, nanosec=4))
    for pixels, encoding in ((GRAY, "mono8"), (RGB, "rgb8"), (GRAY16, "mono16")):
        msg = numpy_to_image(pixels, encoding, header)
        assert (msg.width, msg.height, msg.encoding, msg.is_bigendian) == (W, H, encoding, 0)
        assert msg.step == W * pixels.itemsize * (3 if pixels.ndim == 3 else 1)
        assert msg.header.frame_id == "cam" and msg.header.stamp.sec == 3
        back = image_to_numpy(msg, mono16_shift=0, use_cv_bridge=False) if encoding != "mono16" \
            else np.frombuffer(msg.data, "<u2").reshape(H, W)
        np.testing.assert_array_equal(back, pixels)
    bgr = numpy_to_image(RGB[..., ::-1], "bgr8")  # a non-contiguous view is fine
    np.testing.assert_array_equal(image_to_numpy(bgr, use_cv_bridge=False), RGB)


@pytest.mark.parametrize("array_, encoding, match", [
    (GRAY, "rgb8", r"rgb8 needs a \(H, W, 3\) uint8 array, got \(6, 5\) uint8"),
    (GRAY16, "mono8", "mono8 needs a"),
    (RGB, "yuv422", "unsupported image encoding 'yuv422'"),
    (np.zeros((0, 4), np.uint8), "mono8", "empty image: 4x0"),
])
def test_numpy_to_image_errors(array_, encoding, match):
    with pytest.raises(ImageConversionError, match=match):
        numpy_to_image(array_, encoding)


def test_image_errors_have_clear_reasons():
    bad = raw_image(GRAY, "mono8")
    bad.encoding = "16UC1"
    with pytest.raises(ImageConversionError, match="unsupported image encoding '16UC1'") as info:
        image_to_numpy(bad)
    assert "mono8" in info.value.reason  # lists what is supported

    empty = Image(height=0, width=5, encoding="mono8", step=5)
    with pytest.raises(ImageConversionError, match="empty image: 5x0 pixels"):
        image_to_numpy(empty)

    short = raw_image(GRAY, "mono8")
    short.data = bytes(short.data)[:-1]
    with pytest.raises(ImageConversionError, match=r"data has 29 B but step x height = 5 x 6 = 30 B"):
        image_to_numpy(short)

    narrow = raw_image(RGB, "rgb8")
    narrow.step = W * 3 - 1
    narrow.data = bytes(narrow.data)[: narrow.step * H]
    with pytest.raises(ImageConversionError, match=r"step 14 B is smaller than a row of 5 px x 3 channel"):
        image_to_numpy(narrow)

    wide16 = raw_image(GRAY16, "mono16")
    wide16.step = W  # a mono8-sized step for 16-bit data
    wide16.data = bytes(wide16.data)[: W * H]
    with pytest.raises(ImageConversionError, match=r"x 2 B = 10 B \(mono16\)"):
        image_to_numpy(wide16)


def test_cv_bridge_is_used_for_converted_layouts_only(monkeypatch):
    """With cv_bridge present it decodes bgr8/mono16 (native order); mono8/rgb8 stay zero-copy
    and byte-swapped / oddly padded layouts stay with our decoder. Same result either way."""
    calls = []

    class FakeBridge:
        def imgmsg_to_cv2(self, msg, desired_encoding):
            calls.append((msg.encoding, desired_encoding))
            dtype, channels, _ = convert.ENCODINGS[msg.encoding]
            return convert._decode_raw(msg, dtype, channels).copy()

    monkeypatch.setattr(convert, "_CvBridge", FakeBridge)
    monkeypatch.setattr(convert, "_cv_bridge_failed", False)
    bgr = raw_image(np.ascontiguousarray(RGB[..., ::-1]), "bgr8", pad=3)
    np.testing.assert_array_equal(image_to_numpy(bgr), RGB)
    np.testing.assert_array_equal(image_to_numpy(raw_image(GRAY16, "mono16")), GRAY16 >> 8)
    assert calls == [("bgr8", "passthrough"), ("mono16", "passthrough")]
    image_to_numpy(raw_image(GRAY, "mono8"))
    image_to_numpy(raw_image(GRAY16, "mono16", big_endian=True))
    image_to_numpy(raw_image(np.ascontiguousarray(RGB[..., ::-1]), "bgr8", pad=1))
    assert len(calls) == 2


# --------------------------------------------------------------------------------------------
# compressed images
# --------------------------------------------------------------------------------------------
def compressed(image_bgr_or_gray: np.ndarray, ext: str, fmt: str) -> CompressedImage:
    ok, buffer = cv2.imencode(ext, image_bgr_or_gray)
    assert ok
    return CompressedImage(format=fmt, data=buffer.tobytes())


def smooth_rgb(h: int = 48, w: int = 64) -> np.ndarray:
    """A smooth colour image (JPEG reproduces it to within a few grey levels)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], axis=2).astype(np.uint8)


def test_compressed_png_is_exact():
    rgb = smooth_rgb()
    out = compressed_to_numpy(compressed(rgb[..., ::-1], ".png", "rgb8; png compressed bgr8"))
    np.testing.assert_array_equal(out, rgb)
    gray = rgb[..., 0].copy()
    out = compressed_to_numpy(compressed(gray, ".png", "mono8; png compressed"))
    assert out.shape == gray.shape
    np.testing.assert_array_equal(out, gray)
    sixteen = (gray.astype(np.uint16) << 8) | 0x7F
    np.testing.assert_array_equal(compressed_to_numpy(compressed(sixteen, ".png", "mono16; png")), gray)
    bgra = np.concatenate([rgb[..., ::-1], np.full(rgb.shape[:2] + (1,), 9, np.uint8)], axis=2)
    np.testing.assert_array_equal(compressed_to_numpy(compressed(bgra, ".png", "bgra8; png")), rgb)


def test_compressed_jpeg_colour_and_gray():
    rgb = smooth_rgb()
    out = compressed_to_numpy(compressed(rgb[..., ::-1], ".jpg", "bgr8; jpeg compressed bgr8"))
    assert out.shape == rgb.shape and out.dtype == np.uint8
    error = np.abs(out.astype(int) - rgb).mean()
    assert error < 3.0, error  # colour order right (swapped R/B would be ~60 off)
    gray = rgb[..., 1].copy()
    out = compressed_to_numpy(compressed(gray, ".jpg", "jpeg"))
    assert out.shape == gray.shape
    assert np.abs(out.astype(int) - gray).mean() < 3.0


def test_compressed_header_size_is_the_check_before_decoding():
    """The node queues compressed frames undecoded only when these header checks pass; the decode makes the same
    ones (one function), so a frame let through undecoded cannot fail a check the decode would have made first."""
    rgb = smooth_rgb(h=48, w=64)
    for ext in (".png", ".jpg"):
        msg = compressed(rgb, ext, "bgr8; " + ext[1:])
        assert convert.compressed_header_size(msg) == (64, 48)
        assert convert.compressed_header_size(msg, max_pixels=64 * 48) == (64, 48)
        with pytest.raises(convert.OversizedImageError):
            convert.compressed_header_size(msg, max_pixels=64 * 48 - 1)
        with pytest.raises(convert.OversizedImageError):  # the decode refuses it the same way, from the header
            compressed_to_numpy(msg, max_pixels=64 * 48 - 1)
    ok, bmp = cv2.imencode(".bmp", rgb)
    assert convert.compressed_header_size(CompressedImage(format="bgr8; bmp", data=bmp.tobytes())) is None
    with pytest.raises(ImageConversionError, match="no data"):
        convert.compressed_header_size(CompressedImage(format="jpeg"))
    with pytest.raises(ImageConversionError, match="compressedDepth"):
        convert.compressed_header_size(CompressedImage(format="16UC1; compressedDepth png", data=b"\x00" * 20))


def test_compressed_errors():
    with pytest.raises(ImageConversionError, match=r"could not decode 100 B .*format 'jpeg'.*corrupt"):
        compressed_to_numpy(CompressedImage(format="jpeg", data=bytes(range(100))))
    with pytest.raises(ImageConversionError, match="compressed image has no data"):
        compressed_to_numpy(CompressedImage(format="jpeg"))
    with pytest.raises(ImageConversionError, match="compressedDepth images are not supported"):
        compressed_to_numpy(CompressedImage(format="16UC1; compressedDepth png", data=b"\x00" * 20))


# --------------------------------------------------------------------------------------------
# camera info
# --------------------------------------------------------------------------------------------
def camera_info(fx=500.0, fy=510.0, cx=320.0, cy=240.0, width=640, height=480, tx=0.0,
                frame_id="cam") -> CameraInfo:
    msg = CameraInfo(width=width, height=height, distortion_model="plumb_bob")
    msg.header.frame_id = frame_id
    msg.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    msg.d = [0.1, -0.05, 0.0, 0.0, 0.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [fx, 0.0, cx, tx, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


def test_camera_info_to_K():
    K, size = camera_info_to_K(camera_info())
    np.testing.assert_array_equal(K, [[500.0, 0.0, 320.0], [0.0, 510.0, 240.0], [0.0, 0.0, 1.0]])
    assert size == (640, 480)


@pytest.mark.parametrize("kwargs, match", [
    ({"fx": 0.0}, r"zero/negative focal length \(fx=0.0, fy=510.0\): camera not calibrated"),
    ({"fy": -1.0}, "zero/negative focal length"),
    ({"cx": math.nan}, "K has non-finite values"),
    ({"fx": math.inf}, "K has non-finite values"),
    ({"width": 0}, "zero image size 0x480"),
])
def test_camera_info_validation(kwargs, match):
    with pytest.raises(CameraInfoError, match=match):
        camera_info_to_K(camera_info(**kwargs))


def test_camera_info_uncalibrated_and_bad_last_row():
    msg = camera_info()
    msg.k = [0.0] * 9
    with pytest.raises(CameraInfoError, match="focal length"):
        camera_info_to_K(msg)
    msg = camera_info()
    msg.k = [500.0, 0.0, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 2.0]
    with pytest.raises(CameraInfoError, match=r"last row must be \(0, 0, 1\)"):
        camera_info_to_K(msg)


def test_camera_model_and_stereo_baseline():
    fx, baseline = 450.0, 0.12
    left = camera_info(fx=fx, fy=fx, frame_id="left")
    right = camera_info(fx=fx, fy=fx, tx=-fx * baseline, frame_id="right")
    model = CameraModel.from_msg(right)
    assert model.frame_id == "right" and model.image_size == (640, 480)
    assert model.baseline_m == pytest.approx(0.12)
    assert model.P.shape == (3, 4) and model.P[0, 3] == pytest.approx(-54.0)
    np.testing.assert_array_equal(model.K_rect, model.K)
    np.testing.assert_array_equal(model.D, [0.1, -0.05, 0.0, 0.0, 0.0])
    assert stereo_baseline(left, right) == pytest.approx(0.12)
    with pytest.raises(CameraInfoError, match="not positive.*swapped"):
        stereo_baseline(right, left)

    mono = camera_info()
    mono.r = [0.0] * 9  # some drivers leave R unset for monocular cameras
    mono.p = [0.0] * 12
    model = CameraModel.from_msg(mono)
    np.testing.assert_array_equal(model.R, np.eye(3))
    np.testing.assert_array_equal(model.K_rect, model.K)  # P unset: fall back to K
    with pytest.raises(CameraInfoError, match="P is unset"):
        model.baseline_m

    # R as a calibration file writes it (6 digits): the nearest rotation; a matrix that is no rotation is refused
    angle = 0.02
    R = np.array([[np.cos(angle), 0.0, np.sin(angle)], [0.0, 1.0, 0.0], [-np.sin(angle), 0.0, np.cos(angle)]])
    mono.r = [float(v) for v in np.round(R, 6).ravel()]
    model = CameraModel.from_msg(mono)
    np.testing.assert_allclose(model.R @ model.R.T, np.eye(3), atol=1e-14)
    np.testing.assert_allclose(model.R, R, atol=2e-6)
    for bad in (np.diag([1.0, 1.0, -1.0]), 1.1 * R):  # a reflection; a scaled rotation
        mono.r = [float(v) for v in bad.ravel()]
        with pytest.raises(CameraInfoError, match="R is not a rotation"):
            CameraModel.from_msg(mono)
    # non-finite distortion: refused (kept, it would make every later camera_info differ from it: a reset per frame)
    for field, value in (("d", [0.1, math.nan, 0.0, 0.0, 0.0]), ("p", [math.inf] + [0.0] * 11)):
        msg = camera_info()
        setattr(msg, field, value)
        with pytest.raises(CameraInfoError, match="D has non-finite" if field == "d" else "R or P has non-finite"):
            CameraModel.from_msg(msg)


# --------------------------------------------------------------------------------------------
# stamps
# --------------------------------------------------------------------------------------------
def test_stamps():
    assert stamp_to_ns(Time(sec=12, nanosec=345)) == 12_000_000_345
    stamp = ns_to_stamp(1_700_000_000_123_456_789)
    assert (stamp.sec, stamp.nanosec) == (1_700_000_000, 123_456_789)
    assert stamp_to_ns(stamp) == 1_700_000_000_123_456_789
    before_epoch = ns_to_stamp(-1)  # nanosec stays in [0, 1e9)
    assert (before_epoch.sec, before_epoch.nanosec) == (-1, 999_999_999)
    assert stamp_to_ns(before_epoch) == -1


# --------------------------------------------------------------------------------------------
# Matches
# --------------------------------------------------------------------------------------------
def match_result() -> MatchResult:
    keypoints0 = np.array([[1.5, 2.5], [10.0, 20.0], [30.25, 40.75], [7.0, 8.0]], np.float32)
    keypoints1 = np.array([[100.0, 200.0], [11.0, 21.0], [31.5, 41.5]], np.float32)
    matches = np.array([[1, 1], [2, 2], [0, 0]], np.int64)
    scores = np.array([0.9, 0.75, 0.5], np.float32)
    return MatchResult(keypoints0, keypoints1, matches, scores, stop_layer=4, num_layers=9,
                       timings_ms={"total": 12.5})


def test_build_matches_msg_fields():
    Matches = pytest.importorskip("mambaglue_ros.msg").Matches
    header = Header(frame_id="cam1", stamp=ns_to_stamp(2_000_000_000))
    msg = build_matches_msg(match_result(), header, stamp0=1_950_000_000, stamp1=Time(sec=2, nanosec=0),
                            frame_id0="cam0", frame_id1="cam1", pair_kind=Matches.PAIR_STEREO,
                            image_size0=(640, 480), image_size1=(320, 240), features="aliked",
                            alpha=0.95, latency_ms=12.5)
    assert isinstance(msg, Matches)
    assert msg.header.frame_id == "cam1" and stamp_to_ns(msg.header.stamp) == 2_000_000_000
    assert msg.pair_kind == Matches.PAIR_STEREO == 1
    assert (msg.stamp0.sec, msg.stamp0.nanosec) == (1, 950_000_000)
    assert (msg.stamp1.sec, msg.stamp1.nanosec) == (2, 0)
    assert (msg.frame_id0, msg.frame_id1) == ("cam0", "cam1")
    assert (msg.width0, msg.height0, msg.width1, msg.height1) == (640, 480, 320, 240)
    assert (msg.num_keypoints0, msg.num_keypoints1) == (4, 3)
    assert list(msg.keypoints0) == [10.0, 20.0, 30.25, 40.75, 1.5, 2.5]
    assert list(msg.keypoints1) == [11.0, 21.0, 31.5, 41.5, 100.0, 200.0]
    assert list(msg.indices0) == [1, 2, 0] and list(msg.indices1) == [1, 2, 0]
    np.testing.assert_allclose(list(msg.scores), [0.9, 0.75, 0.5], rtol=1e-6)
    assert msg.keypoints0.typecode == "f" and msg.indices0.typecode == "I"
    assert msg.features == "aliked"
    assert (msg.stop_layer, msg.num_layers) == (4, 9)
    assert msg.alpha == pytest.approx(0.95) and msg.latency_ms == pytest.approx(12.5)

    arrays = matches_msg_to_numpy(msg)
    result = match_result()
    np.testing.assert_array_equal(arrays["points0"], result.points0)
    np.testing.assert_array_equal(arrays["points1"], result.points1)
    np.testing.assert_array_equal(arrays["indices0"], result.matches[:, 0])
    np.testing.assert_array_equal(arrays["scores"], result.scores)
    assert len(msg.inliers) == 0 and arrays["inliers"].shape == (0,)  # nothing verified
    verified = build_matches_msg(match_result(), header, 0, 0, "a", "a", 0, (4, 4), (4, 4), "xfeat", -1.0, 1.0,
                                 inliers=np.array([True, False, True]))
    np.testing.assert_array_equal(matches_msg_to_numpy(verified)["inliers"], [True, False, True])
    with pytest.raises(ValueError, match="inlier flags"):
        build_matches_msg(match_result(), header, 0, 0, "a", "a", 0, (4, 4), (4, 4), "xfeat", -1.0, 1.0,
                          inliers=np.array([True]))


def test_build_matches_msg_empty_and_inconsistent():
    pytest.importorskip("mambaglue_ros.msg")
    result = match_result()
    empty = MatchResult(result.keypoints0, result.keypoints1, np.zeros((0, 2), np.int64),
                        np.zeros(0, np.float32), stop_layer=9, num_layers=9)
    msg = build_matches_msg(empty, Header(), 0, 0, "a", "a", 0, (4, 4), (4, 4), "xfeat", -1.0, 1.0)
    assert len(msg.keypoints0) == len(msg.keypoints1) == len(msg.indices0) == len(msg.scores) == 0
    assert msg.num_keypoints0 == 4 and msg.alpha == -1.0
    assert matches_msg_to_numpy(msg)["points0"].shape == (0, 2)
    bad = MatchResult(result.keypoints0, result.keypoints1, result.matches, result.scores[:2], 9, 9)
    with pytest.raises(ValueError, match="3 matches but 2 scores"):
        build_matches_msg(bad, Header(), 0, 0, "a", "a", 0, (4, 4), (4, 4), "xfeat", -1.0, 1.0)


# --------------------------------------------------------------------------------------------
# poses
# --------------------------------------------------------------------------------------------
def rot_z(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def test_pose_with_covariance_msg():
    T = np.eye(4)
    T[:3, :3] = rot_z(90.0)
    T[:3, 3] = [1.0, -2.0, 0.5]
    cov = np.diag([0.01, 0.02, 0.03, 0.001, 0.002, 0.003])
    cov[0, 1] = cov[1, 0] = 0.005
    msg = pose_with_covariance_msg(T, cov, Header(frame_id="cam_prev"))
    assert msg.header.frame_id == "cam_prev"
    p, q = msg.pose.pose.position, msg.pose.pose.orientation
    assert (p.x, p.y, p.z) == (1.0, -2.0, 0.5)
    np.testing.assert_allclose([q.x, q.y, q.z, q.w], [0.0, 0.0, math.sqrt(0.5), math.sqrt(0.5)], atol=1e-12)
    np.testing.assert_array_equal(np.asarray(msg.pose.covariance).reshape(6, 6), cov)


def test_pose_quaternion_of_optical_to_body_rotation():
    T = np.eye(4)
    T[:3, :3] = [[0, 0, 1], [-1, 0, 0], [0, -1, 0]]  # REP-103 optical -> body
    q = pose_with_covariance_msg(T, np.eye(6), Header()).pose.pose.orientation
    np.testing.assert_allclose([q.x, q.y, q.z, q.w], [-0.5, 0.5, -0.5, 0.5], atol=1e-12)
    T[:3, :3] = np.diag([1.0, -1.0, -1.0])  # 180 deg about x: w = 0 branch
    q = pose_with_covariance_msg(T, np.eye(6), Header()).pose.pose.orientation
    np.testing.assert_allclose([q.x, q.y, q.z, q.w], [1.0, 0.0, 0.0, 0.0], atol=1e-12)


def test_odometry_msg():
    T = np.eye(4)
    T[:3, 3] = [3.0, 0.0, 0.0]
    cov = np.eye(6) * 0.1
    msg = odometry_msg(T, cov, Header(frame_id="odom"), "base_link")
    assert (msg.header.frame_id, msg.child_frame_id) == ("odom", "base_link")
    assert msg.pose.pose.position.x == 3.0 and msg.pose.pose.orientation.w == 1.0
    np.testing.assert_array_equal(np.asarray(msg.pose.covariance).reshape(6, 6), cov)
    # no twist estimate: zero twist with a huge variance, so filters ignore it
    assert msg.twist.twist.linear.x == 0.0
    np.testing.assert_array_equal(np.asarray(msg.twist.covariance).reshape(6, 6),
                                  np.eye(6) * convert.UNKNOWN_VARIANCE)

    twist = np.array([1.0, 0.0, 0.0, 0.0, 0.0, 0.5])
    msg = odometry_msg(T, cov, Header(frame_id="odom"), "base_link", twist=twist, twist_cov=np.eye(6) * 0.2)
    assert (msg.twist.twist.linear.x, msg.twist.twist.angular.z) == (1.0, 0.5)
    assert msg.twist.covariance[0] == 0.2 and msg.twist.covariance[35] == 0.2


@pytest.mark.parametrize("T, cov, match", [
    (np.eye(3), np.eye(6), r"finite \(4, 4\) matrix"),
    (np.diag([1.0, 1.0, -1.0, 1.0]), np.eye(6), "not a proper rotation"),
    (np.diag([2.0, 1.0, 1.0, 1.0]), np.eye(6), "not a proper rotation"),
    (np.eye(4), np.eye(3), r"finite \(6, 6\) matrix"),
    (np.eye(4), np.full((6, 6), np.nan), r"finite \(6, 6\) matrix"),
])
def test_pose_validation(T, cov, match):
    with pytest.raises(ValueError, match=match):
        pose_with_covariance_msg(T, cov, Header())


@pytest.mark.parametrize("cams", [1, 2])
def test_tracks_cloud_layouts(cams):
    """VINS-Mono's layout (id = track id x cameras + camera) and VINS-Fusion's (id, camera_id, ..., and the three
    gx gy gz channels its callback reads whenever there are more than six); ids exact in float32 (they wrap)."""
    from std_msgs.msg import Header

    from mambaglue_ros.ros.convert import FLOAT32_EXACT_IDS, tracks_cloud_msg
    from mambaglue_ros.tracks import TrackFrame

    ids = np.array([3, 7, FLOAT32_EXACT_IDS + 5, 3])
    camera = np.array([0, 0, 0, 1 if cams == 2 else 0], dtype=np.uint8)
    px = np.array([[10.0, 20.0], [30.0, 40.0], [50.0, 60.0], [12.0, 20.0]])
    norm = px / 100.0
    vel = np.arange(8, dtype=float).reshape(4, 2)
    frame = TrackFrame(1, None, ids, camera, px, norm, vel * 10, vel, np.ones(4, np.int64))
    mono = tracks_cloud_msg(frame, Header(frame_id="cam"), cams)
    ch = {c.name: np.asarray(c.values) for c in mono.channels}
    assert list(ch) == ["id", "u", "v", "velocity_x", "velocity_y"]
    expected = (ids % (FLOAT32_EXACT_IDS // cams)) * cams + camera
    np.testing.assert_array_equal(ch["id"], expected)  # exact: every value below 2^24
    assert ch["id"][2] == 5 * cams  # wrapped, not rounded to a neighbour's id
    fusion = tracks_cloud_msg(frame, Header(frame_id="cam"), cams, "vins_fusion")
    ch = {c.name: np.asarray(c.values) for c in fusion.channels}
    assert list(ch) == ["id", "camera_id", "u", "v", "velocity_x", "velocity_y", "gx", "gy", "gz"]
    np.testing.assert_array_equal(ch["id"], [3, 7, 5, 3])
    np.testing.assert_array_equal(ch["camera_id"], camera)
    np.testing.assert_array_equal(ch["velocity_y"], vel[:, 1])
    assert all(len(c.values) == len(fusion.points) == 4 for c in fusion.channels)
    assert all(p.z == 1.0 for p in fusion.points)
    with pytest.raises(ValueError, match="layout"):
        tracks_cloud_msg(frame, Header(frame_id="cam"), cams, "orb_slam")


def rggb_mosaic(rgb: np.ndarray) -> np.ndarray:
    """The RGGB Bayer mosaic a camera would record of ``rgb`` (H, W even)."""
    mosaic = np.empty(rgb.shape[:2], rgb.dtype)
    mosaic[0::2, 0::2], mosaic[0::2, 1::2] = rgb[0::2, 0::2, 0], rgb[0::2, 1::2, 1]
    mosaic[1::2, 0::2], mosaic[1::2, 1::2] = rgb[1::2, 0::2, 1], rgb[1::2, 1::2, 2]
    return mosaic


def test_compressed_bayer_is_demosaiced_like_the_raw_image():
    """image_transport stores a Bayer source's raw mosaic ("bayer_rggb8; png compressed "): it is demosaiced as
    the same raw Image would be, not read as a grey image with a 2x2 checkerboard."""
    mosaic = rggb_mosaic(smooth_rgb())
    expected = image_to_numpy(raw_image(mosaic, "bayer_rggb8"), use_cv_bridge=False)
    out = compressed_to_numpy(compressed(mosaic, ".png", "bayer_rggb8; png compressed "))
    assert out.shape == mosaic.shape + (3,)
    np.testing.assert_array_equal(out, expected)
    sixteen = mosaic.astype(np.uint16) << 8
    np.testing.assert_array_equal(compressed_to_numpy(compressed(sixteen, ".png", "bayer_rggb16; png compressed ")),
                                  expected)
    # without the source encoding a one-channel image is grey (plain "png", or a mono source)
    np.testing.assert_array_equal(compressed_to_numpy(compressed(mosaic, ".png", "png")), mosaic)


@pytest.mark.parametrize("fmt, stored", [
    ("rgb8; png compressed bgr8", "bgr"),    # image_transport converted the colour source to BGR
    ("rgb8; tiff compressed ", "rgb"),       # stored as the source's own bytes
    ("bgr8; tiff compressed ", "bgr"),
    ("rgba8; tiff compressed ", "rgba"),
    ("png", "bgr"),                          # no source encoding: OpenCV's order
])
def test_compressed_colour_order_follows_the_format(fmt, stored):
    rgb = smooth_rgb()
    alpha = np.full(rgb.shape[:2] + (1,), 7, np.uint8)
    buffers = {"rgb": rgb, "bgr": rgb[..., ::-1], "rgba": np.concatenate([rgb, alpha], 2)}
    ext = ".tiff" if "tiff" in fmt else ".png"
    # the publisher hands OpenCV's encoder the bytes in the stored order; the decoder gives them back as they were
    out = compressed_to_numpy(compressed(np.ascontiguousarray(buffers[stored]), ext, fmt))
    np.testing.assert_array_equal(out, rgb)


def test_odd_width_packed_yuv_is_refused_with_a_reason():
    odd = Image(height=2, width=3, encoding="yuyv", step=6, data=bytes(12))
    with pytest.raises(ImageConversionError, match="width must be even, got 3"):
        image_to_numpy(odd, use_cv_bridge=False)


def test_a_cv_bridge_failure_falls_back_to_our_decoder(monkeypatch):
    """A cv_bridge that does not know an encoding (older ones lack "yuyv") or fails under numpy 2 must not cost a
    well-formed frame: our decoder takes it, with the same result as without cv_bridge, and cv_bridge is not tried
    again (under numpy 2 each try prints numpy's import traceback)."""
    calls = []

    class RefusingBridge:
        def imgmsg_to_cv2(self, msg, desired_encoding):
            calls.append(msg.encoding)
            raise RuntimeError(f"Unrecognized image encoding [{msg.encoding}]")

    yuyv = cv2.cvtColor(smooth_rgb(), cv2.COLOR_RGB2YUV_YUY2)
    msg = raw_image(yuyv, "yuyv")
    expected = image_to_numpy(msg, use_cv_bridge=False)
    monkeypatch.setattr(convert, "_CvBridge", RefusingBridge)
    monkeypatch.setattr(convert, "_cv_bridge_failed", False)
    np.testing.assert_array_equal(image_to_numpy(msg), expected)
    bgr = raw_image(np.ascontiguousarray(RGB[..., ::-1]), "bgr8")
    np.testing.assert_array_equal(image_to_numpy(bgr), RGB)
    assert calls == ["yuyv"]
    bad = raw_image(yuyv, "yuyv")
    bad.data = bytes(bad.data)[:-1]  # a malformed message is still refused, before any decoder
    with pytest.raises(ImageConversionError, match="data has"):
        image_to_numpy(bad)
