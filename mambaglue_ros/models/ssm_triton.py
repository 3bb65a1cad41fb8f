"""Forward-only selective scan as one Triton kernel: the CUDA fast path where mamba_ssm is not installed.

The recurrence is ``ssm.selective_scan``'s (same signature, same softplus threshold):

    h[t] = exp(delta[t] A[d, n]) h[t-1] + delta[t] B[n, t] u[t],    y[t] = sum_n C[n, t] h[t] + D[d] u[t]

One program owns ``BLOCK_D`` channels of one batch entry and the whole sequence (L <= MAX_L): it loads
u and delta once, and for each state n runs ``tl.associative_scan`` over the time axis with the
first-order-recurrence operator ``(a1, b1) . (a2, b2) = (a1 a2, b1 a2 + b2)``, so time is parallel
within the program instead of L dependent steps, and the (L, N, d) state never touches memory.
The torch scan's ~4T + L/T small ops (each a kernel launch on a GPU) become one launch.

Inference only (no backward): ``ssm.selective_scan`` uses it when no gradient is wanted. Tested
against ``selective_scan_ref`` on a GPU and, on a CPU, under Triton's interpreter
(``TRITON_INTERPRET=1``, ``test/test_ssm.py``).
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
import triton
import triton.language as tl

# Longest sequence one program scans; longer ones go to the torch scan. 4096 keypoints is the largest
# budget the node accepts.
MAX_L = 4096
# Elements of one (BLOCK_D, BLOCK_L) tile: bounds the registers a program holds (about seven fp32 tiles
# live at once: 4096 elements over 8 warps is 16 per thread each).
TILE = 4096


@triton.jit
def _first_order(a1, b1, a2, b2):
    """Compose h -> a1 h + b1 with h -> a2 h + b2 (in time order)."""
    return a1 * a2, b1 * a2 + b2


# L and dim change with every frame's keypoint count: not specialising on their values (only the power-of-two
# block sizes are compile-time) keeps the number of compiled variants to a handful.
@triton.jit(do_not_specialize=["dim", "L"])
def _scan_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr,
                 dim, L,
                 su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sA_d, sA_n, sB_b, sB_n, sB_l, sC_b, sC_n, sC_l,
                 sz_b, sz_d, sz_l, sy_b, sy_d, sy_l,
                 N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
                 HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    b = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_l = tl.arange(0, BLOCK_L)
    mask_d = offs_d < dim
    mask = mask_d[:, None] & (offs_l[None, :] < L)
    ld = offs_d[:, None]
    ll = offs_l[None, :]
    u = tl.load(u_ptr + b * su_b + ld * su_d + ll * su_l, mask=mask, other=0.0).to(tl.float32)
    dt = tl.load(delta_ptr + b * sdt_b + ld * sdt_d + ll * sdt_l, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[:, None]
    if SOFTPLUS:
        dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
    dt = tl.where(mask, dt, 0.0)  # padded steps: decay 1, no input (they come after L: nothing reads them)
    x = dt * u
    y = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    for n in tl.static_range(N):
        a_n = tl.load(A_ptr + offs_d * sA_d + n * sA_n, mask=mask_d, other=0.0).to(tl.float32)
        B_n = tl.load(B_ptr + b * sB_b + n * sB_n + offs_l * sB_l, mask=offs_l < L, other=0.0).to(tl.float32)
        C_n = tl.load(C_ptr + b * sC_b + n * sC_n + offs_l * sC_l, mask=offs_l < L, other=0.0).to(tl.float32)
        decay = tl.exp(dt * a_n[:, None])
        _, h = tl.associative_scan((decay, x * B_n[None, :]), 1, _first_order)
        y += h * C_n[None, :]
    if HAS_D:
        y += u * tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[:, None]
    if HAS_Z:
        z = tl.load(z_ptr + b * sz_b + ld * sz_d + ll * sz_l, mask=mask, other=0.0).to(tl.float32)
        y *= z / (1.0 + tl.exp(-z))
    tl.store(y_ptr + b * sy_b + ld * sy_d + ll * sy_l, y.to(y_ptr.dtype.element_ty), mask=mask)


def selective_scan_triton(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                          D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                          delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False) -> torch.Tensor:
    """``ssm.selective_scan`` for u, delta, z (b, dim, L), A (dim, N), B, C (b, N, L), D, delta_bias (dim,).

    Any strides (transposed views need no copy); computed in float32, returned in u's dtype, (b, dim, L)
    contiguous. L must be at most MAX_L (the caller falls back to the torch scan above it).
    """
    batch, dim, L = u.shape
    N = A.shape[1]
    if L > MAX_L:
        raise ValueError(f"selective_scan_triton scans at most {MAX_L} steps, got L={L}")
    y = torch.empty(batch, dim, L, dtype=u.dtype, device=u.device)
    if L == 0 or batch == 0 or dim == 0:
        return y
    block_l = triton.next_power_of_2(L)
    block_d = max(1, min(triton.next_power_of_2(dim), TILE // block_l))
    A = A.float()
    dummy = A  # a valid pointer for the inputs that are absent (never read: their flags are False)
    D_, bias_ = (t.float().contiguous() if t is not None else dummy for t in (D, delta_bias))  # read unit-stride
    z_ = z if z is not None else u
    grid = (batch, triton.cdiv(dim, block_d))
    # Triton launches on the current device: make it u's (device: cuda:1 in the node).
    with torch.cuda.device(u.device) if u.is_cuda else contextlib.nullcontext():
        _scan_kernel[grid](u, delta, A, B, C, D_, z_, bias_, y, dim, L,
                           *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *z_.stride(),
                           *y.stride(), N=N, BLOCK_D=block_d, BLOCK_L=block_l, HAS_D=D is not None,
                           HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
                           num_warps=8 if block_d * block_l >= 2048 else 4)
    return y
