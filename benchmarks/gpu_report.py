"""One JSON and one Markdown table from the outputs of ``scripts/gpu_check.sh`` (also its ``--dry-run``).

    .venv/bin/python benchmarks/gpu_report.py OUT_DIR      # reads OUT_DIR/steps.tsv and the step JSONs

Targets (issue 15, H100/H200-class GPU): <= 3 ms per pair at batch 1 with 1024 keypoints, >= 1000 pairs/s
batched, node >= 60 Hz. A target is "met", "missed", or "n/a" where its step did not run (e.g. the dry run on
a CPU, which checks the plan, not the numbers).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

TARGETS = {"matcher_ms_batch1_1024": 3.0, "graph_ms_batch1_1024": 3.0, "pairs_per_s_batched": 1000.0,
           "node_hz": 60.0}


def load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def summarise(out: Path) -> dict[str, Any]:
    steps = []
    for line in (out / "steps.tsv").read_text().splitlines():
        name, status, seconds, log = (line.split("\t") + ["", "", ""])[:4]
        steps.append({"step": name, "status": status, "seconds": float(seconds or 0), "log": log})
    result: dict[str, Any] = {"steps": steps, "environment": load(out / "environment.json") or {}}
    bench = load(out / "bench.json")
    if bench:
        result["bench"] = {"device": bench["device"], "features": bench["features"],
                           "matcher_ms": bench["matcher_ms"], "stop_layer": bench["stop_layer"],
                           "keypoints": bench["keypoints"]}
    multi = load(out / "multi_camera.json")
    if multi:
        result["multi_camera"] = multi
    compiled = load(out / "compiled.json")
    if compiled:
        result["compiled"] = compiled
    extraction = load(out / "extract_graph.json")
    if extraction:
        result["extract_graph"] = extraction
    node = load(out / "node_rate.json")
    graph_node = load(out / "node_graph.json")
    if graph_node:  # the node with cuda_graph on: its rows join the node table (marked)
        node = {"runs": (node or {"runs": []})["runs"] + graph_node["runs"]}
    if node:
        result["node_rate"] = [{**{k: r[k] for k in ("mode", "features", "processed_hz", "latency_p50_ms",
                                                      "latency_p95_ms", "precision_used", "device", "input_hz",
                                                      "pipeline")}, "cuda_graph": bool(r.get("cuda_graph"))}
                               for r in node["runs"]]
    # headline numbers against the targets
    head: dict[str, Any] = {}
    if bench:
        per_k = bench["matcher_ms"].get("mambaglue_adaptive") or bench["matcher_ms"].get("mambaglue", {})
        if "1024" in per_k:
            head["matcher_ms_batch1_1024"] = per_k["1024"]
    if compiled:  # the network as one CUDA graph at a fixed padded size: the batch-1 path the target is about
        one = [r["graph_ms_per_pair"] for r in compiled["rows"]
               if r["keypoints"] == 1024 and r["batch"] == 1 and "graph_ms_per_pair" in r]
        if one:
            head["graph_ms_batch1_1024"] = one[0]
    rates = [r["pairs_per_s_batched"] for r in (multi or {}).get("rows", [])]
    rates += [r[f"{p}_pairs_per_s"] for r in (compiled or {}).get("rows", []) if r["batch"] > 1
              for p in compiled.get("paths", []) if f"{p}_pairs_per_s" in r]
    if rates:
        head["pairs_per_s_batched"] = max(rates)
    if node:
        head["node_hz"] = max(r["processed_hz"] for r in node["runs"] if r["mode"] == "mono")
    result["headline"] = {k: {"value": head.get(k), "target": t,
                              "verdict": "n/a" if k not in head or result["environment"].get("dry_run")
                              else ("met" if (head[k] <= t if "_ms_" in k else head[k] >= t)
                                    else "missed")}
                          for k, t in TARGETS.items()}
    return result


def table(r: dict[str, Any]) -> str:
    env = r["environment"]
    lines = [f"GPU check on {env.get('device', '?')} (torch {env.get('torch', '?')}, CUDA {env.get('cuda', '?')}, "
             f"mamba_ssm {env.get('mamba_ssm', '?')}, triton {env.get('triton', '?')})"
             + (" - DRY RUN on CPU: plan checked, numbers are not GPU numbers" if env.get("dry_run") else ""), "",
             "| step | status | seconds |", "|---|---|---:|"]
    lines += [f"| {s['step']} | {s['status']} | {s['seconds']:.0f} |" for s in r["steps"]]
    lines += ["", "| headline | value | target | verdict |", "|---|---:|---:|---|"]
    names = {"matcher_ms_batch1_1024": "matcher ms/pair, batch 1, 1024 kp (adaptive, eager)",
             "graph_ms_batch1_1024": "matcher ms/pair, batch 1, 1024 kp padded (one CUDA graph, all layers)",
             "pairs_per_s_batched": "pairs/s, batched (best N: eager, graph or compiled)",
             "node_hz": "node processed Hz (mono)"}
    for k, h in r["headline"].items():
        value = "-" if h["value"] is None else f"{h['value']:.2f}"
        lines.append(f"| {names[k]} | {value} | {h['target']:g} | {h['verdict']} |")
    if "bench" in r:
        b = r["bench"]
        ks = list(b["keypoints"])
        lines += ["", f"| matcher ms/pair, batch 1 ({b['features']}) | " + " | ".join(f"{k} kp" for k in ks) + " |",
                  "|---|" + "---:|" * len(ks)]
        for name, per_k in b["matcher_ms"].items():
            lines.append(f"| {name} | " + " | ".join(f"{per_k[k]:.2f}" for k in ks) + " |")
    if "multi_camera" in r:
        lines += ["", "| streams N | pairs/s separate | pairs/s batched | speed-up |", "|---:|---:|---:|---:|"]
        lines += [f"| {x['streams']} | {x['pairs_per_s_separate']:.1f} | {x['pairs_per_s_batched']:.1f} | "
                  f"{x['speedup']:.2f}x |" for x in r["multi_camera"]["rows"]]
    if "compiled" in r:
        paths = r["compiled"].get("paths", [])
        lines += ["", "| padded kp | batch | eager ms/pair (stop layer) | " + " | ".join(
            f"{p} ms/pair (speed-up, matches agree)" for p in paths) + " |", "|---:|---:|---:|" + "---:|" * len(paths)]
        lines += [f"| {x['keypoints']} | {x['batch']} | {x['eager_ms_per_pair']:.3f} ({x['stop_layer_eager']}) | "
                  + " | ".join(f"{x[p + '_ms_per_pair']:.3f} ({x[p + '_speedup']:.2f}x, {x[p + '_agreement']:.3f})"
                               for p in paths) + " |" for x in r["compiled"]["rows"]]
    if "extract_graph" in r:
        lines += ["", "| XFeat extraction | keypoints | eager ms | one CUDA graph ms (speed-up, same keypoints) |",
                  "|---|---:|---:|---:|"]
        lines += [f"| {x['width']}x{x['height']} | {x['keypoints']} | {x['eager_ms']:.2f} | {x['fixed_ms']:.2f} "
                  f"({x['speedup']:.2f}x, {x['agreement']:.3f}) |" for x in r["extract_graph"]["rows"]]
    if "node_rate" in r:
        lines += ["", "| node | input Hz | processed Hz | latency p50 / p95 ms | precision |",
                  "|---|---:|---:|---:|---|"]
        lines += [f"| {x['mode']} {x['features']}" + (", pipeline" if x.get("pipeline") else "")
                  + (", CUDA graph" if x.get("cuda_graph") else "") + f" | {x['input_hz']:.0f} | "
                  f"{x['processed_hz']:.1f} | {x['latency_p50_ms']:.1f} / {x['latency_p95_ms']:.1f} | "
                  f"{x['precision_used']} |" for x in r["node_rate"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    result = summarise(out)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1))
    text = table(result)
    (out / "gpu_check.md").write_text(text)
    print(text)
    return 0 if all(s["status"] in ("ok", "skipped") for s in result["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
