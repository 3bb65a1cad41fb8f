"""Mono pose cost and accuracy against how many seeded MAGSAC runs it makes (``estimate_pose_mono(settle=...)``).

Matches consecutive frames once (XFeat + the shipped MambaGlue), then runs ``estimate_pose_mono`` on each pair
with every ``--settle`` value in turn (interleaved, so load hits all alike; ``pose_hypotheses`` 6 as the
node's default): settle 0 = every one of the 6 seeds, settle k = stop once k runs in a row did not lower
the best MSAC cost. Prints per dataset and setting: median / p95 ms, MAGSAC runs per pair (counted at
OpenCV's findEssentialMat), median rotation and translation-direction errors against ground truth, pose
AUC@5/10 deg, and on how many pairs the pose differs from settle 0 by more than 0.01 deg.

Datasets: the KITTI clip (frames t, t+1; ground truth from poses.txt) when present, and the synthetic room
sequences (forward, orbit, figure-8 at 10 Hz: hard, low-parallax, several basins per pair).

    .venv/bin/python benchmarks/pose_mono.py [--kitti ../shared/data/kitti_seq1] [--settle 0,2,3] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from mambaglue_ros import geometry as G
from mambaglue_ros.evaluation.pose import kitti_datasets, pose_auc, pose_errors
from mambaglue_ros.matcher import Matcher
from mambaglue_ros.paths import data_root
from mambaglue_ros.synthetic import make_sequence


def matched_pairs(matcher: Matcher, kitti: Path | None, synthetic: int) -> dict[str, list]:
    """{dataset: [(pts0, pts1, K, T_0_1)]} of matched consecutive frames."""
    out: dict[str, list] = {}
    if kitti is not None and kitti.is_dir():
        ds = kitti_datasets(kitti, steps=(1,))[0]
        rows = []
        for p in ds.pairs:
            r = matcher.match(ds.load(p.image0), ds.load(p.image1))
            rows.append((r.points0.astype(np.float64), r.points1.astype(np.float64), p.K0, p.T_0_1))
        out["kitti_k1"] = rows
    for trajectory in ("forward", "orbit", "figure8"):
        frames = list(make_sequence(n_frames=2 * synthetic, rate_hz=20.0, stereo=False, trajectory=trajectory,
                                    seed=1))[::2]  # 10 Hz: what the node processes of a 20 Hz camera here
        rows = []
        for a, b in zip(frames[:-1], frames[1:]):
            r = matcher.match(a.left, b.left)
            rows.append((r.points0.astype(np.float64), r.points1.astype(np.float64), a.K,
                         np.linalg.inv(a.T_world_left) @ b.T_world_left))
        out[f"synthetic_{trajectory}"] = rows
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kitti", default=str(data_root() / "kitti_seq1"))
    ap.add_argument("--settle", default="0,2,3", help="settle values to compare (0 = every seed)")
    ap.add_argument("--hypotheses", type=int, default=G.DEFAULT_POSE_HYPOTHESES)
    ap.add_argument("--keypoints", type=int, default=512)
    ap.add_argument("--synthetic", type=int, default=15, help="pairs per synthetic trajectory")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    settles = [int(s) for s in args.settle.split(",")]
    matcher = Matcher(features="xfeat", max_keypoints=args.keypoints, device="cpu")
    data = matched_pairs(matcher, Path(args.kitti), args.synthetic)

    runs = []
    find = cv2.findEssentialMat

    def counting(*a, **k):
        runs.append(1)
        return find(*a, **k)

    cv2.findEssentialMat = counting  # geometry calls cv2.findEssentialMat: count the MAGSAC runs
    report: dict[str, dict] = {}
    try:
        for name, rows in data.items():
            stats = {s: {"ms": [], "runs": [], "poses": []} for s in settles}
            for rep in range(args.repeats):
                for pts0, pts1, K, _ in rows:
                    for s in settles:
                        runs.clear()
                        t0 = time.perf_counter()
                        pose, _ = G.estimate_pose_mono(pts0, pts1, K, K, hypotheses=args.hypotheses, settle=s)
                        stats[s]["ms"].append((time.perf_counter() - t0) * 1e3)
                        if rep == 0:
                            stats[s]["runs"].append(len(runs))
                            stats[s]["poses"].append(pose)
            report[name] = {}
            base = stats[settles[0]]["poses"]
            for s in settles:
                errs = [pose_errors(T, p) for (_, _, _, T), p in zip(rows, stats[s]["poses"])]
                err_R = [e[0] for e in errs]
                err_t = [e[1] for e in errs]
                changed = sum(
                    (a is None) != (b is None) or (a is not None and b is not None and (
                        G.rotation_angle_deg(a.R, b.R) > 0.01
                        or (np.linalg.norm(a.t) > 0 and np.linalg.norm(b.t) > 0
                            and G.translation_direction_error_deg(a.t, b.t) > 0.01)))
                    for a, b in zip(stats[s]["poses"], base))
                report[name][str(s)] = {
                    "pairs": len(rows), "ms_median": float(np.median(stats[s]["ms"])),
                    "ms_p95": float(np.percentile(stats[s]["ms"], 95)), "magsac_runs_mean": float(np.mean(stats[s]["runs"])),
                    "rot_err_median_deg": float(np.median(err_R)), "dir_err_median_deg": float(np.median(err_t)),
                    "auc5_10": [float(a) for a in pose_auc(np.maximum(err_R, err_t), (5.0, 10.0))],
                    f"changed_vs_settle_{settles[0]}": int(changed)}
    finally:
        cv2.findEssentialMat = find

    print(f"mono pose, XFeat + MambaGlue at {args.keypoints} keypoints, pose_hypotheses {args.hypotheses}, "
          f"{args.repeats} timing repeats")
    print("| dataset | settle | pairs | ms median / p95 | MAGSAC runs | rot err med deg | dir err med deg | "
          f"AUC@5/10 | differs from settle {settles[0]} |")
    print("|---|---:|---:|---|---:|---:|---:|---|---:|")
    for name, per in report.items():
        for s, r in per.items():
            print(f"| {name} | {s} | {r['pairs']} | {r['ms_median']:.1f} / {r['ms_p95']:.1f} | {r['magsac_runs_mean']:.2f} "
                  f"| {r['rot_err_median_deg']:.3f} | {r['dir_err_median_deg']:.2f} | "
                  f"{r['auc5_10'][0]:.3f} / {r['auc5_10'][1]:.3f} | {r[f'changed_vs_settle_{settles[0]}']} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
