"""Mono window refinement (``mono_window``) against the pairwise poses on the synthetic sequences.

Runs ``MonoTracker`` offline (no ROS) with the real matcher on ``synthetic.make_sequence`` (mono,
each trajectory kind) once per ``mono_window`` value, on the same matches (cached in memory), and
prints per setting the rotation and translation-direction errors of every mono pose against the
ground truth ``T_ref_cur`` (mean and median, degrees; rotation-only poses are left out of the
direction column) and the median pose time. Scale is not compared: mono steps are unit length.

    .venv/bin/python benchmarks/mono_window.py --frames 40 --windows 0 3 4
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stereo_diagnosis import CachingMatcher, make_matcher  # noqa: E402

from mambaglue_ros.geometry import rotation_angle_deg, translation_direction_error_deg  # noqa: E402
from mambaglue_ros.synthetic import make_sequence  # noqa: E402
from mambaglue_ros.tracking import MonoTracker  # noqa: E402


def run(matcher, frames, K, poses, window: int, policy: str) -> dict[str, float]:
    tracker = MonoTracker(matcher, K, {"policy": policy, "mono_window": window})
    stamp_to_index, rot, dirs, ms = {}, [], [], []
    for i, f in enumerate(frames):
        stamp_to_index[f.stamp_ns] = i
        r = tracker.process(f.left, f.stamp_ns)
        if r.pose is None:
            continue
        j = stamp_to_index[r.reference_stamp_ns]
        T = np.linalg.inv(poses[j]) @ poses[i]
        rot.append(rotation_angle_deg(r.pose.R, T[:3, :3]))
        if np.linalg.norm(r.pose.t) > 0:
            dirs.append(translation_direction_error_deg(r.pose.t, T[:3, 3]))
        ms.append(r.timings_ms.get("pose", np.nan))
    return {"poses": len(rot), "rot_mean": float(np.mean(rot)), "rot_median": float(np.median(rot)),
            "dir_mean": float(np.mean(dirs)), "dir_median": float(np.median(dirs)),
            "pose_ms": float(np.median(ms))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--windows", type=int, nargs="+", default=[0, 4])
    ap.add_argument("--trajectories", nargs="+", default=["orbit", "forward", "figure8"])
    ap.add_argument("--policy", default="previous", choices=("previous", "keyframe"))
    ap.add_argument("--method", default="mambaglue", choices=("mambaglue", "lightglue", "orb"))
    ap.add_argument("--features", default="xfeat")
    ap.add_argument("--max-keypoints", type=int, default=1024)
    args = ap.parse_args()
    matcher = CachingMatcher(make_matcher(args.method, args.features, args.max_keypoints), None)
    print("| trajectory | mono_window | poses | rot deg mean | rot deg median | dir deg mean | dir deg median "
          "| pose ms (median) |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in args.trajectories:
        seq = make_sequence(n_frames=args.frames, stereo=False, trajectory=kind)
        frames = list(seq)
        for w in args.windows:
            m = run(matcher, frames, frames[0].K, seq.poses_world_left, w, args.policy)
            print(f"| {kind} | {w} | {m['poses']} | {m['rot_mean']:.3f} | {m['rot_median']:.3f} | "
                  f"{m['dir_mean']:.2f} | {m['dir_median']:.2f} | {m['pose_ms']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
