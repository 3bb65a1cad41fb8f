"""Rosbag2 tools: dataset converters, replay through the real node, trajectory metrics, reports.

    mambaglue bag-from-euroc MAV0_DIR OUT [--storage mcap|sqlite3] [--max-frames N] [--gt FILE] [--raw]
    mambaglue bag-from-kitti SEQ_DIR OUT [--storage mcap|sqlite3] [--max-frames N] [--rate-hz 10]
    mambaglue demo-bag OUT [--frames 40] [--trajectory forward]
    mambaglue replay BAG --out DIR [--params config/stereo.yaml] [--rate R | --lossless]
                     [--matcher mambaglue lightglue orb] [--features xfeat] [--mode mono|stereo] [--gt-topic T]
                     [--calib LEFT.yaml [RIGHT.yaml]]
    mambaglue demo [--out out/demo]          (demo bag -> node, lossless -> table + plots)

Modules: ``convert`` (bags from EuRoC / KITTI / the synthetic room, reading helpers),
``replay`` (the node in-process over loopback DDS, recording, per-frame probe), ``metrics``
(association, Umeyama, ATE, RPE, TUM files; numpy only), ``report`` (table, plots).
Only ``replay`` needs rclpy; the CLI imports lazily.
"""
from __future__ import annotations

import argparse
from typing import Any

METHODS = ("mambaglue", "lightglue", "orb")


def _log(message: str) -> None:
    print(message, flush=True)


def _friendly(fn):
    """CLI errors the shared ``main`` does not catch (existing outputs, unreadable bags): one line, exit 2."""
    import functools

    @functools.wraps(fn)
    def wrapper(args: argparse.Namespace) -> int:
        from rosbags.rosbag2 import ReaderError, WriterError

        try:
            return fn(args)
        except (FileExistsError, ReaderError, WriterError, KeyError) as e:
            print(f"error: {e}", flush=True)
            return 2
        except KeyboardInterrupt:  # a replay stopped by hand: one line, not a traceback
            print("interrupted: the unfinished run wrote nothing (an earlier run in its folder is kept)", flush=True)
            return 130
    return wrapper


def _count(minimum: int):
    """argparse type: an int >= ``minimum``."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def _positive(text: str) -> float:
    """argparse type: a finite float > 0 (a rate)."""
    value = float(text)
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def parse_set(items: list[str]) -> dict[str, Any]:
    """``--set NAME=VALUE ...`` -> {name: value}, each value read as YAML (as a params file types it), except that a
    whole number for a float parameter (or in a float list) is that float: ``target_rate_hz=10`` is 10.0 (ROS 2 would
    refuse an integer for a double parameter; here the parameter's type is known)."""
    import yaml

    from ..ros.params import SPECS

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set wants NAME=VALUE, got {item!r}")
        parsed = yaml.safe_load(value)  # typed like a params file: 1.0 is a float, 1 an int
        spec = SPECS.get(key)
        if spec is not None and spec.kind is float and type(parsed) is int:
            parsed = float(parsed)
        elif spec is not None and spec.kind is list and isinstance(parsed, list):
            parsed = [float(v) if type(v) is int else v for v in parsed]
        out[key] = parsed
    return out


@_friendly
def cmd_bag_from_euroc(args: argparse.Namespace) -> int:
    from .convert import convert_euroc, describe

    summary = convert_euroc(args.mav0, args.out, storage=args.storage, gt_path=args.gt, max_frames=args.max_frames,
                            rectify=not args.raw, log=_log)
    _log(describe(summary) + ("" if args.raw else " (rectified with OpenCV stereoRectify)"))
    return 0


@_friendly
def cmd_bag_from_kitti(args: argparse.Namespace) -> int:
    from .convert import convert_kitti, describe

    summary = convert_kitti(args.seq, args.out, storage=args.storage, rate_hz=args.rate_hz,
                            max_frames=args.max_frames, stereo=False if args.mono else None, log=_log)
    _log(describe(summary))
    return 0


@_friendly
def cmd_demo_bag(args: argparse.Namespace) -> int:
    from .convert import describe, write_demo_bag

    summary = write_demo_bag(args.out, n_frames=args.frames, width=args.width, height=args.height,
                             rate_hz=args.rate_hz, trajectory=args.trajectory, seed=args.seed,
                             speed_mps=args.speed, noise_std=args.noise, storage=args.storage, color=args.color,
                             log=_log)
    _log(describe(summary) + f", ground-truth path {summary['gt_path_m']:.2f} m")
    return 0


@_friendly
def cmd_replay(args: argparse.Namespace) -> int:
    from .replay import ReplayConfig, replay_methods

    cfg = ReplayConfig(bag=args.bag, out=args.out, params=args.params, overrides=parse_set(args.set),
                       mode=args.mode, features=args.features, lossless=args.lossless,
                       rate=args.rate if args.rate is not None else 1.0, max_frames=args.max_frames, start=args.start,
                       frame_timeout_s=args.frame_timeout, left_topic=args.left_topic, right_topic=args.right_topic,
                       calib=tuple(args.calib), gt_topic=args.gt_topic, force=args.force, plots=not args.no_plots)
    replay_methods(cfg, args.matcher, _log)
    _log(f"wrote {args.out}/report.json, table.txt, plots, output bag(s)")
    return 0


@_friendly
def cmd_demo(args: argparse.Namespace) -> int:
    """The embedded default: synthetic stereo bag -> the node (lossless) -> metrics table and plots."""
    from .replay import run_demo

    run_demo(args.out, n_frames=args.frames, methods=tuple(args.matcher), features=args.features,
             device=args.device, max_keypoints=args.max_keypoints, log=_log)
    return 0


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="out/demo")
    p.add_argument("--frames", type=int, default=40, help="stereo frames of the synthetic sequence (10 Hz)")
    p.add_argument("--matcher", nargs="+", default=list(METHODS), choices=METHODS,
                   help="methods to compare (each runs the node once)")
    p.add_argument("--features", default="xfeat", choices=("xfeat", "aliked", "disk"))
    p.add_argument("--device", default="auto")
    p.add_argument("--max-keypoints", type=int, default=1024)
    p.set_defaults(func=cmd_demo)


def add_subcommands(sub: Any) -> None:
    """Register bag-from-euroc, bag-from-kitti, demo-bag and replay on the ``mambaglue`` CLI."""
    storage = dict(choices=("mcap", "sqlite3"), default="mcap", help="rosbag2 storage (default mcap)")

    p = sub.add_parser("bag-from-euroc", help="EuRoC/ASL mav0 folder -> rectified stereo rosbag2 with ground truth")
    p.add_argument("mav0", metavar="MAV0_DIR")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--storage", **storage)
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--gt", default=None, help="ground truth TUM file of the body (IMU) frame (default: "
                   "mav0/state_groundtruth_estimate0/data.csv or MAV0_DIR/../groundtruth_tum.txt)")
    p.add_argument("--raw", action="store_true", help="write the raw distorted images (image_raw) instead")
    p.set_defaults(func=cmd_bag_from_euroc)

    p = sub.add_parser("bag-from-kitti", help="KITTI odometry sequence -> rosbag2 (mono left; stereo if image_1 exists)")
    p.add_argument("seq", metavar="SEQ_DIR")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--storage", **storage)
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--rate-hz", type=_positive, default=10.0, help="frame rate when there is no times.txt")
    p.add_argument("--mono", action="store_true", help="left camera only even if right images exist")
    p.set_defaults(func=cmd_bag_from_kitti)

    p = sub.add_parser("demo-bag", help="synthetic stereo sequence (textured room, exact ground truth) -> rosbag2")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--rate-hz", type=_positive, default=10.0)
    p.add_argument("--trajectory", default="forward", choices=("forward", "orbit", "figure8"))
    p.add_argument("--speed", type=float, default=0.5, help="m/s")
    p.add_argument("--noise", type=float, default=0.0, help="Gaussian image noise, grey levels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--color", action="store_true", help="rgb8 images instead of mono8")
    p.add_argument("--storage", **storage)
    p.set_defaults(func=cmd_demo_bag)

    p = sub.add_parser("replay", help="play a bag through the real matcher node, record outputs, evaluate vs GT")
    p.add_argument("bag", metavar="BAG")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--params", default=None, help="node params file (e.g. config/stereo.yaml)")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=_positive, default=None, help="play at R x the recorded rate (default 1)")
    pace.add_argument("--lossless", action="store_true",
                      help="publish a frame, wait for the node's result, then the next (evaluation)")
    p.add_argument("--matcher", nargs="+", default=["mambaglue"], choices=METHODS,
                   help="one or more methods (several: DIR/<method>/ each plus a comparison)")
    p.add_argument("--features", default=None, choices=("xfeat", "aliked", "disk", "superpoint"))
    p.add_argument("--mode", default=None, choices=("mono", "stereo"))
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="NAME=VALUE",
                   help="more node parameters (repeatable; put BAG before them)")
    p.add_argument("--max-frames", type=_count(1), default=None, help="replay at most this many frames")
    p.add_argument("--start", type=_count(0), default=0, help="skip this many frames")
    p.add_argument("--frame-timeout", type=float, default=120.0, help="lossless: seconds to wait per frame")
    p.add_argument("--left-topic", default=None)
    p.add_argument("--right-topic", default=None)
    p.add_argument("--calib", nargs="+", action="extend", default=[], metavar="YAML",
                   help="camera calibration as ROS calibration YAML (camera_calibration's output), left [right], "
                        "used instead of the bag's camera_info (default: the bag's; put BAG before them)")
    p.add_argument("--gt-topic", default=None,
                   help="ground truth: the camera's poses as PoseStamped, PoseWithCovarianceStamped, Odometry or "
                        "TransformStamped (default: /ground_truth/pose, what our converters write; none if absent)")
    p.add_argument("--force", action="store_true", help="replace an earlier output bag in DIR")
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=cmd_replay)
