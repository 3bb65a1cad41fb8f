"""Stereo VO diagnosis on a KITTI sequence: where does the metric scale go wrong?

Runs ``StereoTracker`` offline (no ROS) with the real matcher on a KITTI odometry folder
(``image_l``/``image_0``, ``image_r``/``image_1``, ``calib.txt``, ``poses.txt``) and measures:

1. End to end (the tracker as the node runs it): per-frame step-length ratio |t_est| / |t_gt|
   (median, range), ATE and RPE (%/m, deg/m over >= 1 m) from ``bags.metrics``.
2. Depth bias per depth band. The ground-truth depth of a stereo point at frame i comes from the
   ground-truth motion: its left pixel at i and the pixel of the same keypoint at i+k (chained
   temporal matches, k <= 3) are triangulated with the ground-truth pose ``T_i_{i+k}``. Only
   points whose temporal parallax pins the depth at least twice as tightly as the stereo
   disparity does (``--gt-sensitivity``) are used. Per band: median depth ratio stereo/GT and the
   median disparity error (stereo - GT) in pixels.
3. PnP translation vs depth errors (frame pairs i-1 -> i): the median step ratio of the PnP
   with the stereo depths (equal pixel weights, and weighted by each point's depth covariance),
   with only near (< 20 m) points, with only far points, and with the GT depths put in for the
   same points (what is left is the PnP's own contribution).

Matcher outputs are cached (``--cache``), so re-running the analysis after a geometry change
costs seconds. Example:

    .venv/bin/python benchmarks/stereo_diagnosis.py ../shared/data/kitti_seq1 --json out/stereo_diag.json
    .venv/bin/python benchmarks/stereo_diagnosis.py ../shared/data/kitti_seq1 --set policy=previous
"""
from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

NS = 1_000_000_000


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def load_kitti(seq: str | Path) -> dict[str, Any]:
    """Image paths, rectified calibration (K, baseline) and ground-truth poses ``T_0_i`` (N, 4, 4)."""
    from mambaglue_ros.bags.convert import read_kitti_calib, read_kitti_poses

    seq = Path(seq)
    left = next(seq / d for d in ("image_l", "image_0") if (seq / d).is_dir())
    right = next(seq / d for d in ("image_r", "image_1") if (seq / d).is_dir())
    files = sorted(p.name for p in left.iterdir() if p.suffix.lower() == ".png")
    calib = read_kitti_calib(seq / "calib.txt")
    P0, P1 = calib["P0"], calib["P1"]
    T_lr = np.eye(4)
    T_lr[0, 3] = -(P1[0, 3] - P0[0, 3]) / P1[0, 0]
    poses = read_kitti_poses(seq / "poses.txt")
    return {"left": [left / f for f in files], "right": [right / f for f in files], "K": P0[:, :3].copy(),
            "K_right": P1[:, :3].copy(), "T_left_right": T_lr, "poses": poses[:len(files)]}


def read_gray(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise FileNotFoundError(path)
    return img


class CachingMatcher:
    """Memoises ``extract`` (by image content) and ``match_features`` (by keypoint content) of a
    matcher, on disk: the analysis can be re-run on the same matches without the network."""

    def __init__(self, matcher: Any, path: Path | None) -> None:
        self.matcher, self.path = matcher, path
        self.features = matcher.features
        self.cache: dict[str, Any] = {"extract": {}, "match": {}}
        if path is not None and path.is_file():
            self.cache = pickle.loads(path.read_bytes())
        self.dirty = False

    alpha = property(lambda self: self.matcher.alpha)
    max_keypoints = property(lambda self: self.matcher.max_keypoints)

    @staticmethod
    def _key(*arrays: np.ndarray) -> str:
        h = hashlib.sha1()
        for a in arrays:
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()

    def extract(self, image: np.ndarray):
        key = self._key(image)
        if key not in self.cache["extract"]:
            self.cache["extract"][key] = self.matcher.extract(image)
            self.dirty = True
        return self.cache["extract"][key]

    def match_features(self, f0, f1):
        key = self._key(f0.keypoints.cpu().numpy(), f1.keypoints.cpu().numpy())
        if key not in self.cache["match"]:
            self.cache["match"][key] = self.matcher.match_features(f0, f1)
            self.dirty = True
        return self.cache["match"][key]

    def save(self) -> None:
        if self.path is not None and self.dirty:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_bytes(pickle.dumps(self.cache))
            self.dirty = False


def make_matcher(method: str, features: str, max_keypoints: int):
    if method == "orb":
        from mambaglue_ros.baselines import OrbMatcher

        return OrbMatcher(max_keypoints=max_keypoints)
    from mambaglue_ros import Matcher

    options: dict[str, Any] = {}
    weights = None
    if method == "lightglue":
        options.update(mixer="attention", regressor="linear")
        weights = "lightglue"
    return Matcher(features=features, weights=weights, device="cpu", max_keypoints=max_keypoints, alpha=0.95,
                   filter_threshold=0.1, **options)


def add_sequence_arguments(ap: argparse.ArgumentParser, folder_help: str, cache: str) -> None:
    """The arguments of the frame-pattern benchmarks (mono_scale, stereo_gaps): a KITTI folder or ``--synthetic``
    trajectories (``sequence_sources``), and the matcher ``cached_matcher`` makes."""
    ap.add_argument("sequence", nargs="?", help=f"KITTI folder ({folder_help})")
    ap.add_argument("--synthetic", nargs="+", default=None, metavar="TRAJECTORY",
                    help="rendered sequences instead (forward, orbit, figure8)")
    ap.add_argument("--method", default="mambaglue", choices=("mambaglue", "lightglue", "orb"))
    ap.add_argument("--features", default="xfeat")
    ap.add_argument("--keypoints", type=int, default=512)
    ap.add_argument("--cache", default=cache, help="matcher outputs ('' = none)")


def sequence_sources(ap: argparse.ArgumentParser, args: Any, synthetic_data: Callable[[str], dict]
                     ) -> dict[str, Callable[[], dict]]:
    """Name -> loader of each sequence ``add_sequence_arguments`` asked for: "kitti", or one per trajectory."""
    if (args.sequence is None) == (args.synthetic is None):
        ap.error("give a KITTI folder or --synthetic (one of them)")
    if args.sequence:
        return {"kitti": lambda: load_kitti(args.sequence)}
    return {t: (lambda t=t: synthetic_data(t)) for t in args.synthetic}


def cached_matcher(args: Any, on_disk: bool = True) -> CachingMatcher:
    """The benchmarks' matcher (``args.method``, ``.features``, ``.keypoints``) behind a cache of its outputs, on disk
    at ``args.cache`` + the matcher's name when ``on_disk`` and a path is given (rendered images are made again each
    run, so they get a cache in memory only)."""
    cache = Path(f"{args.cache}.{args.method}_{args.features}_{args.keypoints}") if args.cache and on_disk else None
    return CachingMatcher(make_matcher(args.method, args.features, args.keypoints), cache)


# ---------------------------------------------------------------------------------------------
# 1. End to end
# ---------------------------------------------------------------------------------------------
def run_tracker(data: dict[str, Any], matcher: Any, config: dict[str, Any], frames: int | None = None
                ) -> dict[str, Any]:
    """StereoTracker over the sequence: trajectory, per-frame results, step ratios, metrics."""
    from mambaglue_ros.bags import metrics as M
    from mambaglue_ros.tracking import StereoTracker

    tracker = StereoTracker(matcher, data["K"], data["K_right"], data["T_left_right"], config)
    n = len(data["left"]) if frames is None else min(frames, len(data["left"]))
    stamps = np.arange(n, dtype=np.int64) * (NS // 10)
    index_of = {int(s): k for k, s in enumerate(stamps)}
    poses, rows = [], []
    t_pose = []
    for k in range(n):
        res = tracker.process(read_gray(data["left"][k]), read_gray(data["right"][k]), int(stamps[k]))
        poses.append(res.T_odom_cam.copy())
        t_pose.append(res.timings_ms.get("pose", np.nan))
        row = {"frame": k, "ok": res.pose is not None, "reason": res.reason, "inliers": res.num_inliers,
               "inlier_ratio": res.inlier_ratio, "keyframe": res.is_keyframe}
        if res.pose is not None and res.reference_stamp_ns is not None:
            r = index_of[int(res.reference_stamp_ns)]
            T_gt = np.linalg.inv(data["poses"][r]) @ data["poses"][k]
            row.update(ref=r, ratio=float(np.linalg.norm(res.pose.t) / max(np.linalg.norm(T_gt[:3, 3]), 1e-9)),
                       gt_step_m=float(np.linalg.norm(T_gt[:3, 3])))
        rows.append(row)
    if hasattr(matcher, "save"):
        matcher.save()
    est = M.Trajectory(stamps, np.array(poses))
    gt = M.Trajectory(stamps, data["poses"][:n])
    ev = M.evaluate(est, gt, "se3")
    ratios = np.array([r["ratio"] for r in rows if "ratio" in r])
    s = ev["summary"]
    return {"rows": rows, "poses": np.array(poses), "ratios": ratios, "summary": {
        "frames": n, "poses": int(sum(r["ok"] for r in rows)), "ate_m": s["ate_m"],
        "rpe_pct_per_m": 100 * s["rpe_trans_per_m"], "rpe_deg_per_m": s["rpe_rot_deg_per_m"],
        "ratio_median": float(np.median(ratios)) if len(ratios) else None,
        "ratio_min": float(ratios.min()) if len(ratios) else None,
        "ratio_max": float(ratios.max()) if len(ratios) else None,
        "mean_inlier_ratio": float(np.mean([r["inlier_ratio"] for r in rows if r["ok"]] or [np.nan])),
        "pose_ms_median": float(np.nanmedian(t_pose))}}


# ---------------------------------------------------------------------------------------------
# 2. Depth bias per band, ground truth from the ground-truth motion
# ---------------------------------------------------------------------------------------------
def _triangulate_on_ray(p0: np.ndarray, pk: np.ndarray, K: np.ndarray, T_0_k: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Depth along the left rays of ``p0`` (frame 0) that best explains ``pk`` (frame k) given the
    pose ``T_0_k``: (N,) depth and (N,) sensitivity |d pixel_k / d depth| [px per m]."""
    Kinv = np.linalg.inv(K)
    rays = np.c_[p0, np.ones(len(p0))] @ Kinv.T  # z = 1
    T_k_0 = np.linalg.inv(T_0_k)
    R, t = T_k_0[:3, :3], T_k_0[:3, 3]
    a = rays @ R.T  # X_k = Z a + t
    xk = np.c_[pk, np.ones(len(pk))] @ Kinv.T
    # pixel_k ~ (Z a + t); linear least squares on the two cross-product rows per point
    # x (Z a_z + t_z) = Z a_x + t_x  ->  Z (a_x - x a_z) = x t_z - t_x (same for y)
    A = np.stack([a[:, 0] - xk[:, 0] * a[:, 2], a[:, 1] - xk[:, 1] * a[:, 2]], axis=1)
    b = np.stack([xk[:, 0] * t[2] - t[0], xk[:, 1] * t[2] - t[1]], axis=1)
    Z = np.sum(A * b, axis=1) / np.maximum(np.sum(A * A, axis=1), 1e-18)
    # sensitivity of the projected pixel to Z at the solution
    X = Z[:, None] * a + t
    dX = a
    zx = np.where(np.abs(X[:, 2]) < 1e-9, 1e-9, X[:, 2])
    du = (dX[:, :2] * zx[:, None] - X[:, :2] * dX[:, 2:3]) / zx[:, None] ** 2
    sens = K[0, 0] * np.linalg.norm(du, axis=1)
    return Z, sens


def depth_bias(data: dict[str, Any], matcher: Any, config: dict[str, Any], frames: int | None = None,
               max_hops: int = 3, min_sensitivity_ratio: float = 2.0) -> dict[str, Any]:
    """Stereo depth vs ground-truth-motion depth per point (see the module docstring)."""
    from mambaglue_ros.tracking import StereoTracker

    tr = StereoTracker(matcher, data["K"], data["K_right"], data["T_left_right"], config)
    n = len(data["left"]) if frames is None else min(frames, len(data["left"]))
    feats, stereo3d = [], []
    for k in range(n):
        img_l, img_r = read_gray(data["left"][k]), read_gray(data["right"][k])
        fl, fr = matcher.extract(img_l), matcher.extract(img_r)
        st = matcher.match_features(fl, fr)
        X, has = tr._triangulate(st, len(fl), img_l, img_r)
        # the disparity the tracker used: from its depth (sub-pixel refined when stereo_refine is on)
        disp = np.where(has, data["K"][0, 0] * data["T_left_right"][0, 3] / np.where(has, X[:, 2], 1.0), np.nan)
        feats.append(fl)
        stereo3d.append((X, has, disp))
    temporal = [matcher.match_features(feats[k], feats[k + 1]) for k in range(n - 1)]
    if hasattr(matcher, "save"):
        matcher.save()
    fb = data["K"][0, 0] * data["T_left_right"][0, 3]
    rows = []  # (frame, z_stereo, z_gt, disp_stereo, disp_gt, sens_gt)
    for i in range(n - 1):
        X, has, disp = stereo3d[i]
        kp0 = feats[i].keypoints.cpu().numpy().astype(np.float64)
        src = np.nonzero(has)[0]
        cur = src.copy()
        alive = np.ones(len(src), dtype=bool)
        best_z = np.full(len(src), np.nan)
        best_s = np.zeros(len(src))
        for hop in range(1, max_hops + 1):
            j = i + hop
            if j >= n:
                break
            m = temporal[j - 1].matches
            lut = np.full(len(feats[j - 1]), -1, dtype=np.int64)
            lut[m[:, 0]] = m[:, 1]
            nxt = np.where(alive, lut[np.where(alive, cur, 0)], -1)
            alive &= nxt >= 0
            cur = np.where(alive, nxt, 0)
            if not alive.any():
                break
            kpj = feats[j].keypoints.cpu().numpy().astype(np.float64)
            T_i_j = np.linalg.inv(data["poses"][i]) @ data["poses"][j]
            Z, sens = _triangulate_on_ray(kp0[src[alive]], kpj[cur[alive]], data["K"], T_i_j)
            better = sens > best_s[alive]
            idx = np.nonzero(alive)[0][better]
            best_z[idx], best_s[idx] = Z[better], sens[better]
        zs = X[src, 2]
        # the stereo sensitivity at the GT depth, not at the stereo depth: selecting by the stereo
        # depth would favour points whose disparity came out too small (depth too long)
        stereo_sens = fb / np.where(np.isfinite(best_z) & (best_z > 0), best_z, np.inf) ** 2
        ok = np.isfinite(best_z) & (best_z > 0) & (best_s >= min_sensitivity_ratio * stereo_sens)
        for a in np.nonzero(ok)[0]:
            rows.append((i, zs[a], best_z[a], disp[src[a]], fb / best_z[a], best_s[a]))
    arr = np.array(rows).reshape(-1, 6)
    bands = [(0, 10), (10, 20), (20, 40), (40, 80), (80, 1e9)]
    out = []
    for lo, hi in bands:
        sel = (arr[:, 2] >= lo) & (arr[:, 2] < hi)
        if sel.sum() == 0:
            out.append({"band_m": [lo, hi], "n": 0})
            continue
        ratio = arr[sel, 1] / arr[sel, 2]
        derr = arr[sel, 3] - arr[sel, 4]
        out.append({"band_m": [lo, hi if hi < 1e8 else None], "n": int(sel.sum()),
                    "depth_ratio_median": float(np.median(ratio)),
                    "depth_ratio_mean": float(np.mean(np.clip(ratio, 0, 5))),
                    "disparity_err_px_median": float(np.median(derr)),
                    "disparity_err_px_mad": float(1.4826 * np.median(np.abs(derr - np.median(derr))))})
    all_derr = arr[:, 3] - arr[:, 4]
    return {"bands": out, "points": int(len(arr)),
            "disparity_err_px_median": float(np.median(all_derr)) if len(arr) else None,
            "disparity_err_px_mad": float(1.4826 * np.median(np.abs(all_derr - np.median(all_derr)))) if len(arr)
            else None, "rows": arr}


# ---------------------------------------------------------------------------------------------
# 3. PnP translation vs depth errors
# ---------------------------------------------------------------------------------------------
def pnp_vs_depth(data: dict[str, Any], matcher: Any, config: dict[str, Any], bias: dict[str, Any],
                 frames: int | None = None, near_m: float = 20.0) -> dict[str, Any]:
    """Median step ratio of frame-to-frame PnP with: the stereo depths (all, near, far), and the
    ground-truth-motion depths put in for the points that have one (same points, same pixels)."""
    from mambaglue_ros.geometry import estimate_pose_pnp
    from mambaglue_ros.tracking import StereoTracker

    tr = StereoTracker(matcher, data["K"], data["K_right"], data["T_left_right"], config)
    n = len(data["left"]) if frames is None else min(frames, len(data["left"]))
    cfg = tr.config
    gt_rows = bias["rows"]
    baseline = float(np.linalg.norm(data["T_left_right"][:3, 3]))
    results: dict[str, list[float]] = {"stereo_all": [], "stereo_all_weighted": [], "stereo_near": [], "stereo_far": [],
                                       "same_pts_stereo": [], "same_pts_gt_depth": []}
    prev = None
    for k in range(n):
        img_l, img_r = read_gray(data["left"][k]), read_gray(data["right"][k])
        fl, fr = matcher.extract(img_l), matcher.extract(img_r)
        X, has = tr._triangulate(matcher.match_features(fl, fr), len(fl), img_l, img_r)
        if prev is not None:
            fl0, X0, has0 = prev
            m = matcher.match_features(fl0, fl)
            i0, i1 = m.matches[:, 0], m.matches[:, 1]
            w = has0[i0]
            P3, p1 = X0[i0[w]], m.keypoints1[i1[w]].astype(np.float64)
            T_gt = np.linalg.inv(data["poses"][k - 1]) @ data["poses"][k]
            gl = float(np.linalg.norm(T_gt[:3, 3]))

            def ratio(P: np.ndarray, p: np.ndarray, weighted: bool = False) -> float:
                pose, _ = estimate_pose_pnp(P, p, data["K"], ransac_px=cfg["pnp_ransac_px"],
                                            confidence=cfg["confidence"], min_matches=12, min_inliers=8,
                                            baseline=baseline if weighted else None,
                                            pixel_sigma_px=cfg["pixel_sigma_px"])
                return np.nan if pose is None else float(np.linalg.norm(pose.t) / gl)

            results["stereo_all"].append(ratio(P3, p1))
            results["stereo_all_weighted"].append(ratio(P3, p1, weighted=True))
            near = P3[:, 2] < near_m
            results["stereo_near"].append(ratio(P3[near], p1[near]))
            results["stereo_far"].append(ratio(P3[~near], p1[~near]))
            # GT-motion depths for the same keypoints (frame k-1 rows of the bias table)
            sel = gt_rows[:, 0] == k - 1
            zs_gt = {round(float(z), 9): zg for z, zg in zip(gt_rows[sel, 1], gt_rows[sel, 2])}
            has_gt = np.array([round(float(z), 9) in zs_gt for z in P3[:, 2]])
            if has_gt.sum() >= 12:
                Pg = P3[has_gt] * (np.array([zs_gt[round(float(z), 9)] for z in P3[has_gt, 2]]) / P3[has_gt, 2])[:, None]
                results["same_pts_stereo"].append(ratio(P3[has_gt], p1[has_gt]))
                results["same_pts_gt_depth"].append(ratio(Pg, p1[has_gt]))
        prev = (fl, X, has)
    return {name: {"median": float(np.nanmedian(v)) if np.isfinite(v).any() else None,
                   "mean": float(np.nanmean(v)) if np.isfinite(v).any() else None, "n": int(np.isfinite(v).sum())}
            for name, v in ((k, np.array(v, dtype=float)) for k, v in results.items())}


# ---------------------------------------------------------------------------------------------
def tracking_options(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> tracking options, each value of its default's type (``DEFAULT_TRACKING_CONFIG``;
    booleans as true / false). ValueError naming the bad item: no ``=``, an unknown key, a value of the wrong type."""
    from mambaglue_ros.tracking import DEFAULT_TRACKING_CONFIG

    options: dict[str, Any] = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r}: expected KEY=VALUE")
        if key not in DEFAULT_TRACKING_CONFIG:
            raise ValueError(f"{item!r}: unknown tracking option {key!r}")
        default = DEFAULT_TRACKING_CONFIG[key]
        if isinstance(default, bool):
            if value.lower() not in ("true", "false"):
                raise ValueError(f"{item!r}: {key} is true or false")
            options[key] = value.lower() == "true"
        elif isinstance(default, (int, float)):
            try:
                options[key] = type(default)(float(value))
            except ValueError:
                raise ValueError(f"{item!r}: {key} is a number") from None
        else:
            options[key] = value
    return options


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("seq", help="KITTI sequence folder (image_l|image_0, image_r|image_1, calib.txt, poses.txt)")
    ap.add_argument("--method", default="mambaglue", choices=("mambaglue", "lightglue", "orb"))
    ap.add_argument("--features", default="xfeat")
    ap.add_argument("--max-keypoints", type=int, default=1024)
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--policy", default="keyframe", choices=("keyframe", "previous"))
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="tracking config overrides")
    ap.add_argument("--cache", default="out/stereo_diag/cache_{method}_{features}_{kp}.pkl")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip", nargs="*", default=[], choices=("depth", "pnp"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    data = load_kitti(args.seq)
    config: dict[str, Any] = {"policy": args.policy, "min_inliers": 15}
    try:
        config.update(tracking_options(args.set))
    except ValueError as error:
        ap.error(f"--set: {error}")
    cache = Path(args.cache.format(method=args.method, features=args.features, kp=args.max_keypoints))
    matcher = CachingMatcher(make_matcher(args.method, args.features, args.max_keypoints), cache)
    t0 = time.perf_counter()
    e2e = run_tracker(data, matcher, config, args.frames)
    s = e2e["summary"]
    print(f"[{args.method}] end to end ({config}): {s['poses']}/{s['frames'] - 1} poses, ATE {s['ate_m']:.3f} m, "
          f"RPE {s['rpe_pct_per_m']:.2f} %/m {s['rpe_deg_per_m']:.4f} deg/m, step ratio median "
          f"{s['ratio_median']:.4f} [{s['ratio_min']:.3f}, {s['ratio_max']:.3f}], inlier ratio "
          f"{s['mean_inlier_ratio']:.2f}, pose {s['pose_ms_median']:.1f} ms ({time.perf_counter() - t0:.0f} s)")
    report: dict[str, Any] = {"method": args.method, "features": args.features, "config": config,
                              "end_to_end": s, "step_ratios": e2e["ratios"].round(4).tolist()}
    if "depth" not in args.skip:
        bias = depth_bias(data, matcher, config, args.frames)
        print(f"depth vs GT-motion depth: {bias['points']} points, disparity error median "
              f"{bias['disparity_err_px_median']:+.3f} px (MAD {bias['disparity_err_px_mad']:.3f})")
        print(f"  {'band m':>10} {'n':>5} {'Z ratio med':>11} {'mean':>6} {'disp err px':>11} {'MAD':>6}")
        for b in bias["bands"]:
            lo, hi = b["band_m"]
            if b["n"]:
                label = f"{lo}-{hi if hi else 'inf'}"
                print(f"  {label:>10} {b['n']:5d} {b['depth_ratio_median']:11.4f} "
                      f"{b['depth_ratio_mean']:6.3f} {b['disparity_err_px_median']:+11.3f} "
                      f"{b['disparity_err_px_mad']:6.3f}")
        report["depth_bias"] = {k: v for k, v in bias.items() if k != "rows"}
        if "pnp" not in args.skip:
            pnp = pnp_vs_depth(data, matcher, config, bias, args.frames)
            print("frame-to-frame PnP step ratio (median over frames):")
            for name, v in pnp.items():
                print(f"  {name:20} {v['median'] if v['median'] is not None else float('nan'):.4f} (n={v['n']})")
            report["pnp_vs_depth"] = pnp
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
