"""Paired differences between methods evaluated on the same pairs, with bootstrap 95 % intervals.

    mambaglue compare RUN.json [RUN.json ...] --methods A,B[,C ...] [--baseline B] [--samples 10000] [--json out.json]

Reads the per-pair rows that ``eval-homography`` and ``eval-pose`` write (``per_pair``) and, for every method
against the baseline (the last of ``--methods`` unless ``--baseline`` names another), prints each metric of both,
their difference, and a 95 % interval of the difference from a paired bootstrap: the pairs are drawn with
replacement, the *same* draw for both methods, and the metric is computed again on each draw. The difference is
exactly the difference of the numbers the evaluation printed (same means, same AUC), so the interval says how
much of it the choice of pairs could explain. It does not cover the other noise source of a training comparison,
the training run itself (seed): compare runs of several seeds for that.

Homography results: precision and recall (means over pairs), AUC@1/3/5 px of the MAGSAC corner error. Pose
results: AUC@5/10/20° per dataset. Runs may come from different files when they evaluated the same pairs (the
evaluations are deterministic: a method that is in two files must have the same per-pair numbers in both; where it
does not, a warning says so, since the cross-file differences then carry run-to-run noise too). Pairs of one
video sequence are not independent (neighbouring frames), so there the interval is narrower than it should be.
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

HOMOGRAPHY = "homography"
# Per-pair value each metric is computed from, and how: 'mean' over the pairs (non-finite values left out, as the
# evaluation's summaries do) or 'auc' of the errors up to the threshold (a missing error is a failure: +inf).
HOMOGRAPHY_METRICS = {"precision": ("precision", "mean", None), "recall": ("recall", "mean", None),
                      **{f"auc@{t:g}px": ("error_magsac", "auc", t) for t in AUC_THRESHOLDS}}
POSE_METRICS = {f"auc@{t:g}": ("err_deg", "auc", t) for t in POSE_THRESHOLDS}
# The per-pair values that must agree when one method is in two files.
IDENTITY_KEYS = {HOMOGRAPHY: ("precision", "error_magsac", "matches"), "pose": ("err_deg", "matches")}


def _values(rows: list[dict[str, Any]], key: str, kind: str) -> np.ndarray:
    """One float per pair; a missing value (JSON null) is NaN for a mean and +inf (a failure) for an AUC."""
    missing = np.inf if kind == "auc" else np.nan
    return np.array([missing if r.get(key) is None else float(r[key]) for r in rows], dtype=np.float64)


def _means(values: np.ndarray) -> np.ndarray:
    """The mean of the finite values of each row of ``values`` (samples, pairs); NaN for a row without any."""
    finite = np.isfinite(values)
    counts = finite.sum(1)
    sums = np.where(finite, values, 0.0).sum(1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _aucs(errors: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """``auc`` of each row of ``errors`` (samples, pairs) at every threshold: (samples, thresholds)."""
    return np.array([auc(row, thresholds) for row in errors]).reshape(len(errors), len(thresholds))


def paired_bootstrap(rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]], metrics: dict[str, tuple],
                     samples: int = 10000, seed: int = 0, level: float = 0.95) -> dict[str, dict[str, float]]:
    """Per metric: A's value, B's value, A - B and the ``level`` interval of A - B over ``samples`` resamplings of
    the pairs (both methods on the same draw). ``rows_a`` and ``rows_b`` are per-pair rows in the same pair order.
    """
    n = len(rows_a)
    if n == 0 or n != len(rows_b):
        raise ValueError(f"need the same, non-zero number of pairs for both methods (got {n} and {len(rows_b)})")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(int(samples), n))
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    # Each per-pair value once: the AUCs of one error at all their thresholds in one pass per draw.
    columns: dict[tuple[str, str], list[float | None]] = {}
    for key, kind, threshold in metrics.values():
        columns.setdefault((key, kind), []).append(threshold)
    full: dict[tuple[str, str, float | None], tuple[float, float]] = {}
    boot: dict[tuple[str, str, float | None], np.ndarray] = {}
    for (key, kind), thresholds in columns.items():
        a, b = _values(rows_a, key, kind), _values(rows_b, key, kind)
        if kind == "mean":
            va, vb = float(_means(a[None])[0]), float(_means(b[None])[0])
            full[(key, kind, None)] = (va, vb)
            boot[(key, kind, None)] = _means(a[draws]) - _means(b[draws])
            continue
        va, vb = _aucs(a[None], thresholds)[0], _aucs(b[None], thresholds)[0]
        diffs = _aucs(a[draws], thresholds) - _aucs(b[draws], thresholds)
        for j, t in enumerate(thresholds):
            full[(key, kind, t)] = (float(va[j]), float(vb[j]))
            boot[(key, kind, t)] = diffs[:, j]
    out: dict[str, dict[str, float]] = {}
    for name, (key, kind, threshold) in metrics.items():
        va, vb = full[(key, kind, threshold)]
        diff = boot[(key, kind, threshold)]
        diff = diff[np.isfinite(diff)]
        lo, hi = (np.percentile(diff, [lo_q, hi_q]) if diff.size else (np.nan, np.nan))
        out[name] = {"a": va, "b": vb, "diff": va - vb, "low": float(lo), "high": float(hi),
                     "a_better": float(np.mean(diff > 0)) if diff.size else float("nan")}
    return out


def load_runs(paths: Sequence[str | Path]) -> tuple[str, dict[str, dict[str, list[dict[str, Any]]]], list[str]]:
    """(kind, {pair set: {method: per-pair rows}}, warnings) from eval-homography or eval-pose JSON files.

    kind is 'homography' or 'pose'; a homography file has one pair set ('homography'), a pose file one per dataset.
    A method found in several files keeps the first file's rows; a warning says where another file disagrees.
    """
    kind = None
    sets: dict[str, dict[str, list[dict[str, Any]]]] = {}
    origin: dict[tuple[str, str], str] = {}
    warnings: list[str] = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        if "per_pair" in data:
            this, found = HOMOGRAPHY, {HOMOGRAPHY: data["per_pair"]}
        elif "datasets" in data:
            this, found = "pose", {name: d.get("per_pair", {}) for name, d in data["datasets"].items()}
        else:
            raise ValueError(f"{path}: no per-pair rows (not an eval-homography or eval-pose JSON)")
        if kind is not None and this != kind:
            raise ValueError(f"{path} is an eval-{this} result, the files before it eval-{kind}: compare one kind")
        kind = this
        for set_name, methods in found.items():
            for method, rows in methods.items():
                have = sets.setdefault(set_name, {})
                if method not in have:
                    have[method], origin[(set_name, method)] = rows, str(path)
                    continue
                differ = _count_differences(have[method], rows, IDENTITY_KEYS[kind])
                if differ:
                    warnings.append(f"{set_name}: {method} differs from {origin[(set_name, method)]} in {differ} of "
                                    f"{len(rows)} pairs in {path}: differences across these files also carry "
                                    "run-to-run noise")
    if kind is None:
        raise ValueError("no result files given")
    return kind, sets, warnings


def _count_differences(rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]], keys: Sequence[str]) -> int:
    if [r["pair"] for r in rows_a] != [r["pair"] for r in rows_b]:
        return max(len(rows_a), len(rows_b))
    return sum(any(ra.get(k) != rb.get(k) for k in keys) for ra, rb in zip(rows_a, rows_b))


def aligned(rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]]) -> tuple[list, list]:
    """The two methods' rows in one pair order; an error unless both evaluated exactly the same pairs."""
    names_a, names_b = [r["pair"] for r in rows_a], [r["pair"] for r in rows_b]
    if names_a == names_b:
        return rows_a, rows_b
    if len(set(names_a)) == len(names_a) and sorted(names_a) == sorted(names_b):
        by_name = {r["pair"]: r for r in rows_b}
        return rows_a, [by_name[n] for n in names_a]
    raise ValueError(f"the methods were evaluated on different pairs ({len(names_a)} and {len(names_b)} pairs, "
                     f"{len(set(names_a) ^ set(names_b))} not in both): compare runs of the same pairs only")


def compare(paths: Sequence[str | Path], methods: Sequence[str], baseline: str | None = None, samples: int = 10000,
            seed: int = 0) -> dict[str, Any]:
    """Every method of ``methods`` against ``baseline`` (default: the last one) on every pair set it shares."""
    if len(methods) < 2 and baseline is None:
        raise ValueError("give at least two methods (or one and --baseline)")
    baseline = baseline or methods[-1]
    others = [m for m in methods if m != baseline]
    kind, sets, warnings = load_runs(paths)
    metrics = HOMOGRAPHY_METRICS if kind == HOMOGRAPHY else POSE_METRICS
    result: dict[str, Any] = {"kind": kind, "baseline": baseline, "samples": samples, "seed": seed,
                              "warnings": warnings, "sets": {}}
    for set_name, rows in sets.items():
        missing = [m for m in [baseline, *others] if m not in rows]
        if missing:
            raise ValueError(f"{set_name}: no per-pair rows for {', '.join(missing)} in these files "
                             f"(there: {', '.join(rows) or 'none'})")
        result["sets"][set_name] = {
            "pairs": len(rows[baseline]),
            "methods": {m: paired_bootstrap(*aligned(rows[m], rows[baseline]), metrics, samples, seed) for m in others},
        }
    return result


def format_comparison(result: dict[str, Any]) -> str:
    lines = [f"paired bootstrap, {result['samples']} resamplings of the pairs, 95 % intervals; "
             f"baseline (B): {result['baseline']}"]
    for set_name, s in result["sets"].items():
        for method, metrics in s["methods"].items():
            lines.append(f"{set_name} ({s['pairs']} pairs): A = {method}")
            lines.append(f"  {'metric':<12} {'A':>8} {'B':>8} {'A - B':>8}  {'95 % interval':<19} {'A > B in':>9}")
            for name, v in metrics.items():
                lines.append(f"  {name:<12} {v['a']:8.4f} {v['b']:8.4f} {v['diff']:+8.4f}  "
                             f"[{v['low']:+.4f}, {v['high']:+.4f}]  {100 * v['a_better']:8.1f}%")
    lines.extend(f"warning: {w}" for w in result["warnings"])
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="eval-homography or eval-pose JSON files (--json) of the same pairs")
    p.add_argument("--methods", required=True, help="comma list of method names as in the files")
    p.add_argument("--baseline", default=None, help="the method the others are compared with (default: the last)")
    p.add_argument("--samples", type=int, default=10000, help="bootstrap resamplings (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the resampling (default: %(default)s)")
    p.add_argument("--json", default=None, help="write the comparison here")


def run_cli(args: argparse.Namespace) -> int:
    if args.samples < 100:
        raise ValueError("--samples must be at least 100")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    result = compare(args.runs, methods, args.baseline, args.samples, args.seed)
    print(format_comparison(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(json_safe(result), indent=1, allow_nan=False))
        print(f"wrote {args.json}")
    return 0
