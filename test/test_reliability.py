"""Reliability of the real node over loopback DDS: bad input, stamp and calibration anomalies,
bursts, faults, bad files and configuration. The node never dies and never lies.

Every bad input must give (1) a logged warning naming the problem, (2) a counter in
/diagnostics, (3) no crash (the worker thread and the executor keep running, good frames after
it are processed) and (4) nothing non-finite or inconsistent published. Every test ends with
``check_outputs`` (all outputs well-formed) and ``check_accounting`` (every input frame is in
exactly one counter).

In-process tests run ``MatcherNode`` with its own rclpy Context (as test_node.py); the startup
tests run the ``matcher_node`` console script (as test_node_process.py).
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import cv2
import numpy as np
import pytest

from mambaglue_ros.synthetic import default_K, make_sequence

from ros_harness import (FRAME_FATES, NS, Collector, LogRecorder, camera_info_msg, check_outputs, stamp_ns, wait_for,
                         wait_for_subscribers)

pytestmark = pytest.mark.ros

W, H = 320, 240
BASE = {"features": "xfeat", "max_keypoints": 256, "qos_reliability": "reliable", "qos_depth": 10,
        "device": "cpu", "diagnostics_period_s": 0.2}

# ---------------------------------------------------------------------------------------------- harness
class Rig:
    """MatcherNode + a test node (publishers, output collector) on one executor; the node's log lines
    are observed in-process (``LogRecorder``).

    Not through /rosout: a node here received nothing from it in 3 of 16 runs, even after waiting for
    the subscription to match. Likely cause: rcl keeps one /rosout publisher per logger *name*, and
    an earlier test's ``mambaglue_matcher`` in the same process, finalised late, unregisters the name.
    A real process holds one node; test_node_process.py checks /rosout delivery there."""

    def __init__(self, ros_context, overrides: dict, mode: str = "mono", transport: str = "raw"):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.parameter import Parameter
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image

        from mambaglue_ros.ros.node import MatcherNode

        params = {**BASE, "mode": mode, "transport": transport, **overrides}
        self.node = MatcherNode(context=ros_context,
                                parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        self.log = LogRecorder(self.node)  # what the node logs, observed in-process
        self.io = rclpy.create_node("reliability_io", context=ros_context)
        self.out = Collector(self.io)
        self.executor = SingleThreadedExecutor(context=ros_context)  # as the node's main; see ros_harness
        self.executor.add_node(self.node)
        self.executor.add_node(self.io)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        image_type = CompressedImage if transport == "compressed" else Image
        suffix = "/compressed" if transport == "compressed" else ""
        if mode == "mono":
            self.image = self.io.create_publisher(image_type, "image" + suffix, 10)
            self.info = self.io.create_publisher(CameraInfo, "camera_info", 10)
            wait_for_subscribers(self.image, self.info)
        else:
            self.left = self.io.create_publisher(image_type, "left/image_rect" + suffix, 10)
            self.right = self.io.create_publisher(image_type, "right/image_rect" + suffix, 10)
            self.linfo = self.io.create_publisher(CameraInfo, "left/camera_info", 10)
            self.rinfo = self.io.create_publisher(CameraInfo, "right/camera_info", 10)
            wait_for_subscribers(self.left, self.right, self.linfo, self.rinfo)
        self.out.wait_matched()

    def stop(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.io.destroy_node()

    # -- input
    def send_info(self, K: np.ndarray, width: int = W, height: int = H, side: str = "left", **kw) -> None:
        msg = camera_info_msg(K, width, height, f"{side}_optical", **kw)
        pub = self.info if hasattr(self, "info") else (self.linfo if side == "left" else self.rinfo)
        pub.publish(msg)

    def set_info(self, K: np.ndarray, width: int = W, height: int = H) -> None:
        """Publish camera_info and wait until the node uses it (it is not synchronised with images)."""
        self.send_info(K, width, height)
        assert wait_for(lambda: "left" in self.node.camera and self.node.camera["left"].image_size == (width, height)
                        and np.allclose(self.node.camera["left"].K, K), timeout=10), "camera_info not received"

    def counter(self, name: str) -> int:
        return self.node.stats.counters[name]

    def wait_counter(self, name: str, value: int, timeout: float = 60.0) -> None:
        ok = wait_for(lambda: self.counter(name) >= value, timeout=timeout)
        assert ok, f"{name} = {self.counter(name)}, expected >= {value} (counters {self.node.stats.counters})"

    def match_for(self, stamp: int, timeout: float = 10.0):
        """The Matches message of the frame stamped ``stamp`` (waits for its delivery)."""
        def find():
            return next((m for m in reversed(self.out.get("matches")) if stamp_ns(m.header.stamp) == stamp), None)
        assert wait_for(lambda: find() is not None, timeout=timeout), f"no matches for the frame at {stamp}"
        return find()

    def logged(self, text: str, level: int = 30) -> bool:
        """The node logged a line of at least ``level`` (30 = WARN) containing ``text``."""
        return self.log.logged(text, level)

    def wait_logged(self, text: str, level: int = 30) -> None:
        """The node logs from its worker thread after it updates the counters: wait for the line."""
        assert wait_for(lambda: self.logged(text, level), timeout=10), (
            f"no log line with {text!r}; got {[m for _, m in self.log.get()][-10:]}")

    def diag_agrees(self) -> dict:
        """Wait for a /diagnostics message whose counters equal the node's; return it."""
        from mambaglue_ros.runtime import RuntimeStats

        # in stereo mode the published frames_dropped also counts unpaired halves (sync_dropped)
        keys = [k for k in RuntimeStats.COUNTERS if not (k == "frames_dropped" and self.node.mode == "stereo")]

        def agrees() -> bool:
            d = self.out.latest_diagnostics()
            return bool(d) and all(int(d.get(k, -1)) == self.counter(k) for k in keys)
        assert wait_for(agrees, timeout=10), (self.out.latest_diagnostics(), self.node.stats.counters)
        return self.out.latest_diagnostics()

    def idle(self, timeout: float = 60.0) -> None:
        """Wait until every frame sent has been accounted for (nothing waiting or in work)."""
        def quiet() -> bool:
            c = self.node.stats.counters
            return len(self.node.slot) == 0 and c["frames_in"] == sum(c[k] for k in FRAME_FATES)
        assert wait_for(quiet, timeout=timeout), self.node.stats.counters


def image_msg(image: np.ndarray, stamp: int, encoding: str | None = None, frame_id: str = "left_optical"):
    from mambaglue_ros.ros import convert as C

    enc = encoding or ("mono8" if image.ndim == 2 else "rgb8")
    msg = C.numpy_to_image(image, enc)
    msg.header.stamp = C.ns_to_stamp(stamp)
    msg.header.frame_id = frame_id
    return msg


def raw_msg(width: int, height: int, encoding: str, step: int, data: bytes, stamp: int = NS, bigendian: int = 0):
    from sensor_msgs.msg import Image

    msg = Image(width=width, height=height, encoding=encoding, step=step, is_bigendian=bigendian)
    msg.data = data
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, NS)
    return msg


def check_alive(rig: Rig) -> None:
    assert rig.node.worker.is_alive(), "the worker thread died"
    assert rig.thread.is_alive(), "the executor stopped spinning"


@pytest.fixture(scope="module")
def frames():
    """Synthetic 320x240 frames, 20 cm apart: enough parallax for a mono pose."""
    seq = make_sequence(n_frames=8, rate_hz=5.0, width=W, height=H, stereo=False, trajectory="orbit", seed=1,
                        speed_mps=1.0)
    return [seq.frame(i) for i in range(len(seq))]


# ---------------------------------------------------------------------------------------------- images
def test_bad_raw_images(ros_context, frames):
    """Each malformed or extreme raw image: refused (or processed harmlessly), logged, counted."""
    rig = Rig(ros_context, {"resize_max": 640})
    try:
        f = frames
        K = f[0].K
        rig.set_info(K)
        t = f[0].stamp_ns
        rig.image.publish(image_msg(f[0].left, t))
        rig.wait_counter("frames_processed", 1)

        rgb_row = W * 3
        bad = [  # (message, counter, log text)
            (raw_msg(0, 0, "rgb8", 0, b""), "bad_input", "empty image: 0x0"),
            (raw_msg(1, 1, "rgb8", 3, bytes(3)), "bad_input", "1x1 is too small"),
            (raw_msg(8, 8, "mono8", 8, bytes(64)), "bad_input", "is too small"),  # same kind as 1x1
            (raw_msg(W, H, "16SC1", W * 2, bytes(W * 2 * H)), "bad_input", "unsupported image encoding '16SC1'"),  # yuv422/bayer are decoded
            (raw_msg(W, H, "32FC1", W * 4, bytes(W * 4 * H)), "bad_input", "unsupported image encoding '32FC1'"),
            (raw_msg(W, H, "rgb8", rgb_row, bytes(100)), "bad_input", "data has 100 B but step x height"),
            # the same kind of problem again within 5 s: counted, but logged once per 5 s
            (raw_msg(W, H, "rgb8", rgb_row, bytes(rgb_row * H + 7)), "bad_input", "data has"),
            (raw_msg(W, H, "rgb8", W, bytes(W * H)), "bad_input", f"step {W} B is smaller than a row"),
            (raw_msg(W, H, "mono16", W, bytes(W * H)), "bad_input", f"step {W} B is smaller than a row"),
            # 8K: 7680 x 4320 = 33.2 Mpx > max_image_pixels = 16.8 Mpx, refused before any conversion
            (raw_msg(7680, 4320, "mono8", 7680, bytes(7680 * 4320)), "oversized", "7680x4320 image"),
        ]
        for msg, counter, text in bad:
            before = rig.counter(counter)
            rig.image.publish(msg)
            rig.wait_counter(counter, before + 1, timeout=30)
            rig.wait_logged(text)
            check_alive(rig)
        assert rig.logged("max_image_pixels")

        # right layout, wrong size for the calibration: the intrinsics would not fit
        t += 10_000_000
        rig.image.publish(image_msg(cv2.resize(f[1].left, (W * 2, H * 2)), t))
        rig.wait_counter("size_mismatch", 1)
        rig.wait_logged("image is 640x480 but camera_info is for 320x240")

        # all black / all white: zero keypoints, no pose, and they must not replace the reference
        processed, failures = rig.counter("frames_processed"), rig.counter("pose_failures")
        for k, value in enumerate((0, 255), start=1):
            t += 10_000_000
            rig.image.publish(image_msg(np.full((H, W, 3), value, np.uint8), t))
            rig.wait_counter("frames_processed", processed + k)  # one at a time: the node keeps only the newest
        assert rig.counter("pose_failures") == failures + 2
        assert "too few matches (0" in rig.node.stats.last_failure
        poses = rig.out.count("pose")
        rig.image.publish(image_msg(f[1].left, f[1].stamp_ns))
        assert wait_for(lambda: rig.out.count("pose") > poses, timeout=60), "tracking did not resume"
        assert stamp_ns(rig.match_for(f[1].stamp_ns).stamp0) == f[0].stamp_ns  # the reference stayed frame 0

        # a mono8 image flagged big-endian: the flag means nothing for 8-bit data
        processed = rig.counter("frames_processed")
        msg = image_msg(cv2.cvtColor(f[2].left, cv2.COLOR_RGB2GRAY), f[2].stamp_ns)
        msg.is_bigendian = 1
        rig.image.publish(msg)
        rig.wait_counter("frames_processed", processed + 1)
        assert len(rig.match_for(f[2].stamp_ns).scores) > 30

        # mono16 little- and big-endian hold the same image: decoded alike, they match point for point
        gray16 = cv2.cvtColor(f[3].left, cv2.COLOR_RGB2GRAY).astype(np.uint16) << 8
        t = f[3].stamp_ns
        le = raw_msg(W, H, "mono16", W * 2, gray16.astype("<u2").tobytes(), t, bigendian=0)
        be = raw_msg(W, H, "mono16", W * 2, gray16.astype(">u2").tobytes(), t + 1_000_000, bigendian=1)
        processed = rig.counter("frames_processed")
        rig.image.publish(le)
        rig.wait_counter("frames_processed", processed + 1)
        rig.image.publish(be)
        rig.wait_counter("frames_processed", processed + 2)
        m = rig.match_for(t + 1_000_000)
        assert stamp_ns(m.stamp0) == t
        k0, k1 = np.asarray(m.keypoints0).reshape(-1, 2), np.asarray(m.keypoints1).reshape(-1, 2)
        assert len(k0) > 100 and np.median(np.linalg.norm(k0 - k1, axis=1)) < 0.5
        # ... while little-endian bytes flagged big-endian decode to a dark image: harmless, no crash
        wrong = raw_msg(W, H, "mono16", W * 2, gray16.astype("<u2").tobytes(), t + 2_000_000, bigendian=1)
        rig.image.publish(wrong)
        rig.wait_counter("frames_processed", processed + 3)

        # odd size with padded rows (step = 3 * 641 + 5) and its own calibration: processed, in bounds
        seq = make_sequence(n_frames=2, rate_hz=5.0, width=641, height=481, stereo=False, seed=1, speed_mps=1.0,
                            start_ns=t + NS)
        odd = [seq.frame(i) for i in range(2)]
        rig.set_info(odd[0].K, 641, 481)
        rig.wait_logged("camera_info changed")
        processed = rig.counter("frames_processed")
        for fr in odd:
            step = 641 * 3 + 5
            data = np.zeros((481, step), np.uint8)
            data[:, :641 * 3] = fr.left.reshape(481, -1)
            rig.image.publish(raw_msg(641, 481, "rgb8", step, data.tobytes(), fr.stamp_ns))
            rig.wait_counter("frames_processed", processed + 1)
            processed += 1
        assert rig.node.tracker.K[0, 0] == pytest.approx(odd[0].K[0, 0])
        # the size changed: the 320x240 reference was dropped, the second odd frame matched the first
        m = rig.match_for(odd[1].stamp_ns)
        assert stamp_ns(m.stamp0) == odd[0].stamp_ns and (m.width0, m.height0, m.width1, m.height1) == (641, 481) * 2
        assert len(m.scores) > 30

        # large but under the limit (5000 x 3000 = 15 Mpx < 16.8 Mpx): processed (resize_max = 640)
        big = cv2.resize(cv2.cvtColor(f[4].left, cv2.COLOR_RGB2GRAY), (5000, 3000), interpolation=cv2.INTER_LINEAR)
        rig.set_info(default_K(5000, 3000), 5000, 3000)
        rig.image.publish(image_msg(big, odd[1].stamp_ns + NS // 5))
        rig.wait_counter("frames_processed", processed + 1, timeout=120)

        # max_image_pixels is a run-time parameter: lowered, a 320x240 frame is refused; raised again,
        # frames are accepted again (the change is applied even while every frame is refused)
        from rclpy.parameter import Parameter

        rig.set_info(K)
        assert rig.node.set_parameters([Parameter("max_image_pixels", value=65536)])[0].successful
        assert wait_for(lambda: rig.node.p["max_image_pixels"] == 65536, timeout=5)
        before = rig.counter("oversized")
        t = odd[1].stamp_ns + NS
        rig.image.publish(image_msg(f[5].left, t))
        rig.wait_counter("oversized", before + 1)
        assert not rig.node.set_parameters([Parameter("max_image_pixels", value=100)])[0].successful
        assert rig.node.set_parameters([Parameter("max_image_pixels", value=16777216)])[0].successful
        assert wait_for(lambda: rig.node.p["max_image_pixels"] == 16777216, timeout=5)
        processed = rig.counter("frames_processed")
        rig.image.publish(image_msg(f[5].left, t + 1_000_000))
        rig.wait_counter("frames_processed", processed + 1)

        rig.idle()
        check_alive(rig)
        diag = rig.diag_agrees()
        assert int(diag["bad_input"]) == 9 and int(diag["oversized"]) == 2 and int(diag["size_mismatch"]) == 1
        assert int(diag["errors"]) == 0, rig.node.stats.last_error
        check_outputs(rig.out)
    finally:
        rig.stop()


def test_bad_compressed_images(ros_context, frames):
    """transport:=compressed: corrupt, empty, depth and decompression-bomb images are refused."""
    from sensor_msgs.msg import CompressedImage

    def compressed(data: bytes, stamp: int, fmt: str = "jpeg") -> CompressedImage:
        msg = CompressedImage(format=fmt)
        msg.data = data
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, NS)
        return msg

    def jpeg(image: np.ndarray) -> bytes:
        return cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()

    rig = Rig(ros_context, {}, transport="compressed")
    try:
        rig.set_info(frames[0].K)
        good = jpeg(frames[0].left)
        rig.image.publish(compressed(good, frames[0].stamp_ns))
        rig.wait_counter("frames_processed", 1)
        rng = np.random.default_rng(0)
        # a PNG of 7680 x 4320 zeros is 40 kB: the size is read from its header, nothing is decoded
        bomb = cv2.imencode(".png", np.zeros((4320, 7680), np.uint8))[1].tobytes()
        assert len(bomb) < 100_000
        bad = [
            (b"", "bad_input", "compressed image has no data"),
            (rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(), "bad_input", "could not decode 5000 B"),
            (good[:2] + rng.integers(0, 256, 3000, dtype=np.uint8).tobytes(), "bad_input", "could not decode"),
            (good, "bad_input", "compressedDepth images are not supported"),
            (bomb, "oversized", "7680x4320 image"),
        ]
        for i, (data, counter, text) in enumerate(bad):
            before = rig.counter(counter)
            rig.image.publish(compressed(data, frames[0].stamp_ns + i + 1,
                                         "32FC1; compressedDepth" if "Depth" in text else "jpeg"))
            rig.wait_counter(counter, before + 1)
            rig.wait_logged(text)
            check_alive(rig)
        # a truncated JPEG: libjpeg fills the missing rows; an image comes out, the node survives it
        handled = lambda: rig.counter("frames_processed") + rig.counter("bad_input")  # noqa: E731
        before = handled()
        rig.image.publish(compressed(good[: len(good) // 3], frames[0].stamp_ns + 100))
        assert wait_for(lambda: handled() > before, timeout=60)
        poses = rig.out.count("pose")
        processed = rig.counter("frames_processed")
        rig.image.publish(compressed(jpeg(frames[1].left), frames[1].stamp_ns))
        rig.wait_counter("frames_processed", processed + 1)
        rig.image.publish(compressed(jpeg(frames[2].left), frames[2].stamp_ns))
        assert wait_for(lambda: rig.out.count("pose") > poses, timeout=60), rig.node.stats.last_failure
        rig.idle()
        check_alive(rig)
        diag = rig.diag_agrees()
        assert int(diag["oversized"]) == 1 and int(diag["errors"]) == 0
        check_outputs(rig.out)
    finally:
        rig.stop()


# ---------------------------------------------------------------------------------------------- streams
def test_stamp_anomalies(ros_context, frames):
    """Duplicates and out-of-order frames are dropped; a backward jump resets; a long gap keeps
    matching but publishes no velocity over the gap."""
    rig = Rig(ros_context, {})
    try:
        f = frames
        rig.set_info(f[0].K)
        processed = lambda: rig.counter("frames_processed")  # noqa: E731

        def send(frame, stamp: int) -> None:
            n = processed()
            rig.image.publish(image_msg(frame.left, stamp))
            rig.wait_counter("frames_processed", n + 1)

        def send_dropped(frame, stamp: int, text: str) -> None:
            n = rig.counter("out_of_order")
            rig.image.publish(image_msg(frame.left, stamp))
            rig.wait_counter("out_of_order", n + 1)
            rig.wait_logged(text)

        send(f[0], f[0].stamp_ns)
        send(f[1], f[1].stamp_ns)
        send_dropped(f[1], f[1].stamp_ns, "duplicate stamp")                  # same stamp again
        send_dropped(f[2], f[1].stamp_ns - 50_000_000, "50.0 ms back, out of order")  # older than the last one
        send(f[2], f[2].stamp_ns)
        assert stamp_ns(rig.match_for(f[2].stamp_ns).stamp0) == f[1].stamp_ns  # the dropped ones left no trace

        # a jump back by more than 1 s (bag loop): reset with a warning, then tracking works again
        back = f[2].stamp_ns - 5 * NS
        send(f[3], back)
        rig.wait_counter("resets", 1)
        rig.wait_logged("stamp jumped back 5.0 s")
        poses = rig.out.count("pose")
        send(f[4], back + 200_000_000)
        assert stamp_ns(rig.match_for(back + 200_000_000).stamp0) == back
        assert wait_for(lambda: rig.out.count("pose") > poses, timeout=10), rig.node.stats.last_failure
        # no reference right after the reset: nothing was matched for the frame at `back`
        assert not any(stamp_ns(m.header.stamp) == back for m in rig.out.get("matches"))

        # 30 s forward gap: still matched against the reference (the geometry does not age), pose
        # published, but the odometry twist over the gap is unknown (zero, variance 1e6)
        gap_stamp = back + 200_000_000 + 30 * NS
        odoms = rig.out.count("odom")
        send(f[5], gap_stamp)
        rig.wait_counter("gaps", 1)
        rig.wait_logged("30.0 s since the last frame")
        assert stamp_ns(rig.match_for(gap_stamp).stamp0) == back + 200_000_000
        assert wait_for(lambda: rig.out.count("odom") > odoms, timeout=10), rig.node.stats.last_failure
        odom = rig.out.get("odom")[-1]
        assert stamp_ns(odom.header.stamp) == gap_stamp
        assert np.allclose(np.diag(np.asarray(odom.twist.covariance).reshape(6, 6)), 1e6)
        assert odom.twist.twist.linear.x == odom.twist.twist.linear.y == odom.twist.twist.linear.z == 0.0
        # the next normal step has a velocity again
        odoms = rig.out.count("odom")
        send(f[6], gap_stamp + 200_000_000)
        assert wait_for(lambda: rig.out.count("odom") > odoms, timeout=10)
        twist_cov = np.diag(np.asarray(rig.out.get("odom")[-1].twist.covariance).reshape(6, 6))
        assert np.all(twist_cov[3:] < 1.0)  # the angular rate is known again

        rig.idle()
        check_alive(rig)
        diag = rig.diag_agrees()
        assert (int(diag["out_of_order"]), int(diag["resets"]), int(diag["gaps"])) == (2, 1, 1)
        check_outputs(rig.out)
    finally:
        rig.stop()


def test_camera_info_missing_bad_and_changing(ros_context, frames):
    rig = Rig(ros_context, {})
    try:
        f = frames
        # no camera_info: frames are skipped and counted, diagnostics warn
        for i in range(3):
            rig.image.publish(image_msg(f[i].left, f[i].stamp_ns))
            rig.wait_counter("no_camera_info", i + 1)
        rig.wait_logged("no camera_info yet")
        assert wait_for(lambda: rig.out.latest_diagnostics().get("level") == 1
                        and "camera_info" in rig.out.latest_diagnostics()["message"], timeout=10)
        assert rig.counter("frames_processed") == 0 and rig.out.count("matches") == 0

        # uncalibrated (zero focal length) and non-finite camera_info: ignored, counted, warned
        zero = f[0].K.copy()
        zero[0, 0] = zero[1, 1] = 0.0
        rig.send_info(zero)
        rig.wait_counter("bad_camera_info", 1)
        rig.wait_logged("zero/negative focal length")
        nan = f[0].K.copy()
        nan[0, 2] = np.nan
        rig.send_info(nan)
        rig.wait_counter("bad_camera_info", 2)
        rig.wait_logged("non-finite")
        assert "left" not in rig.node.camera

        # valid: processing starts; the level goes back to OK
        rig.set_info(f[0].K)
        rig.image.publish(image_msg(f[3].left, f[3].stamp_ns))
        rig.wait_counter("frames_processed", 1)
        rig.image.publish(image_msg(f[4].left, f[4].stamp_ns))
        rig.wait_counter("frames_processed", 2)
        assert wait_for(lambda: rig.out.latest_diagnostics().get("level") == 0, timeout=10), \
            rig.out.latest_diagnostics().get("message")

        # a bad one after a good one keeps the good one
        rig.send_info(zero)
        rig.wait_counter("bad_camera_info", 3)
        rig.wait_logged("(keeping the previous one)")
        assert np.allclose(rig.node.camera["left"].K, f[0].K)

        # changed calibration: warned, and the next frame uses the new K
        K2 = f[0].K.copy()
        K2[0, 0] *= 1.05
        K2[1, 1] *= 1.05
        rig.set_info(K2)
        rig.wait_logged("left camera_info changed")
        rig.image.publish(image_msg(f[5].left, f[5].stamp_ns))
        rig.wait_counter("frames_processed", 3)
        assert np.allclose(rig.node.tracker.K, K2)
        rig.idle()
        check_alive(rig)
        diag = rig.diag_agrees()
        assert int(diag["no_camera_info"]) == 3 and int(diag["bad_camera_info"]) == 3
        check_outputs(rig.out)
    finally:
        rig.stop()


def test_stereo_pairs_that_never_form(ros_context):
    """Left/right stamps that never match, or sizes that differ: no pair reaches the tracker, the
    sync drop counters grow within their bounds, diagnostics warn, and a good pair still works."""
    seq = make_sequence(n_frames=3, rate_hz=10.0, width=W, height=H, stereo=True, trajectory="forward", seed=2,
                        baseline_m=0.2, speed_mps=1.0)
    fr = [seq.frame(i) for i in range(3)]
    rig = Rig(ros_context, {"sync_slop": 0.0}, mode="stereo")
    try:
        rig.send_info(fr[0].K, side="left")
        rig.send_info(fr[0].K, side="right", baseline_m=0.2)
        assert wait_for(lambda: {"left", "right"} <= set(rig.node.camera), timeout=10)
        sync = rig.node.sync
        longest = [0]
        sampling = threading.Event()

        def sample() -> None:  # the synchroniser's queues never exceed their bound
            while not sampling.is_set():
                longest[0] = max(longest[0], *(len(s) for s in sync._stamps))
                time.sleep(0.001)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t = fr[0].stamp_ns
        stalled = lambda: "no frame was processed" in rig.out.latest_diagnostics().get("message", "")  # noqa: E731
        n, deadline = 0, time.monotonic() + 30
        # right is always 1 ms late: exact sync never pairs them. Input keeps flowing at 10 Hz until
        # the diagnostics report that nothing is processed (after 5 s without output).
        while (not stalled() or n <= 2 * sync.queue_size + 5) and time.monotonic() < deadline:
            rig.left.publish(image_msg(fr[0].left, t + n * 100_000_000))
            rig.right.publish(image_msg(fr[0].right, t + n * 100_000_000 + 1_000_000, frame_id="right_optical"))
            n += 1
            time.sleep(0.1)
        assert stalled(), rig.out.latest_diagnostics()
        assert wait_for(lambda: rig.counter("frames_in") == n, timeout=20)
        sampling.set()
        sampler.join()
        assert n > 2 * sync.queue_size
        assert sync.emitted == 0 and rig.counter("frames_processed") == 0
        assert wait_for(lambda: sync.dropped >= 2 * (n - sync.queue_size), timeout=5)
        assert longest[0] <= sync.queue_size
        # diagnostics come at 1 Hz: wait for a report that has seen every dropped half
        assert wait_for(lambda: int(rig.out.latest_diagnostics().get("sync_dropped", 0))
                        >= 2 * (n - sync.queue_size), timeout=5)
        diag = rig.out.latest_diagnostics()
        assert diag["level"] == 1
        assert int(diag["sync_pairs"]) == 0
        # and why, in the diagnostics and in the log: the offset of the two cameras' stamps and the slop
        assert "left and right stamps are +1.0 ms apart (right - left), sync_slop 0 ms" in diag["message"], \
            diag["message"]
        rig.wait_logged("set sync_slop above that offset")

        # same stamps, different sizes: paired, then refused
        t2 = t + n * 100_000_000
        rig.left.publish(image_msg(fr[0].left, t2))
        rig.right.publish(image_msg(cv2.resize(fr[0].right, (W // 2, H // 2)), t2, frame_id="right_optical"))
        rig.wait_counter("bad_input", 1)
        rig.wait_logged("skipping stereo pair: left 320x240 and right 160x120 differ")
        # and good pairs still work
        for i, f in enumerate(fr):
            stamp = t2 + (i + 1) * 100_000_000
            rig.left.publish(image_msg(f.left, stamp))
            rig.right.publish(image_msg(f.right, stamp, frame_id="right_optical"))
            rig.wait_counter("frames_processed", i + 1)
        assert wait_for(lambda: rig.out.count("pose") >= 1, timeout=10), rig.node.stats.last_failure
        check_alive(rig)
        assert int(rig.diag_agrees()["errors"]) == 0
        check_outputs(rig.out)
    finally:
        rig.stop()


def test_queues_stay_bounded_under_a_burst(ros_context, frames):
    """A burst far faster than the matcher: the frame slot never holds more than queue_size,
    the excess is dropped and counted, and every frame is accounted for."""
    rig = Rig(ros_context, {"queue_size": 3, "qos_depth": 100})
    try:
        rig.set_info(frames[0].K)
        longest = [0]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                longest[0] = max(longest[0], len(rig.node.slot))
                time.sleep(0.0005)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        from sensor_msgs.msg import Image

        deep = rig.io.create_publisher(Image, "image", 100)  # keeps the whole burst until delivered
        wait_for_subscribers(deep)
        n = 80
        t = frames[0].stamp_ns
        msgs = [image_msg(frames[i % len(frames)].left, t + i * 10_000_000) for i in range(n)]
        for m in msgs:
            deep.publish(m)
        assert wait_for(lambda: rig.counter("frames_in") == n, timeout=30), rig.counter("frames_in")
        rig.idle(timeout=120)
        sampling.set()
        sampler.join()
        c = rig.node.stats.counters
        assert longest[0] <= 3, longest[0]
        assert c["frames_dropped"] > 0 and c["frames_processed"] + c["frames_dropped"] == n, c
        assert rig.node.slot.dropped == c["frames_dropped"] and len(rig.node.images) <= 2
        check_alive(rig)
        assert int(rig.diag_agrees()["frames_dropped"]) == c["frames_dropped"]
        check_outputs(rig.out)
    finally:
        rig.stop()


# ---------------------------------------------------------------------------------------------- faults
def test_faults_out_of_memory_and_callback_errors(ros_context, frames, monkeypatch):
    """Injected faults: CUDA OOM in the matcher (frame skipped, keypoint budget halved, down to
    64), an exception inside an executor callback (counted, the node keeps spinning)."""
    import torch

    rig = Rig(ros_context, {"max_keypoints": 512, "min_keypoints": 256})
    try:
        f = frames
        rig.set_info(f[0].K)
        rig.image.publish(image_msg(f[0].left, f[0].stamp_ns))
        rig.wait_counter("frames_processed", 1)
        # the node wraps its Matcher (pipeline.PrefetchingMatcher): inject into the Matcher itself, or the
        # wrapper's match_features would call the injected function, which calls the wrapper ...
        inner = getattr(rig.node.matcher, "inner", rig.node.matcher)
        real = inner.match_features
        oom_left = [4]

        def flaky(*args, **kw):
            if oom_left[0] > 0:
                oom_left[0] -= 1
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
            return real(*args, **kw)
        monkeypatch.setattr(inner, "match_features", flaky)
        # 512 -> 256 -> 128 -> 64 -> (64: cannot shrink further). The worker counts the error before it
        # shrinks the budget and logs: wait for the log line of each step, not for the counter.
        steps = ["reducing max_keypoints 512 -> 256", "reducing max_keypoints 256 -> 128",
                 "reducing max_keypoints 128 -> 64", "out of memory at the smallest keypoint budget (64)"]
        for i, text in enumerate(steps, start=1):
            rig.image.publish(image_msg(f[i].left, f[i].stamp_ns))
            rig.wait_counter("errors", i)
            rig.wait_logged(text, level=40 if "smallest" in text else 30)
        assert wait_for(lambda: rig.node.matcher.max_keypoints == 64, timeout=5), rig.node.matcher.max_keypoints
        assert rig.node.p["min_keypoints"] <= rig.node.p["max_keypoints"] == 64
        assert oom_left[0] == 0 and rig.counter("errors") == 4
        assert wait_for(lambda: rig.out.latest_diagnostics().get("level") == 2, timeout=5)  # ERROR while recent
        check_alive(rig)
        processed = rig.counter("frames_processed")
        rig.image.publish(image_msg(f[5].left, f[5].stamp_ns))  # the memory is back: works again
        rig.wait_counter("frames_processed", processed + 1)
        # DDS delivery to the test's subscriber may trail the node's counter
        assert wait_for(lambda: any(m.num_keypoints1 <= 64 for m in rig.out.get("matches")), timeout=10)

        # a non-finite value out of the matcher is never published: the frame fails and is counted
        def poisoned(*args, **kw):
            result = real(*args, **kw)
            result.keypoints1 = result.keypoints1.copy()
            result.keypoints1[result.matches[:, 1]] = np.nan
            return result
        monkeypatch.setattr(inner, "match_features", poisoned)
        errors = rig.counter("errors")
        poisoned_stamp = f[5].stamp_ns + 50_000_000
        rig.image.publish(image_msg(f[6].left, poisoned_stamp))
        rig.wait_counter("errors", errors + 1)
        rig.wait_logged("non-finite", level=40)
        monkeypatch.setattr(inner, "match_features", real)

        # an unexpected exception in a subscription callback: counted, logged, the node keeps going
        from mambaglue_ros.ros import convert as C

        def broken(msg, **kwargs):
            raise RuntimeError("decoder exploded (injected)")
        monkeypatch.setattr(C, "image_to_numpy", broken)
        errors = rig.counter("errors")
        rig.image.publish(image_msg(f[6].left, f[6].stamp_ns))
        rig.wait_counter("errors", errors + 1)
        rig.wait_logged("callback failed: RuntimeError: decoder exploded", level=40)
        monkeypatch.undo()
        processed = rig.counter("frames_processed")
        rig.image.publish(image_msg(f[7].left, f[7].stamp_ns))
        rig.wait_counter("frames_processed", processed + 1)
        # one reliable publisher delivers in order: once frame 7's matches are here, the poisoned
        # frame's would have been too
        rig.match_for(f[7].stamp_ns)
        assert not [m for m in rig.out.get("matches") if stamp_ns(m.header.stamp) == poisoned_stamp]

        # an unexpected exception in a service callback: the caller still gets an answer (success false, the
        # error), and the node keeps going (rclpy sends what the callback returns: a None stops the executor)
        from std_srvs.srv import Trigger

        def reset_broken(*args, **kwargs):
            raise RuntimeError("reset exploded (injected)")
        monkeypatch.setattr(rig.node, "_request_reset", reset_broken)
        client = rig.io.create_client(Trigger, "/mambaglue_matcher/reset")
        assert client.wait_for_service(timeout_sec=15)
        errors = rig.counter("errors")
        future = client.call_async(Trigger.Request())
        assert wait_for(future.done, timeout=30), "the reset service did not answer"
        answer = future.result()
        assert not answer.success and "RuntimeError: reset exploded" in answer.message, answer
        rig.wait_counter("errors", errors + 1)
        rig.wait_logged("callback failed: RuntimeError: reset exploded", level=40)
        monkeypatch.undo()
        processed = rig.counter("frames_processed")
        rig.image.publish(image_msg(f[7].left, f[7].stamp_ns + 100_000_000))
        rig.wait_counter("frames_processed", processed + 1)
        check_alive(rig)
        check_outputs(rig.out)
    finally:
        rig.stop()


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA (a real out-of-memory)")
def test_real_cuda_out_of_memory_is_survived(ros_context, frames):
    """On a GPU: cap the allocator so the matcher really runs out of memory; the frame is skipped,
    the keypoint budget halves, and with the cap lifted the node works again."""
    import torch

    rig = Rig(ros_context, {"device": "cuda", "max_keypoints": 8192, "min_keypoints": 64, "features": "aliked"})
    try:
        f = frames
        rig.set_info(f[0].K)
        rig.image.publish(image_msg(f[0].left, f[0].stamp_ns))
        rig.wait_counter("frames_processed", 1)
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(torch.cuda.memory_allocated() / torch.cuda.get_device_properties(0)
                                                   .total_memory + 1e-6)
        try:
            rig.image.publish(image_msg(f[1].left, f[1].stamp_ns))
            rig.wait_counter("errors", 1)
            assert "OutOfMemoryError" in rig.node.stats.last_error
            assert wait_for(lambda: rig.node.matcher.max_keypoints == 4096, timeout=10)
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0)
        check_alive(rig)
        processed = rig.counter("frames_processed")
        rig.image.publish(image_msg(f[2].left, f[2].stamp_ns))
        rig.wait_counter("frames_processed", processed + 1)
        check_outputs(rig.out)
    finally:
        rig.stop()


# ---------------------------------------------------------------------------------------------- files and config
def _node_command(*ros_args: str) -> list[str]:
    from test_node_process import matcher_node_command

    return matcher_node_command(*ros_args)


def _alone_env() -> dict[str, str]:
    from test_node_process import alone_env

    return alone_env()


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    import torch

    from mambaglue_ros import weights as Wt
    from mambaglue_ros.matcher import build_network

    d = tmp_path_factory.mktemp("weights")
    net, _ = build_network("aliked", "random")
    Wt.save_checkpoint(d / "aliked_mambaglue.pt", net, "aliked", net.conf)
    (d / "truncated.pt").write_bytes((d / "aliked_mambaglue.pt").read_bytes()[:5000])
    (d / "empty.pt").write_bytes(b"")
    torch.save({"conv.weight": torch.zeros(3)}, d / "not_a_checkpoint.pt")
    marker = d / "payload_ran"
    (d / "evil.pt").write_bytes(_evil_pickle(marker))
    return d, marker


def _evil_pickle(marker) -> bytes:
    """A torch-style file whose unpickling would create ``marker`` (os.mkdir) if code were allowed."""
    import io

    import torch

    class Exploit:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))
    buffer = io.BytesIO()
    torch.save({"format": "mambaglue_ros.checkpoint", "state_dict": Exploit()}, buffer, pickle_protocol=2)
    return buffer.getvalue()


def test_bad_weights_and_configuration_stop_the_process_with_one_clear_error(bad_files):
    """Bad files and values at start: exit code 1, one ``[matcher_node] error:`` naming the file or
    parameter, no traceback, and a crafted pickle's payload never runs."""
    d, marker = bad_files
    cases = [  # (ros args, texts the error must contain)
        (["-p", "features:=xfeat", "-p", f"weights:={d / 'truncated.pt'}"], ["truncated.pt", "truncated"]),
        (["-p", "features:=xfeat", "-p", f"weights:={d / 'empty.pt'}"], ["empty.pt", "truncated or not a PyTorch"]),
        (["-p", "features:=xfeat", "-p", f"weights:={d / 'aliked_mambaglue.pt'}"],
         ["aliked_mambaglue.pt", "trained for front end 'aliked', not 'xfeat'"]),
        (["-p", "features:=xfeat", "-p", f"weights:={d / 'not_a_checkpoint.pt'}"],
         ["not_a_checkpoint.pt", "is not a mambaglue_ros checkpoint"]),
        (["-p", "features:=xfeat", "-p", f"weights:={d / 'evil.pt'}"],
         ["evil.pt", "refused to load", "may contain code"]),
        (["-p", "features:=aliked", "-p", f"extractor_weights:={d / 'aliked_mambaglue.pt'}"],
         ["aliked_mambaglue.pt", "does not fit the ALIKED network"]),
        # a URL is only ever loaded against a known SHA-256 (none can be given to the node): refused, not fetched
        (["-p", "features:=xfeat", "-p", "weights:=https://127.0.0.1:9/mambaglue_xfeat.pt"],
         ["needs its SHA-256", "https://127.0.0.1:9/mambaglue_xfeat.pt"]),
        (["-p", "features:=sift"], ["features must be one of"]),
        (["-p", "mode:=triple", "-p", "transport:=pigeon"], ["mode must be one of", "transport must be one of"]),
        (["-p", "alpha_min:=0.99"], ["need alpha_min <= alpha <= alpha_max"]),
        (["-p", "alpha:=3.0"], ["alpha out of range"]),
        (["-p", "alpha:=1"], ["'alpha'", "INTEGER", "DOUBLE"]),
        # rcl silently keeps the params-file value for these; the node notices
        (["-p", "max_keypoints:=lots"], ["max_keypoints:=lots was not applied", "must be an integer"]),
        (["-p", "publish_tf:=maybe"], ["publish_tf:=maybe was not applied", "true or false"]),
        (["-p", "max_keypoints:=99999"], ["max_keypoints out of range"]),
        (["-p", "device:=tpu"], ["device must be auto, cpu, cuda"]),
        (["-p", "weights:="], ["Couldn't parse parameter override rule: '-p weights:='"]),  # rcl refuses the rule
        (["-p", "ransac_px:=1e-1", "-p", "max_keypoints:=1_000"], ["max_keypoints:=1_000 was not applied"]),
    ]
    failures = []
    for start in range(0, len(cases), 5):  # a few at a time: each one imports torch
        # discovery off: five processes starting and failing together in one domain crashed Fast DDS (alone_env)
        batch = [(subprocess.Popen(_node_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=_alone_env()), args, texts) for args, texts in cases[start:start + 5]]
        failures += [f for proc, args, texts in batch if (f := _startup_failure(proc, args, texts))]
    assert not failures, "\n".join(failures)
    assert not marker.exists(), "the pickle payload ran"
    # positive control: the same file unpickled without weights_only does run the payload
    import torch

    torch.load(d / "evil.pt", weights_only=False)
    assert marker.is_dir()


def test_unapplied_parameter_rules_are_found():
    """The check behind the "was not applied" errors (rcl's silent drops), without starting a node."""
    from mambaglue_ros.ros import params as P
    from mambaglue_ros.ros.params import unapplied_parameter_rules

    values = {**P.defaults(), "ransac_px": 0.1, "max_keypoints": 256, "publish_tf": True}
    ok = ["prog", "--ros-args", "--params-file", "f.yaml", "-p", "ransac_px:=1e-1", "--param", "max_keypoints:=0x100",
          "-p", "publish_tf:=on", "-p", "other_node:max_keypoints:=lots", "-p", "mambaglue_matcher:ransac_px:=.1",
          "-p", "camera_to_base:=[0.0, 0.0, 0.0, -0.5, 0.5, -0.5, 0.5]", "--", "-p", "max_keypoints:=ignored"]
    assert unapplied_parameter_rules(ok, values, "mambaglue_matcher") == []
    bad = ["prog", "--ros-args", "-p", "max_keypoints:=lots", "-p", "/**:ransac_px:=fast", "-p", "publish_tf:=maybe"]
    reasons = unapplied_parameter_rules(bad, values, "mambaglue_matcher")
    assert len(reasons) == 3 and "max_keypoints must be an integer, got 'lots'" in reasons[0]
    assert "ransac_px must be a floating-point number" in reasons[1]
    assert "publish_tf must be true or false" in reasons[2]


def _startup_failure(proc: subprocess.Popen, args: list[str], texts: list[str]) -> str | None:
    try:
        stdout, stderr = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        # Where is it? The node prints every thread's stack on SIGUSR1 (runtime.dump_stacks_on_signals); the
        # dump ends in stderr, which the message carries (once, in CI, such a process was never explained).
        proc.send_signal(signal.SIGUSR1)
        try:
            stdout, stderr = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        return f"{args}: still running after 180 s; its stderr (stacks on SIGUSR1): {stderr[-6000:]!r}"
    errors = [line for line in stderr.splitlines() if line.startswith("[matcher_node] error:")]
    if proc.returncode != 1 or len(errors) != 1 or "Traceback" in stderr + stdout:
        return f"{args}: rc={proc.returncode} stderr={stderr!r}"
    if "Timeout (" in stderr:  # runtime.bound_teardown fired: the teardown hung (its stacks are in stderr)
        return f"{args}: the teardown hung until the watchdog ended it: {stderr[-6000:]!r}"
    if not all(t in stderr for t in texts):
        return f"{args}: {texts} not in {stderr!r}"
    return None
