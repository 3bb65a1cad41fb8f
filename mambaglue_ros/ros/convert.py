"""Conversions between ROS 2 messages and the numpy arrays the core works with.

Images: the core takes numpy uint8 images, either (H, W) gray or (H, W, 3) RGB
(see ``mambaglue_ros.features``). ``image_to_numpy`` and ``compressed_to_numpy`` return exactly
that, whatever the camera's encoding; ``numpy_to_image`` goes the other way (debug image, tests).

Also here: CameraInfo -> intrinsics (and the stereo baseline), ``MatchResult`` -> ``Matches``,
4x4 poses -> ``PoseWithCovarianceStamped`` / ``Odometry``, and stamp <-> nanoseconds.

Only standard message packages are needed (sensor_msgs, geometry_msgs, nav_msgs, std_msgs,
builtin_interfaces); our ``Matches`` message is imported when it is first used so the image
helpers also work where the message package has not been built.
"""
from __future__ import annotations

import array
import sys
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from ..geometry import matrix_to_quaternion
from ..types import MatchResult

try:  # real ROS installs have cv_bridge; the PyPI wheels do not (we fall back to our decoder)
    from cv_bridge import CvBridge as _CvBridge
except ImportError:  # pragma: no cover - depends on the install
    _CvBridge = None

NS_PER_S = 1_000_000_000
_cv_bridge_failed = False  # set at cv_bridge's first failure on a well-formed image: our decoder from then on

# encoding -> (dtype, channels, colour order of the channels). "8UC1"/"8UC3" carry no colour
# semantics; like cv_bridge we read them as mono8 / bgr8.
ENCODINGS: dict[str, tuple[np.dtype, int, str]] = {
    "mono8": (np.dtype(np.uint8), 1, "gray"),
    "8UC1": (np.dtype(np.uint8), 1, "gray"),
    "mono16": (np.dtype(np.uint16), 1, "gray"),
    "rgb8": (np.dtype(np.uint8), 3, "rgb"),
    "bgr8": (np.dtype(np.uint8), 3, "bgr"),
    "8UC3": (np.dtype(np.uint8), 3, "bgr"),
    "rgba8": (np.dtype(np.uint8), 4, "rgba"),
    "bgra8": (np.dtype(np.uint8), 4, "bgra"),
}

# Camera encodings we decode but never produce (as cv_bridge converts them): Bayer mosaics are
# demosaiced (OpenCV names a pattern by its second row's first two pixels, hence RGGB -> BayerBG),
# packed YUV 4:2:2 is converted to RGB. ROS "yuv422" is UYVY, "yuv422_yuy2" is YUYV.
_BAYER = {"rggb": cv2.COLOR_BayerBG2RGB, "bggr": cv2.COLOR_BayerRG2RGB,
          "gbrg": cv2.COLOR_BayerGR2RGB, "grbg": cv2.COLOR_BayerGB2RGB}
_YUV422 = {"uyvy": cv2.COLOR_YUV2RGB_UYVY, "yuyv": cv2.COLOR_YUV2RGB_YUY2}
DECODE_ENCODINGS: dict[str, tuple[np.dtype, int, str]] = {
    **ENCODINGS,
    **{f"bayer_{pattern}{bits}": (np.dtype(np.uint8 if bits == 8 else np.uint16), 1, f"bayer_{pattern}")
       for pattern in _BAYER for bits in (8, 16)},
    "yuv422": (np.dtype(np.uint8), 2, "uyvy"),
    "uyvy": (np.dtype(np.uint8), 2, "uyvy"),
    "yuv422_yuy2": (np.dtype(np.uint8), 2, "yuyv"),
    "yuyv": (np.dtype(np.uint8), 2, "yuyv"),
}

# 16-bit images are reduced to 8 bit by a fixed right shift, not by per-frame min-max scaling:
# a fixed mapping keeps the brightness of consecutive frames consistent, which is what the
# detector thresholds and the matcher expect (min-max would change contrast with scene content).
# It is also what the core does with uint16 arrays. 12-bit sensors that publish mono16
# unshifted look dark with >> 8; pass mono16_shift=4 for them.
MONO16_SHIFT = 8

# Covariance put on quantities we do not estimate (e.g. Odometry twist when none is given):
# large and positive, so fusing filters ignore the value instead of trusting a zero.
UNKNOWN_VARIANCE = 1e6


class ImageConversionError(ValueError):
    """An image message cannot be turned into a numpy image; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class OversizedImageError(ImageConversionError):
    """An image has more pixels than allowed (``max_image_pixels``); raised before decoding it."""

    def __init__(self, width: int, height: int, max_pixels: int):
        super().__init__(f"{width}x{height} image ({width * height} px) is above the limit of {max_pixels} px")
        self.width, self.height, self.max_pixels = int(width), int(height), int(max_pixels)


class CameraInfoError(ValueError):
    """A CameraInfo message is unusable (uncalibrated, non-finite, inconsistent)."""


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------
def _check_image_layout(msg: Image) -> tuple[np.dtype, int, str]:
    """Validate encoding and sizes of an Image message; returns DECODE_ENCODINGS[msg.encoding]."""
    if msg.encoding not in DECODE_ENCODINGS:
        raise ImageConversionError(
            f"unsupported image encoding '{msg.encoding}' (supported: {', '.join(DECODE_ENCODINGS)})")
    dtype, channels, order = DECODE_ENCODINGS[msg.encoding]
    if msg.width == 0 or msg.height == 0:
        raise ImageConversionError(f"empty image: {msg.width}x{msg.height} pixels")
    if order in _YUV422 and msg.width % 2:
        raise ImageConversionError(f"{msg.encoding} packs two pixels in 4 bytes: its width must be even, got {msg.width}")
    row_bytes = msg.width * channels * dtype.itemsize
    if msg.step < row_bytes:
        raise ImageConversionError(
            f"step {msg.step} B is smaller than a row of {msg.width} px x {channels} channel(s) "
            f"x {dtype.itemsize} B = {row_bytes} B ({msg.encoding})")
    if len(msg.data) != msg.step * msg.height:
        raise ImageConversionError(
            f"data has {len(msg.data)} B but step x height = {msg.step} x {msg.height} "
            f"= {msg.step * msg.height} B")
    return dtype, channels, order


def _decode_raw(msg: Image, dtype: np.dtype, channels: int) -> np.ndarray:
    """Raw pixels as (H, W) or (H, W, C) in the message's dtype, native byte order.

    Zero-copy for 8-bit data: the result is a (possibly strided, when ``step`` has padding)
    view of ``msg.data``; it keeps the buffer alive, and changes to ``msg.data`` show through.
    """
    rows = np.frombuffer(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)
    # Cut the row padding in bytes first: step need not be a multiple of the pixel size.
    pixels = rows[:, : msg.width * channels * dtype.itemsize]
    if dtype.itemsize > 1:
        pixels = pixels.view(dtype.newbyteorder(">" if msg.is_bigendian else "<"))
        if not pixels.dtype.isnative:  # byte swap into a native copy
            pixels = pixels.astype(dtype)
    if channels > 1:
        return pixels.reshape(msg.height, msg.width, channels)
    return pixels.reshape(msg.height, msg.width)


def _decode_cv_bridge(msg: Image) -> np.ndarray:  # pragma: no cover - needs a ROS install
    """cv_bridge 'passthrough' decode (copies). Only used for layouts it handles correctly."""
    try:
        return np.asarray(_CvBridge().imgmsg_to_cv2(msg, desired_encoding="passthrough"))
    except Exception as exc:  # CvBridgeError or numpy errors, both mean "bad message"
        raise ImageConversionError(f"cv_bridge could not decode the image: {exc}") from exc


def _to_gray_or_rgb(pixels: np.ndarray, order: str, mono16_shift: int) -> np.ndarray:
    """(H, W) / (H, W, C) pixels in ``order`` -> (H, W) gray or (H, W, 3) RGB uint8."""
    if pixels.dtype == np.uint16:
        shifted = pixels >> mono16_shift
        if mono16_shift < 8:  # values may exceed 8 bit after a small shift: saturate
            shifted = np.minimum(shifted, 255)
        pixels = shifted.astype(np.uint8)
    if order == "gray" or order == "rgb":
        return pixels
    if order.startswith("bayer_"):
        return cv2.cvtColor(np.ascontiguousarray(pixels), _BAYER[order[len("bayer_"):]])
    if order in _YUV422:
        return cv2.cvtColor(np.ascontiguousarray(pixels), _YUV422[order])
    if order == "bgr":
        return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    if order == "rgba":
        return cv2.cvtColor(pixels, cv2.COLOR_RGBA2RGB)
    if order == "bgra":
        return cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGB)
    raise AssertionError(f"unknown channel order {order}")  # ENCODINGS and this list disagree


def image_to_numpy(msg: Image, *, mono16_shift: int = MONO16_SHIFT,
                   use_cv_bridge: bool | None = None) -> np.ndarray:
    """sensor_msgs/Image -> numpy uint8 image for the core.

    Returns (H, W) uint8 for mono8 / 8UC1 / mono16, (H, W, 3) uint8 **RGB** for rgb8 / bgr8 /
    8UC3 (read as bgr8) / rgba8 / bgra8 (alpha dropped), Bayer (bayer_rggb8/bggr8/gbrg8/grbg8 and
    their 16-bit versions: demosaiced) and packed YUV 4:2:2 (yuv422 = UYVY, yuv422_yuy2 = YUYV).
    16-bit data becomes ``value >> mono16_shift`` (saturated at 255), honouring ``is_bigendian``.
    Row padding (``step > width * pixel size``) is skipped.

    mono8 / 8UC1 / rgb8 come back as zero-copy views of ``msg.data`` (strided when rows are
    padded); every other encoding is converted into a new contiguous array.

    The sizes are always validated here first. cv_bridge, when importable (real ROS installs),
    decodes the layouts it handles correctly (rows a whole number of pixels, no byte swap);
    ``use_cv_bridge=False`` forces our decoder, which also does those, and which takes over when
    cv_bridge fails on a well-formed message. The final conversion to gray/RGB is ours in both
    cases, so the result is identical.

    Raises:
        ImageConversionError: unsupported encoding, zero size, ``len(data) != step * height``,
            ``step < width * channels * bytes per channel`` or an odd width for packed YUV 4:2:2.
    """
    dtype, channels, order = _check_image_layout(msg)
    if use_cv_bridge is None:
        use_cv_bridge = _CvBridge is not None
    pixel_bytes = channels * dtype.itemsize
    needs_swap = dtype.itemsize > 1 and bool(msg.is_bigendian) != (sys.byteorder == "big")
    # cv_bridge mis-reads rows that are not a whole number of pixels, its byte swap uses an
    # API numpy 2 removed, and it always copies: mono8/rgb8 stay zero-copy with ours.
    zero_copy = dtype.itemsize == 1 and order in ("gray", "rgb")
    global _cv_bridge_failed
    pixels = None
    if use_cv_bridge and not _cv_bridge_failed and not zero_copy and not needs_swap and msg.step % pixel_bytes == 0:
        try:
            pixels = _decode_cv_bridge(msg)
        except ImageConversionError:
            # The sizes were checked above, so the message is well formed: a cv_bridge that does not know the
            # encoding (older ones lack "yuyv"/"uyvy") or whose compiled module fails under numpy 2 (it imports it
            # at each call, printing numpy's traceback) must not cost the frame, nor be tried again on every frame.
            _cv_bridge_failed = True
            pixels = None
    if pixels is None:
        pixels = _decode_raw(msg, dtype, channels)
    return _to_gray_or_rgb(pixels, order, mono16_shift)


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def compressed_image_size(data: bytes | np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding; None for other or unreadable data.

    Lets a size limit be enforced before decoding: a few kB of compressed data can declare an
    image of gigabytes (a decompression bomb).
    """
    head = bytes(data[:8])
    if head == b"\x89PNG\r\n\x1a\n":
        ihdr = bytes(data[8:24])
        if len(ihdr) == 16 and ihdr[4:8] == b"IHDR":
            return int.from_bytes(ihdr[8:12], "big"), int.from_bytes(ihdr[12:16], "big")
        return None
    if head[:2] != b"\xff\xd8":
        return None
    view = memoryview(bytes(data[:1 << 20]) if len(data) > 1 << 20 else bytes(data))  # headers come first
    pos = 2
    while pos + 4 <= len(view):
        if view[pos] != 0xFF:
            return None
        marker = view[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        length = int.from_bytes(view[pos + 2:pos + 4], "big")
        if marker in _JPEG_SOF:
            if pos + 9 > len(view):
                return None
            height = int.from_bytes(view[pos + 5:pos + 7], "big")
            width = int.from_bytes(view[pos + 7:pos + 9], "big")
            return width, height
        pos += 2 + length
    return None


def compressed_channel_order(fmt: str, channels: int) -> str:
    """The channel order of an image OpenCV decoded from a CompressedImage of format ``fmt`` with ``channels``
    channels (1, 3 or 4): "gray", "bgr", "bgra", "rgb", "rgba" or "bayer_<pattern>".

    image_transport's compressed plugin writes "<source encoding>; <codec> compressed [<target>]": colour
    sources are converted to BGR first (target "bgr8" / "bgr16"), which OpenCV decodes as BGR; a Bayer source is
    not colour to it, so its raw mosaic is stored as one channel and must still be demosaiced; a colour source
    stored without conversion (no "bgr" target, e.g. TIFF) comes back in its own channel order, since OpenCV's
    encoder and decoder swap the same two channels. A format without ";" (older publishers, plain "jpeg") says
    nothing of the source: OpenCV's own order.
    """
    source, sep, rest = fmt.partition(";")
    source = source.strip()
    if channels == 1:
        decoded = DECODE_ENCODINGS.get(source)
        if sep and decoded is not None and decoded[2].startswith("bayer_"):
            return decoded[2]
        return "gray"
    opencv_order = "bgr" if channels == 3 else "bgra"
    if not sep or "compressed bgr" in rest.lower():
        return opencv_order
    stored = {"rgb8": "rgb", "rgb16": "rgb", "bgr8": "bgr", "bgr16": "bgr", "rgba8": "rgba", "rgba16": "rgba",
              "bgra8": "bgra", "bgra16": "bgra"}.get(source)
    if stored is None or len(stored) != channels:  # one letter a channel: "rgb" 3, "rgba" 4
        return opencv_order
    return stored


def compressed_header_size(msg: CompressedImage, *, max_pixels: int | None = None) -> tuple[int, int] | None:
    """The checks ``compressed_to_numpy`` makes before decoding: (width, height) from the PNG / JPEG header, None
    when the header does not tell (another codec, or unreadable: only decoding can tell).

    Raises:
        ImageConversionError: empty data or compressedDepth.
        OversizedImageError: the header declares more than ``max_pixels`` pixels.
    """
    if "compresseddepth" in msg.format.lower().replace(" ", ""):
        raise ImageConversionError(f"compressedDepth images are not supported (format '{msg.format}')")
    if len(msg.data) == 0:
        raise ImageConversionError("compressed image has no data")
    size = compressed_image_size(np.frombuffer(msg.data, dtype=np.uint8))
    if max_pixels is not None and size is not None and size[0] * size[1] > max_pixels:
        raise OversizedImageError(size[0], size[1], max_pixels)
    return size


def compressed_to_numpy(msg: CompressedImage, *, mono16_shift: int = MONO16_SHIFT,
                        max_pixels: int | None = None) -> np.ndarray:
    """sensor_msgs/CompressedImage (JPEG or PNG, as image_transport's compressed plugin sends)
    -> (H, W) gray or (H, W, 3) RGB uint8 (16-bit PNG: ``>> mono16_shift``).

    The image codec is detected from the bytes. The format string (e.g. "rgb8; jpeg compressed bgr8") rejects
    compressedDepth and gives the channel order (``compressed_channel_order``): a Bayer source
    ("bayer_rggb8; png compressed ") is demosaiced, a colour source stored unconverted keeps its order.

    max_pixels: refuse images with more pixels; for PNG and JPEG the size is read from the
        header, before anything is decoded (other codecs: checked after decoding).

    Raises:
        OversizedImageError: more than ``max_pixels`` pixels.
        ImageConversionError: empty data, compressedDepth, or bytes OpenCV cannot decode.
    """
    buffer = np.frombuffer(msg.data, dtype=np.uint8)
    compressed_header_size(msg, max_pixels=max_pixels)
    decoded = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.size == 0:
        raise ImageConversionError(
            f"could not decode {len(msg.data)} B of compressed image data (format '{msg.format}'): "
            "corrupt or not JPEG/PNG")
    if max_pixels is not None and decoded.shape[0] * decoded.shape[1] > max_pixels:
        raise OversizedImageError(decoded.shape[1], decoded.shape[0], max_pixels)
    if decoded.dtype not in (np.uint8, np.uint16):
        raise ImageConversionError(f"decoded image has unsupported depth {decoded.dtype}")
    if decoded.ndim == 3 and decoded.shape[2] == 1:
        decoded = decoded[..., 0]
    channels = 1 if decoded.ndim == 2 else decoded.shape[2]
    if channels not in (1, 3, 4):
        raise ImageConversionError(f"decoded image has {channels} channels")
    return _to_gray_or_rgb(decoded, compressed_channel_order(msg.format, channels), mono16_shift)


def numpy_to_image(array_: np.ndarray, encoding: str, header: Header | None = None) -> Image:
    """numpy image -> sensor_msgs/Image in ``encoding`` (no padding, little-endian).

    ``array_`` must already be in that encoding's layout: (H, W) for mono8 / 8UC1 (uint8) and
    mono16 (uint16); (H, W, 3) uint8 for rgb8 / bgr8 / 8UC3; (H, W, 4) uint8 for rgba8 / bgra8.
    No colour conversion is done (the debug image is drawn in RGB and published as rgb8).

    Raises:
        ImageConversionError: unknown encoding, or dtype / shape not matching it.
    """
    if encoding not in ENCODINGS:
        raise ImageConversionError(
            f"unsupported image encoding '{encoding}' (supported: {', '.join(ENCODINGS)})")
    dtype, channels, _ = ENCODINGS[encoding]
    expected_ndim = 2 if channels == 1 else 3
    if array_.dtype != dtype or array_.ndim != expected_ndim or (
            channels > 1 and array_.shape[2] != channels):
        layout = "(H, W)" if channels == 1 else f"(H, W, {channels})"
        raise ImageConversionError(
            f"{encoding} needs a {layout} {dtype} array, got {array_.shape} {array_.dtype}")
    if array_.shape[0] == 0 or array_.shape[1] == 0:
        raise ImageConversionError(f"empty image: {array_.shape[1]}x{array_.shape[0]} pixels")
    data = np.ascontiguousarray(array_, dtype=dtype.newbyteorder("<"))
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(array_.shape[0]), int(array_.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = msg.width * channels * dtype.itemsize
    # array('B', bytes) skips the generated setter's per-element check (~1 ms for VGA RGB).
    msg.data = array.array("B", data.tobytes())
    return msg


# --------------------------------------------------------------------------------------------
# Camera calibration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CameraModel:
    """Calibration of one camera, from sensor_msgs/CameraInfo.

    K: (3, 3) float64 intrinsics of the raw image, pixels.
    D: (n,) float64 distortion coefficients (``distortion_model`` says which).
    R: (3, 3) float64 rectification rotation (identity for a monocular camera).
    P: (3, 4) float64 projection of the rectified image; for the right camera of a rectified
       stereo pair P[0, 3] = Tx = -fx' * baseline (metres).
    image_size: (width, height) pixels.
    frame_id: optical frame of the camera.
    """

    K: np.ndarray
    D: np.ndarray
    R: np.ndarray
    P: np.ndarray
    distortion_model: str
    image_size: tuple[int, int]
    frame_id: str

    @classmethod
    def from_msg(cls, msg: CameraInfo) -> "CameraModel":
        """Validated model of ``msg``; raises CameraInfoError (see ``camera_info_to_K``)."""
        K, size = camera_info_to_K(msg)
        R = np.asarray(msg.r, dtype=np.float64).reshape(3, 3)
        P = np.asarray(msg.p, dtype=np.float64).reshape(3, 4)
        D = np.asarray(msg.d, dtype=np.float64)
        if not (np.isfinite(R).all() and np.isfinite(P).all()):
            raise CameraInfoError("camera_info R or P has non-finite values")
        if not np.isfinite(D).all():  # NaN in D would make every later camera_info a "new calibration" (a reset)
            raise CameraInfoError(f"camera_info D has non-finite values: {D.tolist()}")
        if not R.any():  # some drivers leave R all zero for monocular cameras
            R = np.eye(3)
        # a calibration file's R has a few digits: the nearest rotation (SVD), so that turned poses stay rotations;
        # a matrix that is no rotation is refused
        U, S, Vt = np.linalg.svd(R)
        R_nearest = U @ Vt
        if np.linalg.det(R_nearest) < 0 or np.abs(S - 1.0).max() > 1e-3:
            raise CameraInfoError(f"camera_info R is not a rotation (singular values {np.round(S, 6).tolist()}, "
                                  f"det {np.linalg.det(R):.6f})")
        R = R_nearest
        return cls(K, D, R, P, msg.distortion_model, size,
                   msg.header.frame_id)

    @property
    def K_rect(self) -> np.ndarray:
        """(3, 3) intrinsics of the rectified image, P[:, :3]; K when P is unset (all zero)."""
        return self.P[:, :3].copy() if self.P[0, 0] > 0 else self.K.copy()

    @property
    def baseline_m(self) -> float:
        """Stereo baseline from P: ``-Tx / fx'`` (metres; > 0 for the right camera, 0 for the left)."""
        if not self.P[0, 0] > 0:
            raise CameraInfoError("camera_info P is unset (fx' = 0): no rectified projection")
        return float(-self.P[0, 3] / self.P[0, 0])


def camera_info_to_K(msg: CameraInfo) -> tuple[np.ndarray, tuple[int, int]]:
    """CameraInfo -> (K (3, 3) float64 in pixels, (width, height) in pixels).

    Raises:
        CameraInfoError: zero image size, an uncalibrated camera (fx or fy zero, K all zero),
            non-finite entries, or a last row of K other than (0, 0, 1).
    """
    if msg.width == 0 or msg.height == 0:
        raise CameraInfoError(f"camera_info has zero image size {msg.width}x{msg.height}")
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.isfinite(K).all():
        raise CameraInfoError(f"camera_info K has non-finite values: {K.ravel().tolist()}")
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        raise CameraInfoError(
            f"camera_info K has zero/negative focal length (fx={K[0, 0]}, fy={K[1, 1]}): "
            "camera not calibrated?")
    if not np.allclose(K[2], (0.0, 0.0, 1.0)):
        raise CameraInfoError(f"camera_info K last row must be (0, 0, 1), got {K[2].tolist()}")
    return K, (int(msg.width), int(msg.height))


def stereo_baseline(left: CameraInfo, right: CameraInfo) -> float:
    """Baseline in metres of a rectified pair (see ``stereo_baseline_m``)."""
    return stereo_baseline_m(CameraModel.from_msg(left), CameraModel.from_msg(right))


def stereo_baseline_m(left_model: CameraModel, right_model: CameraModel) -> float:
    """Baseline in metres of a rectified pair: each P[0,3] = Tx = -fx' * (position of that camera
    along x in the rectified frame of the reference camera), so the baseline is the difference of
    ``-Tx / fx'`` of right and left. The left Tx is usually 0, but not always (a driver whose
    reference camera is neither of the two, e.g. a centre-referenced rig).

    Raises CameraInfoError when P is unset or the baseline is not positive.
    """
    baseline = right_model.baseline_m - left_model.baseline_m
    if not baseline > 0:
        raise CameraInfoError(
            f"stereo baseline {baseline:.4f} m is not positive: right camera P[0,3] (Tx) should be "
            "-fx' * baseline (are left and right swapped?)")
    return baseline


# --------------------------------------------------------------------------------------------
# Time
# --------------------------------------------------------------------------------------------
def stamp_to_ns(stamp: Time) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    """Integer nanoseconds -> builtin_interfaces/Time (nanosec always in [0, 1e9))."""
    sec, nanosec = divmod(int(ns), NS_PER_S)
    return Time(sec=sec, nanosec=nanosec)


def _as_stamp(stamp: Time | int) -> Time:
    return ns_to_stamp(stamp) if isinstance(stamp, int) else stamp


# --------------------------------------------------------------------------------------------
# Matches
# --------------------------------------------------------------------------------------------
def _array(typecode: str, values: np.ndarray) -> array.array:
    """numpy -> array.array without the generated setter's per-element Python check."""
    dtype = {"f": np.float32, "I": np.uint32}[typecode]
    return array.array(typecode, np.ascontiguousarray(values, dtype=dtype).tobytes())


def build_matches_msg(result: MatchResult, header: Header, stamp0: Time | int, stamp1: Time | int,
                      frame_id0: str, frame_id1: str, pair_kind: int,
                      image_size0: tuple[int, int], image_size1: tuple[int, int],
                      features: str, alpha: float, latency_ms: float, inliers: np.ndarray | None = None):
    """MatchResult -> mambaglue_ros/Matches (see msg/Matches.msg for the layout).

    header: stamp and frame_id of image 1 for a temporal pair (the newer image), of the left image for a stereo pair.
    stamp0, stamp1: Time or integer nanoseconds of image 0 and 1.
    pair_kind: Matches.PAIR_TEMPORAL (0) or Matches.PAIR_STEREO (1).
    image_size0/1: (width, height) pixels of the original images.
    alpha: exit threshold used, -1.0 when early exit is disabled.
    latency_ms: matcher wall time in milliseconds.
    inliers: (N,) bool, the matches the frame's pose explains (``FrameResult.temporal_inliers``), or None (empty).
    """
    from mambaglue_ros.msg import Matches

    matches = np.asarray(result.matches).reshape(-1, 2)
    msg = Matches()
    msg.header = header
    msg.pair_kind = int(pair_kind)
    msg.stamp0, msg.stamp1 = _as_stamp(stamp0), _as_stamp(stamp1)
    msg.frame_id0, msg.frame_id1 = frame_id0, frame_id1
    msg.width0, msg.height0 = int(image_size0[0]), int(image_size0[1])
    msg.width1, msg.height1 = int(image_size1[0]), int(image_size1[1])
    msg.num_keypoints0 = int(len(result.keypoints0))
    msg.num_keypoints1 = int(len(result.keypoints1))
    msg.keypoints0 = _array("f", np.asarray(result.keypoints0).reshape(-1, 2)[matches[:, 0]].ravel())
    msg.keypoints1 = _array("f", np.asarray(result.keypoints1).reshape(-1, 2)[matches[:, 1]].ravel())
    msg.indices0 = _array("I", matches[:, 0])
    msg.indices1 = _array("I", matches[:, 1])
    msg.scores = _array("f", np.asarray(result.scores).reshape(-1))
    if len(msg.scores) != len(matches):
        raise ValueError(f"{len(matches)} matches but {len(msg.scores)} scores")
    if inliers is not None:
        mask = np.asarray(inliers, dtype=bool).reshape(-1)
        if len(mask) != len(matches):
            raise ValueError(f"{len(matches)} matches but {len(mask)} inlier flags")
        msg.inliers = mask.astype(np.uint8).tolist()
    if not (np.isfinite(msg.keypoints0).all() and np.isfinite(msg.keypoints1).all()
            and np.isfinite(msg.scores).all()):
        raise ValueError("non-finite keypoints or scores: Matches not built")
    msg.features = features
    msg.stop_layer = int(result.stop_layer)
    msg.num_layers = int(result.num_layers)
    msg.alpha = float(alpha)
    msg.latency_ms = float(latency_ms)
    return msg


def matches_msg_to_numpy(msg) -> dict[str, np.ndarray]:
    """Matches -> {"points0": (N, 2) float32, "points1": (N, 2) float32, "indices0": (N,) uint32,
    "indices1": (N,) uint32, "scores": (N,) float32} (zero-copy views of the message arrays), "inliers": (N,) bool
    or (0,) where the message verified nothing."""
    return {
        "points0": np.frombuffer(msg.keypoints0, dtype=np.float32).reshape(-1, 2),
        "points1": np.frombuffer(msg.keypoints1, dtype=np.float32).reshape(-1, 2),
        "indices0": np.frombuffer(msg.indices0, dtype=np.uint32),
        "indices1": np.frombuffer(msg.indices1, dtype=np.uint32),
        "scores": np.frombuffer(msg.scores, dtype=np.float32),
        "inliers": np.asarray(msg.inliers, dtype=bool),  # (N,) or (0,) where nothing was verified
    }


# --------------------------------------------------------------------------------------------
# Poses
# --------------------------------------------------------------------------------------------
def _check_pose(T: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    T = np.asarray(T, dtype=np.float64)
    cov = np.asarray(cov, dtype=np.float64)
    if T.shape != (4, 4) or not np.isfinite(T).all():
        raise ValueError(f"pose must be a finite (4, 4) matrix, got shape {T.shape}")
    R = T[:3, :3]
    if not np.allclose(R.T @ R, np.eye(3), atol=1e-4) or np.linalg.det(R) < 0:
        raise ValueError("pose rotation is not a proper rotation matrix (R^T R != I or det < 0)")
    if cov.shape != (6, 6) or not np.isfinite(cov).all():
        raise ValueError(f"covariance must be a finite (6, 6) matrix, got shape {cov.shape}")
    return T, cov


def _fill_pose(pose, T: np.ndarray) -> None:
    """Write T (4x4) into a geometry_msgs/Pose."""
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in T[:3, 3])
    qx, qy, qz, qw = (float(v) for v in matrix_to_quaternion(T[:3, :3]))
    pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = qx, qy, qz, qw


def pose_with_covariance_msg(T: np.ndarray, cov: np.ndarray, header: Header) -> PoseWithCovarianceStamped:
    """4x4 pose + 6x6 covariance -> geometry_msgs/PoseWithCovarianceStamped.

    T: (4, 4) float, pose of the child in ``header.frame_id`` (translation in metres).
    cov: (6, 6) float, ROS order (x, y, z, rot about x, rot about y, rot about z); m^2 / rad^2.
    """
    T, cov = _check_pose(T, cov)
    msg = PoseWithCovarianceStamped()
    msg.header = header
    _fill_pose(msg.pose.pose, T)
    msg.pose.covariance = cov.ravel()  # float64[36] field: a numpy array is accepted as is
    return msg


def odometry_msg(T: np.ndarray, cov: np.ndarray, header: Header, child_frame_id: str,
                 twist: np.ndarray | None = None, twist_cov: np.ndarray | None = None) -> Odometry:
    """4x4 pose (+ optional twist) -> nav_msgs/Odometry.

    T, cov: pose of ``child_frame_id`` in ``header.frame_id`` and its (6, 6) covariance (ROS order).
    twist: (6,) [vx, vy, vz, wx, wy, wz] in m/s and rad/s, expressed in ``child_frame_id``.
    twist_cov: (6, 6); defaults to UNKNOWN_VARIANCE on the diagonal. Without ``twist`` the twist
        is zero with UNKNOWN_VARIANCE, so filters fusing this odometry do not take it as "still".
    """
    T, cov = _check_pose(T, cov)
    msg = Odometry()
    msg.header = header
    msg.child_frame_id = child_frame_id
    _fill_pose(msg.pose.pose, T)
    msg.pose.covariance = cov.ravel()
    if twist is not None:
        if not (np.isfinite(twist).all() and (twist_cov is None or np.isfinite(twist_cov).all())):
            raise ValueError("twist and its covariance must be finite")
        vx, vy, vz, wx, wy, wz = (float(x) for x in np.asarray(twist, dtype=np.float64).reshape(6))
        linear, angular = msg.twist.twist.linear, msg.twist.twist.angular
        linear.x, linear.y, linear.z = vx, vy, vz
        angular.x, angular.y, angular.z = wx, wy, wz
    if twist_cov is None or twist is None:
        twist_cov = np.eye(6) * UNKNOWN_VARIANCE
    msg.twist.covariance = np.asarray(twist_cov, dtype=np.float64).reshape(36)
    return msg


def null_odometry_msg(header: Header, child_frame_id: str) -> Odometry:
    """rtabmap's "null odometry" (publish_null_when_lost): every pose and twist field zero, the
    quaternion included (an invalid rotation that marks the message as "no pose"), and
    UNKNOWN_VARIANCE on the covariance diagonals so a filter that fuses it anyway ignores it."""
    msg = Odometry()
    msg.header = header
    msg.child_frame_id = child_frame_id
    msg.pose.pose.orientation.w = 0.0
    msg.pose.covariance = (np.eye(6) * UNKNOWN_VARIANCE).ravel()
    msg.twist.covariance = (np.eye(6) * UNKNOWN_VARIANCE).ravel()
    return msg


def pose_msg_to_matrix(pose) -> np.ndarray:
    """geometry_msgs/Pose -> (4, 4). Raises ValueError for a non-finite pose or a quaternion whose
    norm is far from 1 (an all-zero quaternion is no rotation)."""
    p, q = pose.position, pose.orientation
    t = np.array([p.x, p.y, p.z], dtype=np.float64)
    quat = np.array([q.x, q.y, q.z, q.w], dtype=np.float64)
    if not (np.isfinite(t).all() and np.isfinite(quat).all()):
        raise ValueError("pose has non-finite values")
    norm = float(np.linalg.norm(quat))
    if abs(norm - 1.0) > 1e-2:
        raise ValueError(f"pose orientation must be a unit quaternion, has norm {norm:.4f}")
    from ..geometry import make_transform, quaternion_to_matrix

    return make_transform(quaternion_to_matrix(quat), t)


def relative_pose_msg(T_cam: np.ndarray, cov_cam: np.ndarray, T_base: np.ndarray, cov_base: np.ndarray,
                      header: Header, reference_stamp: Time | int, keyframe_id: int, child_frame_id: str,
                      base_frame_id: str, metric: bool, num_inliers: int, num_matches: int):
    """mambaglue_ros/RelativePose (see msg/RelativePose.msg).

    T_cam, cov_cam: (4, 4) T_cref_ccur and (6, 6) covariance in the reference camera frame.
    T_base, cov_base: the same motion of the body, T_bref_bcur, and its covariance.
    header: stamp of the current frame, frame_id = reference camera optical frame.
    """
    from mambaglue_ros.msg import RelativePose

    T_cam, cov_cam = _check_pose(T_cam, cov_cam)
    T_base, cov_base = _check_pose(T_base, cov_base)
    msg = RelativePose()
    msg.header = header
    msg.reference_stamp = _as_stamp(reference_stamp)
    msg.keyframe_id = int(keyframe_id)
    msg.child_frame_id = child_frame_id
    msg.base_frame_id = base_frame_id
    msg.metric = bool(metric)
    msg.num_inliers, msg.num_matches = int(num_inliers), int(num_matches)
    _fill_pose(msg.pose.pose, T_cam)
    msg.pose.covariance = cov_cam.ravel()
    _fill_pose(msg.pose_base.pose, T_base)
    msg.pose_base.covariance = cov_base.ravel()
    return msg


def _f32(values: np.ndarray) -> array.array:
    values = np.asarray(values, dtype=np.float32)
    if not np.isfinite(values).all():
        raise ValueError("non-finite track values")
    return _array("f", values.ravel())


def tracks_msg(frame, header: Header, right_frame_id: str, num_cameras: int):
    """tracks.TrackFrame -> mambaglue_ros/Tracks (see msg/Tracks.msg).

    header: stamp of the frame, frame_id = left (mono) camera optical frame.
    """
    from mambaglue_ros.msg import Tracks

    msg = Tracks()
    msg.header = header
    if frame.reference_stamp_ns is not None:
        msg.reference_stamp = ns_to_stamp(frame.reference_stamp_ns)
    msg.right_frame_id = right_frame_id
    msg.num_cameras = int(num_cameras)
    msg.ids = array.array("Q", np.asarray(frame.ids, dtype=np.uint64).tobytes())
    msg.camera = array.array("B", np.asarray(frame.camera, dtype=np.uint8).tobytes())
    msg.pixels = _f32(frame.pixels)
    msg.normalized = _f32(frame.normalized)
    msg.velocity = _f32(frame.velocity_px)
    msg.normalized_velocity = _f32(frame.velocity_normalized)
    msg.age = _array("I", np.asarray(frame.age))
    return msg


TRACKS_CLOUD_LAYOUTS = ("vins_mono", "vins_fusion")
FLOAT32_EXACT_IDS = 2 ** 24  # a float32 channel holds every integer below this exactly


def tracks_cloud_msg(frame, header: Header, num_cameras: int, layout: str = "vins_mono"):
    """tracks.TrackFrame -> sensor_msgs/PointCloud in the feature layout a VINS estimator subscribes to (the
    ``feature_tracker/feature`` topic); points = (x, y, 1) undistorted normalised coordinates.

    ``vins_mono``: channels ``id`` (= track id * num_cameras + camera, VINS's multi-camera numbering; the track id
    itself for mono), ``u``, ``v`` (pixels), ``velocity_x``, ``velocity_y`` (normalised-plane velocity, 1/s, which
    is what VINS computes). ``vins_fusion``: ``id`` (the track id), ``camera_id``, ``u``, ``v``, ``velocity_x``,
    ``velocity_y``, then ``gx``, ``gy``, ``gz`` as zeros: VINS-Fusion's feature callback reads channels 6-8 (a
    simulator's ground-truth point) whenever it gets more than five, so they must be there.
    Channel values are float32, exact below 2^24: ids wrap there (a track lives seconds; an id comes back
    16.7 million ids later, long after it left any estimator's window).
    """
    from geometry_msgs.msg import Point32
    from sensor_msgs.msg import ChannelFloat32, PointCloud

    if layout not in TRACKS_CLOUD_LAYOUTS:
        raise ValueError(f"tracks cloud layout must be one of {TRACKS_CLOUD_LAYOUTS}, got {layout!r}")
    msg = PointCloud()
    msg.header = header
    norm = np.asarray(frame.normalized, dtype=np.float64)
    if not np.isfinite(norm).all():
        raise ValueError("non-finite track values")
    msg.points = [Point32(x=float(x), y=float(y), z=1.0) for x, y in norm]
    track_ids, camera = np.asarray(frame.ids, dtype=np.int64), np.asarray(frame.camera, dtype=np.int64)
    cams = int(num_cameras)
    if layout == "vins_mono":
        columns = {"id": (track_ids % (FLOAT32_EXACT_IDS // cams)) * cams + camera}
    else:
        columns = {"id": track_ids % FLOAT32_EXACT_IDS, "camera_id": camera}
    columns.update({"u": frame.pixels[:, 0], "v": frame.pixels[:, 1],
                    "velocity_x": frame.velocity_normalized[:, 0], "velocity_y": frame.velocity_normalized[:, 1]})
    if layout == "vins_fusion":
        columns.update({k: np.zeros(len(track_ids)) for k in ("gx", "gy", "gz")})
    msg.channels = [ChannelFloat32(name=name, values=_f32(values)) for name, values in columns.items()]
    return msg


def status_msg(report, header: Header, keyframe_id: int, num_tracks: int, num_matches: int,
               num_inliers: int, controls: dict[str, Any]):
    """tracking_state.StatusReport -> mambaglue_ros/TrackingStatus (see msg/TrackingStatus.msg).

    controls: what the frame was matched with: ``alpha`` (None = exit off), ``max_keypoints``,
    ``pose_hypotheses`` (0 where none are tried), ``image_scale`` (the front end's resolution, 1 = full; optional)
    and ``rate_control`` (the controller's state).
    """
    from mambaglue_ros.msg import TrackingStatus

    msg = TrackingStatus()
    msg.header = header
    msg.state = int(report.state)
    msg.reason = str(report.reason)
    msg.odometry_reset = bool(report.odometry_reset)
    msg.frames_since_last_pose = int(report.frames_since_last_pose)
    if report.last_pose_stamp_ns is not None:
        msg.last_pose_stamp = ns_to_stamp(report.last_pose_stamp_ns)
    msg.keyframe_id = int(keyframe_id)
    msg.num_tracks, msg.num_matches, msg.num_inliers = int(num_tracks), int(num_matches), int(num_inliers)
    msg.resets = int(report.resets)
    msg.alpha = -1.0 if controls["alpha"] is None else float(controls["alpha"])
    msg.max_keypoints, msg.pose_hypotheses = int(controls["max_keypoints"]), int(controls["pose_hypotheses"])
    msg.image_scale = float(controls.get("image_scale", 1.0))
    msg.rate_control = str(controls["rate_control"])
    return msg
