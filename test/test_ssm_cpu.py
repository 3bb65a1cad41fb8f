"""The C++ selective scan for the CPU (``models/ssm_cpu.py``), for inference and for training (forward and backward):
same results as the torch scan, used where it applies, and a clear reason where it is not available.
``scripts/setup.sh`` builds it; the equivalence tests skip (with the reason) where it could not be built."""
from __future__ import annotations

import contextlib

import pytest
import torch

import mambaglue_ros.models.mambaglue as mg
from mambaglue_ros.matcher import build_network
from mambaglue_ros.models import ssm, ssm_cpu
from mambaglue_ros.models.mambaglue import selective_scan_inference, use_cpu_kernel
from mambaglue_ros.models.ssm import selective_scan
from mambaglue_ros.weights import VERSION1_NETWORK
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


def scan_and_gradients(args, gy, dtype, kernel):
    """selective_scan's output and the gradients of all its inputs (u, delta, A, B, C, D, delta_bias, z; its (b, d, L)
    layout) for the output gradient gy, in ``dtype``, with the C++ training scan or the torch scan."""
    leaves = [t.to(dtype).clone().requires_grad_() for t in args]
    u, delta, A, B, C, D, bias, z = leaves
    with contextlib.nullcontext() if kernel else ssm_cpu.torch_scan_only():
        y = selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True)
        y.backward(gy.to(dtype))
    return [y.detach()] + [t.grad for t in leaves]


@needs_kernel
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 7, 5, 3), (2, 16, 8, 4), (2, 33, 20, 16), (3, 300, 48, 16)])
def test_training_scan_gradients_match_the_float64_torch_scan(shape):
    """The C++ training scan (forward and backward) against the float64 torch scan, for the output and every input's
    gradient: shorter than a segment, exactly one, and several with a partial last one."""
    b, L, d, N = shape
    u, delta, A, B, C, D, bias = scan_inputs(b, L, d, N, seed=5)
    g = torch.Generator().manual_seed(6)
    z, gy = torch.randn(b, d, L, generator=g), torch.randn(b, d, L, generator=g)
    args = (u.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), D, bias, z)
    calls = []
    kernel = ssm.scan_train_cpu
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ssm, "scan_train_cpu", lambda *a: calls.append(a[0].shape) or kernel(*a))
        fast = scan_and_gradients(args, gy, torch.float32, kernel=True)
    assert calls == [(b, L, d)]
    ref = scan_and_gradients(args, gy, torch.float64, kernel=False)
    for name, a, r in zip(["y", "u", "delta", "A", "B", "C", "D", "delta_bias", "z"], fast, ref):
        assert a.dtype == torch.float32 and torch.isfinite(a).all(), name
        scale = max(float(r.abs().max()), 1e-30)
        assert float((a.double() - r).abs().max()) <= 2e-5 * scale, name


@needs_kernel
def test_training_scan_does_not_depend_on_the_thread_count():
    args = scan_inputs(4, 70, 24, 8, seed=2)
    gy = torch.randn(4, 24, 70, generator=torch.Generator().manual_seed(3))
    args = (args[0].transpose(1, 2), args[1].transpose(1, 2), args[2], args[3].transpose(1, 2),
            args[4].transpose(1, 2), args[5], args[6], torch.randn(4, 24, 70))
    kept = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(scan_and_gradients(args, gy, torch.float32, kernel=True))
    finally:
        torch.set_num_threads(kept)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@needs_kernel
def test_training_scan_refuses_inputs_of_the_wrong_shape():
    delta = torch.rand(2, 10, 8)
    A2, B = -torch.rand(4, 8), torch.randn(2, 10, 4)
    with pytest.raises(RuntimeError, match="B and C must be"):
        KERNEL.scan_train_forward(delta, delta, A2, B, torch.randn(2, 10, 5), 16)
    y, starts = KERNEL.scan_train_forward(delta, delta, A2, B, B, 16)
    with pytest.raises(RuntimeError, match="starts must be"):
        KERNEL.scan_train_backward(delta, delta, A2, B, B, starts[:, :0].contiguous(), y, 16)
    with pytest.raises(RuntimeError, match="segment must be > 0"):
        KERNEL.scan_train_backward(delta, delta, A2, B, B, starts, y, 0)
    with pytest.raises(RuntimeError, match="gy and starts must be"):
        KERNEL.scan_train_backward(delta, delta, A2, B, B, starts, y.double(), 16)
    assert ssm_cpu._training_scan_error(KERNEL) < 1e-5  # the build's own check (scripts/setup.sh), 10x inside its limit


@needs_kernel
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_training_step_through_a_self_block_gets_the_float64_gradients(version):
    """A self block with the Mamba branch in training (a padded batch, so the reversed scan meets the padding first):
    every parameter's gradient through the C++ training scan is the float64 block's to float32 rounding, and the
    kernel runs once per call. (A whole network is no sharper test: through six layers of attention float32
    rounding alone moves some gradients by 1e-3 to 1e-2, with either scan.)"""
    overrides = {"v1": dict(VERSION1_NETWORK), "v2": {}}[version]
    torch.manual_seed(0)
    block = mg.SelfBlock(48, 1, mamba_expand=overrides.get("mamba_expand", 0.5),
                         bidirectional=overrides.get("bidirectional", True),
                         mamba_message=overrides.get("mamba_message", "gated")).train()
    with torch.no_grad():
        block.ffn[0].weight.normal_(0, 0.1)  # live Mamba columns: the branch's parameters get gradients
    g = torch.Generator().manual_seed(1)
    x, target = torch.randn(2, 70, 48, generator=g), torch.randn(2, 70, 48, generator=g)
    encoding = torch.randn(2, 2, 1, 70, 48, generator=g)
    mask = torch.ones(2, 70, dtype=torch.bool)
    mask[1, 52:] = False

    def gradients(model, dtype):
        model.zero_grad(set_to_none=True)
        out = model(x.to(dtype), encoding.to(dtype), mask)
        (out * target.to(dtype))[mask].sum().backward()
        return {n: p.grad.double() for n, p in model.named_parameters() if p.grad is not None}

    calls = []
    kernel = ssm.scan_train_cpu
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ssm, "scan_train_cpu", lambda *a: calls.append(a[0].shape) or kernel(*a))
        fast = gradients(block, torch.float32)
    assert calls == [(4 if version == "v2" else 2, 70, block.mamba.inner)]  # both directions as one batch for v2
    ref = gradients(block.double(), torch.float64)
    assert fast.keys() == ref.keys() and sum("mamba." in n for n in ref) >= 7
    for n, r in ref.items():
        assert float((fast[n] - r).norm()) <= 1e-5 * float(r.norm()) + 1e-9, n


def test_gradients_float64_and_other_devices_keep_the_torch_scan():
    u = torch.zeros(1, 4, 2)
    with torch.enable_grad():
        assert not use_cpu_kernel(u)
    with torch.no_grad():
        assert not use_cpu_kernel(u.double())
        assert use_cpu_kernel(u) == (KERNEL is not None)
    assert not ssm_cpu.train_kernel_applies(u.double())  # gradcheck's float64 stays on the torch scan
    assert ssm_cpu.train_kernel_applies(u) == (KERNEL is not None)


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
