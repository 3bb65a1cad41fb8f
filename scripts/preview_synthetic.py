#!/usr/bin/env python3
"""Save a PNG contact sheet of a synthetic sequence: one row per frame, left | right | depth.

Usage: preview_synthetic.py OUT.png [--trajectory orbit] [--frames 4] [--step 10] [--seed 0]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from mambaglue_ros.synthetic import make_sequence  # noqa: E402


def depth_to_bgr(depth: np.ndarray, d_min: float = 1.0, d_max: float = 9.0) -> np.ndarray:
    """(H, W) float32 metres -> (H, W, 3) uint8 BGR colour map (near = warm, far = cool)."""
    x = np.clip((depth - d_min) / (d_max - d_min), 0.0, 1.0)
    return cv2.applyColorMap((255 * (1.0 - x)).astype(np.uint8), cv2.COLORMAP_TURBO)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="output PNG path")
    ap.add_argument("--trajectory", default="orbit", choices=["orbit", "forward", "figure8"])
    ap.add_argument("--frames", type=int, default=4, help="rows in the sheet")
    ap.add_argument("--step", type=int, default=10, help="frame index step between rows")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rate", type=float, default=10.0, help="frame rate in Hz")
    ap.add_argument("--scale", type=float, default=0.5, help="downscale of each tile")
    args = ap.parse_args(argv)

    seq = make_sequence(n_frames=args.frames * args.step, rate_hz=args.rate,
                        trajectory=args.trajectory, seed=args.seed)
    rows = []
    for i in range(0, len(seq), args.step):
        f = seq.frame(i)
        tiles = [cv2.cvtColor(f.left, cv2.COLOR_RGB2BGR), cv2.cvtColor(f.right, cv2.COLOR_RGB2BGR),
                 depth_to_bgr(f.depth)]
        row = np.hstack(tiles)
        cv2.putText(row, f"frame {i}  depth {f.depth.min():.2f}-{f.depth.max():.2f} m",
                    (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
        rows.append(row)
    sheet = np.vstack(rows)
    if args.scale != 1.0:
        sheet = cv2.resize(sheet, None, fx=args.scale, fy=args.scale, interpolation=cv2.INTER_AREA)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), sheet)
    print(f"wrote {args.out} ({sheet.shape[1]}x{sheet.shape[0]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
