"""Selective scan: the chunked torch scan against the step-by-step reference, dtypes, dispatch, CUDA.

Errors are measured normwise: max|actual - expected| / max|expected| over the whole tensor (an
elementwise relative error means nothing for outputs that pass near zero). Tolerances:
  float64 torch scan vs float64 reference:  1e-10 (measured ~1e-15)
  float32 torch scan vs float64 reference:  2e-5  (measured <= 4e-7, same as the float32 reference)
  bfloat16 / float16 input vs float32 result: 2e-2 / 4e-3 (the cast of inputs and output)
  CUDA kernel vs torch scan, float32:        1e-4  (different summation orders, fast exp)
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
import torch

from mambaglue_ros.models import ssm
from mambaglue_ros.models.ssm import cuda_scan_available, selective_scan, selective_scan_ref, triton_scan_available

ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = importlib.util.find_spec("triton") is not None


def make_inputs(batch: int, dim: int, L: int, N: int, seed: int = 0, scale: float = 1.0,
                dtype: torch.dtype = torch.float64, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Random inputs near the ranges Mamba uses: A = -exp(normal); delta normal with std 0.5 before
    the optional softplus (without it, delta < 0 somewhere: growing states are exercised too).

    scale multiplies delta and A: scale = 10 gives per-step decays down to e^-1000 and beyond
    (states reset within a step), which a cumulative-sum closed form could not represent.
    """
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    x = {"u": rand(batch, dim, L), "delta": rand(batch, dim, L) * 0.5 * scale,
         "A": -torch.exp(rand(dim, N)) * scale, "B": rand(batch, N, L), "C": rand(batch, N, L),
         "D": rand(dim), "z": rand(batch, dim, L), "delta_bias": rand(dim) * 0.5}
    return {k: v.to(dtype=dtype, device=device) for k, v in x.items()}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Normwise relative error max|actual - expected| / max|expected| (0 for empty tensors)."""
    if expected.numel() == 0:
        return 0.0
    diff = (actual.double().cpu() - expected.double().cpu()).abs().max()
    return (diff / expected.double().abs().max().clamp_min(1e-30)).item()


def run(fn, x: dict[str, torch.Tensor], used: tuple[str, ...], gy: Optional[torch.Tensor] = None,
        **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """fn on the inputs named in used (the others None): output and gradients of <y, gy>."""
    leaves = {k: x[k].detach().clone().requires_grad_() for k in used}
    y = fn(**{k: leaves.get(k) for k in ARGS}, **kwargs)
    if gy is None:
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = torch.autograd.grad(y, list(leaves.values()), gy.to(y), allow_unused=True)
    return y.detach(), {k: g for k, g in zip(leaves, grads)}


def check_against_ref(x32_or_64: dict[str, torch.Tensor], x64: dict[str, torch.Tensor],
                      used: tuple[str, ...], softplus: bool, tol: float, **kwargs) -> None:
    """Torch scan on x32_or_64 vs the float64 reference on x64: output and every gradient."""
    gy = torch.randn(x64["u"].shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y_ref, g_ref = run(selective_scan_ref, x64, used, gy, delta_softplus=softplus)
    y, g = run(selective_scan, x32_or_64, used, gy, delta_softplus=softplus, **kwargs)
    assert y.dtype == x32_or_64["u"].dtype and y.shape == y_ref.shape
    assert torch.isfinite(y).all()
    assert rel_err(y, y_ref) < tol, ("y", rel_err(y, y_ref))
    for k in used:
        assert g[k] is not None and g[k].shape == x64[k].shape, k
        assert torch.isfinite(g[k]).all(), k
        assert rel_err(g[k], g_ref[k]) < tol, (k, rel_err(g[k], g_ref[k]))


@pytest.fixture(params=["cpu kernel", "torch scan"])
def float32_scan(request):
    """The float32 tests run twice on a CPU: through the C++ training scan (``ssm_cpu``; where it is not built, the
    torch scan again) and with the torch scan forced (``torch_scan_only``), which GPUs without mamba_ssm run."""
    from mambaglue_ros.models.ssm_cpu import torch_scan_only

    with torch_scan_only() if request.param == "torch scan" else contextlib.nullcontext():
        yield request.param


SHAPES = [  # (batch, dim, L, N): L=1; L not a multiple of the chunk (37 -> 4 chunks of 10); batch > 1
    (1, 4, 1, 2), (2, 6, 37, 4), (3, 5, 100, 16), (1, 3, 257, 8)]
OPTIONS = [  # (inputs used, delta_softplus)
    (("u", "delta", "A", "B", "C"), False),
    (("u", "delta", "A", "B", "C", "D"), True),
    (("u", "delta", "A", "B", "C", "z"), False),
    (("u", "delta", "A", "B", "C", "delta_bias"), True),
    (ARGS, True)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("used,softplus", OPTIONS)
def test_torch_scan_matches_reference_float64(shape, used, softplus):
    x = make_inputs(*shape)
    check_against_ref(x, x, used, softplus, tol=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("used,softplus", [OPTIONS[0], OPTIONS[-1]])
def test_torch_scan_float32_matches_float64_reference(shape, used, softplus, float32_scan):
    x64 = make_inputs(*shape)
    x32 = {k: v.float() for k, v in x64.items()}
    check_against_ref(x32, x64, used, softplus, tol=2e-5)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_strong_decay_stays_finite_and_exact(dtype, tol, float32_scan):
    # delta * A down to about -1000 per step: exp(-sum(delta A)) would overflow any float.
    x64 = make_inputs(2, 6, 150, 16, seed=3, scale=10.0)
    x = {k: v.to(dtype) for k, v in x64.items()}
    check_against_ref(x, x64, ARGS, True, tol=tol)


def test_long_sequence_float32(float32_scan):
    # L=1024 uses 32 chunks of 32 steps: the carry between chunks is exercised many times.
    x64 = make_inputs(1, 4, 1024, 16, seed=5)
    x32 = {k: v.float() for k, v in x64.items()}
    y_ref = selective_scan_ref(**x64, delta_softplus=True)
    y = selective_scan(**x32, delta_softplus=True)
    assert rel_err(y, y_ref) < 2e-5


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 16, 50, 51, 200])
def test_any_chunk_size(chunk):
    # The core directly: every chunk length gives the reference (50 = L, 51 and 200 > L).
    x = make_inputs(2, 5, 50, 3, seed=7)
    used = ("u", "delta", "A", "B", "C")
    y_ref, g_ref = run(selective_scan_ref, x, used)

    def core(u, delta, A, B, C, **_):
        return ssm._scan_torch(u, delta, A, B, C, chunk=chunk)

    y, g = run(core, x, used)
    assert rel_err(y, y_ref) < 1e-10
    for k in used:
        assert rel_err(g[k], g_ref[k]) < 1e-10, k


def test_chunked_scan_gradcheck():
    # The hand-written backward against finite differences, on the autograd.Function itself.
    g = torch.Generator().manual_seed(11)
    b, K, T, d, N = 2, 3, 4, 5, 3
    delta = (torch.rand(b, K, T, d, generator=g, dtype=torch.float64) * 0.8).requires_grad_()
    dtu = torch.randn(b, K, T, d, generator=g, dtype=torch.float64).requires_grad_()
    A2 = (-torch.rand(N, d, generator=g, dtype=torch.float64) * 2).requires_grad_()
    B = torch.randn(b, K, T, N, generator=g, dtype=torch.float64).requires_grad_()
    C = torch.randn(b, K, T, N, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(ssm._ChunkedScan.apply, (delta, dtu, A2, B, C))


def test_chunk_size_choice():
    # Chunks of at least MIN_CHUNK steps, as many as fit a (batch, K, N, dim) slab of SLAB values.
    width = 16 * 512
    assert ssm._chunk_size(1, width) == 1
    assert ssm._chunk_size(7, width) == 7
    assert ssm._chunk_size(37, 4 * 16) == 10  # 4 chunks of 10, 3 padded steps
    assert ssm._chunk_size(1024, width) == 16
    for batch, L in [(1, 256), (1, 4096), (8, 4096), (4, 1000)]:
        T = ssm._chunk_size(L, batch * width)
        K = -(-L // T)
        assert T >= ssm.MIN_CHUNK and (K == 1 or batch * width * K <= ssm.SLAB)


@pytest.mark.parametrize("backend", ["torch", "ref"])
def test_empty_sequence(backend):
    x = make_inputs(2, 4, 0, 3, dtype=torch.float32)
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    y = selective_scan(**leaves, delta_softplus=True, backend=backend)
    assert y.shape == (2, 4, 0) and y.dtype == torch.float32
    y.sum().backward()  # a graph that runs, gradients of empty inputs are empty
    assert leaves["u"].grad.shape == (2, 4, 0)
    assert leaves["D"].grad is not None and torch.equal(leaves["D"].grad, torch.zeros(4))


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float16, 4e-3)])
def test_low_precision_inputs(dtype, tol, float32_scan):
    x = make_inputs(2, 8, 64, 16, seed=2, dtype=torch.float32)
    x_low = {k: v.to(dtype) for k, v in x.items()}
    y_low = selective_scan(**x_low, delta_softplus=True)
    assert y_low.dtype == dtype
    # Against fp32 on the same (rounded) inputs, the only difference is the output cast...
    y_same = selective_scan(**{k: v.float() for k, v in x_low.items()}, delta_softplus=True)
    assert rel_err(y_low, y_same) < torch.finfo(dtype).eps
    # ...and against the fp32 inputs, also the input rounding.
    y32 = selective_scan(**x, delta_softplus=True)
    assert rel_err(y_low, y32) < tol
    # Gradients come back in the input dtype.
    leaves = {k: v.clone().requires_grad_() for k, v in x_low.items()}
    selective_scan(**leaves, delta_softplus=True).float().sum().backward()
    assert all(v.grad.dtype == dtype and torch.isfinite(v.grad.float()).all() for v in leaves.values())


def test_auto_backend_on_cpu_is_torch_scan():
    x = make_inputs(1, 4, 20, 3, dtype=torch.float32)
    assert torch.equal(selective_scan(**x), selective_scan(**x, backend="torch"))


def test_bad_arguments():
    x = make_inputs(1, 4, 20, 3, dtype=torch.float32)
    with pytest.raises(ValueError, match="backend"):
        selective_scan(**x, backend="tpu")
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(**{**x, "B": x["B"][:, :, :10]})
    if not cuda_scan_available():
        with pytest.raises(RuntimeError, match="mamba_ssm"):
            selective_scan(**x, backend="cuda")


def test_cuda_scan_available_iff_cuda_and_mamba_ssm(monkeypatch):
    """The kernel is used exactly when CUDA is there and mamba_ssm's scan imports."""
    import importlib.util

    has_kernel = importlib.util.find_spec("mamba_ssm") is not None
    assert cuda_scan_available() is (HAS_CUDA and has_kernel)
    # either condition missing switches it off (the other one forced on)
    monkeypatch.setattr(ssm, "_cuda_scan_fn", lambda: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cuda_scan_available() is False
    monkeypatch.setattr(ssm, "_cuda_scan_fn", lambda: object())
    assert cuda_scan_available() is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cuda_scan_available() is False


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("shape", [(2, 6, 37, 4), (1, 64, 300, 16)])
def test_torch_scan_on_cuda_matches_cpu(shape):
    x = make_inputs(*shape, seed=4, dtype=torch.float32)
    x_gpu = {k: v.cuda() for k, v in x.items()}
    y_cpu, g_cpu = run(selective_scan, x, ARGS, delta_softplus=True, backend="torch")
    y_gpu, g_gpu = run(selective_scan, x_gpu, ARGS, delta_softplus=True, backend="torch")
    assert y_gpu.is_cuda
    assert rel_err(y_gpu, y_cpu) < 2e-5
    for k in ARGS:
        assert rel_err(g_gpu[k], g_cpu[k]) < 2e-5, k


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_scan_available(),
                    reason="needs a CUDA device and the mamba_ssm package (CUDA-only build)")
@pytest.mark.parametrize("shape", [(2, 6, 37, 4), (2, 192, 512, 16)])
@pytest.mark.parametrize("used,softplus", [(OPTIONS[0][0], True), OPTIONS[-1]])  # delta > 0
def test_cuda_kernel_matches_torch_scan(shape, used, softplus):
    x = make_inputs(*shape, seed=6, dtype=torch.float32, device="cuda")
    y_t, g_t = run(selective_scan, x, used, delta_softplus=softplus, backend="torch")
    y_k, g_k = run(selective_scan, x, used, delta_softplus=softplus, backend="cuda")
    y_auto = selective_scan(**{k: x[k] for k in used}, delta_softplus=softplus)  # auto = kernel
    assert rel_err(y_auto, y_k) < 1e-6
    assert rel_err(y_k, y_t) < 1e-4
    for k in used:
        assert rel_err(g_k[k], g_t[k]) < 1e-4, k


# Our Triton kernel (models/ssm_triton.py): on a CPU under Triton's interpreter, which runs the kernel's
# program logic (masks, strides, the associative scan over time, the optional inputs) with numpy; on a GPU
# compiled. Forward only, softplus steps (the only way MambaGlue calls it).
TRITON_CHECK = r"""
import os, sys, json
os.environ["TRITON_INTERPRET"] = "1"  # read when the kernel module is imported: before it
sys.path.insert(0, sys.argv[1])
import torch
from test_ssm import make_inputs, rel_err
from mambaglue_ros.models.ssm import selective_scan, selective_scan_ref
errors = {}
for shape, used in (((2, 5, 37, 4), ("D", "z", "delta_bias")), ((1, 24, 130, 16), ("D", "delta_bias")),
                    ((3, 7, 1, 3), ()), ((2, 6, 64, 2), ("z",))):
    x = make_inputs(*shape, seed=3, dtype=torch.float32)
    kw = {k: x[k] for k in used}
    y = selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], **kw, delta_softplus=True, backend="triton")
    ref = selective_scan_ref(*(x[k].double() for k in ("u", "delta", "A", "B", "C")),
                             **{k: v.double() for k, v in kw.items()}, delta_softplus=True)
    errors[str(shape) + "+".join(used)] = rel_err(y, ref)
# the strides MambaGlue passes: (b, L, d) tensors seen as (b, d, L), B and C likewise
x = make_inputs(2, 24, 50, 8, seed=4, dtype=torch.float32)
tr = lambda t: t.transpose(1, 2).contiguous().transpose(1, 2)
y = selective_scan(tr(x["u"]), tr(x["delta"]), x["A"], tr(x["B"]), tr(x["C"]), D=x["D"], delta_bias=x["delta_bias"],
                   delta_softplus=True, backend="triton")
ref = selective_scan_ref(*(x[k].double() for k in ("u", "delta", "A", "B", "C")), D=x["D"].double(),
                         delta_bias=x["delta_bias"].double(), delta_softplus=True)
errors["strided"] = rel_err(y, ref)
print(json.dumps(errors))
"""


@pytest.mark.skipif(not HAS_TRITON, reason="needs the triton package (not a dependency on CPU machines: "
                    "`pip install triton` to run this; scripts/gpu_check.sh runs the compiled kernel on a GPU)")
def test_triton_kernel_matches_reference_interpreted():
    """The kernel's logic against the float64 step-by-step reference, run by Triton's interpreter in a
    child process (the interpreter flag must be set before triton compiles anything)."""
    import json

    here = Path(__file__).resolve().parent
    proc = subprocess.run([sys.executable, "-c", TRITON_CHECK, str(here)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(errors) == 5
    for case, err in errors.items():
        assert err < 2e-5, (case, err)  # float32 in the kernel, as the float32 torch scan (measured <= 2e-7)


def test_a_failing_triton_kernel_switches_itself_off(monkeypatch):
    """Where the kernel cannot run (a GPU Triton cannot compile for, a broken install), "auto" logs it once
    and the torch scan takes over for the rest of the process; an explicit backend='triton' raises."""
    def broken(*args):
        raise RuntimeError("no kernel for this GPU")

    monkeypatch.setattr(ssm, "_triton_scan_fn", lambda: broken)
    monkeypatch.setattr(ssm, "_triton_failed", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    assert triton_scan_available()
    with pytest.raises(RuntimeError, match="no kernel"):
        ssm._run_triton(False, 1, 2)
    assert triton_scan_available()
    assert ssm._run_triton(True, 1, 2) is None
    assert not triton_scan_available() and "no kernel" in ssm._triton_failed
    monkeypatch.setattr(ssm, "_triton_failed", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (6, 1))  # Pascal: not offered
    assert not triton_scan_available()


@pytest.mark.gpu
@pytest.mark.skipif(not triton_scan_available(), reason="needs a CUDA device and the triton package")
@pytest.mark.parametrize("shape", [(2, 6, 37, 4), (4, 48, 1024, 16), (2, 96, 4096, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_triton_kernel_on_cuda_matches_torch_scan(shape, dtype, layout):
    """Compiled on the GPU: equal to the torch scan (float32 accumulation in both), and what "auto" runs
    for inference where mamba_ssm is not installed. 'transposed': (b, L, c) tensors seen as (b, c, L), the
    views MambaGlue passes."""
    x = make_inputs(*shape, seed=6, dtype=dtype, device="cuda")
    if layout == "transposed":
        x = {k: v.transpose(1, 2).contiguous().transpose(1, 2) if v.dim() == 3 else v for k, v in x.items()}
    with torch.no_grad():
        y_k = selective_scan(**x, delta_softplus=True, backend="triton")
        y_t = selective_scan(**x, delta_softplus=True, backend="torch")
        assert y_k.dtype == dtype
        assert rel_err(y_k, y_t) < {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 2e-2}[dtype]
        if not cuda_scan_available():
            assert rel_err(selective_scan(**x, delta_softplus=True), y_k) == 0.0  # auto = the Triton kernel
    # with a gradient wanted, auto must not pick the forward-only kernel
    leaves = {k: v.detach().clone().requires_grad_() for k, v in x.items()}
    y = selective_scan(**leaves, delta_softplus=True)
    assert y.requires_grad


def test_torch_scan_under_bf16_autocast_is_the_float32_scan():
    # Mixed-precision training (training.train, precision bf16) runs the model under CPU bf16 autocast. The scan is
    # float32 by design: under autocast its forward and its hand-written backward give the float32 results to the
    # bit (before the scan disabled autocast, the backward's products mixed bf16 and float32 and raised).
    x = make_inputs(2, 8, 40, 4, seed=5, dtype=torch.float32)
    used = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    y, grads = run(selective_scan, x, used, delta_softplus=True, backend="torch")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_amp, grads_amp = run(selective_scan, x, used, delta_softplus=True, backend="torch")
    assert y_amp.dtype == torch.float32 and torch.equal(y_amp, y)
    for k in used:
        assert torch.equal(grads_amp[k], grads[k]), k
