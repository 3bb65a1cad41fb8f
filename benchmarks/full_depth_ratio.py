"""MambaGlue against our LightGlue at full depth (no exit, no pruning), both networks timed interleaved in one
process on the bench photo pair: the ratio a change to the network's code moves. Run it from two checkouts in
turn (old, new, new, old) to compare them under the same load.

    .venv/bin/python benchmarks/full_depth_ratio.py --label new                      # XFeat 16/512/1024, ALIKED 1024
    .venv/bin/python benchmarks/full_depth_ratio.py --configs xfeat:16:200,xfeat:1024:20
"""
from __future__ import annotations

import argparse

import torch

from mambaglue_ros.evaluation import bench


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="xfeat:16:200,xfeat:512:30,xfeat:1024:20,aliked:1024:10",
                   help="comma list of FEATURES:KEYPOINTS:REPEATS (16 keypoints: the forward is all overhead)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--label", default="")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device("cpu")
    nets: dict[str, tuple] = {}
    out = []
    for cfg in args.configs.split(","):
        feat, kp, reps = cfg.split(":")
        kp, reps = int(kp), int(reps)
        if feat not in nets:
            nets[feat] = (bench.build(feat, None, dev, adaptive=False)[0],
                          bench.build(feat, "lightglue", dev, adaptive=False, mixer="attention", regressor="linear")[0])
        mamba, lightglue = nets[feat]
        img0, img1 = bench.photo_pair(kp)
        data = bench.network_inputs(*bench.extract_pair(feat, kp, img0, img1, dev), dev)
        with torch.inference_mode():
            ms = bench.interleaved({"mambaglue": lambda: mamba(data), "lightglue": lambda: lightglue(data)}, reps,
                                   dev, warmup=3)
        m, lg = ms["mambaglue"], ms["lightglue"]
        out.append(f"{feat} {kp}: {m:.2f} / {lg:.2f} ms = {m / lg:.3f}")
    print(args.label, " | ".join(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
