"""Time of one training step (forward over all layers, backward) of each network design against the attention-only
control, interleaved in one process: what a Mamba branch costs a training run on this CPU, with the C++ training scan
(``ssm_cpu.scan_train_cpu``) and with the torch scan it replaces where the kernel is not built.

    .venv/bin/python benchmarks/train_step.py                                   # XFeat batch 8 and ALIKED batch 4
    .venv/bin/python benchmarks/train_step.py --configs xfeat:8:512:5 --json out/train_step.json

Each network starts from the front end's LightGlue warm start, as stage 1 does, with a fresh branch; the batch is
random keypoints and normalised descriptors (the step's cost does not depend on what the points are), and the loss
is a stand-in (the mean of every layer's log assignment and confidence), so the backward runs through every layer
and head as the matcher NLL's does. Prints one line per network: median ms per step and its ratio to the control.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from mambaglue_ros.evaluation import bench
from mambaglue_ros.matcher import build_network
from mambaglue_ros.models import ssm_cpu
from mambaglue_ros.models.mambaglue import MambaGlue

sys.path.insert(0, str(Path(__file__).resolve().parent))
from full_depth_ratio import DESIGNS  # noqa: E402  (the two designs' network options, as the FLOP count uses them)

DESCRIPTOR_DIM = {"xfeat": 64, "aliked": 128}


def random_batch(features: str, batch: int, keypoints: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """``batch`` pairs of ``keypoints`` random points in 640 x 480 images with unit-norm random descriptors."""
    g = torch.Generator().manual_seed(seed)
    size = torch.tensor([640.0, 480.0])
    data = {}
    for side in "01":
        data[f"keypoints{side}"] = torch.rand(batch, keypoints, 2, generator=g) * size
        data[f"descriptors{side}"] = torch.nn.functional.normalize(
            torch.randn(batch, keypoints, DESCRIPTOR_DIM[features], generator=g), dim=-1)
        data[f"image_size{side}"] = size.expand(batch, 2).clone()
    return data


def training_step(net: MambaGlue, data: dict[str, torch.Tensor]) -> None:
    net.zero_grad(set_to_none=True)
    out = net.forward_train(data)
    loss = sum(s.mean() for s in out["log_assignment"])
    loss = loss + sum(c.mean() for c in out["confidence0"] + out["confidence1"])
    loss.backward()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="xfeat:8:512:5,aliked:4:512:3",
                   help="comma list of FEATURES:BATCH:KEYPOINTS:REPEATS (the training configs' batch and keypoints)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    kernel = ssm_cpu.kernel_enabled()
    print(f"C++ scan kernel: {ssm_cpu.cpu_scan_status()}; {args.threads} torch thread(s)")
    rows = []
    for cfg in args.configs.split(","):
        feat, batch, kp, reps = cfg.split(":")
        batch, kp, reps = int(batch), int(kp), int(reps)
        data = random_batch(feat, batch, kp)
        # the deep regressor, as every training config has it (the warm start's default is LightGlue's linear one)
        nets = {"control": build_network(feat, "lightglue", mixer="attention", regressor="deep")[0].train()}
        for name, design in DESIGNS.items():
            nets[name] = build_network(feat, "lightglue", regressor="deep", **design)[0].train()

        def step(name: str, torch_scan: bool = False):
            def run() -> None:
                if torch_scan:
                    with ssm_cpu.torch_scan_only():
                        training_step(nets[name], data)
                else:
                    training_step(nets[name], data)
            return run

        calls = {"control": step("control")}
        for name in DESIGNS:
            if kernel:
                calls[f"{name} (C++ scan)"] = step(name)
            calls[f"{name} (torch scan)"] = step(name, torch_scan=True)
        ms = bench.interleaved(calls, reps, torch.device("cpu"), warmup=1)
        for name, t in ms.items():
            row = {"features": feat, "batch": batch, "keypoints": kp, "network": name, "ms": t,
                   "ratio_to_control": t / ms["control"]}
            rows.append(row)
            print(f"{feat} batch {batch} x {kp} kp  {name:18s} {t:8.0f} ms/step  {t / ms['control']:.3f}x the control",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "kernel": ssm_cpu.cpu_scan_status(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
