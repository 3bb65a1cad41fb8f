"""Mono odometry's step lengths: unit steps against one consistent scale (``mono_scale``), with frames dropped.

Runs ``MonoTracker`` offline (no ROS) with the real matcher on a KITTI odometry folder, once per frame pattern
and ``mono_scale`` mode, and prints Sim(3)-aligned ATE and RPE (%/m over >= 1 m; ``bags.metrics``). The patterns
are what a node sees of a 10 Hz camera: every frame (lossless), every second frame, seeded irregular gaps of
1-3 frames (a node at ~5 Hz that takes the latest frame), each with its true stamps; a change of speed: every
frame for the first half then every third, stamped 0.1 s apart throughout (the camera seems to speed up
threefold; the ground truth is the same frames, so the stamps carry no hint of it); and every frame and the gaps
again with stamps off by up to +-10 ms (jitter). Both modes see the same poses
(the matcher's outputs are cached: only the composition differs), so the table isolates the step length.

    .venv/bin/python benchmarks/mono_scale.py ../shared/data/kitti_seq1 --json out/mono_scale.json
    .venv/bin/python benchmarks/mono_scale.py --synthetic forward orbit figure8 --json out/mono_scale_synthetic.json

``--synthetic`` renders this project's textured-room sequences instead (``synthetic.make_sequence``, 51 mono
frames at 10 Hz, exact ground truth): data the step lengths were not developed on.

``--bad-frames``: every frame processed, with the degraded frames of ``stereo_gaps.py --bad-frames`` (blur, covered,
dark; alone and in bursts of 3) instead of the patterns; the ``posed`` columns score only the frames with a pose
(what ``~/odom`` publishes, besides the first frame: the origin), the others a frame without a pose at the last pose (``FrameResult.T_odom_cam``).

    .venv/bin/python benchmarks/mono_scale.py ../shared/data/kitti_seq1 --bad-frames --modes time
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stereo_diagnosis import (NS, add_sequence_arguments, cached_matcher, read_gray, sequence_sources,  # noqa: E402
                              tracking_options)
from stereo_gaps import bad_frame_scenarios  # noqa: E402


def frame_patterns(n: int, seed: int = 0) -> dict[str, tuple[list[int], list[int], list[int] | None]]:
    """Per pattern: (frame indices, their stamps in ns, the stamps of every camera frame, which the node sees, or
    None where the stamps belong to the processed frames only: "speed x3"). Each starts at frame 0."""
    rng = np.random.default_rng(seed)
    drops, i = [], 0
    while i < n:
        drops.append(i)
        i += int(rng.integers(1, 4))
    half = n // 2
    faster = list(range(half)) + list(range(half + 2, n, 3))
    exact = [i * (NS // 10) for i in range(n)]
    # stamps off by up to +-10 ms (a driver stamping on arrival), every frame and with the gaps
    jitter = rng.uniform(-0.01, 0.01, n) * NS
    jittered = [int(i * (NS // 10) + jitter[i]) for i in range(n)]
    out = {}
    for name, frames, camera in (("all", list(range(n)), exact), ("every 2nd", list(range(0, n, 2)), exact),
                                 ("gaps 1-3", drops, exact), ("jitter", list(range(n)), jittered),
                                 ("gaps+jitter", drops, jittered)):
        out[name] = (frames, [camera[i] for i in frames], camera)
    out["speed x3"] = (faster, [k * (NS // 10) for k in range(len(faster))], None)
    return dict(sorted(out.items(), key=lambda kv: ["all", "every 2nd", "gaps 1-3", "speed x3", "jitter",
                                                    "gaps+jitter"].index(kv[0])))


def synthetic_data(trajectory: str, n: int = 51, speed_mps: float = 1.0) -> dict:
    """A rendered mono sequence as ``load_kitti`` returns KITTI: images (in memory), K, ground-truth poses."""
    from mambaglue_ros.synthetic import make_sequence

    frames = list(make_sequence(n_frames=n, rate_hz=10.0, stereo=False, trajectory=trajectory, seed=0,
                                speed_mps=speed_mps))
    return {"left": [f.left for f in frames], "K": frames[0].K.copy(),
            "poses": np.array([f.T_world_left for f in frames])}


def image(item):
    return read_gray(item) if isinstance(item, Path) else item


def run(data: dict, matcher, frames: list[int], stamps_ns: list[int], mode: str, policy: str,
        scale_config: dict | None = None, all_stamps: list[int] | None = None, degrade: dict | None = None,
        tracking: dict | None = None) -> dict:
    """The tracker over ``frames``; with ``all_stamps`` (every camera frame's stamp) its frame period is fed with
    all of them, as the node does from its image callback. ``degrade``: frame index -> function applied to its
    image (``--bad-frames``); ``tracking``: more tracking options (``--tracking``)."""
    from mambaglue_ros.bags import metrics as M
    from mambaglue_ros.mono_scale import FramePeriod
    from mambaglue_ros.tracking import MonoTracker

    camera = FramePeriod() if all_stamps is not None else None
    tracker = MonoTracker(matcher, data["K"], {"mono_scale": mode, "policy": policy, **(tracking or {})},
                          frame_period=camera)
    tracker.scale.config.update(scale_config or {})
    stamps, poses, lengths, failed, posed = [], [], [], 0, []
    for i, stamp in zip(frames, stamps_ns):
        if camera is not None:
            for s in all_stamps[: i + 1]:
                camera.observe(s)  # stamps seen already are ignored
        img = image(data["left"][i])
        res = tracker.process(degrade[i](img) if degrade and i in degrade else img, stamp)
        stamps.append(stamp)
        posed.append(res.pose is not None or i == frames[0])
        poses.append(res.T_odom_cam.copy())
        if res.pose is None and res.reference_stamp_ns is not None:
            failed += 1
        elif res.pose is not None:
            lengths.append(res.step_scale)
    gt = M.Trajectory(np.array(stamps_ns), data["poses"][frames])
    summary = M.evaluate(M.Trajectory(np.array(stamps), np.array(poses)), gt, alignment="sim3")["summary"]
    keep = np.array(posed)
    posed_summary = M.evaluate(M.Trajectory(np.array(stamps)[keep], np.array(poses)[keep]),
                               M.Trajectory(np.array(stamps_ns)[keep], data["poses"][frames][keep]),
                               alignment="sim3")["summary"]
    return {"frames": len(frames), "failed": failed, "ate_m": summary["ate_m"],
            "ate_posed_m": posed_summary["ate_m"], "rpe_posed_pct_per_m": 100.0 * posed_summary["rpe_trans_per_m"],
            "rpe_pct_per_m": 100.0 * summary["rpe_trans_per_m"], "rpe_deg_per_m": summary["rpe_rot_deg_per_m"],
            "step_lengths": [round(x, 4) for x in lengths]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_sequence_arguments(ap, "image_l or image_0, calib.txt, poses.txt", "out/cache/mono_scale_matches.pkl")
    ap.add_argument("--policy", default="previous", choices=("previous", "keyframe"))
    ap.add_argument("--modes", nargs="+", default=["unit", "time", "depth"])
    ap.add_argument("--patterns", nargs="+", default=None, help="subset of the pattern names")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="mono_scale options (mono_scale.DEFAULT_SCALE_CONFIG), e.g. speed_noise=0.2")
    ap.add_argument("--tracking", nargs="*", default=[], metavar="KEY=VALUE",
                    help="tracking options (tracking.DEFAULT_TRACKING_CONFIG), e.g. max_sharpness_ratio=0")
    ap.add_argument("--bad-frames", action="store_true", help="every frame, with degraded frames (module docstring)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    sources = sequence_sources(ap, args, synthetic_data)
    scale_config = {k: (int(v) if k == "min_points" else float(v)) for k, v in (kv.split("=", 1) for kv in args.set)}
    from mambaglue_ros.mono_scale import MonoScale

    MonoScale(1.0, scale_config)  # refuses unknown options and bad values before any work
    from mambaglue_ros.tracking import validate_tracking_config

    try:
        tracking = tracking_options(args.tracking)
        validate_tracking_config(tracking)
    except ValueError as error:
        ap.error(f"--tracking: {error}")
    rows = []
    print(f"{'sequence':<9} {'pattern':<10} {'mode':<6} {'frames':>6} {'failed':>6} {'ATE m':>8} {'RPE %/m':>8} "
          f"{'deg/m':>7} {'posed: ATE m':>12} {'RPE %/m':>8}  step lengths (median, min-max)")
    for source, load in sources.items():
        data = load()
        matcher = cached_matcher(args, on_disk=source == "kitti")
        n = len(data["left"])
        patterns = {k: (v, None) for k, v in frame_patterns(n).items()}
        if args.bad_frames:  # every frame, its true stamps, some degraded
            every = (list(range(n)), [i * (NS // 10) for i in range(n)], [i * (NS // 10) for i in range(n)])
            patterns = {name: (every, bad) for name, bad in bad_frame_scenarios(n).items()}
        if args.patterns:
            patterns = {k: v for k, v in patterns.items() if k in args.patterns}
        for name, ((frames, stamps, camera), degrade) in patterns.items():
            for mode in args.modes:
                r = run(data, matcher, frames, stamps, mode, args.policy, scale_config, camera, degrade, tracking)
                matcher.save()
                r.update(sequence=source, pattern=name, mode=mode)
                rows.append(r)
                s = np.array(r["step_lengths"]) if r["step_lengths"] else np.zeros(1)
                print(f"{source:<9} {name:<10} {mode:<6} {r['frames']:>6} {r['failed']:>6} {r['ate_m']:>8.4f} "
                      f"{r['rpe_pct_per_m']:>8.2f} {r['rpe_deg_per_m']:>7.3f} {r['ate_posed_m']:>12.4f} "
                      f"{r['rpe_posed_pct_per_m']:>8.2f}  {np.median(s):.3f}, "
                      f"{s.min():.3f}-{s.max():.3f}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
