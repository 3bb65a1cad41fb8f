"""Tests for mambaglue_ros.baselines.OrbMatcher and mambaglue_ros.tracking on rendered images.

Images are rendered from textured planes with a known camera trajectory, so the ground-truth
relative poses are exact. The tracker scenes use three planes (back wall, tilted panel, floor)
ray-cast per pixel rather than a single warped plane: with one plane the essential matrix has a
two-fold ambiguity, which would make monocular ground truth comparisons meaningless. The
single-plane ``cv2.warpPerspective`` rendering is used for the homography test.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pytest
import torch

from mambaglue_ros.baselines import OrbMatcher
from mambaglue_ros.geometry import (
    estimate_homography,
    invert,
    make_transform,
    rotation_angle_deg,
    so3_exp,
    translation_direction_error_deg,
)
from mambaglue_ros.tracking import (MonoTracker, StereoTracker, image_sharpness, median_parallax_px,
                                    sharpness_mismatch, validate_tracking_config)
from mambaglue_ros.types import Features

WIDTH, HEIGHT = 512, 384
K = np.array([[400.0, 0.0, 256.0], [0.0, 400.0, 192.0], [0.0, 0.0, 1.0]])
T_LEFT_RIGHT = make_transform(np.eye(3), [0.3, 0.0, 0.0])
# Per-frame motion of the camera (in its own previous frame): sideways/forward with a small turn.
STEP = make_transform(so3_exp(np.radians([0.3, -1.0, 0.2])), [0.25, 0.0, 0.1])
NUM_FRAMES = 7
DT_NS = 100_000_000


def make_texture(h: int, w: int, seed: int) -> np.ndarray:
    """Seeded multi-scale blurred noise with sharp-edged blobs (ORB needs corners)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w), np.float32)
    for sigma in (1.5, 5.0, 15.0):
        noise = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), sigma)
        img += noise / (noise.std() + 1e-6)
    img = (img - img.min()) / (img.max() - img.min()) * 255.0
    for _ in range(h * w // 1500):
        x, y, s = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(4, 20))
        gray = float(rng.integers(0, 256))
        if rng.random() < 0.5:
            cv2.rectangle(img, (x, y), (x + s, y + int(s * rng.uniform(0.5, 2.0))), gray, -1)
        else:
            cv2.circle(img, (x, y), s // 2, gray, -1)
    return np.clip(img, 0, 255).astype(np.uint8)


@dataclass
class Plane:
    origin: np.ndarray   # world position of texture pixel (0, 0) [m]
    u: np.ndarray        # unit world direction of texture columns
    v: np.ndarray        # unit world direction of texture rows
    texture: np.ndarray
    texel: float         # metres per texture pixel


def make_scene(seed: int = 0) -> list[Plane]:
    """World = first camera's optical frame: a wall at 7 m, a tilted panel at ~3 m, a floor."""
    return [
        Plane(np.array([-7.0, -5.0, 7.0]), np.array([1.0, 0, 0]), np.array([0, 1.0, 0]),
              make_texture(1000, 1400, seed), 0.01),
        Plane(np.array([-2.5, -1.5, 3.0]), np.array([0.96, 0, 0.28]), np.array([0, 1.0, 0]),
              make_texture(400, 450, seed + 1), 0.005),
        Plane(np.array([-7.0, 1.2, 0.5]), np.array([1.0, 0, 0]), np.array([0, 0, 1.0]),
              make_texture(800, 1400, seed + 2), 0.01),
    ]


def render(T_world_cam: np.ndarray, planes: list[Plane], supersample: int = 2) -> np.ndarray:
    """Ray-cast each pixel of a camera at pose T_world_cam onto the nearest plane.

    Rendered at ``supersample`` x the resolution and area-downsampled: without it, minified
    texture aliases and keypoints jitter between views, which is not what we want to measure.
    """
    s = supersample
    w, h = WIDTH * s, HEIGHT * s
    K_s = K.copy()
    K_s[:2] *= s
    K_s[:2, 2] += (s - 1) / 2.0  # pixel centres: sub-pixel (0, 0) is at -(s-1)/2s of pixel (0, 0)
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    rays = np.stack([xs, ys, np.ones_like(xs)], -1) @ np.linalg.inv(K_s).T @ T_world_cam[:3, :3].T
    center = T_world_cam[:3, 3]
    nearest = np.full((h, w), np.inf)
    out = np.zeros((h, w), np.uint8)
    for p in planes:
        n = np.cross(p.u, p.v)
        with np.errstate(divide="ignore", invalid="ignore"):
            depth = ((p.origin - center) @ n) / (rays @ n)
            hit = center + depth[..., None] * rays - p.origin
        a, b = hit @ p.u / p.texel, hit @ p.v / p.texel
        th, tw = p.texture.shape
        ok = (depth > 0) & (depth < nearest) & (a >= 0) & (a < tw - 1) & (b >= 0) & (b < th - 1)
        sample = cv2.remap(p.texture, np.nan_to_num(a).astype(np.float32), np.nan_to_num(b).astype(np.float32),
                           cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        out[ok] = sample[ok]
        nearest[ok] = depth[ok]
    return cv2.resize(out, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA) if s > 1 else out


@pytest.fixture(scope="module")
def sequence():
    """Ground-truth poses T_world_cam (left camera) and rendered left/right images."""
    planes = make_scene(0)
    poses = [np.eye(4)]
    for _ in range(NUM_FRAMES - 1):
        poses.append(poses[-1] @ STEP)
    left = [render(P, planes) for P in poses]
    right = [render(P @ T_LEFT_RIGHT, planes) for P in poses]
    return poses, left, right


def truth(poses: list[np.ndarray], ref: int, cur: int) -> np.ndarray:
    """Ground-truth T_ref_cur."""
    return invert(poses[ref]) @ poses[cur]


def frame_index(stamp_ns: int) -> int:
    return int(stamp_ns // DT_NS)


# ------------------------------------------------------------------------------------- ORB baseline
def test_orb_features_follow_the_features_contract(sequence):
    _, left, _ = sequence
    orb = OrbMatcher(max_keypoints=500)
    feats = orb.extract(left[0])
    assert 400 <= len(feats) <= 500
    assert feats.image_size == (WIDTH, HEIGHT)
    assert feats.keypoints.dtype == torch.float32 and feats.keypoints.shape == (len(feats), 2)
    assert feats.descriptors.shape == (len(feats), 256)
    np.testing.assert_allclose(feats.descriptors.norm(dim=1).numpy(), 1.0, rtol=1e-6)
    assert torch.all(feats.scores[:-1] >= feats.scores[1:])  # sorted descending
    # Hamming distance is recoverable from the float descriptors: 128 * (1 - d0 . d1).
    d = feats.descriptors
    packed = np.packbits(d.numpy() > 0, axis=1)
    hamming_cv = cv2.norm(packed[0], packed[1], cv2.NORM_HAMMING)
    assert 128.0 * (1.0 - float(d[0] @ d[1])) == pytest.approx(hamming_cv, abs=1e-3)
    # RGB input gives the same keypoints as its gray version.
    rgb = np.repeat(left[0][:, :, None], 3, axis=2)
    assert torch.equal(orb.extract(rgb).keypoints, feats.keypoints)


def test_orb_matches_a_shifted_image_exactly():
    img = make_texture(HEIGHT, WIDTH, seed=5)
    shifted = np.zeros_like(img)
    shifted[3:, 7:] = img[:-3, :-7]      # content moves by (+7, +3) px
    result = OrbMatcher(max_keypoints=800).match(img, shifted)
    assert len(result) > 300
    assert result.stop_layer == 0 and result.num_layers == 0
    assert set(result.timings_ms) == {"extract", "match", "total"}
    flow = result.points1 - result.points0
    error = np.linalg.norm(flow - [7.0, 3.0], axis=1)
    # Keypoints of coarser ORB pyramid levels are quantised to that level's pixel (1.2^level px).
    assert np.median(error) < 1.0
    assert np.mean(error < 3.0) > 0.9 and np.mean(error < 5.0) > 0.98
    assert np.all((result.scores >= 0.5) & (result.scores <= 1.0))  # max_hamming 64 -> score >= 0.5
    assert np.median(result.scores) > 0.8  # observed 0.90: mostly near-identical descriptors


@pytest.mark.parametrize("shape", [(0, 0), (5, 5), (100, 120), (100, 120, 3)])
def test_orb_empty_and_black_images(shape):
    orb = OrbMatcher()
    black = np.zeros(shape, np.uint8)
    feats = orb.extract(black)
    assert len(feats) == 0
    assert feats.image_size == (shape[1], shape[0])
    assert feats.descriptors.shape == (0, 256)
    textured = orb.extract(make_texture(100, 120, seed=6))
    for f0, f1 in ((feats, textured), (textured, feats), (feats, feats)):
        result = orb.match_features(f0, f1)
        assert result.matches.shape == (0, 2) and result.scores.shape == (0,)
        assert result.points0.shape == (0, 2)
    assert len(orb.match(black, black)) == 0
    assert feats.front_end == textured.front_end == "orb"
    learned = Features(textured.keypoints, textured.descriptors, textured.scores, textured.image_size,
                       front_end="xfeat")  # (the same numbers, tagged as another front end's)
    with pytest.raises(ValueError, match="come from the 'xfeat' front end, but OrbMatcher takes 'orb' features"):
        orb.match_features(textured, learned)


def test_orb_image_scale_keeps_keypoints_in_input_pixels(sequence):
    image = sequence[1][0]
    orb = OrbMatcher(max_keypoints=500)
    full = orb.extract(image)
    orb.image_scale = 0.5
    half = orb.extract(image)
    h, w = image.shape[:2]
    assert half.image_size == full.image_size == (w, h) and len(half) > 50
    k = half.keypoints.numpy()
    assert (k >= -0.5).all() and (k[:, 0] <= w - 0.5).all() and (k[:, 1] <= h - 0.5).all()
    assert k[:, 0].max() > 0.7 * w and k[:, 1].max() > 0.7 * h  # spread over the input, not its top-left quarter
    # the two resolutions still match each other, on the same image points
    res = orb.match_features(full, half)
    a, b = full.keypoints.numpy()[res.matches[:, 0]], half.keypoints.numpy()[res.matches[:, 1]]
    assert len(res) > 30 and np.median(np.linalg.norm(a - b, axis=1)) < 2.0


def test_orb_settings():
    orb = OrbMatcher(max_keypoints=1024)
    orb.max_keypoints = 100
    assert len(orb.extract(make_texture(HEIGHT, WIDTH, seed=7))) <= 100
    orb.alpha = 0.9
    assert orb.alpha == 0.9
    orb.alpha = None
    with pytest.raises(ValueError):
        orb.alpha = 1.5
    with pytest.raises(ValueError):
        orb.max_keypoints = 0
    assert orb.features == "orb"


def test_homography_of_a_warped_plane():
    """One plane seen from two poses: image 1 = warpPerspective(image 0, H_10), H estimated back."""
    image0 = make_texture(HEIGHT, WIDTH, seed=8)
    T_01 = make_transform(so3_exp(np.radians([2.0, -3.0, 4.0])), [0.3, -0.1, 0.2])
    n, d = np.array([0.0, 0.0, 1.0]), 5.0           # plane z = 5 m in camera 0
    R_01, t_01 = T_01[:3, :3], T_01[:3, 3]
    # X1 = R_01^T (X0 - t_01) and n^T X0 = d  =>  X1 = R_01^T (I - t_01 n^T / d) X0.
    H_10 = K @ R_01.T @ (np.eye(3) - np.outer(t_01, n) / d) @ np.linalg.inv(K)
    image1 = cv2.warpPerspective(image0, H_10, (WIDTH, HEIGHT))
    result = OrbMatcher().match(image0, image1)
    H, inliers = estimate_homography(result.points0, result.points1, ransac_px=2.0)
    assert H is not None and inliers.mean() > 0.8
    corners = np.array([[100, 100, 1], [400, 100, 1], [400, 300, 1], [100, 300, 1]], float)
    a, b = corners @ H_10.T, corners @ H.T
    assert np.linalg.norm(a[:, :2] / a[:, 2:] - b[:, :2] / b[:, 2:], axis=1).max() < 2.0


# ------------------------------------------------------------------------------------- mono tracker
def test_mono_tracker_previous_policy(sequence):
    poses, left, _ = sequence
    tracker = MonoTracker(OrbMatcher(), K, {"policy": "previous"})
    first = tracker.process(left[0], 0)
    assert first.pose is None and first.reason == "no reference frame yet" and first.is_keyframe
    rot_err, dir_err, previous = [], [], first.T_odom_cam
    for i in range(1, NUM_FRAMES):
        r = tracker.process(left[i], i * DT_NS)
        assert r.pose is not None, r.reason
        assert frame_index(r.reference_stamp_ns) == i - 1 and r.is_keyframe
        T = truth(poses, i - 1, i)
        rot_err.append(rotation_angle_deg(r.pose.R, T[:3, :3]))
        dir_err.append(translation_direction_error_deg(r.pose.t, T[:3, 3]))
        assert r.num_inliers > 300 and r.inlier_ratio > 0.8
        assert set(r.timings_ms) >= {"extract", "match", "pose", "total"}
        # Mono: every step has unit length in the odometry frame.
        assert np.linalg.norm(r.T_odom_cam[:3, 3] - previous[:3, 3]) == pytest.approx(1.0, rel=1e-9)
        previous = r.T_odom_cam
    assert max(rot_err) < 0.5, rot_err
    assert max(dir_err) < 3.0, dir_err
    # Accumulated rotation, and the direction of travel (all steps point the same way).
    final = tracker.T_odom_cam
    assert rotation_angle_deg(final[:3, :3], poses[-1][:3, :3]) < 1.0
    assert translation_direction_error_deg(final[:3, 3], poses[-1][:3, 3]) < 3.0


def test_mono_tracker_keyframe_policy(sequence):
    poses, left, _ = sequence
    threshold = 12.0
    tracker = MonoTracker(OrbMatcher(), K, {"policy": "keyframe", "keyframe_max_parallax_px": threshold})
    tracker.process(left[0], 0)
    keyframe, references, switches = 0, [], []
    for i in range(1, NUM_FRAMES):
        r = tracker.process(left[i], i * DT_NS)
        assert r.pose is not None, r.reason
        ref = frame_index(r.reference_stamp_ns)
        assert ref == keyframe                          # matched against the current keyframe
        T = truth(poses, ref, i)
        assert rotation_angle_deg(r.pose.R, T[:3, :3]) < 0.5
        assert translation_direction_error_deg(r.pose.t, T[:3, 3]) < 3.0
        expect_switch = (median_parallax_px(r.temporal) > threshold
                         or len(r.temporal) < tracker.config["keyframe_min_matches"])
        assert r.is_keyframe == expect_switch
        references.append(ref)
        if r.is_keyframe:
            keyframe = i
            switches.append(i)
    # The keyframe was reused across frames and replaced at least once.
    assert len(switches) >= 1 and len(set(references)) < len(references), (references, switches)


def test_tracker_reset_on_stamp_going_backwards(sequence):
    _, left, _ = sequence
    tracker = MonoTracker(OrbMatcher(), K)
    for i in range(3):
        r = tracker.process(left[i], (10 + i) * DT_NS)
    assert r.pose is not None and not r.reset
    assert np.linalg.norm(tracker.T_odom_cam[:3, 3]) > 1.5  # two unit steps, nearly collinear
    r = tracker.process(left[3], 5 * DT_NS)  # bag looped
    assert r.reset and r.pose is None and r.reason == "no reference frame yet"
    np.testing.assert_array_equal(r.T_odom_cam, np.eye(4))
    r = tracker.process(left[4], 6 * DT_NS)
    assert r.pose is not None and not r.reset and r.reference_stamp_ns == 5 * DT_NS
    tracker.reset()
    assert tracker.reference is None and tracker.last_stamp_ns is None
    np.testing.assert_array_equal(tracker.T_odom_cam, np.eye(4))


def test_black_frames_give_no_pose_and_tracking_recovers(sequence):
    poses, left, _ = sequence
    black = np.zeros_like(left[0])
    tracker = MonoTracker(OrbMatcher(), K)
    r = tracker.process(black, 0)
    assert r.pose is None and r.reason == "too few keypoints to start (0 < 30)" and not r.is_keyframe
    tracker.process(left[0], 1 * DT_NS)
    r1 = tracker.process(left[1], 2 * DT_NS)
    assert r1.pose is not None
    r = tracker.process(black, 3 * DT_NS)
    assert r.pose is None and r.reason == "too few matches (0 < 30)"
    assert not r.is_keyframe and r.num_inliers == 0 and r.inlier_ratio == 0.0
    np.testing.assert_array_equal(r.T_odom_cam, r1.T_odom_cam)  # unchanged, not reset
    # The black frame did not replace the reference: the next frame matches frame 1.
    r = tracker.process(left[2], 4 * DT_NS)
    assert r.pose is not None and r.reference_stamp_ns == 2 * DT_NS
    T = truth(poses, 1, 2)
    assert rotation_angle_deg(r.pose.R, T[:3, :3]) < 0.5
    assert translation_direction_error_deg(r.pose.t, T[:3, 3]) < 3.0


class CountingOrb(OrbMatcher):
    """ORB that counts its ``match_features`` calls."""

    matched = 0

    def match_features(self, feats0, feats1):
        self.matched += 1
        return super().match_features(feats0, feats1)


def motion_blurred(img: np.ndarray, px: int = 15) -> np.ndarray:
    """A horizontal box blur over ``px`` pixels (a pan during a long exposure; benchmarks/stereo_gaps.py's bad
    frame has 41 px). 15 px: about 0.38x the sharpness of these rendered frames, and ORB still matches them."""
    return cv2.blur(img, (px, 1))


def test_image_sharpness_drops_with_blur_and_ignores_gain_and_colour(sequence):
    _, left, _ = sequence
    img = left[0]
    s = image_sharpness(img)
    assert s > 0
    assert image_sharpness(motion_blurred(img, 41)) < 0.5 * s  # the blur removes most of the fine detail
    assert 0.5 * s < image_sharpness(cv2.blur(img, (3, 1))) < s  # a slight blur: a little
    darker = (img.astype(np.float32) * 0.3 + 20.0).astype(np.uint8)  # gain and offset (rounded to 8 bit)
    assert image_sharpness(darker) == pytest.approx(s, rel=0.1)
    assert image_sharpness(img.astype(np.uint16) * 256) == pytest.approx(s, rel=1e-2)  # a 16-bit camera
    assert image_sharpness(np.dstack([img] * 3)) == pytest.approx(s, rel=1e-3)  # colour, grey scene
    assert image_sharpness(np.full_like(img, 77)) == 0.0  # flat: unknown
    with pytest.raises(ValueError, match="image"):
        image_sharpness(np.zeros((0, 5)))


def test_sharpness_mismatch_is_symmetric_and_off_with_zero():
    assert sharpness_mismatch(1.0, 0.6, 2.0) is None and sharpness_mismatch(1.0, 1.9, 2.0) is None
    assert "0.40x" in sharpness_mismatch(1.0, 0.4, 2.0) and "2.50x" in sharpness_mismatch(1.0, 2.5, 2.0)
    assert sharpness_mismatch(1.0, 0.1, 0.0) is None  # off
    assert sharpness_mismatch(1.0, 0.4, 0.5) == sharpness_mismatch(1.0, 0.4, 2.0)  # a factor below 1: the same limit
    assert image_sharpness(np.zeros((8, 8), np.float32)) == 0.0 and image_sharpness(np.full((8, 8), np.nan)) == 0.0
    tiny = np.random.default_rng(0).random((32, 32)).astype(np.float32) * 1e-3  # a float image with a small range
    assert image_sharpness(tiny) == pytest.approx(image_sharpness(tiny * 1e3), rel=1e-3)
    assert sharpness_mismatch(0.0, 1.0, 2.0) is None and sharpness_mismatch(1.0, 0.0, 2.0) is None  # unknown
    with pytest.raises(ValueError, match="max_sharpness_ratio"):
        validate_tracking_config({"max_sharpness_ratio": 0.5})
    # an empty frame has no sharpness (unknown): the tracker says why it has no pose, as without the gate
    empty = MonoTracker(OrbMatcher(), K).process(np.zeros((0, 0), np.uint8), 0)
    assert empty.pose is None and empty.reason.startswith("too few keypoints to start"), empty.reason


def test_mono_tracker_refuses_a_blurred_frame_against_a_sharp_one(sequence):
    """A blurred frame gets no pose against a sharp reference, and is no candidate for the frames after it: the
    next sharp frame is posed against the sharp reference before the blur."""
    poses, left, _ = sequence
    matcher = CountingOrb()
    tracker = MonoTracker(matcher, K)
    tracker.process(left[0], 0)
    assert tracker.process(left[1], DT_NS).pose is not None
    before = matcher.matched
    r = tracker.process(motion_blurred(left[2]), 2 * DT_NS)
    assert r.pose is None and "image sharpness" in r.reason and r.reference_stamp_ns == DT_NS
    assert not r.is_keyframe and tracker.candidate is None
    # matched against the reference only (published), not against the fallback the gate refuses too (frame 0)
    assert matcher.matched == before + 1 and tracker.previous_reference.stamp_ns == 0
    r = tracker.process(left[3], 3 * DT_NS)
    assert r.pose is not None and r.reference_stamp_ns == DT_NS, r.reason
    T = truth(poses, 1, 3)
    assert rotation_angle_deg(r.pose.R, T[:3, :3]) < 0.5
    assert translation_direction_error_deg(r.pose.t, T[:3, 3]) < 3.0
    off = MonoTracker(OrbMatcher(), K, {"max_sharpness_ratio": 0})
    off.process(left[1], DT_NS)
    assert off.process(motion_blurred(left[2]), 2 * DT_NS).pose is not None  # without the gate: posed
    # turned on at runtime: the (blurred) reference's sharpness was measured while the gate was off
    off.config["max_sharpness_ratio"] = 2.0
    r = off.process(left[3], 3 * DT_NS)  # refused against it, posed against the sharp frame before
    assert "image sharpness" in r.reason and r.pose is not None and r.reference_stamp_ns == DT_NS, r.reason


def test_mono_keyframe_follows_a_gradual_blur(sequence):
    """Keyframe policy, blur growing frame by frame (the keyframe kept by its matches and parallax): every frame is
    posed, because a keyframe whose sharpness the frames drift away from is replaced before the gate trips."""
    poses, left, _ = sequence
    tracker = MonoTracker(OrbMatcher(), K, {"policy": "keyframe", "keyframe_min_matches": 30,
                                            "keyframe_max_parallax_px": 1e4})
    tracker.process(left[0], 0)
    for k, px in enumerate((5, 9, 15, 21), start=1):
        r = tracker.process(motion_blurred(left[k], px), k * DT_NS)
        assert r.pose is not None, (k, r.reason)
        T = truth(poses, frame_index(r.reference_stamp_ns), k)
        assert translation_direction_error_deg(r.pose.t, T[:3, 3]) < 10.0, k
    assert tracker.reference.stamp_ns > 0  # the keyframe moved on with the blur


def test_mono_tracker_leaves_a_blurred_reference_for_a_sharp_frame(sequence):
    """A blurred first frame: the sharp frame after it gets no pose against it but becomes the candidate (it is
    the sharper of the pair), so the frame after that is posed against it."""
    poses, left, _ = sequence
    tracker = MonoTracker(OrbMatcher(), K)
    tracker.process(motion_blurred(left[0]), 0)
    r = tracker.process(left[1], DT_NS)
    assert r.pose is None and "image sharpness" in r.reason and tracker.candidate.stamp_ns == DT_NS
    r = tracker.process(left[2], 2 * DT_NS)
    assert r.pose is not None and r.reference_stamp_ns == DT_NS and r.is_keyframe, r.reason
    T = truth(poses, 1, 2)
    assert translation_direction_error_deg(r.pose.t, T[:3, 3]) < 3.0


@pytest.mark.parametrize("max_sharpness_ratio", [2.0, 0.0])
def test_stereo_auto_keeps_a_blurred_frame_on_the_pixel_gate(sequence, monkeypatch, max_sharpness_ratio):
    """pnp_ransac auto takes the covariance gate across camera frames the node skipped; not for a blurred frame
    against a sharp reference, where that gate accepts wrong poses (the pixel gate only)."""
    import mambaglue_ros.tracking as tracking
    from mambaglue_ros.mono_scale import FramePeriod

    _, left, right = sequence
    modes, estimate = [], tracking.estimate_pose_pnp

    def recording(*args, **kwargs):
        modes.append(kwargs["ransac"])
        return estimate(*args, **kwargs)

    monkeypatch.setattr(tracking, "estimate_pose_pnp", recording)
    camera = FramePeriod()
    for k in range(NUM_FRAMES):
        camera.observe(k * DT_NS)
    tracker = StereoTracker(OrbMatcher(), K, K, T_LEFT_RIGHT, {"max_sharpness_ratio": max_sharpness_ratio},
                            frame_period=camera)
    tracker.process(left[0], right[0], 0)
    assert tracker.process(left[2], right[2], 2 * DT_NS).pose is not None  # frame 1 skipped
    assert modes == ["auto"]
    # frame 3 skipped, frame 4 blurred over 31 px: too few inliers at 2 px either way
    r = tracker.process(motion_blurred(left[4], 31), motion_blurred(right[4], 31), 4 * DT_NS)
    assert len(modes) >= 2 and modes[1] == ("pixel" if max_sharpness_ratio else "auto")
    assert r.pose is None
    if max_sharpness_ratio:  # the reason names the gate (the node counts it in pose_sharpness)
        assert "pixel gate only: image sharpness" in r.reason, r.reason
    else:  # the covariance gate was tried
        assert "with the covariance gate" in r.reason and "image sharpness" not in r.reason, r.reason


def test_changing_the_feature_type_drops_the_reference(sequence):
    _, left, _ = sequence
    matcher = OrbMatcher()
    tracker = MonoTracker(matcher, K)
    tracker.process(left[0], 0)
    matcher.features = "orb-other"  # e.g. the node switched front ends: cached features are stale
    r = tracker.process(left[1], DT_NS)
    assert r.pose is None and r.reason == "no reference frame yet"
    assert tracker.process(left[2], 2 * DT_NS).pose is not None


def test_invalid_tracking_config():
    with pytest.raises(ValueError, match="policy"):
        validate_tracking_config({"policy": "sometimes"})
    with pytest.raises(ValueError, match="unknown"):
        validate_tracking_config({"keyframe_max_parallax": 3.0})
    with pytest.raises(ValueError, match="min_depth"):
        validate_tracking_config({"min_depth": 10.0, "max_depth": 5.0})
    with pytest.raises(ValueError, match="stereo_matching"):
        validate_tracking_config({"stereo_matching": "block"})


# ------------------------------------------------------------------------------------- stereo tracker
@pytest.mark.parametrize("stereo_matching", ["network", "epipolar"])
def test_stereo_tracker_metric_odometry(sequence, stereo_matching):
    poses, left, right = sequence
    tracker = StereoTracker(OrbMatcher(), K, K, T_LEFT_RIGHT, {"stereo_matching": stereo_matching})
    first = tracker.process(left[0], right[0], 0)
    assert first.pose is None and first.stereo is not None and len(first.stereo) > 300
    step_len = np.linalg.norm(STEP[:3, 3])
    for i in range(1, NUM_FRAMES):
        r = tracker.process(left[i], right[i], i * DT_NS)
        assert r.pose is not None, r.reason
        assert r.pose.metric
        T = truth(poses, i - 1, i)
        assert np.linalg.norm(r.pose.t - T[:3, 3]) < 0.05 * step_len   # 7 mm of a 14 cm step
        assert rotation_angle_deg(r.pose.R, T[:3, :3]) < 0.3
        assert np.all(np.isfinite(r.pose.covariance))
    path = (NUM_FRAMES - 1) * step_len
    position_error = np.linalg.norm(tracker.T_odom_cam[:3, 3] - poses[-1][:3, 3])
    assert position_error < 0.03 * path
    assert rotation_angle_deg(tracker.T_odom_cam[:3, :3], poses[-1][:3, :3]) < 0.5


def test_stereo_black_right_image_keeps_the_old_reference(sequence):
    poses, left, right = sequence
    tracker = StereoTracker(OrbMatcher(), K, K, T_LEFT_RIGHT)
    tracker.process(left[0], right[0], 0)
    # Right camera dropped out: temporal pose still works (depths come from the reference) ...
    r = tracker.process(left[1], np.zeros_like(right[1]), DT_NS)
    assert r.pose is not None and len(r.stereo) == 0
    assert not r.is_keyframe  # ... but this frame has no depths, so it cannot be a reference.
    r = tracker.process(left[2], right[2], 2 * DT_NS)
    assert r.pose is not None and r.reference_stamp_ns == 0
    T = truth(poses, 0, 2)
    assert np.linalg.norm(r.pose.t - T[:3, 3]) < 0.05 * np.linalg.norm(T[:3, 3])
    # Both images black: no pose, no exception, odometry unchanged.
    before = tracker.T_odom_cam.copy()
    r = tracker.process(np.zeros_like(left[3]), np.zeros_like(right[3]), 3 * DT_NS)
    assert r.pose is None and r.reason == "too few matches (0 < 30)"
    np.testing.assert_array_equal(r.T_odom_cam, before)
