"""Stereo odometry when the node skips frames: the PnP RANSAC's inlier test (``pnp_ransac``) per frame pattern.

A node on a CPU that cannot keep up takes the latest frame, so consecutive processed frames of a car are metres
apart. Runs ``StereoTracker`` offline (no ROS) with the real matcher on a KITTI odometry folder, or on this
project's rendered stereo sequences (``--synthetic``: the textured room, baseline 0.11 m, 0.5 m/s, 40 frames), once
per frame pattern and ``pnp_ransac`` mode (the other tracking options as the node gets them from
``config/stereo.yaml``), and prints SE(3)-aligned ATE, RPE (%/m and deg/m over >= 1 m;
``bags.metrics``), the frames without a pose, those the covariance gate rescued (``auto``), the median PnP inliers
(pixel- and chi-square-gated counts are not comparable) and the median pose time. Patterns of a 10 Hz camera: every frame,
every 3rd, every 5th, seeded irregular gaps of 4-6 frames (a node at ~2 Hz). Every mode sees the same matches
(the matcher's outputs are cached), so the table isolates the pose estimate.

    .venv/bin/python benchmarks/stereo_gaps.py ../shared/data/kitti_seq1 --json out/stereo_gaps_512.json
    .venv/bin/python benchmarks/stereo_gaps.py --synthetic forward orbit figure8 --json out/stereo_gaps_synthetic.json
    .venv/bin/python benchmarks/stereo_gaps.py ../shared/data/kitti_seq1 --gate-analysis   # why the pixel gate fails
    .venv/bin/python benchmarks/stereo_gaps.py ../shared/data/kitti_seq1 --bad-frames --json out/stereo_bad_frames.json

``--bad-frames``: every frame processed, but every 12th from frame 12 (with a burst of 3 also the two after each,
where they fit) degraded in both images as a camera degrades them (``BAD_FRAMES``): a horizontal motion blur, the
left 80 % of the image covered, an exposure 12x too short. What bad frames cost the odometry, per ``pnp_ransac``
mode; ``--set max_lost_frames=0 --without-camera-period`` gives the tracker of before 2026-12-05 (a frame without
a pose became the reference; ``auto`` also took the covariance gate against the previous frame). The ``posed``
columns score only the frames with a pose (what ``~/odom`` publishes, besides the first frame: the origin); the others count a frame without a pose at
the last pose (``FrameResult.T_odom_cam``), where the odometry stands still over it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stereo_diagnosis import (NS, add_sequence_arguments, cached_matcher, load_kitti, tracking_options,  # noqa: E402
                              read_gray, sequence_sources)


def frame_patterns(n: int, seed: int = 0) -> dict[str, list[int]]:
    rng = np.random.default_rng(seed)
    gaps, i = [], 0
    while i < n:
        gaps.append(i)
        i += int(rng.integers(4, 7))
    return {"all": list(range(n)), "every 3rd": list(range(0, n, 3)), "every 5th": list(range(0, n, 5)),
            "gaps 4-6": gaps}


def motion_blur(img: np.ndarray) -> np.ndarray:
    """A horizontal box blur over 41 px (a pan or a bump during a long exposure)."""
    import cv2

    return cv2.blur(img, (41, 1))


def covered(img: np.ndarray) -> np.ndarray:
    """The left 80 % of the image black (something in front of the lens)."""
    out = img.copy()
    out[:, : int(0.8 * img.shape[1])] = 0
    return out


def underexposed(img: np.ndarray) -> np.ndarray:
    """An exposure 12x too short: intensities x 0.08, rounded down to 8 bit."""
    return (img.astype(np.float32) * 0.08).astype(img.dtype)


BAD_FRAMES = {"blur": motion_blur, "covered": covered, "dark": underexposed}


def bad_frame_scenarios(n: int, every: int = 12, bursts: tuple[int, ...] = (1, 3)) -> dict[str, dict[int, Callable]]:
    """Name -> {frame index: degradation} of ``--bad-frames``: each degradation at every ``every``-th frame (from
    frame ``every``), alone or with the frames after it (burst)."""
    out: dict[str, dict[int, Callable]] = {"clean": {}}
    for name, degrade in BAD_FRAMES.items():
        for burst in bursts:
            out[f"{name} x{burst}"] = {k + j: degrade for k in range(every, n - burst, every) for j in range(burst)}
    return out


def synthetic_data(trajectory: str, n: int = 40) -> dict:
    """A rendered stereo sequence as ``load_kitti`` returns KITTI: gray images in memory, calibration, poses."""
    import cv2

    from mambaglue_ros.synthetic import make_sequence

    seq = make_sequence(n_frames=n, rate_hz=10.0, stereo=True, trajectory=trajectory, seed=0, baseline_m=0.11,
                        speed_mps=0.5)
    frames = list(seq)
    gray = [(cv2.cvtColor(f.left, cv2.COLOR_RGB2GRAY), cv2.cvtColor(f.right, cv2.COLOR_RGB2GRAY)) for f in frames]
    return {"left": [g[0] for g in gray], "right": [g[1] for g in gray], "K": seq.rig.K.copy(),
            "K_right": seq.rig.K.copy(), "T_left_right": seq.rig.T_left_right.copy(),
            "poses": np.array([f.T_world_left for f in frames])}


def image(item):
    return read_gray(item) if isinstance(item, Path) else item


def run(data: dict, matcher, frames: list[int], config: dict, degrade: dict[int, Callable] | None = None,
        camera_period: bool = True) -> dict:
    """StereoTracker over ``frames``; ``degrade``: frame index -> function applied to both of its images. With
    ``camera_period`` the tracker's frame period sees every frame's stamp (10 Hz), also the skipped ones', as the
    node's image callback does."""
    from mambaglue_ros.bags import metrics as M
    from mambaglue_ros.mono_scale import FramePeriod
    from mambaglue_ros.tracking import StereoTracker

    camera = FramePeriod() if camera_period else None
    tracker = StereoTracker(matcher, data["K"], data["K_right"], data["T_left_right"], config, frame_period=camera)
    stamps = np.array(frames, dtype=np.int64) * (NS // 10)
    poses, failed, rescued, inliers, pose_ms, reasons, posed = [], 0, 0, [], [], [], []
    seen = 0  # camera frames whose stamps the period has seen
    for k, stamp in zip(frames, stamps):
        for j in range(seen, k + 1 if camera is not None else 0):
            camera.observe(j * (NS // 10))
        seen = max(seen, k + 1)
        left, right = image(data["left"][k]), image(data["right"][k])
        if degrade and k in degrade:
            left, right = degrade[k](left), degrade[k](right)
        res = tracker.process(left, right, int(stamp))
        poses.append(res.T_odom_cam.copy())
        if "pose" in res.timings_ms:
            pose_ms.append(res.timings_ms["pose"])
        posed.append(res.pose is not None or k == frames[0])
        if res.pose is not None:
            inliers.append(res.num_inliers)
            rescued += "covariance gate" in res.reason  # auto: the pixel gate had too few inliers
        elif k != frames[0]:
            failed += 1
            reasons.append(res.reason)
    summary = M.evaluate(M.Trajectory(stamps, np.array(poses)), M.Trajectory(stamps, data["poses"][frames]),
                         alignment="se3")["summary"]
    per_m = summary["rpe_trans_per_m"]
    # what ~/odom publishes: the frames with a pose, and the first (a frame without one keeps the last pose above, where the odometry
    # stands still over it; here it is left out)
    keep = np.array(posed)
    posed_summary = M.evaluate(M.Trajectory(stamps[keep], np.array(poses)[keep]),
                               M.Trajectory(stamps[keep], data["poses"][frames][keep]), alignment="se3")["summary"]
    posed_per_m = posed_summary["rpe_trans_per_m"]
    return {"frames": len(frames), "failed": failed, "rescued": rescued,
            "ate_posed_m": posed_summary["ate_m"] if posed_summary["ate_m"] is not None else float("nan"),
            "rpe_posed_pct_per_m": 100.0 * posed_per_m if posed_per_m is not None else float("nan"),
            "inliers_median": float(np.median(inliers)) if inliers else 0.0,
            "pose_ms_median": float(np.median(pose_ms)) if pose_ms else float("nan"),
            "ate_m": summary["ate_m"] if summary["ate_m"] is not None else float("nan"),
            "rpe_pct_per_m": 100.0 * per_m if per_m is not None else float("nan"),
            "rpe_deg_per_m": summary["rpe_rot_deg_per_m"] if per_m is not None else float("nan"), "reasons": reasons}


def gate_analysis(data: dict, matcher, strides: tuple[int, ...] = (1, 3, 5), starts: range = range(0, 40, 8)
                  ) -> list[dict]:
    """Why the pixel gate fails on long steps: per frame pair (a, a + stride), the temporal matches whose reference
    point has a stereo depth, how many of them reproject within 2 px under the ground-truth motion, and how many lie
    within the chi-square gate of the covariance-whitened error (``geometry.whitened_reprojection_chi2``)."""
    from mambaglue_ros.geometry import CHI2_2DOF_99, stereo_point_covariance, whitened_reprojection_chi2
    from mambaglue_ros.tracking import StereoTracker

    tracker = StereoTracker(matcher, data["K"], data["K_right"], data["T_left_right"], {})
    K, baseline = data["K"], float(np.linalg.norm(data["T_left_right"][:3, 3]))

    def frame(k: int):
        left, right = image(data["left"][k]), image(data["right"][k])
        fl, fr = matcher.extract(left), matcher.extract(right)
        points, has3d = tracker._triangulate(tracker._match_stereo(fl, fr), len(fl), left, right)
        return fl, points, has3d

    rows = []
    for stride in strides:
        for a in starts:
            b = a + stride
            fa, Pa, ha = frame(a)
            fb, _, _ = frame(b)
            m = matcher.match_features(fa, fb)
            i0, i1 = m.matches[:, 0], m.matches[:, 1]
            sel = ha[i0]
            X, p = Pa[i0[sel]], m.keypoints1[i1[sel]]
            T_ba = np.linalg.inv(data["poses"][b]) @ data["poses"][a]  # frame a -> frame b coordinates
            X1 = X @ T_ba[:3, :3].T + T_ba[:3, 3]
            pixel_err = np.linalg.norm(X1[:, :2] / X1[:, 2:] * np.diag(K)[:2] + K[:2, 2] - p, axis=1)
            cov = stereo_point_covariance(X, K, baseline, 1.0, np.sqrt(2.0))
            chi2 = whitened_reprojection_chi2(T_ba[None, :3, :3], T_ba[None, :3, 3], X, cov, p, K, 1.0)[0]
            rows.append({"stride": stride, "pair": [a, b], "with_depth": int(sel.sum()),
                         "within_2px": int(np.sum(pixel_err < 2.0)), "within_gate": int(np.sum(chi2 < CHI2_2DOF_99))})
            print(f"frames {a:>2} -> {b:>2}: matches with a depth {rows[-1]['with_depth']:>3}, within 2 px "
                  f"{rows[-1]['within_2px']:>3}, within the gate {rows[-1]['within_gate']:>3}", flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_sequence_arguments(ap, "image_l/image_0, image_r/image_1, calib.txt, poses.txt",
                           "out/cache/stereo_gaps_matches.pkl")
    ap.add_argument("--modes", nargs="+", default=["pixel", "auto", "covariance"])
    ap.add_argument("--patterns", nargs="+", default=None, help="subset of the pattern names")
    ap.add_argument("--params", default="config/stereo.yaml",
                    help="node params file whose tracking options the tracker gets, as the node maps them")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="tracking options over those (tracking.DEFAULT_TRACKING_CONFIG)")
    ap.add_argument("--gate-analysis", action="store_true",
                    help="instead: per frame pair 1, 3 and 5 apart, the matched points within 2 px / within the "
                         "covariance gate of their reprojection by the ground-truth motion (KITTI)")
    ap.add_argument("--without-camera-period", action="store_true",
                    help="the tracker without the camera's frame period: pnp_ransac auto takes the covariance gate "
                         "wherever the pixel gate fails, also against the previous frame (before 2026-12-05)")
    ap.add_argument("--bad-frames", action="store_true",
                    help="instead of frame patterns: every frame, some of them degraded (module docstring)")
    ap.add_argument("--bad-frames-stride", type=int, default=1, metavar="N",
                    help="with --bad-frames: every N-th frame only (a node that skips frames; the degraded frames, "
                         "every 12th, are among those processed for N = 2, 3, 4, 6)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.bad_frames_stride < 1:
        ap.error(f"--bad-frames-stride must be >= 1, got {args.bad_frames_stride}")
    import torch

    from mambaglue_ros.tracking import validate_tracking_config

    torch.set_num_threads(1)
    sources = sequence_sources(ap, args, synthetic_data)
    # the params file's tracking options, mapped as the node maps them (e.g. ransac_px -> the PnP threshold)
    import types

    from mambaglue_ros.ros import params as P
    from mambaglue_ros.ros.node import MatcherNode

    node_params = {**P.defaults(), **P.load_params_yaml(args.params)}
    base = MatcherNode._tracking_config(types.SimpleNamespace(p=node_params))
    base.pop("pnp_ransac")  # the mode under test
    try:
        base.update(tracking_options(args.set))
        for mode in args.modes:
            validate_tracking_config({**base, "pnp_ransac": mode})  # bad options fail before any work
    except ValueError as error:
        ap.error(f"--set: {error}")
    if args.gate_analysis:
        if not args.sequence:
            ap.error("--gate-analysis needs a KITTI folder")
        matcher = cached_matcher(args)
        rows = gate_analysis(load_kitti(args.sequence), matcher)
        matcher.save()
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({"keypoints": args.keypoints, "gate_analysis": rows}, indent=1))
        return 0
    rows = []
    print(f"{'sequence':<9} {'pattern':<10} {'pnp_ransac':<11} {'frames':>6} {'no pose':>7} {'rescued':>7} "
          f"{'inliers':>7} {'pose ms':>7} {'ATE m':>8} {'RPE %/m':>8} {'deg/m':>7} {'posed: ATE m':>12} {'RPE %/m':>8}")
    for source, load in sources.items():
        data = load()
        matcher = cached_matcher(args, on_disk=source == "kitti")
        n = len(data["left"])
        every = list(range(0, n, args.bad_frames_stride))
        cases = ({name: (every, bad) for name, bad in bad_frame_scenarios(n).items()} if args.bad_frames
                 else {name: (frames, None) for name, frames in frame_patterns(n).items()})
        for name, (frames, degrade) in cases.items():
            if args.patterns and name not in args.patterns:
                continue
            for mode in args.modes:
                r = run(data, matcher, frames, {**base, "pnp_ransac": mode}, degrade, not args.without_camera_period)
                rows.append({"sequence": source, "pattern": name, "pnp_ransac": mode, **r})
                print(f"{source:<9} {name:<10} {mode:<11} {r['frames']:>6} {r['failed']:>7} {r['rescued']:>7} "
                      f"{r['inliers_median']:>7.0f} {r['pose_ms_median']:>7.1f} {r['ate_m']:>8.4f} "
                      f"{r['rpe_pct_per_m']:>8.2f} {r['rpe_deg_per_m']:>7.3f} {r['ate_posed_m']:>12.4f} "
                      f"{r['rpe_posed_pct_per_m']:>8.2f}", flush=True)
        matcher.save()
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"keypoints": args.keypoints, "method": args.method,
                                               "features": args.features, "config": base, "rows": rows}, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
