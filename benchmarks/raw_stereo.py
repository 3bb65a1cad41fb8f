"""Stereo input as raw cameras publish it: the KITTI clip through the node three ways, against the same ground truth.

The node matches stereo pairs on rectified images. A rig that publishes ``image_raw`` with its calibration
(camera_info K, D, the rectification R and the rectified projection P, REP-104) needs them remapped first
(``stereo_rectify: true``); one that publishes ``image_rect`` next to the raw camera_info (stereo_image_proc) needs
none, but its rectified cameras are turned from the cameras' own frames by R, and the poses must be of the latter.
KITTI's clip is rectified already, so this makes the other two inputs from it, with a made-up raw rig whose
numbers are those of a real one (a rectification turn of about 1 degree, mild barrel distortion):

* ``rectified``: the clip as it is (camera_info R = I): the reference.
* ``image_rect + R``: the same images, each camera_info now the raw camera's (K_raw, D, R, P as in the clip); the
  ground truth is of the raw left camera (turned by R from the rectified one). Same images, so the same matches:
  the odometry must be the reference's, turned by R.
* ``image_raw``: what the raw cameras see (``synthetic.raw_camera_view``: narrower than the clip's view, distorted,
  turned by R), with the raw camera_info; P zooms in so the rectified image lies inside the raw one
  (camera_calibration's alpha = 0), so it sees less than the reference. The node runs with ``stereo_rectify: true``.
* ``mono, rectified`` / ``mono, image_raw``: the left camera of the first and last bag in mono mode
  (``config/matcher.yaml``: raw input, matched points undistorted with K and D; sim(3)-aligned, no scale).

Each bag is replayed through the node (``mambaglue replay --lossless``, ``config/stereo.yaml``) and the table printed
(ATE after an SE(3) alignment; RPE per frame and per metre, in the camera's frame: a pose in the wrong frame shows
there, not in the aligned ATE), then what the remap costs per image (``ImageRectifier``, the clip's and EuRoC's
image sizes, median of 200). Needs the KITTI clip (``../shared/data/kitti_seq1``).

    .venv/bin/python benchmarks/raw_stereo.py ../shared/data/kitti_seq1 --out out/raw_stereo
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from mambaglue_ros import geometry as G
from mambaglue_ros.bags.convert import (GT_TOPIC, STEREO_TOPICS, BagWriter, convert_kitti, read_kitti_calib,
                                        read_kitti_poses)
from mambaglue_ros.camera_model import ImageRectifier
from mambaglue_ros.synthetic import DEFAULT_START_NS, raw_camera_view

NS = 1_000_000_000
# the raw rig: each camera turned from its rectified one by R (x_rect = R x_raw), a narrower K, barrel distortion
R_LEFT_AXIS_DEG = ([0.3, 1.0, 0.2], 1.0)
R_RIGHT_AXIS_DEG = ([-0.2, 1.0, 0.1], 1.2)
RAW_ZOOM = 1.10            # K_raw's focal length / the clip's
RAW_D = np.array([-0.08, 0.02, 0.0003, -0.0002, 0.0])
RECT_ZOOM = 1.22           # P's focal length / the clip's: the rectified image inside the raw view


def turn(axis_deg: tuple[list[float], float]) -> np.ndarray:
    axis, deg = axis_deg
    a = np.asarray(axis, dtype=np.float64)
    return G.so3_exp(a / np.linalg.norm(a) * np.deg2rad(deg))


def zoomed(K: np.ndarray, f: float) -> np.ndarray:
    Z = K.copy()
    Z[0, 0] *= f
    Z[1, 1] *= f
    return Z


def write_variant(seq: Path, out: Path, raw_images: bool, rate_hz: float = 10.0) -> None:
    """The clip with the raw rig's camera_info (and its raw images when ``raw_images``) and the raw left camera's
    ground truth, as a stereo bag on the usual topics."""
    calib = read_kitti_calib(seq / "calib.txt")
    P0, P1 = calib["P0"], calib["P1"]
    K = P0[:, :3]
    baseline = -P1[0, 3] / P1[0, 0]
    poses = read_kitti_poses(seq / "poses.txt")
    files = sorted(p.name for p in (seq / "image_l").iterdir() if p.suffix == ".png")
    R_l, R_r = turn(R_LEFT_AXIS_DEG), turn(R_RIGHT_AXIS_DEG)
    K_raw = zoomed(K, RAW_ZOOM)
    K_rect = zoomed(K, RECT_ZOOM) if raw_images else K
    P_l = np.c_[K_rect, np.zeros(3)]
    P_r = np.c_[K_rect, [-K_rect[0, 0] * baseline, 0.0, 0.0]]
    T_rect_raw = np.eye(4)
    T_rect_raw[:3, :3] = R_l  # the raw left camera in the rectified one's frame
    with BagWriter(out) as bag:
        for i, name in enumerate(files):
            stamp = DEFAULT_START_NS + int(round(i * NS / rate_hz))
            if i < len(poses):
                bag.pose(GT_TOPIC, stamp, "world", poses[i] @ T_rect_raw)
            for side, folder, R, P in (("left", "image_l", R_l, P_l), ("right", "image_r", R_r, P_r)):
                image = cv2.imread(str(seq / folder / name), cv2.IMREAD_GRAYSCALE)
                if raw_images:
                    image = raw_camera_view(image, K, K_raw, RAW_D, R)
                size = (image.shape[1], image.shape[0])
                bag.camera_info(STEREO_TOPICS[f"{side}_info"], stamp, f"{side}_optical", size, K=K_raw, P=P,
                                D=RAW_D, R=R)
                bag.image(STEREO_TOPICS[f"{side}_image"], stamp, f"{side}_optical", image)


def replay(bag: Path, out: Path, settings: list[str], params: str, mode: str = "stereo") -> dict:
    cmd = [str(Path(sys.executable).with_name("mambaglue")), "replay", str(bag), "--params", params, "--out",
           str(out), "--matcher", "mambaglue", "--lossless", "--force", "--no-plots", "--mode", mode]
    if settings:
        cmd += ["--set", *settings]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=os.environ.copy())
    return json.loads((out / "report.json").read_text())


def remap_ms(size: tuple[int, int], repeats: int = 200) -> float:
    """Median time [ms] of one ImageRectifier remap of a (w, h) uint8 image with the raw rig's distortion and turn."""
    w, h = size
    K = np.array([[0.7 * w, 0.0, w / 2], [0.0, 0.7 * w, h / 2], [0.0, 0.0, 1.0]])
    rectify = ImageRectifier(zoomed(K, RAW_ZOOM), RAW_D, "plumb_bob", turn(R_LEFT_AXIS_DEG),
                             np.c_[zoomed(K, RECT_ZOOM), np.zeros(3)], size)
    image = np.random.default_rng(0).integers(0, 255, (h, w), dtype=np.uint8)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        rectify(image)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("kitti", type=Path, help="KITTI clip folder (image_l, image_r, calib.txt, poses.txt)")
    p.add_argument("--out", type=Path, default=Path("out/raw_stereo"))
    p.add_argument("--params", default="config/stereo.yaml")
    p.add_argument("--mono-params", default="config/matcher.yaml")
    args = p.parse_args(argv)
    if not (args.kitti / "image_r").is_dir() or not (args.kitti / "poses.txt").is_file():
        p.error(f"{args.kitti}: not a stereo KITTI clip with poses (image_l, image_r, calib.txt, poses.txt)")
    args.out.mkdir(parents=True, exist_ok=True)
    bags = {"rectified": args.out / "bag_rectified", "image_rect + R": args.out / "bag_rect_R",
            "image_raw": args.out / "bag_raw"}
    if not bags["rectified"].exists():
        convert_kitti(args.kitti, bags["rectified"], stereo=True)
    if not bags["image_rect + R"].exists():
        write_variant(args.kitti, bags["image_rect + R"], raw_images=False)
    if not bags["image_raw"].exists():
        write_variant(args.kitti, bags["image_raw"], raw_images=True)
    rows = {}
    for name, bag in bags.items():
        settings = ["stereo_rectify=true"] if name == "image_raw" else []
        rows[name] = replay(bag, args.out / ("run_" + bag.name[4:]), settings, args.params)
    # mono on the left camera: raw images have their matched points undistorted with K, D (the mono node's default)
    for name in ("rectified", "image_raw"):
        rows[f"mono, {name}"] = replay(bags[name], args.out / ("run_mono_" + bags[name].name[4:]), [],
                                       args.mono_params, mode="mono")
    keys = ("poses", "ate_m", "rpe_trans_m", "rpe_rot_deg", "rpe_trans_per_m", "rpe_rot_deg_per_m", "drift_pct",
            "step_ratio_median", "mean_matches", "mean_inliers")
    print("\nKITTI clip as raw-camera stereo input (left rectification turn "
          f"{R_LEFT_AXIS_DEG[1]} deg, right {R_RIGHT_AXIS_DEG[1]} deg; raw K x{RAW_ZOOM}, P x{RECT_ZOOM} "
          "for image_raw)")
    print("| input | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name, r in rows.items():
        cells = [f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k)) for k in keys]
        print(f"| {name} | " + " | ".join(cells) + " |")
    timings = {f"{w}x{h}": remap_ms((w, h)) for w, h in ((1226, 370), (752, 480))}
    print("remap per image (ImageRectifier, cv2 threads %d): " % cv2.getNumThreads()
          + ", ".join(f"{k} {v:.2f} ms" for k, v in timings.items()))
    (args.out / "raw_stereo.json").write_text(json.dumps(
        {"runs": {k: {c: v.get(c) for c in keys} for k, v in rows.items()}, "remap_ms": timings}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
