"""The matcher's graph paths against eager, on the same padded pairs, interleaved under the same load:
- ``graph``: ``Matcher.cuda_graph()``, the whole network captured as one CUDA graph (every layer, no exit);
- ``compile``: ``Matcher.compile()`` (torch.compile; on CUDA mode 'reduce-overhead', CUDA graphs between the
  early-exit tests, which stay host decisions);
against eager ``match_batch(pad_to=K)`` with the matcher's default early exit. Fixed keypoint counts K, batch 1
and batched; ms per pair, and how many of eager's matches each path also finds.

Configurations run in the order given and the JSON is rewritten after each, so a run cut short by a time
limit keeps what it measured. The first call of each shape pays the compilation (reported as compile_s).

    .venv/bin/python benchmarks/compiled_matcher.py --device cuda --keypoints 1024,2048,512 --batch 1,32
    .venv/bin/python benchmarks/compiled_matcher.py --device cpu --keypoints 64 --batch 1 --backend eager \
        --paths compile                      # the CPU has no CUDA graphs: checks the plan
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from multi_camera import stream_pairs  # noqa: E402

from mambaglue_ros.evaluation import bench  # noqa: E402
from mambaglue_ros.matcher import Matcher  # noqa: E402


def agreement(a: Any, b: Any) -> float:
    """Share of ``a``'s matches that ``b`` also has."""
    sa, sb = {tuple(x) for x in a.matches.tolist()}, {tuple(x) for x in b.matches.tolist()}
    return len(sa & sb) / max(1, len(sa))


def measure(matchers: dict[str, Any], pairs: list, pad_to: int, repeats: int) -> dict[str, Any]:
    """``matchers``: name -> object with ``match_batch(pairs)`` ('eager' first). Warm-up (compilation) timed
    per path, then ``bench.interleaved`` (rotating order); medians per pair."""
    device = matchers["eager"].matcher.device
    first: dict[str, Any] = {}
    warm_s: dict[str, float] = {}
    for name, m in matchers.items():
        bench.sync(device)
        t0 = time.perf_counter()
        for _ in range(3):  # compile; on CUDA graphs: warm-up, record, replay
            first[name] = m.match_batch(pairs)
        bench.sync(device)
        warm_s[name] = time.perf_counter() - t0
    ms = bench.interleaved({name: (lambda m=m: m.match_batch(pairs)) for name, m in matchers.items()}, repeats,
                           device, warmup=0)
    n = len(pairs)
    row: dict[str, Any] = {"keypoints": pad_to, "batch": n, "matches_eager": len(first["eager"][0].matches),
                           "stop_layer_eager": first["eager"][0].stop_layer}
    for name in matchers:
        row[f"{name}_ms_per_pair"] = ms[name] / n
        row[f"{name}_pairs_per_s"] = 1000.0 * n / ms[name]
        row[f"{name}_warmup_s"] = warm_s[name]
        if name != "eager":
            row[f"{name}_speedup"] = row["eager_ms_per_pair"] / row[f"{name}_ms_per_pair"]
            row[f"{name}_agreement"] = min(agreement(e, c) for e, c in zip(first["eager"], first[name]))
            row[f"{name}_stop_layer"] = first[name][0].stop_layer
    return row


class Padded:
    """``matcher.match_batch(pairs, pad_to)`` as a ``match_batch(pairs)`` (eager and torch.compile paths)."""

    def __init__(self, matcher: Matcher, pad_to: int) -> None:
        self.matcher, self.pad_to = matcher, pad_to

    def match_batch(self, pairs: list) -> list:
        return self.matcher.match_batch(pairs, pad_to=self.pad_to)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", default="xfeat", choices=("xfeat", "aliked", "disk"))
    p.add_argument("--keypoints", default="1024", help="comma list: padded set sizes, in the order to run")
    p.add_argument("--batch", default="1", help="comma list of batch sizes (pairs per forward pass)")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--paths", default="graph,compile", help="comma list of graph, compile")
    p.add_argument("--backend", default="inductor", help="torch.compile backend ('eager' checks the plan fast)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if hasattr(torch, "_dynamo"):  # one compiled graph set per (size, batch): allow them all
        cfg = torch._dynamo.config
        for key in ("recompile_limit", "cache_size_limit"):
            if hasattr(cfg, key):
                setattr(cfg, key, max(getattr(cfg, key), 64))
    sizes = [int(k) for k in args.keypoints.split(",")]
    batches = [int(b) for b in args.batch.split(",")]
    paths = [p for p in args.paths.split(",") if p]
    rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    for kp in sizes:
        def make() -> Matcher:
            return Matcher(features=args.features, device=args.device, max_keypoints=kp, precision=args.precision,
                           pruning=False)
        eager = make()
        if not result:
            result = {"device": bench.device_name(eager.device), "torch": torch.__version__, "paths": paths,
                      "features": args.features, "precision": eager.precision, "alpha": eager.alpha,
                      "backend": args.backend, "rows": rows}
            print(f"device {result['device']}, torch {torch.__version__}, {args.features}, precision "
                  f"{eager.precision}, eager alpha {eager.alpha}, paths {paths} (compile backend {args.backend})")
            print("| keypoints (padded) | batch | eager ms/pair (stop) | " + " | ".join(
                f"{p} ms/pair (speed-up, agree, warm-up s)" for p in paths) + " |")
            print("|---:|---:|---:|" + "---:|" * len(paths))
        compiled = make().compile(backend=args.backend) if "compile" in paths else None
        all_pairs = stream_pairs(eager, max(batches), kp)
        for b in batches:
            matchers: dict[str, Any] = {"eager": Padded(eager, kp)}
            if "graph" in paths:
                matchers["graph"] = eager.cuda_graph(batch=b, pad_to=kp)
            if compiled is not None:
                matchers["compile"] = Padded(compiled, kp)
            row = measure(matchers, all_pairs[:b], kp, args.repeats)
            if "graph" in matchers:
                row["graph_capture_s"] = matchers["graph"].capture_s
            rows.append(row)
            print(f"| {kp} | {b} | {row['eager_ms_per_pair']:.3f} ({row['stop_layer_eager']}) | " + " | ".join(
                f"{row[p + '_ms_per_pair']:.3f} ({row[p + '_speedup']:.2f}x, {row[p + '_agreement']:.3f}, "
                f"{row[p + '_warmup_s']:.1f})" for p in paths) + " |", flush=True)
            if args.json:
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps(result, indent=1))
            del matchers
            if eager.device.type == "cuda":
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
