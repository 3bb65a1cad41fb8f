"""Which temporal matches continue a feature track: the gate of ``FrameResult.temporal_inliers`` against the truth.

``~/tracks`` hands a reference keypoint's id on only through a temporal match the frame's pose explains (mono: the
essential matrix's inliers; stereo: PnP's inliers among the matches with a depth, the epipolar test at ``TRACK_GATE``
standard deviations for the others). This
runs the trackers offline (no ROS) over the project's rendered sequences, whose depth maps and poses give every
match's truth: a match is right when the reference keypoint, back-projected with its depth and moved with the true
motion, lands within 3 px of the current keypoint, and wrong beyond 10 px (between the two: localisation and
depth-edge effects, counted apart). Prints, per sequence and mode, how many right matches the gate keeps and how
many wrong ones it lets through; ``--swap F`` replaces a seeded fraction F of each frame's temporal matches with
wrong pairings first (a weaker matcher's outliers).

    .venv/bin/python benchmarks/track_gate.py
    .venv/bin/python benchmarks/track_gate.py --matcher orb --swap 0.2 --json out/track_gate_orb_swap.json
    .venv/bin/python benchmarks/track_gate.py --kitti ../shared/data/kitti_seq1 --json out/track_gate_kitti.json

``--kitti DIR``: real images without per-match truth. The stereo tracker (``config/stereo.yaml``'s options, as the
node maps them) runs over the clip, and two ``TrackManager``s build tracks from its results, one through the gated
matches (the node now) and one through every temporal match (the node before). Each track seen in three or more
frames is triangulated from all its left observations with the ground-truth poses; a track whose worst
reprojection error exceeds ``--broken-px`` joins observations no single scene point explains (an outlier fused
two points, or the ground truth is off there: both managers see the same ground truth).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from mambaglue_ros import geometry as G
from mambaglue_ros.synthetic import make_sequence
from mambaglue_ros.tracking import MonoTracker, StereoTracker
from mambaglue_ros.types import MatchResult

RIGHT_PX, WRONG_PX = 3.0, 10.0


class SwappedTemporal:
    """Wraps a matcher: a seeded fraction of the matches of every pair except a stereo pair's left/right one (the two
    images extracted last, in order) paired with another match's keypoint."""

    def __init__(self, matcher, fraction: float, stereo: bool, seed: int = 0) -> None:
        self.matcher, self.fraction, self.stereo = matcher, fraction, stereo
        self.rng = np.random.default_rng(seed)
        self.extracted: list = []

    def __getattr__(self, name):
        return getattr(self.matcher, name)

    def extract(self, image):
        f = self.matcher.extract(image)
        self.extracted = (self.extracted + [f])[-2:]
        return f

    def match_features(self, f0, f1) -> MatchResult:
        r = self.matcher.match_features(f0, f1)
        left_right = self.stereo and len(self.extracted) == 2 and f0 is self.extracted[0] and f1 is self.extracted[1]
        if left_right or self.fraction <= 0 or len(r.matches) < 2:
            return r
        m = np.array(r.matches, copy=True)
        pick = self.rng.choice(len(m), int(self.fraction * len(m)), replace=False)
        m[pick, 1] = m[np.roll(pick, 1), 1]
        return MatchResult(r.keypoints0, r.keypoints1, m, r.scores, r.stop_layer, r.num_layers, r.timings_ms)


def truth_errors_px(result, reference, current, K: np.ndarray) -> np.ndarray:
    """(M,) pixel distance of each temporal match's current keypoint from where its reference keypoint really went."""
    p0, p1 = result.temporal.points0, result.temporal.points1
    h, w = reference.depth.shape
    z = reference.depth[np.clip(np.round(p0[:, 1]).astype(int), 0, h - 1), np.clip(np.round(p0[:, 0]).astype(int), 0, w - 1)]
    X0 = np.c_[p0, np.ones(len(p0))] @ np.linalg.inv(K).T * z[:, None]
    T_10 = G.invert(current.T_world_left) @ reference.T_world_left
    X1 = X0 @ T_10[:3, :3].T + T_10[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        proj = X1 @ K.T
        proj = proj[:, :2] / proj[:, 2:]
        err = np.linalg.norm(proj - p1, axis=1)
    return np.where(np.isfinite(err), err, np.inf)


def run(trajectory: str, mode: str, matcher_name: str, keypoints: int, swap: float, frames: int) -> dict:
    from mambaglue_ros import Matcher
    from mambaglue_ros.baselines import OrbMatcher

    seq = make_sequence(n_frames=frames, rate_hz=10.0, stereo=True, trajectory=trajectory, seed=0, noise_std=2.0)
    K = seq.rig.K
    base = OrbMatcher(max_keypoints=keypoints) if matcher_name == "orb" else Matcher(features="xfeat",
                                                                                         max_keypoints=keypoints)
    matcher = SwappedTemporal(base, swap, stereo=mode == "stereo")
    tracker = (StereoTracker(matcher, K, K, seq.rig.T_left_right, {}) if mode == "stereo" else MonoTracker(matcher, K, {}))
    by_stamp, counts = {}, dict(right=0, right_kept=0, wrong=0, wrong_kept=0, between=0, between_kept=0, posed=0)
    for i in range(len(seq)):
        f = seq.frame(i)
        by_stamp[f.stamp_ns] = f
        r = tracker.process(f.left, f.right, f.stamp_ns) if mode == "stereo" else tracker.process(f.left, f.stamp_ns)
        if r.temporal_inliers is None:
            continue
        counts["posed"] += 1
        err = truth_errors_px(r, by_stamp[r.reference_stamp_ns], f, K)
        kept = r.temporal_inliers
        for name, sel in (("right", err < RIGHT_PX), ("wrong", err > WRONG_PX),
                          ("between", (err >= RIGHT_PX) & (err <= WRONG_PX))):
            counts[name] += int(sel.sum())
            counts[name + "_kept"] += int((sel & kept).sum())
    return counts


def triangulate_track(K: np.ndarray, T_world_cams: list[np.ndarray], pixels: np.ndarray) -> np.ndarray:
    """(n,) reprojection errors [px] of the linear (DLT) triangulation of one track's observations."""
    rows, Ps = [], []
    for T, (u, v) in zip(T_world_cams, pixels):
        P = K @ G.invert(T)[:3]
        Ps.append(P)
        rows += [u * P[2] - P[0], v * P[2] - P[1]]
    X = np.linalg.svd(np.asarray(rows))[2][-1]
    if abs(X[3]) < 1e-12:
        return np.full(len(pixels), np.inf)
    # the reprojection as a projective map: a far point whose linear fit lands behind the cameras (noise) projects
    # where it should; only consistency is tested here, not cheirality
    errors = []
    for P, p in zip(Ps, pixels):
        x = P @ X
        errors.append(np.inf if abs(x[2]) < 1e-12 * np.linalg.norm(x) else float(np.linalg.norm(x[:2] / x[2] - p)))
    return np.asarray(errors)


def kitti_tracks(sequence: Path, mode: str, keypoints: int, frames: int, broken_px: float, params: str) -> dict:
    """Tracks through the gated matches against tracks through every match, on real images (module docstring)."""
    import types

    from mambaglue_ros import Matcher
    from mambaglue_ros.mono_scale import FramePeriod
    from mambaglue_ros.ros import params as P
    from mambaglue_ros.ros.node import MatcherNode
    from mambaglue_ros.tracks import TrackManager

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from stereo_diagnosis import load_kitti, read_gray  # noqa: E402

    if not all((Path(sequence) / f).exists() for f in ("calib.txt", "poses.txt")):
        raise SystemExit(f"{sequence}: not a KITTI odometry folder (calib.txt, poses.txt, image_l/ and image_r/)")
    data = load_kitti(sequence)
    config = MatcherNode._tracking_config(types.SimpleNamespace(p={**P.defaults(), **P.load_params_yaml(params)}))
    matcher = Matcher(features="xfeat", max_keypoints=keypoints)
    camera = FramePeriod()  # the camera's frame period, as the node feeds it from every frame it receives
    tracker = (StereoTracker(matcher, data["K"], data["K_right"], data["T_left_right"], config, frame_period=camera)
               if mode == "stereo" else MonoTracker(matcher, data["K"], config, frame_period=camera))
    names = ("gated (now)", "every match (before)")
    managers = {name: TrackManager() for name in names}
    seen: dict[str, dict[int, list]] = {name: {} for name in names}
    for i in range(min(frames, len(data["left"]))):
        camera.observe(i * 100_000_000)
        left = read_gray(data["left"][i])
        r = (tracker.process(left, read_gray(data["right"][i]), i * 100_000_000) if mode == "stereo"
             else tracker.process(left, i * 100_000_000))
        links = dict(zip(names, (r.track_links(), None if r.temporal is None else r.temporal.matches)))
        for name, manager in managers.items():
            f = manager.update(i * 100_000_000, r.keypoints, r.keypoints, links[name], r.reference_stamp_ns,
                               r.is_keyframe, live_references=r.live_references)
            left = f.camera == 0
            for tid, px in zip(f.ids[left], f.pixels[left]):
                seen[name].setdefault(int(tid), []).append((i, px))
    out = {}
    for name, tracks in seen.items():
        long = [obs for obs in tracks.values() if len(obs) >= 3]
        worst = np.array([triangulate_track(data["K"], [data["poses"][i] for i, _ in obs],
                                            np.array([px for _, px in obs])).max() for obs in long])
        out[name] = {"tracks_3plus": len(long), "broken": int((worst > broken_px).sum()),
                     "mean_length": float(np.mean([len(o) for o in long])) if long else 0.0,
                     "median_worst_px": float(np.median(worst)) if len(worst) else 0.0}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trajectories", nargs="+", default=["forward", "orbit"])
    ap.add_argument("--modes", nargs="+", default=["mono", "stereo"], choices=["mono", "stereo"])
    ap.add_argument("--matcher", default="mambaglue", choices=["mambaglue", "orb"])
    ap.add_argument("--keypoints", type=int, default=512)
    ap.add_argument("--swap", type=float, default=0.0, help="fraction of each frame's temporal matches made wrong")
    ap.add_argument("--frames", type=int, default=25)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--kitti", type=Path, help="a KITTI odometry folder (image_l, image_r, calib.txt, poses.txt)")
    ap.add_argument("--broken-px", type=float, default=5.0)
    ap.add_argument("--params", default=None, help="--kitti: the node's params file (default config/MODE.yaml)")
    args = ap.parse_args()
    if args.kitti:
        import torch

        torch.set_num_threads(1)
        print(f"KITTI {args.kitti.name}, {args.keypoints} keypoints | tracks seen in >= 3 frames | worst "
              f"reprojection > {args.broken_px:g} px (GT poses) | mean length | median worst px", flush=True)
        result = {}
        for mode in args.modes:
            params = args.params or ("config/stereo.yaml" if mode == "stereo" else "config/matcher.yaml")
            result[mode] = kitti_tracks(args.kitti, mode, args.keypoints, 10_000, args.broken_px, params)
            for name, c in result[mode].items():
                print(f"{mode:6s} {name:22s} | {c['tracks_3plus']} | {c['broken']} "
                      f"({c['broken'] / max(c['tracks_3plus'], 1):.3f}) | {c['mean_length']:.2f} | "
                      f"{c['median_worst_px']:.2f}", flush=True)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "kitti": result},
                                            indent=1))
        return
    rows = []
    print(f"{args.matcher}, {args.keypoints} keypoints, swapped {args.swap:.0%} | right (< {RIGHT_PX:g} px) kept | "
          f"wrong (> {WRONG_PX:g} px) kept | {RIGHT_PX:g}-{WRONG_PX:g} px kept")
    for trajectory in args.trajectories:
        for mode in args.modes:
            c = run(trajectory, mode, args.matcher, args.keypoints, args.swap, args.frames)
            rows.append({"trajectory": trajectory, "mode": mode, **c})
            share = lambda k: f"{c[k + '_kept']}/{c[k]} ({c[k + '_kept'] / max(c[k], 1):.3f})"  # noqa: E731
            print(f"{trajectory:8s} {mode:6s} ({c['posed']} posed frames) | {share('right')} | {share('wrong')} | "
                  f"{share('between')}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
