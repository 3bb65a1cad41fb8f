"""Selective scan (Mamba's S6 recurrence) with a CUDA and a pure-PyTorch backend.

For every batch b, channel d and state n, with input-dependent step size, B and C:

    h[t] = exp(delta[t] * A[d, n]) * h[t-1] + delta[t] * B[n, t] * u[t]      (h[-1] = 0)
    y[t] = sum_n C[n, t] * h[t] + D[d] * u[t],   then   y[t] *= silu(z[t])   if z is given

`selective_scan` has the signature of mamba_ssm's `selective_scan_fn`, so it dispatches to that
CUDA kernel when the package is installed and the inputs are on a GPU, and otherwise runs
`_scan_torch`, a chunked scan in plain PyTorch that is exact (same recurrence, no approximation),
differentiable through autograd and fast enough on CPU for keypoint sets (L = 256..4096).
`selective_scan_ref` is the step-by-step recurrence, kept for tests.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

__all__ = ["selective_scan", "selective_scan_ref", "cuda_scan_available"]

# Steps per chunk of the torch scan. Chosen with benchmarks/bench_scan.py on CPU (2 threads,
# D=512, N=16): the cost is (2 T + L / T) Python-level steps on (B, L/T, D, N) slabs, so T near
# sqrt(L) keeps both the step count and the per-step slabs moderate; see _chunk_size.
MIN_CHUNK = 16
MAX_CHUNK = 64


@functools.lru_cache(maxsize=None)
def _cuda_scan_fn() -> Optional[Callable]:
    """mamba_ssm's selective_scan_fn, or None where it cannot be imported.

    Imported lazily and once: mamba_ssm is a CUDA-only build, and on machines without it (or with a
    broken build: missing .so, ABI mismatch) importing must not break the package, so any error
    means "no kernel" rather than only ImportError.
    """
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:
        return None
    return selective_scan_fn


def cuda_scan_available() -> bool:
    """True when mamba_ssm's CUDA selective-scan kernel can be used on this machine."""
    return torch.cuda.is_available() and _cuda_scan_fn() is not None


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                   C: torch.Tensor, D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                   delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False,
                   backend: str = "auto") -> torch.Tensor:
    """Selective scan, the signature of mamba_ssm's selective_scan_fn.

    u:          (batch, dim, L) input.
    delta:      (batch, dim, L) step size (before delta_bias / softplus).
    A:          (dim, N) real, negative: the continuous-time state matrix (diagonal per channel).
    B, C:       (batch, N, L) input-dependent input and output projections.
    D:          (dim,) skip connection, y += D * u.
    z:          (batch, dim, L) gate, y *= silu(z).
    delta_bias: (dim,) added to delta before the softplus.
    delta_softplus: apply softplus to delta (after delta_bias).
    backend:    "auto" (the CUDA kernel when available and u is on a GPU, else "torch"),
                "cuda", "torch" (chunked PyTorch scan) or "ref" (step-by-step loop, slow).
    Returns y: (batch, dim, L), dtype of u. The torch backends compute in float32 (float64 for
    float64 inputs) whatever the input dtype.
    """
    if backend == "auto":
        backend = "cuda" if u.is_cuda and cuda_scan_available() else "torch"
    if backend == "cuda":
        fn = _cuda_scan_fn()
        if fn is None or not u.is_cuda:
            raise RuntimeError("backend='cuda' needs the mamba_ssm package and inputs on a CUDA device")
        if u.shape[-1] == 0:  # the kernel is not written for empty sequences; the answer is known
            return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend="torch")
        # The kernel wants fp32 A / D / delta_bias and unit-stride last dims; it handles the rest.
        return fn(u, delta, A.float(), B.contiguous(), C.contiguous(),
                  None if D is None else D.float(), z,
                  None if delta_bias is None else delta_bias.float(), delta_softplus)
    if backend not in ("torch", "ref"):
        raise ValueError(f"unknown backend {backend!r}: expected 'auto', 'cuda', 'torch' or 'ref'")
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)

    dtype_in = u.dtype
    dtype = torch.float64 if dtype_in == torch.float64 else torch.float32
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)  # same threshold (20) as the CUDA kernel
    y = _scan_torch(u, delta, A, B, C) if backend == "torch" else _scan_loop(u, delta, A, B, C)
    if D is not None:
        y = y + u * D.to(dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(dtype_in)


def selective_scan_ref(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                       C: torch.Tensor, D: Optional[torch.Tensor] = None,
                       z: Optional[torch.Tensor] = None, delta_bias: Optional[torch.Tensor] = None,
                       delta_softplus: bool = False) -> torch.Tensor:
    """The step-by-step recurrence: obviously correct, slow. Same arguments as selective_scan."""
    return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend="ref")


def _check_shapes(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                  C: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor],
                  delta_bias: Optional[torch.Tensor]) -> None:
    """Fail early with the expected shapes rather than deep inside a broadcast."""
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, dim, L), got {tuple(u.shape)}")
    batch, dim, L = u.shape
    N = A.shape[-1]
    expected = {"delta": (delta, (batch, dim, L)), "A": (A, (dim, N)), "B": (B, (batch, N, L)),
                "C": (C, (batch, N, L)), "D": (D, (dim,)), "z": (z, (batch, dim, L)),
                "delta_bias": (delta_bias, (dim,))}
    for name, (t, shape) in expected.items():
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{name} must be {shape}, got {tuple(t.shape)}")


def _scan_loop(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
               C: torch.Tensor) -> torch.Tensor:
    """Core scan, one time step at a time. u, delta: (b, d, L); A: (d, N); B, C: (b, N, L)."""
    batch, dim, L = u.shape
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(L):
        dt = delta[:, :, t, None]  # (b, d, 1)
        h = torch.exp(dt * A) * h + (dt * u[:, :, t, None]) * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    return torch.stack(ys, -1) if ys else u.new_zeros(batch, dim, 0)


def _chunk_size(L: int) -> int:
    """Chunk length T for a sequence of length L: about sqrt(L), within [MIN_CHUNK, MAX_CHUNK]."""
    return max(MIN_CHUNK, min(MAX_CHUNK, 1 << round(math.log2(max(L, 1)) / 2)))


def _scan_torch(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                C: torch.Tensor, chunk: Optional[int] = None) -> torch.Tensor:
    """Core scan, chunked. u, delta: (b, d, L); A: (d, N); B, C: (b, N, L). Returns (b, d, L).

    Why this shape of algorithm. The sequence is cut into K chunks of T steps. Each chunk is first
    scanned from a zero state, but all K chunks *at once*: the loop runs over the T steps inside a
    chunk and every step updates a (b, K, d, N) slab. A loop over the K chunks then carries the
    true state from one chunk to the next, and a second pass over the T steps, started from those
    states, gives the outputs. That is 2 T + K Python-level steps instead of L, each doing one
    multiply-add on a slab (autograd records a few nodes per step, so backward is linear too).

    Rejected closed forms, for the record. Mamba-2's SSD computes a chunk with a T x T decay
    matrix, which is cheap there because A is one scalar per head; here A is (d, N), so that matrix
    is (b, d, N, T, T), T times the work of the scan itself. The cumulative-sum form,
    h[t] = exp(S[t]) * cumsum_s(exp(-S[s]) x[s]) with S = cumsum(delta * A), needs exp(-S), which
    overflows float32 once a chunk decays by more than about e^-88 (easy: delta ~ 1, A ~ -16 gives
    that in six steps), so it needs a data-dependent chunk size; it also costs two exp passes
    where this scheme needs one. Here every factor is exp(delta * A) <= 1 (or a product of them):
    nothing can overflow, whatever delta and A are, and it is the recurrence itself, not a
    rearrangement of it, so the rounding is that of the step-by-step loop.
    """
    batch, dim, L = u.shape
    N = A.shape[1]
    if L == 0:
        return u.new_zeros(batch, dim, 0)
    T = min(chunk or _chunk_size(L), L)
    K = -(-L // T)
    pad = K * T - L
    if pad:
        # Padded steps at the end have delta = 0 (decay 1) and x = 0: they change no state and
        # their outputs are cut off below.
        u, delta, B, C = (F.pad(t, (0, pad)) for t in (u, delta, B, C))

    def steps(t: torch.Tensor) -> torch.Tensor:
        """(b, c, K*T) -> (T, b, K, c), contiguous: step i of every chunk is one slab t[i]."""
        return t.reshape(batch, t.shape[1], K, T).permute(3, 0, 2, 1).contiguous()

    dt = steps(delta)  # (T, b, K, d)
    # Discretisation (zero-order hold for A, Euler for B, as in Mamba): both (T, b, K, d, N).
    decay = torch.exp(dt[..., None] * A)
    x = steps(delta * u)[..., None] * steps(B)[:, :, :, None, :]
    decay_t, x_t = decay.unbind(0), x.unbind(0)  # unbind, not indexing: one node in backward
    C_t = steps(C).unbind(0)  # T x (b, K, N)

    # 1) Every chunk from a zero state: its final state.
    h = x_t[0]
    for i in range(1, T):
        h = torch.addcmul(x_t[i], decay_t[i], h)
    # 2) Carry the state across chunks. A chunk's total decay exp(A * sum(delta)) needs no product.
    chunk_decay = torch.exp(delta.reshape(batch, dim, K, T).sum(-1).transpose(1, 2)[..., None] * A)
    starts = [u.new_zeros(batch, dim, N)]
    for end_k, decay_k in zip(h.unbind(1)[:-1], chunk_decay.unbind(1)[:-1]):
        starts.append(torch.addcmul(end_k, decay_k, starts[-1]))
    h = torch.stack(starts, 1)  # (b, K, d, N): the state entering each chunk
    # 3) Every chunk again from its true start state, reading out y at each step. y[i] as a
    # batched matrix-vector product over (b, K): (d, N) @ (N, 1).
    ys = []
    for i in range(T):
        h = torch.addcmul(x_t[i], decay_t[i], h)
        ys.append(torch.matmul(h, C_t[i][..., None])[..., 0])  # (b, K, d)
    y = torch.stack(ys, -1)  # (b, K, d, T)
    return y.permute(0, 2, 1, 3).reshape(batch, dim, K * T)[..., :L]
