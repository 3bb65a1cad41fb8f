"""MambaGlue against our LightGlue at full depth (no exit, no pruning), both networks timed interleaved in one
process on the bench photo pair: the ratio a change to the network's code moves. Run it from two checkouts in
turn (old, new, new, old) to compare them under the same load.

    .venv/bin/python benchmarks/full_depth_ratio.py --label new                      # XFeat 16/512/1024, ALIKED 1024
    .venv/bin/python benchmarks/full_depth_ratio.py --configs xfeat:16:200,xfeat:1024:20
    .venv/bin/python benchmarks/full_depth_ratio.py --configs xfeat:1024:20,aliked:1024:8 --flops

``--flops`` also counts each network's floating-point operations on the same inputs (torch's ``FlopCounterMode``: the
matrix products and attention, not the scan, conv or elementwise work), for the shipped file and for both network
designs (version 1: score order, one-way scan, [y, silu(z)] into a 4d FFN input, inner width d; version 2: Hilbert
order, two-way scan, gated 3d input, inner width d/2). Their ratio to LightGlue's is what a design costs before any
kernel: a time ratio well below it is not to be expected.

Where the shipped file's FFN columns of the Mamba branch have an automatic low rank (``mamba_ffn_rank=-1``: the
version-1 ALIKED file), the file with them at that rank is timed beside it: ``low rank``.
"""
from __future__ import annotations

import argparse

import torch

from mambaglue_ros.evaluation import bench
from mambaglue_ros.models.mambaglue import MambaGlue
from mambaglue_ros.weights import VERSION1_NETWORK

# the two designs' network options: version 1's as old checkpoints load, version 2's the network's defaults
DESIGNS = {"v1": VERSION1_NETWORK, "v2": {k: MambaGlue.default_conf[k] for k in VERSION1_NETWORK}}


def counted_flops(net: torch.nn.Module, data: dict[str, torch.Tensor]) -> int:
    """FLOPs of one forward pass, after one uncounted pass (the folded FFN weights are made once, then kept).

    The counted pass runs the self attention's ``scaled_dot_product_attention`` on its math backend: the CPU's fused
    kernel is an operation the counter has no formula for (it would count 0), the math backend is the same products.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode():
        net(data)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            net(data)
    return counter.get_total_flops()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="xfeat:16:200,xfeat:512:30,xfeat:1024:20,aliked:1024:10",
                   help="comma list of FEATURES:KEYPOINTS:REPEATS (16 keypoints: the forward is all overhead)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--label", default="")
    p.add_argument("--flops", action="store_true", help="also the FLOP ratios of the shipped file and both designs")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device("cpu")
    nets: dict[str, tuple] = {}
    out = []
    for cfg in args.configs.split(","):
        feat, kp, reps = cfg.split(":")
        kp, reps = int(kp), int(reps)
        if feat not in nets:
            low_rank = bench.build(feat, None, dev, adaptive=False, mamba_ffn_rank=-1)[0]
            nets[feat] = {"mambaglue": bench.build(feat, None, dev, adaptive=False)[0],
                          "lightglue": bench.build(feat, "lightglue", dev, adaptive=False, mixer="attention",
                                                   regressor="linear")[0],
                          **({"low rank": low_rank} if low_rank.transformers[0].self_attn.ffn_rank > 0 else {})}
        img0, img1 = bench.photo_pair(kp)
        data = bench.network_inputs(*bench.extract_pair(feat, kp, img0, img1, dev), dev)
        with torch.inference_mode():
            ms = bench.interleaved({name: (lambda net=net: net(data)) for name, net in nets[feat].items()}, reps, dev,
                                   warmup=3)
        m, lg = ms["mambaglue"], ms["lightglue"]
        line = f"{feat} {kp}: {m:.2f} / {lg:.2f} ms = {m / lg:.3f}"
        if "low rank" in ms:
            line += f" (low-rank Mamba columns: {ms['low rank']:.2f} ms = {ms['low rank'] / lg:.3f})"
        if args.flops:
            base = counted_flops(nets[feat]["lightglue"], data)
            ratios = {"shipped": counted_flops(nets[feat]["mambaglue"], data) / base}
            if "low rank" in nets[feat]:
                ratios["shipped low rank"] = counted_flops(nets[feat]["low rank"], data) / base
            for name, design in DESIGNS.items():  # the warm start with a fresh branch: FLOPs do not depend on weights
                net = bench.build(feat, "lightglue", dev, adaptive=False, mamba_ffn_rank=0, **design)[0]  # as trained
                ratios[name] = counted_flops(net, data) / base
            line += f" (FLOPs / LightGlue's: {', '.join(f'{k} {v:.3f}' for k, v in ratios.items())})"
        out.append(line)
    print(args.label, " | ".join(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
