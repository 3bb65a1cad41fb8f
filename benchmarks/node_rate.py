"""Processed rate and latency of the real node on this machine (mono / stereo, front ends, keypoints).

Pre-renders a synthetic sequence, starts MatcherNode in-process (real rclpy over loopback), publishes
the frames at --input-hz for --seconds, and reads the node's own /diagnostics. With --target-hz the
α controller runs and the table shows where α settled.

    .venv/bin/python benchmarks/node_rate.py --json out/node_rate.json
    .venv/bin/python benchmarks/node_rate.py --configs mono:xfeat --target-hz 5
    .venv/bin/python benchmarks/node_rate.py --configs mono:xfeat,mono:aliked --precision bf16
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 50))
os.environ.setdefault("ROS_LOG_DIR", tempfile.mkdtemp(prefix="mambaglue_bench_log_"))

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))


def run(mode: str, features: str, keypoints: int, input_hz: float, seconds: float, target_hz: float,
        frames: list, precision: str = "fp32", threads: int = 0) -> dict:
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import CameraInfo, Image

    from mambaglue_ros.ros import convert as C
    from mambaglue_ros.ros.node import MatcherNode
    from ros_harness import Collector, camera_info_msg, wait_for, wait_for_subscribers

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    overrides = {"mode": mode, "features": features, "max_keypoints": keypoints, "target_rate_hz": target_hz,
                 "precision": precision, "num_threads": threads}
    node = MatcherNode(context=ctx, parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
    io = rclpy.create_node("bench_io", context=ctx)
    ex = MultiThreadedExecutor(context=ctx)
    ex.add_node(node)
    ex.add_node(io)
    threading.Thread(target=ex.spin, daemon=True).start()
    out = Collector(io)
    topics = ["image"] if mode == "mono" else ["left/image_rect", "right/image_rect"]
    infos = ["camera_info"] if mode == "mono" else ["left/camera_info", "right/camera_info"]
    pubs = [io.create_publisher(Image, t, 5) for t in topics]
    info_pubs = [io.create_publisher(CameraInfo, t, 5) for t in infos]
    wait_for_subscribers(*pubs, *info_pubs)
    K = frames[0].K
    for i, p in enumerate(info_pubs):
        p.publish(camera_info_msg(K, 640, 480, f"cam{i}", baseline_m=0.11 * i))
    wait_for(lambda: len(node.camera) == len(info_pubs), timeout=10)
    msgs = []
    for f in frames:
        pair = [C.numpy_to_image(f.left, "rgb8")] + ([C.numpy_to_image(f.right, "rgb8")] if mode == "stereo" else [])
        msgs.append(pair)
    t0 = time.monotonic()
    i = 0
    alphas = []
    while time.monotonic() - t0 < seconds:
        stamp = C.ns_to_stamp(int(1.7e18) + int(i * 1e9 / input_hz))
        for pub, msg in zip(pubs, msgs[i % len(msgs)]):
            msg.header.stamp = stamp
            pub.publish(msg)
        i += 1
        alphas.append(node.matcher.alpha)
        time.sleep(max(0.0, t0 + i / input_hz - time.monotonic()))
    time.sleep(1.5)  # one more diagnostics period
    snap = node.stats.snapshot()
    result = {"mode": mode, "features": features, "max_keypoints": keypoints, "input_hz": input_hz,
              "target_hz": target_hz, "frames_in": snap["frames_in"], "processed": snap["frames_processed"],
              "dropped": snap["frames_dropped"], "processed_hz": snap["frames_processed"] / seconds,
              "latency_p50_ms": snap["latency_p50_ms"], "latency_p95_ms": snap["latency_p95_ms"],
              "mean_stop_layer": snap["mean_stop_layer"], "num_layers": node.matcher.num_layers,
              "alpha_end": node.matcher.alpha, "weights": node.matcher.weights_source, "precision": precision,
              "threads": threads or "default"}
    ex.shutdown()
    node.destroy_node()
    io.destroy_node()
    ctx.try_shutdown()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="mono:xfeat,stereo:xfeat,mono:aliked,stereo:aliked")
    ap.add_argument("--keypoints", type=int, default=1024)
    ap.add_argument("--input-hz", type=float, default=20.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--target-hz", type=float, default=0.0)
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    ap.add_argument("--threads", type=int, default=0, help="node num_threads (0 = torch's default)")
    ap.add_argument("--json")
    args = ap.parse_args()
    import torch

    from mambaglue_ros.synthetic import make_sequence

    frames = list(make_sequence(n_frames=20, rate_hz=args.input_hz, stereo=True, trajectory="forward", seed=0))
    rows = []
    for cfg in args.configs.split(","):
        mode, features = cfg.split(":")
        rows.append(run(mode, features, args.keypoints, args.input_hz, args.seconds, args.target_hz, frames,
                        args.precision, args.threads))
        r = rows[-1]
        print(f"{r['mode']:6} {r['features']:7} kp={r['max_keypoints']} in={r['input_hz']:.0f}Hz -> processed "
              f"{r['processed_hz']:.2f} Hz, latency p50 {r['latency_p50_ms']:.0f} ms p95 {r['latency_p95_ms']:.0f} ms, "
              f"dropped {r['dropped']}/{r['frames_in']}, stop {r['mean_stop_layer']:.1f}/{r['num_layers']}, "
              f"alpha {r['alpha_end']}, {r['precision']}", flush=True)
    info = {"device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "cpu_count": os.cpu_count()}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": info, "runs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
