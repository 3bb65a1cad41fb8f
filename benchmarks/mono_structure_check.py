#!/usr/bin/env python3
"""Mono: does the reference's triangulated structure tell a wrong essential-matrix pose from a right one?

Mono odometry accepted wrong poses on blurred frames (docs/results.md, *Frames without a pose*): the essential matrix
of a sharp reference against a blurred frame keeps most matches as inliers for a pose far off (the tracker now
refuses such pairs by their images' sharpness, ``max_sharpness_ratio``; this runs it without that gate). This runs
``MonoTracker`` (``mono_scale: depth``, so every reference keeps its keypoints' depths at the odometry's scale) over
a KITTI folder with the degraded frames of ``stereo_gaps.py --bad-frames`` and prints, per frame, the essential
matrix's error against the ground truth (translation direction and rotation, degrees) and its inliers, next to a PnP
pose of the same matches on the reference's depths (OpenCV EPnP in RANSAC at ``--pnp-px``, refined): its error and
how many matches with a depth agree with the structure; and how many agree with the essential matrix's own pose (its
rotation and direction, the step length that explains the most of them). A summary splits the frames into pairs with
a degraded frame and clean pairs. It measures; it changes nothing in the tracker.

    .venv/bin/python benchmarks/mono_structure_check.py ../shared/data/kitti_seq1 --scenarios clean "blur x1"
"""
from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import numpy as np

from mambaglue_ros.geometry import rotation_angle_deg, translation_direction_error_deg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stereo_diagnosis import cached_matcher, load_kitti, read_gray  # noqa: E402
from stereo_gaps import bad_frame_scenarios  # noqa: E402


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle between two directions with the sign ignored, degrees (``geometry.translation_direction_error_deg``)."""
    error = translation_direction_error_deg(a, b)
    return min(error, 180.0 - error)


def structure_pnp(ref, match, x_cur: np.ndarray, focal: float, pnp_px: float):
    """PnP of the current frame on the reference's depths: (R, t) as T_ref_cur, inliers, matches with a depth; None
    with fewer than 8 such matches or no consensus."""
    import cv2

    m = np.asarray(match.matches, dtype=np.int64).reshape(-1, 2)
    depth = ref.depths.depth[m[:, 0]]
    ok = np.isfinite(depth) & (depth > 0)
    if ok.sum() < 8:
        return None
    obj = (ref.rays[m[ok, 0]] * depth[ok, None]).astype(np.float64)
    img = x_cur[m[ok, 1], :2].astype(np.float64)
    found, rvec, tvec, inliers = cv2.solvePnPRansac(obj, img, np.eye(3), None, reprojectionError=pnp_px / focal,
                                                    iterationsCount=500, confidence=0.999, flags=cv2.SOLVEPNP_EPNP)
    if not found or inliers is None or len(inliers) < 6:
        return None
    rvec, tvec = cv2.solvePnPRefineLM(obj[inliers[:, 0]], img[inliers[:, 0]], np.eye(3), None, rvec, tvec)
    R_cur_ref = cv2.Rodrigues(rvec)[0]  # x_cur = R x_ref + t
    return R_cur_ref.T, -R_cur_ref.T @ tvec.ravel(), len(inliers), int(ok.sum())


def pose_consensus(ref, match, x_cur: np.ndarray, R: np.ndarray, t: np.ndarray, focal: float, gate_px: float) -> int:
    """How many matches with a reference depth the pose ``T_ref_cur`` = (R, unit t) reprojects within ``gate_px``,
    at the step length that explains the most (each match's own least-squares length tried in turn)."""
    m = np.asarray(match.matches, dtype=np.int64).reshape(-1, 2)
    depth = ref.depths.depth[m[:, 0]]
    ok = np.isfinite(depth) & (depth > 0)
    X = ref.rays[m[ok, 0]] * depth[ok, None]
    u, v = x_cur[m[ok, 1], 0], x_cur[m[ok, 1], 1]
    a, b = X @ R, np.broadcast_to(R.T @ (t / np.linalg.norm(t)), X.shape)  # x_cur ~ R^T X - s R^T t
    c = np.stack([u * a[:, 2] - a[:, 0], v * a[:, 2] - a[:, 1]], 1)
    d = np.stack([u * b[:, 2] - b[:, 0], v * b[:, 2] - b[:, 1]], 1)
    lengths = (c * d).sum(1) / np.maximum((d * d).sum(1), 1e-12)
    best = 0
    for s in lengths[np.isfinite(lengths)]:
        p = a - s * b
        with np.errstate(all="ignore"):
            err = np.hypot(p[:, 0] / p[:, 2] - u, p[:, 1] / p[:, 2] - v) * focal
        best = max(best, int(np.sum((err < gate_px) & (p[:, 2] > 0))))
    return best


def run(data: dict, matcher, degrade: dict, pnp_px: float) -> list[dict]:
    from mambaglue_ros.tracking import MonoTracker

    rows: list[dict] = []

    class Probe(MonoTracker):  # every posed edge goes through _step_length with its reference and matches
        def _step_length(self, ref, match, pose, x_cur, stamp_ns):
            structure = ref.depths is not None and ref.rays is not None and np.linalg.norm(pose.t) > 0
            focal = float(self.K[0, 0])
            rows.append({"stamp": int(stamp_ns), "ref": int(ref.stamp_ns), "R": pose.R.copy(), "t": pose.t.copy(),
                         "inliers": int(pose.num_inliers), "matches": int(pose.num_matches),
                         "pnp": structure_pnp(ref, match, x_cur, focal, pnp_px) if structure else None,
                         "e_structure": pose_consensus(ref, match, x_cur, pose.R, pose.t, focal, pnp_px)
                         if structure else None})
            return super()._step_length(ref, match, pose, x_cur, stamp_ns)

    # without the sharpness gate (max_sharpness_ratio, 2026-12-06), which refuses the poses this looks at
    tracker = Probe(matcher, data["K"], {"mono_scale": "depth", "max_sharpness_ratio": 0.0})
    n = len(data["left"])
    stamps = [i * 100_000_000 for i in range(n)]
    index = {s: i for i, s in enumerate(stamps)}
    for i in range(n):
        img = read_gray(data["left"][i])
        tracker.process(degrade[i](img) if i in degrade else img, stamps[i])
    out = []
    for r in rows:
        i, j = index[r["stamp"]], index[r["ref"]]
        if not np.linalg.norm(r["t"]) > 0:
            continue  # a rotation-only pose has no direction
        T = np.linalg.inv(data["poses"][j]) @ data["poses"][i]  # T_ref_cur
        row = {"frame": i, "ref": j, "degraded": i in degrade or j in degrade,
               "e_dir": angle_deg(r["t"], T[:3, 3]), "e_rot": rotation_angle_deg(r["R"], T[:3, :3]),
               "e_inliers": r["inliers"], "matches": r["matches"]}
        if r["pnp"] is not None:
            R, t, inl, with_depth = r["pnp"]
            row.update(pnp_dir=angle_deg(t, T[:3, 3]), pnp_rot=rotation_angle_deg(R, T[:3, :3]), pnp_inliers=inl,
                       with_depth=with_depth, e_structure=r["e_structure"])
        out.append(row)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sequence", help="KITTI folder (image_l or image_0, calib.txt, poses.txt)")
    ap.add_argument("--scenarios", nargs="+", default=["clean", "blur x1", "blur x3"],
                    help="stereo_gaps.py --bad-frames scenarios (clean, blur x1, covered x3, ...)")
    ap.add_argument("--pnp-px", type=float, default=2.0, help="PnP RANSAC threshold, pixels")
    ap.add_argument("--features", default="xfeat")
    ap.add_argument("--keypoints", type=int, default=512)
    ap.add_argument("--cache", default="", help="matcher outputs on disk ('' = none)")
    args = ap.parse_args()
    if not (Path(args.sequence) / "poses.txt").is_file():
        ap.error(f"{args.sequence}: not a KITTI folder with ground truth (poses.txt missing)")
    unknown = [n for n in args.scenarios if n not in bad_frame_scenarios(2)]
    if unknown:
        ap.error(f"unknown scenarios {unknown}; choose from {sorted(bad_frame_scenarios(2))}")
    import torch

    torch.set_num_threads(1)
    data = load_kitti(args.sequence)
    matcher = cached_matcher(types.SimpleNamespace(method="mambaglue", features=args.features,
                                                   keypoints=args.keypoints, cache=args.cache))
    scenarios = bad_frame_scenarios(len(data["left"]))
    for name in args.scenarios:
        rows = run(data, matcher, scenarios[name], args.pnp_px)
        print(f"\n{name}: degraded frames {sorted(scenarios[name])}\n")
        print("| frame | ref | degraded | E: dir err ° | rot err ° | inliers / matches | on the structure | PnP: dir "
              "err ° | rot err ° | inliers / with depth |\n|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            pnp = (f"{r['e_structure']} | {r['pnp_dir']:.2f} | {r['pnp_rot']:.2f} | {r['pnp_inliers']} / "
                   f"{r['with_depth']}" if "pnp_dir" in r else "- | - | - | -")
            print(f"| {r['frame']} | {r['ref']} | {'yes' if r['degraded'] else ''} | {r['e_dir']:.2f} | "
                  f"{r['e_rot']:.2f} | {r['e_inliers']} / {r['matches']} | {pnp} |")
        for degraded in (False, True):
            sel = [r for r in rows if r["degraded"] == degraded and "pnp_dir" in r]
            if not sel:
                continue
            inl = np.array([r["pnp_inliers"] for r in sel])
            ratio = inl / np.array([r["with_depth"] for r in sel])
            e_ratio = np.array([r["e_inliers"] / r["matches"] for r in sel])
            e_on = np.array([r["e_structure"] for r in sel])
            print(f"{'pairs with a degraded frame' if degraded else 'clean pairs'} ({len(sel)}): E direction error "
                  f"median {np.median([r['e_dir'] for r in sel]):.2f}°, max {max(r['e_dir'] for r in sel):.2f}°; "
                  f"E inlier ratio {e_ratio.min():.2f}-{e_ratio.max():.2f}; PnP inliers {inl.min()}-{inl.max()}, "
                  f"ratio {ratio.min():.2f}-{ratio.max():.2f}; E on the structure {e_on.min()}-{e_on.max()} points, "
                  f"{(e_on / inl).min():.2f}-{(e_on / inl).max():.2f} of PnP's")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
