"""Long runs of the real ``matcher_node`` process over loopback DDS: overload and soak.

The node runs as its own process (the console script, as users start it), so its memory
(VmRSS from /proc/<pid>/status) and its CPU are its own: the test's publisher and collector
do not share its interpreter.

* Overload: the node's per-frame service time T is measured first (closed loop), then frames are
  published at 5 / T for 60 s. With the latest-frame slot (queue_size 1) a processed frame waited
  at most one inter-arrival time (T / 5), so the end-to-end latency (camera stamp -> Matches
  received) must stay near one processing time, far from a growing queue. Checked per frame, with
  the processing time measured under that same load (receiving 5x the frames costs the node CPU,
  and this machine's 2 cores are shared with other work, so it varies):
    - p95 of the latency < 2 x p95 of the node's processing time (Matches.latency_ms);
    - p95 of the queueing delay (latency - that frame's own processing time) < one service time S
      (the median interval between outputs under overload: the worker never idles), so no frame
      ever waited behind another queued one;
    - S < 3 T: taking in 5x the frames does not starve the worker.
  The excess is dropped and counted, every input is accounted for, memory does not grow.
  SIGINT while frames still flow: exit 0, no traceback.
* Soak: 1200 small frames, pipelined (at most 2 in flight, so none need be dropped):
  every output well-formed, no memory growth, no rising latency.

OMP_NUM_THREADS=1 for the node: on a 2-core machine with other load, torch's spinning worker
threads made a frame 5x slower (150 vs 30 ms at 160x120) and far more variable.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from typing import Callable

import numpy as np
import pytest

from mambaglue_ros.synthetic import make_sequence

from ros_harness import Collector, camera_info_msg, check_outputs, wait_for
from test_node_process import matcher_node_command

pytestmark = [pytest.mark.ros, pytest.mark.slow]
NS = 1_000_000_000


def stamp_ns(stamp) -> int:
    return stamp.sec * NS + stamp.nanosec


class NodeProcess:
    """``matcher_node`` in a child process, a test node spinning in a thread, and an RSS sampler."""

    def __init__(self, ros_context, params: dict, reliable: bool = False):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import CameraInfo, Image

        args = []
        for k, v in params.items():
            args += ["-p", f"{k}:={v}"]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(matcher_node_command(*args), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env)
        self.io = rclpy.create_node("soak_io", context=ros_context)
        self.out = Collector(self.io)
        self.received: dict[int, float] = {}  # frame stamp -> wall time its Matches arrived
        self.processing_ms: dict[int, float] = {}  # frame stamp -> the node's extract + match time
        from mambaglue_ros.msg import Matches

        self.io.create_subscription(Matches, "matches", self._on_matches, 100)
        self.executor = SingleThreadedExecutor(context=ros_context)
        self.executor.add_node(self.io)
        self.spinning = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinning.start()
        depth = 100 if reliable else 10
        self.image = self.io.create_publisher(Image, "image", depth)
        self.info = self.io.create_publisher(CameraInfo, "camera_info", 10)
        ok = wait_for(lambda: (self.image.get_subscription_count() > 0 and self.info.get_subscription_count() > 0)
                      or self.proc.poll() is not None, timeout=120)
        assert ok and self.proc.poll() is None, self.output()
        self.out.wait_matched(timeout=60)  # outputs published before the match would be lost
        self.rss: list[tuple[float, float]] = []  # (time, MB)
        self._sampling = threading.Event()
        self._sampler = threading.Thread(target=self._sample_rss, daemon=True)
        self._sampler.start()

    def _on_matches(self, msg) -> None:
        self.received[stamp_ns(msg.header.stamp)] = time.time()
        self.processing_ms[stamp_ns(msg.header.stamp)] = msg.latency_ms

    def _sample_rss(self) -> None:
        while not self._sampling.is_set():
            try:
                with open(f"/proc/{self.proc.pid}/status") as f:
                    kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
                self.rss.append((time.monotonic(), kb / 1024))
            except (OSError, StopIteration):
                return
            time.sleep(0.25)

    def rss_between(self, t0: float, t1: float) -> np.ndarray:
        return np.array([(t, mb) for t, mb in self.rss if t0 <= t <= t1])

    def output(self) -> str:
        if self.proc.poll() is None:
            return "(running)"
        return self.proc.stdout.read()

    def diag(self) -> dict:
        return self.out.latest_diagnostics()

    def first_frame(self, publish_info: Callable[[], None], publish_frame: Callable[[int], int],
                    attempts: int = 10) -> int:
        """Send camera_info, then the first frame, until the node processed one; returns the attempts used.

        camera_info and images travel on different topics, so an image can overtake its camera_info and
        be skipped (no_camera_info); a lost camera_info sample is resent only on the next reliable
        heartbeat (seconds). The node's diagnostics say which happened; a skipped first frame is sent
        again (``publish_frame(k)`` with a newer stamp). A frame the node never received (frames_in unchanged:
        a sample sent before the node's reader had matched our writer) is sent again too. No sleep decides it."""
        def count(key: str) -> int:
            return int(self.diag().get(key, "0"))

        for k in range(attempts):
            skipped, arrived = count("no_camera_info"), count("frames_in")
            publish_info()
            publish_frame(k)
            if not wait_for(lambda: count("frames_in") > arrived, timeout=10):
                continue  # lost in transport: send again
            done = wait_for(lambda: count("frames_processed") > 0 or count("no_camera_info") > skipped, timeout=60)
            assert done, (self.diag(), self.output())
            if count("frames_processed") > 0:
                return k + 1
        raise AssertionError(f"first frame not processed in {attempts} attempts (lost or no camera_info): "
                             f"{self.diag()}")

    def stop(self, sig=signal.SIGINT) -> tuple[int, str]:
        self._sampling.set()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            output, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            output, _ = self.proc.communicate()
        return self.proc.returncode, output

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        self.executor.shutdown()
        self.io.destroy_node()


def ping_pong_messages(width: int, height: int, n: int, seed: int = 4):
    """Image messages of a smooth synthetic motion; played 0..n-1..0.. the motion never jumps."""
    from mambaglue_ros.ros import convert as C

    seq = make_sequence(n_frames=n, rate_hz=10.0, width=width, height=height, stereo=False, trajectory="orbit",
                        seed=seed, speed_mps=0.5)
    frames = [seq.frame(i) for i in range(n)]
    msgs = [C.numpy_to_image(f.left, "rgb8") for f in frames]
    order = list(range(n)) + list(range(n - 2, 0, -1))
    return frames[0].K, [msgs[i] for i in order]


def slope_mb_per_unit(samples: np.ndarray) -> float:
    """Least-squares slope of MB over the first column's unit."""
    return float(np.polyfit(samples[:, 0], samples[:, 1], 1)[0])


def report(name: str, **figures) -> None:
    text = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
    print(f"\n[{name}] {text}")  # shown with pytest -s


def test_overload_latency_bounded_drops_counted_memory_flat(ros_context):
    from mambaglue_ros.ros import convert as C

    K, msgs = ping_pong_messages(320, 240, 30)
    node = NodeProcess(ros_context, {"features": "xfeat", "max_keypoints": 256, "device": "cpu",
                                     "queue_size": 1})
    try:
        stamp = [time.time_ns()]

        def publish(i: int) -> int:
            stamp[0] = max(stamp[0] + 1, time.time_ns())  # wall-clock stamps: latency = arrival - stamp
            msg = msgs[i % len(msgs)]
            msg.header.stamp = C.ns_to_stamp(stamp[0])
            msg.header.frame_id = "cam"
            node.image.publish(msg)
            return stamp[0]

        # 1. the node's own service time T, closed loop: one frame at a time
        round_trips = []
        primes = node.first_frame(lambda: node.info.publish(camera_info_msg(K, 320, 240, "cam")), lambda k: publish(0))
        for i in range(1, 28):
            t0 = time.time()
            s = publish(i)
            assert wait_for(lambda: s in node.received, timeout=30), f"frame {i}: no matches ({node.diag()})"
            if i >= 8:  # after warm-up
                round_trips.append(node.received[s] - t0)
        T = float(np.median(round_trips))
        rate = 5.0 / T

        # 2. overload: 5x that rate for 60 s
        sent: list[int] = []
        t_start = time.monotonic()
        period = 1.0 / rate
        i = 0
        while time.monotonic() - t_start < 60.0:
            sent.append(publish(i))
            i += 1
            time.sleep(max(0.0, t_start + i * period - time.monotonic()))
        duration = time.monotonic() - t_start
        t_end = time.monotonic()
        # SIGINT while frames still flow (the node is mid-frame): clean exit, no traceback
        flowing = threading.Event()

        def keep_publishing() -> None:
            j = i
            while not flowing.is_set():
                publish(j)
                j += 1
                time.sleep(period)
        feeder = threading.Thread(target=keep_publishing, daemon=True)
        # the counters of a diagnostics report made 0.5 s after the last frame was sent (delivery takes ms)
        last_sent_ns = time.time_ns()

        def report_after() -> bool:
            diag = node.out.get("diag")
            return bool(diag) and stamp_ns(diag[-1].header.stamp) > last_sent_ns + NS // 2
        assert wait_for(report_after, timeout=10), node.diag()
        diag = node.diag()
        feeder.start()
        time.sleep(0.5)
        rc, output = node.stop(signal.SIGINT)
        flowing.set()
        feeder.join()
        assert rc == 0 and "Traceback" not in output, output

        overload = set(sent)
        done = sorted((node.received[s], node.received[s] - s / NS, node.processing_ms[s] / 1e3)
                      for s in sent if s in node.received)
        arrival, lat, proc = (np.array(column) for column in zip(*done))
        warm = arrival >= arrival[0] + 5.0  # skip the first seconds
        p50, p95, worst = (float(np.percentile(lat[warm], q)) for q in (50, 95, 100))
        proc_p95 = float(np.percentile(proc[warm], 95))
        queueing_p95 = float(np.percentile((lat - proc)[warm], 95))
        S = float(np.median(np.diff(arrival[warm])))  # service time under overload
        first10 = float(np.median(lat[warm & (arrival < arrival[0] + 15.0)]))
        last10 = float(np.median(lat[arrival >= arrival[-1] - 10.0]))
        outputs = len(done)
        by_10s = [round(float(np.median(proc[(arrival >= a) & (arrival < a + 10)])) * 1e3)
                  for a in np.arange(arrival[0], arrival[-1] - 5, 10.0)]
        c = {k: int(v) for k, v in diag.items() if k not in ("level", "message") and v.isdigit()}
        rss = node.rss_between(t_start + 10, t_end)
        rss_slope = slope_mb_per_unit(rss) * 60  # MB per minute
        report("overload", service_time_ms=T * 1e3, service_time_loaded_ms=S * 1e3, input_hz=len(sent) / duration,
               sent=len(sent), processing_p95_ms=proc_p95 * 1e3, queueing_delay_p95_ms=queueing_p95 * 1e3,
               processing_p50_ms_by_10s=by_10s, latency_p50_first_10s_ms=first10 * 1e3,
               latency_p50_last_10s_ms=last10 * 1e3,
               frames_in=c["frames_in"], processed=c["frames_processed"], dropped=c["frames_dropped"],
               outputs=outputs, latency_p50_ms=p50 * 1e3, latency_p95_ms=p95 * 1e3, latency_max_ms=worst * 1e3,
               node_latency_p95_ms=float(diag["latency_p95_ms"]), rss_start_mb=rss[0, 1], rss_end_mb=rss[-1, 1],
               rss_slope_mb_per_min=rss_slope)

        assert len(sent) / duration > 4.0 / T, "the test could not publish at 5x the service rate"
        # latency bounded: the newest frame waits for at most one frame in work, never in a queue. With the
        # two-stage pipeline (the default on a CPU) that is one frame in work per stage: it may wait for stage 1
        # to finish the frame before it, then for the worker to, so up to one service time per stage
        stages = 2 if diag.get("pipeline") == "True" else 1
        assert queueing_p95 < stages * S, (f"queueing delay p95 {queueing_p95 * 1e3:.0f} ms >= {stages} x service "
                                           f"time {S * 1e3:.0f} ms")
        assert p95 < proc_p95 + stages * S, (f"latency p95 {p95 * 1e3:.0f} ms >= processing p95 "
                                             f"{proc_p95 * 1e3:.0f} ms + {stages} x service time {S * 1e3:.0f} ms")
        assert S < 3.0 * T, f"service time under load {S * 1e3:.0f} ms vs {T * 1e3:.0f} ms unloaded"
        # drops counted; every input accounted for (frames still in work at the snapshot: at most 2)
        assert c["frames_dropped"] > 0.5 * c["frames_in"]
        accounted = sum(c[k] for k in ("frames_processed", "frames_dropped", "bad_input", "oversized",
                                       "out_of_order", "no_camera_info", "size_mismatch", "errors"))
        assert 0 <= c["frames_in"] - accounted <= 2, c
        assert c["errors"] == 0 and c["bad_input"] == 0
        # every processed frame was published (27 + ``primes`` calibration frames, the first without a reference)
        assert c["frames_in"] <= len(sent) + 27 + primes and outputs >= c["frames_processed"] - 28 - 2
        # memory flat. Observed -0.03..+6.4 MB/min (allocator noise over 50 s); 10 MB/min would be a leak of
        # 12 kB per processed frame (~13 Hz): one leaked 320x240 RGB input (230 kB) each would be ~180 MB/min.
        # The run stays 60 s: at 40 s (a 30 s window) a fresh-clone run under double load measured 11.0 MB/min.
        assert abs(rss_slope) < 10.0, f"RSS grows {rss_slope:.1f} MB/min"
        check_outputs(node.out)
    finally:
        node.close()


def test_soak_over_a_thousand_frames(ros_context):
    from mambaglue_ros.ros import convert as C

    n_frames = 1200  # 2000 until the suite had to fit 10 minutes; a leak shows per frame, not per hour
    K, msgs = ping_pong_messages(160, 120, 40, seed=5)
    node = NodeProcess(ros_context, {"features": "xfeat", "max_keypoints": 128, "min_keypoints": 64, "device": "cpu",
                                     "qos_reliability": "reliable", "qos_depth": 10, "queue_size": 2},
                       reliable=True)
    try:
        base_ns = 1_700_000_000 * NS
        stamps: list[int] = []

        def first(k: int) -> int:  # attempt k starts the whole stamp sequence a minute later
            stamps[:] = [base_ns + k * 60 * NS + i * 50_000_000 for i in range(n_frames)]
            msg = msgs[0]
            msg.header.stamp = C.ns_to_stamp(stamps[0])
            msg.header.frame_id = "cam"
            node.image.publish(msg)
            return stamps[0]
        primes = node.first_frame(lambda: node.info.publish(camera_info_msg(K, 160, 120, "cam")), first)
        sent_at: dict[int, float] = {}
        rss_at: list[tuple[int, float]] = []  # (frames sent, MB)
        stalls = 0
        t0 = time.monotonic()
        sent_at[stamps[0]] = time.time()
        for i, s in enumerate(stamps[1:], start=1):
            # pipelined: at most 2 frames in the node beyond the one whose output is on its way; the
            # slot holds 2 (queue_size), so none is ever dropped
            deadline = time.monotonic() + 10
            while i - 1 - len(node.received) >= 2 and time.monotonic() < deadline:
                time.sleep(0.0005)
            if time.monotonic() >= deadline:
                stalls += 1
            msg = msgs[i % len(msgs)]
            msg.header.stamp = C.ns_to_stamp(s)
            msg.header.frame_id = "cam"
            sent_at[s] = time.time()
            node.image.publish(msg)
            if i % 20 == 0 and node.rss:
                rss_at.append((i, node.rss[-1][1]))
        wait_for(lambda: len(node.received) >= n_frames - 1, timeout=30)
        wall = time.monotonic() - t0
        # a diagnostics report that has counted every frame (1 Hz)
        wait_for(lambda: int(node.diag().get("frames_processed", "0")) >= n_frames, timeout=10)
        diag = node.diag()
        assert len(node.received) == n_frames - 1, (len(node.received), diag)
        rc, output = node.stop(signal.SIGTERM)
        assert rc == 0 and "Traceback" not in output, output

        matches = node.out.get("matches")
        counts = check_outputs(node.out)  # finite, in range, stamps increasing
        assert len(matches) == n_frames - 1 and stalls == 0
        assert [stamp_ns(m.header.stamp) for m in matches] == stamps[1:]  # every frame, in order
        assert all(stamp_ns(m.stamp0) == s for m, s in zip(matches, stamps))  # each against the previous
        assert np.median([len(m.scores) for m in matches]) > 40
        assert counts["pose"] > 0.9 * n_frames and counts["odom"] == counts["pose"] + 1  # + the first frame's (the origin)
        assert int(diag["frames_processed"]) == n_frames and int(diag["errors"]) == 0
        assert int(diag["frames_dropped"]) == 0 and int(diag["out_of_order"]) == 0
        assert int(diag["no_camera_info"]) == primes - 1 and int(diag["frames_in"]) == n_frames + primes - 1

        # no rising latency: first vs last quarter, node-side (extract + match) and end to end
        node_ms = np.array([m.latency_ms for m in matches])
        e2e_ms = np.array([(node.received[stamp_ns(m.header.stamp)] - sent_at[stamp_ns(m.header.stamp)]) * 1e3
                           for m in matches])
        q = len(matches) // 4
        first, last = (float(np.median(node_ms[:q])), float(np.median(e2e_ms[:q]))), \
                      (float(np.median(node_ms[-q:])), float(np.median(e2e_ms[-q:])))
        # memory: slope over the second half, MB per 1000 frames
        rss = np.array(rss_at, dtype=float)
        half = rss[rss[:, 0] >= n_frames // 2]
        slope = slope_mb_per_unit(half) * 1000
        report("soak", frames=n_frames, wall_s=wall, fps=n_frames / wall, node_p50_first_ms=first[0],
               node_p50_last_ms=last[0], e2e_p50_first_ms=first[1], e2e_p50_last_ms=last[1],
               rss_first_mb=rss[0, 1], rss_mid_mb=half[0, 1], rss_end_mb=rss[-1, 1],
               rss_slope_mb_per_1000_frames=slope)
        # CPU shared with other work: generous ratio plus a few ms; a leak-like trend doubles it
        assert last[0] < 1.5 * first[0] + 5 and last[1] < 1.5 * first[1] + 5, (first, last)
        # A leak of one 160x120 gray image (19 kB) per frame is 19 MB per 1000 frames; the bound catches any
        # per-frame leak from 3 kB up. Allocator steps over the 600-frame second half measured 0.07 and 1.04 MB
        # per 1000 frames in two fresh-clone runs (the 1.04 failed the 1.0 bound this test had with 2000 frames).
        assert abs(slope) < 3.0, f"RSS grows {slope:.2f} MB per 1000 frames"
    finally:
        node.close()
