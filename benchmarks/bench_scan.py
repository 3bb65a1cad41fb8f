"""Time the selective scan on CPU: step-by-step reference vs the chunked torch scan.

Prints, for L keypoints at D=512 channels, N=16 states, batch 1: forward and forward+backward
milliseconds (median of repeats after a warm-up) of selective_scan_ref and of the torch scan, and
of a Linear(256, 512) on the same L tokens for scale. The reference is skipped (shown as "-")
where one run of it would take too long: its backward is quadratic in L. T is the chunk length
the torch scan picks; --chunks 16 32 64 also times the torch scan with those chunk lengths.

    python benchmarks/bench_scan.py [--threads 2] [--repeats 7] [--lengths 256 512 1024 2048]
                                    [--chunks 16 32 64]
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Optional

import torch

from mambaglue_ros.models.ssm import _chunk_size, _scan_torch, selective_scan, selective_scan_ref

D, N = 512, 16
REF_MAX_SECONDS = 3.0  # skip the reference where a single run takes longer than this


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of fn in ms, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def inputs(L: int, requires_grad: bool) -> dict[str, torch.Tensor]:
    """MambaGlue-like inputs: delta before softplus around dt in [1e-3, 0.1], A = -(1..N)."""
    g = torch.Generator().manual_seed(0)
    x = {"u": torch.randn(1, D, L, generator=g), "delta": torch.randn(1, D, L, generator=g) * 0.1,
         "A": -torch.arange(1, N + 1, dtype=torch.float32).repeat(D, 1),
         "B": torch.randn(1, N, L, generator=g), "C": torch.randn(1, N, L, generator=g),
         "D": torch.ones(D), "delta_bias": torch.full((D,), -4.0)}
    return {k: v.requires_grad_(requires_grad) for k, v in x.items()}


def time_scan(fn: Callable[..., torch.Tensor], L: int, backward: bool, repeats: int,
              limit: Optional[float]) -> Optional[float]:
    """ms of fn on length L (forward, or forward + backward); None if one run exceeds limit s."""
    x = inputs(L, backward)

    def step() -> None:
        if backward:
            fn(**x, delta_softplus=True).sum().backward()
        else:
            with torch.no_grad():
                fn(**x, delta_softplus=True)

    if limit is not None:
        start = time.perf_counter()
        step()
        if time.perf_counter() - start > limit:
            return None
    return median_ms(step, repeats)


def time_linear(L: int, backward: bool, repeats: int) -> float:
    """ms of Linear(256, 512) on L tokens (forward, or forward + backward)."""
    layer = torch.nn.Linear(256, 512)
    x = torch.randn(1, L, 256, requires_grad=backward)

    def step() -> None:
        if backward:
            layer(x).sum().backward()
        else:
            with torch.no_grad():
                layer(x)

    return median_ms(step, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--chunks", type=int, nargs="*", default=[])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    def fmt(ms: Optional[float]) -> str:
        return f"{ms:9.1f}" if ms is not None else f"{'-':>9}"

    print(f"selective scan, CPU, {torch.get_num_threads()} threads, batch 1, D={D}, N={N}, float32; "
          f"ms, median of {args.repeats} after a warm-up")
    print(f"{'L':>5} {'T':>3} | {'ref fwd':>9} {'torch fwd':>9} {'lin fwd':>9} | "
          f"{'ref f+b':>9} {'torch f+b':>9} {'lin f+b':>9}")
    skip_ref = {False: False, True: False}  # once too slow, skip it for longer L too
    for L in args.lengths:
        row = []
        for backward in (False, True):
            ref = None
            if not skip_ref[backward]:
                ref = time_scan(selective_scan_ref, L, backward, max(1, args.repeats // 2),
                                REF_MAX_SECONDS)
                skip_ref[backward] = ref is None
            ours = time_scan(selective_scan, L, backward, args.repeats, None)
            row += [fmt(ref), fmt(ours), fmt(time_linear(L, backward, args.repeats))]
        T = _chunk_size(L, D * N)
        print(f"{L:>5} {T:>3} | {' '.join(row[:3])} | {' '.join(row[3:])}", flush=True)
    if args.chunks:
        print("\ntorch scan (softplus + core, no skip) with chunk length T: fwd / f+b ms")
        print(f"{'L':>5} | " + " ".join(f"{'T=' + str(T):>15}" for T in args.chunks))
        for L in args.lengths:
            cells = []
            for T in args.chunks:
                def core(u, delta, A, B, C, delta_bias, T=T, **_):
                    delta = torch.nn.functional.softplus(delta + delta_bias[:, None])
                    return _scan_torch(u, delta, A, B, C, chunk=T)
                f, fb = (time_scan(core, L, backward, args.repeats, None) for backward in (False, True))
                cells.append(f"{f:6.1f} / {fb:6.1f}")
            print(f"{L:>5} | " + " ".join(f"{c:>15}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
