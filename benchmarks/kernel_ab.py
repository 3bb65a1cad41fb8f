"""Time a change to the C++ CPU kernels (``models/selective_scan_cpu.cpp``) in one process, against an older source.

The noise between separate processes on a shared 2-vCPU machine (±5 % on the same code) is larger than a
kernel change moves the whole network, so both kernels run in the same process, interleaved pair by pair with
our LightGlue (``mixer='attention'``) on the same keypoints at full depth (``bench.interleaved``, rotating order):

- ``before``: the network with ``--old-source``'s kernels (built here into a temporary folder with the flags of
  that time, ``ssm_cpu.CFLAGS``); a source without the fused conv (before 2026-12-04) with the torch depthwise
  conv + SiLU, and one without the scan's ``bidirectional`` / ``gate`` (before 2026-12-07) with both in torch
  around it, as the network ran them then;
- ``after``: the network as it runs now (this checkout's built kernel, ``scripts/setup.sh``);
- ``lightglue``: the attention-only network.

Checks first that before and after give the same matches, then prints median ms per pair and the ratios, and
the kernels alone at the network's branch width and the pair's keypoint count (one image): the scan (before:
the old source; after: this checkout's), the version-2 branch's two-way gated scan, and the conv + SiLU.

    git show 5df64c2:mambaglue_ros/models/selective_scan_cpu.cpp > /tmp/old_scan.cpp
    python benchmarks/kernel_ab.py --old-source /tmp/old_scan.cpp --features xfeat --keypoints 1024 --repeats 25
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from mambaglue_ros.evaluation import bench
from mambaglue_ros.models import mambaglue as mg
from mambaglue_ros.models import ssm_cpu


def build_old(source: Path, where: Path):
    from torch.utils.cpp_extension import load

    # the flags every source before 2026-12-07 was built with (since then 512-bit vectors where the CPU has them)
    return load(name="mambaglue_scan_cpu_before", sources=[str(source)], extra_cflags=ssm_cpu.CFLAGS,
                build_directory=str(where))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old-source", type=Path, required=True, help="the older selective_scan_cpu.cpp")
    p.add_argument("--features", default="xfeat", choices=("xfeat", "aliked", "disk"))
    p.add_argument("--keypoints", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=25)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if ssm_cpu.cpu_scan() is None:
        raise SystemExit(f"this checkout's kernel is not available: {ssm_cpu.cpu_scan_status()}")
    with tempfile.TemporaryDirectory() as tmp:
        old = build_old(args.old_source, Path(tmp))
    new_scan, new_conv = mg.selective_scan_cpu, mg.depthwise_conv_silu_cpu

    # a source from 2026-12-07 on takes the branch's two directions and gate itself (its signature names them)
    old_takes_options = "bidirectional" in (old.selective_scan_cpu.__doc__ or "")

    def old_scan(u, delta, A, B, C, D, delta_bias, A2=None, bidirectional=False, gate=None):
        if old_takes_options:
            return ssm_cpu.selective_scan_cpu(u, delta, A, B, C, D, delta_bias, module=old, A2=A2,
                                              bidirectional=bidirectional, gate=gate)
        # An older source scans one direction and does not gate: both as the network ran them then, in torch
        # around the kernel (the reversed sequences as extra batch entries).
        b = u.shape[0]
        if bidirectional:
            u, delta, B, C = (torch.cat([t, t.flip(1)], 0) for t in (u, delta, B, C))
        y = ssm_cpu.selective_scan_cpu(u, delta, A, B, C, D, delta_bias, module=old, A2=A2)
        if bidirectional:
            y = 0.5 * (y[:b] + y[b:].flip(1))
        return y if gate is None else y * F.silu(gate)

    def old_conv(u, conv, **kw):
        if hasattr(old, "depthwise_conv_silu"):  # a source with the fused conv (since 2026-12-04)
            return ssm_cpu.depthwise_conv_silu_cpu(u, conv, module=old, **kw)
        return F.silu(mg.depthwise_conv(u, conv))

    device = torch.device("cpu")
    img0, img1 = bench.photo_pair(args.keypoints)
    f0, f1 = bench.extract_pair(args.features, args.keypoints, img0, img1, device)
    data = bench.network_inputs(f0, f1, device)
    net, source = bench.build(args.features, None, device, adaptive=False)
    lightglue, _ = bench.build(args.features, "lightglue", device, adaptive=False, mixer="attention",
                               regressor="linear")

    def before():
        mg.selective_scan_cpu, mg.depthwise_conv_silu_cpu = old_scan, old_conv
        try:
            return net(data)
        finally:
            mg.selective_scan_cpu, mg.depthwise_conv_silu_cpu = new_scan, new_conv

    calls = {"before": before, "after": lambda: net(data), "lightglue": lambda: lightglue(data)}
    with torch.inference_mode():
        if not torch.equal(before()["matches0"], net(data)["matches0"]):
            raise SystemExit("before and after give different matches")
        ms = bench.interleaved(calls, args.repeats, device)
    parts = kernel_parts(net, old_scan, old, len(f0), max(args.repeats, 50))
    print(f"{args.features}, {len(f0)}/{len(f1)} keypoints, full depth, {args.threads} thread(s), weights {source}, "
          f"median of {args.repeats} interleaved")
    print("| MambaGlue before | after | our LightGlue | before/LightGlue | after/LightGlue | after/before |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {ms['before']:.1f} | {ms['after']:.1f} | {ms['lightglue']:.1f} | {ms['before'] / ms['lightglue']:.3f} | "
          f"{ms['after'] / ms['lightglue']:.3f} | {ms['after'] / ms['before']:.3f} |")
    print(f"kernels alone, one image of {len(f0)} tokens, branch width {net.transformers[0].self_attn.mamba.inner}, "
          f"median ms per call")
    print("| kernel | before | after |")
    print("|---|---:|---:|")
    for name, (b, a) in parts.items():
        print(f"| {name} | {b:.3f} | {a:.3f} |")
    return 0


def kernel_parts(net, old_scan, old, length: int, repeats: int) -> dict[str, tuple[float, float]]:
    """Median ms per call of the scan (one way; both ways and gated as the version-2 branch runs it) and of conv +
    SiLU, before and after, on inputs shaped as in ``net``."""
    branch = net.transformers[0].self_attn.mamba
    g = torch.Generator().manual_seed(0)
    d, n = branch.inner, branch.d_state
    u, delta = torch.randn(1, length, d, generator=g), torch.randn(1, length, d, generator=g) - 2
    B, C = torch.randn(1, length, n, generator=g), torch.randn(1, length, n, generator=g)
    A, D, bias = -torch.exp(branch.A_log.detach()), branch.D.detach(), branch.dt_proj.bias.detach()
    xz = torch.randn(1, length, 2 * d, generator=g)

    z = xz[..., d:]
    calls = {("selective scan", 0): lambda: ssm_cpu.selective_scan_cpu(u, delta, A, B, C, D, bias, module=old),
             ("selective scan", 1): lambda: ssm_cpu.selective_scan_cpu(u, delta, A, B, C, D, bias),
             ("scan both ways, gated", 0): lambda: old_scan(u, delta, A, B, C, D, bias, bidirectional=True, gate=z),
             ("scan both ways, gated", 1): lambda: ssm_cpu.selective_scan_cpu(u, delta, A, B, C, D, bias,
                                                                              bidirectional=True, gate=z),
             ("depthwise conv + SiLU", 0): lambda: (
                 ssm_cpu.depthwise_conv_silu_cpu(xz[..., :d], branch.conv1d, module=old)
                 if hasattr(old, "depthwise_conv_silu") else F.silu(mg.depthwise_conv(xz[..., :d], branch.conv1d))),
             ("depthwise conv + SiLU", 1): lambda: ssm_cpu.depthwise_conv_silu_cpu(xz[..., :d], branch.conv1d)}
    with torch.inference_mode():
        ms = bench.interleaved(calls, repeats, torch.device("cpu"))
    return {name: (ms[(name, 0)], ms[(name, 1)])
            for name in ("selective scan", "scan both ways, gated", "depthwise conv + SiLU")}


if __name__ == "__main__":
    raise SystemExit(main())
