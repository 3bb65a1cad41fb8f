"""Time of the mono pose (``geometry.estimate_pose_mono``) on real matches, against a git revision of it.

Renders the synthetic forward sequence the node benchmark uses (640x480), matches each frame with the frame
``stride`` later (XFeat + the shipped MambaGlue, 512 keypoints: the node's defaults; the node at ~5 Hz on a
20 Hz camera matches frames four apart), then times ``estimate_pose_mono`` of this checkout and, with
``--baseline-rev``, of ``mambaglue_ros/geometry.py`` at that revision, interleaved pair by pair so that a
change in machine load hits both alike. Prints the medians, the ratio and the largest pose difference.

    .venv/bin/python benchmarks/pose_time.py --baseline-rev HEAD~1 --strides 1 4
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_geometry_at(rev: str):
    """``mambaglue_ros/geometry.py`` as it was at ``rev``, imported as a module of the package (its relative
    imports resolve to this checkout's other modules)."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:mambaglue_ros/geometry.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="geometry_rev_")) / "geometry_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("mambaglue_ros._geometry_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline-rev", help="git revision whose geometry.py to time against (e.g. HEAD~1)")
    ap.add_argument("--strides", type=int, nargs="+", default=[1, 4], help="frame gaps of the matched pairs")
    ap.add_argument("--keypoints", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import numpy as np
    import torch

    from mambaglue_ros import Matcher
    from mambaglue_ros import geometry
    from mambaglue_ros.evaluation.bench import device_name
    from mambaglue_ros.synthetic import make_sequence

    torch.set_num_threads(1)
    print(f"host: {device_name(torch.device('cpu'))}", flush=True)
    versions = {"this checkout": geometry}
    if args.baseline_rev:
        versions[args.baseline_rev] = load_geometry_at(args.baseline_rev)
    frames = list(make_sequence(n_frames=20, rate_hz=20, stereo=False, trajectory="forward", seed=0))
    matcher = Matcher(features="xfeat", max_keypoints=args.keypoints)
    feats = [matcher.extract(f.left) for f in frames]
    K = frames[0].K
    print(f"{'stride':>6} {'pairs':>5} {'matches':>7}  " + "  ".join(f"{name + ' ms':>18}" for name in versions)
          + ("  ratio  max pose difference (rot / dir deg)" if len(versions) > 1 else ""))
    for stride in args.strides:
        pairs = [matcher.match_features(feats[i], feats[i + stride]) for i in range(len(frames) - stride)]
        times = {name: [] for name in versions}
        worst = [0.0, 0.0]
        for _ in range(args.repeats):
            for r in pairs:
                poses = {}
                for name, module in versions.items():
                    t0 = time.perf_counter()
                    poses[name], _ = module.estimate_pose_mono(r.points0, r.points1, K, K)
                    times[name].append((time.perf_counter() - t0) * 1e3)
                found = [p for p in poses.values() if p is not None]
                if len(found) == 2:
                    worst[0] = max(worst[0], geometry.rotation_angle_deg(found[0].R, found[1].R))
                    worst[1] = max(worst[1], geometry.translation_direction_error_deg(found[0].t, found[1].t))
        med = {name: statistics.median(v) for name, v in times.items()}
        line = (f"{stride:>6} {len(pairs):>5} {int(np.median([len(r) for r in pairs])):>7}  "
                + "  ".join(f"{med[name]:>18.1f}" for name in versions))
        if len(versions) > 1:
            a, b = list(med.values())
            line += f"  {a / b:5.2f}  {worst[0]:.5f} / {worst[1]:.5f}"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
