"""The CPU fast path of the selective scan: ``selective_scan_cpu.cpp``, built once per machine.

Why. On a CPU the torch scan (``selective_scan_inference``) is ~4T + L/T small ops plus a (b, L, N, d)
buffer of decays; it is 3/4 of the Mamba branch's time and the main reason MambaGlue costs more than
LightGlue per layer. The C++ loop keeps the state in cache and computes each decay where it is used:
3-4x faster on this project's CPU, equal to float32 rounding (``test/test_ssm_cpu.py``). The same call runs
the version-2 branch's two directions and its gate (``bidirectional``, ``gate``), and the same source has the
branch's depthwise conv + SiLU in one pass (``depthwise_conv_silu_cpu``), which torch runs as k + 2 passes over
the sequence. For training, ``scan_train_cpu`` is the scan with its backward (``ssm._scan_torch`` calls it on float32
CPU tensors): forward keeps the state at every segment start, backward recomputes a segment at a time and runs the
adjoint through it. A version-2 training step then costs 1.17x (XFeat) and 1.21x (ALIKED) the attention-only
network's, against 1.48x and 1.41x with the torch scan (``benchmarks/train_step.py``, 2026-12-07, a loaded 2-core CPU).

How it is built. ``torch.utils.cpp_extension`` compiles the source with the machine's C++ compiler and
ninja (``-O3 -ffast-math -march=native``, and 512-bit vectors where the CPU has AVX-512: ``compile_flags``; the
channel loops vectorise, the decays' exp2 as an inline polynomial) into ``MAMBAGLUE_KERNEL_DIR`` (default
``~/.cache/mambaglue_ros/kernels``). The build is keyed by a hash of the source, the torch and Python versions,
the compiler flags and the CPU's instruction-set flags, so a cache shared
between machines never loads code built for another CPU. Building takes about a minute, so it never happens
implicitly in a running node: ``scripts/setup.sh`` builds it (``python -m mambaglue_ros.models.ssm_cpu``),
and at run time ``cpu_scan()`` only loads what was built. Without a compiler, or before the build, the torch
scan runs (same results, slower), and ``cpu_scan_status()`` says why.

``MAMBAGLUE_CPU_SCAN=0`` switches the kernel off for the process; ``torch_scan_only()`` for a block (``mambaglue
bench``'s ``mambaglue_torchscan`` times the same network both ways).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.machinery
import importlib.util
import logging
import math
import os
import platform
import shutil
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Iterator, Optional

import torch
from torch.autograd.function import once_differentiable

__all__ = ["build_cpu_scan", "cpu_scan", "cpu_scan_status", "depthwise_conv_silu_cpu", "kernel_enabled",
           "selective_scan_cpu", "kernel_dir", "scan_train_cpu", "torch_scan_only",
           "train_kernel_applies"]

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("selective_scan_cpu.cpp")
CFLAGS = ["-O3", "-ffast-math", "-march=native"]


def compile_flags() -> list[str]:
    """``CFLAGS``, plus 512-bit vectors on an x86 CPU with AVX-512: GCC's -march=native there prefers 256-bit
    vectors (for the clock-speed cost of 512-bit ones on early AVX-512 parts); the scan's channel loops measured
    0.77 -> 0.58 ms per bidirectional call with 512 (48 channels, 1024 tokens, one thread, 2026-12-07)."""
    flags = list(CFLAGS)
    if platform.machine() in ("x86_64", "AMD64") and "avx512f" in _cpu_flags().split():
        flags.append("-mprefer-vector-width=512")
    return flags


def kernel_dir() -> Path:
    """Where built kernels live: ``$MAMBAGLUE_KERNEL_DIR`` or ``~/.cache/mambaglue_ros/kernels``."""
    env = os.environ.get("MAMBAGLUE_KERNEL_DIR")
    return Path(env) if env else Path.home() / ".cache" / "mambaglue_ros" / "kernels"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("flags")), platform.machine())
    except OSError:
        return platform.machine()


def extension_name() -> str:
    """Module name of this machine's build: changes with the source, torch, Python and the CPU's flags."""
    key = "\n".join([SOURCE.read_text(), torch.__version__, sys.version, " ".join(compile_flags()), _cpu_flags()])
    return "mambaglue_scan_cpu_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _built_library(name: str) -> Optional[Path]:
    found = sorted((kernel_dir() / name).glob(f"{name}*.so"))
    return found[0] if found else None


_modules: dict[str, ModuleType] = {}  # loaded once per process: an extension module is not initialised twice
_load_lock = threading.Lock()  # the node's two pipeline stages may ask for the kernel at the same moment


def _load(path: Path, name: str) -> ModuleType:
    with _load_lock:
        if name not in _modules:
            loader = importlib.machinery.ExtensionFileLoader(name, str(path))
            spec = importlib.util.spec_from_file_location(name, path, loader=loader)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            _modules[name] = module
        return _modules[name]


def build_cpu_scan(verbose: bool = False) -> ModuleType:
    """Compile (or load, when this machine's build exists) the CPU kernel; raises with the compiler's error."""
    from torch.utils.cpp_extension import load

    name = extension_name()
    built = _built_library(name)
    if built is not None:
        return _load(built, name)
    out = kernel_dir() / name
    out.mkdir(parents=True, exist_ok=True)
    # torch looks for ninja on PATH; the venv's own (pip 'ninja') counts even when the venv is not activated
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), path])
    try:
        module = load(name=name, sources=[str(SOURCE)], extra_cflags=compile_flags(), build_directory=str(out),
                      verbose=verbose)
    finally:
        os.environ["PATH"] = path
    with _load_lock:
        _modules[name] = module
    cpu_scan.cache_clear()
    return module


_status = "not loaded yet"


@functools.lru_cache(maxsize=None)
def cpu_scan() -> Optional[ModuleType]:
    """This machine's built kernel module, or None (not built, switched off, or failing to load). Never
    compiles (see the module docstring); the reason for None is in ``cpu_scan_status()``."""
    global _status
    if os.environ.get("MAMBAGLUE_CPU_SCAN", "1") == "0":
        _status = "off (MAMBAGLUE_CPU_SCAN=0)"
        return None
    try:
        name = extension_name()
        built = _built_library(name)
        if built is None:
            _status = (f"not built for this machine (run `python -m mambaglue_ros.models.ssm_cpu`; looked in "
                       f"{kernel_dir() / name})")
            return None
        module = _load(built, name)
    except Exception as e:  # a broken build must not break the package: the torch scan takes over
        _status = f"failed to load: {type(e).__name__}: {e}"
        log.warning("CPU selective-scan kernel %s", _status)
        return None
    _status = f"loaded from {built}"
    return module


_torch_scan_only = 0  # > 0 inside torch_scan_only(): benchmarks time the same network both ways (process-wide)


@contextlib.contextmanager
def torch_scan_only() -> Iterator[None]:
    """Within this block the network uses the torch scan even where the kernel is built (benchmarks)."""
    global _torch_scan_only
    _torch_scan_only += 1
    try:
        yield
    finally:
        _torch_scan_only -= 1


def kernel_enabled() -> bool:
    """The kernel is built, loaded and not switched off by ``torch_scan_only``."""
    return _torch_scan_only == 0 and cpu_scan() is not None


def cpu_scan_status() -> str:
    """Why ``cpu_scan()`` returned what it did (for logs and diagnostics)."""
    cpu_scan()
    return _status


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 else t.float()  # the check in Python: a dispatched no-op costs more


def scan_exp2_matrix(A: torch.Tensor) -> torch.Tensor:
    """A (d, N) -> A · log2(e) as a (N, d) contiguous float32 matrix: the kernel's exp(Δ A) is exp2(Δ A log2 e).
    Made once per parameter change by the caller (``MambaBranch.inference_constants``) or per call here."""
    return (_f32(A) * math.log2(math.e)).t().contiguous()


def conv_kernel_weights(conv: torch.nn.Conv1d) -> tuple[torch.Tensor, torch.Tensor]:
    """A depthwise ``conv``'s weight (d, k) and bias (d,) in float32, as ``depthwise_conv_silu`` takes them."""
    return _f32(conv.weight[:, 0]).contiguous(), _f32(conv.bias)


def selective_scan_cpu(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                       D: torch.Tensor, delta_bias: torch.Tensor, module: Optional[ModuleType] = None,
                       A2: Optional[torch.Tensor] = None, bidirectional: bool = False,
                       gate: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``selective_scan_inference``'s arguments and result (y (b, L, d) in u's dtype), through the C++ kernel
    (``module``, default the loaded ``cpu_scan()``), computed in float32. ``A2``: ``scan_exp2_matrix(A)`` where
    the caller keeps it (else made here). ``bidirectional``: the mean of the scan and of the scan over the
    reversed sequence (flipped back), as ``MambaBranch`` takes it. ``gate`` (b, L, d), read in place where its
    channel stride is 1: y * silu(gate). Call only where a kernel is available."""
    A2 = scan_exp2_matrix(A) if A2 is None else A2
    args = [_f32(u), _f32(delta), A2, _f32(B), _f32(C), _f32(D), _f32(delta_bias)]
    if bidirectional or gate is not None:  # (only then: benchmarks/kernel_ab.py loads sources without the options)
        args += [bidirectional, None if gate is None else _f32(gate)]
    y = (module or cpu_scan()).selective_scan_cpu(*args)
    return y if y.dtype == u.dtype else y.to(u.dtype)


# Steps per segment of the training scan: backward recomputes one segment's states and decays (2 * SEGMENT + 1 rows
# of N x d floats: 99 KiB at N = 16, d = 48) from the state saved at its start; forward saves L / SEGMENT states.
TRAIN_SEGMENT = 16


class _TrainScan(torch.autograd.Function):
    """The scan core of ``ssm._ChunkedScan`` (y = C h, without D u) through the C++ kernel, with its backward.

    delta (after delta_bias and softplus), dtu = delta * u: (b, L, d); A2 = A^T log2(e): (N, d); B, C: (b, L, N);
    contiguous float32. Saves the inputs and the state at every segment start; backward recomputes the rest."""

    @staticmethod
    def forward(ctx, delta: torch.Tensor, dtu: torch.Tensor, A2: torch.Tensor, B: torch.Tensor,
                C: torch.Tensor) -> torch.Tensor:
        y, starts = cpu_scan().scan_train_forward(delta, dtu, A2, B, C, TRAIN_SEGMENT)
        ctx.save_for_backward(delta, dtu, A2, B, C, starts)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy: torch.Tensor) -> tuple[torch.Tensor, ...]:
        delta, dtu, A2, B, C, starts = ctx.saved_tensors
        g_delta, g_dtu, g_A2, g_B, g_C = cpu_scan().scan_train_backward(
            delta, dtu, A2, B, C, starts, gy.float().contiguous(), TRAIN_SEGMENT)
        return g_delta, g_dtu, g_A2.sum(0), g_B, g_C


def train_kernel_applies(u: torch.Tensor) -> bool:
    """The C++ training scan takes the torch scan's core for u: float32 on the CPU, the kernel built and enabled, and
    nothing traces the network (export and torch.compile need the torch ops). Float64 (gradcheck) stays on torch."""
    if u.device.type != "cpu" or u.dtype != torch.float32:
        return False
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
        return False
    return kernel_enabled()


def scan_train_cpu(delta: torch.Tensor, dtu: torch.Tensor, A2: torch.Tensor, B: torch.Tensor,
                   C: torch.Tensor) -> torch.Tensor:
    """y = C h of the selective scan, differentiable, through the C++ kernel: delta (after bias and softplus),
    dtu = delta * u (b, L, d); A2 = A^T log2(e) (N, d); B, C (b, L, N), float32 -> y (b, L, d) float32. Call only
    where ``train_kernel_applies``."""
    return _TrainScan.apply(*(t.contiguous() for t in (delta, dtu, A2, B, C)))


def depthwise_conv_silu_cpu(u: torch.Tensor, conv: torch.nn.Conv1d, module: Optional[ModuleType] = None,
                            weights: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """``F.silu(depthwise_conv(u, conv))`` (u (b, L, d) -> (b, L, d), in u's dtype) in one pass through the C++
    kernel (``module``, default the loaded ``cpu_scan()``), computed in float32. u may be a slice of a wider
    tensor (the x half of in_proj's output): it is read in place. ``weights``: ``conv_kernel_weights(conv)``
    where the caller keeps them (else made here). Call only where a kernel is available."""
    weight, bias = conv_kernel_weights(conv) if weights is None else weights
    out = (module or cpu_scan()).depthwise_conv_silu(_f32(u), weight, bias, conv.padding[0])
    return out if out.dtype == u.dtype else out.to(u.dtype)


def _training_scan_error(module: ModuleType) -> float:
    """Largest relative difference of the training scan's output and input gradients (``module``'s
    scan_train_forward / scan_train_backward) from the float64 torch scan's (``ssm._ChunkedScan``) on random inputs."""
    from mambaglue_ros.models.ssm import _ChunkedScan

    g = torch.Generator().manual_seed(1)
    b, L, d, N = 2, 3 * TRAIN_SEGMENT + 5, 24, 8  # several segments and a partial last one
    delta = torch.nn.functional.softplus(torch.randn(b, L, d, generator=g) - 1)
    dtu = delta * torch.randn(b, L, d, generator=g)
    A2 = -torch.rand(N, d, generator=g) * 8
    B, C, gy = torch.randn(b, L, N, generator=g), torch.randn(b, L, N, generator=g), torch.randn(b, L, d, generator=g)
    y, starts = module.scan_train_forward(delta, dtu, A2, B, C, TRAIN_SEGMENT)
    grads = module.scan_train_backward(delta, dtu, A2, B, C, starts, gy, TRAIN_SEGMENT)
    inputs = [t.double().requires_grad_() for t in (delta, dtu, A2, B, C)]
    as_one_chunk = [t.view(b, 1, L, -1) if t.dim() == 3 else t for t in inputs]
    ref = _ChunkedScan.apply(*as_one_chunk).view(b, L, d)
    ref.backward(gy.double())
    got = [y, *grads[:2], grads[2].sum(0), *grads[3:]]  # A2's gradient comes per batch entry
    pairs = zip(got, [ref.detach()] + [t.grad for t in inputs])
    return max(float((a.double() - r).abs().max() / r.abs().max()) for a, r in pairs)


def main() -> int:
    """Build this machine's kernel and check it against the torch scan (``scripts/setup.sh`` runs this)."""
    import argparse

    from mambaglue_ros.models.mambaglue import depthwise_conv, selective_scan_inference

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    module = build_cpu_scan(verbose=args.verbose)
    g = torch.Generator().manual_seed(0)
    b, L, d, N = 2, 300, 48, 16
    u, delta = torch.randn(b, L, d, generator=g), torch.randn(b, L, d, generator=g) - 2
    A, B, C = -torch.rand(d, N, generator=g) * 8, torch.randn(b, L, N, generator=g), torch.randn(b, L, N, generator=g)
    D, bias = torch.randn(d, generator=g), torch.randn(d, generator=g) * 0.1
    ref = selective_scan_inference(u, delta, A, B, C, D, bias)
    err = float((selective_scan_cpu(u, delta, A, B, C, D, bias, module=module) - ref).abs().max() / ref.abs().max())
    # the call the version-2 branch makes: both directions (the reverse one as flip, scan, flip back) and the gate
    z = torch.randn(b, L, 2 * d, generator=g)[..., d:]  # a strided view, as the z half of in_proj's output
    back = selective_scan_inference(u.flip(1), delta.flip(1), A, B.flip(1), C.flip(1), D, bias).flip(1)
    ref2 = 0.5 * (ref + back) * torch.nn.functional.silu(z)
    out2 = selective_scan_cpu(u, delta, A, B, C, D, bias, module=module, bidirectional=True, gate=z)
    err = max(err, float((out2 - ref2).abs().max() / ref2.abs().max()))
    conv = torch.nn.Conv1d(d, d, 5, padding=2, groups=d)
    with torch.no_grad():
        conv_ref = torch.nn.functional.silu(depthwise_conv(u, conv))
        conv_out = depthwise_conv_silu_cpu(u, conv, module=module)
        conv_err = float((conv_out - conv_ref).abs().max() / conv_ref.abs().max())
    train_err = _training_scan_error(module)
    where = kernel_dir() / extension_name()
    # A build that computes something else must never be loaded: remove it. (1e-4 for the training scan: its float32
    # sums run over L and d; a wrong build is off by far more.)
    if not (err < 1e-5 and conv_err < 1e-5 and train_err < 1e-4):
        shutil.rmtree(where, ignore_errors=True)
        print(f"CPU kernels differ from torch (scan {err:.1e}, conv {conv_err:.1e}, training scan {train_err:.1e}, max "
              f"relative): removed {where}")
        return 1
    print(f"CPU selective-scan kernel built in {where}; max relative difference to torch: scan {err:.1e} (one way, "
          f"and both ways gated), conv + SiLU {conv_err:.1e}, training scan and its gradients {train_err:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
