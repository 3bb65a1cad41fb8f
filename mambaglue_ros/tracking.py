"""Frame-to-frame state for visual odometry, without ROS: the node and the replay/eval tools use it.

Any matcher with the ``Matcher`` interface works (``extract``, ``match_features``, ``features``,
``alpha``, ``max_keypoints``): the learned MambaGlue one or ``baselines.OrbMatcher``.

Reference policy (``config["policy"]``):
* ``"previous"``: every frame is matched against the frame before it.
* ``"keyframe"``: frames are matched against the current keyframe; the keyframe is replaced by
  the current frame once the match count drops below ``keyframe_min_matches`` or the median pixel
  displacement of the matches exceeds ``keyframe_max_parallax_px``.

Each image is extracted once; the reference's ``Features`` are cached.

Odometry: ``T_odom_cam = T_odom_ref @ T_ref_cur`` (camera optical frame, see ``geometry``).
* Mono has no metric scale: every estimate has a unit-norm translation (or zero for a rotation-only,
  low-parallax estimate). The odometry composes each unit direction with a length in one consistent
  scale whose unit is the first step (``mono_scale.MonoScale``; ``FrameResult.step_scale``):
  ``mono_scale: "time"`` (default) a length proportional to the time the step spans (constant speed:
  frames dropped do not bend the path); ``"depth"`` that fused with the reference's keypoints
  triangulated at the odometry's scale and again from the new edge (follows changes of speed, drifts
  in scale); ``"unit"`` unit-length steps per *reference* change ("previous": one unit per frame;
  "keyframe": each frame is one unit from its keyframe).
  With ``mono_window`` (>= 3 keyframes) the newest pose's rotation and direction are refined jointly
  with the last keyframes' edges over their three-view tracks (``geometry.refine_mono_window``);
  the window does not change the step's length (``mono_scale`` does): it sees only relative step lengths.
* Stereo is metric (units of the stereo baseline).

Failures (too few matches or inliers: a blurred, covered or black frame, or a bad reference frame): ``pose``
is None with a ``reason`` and the accumulated pose is left unchanged (not reset). A frame without a pose has
no known place in the odometry, so it does not replace the reference: the next frame is matched against the
same reference, and if it poses there the odometry crosses the failed frame without losing its motion.
Where a frame cannot be posed against the reference, it is tried (one more match each, only on such frames)
against the reference before it (``previous_reference``: the reference itself may be the bad frame, e.g. a
covered one that still posed), then against the last frame without a pose (``candidate``: what the reference
would have become before 2026-12-05). A frame posed against one of these two becomes the reference (whatever the
policy: the reference failed it). ``FrameResult.live_references`` names the frames the next one may be posed
against. After ``max_lost_frames`` frames in a row without a pose the current frame (with enough keypoints /
stereo points) becomes the reference; ``max_lost_frames: 0``: at the first failure, no fallbacks (the behaviour
before 2026-12-05). A frame with too few keypoints (e.g. black) never becomes a reference. A stamp that goes
backwards (bag loop, clock reset) calls ``reset()``.
Mono also refuses the pose of a pair whose images' sharpness (``image_sharpness``) differ by more than
``max_sharpness_ratio`` (a motion-blurred or covered frame against a sharp one: there the essential matrix keeps most
matches for a pose tens of degrees off; two blurred frames mostly pose better), and the blurrier frame of such a pair
is no ``candidate``: the frames after a blurred burst are posed against the sharp reference before it (a lasting drop
of sharpness costs ``max_lost_frames`` + 1 frames; with ``max_lost_frames: 0`` the blurred frame becomes the reference
at once, and the sharp frame after it is refused against it too). With the keyframe policy a keyframe whose sharpness
the posed frames drift from by more than the factor to the power 3/4 (1.68 at 2) is replaced, so a gradual change
does not trip the gate. Stereo (left image) keeps a frame much blurrier than its reference on the pixel PnP gate
(``pnp_ransac: auto`` against a reference frames back does not rescue it with the covariance gate, which accepts wrong
poses on blurred frames). The sharpness is measured on every frame, also with the gate off (about 1 ms).
Where a frame without a pose serves as a reference (the ``candidate``, or the reference after ``max_lost_frames``),
its place in the odometry is where the last measured motion leads (``odometry.ConstantVelocity``: the last pose's
step continued to its stamp; before 2026-12-06 the last pose, so the motion while lost was lost too). The frame's
own ``T_odom_cam`` stays the last pose (it has no measured one).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from .geometry import (MAX_POSE_HYPOTHESES, PNP_RANSAC_MODES, RelativePose, estimate_pose_mono, estimate_pose_pnp,
                       make_transform, match_rectified_stereo, normalise_pixels, pose_consistent, refine_mono_window,
                       refine_stereo_matches, translation_significant, triangulate_stereo)
from .mono_scale import FramePeriod, MonoScale, ReferenceDepths
from .odometry import ConstantVelocity
from .types import Features, MatchResult
from .window_ba import BackgroundBA, Keyframe, SlidingWindowBA, WindowResult

MONO_SCALES = ("time", "depth", "unit")
# How far from its epipolar line under the published pose a temporal match no estimator judged may lie and still
# continue a track (FrameResult.temporal_inliers; stereo matches without a depth): this many standard deviations of
# that distance (stereo: sqrt(2) pixel_sigma_px), or times ransac_px where no estimator mask came with the pose.
TRACK_GATE = 3.0

DEFAULT_TRACKING_CONFIG: dict[str, Any] = {
    "policy": "previous",             # "previous" | "keyframe"
    "keyframe_min_matches": 100,      # new keyframe below this many matches to it
    "keyframe_max_parallax_px": 40.0,  # ... or above this median match displacement [px]
    "min_matches": 30,                # matches required to attempt a pose
    "min_inliers": 20,                # inliers required to accept it
    "ransac_px": 1.0,                 # mono: MAGSAC threshold [px]
    "pose_hypotheses": 6,             # mono: seeded MAGSAC runs proposing a model, best MSAC cost wins
    "mono_window": 0,                 # mono: refine rotation and direction jointly over this many keyframes
                                      # (geometry.refine_mono_window); 0 = off, else >= 3
    "mono_scale": "time",             # mono: step lengths proportional to the time spanned ("time"), that fused
                                      # with the reference's depths ("depth"; mono_scale.py), or 1 ("unit")
    "confidence": 0.999,
    "min_parallax_px": 2.0,           # mono: below -> rotation-only pose
    "max_sharpness_ratio": 2.0,       # where the two images' sharpness (image_sharpness) differ by more than this
                                      # factor (a blurred frame against a sharp one), mono: no pose; stereo, this frame
                                      # the blurrier: the pixel PnP gate only (pnp_ransac auto); 0 = off
    "scale_variance": 1e6,            # mono: variance along the unknown-scale direction
    "pnp_ransac_px": 2.0,             # stereo: PnP reprojection threshold [px]
    "stereo_max_reproj_px": 1.0,      # stereo: triangulation reprojection gate [px]
    "pnp_weighted": True,             # stereo: refine with per-point covariances (geometry.refine_pose_weighted)
    "pixel_sigma_px": 1.0,            # stereo: keypoint noise [px] of the weighting
    "pnp_readmit": False,             # stereo: the weighted gate may re-admit RANSAC outliers (geometry.estimate_pose_pnp)
    "pnp_ransac": "auto",             # stereo: PnP RANSAC inlier test: pnp_ransac_px ("pixel"), the weighted
                                      # refinement's chi-square gate ("covariance"), or the latter where the former
                                      # finds too few inliers ("auto"; geometry.estimate_pose_pnp), with a
                                      # frame_period only against a reference frames back, not counting frames
                                      # that got no pose (_pnp_ransac_mode)
    "min_disparity_sigmas": 3.0,      # stereo: depth limit fx b / (k sigma_d), see StereoTracker.max_stereo_depth
    "ba_window": 0,                   # stereo: sliding-window bundle adjustment over this many keyframes; 0 = off
    "ba_background": True,            # stereo: run it on its own thread (False: in process(), for offline tools)
    "stereo_refine": False,           # stereo: sub-pixel disparity by row correlation (geometry.refine_stereo_matches)
    "stereo_matching": "network",     # stereo: left/right matches by the matcher ("network") or by descriptor
                                      # search along the rectified rows ("epipolar", geometry.match_rectified_stereo)
    "min_depth": 0.1,                 # stereo: accepted depth range [calibration units]; the far limit is
    "max_depth": 100.0,               # also max_stereo_depth() (from the baseline, focal length and noise)
    "max_lost_frames": 5,             # frames in a row without a pose before the reference is given up for the
                                      # current frame (module docstring); 0 = at the first failure, no fallback
}


class MatcherLike(Protocol):
    features: str
    alpha: float | None
    max_keypoints: int

    def extract(self, image: np.ndarray) -> Features: ...

    def match_features(self, feats0: Features, feats1: Features) -> MatchResult: ...


@dataclass
class FrameResult:
    """What one ``process`` call produced.

    stamp_ns:           stamp of this frame.
    reference_stamp_ns: stamp of the frame it was matched against (None without a reference).
    temporal:           reference(left) <-> current(left) matches (None without a reference).
    stereo:             current left <-> right matches (StereoTracker only).
    pose:               ``T_ref_cur`` (camera ref -> current, see geometry), None on failure.
    reason:             "ok", a note (e.g. rotation only) or why ``pose`` is None.
    T_odom_cam:         (4, 4) accumulated pose of the current camera in the odometry frame
                        (the first frame's camera); unchanged on failure.
    num_inliers:        inliers of the pose (0 without pose).
    inlier_ratio:       inliers / correspondences given to the estimator (0 without pose).
    is_keyframe:        this frame is now the reference for the next one.
    reset:              the tracker was reset before this frame (stamp went backwards).
    keypoints:          (N, 2) float32 pixels of all keypoints of this (left) image, the index
                        space of ``temporal.matches[:, 1]`` and ``stereo.matches[:, 0]``.
    timings_ms:         wall times: extract, match, pose, total; "fallback": the part of match + pose spent on the
                        fallback references (only when one was tried).
    image_scale:        resolution this (left) image was extracted at, relative to the input (``Features.scale``).
    live_references:    stamps of the frames the next frame may be posed against (the reference, the one before
                        it, the last frame without a pose; module docstring): whoever keeps per-reference state
                        (odometry anchors, track ids) keeps it for these.
    step_scale:         length of ``pose``'s translation in the odometry: mono composes the unit direction times
                        this (``mono_scale``; 0 for a rotation-only pose); stereo (metric) 1.
    temporal_inliers:   (M,) bool over ``temporal.matches``: the matches ``pose`` explains (mono: the essential
                        matrix's inliers, ``RelativePose.inliers``; stereo: PnP's inliers, and for matches without a
                        depth the epipolar test, ``geometry.pose_consistent``); None without a pose.
    """

    stamp_ns: int
    reference_stamp_ns: int | None
    temporal: MatchResult | None
    stereo: MatchResult | None
    pose: RelativePose | None
    reason: str
    T_odom_cam: np.ndarray
    num_inliers: int = 0
    inlier_ratio: float = 0.0
    is_keyframe: bool = False
    reset: bool = False
    timings_ms: dict[str, float] = field(default_factory=dict)
    keypoints: np.ndarray | None = None
    image_scale: float = 1.0
    step_scale: float = 1.0
    live_references: tuple[int, ...] = ()
    temporal_inliers: np.ndarray | None = None

    def track_links(self) -> np.ndarray | None:
        """(K, 2) temporal matches a feature track may continue through (``tracks.TrackManager``): those the pose
        explains; None without a pose (a match of a frame the tracker could not place is not verified)."""
        if self.temporal is None or self.temporal_inliers is None:
            return None
        return np.asarray(self.temporal.matches, dtype=np.int64).reshape(-1, 2)[self.temporal_inliers]


@dataclass
class _Reference:
    feats: Features
    stamp_ns: int
    T_odom: np.ndarray
    features_name: str
    points3d: np.ndarray | None = None  # stereo: (N, 3) per left keypoint, camera frame
    has3d: np.ndarray | None = None     # stereo: (N,) bool
    right_x: np.ndarray | None = None   # stereo: (N,) right-image x of each left keypoint, nan without depth
    T_published: np.ndarray | None = None  # T_odom as reported when it became the reference (BA moves T_odom)
    rays: np.ndarray | None = None      # mono: (N, 3) normalised rays of the keypoints (lens distortion removed)
    depths: ReferenceDepths | None = None  # mono: keypoint depths at the odometry's scale (mono_scale)
    failed: int = 0                     # the tracker's frames_failed once this frame was processed
    sharpness: float = 0.0              # image_sharpness of the (left) image (0: unknown)


def validate_tracking_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults merged with ``config``; raises ValueError naming the bad key."""
    cfg = dict(DEFAULT_TRACKING_CONFIG)
    if config:
        unknown = set(config) - set(cfg)
        if unknown:
            raise ValueError(f"unknown tracking option(s): {sorted(unknown)}")
        cfg.update(config)
    if cfg["policy"] not in ("previous", "keyframe"):
        raise ValueError(f"policy must be 'previous' or 'keyframe', got {cfg['policy']!r}")
    if cfg["mono_scale"] not in MONO_SCALES:
        raise ValueError(f"mono_scale must be one of {MONO_SCALES}, got {cfg['mono_scale']!r}")
    if cfg["stereo_matching"] not in ("network", "epipolar"):
        raise ValueError(f"stereo_matching must be 'network' or 'epipolar', got {cfg['stereo_matching']!r}")
    if cfg["pnp_ransac"] not in PNP_RANSAC_MODES:
        raise ValueError(f"pnp_ransac must be one of {PNP_RANSAC_MODES}, got {cfg['pnp_ransac']!r}")
    if not 1 <= int(cfg["pose_hypotheses"]) <= MAX_POSE_HYPOTHESES:
        raise ValueError(f"pose_hypotheses must be in 1..{MAX_POSE_HYPOTHESES}, got {cfg['pose_hypotheses']}")
    cfg["pose_hypotheses"] = int(cfg["pose_hypotheses"])
    for key in ("keyframe_min_matches", "min_matches", "min_inliers", "ba_window", "mono_window", "max_lost_frames"):
        if int(cfg[key]) < 0:
            raise ValueError(f"{key} must be >= 0, got {cfg[key]}")
        cfg[key] = int(cfg[key])
    ratio = float(cfg["max_sharpness_ratio"])
    if not (ratio == 0.0 or ratio > 1.0):
        raise ValueError(f"max_sharpness_ratio must be 0 (off) or > 1, got {cfg['max_sharpness_ratio']}")
    cfg["max_sharpness_ratio"] = ratio
    for key in ("keyframe_max_parallax_px", "ransac_px", "pnp_ransac_px", "pixel_sigma_px", "min_disparity_sigmas",
                "stereo_max_reproj_px", "scale_variance", "max_depth"):
        if not float(cfg[key]) > 0:
            raise ValueError(f"{key} must be > 0, got {cfg[key]}")
    if cfg["ba_window"] == 1:
        raise ValueError("ba_window must be 0 (off) or >= 2 keyframes, got 1")
    if cfg["mono_window"] in (1, 2):
        raise ValueError(f"mono_window must be 0 (off) or >= 3 keyframes (two edges), got {cfg['mono_window']}")
    if not 0.0 < float(cfg["confidence"]) < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {cfg['confidence']}")
    if not 0.0 <= float(cfg["min_depth"]) < float(cfg["max_depth"]):
        raise ValueError(f"need 0 <= min_depth < max_depth, got {cfg['min_depth']}, {cfg['max_depth']}")
    return cfg


def _add_time(timings: dict[str, float], key: str, start: float, end: float) -> None:
    """timings[key] += end - start, in ms (a frame tried against two references spends both)."""
    timings[key] = timings.get(key, 0.0) + (end - start) * 1e3


def _keypoints_numpy(feats: Features) -> np.ndarray:
    """(N, 2) float32 numpy copy of the keypoints (tensor on any device, or array)."""
    k = feats.keypoints
    k = k.detach().cpu().numpy() if hasattr(k, "detach") else np.asarray(k)
    return np.asarray(k, dtype=np.float32).reshape(-1, 2)


def image_sharpness(image: np.ndarray, width: int = 320) -> float:
    """Contrast-normalised sharpness of an image: var(Laplacian) / var(intensity) of its grey image resampled to
    ``width`` pixels across (area filter). A blur removes the fine detail the Laplacian sees and keeps the coarse
    contrast, so the value drops (a 41 px motion blur: to about a fifth); a gain or an offset of the intensities
    cancels. 0 for a flat image. ``image``: (H, W) or (H, W, C) numpy array of any numeric dtype."""
    import cv2

    img = np.asarray(image)
    if img.ndim not in (2, 3) or img.size == 0:
        raise ValueError(f"image_sharpness needs an (H, W) or (H, W, C) image, got shape {img.shape}")
    if img.dtype not in (np.uint8, np.uint16, np.float32):
        img = img.astype(np.float32)
    if img.ndim == 3:
        img = np.ascontiguousarray(img[..., :3] if img.shape[2] >= 3 else img[..., 0])
    h, w = img.shape[:2]
    if w > width:  # downscale first: the grey conversion then touches a quarter of the pixels
        img = cv2.resize(img, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
    if img.ndim == 3:  # (RGB or BGR order: only ratios between frames of one camera are used)
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    grey = img.astype(np.float32)
    var = float(grey.var())
    if not np.isfinite(var) or var <= 1e-6 * float(np.abs(grey).max()) ** 2:  # flat (or black): unknown
        return 0.0
    return float(cv2.Laplacian(grey, cv2.CV_32F).var() / var)


def _frame_sharpness(image: Any) -> float:
    """``image_sharpness`` of a frame the tracker is given, measured also with the gate off (so that it can be turned
    on at runtime); 0 (unknown) where there is none: not an array (a test double's view), or an empty or ill-shaped
    one, which the matcher's extraction reports as it did before the gate."""
    if not isinstance(image, np.ndarray) or image.size == 0 or image.ndim not in (2, 3):
        return 0.0
    return image_sharpness(image)


SHARPNESS_MISMATCH = "image sharpness "  # how sharpness_mismatch's reason starts (the node counts these frames)


def sharpness_mismatch(reference: float, current: float, max_ratio: float) -> str | None:
    """Why a pair of images with these ``image_sharpness`` values is not to be trusted, or None. A blurred frame
    against a sharp one (either way round) is where the essential matrix fits the smeared keypoints with a pose
    tens of degrees off while keeping most matches (two blurred frames mostly pose better), and where the
    covariance-gated PnP accepts wrong poses. Off with ``max_ratio`` 0 or an unknown (0) value."""
    if not max_ratio or not (reference > 0.0 and current > 0.0):
        return None
    limit = max(max_ratio, 1.0 / max_ratio)  # (a factor below 1 set past validate_tracking_config: the same limit)
    ratio = current / reference
    if max(ratio, 1.0 / ratio) <= limit:
        return None
    return (f"{SHARPNESS_MISMATCH}{ratio:.2f}x the reference's, outside 1/{limit:g}..{limit:g} "
            f"(motion blur, a covered lens?)")


def median_parallax_px(match: MatchResult) -> float:
    """Median pixel displacement of the matches (0 without matches)."""
    if len(match) == 0:
        return 0.0
    return float(np.median(np.linalg.norm(match.points1 - match.points0, axis=1)))


class _TrackerBase:
    """Reference/keyframe bookkeeping and odometry accumulation shared by mono and stereo."""

    def __init__(self, matcher: MatcherLike, config: dict[str, Any] | None) -> None:
        self.matcher = matcher
        self.config = validate_tracking_config(config)
        self.reset()

    def reset(self, keep_scale: bool = False) -> None:
        """Forget the references and restart the odometry at identity. ``keep_scale``: a reset whose odometry goes on
        from its last pose (a stamp that jumped back, a new calibration) keeps mono's unit of length, the speed its
        steps are measured in (stereo is metric: nothing to keep)."""
        self.reference: _Reference | None = None
        # the reference before ``reference``: where a frame cannot be posed against ``reference``, it is tried
        # against this one (module docstring)
        self.previous_reference: _Reference | None = None
        # the latest frame without a pose (usable as a reference): tried last, as the reference it would have become
        self.candidate: _Reference | None = None
        self.frames_lost = 0  # frames in a row without a pose against a reference
        self.T_odom_cam = np.eye(4)
        self.last_stamp_ns: int | None = None
        # where a frame without a pose probably is (its place as a fallback reference or as the reference itself)
        self.velocity = ConstantVelocity()
        self.frames_failed = 0  # frames processed without a pose since the reset (_pnp_ransac_mode)

    def _drop_references(self) -> None:
        self.reference = self.previous_reference = self.candidate = None
        self.frames_lost = 0

    def _begin(self, stamp_ns: int) -> bool:
        """Stamp bookkeeping; returns True when the tracker was reset for this frame."""
        stamp_ns = int(stamp_ns)
        was_reset = self.last_stamp_ns is not None and stamp_ns < self.last_stamp_ns
        if was_reset:
            self.reset()
        self.last_stamp_ns = stamp_ns
        # Features of another front end cannot be matched against the cached reference.
        if self.reference is not None and self.reference.features_name != self.matcher.features:
            self._drop_references()
        return was_reset

    def _drop_reference_if_resized(self, image_size: tuple[int, int]) -> str | None:
        """Forget a reference of another image size (the camera changed resolution): one K cannot
        describe both images, so the pose would be wrong. The odometry continues from this frame."""
        ref = self.reference
        if ref is None or tuple(ref.feats.image_size) == tuple(image_size):
            return None
        self._drop_references()
        return (f"image size changed from {ref.feats.image_size[0]}x{ref.feats.image_size[1]} to "
                f"{image_size[0]}x{image_size[1]}: new reference, no pose for this frame")

    def live_references(self) -> tuple[int, ...]:
        """Stamps of the frames the next frame may be posed against (``FrameResult.live_references``)."""
        refs = (self.reference, self.previous_reference, self.candidate)
        return tuple(dict.fromkeys(int(r.stamp_ns) for r in refs if r is not None))

    def _pose_with_fallback(self, pose_against: Callable[[_Reference], tuple[MatchResult, RelativePose | None, str]],
                            no_reference: str, timings: dict[str, float] | None = None
                            ) -> tuple[_Reference | None, MatchResult | None, RelativePose | None, str]:
        """(reference used, match, pose, reason) of this frame against ``reference``; where that gives no pose,
        the first of ``previous_reference`` and ``candidate`` that gives one (``pose_against(ref)`` -> (match,
        pose, reason); module docstring). Without a pose from any: the attempt against ``reference``. Without a
        reference: (None, None, None, ``no_reference``). ``timings["fallback"]``: the time the attempts against
        the fallbacks took (ms; absent when none was tried: a rate controller should not read a failure's extra
        work as what its knobs cost)."""
        ref = self.reference
        if ref is None:
            return None, None, None, no_reference
        match, pose, reason = pose_against(ref)
        used = (ref, match, pose, reason)
        t_fallback, tried = time.perf_counter(), False
        if self.config["max_lost_frames"] > 0:
            for fallback, what in ((self.previous_reference, "the reference before"),
                                   (self.candidate, "the last frame without a pose")):
                if pose is not None or fallback is None:
                    continue
                tried = True
                match_fb, pose_fb, reason_fb = pose_against(fallback)
                if pose_fb is not None:
                    used = (fallback, match_fb, pose_fb, f"{reason_fb} (against {what}; the reference: {reason})")
                    break
        if tried and timings is not None:
            _add_time(timings, "fallback", t_fallback, time.perf_counter())
        return used

    def _finish(self, stamp_ns: int, reference: _Reference, usable: bool, match: MatchResult | None,
                pose: RelativePose | None, reason: str, step_scale: float = 1.0,
                used: _Reference | None = None, candidate: bool = True, new_keyframe: bool = False) -> FrameResult:
        """Accumulate the pose, decide whether this frame becomes the reference, build the result.

        ``reference`` is this frame packaged as a reference (its T_odom is filled in here) and
        ``usable`` says whether it can serve as one (enough keypoints / stereo points); ``step_scale`` is
        the length the pose's translation is composed with (mono); ``used``: the reference the pose is
        relative to (``_pose_with_fallback``; default ``reference``); ``candidate``: whether this frame, without a
        pose, may be the ``candidate`` the next frames fall back to (mono: not a frame blurrier than the reference);
        ``new_keyframe``: with the keyframe policy, this frame (posed against the reference) becomes the keyframe
        whatever its matches (mono: its sharpness drifted from the keyframe's).
        """
        ref = self.reference if used is None else used
        self.frames_failed += int(pose is None)
        reference.failed = self.frames_failed
        if pose is not None and ref is not None:
            T_ref_cur = make_transform(pose.R, pose.t * step_scale)
            self.T_odom_cam = ref.T_odom @ T_ref_cur
            self.velocity.observe(stamp_ns, ref.stamp_ns, T_ref_cur)
            reference.T_odom = self.T_odom_cam.copy()
        else:  # no measured place: where the last measured motion leads (else the last pose); T_odom_cam stays
            predicted = self.velocity.predict(stamp_ns)
            reference.T_odom = self.T_odom_cam.copy() if predicted is None else self.T_odom_cam @ predicted[0]
        if ref is None:
            new_ref = usable
        elif pose is None:  # no known place in the odometry: keep the reference, up to max_lost_frames
            self.frames_lost += 1
            new_ref = usable and self.frames_lost > int(self.config["max_lost_frames"])
        elif self.config["policy"] == "previous" or ref is not self.reference:
            # (posed against a fallback: the reference failed this frame, so this frame replaces it, else the next
            # frame would fail against it again)
            new_ref = usable
        else:
            new_ref = usable and (new_keyframe or len(match) < self.config["keyframe_min_matches"]
                                  or median_parallax_px(match) > self.config["keyframe_max_parallax_px"])
        if pose is not None:
            self.frames_lost = 0
            self.candidate = None
        elif usable and ref is not None and candidate:
            self.candidate = reference
        if new_ref:
            # the next frames' fallback: the reference this frame was posed against, or, where the reference is
            # given up, the last one (it has a known place in the odometry; this frame has not)
            self.previous_reference = ref if pose is not None else self.reference
            self.reference = reference
            self.candidate = None
            self.frames_lost = 0
        if not self.config["max_lost_frames"]:  # no fallbacks: nothing else may be posed against later
            self.previous_reference = self.candidate = None
        inliers = None if pose is None or match is None else self._temporal_inliers(ref, match, pose)
        return FrameResult(
            stamp_ns=int(stamp_ns),
            reference_stamp_ns=None if ref is None else ref.stamp_ns,
            temporal=match, stereo=None, pose=pose, reason=reason,
            T_odom_cam=self.T_odom_cam.copy(),
            num_inliers=0 if pose is None else pose.num_inliers,
            inlier_ratio=0.0 if pose is None else pose.inlier_ratio,
            is_keyframe=new_ref, step_scale=float(step_scale), live_references=self.live_references(),
            temporal_inliers=inliers)

    def _temporal_inliers(self, reference: _Reference, match: MatchResult, pose: RelativePose) -> np.ndarray:
        """``FrameResult.temporal_inliers``: (M,) bool over ``match.matches``. Here: the estimator's inliers where
        it saw every match in order (mono), else the epipolar test."""
        if pose.inliers is not None and len(pose.inliers) == len(match):
            return np.asarray(pose.inliers, dtype=bool)
        return self._pose_explains(match, pose)

    def _pose_explains(self, match: MatchResult, pose: RelativePose, gate_px: float | None = None) -> np.ndarray:
        """(M,) bool: the matches ``pose`` explains by the epipolar test (``geometry.pose_consistent``, within
        ``gate_px``, default ``TRACK_GATE`` x ``ransac_px``). A metric translation its covariance does not tell
        from zero (a still camera: a few millimetres in a random direction) is tested as a rotation: its epipolar
        lines would point anywhere."""
        m = np.asarray(match.matches, dtype=np.int64).reshape(-1, 2)
        x0 = self._normalised_pixels(np.asarray(match.keypoints0, dtype=np.float64).reshape(-1, 2)[m[:, 0]])
        x1 = self._normalised_pixels(np.asarray(match.keypoints1, dtype=np.float64).reshape(-1, 2)[m[:, 1]])
        t = np.asarray(pose.t, dtype=np.float64)
        if pose.metric and not translation_significant(t, pose.covariance[:3, :3]):
            t = np.zeros(3)
        gate = TRACK_GATE * float(self.config["ransac_px"]) if gate_px is None else float(gate_px)
        return pose_consistent(x0, x1, pose.R, t, gate / self._focal_px())

    def _normalised_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(N, 2) pixels of this tracker's (left) camera -> (N, 3) normalised points (z = 1)."""
        raise NotImplementedError

    def _focal_px(self) -> float:
        raise NotImplementedError


class MonoTracker(_TrackerBase):
    """Monocular visual odometry: unit-direction poses, composed with ``mono_scale`` step lengths (module docstring).

    Args:
        matcher: the feature matcher (see ``MatcherLike``).
        K: (3, 3) intrinsics of the (undistorted) images.
        config: options overriding ``DEFAULT_TRACKING_CONFIG``.
        frame_period: a ``mono_scale.FramePeriod`` the caller feeds with the stamp of every frame the camera
            delivered, also those it does not pass to ``process`` (the node does, from its image callback); None:
            the processed frames' stamps estimate the camera's frame period.
    """

    def __init__(self, matcher: MatcherLike, K: np.ndarray, config: dict[str, Any] | None = None,
                 frame_period: FramePeriod | None = None) -> None:
        self.K = np.asarray(K, dtype=np.float64)
        # (N, 2) image pixels -> (N, 2) pixels of the ideal pinhole K (lens distortion removed);
        # None: the images are undistorted already
        self.undistort: Callable[[np.ndarray], np.ndarray] | None = None
        # mono_window: the last keyframes as (stamp, (N, 3) normalised points, links to the previous
        # keyframe, R, t of the edge from it) for the window refinement
        self._window: list[tuple[int, np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]] = []
        self.scale = MonoScale(float(0.5 * (self.K[0, 0] + self.K[1, 1])), frames=frame_period)
        super().__init__(matcher, config)

    def reset(self, keep_scale: bool = False) -> None:
        super().reset()
        self._window = []
        if not keep_scale:
            self.scale.reset()

    def _normalised(self, feats: Features) -> np.ndarray:
        """(N, 3) normalised image points (z = 1) of all keypoints, lens distortion removed."""
        return self._normalised_pixels(_keypoints_numpy(feats).astype(np.float64))

    def _normalised_pixels(self, pixels: np.ndarray) -> np.ndarray:
        kp = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
        if self.undistort is not None and len(kp):
            kp = np.asarray(self.undistort(kp), dtype=np.float64).reshape(-1, 2)
        return normalise_pixels(kp, self.K)

    def _focal_px(self) -> float:
        return float(self.K[0, 0])

    def _refine_in_window(self, pose: RelativePose, match: MatchResult, x_cur: np.ndarray) -> RelativePose:
        """The newest edge refined jointly with the window's earlier keyframes (rotation and unit
        direction; its scale stays unknown): the edges before it are already published, so only
        this one changes what is reported. The covariance stays the pairwise one."""
        edges = self._window[1:]
        if not edges or not np.linalg.norm(pose.t) > 0:
            return pose
        x = [self._window[0][1]] + [e[1] for e in edges] + [x_cur]
        links = [e[2] for e in edges] + [np.asarray(match.matches, dtype=np.int64)]
        R = np.array([e[3] for e in edges] + [pose.R])
        t = np.array([e[4] for e in edges] + [pose.t])
        focal = float(0.5 * (self.K[0, 0] + self.K[1, 1]))
        try:
            out = refine_mono_window(x, links, R, t, focal, gate_px=3.0 * float(self.config["ransac_px"]))
        except (ValueError, IndexError, np.linalg.LinAlgError, FloatingPointError):
            out = None  # a numerical corner case keeps the pairwise pose rather than losing the frame
        if out is None or not (np.all(np.isfinite(out.R[-1])) and np.all(np.isfinite(out.t[-1]))):
            return pose
        return RelativePose(out.R[-1], out.t[-1], pose.covariance, pose.num_inliers, pose.num_matches, pose.metric,
                            pose.inliers)

    def _step_length(self, ref: _Reference, match: MatchResult, pose: RelativePose, x_cur: np.ndarray,
                     stamp_ns: int) -> tuple[float, float, float]:
        """(length, log variance, seconds spanned) of the edge ref -> current (``mono_scale.MonoScale``); a
        rotation-only pose has length 0."""
        dt = (stamp_ns - ref.stamp_ns) / 1e9
        self.scale.focal = float(0.5 * (self.K[0, 0] + self.K[1, 1]))  # K follows a new camera_info
        if not np.linalg.norm(pose.t) > 0:
            return 0.0, 0.0, dt
        measured = None
        if ref.depths is not None and ref.rays is not None:
            measured = self.scale.measure(ref.depths, ref.rays, x_cur, np.asarray(match.matches, dtype=np.int64),
                                          pose.R, pose.t)
        length, log_var = self.scale.step_length(dt, measured)
        return length, log_var, dt

    def _update_window(self, result: FrameResult, x_cur: np.ndarray) -> None:
        """A new keyframe joins the window after its reference, or starts a new window (no pose, a
        rotation-only pose, or a reference that is not the newest keyframe)."""
        size = int(self.config["mono_window"])
        if not result.is_keyframe:
            return
        pose = result.pose
        linked = (pose is not None and result.temporal is not None and np.linalg.norm(pose.t) > 0
                  and bool(self._window) and self._window[-1][0] == result.reference_stamp_ns)
        if linked:
            self._window.append((result.stamp_ns, x_cur, np.asarray(result.temporal.matches, dtype=np.int64),
                                 pose.R, pose.t))
            if len(self._window) > size - 1:  # with the next frame, the refinement spans `size` keyframes
                del self._window[:len(self._window) - (size - 1)]
                first = self._window[0]
                self._window[0] = (first[0], first[1], None, None, None)
        else:
            self._window = [(result.stamp_ns, x_cur, None, None, None)]

    def process(self, image: np.ndarray, stamp_ns: int) -> FrameResult:
        """One image (HxW gray or HxWx3 RGB) at ``stamp_ns`` -> FrameResult."""
        t0 = time.perf_counter()
        was_reset = self._begin(stamp_ns)
        self.scale.observe(stamp_ns)  # the camera's frame period: steps span whole periods
        feats = self.matcher.extract(image)
        t1 = time.perf_counter()
        sharpness = _frame_sharpness(image)
        t2 = time.perf_counter()
        resized = self._drop_reference_if_resized(feats.image_size)
        x_cur = None  # this frame's normalised points, where computed
        timings = {"extract": (t1 - t0) * 1e3, "sharpness": (t2 - t1) * 1e3}

        def against(reference: _Reference) -> tuple[MatchResult, RelativePose | None, str]:
            nonlocal x_cur
            cfg = self.config
            blurred = sharpness_mismatch(reference.sharpness, sharpness, cfg["max_sharpness_ratio"])
            if blurred and reference is not self.reference:  # a fallback the gate refuses: its matches go nowhere
                unmatched = MatchResult(_keypoints_numpy(reference.feats), _keypoints_numpy(feats),
                                        np.zeros((0, 2), np.int64), np.zeros(0, np.float32), 0, 0)
                return unmatched, None, f"{blurred}: no pose (not matched)"
            t_match = time.perf_counter()
            m = self.matcher.match_features(reference.feats, feats)
            t_pose = time.perf_counter()
            _add_time(timings, "match", t_match, t_pose)
            p = None
            if len(m) < cfg["min_matches"]:
                why = f"too few matches ({len(m)} < {cfg['min_matches']})"
            elif blurred:
                why = f"{blurred}: no pose"
            else:
                pts0, pts1 = m.points0, m.points1
                if self.undistort is not None:
                    pts0, pts1 = self.undistort(pts0), self.undistort(pts1)
                p, why = estimate_pose_mono(
                    pts0, pts1, self.K, self.K, ransac_px=cfg["ransac_px"],
                    confidence=cfg["confidence"], min_matches=cfg["min_matches"],
                    min_inliers=cfg["min_inliers"], min_parallax_px=cfg["min_parallax_px"],
                    scale_variance=cfg["scale_variance"], hypotheses=cfg["pose_hypotheses"])
                if p is not None and cfg["mono_window"] and self._window \
                        and self._window[-1][0] == reference.stamp_ns:
                    x_cur = self._normalised(feats)
                    p = self._refine_in_window(p, m, x_cur)
            _add_time(timings, "pose", t_pose, time.perf_counter())
            return m, p, why

        ref, match, pose, reason = self._pose_with_fallback(against, resized or "no reference frame yet", timings)
        if ref is None and len(feats) < self.config["min_matches"]:
            reason = f"too few keypoints to start ({len(feats)} < {self.config['min_matches']})"
        usable = len(feats) >= self.config["min_matches"]
        this = _Reference(feats, int(stamp_ns), np.eye(4), self.matcher.features, sharpness=sharpness)
        step = None
        if self.config["mono_scale"] == "depth":
            if x_cur is None:
                x_cur = self._normalised(feats)
            this.rays = x_cur
        if self.config["mono_scale"] != "unit":
            if pose is not None:
                step = self._step_length(ref, match, pose, x_cur, int(stamp_ns))
        # A frame much blurrier than the reference is the suspect of the pair: it does not become the candidate the
        # next frames fall back to (they wait for a sharp one, or max_lost_frames), where a sharper one does.
        ratio = self.config["max_sharpness_ratio"]
        blurrier = self.reference is not None and sharpness_mismatch(
            self.reference.sharpness, sharpness, ratio) is not None and sharpness < self.reference.sharpness
        # keyframe policy: a keyframe whose sharpness the posed frames drift away from (three quarters of the way to the
        # gate, in log terms: halfway, sqrt, forced extra keyframes on clean KITTI frames 4-6 apart and moved its ATE
        # 0.041 -> 0.050 m) is replaced, so that a gradual change (growing blur, another scene) does not trip the gate
        # against an old keyframe
        drifted = pose is not None and ref is self.reference and bool(ratio) and sharpness_mismatch(
            ref.sharpness, sharpness, float(ratio ** 0.75)) is not None
        result = self._finish(stamp_ns, this, usable, match, pose, reason, 1.0 if step is None else step[0], used=ref,
                              candidate=not blurrier, new_keyframe=drifted)
        if step is not None and result.is_keyframe:
            length, log_var, dt = step
            self.scale.commit(length, log_var, dt)
            if ref.rays is not None and ref.depths is not None and x_cur is not None:
                # the next edges measure against this frame's depths ("depth")
                this.depths = self.scale.reference_depths(ref.depths, ref.rays, x_cur,
                                                          np.asarray(match.matches, dtype=np.int64), pose.R,
                                                          pose.t * length, len(x_cur))
        if this.rays is not None and this.depths is None:
            this.depths = ReferenceDepths.unknown(len(feats))
        if self.config["mono_window"] and result.is_keyframe:
            self._update_window(result, x_cur if x_cur is not None else self._normalised(feats))
        result.reset = was_reset
        result.keypoints = _keypoints_numpy(feats)
        result.image_scale = float(getattr(feats, "scale", 1.0))
        timings["total"] = (time.perf_counter() - t0) * 1e3
        result.timings_ms = timings
        return result


class StereoTracker(_TrackerBase):
    """Stereo visual odometry: triangulate left<->right matches, PnP on left(ref)<->left(t).

    Args:
        matcher: the feature matcher (see ``MatcherLike``).
        K_left, K_right: (3, 3) intrinsics of the rectified/undistorted pair.
        T_left_right: (4, 4) pose of the right camera in the left camera frame (metric).
        config: options overriding ``DEFAULT_TRACKING_CONFIG``.
        frame_period: a ``mono_scale.FramePeriod`` the caller feeds with the stamp of every pair the cameras
            delivered, also those it does not pass to ``process`` (the node does): with it, ``pnp_ransac: auto``
            uses the covariance gate only against a reference frames back, not counting frames that got no pose
            (``_pnp_ransac_mode``). None: wherever the pixel gate finds too few inliers.

    Poses and ``T_odom_cam`` are those of the left camera, metric.
    """

    def __init__(self, matcher: MatcherLike, K_left: np.ndarray, K_right: np.ndarray,
                 T_left_right: np.ndarray, config: dict[str, Any] | None = None,
                 frame_period: FramePeriod | None = None) -> None:
        self.frame_period = frame_period
        self.K_left = np.asarray(K_left, dtype=np.float64)
        self.K_right = np.asarray(K_right, dtype=np.float64)
        self.T_left_right = np.asarray(T_left_right, dtype=np.float64)
        self._ba: SlidingWindowBA | None = None
        self._ba_runner: BackgroundBA | None = None
        self._ba_result: WindowResult | None = None  # synchronous mode: the result waiting for the next frame
        self.last_ba: WindowResult | None = None
        super().__init__(matcher, config)

    def reset(self, keep_scale: bool = False) -> None:
        super().reset()
        if getattr(self, "_ba", None) is not None:
            self._ba.reset()
            self._ba_result = None

    def close(self) -> None:
        """Stop the bundle-adjustment thread (if any)."""
        if self._ba_runner is not None:
            self._ba_runner.close()
            self._ba_runner = None

    def _ba_enabled(self) -> bool:
        return int(self.config["ba_window"]) >= 2

    def _apply_ba(self) -> None:
        """Fold the newest finished window into the odometry: the reference (the newest keyframe or a
        later one, chained from it) and the current pose move by the window's correction."""
        if self._ba is None:
            return
        result = self._ba_runner.poll() if self._ba_runner is not None else self._ba_result
        self._ba_result = None
        if result is None or not any(f.stamp_ns == result.stamps_ns[-1] for f in self._ba.frames):
            return  # nothing new, or a window from before a reset
        C = result.correction
        self._ba.apply_correction(result)
        self.T_odom_cam = C @ self.T_odom_cam
        if self.reference is not None and self.reference.stamp_ns >= int(result.stamps_ns[-1]):
            self.reference.T_odom = C @ self.reference.T_odom
        self.last_ba = result

    def _add_keyframe(self, result: FrameResult, ref: _Reference | None, this: _Reference) -> None:
        """A new reference goes into the window, linked to the previous one by the temporal matches."""
        baseline = float(np.linalg.norm(self.T_left_right[:3, 3]))
        if self._ba is None or self._ba.window != int(self.config["ba_window"]):
            self._ba = SlidingWindowBA(self.K_left, baseline, window=int(self.config["ba_window"]),
                                       pixel_sigma_px=self.config["pixel_sigma_px"])
        self._ba.K, self._ba.baseline = self.K_left, baseline
        linked = (ref is not None and result.pose is not None and result.temporal is not None
                  and bool(self._ba.frames) and self._ba.frames[-1].stamp_ns == ref.stamp_ns)
        if not linked:
            self._ba.reset()  # lost track (or first frame): a new window
        links = result.temporal.matches if linked else np.zeros((0, 2), dtype=np.int64)
        self._ba.add(Keyframe(int(this.stamp_ns), this.T_odom.copy(), _keypoints_numpy(this.feats),
                              this.right_x, np.asarray(links, dtype=np.int64)))
        if len(self._ba.frames) < 2:
            return
        if self.config["ba_background"]:
            if self._ba_runner is None:
                self._ba_runner = BackgroundBA(self._ba)
            self._ba_runner.ba = self._ba
            self._ba_runner.submit(self._ba.snapshot())
        else:
            self._ba_result = self._ba.optimize()

    def _pnp_ransac_mode(self, reference: _Reference, stamp_ns: int) -> str:
        """``pnp_ransac`` for a pose against ``reference``. ``auto`` stays ``pixel`` unless camera frames between the
        reference and this one were not processed or got a pose (the camera's frames by ``frame_period``, less
        those processed without a pose since the reference): the covariance gate is there for a long step, over
        frames the node skipped (or, with the keyframe policy, frames posed against the same keyframe), across
        which the camera may have moved far. Where the reference is the previous frame, or every frame in between
        got no pose, a failing pixel gate means a bad frame (blurred, covered), on which the covariance gate
        accepts wrong poses (a 41 px motion blur on the KITTI clip and the rendered room: docs/results.md, *Bad
        frames*), while the fallback references and the constant-velocity place of a frame without a pose lose
        little (docs/results.md, *Frames without a pose*; before 2026-12-06 frames that failed counted as frames
        back, and the covariance gate rescued blurred frames)."""
        mode = self.config["pnp_ransac"]
        if mode != "auto" or self.frame_period is None or self.frame_period.period_s is None:
            return mode
        frames_back = self.frame_period.count((int(stamp_ns) - reference.stamp_ns) / 1e9)
        skipped = frames_back - 1.0 - (self.frames_failed - reference.failed)
        return "auto" if skipped >= 0.5 else "pixel"

    def _normalised_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return normalise_pixels(np.asarray(pixels, dtype=np.float64).reshape(-1, 2), self.K_left)  # rectified

    def _focal_px(self) -> float:
        return float(self.K_left[0, 0])

    def _temporal_inliers(self, reference: _Reference, match: MatchResult, pose: RelativePose) -> np.ndarray:
        """PnP's inliers among the matches with a depth (as mono takes its estimator's), the epipolar test for the
        others: ``TRACK_GATE`` standard deviations of a match's distance from its line (two detections: sqrt(2)
        ``pixel_sigma_px``). The epipolar test also for PnP's outliers was measured and not kept: on the KITTI clip
        it kept 1939 tracks seen in three or more frames, 4.6 % of them inconsistent with the ground truth,
        against PnP's verdict 1604 and 2.1 % (every match: 1953 and 5.4 %; ``benchmarks/track_gate.py --kitti``):
        a wrong match along its epipolar line (a car's lines run along the road) passes that test, not PnP."""
        verified = self._pose_explains(match, pose,
                                       TRACK_GATE * np.sqrt(2.0) * float(self.config["pixel_sigma_px"]))
        if pose.inliers is not None and reference is not None and reference.has3d is not None:
            with3d = reference.has3d[np.asarray(match.matches, dtype=np.int64).reshape(-1, 2)[:, 0]]
            if int(with3d.sum()) == len(pose.inliers):
                verified[with3d] = np.asarray(pose.inliers, dtype=bool)
        return verified

    def max_stereo_depth(self) -> float:
        """Farthest depth whose disparity is ``min_disparity_sigmas`` standard deviations above zero
        (sigma_d = sqrt(2) pixel_sigma_px, two detections): ``fx b / (k sigma_d)``. Beyond it the
        disparity does not tell a finite depth from infinity. KITTI (fx 707, b 0.54 m): 90 m; EuRoC
        (fx 458, b 0.11 m): 12 m."""
        sigma_d = np.sqrt(2.0) * float(self.config["pixel_sigma_px"])
        baseline = float(np.linalg.norm(self.T_left_right[:3, 3]))
        return float(self.K_left[0, 0]) * baseline / (float(self.config["min_disparity_sigmas"]) * sigma_d)

    def _triangulate(self, stereo: MatchResult, num_left: int, left: np.ndarray | None = None,
                     right: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """3D point (left camera frame) per left keypoint, with a validity mask. With the images,
        the right pixels are refined to sub-pixel disparities first (``stereo_refine``)."""
        cfg = self.config
        points = np.zeros((num_left, 3))
        has3d = np.zeros(num_left, dtype=bool)
        if len(stereo) == 0:
            return points, has3d
        pts_right, refined = stereo.points1, np.ones(len(stereo), dtype=bool)
        if cfg["stereo_refine"] and left is not None and right is not None:
            pts_right, refined = refine_stereo_matches(left, right, stereo.points0, stereo.points1, self.K_left,
                                                       self.K_right)
        X, ok = triangulate_stereo(stereo.points0, pts_right, self.K_left, self.K_right,
                                   self.T_left_right, max_reproj_px=cfg["stereo_max_reproj_px"],
                                   min_depth=cfg["min_depth"], max_depth=min(cfg["max_depth"], self.max_stereo_depth()))
        ok &= refined
        idx = stereo.matches[:, 0]
        points[idx[ok]] = X[ok]
        has3d[idx[ok]] = True
        self._right_x = np.full(num_left, np.nan)
        self._right_x[idx[ok]] = np.asarray(pts_right, dtype=np.float64)[ok, 0]
        return points, has3d

    def _match_stereo(self, feats_l: Features, feats_r: Features) -> MatchResult:
        """The left/right matches: the matcher's, or with ``stereo_matching: epipolar`` a descriptor search along the
        rectified rows (``geometry.match_rectified_stereo``; no network pass, so stop_layer 0)."""
        if self.config["stereo_matching"] != "epipolar":
            return self.matcher.match_features(feats_l, feats_r)
        t0 = time.perf_counter()
        kl, kr = _keypoints_numpy(feats_l), _keypoints_numpy(feats_r)
        matches, scores = match_rectified_stereo(kl, feats_l.descriptors, kr, feats_r.descriptors)
        return MatchResult(kl, kr, matches, scores, 0, 0, {"match": (time.perf_counter() - t0) * 1e3})

    def process(self, left: np.ndarray, right: np.ndarray, stamp_ns: int) -> FrameResult:
        """One stereo pair at ``stamp_ns`` -> FrameResult (pose of the left camera)."""
        t0 = time.perf_counter()
        was_reset = self._begin(stamp_ns)
        self._apply_ba()
        feats_l = self.matcher.extract(left)
        feats_r = self.matcher.extract(right)
        t1 = time.perf_counter()
        sharpness = _frame_sharpness(left)
        t_sharp = time.perf_counter()
        stereo = self._match_stereo(feats_l, feats_r)
        self._right_x = np.full(len(feats_l), np.nan)
        points3d, has3d = self._triangulate(stereo, len(feats_l), left, right)
        t2 = time.perf_counter()
        timings = {"extract": (t1 - t0) * 1e3, "sharpness": (t_sharp - t1) * 1e3, "stereo": (t2 - t_sharp) * 1e3}
        resized = self._drop_reference_if_resized(feats_l.image_size)
        cfg = self.config
        # where no frame was skipped since the reference (the camera's previous frame, or frames that failed), a
        # failure is this frame's: its fallbacks (older references) do not get the covariance gate either
        # (_pnp_ransac_mode)
        next_frame = self.reference is not None and self._pnp_ransac_mode(self.reference, stamp_ns) != cfg["pnp_ransac"]

        def against(reference: _Reference) -> tuple[MatchResult, RelativePose | None, str]:
            t_match = time.perf_counter()
            m = self.matcher.match_features(reference.feats, feats_l)
            t_pose = time.perf_counter()
            _add_time(timings, "match", t_match, t_pose)
            idx0, idx1 = m.matches[:, 0], m.matches[:, 1]
            with3d = reference.has3d[idx0] if len(m) else np.zeros(0, dtype=bool)
            p = None
            mode = "pixel" if next_frame else self._pnp_ransac_mode(reference, stamp_ns)
            # auto, this frame much blurrier than the reference: the pixel gate only (the covariance gate accepts wrong
            # poses of blurred frames, also across skipped frames)
            blurred = sharpness_mismatch(reference.sharpness, sharpness, cfg["max_sharpness_ratio"]) \
                if mode == "auto" and sharpness < reference.sharpness else None
            if len(m) < cfg["min_matches"]:
                why = f"too few matches ({len(m)} < {cfg['min_matches']})"
            elif int(with3d.sum()) < cfg["min_matches"]:
                why = f"too few matches with a stereo depth ({int(with3d.sum())} < {cfg['min_matches']})"
            else:
                p, why = estimate_pose_pnp(
                    reference.points3d[idx0[with3d]], m.keypoints1[idx1[with3d]], self.K_left,
                    ransac_px=cfg["pnp_ransac_px"], confidence=cfg["confidence"],
                    min_matches=cfg["min_matches"], min_inliers=cfg["min_inliers"],
                    baseline=float(np.linalg.norm(self.T_left_right[:3, 3])) if cfg["pnp_weighted"] else None,
                    pixel_sigma_px=cfg["pixel_sigma_px"], readmit=cfg["pnp_readmit"],
                    ransac="pixel" if blurred else mode)
                if p is None and blurred:
                    why = f"{why}; pixel gate only: {blurred}"
            _add_time(timings, "pose", t_pose, time.perf_counter())
            return m, p, why

        ref, match, pose, reason = self._pose_with_fallback(against, resized or "no reference frame yet", timings)
        if ref is None and int(has3d.sum()) < cfg["min_matches"]:
            reason = f"too few stereo points to start ({int(has3d.sum())} < {cfg['min_matches']})"
        # A stereo reference needs depths, not just keypoints.
        usable = int(has3d.sum()) >= cfg["min_matches"]
        this = _Reference(feats_l, int(stamp_ns), np.eye(4), self.matcher.features, points3d, has3d,
                          self._right_x, sharpness=sharpness)
        result = self._finish(stamp_ns, this, usable, match, pose, reason, used=ref)
        this.T_published = this.T_odom.copy()
        if self._ba_enabled():
            if result.pose is not None and ref is not None and ref.T_published is not None \
                    and not np.array_equal(ref.T_published, ref.T_odom):
                # the window moved the reference after it was reported: report the pose relative to
                # the reference as reported, so whoever composes odometry lands on the refined one
                T_rel = np.linalg.inv(ref.T_published) @ result.T_odom_cam
                p = result.pose
                result.pose = RelativePose(T_rel[:3, :3].copy(), T_rel[:3, 3].copy(), p.covariance, p.num_inliers,
                                           p.num_matches, p.metric, p.inliers)
            if result.is_keyframe:
                self._add_keyframe(result, ref, this)
        result.stereo = stereo
        result.reset = was_reset
        result.keypoints = _keypoints_numpy(feats_l)
        result.image_scale = float(getattr(feats_l, "scale", 1.0))
        timings["total"] = (time.perf_counter() - t0) * 1e3
        result.timings_ms = timings
        return result
