#!/usr/bin/env python3
"""Print the result tables (markdown) of README.md and docs/results.md from the JSON files that
`scripts/results.sh` writes.

    .venv/bin/python scripts/results_tables.py [--out out]

Every number in the README's headline table (first section) and in docs/results.md (the sections after it)
is printed by this script from those files; a table whose file is missing is skipped with a note. Method labels: ``mambaglue@out/ablation_xfeat_<name>/...`` becomes
the ablation's name.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any, Callable


def load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def label(method: str) -> str:
    if method.endswith("+noprune"):
        return label(method[: -len("+noprune")]) + ", pruning off"
    ablation_long = re.search(r"ablation_xfeat_(v2_\w+|v1design)_long/", method)  # trained with 600 regressor steps
    budget = (", 1000 + 600 steps" if "_long_reg600/" in method or ablation_long
              else ", 1000 + 200 steps" if "_long/" in method else "")
    if re.search(r"ablation_aliked_v2_reg600/", method):
        return "MambaGlue v2 (Hilbert, bidirectional, gated), 418 + 600 steps"
    if re.search(r"ablation_xfeat_v1budget_v2_reg600/", method):
        return "MambaGlue v2 (Hilbert, bidirectional, gated), 837 + 600 steps"
    m = re.search(r"ablation_xfeat_v1budget_v2_(forward_only|concat)_reg600/", method)
    if m:  # v2's one-factor ablations at the same budget
        return {"forward_only": "v2, forward scan only", "concat": "v2, ungated 4d message (concat)"}[m.group(1)] + \
            ", 837 + 600 steps"
    m = re.search(r"ablation_xfeat_long3k_(v2|attention)_reg600/", method)
    if m:  # issue 11's longer budget: 3000 matcher steps on 3000 pairs
        return {"v2": "MambaGlue v2 (Hilbert, bidirectional, gated)",
                "attention": "attention only (LighterGlue fine-tuned)"}[m.group(1)] + ", 3000 + 600 steps"
    if re.match(r"mambaglue@.*mambaglue_xfeat_v1\.pt(\+bf16)?$", method):  # results.sh xfeat_v1_weights
        return "MambaGlue v1 (shipped until 2026-12-05)" + (", bf16" if method.endswith("+bf16") else "")
    if re.match(r"mambaglue@.*train_xfeat_v2(_long)?(_reg600)?/", method):
        return "MambaGlue v2 design (Hilbert, bidirectional, gated)" + budget
    m = re.match(r"mambaglue@.*ablation_xfeat_(\w+?)(_long)?(_reg600)?/", method)
    if m:
        return {"attention": "attention only (LighterGlue fine-tuned)", "mamba": "Mamba only",
                "linear": "attention+Mamba, linear regressor", "v2_score_order": "v2, keypoints scanned in score order",
                "v2_forward_only": "v2, forward scan only", "v2_concat": "v2, ungated 4d message (concat)",
                "v1design": "version-1 design"}.get(m.group(1), m.group(1)) + budget
    return {"mambaglue": "MambaGlue (shipped)", "lightglue": "LightGlue (released weights)",
            "mambaglue+bf16": "MambaGlue, bf16", "lightglue+bf16": "LightGlue, bf16", "orb": "ORB"}.get(method, method)


def md(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def homography(r: dict[str, Any]) -> str:
    rows = []
    for m, s in r["methods"].items():
        rows.append([label(m), s["precision"], s["recall"], s["auc@1px"], s["auc@3px"], s["auc@5px"], s["auc_dlt@3px"],
                     round(s["mean_matches"]), f"{s['mean_stop_layer']:.2f} / {s['num_layers']}",
                     round(s["median_ms_per_pair"])])
    head = f"{r['features']}, {r['pairs']} pairs, seed {r['seed']}, {r['max_keypoints']} keypoints, alpha 0.95 unless 'exit off'"
    return head + "\n\n" + md(["method", "precision", "recall", "AUC@1px", "AUC@3px", "AUC@5px", "AUC@3px DLT",
                               "matches", "stop layer", "ms/pair (median)"], rows)


def headline(runs: list[tuple[str, dict[str, Any] | None, str]]) -> str:
    """README headline: MambaGlue against LightGlue per front end (rows of the homography tables).

    Each run: (front end, result, the method that is the shipped MambaGlue in it)."""
    rows = []
    for front_end, r, shipped in runs:
        if r is None:
            continue
        for m in (shipped, "lightglue"):
            s = r["methods"].get(m)
            if s is not None:
                rows.append([front_end, label("mambaglue" if m == shipped else m), s["precision"], s["recall"],
                             s["auc@3px"], f"{s['mean_stop_layer']:.2f} / {s['num_layers']}",
                             round(s["median_ms_per_pair"])])
    return md(["front end", "method", "precision", "recall", "AUC@3px", "stop layer", "ms/pair (median)"], rows)


def sweep(r: dict[str, Any]) -> str:
    rows = []
    for m, entries in r.get("alpha_sweep", {}).items():
        for e in entries:
            rows.append([label(m), "off" if e["alpha"] is None else e["alpha"], e["precision"], e["auc@3px"],
                         f"{e['mean_stop_layer']:.2f}", round(e["median_ms_per_pair"])])
    return f"alpha sweep ({r['features']})\n\n" + md(["method", "alpha", "precision", "AUC@3px", "stop layer",
                                                      "ms/pair (median)"], rows)


def pose(r: dict[str, Any]) -> str:
    rows = []
    for name, ds in r["datasets"].items():
        for m, s in ds["methods"].items():
            rows.append([name, label(m), s["pairs"], s["auc@5"], s["auc@10"], s["auc@20"], f"{s['median_err_deg']:.2f}",
                         round(s["matches"]), round(s["inliers"]), s["failures"]])
    return f"relative pose ({r['features']}, {r['max_keypoints']} keypoints)\n\n" + md(
        ["dataset", "method", "pairs", "AUC@5°", "AUC@10°", "AUC@20°", "median err °", "matches", "inliers", "failures"], rows)


def replay(name: str, r: dict[str, Any]) -> str:
    rows = []
    for m, s in r.get("methods", {r.get("method", "?"): r}).items():
        rows.append([label(m), f"{s['frames_processed']}/{s['frames_in']}", s["poses"], f"{s['ate_m']:.4f}",
                     f"{s['rpe_trans_m']:.4f}", f"{s['rpe_rot_deg']:.3f}", round(s["mean_matches"]),
                     f"{s['mean_inlier_ratio']:.2f}", round(s["latency_ms_p50"]), round(s["latency_ms_p95"])])
    return f"replay: {name}\n\n" + md(["method", "processed", "poses", "ATE m", "RPE trans m", "RPE rot °", "matches",
                                      "inlier ratio", "latency p50 ms", "p95 ms"], rows)


def stereo_replay(name: str, r: dict[str, Any]) -> str:
    """Metric (stereo) replay: RPE per metre, KITTI-style drift and the median step-length ratio too."""
    def f(v: Any, fmt: str, scale: float = 1.0) -> str:
        return "-" if v is None else fmt.format(v * scale)

    rows = []
    for m, s in r.get("methods", {r.get("method", "?"): r}).items():
        rows.append([label(m), f"{s['frames_processed']}/{s['frames_in']}", s["poses"], f(s["ate_m"], "{:.4f}"),
                     f(s.get("rpe_trans_per_m"), "{:.2f}", 100.0), f(s.get("rpe_rot_deg_per_m"), "{:.3f}"),
                     f(s.get("drift_pct"), "{:.2f}"), f(s.get("drift_deg_per_100m"), "{:.2f}"),
                     f(s.get("step_ratio_median"), "{:.3f}"), round(s["mean_matches"]), f"{s['mean_inlier_ratio']:.2f}",
                     round(s["latency_ms_p50"])])
    first = next(iter(r.get("methods", {"": r}).values()))
    lengths = first.get("drift_lengths_m") or []
    seg = f"{lengths[0]:g}..{lengths[-1]:g} m" if lengths else "-"
    return f"replay: {name}\n\n" + md(["method", "processed", "poses", "ATE m", "RPE %/m", "RPE °/m",
                                        f"drift % ({seg})", "drift °/100 m", "step ratio", "matches",
                                        "inlier ratio", "latency p50 ms"], rows)


def bench(r: dict[str, Any]) -> str:
    ks = list(r["keypoints"])
    rows = [[m] + [f"{per[k]:.1f}" + (f" (stop {r['stop_layer'][m][k]})" if "adaptive" in m else "") for k in ks]
            for m, per in r["matcher_ms"].items()]
    rows += [[ratio] + [f"{per[k]:.2f}x" for k in ks] for ratio, per in r.get("ratios", {}).items()]
    head = (f"bench {r['features']} ({r.get('pair', 'moderate')} pair), {r['device']}, torch {r['torch']}, "
            f"{r['threads']} thread(s), load {r['load_average_start']} -> {r['load_average_end']}")
    out = head + "\n\n" + md(["matcher ms/pair"] + [f"{k} kp" for k in ks], rows)
    if r.get("extractor_ms"):
        out += "\n\n" + md(["front end (640x480)", "ms/image", "keypoints"],
                           [[n, f"{ms:.1f}", r["extractor_keypoints"].get(n, "")] for n, ms in r["extractor_ms"].items()])
    return out


def calibration(r: dict[str, Any]) -> str:
    """benchmarks/regressor_calibration.py: layer 3 of each network on homography pairs, and its stop at 0.95."""
    rows = []
    for key, s in r.items():
        method, kind = key.split(" | ")
        if kind != "homography":
            continue
        video = r.get(f"{method} | video")
        rows.append([label(method), s["agree"][2], s["conf"][2], s["confident"][2], s["missed"][2],
                     f"{s['stop']['0.95']:.2f} / {video['stop']['0.95']:.2f}" if video else f"{s['stop']['0.95']:.2f}"])
    return "early exit, layer 3 on homography pairs (30 pairs per kind)\n\n" + md(
        ["network", "agree", "mean confidence", "> λ", "missed", "stop at α 0.95: homography / video"], rows)


def node_rate(name: str, r: dict[str, Any]) -> str:
    rows = [[x["mode"], x["features"], x["max_keypoints"], x.get("precision", "fp32"), x["input_hz"], x["target_hz"] or "-",
             f"{x['processed_hz']:.2f}", round(x["latency_p50_ms"]), round(x["latency_p95_ms"]),
             f"{x['mean_stop_layer']:.1f}/{x['num_layers']}", x["alpha_end"]] for x in r["runs"]]
    return f"node rate: {name} ({r['machine']})\n\n" + md(
        ["mode", "features", "keypoints", "precision", "input Hz", "target Hz", "processed Hz", "latency p50 ms",
         "p95 ms", "stop layer", "alpha at end"], rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out", help="the results folder of scripts/results.sh")
    out = Path(ap.parse_args().out)
    sections: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("eval_xfeat.json", homography), ("eval_xfeat.json", sweep), ("eval_xfeat_ablation_full_depth.json", sweep),
        ("eval_aliked.json", homography),
        ("eval_aliked.json", sweep), ("eval_pose_xfeat.json", pose),
        ("eval_design_xfeat.json", homography), ("eval_design_xfeat.json", sweep),
        ("eval_pose_design_xfeat.json", pose), ("bench/bench_design_xfeat_easy.json", bench),
        ("eval_design_xfeat_long.json", homography), ("eval_design_xfeat_long.json", sweep),
        ("eval_pose_design_xfeat_long.json", pose),
        ("eval_design_xfeat_long_reg600.json", homography), ("eval_design_xfeat_long_reg600.json", sweep),
        ("eval_pose_design_xfeat_long_reg600.json", pose), ("regressor_calibration_long.json", calibration),
        ("bench/bench_design_xfeat_long_reg600_easy.json", bench),
        ("eval_ablations_xfeat_long.json", homography), ("eval_ablations_xfeat_long.json", sweep),
        ("eval_aliked_regressor.json", homography), ("eval_aliked_regressor.json", sweep),
        ("eval_pose_aliked_regressor.json", pose), ("regressor_calibration_aliked.json", calibration),
        ("bench/bench_aliked_regressor_easy.json", bench),
        ("eval_aliked_v2.json", homography), ("eval_aliked_v2.json", sweep), ("eval_pose_aliked_v2.json", pose),
        ("bench/bench_aliked_v2_easy.json", bench),
        ("eval_xfeat_v1budget_v2.json", homography), ("eval_xfeat_v1budget_v2.json", sweep),
        ("eval_pose_xfeat_v1budget_v2.json", pose), ("bench/bench_xfeat_v1budget_v2_easy.json", bench),
        ("eval_xfeat_v1budget_v2_one_factor.json", homography), ("eval_xfeat_v1budget_v2_one_factor.json", sweep),
        ("eval_pose_xfeat_v1budget_v2_one_factor.json", pose),
        ("bench/bench_xfeat_v1budget_v2_forward_only_easy.json", bench),
        ("bench/bench_xfeat_v1budget_v2_concat_easy.json", bench),
        *[section for tag in ("v2", "attention") for section in (
            (f"eval_xfeat_long3k_{tag}.json", homography), (f"eval_xfeat_long3k_{tag}.json", sweep),
            (f"eval_pose_xfeat_long3k_{tag}.json", pose), (f"bench/bench_xfeat_long3k_{tag}_easy.json", bench))],
        *[section for run in ("render_xfeat", "render3k_xfeat") for part in (run, f"{run}_v2", f"{run}_attention")
          for section in ((f"eval_{part}.json", homography), (f"eval_pose_{part}.json", pose))],
        *[(f"bench/bench_{run}_{tag}_easy.json", bench) for run in ("render_xfeat", "render3k_xfeat")
          for tag in ("v2", "attention")],
        *[section for tag in ("v2", "attention") for section in (
            (f"eval_aliked_long_{tag}.json", homography), (f"eval_aliked_long_{tag}.json", sweep),
            (f"eval_pose_aliked_long_{tag}.json", pose), (f"bench/bench_aliked_long_{tag}_easy.json", bench))],
        ("demo/report.json", lambda r: replay("demo (synthetic stereo)", r)),
        ("euroc/report.json", lambda r: replay("EuRoC V1_01 micro (stereo, keyframe policy)", r)),
        ("euroc_previous/report.json", lambda r: replay("EuRoC V1_01 micro (stereo, previous-frame policy)", r)),
        ("kitti/report.json", lambda r: replay("KITTI clip (mono, Sim(3)-aligned)", r)),
        ("kitti_stereo/report.json", lambda r: stereo_replay("KITTI clip (stereo, config/stereo.yaml)", r)),
        ("bench/bench_xfeat.json", bench), ("bench/bench_aliked.json", bench),
        ("bench/bench_xfeat_easy.json", bench), ("bench/bench_aliked_easy.json", bench),
        ("node_rate.json", lambda r: node_rate("default", r)), ("node_rate_5hz.json", lambda r: node_rate("5 Hz target", r)),
        ("node_rate_bf16.json", lambda r: node_rate("bf16", r)),
    ]
    # ALIKED: the run that evaluated the shipped checkpoint's 600-step regressor (eval_regressor_aliked), where
    # it is named by its run folder; once eval_aliked runs again, "mambaglue" there is the same checkpoint
    aliked = load(out / "eval_aliked_regressor.json")
    aliked_run = (("ALIKED", aliked, "mambaglue@out/train_aliked_regressor/mambaglue_aliked.pt") if aliked
                  else ("ALIKED", load(out / "eval_aliked.json"), "mambaglue"))
    print("<!-- README.md: headline (out/eval_xfeat.json, out/eval_aliked_regressor.json) -->")
    print(headline([("XFeat", load(out / "eval_xfeat.json"), "mambaglue"), aliked_run]))
    print()
    print("<!-- docs/results.md -->")
    print()
    for name, fn in sections:
        r = load(out / name)
        print(f"<!-- {out / name} -->")
        print(fn(r) if r is not None else f"({out / name} missing: run scripts/results.sh)")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
