"""``mambaglue`` command line: one entry point, one subcommand per job.

    mambaglue match IMG0 IMG1 [--features aliked] [--viz out.png] [--json out.json]
    mambaglue demo [--out out/demo]     synthetic stereo bag -> node -> RPE/ATE table + plots
    mambaglue demo-pair [--out DIR]     photo pair, MambaGlue vs LightGlue
    mambaglue bag-from-euroc MAV0 OUT | bag-from-kitti SEQ OUT | demo-bag OUT
    mambaglue replay BAG --out DIR [--params config/stereo.yaml] [--lossless] [--matcher mambaglue lightglue orb]
    mambaglue train --config config/train_xfeat.yaml [--stage 1|2|both] [--max-minutes M] [--resume]
    mambaglue eval-homography --images DIR --pairs N --features xfeat --methods mambaglue,lightglue --json out.json
    mambaglue eval-pose [--euroc DIR] [--kitti DIR] --features xfeat --methods mambaglue,lightglue,orb --json out.json
    mambaglue bench --json out.json [--plots DIR] [--features aliked] [--keypoints 256,512,1024,2048] [--repeats 7]
    mambaglue export-onnx --features xfeat --out model.onnx [--layers N] [--keypoints K]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from .bags import add_demo_arguments, add_subcommands as add_bag_commands
from .visualization import draw_matches  # noqa: F401  (also importable from here, as before)


def read_image(path: str) -> np.ndarray:
    """An image file as RGB uint8 (H, W, 3); a clear error for a missing or unreadable file."""
    import cv2

    if not Path(path).is_file():
        raise SystemExit(f"error: image not found: {path}")
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"error: cannot decode image: {path}")
    from .training.dataset import warn_if_nearly_black

    warn_if_nearly_black(bgr, path)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def add_matcher_args(p: argparse.ArgumentParser) -> None:
    from .features import FRONT_ENDS

    # every default is stated from argparse's own value (%(default)s), so --help cannot drift from it
    p.add_argument("--features", default="aliked", choices=FRONT_ENDS, help="front end (default: %(default)s)")
    p.add_argument("--weights", default=None, help="MambaGlue checkpoint (default: shipped, else LightGlue warm start)")
    p.add_argument("--extractor-weights", default=None,
                   help="front-end weights (default: the packaged ones; superpoint has none, so it needs this)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda (default: %(default)s)")
    p.add_argument("--max-keypoints", type=int, default=1024, help="keypoints per image (default: %(default)s)")
    p.add_argument("--resize-max", type=int, default=None,
                   help="downscale so the longer side is at most this (default: native size)")
    p.add_argument("--alpha", type=float, default=0.95, help="early-exit threshold in (0, 1] (default: %(default)s)")
    p.add_argument("--no-exit", action="store_true", help="run every layer (default: exit early)")
    p.add_argument("--no-pruning", action="store_true", help="keep every point in every layer (default: prune)")


def make_matcher(args: argparse.Namespace):
    from .matcher import Matcher

    return Matcher(features=args.features, weights=args.weights, device=args.device,
                   max_keypoints=args.max_keypoints, resize_max=args.resize_max,
                   alpha=None if args.no_exit else args.alpha, pruning=not args.no_pruning,
                   extractor_weights=args.extractor_weights)


def cmd_match(args: argparse.Namespace) -> int:
    import cv2

    image0, image1 = read_image(args.image0), read_image(args.image1)
    matcher = make_matcher(args)
    result = matcher.match(image0, image1)
    t = result.timings_ms
    print(f"features={args.features} weights={matcher.weights_source} device={matcher.device}")
    print(f"keypoints: {len(result.keypoints0)} / {len(result.keypoints1)}   matches: {len(result)}   "
          f"stop layer: {result.stop_layer}/{result.num_layers}")
    print(f"time: extract {t['extract']:.1f} ms (both images), match {t['match']:.1f} ms, total {t['total']:.1f} ms")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "features": args.features, "weights": matcher.weights_source,
            "image_size0": list(image0.shape[1::-1]), "image_size1": list(image1.shape[1::-1]),
            "keypoints0": result.keypoints0.round(3).tolist(), "keypoints1": result.keypoints1.round(3).tolist(),
            "matches": result.matches.tolist(), "scores": result.scores.round(5).tolist(),
            "stop_layer": result.stop_layer, "num_layers": result.num_layers, "time_ms": t}))
        print(f"wrote {args.json}")
    if args.viz:
        canvas = draw_matches(image0, image1, result.points0, result.points1, result.scores)
        Path(args.viz).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(args.viz, cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
        print(f"wrote {args.viz}")
    return 0


def cmd_demo_pair(args: argparse.Namespace) -> int:
    """A bundled photo and its warp by a known homography, MambaGlue vs LightGlue (the former demo)."""
    import cv2
    from skimage import data

    from .matcher import Matcher

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    H = np.array([[0.9, 0.08, 20.0], [-0.06, 0.95, 12.0], [2e-4, 1e-4, 1.0]])
    image0 = cv2.resize(data.astronaut(), (640, 480), interpolation=cv2.INTER_AREA)
    image1 = cv2.warpPerspective(image0, H, (640, 480))
    rows = []
    for features in args.features:
        mamba = Matcher(features=features, device=args.device, max_keypoints=args.max_keypoints)
        light = Matcher(features=features, weights="lightglue", mixer="attention", regressor="linear",
                        device=args.device, max_keypoints=args.max_keypoints)
        f0, f1 = mamba.extract(image0), mamba.extract(image1)  # same keypoints for both methods
        for name, matcher in (("mambaglue", mamba), ("lightglue", light)):
            matcher.match_features(f0, f1)  # warm-up
            matcher.forget_prepared()  # timed as a new pair
            r = matcher.match_features(f0, f1)
            proj = cv2.perspectiveTransform(r.points0.reshape(-1, 1, 2).astype(np.float64), H).reshape(-1, 2)
            precision = float(np.mean(np.linalg.norm(proj - r.points1, axis=1) < 3)) if len(r) else 0.0
            rows.append((features, name, matcher.weights_source, len(f0), len(r), precision, r.stop_layer,
                         r.num_layers, r.timings_ms["match"]))
            canvas = draw_matches(image0, image1, r.points0, r.points1, r.scores)
            cv2.imwrite(str(out / f"{features}_{name}.png"), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    print(f"{'features':8} {'method':10} {'keypoints':>9} {'matches':>7} {'prec@3px':>8} {'stop':>5} {'ms':>7}  weights")
    for f, name, src, k, m, p, stop, n, ms in rows:
        print(f"{f:8} {name:10} {k:9d} {m:7d} {p:8.3f} {stop:>2}/{n:<2} {ms:7.1f}  {src}")
    (out / "demo.json").write_text(json.dumps([dict(zip(
        ("features", "method", "weights", "keypoints", "matches", "precision_3px", "stop_layer", "num_layers",
         "match_ms"), row)) for row in rows], indent=1))
    print(f"wrote {out}/demo.json and match images")
    return 0


def _add_match_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image0")
    p.add_argument("image1")
    add_matcher_args(p)
    p.add_argument("--viz", help="write a side-by-side match image, PNG (default: none)")
    p.add_argument("--json", help="write keypoints, matches, scores, stop layer, timings as JSON (default: none)")
    p.set_defaults(func=cmd_match)


def _add_demo_pair_arguments(p: argparse.ArgumentParser) -> None:
    from .features import FRONT_ENDS

    p.add_argument("--out", default="out/demo-pair",
                   help="folder for the table and match images (default: %(default)s)")
    demo_features = ["xfeat", "aliked"]
    p.add_argument("--features", nargs="+", default=demo_features, choices=FRONT_ENDS,
                   help=f"front ends to compare on (default: {' '.join(demo_features)})")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda (default: %(default)s)")
    p.add_argument("--max-keypoints", type=int, default=1024, help="keypoints per image (default: %(default)s)")
    p.set_defaults(func=cmd_demo_pair)


def _module_arguments(module: str):
    """The registration of a subcommand whose module has ``add_arguments(parser)`` and ``run_cli(args)``."""
    def add(p: argparse.ArgumentParser) -> None:
        import importlib

        target = importlib.import_module(module, __package__)
        target.add_arguments(p)
        p.set_defaults(func=target.run_cli)
    return add


# The subcommands in --help order: (name, help, registration of its arguments). Every subcommand is listed, but only
# the one being run gets its arguments, so `mambaglue --help` and the bag tools start without importing torch (~2-3 s
# on a small CPU). _BAG_COMMANDS marks where the bag tools go (``bags.add_subcommands`` registers them, cheaply).
_BAG_COMMANDS = None
_COMMANDS = [
    ("match", "match two images, print counts and timings, draw the matches", _add_match_arguments),
    ("demo", "the embedded default: synthetic stereo bag -> the node (lossless) -> RPE/ATE table and plots, "
     "MambaGlue vs LightGlue vs ORB", add_demo_arguments),
    ("demo-pair", "a bundled photo pair, MambaGlue vs LightGlue (matches, precision, time)", _add_demo_pair_arguments),
    _BAG_COMMANDS,  # bag-from-euroc, bag-from-kitti, demo-bag, replay
    ("train", "train MambaGlue on synthetic homography pairs (stage 1 matcher, stage 2 regressor)",
     _module_arguments(".training.train")),
    ("eval-homography", "precision, recall, homography AUC, speed: MambaGlue vs LightGlue",
     _module_arguments(".evaluation.homography")),
    ("eval-pose", "relative pose AUC on EuRoC stereo and KITTI pairs: MambaGlue vs LightGlue vs ORB",
     _module_arguments(".evaluation.pose")),
    ("compare", "paired differences between methods of eval-homography / eval-pose runs on the same pairs, with "
     "bootstrap 95 %% intervals", _module_arguments(".evaluation.compare")),
    ("bench", "speed: MambaGlue vs LightGlue (ours and kornia's) per keypoint count, front ends, pairs/s, memory",
     _module_arguments(".evaluation.bench")),
    ("export-onnx", "export the matcher (fixed layers and keypoints) to ONNX, checked with onnxruntime",
     _module_arguments(".export")),
]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``mambaglue`` parser. ``only``: give only this subcommand its arguments (the others are listed with their
    help, and parse nothing); None gives every subcommand its arguments (imports torch)."""
    parser = argparse.ArgumentParser(prog="mambaglue", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages too (default: info)")
    sub = parser.add_subparsers(dest="command", required=True)
    for entry in _COMMANDS:
        if entry is _BAG_COMMANDS:
            add_bag_commands(sub)
            continue
        name, help_text, register = entry
        p = sub.add_parser(name, help=help_text)
        if only is None or only == name:
            register(p)
    return parser


def _command_in(argv: list[str]) -> str:
    """The subcommand named in ``argv`` ('' for none): the first word that is not an option (the top-level options
    take no value)."""
    return next((word for word in argv if not word.startswith("-")), "")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(only=_command_in(argv)).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    import cv2
    import yaml

    try:
        return int(args.func(args) or 0)
    except (ValueError, RuntimeError, OSError, yaml.YAMLError, cv2.error) as e:  # OSError: not found, permissions
        if args.verbose:  # -v: where it came from
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
