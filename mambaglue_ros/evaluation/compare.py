"""Paired differences between methods evaluated on the same pairs, with bootstrap 95 % intervals.

    mambaglue compare RUN.json [RUN.json ...] --methods A,B[,C ...] [--baseline B] [--samples 10000] [--block 5]

Reads the per-pair rows that ``eval-homography`` and ``eval-pose`` write (``per_pair``) and, for every method
against the baseline (the last of ``--methods`` unless ``--baseline`` names another), prints each metric of both,
their difference, and a 95 % interval of the difference from a paired bootstrap: the pairs are drawn with
replacement, the *same* draw for both methods, and the metric is computed again on each draw. A and B are the
numbers the evaluation printed (before its rounding to 5 decimals), so the interval says how much of their
difference the choice of pairs could explain. "A > B in" is the share of draws in which A came out ahead, not a
probability that A is the better method. Each line is its own 95 % interval: among many lines (methods x metrics x
datasets) some will exclude zero by chance.

Pairs that share their source are not independent, so they are drawn together: the synthetic homography pairs by
photo (pair k of eval-homography uses photo k mod #photos, named ``photo#k``), HPatches pairs by sequence, the pose
pairs of a video sequence in blocks of ``--block`` consecutive pairs. Neighbouring frames stay correlated beyond a
block (the EuRoC clip stands still), so there the interval is still narrower than it should be. Nor does it cover
the other noise source of a training comparison, the training run itself (seed): compare runs of several seeds.

Homography results: precision and recall (means over pairs), AUC@1/3/5 px of the MAGSAC corner error. Pose
results: AUC@5/10/20° per dataset. Runs may come from different files when they evaluated the same pairs with the
same settings (checked: the pair set, features, keypoints, thresholds). The evaluations are deterministic: a method
that is in two files must have the same per-pair numbers in both; where it does not, a warning says so, since the
cross-file differences then carry run-to-run noise too.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .homography import AUC_THRESHOLDS, auc, json_safe
from .pose import POSE_THRESHOLDS

log = logging.getLogger(__name__)

HOMOGRAPHY, POSE = "homography", "pose"
# metric -> (per-pair value, how it is computed, threshold): 'mean' over the pairs (non-finite values left out, as
# the evaluation's summaries do) or 'auc' of the errors up to the threshold (a missing error is a failure: +inf).
Metric = tuple[str, str, "float | None"]
HOMOGRAPHY_METRICS: dict[str, Metric] = {"precision": ("precision", "mean", None), "recall": ("recall", "mean", None),
                                         **{f"auc@{t:g}px": ("error_magsac", "auc", t) for t in AUC_THRESHOLDS}}
POSE_METRICS: dict[str, Metric] = {f"auc@{t:g}": ("err_deg", "auc", t) for t in POSE_THRESHOLDS}
# The per-pair values that must agree when one method is in two files.
IDENTITY_KEYS = {HOMOGRAPHY: ("precision", "error_magsac", "matches"), POSE: ("err_deg", "matches")}
# The settings that make two files' pairs the same pairs (paths: their last component, since a run records them
# as typed). Homography: top-level keys; pose: the keys of its recorded command-line options.
SETTINGS = {HOMOGRAPHY: ("dataset", "images", "hpatches", "seed", "difficulty", "size", "photometric",
                         "held_out_every", "resize_max", "features", "max_keypoints", "extractor_precision",
                         "ransac_px", "pos_th", "pairs"),
            POSE: ("datasets", "euroc", "kitti", "kitti_steps", "stride", "max_pairs", "features", "max_keypoints",
                   "ransac_px")}
PATH_SETTINGS = ("images", "hpatches", "euroc", "kitti")


def _values(rows: list[dict[str, Any]], key: str, kind: str) -> np.ndarray:
    """One float per pair; a missing value (JSON null) is NaN for a mean and +inf (a failure) for an AUC."""
    missing = np.inf if kind == "auc" else np.nan
    return np.array([missing if r.get(key) is None else float(r[key]) for r in rows], dtype=np.float64)


def groups(names: Sequence[str], kind: str, block: int = 5) -> list[np.ndarray]:
    """The pairs that are drawn together, as index arrays: synthetic homography pairs by photo (``photo#k``),
    HPatches pairs by sequence (``sequence/1-k``: they share image 1), any other name alone; pose pairs in blocks of
    ``block`` consecutive pairs (a video sequence's neighbours)."""
    if kind == POSE:
        n = len(names)
        return [np.arange(s, min(s + block, n)) for s in range(0, n, max(1, block))]
    by_source: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        source = name.rsplit("#", 1)[0] if "#" in name else name.rsplit("/", 1)[0] if "/" in name else name
        by_source.setdefault(source, []).append(i)
    return [np.array(v) for v in by_source.values()]


def _means(values: np.ndarray, members: list[np.ndarray], draws: np.ndarray) -> tuple[float, np.ndarray]:
    """The mean of the finite values (all pairs, then each draw of groups) from per-group sums and counts."""
    finite = np.isfinite(values)
    sums = np.array([values[m][finite[m]].sum() for m in members])
    counts = np.array([finite[m].sum() for m in members], dtype=np.float64)
    s, c = sums[draws].sum(1), counts[draws].sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (float(sums.sum() / counts.sum()) if counts.sum() else float("nan")), np.where(c > 0, s / c, np.nan)


def paired_bootstrap(rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]], metrics: dict[str, Metric],
                     members: list[np.ndarray] | None = None, samples: int = 10000, seed: int = 0,
                     level: float = 0.95) -> dict[str, dict[str, float]]:
    """Per metric: A's value, B's value, A - B and the ``level`` interval of A - B over ``samples`` draws, with
    replacement, of the groups ``members`` (index arrays into the rows; default: every pair its own group), the
    same draw for both methods. ``rows_a`` and ``rows_b`` are per-pair rows in the same pair order.
    """
    n = len(rows_a)
    if n == 0 or n != len(rows_b):
        raise ValueError(f"need the same, non-zero number of pairs for both methods (got {n} and {len(rows_b)})")
    members = members if members is not None else [np.array([i]) for i in range(n)]
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(members), size=(int(samples), len(members)))
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    full: dict[tuple, tuple[float, float]] = {}
    boot: dict[tuple, np.ndarray] = {}
    # Each per-pair value once: the AUCs of one error at all their thresholds in one pass per draw.
    columns: dict[tuple[str, str], list[float | None]] = {}
    for key, kind, threshold in metrics.values():
        columns.setdefault((key, kind), []).append(threshold)
    for (key, kind), thresholds in columns.items():
        a, b = _values(rows_a, key, kind), _values(rows_b, key, kind)
        if kind == "mean":
            (va, ba), (vb, bb) = _means(a, members, draws), _means(b, members, draws)
            full[(key, kind, None)], boot[(key, kind, None)] = (va, vb), ba - bb
            continue
        va, vb = auc(a, thresholds), auc(b, thresholds)
        diffs = np.empty((len(draws), len(thresholds)))
        for i, draw in enumerate(draws):
            idx = np.concatenate([members[g] for g in draw])
            diffs[i] = np.subtract(auc(a[idx], thresholds), auc(b[idx], thresholds))
        for j, t in enumerate(thresholds):
            full[(key, kind, t)], boot[(key, kind, t)] = (float(va[j]), float(vb[j])), diffs[:, j]
    out: dict[str, dict[str, float]] = {}
    for name, (key, kind, threshold) in metrics.items():
        va, vb = full[(key, kind, threshold)]
        diff = boot[(key, kind, threshold)]
        diff = diff[np.isfinite(diff)]  # a draw of only NaN values (e.g. recall without ground truth) has no mean
        lo, hi = (np.percentile(diff, [lo_q, hi_q]) if diff.size else (np.nan, np.nan))
        out[name] = {"a": va, "b": vb, "diff": va - vb, "low": float(lo), "high": float(hi),
                     "a_better": float(np.mean(diff > 0)) if diff.size else float("nan")}
    return out


def _settings(data: dict[str, Any], kind: str) -> dict[str, Any]:
    source = data.get("options", {}) if kind == POSE else data
    out = {k: source.get(k) for k in SETTINGS[kind]}
    for k in PATH_SETTINGS:
        if out.get(k):
            out[k] = Path(str(out[k])).name
    return out


def load_runs(paths: Sequence[str | Path]) -> tuple[str, dict[str, dict[str, list[dict[str, Any]]]], list[str]]:
    """(kind, {pair set: {method: per-pair rows}}, warnings) from eval-homography or eval-pose JSON files.

    kind is 'homography' or 'pose'; a homography file has one pair set ('homography'), a pose file one per dataset.
    Files of other settings (pairs, features, keypoints, thresholds) are refused. A method found in several files
    keeps the first file's rows; a warning says where another file disagrees.
    """
    kind, first_settings = None, None
    sets: dict[str, dict[str, list[dict[str, Any]]]] = {}
    origin: dict[tuple[str, str], str] = {}
    warnings: list[str] = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        if "per_pair" in data:
            this, found = HOMOGRAPHY, {HOMOGRAPHY: data["per_pair"]}
        elif "datasets" in data:
            this, found = POSE, {name: d.get("per_pair", {}) for name, d in data["datasets"].items()}
        else:
            raise ValueError(f"{path}: no per-pair rows (not an eval-homography or eval-pose JSON)")
        if kind is not None and this != kind:
            raise ValueError(f"{path} is an eval-{this} result, the files before it eval-{kind}: compare one kind")
        kind, settings = this, _settings(data, this)
        if first_settings is None:
            first_settings = (settings, str(path))
        else:
            other = {k: (first_settings[0][k], v) for k, v in settings.items() if first_settings[0][k] != v}
            if other:
                raise ValueError(f"{path} was evaluated with other settings than {first_settings[1]} ("
                                 + ", ".join(f"{k}: {a!r} there, {b!r} here" for k, (a, b) in other.items())
                                 + "): its pairs are not the same pairs")
        for set_name, methods in found.items():
            for method, rows in methods.items():
                if not isinstance(rows, list) or not all(isinstance(r, dict) and "pair" in r for r in rows):
                    raise ValueError(f"{path}: {set_name}, {method}: per-pair rows must be a list of objects with "
                                     "a 'pair' name (as eval-homography and eval-pose write them)")
                have = sets.setdefault(set_name, {})
                if method not in have:
                    have[method], origin[(set_name, method)] = rows, str(path)
                    continue
                problem = _disagreement(have[method], rows, IDENTITY_KEYS[kind])
                if problem:
                    warnings.append(f"{set_name}: {method} in {path} {problem} than in {origin[(set_name, method)]}")
    if kind is None:
        raise ValueError("no result files given")
    return kind, sets, warnings


def _disagreement(rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]], keys: Sequence[str]) -> str:
    """'' where two files' rows of one method agree on ``keys`` pair by pair, else what differs."""
    if [r["pair"] for r in rows_a] != [r["pair"] for r in rows_b]:
        return "was evaluated on other pairs"
    differ = sum(any(ra.get(k) != rb.get(k) for k in keys) for ra, rb in zip(rows_a, rows_b))
    return (f"has other results in {differ} of {len(rows_a)} pairs (differences across these files also carry "
            "run-to-run noise)") if differ else ""


def aligned(rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]]) -> tuple[list, list]:
    """The two methods' rows in one pair order; an error unless both evaluated exactly the same pairs."""
    names_a, names_b = [r["pair"] for r in rows_a], [r["pair"] for r in rows_b]
    if names_a == names_b:
        return rows_a, rows_b
    if len(set(names_a)) == len(names_a) and sorted(names_a) == sorted(names_b):
        by_name = {r["pair"]: r for r in rows_b}
        return rows_a, [by_name[n] for n in names_a]
    raise ValueError(f"the methods were evaluated on different pairs ({len(names_a)} and {len(names_b)} pairs): "
                     "compare runs of the same pairs only")


def compare(paths: Sequence[str | Path], methods: Sequence[str], baseline: str | None = None, samples: int = 10000,
            seed: int = 0, block: int = 5) -> dict[str, Any]:
    """Every method of ``methods`` against ``baseline`` (default: the last one) on every pair set that has all of
    them (the others are listed under ``skipped``)."""
    baseline = baseline or (methods[-1] if methods else None)
    others = [m for m in methods if m != baseline]
    if baseline is None or not others:
        raise ValueError("give at least two methods: the ones to compare and the baseline")
    kind, sets, warnings = load_runs(paths)
    metrics = HOMOGRAPHY_METRICS if kind == HOMOGRAPHY else POSE_METRICS
    result: dict[str, Any] = {"kind": kind, "baseline": baseline, "samples": samples, "seed": seed,
                              "block": block if kind == POSE else None, "warnings": warnings, "sets": {},
                              "skipped": {}}
    for set_name, rows in sets.items():
        missing = [m for m in [baseline, *others] if not rows.get(m)]
        if missing:
            result["skipped"][set_name] = f"no per-pair rows for {', '.join(missing)}"
            continue
        members = groups([r["pair"] for r in rows[baseline]], kind, block)
        compared = {}
        for m in others:
            base_rows, m_rows = aligned(rows[baseline], rows[m])  # in the baseline's pair order, as the groups
            compared[m] = paired_bootstrap(m_rows, base_rows, metrics, members, samples, seed)
        result["sets"][set_name] = {"pairs": len(rows[baseline]), "groups": len(members), "methods": compared}
    if not result["sets"]:
        raise ValueError("no pair set has per-pair rows for all of " + ", ".join([*others, baseline]) + ": "
                         + "; ".join(f"{k}: {v}" for k, v in result["skipped"].items()))
    return result


def format_comparison(result: dict[str, Any]) -> str:
    lines = [f"paired bootstrap, {result['samples']} draws, 95 % intervals; baseline (B): {result['baseline']}"]
    for set_name, s in result["sets"].items():
        unit = "photos" if result["kind"] == HOMOGRAPHY else f"blocks of {result['block']}"
        for method, metrics in s["methods"].items():
            lines.append(f"{set_name} ({s['pairs']} pairs, drawn as {s['groups']} {unit}): A = {method}")
            lines.append(f"  {'metric':<12} {'A':>8} {'B':>8} {'A - B':>8}  {'95 % interval':<19} {'A > B in':>9}")
            for name, v in metrics.items():
                lines.append(f"  {name:<12} {v['a']:8.4f} {v['b']:8.4f} {v['diff']:+8.4f}  "
                             f"[{v['low']:+.4f}, {v['high']:+.4f}]  {100 * v['a_better']:8.1f}%")
    lines.extend(f"skipped {k}: {v}" for k, v in result["skipped"].items())
    lines.extend(f"warning: {w}" for w in result["warnings"])
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="eval-homography or eval-pose JSON files (--json) of the same pairs")
    p.add_argument("--methods", required=True, help="comma list of method names as in the files")
    p.add_argument("--baseline", default=None, help="the method the others are compared with (default: the last)")
    p.add_argument("--samples", type=int, default=10000, help="bootstrap draws (default: %(default)s)")
    p.add_argument("--block", type=int, default=5,
                   help="pose pairs are drawn in blocks of this many consecutive pairs (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (default: %(default)s)")
    p.add_argument("--json", default=None, help="write the comparison here")


def run_cli(args: argparse.Namespace) -> int:
    if args.samples < 100:
        raise ValueError("--samples must be at least 100")
    if args.block < 1:
        raise ValueError("--block must be at least 1")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    result = compare(args.runs, methods, args.baseline, args.samples, args.seed, args.block)
    print(format_comparison(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(json_safe(result), indent=1, allow_nan=False))
        print(f"wrote {args.json}")
    return 0
