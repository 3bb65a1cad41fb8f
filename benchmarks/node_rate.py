"""Processed rate and latency of the real node on this machine (mono / stereo, front ends, keypoints).

Pre-renders a synthetic sequence, starts MatcherNode in-process (real rclpy over loopback), publishes
the frames at --input-hz for --seconds, and reads the node's own statistics. With --target-hz the
rate controller runs and the table shows where α and the keypoint budget settled, and how steady the
processed rate was over the last half of the run (5 s windows).

``--pipeline both`` runs each configuration without and with the two-stage pipeline, interleaved, so the
ratio is measured under the same load. Besides wall-clock rates (which a shared CPU slows) it reports each
pipeline thread's *on-CPU* time per processed frame (from the kernel's schedstat, which excludes time spent
waiting for a core): ``1000 / max(stage on-CPU ms)`` is the rate the pipeline sustains when each stage has a
core of its own, i.e. on a quiet machine.

Two latencies: the node's own (``Matches.latency_ms``: from the start of the frame's extraction to its
outputs, what issue 15's p95 target reads) and *camera -> outputs* (from the moment the benchmark published
the frame), which adds the time the frame waited in the latest-frame slot before stage 1 took it.

    .venv/bin/python benchmarks/node_rate.py --json out/node_rate.json
    .venv/bin/python benchmarks/node_rate.py --configs mono:xfeat --target-hz 10 --seconds 60
    .venv/bin/python benchmarks/node_rate.py --configs mono:xfeat,stereo:xfeat --pipeline both
    .venv/bin/python benchmarks/node_rate.py --configs mono:xfeat,stereo:xfeat --denormal-floor both
    .venv/bin/python benchmarks/node_rate.py --configs mono:xfeat --precision fp32 --device cuda
    .venv/bin/python benchmarks/node_rate.py --configs mono:xfeat --device cuda --cuda-graph both --pipeline both
    .venv/bin/python benchmarks/node_rate.py --configs mono:xfeat,stereo:xfeat --transport both   # JPEG input too
    .venv/bin/python benchmarks/node_rate.py --configs mono:xfeat --transport compressed --compressed-decode both
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 50))
os.environ.setdefault("ROS_LOG_DIR", tempfile.mkdtemp(prefix="mambaglue_bench_log_"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the node's package sets it, before torch loads

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))


def thread_cpu_ms(names: tuple[str, ...]) -> dict[str, float]:
    """On-CPU time [ms] so far of this process's threads with these names (kernel schedstat; 0 if absent)."""
    times = {name: 0.0 for name in names}
    for t in threading.enumerate():
        if t.name in times and t.native_id is not None:
            try:
                with open(f"/proc/self/task/{t.native_id}/schedstat") as f:
                    times[t.name] += int(f.read().split()[0]) / 1e6
            except OSError:
                pass
    return times


def all_threads_cpu_ms() -> dict[str, float]:
    """On-CPU time [ms] so far of every thread of this process, by kernel thread name (comm) and id."""
    times = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                times[f"{name}:{tid}"] = int(f.read().split()[0]) / 1e6
        except OSError:
            pass
    return times


STAGES = ("mambaglue-extract", "mambaglue-worker")


def run(mode: str, features: str, keypoints: int | None, input_hz: float, seconds: float, target_hz: float,
        frames: list, precision: str | None = None, threads: int = 0, pipeline: bool | None = None,
        device: str = "auto", stereo_match: str = "auto", cuda_graph: bool | None = None,
        extra: dict | None = None, transport: str = "raw", decode_in_callback: bool = False) -> dict:
    import cv2
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image

    from mambaglue_ros.ros import convert as C
    from mambaglue_ros.ros.node import MatcherNode
    from ros_harness import Collector, camera_info_msg, wait_for, wait_for_subscribers

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    overrides = {"mode": mode, "features": features, "target_rate_hz": target_hz, "num_threads": threads,
                 "device": device, "transport": transport}
    if keypoints is not None:  # None: the node's own default
        overrides["max_keypoints"] = keypoints
    if precision is not None:  # None: the node's own default
        overrides["precision"] = precision
    if pipeline is not None:
        overrides["pipeline"] = "on" if pipeline else "off"
    if cuda_graph is not None:
        overrides["cuda_graph"] = cuda_graph
    overrides.update(extra or {})
    node = MatcherNode(context=ctx, parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
    if decode_in_callback:  # compressed images decoded in the callback, as before 2026-12-07 (session 53)
        node._decode_later = lambda messages: False
    keypoints = int(node.p["max_keypoints"])  # the budget it starts with (the rate controller may lower it)
    if stereo_match == "ahead":  # the left/right match always in stage 1 (as before StereoPlacement)
        node.stereo_placement.ahead = lambda: True
    io = rclpy.create_node("bench_io", context=ctx)
    # one executor thread, as the node's own main (rclpy.spin): rclpy's MultiThreadedExecutor (9.1.x) re-yields
    # callbacks still queued in its pool and spins holding the GIL meanwhile (ros2/rclpy#1452, fixed upstream
    # by #1547); in-process it stalled the node's two stages for seconds and halved the measured rate
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    ex.add_node(io)
    threading.Thread(target=ex.spin, daemon=True).start()
    out = Collector(io)
    topics = ["image"] if mode == "mono" else ["left/image_rect", "right/image_rect"]
    infos = ["camera_info"] if mode == "mono" else ["left/camera_info", "right/camera_info"]
    compressed = transport == "compressed"  # image_transport's compressed plugin: JPEG (quality 95) of BGR
    pubs = [io.create_publisher(CompressedImage, t + "/compressed", 5) if compressed else
            io.create_publisher(Image, t, 5) for t in topics]
    info_pubs = [io.create_publisher(CameraInfo, t, 5) for t in infos]
    wait_for_subscribers(*pubs, *info_pubs)
    K = frames[0].K
    for i, p in enumerate(info_pubs):
        p.publish(camera_info_msg(K, 640, 480, f"cam{i}", baseline_m=0.11 * i))
    wait_for(lambda: len(node.camera) == len(info_pubs), timeout=10)
    def message(image: np.ndarray):
        if not compressed:
            return C.numpy_to_image(image, "rgb8")
        data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])[1]
        return CompressedImage(format="rgb8; jpeg compressed bgr8", data=data.tobytes())

    msgs = [[message(f.left)] + ([message(f.right)] if mode == "stereo" else []) for f in frames]
    latencies: list[float] = []
    camera_latencies: list[float] = []  # publish of the frame -> its outputs (includes the frame's wait before stage 1)
    published_at: dict[int, float] = {}  # stamp (ns) -> monotonic time it was published
    processed_at: list[float] = []
    steps: dict[str, list[float]] = {}  # the tracker's own wall times per frame: extract, stereo, match, pose

    def observe(event, frame, result=None, latency_ms=None):
        if event == "result":
            latencies.append(latency_ms)
            processed_at.append(time.monotonic())
            if frame.stamp_ns in published_at:
                camera_latencies.append((processed_at[-1] - published_at[frame.stamp_ns]) * 1e3)
            for k, v in result.timings_ms.items():
                if k != "total":
                    steps.setdefault(k, []).append(v)

    # The first frames pay for lazy initialisation (on a GPU: Triton's JIT per shape, cuBLAS handles; 10 s on an
    # H200): counting starts after warmup_s *and* warmup_frames processed frames, whichever comes later.
    warmup_s, warmup_frames, warmup_cap_s = 3.0, 3, 120.0
    t0 = time.monotonic()
    i = 0
    knobs = []  # (time, alpha, keypoint budget, front-end image scale) once a second
    counting = False
    cpu0 = {}
    while not counting or time.monotonic() - t_count < seconds:
        warm = node.stats.counters["frames_processed"] >= warmup_frames or time.monotonic() - t0 >= warmup_cap_s
        if not counting and time.monotonic() - t0 >= warmup_s and warm:
            counting, t_count = True, time.monotonic()
            processed0, in0, dropped0 = (node.stats.counters[k] for k in ("frames_processed", "frames_in",
                                                                             "frames_dropped"))
            cpu0 = thread_cpu_ms(STAGES)
            all0 = all_threads_cpu_ms()
            node.add_observer(observe)
        stamp = C.ns_to_stamp(int(1.7e18) + int(i * 1e9 / input_hz))
        published_at[C.stamp_to_ns(stamp)] = time.monotonic()
        for pub, msg in zip(pubs, msgs[i % len(msgs)]):
            msg.header.stamp = stamp
            pub.publish(msg)
        if i % max(1, int(input_hz)) == 0:
            knobs.append((time.monotonic() - t0, node.matcher.alpha, node.matcher.max_keypoints,
                          float(getattr(node.matcher, "image_scale", 1.0))))
        i += 1
        time.sleep(max(0.0, t0 + i / input_hz - time.monotonic()))
    elapsed = time.monotonic() - t_count
    cpu1 = thread_cpu_ms(STAGES)
    all1 = all_threads_cpu_ms()
    busy = {k: (v - all0.get(k, 0.0)) / elapsed / 10 for k, v in all1.items()}  # % of one core
    busy = {k: round(v, 1) for k, v in sorted(busy.items(), key=lambda kv: -kv[1]) if v >= 1.0}
    snap = node.stats.snapshot()
    processed = snap["frames_processed"] - processed0
    stage_cpu = {name.split("-")[1]: (cpu1[name] - cpu0.get(name, 0.0)) / max(1, processed) for name in STAGES}
    windows = [sum(1 for t in processed_at if a <= t < a + 5.0) / 5.0
               for a in np.arange(t_count + elapsed / 2, t_count + elapsed - 4.999, 5.0)]
    lat = np.array(latencies) if latencies else np.zeros(1)
    cam = np.array(camera_latencies) if camera_latencies else np.zeros(1)
    pipeline = node.stage.enabled
    result = {"mode": mode, "features": features, "transport": transport, "decode_in_callback": decode_in_callback,
              "max_keypoints": keypoints,
              "input_hz": input_hz,
              "target_hz": target_hz, "pipeline": pipeline, "seconds": elapsed,
              "stereo_match": (stereo_match if stereo_match == "ahead" else node.stereo_placement.diagnostics()[
                  "stereo_match_in"]) if mode == "stereo" and pipeline else None,
              "frames_in": snap["frames_in"] - in0, "processed": processed,
              "dropped": snap["frames_dropped"] - dropped0, "rate_skipped": node.stage.skipped,
              "processed_hz": processed / elapsed,
              "latency_p50_ms": float(np.percentile(lat, 50)), "latency_p95_ms": float(np.percentile(lat, 95)),
              "camera_latency_p50_ms": float(np.percentile(cam, 50)),
              "camera_latency_p95_ms": float(np.percentile(cam, 95)),
              "stage_cpu_ms": stage_cpu, "thread_cpu_percent": busy,
              "tracker_ms_median": {k: float(np.median(v)) for k, v in steps.items()},
              "tracker_ms_p95": {k: float(np.percentile(v, 95)) for k, v in steps.items()},
              "latency_ms_all": [round(x, 1) for x in latencies],
              "tracker_ms_all": {k: [round(x, 1) for x in v] for k, v in steps.items()},
              "quiet_estimate_hz": 1000.0 / max(max(stage_cpu.values()), 1e-9) if pipeline
              else 1000.0 / max(sum(stage_cpu.values()), 1e-9),
              "window_hz_last_half": windows,
              "mean_stop_layer": snap["mean_stop_layer"], "num_layers": node.matcher.num_layers,
              "alpha_end": node.matcher.alpha, "keypoints_end": node.matcher.max_keypoints,
              "image_scale_end": float(getattr(node.matcher, "image_scale", 1.0)), "knobs": knobs,
              "rate_control": node.controller.diagnostics(), "weights": node.matcher.weights_source,
              "precision": precision or "node default", "precision_used": getattr(node.matcher, "precision", "n/a"),
              "device": str(node.matcher.device), "threads": torch_threads_now(),
              "cuda_graph": getattr(node.matcher, "_graph", None) is not None,
              "load_average": [round(x, 2) for x in os.getloadavg()]}
    ex.shutdown()
    node.destroy_node()
    io.destroy_node()
    ctx.try_shutdown()
    return result


def torch_threads_now() -> int:
    import torch

    return torch.get_num_threads()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="mono:xfeat,stereo:xfeat,mono:aliked,stereo:aliked")
    ap.add_argument("--keypoints", type=int, default=None, help="max_keypoints (default: the node's own default)")
    ap.add_argument("--input-hz", type=float, default=20.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--target-hz", type=float, default=0.0)
    ap.add_argument("--precision", default=None, choices=("auto", "fp32", "bf16", "fp16"),
                    help="the node's precision parameter (default: the node's default)")
    ap.add_argument("--pipeline", default="default", choices=("default", "on", "off", "both"),
                    help="the node's two-stage pipeline (default: the node's default); both = off, then on")
    ap.add_argument("--cpu-scan", default="default", choices=("default", "on", "off", "both"),
                    help="the C++ selective scan (models/ssm_cpu.py) where it is built: both = off, then on, "
                         "interleaved with --pipeline")
    ap.add_argument("--denormal-floor", default="default", choices=("default", "on", "off", "both"),
                    help="the cross attention's logit floor (models/mambaglue.py DENORMAL_FLOOR; off = the code "
                         "before 2026-12-07, whose softmax weights could be denormal): both = off, then on, "
                         "interleaved with --pipeline")
    ap.add_argument("--stereo-match", default="auto", choices=("auto", "ahead", "both"),
                    help="stereo, pipelined: where the left/right match runs: auto = the node's StereoPlacement, "
                         "ahead = always in stage 1; both = ahead, then auto, interleaved")
    ap.add_argument("--cuda-graph", default="default", choices=("default", "on", "off", "both"),
                    help="the node's cuda_graph parameter (CUDA): both = off, then on, interleaved with --pipeline")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--transport", default="raw", choices=("raw", "compressed", "both"),
                    help="images as sensor_msgs/Image, or JPEG CompressedImage on <topic>/compressed (both: each)")
    ap.add_argument("--compressed-decode", default="taken", choices=("taken", "callback", "both"),
                    help="compressed input: decoded by the stage that takes the frame (the node's way), or in the "
                         "image callback for every frame, dropped ones too (before 2026-12-07)")
    ap.add_argument("--threads", type=int, default=0, help="node num_threads (0 = torch's default)")
    ap.add_argument("--frames", type=int, default=20, help="distinct frames rendered (published in a loop)")
    ap.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                    help="further node parameters (values read as YAML), e.g. --set stereo_matching=epipolar")
    ap.add_argument("--json")
    args = ap.parse_args()
    from mambaglue_ros.bags import parse_set

    try:
        extra = parse_set(args.set)
    except ValueError as e:
        ap.error(str(e))
    import torch

    from mambaglue_ros.models import mambaglue as mg
    from mambaglue_ros.models import ssm_cpu
    from mambaglue_ros.synthetic import make_sequence

    from mambaglue_ros.evaluation.bench import device_name
    from mambaglue_ros.matcher import cpu_has_native_bf16

    # Rates differ severalfold between the CPU models a cloud hands out under the same machine type: name it.
    host = device_name(torch.device("cpu"))
    print(f"host: {host}, native bf16: {'yes' if cpu_has_native_bf16() else 'no'}, torch {torch.__version__}",
          flush=True)
    stereo = any(c.split(":")[0] == "stereo" for c in args.configs.split(","))  # right images only when needed
    frames = list(make_sequence(n_frames=args.frames, rate_hz=args.input_hz, stereo=stereo, trajectory="forward",
                                seed=0))
    rows = []
    pipelines = {"default": (None,), "on": (True,), "off": (False,), "both": (False, True)}[args.pipeline]
    scans = {"default": (None,), "on": (True,), "off": (False,), "both": (False, True)}[args.cpu_scan]
    placements = {"auto": ("auto",), "ahead": ("ahead",), "both": ("ahead", "auto")}[args.stereo_match]
    graphs = {"default": (None,), "on": (True,), "off": (False,), "both": (False, True)}[args.cuda_graph]
    floors = {"default": (None,), "on": (True,), "off": (False,), "both": (False, True)}[args.denormal_floor]
    transports = ("raw", "compressed") if args.transport == "both" else (args.transport,)
    decodes = {"taken": (False,), "callback": (True,), "both": (False, True)}[args.compressed_decode]
    transports = [(t, d) for t in transports for d in (decodes if t == "compressed" else (False,))]
    default_floor = mg.DENORMAL_FLOOR
    for cfg in args.configs.split(","):
        mode, features = cfg.split(":")
        for pipeline, scan, floor, placement, graph, (transport, in_callback) in [
                (p, c, f, m, g, t) for p in pipelines for c in scans for f in floors
                for m in (placements if mode == "stereo" else ("auto",)) for g in graphs for t in transports]:
            if scan is not None:  # read by ssm_cpu.cpu_scan(), cached per process: cleared for each run
                os.environ["MAMBAGLUE_CPU_SCAN"] = "1" if scan else "0"
                ssm_cpu.cpu_scan.cache_clear()
            mg.DENORMAL_FLOOR = default_floor if floor is None or floor else math.inf  # the node runs in-process
            rows.append(run(mode, features, args.keypoints, args.input_hz, args.seconds, args.target_hz, frames,
                            args.precision, args.threads, pipeline, args.device, placement, graph, extra, transport,
                            in_callback))
            r = rows[-1]
            r["cpu_scan"] = ssm_cpu.cpu_scan_status()
            r["denormal_floor"] = math.isfinite(mg.DENORMAL_FLOOR)  # on / off (JSON has no infinity)
            cpu = ", ".join(f"{k} {v:.0f}" for k, v in r["stage_cpu_ms"].items())
            scan = ("GPU  " if r["device"].startswith("cuda") else "C++  " if r["cpu_scan"].startswith("loaded")
                    else "torch")
            steady = (f", 5 s windows (last half) {min(r['window_hz_last_half']):.1f}-"
                      f"{max(r['window_hz_last_half']):.1f} Hz" if r["window_hz_last_half"] else "")
            print(f"{r['mode']:6} {r['features']:7} kp={r['max_keypoints']} in={r['input_hz']:.0f}Hz "
                  f"pipeline={'on ' if r['pipeline'] else 'off'} scan={scan}"
                  + ("" if r["denormal_floor"] else " floor=off")
                  + (f" stereo match: {r['stereo_match']}" if r["stereo_match"] else "")
                  + (" cuda_graph" if r["cuda_graph"] else "") + (" compressed" if r["transport"] != "raw" else "")
                  + (" (decoded in the callback)" if r["decode_in_callback"] else "") +
                  f" -> processed {r['processed_hz']:.2f} Hz, latency p50 "
                  f"{r['latency_p50_ms']:.0f} ms p95 {r['latency_p95_ms']:.0f} ms (camera -> outputs p50 "
                  f"{r['camera_latency_p50_ms']:.0f} p95 {r['camera_latency_p95_ms']:.0f}), dropped {r['dropped']}/"
                  f"{r['frames_in']} (+{r['rate_skipped']} gated), stop {r['mean_stop_layer']:.1f}/{r['num_layers']}, "
                  f"alpha {r['alpha_end']}, kp {r['keypoints_end']}, image scale {r['image_scale_end']:.2f}, "
                  f"{r['precision_used']}; on-CPU ms/frame: {cpu} "
                  f"-> {r['quiet_estimate_hz']:.1f} Hz with a core per stage{steady}; tracker ms (median): "
                  + ", ".join(f"{k} {v:.0f}" for k, v in r["tracker_ms_median"].items())
                  + " (p95: " + ", ".join(f"{k} {v:.0f}" for k, v in r["tracker_ms_p95"].items()) + ")"
                  + f"; load {r['load_average'][0]}",
                  flush=True)
    info = {"device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "cpu": host, "cpu_native_bf16": cpu_has_native_bf16()}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": info, "runs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
