"""MambaGlue: LightGlue whose self blocks gain a Mamba branch, with a deep confidence regressor.

Reference: Ryoo et al., "MambaGlue: Fast and Robust Local Feature Matching With Mamba"
(arXiv 2502.00462). Where the paper is silent we follow LightGlue (Lindenberger et al., ICCV 2023)
so that LightGlue weights load into the shared parts and, with the Mamba-side FFN input columns
at zero, the warm-started network reproduces LightGlue exactly.

Shapes: B pairs, M / N keypoints in image 0 / 1, d = descriptor_dim, h heads.
Keypoints enter as pixels (x, y) with the image size (W, H) and are normalised to [-1, 1].
Keypoint order matters for the Mamba scan (attention does not care): ``scan_order='hilbert'`` serialises
each image's keypoints along a Hilbert curve over their coordinates, so neighbours in the sequence are
neighbours in the image and the conv / scan add *local* context next to attention's global context;
``'score'`` keeps the front end's detection-score order (the version-1 checkpoints).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .ssm import cuda_scan_available, selective_scan, triton_scan_available
from .ssm_cpu import (conv_kernel_weights, depthwise_conv_silu_cpu, kernel_enabled, scan_exp2_matrix,
                      selective_scan_cpu)

MIXERS = ("attention", "attention+mamba", "mamba")
REGRESSORS = ("deep", "linear")
EXIT_RULES = ("count", "mean")
SCAN_ORDERS = ("score", "hilbert")
MAMBA_MESSAGES = ("gated", "concat")
HILBERT_BITS = 10  # 1024 x 1024 grid over the normalised image: finer than any keypoint spacing we use


def normalize_keypoints(kpts: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Pixels (B, N, 2) -> [-1, 1] around the image centre, scaled by the longer side / 2."""
    size = size.to(kpts)
    shift = size / 2
    scale = size.max(-1).values / 2
    return (kpts - shift[:, None]) / scale[:, None, None]


def hilbert_index(kpts: torch.Tensor, bits: int = HILBERT_BITS) -> torch.Tensor:
    """Position along a Hilbert curve: normalised keypoints (..., 2) in [-1, 1] -> (...) int64 in [0, 4^bits).

    The curve visits the cells of a 2^bits x 2^bits grid so that consecutive indices are adjacent cells:
    sorting by it is a spatially coherent serialisation of a keypoint set (as point-cloud Mamba models use).
    """
    n = 1 << bits
    q = ((kpts.detach().float().clamp(-1, 1) + 1) * (0.5 * (n - 1))).round().long()
    x, y = q[..., 0], q[..., 1]
    d = torch.zeros_like(x)
    s = n // 2
    while s > 0:
        rx, ry = (x & s) > 0, (y & s) > 0
        d += s * s * ((3 * rx.long()) ^ ry.long())
        flip = rx & ~ry  # rotate the quadrant so the sub-curve joins its neighbours
        x, y = torch.where(flip, n - 1 - x, x), torch.where(flip, n - 1 - y, y)
        x, y = torch.where(ry, x, y), torch.where(ry, y, x)
        s //= 2
    return d


def scan_permutation(kpts: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Hilbert order of each set: normalised keypoints (B, N, 2), mask (B, N) -> permutation (B, N).

    Padding (mask False) goes last, so a padded set keeps its real tokens first, in the same order as alone.
    """
    key = hilbert_index(kpts)
    if mask is not None:
        key = key.masked_fill(~mask, 1 << (2 * HILBERT_BITS))  # past every cell of the curve
    # Ties (points in one cell) break by input position, in the key itself: a plain sort is then
    # deterministic, and exports (ONNX has no stable sort).
    k = key.shape[1]
    return torch.argsort(key * k + torch.arange(k, device=key.device), dim=1)


def gather_points(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, N, ...) -> (B, K, ...) with x[b, index[b, k]]; index (B, K)."""
    return x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:]))


def gather_encoding(enc: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rotary encoding (2, B, 1, N, dh) -> (2, B, 1, K, dh) at the points index (B, K)."""
    idx = index[None, :, None, :, None].expand(enc.shape[0], -1, enc.shape[2], -1, enc.shape[-1])
    return enc.gather(3, idx)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x = x.unflatten(-1, (-1, 2))
    x1, x2 = x.unbind(dim=-1)
    return torch.stack((-x2, x1), dim=-1).flatten(start_dim=-2)


def apply_rotary(freqs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Rotary positional encoding: freqs (2, B, 1, N, dh) = (cos, sin); t (B, h, N, dh)."""
    return (t * freqs[0]) + (rotate_half(t) * freqs[1])


class LearnableFourierPositionalEncoding(nn.Module):
    """Rotary frequencies from keypoint coordinates (LightGlue): (B, N, 2) -> (2, B, 1, N, dh)."""

    def __init__(self, M: int, dim: int, gamma: float = 1.0) -> None:
        super().__init__()
        self.Wr = nn.Linear(M, dim // 2, bias=False)
        nn.init.normal_(self.Wr.weight.data, mean=0, std=gamma**-2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected = self.Wr(x)
        emb = torch.stack([torch.cos(projected), torch.sin(projected)], 0).unsqueeze(-3)
        return emb.repeat_interleave(2, dim=-1)


def cached_derived(owner: nn.Module, name: str, sources: tuple[torch.Tensor, ...],
                   make: Callable[[], Any]) -> Any:
    """``make()``, kept on ``owner`` for inference until one of the ``sources`` (parameters) changes.

    Under autograd (gradients must reach the sources) and when traced (export, torch.compile) it is made every
    call. A kept value is reused while every source has the same storage, dtype and version: an in-place update
    bumps the version counter that a parameter shares with the detached copy kept here, and ``.to()`` or
    ``.half()`` give it new storage (the kept copy holds on to the old one, so its address cannot come back).
    """
    if torch.is_grad_enabled() or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return make()
    cached = owner.__dict__.get(name)
    try:
        if (cached is not None and all(a.data_ptr() == b.data_ptr() and a.dtype == b.dtype and a._version == v
                                       for a, b, v in zip(cached[0], sources, cached[1]))):
            return cached[2]
        refs = tuple(t.detach() for t in sources)
        value = make()
        owner.__dict__[name] = (refs, tuple(r._version for r in refs), value)
    except RuntimeError:  # inference tensors (made under inference_mode) have no version counter
        return make()
    return value


class MambaBranch(nn.Module):
    """The Mamba side of the MambaAttention mixer, over the keypoints of one image (in scan order).

    in_proj d -> 2 d_inner split into x and z (d_inner = expand * d); x: depthwise conv1d (kernel 5, 'same'
    padding: the keypoint set has no causal direction, so the conv looks both ways) -> SiLU -> selective scan
    (state N) with input-dependent (Δ, B, C); z: SiLU gate. ``bidirectional`` adds a second scan over the
    reversed sequence with the same parameters (the per-token Δ, B, C are shared, so the two scans run as one
    batched call) and averages the two, so every token gets context from both sides, not only from the tokens
    before it. ``message``: 'gated' = Mamba's own output y ⊙ silu(z) (one d-wide message after out_proj);
    'concat' = y and silu(z) side by side, ungated (version-1 checkpoints). ``forward`` stops before out_proj
    (SelfBlock folds it into the FFN).
    """

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 5, dt_rank: int | None = None,
                 dt_min: float = 1e-3, dt_max: float = 0.1, expand: float = 1.0, bidirectional: bool = False,
                 message: str = "gated") -> None:
        super().__init__()
        if message not in MAMBA_MESSAGES:
            raise ValueError(f"unknown Mamba message {message!r}; choose from {MAMBA_MESSAGES}")
        inner = max(1, int(round(dim * expand)))
        self.dim, self.inner, self.d_state = dim, inner, d_state
        self.bidirectional, self.message = bool(bidirectional), message
        self.dt_rank = dt_rank or math.ceil(dim / 16)
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.conv1d = nn.Conv1d(inner, inner, d_conv, padding=d_conv // 2, groups=inner, bias=True)
        self.x_proj = nn.Linear(inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, inner, bias=True)
        # Mamba's initialisation: Δ = softplus(dt_proj(.)) starts log-uniform in [dt_min, dt_max].
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank**-0.5, self.dt_rank**-0.5)
        dt = torch.exp(torch.rand(inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        # S4D-real initialisation: A = -(1..N) for every channel.
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(inner, dim, bias=False)

    @property
    def num_outputs(self) -> int:
        """How many d_inner-wide tensors ``forward`` returns (each goes through out_proj into the FFN)."""
        return 1 if self.message == "gated" else 2

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """x: (B, L, d); mask: (B, L) True for real tokens (padding sits at the end of a sequence).

        Returns (y ⊙ silu(z),) for 'gated', (y, silu(z)) for 'concat', each (B, L, d_inner), *before* the
        out_proj that SelfBlock folds into the FFN's first layer (``SelfBlock.ffn_weight``).
        """
        u, z = self.in_proj(x).chunk(2, dim=-1)
        if mask is not None:
            # Zeroed padding = the conv's own zero padding; after the conv it is zeroed again so that the
            # reversed scan, which meets the padding first, starts its real tokens from a zero state.
            u = u * mask[..., None].to(u.dtype)
        # The C++ kernel's conv + SiLU in one pass where the scan kernel applies (same sum, float32 rounding)
        if use_cpu_kernel(u):
            u = depthwise_conv_silu_cpu(u, self.conv1d, weights=self.inference_constants()["conv"])
        else:
            u = F.silu(depthwise_conv(u, self.conv1d))
        if mask is not None and self.bidirectional:
            u = u * mask[..., None].to(u.dtype)
        dt, Bm, Cm = torch.split(self.x_proj(u), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight)  # (B, L, d_inner); the bias goes in as delta_bias
        gated = self.message == "gated"
        y = self.scan(u, delta, Bm, Cm, gate=z if gated else None)
        return (y,) if gated else (y, F.silu(z))

    def inference_constants(self) -> dict[str, Any]:
        """The branch's parameters as the scans and the C++ kernels take them, in float32: A = -exp(A_log)
        (d_inner, N), D and Δ's bias (d_inner,), A · log2(e) transposed (N, d_inner) for the C++ scan, and the
        conv's (weight (d_inner, k), bias) for the C++ conv. Kept between calls for inference (``cached_derived``):
        made per call, these casts and the exp were ~20 of the branch's ~30 dispatched ops, and on a GPU with half
        weights each cast and the exp is a kernel launch."""
        def make() -> dict[str, Any]:
            A = -torch.exp(self.A_log.float())
            return {"A": A, "D": self.D.float(), "delta_bias": self.dt_proj.bias.float(), "A2": scan_exp2_matrix(A),
                    "conv": conv_kernel_weights(self.conv1d)}
        return cached_derived(self, "_inference_constants",
                              (self.A_log, self.D, self.dt_proj.bias, self.conv1d.weight, self.conv1d.bias), make)

    def scan(self, u: torch.Tensor, delta: torch.Tensor, Bm: torch.Tensor, Cm: torch.Tensor,
             gate: torch.Tensor | None = None) -> torch.Tensor:
        """The selective scan along L of u, delta (B, L, d_inner), Bm, Cm (B, L, N) -> y (B, L, d_inner): with
        ``bidirectional`` the mean of both directions, times silu(gate) where a gate (B, L, d_inner) is given."""
        if u.shape[1] == 0:
            return u
        c = self.inference_constants()
        if use_cpu_kernel(u):
            # The C++ scan runs both directions (sharing each step's softplus) and the gate in one call: no
            # flipped copies, no separate SiLU and products over the sequence.
            return selective_scan_cpu(u, delta, c["A"], Bm, Cm, c["D"], c["delta_bias"], A2=c["A2"],
                                      bidirectional=self.bidirectional, gate=gate)
        b = u.shape[0]
        if self.bidirectional:  # both directions in one call: the reversed sequences as extra batch entries
            u, delta, Bm, Cm = (torch.cat([t, t.flip(1)], 0) for t in (u, delta, Bm, Cm))
        if use_inference_scan(u, self.d_state):
            y = selective_scan_inference(u, delta, c["A"], Bm, Cm, c["D"], c["delta_bias"])
        else:  # training, long sequences, the CUDA kernel: ssm's scan, in its (B, d, L) layout (transposed views)
            y = selective_scan(u.transpose(1, 2), delta.transpose(1, 2), c["A"], Bm.transpose(1, 2),
                               Cm.transpose(1, 2), D=c["D"], z=None, delta_bias=c["delta_bias"],
                               delta_softplus=True).transpose(1, 2)
        if self.bidirectional:
            y = 0.5 * (y[:b] + y[b:].flip(1))
        return y if gate is None else y * F.silu(gate)


def depthwise_conv(u: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """``conv``'s depthwise convolution along the sequence of u (B, L, d), output (B, L, d) ('same' padding).

    The same sum as ``conv(u.transpose(1, 2))[..., :L].transpose(1, 2)``, written as k shifted products in
    the (B, L, d) layout that the projections and the scan use: no transposed copies either side.
    """
    k, pad = conv.kernel_size[0], conv.padding[0]
    L = u.shape[1]
    w = conv.weight[:, 0].t()  # (k, d)
    padded = F.pad(u, (0, 0, pad, k - 1 - pad))
    out = torch.addcmul(conv.bias, padded[:, :L], w[0])
    for j in range(1, k):
        out.addcmul_(padded[:, j: j + L], w[j])
    return out


# Largest (batch, L, N, d) float buffer for which inference uses selective_scan_inference; above it, the
# chunked scan of ssm.py, which never holds one (a fresh buffer much larger than this costs page faults).
INFERENCE_SCAN_BYTES = 16 << 20


def use_cpu_kernel(u: torch.Tensor) -> bool:
    """The C++ scan (``ssm_cpu``) for u (B, L, d) on the CPU where no gradient is wanted, it is built for this
    machine, and nothing traces the network (export and torch.compile need the torch ops); float64 stays on
    the torch scan, which computes in float64."""
    if u.device.type != "cpu" or torch.is_grad_enabled() or u.dtype == torch.float64:
        return False
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
        return False
    return kernel_enabled()


def use_inference_scan(u: torch.Tensor, d_state: int) -> bool:
    """selective_scan_inference for u (B, L, d) where no gradient is wanted, its buffer is small, and no
    CUDA kernel takes the scan."""
    if torch.is_grad_enabled() or (u.is_cuda and (cuda_scan_available() or triton_scan_available())):
        return False
    return u.numel() * d_state * 4 <= INFERENCE_SCAN_BYTES


def selective_scan_inference(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                             D: torch.Tensor, delta_bias: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Forward-only selective scan in the (batch, L, channels) layout, for inference and ONNX export.

    u, delta: (b, L, d), delta before delta_bias and softplus; A: (d, N); B, C: (b, L, N); D, delta_bias: (d,).
    Returns y (b, L, d) in u's dtype: h[t] = exp(delta[t] A) h[t-1] + delta[t] B[t] u[t], y[t] = C[t] h[t] + D u[t], as
    ``ssm.selective_scan(..., delta_softplus=True)`` (same recurrence and chunking: chunks of T steps side by
    side, then a carry from chunk to chunk), arranged for inference: the decays exp(delta A) of all steps are
    formed in one op into a (b, L, N, d) buffer, which the second pass overwrites with the states, so a step is
    two ops on a (b, L/T, N, d) slab and the read-out C h is one batched product at the end. About 4T + L/T
    small ops instead of ssm's 9T + L/T (Python and dispatch cost are most of the scan at d = 96), at the
    price of that buffer (see INFERENCE_SCAN_BYTES). With L fixed, the loops trace into a plain graph.
    chunk: steps per chunk T (default about sqrt(L / 2)).
    """
    b, L, d = u.shape
    if L == 0:  # every keypoint of the image pruned: nothing to scan (the chunk size below would be 0)
        return u.clone()
    N = A.shape[1]
    dtype_in = u.dtype  # computed in float32 (float64 for float64 inputs), as ssm's torch scan does
    dtype = torch.float64 if dtype_in == torch.float64 else torch.float32
    u, delta, A, B, C, D, delta_bias = (t.to(dtype) for t in (u, delta, A, B, C, D, delta_bias))
    T = min(L, chunk or math.ceil(math.sqrt(L / 2)))  # measured best on CPU, near the 4T + L/T minimum
    K = -(-L // T)
    delta = F.softplus(delta + delta_bias)
    x = delta * u
    if K * T != L:  # padded steps: delta = 0 (decay 1) and no input, outputs cut off below
        delta, x, B, C = (F.pad(t, (0, 0, 0, K * T - L)) for t in (delta, x, B, C))
    delta, x = delta.view(b, K, T, 1, d), x.view(b, K, T, 1, d)
    B, C = B.reshape(b, K, T, N, 1), C.reshape(b, K, T, 1, N)
    A2 = (A * math.log2(math.e)).t().contiguous()  # (N, d): exp(delta A) = exp2(delta A log2 e), faster
    h = torch.mul(delta, A2).exp2_()  # (b, K, T, N, d): the decays (then, in place, the states)
    # Traced for export, no in-place writes: into slices of h they would become scatters of all of h.
    in_place = not torch.compiler.is_compiling()

    def step(state: torch.Tensor, i: int, into: torch.Tensor | None = None) -> torch.Tensor:
        """state * decay[i] + x[i] B[i] on a (b, K, N, d) slab (in place: in ``into``, else in state)."""
        if not in_place:
            return torch.addcmul(state * h[:, :, i], x[:, :, i], B[:, :, i])
        return (state.mul_(h[:, :, i]) if into is None else into.mul_(state)).addcmul_(x[:, :, i], B[:, :, i])

    end = x[:, :, 0] * B[:, :, 0]  # 1) every chunk from a zero state, all chunks at once: their end states
    for i in range(1, T):
        end = step(end, i)
    decay = torch.exp2(delta.sum(2) * A2)  # 2) a chunk's total decay; carry the state across chunks
    starts = [torch.zeros_like(end[:, 0])]
    for k in range(K - 1):
        starts.append(torch.addcmul(end[:, k], decay[:, k], starts[-1]))
    state = torch.stack(starts, 1)
    if in_place:  # 3) every chunk from its true start: all states (into h), then y = C h in one product
        for i in range(T):
            state = step(state, i, into=h[:, :, i])
        y = torch.matmul(C, h)
    else:
        ys = []
        for i in range(T):
            state = step(state, i)
            ys.append(torch.matmul(C[:, :, i], state))
        y = torch.stack(ys, 2)
    y = y.view(b, K * T, d)[:, :L]
    return (y + u * D).to(dtype_in)


def make_ffn(in_dim: int, dim: int) -> nn.Sequential:
    """Message FFN: in_dim -> 2d -> LayerNorm -> GELU -> d (LightGlue's, wider input for MambaGlue)."""
    return nn.Sequential(nn.Linear(in_dim, 2 * dim), nn.LayerNorm(2 * dim, elementwise_affine=True),
                         nn.GELU(), nn.Linear(2 * dim, dim))


class SelfBlock(nn.Module):
    """Self block with the MambaAttention mixer: parallel branches, concatenated into the message FFN.

    message = FFN(concat[x, attention message, Mamba message(s)]); x <- x + message. With the 'gated' Mamba
    message the FFN input is 3d (direct, attention, Mamba: the paper's three branches); 'concat' (version 1)
    feeds y and silu(z) separately (4d). mixer 'attention' drops the Mamba branch (= LightGlue), 'mamba' the
    attention message. Mamba's out_proj is linear and followed by the FFN's first (linear) layer, so the two
    are applied as one: the FFN's Mamba columns times out_proj (``ffn_weight``).
    """

    def __init__(self, dim: int, num_heads: int, mixer: str = "attention+mamba", d_state: int = 16,
                 mamba_expand: float = 1.0, bidirectional: bool = False, mamba_message: str = "gated") -> None:
        super().__init__()
        if mixer not in MIXERS:
            raise ValueError(f"unknown mixer {mixer!r}; choose from {MIXERS}")
        self.dim, self.num_heads, self.mixer = dim, num_heads, mixer
        self.use_attention = "attention" in mixer
        self.use_mamba = "mamba" in mixer
        if self.use_attention:
            self.Wqkv = nn.Linear(dim, 3 * dim, bias=True)
            self.out_proj = nn.Linear(dim, dim, bias=True)
        n_mamba = 0
        if self.use_mamba:
            self.mamba = MambaBranch(dim, d_state=d_state, expand=mamba_expand, bidirectional=bidirectional,
                                     message=mamba_message)
            n_mamba = self.mamba.num_outputs
        self.ffn = make_ffn((1 + self.use_attention + n_mamba) * dim, dim)
        self._folded: tuple | None = None  # ffn_weight()'s cache for inference
        self.ffn_rank = 0  # > 0: eager inference runs the FFN's Mamba columns as a rank-r product

    def attention(self, x: torch.Tensor, encoding: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        qkv = self.Wqkv(x).unflatten(-1, (self.num_heads, -1, 3)).transpose(1, 2)  # LightGlue's layout
        q, k, v = qkv[..., 0], qkv[..., 1], qkv[..., 2]
        q, k = apply_rotary(encoding, q), apply_rotary(encoding, k)
        attn_mask, has_key = None, None
        if mask is not None:
            attn_mask, has_key = rows_with_a_key(mask[:, None, :, None] & mask[:, None, None, :])
        context = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous(), attn_mask=attn_mask)
        if has_key is not None:
            context = context * has_key.to(context.dtype)  # padding rows: 0
        return self.out_proj(context.transpose(1, 2).flatten(start_dim=-2))

    def ffn_weight(self) -> torch.Tensor:
        """The FFN's first-layer weight for the input [x, message, Mamba output(s)] (Mamba's out_proj folded in).

        ffn[0].weight @ [.., out_proj(m_1), .., out_proj(m_k)] = [.., W_1 @ out_proj, .., W_k @ out_proj] @
        [.., m_1, .., m_k]. Without a Mamba branch: ffn[0].weight itself. Under autograd (gradients reach both
        factors) and when traced for export, the product is formed every call; for inference it is cached until
        either weight changes: an in-place update bumps the version counter that a weight shares with the
        detached copy kept here, and ``.to()`` or ``.half()`` give it new storage (the kept copy holds on to
        the old one, so its address cannot come back).
        """
        w = self.ffn[0].weight
        if not self.use_mamba:
            return w
        wo = self.mamba.out_proj.weight
        return cached_derived(self, "_folded", (w, wo), lambda: self._fold(w, wo))

    def _fold(self, w: torch.Tensor, wo: torch.Tensor) -> torch.Tensor:
        k = self.mamba.num_outputs
        n = w.shape[1] - k * self.dim
        return torch.cat([w[:, :n]] + [w[:, n + j * self.dim: n + (j + 1) * self.dim] @ wo for j in range(k)], 1)

    @property
    def ffn_rank(self) -> int:
        """r > 0: eager inference runs the FFN's Mamba columns as their rank-r product (``low_rank_ffn_weight``)."""
        return self._ffn_rank

    @ffn_rank.setter
    def ffn_rank(self, rank: int) -> None:
        self._ffn_rank = int(rank)
        self._low_rank: tuple | None = None  # factors of another rank: made again when next asked for

    def low_rank_ffn_weight(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``ffn_weight`` as (dense, up, down): its columns of [x, message] as they are, (2d, n), and its Mamba
        columns (out_proj folded in), (2d, k d_inner), as their best rank-r approximation up @ down (truncated SVD,
        r = ``ffn_rank``): up (2d, r), down (r, k d_inner). Made from the current weights and kept as
        ``ffn_weight`` keeps its product (and until ``ffn_rank`` is set again).

        Why: version-1 networks feed y and silu(z) (d_inner = d each) into the FFN, 2d columns that cost as much as
        the columns of [x, message]; trained from zero for a few hundred steps, they are close to low rank, and at
        r = d/4 the product costs a quarter of them.
        """
        w, wo = self.ffn[0].weight, self.mamba.out_proj.weight
        n = w.shape[1] - self.mamba.num_outputs * self.dim

        def factorize() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            # the fold in double, outside any autocast: the SVD of a bf16 product would keep its rounding
            with torch.autocast(w.device.type, enabled=False):
                folded = self._fold(w.double(), wo.double())
            U, S, Vh = torch.linalg.svd(folded[:, n:], full_matrices=False)
            r = min(self.ffn_rank, S.shape[0])
            return (folded[:, :n].to(w.dtype).contiguous(), (U[:, :r] * S[:r]).to(w.dtype).contiguous(),
                    Vh[:r].to(w.dtype).contiguous())

        return cached_derived(self, "_low_rank", (w, wo), factorize)

    def forward(self, x: torch.Tensor, encoding: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        parts = [x]
        if self.use_attention:
            parts.append(self.attention(x, encoding, mask))
        mamba = self.mamba(x, mask) if self.use_mamba else ()
        return x + self.feed_forward(parts, mamba)

    def feed_forward(self, parts: list[torch.Tensor], mamba: tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
        """The message FFN on [x, message] (``parts``) and the Mamba output(s), its first layer with ``ffn_weight``.

        With ``ffn_rank`` > 0, in eager inference, the Mamba columns run as their rank-r product
        (``low_rank_ffn_weight``); under autograd (training), compile or export the network runs as trained.
        """
        first, rest = self.ffn[0], self.ffn[1:]
        if (self.ffn_rank and mamba and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
                and not torch.jit.is_tracing()):
            dense, up, down = self.low_rank_ffn_weight()
            h = F.linear(torch.cat(parts, -1), dense, first.bias)
            h = h + F.linear(F.linear(torch.cat(mamba, -1), down), up)
        else:
            h = F.linear(torch.cat([*parts, *mamba], -1), self.ffn_weight(), first.bias)
        return rest(h)


class CrossBlock(nn.Module):
    """Bidirectional cross attention with a shared similarity matrix (LightGlue)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.to_qk = nn.Linear(dim, dim, bias=True)
        self.to_v = nn.Linear(dim, dim, bias=True)
        self.to_out = nn.Linear(dim, dim, bias=True)
        self.ffn = make_ffn(2 * dim, dim)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor, mask0: torch.Tensor | None = None,
                mask1: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        qk0, qk1 = heads(self.to_qk(x0)) * self.scale**0.5, heads(self.to_qk(x1)) * self.scale**0.5
        v0, v1 = heads(self.to_v(x0)), heads(self.to_v(x1))
        mask = None if mask0 is None else (mask0[:, None, :, None] & mask1[:, None, None, :])
        m0 = softmax_attention(qk0, qk1, v1, mask)
        m1 = softmax_attention(qk1, qk0, v0, None if mask is None else mask.transpose(-1, -2))
        m0 = self.to_out(m0.transpose(1, 2).flatten(start_dim=-2))
        m1 = self.to_out(m1.transpose(1, 2).flatten(start_dim=-2))
        return x0 + self.ffn(torch.cat([x0, m0], -1)), x1 + self.ffn(torch.cat([x1, m1], -1))


# A trained cross attention is sharp: a few per cent of its softmax weights fall below float32's smallest normal
# number (1.2e-38) and come out as denormals, which a CPU multiplies many times slower (microcode assists). With
# them, a full forward pass of the shipped networks at 1024 keypoints took 1.41x (XFeat, 2 % of the weights
# denormal) and 1.59x (ALIKED, 4 %) the time (benchmarks/denormals.py). Logits more than DENORMAL_FLOOR below their
# row's maximum are raised to it: such a weight is < e^-60 (1e-26) of the row's largest, so the softmax's sums do
# not change in float32, and every weight is then > e^-60 / n, a normal number for any n below 1e10. GPUs handle
# denormals at full speed, and the CUDA path's fused attention takes no floor. math.inf switches it off.
DENORMAL_FLOOR = 60.0


def rows_with_a_key(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An attention mask (..., M, N) (True: may attend) whose rows without any key (padding queries) may attend to
    every key, and which rows have a key (..., M, 1). A row with every key masked gives 0 / 0 in the softmax: NaN
    forward and, through any later product, NaN gradients for every parameter (a padded training batch on the CPU
    turned the whole network's gradients NaN). Callers zero those rows' outputs with the second tensor."""
    has_key = mask.any(-1, keepdim=True)
    return mask | ~has_key, has_key


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                      block_bytes: int = 1 << 21) -> torch.Tensor:
    """softmax(q k^T) v for the cross block: q (B, h, M, dh), k (B, h, N, dh) already scaled, v (B, h, N, dv).

    LightGlue forms the similarity q0 k1^T once and takes its softmax along each axis, which needs a
    transposed copy of an M x N matrix per head. Here each direction is its own product, in blocks of
    query rows whose similarity fits in ``block_bytes`` (cache): about 30 % faster on a CPU, and the same
    numbers (q1 k0^T is (q0 k1^T)^T: the same dot products; every row's softmax is taken as LightGlue takes
    it; measured equal to the bit on CPU). On CUDA: the fused attention kernel (what LightGlue uses there).
    mask: (B, 1, M, N) bool, True where attention is allowed; fully masked rows give 0 (and finite gradients).
    """
    has_key = None
    if mask is not None:
        mask, has_key = rows_with_a_key(mask)
    if q.is_cuda:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
        return out if has_key is None else out * has_key.to(out.dtype)
    b, h, m, n = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    rows = max(16, block_bytes // max(1, b * h * n * q.element_size()))
    kt = k.transpose(-1, -2)
    out = []
    for i in range(0, m, rows):
        sim = q[:, :, i: i + rows] @ kt
        if mask is not None:
            sim = sim.masked_fill(~mask[:, :, i: i + rows], -float("inf"))
        if math.isfinite(DENORMAL_FLOOR):  # weights below e^-60 of a row's largest are raised to it; masked stay 0
            sim = sim.clamp_(min=sim.detach().amax(-1, keepdim=True) - DENORMAL_FLOOR)  # in place: no new block
            if mask is not None:  # not in place: clamp_'s backward keeps its result
                sim = sim.masked_fill(~mask[:, :, i: i + rows], -float("inf"))
        out.append(F.softmax(sim, dim=-1) @ v)
    out = out[0] if len(out) == 1 else torch.cat(out, 2)
    return out if has_key is None else out * has_key.to(out.dtype)


class TransformerLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, mixer: str, d_state: int, **mamba: Any) -> None:
        super().__init__()
        self.self_attn = SelfBlock(dim, num_heads, mixer, d_state, **mamba)
        self.cross_attn = CrossBlock(dim, num_heads)

    def forward(self, desc0, desc1, enc0, enc1, mask0=None, mask1=None):
        desc0 = self.self_attn(desc0, enc0, mask0)
        desc1 = self.self_attn(desc1, enc1, mask1)
        return self.cross_attn(desc0, desc1, mask0, mask1)


class ConfidenceRegressor(nn.Module):
    """Per-point confidence that the point's assignment is final, on detached features.

    'deep' (MambaGlue): d -> d/2 -> d/4 -> 1 with ReLU, sigmoid. 'linear' (LightGlue): d -> 1, sigmoid.
    """

    def __init__(self, dim: int, kind: str = "deep") -> None:
        super().__init__()
        if kind not in REGRESSORS:
            raise ValueError(f"unknown regressor {kind!r}; choose from {REGRESSORS}")
        if kind == "deep":
            self.token = nn.Sequential(nn.Linear(dim, dim // 2), nn.ReLU(), nn.Linear(dim // 2, dim // 4), nn.ReLU(),
                                       nn.Linear(dim // 4, 1), nn.Sigmoid())
        else:
            self.token = nn.Sequential(nn.Linear(dim, 1), nn.Sigmoid())

    def forward(self, desc: torch.Tensor) -> torch.Tensor:
        """(B, N, d) -> (B, N) in [0, 1]."""
        return self.token(desc.detach()).squeeze(-1)


def transposed(x: torch.Tensor) -> torch.Tensor:
    """(b, m, n) -> (b, n, m) contiguous, as 2-D transposing copies: on a CPU ~5x faster than PyTorch's 3-D one."""
    if x.shape[0] == 1:
        return x[0].t().contiguous()[None]
    return torch.stack([xb.t().contiguous() for xb in x]) if x.shape[0] else x.transpose(1, 2).contiguous()


def sigmoid_log_double_softmax(sim: torch.Tensor, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
    """Log assignment (B, M+1, N+1) from similarity (B, M, N) and matchability logits (B, M, 1), (B, N, 1)."""
    b, m, n = sim.shape
    certainties = F.logsigmoid(z0) + F.logsigmoid(z1).transpose(1, 2)
    scores0 = F.log_softmax(sim, 2)
    scores1 = transposed(F.log_softmax(transposed(sim), 2))  # LightGlue's column softmax, to the bit
    scores = sim.new_full((b, m + 1, n + 1), 0)
    scores[:, :m, :n] = scores0 + scores1 + certainties
    scores[:, :-1, -1] = F.logsigmoid(-z0.squeeze(-1))
    scores[:, -1, :-1] = F.logsigmoid(-z1.squeeze(-1))
    return scores


class MatchAssignment(nn.Module):
    """Dual-softmax similarity + matchability (LightGlue)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.matchability = nn.Linear(dim, 1, bias=True)
        self.final_proj = nn.Linear(dim, dim, bias=True)

    def forward(self, desc0: torch.Tensor, desc1: torch.Tensor,
                mask0: torch.Tensor | None = None, mask1: torch.Tensor | None = None) -> torch.Tensor:
        d = desc0.shape[-1]
        mdesc0, mdesc1 = self.final_proj(desc0) / d**0.25, self.final_proj(desc1) / d**0.25
        sim = mdesc0 @ mdesc1.transpose(-1, -2)  # (B, M, N); a product, not einsum: see gemm_shapes.py
        z0, z1 = self.matchability(desc0), self.matchability(desc1)
        if mask0 is not None:
            # Padding never matches: -inf similarity and -inf matchability logits.
            valid = mask0[:, :, None] & mask1[:, None, :]
            sim = sim.masked_fill(~valid, -1e4)
            z0 = z0.masked_fill(~mask0[..., None], -1e4)
            z1 = z1.masked_fill(~mask1[..., None], -1e4)
        return sigmoid_log_double_softmax(sim, z0, z1)

    def get_matchability(self, desc: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.matchability(desc)).squeeze(-1)


def filter_matches(scores: torch.Tensor, th: float):
    """Mutual nearest neighbours above a threshold from a log assignment (B, M+1, N+1).

    Returns matches0 (B, M) (index into image 1 or -1), matches1 (B, N), mscores0 (B, M), mscores1 (B, N).
    """
    max0, max1 = scores[:, :-1, :-1].max(2), scores[:, :-1, :-1].max(1)
    m0, m1 = max0.indices, max1.indices
    indices0 = torch.arange(m0.shape[1], device=m0.device)[None]
    indices1 = torch.arange(m1.shape[1], device=m1.device)[None]
    mutual0 = indices0 == m1.gather(1, m0)
    mutual1 = indices1 == m0.gather(1, m1)
    max0_exp = max0.values.exp()
    zero = max0_exp.new_zeros(())  # not new_tensor(0): a host-to-device copy, which a CUDA graph cannot capture
    mscores0 = torch.where(mutual0, max0_exp, zero)
    mscores1 = torch.where(mutual1, mscores0.gather(1, m1), zero)
    valid0 = mutual0 & (mscores0 > th)
    valid1 = mutual1 & valid0.gather(1, m1)
    m0 = torch.where(valid0, m0, -1)
    m1 = torch.where(valid1, m1, -1)
    return m0, m1, mscores0, mscores1


def to_input_order(m0: torch.Tensor, m1: torch.Tensor, ms0: torch.Tensor, ms1: torch.Tensor, ind0: torch.Tensor,
                   ind1: torch.Tensor, m: int, n: int) -> tuple[torch.Tensor, ...]:
    """Matches and scores over tokens back to the input points.

    m0 (B, K0) token of image 1 or -1, m1 (B, K1), ms0/ms1 their scores; ind0 (B, K0) / ind1 (B, K1): the input
    position of each token (a permutation, or a subset after pruning); m, n: input point counts. Returns
    matches0 (B, m), matches1 (B, n) as input indices (-1 for unmatched or pruned points) and their scores.
    """
    b = m0.shape[0]
    m0, m1 = (torch.where(mi == -1, -1, other.gather(1, mi.clamp(min=0))) for mi, other in ((m0, ind1), (m1, ind0)))
    if ind0.shape[1] == m and ind1.shape[1] == n:  # permutations: gather through the inverses (no scatter)
        inv0, inv1 = torch.argsort(ind0, dim=1), torch.argsort(ind1, dim=1)
        return m0.gather(1, inv0), m1.gather(1, inv1), ms0.gather(1, inv0), ms1.gather(1, inv1)
    m0 = torch.full((b, m), -1, device=m0.device, dtype=m0.dtype).scatter(1, ind0, m0)
    m1 = torch.full((b, n), -1, device=m1.device, dtype=m1.dtype).scatter(1, ind1, m1)
    return m0, m1, ms0.new_zeros((b, m)).scatter(1, ind0, ms0), ms1.new_zeros((b, n)).scatter(1, ind1, ms1)


def unpermute_assignment(scores: torch.Tensor, ind0: torch.Tensor, ind1: torch.Tensor,
                         inv0: torch.Tensor | None = None, inv1: torch.Tensor | None = None) -> torch.Tensor:
    """A log assignment over tokens (B, M+1, N+1) back to the input order of the points.

    ind0 (B, M), ind1 (B, N): input position of each token (permutations); inv0/inv1: their inverses (computed
    when not given). The dustbin row and column stay last.
    """
    b, m, n = scores.shape[0], scores.shape[1] - 1, scores.shape[2] - 1
    if inv0 is None:
        inv0, inv1 = torch.argsort(ind0, dim=1), torch.argsort(ind1, dim=1)
    rows = torch.cat([inv0, inv0.new_full((b, 1), m)], 1)
    cols = torch.cat([inv1, inv1.new_full((b, 1), n)], 1)
    if b == 1:  # whole rows copied, then one gather per row: ~half the time of two gathers with expanded indices
        return scores[0].index_select(0, rows[0]).index_select(1, cols[0])[None]
    scores = scores.gather(1, rows[:, :, None].expand(b, m + 1, n + 1))
    return scores.gather(2, cols[:, None, :].expand(b, m + 1, n + 1))


class MambaGlue(nn.Module):
    """The matcher network. Configuration is a dict of defaults; see ``default_conf``.

    ``forward(data)`` takes ``data = {"keypoints0": (B, M, 2) px, "keypoints1": (B, N, 2) px,
    "descriptors0": (B, M, Din), "descriptors1": (B, N, Din), "image_size0": (B, 2) (W, H),
    "image_size1": (B, 2)}`` and optional ``"mask0"``/``"mask1"`` (B, M)/(B, N) bool for padded batches.
    It returns matches0 (B, M), matches1 (B, N), matching_scores0/1, and ``stop`` (layers run).
    """

    default_conf: dict[str, Any] = {
        "input_dim": 128,  # descriptor size of the front end (ALIKED/DISK 128, XFeat 64, SuperPoint 256)
        "descriptor_dim": 256,
        "n_layers": 9,
        "num_heads": 4,
        "mixer": "attention+mamba",  # 'attention' (= LightGlue) | 'attention+mamba' (MambaGlue) | 'mamba'
        "regressor": "deep",  # confidence regressor: 'deep' (MambaGlue) | 'linear' (LightGlue)
        "d_state": 16,  # Mamba state size N
        "mamba_expand": 0.5,  # Mamba inner width / d (0.5: half the in_proj and scan cost of 1.0)
        "mamba_message": "gated",  # 'gated' out_proj(y * silu(z)), 3d FFN input | 'concat' [y, silu(z)], 4d (v1)
        "bidirectional": True,  # a second scan over the reversed sequence (shared parameters)
        "scan_order": "hilbert",  # keypoint order of the scan: 'hilbert' (spatial) | 'score' (detection score, v1)
        # inference only: the self blocks' FFN columns of the Mamba output(s) as a rank-r product (truncated SVD of
        # the trained weights; SelfBlock.low_rank_ffn_weight): 0 = as trained, r > 0, -1 = d/4 where the columns are
        # 2d wide (version 1: 'concat' message at expand 1; a quarter of those columns' products), else 0. Off by
        # default: on the version-1 ALIKED file -1 took 0.94x the time at full depth for -0.0024 AUC@3px there
        # (docs/results.md, "The version-1 ALIKED file's Mamba columns at low rank")
        "mamba_ffn_rank": 0,
        "early_exit": True,
        "alpha": 0.95,  # exit when the fraction of confident points >= alpha
        "exit_rule": "count",  # how that fraction is read off the confidences (check_if_stop): 'count' | 'mean'
        "pruning": True,
        "beta": 0.99,  # width confidence: prune points with matchability < 1 - beta (and confident)
        "filter_threshold": 0.1,  # match score threshold
        "pruning_min_points": -1,  # prune only above this many points (-1: always; LightGlue uses 1024 on CUDA)
    }

    def __init__(self, **conf: Any) -> None:
        super().__init__()
        unknown = set(conf) - set(self.default_conf)
        if unknown:
            raise ValueError(f"unknown MambaGlue options {sorted(unknown)}")
        self.conf = {**self.default_conf, **conf}
        c = self.conf
        d, h, n = c["descriptor_dim"], c["num_heads"], c["n_layers"]
        if d % h:
            raise ValueError(f"descriptor_dim {d} is not divisible by num_heads {h}")
        self.input_proj = nn.Linear(c["input_dim"], d, bias=True) if c["input_dim"] != d else nn.Identity()
        self.posenc = LearnableFourierPositionalEncoding(2, d // h)
        if c["exit_rule"] not in EXIT_RULES:
            raise ValueError(f"unknown exit_rule {c['exit_rule']!r}; choose from {EXIT_RULES}")
        if c["scan_order"] not in SCAN_ORDERS:
            raise ValueError(f"unknown scan_order {c['scan_order']!r}; choose from {SCAN_ORDERS}")
        mamba = {"mamba_expand": float(c["mamba_expand"]), "bidirectional": bool(c["bidirectional"]),
                 "mamba_message": c["mamba_message"]}
        self.transformers = nn.ModuleList([TransformerLayer(d, h, c["mixer"], c["d_state"], **mamba)
                                           for _ in range(n)])
        rank = int(c["mamba_ffn_rank"])
        if rank < -1:
            raise ValueError(f"mamba_ffn_rank must be > 0, 0 (as trained) or -1 (automatic), got {rank}")
        if rank == -1:
            block = self.transformers[0].self_attn
            wide = block.use_mamba and block.mamba.num_outputs * block.mamba.inner >= 2 * d
            rank = d // 4 if wide else 0
        for layer in self.transformers:
            layer.self_attn.ffn_rank = rank
        self.log_assignment = nn.ModuleList([MatchAssignment(d) for _ in range(n)])
        self.token_confidence = nn.ModuleList([ConfidenceRegressor(d, c["regressor"]) for _ in range(n - 1)])
        self.register_buffer("confidence_thresholds",
                             torch.tensor([self.confidence_threshold(i) for i in range(n)]), persistent=False)

    @property
    def reorders(self) -> bool:
        """Whether the tokens run in another order than the input (Hilbert scan order with a Mamba branch)."""
        return self.conf["scan_order"] == "hilbert" and self.conf["mixer"] != "attention"

    def confidence_threshold(self, layer_index: int) -> float:
        """λ_ℓ = 0.8 + 0.1 exp(-4ℓ/L): early layers must be more confident to count."""
        return min(max(0.8 + 0.1 * math.exp(-4.0 * layer_index / self.conf["n_layers"]), 0.0), 1.0)

    def encode(self, data: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], ...]:
        """Projected descriptors, rotary encodings, masks and the scan order of both images.

        Returns one dict per image: desc (B, K, d), enc (2, B, 1, K, dh), mask (B, K) or None, and index
        (B, K) = the input position of each token. With ``scan_order='hilbert'`` and a Mamba branch the
        tokens are in Hilbert order (attention, cross attention and the assignment do not depend on the
        order, the scan does); ``index`` maps every result back to the input order.
        """
        return tuple(self.encode_image(data[f"keypoints{side}"], data[f"descriptors{side}"],
                                       data[f"image_size{side}"], data.get(f"mask{side}")) for side in "01")

    def encode_image(self, keypoints: torch.Tensor, descriptors: torch.Tensor, image_size: torch.Tensor,
                     mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``encode`` for one image: keypoints (B, K, 2) px, descriptors (B, K, Din), image_size (B, 2),
        mask (B, K) or None."""
        dtype = self.posenc.Wr.weight.dtype
        kpts = normalize_keypoints(keypoints, image_size)
        desc = self.input_proj(descriptors.detach().to(dtype))
        enc = self.posenc(kpts.to(dtype))
        b, k = kpts.shape[:2]
        if self.reorders:
            index = scan_permutation(kpts, mask)
            desc, enc = gather_points(desc, index), gather_encoding(enc, index)
            mask = None if mask is None else mask.gather(1, index)
        else:
            index = torch.arange(k, device=kpts.device)[None].expand(b, k)
        return {"desc": desc, "enc": enc, "mask": mask, "index": index}

    def prepare(self, keypoints: torch.Tensor, descriptors: torch.Tensor, image_size: torch.Tensor,
                mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One image's tokens after the first self block: ``encode_image`` with ``desc`` through
        ``transformers[0].self_attn`` (B, K, d). Everything up to there depends on that image alone, so a
        frame matched twice (with the previous frame, then with the next; left with right and with the
        previous left) needs it once, and it can be computed before its partner exists (the node's pipeline
        does it in the extraction stage). ``forward`` takes it as ``data["prepared0"]`` / ``["prepared1"]``
        and gives the same result to the bit."""
        image = self.encode_image(keypoints, descriptors, image_size, mask)
        image["desc"] = self.transformers[0].self_attn(image["desc"], image["enc"], image["mask"])
        return image

    def prepare_token(self) -> object:
        """An object that stays the same while the weights ``prepare`` uses stay the same (``cached_derived``: the
        same storage, dtype and version of each), so that a kept ``prepare`` output can be checked against it."""
        used = (self.input_proj, self.posenc, self.transformers[0].self_attn)
        return cached_derived(self, "_prepare_token", tuple(p for m in used for p in m.parameters()), object)

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, Any]:
        c = self.conf
        b, m = data["keypoints0"].shape[:2]
        n = data["keypoints1"].shape[1]
        device = data["keypoints0"].device
        if m == 0 or n == 0:
            return self._empty_output(b, m, n, device)
        # Each image's first self block (``prepare``), given or computed here; layer 0 then runs its cross block
        # only: the same operations on the same tensors as the whole layer, whose self block sees one image.
        set0, set1 = (data.get(f"prepared{side}") or self.prepare(data[f"keypoints{side}"], data[f"descriptors{side}"],
                                                                  data[f"image_size{side}"], data.get(f"mask{side}"))
                      for side in "01")
        desc0, enc0, mask0, ind0 = set0["desc"], set0["enc"], set0["mask"], set0["index"]
        desc1, enc1, mask1, ind1 = set1["desc"], set1["enc"], set1["mask"], set1["index"]

        # Pruning changes the point count per pair, so it runs for single unpadded pairs only. It keeps the
        # scan order (kept tokens stay in sequence), but every later token's scan state changes with it.
        do_prune = c["pruning"] and b == 1 and mask0 is None
        do_exit = c["early_exit"]
        num_points = (mask0.sum(-1) + mask1.sum(-1)) if mask0 is not None else torch.full((b,), m + n, device=device)
        token0 = token1 = None
        L = c["n_layers"]
        for i in range(L):
            if i == 0:
                desc0, desc1 = self.transformers[0].cross_attn(desc0, desc1, mask0, mask1)
            else:
                desc0, desc1 = self.transformers[i](desc0, desc1, enc0, enc1, mask0, mask1)
            if i == L - 1:
                break
            if do_exit or do_prune:
                token0, token1 = self.token_confidence[i](desc0), self.token_confidence[i](desc1)
            if do_exit and self.check_if_stop(token0, token1, i, num_points, mask0, mask1):
                break
            if do_prune:
                if desc0.shape[1] > c["pruning_min_points"]:
                    keep0 = self.pruning_mask(token0, self.log_assignment[i].get_matchability(desc0), i)
                    keep0 = torch.where(keep0[0])[0]
                    ind0, desc0, enc0 = ind0[:, keep0], desc0[:, keep0], enc0[..., keep0, :]
                if desc1.shape[1] > c["pruning_min_points"]:
                    keep1 = self.pruning_mask(token1, self.log_assignment[i].get_matchability(desc1), i)
                    keep1 = torch.where(keep1[0])[0]
                    ind1, desc1, enc1 = ind1[:, keep1], desc1[:, keep1], enc1[..., keep1, :]
                if desc0.shape[1] == 0 or desc1.shape[1] == 0:
                    break  # nothing left to match on one side
        stop = i + 1
        if desc0.shape[1] == 0 or desc1.shape[1] == 0:
            out = self._empty_output(b, m, n, device)
            out["stop"] = stop
            return out
        scores = self.log_assignment[i](desc0, desc1, mask0, mask1)
        m0, m1, ms0, ms1 = filter_matches(scores, c["filter_threshold"])
        if mask0 is not None:
            m0, m1 = m0.masked_fill(~mask0, -1), m1.masked_fill(~mask1, -1)
        if do_prune or self.reorders:
            m0, m1, ms0, ms1 = to_input_order(m0, m1, ms0, ms1, ind0, ind1, m, n)
            scores = None if do_prune else unpermute_assignment(scores, ind0, ind1)
        return {"matches0": m0, "matches1": m1, "matching_scores0": ms0, "matching_scores1": ms1,
                "stop": stop, "log_assignment": scores,
                "kept0": int(desc0.shape[1]), "kept1": int(desc1.shape[1])}  # points left after pruning

    def check_if_stop(self, token0, token1, layer_index, num_points, mask0=None, mask1=None) -> bool:
        """Exit when, in every pair, the fraction of settled points (``settled_fraction``) reaches α."""
        ratio = self.settled_fraction(token0, token1, layer_index, num_points, mask0, mask1)
        return bool((ratio >= self.conf["alpha"]).all())

    def settled_fraction(self, token0, token1, layer_index, num_points, mask0=None, mask1=None) -> torch.Tensor:
        """(B,) share of each pair's ``num_points`` taken as settled after layer ``layer_index``.

        ``exit_rule='count'`` (LightGlue): the points whose confidence exceeds λ_ℓ are counted as settled.
        ``'mean'``: the sum of the confidences is the expected number of settled points, which is exact in
        expectation for a calibrated regressor (ours is trained with BCE on exactly that event); the count
        rule instead leaves out every point below λ_ℓ however close, and so waits for a sharper regressor
        than the network needs (docs/results.md, Early exit). Points pruned earlier (in ``num_points`` but
        not in the tokens) count as settled (they were confident when pruned), as in LightGlue.
        """
        if self.conf["exit_rule"] == "mean":
            unsettled0, unsettled1 = 1.0 - token0.float(), 1.0 - token1.float()
        else:
            th = self.confidence_thresholds[layer_index]
            unsettled0, unsettled1 = (token0 < th).float(), (token1 < th).float()
        if mask0 is not None:
            unsettled0, unsettled1 = unsettled0 * mask0, unsettled1 * mask1
        unconfident = unsettled0.sum(-1) + unsettled1.sum(-1)
        return 1.0 - unconfident / num_points.float()

    def pruning_mask(self, confidences, matchability, layer_index) -> torch.Tensor:
        """Keep points that may still match, and any point whose assignment is not settled yet."""
        keep = matchability > (1 - self.conf["beta"])
        if confidences is not None:
            keep |= confidences <= self.confidence_thresholds[layer_index]
        return keep

    def forward_train(self, data: dict[str, torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        """All layers, no exit or pruning: per-layer log assignments (for the NLL at every layer, so any
        layer can exit) and per-layer confidences (for the regressor stage), all in the input point order."""
        set0, set1 = self.encode(data)
        desc0, enc0, mask0, ind0 = set0["desc"], set0["enc"], set0["mask"], set0["index"]
        desc1, enc1, mask1, ind1 = set1["desc"], set1["enc"], set1["mask"], set1["index"]
        inv0, inv1 = torch.argsort(ind0, dim=1), torch.argsort(ind1, dim=1)  # token of each input point
        scores, conf0, conf1 = [], [], []
        for i in range(self.conf["n_layers"]):
            desc0, desc1 = self.transformers[i](desc0, desc1, enc0, enc1, mask0, mask1)
            # What the losses read is computed in float32 under autocast (mixed-precision training): on a CPU
            # log_softmax and the regressor's sigmoid would otherwise come out rounded to bf16. Without autocast
            # (fp32, float64, a half model) the heads run as the layers do.
            amp = torch.is_autocast_enabled(desc0.device.type)
            with torch.autocast(desc0.device.type, enabled=False) if amp else contextlib.nullcontext():
                out0, out1 = (desc0.float(), desc1.float()) if amp else (desc0, desc1)
                la = self.log_assignment[i](out0, out1, mask0, mask1)
                scores.append(unpermute_assignment(la, ind0, ind1, inv0, inv1))
                if i < self.conf["n_layers"] - 1:
                    conf0.append(self.token_confidence[i](out0).gather(1, inv0))
                    conf1.append(self.token_confidence[i](out1).gather(1, inv1))
        return {"log_assignment": scores, "confidence0": conf0, "confidence1": conf1}

    def _empty_output(self, b: int, m: int, n: int, device: torch.device) -> dict[str, Any]:
        return {"matches0": torch.full((b, m), -1, dtype=torch.long, device=device),
                "matches1": torch.full((b, n), -1, dtype=torch.long, device=device),
                "matching_scores0": torch.zeros((b, m), device=device),
                "matching_scores1": torch.zeros((b, n), device=device), "stop": 0, "log_assignment": None,
                "kept0": 0, "kept1": 0}


def lightglue_state_dict_to_mambaglue(sd: dict[str, torch.Tensor], model: MambaGlue) -> dict[str, torch.Tensor]:
    """Map a LightGlue checkpoint (cvg/kornia layouts, LighterGlue's ``matcher.`` prefix) onto ``model``.

    Shared parts are copied; the self-block FFN's first layer gets LightGlue's weights in the columns
    of [x, attention message] and zeros in the Mamba columns (y, z), so the network reproduces
    LightGlue exactly at initialisation. Mamba parameters and the deep regressor keep their fresh
    initialisation (the linear regressor takes LightGlue's token confidence).
    Returns a full state dict for ``model.load_state_dict(..., strict=True)``.
    """
    sd = {k[len("matcher."):] if k.startswith("matcher.") else k: v for k, v in sd.items()
          if not k.startswith("extractor.")}
    n = model.conf["n_layers"]
    for i in range(n):  # the original release names blocks self_attn.{i} / cross_attn.{i}
        sd = {k.replace(f"self_attn.{i}.", f"transformers.{i}.self_attn.")
              .replace(f"cross_attn.{i}.", f"transformers.{i}.cross_attn."): v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not (k.startswith("log_assignment.") and k.endswith(".r"))}
    target = model.state_dict()
    for key, value in sd.items():
        shared = key.startswith(("transformers.", "log_assignment.", "posenc.", "input_proj."))
        if (shared and key in target and target[key].shape != value.shape
                and not (key.endswith("self_attn.ffn.0.weight") and value.shape[0] == target[key].shape[0])):
            raise ValueError(f"LightGlue checkpoint shape mismatch for {key}: checkpoint {tuple(value.shape)}, "
                             f"model {tuple(target[key].shape)}")
    out: dict[str, torch.Tensor] = {}
    d = model.conf["descriptor_dim"]
    for key, value in target.items():
        if key in sd and sd[key].shape == value.shape:
            out[key] = sd[key].to(value.dtype)
        elif key.endswith("self_attn.ffn.0.weight") and key in sd:
            w = torch.zeros_like(value)
            src = sd[key]  # (2d, 2d) over [x, attention message]
            if model.conf["mixer"] == "mamba":
                w[:, :d] = src[:, :d]  # only x carries over; no attention message in this variant
            else:
                w[:, : src.shape[1]] = src
            out[key] = w
        else:
            out[key] = value  # fresh initialisation (Mamba branch, deep regressor)
    expected_shared = [k for k in out if k.startswith(("transformers.", "log_assignment.", "posenc."))
                       and ".mamba." not in k]
    missing = [k for k in expected_shared if k not in sd]
    if missing:
        raise ValueError(f"LightGlue checkpoint does not fit this configuration (d={d}, layers={n}): "
                         f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return out
