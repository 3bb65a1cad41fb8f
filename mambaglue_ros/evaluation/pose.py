"""Relative pose on real sequences: MambaGlue vs LightGlue vs ORB, pose AUC at 5/10/20 degrees.

    mambaglue eval-pose --features xfeat|aliked|disk --methods mambaglue,lightglue,orb[,mambaglue@PATH] \\
        [--euroc DIR] [--kitti DIR] [--kitti-steps 1,3,5] [--stride N] [--max-pairs N] [--ransac-px 1.0] \\
        [--json out.json] [--plots DIR] [--threads 1]

Datasets (a dataset whose *default* folder, ``$MAMBAGLUE_DATA/...`` or else ``<repo>/../shared/data/...``, is
absent is skipped with a printed reason; a folder given explicitly must exist):
    euroc_stereo  EuRoC/ASL ``mav0`` (cam0, cam1): the left and the right image of every ``--stride``-th
                  stereo frame. Each raw (distorted) image is undistorted on its own: radial-tangential model,
                  new pinhole K from ``getOptimalNewCameraMatrix`` (alpha 0: valid pixels only). The ground
                  truth is the calibrated extrinsic ``T_C0_C1 = inv(T_B_C0) @ T_B_C1`` (``T_BS`` of the two
                  ``sensor.yaml``): 0.11 m baseline, 0.8 deg rotation. A hard case for the essential matrix:
                  the short baseline leaves the translation direction weakly constrained (a 0.4 deg rotation
                  error trades against a ~10 deg direction error at the same residuals; the ground truth
                  fits the matches as well as the estimate does), so AUC@5 is near 0 for every method.
    kitti_kK      KITTI odometry (``image_0``/``image_l``, ``calib.txt``, ``poses.txt``): frames t and t+K for
                  every K of ``--kitti-steps`` and every ``--stride``-th t; K from P0 (rectified images);
                  ground truth ``inv(T_0_t) @ T_0_{t+K}``. Pairs whose true translation is under 5 cm (the car
                  standing) are left out, for every method alike: they have no direction to compare.

Convention: a pair's ground truth ``T_0_1`` is the pose of camera 1 (image 1) in camera 0 (image 0),
``X_0 = T_0_1 @ X_1``: the convention of ``geometry.estimate_pose_mono``'s output, so both are compared
directly.

Methods: ``mambaglue`` (the shipped checkpoint), ``lightglue`` (LightGlue / LighterGlue with its released
weights), ``mambaglue@PATH`` (a checkpoint) all match the *same* keypoints: every image is extracted once per
run (and cached, KITTI frames serve several pairs). ``orb`` detects and describes on its own (ORB + mutual
nearest neighbour under Hamming distance, ``baselines.OrbMatcher``).

Pose: ``estimate_pose_mono`` (essential matrix with USAC-MAGSAC, ``--ransac-px`` threshold, cheirality,
Levenberg-Marquardt refinement) on all matches, at least 5 matches / inliers (as LightGlue's benchmark), the
low-parallax rotation-only fallback off (it would return no translation direction).

Metric per pair: error = max(rotation angle error, translation-direction angle error) in degrees. The
direction's sign counts (the estimate resolves it with the cheirality test, a flipped direction is wrong;
SuperGlue's and glue-factory's evaluations take ``min(e, 180 - e)``, so these AUCs are not above theirs);
a failed estimate counts 180 deg, the largest possible error. Per dataset and method: pose AUC at 5/10/20 deg
(area under the recall-vs-error curve up to the threshold, divided by it: SuperGlue/LightGlue's
``pose_auc``), median error, mean matches and inliers, failures, matching time per pair (keypoints given,
without extraction; ORB: its brute-force matching).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch

from ..bags.convert import (_image_dir, read_euroc_csv, read_euroc_sensor_yaml, read_kitti_calib,
                            read_kitti_poses)
from ..geometry import (RelativePose, estimate_pose_mono, invert, rotation_angle_deg,
                        translation_direction_error_deg)
from ..paths import data_root
from ..types import Features
from .homography import auc, build_matcher, forget_prepared, json_safe, parse_methods as parse_learned_methods

POSE_THRESHOLDS = (5.0, 10.0, 20.0)
FAILED_DEG = 180.0  # error of a pair without a pose estimate
MIN_MATCHES = 5  # fewer matches (or inliers) -> no estimate (LightGlue's benchmark: 5)
MIN_BASELINE_M = 0.05  # KITTI pairs whose ground-truth translation is shorter have no direction to compare
EUROC_DEFAULT = "euroc_v101_micro"
KITTI_DEFAULT = "kitti_seq1"


# ------------------------------------------------------------------------------------------ pairs
@dataclass
class PosePair:
    """Two images of one dataset with intrinsics and the ground-truth relative pose.

    image0, image1: keys of ``PoseDataset.load`` (image paths: also the feature-cache keys).
    K0, K1:         (3, 3) pinhole intrinsics of the (undistorted) images.
    T_0_1:          (4, 4) pose of camera 1 in camera 0 (``X_0 = T_0_1 @ X_1``).
    """

    name: str
    image0: str
    image1: str
    K0: np.ndarray
    K1: np.ndarray
    T_0_1: np.ndarray


@dataclass
class PoseDataset:
    """Named pairs and the image loader they need (key -> gray uint8 image, undistorted)."""

    name: str
    pairs: list[PosePair]
    load: Callable[[str], np.ndarray]
    description: str


def read_gray(path: str | Path) -> np.ndarray:
    """An image file as gray uint8 (H, W); FileNotFoundError when it cannot be read."""
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return image


def undistortion(camera: dict[str, Any]) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """New pinhole K (alpha 0: only valid pixels, same size) and the remap tables of a distorted camera."""
    K, D, size = camera["K"], camera["D"], camera["size"]
    K_new, _ = cv2.getOptimalNewCameraMatrix(K, D, size, 0.0, size)
    maps = cv2.initUndistortRectifyMap(K, D, None, K_new, size, cv2.CV_32FC1)
    return K_new, maps


def _euroc_mav0(root: Path) -> Path:
    mav0 = root / "mav0" if (root / "mav0").is_dir() else root
    for name in ("cam0/data.csv", "cam0/sensor.yaml", "cam1/data.csv", "cam1/sensor.yaml"):
        if not (mav0 / name).is_file():
            raise FileNotFoundError(f"{mav0 / name} not found: {root} is not an EuRoC sequence or mav0 folder")
    return mav0


def euroc_stereo_dataset(root: str | Path, stride: int = 1, max_pairs: int = 0) -> PoseDataset:
    """Left <-> right pairs of an EuRoC sequence (``root`` = the sequence or its ``mav0`` folder)."""
    mav0 = _euroc_mav0(Path(root))
    cams = [read_euroc_sensor_yaml(mav0 / c / "sensor.yaml") for c in ("cam0", "cam1")]
    T_C0_C1 = invert(cams[0]["T_BS"]) @ cams[1]["T_BS"]
    (K0, maps0), (K1, maps1) = undistortion(cams[0]), undistortion(cams[1])
    maps = {"cam0": maps0, "cam1": maps1}
    right = dict(read_euroc_csv(mav0 / "cam1" / "data.csv"))
    frames = [(t, f, right[t]) for t, f in read_euroc_csv(mav0 / "cam0" / "data.csv") if t in right]
    frames = _select(frames[::max(int(stride), 1)], max_pairs)
    pairs = [PosePair(f"{t}", str(mav0 / "cam0" / "data" / f0), str(mav0 / "cam1" / "data" / f1), K0, K1, T_C0_C1)
             for t, f0, f1 in frames]

    def load(key: str) -> np.ndarray:
        m = maps[Path(key).parent.parent.name]  # .../cam0/data/<stamp>.png
        return cv2.remap(read_gray(key), m[0], m[1], cv2.INTER_LINEAR)

    return PoseDataset("euroc_stereo", pairs, load,
                       f"EuRoC {mav0.parent.name}: cam0 <-> cam1, undistorted, GT = calibrated extrinsic "
                       f"(baseline {np.linalg.norm(T_C0_C1[:3, 3]):.4f} m)")


def _kitti_poses_file(seq: Path) -> Path:
    for candidate in (seq / "poses.txt", seq.parent.parent / "poses" / f"{seq.name}.txt"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{seq}: no poses.txt (or ../../poses/{seq.name}.txt): pose evaluation needs ground truth")


def kitti_datasets(root: str | Path, steps: Sequence[int] = (1, 3, 5), stride: int = 1,
                   max_pairs: int = 0) -> list[PoseDataset]:
    """One dataset ``kitti_k<step>`` per step: frames (t, t + step) of a KITTI odometry sequence folder."""
    seq = Path(root)
    left = _image_dir(seq, ("image_0", "image_l"))
    if left is None or not (seq / "calib.txt").is_file():
        raise FileNotFoundError(f"{seq} is not a KITTI odometry sequence folder (image_0/ or image_l/, calib.txt)")
    K = read_kitti_calib(seq / "calib.txt")["P0"][:, :3]
    poses = read_kitti_poses(_kitti_poses_file(seq))
    files = sorted(p for p in left.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    n = min(len(files), len(poses))
    if n < 2:
        raise FileNotFoundError(f"{seq}: fewer than two images with ground-truth poses")
    out = []
    for step in steps:
        pairs = []
        for t in range(0, n - step, max(int(stride), 1)):
            T_0_1 = invert(poses[t]) @ poses[t + step]
            if np.linalg.norm(T_0_1[:3, 3]) >= MIN_BASELINE_M:
                pairs.append(PosePair(f"{files[t].stem}-{files[t + step].stem}", str(files[t]), str(files[t + step]),
                                      K, K, T_0_1))
        out.append(PoseDataset(f"kitti_k{step}", _select(pairs, max_pairs), read_gray,
                               f"KITTI {seq.name}: frame t <-> t+{step}, GT from poses.txt"))
    return out


def _select(items: list, max_items: int) -> list:
    return items[:max_items] if max_items and max_items > 0 else items


# ------------------------------------------------------------------------------------------ metrics
def pose_auc(errors: Sequence[float], thresholds: Sequence[float] = POSE_THRESHOLDS) -> list[float]:
    """Pose AUC in [0, 1] at each threshold [deg] (``homography.auc``: SuperGlue/LightGlue's ``pose_auc``)."""
    return auc(errors, thresholds)


def pose_errors(T_0_1: np.ndarray, pose: RelativePose | None) -> tuple[float, float]:
    """(rotation, translation-direction) angle errors [deg] of an estimate of ``T_0_1``; 180 each without one.

    A direction that cannot be compared (zero estimated or true translation) counts 180 too.
    """
    if pose is None:
        return FAILED_DEG, FAILED_DEG
    err_R = rotation_angle_deg(T_0_1[:3, :3], pose.R)
    err_t = translation_direction_error_deg(T_0_1[:3, 3], pose.t)
    return err_R, (err_t if np.isfinite(err_t) else FAILED_DEG)


def evaluate_pair(points0: np.ndarray, points1: np.ndarray, pair: PosePair, ransac_px: float = 1.0) -> dict[str, Any]:
    """Estimate the relative pose of one pair from its matched pixels and score it against the ground truth."""
    pose, reason = estimate_pose_mono(points0, points1, pair.K0, pair.K1, ransac_px=ransac_px,
                                      min_matches=MIN_MATCHES, min_inliers=MIN_MATCHES, min_parallax_px=0.0)
    err_R, err_t = pose_errors(pair.T_0_1, pose)
    return {"pair": pair.name, "err_deg": max(err_R, err_t), "err_R_deg": err_R, "err_t_deg": err_t,
            "matches": int(len(points0)), "inliers": int(pose.num_inliers) if pose is not None else 0,
            "failed": pose is None, "reason": reason}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-method numbers of one dataset from its per-pair rows."""
    errors = [r["err_deg"] for r in rows]
    out: dict[str, Any] = {f"auc@{t:g}": a for t, a in zip(POSE_THRESHOLDS, pose_auc(errors))}
    out.update({
        "median_err_deg": float(np.median(errors)),
        "median_err_R_deg": float(np.median([r["err_R_deg"] for r in rows])),
        "median_err_t_deg": float(np.median([r["err_t_deg"] for r in rows])),
        "matches": float(np.mean([r["matches"] for r in rows])),
        "inliers": float(np.mean([r["inliers"] for r in rows])),
        "failures": int(sum(r["failed"] for r in rows)),
        "ms_per_pair": float(np.mean([r["match_ms"] for r in rows])),
        "median_ms_per_pair": float(np.median([r["match_ms"] for r in rows])),
        "pairs": len(rows),
    })
    if "stop_layer" in rows[0]:  # layers the network ran before its early exit (0 for ORB: no network)
        out["mean_stop_layer"] = float(np.mean([r["stop_layer"] for r in rows]))
    return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in out.items()}


# ------------------------------------------------------------------------------------------ methods
def parse_methods(text: str) -> list[str]:
    """``orb`` plus the learned methods of ``homography.parse_methods`` (mambaglue, lightglue, mambaglue@PATH)."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    learned = [m for m in methods if m != "orb"]
    if learned:
        parse_learned_methods(",".join(learned))
    if not methods or len(set(methods)) != len(methods):
        raise ValueError(f"--methods is empty or names a method twice: {text!r}")
    return methods


def build_method(method: str, features: str, device: str = "cpu", max_keypoints: int = 1024) -> Any:
    """A matcher with ``extract`` and ``match_features``: ``OrbMatcher`` or ``Matcher``."""
    if method == "orb":
        from ..baselines import OrbMatcher

        return OrbMatcher(max_keypoints=max_keypoints)
    return build_matcher(method, features, device, max_keypoints)


def parse_steps(text: str) -> list[int]:
    steps = [int(s) for s in text.split(",") if s.strip()]
    if not steps or min(steps) < 1 or len(set(steps)) != len(steps):
        raise ValueError(f"--kitti-steps must be distinct positive integers, got {text!r}")
    return steps


# ------------------------------------------------------------------------------------------ evaluation
class FeatureCache:
    """Features of every image, once per front end: ``get(key)`` -> {front end: Features}.

    Front ends: the learned one (shared by every learned method, so they match the same keypoints) and
    ORB's own detector. The image is loaded (and undistorted) once for all of them.
    """

    def __init__(self, extractors: dict[str, Callable[[np.ndarray], Features]]) -> None:
        self.extractors = extractors
        self.cache: dict[str, dict[str, Features]] = {}
        self.extract_ms: dict[str, list[float]] = {name: [] for name in extractors}

    def get(self, key: str, load: Callable[[str], np.ndarray]) -> dict[str, Features]:
        if key not in self.cache:
            image = load(key)
            feats = {}
            for name, extract in self.extractors.items():
                t0 = time.perf_counter()
                feats[name] = extract(image)
                self.extract_ms[name].append((time.perf_counter() - t0) * 1e3)
            self.cache[key] = feats
        return self.cache[key]


def front_end_of(method: str, features: str) -> str:
    return "orb" if method == "orb" else features


def evaluate(datasets: Sequence[PoseDataset], features: str, methods: Sequence[str], max_keypoints: int = 1024,
             ransac_px: float = 1.0, device: str = "cpu", progress: bool = True,
             matchers: dict[str, Any] | None = None) -> dict[str, Any]:
    """Match every pair of every dataset with every method and estimate its pose.

    Returns the JSON result: ``datasets`` -> name -> {``methods`` -> summaries, ``per_pair`` -> rows}.
    ``matchers`` may pass ready matchers by method name (tests).
    """
    from ..features import FeatureExtractor

    if not any(d.pairs for d in datasets):
        raise ValueError("no pairs to evaluate")
    matchers = dict(matchers or {})
    for m in methods:
        if m not in matchers:
            matchers[m] = build_method(m, features, device, max_keypoints)
    extractors: dict[str, Callable[[np.ndarray], Features]] = {}
    if any(m != "orb" for m in methods):
        extractors[features] = FeatureExtractor(features, max_keypoints=max_keypoints, device=device).extract
    if "orb" in methods:
        extractors["orb"] = matchers["orb"].extract
    cache = FeatureCache(extractors)

    first = next(d for d in datasets if d.pairs)
    f0, f1 = (cache.get(k, first.load) for k in (first.pairs[0].image0, first.pairs[0].image1))
    for m in methods:  # warm-up (first-call allocations, thread pools), not timed
        fe = front_end_of(m, features)
        matchers[m].match_features(f0[fe], f1[fe])

    result: dict[str, Any] = {"datasets": {}}
    for ds in datasets:
        rows: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
        it: Any = enumerate(ds.pairs)
        if progress:
            from tqdm import tqdm

            it = tqdm(it, total=len(ds.pairs), desc=ds.name, unit="pair", dynamic_ncols=True)
        for k, pair in it:
            f0, f1 = cache.get(pair.image0, ds.load), cache.get(pair.image1, ds.load)
            order = list(methods[k % len(methods):]) + list(methods[:k % len(methods)])
            for m in order:  # rotate the order so no method always runs right after extraction / another
                fe = front_end_of(m, features)
                forget_prepared(matchers[m])  # timed as a new pair: frames recur across pairs (k = 1, 3, 5)
                r = matchers[m].match_features(f0[fe], f1[fe])
                row = evaluate_pair(r.points0.astype(np.float64), r.points1.astype(np.float64), pair, ransac_px)
                rows[m].append({**row, "match_ms": float(r.timings_ms.get("match", float("nan"))),
                                "stop_layer": int(r.stop_layer)})
        result["datasets"][ds.name] = {
            "description": ds.description, "pairs": len(ds.pairs),
            "methods": {m: summarize(rows[m]) for m in methods if rows[m]},
            "per_pair": rows,
        }
    result.update({
        "features": features, "max_keypoints": max_keypoints, "ransac_px": ransac_px, "device": device,
        "thresholds_deg": list(POSE_THRESHOLDS),
        "weights": {m: matchers[m].weights_source for m in methods},
        "extract_ms_per_image": {name: round(float(np.mean(v)), 2) for name, v in cache.extract_ms.items() if v},
        "images": len(cache.cache),
        "hardware": f"{os.cpu_count()}-core CPU ({platform.machine()}), torch {torch.__version__}, "
                    f"{torch.get_num_threads()} threads",
    })
    return result


def format_table(result: dict[str, Any]) -> str:
    """One row per dataset and method."""
    width = max(12, *(len(m) for d in result["datasets"].values() for m in d["methods"]))
    heads = ("pairs", "AUC@5", "AUC@10", "AUC@20", "med deg", "matches", "inliers", "fail", "ms/pair", "med ms", "stop")
    lines = [f"{result['features']}, {result['max_keypoints']} keypoints, essential matrix MAGSAC "
             f"{result['ransac_px']} px; error = max(rotation, translation direction), failure = 180 deg",
             f"{'dataset':<13} {'method':<{width}} " + " ".join(f"{h:>7}" for h in heads)]
    for name, d in result["datasets"].items():
        for m, s in d["methods"].items():
            lines.append(f"{name:<13} {m:<{width}} {s['pairs']:7d} {s['auc@5']:7.4f} {s['auc@10']:7.4f} "
                         f"{s['auc@20']:7.4f} {s['median_err_deg']:7.2f} {s['matches']:7.1f} {s['inliers']:7.1f} "
                         f"{s['failures']:7d} {s['ms_per_pair']:7.1f} {s['median_ms_per_pair']:7.1f} "
                         f"{s.get('mean_stop_layer', float('nan')):7.2f}")
    for name, reason in result.get("skipped", {}).items():
        lines.append(f"{name}: skipped ({reason})")
    return "\n".join(lines)


def plot_curves(result: dict[str, Any], path: str | Path, max_deg: float = 30.0) -> Path:
    """Cumulative error curves (fraction of pairs with error <= x), one subplot per dataset, methods overlaid."""
    from .plots import pyplot, save_figure

    plt = pyplot()
    names = list(result["datasets"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), sharey=True, squeeze=False)
    x = np.linspace(0.0, max_deg, 301)
    for ax, name in zip(axes[0], names):
        d = result["datasets"][name]
        for m, rows in d["per_pair"].items():
            e = np.sort([r["err_deg"] for r in rows])
            ax.plot(x, np.searchsorted(e, x, side="right") / max(len(e), 1),
                    label=f"{m} (AUC@10 {d['methods'][m]['auc@10']:.3f})")
        for t in POSE_THRESHOLDS:
            ax.axvline(t, color="gray", lw=0.6, ls=":")
        ax.set_title(f"{name} ({d['pairs']} pairs)")
        ax.set_xlabel("pose error [deg]")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set_ylabel("fraction of pairs")
    fig.suptitle(f"relative pose, {result['features']}, {result['max_keypoints']} keypoints")
    return save_figure(fig, path)


# ------------------------------------------------------------------------------------------ CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--euroc", default=None,
                   help=f"EuRoC sequence or mav0 folder (default: {data_root() / EUROC_DEFAULT}, skipped when absent)")
    p.add_argument("--kitti", default=None,
                   help=f"KITTI odometry sequence folder (default: {data_root() / KITTI_DEFAULT}, skipped when absent)")
    p.add_argument("--datasets", default="euroc,kitti", help="comma list of euroc, kitti")
    p.add_argument("--kitti-steps", default="1,3,5", help="frame gaps k of the KITTI pairs (t, t+k)")
    p.add_argument("--stride", type=int, default=1,
                   help="use every N-th EuRoC stereo frame / KITTI start frame (1 = all)")
    p.add_argument("--max-pairs", type=int, default=0, help="at most this many pairs per dataset (0 = all)")
    p.add_argument("--features", default="xfeat", choices=("xfeat", "aliked", "disk"))
    p.add_argument("--methods", default="mambaglue,lightglue,orb",
                   help="comma list: mambaglue, lightglue, orb, mambaglue@PATH")
    p.add_argument("--max-keypoints", type=int, default=1024)
    p.add_argument("--ransac-px", type=float, default=1.0, help="essential-matrix MAGSAC threshold [px]")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--plots", default=None, help="write the cumulative error curves (PNG) into this folder")
    p.add_argument("--no-progress", action="store_true")


def default_folder(name: str) -> Path:
    """``data_root()/<name>`` (``$MAMBAGLUE_DATA``, else ``<repo>/../shared/data``), else ``./../shared/data/<name>``
    (the first that exists)."""
    candidates = [data_root() / name, Path.cwd().parent / "shared" / "data" / name]
    return next((c for c in candidates if c.is_dir()), candidates[0])


def load_datasets(args: argparse.Namespace) -> tuple[list[PoseDataset], dict[str, str]]:
    """The requested datasets and {name: reason} of those skipped (default folder absent)."""
    wanted = {s.strip() for s in args.datasets.split(",") if s.strip()}
    if not wanted or wanted - {"euroc", "kitti"}:
        raise ValueError(f"--datasets must be a comma list of euroc, kitti; got {args.datasets!r}")
    steps = parse_steps(args.kitti_steps)
    datasets: list[PoseDataset] = []
    skipped: dict[str, str] = {}
    for key, option, default, build in (
            ("euroc", args.euroc, EUROC_DEFAULT, lambda f: [euroc_stereo_dataset(f, args.stride, args.max_pairs)]),
            ("kitti", args.kitti, KITTI_DEFAULT, lambda f: kitti_datasets(f, steps, args.stride, args.max_pairs))):
        if key not in wanted:
            continue
        folder = Path(option) if option else default_folder(default)
        if not folder.is_dir():
            if option:
                raise FileNotFoundError(f"--{key} folder not found: {folder}")
            skipped[key] = f"no folder {folder}; pass --{key} DIR"
            continue
        datasets.extend(build(folder))
    return datasets, skipped


def run_cli(args: argparse.Namespace) -> int:
    methods = parse_methods(args.methods)
    if args.threads and args.threads > 0:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    datasets, skipped = load_datasets(args)
    for name, reason in skipped.items():
        print(f"{name}: skipped ({reason})")
    if not datasets:
        print("error: no dataset to evaluate: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()), file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    result = evaluate(datasets, args.features, methods, args.max_keypoints, args.ransac_px, args.device,
                      progress=not args.no_progress)
    result["skipped"] = skipped
    result["wall_time_s"] = round(time.perf_counter() - t0, 1)
    result["command"] = "mambaglue " + " ".join(sys.argv[1:])
    result["options"] = {k: v for k, v in vars(args).items() if k != "func"}
    print(format_table(result))
    print(f"{result['wall_time_s']} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(json_safe(result), indent=1, allow_nan=False))
        print(f"wrote {args.json}")
    if args.plots:
        print(f"wrote {plot_curves(result, Path(args.plots) / f'pose_auc_{args.features}.png')}")
    return 0
