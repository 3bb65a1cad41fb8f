"""What denormal floats cost the matcher on a CPU, and what the cross attention's logit floor gives back.

A trained cross attention is sharp: a few per cent of its softmax weights fall below float32's smallest normal
number (1.2e-38) and come out as denormals, which a CPU multiplies many times slower. ``models/mambaglue.py``
raises every cross-attention logit to at least ``DENORMAL_FLOOR`` (60) below its row's maximum, so no weight is
denormal.
This script runs, per front end and keypoint count, interleaved in one process on the bench photo pair, at full
depth (no exit, no pruning):

    mambaglue / lightglue          the shipped MambaGlue and our LightGlue (mixer 'attention'), with the floor
    mambaglue_nofloor / ..._nofloor the same networks with the floor off (DENORMAL_FLOOR = inf: the code before it)
    lightglue_kornia               kornia's LightGlue (released weights): the reference, which has no floor

and prints median ms per pair, the floor's speed-up, whether the matches are the same with and without it, and
the share of cross-attention weights that are denormal without it (measured on this pair). ``--train-configs``
times a training step as well (``forward_train`` and the backward pass of a loss on every layer's assignment, the
shipped network in train mode, a batch of one pair), with and without the floor, interleaved; ``--configs ""``
times only that.

    .venv/bin/python benchmarks/denormals.py [--configs xfeat:512:20,xfeat:1024:15,aliked:1024:6]
                                             [--train-configs xfeat:512:8] [--threads 1]
                                             [--plot out/denormals.png] [--json out/denormals.json]
"""
from __future__ import annotations

import argparse
import json
import math
import os

import torch
import torch.nn.functional as F

from mambaglue_ros.evaluation import bench
from mambaglue_ros.models import mambaglue as mg

FLOAT32_MIN_NORMAL = torch.finfo(torch.float32).tiny


def denormal_share(net: torch.nn.Module, data: dict[str, torch.Tensor]) -> float:
    """Share of the cross blocks' softmax weights (all layers, both directions) that are denormal without the
    floor, from one forward pass of ``net``."""
    counts = [0, 0]
    original = mg.softmax_attention

    def counting(q, k, v, mask, block_bytes=1 << 21):
        w = F.softmax(q @ k.transpose(-1, -2), dim=-1)
        counts[0] += int(((w > 0) & (w < FLOAT32_MIN_NORMAL)).sum())
        counts[1] += w.numel()
        return original(q, k, v, mask, block_bytes)

    mg.softmax_attention = counting
    try:
        with torch.inference_mode():
            net(data)
    finally:
        mg.softmax_attention = original
    return counts[0] / max(1, counts[1])


def with_floor(fn, floor: float):
    def call():
        kept = mg.DENORMAL_FLOOR
        mg.DENORMAL_FLOOR = floor
        try:
            return fn()
        finally:
            mg.DENORMAL_FLOOR = kept
    return call


def run_config(features: str, keypoints: int, repeats: int, dev: torch.device) -> dict:
    mamba = bench.build(features, None, dev, adaptive=False)[0]
    ours = bench.build(features, "lightglue", dev, adaptive=False, mixer="attention", regressor="linear")[0]
    kornia = bench.kornia_lightglue(features, adaptive=False).to(dev)
    img0, img1 = bench.photo_pair(keypoints)
    f0, f1 = bench.extract_pair(features, keypoints, img0, img1, dev)
    data, kdata = bench.network_inputs(f0, f1, dev), bench.kornia_inputs(f0, f1, dev)
    calls = {
        "mambaglue": with_floor(lambda: mamba(data), mg.DENORMAL_FLOOR),
        "mambaglue_nofloor": with_floor(lambda: mamba(data), math.inf),
        "lightglue": with_floor(lambda: ours(data), mg.DENORMAL_FLOOR),
        "lightglue_nofloor": with_floor(lambda: ours(data), math.inf),
        "lightglue_kornia": lambda: kornia(kdata),
    }
    with torch.inference_mode():
        ms = bench.interleaved(calls, repeats, dev, warmup=2)
        same = {name: torch.equal(calls[name]()["matches0"], calls[f"{name}_nofloor"]()["matches0"])
                for name in ("mambaglue", "lightglue")}
    share = {name: denormal_share(net, data) for name, net in (("mambaglue", mamba), ("lightglue", ours))}
    return {"features": features, "keypoints": keypoints, "repeats": repeats, "ms": ms, "same_matches": same,
            "denormal_share": share}


def run_train_config(features: str, keypoints: int, repeats: int, dev: torch.device) -> dict:
    """Median ms of one training step (forward_train + backward) with and without the floor, interleaved."""
    net = bench.build(features, None, dev, adaptive=False)[0].train()
    for p in net.parameters():
        p.requires_grad_(True)
    img0, img1 = bench.photo_pair(keypoints)
    f0, f1 = bench.extract_pair(features, keypoints, img0, img1, dev)
    data = {k: v.clone() for k, v in bench.network_inputs(f0, f1, dev).items()}  # not inference tensors

    def step():
        out = net.forward_train(data)
        # any loss that reaches every layer's assignment; the values do not matter, the backward pass does
        loss = sum(la[:, :-1, :-1].diagonal(dim1=1, dim2=2).mean() + la[:, :-1, -1].mean()
                   for la in out["log_assignment"])
        net.zero_grad(set_to_none=True)
        (-loss).backward()

    calls = {"train_step": with_floor(step, mg.DENORMAL_FLOOR), "train_step_nofloor": with_floor(step, math.inf)}
    ms = bench.interleaved(calls, repeats, dev, warmup=1)
    return {"features": features, "keypoints": keypoints, "repeats": repeats, "ms": ms}


def print_row(r: dict) -> None:
    ms = r["ms"]
    cells = [f"{r['features']}, {r['keypoints']}"]
    for name in ("mambaglue", "lightglue"):
        cells.append(f"{ms[f'{name}_nofloor']:.1f} → {ms[name]:.1f} ({ms[f'{name}_nofloor'] / ms[name]:.2f}x), "
                     f"{100 * r['denormal_share'][name]:.0f} %, {'yes' if r['same_matches'][name] else 'NO'}")
    cells.append(f"{ms['mambaglue_nofloor'] / ms['lightglue_nofloor']:.3f} → {ms['mambaglue'] / ms['lightglue']:.3f}")
    cells.append(f"{ms['lightglue_kornia']:.1f}")
    print("| " + " | ".join(cells) + " |", flush=True)


def plot(results: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = ("mambaglue_nofloor", "mambaglue", "lightglue_nofloor", "lightglue", "lightglue_kornia")
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        ax.bar([i + j * width for i in range(len(results))], [r["ms"][name] for r in results], width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(results))])
    ax.set_xticklabels([f"{r['features']} {r['keypoints']}" for r in results])
    ax.set_ylabel("median ms per pair, full depth")
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="xfeat:512:20,xfeat:1024:15,aliked:1024:6",
                   help="comma list of FEATURES:KEYPOINTS:REPEATS")
    p.add_argument("--train-configs", default="", help="comma list of FEATURES:KEYPOINTS:REPEATS for training steps")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--plot", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device("cpu")
    print(f"{bench.device_name(dev)}, torch {torch.__version__}, {args.threads} thread(s), "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.configs:
        print("| front end, keypoints | MambaGlue ms: no floor → floor (speed-up), denormal weights without it, "
              "same matches | our LightGlue: the same | MambaGlue / our LightGlue: no floor → floor | "
              "kornia LightGlue ms |")
        print("|---|---|---|---|---:|")
    results = []
    for cfg in filter(None, args.configs.split(",")):
        features, keypoints, repeats = cfg.split(":")
        results.append(run_config(features, int(keypoints), int(repeats), dev))
        print_row(results[-1])
    training = []
    for cfg in filter(None, args.train_configs.split(",")):
        features, keypoints, repeats = cfg.split(":")
        training.append(run_train_config(features, int(keypoints), int(repeats), dev))
        ms = training[-1]["ms"]
        if len(training) == 1:
            print("| training step (median of repeats) | no floor, ms | floor, ms | speed-up |")
            print("|---|---:|---:|---:|")
        print(f"| {features}, {keypoints} keypoints ({repeats}) | {ms['train_step_nofloor']:.1f} | "
              f"{ms['train_step']:.1f} | {ms['train_step_nofloor'] / ms['train_step']:.2f}x |", flush=True)
    if args.plot and results:
        plot(results, args.plot)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"inference": results, "training": training}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
