"""The matcher node's parameters: one table, its validation, and ROS params-file loading.

The table is plain Python so that tests, tools and the launch logic can use it without rclpy.
The node declares every entry with ``declare_parameters(node)`` (ranges and read-only flags go
into the ParameterDescriptor, so ``ros2 param describe`` shows them and rclpy enforces them), and
checks runtime changes with ``validate_changes`` in its on-set-parameters callback.

ROS parameters are typed: a float parameter set to an integer (``alpha: 1`` in YAML) is refused
by rclpy, so ``validate`` refuses it too, with a hint to write ``1.0``.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import yaml

# frame ids as tf2 accepts them: no leading slash, no whitespace
_FRAME_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

# REP-103 camera optical frame (x right, y down, z forward) -> body frame (x forward, y left,
# z up): R_base_camera = [[0, 0, 1], [-1, 0, 0], [0, -1, 0]], quaternion (x, y, z, w) =
# (-0.5, 0.5, -0.5, 0.5). Same as `static_transform_publisher ... -0.5 0.5 -0.5 0.5`.
OPTICAL_TO_BODY = (0.0, 0.0, 0.0, -0.5, 0.5, -0.5, 0.5)
IDENTITY_POSE = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: name, default (its type is the parameter's type) and constraints.

    choices: allowed string values. low/high: inclusive numeric bounds (None = open).
    read_only: True when the node cannot apply a change at runtime (set it at startup).
    """

    name: str
    default: Any
    description: str
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None
    read_only: bool = True

    @property
    def kind(self) -> type:
        """bool, int, float, str or list (list of floats)."""
        return type(self.default)


PARAMETERS: tuple[ParamSpec, ...] = (
    # --- pipeline -------------------------------------------------------------------------
    ParamSpec("mode", "mono", "mono: temporal pairs from one camera; stereo: rectified left/right pairs",
              choices=("mono", "stereo")),
    ParamSpec("features", "auto", "front end; auto = xfeat on CPU, aliked on CUDA",
              choices=("auto", "xfeat", "aliked", "disk", "superpoint")),
    ParamSpec("matcher", "mambaglue", "matcher: mambaglue; lightglue (same front end, LightGlue weights, for "
              "comparisons); orb (ORB + brute force, the classical baseline; features is then ignored)",
              choices=("mambaglue", "lightglue", "orb")),
    ParamSpec("weights", "", "path to MambaGlue weights; empty = packaged default for the front end"),
    ParamSpec("extractor_weights", "", "path to front-end weights (required for superpoint)"),
    ParamSpec("mamba_ffn_rank", 0, "MambaGlue's FFN columns of the Mamba branch at inference: 0 = as trained; "
              "r > 0 = their rank-r truncated SVD; -1 = rank d/4 where they are 2d wide (version-1 networks: the "
              "packaged ALIKED file, 0.94x its full-depth time at -0.002 AUC@3px), else as trained", low=-1, high=4096),
    ParamSpec("device", "auto", "torch device: auto (cuda if available), cpu, cuda or cuda:N"),
    # auto by default (issue 15): fp16 on CUDA; on a CPU with native bf16, bf16 only for the d = 256 networks
    # (ALIKED, DISK, SuperPoint), which it serves in ~0.7x the fp32 matcher time on a video sequence; XFeat stays
    # fp32 there (1.11x at 512 keypoints, 0.90x at 1024). bf16's products are padded to a few shapes
    # (models/gemm_shapes.py): without that, oneDNN kept a kernel per new shape (~0.8 GB in 100 pairs) and
    # compiling them made bf16 slower than fp32 (benchmarks/precision_sequence.py, docs/results.md). XFeat's front
    # end runs in bf16 under auto with its keypoint head in fp32 (matcher.BF16_FRONT_ENDS); with the head in bf16 too
    # (1.35x faster) it cost keypoint localisation, AUC@3px 0.32 -> 0.24 at 512.
    ParamSpec("precision", "auto", "matcher arithmetic: auto = fp16 on CUDA, bf16 for ALIKED / DISK / SuperPoint "
              "on CPUs with AVX512-BF16/AMX, else fp32; fp32; bf16 (autocast); fp16 (CUDA only)",
              choices=("auto", "fp32", "bf16", "fp16")),
    ParamSpec("cuda_graph", False, "CUDA only: the matcher runs as one captured CUDA graph (batch 1, sets padded "
              "to max_keypoints at start; every layer, so alpha does not apply; larger sets run eager), and XFeat's "
              "extraction as one graph per image size. At batch 1 "
              "the eager forward is kernel launches (28.5 ms on an H200); the graphs' speed in the node is not "
              "measured yet (docs/results.md, GPU). Ignored with a warning on a CPU"),
    ParamSpec("num_threads", 0, "CPU threads for torch; 0 = with the pipeline half the cores (one per stage), "
              "without it all cores but one (the ROS callbacks need one: oversubscribed OpenMP threads slow "
              "inference many times). On a CPU shared with other processes, use fewer", low=0, high=256),
    ParamSpec("pipeline", "auto", "on: extract frame t+1 on a second thread while frame t is matched (latest frame "
              "only, bounded latency); off: one worker thread does both; auto: on when the network runs on the CPU "
              "(measured +37 % processed rate at 1024 keypoints, +59 % at 512, mono XFeat on 2 vCPUs), and on CUDA in "
              "stereo (stage 1 also does the left/right match) or when target_rate_hz > 0 at start",
              choices=("auto", "on", "off")),
    # 512: the node keeps up with a 10 Hz camera on a 2-core CPU (mono XFeat 11.4 Hz, stereo 6.2 Hz, against
    # 5.1 / 3.7 Hz at 1024); lossless KITTI replays lose some accuracy (mono 1.07 -> 1.35 %/m, stereo 1.37 ->
    # 1.95 %/m); a live mono replay gains (at 1024 half the frames were dropped). docs/results.md, Real time.
    ParamSpec("max_keypoints", 512, "keypoints per image (top-k by detection score); 1024-2048 where the "
              "hardware keeps up (GPU)",
              low=64, high=8192, read_only=False),
    ParamSpec("detection_threshold", 0.0, "minimum detection score; 0 = keep the top max_keypoints",
              low=0.0, read_only=False),
    ParamSpec("resize_max", 0, "downscale so the longest image side is at most this (px); 0 = never",
              low=0, high=8192),
    ParamSpec("early_exit", True, "stop the matcher when the confidence regressor says so",
              read_only=False),
    ParamSpec("alpha", 0.95, "early-exit threshold: fraction of confident points needed to stop",
              low=0.5, high=1.0, read_only=False),
    ParamSpec("target_rate_hz", 0.0, "adapt alpha to reach this frame rate; 0 = fixed alpha",
              low=0.0, high=1000.0, read_only=False),
    ParamSpec("alpha_min", 0.8, "lowest alpha the rate controller may use", low=0.5, high=1.0,
              read_only=False),
    ParamSpec("alpha_max", 1.0, "highest alpha the rate controller may use", low=0.5, high=1.0,
              read_only=False),
    ParamSpec("adapt_keypoints", True, "let the rate controller also lower max_keypoints (once alpha is at "
              "alpha_min; restored first when there is headroom)", read_only=False),
    ParamSpec("min_keypoints", 256, "lowest max_keypoints the rate controller may use",
              low=64, high=8192, read_only=False),
    ParamSpec("min_image_scale", 0.5, "lowest front-end resolution (linear, relative to the input) the rate "
              "controller may use when extraction alone misses the frame budget; 1 = never downscale",
              low=0.1, high=1.0, read_only=False),
    ParamSpec("filter_threshold", 0.1, "minimum match confidence", low=0.0, high=1.0,
              read_only=False),
    # --- input ----------------------------------------------------------------------------
    ParamSpec("transport", "raw", "image subscription: raw (Image) or compressed (CompressedImage)",
              choices=("raw", "compressed")),
    ParamSpec("qos_reliability", "best_effort", "image and camera_info subscription reliability",
              choices=("best_effort", "reliable")),
    ParamSpec("qos_depth", 5, "image and camera_info subscription queue depth", low=1, high=100),
    ParamSpec("sync_slop", 0.0, "stereo: max left/right stamp difference (s); 0 = exact stamps",
              low=0.0, high=10.0),
    ParamSpec("queue_size", 1, "frames waiting for the matcher; 1 = always the latest frame",
              low=1, high=100),
    ParamSpec("max_image_pixels", 16777216, "images larger than this (width x height) are rejected",
              low=4096, high=268435456, read_only=False),
    ParamSpec("mono16_shift", 8, "mono16 (and 16-bit PNG) images become 8 bit as value >> mono16_shift "
              "(saturated): 8 for full-range 16-bit data, 4 for 12-bit and 2 for 10-bit cameras",
              low=0, high=8, read_only=False),
    ParamSpec("rectified_input", False, "mono: the images are rectified (image_rect): use P and ignore D (poses and "
              "normalised track coordinates are turned back into the camera's frame by camera_info R). "
              "false (image_raw): matched points are undistorted with K and D before the pose and the "
              "normalised track coordinates (stereo: see stereo_rectify)"),
    ParamSpec("stereo_rectify", False, "stereo: the images are raw (image_raw): remap each to its rectified pinhole "
              "with its camera_info K, D, R, P before matching (image_proc's rectify; ~1-2 ms per image). false: the "
              "images are rectified already (image_rect). Either way poses and normalised track coordinates are of "
              "the cameras' own frames (camera_info R turned back); pixels are of the rectified images"),
    # --- tracking and pose ----------------------------------------------------------------
    ParamSpec("keyframe_policy", "previous", "mono reference image: previous frame or last keyframe",
              choices=("previous", "keyframe"), read_only=False),
    ParamSpec("keyframe_min_matches", 100, "new keyframe when matches to the keyframe drop below this",
              low=0, high=8192, read_only=False),
    ParamSpec("keyframe_max_parallax_px", 40.0, "new keyframe when median parallax exceeds this (px)",
              low=0.0, high=10000.0, read_only=False),
    ParamSpec("min_matches", 30, "fewer matches: no pose is estimated", low=5, high=8192,
              read_only=False),
    ParamSpec("min_inliers", 15, "fewer RANSAC inliers: the pose is rejected", low=5, high=8192,
              read_only=False),
    ParamSpec("ransac_px", 1.0, "RANSAC inlier threshold (px): mono essential matrix (Sampson distance), "
              "stereo PnP (reprojection error; config/stereo.yaml uses 2.0)", low=0.01, high=100.0,
              read_only=False),
    ParamSpec("pose_hypotheses", 6, "mono: MAGSAC runs with different seeds proposing an essential matrix; "
              "the one explaining all matches best wins (1 = a single run, fastest)", low=1, high=32, read_only=False),
    ParamSpec("mono_scale", "time", "mono: the length each unit-direction step adds to ~/odom (one consistent, "
              "non-metric scale): time = proportional to the time it spans at the first step's speed (frames "
              "dropped or a varying frame rate leave the path's shape alone); depth = that prediction fused with the "
              "reference's triangulated depths (follows changes of speed, drifts in scale); unit = one unit per "
              "processed frame (before 2026-12-05)", choices=("time", "depth", "unit")),
    ParamSpec("max_sharpness_ratio", 2.0, "a pair whose images' sharpness (var(Laplacian) / var(intensity), "
              "tracking.image_sharpness) differ by more than this factor: a motion-blurred (or covered) frame against "
              "a sharp one. Mono: no pose (the essential matrix keeps most matches for a pose tens of degrees off), "
              "and the blurrier frame is no fallback for the next frames (until max_lost_frames gives the reference "
              "up); stereo, the current frame the blurrier: the pixel PnP gate only (pnp_ransac auto does not "
              "rescue it with the covariance gate). "
              "0 = off",
              low=0.0, high=100.0, read_only=False),
    ParamSpec("mono_window", 0, "mono: refine the newest pose's rotation and direction jointly with the last keyframes "
              "over their three-view tracks, window of 3..20 keyframes; 0 = off. The step lengths are mono_scale's. "
              "Costs ~0.1-0.2 s per frame on a 2-core CPU (4 keyframes)", low=0, high=20),
    ParamSpec("ba_window", 0, "stereo: sliding-window bundle adjustment (GTSAM, on its own thread) over this many "
              "keyframes, 2..50; 0 = off (default: on the KITTI clip it made the odometry worse, 1.37 -> 1.86 %/m, "
              "because it trusts the disparities and that clip's carry an offset; on synthetic data it removes most "
              "drift). Costs 0.5-2 s of CPU per 5-keyframe window, beside the matcher", low=0, high=50),
    # network by default. epipolar: on the KITTI clip 1.65 %/m against 1.96 at 512 keypoints (1.32 against 1.36 at
    # 1024), EuRoC level, the stereo node 12.4-13.5 Hz against 9.7-10.3; but worse on the synthetic room's repeated
    # textures (demo ATE 0.0154 against 0.0120 m) (docs/results.md, "Left/right matches along the row")
    ParamSpec("stereo_matching", "network", "stereo: left/right matches by a pass of the matcher (network: ~40 ms) "
              "or by descriptor search along the rectified rows (epipolar: ~3 ms, classic stereo VO; faster, "
              "weaker on repeated textures)",
              choices=("network", "epipolar")),
    ParamSpec("pnp_readmit", False, "stereo: the covariance-weighted PnP gate may re-admit RANSAC outliers (far "
              "points with a large depth uncertainty); off: it only removes (a point with a large covariance can "
              "hide a wrong match: synthetic demo ATE 0.011 -> 0.019 m with it on)"),
    ParamSpec("pnp_ransac", "auto", "stereo: the PnP RANSAC's inlier test: pixel = ransac_px on the reprojection "
              "error; covariance = the weighted refinement's chi-square gate, which allows for each point's depth "
              "uncertainty (keeps tracking when the camera moves metres between processed frames, admits more wrong "
              "stereo matches); auto = pixel, and covariance where pixel finds fewer than min_inliers against a "
              "reference two or more camera frames back, not counting frames in between that got no pose (not "
              "against the previous frame or across failed frames: a bad frame there)",
              choices=("auto", "pixel", "covariance"), read_only=False),
    ParamSpec("max_lost_frames", 5, "frames in a row without a pose before the tracker gives its reference up for the "
              "current frame. Until then a frame without a pose does not replace the reference: the next frame is "
              "matched against it (then against the reference before it, then against the last frame without a pose), "
              "so a single blurred, covered or corrupted frame costs no motion. 0 = give it up at the first "
              "failure, no fallbacks (before 2026-12-05)", low=0, high=1000, read_only=False),
    # --- frames and outputs ---------------------------------------------------------------
    ParamSpec("odom_frame", "odom", "fixed frame of ~/odom and of the TF published"),
    ParamSpec("base_frame", "base_link", "robot body frame (child of ~/odom)"),
    ParamSpec("camera_frame", "", "camera optical frame (stereo: the left one); empty = the image's header frame_id"),
    ParamSpec("right_camera_frame", "", "stereo: the right camera's optical frame; empty = the right image's header "
              "frame_id"),
    ParamSpec("camera_to_base", list(OPTICAL_TO_BODY),
              "T_base_camera as x y z (m) qx qy qz qw; default: camera at base origin, REP-103 optical axes"),
    ParamSpec("camera_to_base_from_tf", False, "take T_base_camera from TF instead of camera_to_base: base_frame <- "
              "the camera's optical frame (a URDF's static transform), looked up once per camera frame; frames are "
              "skipped, with a warning, until it is known (needs tf2_ros)"),
    ParamSpec("publish_tf", False, "broadcast odom_frame -> base_frame on /tf", read_only=False),
    ParamSpec("initial_pose", list(IDENTITY_POSE), "pose of base_frame in odom_frame at start and after "
              "~/reset, as x y z (m) qx qy qz qw"),
    ParamSpec("publish_null_when_lost", False, "while tracking is LOST, publish ~/odom with an all-zero pose "
              "and a huge covariance (rtabmap's null odometry) instead of nothing", read_only=False),
    ParamSpec("publish_tracks_cloud", False, "also publish ~/tracks_cloud (sensor_msgs/PointCloud in a "
              "VINS feature layout, tracks_cloud_layout)", read_only=False),
    ParamSpec("tracks_cloud_layout", "vins_mono", "~/tracks_cloud channels: vins_mono (id = track id x cameras + "
              "camera, u, v, velocity_x, velocity_y) or vins_fusion (id, camera_id, u, v, velocity_x, velocity_y, "
              "gx, gy, gz = 0)", choices=("vins_mono", "vins_fusion"), read_only=False),
    ParamSpec("diagnostics_period_s", 1.0, "period of /diagnostics messages (s)", low=0.1, high=60.0),
)

SPECS: dict[str, ParamSpec] = {spec.name: spec for spec in PARAMETERS}


def defaults() -> dict[str, Any]:
    """{name: default} for every parameter (lists are fresh copies)."""
    return {s.name: list(s.default) if isinstance(s.default, list) else s.default for s in PARAMETERS}


def _type_reason(spec: ParamSpec, value: Any) -> str | None:
    kind = spec.kind
    if kind is bool:
        return None if isinstance(value, bool) else f"{spec.name} must be true or false, got {value!r}"
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{spec.name} must be an integer, got {value!r}"
        return None
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, float):
            is_int = isinstance(value, int) and not isinstance(value, bool)
            hint = f" (write {float(value)!r}: ROS parameters are typed)" if is_int else ""
            return f"{spec.name} must be a floating-point number, got {value!r}{hint}"
        if not math.isfinite(value):
            return f"{spec.name} must be finite, got {value!r}"
        return None
    if kind is str:
        return None if isinstance(value, str) else f"{spec.name} must be a string, got {value!r}"
    if kind is list:
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, float) and not isinstance(v, bool) for v in value):
            return f"{spec.name} must be a list of floating-point numbers (write 0.0, not 0), got {value!r}"
        return None
    raise AssertionError(f"unhandled parameter type {kind}")


def validate(name: str, value: Any) -> str | None:
    """Check one parameter value on its own; returns the reason it is invalid, or None if valid.

    Cross-parameter constraints (alpha within [alpha_min, alpha_max], ...) are ``validate_all``'s.
    """
    if name == "use_sim_time":  # declared by rclpy itself; params files often set it
        return None if isinstance(value, bool) else f"use_sim_time must be true or false, got {value!r}"
    if name.startswith("qos_overrides."):  # rclpy's QoS override parameters, checked by rclpy
        return None
    spec = SPECS.get(name)
    if spec is None:
        return f"unknown parameter '{name}'"
    reason = _type_reason(spec, value)
    if reason:
        return reason
    if spec.choices is not None and value not in spec.choices:
        return f"{name} must be one of {', '.join(spec.choices)}; got '{value}'"
    if spec.kind in (int, float):
        if name == "resize_max" and value != 0 and value < 64:
            return f"resize_max must be 0 (no downscale) or 64..8192 px, got {value}"
        if name == "mono_window" and value in (1, 2):
            return f"mono_window must be 0 (off) or 3..20 keyframes (two edges at least), got {value}"
        if name == "max_sharpness_ratio" and 0.0 < value <= 1.0:
            return f"max_sharpness_ratio must be 0 (off) or > 1 (a factor), got {value}"
        if name == "ba_window" and value == 1:
            return "ba_window must be 0 (off) or 2..50 keyframes (a window of 1 has nothing to adjust), got 1"
        if spec.low is not None and value < spec.low:
            return f"{name} must be >= {spec.low}, got {value}"
        if spec.high is not None and value > spec.high:
            return f"{name} must be <= {spec.high}, got {value}"
    if name == "device" and not _DEVICE.match(value):
        return f"device must be auto, cpu, cuda or cuda:N; got '{value}'"
    if name in ("odom_frame", "base_frame") and not _FRAME_ID.match(value):
        return f"{name} must be a non-empty frame id without leading '/' or spaces, got '{value}'"
    if name in ("camera_frame", "right_camera_frame") and value and not _FRAME_ID.match(value):
        return f"{name} must be empty or a frame id without leading '/' or spaces, got '{value}'"
    if name in ("camera_to_base", "initial_pose"):
        if len(value) != 7:
            return f"{name} needs 7 numbers (x y z qx qy qz qw), got {len(value)}"
        if not all(math.isfinite(v) for v in value):
            return f"{name} must be finite, got {list(value)}"
        norm = math.sqrt(sum(v * v for v in value[3:]))
        if abs(norm - 1.0) > 1e-2:
            return f"{name} quaternion (qx qy qz qw) must have unit norm, has {norm:.4f}"
    return None


def validate_all(params: Mapping[str, Any]) -> list[str]:
    """Every reason ``params`` is invalid (empty list when valid): unknown names, each value,
    and the cross-parameter constraints. Missing names are checked with their defaults."""
    merged = defaults()
    merged.update(params)
    reasons = [r for name, value in params.items() if (r := validate(name, value))]
    if reasons:  # cross checks on ill-typed values would only add noise
        return reasons
    if not merged["alpha_min"] <= merged["alpha"] <= merged["alpha_max"]:
        reasons.append(f"need alpha_min <= alpha <= alpha_max, got {merged['alpha_min']} <= "
                       f"{merged['alpha']} <= {merged['alpha_max']}")
    if merged["min_keypoints"] > merged["max_keypoints"]:
        reasons.append(f"need min_keypoints <= max_keypoints, got {merged['min_keypoints']} > "
                       f"{merged['max_keypoints']}")
    if merged["min_inliers"] > merged["min_matches"]:
        reasons.append(f"need min_inliers <= min_matches, got {merged['min_inliers']} > "
                       f"{merged['min_matches']}")
    if merged["features"] == "superpoint" and not merged["extractor_weights"]:
        reasons.append("features 'superpoint' needs extractor_weights (no SuperPoint weights are packaged)")
    return reasons


def unknown_parameter_warnings(given: Iterable[str], declared: Iterable[str]) -> list[str]:
    """A warning for each name in ``given`` (the node's overrides: ``-p`` rules, params-file entries) that the node
    does not declare, with the closest declared name: rcl keeps an unknown override without a word, so a misspelt
    ``max_keypoint:=1024`` would leave ``max_keypoints`` at its default silently.

    declared: the node's declared names (this table's and those rclpy declares itself, e.g.
    ``start_type_description_service``). ``use_sim_time`` and ``qos_overrides.*`` are rclpy's too; the latter are
    declared only when a publisher or subscription asks for them, so they never warn.
    """
    known = sorted(set(declared) | {"use_sim_time"})
    messages = []
    for name in sorted(set(given) - set(known)):
        if name.startswith("qos_overrides."):
            continue
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        messages.append(f"unknown parameter '{name}' ignored (this node does not declare it){hint}")
    return messages


def validate_changes(current: Mapping[str, Any], changes: Mapping[str, Any], lifecycle: bool = False,
                     unconfigured: bool = False) -> list[str]:
    """Reasons to refuse a runtime change (for the on-set-parameters callback).

    current: the node's parameter values now; changes: {name: new value}. Checks each new value,
    that read-only parameters are not changed, and the cross constraints on the merged values.
    A lifecycle node reads its read-only parameters when it is configured: while ``unconfigured`` they change too.
    """
    how = ("set it while the node is unconfigured: cleanup, set, configure" if lifecycle
           else "read-only; restart the node")
    reasons = [] if unconfigured else [f"{name} cannot be changed at runtime ({how})"
                                       for name, value in changes.items()
                                       if name in SPECS and SPECS[name].read_only and value != current.get(name)]
    merged = dict(current)
    merged.update(changes)
    return reasons + validate_all(merged)


def clamp_controlled_alpha(current: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``changes``, with ``alpha`` added where the rate controller owns it and new bounds leave it outside them.

    Under rate control (``target_rate_hz`` > 0, ``early_exit`` on) the ``alpha`` parameter shows the controller's
    value, not one the user set: narrowing ``alpha_min`` / ``alpha_max`` past it moves it to the nearest new bound
    instead of refusing the bounds. A change that sets ``alpha`` itself, bounds that cross, or no rate control:
    ``changes`` as they are (``validate_changes`` judges them)."""
    merged = {**current, **changes}
    if "alpha" in changes or not changes.keys() & {"alpha_min", "alpha_max"}:
        return dict(changes)
    values = [merged.get(k) for k in ("alpha", "alpha_min", "alpha_max", "target_rate_hz")]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return dict(changes)  # an ill-typed value: refused by validate_changes with its own reason
    alpha, low, high, rate = values
    if rate <= 0 or not merged.get("early_exit") or low > high:
        return dict(changes)
    clamped = min(max(alpha, low), high)
    return dict(changes) if clamped == alpha else {**changes, "alpha": float(clamped)}


def _topic_kind(topic: str) -> str | None:
    """'raw' / 'rect' when a segment of ``topic`` is image_pipeline's ``image_raw`` / ``image_rect*`` (RealSense's
    ``image_rect_raw`` is rectified), else None."""
    segments = topic.strip("/").split("/")
    if any(s.startswith("image_rect") for s in segments):
        return "rect"
    if "image_raw" in segments:
        return "raw"
    return None


def topic_warnings(mode: str, rectified_input: bool, stereo_rectify: bool, topics: Mapping[str, str]) -> list[str]:
    """Warnings for image topics whose names (image_pipeline's ``image_raw`` / ``image_rect*``) say the opposite of
    the rectification settings. ``topics``: the resolved (remapped) names of the subscribed image topics, by role
    (``image``, or ``left`` and ``right``). Names that say neither are not judged."""
    out = []
    for role, topic in topics.items():
        kind = _topic_kind(topic)
        if mode == "mono":
            if kind == "rect" and not rectified_input:
                out.append(f"image topic {topic} looks rectified but rectified_input is false: the camera_info's D "
                           "(the raw camera's, with image_proc) would be applied to undistorted points; set "
                           "rectified_input: true")
            elif kind == "raw" and rectified_input:
                out.append(f"image topic {topic} looks raw but rectified_input is true: lens distortion is ignored; "
                           "set rectified_input: false")
        elif kind == "raw" and not stereo_rectify:
            out.append(f"{role} image topic {topic} looks raw but stereo_rectify is false: stereo needs rectified "
                       "pairs; set stereo_rectify: true (the node remaps them with camera_info K, D, R, P)")
        elif kind == "rect" and stereo_rectify:
            out.append(f"{role} image topic {topic} looks rectified but stereo_rectify is true: the images would be "
                       "rectified twice; set stereo_rectify: false")
    return out


def descriptor(spec: ParamSpec, lifecycle: bool = False):
    """rcl_interfaces/ParameterDescriptor for ``spec`` (imports rclpy's message types lazily). ``lifecycle``: the
    read-only parameters are not read-only to rclpy (they change while the node is unconfigured; the node's callback
    refuses them otherwise), and their description says so."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    description = spec.description + (" (set while unconfigured)" if lifecycle and spec.read_only else "")
    desc = ParameterDescriptor(name=spec.name, description=description, read_only=spec.read_only and not lifecycle)
    constraints = []
    if spec.choices:
        constraints.append("one of: " + ", ".join(spec.choices))
    if spec.name == "resize_max":
        constraints.append("0 or 64..8192")
    if spec.name == "ba_window":
        constraints.append("0 or 2..50")
    if spec.name == "mono_window":
        constraints.append("0 or 3..20")
    # rclpy enforces a range only when both ends are set; open ranges are checked by validate()
    if spec.low is not None and spec.high is not None:
        if spec.kind is float:
            desc.floating_point_range = [FloatingPointRange(
                from_value=float(spec.low), to_value=float(spec.high), step=0.0)]
        elif spec.kind is int:
            desc.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)]
    elif spec.low is not None:
        constraints.append(f">= {spec.low}")
    desc.additional_constraints = "; ".join(constraints)
    return desc


def declare_parameters(node, lifecycle: bool = False) -> dict[str, Any]:
    """Declare every parameter on an rclpy node (``lifecycle``: see ``descriptor``); returns {name: value after
    overrides}.

    Raises ValueError listing every problem when the overrides (params file, -p) are invalid,
    so a bad configuration stops the node at startup with all reasons at once.
    """
    values = {}
    for spec in PARAMETERS:
        param = node.declare_parameter(spec.name, defaults()[spec.name], descriptor(spec, lifecycle))
        values[spec.name] = param.value
    reasons = validate_all(values)
    if reasons:
        raise ValueError("invalid parameters:\n  " + "\n  ".join(reasons))
    return values


def _flatten(prefix: str, tree: Mapping[str, Any], out: dict[str, Any]) -> None:
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            _flatten(name + ".", value, out)  # nested YAML maps are dotted ROS names
        else:
            out[name] = value


def _section_applies(key: str, node_name: str | None) -> bool:
    if node_name is None or key in ("/**", "**"):
        return True
    key = key.rstrip("/")
    node_name = node_name.lstrip("/")
    # "name", "/name", "/ns/name", "/**/name" all name the node
    return key.lstrip("/") == node_name or key.endswith("/" + node_name)


def load_params_yaml(path: str | Path, node_name: str | None = None) -> dict[str, Any]:
    """Read a ROS 2 params file into {name: value}.

    The file maps node names (``/**`` for every node, ``name``, ``/ns/name``) to
    ``{ros__parameters: {...}}``; nested maps become dotted names. Sections are merged in file
    order, so a later node-specific section overrides ``/**``. With ``node_name`` only the
    sections that apply to that node are used; with None, all of them.

    Raises ValueError when the file does not have that structure.
    """
    with open(path, encoding="utf-8") as f:
        document = yaml.safe_load(f)
    if not isinstance(document, Mapping) or not document:
        raise ValueError(f"{path}: a params file maps node names to {{ros__parameters: ...}}")
    params: dict[str, Any] = {}
    for key, section in document.items():
        if not isinstance(section, Mapping) or "ros__parameters" not in section:
            raise ValueError(f"{path}: section '{key}' has no 'ros__parameters' key")
        if _section_applies(str(key), node_name):
            _flatten("", section["ros__parameters"] or {}, params)
    return params


def check_params_file(path: str | Path, node_name: str | None = None) -> list[str]:
    """``validate_all`` on a params file (reasons prefixed by the file name)."""
    return [f"{path}: {reason}" for reason in validate_all(load_params_yaml(path, node_name))]


def pose_params_to_matrix(values: list[float]) -> np.ndarray:
    """camera_to_base [x, y, z, qx, qy, qz, qw] -> T_base_camera (4, 4)."""
    from ..geometry import quaternion_to_matrix  # not at the top: launch_config imports this module, without OpenCV

    x, y, z, qx, qy, qz, qw = (float(v) for v in values)
    T = np.eye(4)
    T[:3, :3] = quaternion_to_matrix(np.array([qx, qy, qz, qw]))
    T[:3, 3] = (x, y, z)
    return T


def _rule_value(text: str) -> Any:
    """A ``-p name:=value`` value typed as rcl types it (``1e-3`` is a double, ``0x10`` an int, ``on`` true)."""
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
            reason = validate(name, wanted) or f"{name} is {values[name]!r}"
            reasons.append(f"-p {rule} was not applied (rcl keeps the params-file value {values[name]!r} when the "
                           f"types differ): {reason}")
    return reasons
