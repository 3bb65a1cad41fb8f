"""The C++ selective scan for the CPU (``models/ssm_cpu.py``): same results as the torch scan, used where it
applies, and a clear reason where it is not available. ``scripts/setup.sh`` builds it; the equivalence tests
skip (with the reason) where it could not be built."""
from __future__ import annotations

import pytest
import torch

import mambaglue_ros.models.mambaglue as mg
from mambaglue_ros.matcher import build_network
from mambaglue_ros.models import ssm_cpu
from mambaglue_ros.models.mambaglue import selective_scan_inference, use_cpu_kernel
from test_mamba_design import pair
from test_model import live_mamba

KERNEL = ssm_cpu.cpu_scan()
needs_kernel = pytest.mark.skipif(KERNEL is None, reason=f"CPU scan kernel: {ssm_cpu.cpu_scan_status()}")


def scan_inputs(b: int, L: int, d: int, N: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, L, d, generator=g)
    delta = torch.randn(b, L, d, generator=g) * 2 - 1  # softplus steps from ~0.01 to past its threshold
    if d:
        delta[..., 0] = 25.0  # above softplus' threshold (20): the step is delta itself
    A = -torch.exp(torch.rand(d, N, generator=g) * 3)  # decays from mild to strong
    B, C = torch.randn(b, L, N, generator=g), torch.randn(b, L, N, generator=g)
    D, bias = torch.randn(d, generator=g), torch.randn(d, generator=g) * 0.5
    return u, delta, A, B, C, D, bias


@needs_kernel
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 7, 5, 3), (3, 300, 48, 16), (2, 1024, 96, 16)])
def test_kernel_matches_the_torch_scan(shape):
    args = scan_inputs(*shape)
    ref = selective_scan_inference(*args)
    out = ssm_cpu.selective_scan_cpu(*args)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert torch.isfinite(out).all()
    assert float((out - ref).abs().max()) <= 1e-5 * float(ref.abs().max())


@needs_kernel
@pytest.mark.parametrize("shape", [(1, 5, 0, 16), (1, 0, 8, 16), (0, 5, 8, 16)])
def test_kernel_returns_an_empty_result_for_empty_input(shape):
    """No channels, steps or batch entries: an empty y, at any thread count (0 channels divided by zero once)."""
    args = scan_inputs(*shape)
    kept = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            for both in (False, True):
                assert ssm_cpu.selective_scan_cpu(*args, bidirectional=both).shape == shape[:3]
    finally:
        torch.set_num_threads(kept)


def both_ways_gated(args, gate):
    """The torch reference of the kernel's bidirectional, gated call: the mean of the scan and of the scan of the
    flipped sequence flipped back, times silu(gate)."""
    forward = selective_scan_inference(*args)
    u, delta, A, B, C, D, bias = args
    backward = selective_scan_inference(u.flip(1), delta.flip(1), A, B.flip(1), C.flip(1), D, bias).flip(1)
    y = 0.5 * (forward + backward)
    return y if gate is None else y * torch.nn.functional.silu(gate)


@needs_kernel
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 7, 5, 3), (3, 300, 48, 16), (2, 1024, 48, 16)])
def test_kernel_scans_both_ways_and_gates_as_the_torch_reference(shape, threads):
    args = scan_inputs(*shape, seed=4)
    b, L, d, _ = shape
    zx = torch.randn(b, L, 2 * d, generator=torch.Generator().manual_seed(5))
    gate = zx[..., d:]  # the z half of in_proj's output: a strided view, read in place
    kept = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for bidirectional in (False, True):
            for g in (None, gate):
                out = ssm_cpu.selective_scan_cpu(*args, bidirectional=bidirectional, gate=g)
                if bidirectional:
                    ref = both_ways_gated(args, g)
                else:
                    ref = selective_scan_inference(*args)
                    ref = ref if g is None else ref * torch.nn.functional.silu(g)
                assert out.shape == ref.shape and torch.isfinite(out).all()
                assert float((out - ref).abs().max()) <= 1e-5 * float(ref.abs().max()), (bidirectional, g is None)
    finally:
        torch.set_num_threads(kept)


@needs_kernel
@pytest.mark.parametrize("b, d", [(1, 40), (1, 48), (2, 48), (1, 96)])
def test_kernel_splits_channels_over_threads_with_the_same_result(b, d):
    """Bit for bit whatever the thread count (a padded batch and its pairs alone, a node with 1 or 2 threads):
    with 2 threads one sequence of 48 channels once went as blocks of 24, whose tails took other vector code."""
    args = scan_inputs(b, 200, d, 16, seed=2)  # b = 1: only the channel blocks can go in parallel
    gate = torch.randn(b, 200, d, generator=torch.Generator().manual_seed(3))
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append([ssm_cpu.selective_scan_cpu(*args, bidirectional=both, gate=g)
                            for both in (False, True) for g in (None, gate)])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(x, y) for x, y in zip(results[0], other))


@needs_kernel
def test_kernel_takes_low_precision_inputs_like_the_torch_scan():
    args = scan_inputs(2, 64, 16, 8, seed=1)
    low = tuple(t.to(torch.bfloat16) for t in args)
    out, ref = ssm_cpu.selective_scan_cpu(*low), selective_scan_inference(*low)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)


@needs_kernel
@pytest.mark.parametrize("b, L, d, k, pad", [(1, 1, 1, 5, 2), (2, 3, 7, 5, 2), (2, 300, 48, 5, 2), (1, 0, 8, 5, 2),
                                             (1, 64, 16, 4, 3), (1, 50, 16, 3, 0)])
def test_fused_conv_silu_matches_torch(b, L, d, k, pad):
    g = torch.Generator().manual_seed(L + k)
    conv = torch.nn.Conv1d(d, d, k, padding=pad, groups=d, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        conv.bias.copy_(torch.randn(d, generator=g))
        xz = torch.randn(b, L, 2 * d, generator=g) * 3
        u = xz[..., :d]  # in_proj's x half: a strided slice, read in place
        ref = torch.nn.functional.silu(mg.depthwise_conv(u, conv))  # the torch path of the network
        out = ssm_cpu.depthwise_conv_silu_cpu(u, conv)
    assert out.shape == (b, L, d) and out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    if L and 2 * pad >= k - 1:  # nn.Conv1d (padding on both sides) covers these: its first L outputs
        with torch.no_grad():
            full = torch.nn.functional.silu(conv(u.transpose(1, 2))[..., :L].transpose(1, 2))
        torch.testing.assert_close(out, full, rtol=1e-5, atol=1e-5)


@needs_kernel
def test_fused_conv_silu_takes_low_precision_inputs():
    conv = torch.nn.Conv1d(16, 16, 5, padding=2, groups=16).to(torch.bfloat16)
    u = torch.randn(2, 40, 32, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)[..., :16]
    with torch.no_grad():
        out = ssm_cpu.depthwise_conv_silu_cpu(u, conv)  # computed in float32, returned in u's dtype
        ref = torch.nn.functional.silu(mg.depthwise_conv(u.float(), conv.float()))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


@needs_kernel
@pytest.mark.parametrize("version", ["v1", "v2", "v2 causal", "v2 concat"])
def test_network_runs_the_kernel_and_matches_the_torch_scan(monkeypatch, version):
    torch.manual_seed(0)
    overrides = {"v1": {"scan_order": "score", "bidirectional": False, "mamba_message": "concat", "mamba_expand": 1.0},
                 "v2": {}, "v2 causal": {"bidirectional": False}, "v2 concat": {"mamba_message": "concat"}}[version]
    net, _ = build_network("xfeat", "lightglue", early_exit=False, pruning=False, **overrides)
    net = live_mamba(net).eval()
    data = pair(300, 250, seed=3)
    calls = []
    kernel = mg.selective_scan_cpu
    monkeypatch.setattr(mg, "selective_scan_cpu", lambda *a, **k: calls.append(a[0].shape) or kernel(*a, **k))
    with torch.inference_mode():
        fast = net(data)
        assert len(calls) == 2 * net.conf["n_layers"]  # per self block, one scan per image (300 and 250 points)
        with ssm_cpu.torch_scan_only():
            slow = net(data)
    assert len(calls) == 2 * net.conf["n_layers"]  # the block above did not call the kernel
    assert torch.equal(fast["matches0"], slow["matches0"])
    # float32 rounding (1e-7 in the scan) grows through six layers; the matches are the same
    torch.testing.assert_close(fast["matching_scores0"], slow["matching_scores0"], rtol=0, atol=1e-3)


@needs_kernel
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("message", ["gated", "concat"])
def test_branch_with_padding_matches_the_torch_scan(bidirectional, message):
    """A padded batch (the reversed scan meets the padding first) gives the branch's torch-path outputs."""
    torch.manual_seed(1)
    branch = mg.MambaBranch(48, expand=0.5, bidirectional=bidirectional, message=message).eval()
    x = torch.randn(2, 40, 48)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 25:] = False
    with torch.inference_mode():
        fast = branch(x, mask)
        with ssm_cpu.torch_scan_only():
            slow = branch(x, mask)
    assert len(fast) == len(slow) == branch.num_outputs
    for a, b in zip(fast, slow):
        real = mask[..., None].expand_as(a)
        torch.testing.assert_close(a[real], b[real], rtol=1e-5, atol=1e-6)


def test_gradients_float64_and_other_devices_keep_the_torch_scan():
    u = torch.zeros(1, 4, 2)
    with torch.enable_grad():
        assert not use_cpu_kernel(u)
    with torch.no_grad():
        assert not use_cpu_kernel(u.double())
        assert use_cpu_kernel(u) == (KERNEL is not None)


def test_switched_off_or_not_built_says_why(monkeypatch, tmp_path):
    try:
        monkeypatch.setenv("MAMBAGLUE_CPU_SCAN", "0")
        ssm_cpu.cpu_scan.cache_clear()
        assert ssm_cpu.cpu_scan() is None and "MAMBAGLUE_CPU_SCAN=0" in ssm_cpu.cpu_scan_status()
        monkeypatch.setenv("MAMBAGLUE_CPU_SCAN", "1")
        monkeypatch.setenv("MAMBAGLUE_KERNEL_DIR", str(tmp_path))  # nothing built there; nothing gets compiled
        ssm_cpu.cpu_scan.cache_clear()
        assert ssm_cpu.cpu_scan() is None
        status = ssm_cpu.cpu_scan_status()
        assert "not built" in status and str(tmp_path) in status
        assert not list(tmp_path.iterdir())
    finally:
        monkeypatch.undo()
        ssm_cpu.cpu_scan.cache_clear()
