#!/usr/bin/env python3
"""Matcher time and process memory over a video sequence, per arithmetic: fp32, bf16 as torch runs it, and bf16
with the matrix products padded to a few shapes (``models/gemm_shapes.py``, what ``Matcher(precision='bf16')``
does on the CPU).

A fixed photo pair (``mambaglue bench``) repeats the same shapes, so it cannot show what a sequence costs under
bf16: there every frame brings new keypoint counts and, with point pruning, new counts per layer, and torch's
bf16 products on the CPU (oneDNN) compile and keep a kernel for every new shape. Here consecutive frames of a
sequence are matched (KITTI's left images when ``--images`` has them, else a rendered synthetic sequence), each
variant in its own process, since those kernels are kept per process. Per variant: mean matcher ms per pair
over two passes (the second pass meets shapes the first one compiled), the resident memory it gained, matches
and stop layer. Prints a table; ``--plot`` saves it as a figure.

    .venv/bin/python benchmarks/precision_sequence.py --configs xfeat:512,xfeat:1024,aliked:1024 \\
        --images ../shared/data/kitti_seq1/image_l --plot out/precision_sequence.png
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("fp32", "bf16-per-shape", "bf16-bucketed")


def frames(images: str | None, count: int) -> list:
    import cv2
    import numpy as np

    files = sorted(glob.glob(os.path.join(images, "*.png")))[:count] if images else []
    if files:
        return [cv2.imread(f, cv2.IMREAD_GRAYSCALE) for f in files]
    from mambaglue_ros.synthetic import make_sequence

    return [np.ascontiguousarray(f.left) for f in make_sequence(count, stereo=False, trajectory="forward")]


def run_variant(variant: str, features: str, keypoints: int, images: str | None, count: int) -> dict:
    """One variant in this process: match frame i with i + 1 for every i, twice."""
    import numpy as np
    import torch

    from mambaglue_ros.evaluation.bench import rss_mb
    from mambaglue_ros.matcher import Matcher

    torch.set_num_threads(1)
    matcher = Matcher(features=features, max_keypoints=keypoints, precision="fp32" if variant == "fp32" else "bf16")
    matcher.bucket_gemm_shapes = variant == "bf16-bucketed"
    feats = [matcher.extract(image) for image in frames(images, count)]

    start = rss_mb()
    times: list[list[float]] = [[], []]
    matches, stops = [], []
    for rep in range(2):
        for f0, f1 in zip(feats, feats[1:]):
            matcher.forget_prepared()  # every pair costs what a pair of new frames costs
            t0 = time.perf_counter()
            result = matcher.match_features(f0, f1)
            times[rep].append((time.perf_counter() - t0) * 1e3)
            matches.append(len(result.scores))
            stops.append(result.stop_layer)
    return {"variant": variant, "features": features, "keypoints": keypoints, "pairs": len(feats) - 1,
            "precision": matcher.precision, "ms_pass1": float(np.mean(times[0])), "ms_pass2": float(np.mean(times[1])),
            "rss_gain_mb": rss_mb() - start if start is not None else float("nan"), "matches": float(np.mean(matches)), "stop": float(np.mean(stops))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="xfeat:512,xfeat:1024", help="comma list of FEATURES:KEYPOINTS")
    p.add_argument("--images", default=None, help="a folder of sequence frames (*.png, sorted by name)")
    p.add_argument("--frames", type=int, default=51)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--plot", default=None, help="save the table as a figure here")
    p.add_argument("--json", default=None)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # VARIANT:FEATURES:KEYPOINTS, in a child process
    args = p.parse_args(argv)
    if args.images and not Path(args.images).is_dir():
        p.error(f"--images: no such folder: {args.images}")
    if args.one:
        variant, features, keypoints = args.one.split(":")
        print(json.dumps(run_variant(variant, features, int(keypoints), args.images, args.frames)))
        return 0
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    rows = []
    for config in args.configs.split(","):
        features, keypoints = config.split(":")
        for variant in variants:
            cmd = [sys.executable, __file__, "--one", f"{variant}:{features}:{keypoints}", "--frames", str(args.frames)]
            if args.images:
                cmd += ["--images", args.images]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{features} {keypoints} {variant}: {r['ms_pass1']:.1f} / {r['ms_pass2']:.1f} ms, "
                  f"+{r['rss_gain_mb']:.0f} MB", file=sys.stderr, flush=True)
    source = args.images or "synthetic forward sequence"
    print(f"\nconsecutive frames of {source}, {rows[0]['pairs']} pairs x 2 passes, 1 thread\n")
    print("| front end | keypoints | arithmetic | ms/pair (pass 1 / pass 2) | memory gained | matches | stop |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['features']} | {r['keypoints']} | {r['variant']} | {r['ms_pass1']:.1f} / {r['ms_pass2']:.1f} | "
              f"{r['rss_gain_mb']:.0f} MB | {r['matches']:.0f} | {r['stop']:.2f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels = list(dict.fromkeys(f"{r['features']} {r['keypoints']}" for r in rows))
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        width = 0.8 / len(variants)
        for j, variant in enumerate(variants):
            sel = [next(r for r in rows if f"{r['features']} {r['keypoints']}" == lab and r["variant"] == variant)
                   for lab in labels]
            xs = [i + j * width for i in range(len(labels))]
            axes[0].bar(xs, [r["ms_pass2"] for r in sel], width, label=variant)
            axes[1].bar(xs, [r["rss_gain_mb"] for r in sel], width, label=variant)
        for ax, title in zip(axes, ("matcher ms per pair (pass 2)", "resident memory gained (MB)")):
            ax.set_xticks([i + width * (len(variants) - 1) / 2 for i in range(len(labels))], labels)
            ax.set_title(title)
        axes[0].legend()
        fig.tight_layout()
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=110)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
