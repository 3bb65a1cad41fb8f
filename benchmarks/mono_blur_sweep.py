#!/usr/bin/env python3
"""Mono: how much motion blur does the essential matrix tolerate, and what sharpness ratio goes with it?

For pairs of consecutive frames of a KITTI folder (or a rendered sequence), the second image blurred horizontally
over ``--lengths`` pixels (``cv2.blur``, as ``stereo_gaps.py --bad-frames`` blurs over 41), it prints the
``tracking.image_sharpness`` ratio blurred / sharp and the error of the essential-matrix pose
(``geometry.estimate_pose_mono``, the tracker's defaults) against the ground truth: translation direction and
rotation, degrees. It is the measurement behind the mono tracker's ``max_sharpness_ratio`` (default 2: a pair whose
sharpness differ by more gets no pose); it changes nothing. A second table: what an exposure drop on a noisy camera
does to the same ratio (each frame with 1 grey level of Gaussian noise against itself at 1/12 and 1/24 of the exposure,
rounded to 8 bit, with 1 or 2 grey levels of noise): the noise counts as fine detail, so the darker frame seems sharper.

    .venv/bin/python benchmarks/mono_blur_sweep.py ../shared/data/kitti_seq1
    .venv/bin/python benchmarks/mono_blur_sweep.py --synthetic forward orbit
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from mambaglue_ros.geometry import estimate_pose_mono, rotation_angle_deg, translation_direction_error_deg
from mambaglue_ros.tracking import image_sharpness

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mono_scale import image, synthetic_data  # noqa: E402
from stereo_diagnosis import add_sequence_arguments, cached_matcher, sequence_sources  # noqa: E402


def exposure_drops(sources: dict, every: int) -> list[dict]:
    """The sharpness ratio of a frame at a lower exposure with noise, against the frame with 1 grey level of noise."""
    rng = np.random.default_rng(0)

    def exposed(img: np.ndarray, gain: float, noise: float) -> np.ndarray:
        grey = np.asarray(img, dtype=np.float32) * gain + rng.normal(0.0, noise, np.shape(img))
        return np.clip(np.round(grey), 0, 255).astype(np.uint8)

    rows = []
    print(f"\n{'sequence':<9} {'exposure':>8} {'noise DN':>8} {'sharpness ratio: median (min-max)':>34}")
    for source, load in sources.items():
        frames = [image(f) for f in load()["left"][2::every]]
        for gain, noise in ((1 / 12, 1.0), (1 / 24, 1.0), (1 / 24, 2.0)):
            r = np.array([image_sharpness(exposed(f, gain, noise)) / image_sharpness(exposed(f, 1.0, 1.0))
                          for f in frames])
            rows.append({"sequence": source, "gain": gain, "noise_dn": noise, "sharpness_ratio": r.tolist()})
            print(f"{source:<9} {'1/' + str(round(1 / gain)):>8} {noise:>8g} {np.median(r):>14.2f} "
                  f"({r.min():.2f}-{r.max():.2f})", flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_sequence_arguments(ap, "image_l or image_0, calib.txt, poses.txt", "out/cache/mono_blur_sweep.pkl")
    ap.add_argument("--lengths", type=int, nargs="+", default=[1, 5, 9, 15, 21, 41], help="blur lengths, px (1 = none)")
    ap.add_argument("--every", type=int, default=5, help="one pair (i, i+1) every this many frames")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import cv2
    import torch

    torch.set_num_threads(1)
    rows = []
    print(f"{'sequence':<9} {'blur px':>7} {'pairs':>5} {'sharpness ratio: median (min-max)':>34} "
          f"{'direction err, median / max':>28} {'> 5 deg':>7} {'rotation err median':>19}")
    for source, load in sequence_sources(ap, args, synthetic_data).items():
        data = load()
        matcher = cached_matcher(args, on_disk=source == "kitti")
        K, poses = data["K"], data["poses"]
        pairs = list(range(2, len(data["left"]) - 1, args.every))
        for length in args.lengths:
            ratios, direction, rotation = [], [], []
            for i in pairs:
                sharp, nxt = image(data["left"][i]), image(data["left"][i + 1])
                if not image_sharpness(sharp) > 0:
                    continue  # a flat frame has no sharpness to compare
                blurred = cv2.blur(nxt, (length, 1)) if length > 1 else nxt
                ratios.append(image_sharpness(blurred) / image_sharpness(sharp))
                m = matcher.match_features(matcher.extract(sharp), matcher.extract(blurred))
                pose, _ = estimate_pose_mono(m.points0, m.points1, K, K)
                T = np.linalg.inv(poses[i]) @ poses[i + 1]
                direction.append(180.0 if pose is None else translation_direction_error_deg(pose.t, T[:3, 3]))
                rotation.append(180.0 if pose is None else rotation_angle_deg(pose.R, T[:3, :3]))
            matcher.save()
            r, d = np.array(ratios), np.array(direction)
            rows.append({"sequence": source, "blur_px": length, "pairs": len(r), "sharpness_ratio": r.tolist(),
                         "direction_err_deg": d.tolist(), "rotation_err_deg": rotation})
            print(f"{source:<9} {length:>7} {len(r):>5} {np.median(r):>14.2f} ({r.min():.2f}-{r.max():.2f})"
                  f"{'':>8} {np.median(d):>12.1f} / {d.max():<6.1f}{'':>7} {int((d > 5).sum()):>4}/{len(d):<2} "
                  f"{np.median(rotation):>12.2f}", flush=True)
    exposure = exposure_drops(sequence_sources(ap, args, synthetic_data), args.every)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows, "exposure": exposure}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
