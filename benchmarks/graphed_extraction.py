"""XFeat extraction, eager against its fixed-shape form: ms per image, interleaved under the same load.

On CUDA the fixed-shape form runs as one captured graph (``FeatureExtractor.use_cuda_graph``, what the node's
``cuda_graph`` parameter turns on): one replay instead of ~190 kernel launches per image. On a CPU there is no
graph; the ``fixed`` column then times ``detect_fixed`` itself (per-pixel score sampling instead of kornia's
nonzero), which is why the CPU keeps kornia's path. ``agree``: share of eager's keypoints the other path also
returns (the same points, see ``test_cuda_path``).

    .venv/bin/python benchmarks/graphed_extraction.py --device cuda --sizes 640x480,1280x720 --keypoints 512,2048
    .venv/bin/python benchmarks/graphed_extraction.py --device cpu --sizes 640x480 --repeats 5
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import cv2  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mambaglue_ros.evaluation import bench  # noqa: E402
from mambaglue_ros.features import FeatureExtractor  # noqa: E402
from mambaglue_ros.matcher import resolve_device  # noqa: E402


def keypoint_set(out) -> set:
    """Features (eager, graph) or detect_fixed's (keypoints, scores, descriptors) -> the set of keypoints."""
    if isinstance(out, tuple):
        keypoints, scores, _ = out
        return {tuple(k) for k in keypoints[0][scores[0] > 0].tolist()}
    return {tuple(k) for k in out.keypoints.tolist()}


def agreement(a, b) -> float:
    sa, sb = keypoint_set(a), keypoint_set(b)
    return len(sa & sb) / max(1, len(sa))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--sizes", default="640x480", help="comma list of WxH")
    p.add_argument("--keypoints", default="512", help="comma list of keypoint budgets")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1, help="torch threads on a CPU")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    precision = args.precision
    if precision == "auto":  # as the node's precision: auto (fp16 autocast on CUDA; extraction stays fp32 on a CPU)
        precision = "fp16" if device.type == "cuda" else "fp32"
    photo = bench.photo_pair(96)[0]
    rows = []
    print(f"XFeat extraction on {bench.device_name(device)}, torch {torch.__version__}, {precision}; "
          f"{'one CUDA graph per size' if device.type == 'cuda' else 'no graph on a CPU: detect_fixed eagerly'}")
    print("| image | keypoints | eager ms | fixed ms | speed-up | agree | capture s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes.split(","):
        width, height = (int(v) for v in size.lower().split("x"))
        image = cv2.resize(photo, (width, height), interpolation=cv2.INTER_AREA)
        for k in (int(v) for v in args.keypoints.split(",")):
            eager = FeatureExtractor("xfeat", k, device=device, precision=precision)
            fixed = FeatureExtractor("xfeat", k, device=device, precision=precision)
            if device.type == "cuda":
                fixed.use_cuda_graph(True)
                run_fixed = lambda: fixed.extract(image)  # noqa: E731
            else:
                def run_fixed():
                    x = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255)
                    with torch.inference_mode():
                        return fixed.net.detect_fixed(x.contiguous(memory_format=torch.channels_last), k)
            first = fixed.extract(image) if device.type == "cuda" else None  # the capture
            graph = next(iter(fixed._graphs.values()), None) if fixed._graphs else None
            # bench.interleaved synchronises the device around each call
            ms = bench.interleaved({"eager": lambda: eager.extract(image), "fixed": run_fixed}, args.repeats, device,
                                   warmup=2)
            ref = eager.extract(image)
            agree = agreement(ref, run_fixed())
            row = {"width": width, "height": height, "keypoints": k, "eager_ms": ms["eager"], "fixed_ms": ms["fixed"],
                   "speedup": ms["eager"] / ms["fixed"], "agreement": agree,
                   "graph": graph is not None, "capture_s": getattr(graph, "capture_s", None),
                   "found": len(first) if first is not None else len(ref)}
            rows.append(row)
            print(f"| {width}x{height} | {k} | {row['eager_ms']:.2f} | {row['fixed_ms']:.2f} | {row['speedup']:.2f}x | "
                  f"{agree:.3f} | {'-' if row['capture_s'] is None else round(row['capture_s'], 1)} |",
                  flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps({"device": bench.device_name(device), "precision": precision,
                                                       "torch": torch.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
