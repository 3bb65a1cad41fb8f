"""Homography evaluation: MambaGlue vs LightGlue (and other checkpoints) on pairs with a known homography.

    mambaglue eval-homography --images DIR --pairs N --seed S --features xfeat|aliked|disk \\
        --methods mambaglue,lightglue[,mambaglue@path] --json out.json [--plots DIR] \\
        [--alphas 0.8,0.85,0.9,0.95,1.0,none] [--hpatches DIR]

Pairs: synthetic (``training.homography.make_pair`` on the photos of ``--images``; pair k uses photo
k % #photos and a seed derived from (seed, k), so a (folder, pairs, seed, difficulty) tuple is one fixed
set), or HPatches (``--hpatches DIR``: sequences holding 1.ppm..6.ppm and H_1_2..H_1_6, pairs (1, k)).

Methods (all get the same keypoints: every image is extracted once, then each matcher's
``match_features`` runs on the same ``Features``):
    mambaglue       ``Matcher(features)``: the shipped checkpoint (else the LightGlue warm start)
    lightglue       our network with the front end's LightGlue weights, mixer 'attention', the linear
                    (LightGlue) confidence head: LightGlue itself, with its adaptive exit (alpha 0.95) and pruning
    mambaglue@PATH  a MambaGlue checkpoint file
    METHOD+bf16     any of the above under bf16 autocast (``Matcher(precision='bf16')``)

Metrics per method (means over pairs unless noted):
    precision      matches whose reprojection error is < 3 px / all matches (error = the larger of the two
                   directions, as the ground truth uses); a pair without matches counts 0
    recall         ground-truth matches found / ground-truth matches (GT: mutual nearest reprojection < 3 px)
    auc@Kpx        area under the cumulative curve of the mean corner error of the homography estimated from
                   the matches with OpenCV USAC-MAGSAC (3 px threshold), up to K px, K = 1, 3, 5
    auc_dlt@Kpx    the same with a plain DLT least-squares fit on all matches (no robust estimation)
    mean_matches, mean_stop_layer, ms_per_pair / pairs_per_s (matching only, keypoints given; the mean, and
                   median_ms_per_pair, which a busy shared CPU disturbs less)
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np
import torch

from ..geometry import estimate_homography
from ..training.dataset import list_images, pair_seed, read_rgb, split_photos
from ..training.homography import gt_matches_from_homography, make_pair, make_video_pair, warp_points
from ..types import Features, MatchResult, check_alpha

log = logging.getLogger(__name__)

AUC_THRESHOLDS = (1.0, 3.0, 5.0)


# ------------------------------------------------------------------------------------------ pairs
@dataclass
class EvalPair:
    name: str
    image0: np.ndarray
    image1: np.ndarray
    H_0to1: np.ndarray  # view-0 pixels -> view-1 pixels


def synthetic_pairs(images: str | Path, num_pairs: int, seed: int, difficulty: float = 0.8,
                    size: tuple[int, int] = (640, 480), photometric: float = 1.0,
                    video: bool = False, held_out_every: int = 0) -> Iterator[EvalPair]:
    """The fixed synthetic set of (folder, num_pairs, seed, difficulty): pair k from photo k % #photos.

    video: small, video-like motions (``make_video_pair``; ``difficulty`` unused) instead of homographies.
    held_out_every: > 0: only the photos a training run with ``data.holdout_every`` of this value held out of the
        same folder (``split_photos``), so a run is not scored on the photos it trained on.
    """
    photos = list_images(images)
    if held_out_every > 0:
        photos = split_photos(photos, int(held_out_every))[1]
        if not photos:
            raise ValueError(f"{images}: no photo is held out with every {held_out_every}th "
                             f"({len(list_images(images))} photos)")
    cache: dict[int, np.ndarray] = {}
    for k in range(int(num_pairs)):
        pi = k % len(photos)
        if pi not in cache:
            cache.clear()
            cache[pi] = read_rgb(photos[pi])
        p = (make_video_pair(cache[pi], pair_seed(seed, k), size, photometric) if video
             else make_pair(cache[pi], pair_seed(seed, k), difficulty, size, photometric))
        yield EvalPair(f"{photos[pi].stem}#{k}", p.image0, p.image1, p.H_0to1)


def _resize(image: np.ndarray, resize_max: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Downscale so the longer side is <= resize_max; returns the image and the 3x3 pixel scaling."""
    h, w = image.shape[:2]
    if not resize_max or max(h, w) <= resize_max:
        return image, np.eye(3)
    s = resize_max / max(h, w)
    new = (max(1, round(w * s)), max(1, round(h * s)))
    sx, sy = new[0] / w, new[1] / h
    # pixel centres: x' = (x + 0.5) * sx - 0.5
    S = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1.0]])
    return cv2.resize(image, new, interpolation=cv2.INTER_AREA), S


def hpatches_pairs(root: str | Path, max_pairs: int = 0, resize_max: int | None = None) -> Iterator[EvalPair]:
    """HPatches layout: ``root/<sequence>/{1..6}.ppm`` and ``H_1_k`` (3x3 text, image 1 -> image k pixels)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"HPatches folder not found: {root}")
    seqs = sorted(p for p in root.iterdir() if p.is_dir() and (p / "1.ppm").is_file())
    if not seqs:
        raise FileNotFoundError(f"no HPatches sequences (folders with 1.ppm) in {root}")
    count = 0
    for seq in seqs:
        img0, S0 = _resize(read_rgb(seq / "1.ppm"), resize_max)
        for k in range(2, 7):
            if not (seq / f"{k}.ppm").is_file() or not (seq / f"H_1_{k}").is_file():
                continue
            if max_pairs and count >= max_pairs:
                return
            img1, S1 = _resize(read_rgb(seq / f"{k}.ppm"), resize_max)
            H = np.loadtxt(seq / f"H_1_{k}", dtype=np.float64).reshape(3, 3)
            H = S1 @ H @ np.linalg.inv(S0)
            yield EvalPair(f"{seq.name}/1-{k}", img0, img1, H / H[2, 2])
            count += 1


# ------------------------------------------------------------------------------------------ metrics
def auc(errors: Sequence[float], thresholds: Sequence[float] = AUC_THRESHOLDS) -> list[float]:
    """Area under the recall-vs-error curve up to each threshold, normalised to [0, 1] (SuperGlue/LightGlue).

    Failures are errors of +inf (they lower the recall curve, never count as correct).
    """
    errs = np.sort(np.asarray(errors, dtype=np.float64))
    if errs.size == 0:
        return [0.0 for _ in thresholds]
    recall = (np.arange(len(errs)) + 1) / len(errs)
    errs = np.r_[0.0, errs]
    recall = np.r_[0.0, recall]
    out = []
    for t in thresholds:
        last = int(np.searchsorted(errs, t))
        r = np.r_[recall[:last], recall[last - 1]]
        e = np.r_[errs[:last], t]
        out.append(float(np.trapezoid(r, x=e) / t))
    return out


def corner_error(H_est: np.ndarray | None, H_gt: np.ndarray, size0: tuple[int, int]) -> float:
    """Mean distance of the four image-0 corners mapped by the estimated and by the true homography (px)."""
    if H_est is None:
        return float("inf")
    w, h = size0
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float64)
    a, b = warp_points(corners, H_est), warp_points(corners, H_gt)
    err = np.linalg.norm(a - b, axis=1)
    return float(err.mean()) if np.all(np.isfinite(err)) else float("inf")


def reprojection_errors(p0: np.ndarray, p1: np.ndarray, H: np.ndarray) -> np.ndarray:
    """max(||H p0 - p1||, ||p0 - H^-1 p1||) per match (inf where a point maps to infinity)."""
    if len(p0) == 0:
        return np.zeros(0)
    e0 = np.linalg.norm(warp_points(p0, H) - p1, axis=1)
    e1 = np.linalg.norm(p0 - warp_points(p1, np.linalg.inv(H)), axis=1)
    e = np.maximum(e0, e1)
    return np.where(np.isfinite(e), e, np.inf)


def gt_matches(f0: Features, f1: Features, H: np.ndarray, pos_th: float = 3.0, neg_th: float = 5.0) -> np.ndarray:
    """(M,) partner index in image 1 of each keypoint of image 0 (-1 / -2 = none / ambiguous)."""
    m0, _ = gt_matches_from_homography(f0.keypoints.cpu()[None].float(), f1.keypoints.cpu()[None].float(),
                                       torch.from_numpy(H)[None], pos_th, neg_th)
    return m0[0].numpy()


def pair_metrics(result: MatchResult, H: np.ndarray, gt0: np.ndarray, size0: tuple[int, int],
                 pos_th: float = 3.0, ransac_px: float = 3.0) -> dict[str, float]:
    """Precision, recall, corner errors (MAGSAC, DLT), matches, stop layer, time of one matched pair."""
    p0, p1 = result.points0.astype(np.float64), result.points1.astype(np.float64)
    n = len(result)
    err = reprojection_errors(p0, p1, H)
    correct = err < pos_th
    num_gt = int((gt0 >= 0).sum())
    hits = int((gt0[result.matches[:, 0]] == result.matches[:, 1]).sum()) if n else 0
    H_magsac, _ = estimate_homography(p0, p1, ransac_px=ransac_px, method="magsac") if n >= 4 else (None, None)
    H_dlt, _ = estimate_homography(p0, p1, method="dlt") if n >= 4 else (None, None)
    return {"precision": float(correct.mean()) if n else 0.0, "correct": int(correct.sum()), "matches": n,
            "recall": hits / num_gt if num_gt else float("nan"), "num_gt": num_gt,
            "error_magsac": corner_error(H_magsac, H, size0), "error_dlt": corner_error(H_dlt, H, size0),
            "stop_layer": int(result.stop_layer), "num_layers": int(result.num_layers),
            "match_ms": float(result.timings_ms.get("match", float("nan")))}


def summarize(rows: list[dict[str, float]]) -> dict[str, float]:
    """Per-method numbers from per-pair rows."""
    if not rows:
        return {}
    def mean(key: str) -> float:
        vals = np.array([r[key] for r in rows], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        return float(vals.mean()) if vals.size else float("nan")

    out: dict[str, float] = {"precision": mean("precision"), "recall": mean("recall")}
    for t, a in zip(AUC_THRESHOLDS, auc([r["error_magsac"] for r in rows])):
        out[f"auc@{t:g}px"] = a
    for t, a in zip(AUC_THRESHOLDS, auc([r["error_dlt"] for r in rows])):
        out[f"auc_dlt@{t:g}px"] = a
    total = sum(r["matches"] for r in rows)
    out["precision_global"] = sum(r["correct"] for r in rows) / total if total else 0.0
    out["mean_matches"] = mean("matches")
    out["mean_stop_layer"] = mean("stop_layer")
    out["num_layers"] = int(rows[0]["num_layers"])
    ms = mean("match_ms")
    out["ms_per_pair"] = ms
    out["median_ms_per_pair"] = float(np.median([r["match_ms"] for r in rows]))
    out["pairs_per_s"] = 1000.0 / ms if ms > 0 else float("nan")
    out["failures_magsac"] = int(sum(not np.isfinite(r["error_magsac"]) for r in rows))
    out["pairs"] = len(rows)
    return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in out.items()}


# ------------------------------------------------------------------------------------------ methods
METHOD_SUFFIXES = {"+bf16": {"precision": "bf16"}, "+noprune": {"pruning": False},
                   "+meanexit": {"exit_rule": "mean"}, "+fulldepth": {"alpha": None}, "+dense": {"mamba_ffn_rank": 0},
                   "+lowrank": {"mamba_ffn_rank": -1}}


ALPHA_SUFFIX = re.compile(r"\+alpha([0-9]*\.?[0-9]+)$")


def split_suffixes(method: str) -> tuple[str, dict[str, Any]]:
    """``"mambaglue+noprune+bf16"`` -> ``("mambaglue", {"pruning": False, "precision": "bf16"})``: the base
    method and the Matcher options of its suffixes (``+bf16`` autocast, ``+noprune`` pruning off,
    ``+meanexit`` the early exit's mean-confidence rule, ``+fulldepth`` early exit off: every layer runs,
    ``+dense`` the Mamba columns of the FFN as trained (``mamba_ffn_rank`` 0, the default), ``+lowrank`` at
    their automatic low rank (``mamba_ffn_rank`` -1: d/4 for version-1 networks),
    ``+alphaA`` the early exit at α = A instead of the default, e.g. ``mambaglue+alpha0.9``: two operating points
    timed in one interleaved pass)."""
    options: dict[str, Any] = {"precision": "fp32"}
    found = True
    while found:
        found = False
        for suffix, opts in METHOD_SUFFIXES.items():
            if method.endswith(suffix):
                method, found = method[: -len(suffix)], True
                options.update(opts)
        alpha = ALPHA_SUFFIX.search(method)
        if alpha:
            method, found = method[: alpha.start()], True
            options["alpha"] = check_alpha(float(alpha.group(1)))
    return method, options


def parse_methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods:
        raise ValueError("--methods is empty")
    for m in methods:
        base = split_suffixes(m)[0]
        if base not in ("mambaglue", "lightglue") and not base.startswith("mambaglue@"):
            raise ValueError(f"unknown method {m!r}: use mambaglue, lightglue or mambaglue@PATH "
                             "(+bf16, +noprune, +meanexit, +fulldepth, +dense, +lowrank, +alphaA)")
        if base.startswith("mambaglue@") and not Path(base.split("@", 1)[1]).is_file():
            raise FileNotFoundError(f"checkpoint of method {m!r} not found")
    if len(set(methods)) != len(methods):
        raise ValueError(f"--methods names a method twice: {text}")
    return methods


def forget_prepared(matcher: Any) -> None:
    """``Matcher.forget_prepared`` where the matcher keeps per-image work between calls (ORB does not), so that a
    timed call costs what a pair of new images costs."""
    forget = getattr(matcher, "forget_prepared", None)
    if forget is not None:
        forget()


def parse_alphas(text: str | None) -> list[float | None]:
    if not text:
        return []
    out: list[float | None] = []
    for a in text.split(","):
        a = a.strip().lower()
        if not a:
            continue
        if a in ("none", "off", "null"):
            out.append(None)
            continue
        v = float(a)
        if not 0.0 < v <= 1.0:
            raise ValueError(f"alpha must be in (0, 1] or 'none', got {a}")
        out.append(v)
    return out


def build_matcher(method: str, features: str, device: str = "cpu", max_keypoints: int = 1024, **options: Any):
    """A method name -> its Matcher: ``mambaglue``, ``lightglue``, ``mambaglue@PATH``; a ``+bf16`` suffix
    runs it under bf16 autocast (e.g. ``mambaglue+bf16``), ``+noprune`` without point pruning."""
    from ..matcher import Matcher

    method, suffix_options = split_suffixes(method)
    options = {**options, **suffix_options}
    if method == "lightglue":
        return Matcher(features, weights="lightglue", mixer="attention", regressor="linear", device=device,
                       max_keypoints=max_keypoints, **options)
    weights = method.split("@", 1)[1] if method.startswith("mambaglue@") else None
    return Matcher(features, weights=weights, device=device, max_keypoints=max_keypoints, **options)


# ------------------------------------------------------------------------------------------ evaluation
def evaluate(pairs: Iterator[EvalPair] | Sequence[EvalPair], features: str, methods: Sequence[str],
             max_keypoints: int = 1024, alphas: Sequence[float | None] = (), sweep_methods: Sequence[str] | None = None,
             device: str = "cpu", pos_th: float = 3.0, ransac_px: float = 3.0, progress: bool = True,
             matchers: dict[str, Any] | None = None, extractor_precision: str = "fp32") -> dict[str, Any]:
    """Extract every pair once, match it with every method, and (optionally) sweep alpha.

    Returns the result dict written as JSON (``methods``, ``alpha_sweep``, ``per_pair`` ...).
    ``matchers`` may pass ready matchers by method name (tests). ``extractor_precision``: the front end's
    arithmetic for every method ('bf16': bf16 autocast, ``FeatureExtractor(precision=...)``).
    """
    from ..features import FeatureExtractor

    extractor = FeatureExtractor(features, max_keypoints=max_keypoints, device=device, precision=extractor_precision)
    matchers = dict(matchers or {})
    for m in methods:
        if m not in matchers:
            matchers[m] = build_matcher(m, features, device, max_keypoints)
    # 1. features and ground truth, once per pair
    prepared: list[tuple[str, Features, Features, np.ndarray, np.ndarray, tuple[int, int]]] = []
    iterator: Any = pairs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(pairs, desc="extract", unit="pair", dynamic_ncols=True)
    t0 = time.perf_counter()
    for p in iterator:
        f0, f1 = extractor.extract(p.image0), extractor.extract(p.image1)
        prepared.append((p.name, f0, f1, p.H_0to1, gt_matches(f0, f1, p.H_0to1, pos_th), f0.image_size))
    extract_s = time.perf_counter() - t0
    if not prepared:
        raise ValueError("no pairs to evaluate")

    def run(method_list: Sequence[str], label: str) -> dict[str, list[dict[str, float]]]:
        for m in method_list:  # warm-up (first-call allocations, thread pools)
            matchers[m].match_features(prepared[0][1], prepared[0][2])
        rows: dict[str, list[dict[str, float]]] = {m: [] for m in method_list}
        it: Any = enumerate(prepared)
        if progress:
            from tqdm import tqdm

            it = tqdm(it, total=len(prepared), desc=label, unit="pair", dynamic_ncols=True)
        for k, (name, f0, f1, H, gt0, size0) in it:
            order = list(method_list[k % len(method_list):]) + list(method_list[: k % len(method_list)])
            for m in order:  # rotate the order so no method always runs right after extraction / another
                forget_prepared(matchers[m])  # timed as a new pair, also in the alpha sweep's repeats
                r = matchers[m].match_features(f0, f1)
                rows[m].append({"pair": name, **pair_metrics(r, H, gt0, size0, pos_th, ransac_px)})
        return rows

    rows = run(list(methods), "match")
    result: dict[str, Any] = {
        "methods": {m: summarize(rows[m]) for m in methods},
        "weights": {m: matchers[m].weights_source for m in methods},
        "pairs": len(prepared), "features": features, "max_keypoints": max_keypoints,
        "extractor_precision": extractor_precision,
        "mean_keypoints": round(float(np.mean([(len(p[1]) + len(p[2])) / 2 for p in prepared])), 1),
        "extract_s_per_pair": round(extract_s / len(prepared), 4),
        "ransac_px": ransac_px, "pos_th": pos_th, "device": device,
        "hardware": f"{os.cpu_count()}-core CPU ({platform.machine()}), torch {torch.__version__}, "
                    f"{torch.get_num_threads()} threads",
        "per_pair": {m: [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()}
                         for r in rows[m]] for m in methods},
    }
    if alphas:
        sweep_methods = list(sweep_methods or methods)
        sweep: dict[str, list[dict[str, Any]]] = {m: [] for m in sweep_methods}
        saved = {m: matchers[m].alpha for m in sweep_methods}
        for a in alphas:
            for m in sweep_methods:
                matchers[m].alpha = a
            srows = run(sweep_methods, f"alpha={a}")
            for m in sweep_methods:
                s = summarize(srows[m])
                sweep[m].append({"alpha": a, **{k: s[k] for k in ("precision", "recall", "auc@1px", "auc@3px",
                                                                  "auc@5px", "mean_matches", "mean_stop_layer",
                                                                  "ms_per_pair", "median_ms_per_pair",
                                                                  "pairs_per_s")}})
        for m in sweep_methods:
            matchers[m].alpha = saved[m]
        result["alpha_sweep"] = sweep
    return result


def json_safe(obj: Any) -> Any:
    """NaN / inf -> None, recursively (strict JSON)."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def format_table(result: dict[str, Any]) -> str:
    cols = ("precision", "recall", "auc@1px", "auc@3px", "auc@5px", "auc_dlt@1px", "auc_dlt@3px", "auc_dlt@5px",
            "mean_matches", "mean_stop_layer", "ms_per_pair", "median_ms_per_pair", "pairs_per_s")
    heads = ("prec", "recall", "AUC@1", "AUC@3", "AUC@5", "DLT@1", "DLT@3", "DLT@5", "matches", "stop", "ms", "med ms",
             "pairs/s")
    width = max(12, *(len(m) for m in result["methods"]))
    lines = [f"{result['pairs']} pairs, {result['features']}, {result['max_keypoints']} keypoints "
             f"(mean {result['mean_keypoints']}), MAGSAC {result['ransac_px']} px"
             + (f", front end in {result['extractor_precision']}" if result.get("extractor_precision", "fp32") != "fp32"
                else ""),
             f"{'method':<{width}} " + " ".join(f"{h:>7}" for h in heads)]
    for m, s in result["methods"].items():
        vals = []
        for c in cols:
            v = s[c]
            vals.append(f"{v:7.1f}" if c in ("mean_matches", "ms_per_pair", "median_ms_per_pair", "pairs_per_s") else
                        f"{v:7.2f}" if c == "mean_stop_layer" else f"{v:7.4f}")
        lines.append(f"{m:<{width}} " + " ".join(vals))
    for m, rows in result.get("alpha_sweep", {}).items():
        lines.append(f"alpha sweep, {m}:")
        lines.append(f"  {'alpha':>6} {'prec':>7} {'recall':>7} {'AUC@3':>7} {'AUC@5':>7} {'matches':>7} {'stop':>5} {'ms':>7} {'med ms':>7}")
        for r in rows:
            a = "none" if r["alpha"] is None else f"{r['alpha']:.2f}"
            lines.append(f"  {a:>6} {r['precision']:7.4f} {r['recall']:7.4f} {r['auc@3px']:7.4f} {r['auc@5px']:7.4f} "
                         f"{r['mean_matches']:7.1f} {r['mean_stop_layer']:5.2f} {r['ms_per_pair']:7.1f} "
                         f"{r['median_ms_per_pair']:7.1f}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", help="folder of photos for synthetic homography pairs")
    p.add_argument("--held-out-every", type=int, default=0,
                   help="only the photos a training run with data.holdout_every N held out of --images (0 = all)")
    p.add_argument("--hpatches", help="HPatches folder (sequences with 1.ppm..6.ppm, H_1_k); replaces --images")
    p.add_argument("--pairs", type=int, default=200, help="number of pairs (HPatches: at most; 0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--difficulty", type=float, default=0.8, help="homography strength of synthetic pairs, 0..1")
    p.add_argument("--video", action="store_true",
                   help="video-like small motions of the photos (what the node matches frame to frame; the pairs of "
                        "training's video_fraction) instead of homographies; --difficulty unused")
    p.add_argument("--size", default="640x480", help="synthetic view size WxH")
    p.add_argument("--photometric", type=float, default=1.0, help="photometric augmentation strength (0 = none)")
    p.add_argument("--resize-max", type=int, default=None, help="HPatches: downscale to this longer side")
    p.add_argument("--features", default="xfeat", choices=("xfeat", "aliked", "disk"))
    p.add_argument("--methods", default="mambaglue,lightglue", help="comma list: mambaglue, lightglue, mambaglue@PATH")
    p.add_argument("--max-keypoints", type=int, default=1024)
    p.add_argument("--extractor-precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="front end arithmetic for every method (bf16: autocast, faster on CPUs with AVX512-BF16 "
                        "or AMX; fp16: CUDA only)")
    p.add_argument("--alphas", default=None, help="alpha sweep, comma list of values in (0, 1] and 'none' (exit off)")
    p.add_argument("--sweep-methods", default=None, help="methods swept over --alphas (default: all of --methods)")
    p.add_argument("--ransac-px", type=float, default=3.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--plots", default=None, help="write PNG plots into this folder")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default); 1 on a busy CPU")
    p.add_argument("--no-progress", action="store_true")


def run_cli(args: argparse.Namespace) -> int:
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    methods = parse_methods(args.methods)
    alphas = parse_alphas(args.alphas)
    sweep_methods = parse_methods(args.sweep_methods) if args.sweep_methods else None
    if sweep_methods and set(sweep_methods) - set(methods):
        raise ValueError("--sweep-methods must be among --methods")
    if args.hpatches and args.video:
        raise ValueError("--video makes synthetic pairs of --images; it does not apply to --hpatches")
    if args.hpatches:
        pairs = list(hpatches_pairs(args.hpatches, args.pairs, args.resize_max))
        dataset = {"dataset": "hpatches", "images": str(args.hpatches), "resize_max": args.resize_max}
    else:
        if not args.images:
            raise ValueError("give --images DIR (synthetic pairs) or --hpatches DIR")
        w, h = (int(v) for v in args.size.lower().split("x"))
        pairs = synthetic_pairs(args.images, args.pairs, args.seed, args.difficulty, (w, h), args.photometric,
                                video=args.video, held_out_every=args.held_out_every)
        dataset = {"dataset": "synthetic_video" if args.video else "synthetic", "images": str(args.images),
                   **({} if args.video else {"difficulty": args.difficulty}), "size": [w, h],
                   "photometric": args.photometric,
                   **({"held_out_every": args.held_out_every} if args.held_out_every else {})}
    t0 = time.perf_counter()
    result = evaluate(pairs, args.features, methods, args.max_keypoints, alphas, sweep_methods, args.device,
                      ransac_px=args.ransac_px, progress=not args.no_progress,
                      extractor_precision=args.extractor_precision)
    result.update(dataset)
    result["seed"] = args.seed
    result["wall_time_s"] = round(time.perf_counter() - t0, 1)
    result["command"] = "mambaglue " + " ".join(sys.argv[1:])
    print(format_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(json_safe(result), indent=1, allow_nan=False))
        print(f"wrote {args.json}")
    if args.plots:
        from .plots import write_plots

        for f in write_plots(result, args.plots):
            print(f"wrote {f}")
    return 0
