"""Several cameras, one matcher: pairs/s of one batched forward pass (``Matcher.match_batch``) for N streams
against N separate ``match_features`` calls, on the same features, interleaved under the same load; and the
multi-camera node's path (N camera threads asking at once through ``batching.BatchingMatcher``).

Each "camera" contributes one temporal pair per frame; the pairs have different keypoint counts (real
features of different photo pairs), so the batch is padded to the longest set, which is what a multi-camera
node has to do. Batched pairs run without point pruning (pruning changes the set sizes per pair); the separate
calls use the matcher's defaults (pruning on), so the comparison is the node's real choice. Early exit
applies to the batch as a whole (it stops when every pair is confident).

    .venv/bin/python benchmarks/multi_camera.py --streams 1,2,4,8 --json out/multi_camera.json
    .venv/bin/python benchmarks/multi_camera.py --device cuda --features aliked --streams 1,8,32,64
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mambaglue_ros.batching import BatchingMatcher  # noqa: E402
from mambaglue_ros.evaluation import bench  # noqa: E402
from mambaglue_ros.matcher import Matcher  # noqa: E402


def stream_pairs(matcher: Matcher, n: int, keypoints: int, seed: int = 0) -> list[tuple[Any, Any]]:
    """n feature pairs, one per camera: the photo pair under n different homographies (different counts)."""
    import cv2

    rng = np.random.default_rng(seed)
    image0, _ = bench.photo_pair(keypoints)
    h, w = image0.shape[:2]
    f0 = matcher.extract(image0)
    pairs = []
    for _ in range(n):
        H = bench.H_EASY.copy()
        H[:2, 2] += rng.uniform(-15, 15, 2)
        H[:2, :2] *= rng.uniform(0.97, 1.03)
        pairs.append((f0, matcher.extract(cv2.warpPerspective(image0, H, (w, h)))))
    return pairs


def measure(matcher: Matcher, pairs: list, repeats: int, max_wait_ms: float = 2.0) -> dict[str, float]:
    """Median wall time [ms] of N separate calls, of one batched call, and of N camera threads asking at once
    through the multi-camera node's ``BatchingMatcher`` (thread hand-offs included), interleaved; and that
    batcher's mean batch size."""
    device = matcher.device
    batcher = BatchingMatcher(matcher, max_batch=len(pairs), max_wait_ms=max_wait_ms)
    clients = [batcher.client() for _ in pairs]

    def cameras_at_once() -> None:
        matcher.forget_prepared()
        threads = [threading.Thread(target=c.match_features, args=p) for c, p in zip(clients, pairs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def separate() -> list:
        matcher.forget_prepared()  # every round matches new images, as the batched paths compute everything
        return [matcher.match_features(a, b) for a, b in pairs]

    calls = {"separate": separate,
             "batched": lambda: matcher.match_batch(pairs), "batcher": cameras_at_once}
    times: dict[str, list[float]] = {k: [] for k in calls}
    for fn in calls.values():  # warm-up (CUDA kernels, allocator, autotuning)
        fn()
    for r in range(repeats):
        for name in (list(calls) if r % 2 == 0 else list(calls)[::-1]):
            bench.sync(device)
            start = time.perf_counter()
            calls[name]()
            bench.sync(device)
            times[name].append((time.perf_counter() - start) * 1e3)
    batcher.close()
    return {**{k: statistics.median(v) for k, v in times.items()}, "mean_batch": batcher.pairs / max(batcher.batches, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", default="xfeat", choices=("xfeat", "aliked", "disk"))
    p.add_argument("--keypoints", type=int, default=1024)
    p.add_argument("--streams", default="1,2,4,8", help="comma list of camera counts N")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="the batcher's wait for a batch to fill")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    matcher = Matcher(features=args.features, device=args.device, max_keypoints=args.keypoints,
                      precision=args.precision)
    streams = [int(s) for s in args.streams.split(",")]
    all_pairs = stream_pairs(matcher, max(streams), args.keypoints)
    rows = []
    print(f"device {bench.device_name(matcher.device)}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{args.features} {args.keypoints} kp, precision {matcher.precision}, alpha {matcher.alpha}, "
          f"load {bench.load_average()}")
    print("| streams N | N separate calls, ms | one batch, ms | N cameras through the batcher, ms (mean batch) | "
          "pairs/s separate | pairs/s batched | pairs/s batcher | speed-up (batched, batcher) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in streams:
        ms = measure(matcher, all_pairs[:n], args.repeats, args.max_wait_ms)
        row = {"streams": n, "separate_ms": ms["separate"], "batched_ms": ms["batched"], "batcher_ms": ms["batcher"],
               "batcher_mean_batch": ms["mean_batch"],
               "pairs_per_s_separate": 1000.0 * n / ms["separate"], "pairs_per_s_batched": 1000.0 * n / ms["batched"],
               "pairs_per_s_batcher": 1000.0 * n / ms["batcher"]}
        row["speedup"] = row["pairs_per_s_batched"] / row["pairs_per_s_separate"]
        row["speedup_batcher"] = row["pairs_per_s_batcher"] / row["pairs_per_s_separate"]
        rows.append(row)
        print(f"| {n} | {ms['separate']:.1f} | {ms['batched']:.1f} | {ms['batcher']:.1f} ({ms['mean_batch']:.1f}) | "
              f"{row['pairs_per_s_separate']:.1f} | {row['pairs_per_s_batched']:.1f} | {row['pairs_per_s_batcher']:.1f} | "
              f"{row['speedup']:.2f}x, {row['speedup_batcher']:.2f}x |", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "device": bench.device_name(matcher.device), "device_type": matcher.device.type,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "features": args.features,
            "keypoints": args.keypoints, "precision": matcher.precision, "alpha": matcher.alpha,
            "keypoint_counts": [[len(a), len(b)] for a, b in all_pairs], "load_average": bench.load_average(),
            "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
